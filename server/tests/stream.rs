//! The Server-Sent Events mode of `GET /events` over real sockets: catch-up then live,
//! resuming with `Last-Event-ID`, keep-alive, the end of a stream (its longest life, the
//! token's expiry, shutdown), `410` before and `cursor_expired` mid-stream, the long-poll
//! cap, disconnects, the connection limits, authentication, and curl.

mod common;

use std::sync::Arc;
use std::time::Duration;

use distributed_events_server::store::MemoryStore;
use distributed_events_server::{
    serve, AuthRejection, EventBusServer, Limits, Principal, ServeOptions, StoredEvent,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Generous bound for anything the server should do within a few seconds.
const PATIENCE: Duration = Duration::from_secs(30);

/// A server on a loopback port, served by the library's [`serve`] until `stop` is
/// cancelled (which also begins the server's shutdown, as the binary does).
struct Running {
    server: EventBusServer,
    base: String,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

async fn start(server: EventBusServer, options: ServeOptions) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let draining = server.clone();
    let stopped = stop.clone();
    let app = server.router();
    let served = tokio::spawn(async move {
        serve(listener, app, options, async move {
            stopped.cancelled().await;
            draining.begin_shutdown();
        })
        .await;
    });
    Running {
        server,
        base,
        stop,
        served,
    }
}

fn memory_server(limits: Limits) -> EventBusServer {
    EventBusServer::builder(Arc::new(MemoryStore::new()))
        .limits(limits)
        .build()
}

fn event_body(created_at: &str, event_json: &str) -> Value {
    json!({
        "id": Uuid::now_v7(),
        "createdAt": created_at,
        "aggregateId": "order-1",
        "eventType": "OrderPlaced",
        "eventJson": event_json,
    })
}

async fn post(client: &reqwest::Client, base: &str, body: &Value) -> u64 {
    let response = client
        .post(format!("{base}/events"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "POST /events");
    response.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .unwrap()
}

async fn post_now(client: &reqwest::Client, base: &str) -> u64 {
    post(
        client,
        base,
        &event_body(&chrono::Utc::now().to_rfc3339(), "{}"),
    )
    .await
}

/// One message of a stream: its fields, and its comment lines.
#[derive(Debug, Default, PartialEq)]
struct Message {
    comments: Vec<String>,
    id: Option<u64>,
    event: Option<String>,
    data: Option<String>,
    retry: Option<u64>,
}

impl Message {
    fn parse(block: &str) -> Self {
        let mut message = Self::default();
        for line in block.lines() {
            if let Some(comment) = line.strip_prefix(':') {
                message.comments.push(comment.trim().to_owned());
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" => message.id = Some(value.parse().expect("a numeric id")),
                "event" => message.event = Some(value.to_owned()),
                "data" => {
                    assert!(
                        message.data.is_none(),
                        "one data line per message: {block:?}"
                    );
                    message.data = Some(value.to_owned());
                }
                "retry" => message.retry = Some(value.parse().unwrap()),
                _ => panic!("unknown field in {block:?}"),
            }
        }
        message
    }

    /// The event this message carries, checked against its id.
    fn stored_event(&self) -> StoredEvent {
        let event: StoredEvent =
            serde_json::from_str(self.data.as_deref().expect("an event has data")).unwrap();
        assert_eq!(event.position, self.id, "the id is the event's position");
        event
    }
}

/// An open stream, read message by message.
struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    /// Opens a stream of `path`, expecting `200` and the stream's headers.
    async fn open(base: &str, path: &str, headers: &[(&str, &str)]) -> Self {
        let response = request(base, path, headers).await;
        assert_eq!(response.status(), 200, "GET {path} as a stream");
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "text/event-stream");
        assert_eq!(header("cache-control"), "no-store");
        assert_eq!(header("x-accel-buffering"), "no");
        let mut stream = Self {
            response,
            buffer: String::new(),
        };
        let opening = stream.next().await.expect("the opening comment");
        assert_eq!(opening.comments, ["ok"], "first `: ok`");
        let retry = stream.next().await.expect("the retry message");
        assert_eq!(retry.retry, Some(1000));
        stream
    }

    /// The next message, or `None` when the server ended the stream cleanly.
    async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block = self.buffer[..end].to_owned();
                    self.buffer.drain(..end + 2);
                    return Some(Message::parse(&block));
                }
                match self
                    .response
                    .chunk()
                    .await
                    .expect("the stream ends cleanly")
                {
                    Some(chunk) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                    None => {
                        assert!(self.buffer.is_empty(), "a cut message: {:?}", self.buffer);
                        return None;
                    }
                }
            }
        })
        .await
        .expect("a message or the end of the stream within 30 s")
    }

    /// The next message that is not a keep-alive.
    async fn next_message(&mut self) -> Option<Message> {
        loop {
            let message = self.next().await?;
            if message.comments != ["keep-alive"] {
                return Some(message);
            }
        }
    }

    /// The next event, failing on anything else.
    async fn next_event(&mut self) -> StoredEvent {
        let message = self.next_message().await.expect("an event, not the end");
        message.stored_event()
    }
}

