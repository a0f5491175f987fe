// The package's entry for Node (the `node` export condition). Node's fetch cannot read
// file: URLs, so we read the wasm from disk and hand the bytes to wasm-bindgen's init().
import { readFile } from 'node:fs/promises';
import init from './pkg/distributed_events_client.js';

await init({ module_or_path: await readFile(new URL('./pkg/distributed_events_client_bg.wasm', import.meta.url)) });

export { EventBusClient } from './src/client.js';
