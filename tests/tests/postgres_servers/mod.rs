//! Helpers of the multi-process PostgreSQL tests: a throw-away schema, real
//! `distributed-events-server` processes on it, and an HTTP client that behaves like the
//! protocol's "client in a few lines" (retries posts under the same id, follows the
//! cursor header).
#![allow(dead_code)] // each test binary uses a part

use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

#[path = "../../../server/tests/common/databases.rs"]
mod databases;

/// The PostgreSQL test database (`DATABASE_URL_TEST`), and a fresh schema in it per test.
pub use databases::{fresh_postgres_schema as fresh_schema, postgres_url as database_url};

/// One running server process, killed when dropped.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub base: String,
    child: Child,
}

impl Server {
    /// Starts `distributed-events-server --bind 127.0.0.1:0 --database <database> <extra>`
    /// and waits for its `listening on` line. Its log goes to the test's output (shown
    /// when the test fails), each line prefixed with `name`.
    pub fn start(name: &str, database: &str, extra: &[&str]) -> Self {
        let mut command = Command::new(distributed_events_tests::server_binary());
        command
            .args(["--bind", "127.0.0.1:0", "--database", database])
            .args(["--static-dir", "/nonexistent"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
            );
        let (mut child, address) = distributed_events_tests::spawn_listening(command, name)
            .expect("start distributed-events-server");
        let base = match address {
            Ok(address) => format!("http://{address}"),
            Err(_) => {
                let _ = child.kill();
                panic!("{name} did not print `listening on` within 30 s (see its log above)");
            }
        };
        Self {
            name: name.to_owned(),
            base,
            child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` servers on one database, started at the same time (so their schema
/// migrations race, as they would in a rolling deploy).
pub fn start_cluster(count: usize, database: &str, extra: &[&str]) -> Vec<Server> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .map(|i| {
                scope.spawn(move || Server::start(&format!("server-{}", i + 1), database, extra))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a server started"))
            .collect()
    })
}

/// A JSON event body with a fresh id; `tag` goes into the payload for the reader.
pub fn new_event(tag: &str) -> Value {
    json!({
        "id": Uuid::now_v7(),
        "createdAt": "2024-12-04T10:00:05.123456Z",
        "aggregateId": "aggregate-1",
        "eventType": "TestEvent",
        "eventJson": json!({ "tag": tag }).to_string(),
        "userId": "user-1",
        "tenantId": "tenant-1",
    })
}

/// What a post ended with.
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: String,
    pub position: u64,
    pub replayed: bool,
    /// 503s and network errors on the way (each retried under the same id).
    pub failures: usize,
}

/// Posts `event` until it is stored, retrying 5xx answers and network errors with a
/// short backoff, as the protocol tells clients to; fails on any 4xx. Gives up after
/// `patience`.
pub async fn post_until_stored(
    client: &reqwest::Client,
    server: &Server,
    event: &Value,
    patience: Duration,
) -> Ack {
    let started = Instant::now();
    let mut failures = 0;
    let mut backoff = Duration::from_millis(20);
    loop {
        match client.post(server.url("/events")).json(event).send().await {
            Ok(response) if response.status() == reqwest::StatusCode::CREATED => {
                let replayed = response.headers().get("idempotent-replayed").is_some();
                let body: Value = response.json().await.expect("receipt JSON");
                return Ack {
                    id: body["id"].as_str().expect("receipt id").to_owned(),
                    position: body["position"].as_u64().expect("receipt position"),
                    replayed,
                    failures,
                };
            }
            Ok(response) if response.status().is_server_error() => {
                assert_json_error(&response.text().await.unwrap_or_default());
            }
            Ok(response) => panic!(
                "{} refused a post: {} {}",
                server.name,
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(_) => {}
        }
        failures += 1;
        assert!(
            started.elapsed() < patience,
            "{} did not store {} within {patience:?}",
            server.name,
            event["id"]
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// One page of `GET /events?after=..&wait=..`: the events and `X-Events-Cursor`; `Err`
/// with the status (and body) of any non-200 answer or the network error.
pub async fn poll(
    client: &reqwest::Client,
    server: &Server,
    after: u64,
    wait_secs: f64,
) -> Result<(Vec<Value>, u64), (Option<reqwest::StatusCode>, String)> {
    let response = client
        .get(server.url(&format!(
            "/events?after={after}&wait={wait_secs}&limit=1000"
        )))
        .send()
        .await
        .map_err(|error| (None, error.to_string()))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err((Some(status), response.text().await.unwrap_or_default()));
    }
    let cursor = response
        .headers()
        .get("x-events-cursor")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .expect("X-Events-Cursor on every 200");
    let events: Vec<Value> = response.json().await.expect("an array of events");
    Ok((events, cursor))
}

/// What a reader saw, in the order it saw it.
#[derive(Debug, Default)]
pub struct Seen {
    pub ids: Vec<String>,
    pub positions: Vec<u64>,
    /// Error answers (5xx) and network errors on the way, each retried.
    pub errors: usize,
}

/// Reads from `server` by cursor (long-polling) until it has seen `until` events,
/// retrying errors with backoff like a client would; asserts on the way that positions
/// only increase and no id comes twice.
pub async fn read_until(
    client: &reqwest::Client,
    server: &Server,
    until: usize,
    patience: Duration,
) -> Seen {
    read_until_target(client, server, &AtomicUsize::new(until), patience).await
}

/// How long a reader that knows its target may get nothing new before it fails.
const STALL: Duration = Duration::from_secs(10);

/// [`read_until`] with a target that may be set later (it starts at `usize::MAX` while the
/// writers do not know their total yet).
pub async fn read_until_target(
    client: &reqwest::Client,
    server: &Server,
    until: &AtomicUsize,
    patience: Duration,
) -> Seen {
    let started = Instant::now();
    let mut seen = Seen::default();
    let mut ids = std::collections::HashSet::new();
    let mut after = 0;
    // Since when nothing new arrived although the target was known: a reader that skipped
    // events (or is never woken) stalls, and it should say so without waiting `patience`.
    let mut quiet_since = Instant::now();
    while seen.ids.len() < until.load(Ordering::SeqCst) {
        if until.load(Ordering::SeqCst) == usize::MAX {
            quiet_since = Instant::now();
        }
        assert!(
            quiet_since.elapsed() < STALL,
            "reader on {} stalled at {} of {} events for {STALL:?}: events were skipped or never announced",
            server.name,
            seen.ids.len(),
            until.load(Ordering::SeqCst)
        );
        assert!(
            started.elapsed() < patience,
            "reader on {} saw {} of {} events within {patience:?}",
            server.name,
            seen.ids.len(),
            until.load(Ordering::SeqCst)
        );
        match poll(client, server, after, 2.0).await {
            Ok((events, cursor)) => {
                if !events.is_empty() {
                    quiet_since = Instant::now();
                }
                for event in events {
                    let id = event["id"].as_str().expect("event id").to_owned();
                    let position = event["position"].as_u64().expect("event position");
                    assert!(
                        position > after,
                        "{}: position {position} at or below the cursor {after}",
                        server.name
                    );
                    if let Some(&last) = seen.positions.last() {
                        assert!(
                            position > last,
                            "{}: position {position} after {last}",
                            server.name
                        );
                    }
                    assert!(
                        ids.insert(id.clone()),
                        "{}: event {id} delivered twice",
                        server.name
                    );
                    seen.ids.push(id);
                    seen.positions.push(position);
                }
                assert!(
                    cursor >= after,
                    "the cursor went back from {after} to {cursor}"
                );
                after = cursor;
            }
            Err((Some(status), body)) if status.is_server_error() => {
                assert_json_error(&body);
                seen.errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((None, _)) => {
                seen.errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((Some(status), body)) => panic!("reader on {} got {status}: {body}", server.name),
        }
    }
    seen
}

/// Asserts that an error answer has the protocol's JSON body; returns its `code`.
pub fn assert_json_error(body: &str) -> String {
    let parsed: Value = serde_json::from_str(body)
        .unwrap_or_else(|_| panic!("error answer without a JSON body: {body:?}"));
    assert!(
        parsed["error"].is_string(),
        "error body without `error`: {body}"
    );
    parsed["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error body without `code`: {body}"))
        .to_owned()
}

/// Every event in the store, through `server`, by cursor.
pub async fn read_all(client: &reqwest::Client, server: &Server) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (events, cursor) = poll(client, server, after, 0.0)
            .await
            .expect("read all events");
        if events.is_empty() {
            return all;
        }
        all.extend(events);
        after = cursor;
    }
}

/// Median, 95th percentile and maximum of `samples`.
pub fn summary(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), at(1.0))
}
