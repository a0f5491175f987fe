// Types of both entries (index.js and node.js), written by hand for the JS driver in src/.
// test/package.test.mjs checks that nothing here is `any`; test/fixtures/consumer.ts and
// test/readme-types.test.mjs compile apps against it.

/** Any JSON value. */
export type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;

/** A JSON object: the usual shape of a payload, and its type in `on` handlers unless you name one. */
export type JsonObject = { [key: string]: JsonValue };

/**
 * A local event bus kept in sync with a distributed-events server.
 *
 * ```js
 * const client = new EventBusClient({ serverUrl: "http://localhost:8080", autoForward: true });
 * const off = client.on("UserCreatedEvent", (event) => console.log(event.payload));
 * client.publish("UserCreatedEvent", { name: "Alice" }, { aggregateId: "user-1" });
 * off();
 * await client.close();
 * ```
 *
 * Typed payloads: name the payload's type on `on` and `publish`, or annotate the handler.
 *
 * ```ts
 * interface Order { customer: string; item: string; quantity?: number }
 * client.on<Order>('OrderPlaced', (event) => console.log(event.payload.customer));
 * client.on('OrderPlaced', (event: ClientEvent<Order>) => console.log(event.payload.item));
 * client.publish<Order>('OrderPlaced', { customer: 'Ada', item: 'Latte' }, { aggregateId: 'order-1' });
 * ```
 *
 * The type is a promise the app makes, not a check: events of another shape (from an older
 * version of the app, say) arrive as they were published.
 *
 * In a browser, the clients of one origin with the same `serverUrl`, filter options
 * (`eventTypes`, `aggregateIds`, `subscribeToHandledTypes`) and transport share one
 * connection: one of them (in any tab) leads and passes on what it receives.
 */
export declare class EventBusClient {
  /**
   * Starts a client: it catches up, then follows the server until `close()`, whether or
   * not the app keeps a reference to it.
   * Throws an `EventBusClientError` (code `invalid_options`) for unusable options.
   */
  constructor(options: EventBusClientOptions);
  /**
   * Calls `handler` with every event of type `eventType` (`"*"`: every event), from the
   * server or published here, in order, each once, with the payload typed as `P`. Handlers
   * run from a microtask, never inside `publish`; one that throws is logged
   * (`console.error`) and the others go on. Returns a function that unsubscribes.
   */
  on<P = JsonObject>(eventType: string, handler: (event: ClientEvent<P>) => void): () => void;
  /**
   * Publishes an event here and, with `autoForward`, sends it to the server; returns its
   * id. The payload is checked against `P` (TypeScript 5.4 or later).
   * Throws an `EventBusClientError` (`invalid_event`, `closed`).
   */
  publish<P = JsonValue>(eventType: string, payload: NoInfer<P>, options: PublishOptions): string;
  /** Calls `handler` with the current status, then with each change. Returns a function that unsubscribes. */
  onStatus(handler: (status: EventBusClientStatus) => void): () => void;
  /**
   * Calls `handler` with each error the app may have to act on: events that could not be
   * decoded or that the server refused, missed events (`cursor_expired`), failed
   * authentication. Transient network errors only show in the status. Returns a function
   * that unsubscribes.
   */
  onError(handler: (error: EventBusClientError) => void): () => void;
  /**
   * Calls `handler` with the server's receipt for each event this client published and
   * the server stored (`{ id, position, createdAt }`): events published here reach `on`
   * handlers with `position: null` and are not delivered again, so this is where their
   * position shows. Returns a function that unsubscribes.
   */
  onStored(handler: (receipt: EventReceipt) => void): () => void;
  /**
   * Stops receiving, aborts requests in flight and ends every subscription (status
   * handlers hear `closed` last). Events not sent yet are dropped in Node; in a browser
   * they stay in the persisted outbox, and another tab of the app or the next start sends
   * them. Resolves when all of it has stopped.
   */
  close(): Promise<void>;
  /** The current status. */
  readonly status: EventBusClientStatus;
  /** The position after which the client asks next; `undefined` until known. */
  readonly cursor: number | undefined;
}

