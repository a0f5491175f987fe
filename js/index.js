// The package's entry for browsers and bundlers (the `import` export condition).
// Importing it loads the wasm once, so `new EventBusClient(…)` works right after the
// import, with no init call to forget.
//
// wasm-bindgen's init() fetches the .wasm through `new URL('…_bg.wasm', import.meta.url)`:
// a browser resolves that next to the glue, and bundlers such as Vite copy the file into
// their build when they see it.
import init from './pkg/distributed_events_client.js';

await init();

export { EventBusClient } from './src/client.js';