async fn request(base: &str, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_then_live_events_in_order_with_their_positions_as_ids() {
    let running = start(memory_server(Limits::default()), ServeOptions::default()).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        post_now(&client, &running.base).await;
    }
    // A page of 2: the catch-up takes two reads.
    let mut stream = Stream::open(&running.base, "/events?after=0&limit=2", &[]).await;
    for position in 1..=3 {
        assert_eq!(stream.next_event().await.position, Some(position));
    }
    for expected in 4..=6 {
        let position = post_now(&client, &running.base).await;
        assert_eq!(position, expected);
        let event = stream.next_event().await;
        assert_eq!(event.position, Some(position), "live, in order");
        assert_eq!(event.event_type, "OrderPlaced");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_after_it_and_wins_over_after() {
    let running = start(memory_server(Limits::default()), ServeOptions::default()).await;
    let client = reqwest::Client::new();
    for _ in 0..4 {
        post_now(&client, &running.base).await;
    }
    let mut stream =
        Stream::open(&running.base, "/events?after=0", &[("last-event-id", "2")]).await;
    assert_eq!(stream.next_event().await.position, Some(3));
    assert_eq!(stream.next_event().await.position, Some(4));

    for malformed in ["two", "-1", ""] {
        let refused = request(
            &running.base,
            "/events?after=0",
            &[("last-event-id", malformed)],
        )
        .await;
        assert_eq!(refused.status(), 400, "Last-Event-ID {malformed:?}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["code"], "bad_request");
        assert!(
            body["error"].as_str().unwrap().contains("Last-Event-ID"),
            "the error names the header: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_stream_catches_up_from_that_time_then_goes_live() {
    let running = start(memory_server(Limits::default()), ServeOptions::default()).await;
    let client = reqwest::Client::new();
    post(
        &client,
        &running.base,
        &event_body("2020-01-01T00:00:00Z", "{}"),
    )
    .await;
    let recent = post(
        &client,
        &running.base,
        &event_body("2024-06-01T00:00:00Z", "{}"),
    )
    .await;
    let mut stream = Stream::open(&running.base, "/events?since=2024-01-01T00:00:00Z", &[]).await;
    assert_eq!(stream.next_event().await.position, Some(recent));
    let live = post_now(&client, &running.base).await;
    assert_eq!(stream.next_event().await.position, Some(live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_sends_keep_alive_comments() {
    let limits = Limits {
        stream_keep_alive: Duration::from_millis(100),
        ..Limits::default()
    };
    let running = start(memory_server(limits), ServeOptions::default()).await;
    let mut stream = Stream::open(&running.base, "/events?after=0", &[]).await;
    for _ in 0..2 {
        let message = stream.next().await.expect("a keep-alive, not the end");
        assert_eq!(message.comments, ["keep-alive"], "{message:?}");
    }
    let position = post_now(&reqwest::Client::new(), &running.base).await;
    assert_eq!(stream.next_event().await.position, Some(position));
}

/// Limits past what a clock holds or of zero (a library user's `Limits`) neither panic nor
/// spin: the stream opens and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_stream_limits_neither_panic_nor_spin() {
    let limits = Limits {
        max_stream_duration: Duration::MAX,
        stream_keep_alive: Duration::ZERO,
        ..Limits::default()
    };
    let running = start(memory_server(limits), ServeOptions::default()).await;
    let mut stream = Stream::open(&running.base, "/events?after=0", &[]).await;
    let position = post_now(&reqwest::Client::new(), &running.base).await;
    assert_eq!(stream.next_event().await.position, Some(position));
}

/// The server ends streams after their longest life; a client that reconnects each time
/// with `Last-Event-ID` sees every event once, in order, while a publisher posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_after_their_longest_life_and_resume_without_loss_or_repeat() {
    let limits = Limits {
        max_stream_duration: Duration::from_millis(300),
        ..Limits::default()
    };
    let running = start(memory_server(limits), ServeOptions::default()).await;
    const EVENTS: u64 = 40;
    let base = running.base.clone();
    let publisher = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for _ in 0..EVENTS {
            post_now(&client, &base).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut seen = Vec::new();
    let mut ends = 0;
    while seen.len() < EVENTS as usize {
        let last = seen.last().copied().unwrap_or(0).to_string();
        let mut stream = Stream::open(
            &running.base,
            "/events?after=0",
            &[("last-event-id", last.as_str())],
        )
        .await;
        while let Some(message) = stream.next_message().await {
            seen.push(message.stored_event().position.unwrap());
            if seen.len() == EVENTS as usize {
                break;
            }
        }
        ends += 1;
    }
    publisher.await.unwrap();
    assert_eq!(
        seen,
        (1..=EVENTS).collect::<Vec<_>>(),
        "nothing lost nor repeated"
    );
    assert!(ends > 1, "the server ended the streams on its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cursor_is_refused_with_410_before_the_stream_starts() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .retention(Duration::from_millis(500))
        .build();
    let running = start(server, ServeOptions::default()).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        post_now(&client, &running.base).await;
    }
    // Past the retention of the first three.
    tokio::time::sleep(Duration::from_millis(600)).await;
    post_now(&client, &running.base).await;
    assert_eq!(running.server.cleanup().await.unwrap(), 3);
    let refused = request(&running.base, "/events?after=1", &[]).await;
    assert_eq!(refused.status(), 410);
    assert_eq!(refused.headers()["content-type"], "application/json");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "cursor_expired");
    assert_eq!(body["resumeAfter"], 3);
}

/// A reader that retention overtakes mid-stream (here: it stops reading while the
/// events it has yet to get are deleted) gets `event: cursor_expired`, then the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_overtaking_a_slow_stream_sends_cursor_expired_then_ends_it() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .retention(Duration::from_millis(500))
        // A small tail, so that the catch-up reads the store.
        .limits(Limits {
            tail_bytes: 1024 * 1024,
            ..Limits::default()
        })
        .build();
    let running = start(server, ServeOptions::default()).await;
    let client = reqwest::Client::new();
    // 24 MB of old events: more than the socket buffers hold.
    const OLD: u64 = 60;
    let big = json!({ "blob": "x".repeat(400 * 1024) }).to_string();
    for _ in 0..OLD {
        post(
            &client,
            &running.base,
            &event_body("2020-01-01T00:00:00Z", &big),
        )
        .await;
    }
    // Past the retention of the old events.
    tokio::time::sleep(Duration::from_millis(600)).await;
    post_now(&client, &running.base).await;

    // A client with a small receive buffer that reads nothing for now.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = running.base.trim_start_matches("http://").parse().unwrap();
    let mut connection = socket.connect(address).await.unwrap();
    connection
        .write_all(
            b"GET /events?after=0&limit=1 HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    let mut first = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, connection.read(&mut first))
        .await
        .expect("the stream's first bytes within 30 s")
        .unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    // At least the old events; the last one too if it aged meanwhile.
    let deleted = running.server.cleanup().await.unwrap();
    assert!(deleted >= OLD, "{deleted} deleted");

    let body = read_body(&mut connection, first[..n].to_vec()).await;
    let messages: Vec<Message> = body
        .trim_end_matches("\n\n")
        .split("\n\n")
        .map(Message::parse)
        .collect();
    let events: Vec<u64> = messages
        .iter()
        .filter(|message| message.data.is_some() && message.event.is_none())
        .map(|message| message.stored_event().position.unwrap())
        .collect();
    assert!(
        !events.is_empty() && events.len() < OLD as usize,
        "some events came before retention overtook the reader: {events:?}"
    );
    assert_eq!(events, (1..=events.len() as u64).collect::<Vec<_>>());
    let last = messages.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("cursor_expired"), "{last:?}");
    let error: Value = serde_json::from_str(last.data.as_deref().unwrap()).unwrap();
    assert_eq!(error["code"], "cursor_expired");
    assert_eq!(error["resumeAfter"], deleted);
}

/// The chunks of a `Transfer-Encoding: chunked` body, joined.
fn dechunk(mut body: &[u8]) -> String {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16).unwrap();
        body = &body[line_end + 2..];
        if size == 0 {
            return String::from_utf8(out).unwrap();
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_stream_cleanly() {
    let running = start(memory_server(Limits::default()), ServeOptions::default()).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(Stream::open(&running.base, "/events?after=0", &[]).await);
    }
    running.stop.cancel();
    for stream in &mut streams {
        assert!(
            stream.next_message().await.is_none(),
            "the stream ends, without error"
        );
    }
    tokio::time::timeout(PATIENCE, running.served)
        .await
        .expect("serve returns once the streams ended")
        .unwrap();
}

/// Each stream holds a long-poll permit for its life: past the cap, streams and
/// long-polls are refused with `503` before they start; a client that disconnects gives
/// its permit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_hold_a_long_poll_permit_until_they_end_or_the_client_leaves() {
    let limits = Limits {
        max_long_polls: 1,
        ..Limits::default()
    };
    let running = start(memory_server(limits), ServeOptions::default()).await;
    let first = Stream::open(&running.base, "/events?after=0", &[]).await;

    let refused = request(&running.base, "/events?after=0", &[]).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "overloaded");
    let poll = reqwest::get(format!("{}/events?after=0&wait=5", running.base))
        .await
        .unwrap();
    assert_eq!(poll.status(), 503, "a long-poll finds no permit either");

    drop(first);
    let reopened = tokio::time::timeout(PATIENCE, async {
        loop {
            let response = request(&running.base, "/events?after=0", &[]).await;
            if response.status() == 200 {
                return response;
            }
            assert_eq!(response.status(), 503);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the disconnected stream's permit comes back within 30 s");
    drop(reopened);
}

/// A stream has a response in flight: the idle and header timeouts never close it, and
/// at the connection cap it is never evicted for a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_timeouts_and_the_cap_leave_an_open_stream_alone() {
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(100),
        max_connections: 1,
    };
    let running = start(memory_server(Limits::default()), options).await;
    let mut stream = Stream::open(&running.base, "/events?after=0", &[]).await;
    // A second connection at the cap: it waits, and the stream is not closed for it.
    let address = running.base.trim_start_matches("http://").to_owned();
    let mut waiting = tokio::net::TcpStream::connect(&address).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // Well past both timeouts, with nothing written on the stream.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let receipt = running
        .server
        .publish(distributed_events_server::DomainEvent::new(
            "order-1",
            Placed { amount: 3 },
        ))
        .await
        .unwrap();
    let event = stream.next_event().await;
    assert_eq!(
        event.position,
        Some(receipt.position),
        "the stream still delivers"
    );
    drop(stream);
    let mut answer = [0u8; 12];
    tokio::time::timeout(PATIENCE, waiting.read_exact(&mut answer))
        .await
        .expect("the waiting connection is served once the stream ends")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, distributed_events_server::Event)]
struct Placed {
    amount: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_a_stream_needs_credentials_and_ends_when_they_expire() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .authenticator(|headers: axum::http::HeaderMap| async move {
            match headers.get("authorization").and_then(|v| v.to_str().ok()) {
                Some("Bearer short") => Ok(Principal {
                    tenant_id: Some("tenant-a".into()),
                    expires_at: Some(chrono::Utc::now() + chrono::Duration::milliseconds(500)),
                    ..Principal::default()
                }),
                _ => Err(AuthRejection::bearer("a valid bearer token is required")),
            }
        })
        .build();
    let running = start(server, ServeOptions::default()).await;
    let anonymous = request(&running.base, "/events?after=0", &[]).await;
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");

    // The default longest life is 300 s: the token's expiry ends the stream first.
    let mut stream = Stream::open(
        &running.base,
        "/events?after=0",
        &[("authorization", "Bearer short")],
    )
    .await;
    assert!(
        stream.next_message().await.is_none(),
        "the stream ends when the token expires"
    );
}

/// What the README shows: `curl -N -H 'Accept: text/event-stream' …/events?after=0`
/// against the binary follows the stream (here until `--max-stream-duration` ends it).
#[test]
fn curl_follows_a_stream_of_the_binary() {
    let server =
        common::ServerProcess::start(&["--database", "memory", "--max-stream-duration", "2s"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let position = runtime.block_on(post_now(&client, &server.base));
    let url = format!("{}/events?after=0", server.base);
    let output = match std::process::Command::new("curl")
        .args(["-N", "-s", "-H", "Accept: text/event-stream", &url])
        .output()
    {
        Ok(output) => {
            assert!(output.status.success(), "curl: {output:?}");
            String::from_utf8(output.stdout).unwrap()
        }
        // No curl here: speak exactly what it sends.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            runtime.block_on(curl_over_tcp(&server.base))
        }
        Err(error) => panic!("cannot run curl: {error}"),
    };
    assert!(output.starts_with(": ok\n\nretry: 1000\n\n"), "{output:?}");
    let event = output
        .split("\n\n")
        .find(|block| block.starts_with("id: "))
        .map(Message::parse)
        .expect("an event message");
    assert_eq!(event.stored_event().position, Some(position));
}

/// The request curl 7/8 sends for `curl -N -H 'Accept: text/event-stream' URL`; the
/// body, dechunked.
async fn curl_over_tcp(base: &str) -> String {
    let host = base.trim_start_matches("http://");
    let mut connection = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!(
        "GET /events?after=0 HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: text/event-stream\r\n\r\n"
    );
    connection.write_all(request.as_bytes()).await.unwrap();
    read_body(&mut connection, Vec::new()).await
}

/// Reads an answer whose first bytes are `raw` until its chunked body ends (the
/// connection stays open: keep-alive); the body, dechunked.
async fn read_body(connection: &mut tokio::net::TcpStream, mut raw: Vec<u8>) -> String {
    tokio::time::timeout(PATIENCE, async {
        while !raw.ends_with(b"\r\n0\r\n\r\n") {
            let mut chunk = [0u8; 64 * 1024];
            let n = connection.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed before the body's end");
            raw.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the server ends the stream within 30 s");
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(raw.starts_with(b"HTTP/1.1 200"));
    dechunk(&raw[head_end..])
}

/// Events the caller may not see move the stream's cursor with a bare `id:`, in the
/// catch-up and live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_events_move_the_cursor_with_an_id_alone() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .authorization_filter(|event: &StoredEvent, _: &Principal| event.aggregate_id != "secret")
        .build();
    let running = start(server, ServeOptions::default()).await;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().to_rfc3339();
    let secret = || {
        let mut body = event_body(&now, "{}");
        body["aggregateId"] = json!("secret");
        body
    };
    post(&client, &running.base, &event_body(&now, "{}")).await;
    post(&client, &running.base, &secret()).await;
    post(&client, &running.base, &secret()).await;
    let mut stream = Stream::open(&running.base, "/events?after=0", &[]).await;
    assert_eq!(stream.next_event().await.position, Some(1));
    let moved = stream.next_message().await.unwrap();
    assert_eq!(
        moved,
        Message {
            id: Some(3),
            ..Message::default()
        },
        "the cursor moves past the hidden events"
    );
    let hidden = post(&client, &running.base, &secret()).await;
    let moved = stream.next_message().await.unwrap();
    assert_eq!((moved.id, moved.data), (Some(hidden), None));
    let shown = post(&client, &running.base, &event_body(&now, "{}")).await;
    assert_eq!(stream.next_event().await.position, Some(shown));
}

/// With the built-in JWT check, a stream shows the token's tenant only and ends when
/// the token's `exp` comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_stream_shows_its_tenant_only_and_ends_at_the_token_expiry() {
    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";
    let authenticator = distributed_events_server::JwtAuthenticator::new(
        distributed_events_server::JwtKey::Hs256(SECRET.as_bytes().to_vec()),
    )
    .unwrap();
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .authenticator(authenticator)
        .build();
    let running = start(server, ServeOptions::default()).await;
    let token = |tenant: &str, lifetime: i64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": "u", "tenant_id": tenant, "exp": chrono::Utc::now().timestamp() + lifetime}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let client = reqwest::Client::new();
    let post_as = |tenant: &'static str| {
        let client = client.clone();
        let base = running.base.clone();
        let token = token(tenant, 600);
        async move {
            let response = client
                .post(format!("{base}/events"))
                .bearer_auth(token)
                .json(&event_body(&chrono::Utc::now().to_rfc3339(), "{}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()["position"]
                .as_u64()
                .unwrap()
        }
    };
    let mine = post_as("a").await;
    post_as("b").await;
    let bearer = format!("Bearer {}", token("a", 2));
    let mut stream = Stream::open(
        &running.base,
        "/events?after=0",
        &[("authorization", bearer.as_str())],
    )
    .await;
    let event = stream.next_event().await;
    assert_eq!(event.position, Some(mine));
    assert_eq!(event.tenant_id.as_deref(), Some("a"));
    let mut others = Vec::new();
    while let Some(message) = stream.next_message().await {
        assert!(
            message.data.is_none(),
            "another tenant's event: {message:?}"
        );
        others.push(message.id);
    }
    assert_eq!(
        others,
        [Some(2)],
        "the other tenant's event only moves the cursor"
    );
}
