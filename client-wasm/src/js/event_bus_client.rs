//! The JS `EventBusClient` class.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use distributed_events_shared::{now, Context, StoredEvent};
use futures::StreamExt;
use js_sys::{Function, Promise};
use serde::Deserialize;
use uuid::Uuid;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::{error_to_js, event_to_js, js_error, js_message, status_to_js};
use crate::{
    BoxFuture, ClientError, EventBusClient, LocalStorageCursorStore, Subscription, TokenSource,
    Transport, DEFAULT_POLLING_INTERVAL,
};

thread_local! {
    /// Every client not closed yet. A JS client runs until `close()`, like an open
    /// WebSocket: an app that only registered handlers and dropped its own reference
    /// still expects events, so garbage collection of the JS object must not stop it.
    static OPEN: RefCell<Vec<EventBusClient>> = const { RefCell::new(Vec::new()) };
}

/// A local event bus kept in sync with a distributed-events server.
///
/// ```js
/// const client = new EventBusClient({ serverUrl: "http://localhost:8080", autoForward: true });
/// const off = client.on("UserCreatedEvent", (event) => console.log(event.payload));
/// client.publish("UserCreatedEvent", { name: "Alice" }, { aggregateId: "user-1" });
/// off();
/// await client.close();
/// ```
#[wasm_bindgen(js_name = EventBusClient)]
#[derive(Debug)]
pub struct JsEventBusClient(EventBusClient);

#[wasm_bindgen(js_class = EventBusClient)]
impl JsEventBusClient {
    /// Starts a client: it catches up, then follows the server until `close()`, whether or
    /// not the app keeps a reference to it.
    /// Throws an `EventBusClientError` (code `invalid_options`) for unusable options.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "EventBusClientOptions")] options: JsValue,
    ) -> Result<JsEventBusClient, JsValue> {
        let client =
            Options::parse(options)?
                .into_builder()?
                .build()
                .map_err(|error| match error {
                    ClientError::Config { message } => invalid_options(&message),
                    other => error_to_js(&other),
                })?;
        OPEN.with_borrow_mut(|open| open.push(client.clone()));
        Ok(Self(client))
    }

    /// Calls `handler` with every event of type `eventType` (`"*"`: every event), from
    /// the server or published here, in order, each once. Handlers run in a task of
    /// their own, never inside `publish`. Returns a function that unsubscribes.
    #[wasm_bindgen(unchecked_return_type = "() => void")]
    pub fn on(
        &self,
        #[wasm_bindgen(js_name = eventType)] event_type: String,
        #[wasm_bindgen(unchecked_param_type = "(event: ClientEvent) => void")] handler: Function,
    ) -> JsValue {
        self.listen(self.0.events(), handler, false, move |event| {
            if event_type != "*" && event.event_type != event_type {
                return None;
            }
            event_to_js(event)
                .inspect_err(|error| {
                    web_sys::console::error_2(
                        &"EventBusClient: cannot convert an event".into(),
                        error,
                    )
                })
                .ok()
        })
    }

    /// Publishes an event here and, with `autoForward`, sends it to the server. Returns
    /// its id. Throws an `EventBusClientError` (`invalid_event`, `closed`).
    pub fn publish(
        &self,
        #[wasm_bindgen(js_name = eventType)] event_type: String,
        #[wasm_bindgen(unchecked_param_type = "JsonValue")] payload: JsValue,
        #[wasm_bindgen(unchecked_param_type = "PublishOptions")] options: JsValue,
    ) -> Result<String, JsValue> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct PublishOptions {
            aggregate_id: String,
            #[serde(default)]
            context: Option<Context>,
        }
        let invalid = |message: String| error_to_js(&ClientError::InvalidEvent { message });
        unknown_key(&options, &["aggregateId", "context"]).map_or(Ok(()), |key| {
            Err(invalid(format!("unknown publish option `{key}`")))
        })?;
        let options: PublishOptions = serde_wasm_bindgen::from_value(options).map_err(|error| {
            invalid(format!("{error}; pass options like {{ aggregateId: \"order-1\", context: {{ userId: \"u1\" }} }}"))
        })?;
        let event_json = js_sys::JSON::stringify(&payload)
            .ok()
            .and_then(|json| json.as_string())
            .ok_or_else(|| {
                invalid(
                    "the payload must be JSON: an object, array, string, number, boolean or null"
                        .into(),
                )
            })?;
        let mut event = StoredEvent {
            id: Uuid::now_v7(),
            created_at: now(),
            aggregate_id: options.aggregate_id,
            event_type,
            event_json,
            user_id: None,
            tenant_id: None,
            session_id: None,
            context: Context::new(),
            position: None,
        };
        event.set_full_context(options.context.unwrap_or_default());
        let id = event.id.to_string();
        self.0
            .publish_record(event)
            .map_err(|error| error_to_js(&error))?;
        Ok(id)
    }

    /// Calls `handler` with the current status, then with each change. Returns a function
    /// that unsubscribes.
    #[wasm_bindgen(js_name = onStatus, unchecked_return_type = "() => void")]
    pub fn on_status(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(status: EventBusClientStatus) => void")]
        handler: Function,
    ) -> JsValue {
        // The final `closed` status still reaches the handler after close.
        self.listen(self.0.status_changes(), handler, true, |status| {
            Some(status_to_js(status))
        })
    }

    /// Calls `handler` with each error the app may have to act on: events that could not
    /// be decoded or that the server refused, missed events (`cursor_expired`), failed
    /// authentication. Transient network errors only show in the status. Returns a
    /// function that unsubscribes.
    #[wasm_bindgen(js_name = onError, unchecked_return_type = "() => void")]
    pub fn on_error(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(error: EventBusClientError) => void")]
        handler: Function,
    ) -> JsValue {
        self.listen(self.0.errors(), handler, false, |error| {
            Some(error_to_js(error))
        })
    }

    /// Stops polling, aborts requests in flight, drops events not yet sent and ends every
    /// subscription. Resolves when all of it has stopped.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn close(&self) -> Promise {
        let inner = self.0.inner();
        OPEN.with_borrow_mut(|open| open.retain(|client| !Arc::ptr_eq(client.inner(), inner)));
        let closing = self.0.close();
        wasm_bindgen_futures::future_to_promise(async move {
            closing.await;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The current status.
    #[wasm_bindgen(getter, unchecked_return_type = "EventBusClientStatus")]
    pub fn status(&self) -> JsValue {
        status_to_js(&self.0.status())
    }

    /// The position after which the client asks next; `undefined` until known.
    #[wasm_bindgen(getter)]
    pub fn cursor(&self) -> Option<f64> {
        // Positions stay below 2^53, so a JS number holds them exactly.
        self.0.cursor().map(|cursor| cursor as f64)
    }
}

impl JsEventBusClient {
    /// Calls `handler` with each item of `items` that `to_js` converts, from a task of the
    /// client; returns the unsubscribe function. Without `after_close`, items still
    /// queued when the client closes are dropped.
    fn listen<T: 'static>(
        &self,
        mut items: Subscription<T>,
        handler: Function,
        after_close: bool,
        to_js: impl Fn(&T) -> Option<JsValue> + 'static,
    ) -> JsValue {
        let inner = Arc::clone(self.0.inner());
        // Checked before each call, so that no handler runs after unsubscribe, not even
        // for items already queued.
        let active = Rc::new(Cell::new(true));
        let task = {
            let active = Rc::clone(&active);
            let inner = Arc::clone(&inner);
            // Ends when the subscription ends, which closing the client does.
            async move {
                while let Some(item) = items.next().await {
                    if !active.get() || (!after_close && inner.is_closed()) {
                        break;
                    }
                    let Some(value) = to_js(&item) else { continue };
                    // Like an EventTarget: a throwing handler is reported, the others go on.
                    if let Err(thrown) = handler.call1(&JsValue::UNDEFINED, &value) {
                        web_sys::console::error_2(
                            &"EventBusClient: a handler threw".into(),
                            &thrown,
                        );
                    }
                }
            }
        };
        let id = inner.spawn_task(task, false);
        let weak = Arc::downgrade(&inner);
        // Owned by the JS function from here on: freed when it is garbage-collected.
        Closure::<dyn Fn()>::new(move || {
            active.set(false);
            if let (Some(inner), Some(id)) = (weak.upgrade(), id) {
                inner.abort_task(id);
            }
        })
        .into_js_value()
    }
}

