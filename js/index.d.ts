// Types of both entries (index.js and node.js): the declarations wasm-bindgen generated
// from the Rust binding, without wasm-bindgen's loader functions (the entries load the
// wasm themselves). test/package.test.mjs checks that this list stays complete.
export { EventBusClient } from './pkg/distributed_events_client.js';
export type {
  ClientEvent,
  EventBusClientError,
  EventBusClientErrorCode,
  EventBusClientOptions,
  EventBusClientStatus,
  EventBusClientTransport,
  JsonValue,
  PublishOptions,
  StoredEventRecord,
} from './pkg/distributed_events_client.js';
