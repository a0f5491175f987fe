//! The scenarios of issue 5, one module each, and what they share: the event they post,
//! a clock they all read, starting the server, posting.

pub mod append;
pub mod batch;
pub mod ceiling;
pub mod fanout;
pub mod idle;
pub mod latency;
pub mod size;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use distributed_events_client::{Event, StoredEvent};
use serde::{Deserialize, Serialize};

use crate::server::{Database, ServerProcess};
use crate::{Args, BenchError, Transport};

/// The event every scenario posts: a sequence number and when it was sent, in
/// microseconds of [`now_us`] (publisher and receivers share this process's clock).
#[derive(Clone, Debug, Serialize, Deserialize, Event)]
pub struct BenchEvent {
    pub seq: u64,
    pub sent_us: u64,
}

/// Microseconds since this process first asked: a monotonic clock shared by every task.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The wire record of a new [`BenchEvent`], stamped with the time now.
pub fn new_event(seq: u64) -> StoredEvent {
    let payload = BenchEvent {
        seq,
        sent_us: now_us(),
    };
    StoredEvent {
        id: uuid::Uuid::now_v7(),
        created_at: chrono::Utc::now(),
        aggregate_id: format!("bench-{}", seq % 64),
        event_type: BenchEvent::EVENT_TYPE.to_owned(),
        event_json: serde_json::to_string(&payload).unwrap_or_default(),
        user_id: None,
        tenant_id: None,
        session_id: None,
        context: Default::default(),
        position: None,
    }
}

/// `POST /events` of one event; `Ok` only on `201`.
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    event: &StoredEvent,
) -> Result<(), BenchError> {
    let response = http
        .post(format!("{url}/events"))
        .json(event)
        .send()
        .await
        .map_err(|error| BenchError(format!("POST /events failed: {}", describe(&error))))?;
    let status = response.status();
    if status != reqwest::StatusCode::CREATED {
        let body = response.text().await.unwrap_or_default();
        return Err(BenchError(format!(
            "POST /events answered {status}: {body}"
        )));
    }
    Ok(())
}

/// The server's head position (`GET /healthz`).
pub async fn head(http: &reqwest::Client, url: &str) -> Result<u64, BenchError> {
    #[derive(Deserialize)]
    struct Health {
        head: u64,
    }
    let health: Health = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|error| BenchError(format!("GET /healthz failed: {}", describe(&error))))?
        .json()
        .await
        .map_err(|error| BenchError(format!("GET /healthz: {error}")))?;
    Ok(health.head)
}

/// Starts the server binary on `database` and a free port.
pub fn start_server(
    args: &Args,
    database: &Database,
    extra: &[&str],
) -> Result<ServerProcess, BenchError> {
    let mut arguments: Vec<String> = [
        "--bind",
        "127.0.0.1:0",
        "--database",
        &database.url(),
        "--static-dir",
        "/nonexistent",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    arguments.extend(extra.iter().map(|s| (*s).to_owned()));
    ServerProcess::start(&args.server_bin(), &arguments)
}

/// reqwest's message with its causes ("connection refused" is in the source chain).
pub fn describe(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// User plus system CPU seconds of this process so far (NaN when unknown).
pub fn own_cpu_seconds() -> f64 {
    crate::server::cpu_seconds("/proc/self/stat").unwrap_or(f64::NAN)
}

/// Waits until `done()` holds, checking every 20 ms, for at most `limit`.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Bytes as MiB.
pub fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// `n` native clients of `url` in live mode by `transport`, starting after `head`, once
/// all of them are live by that transport (a stream that fell back to long-polling does
/// not count) and their first request has had time to reach the server.
pub async fn live_clients(
    url: &str,
    n: usize,
    head: u64,
    transport: Transport,
) -> Result<Vec<distributed_events_client::EventBusClient>, BenchError> {
    use distributed_events_client::{event_registry, EventBusClient, Status};
    let transport = match transport {
        Transport::LongPoll => distributed_events_client::Transport::LongPoll,
        Transport::Stream => distributed_events_client::Transport::Stream,
    };
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let client = EventBusClient::builder(url)
            .registry(event_registry![BenchEvent])
            .initial_position(head)
            .transport(transport)
            .build()
            .map_err(|error| BenchError(format!("cannot build a client: {error}")))?;
        clients.push(client);
        // Do not open a thousand connections in one go (the listen backlog is 1024).
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let live = wait_until(Duration::from_secs(60), || {
        clients
            .iter()
            .all(|client| client.status() == Status::Live { transport })
    })
    .await;
    if !live {
        let stuck = clients
            .iter()
            .find(|client| client.status() != Status::Live { transport })
            .map(|client| format!("{:?}", client.status()))
            .unwrap_or_default();
        return Err(BenchError(format!(
            "not every client went live by {transport:?} within 60 s (one is {stuck})"
        )));
    }
    // Live means the catch-up read answered; give the long-polls (or streams) that follow
    // time to park.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(clients)
}
