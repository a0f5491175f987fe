//! The client in headless Chromium against a real server: the browser transport (fetch,
//! timers, localStorage) and the JS binding. `scripts/test-wasm.sh` starts the server
//! and passes its URL in `DISTRIBUTED_EVENTS_TEST_SERVER` at compile time.
#![cfg(target_arch = "wasm32")]

use distributed_events_client::{event_registry, DomainEvent, Event, EventBusClient, Status};
use futures::StreamExt;
use gloo_timers::future::TimeoutFuture;
use js_sys::{Function, Reflect};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn server() -> &'static str {
    match option_env!("DISTRIBUTED_EVENTS_TEST_SERVER") {
        Some(url) => url,
        None => panic!("DISTRIBUTED_EVENTS_TEST_SERVER is not set: run scripts/test-wasm.sh, which starts a server"),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
struct Greeting {
    text: String,
}

/// A fresh event type per test, so that tests sharing the server do not see each other.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Waits (up to ~20 s) until `done` holds, checking every 20 ms; fails instead of hanging.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        TimeoutFuture::new(20).await;
    }
    panic!("gave up waiting for {what}");
}

fn get(target: &JsValue, key: &str) -> JsValue {
    Reflect::get(target, &key.into()).expect("a readable property")
}

#[wasm_bindgen(inline_js = r#"
export function trackFetches() {
  if (!globalThis.__fetches) {
    const original = globalThis.fetch.bind(globalThis);
    globalThis.fetch = (input, init) => {
      const entry = { request: input, settled: false, abortedPending: false };
      globalThis.__fetches.push(entry);
      input.signal.addEventListener("abort", () => { if (!entry.settled) entry.abortedPending = true; });
      const answer = original(input, init);
      answer.then(() => { entry.settled = true; }, () => { entry.settled = true; });
      return answer;
    };
  }
  globalThis.__fetches = [];
}
export function fetchesStillRunning() {
  return globalThis.__fetches.filter((f) => !f.request.signal.aborted && !f.settled).length;
}
export function openStreams() {
  return globalThis.__fetches.filter(
    (f) => f.request.headers.get("accept") === "text/event-stream" && !f.request.signal.aborted,
  ).length;
}
export function fetchesAbortedWhilePending() {
  return globalThis.__fetches.filter((f) => f.abortedPending).length;
}
export function lastAuthorization() {
  const last = globalThis.__fetches[globalThis.__fetches.length - 1];
  return last ? last.request.headers.get("authorization") : null;
}
export function urlsWithAuthorization(authorization) {
  return globalThis.__fetches
    .filter((f) => f.request.headers.get("authorization") === authorization)
    .map((f) => f.request.url);
}
export function handler(log) {
  return (value) => { log.push(value); };
}
"#)]
extern "C" {
    fn trackFetches();
    #[wasm_bindgen(js_name = fetchesStillRunning)]
    fn fetches_still_running() -> u32;
    /// The event-stream fetches since `trackFetches()` not aborted yet.
    #[wasm_bindgen(js_name = openStreams)]
    fn open_streams() -> u32;
    #[wasm_bindgen(js_name = fetchesAbortedWhilePending)]
    fn fetches_aborted_while_pending() -> u32;
    #[wasm_bindgen(js_name = lastAuthorization)]
    fn last_authorization() -> Option<String>;
    /// The URLs of the fetches since `trackFetches()` that carried this `Authorization`.
    #[wasm_bindgen(js_name = urlsWithAuthorization)]
    fn urls_with_authorization(authorization: &str) -> js_sys::Array;
    /// A JS function that appends its argument to `log`: a handler as an app writes it.
    fn handler(log: &js_sys::Array) -> Function;
}

