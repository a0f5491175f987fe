//! The Rust client in headless Chromium against a real server: the browser transport
//! (fetch, streams, timers, localStorage), as Yew and Leptos apps use it. The npm
//! package's JS client is tested in www/ (Chromium) and js/test (Node).
//! `scripts/test-wasm.sh` starts the server and passes its URL in
//! `DISTRIBUTED_EVENTS_TEST_SERVER` at compile time.
#![cfg(target_arch = "wasm32")]

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use distributed_events_client::{
    event_registry, ClientError, DomainEvent, Event, EventBusClient, LocalStorageCursorStore,
    Status, Transport, MAX_NESTING,
};
use futures::future::{select, Either};
use futures::{Stream, StreamExt};
use gloo_timers::future::TimeoutFuture;
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

/// The next item of `stream`, waiting up to 20 s; fails instead of hanging.
async fn next<S: Stream + Unpin>(what: &str, stream: &mut S) -> S::Item {
    match select(stream.next(), TimeoutFuture::new(20_000)).await {
        Either::Left((Some(item), _)) => item,
        Either::Left((None, _)) => panic!("the stream ended while waiting for {what}"),
        Either::Right(_) => panic!("gave up waiting for {what}"),
    }
}

/// What `stream` still yields until it ends, waiting up to 20 s for the end.
async fn rest<S: Stream + Unpin>(what: &str, stream: S) -> Vec<S::Item> {
    match select(stream.collect::<Vec<_>>(), TimeoutFuture::new(20_000)).await {
        Either::Left((items, _)) => items,
        Either::Right(_) => panic!("{what} did not end"),
    }
}

/// The next event of `aggregate` from `stream`, skipping those of other aggregates.
async fn next_of<T: Event, S: Stream<Item = DomainEvent<T>> + Unpin>(
    what: &str,
    aggregate: &str,
    stream: &mut S,
) -> DomainEvent<T> {
    loop {
        let event = next(what, stream).await;
        if event.aggregate_id == aggregate {
            return event;
        }
    }
}

