//! The Rust client in headless Chromium against a real server: the browser transport
//! (fetch, timers), as Yew and Leptos apps use it. The npm package's JS client is tested in
//! www/ (Chromium) and js/test (Node). `scripts/test-wasm.sh` starts the server
//! and passes its URL in `DISTRIBUTED_EVENTS_TEST_SERVER` at compile time.
#![cfg(target_arch = "wasm32")]

use distributed_events_client::{
    event_registry, DomainEvent, Event, EventBusClient, Status, Transport,
};
use futures::StreamExt;
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
"#)]
extern "C" {
    fn trackFetches();
    #[wasm_bindgen(js_name = fetchesStillRunning)]
    fn fetches_still_running() -> u32;
    /// The event-stream fetches since `trackFetches()` not aborted yet.
    #[wasm_bindgen(js_name = openStreams)]
    fn open_streams() -> u32;
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
    eventually("the client to be live by stream", || {
        client.status()
            == Status::Live {
                transport: Transport::Stream,
            }
    })
    .await;
    assert_eq!(open_streams(), 1, "one stream");
    client.close().await;
    assert_eq!(open_streams(), 0, "close aborted the stream");
    assert_eq!(fetches_still_running(), 0, "and every request");
}