/// `EventBusClientOptions`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Options {
    server_url: String,
    #[serde(default)]
    live: Option<bool>,
    #[serde(default)]
    polling_interval: Option<f64>,
    #[serde(default)]
    transport: Option<String>,
    #[serde(default)]
    auto_forward: Option<bool>,
    #[serde(default)]
    initial_position: Option<u64>,
    #[serde(default, with = "serde_wasm_bindgen::preserve")]
    initial_timestamp: JsValue,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default, with = "serde_wasm_bindgen::preserve")]
    get_token: JsValue,
    #[serde(default)]
    persist_cursor: Option<bool>,
}

/// The first key of `object` not in `known`: a typo that serde would silently ignore,
/// since serde-wasm-bindgen reads only the fields it knows.
fn unknown_key(object: &JsValue, known: &[&str]) -> Option<String> {
    let object = object.dyn_ref::<js_sys::Object>()?;
    js_sys::Object::keys(object)
        .iter()
        .filter_map(|key| key.as_string())
        .find(|key| !known.contains(&key.as_str()))
}

fn invalid_options(message: &str) -> JsValue {
    js_error(
        &format!("EventBusClient options: {message} (see EventBusClientOptions)"),
        "invalid_options",
    )
    .into()
}

impl Options {
    const KEYS: [&'static str; 10] = [
        "serverUrl",
        "live",
        "pollingInterval",
        "transport",
        "autoForward",
        "initialPosition",
        "initialTimestamp",
        "headers",
        "getToken",
        "persistCursor",
    ];

    fn parse(options: JsValue) -> Result<Self, JsValue> {
        if let Some(key) = unknown_key(&options, &Self::KEYS) {
            return Err(invalid_options(&format!(
                "unknown option `{key}`; the options are {}",
                Self::KEYS.join(", ")
            )));
        }
        serde_wasm_bindgen::from_value(options).map_err(|error| invalid_options(&error.to_string()))
    }