/// Waits until `client` is live (so that it has found the server's head, and sees what
/// is published from now on).
async fn live(client: &EventBusClient) {
    let mut status = client.status();
    for _ in 0..1000 {
        if matches!(status, Status::Live { .. }) {
            return;
        }
        TimeoutFuture::new(20).await;
        status = client.status();
    }
    panic!("gave up waiting for the client to be live; its status: {status:?}");
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
export function fetchesAbortedWhilePending() {
  return globalThis.__fetches.filter((f) => f.abortedPending).length;
}
export function requests() {
  return JSON.stringify(globalThis.__fetches.map((f) => ({
    method: f.request.method,
    url: f.request.url,
    authorization: f.request.headers.get("authorization"),
    pending: !f.settled && !f.request.signal.aborted,
  })));
}
export function openStreams() {
  return globalThis.__fetches.filter(
    (f) => f.request.headers.get("accept") === "text/event-stream" && !f.request.signal.aborted,
  ).length;
}
"#)]
extern "C" {
    fn trackFetches();
    #[wasm_bindgen(js_name = fetchesStillRunning)]
    fn fetches_still_running() -> u32;
    /// The event-stream fetches since `trackFetches()` not aborted yet.
    #[wasm_bindgen(js_name = openStreams)]
    fn open_streams() -> u32;
    /// The fetches since `trackFetches()` that were aborted before they settled.
    #[wasm_bindgen(js_name = fetchesAbortedWhilePending)]
    fn fetches_aborted_while_pending() -> u32;
    /// The fetches since `trackFetches()`, as JSON (see [`Request`]).
    #[wasm_bindgen(js_name = requests)]
    fn requests_json() -> String;
}

/// A fetch the page made, as `trackFetches` saw it.
#[derive(Debug, Deserialize)]
struct Request {
    method: String,
    url: String,
    authorization: Option<String>,
    /// Neither answered nor aborted yet.
    pending: bool,
}

fn requests() -> Vec<Request> {
    serde_json::from_str(&requests_json()).expect("the fetch log is JSON")
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

#[wasm_bindgen_test]
async fn the_rust_client_streams_by_default_and_close_aborts_the_stream() {
    trackFetches();
    let client = EventBusClient::builder(server()).build().expect("client");
    let mut greetings = client.on::<Greeting>();
    eventually("the client to be live by stream", || {
        client.status()
            == Status::Live {
                transport: Transport::Stream,
            }
    })
    .await;
    assert_eq!(open_streams(), 1, "one stream");

    // Events arrive by that stream, once each and in order, and it stays a stream.
    let writer = EventBusClient::builder(server())
        .auto_forward(true)
        .build()
        .expect("writer");
    let aggregate = unique("streamed");
    let sent: Vec<_> = (0..3)
        .map(|n| {
            DomainEvent::new(
                aggregate.clone(),
                Greeting {
                    text: format!("streamed {n}"),
                },
            )
        })
        .collect();
    for event in &sent {
        writer.publish(event.clone()).expect("publish");
    }
    let mut received = Vec::new();
    for _ in &sent {
        received.push(next_of("a streamed event", &aggregate, &mut greetings).await);
    }
    let ids = |events: &[DomainEvent<Greeting>]| events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&received), ids(&sent), "in order, once each");
    assert!(received.iter().all(|e| e.position.is_some()));
    assert_eq!(
        client.status(),
        Status::Live {
            transport: Transport::Stream
        }
    );

    writer.close().await;
    client.close().await;
    assert_eq!(open_streams(), 0, "close aborted the streams");
    assert_eq!(fetches_still_running(), 0, "and every request");
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
struct Deep {
    deep: serde_json::Value,
}

/// `[[…1…]]`, `depth` arrays deep.
fn nested(depth: usize) -> serde_json::Value {
    let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    serde_json::from_str(&text).expect("nested arrays")
}

/// The deepest event the server accepts (docs/PROTOCOL.md, `MAX_NESTING`) reaches typed
/// subscribers whole, through the browser's stream and serde_json; one level deeper the
/// server refuses, so the limit is the one tested.
#[wasm_bindgen_test]
async fn the_deepest_event_the_server_accepts_arrives_whole() {
    let writer = EventBusClient::builder(server())
        .auto_forward(true)
        .build()
        .expect("writer");
    let reader = EventBusClient::builder(server()).build().expect("reader");
    let mut refused = writer.errors();
    let mut received = reader.on::<Deep>();
    live(&reader).await;

    let aggregate = unique("deep");
    // The payload's object is one level, `deep` the rest; a page holds context values 3
    // levels deep (the array, the record, the context).
    let too_deep = DomainEvent::new(
        aggregate.clone(),
        Deep {
            deep: nested(MAX_NESTING),
        },
    );
    let deepest = DomainEvent::new(
        aggregate.clone(),
        Deep {
            deep: nested(MAX_NESTING - 1),
        },
    )
    .with_context("deep", nested(MAX_NESTING - 3));
    writer.publish(too_deep.clone()).expect("publish");
    writer.publish(deepest.clone()).expect("publish");

    let error = next("the refusal of the too deep event", &mut refused).await;
    assert!(
        matches!(&error, ClientError::Rejected { event, .. } if event.id == too_deep.id),
        "{error:?}"
    );
    let event = next_of("the deepest event at the reader", &aggregate, &mut received).await;
    assert_eq!(event.id, deepest.id, "the refused one never arrives");
    assert_eq!(event.payload, deepest.payload);
    assert_eq!(event.context, deepest.context);
    writer.close().await;
    reader.close().await;
}

#[wasm_bindgen_test]
async fn dropping_a_subscription_stops_it_and_leaves_the_others() {
    let writer = EventBusClient::builder(server())
        .auto_forward(true)
        .build()
        .expect("writer");
    let reader = EventBusClient::builder(server()).build().expect("reader");
    let mut kept = reader.on::<Greeting>();
    let mut dropped = reader.on::<Greeting>();
    let mut every = reader.events();
    let errors = reader.errors();
    live(&reader).await;
    let subscribers = || format!("{:?}", reader.event_bus());
    assert!(
        subscribers().contains("typed_subscribers: 2"),
        "{}",
        subscribers()
    );

    let aggregate = unique("ping");
    let greeting = |text: &str| {
        DomainEvent::new(
            aggregate.clone(),
            Greeting {
                text: text.to_owned(),
            },
        )
    };
    let first = greeting("first");
    writer.publish(first.clone()).expect("publish");
    assert_eq!(
        next_of("the kept one's", &aggregate, &mut kept).await.id,
        first.id
    );
    assert_eq!(
        next_of("the dropped one's", &aggregate, &mut dropped)
            .await
            .id,
        first.id
    );
    loop {
        let event = next("the untyped one's", &mut every).await;
        if event.id == first.id {
            break;
        }
    }
    drop(dropped);
    drop(every);

    let second = greeting("second");
    writer.publish(second.clone()).expect("publish");
    assert_eq!(
        next_of("the kept one's", &aggregate, &mut kept).await.id,
        second.id
    );
    // Dispatching found the dropped stream gone and forgot it: nothing buffers for it.
    assert!(
        subscribers().contains("typed_subscribers: 1"),
        "{}",
        subscribers()
    );
    assert!(
        matches!(reader.status(), Status::Live { .. }),
        "{:?}",
        reader.status()
    );
    writer.close().await;
    reader.close().await;
    let errors = rest("the reader's errors", errors).await;
    assert!(errors.is_empty(), "{errors:?}");
}

#[wasm_bindgen_test]
async fn close_aborts_the_waiting_request_and_ends_everything() {
    trackFetches();
    let client = EventBusClient::builder(server())
        .transport(Transport::LongPoll)
        .build()
        .expect("client");
    let statuses = client.status_changes();
    let (events, errors, stored) = (client.events(), client.errors(), client.stored());
    live(&client).await;
    eventually("a long-poll waiting at the server", || {
        requests()
            .iter()
            .any(|r| r.pending && r.url.contains("wait="))
    })
    .await;

    client.close().await;
    assert_eq!(
        fetches_still_running(),
        0,
        "no request left running: {:?}",
        requests()
    );
    assert!(
        fetches_aborted_while_pending() >= 1,
        "the waiting long-poll was aborted: {:?}",
        requests()
    );
    assert_eq!(client.status(), Status::Closed);
    let seen = rest("the statuses", statuses).await;
    assert_eq!(seen.last(), Some(&Status::Closed), "{seen:?}");
    // Every subscription of the client has ended.
    rest("the events", events).await;
    rest("the errors", errors).await;
    rest("the receipts", stored).await;

    let error = client
        .publish(DomainEvent::new(
            "a",
            Greeting {
                text: "too late".into(),
            },
        ))
        .expect_err("publishing after close fails");
    assert!(matches!(error, ClientError::Closed), "{error:?}");
    assert_eq!(error.code(), "closed");
}

#[wasm_bindgen_test]
async fn a_polling_interval_alone_polls_instead_of_long_polling() {
    trackFetches();
    let client = EventBusClient::builder(server())
        .polling_interval(Duration::from_millis(50))
        .build()
        .expect("client");
    let polls = || -> Vec<String> {
        requests()
            .into_iter()
            .map(|r| r.url)
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
    assert_eq!(
        client.status(),
        Status::Live {
            transport: Transport::Poll
        }
    );
    assert_eq!(open_streams(), 0, "no stream either");
    client.close().await;
}

#[wasm_bindgen_test]
async fn the_token_goes_with_every_request() {
    trackFetches();
    // A fresh token per request shows that it is asked for each time.
    let prefix = unique("token");
    let asked = Rc::new(Cell::new(0_u32));
    let source = {
        let (prefix, asked) = (prefix.clone(), Rc::clone(&asked));
        move || {
            asked.set(asked.get() + 1);
            let token = format!("{prefix}-{}", asked.get());
            async move { Ok::<_, String>(Some(token)) }
        }
    };
    let client = EventBusClient::builder(server())
        .auto_forward(true)
        .token_source(source)
        .build()
        .expect("client");
    let mut stored = client.stored();
    live(&client).await;
    let event = DomainEvent::new(
        unique("tokened"),
        Greeting {
            text: "with a token".into(),
        },
    );
    client.publish(event.clone()).expect("publish");
    assert_eq!(next("the receipt", &mut stored).await.id, event.id);
    client.close().await;

    let requests = requests();
    let methods = |method: &str| requests.iter().filter(|r| r.method == method).count();
    assert!(methods("GET") >= 2 && methods("POST") == 1, "{requests:?}");
    let mut tokens: Vec<_> = requests
        .iter()
        .map(|r| r.authorization.clone().unwrap_or_default())
        .collect();
    assert!(
        tokens
            .iter()
            .all(|t| t.starts_with(&format!("Bearer {prefix}-"))),
        "{requests:?}"
    );
    tokens.sort();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        requests.len(),
        "a token of its own each: {requests:?}"
    );
    assert!(asked.get() as usize >= requests.len());
}

#[wasm_bindgen_test]
async fn a_persisted_cursor_resumes_after_a_reload_with_nothing_lost_or_repeated() {
    let storage = web_sys::window()
        .and_then(|w| w.local_storage().ok().flatten())
        .expect("localStorage");
    // The default key; only this test saves a cursor.
    let key = format!(
        "distributed-events:cursor:{}",
        server().trim_end_matches('/')
    );
    storage.remove_item(&key).expect("clear the saved cursor");
    let page = || {
        EventBusClient::builder(server())
            .cursor_store(LocalStorageCursorStore)
            .build()
            .expect("a page's client")
    };
    let writer = EventBusClient::builder(server())
        .auto_forward(true)
        .build()
        .expect("writer");
    let aggregate = unique("visit");
    let visit = |n: u32| {
        DomainEvent::new(
            aggregate.clone(),
            Greeting {
                text: format!("visit {n}"),
            },
        )
    };

    let first = page();
    let mut seen = first.on::<Greeting>();
    live(&first).await;
    let one = visit(1);
    writer.publish(one.clone()).expect("publish");
    let got = next_of("the first page's event", &aggregate, &mut seen).await;
    assert_eq!(got.id, one.id);
    let saved = first.cursor().expect("a cursor");
    first.close().await; // the reload
    let stored: u64 = storage
        .get_item(&key)
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .expect("a saved cursor");
    assert!(
        stored >= got.position.expect("a position"),
        "saved past the event"
    );
    assert_eq!(stored, saved);

    let two = visit(2);
    writer
        .publish(two.clone())
        .expect("publish while reloading");
    let second = page();
    let mut seen = second.on::<Greeting>();
    // In order: a repeat of the first event would come before the second.
    let got = next_of("the second page's event", &aggregate, &mut seen).await;
    assert_eq!(got.id, two.id, "the missed event, and nothing again");
    second.close().await;
    writer.close().await;
    storage.remove_item(&key).expect("clean up");
}

#[wasm_bindgen_test]
async fn status_reports_backing_off_with_the_error_and_the_retry_time() {
    // Nothing listens on port 9 (discard), and Chromium blocks it: every request fails.
    let client = EventBusClient::builder("http://127.0.0.1:9")
        .build()
        .expect("client");
    let mut statuses = client.status_changes();
    assert_eq!(
        next("the first status", &mut statuses).await,
        Status::Connecting
    );
    let (error, retry_at) = match next("a backing-off status", &mut statuses).await {
        Status::BackingOff { error, retry_at } => (error, retry_at),
        other => panic!("expected backingOff, got {other:?}"),
    };
    assert_eq!(error.code(), "network_error", "{error:?}");
    let now = js_sys::Date::now();
    let retry_at = retry_at.timestamp_millis() as f64;
    assert!(
        (now - 60_000.0..=now + 600_000.0).contains(&retry_at),
        "a time near now: {retry_at} (now {now})"
    );
    client.close().await;
    // Ending in `closed`, after the backoff timer was cancelled.
    let after = rest("the statuses", statuses).await;
    assert_eq!(after.last(), Some(&Status::Closed), "{after:?}");
}