#[wasm_bindgen_test]
async fn the_rust_api_delivers_each_event_once_and_does_not_repeat_own_events() {
    let writer = EventBusClient::builder(server())
        .auto_forward(true)
        .build()
        .expect("writer");
    let reader = EventBusClient::builder(server())
        .registry(event_registry![Greeting])
        .build()
        .expect("reader");
    let mut status = reader.status_changes();
    while !matches!(status.next().await, Some(Status::Live { .. })) {}

    let mut mine = writer.on::<Greeting>();
    let mut theirs = reader.on::<Greeting>();
    let aggregate = unique("greeting");
    let sent: Vec<_> = (0..5)
        .map(|n| {
            DomainEvent::new(
                aggregate.clone(),
                Greeting {
                    text: format!("hello {n}"),
                },
            )
        })
        .collect();
    for event in &sent {
        writer.publish(event.clone()).expect("publish");
    }
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let event = theirs.next().await.expect("the stream stays open");
        if event.aggregate_id == aggregate {
            received.push(event);
        }
    }
    let ids = |events: &[DomainEvent<Greeting>]| events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&received), ids(&sent), "in order, once each");
    assert!(received.iter().all(|e| e.position.is_some()));

    // The writer's echoes came back (its cursor passed them) and were not dispatched again.
    let last = received
        .last()
        .and_then(|e| e.position)
        .expect("a position");
    eventually("the writer's echoes", || writer.cursor() >= Some(last)).await;
    let mut local = Vec::new();
    while let Some(Some(event)) = futures::FutureExt::now_or_never(mine.next()) {
        local.push(event);
    }
    assert_eq!(
        ids(&local),
        ids(&sent),
        "each own event once, from the local publish"
    );
    writer.close().await;
    reader.close().await;
}

fn js_client(options: &str) -> Result<distributed_events_client::js::JsEventBusClient, JsValue> {
    let options = js_sys::JSON::parse(options).expect("options JSON");
    distributed_events_client::js::JsEventBusClient::new(options)
}