    fn into_builder(self) -> Result<crate::ClientBuilder, JsValue> {
        let server_url = crate::config::server_url(&self.server_url, "serverUrl")
            .map_err(|message| invalid_options(&message))?;
        let mut builder =
            EventBusClient::builder(server_url).auto_forward(self.auto_forward.unwrap_or(false));
        let transport = match self.transport.as_deref() {
            None => None,
            Some("stream") => Some(Transport::Stream),
            Some("long-poll") => Some(Transport::LongPoll),
            Some("poll") => Some(Transport::Poll),
            Some(_) => {
                return Err(invalid_options(
                    "transport must be \"stream\", \"long-poll\" or \"poll\"",
                ))
            }
        };
        // Polling when asked for by `transport: "poll"`, `live: false` or a
        // `pollingInterval` (the seed's options) alone; streaming otherwise.
        let polling = match (transport, self.live, self.polling_interval) {
            (Some(Transport::Poll), Some(true), _) | (None, Some(true), Some(_)) => {
                return Err(invalid_options(
                    "live: true streams and pollingInterval (or transport: \"poll\") polls at \
                     a fixed interval; set one of them, not both",
                ))
            }
            (Some(Transport::Poll), _, millis) | (None, Some(false), millis) => Some(millis),
            (None, None, Some(millis)) => Some(Some(millis)),
            (Some(_), Some(false), _) | (Some(_), _, Some(_)) => {
                return Err(invalid_options(
                    "pollingInterval and live: false poll at a fixed interval; \
                     with transport \"stream\" or \"long-poll\" leave them out",
                ))
            }
            (_, _, None) => None,
        };
        if let (Some(transport), None) = (transport, polling) {
            builder = builder.transport(transport);
        }
        if let Some(millis) = polling {
            let interval = match millis {
                None => DEFAULT_POLLING_INTERVAL,
                Some(millis) => Duration::try_from_secs_f64(millis / 1000.0)
                    .ok()
                    .filter(|interval| !interval.is_zero())
                    // No number in the message: formatting floats costs the wasm build ~15 KB.
                    .ok_or_else(|| {
                        invalid_options("pollingInterval must be a number of milliseconds above 0")
                    })?,
            };
            builder = builder.polling_interval(interval);
        }
        match (
            self.initial_position,
            parse_timestamp(&self.initial_timestamp)?,
        ) {
            (Some(_), Some(_)) => {
                return Err(invalid_options(
                    "set initialPosition or initialTimestamp, not both",
                ))
            }
            (Some(position), None) => builder = builder.initial_position(position),
            (None, Some(since)) => builder = builder.initial_timestamp(since),
            (None, None) => {}
        }
        for (name, value) in self.headers.unwrap_or_default() {
            builder = builder.header(name, value);
        }
        if let Some(get_token) = self.get_token.dyn_ref::<Function>() {
            builder = builder.token_source(JsTokenSource(get_token.clone()));
        } else if !self.get_token.is_undefined() && !self.get_token.is_null() {
            return Err(invalid_options(
                "getToken must be a function returning a token (or a Promise of one)",
            ));
        }
        if self.persist_cursor.unwrap_or(false) {
            builder = builder.cursor_store(LocalStorageCursorStore);
        }
        Ok(builder)
    }
}

/// `initialTimestamp`: an RFC 3339 string or a valid `Date`.
fn parse_timestamp(value: &JsValue) -> Result<Option<DateTime<Utc>>, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    let text = if let Some(date) = value.dyn_ref::<js_sys::Date>() {
        // `toISOString` throws on an invalid Date; check first.
        if date.get_time().is_nan() {
            return Err(invalid_options("initialTimestamp is an invalid Date"));
        }
        String::from(date.to_iso_string())
    } else {
        value.as_string().ok_or_else(|| {
            invalid_options("initialTimestamp must be an RFC 3339 string or a Date")
        })?
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|time| Some(time.with_timezone(&Utc)))
        .map_err(|error| {
            invalid_options(&format!(
                "initialTimestamp {text:?} is not RFC 3339: {error}"
            ))
        })
}

/// `getToken`, called before every request; it may return a Promise.
struct JsTokenSource(Function);

impl TokenSource for JsTokenSource {
    fn token(&self) -> BoxFuture<'static, Result<Option<String>, String>> {
        let returned = self.0.call0(&JsValue::UNDEFINED);
        Box::pin(async move {
            let returned =
                returned.map_err(|thrown| format!("getToken threw: {}", js_message(&thrown)))?;
            // Promise.resolve takes plain values, Promises and other thenables alike.
            let token = JsFuture::from(Promise::resolve(&returned))
                .await
                .map_err(|rejected| {
                    format!("getToken's Promise rejected: {}", js_message(&rejected))
                })?;
            if token.is_undefined() || token.is_null() {
                return Ok(None);
            }
            token.as_string().map(Some).ok_or_else(|| {
                "getToken must return a string, null or undefined (or a Promise of one)".into()
            })
        })
    }
}
