//! The JS binding: it only translates between JS values and the Rust client. One file
//! per exported class; the conversions and TypeScript types every class shares are here.

mod event_bus_client;

pub use event_bus_client::JsEventBusClient;

use chrono::{DateTime, Utc};
use distributed_events_shared::{Context, StoredEvent};
use js_sys::{Object, Reflect};
use serde::Serialize;
use uuid::Uuid;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::{ClientError, Status};

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** Any JSON value. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

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
  /** Keep the cursor in localStorage (key `distributed-events:cursor:<serverUrl>`), so that a reload resumes with nothing lost and nothing repeated (default `false`). */
  persistCursor?: boolean;
}

/** An event as handlers receive it. */
export interface ClientEvent<P = JsonValue> {
  /** Unique id (a UUID); the same on every client. */
  id: string;
  eventType: string;
  aggregateId: string;
  /** When it happened: RFC 3339, UTC (the record's `createdAt`). */
  occurredAt: string;
  /** Where the server stored it; `null` for an event published by this client (it is not delivered again when it comes back). */
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
  | "bad_request" | "unauthorized" | "id_conflict" | "payload_too_large" | "unsupported_media_type"
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
  /** The event concerned: one that could not be decoded, or one the server refused for good (it was dropped from the outbox). */
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

/** Where the client stands. */
export type EventBusClientStatus =
  | { state: "connecting" }
  /** Events arrive by `transport`: `"long-poll"` also while a stream falls back to long-polling. */
  | { state: "live"; transport: EventBusClientTransport }
  /** A request failed; the next attempt starts at `retryAt` (milliseconds since the epoch, as `Date.now()`). */
  | { state: "backingOff"; error: EventBusClientError; retryAt: number }
  | { state: "closed" };
"#;

/// Sets a property on an object this binding just created, where it cannot fail.
fn set(target: &JsValue, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(target, &JsValue::from_str(key), &value.into());
}

/// The one serializer configuration: JS values shaped like the JSON wire format.
fn to_js(value: &impl Serialize) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(JsValue::from)
}

/// A JS `Error` named `EventBusClientError`, with a `code`.
fn js_error(message: &str, code: &str) -> js_sys::Error {
    let error = js_sys::Error::new(message);
    error.set_name("EventBusClientError");
    set(&error, "code", code);
    error
}

pub(crate) fn error_to_js(error: &ClientError) -> JsValue {
    let js = js_error(&error.to_string(), error.code());
    match error {
        ClientError::Http { status, .. } | ClientError::WrongServerUrl { status, .. } => {
            set(&js, "status", *status)
        }
        ClientError::Rejected { status, .. } => set(&js, "status", *status),
        ClientError::CursorReset {
            from, resume_after, ..
        } => {
            // Positions stay below 2^53, so a JS number holds them exactly.
            set(&js, "from", *from as f64);
            set(&js, "resumeAfter", *resume_after as f64);
        }
        ClientError::UndecodableRecord {
            position, event_id, ..
        } => {
            if let Some(position) = position {
                set(&js, "position", *position as f64);
            }
            if let Some(event_id) = event_id {
                set(&js, "eventId", event_id.to_string());
            }
        }
        _ => {}
    }
    if let Some(event) = error.event() {
        if let Ok(record) = to_js(event) {
            set(&js, "event", record);
        }
    }
    js.into()
}

pub(crate) fn status_to_js(status: &Status) -> JsValue {
    let object: JsValue = Object::new().into();
    let state = match status {
        Status::Connecting => "connecting",
        Status::Live { transport } => {
            set(&object, "transport", transport.as_str());
            "live"
        }
        Status::BackingOff { error, retry_at } => {
            set(&object, "error", error_to_js(error));
            set(&object, "retryAt", retry_at.timestamp_millis() as f64);
            "backingOff"
        }
        Status::Closed => "closed",
    };
    set(&object, "state", state);
    object
}

/// A `ClientEvent`: the envelope through serde, the payload through `JSON.parse`, which
/// is smaller and faster here than going through a Rust JSON value.
pub(crate) fn event_to_js(event: &StoredEvent) -> Result<JsValue, JsValue> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Envelope<'a> {
        id: &'a Uuid,
        event_type: &'a str,
        aggregate_id: &'a str,
        occurred_at: &'a DateTime<Utc>,
        position: Option<u64>,
        context: Context,
    }
    let value = to_js(&Envelope {
        id: &event.id,
        event_type: &event.event_type,
        aggregate_id: &event.aggregate_id,
        occurred_at: &event.created_at,
        position: event.position,
        context: event.full_context(),
    })?;
    set(&value, "payload", js_sys::JSON::parse(&event.event_json)?);
    Ok(value)
}

/// The text of a thrown JS value.
fn js_message(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|error| String::from(error.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}
