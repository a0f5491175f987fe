//! Helpers of `faults.rs` and `soak.rs`: the event type, raw HTTP straight to the server
//! (posts retried under their id, reads of the whole store), clients whose handlers
//! record what they get, and the exactly-once-in-order check.
#![allow(dead_code)] // each test binary uses a part

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distributed_events_client::{
    ClientBuilder, DomainEvent, Event, EventBusClient, Status, StoredEvent,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long a test may wait for what it expects before it fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
pub struct Note {
    pub producer: String,
    pub seq: usize,
}

pub fn note(producer: &str, seq: usize) -> DomainEvent<Note> {
    DomainEvent::new(
        producer,
        Note {
            producer: producer.to_owned(),
            seq,
        },
    )
}

pub fn decode_note(event: &StoredEvent) -> Note {
    serde_json::from_str(&event.event_json)
        .unwrap_or_else(|error| panic!("event {} is not a Note ({error})", event.id))
}

/// A client of `base` that starts at the beginning and retries quickly.
pub fn client(base: &str) -> ClientBuilder {
    EventBusClient::builder(base)
        .initial_position(0)
        .backoff(Duration::from_millis(20), Duration::from_millis(300))
}

// --- raw HTTP, straight to the server ------------------------------------------------

/// A `201` answer to a post.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub id: Uuid,
    pub position: u64,
}

/// Posts `event` until it is answered `201`, retrying network errors and `5xx` under the
/// same id (as the protocol tells clients to) and counting them in `failures`; fails on
/// any other answer and after [`PATIENCE`].
pub async fn post_until_acked(
    http: &reqwest::Client,
    base: &str,
    event: &StoredEvent,
    failures: &AtomicUsize,
) -> Ack {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        match http.post(format!("{base}/events")).json(event).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::CREATED => {
                let receipt: Value = response.json().await.expect("a receipt");
                let position = receipt["position"].as_u64().expect("receipt position");
                assert_eq!(
                    receipt["id"].as_str(),
                    Some(event.id.to_string().as_str()),
                    "the receipt names another event"
                );
                return Ack {
                    id: event.id,
                    position,
                };
            }
            Ok(response) if response.status().is_server_error() => {
                error_code(&response.text().await.unwrap_or_default());
            }
            Ok(response) => panic!(
                "the server refused event {}: {} {}",
                event.id,
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(_) => {}
        }
        failures.fetch_add(1, Ordering::Relaxed);
        assert!(
            started.elapsed() < PATIENCE,
            "event {} was not stored within {PATIENCE:?}",
            event.id
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

/// Asserts that an error answer has the protocol's body `{"error": "...", "code": "..."}`;
/// returns the code.
pub fn error_code(body: &str) -> String {
    let parsed: Value = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("an error answer without a JSON body: {body:?}"));
    assert!(
        parsed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "an error body without `error`: {body}"
    );
    parsed["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error body without `code`: {body}"))
        .to_owned()
}

/// Every event the server holds, in position order, read page by page from `base`.
pub async fn read_all(http: &reqwest::Client, base: &str) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let response = http
            .get(format!("{base}/events?after={after}&limit=1000"))
            .send()
            .await
            .expect("the server answers reads");
        assert_eq!(response.status(), reqwest::StatusCode::OK, "a read");
        let cursor: u64 = response
            .headers()
            .get("x-events-cursor")
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .expect("X-Events-Cursor on every 200");
        let page: Vec<StoredEvent> = response.json().await.expect("an array of events");
        if page.is_empty() {
            return all;
        }
        assert!(cursor > after, "the cursor did not move past {after}");
        all.extend(page);
        after = cursor;
    }
}