fn options(extra: &str) -> String {
    format!(r#"{{"serverUrl": "{}"{extra}}}"#, server())
}

async fn until_live(client: &distributed_events_client::js::JsEventBusClient) {
    eventually("the client to be live", || {
        get(&client.status(), "state") == "live"
    })
    .await;
}

#[wasm_bindgen_test]
async fn js_handlers_get_each_event_once_in_the_documented_shape() {
    let writer = js_client(&options(r#", "autoForward": true"#)).expect("writer");
    let reader = js_client(&options("")).expect("reader");
    until_live(&reader).await;
    let event_type = unique("Greeting");
    let (at_writer, at_reader) = (js_sys::Array::new(), js_sys::Array::new());
    let _keep = writer.on(event_type.clone(), handler(&at_writer));
    let _keep_too = reader.on(event_type.clone(), handler(&at_reader));

    let payload = js_sys::JSON::parse(r#"{"text": "hi", "n": 1}"#).expect("payload");
    let publish_options = js_sys::JSON::parse(
        r#"{"aggregateId": "g-1", "context": {"userId": "u1", "roles": ["admin"]}}"#,
    )
    .expect("options");
    let id = writer
        .publish(event_type.clone(), payload, publish_options)
        .expect("publish");
    assert_eq!(at_writer.length(), 0, "handlers never run inside publish");

    eventually("the reader's event", || at_reader.length() == 1).await;
    let event = at_reader.get(0);
    assert_eq!(get(&event, "id"), id.as_str());
    assert_eq!(get(&event, "eventType"), event_type.as_str());
    assert_eq!(get(&event, "aggregateId"), "g-1");
    assert!(get(&event, "occurredAt")
        .as_string()
        .is_some_and(|t| t.ends_with('Z')));
    let position = get(&event, "position")
        .as_f64()
        .expect("a numeric position");
    assert_eq!(get(&get(&event, "context"), "userId"), "u1");
    assert_eq!(
        js_sys::JSON::stringify(&get(&get(&event, "context"), "roles"))
            .ok()
            .and_then(|s| s.as_string())
            .as_deref(),
        Some(r#"["admin"]"#)
    );
    assert_eq!(get(&get(&event, "payload"), "text"), "hi");

    // At the writer: once, from the local publish; its echo was not dispatched again.
    eventually("the writer's echo", || {
        writer.cursor().is_some_and(|c| c >= position)
    })
    .await;
    TimeoutFuture::new(50).await;
    assert_eq!(at_writer.length(), 1);
    assert!(
        get(&at_writer.get(0), "position").is_null(),
        "a local event has no position yet"
    );
    assert_eq!(at_reader.length(), 1);
    settled(writer.close()).await.expect("close");
    settled(reader.close()).await.expect("close");
}

/// The deepest event the server accepts (docs/PROTOCOL.md, `MAX_NESTING`) reaches JS
/// handlers whole: the context through serde-wasm-bindgen, the payload through
/// `JSON.parse`.
#[wasm_bindgen_test]
async fn the_deepest_event_the_server_accepts_reaches_js_handlers_whole() {
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let limit = distributed_events_client::MAX_NESTING;
    // A page holds context values 3 levels deep: the array, the record, the context.
    let (payload, context_value) = (nested(limit), nested(limit - 3));
    let writer = js_client(&options(r#", "autoForward": true"#)).expect("writer");
    let reader = js_client(&options("")).expect("reader");
    until_live(&reader).await;
    let event_type = unique("Deep");
    let received = js_sys::Array::new();
    let _keep = reader.on(event_type.clone(), handler(&received));
    let publish_options = js_sys::JSON::parse(&format!(
        r#"{{"aggregateId": "d-1", "context": {{"deep": {context_value}}}}}"#
    ))
    .expect("options");
    let errors = js_sys::Array::new();
    let _keep_errors = writer.on_error(handler(&errors));
    writer
        .publish(
            event_type,
            js_sys::JSON::parse(&payload).expect("payload"),
            publish_options,
        )
        .expect("publish");

    eventually("the deep event at the reader", || received.length() == 1).await;
    let stringify = |value: &JsValue| {
        js_sys::JSON::stringify(value)
            .ok()
            .and_then(|s| s.as_string())
    };
    let event = received.get(0);
    assert_eq!(stringify(&get(&event, "payload")), Some(payload));
    assert_eq!(
        stringify(&get(&get(&event, "context"), "deep")),
        Some(context_value)
    );
    assert_eq!(errors.length(), 0, "the server refused the deepest event");
    settled(writer.close()).await.expect("close");
    settled(reader.close()).await.expect("close");
}

/// Awaits a JS Promise.
async fn settled(promise: js_sys::Promise) -> Result<JsValue, JsValue> {
    wasm_bindgen_futures::JsFuture::from(promise).await
}

#[wasm_bindgen_test]
async fn unsubscribing_stops_a_handler() {
    let client = js_client(&options(r#", "autoForward": true"#)).expect("client");
    let event_type = unique("Ping");
    let (kept, dropped) = (js_sys::Array::new(), js_sys::Array::new());
    let _keep = client.on(event_type.clone(), handler(&kept));
    let unsubscribe: Function = client.on("*".into(), handler(&dropped)).into();
    let options = || js_sys::JSON::parse(r#"{"aggregateId": "p"}"#).expect("options");
    client
        .publish(event_type.clone(), 1.into(), options())
        .expect("publish");
    eventually("both handlers", || {
        kept.length() == 1 && dropped.length() == 1
    })
    .await;
    unsubscribe.call0(&JsValue::UNDEFINED).expect("unsubscribe");
    client
        .publish(event_type.clone(), 2.into(), options())
        .expect("publish");
    eventually("the kept handler", || kept.length() == 2).await;
    assert_eq!(dropped.length(), 1, "no call after unsubscribe");
    settled(client.close()).await.expect("close");
}

#[wasm_bindgen_test]
async fn close_aborts_the_waiting_request_and_ends_everything() {
    trackFetches();
    let client =
        js_client(&options(r#", "getToken": null, "transport": "long-poll""#)).expect("client");
    let statuses = js_sys::Array::new();
    let _keep = client.on_status(handler(&statuses));
    until_live(&client).await;
    // Let the long-poll start and wait at the server.
    TimeoutFuture::new(200).await;
    assert!(fetches_still_running() >= 1, "a long-poll is waiting");

    settled(client.close()).await.expect("close resolves");
    assert_eq!(fetches_still_running(), 0, "no request left running");
    assert!(
        fetches_aborted_while_pending() >= 1,
        "the waiting long-poll was aborted"
    );
    assert_eq!(get(&client.status(), "state"), "closed");
    eventually("the closed status", || {
        get(&statuses.get(statuses.length() - 1), "state") == "closed"
    })
    .await;

    let error = client
        .publish(
            "X".into(),
            1.into(),
            js_sys::JSON::parse(r#"{"aggregateId": "a"}"#).expect("options"),
        )
        .expect_err("publishing after close fails");
    assert!(error.is_instance_of::<js_sys::Error>());
    assert_eq!(get(&error, "code"), "closed");
}

/// By default the browser client streams (fetch and its body's `ReadableStream`); the
/// status says so, and `close()` aborts the open stream.
#[wasm_bindgen_test]
async fn by_default_events_arrive_by_a_stream_that_close_aborts() {
    trackFetches();
    let writer = js_client(&options(r#", "autoForward": true"#)).expect("writer");
    let reader = js_client(&options("")).expect("reader");
    eventually("the reader to be live by a stream", || {
        get(&reader.status(), "transport") == "stream"
    })
    .await;
    let event_type = unique("Streamed");
    let received = js_sys::Array::new();
    let _keep = reader.on(event_type.clone(), handler(&received));
    for n in 0..3 {
        writer
            .publish(
                event_type.clone(),
                n.into(),
                js_sys::JSON::parse(r#"{"aggregateId": "s-1"}"#).expect("options"),
            )
            .expect("publish");
    }
    eventually("three events by the stream", || received.length() == 3).await;
    let payloads: Vec<_> = received
        .iter()
        .map(|event| get(&event, "payload").as_f64())
        .collect();
    assert_eq!(
        payloads,
        [Some(0.0), Some(1.0), Some(2.0)],
        "once each, in order"
    );
    assert_eq!(get(&reader.status(), "transport"), "stream");
    assert!(open_streams() >= 2, "the writer's and the reader's streams");

    settled(reader.close()).await.expect("close");
    settled(writer.close()).await.expect("close");
    assert_eq!(open_streams(), 0, "close aborted the streams");
}

#[wasm_bindgen_test]
async fn options_and_arguments_fail_with_js_errors_that_say_what_to_do() {
    for (options, mentions) in [
        (
            r#"{"serverUrl": "ftp://example.com"}"#.to_owned(),
            "http://",
        ),
        (self::options(r#", "pollInterval": 100"#), "pollInterval"),
        (
            self::options(r#", "live": false, "pollingInterval": -5"#),
            "pollingInterval",
        ),
        (
            self::options(r#", "live": true, "pollingInterval": 1000"#),
            "set one of them",
        ),
        (
            self::options(r#", "transport": "websocket""#),
            "transport must be",
        ),
        (
            self::options(r#", "transport": "stream", "pollingInterval": 1000"#),
            "leave them out",
        ),
        (
            self::options(r#", "initialTimestamp": "yesterday""#),
            "RFC 3339",
        ),
        (
            self::options(r#", "initialPosition": 1, "initialTimestamp": "2024-01-01T00:00:00Z""#),
            "not both",
        ),
    ] {
        let error = js_client(&options).expect_err(&options);
        assert!(error.is_instance_of::<js_sys::Error>(), "{options}");
        assert_eq!(get(&error, "code"), "invalid_options", "{options}");
        assert_eq!(get(&error, "name"), "EventBusClientError");
        let message = get(&error, "message").as_string().unwrap_or_default();
        assert!(message.contains(mentions), "{options}: {message}");
    }
    let client = js_client(&options("")).expect("client");
    let no_aggregate = client
        .publish("X".into(), 1.into(), js_sys::Object::new().into())
        .expect_err("aggregateId is required");
    assert_eq!(get(&no_aggregate, "code"), "invalid_event");
    assert!(get(&no_aggregate, "message")
        .as_string()
        .unwrap_or_default()
        .contains("aggregateId"));
    let not_json = client
        .publish(
            "X".into(),
            JsValue::UNDEFINED,
            js_sys::JSON::parse(r#"{"aggregateId": "a"}"#).expect("options"),
        )
        .expect_err("undefined is no JSON");
    assert_eq!(get(&not_json, "code"), "invalid_event");
    settled(client.close()).await.expect("close");
}

#[wasm_bindgen_test]
async fn a_polling_interval_alone_polls_instead_of_long_polling() {
    trackFetches();
    // A token of its own tells this client's requests from those of other clients.
    let token = unique("poll");
    let get_token = Function::new_no_args(&format!("return '{token}';"));
    let options = js_sys::JSON::parse(&options(r#", "pollingInterval": 50"#)).expect("options");
    Reflect::set(&options, &"getToken".into(), &get_token).expect("set getToken");
    let client = distributed_events_client::js::JsEventBusClient::new(options).expect("client");
    let authorization = format!("Bearer {token}");
    let polls = || -> Vec<String> {
        urls_with_authorization(&authorization)
            .iter()
            .filter_map(|url| url.as_string())
            .filter(|url| url.contains("/events?"))
            .collect()
    };
    // A long-polling client would be waiting at the server after its first poll.
    eventually("three polls", || polls().len() >= 3).await;
    let polls = polls();
    assert!(
        polls.iter().all(|url| !url.contains("wait=")),
        "no poll waits at the server: {polls:?}"
    );
    settled(client.close()).await.expect("close");
}

#[wasm_bindgen_test]
async fn the_token_from_get_token_goes_with_every_request() {
    trackFetches();
    let client = js_client(&options("")).expect("client");
    settled(client.close()).await.expect("close");
    let get_token = Function::new_no_args("return Promise.resolve('t-123');");
    let options = js_sys::JSON::parse(&options("")).expect("options");
    Reflect::set(&options, &"getToken".into(), &get_token).expect("set getToken");
    let client = distributed_events_client::js::JsEventBusClient::new(options).expect("client");
    until_live(&client).await;
    assert_eq!(last_authorization().as_deref(), Some("Bearer t-123"));
    settled(client.close()).await.expect("close");
}

#[wasm_bindgen_test]
async fn a_persisted_cursor_resumes_after_a_reload_with_nothing_lost_or_repeated() {
    let storage = web_sys::window()
        .and_then(|w| w.local_storage().ok().flatten())
        .expect("localStorage");
    let key = format!("distributed-events:cursor:{}", server());
    storage.remove_item(&key).expect("clear the saved cursor");
    let event_type = unique("Visit");
    let writer = js_client(&options(r#", "autoForward": true"#)).expect("writer");
    let options = || js_sys::JSON::parse(r#"{"aggregateId": "v"}"#).expect("options");

    let first = js_client(&self::options(r#", "persistCursor": true"#)).expect("first page");
    until_live(&first).await;
    let seen = js_sys::Array::new();
    let _keep = first.on(event_type.clone(), handler(&seen));
    writer
        .publish(event_type.clone(), 1.into(), options())
        .expect("publish");
    eventually("the first page's event", || seen.length() == 1).await;
    let saved = first.cursor().expect("a cursor");
    settled(first.close()).await.expect("close"); // the reload
    let stored: f64 = storage
        .get_item(&key)
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .expect("a saved cursor");
    assert!(
        stored >= get(&seen.get(0), "position").as_f64().unwrap_or(f64::MAX),
        "saved past the event"
    );
    assert_eq!(stored, saved);

    writer
        .publish(event_type.clone(), 2.into(), options())
        .expect("publish while reloading");
    let second = js_client(&self::options(r#", "persistCursor": true"#)).expect("second page");
    let _keep_too = second.on(event_type.clone(), handler(&seen));
    eventually("the second page's event", || seen.length() == 2).await;
    TimeoutFuture::new(100).await;
    let payloads: Vec<_> = seen.iter().map(|e| get(&e, "payload").as_f64()).collect();
    assert_eq!(
        payloads,
        [Some(1.0), Some(2.0)],
        "the missed event, and nothing again"
    );
    settled(second.close()).await.expect("close");
    settled(writer.close()).await.expect("close");
    storage.remove_item(&key).expect("clean up");
}

#[wasm_bindgen_test]
async fn status_reports_backing_off_with_the_error_and_the_retry_time() {
    // Nothing listens on port 9 (discard): every request fails.
    let client = js_client(r#"{"serverUrl": "http://127.0.0.1:9"}"#).expect("client");
    let statuses = js_sys::Array::new();
    let _keep = client.on_status(handler(&statuses));
    eventually("a backing-off status", || {
        statuses.iter().any(|s| get(&s, "state") == "backingOff")
    })
    .await;
    let backing_off = statuses
        .iter()
        .find(|s| get(s, "state") == "backingOff")
        .expect("found above");
    assert_eq!(get(&statuses.get(0), "state"), "connecting");
    let error = get(&backing_off, "error");
    assert!(error.is_instance_of::<js_sys::Error>());
    assert_eq!(get(&error, "code"), "network_error");
    let retry_at = get(&backing_off, "retryAt").as_f64().expect("retryAt");
    assert!(
        retry_at >= js_sys::Date::now() - 60_000.0,
        "a time near now, in ms since the epoch"
    );
    settled(client.close()).await.expect("close");
    // Ending in `closed`, after the backoff timer was cancelled.
    eventually("the closed status", || {
        get(&statuses.get(statuses.length() - 1), "state") == "closed"
    })
    .await;
}