/** Options of `new EventBusClient(options)`. */
export interface EventBusClientOptions {
  /** The server's base URL, such as `"https://events.example.com"` (or `"/api"` for the page's own origin). */
  serverUrl: string;
  /** Follow the server so that events arrive within milliseconds (the default, unless `pollingInterval` is set), by `transport`. `false` asks every `pollingInterval` ms instead (default 5000), as the seed did. */
  live?: boolean;
  /** Poll every this many milliseconds instead of streaming, as the seed did; setting it alone is enough. Not together with `live: true` (`invalid_options`). */
  pollingInterval?: number;
  /** How events arrive. `"stream"` (the default): one open response (Server-Sent Events) that the server writes each event to; when a stream brings no bytes within 10 s (a buffering proxy) the client long-polls instead, and tries streaming again 5 minutes later. `"long-poll"`: one request at a time, held by the server until an event commits. `"poll"`: a request every `pollingInterval` ms. The status says which one is in use. */
  transport?: EventBusClientTransport;
  /** Whether `publish` also sends events to the server (default `false`). */
  autoForward?: boolean;
  /** Start after this position; `0` replays everything the server kept. Default: the events stored from now on. */
  initialPosition?: number;
  /** Start at the events created at or after this time (an RFC 3339 string or a Date). */
  initialTimestamp?: string | Date;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
  /** The bearer token for the next request, or `null` for none. Called before every request, so it may refresh. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Keep the cursor in localStorage (key `distributed-events:cursor:<serverUrl>`, followed by the filter options when there are any), so that a reload resumes with nothing lost and nothing repeated (default `false`). */
  persistCursor?: boolean;
  /** Receive only events of these types; the server leaves the others out (default: every type). At most 100 names. */
  eventTypes?: string[];
  /** Receive only events of these aggregates (default: every aggregate). With `eventTypes`, an event must match both. */
  aggregateIds?: string[];
  /** Receive only the types this client has handlers for (`on(type, ...)`; `on("*", ...)` means every type), plus `eventTypes`. A handler for a new type widens the subscription at once, with nothing of that type lost after the cursor. Until the first handler, every event is received (default `false`). */
  subscribeToHandledTypes?: boolean;
}

/** An event as handlers receive it. */
export interface ClientEvent<P = JsonValue> {
  /** Unique id (a UUID); the same on every client. */
  id: string;
  eventType: string;
  aggregateId: string;
  /** When it happened: RFC 3339, UTC (the record's `createdAt`). */
  occurredAt: string;
  /** Where the server stored it; `null` for an event published by this client (it is not delivered again when it comes back; `onStored` tells its position). */
  position: number | null;
  /** `userId`, `tenantId`, `sessionId` and the app's own context entries. */
  context: Record<string, JsonValue>;
  /** The event's data. */
  payload: P;
}

/** The third argument of `publish`. */
export interface PublishOptions {
  /** The aggregate the event belongs to (required, non-empty). */
  aggregateId: string;
  /** `userId`, `tenantId`, `sessionId` and any further entries the server's authorization needs. */
  context?: Record<string, JsonValue>;
}

/** An event record exactly as it travels over HTTP (see docs/PROTOCOL.md). */
export interface StoredEventRecord {
  id: string;
  createdAt: string;
  aggregateId: string;
  eventType: string;
  /** The payload as a string of JSON (possibly not valid JSON, for an `undecodable_payload` error). */
  eventJson: string;
  userId: string | null;
  tenantId: string | null;
  sessionId: string | null;
  context?: Record<string, JsonValue>;
  position?: number;
}

/** The `code` of an `EventBusClientError`: the server's code, or one of the client's. */
export type EventBusClientErrorCode =
  | "network_error" | "timeout" | "wrong_server_url" | "invalid_response" | "http_error" | "token_failed"
  | "bad_request" | "unauthorized" | "id_conflict" | "request_timeout" | "payload_too_large" | "unsupported_media_type"
  | "unavailable" | "overloaded" | "internal"
  | "cursor_expired" | "cursor_ahead"
  | "unknown_event_type" | "undecodable_payload" | "undecodable_record"
  | "cursor_store_failed" | "invalid_config" | "invalid_options" | "invalid_event" | "closed";

/** The errors the client throws and hands to `onError` handlers: real `Error`s with a `code`. */
export interface EventBusClientError extends Error {
  name: "EventBusClientError";
  code: EventBusClientErrorCode;
  /** The HTTP status, when the server answered. */
  status?: number;
  /** The event concerned: one whose payload could not be decoded, or one the server refused for good (it was dropped from the outbox). */
  event?: StoredEventRecord;
  /** `undecodable_record`: the skipped record's position, when it could be read. */
  position?: number;
  /** `undecodable_record`: the skipped record's id, when it could be read. */
  eventId?: string;
  /** `cursor_expired` / `cursor_ahead`: the cursor the client had. */
  from?: number;
  /** `cursor_expired` / `cursor_ahead`: where delivery resumed. Events in between were missed: reload state that depends on them. */
  resumeAfter?: number;
}

/** How events arrive: see `EventBusClientOptions.transport`. */
export type EventBusClientTransport = "stream" | "long-poll" | "poll";

/** Where the client stands. `status.error?.message` reads the error of any state (`undefined` but when backing off). */
export type EventBusClientStatus =
  | { state: "connecting"; error?: undefined }
  /** Events arrive by `transport`: `"long-poll"` also while a stream falls back to long-polling. */
  | { state: "live"; transport: EventBusClientTransport; error?: undefined }
  /** A request failed; the next attempt starts at `retryAt` (milliseconds since the epoch, as `Date.now()`). */
  | { state: "backingOff"; error: EventBusClientError; retryAt: number }
  | { state: "closed"; error?: undefined };

/** The server's answer for an event this client sent: where it was stored (`onStored`). */
export interface EventReceipt {
  /** The event's id, as `publish` returned it. */
  id: string;
  /** The position the server stored it at. */
  position: number;
  /** The event's `createdAt` as stored (RFC 3339, UTC): its `occurredAt`. */
  createdAt: string;
}