/// Reads from the server until it holds every event of `ids`; returns everything it holds.
pub async fn wait_until_stored(
    http: &reqwest::Client,
    base: &str,
    ids: &[Uuid],
) -> Vec<StoredEvent> {
    let started = Instant::now();
    loop {
        let all = read_all(http, base).await;
        let stored: HashSet<Uuid> = all.iter().map(|event| event.id).collect();
        let missing = ids.iter().filter(|id| !stored.contains(id)).count();
        if missing == 0 {
            return all;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{missing} of {} published events never reached the server within {PATIENCE:?}: an outbox lost them or stopped",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `stored` (one read of the whole store) holds each id once, in strictly
/// increasing positions; returns the ids in position order.
pub fn assert_store_consistent(stored: &[StoredEvent]) -> Vec<Uuid> {
    let mut ids = HashSet::new();
    let mut last = 0;
    for event in stored {
        assert!(ids.insert(event.id), "the server holds {} twice", event.id);
        let position = event.position.expect("a stored event has a position");
        assert!(
            position > last,
            "the server returned position {position} after {last}"
        );
        last = position;
    }
    stored.iter().map(|event| event.id).collect()
}

// --- what clients' handlers saw --------------------------------------------------------

/// One event as a handler received it.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub id: Uuid,
    pub position: Option<u64>,
}

/// A client whose typed handler (`on::<Note>()`) records every event it gets.
pub struct Recorder {
    pub name: String,
    pub client: EventBusClient,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    pub fn new(name: impl Into<String>, client: EventBusClient) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut handler = client.on::<Note>();
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                record.lock().expect("not poisoned").push(Seen {
                    id: event.id,
                    position: event.position,
                });
            }
        });
        Self {
            name: name.into(),
            client,
            seen,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// Waits until the handler got `id`.
    pub async fn wait_for(&self, id: Uuid) {
        let started = Instant::now();
        let arrived = || {
            let seen = self.seen.lock().expect("not poisoned");
            seen.iter().any(|seen| seen.id == id)
        };
        while !arrived() {
            assert!(
                started.elapsed() < PATIENCE,
                "{}: event {id} did not arrive within {PATIENCE:?} (got {} events; status {:?})",
                self.name,
                self.seen().len(),
                self.client.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the client; what its handler got.
    pub async fn close(self) -> Vec<Seen> {
        let seen = self.seen();
        self.client.close().await;
        // A typed handler is a subscription to the local bus, which outlives the client.
        self.task.abort();
        seen
    }
}

/// Asserts that `who`'s handler got each event of `expected` exactly once and nothing
/// else, the events from the server in strictly increasing positions; with
/// `exact_order`, in exactly the order of `expected`. (A client's own events reach its
/// handlers when it publishes them, without a position, so a producer's sequence
/// interleaves differently.)
pub fn assert_exactly_once_in_order(
    who: &str,
    seen: &[Seen],
    expected: &[Uuid],
    exact_order: bool,
) {
    let mut first_at: HashMap<Uuid, usize> = HashMap::new();
    let mut last = 0;
    for (index, event) in seen.iter().enumerate() {
        if let Some(earlier) = first_at.insert(event.id, index) {
            panic!(
                "{who}: event {} reached the handler twice (as number {earlier} and {index} of {})",
                event.id,
                seen.len()
            );
        }
        if let Some(position) = event.position {
            assert!(
                position > last,
                "{who}: event {} at position {position} came after position {last}",
                event.id
            );
            last = position;
        }
    }
    let expected_set: HashSet<Uuid> = expected.iter().copied().collect();
    if let Some(extra) = seen.iter().find(|event| !expected_set.contains(&event.id)) {
        panic!("{who}: got event {extra:?}, which the server does not hold",);
    }
    let missing: Vec<&Uuid> = expected
        .iter()
        .filter(|id| !first_at.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{who}: {} of {} events never reached the handler, first {}",
        missing.len(),
        expected.len(),
        missing[0]
    );
    if exact_order {
        let ids: Vec<Uuid> = seen.iter().map(|event| event.id).collect();
        if let Some(index) = (0..ids.len()).find(|&i| ids[i] != expected[i]) {
            panic!(
                "{who}: the handler's order differs from the server's at number {index}: {} instead of {}",
                ids[index], expected[index]
            );
        }
    }
}

/// Ends a run: posts a last marker event, waits until every handler got it, closes every
/// client, and asserts that each handler got `expected` and the marker, each once, in
/// order (consumers in exactly the server's order).
pub async fn end_with_marker(
    http: &reqwest::Client,
    base: &str,
    mut expected: Vec<Uuid>,
    consumers: Vec<Recorder>,
    producers: Vec<Recorder>,
) {
    let marker = note("marker", 0).to_stored().expect("an event");
    post_until_acked(http, base, &marker, &AtomicUsize::new(0)).await;
    expected.push(marker.id);
    for recorder in consumers.iter().chain(&producers) {
        recorder.wait_for(marker.id).await;
    }
    for (recorders, exact_order) in [(consumers, true), (producers, false)] {
        for recorder in recorders {
            let name = recorder.name.clone();
            let seen = recorder.close().await;
            assert_exactly_once_in_order(&name, &seen, &expected, exact_order);
        }
    }
}

/// Counts the times `client` went into `BackingOff`.
pub fn count_backoffs(client: &EventBusClient, count: &Arc<AtomicUsize>) -> JoinHandle<()> {
    let mut changes = client.status_changes();
    let count = Arc::clone(count);
    tokio::spawn(async move {
        while let Some(status) = changes.next().await {
            if matches!(status, Status::BackingOff { .. }) {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Waits until `client` is live again: both its loops' last requests succeeded.
pub async fn wait_live(who: &str, client: &EventBusClient) {
    let started = Instant::now();
    while !matches!(client.status(), Status::Live { .. }) {
        assert!(
            started.elapsed() < PATIENCE,
            "{who} is not live {PATIENCE:?} after the faults ended: {:?}",
            client.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes through `client`'s outbox (`auto_forward`) every `every`, until `stop` or
/// `limit` events; returns the ids in publish order.
pub fn publish_steadily(
    name: String,
    client: EventBusClient,
    every: Duration,
    limit: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<Uuid>> {
    tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < limit && !stop.load(Ordering::SeqCst) {
            let event = note(&name, ids.len());
            ids.push(event.id);
            client.publish(event).expect("publish");
            tokio::time::sleep(every).await;
        }
        ids
    })
}

/// Asserts that each producer's events are stored in the order it published them (an
/// outbox posts one at a time, the next only once the previous is stored).
pub fn assert_producers_in_order(stored: &[StoredEvent], published: &HashMap<String, Vec<Uuid>>) {
    let mut stored_by: HashMap<String, Vec<Uuid>> = HashMap::new();
    for event in stored {
        stored_by
            .entry(decode_note(event).producer)
            .or_default()
            .push(event.id);
    }
    for (producer, ids) in published {
        assert_eq!(
            stored_by.get(producer),
            Some(ids),
            "{producer}: the server holds its events once each and in the order published"
        );
    }
}
