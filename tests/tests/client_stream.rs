//! The Rust client's default transport, Server-Sent Events, against the real server
//! binary: every event once and in order across stream ends and a server restart, and
//! the fallback to long-polling behind a proxy that holds a stream's bytes. Waiting is
//! bounded only to turn a hang into a failure; nothing asserts on timing.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distributed_events_client::{
    event_registry, DomainEvent, Event, EventBusClient, Status, StoredEvent, Transport,
};
use distributed_events_tests::TestServer;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
struct Note {
    seq: usize,
}

/// How long a test may wait for what it expects before it fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(90);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("gave up after {PATIENCE:?}: {what}"))
}

fn client(url: String) -> distributed_events_client::ClientBuilder {
    EventBusClient::builder(url)
        .registry(event_registry![Note])
        .initial_position(0)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// Waits until `client`'s status is live by `transport`.
async fn live_by(client: &EventBusClient, transport: Transport) {
    let mut status = client.status_changes();
    within(&format!("the client to be live by {transport:?}"), async {
        loop {
            match status.next().await {
                Some(Status::Live { transport: now }) if now == transport => return,
                Some(_) => {}
                None => panic!("the status stream ended"),
            }
        }
    })
    .await;
}

/// The `seq` of each event until `count` arrived, asserting none came twice or out of
/// position order.
async fn receive<S>(what: &str, events: &mut S, count: usize) -> Vec<usize>
where
    S: Stream<Item = StoredEvent> + Unpin,
{
    let mut seen = HashSet::new();
    let mut last = 0;
    let mut seqs = Vec::new();
    within(what, async {
        while seqs.len() < count {
            let event = events.next().await.expect("the events stream ended");
            assert!(seen.insert(event.id), "{what}: {} twice", event.id);
            let position = event.position.expect("a stored event");
            assert!(position > last, "{what}: position {position} after {last}");
            last = position;
            let note: Note = serde_json::from_str(&event.event_json).expect("a Note");
            seqs.push(note.seq);
        }
    })
    .await;
    seqs
}

fn publish(writer: &EventBusClient, seqs: std::ops::Range<usize>) {
    for seq in seqs {
        writer
            .publish(DomainEvent::new("notes", Note { seq }))
            .expect("publish");
    }
}

/// Streams end every second here (`--max-stream-duration`), so the reader reconnects
/// with `Last-Event-ID` many times, and once more after the server restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_client_gets_every_event_once_in_order_across_stream_ends_and_a_restart() {
    let mut server = TestServer::start(&["--max-stream-duration", "1s"]);
    let writer = client(server.url())
        .auto_forward(true)
        .build()
        .expect("writer");
    let reader = client(server.url()).build().expect("reader");
    let mut events = reader.events();
    live_by(&reader, Transport::Stream).await;

    publish(&writer, 0..40);
    let first = receive("the first events", &mut events, 40).await;
    // Across several stream ends.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        publish(&writer, 40 + round * 10..50 + round * 10);
    }
    let middle = receive("events across stream ends", &mut events, 30).await;

    tokio::task::block_in_place(|| server.kill());
    publish(&writer, 70..90); // kept in the writer's outbox
    tokio::task::block_in_place(|| server.restart());
    let last = receive("events after the restart", &mut events, 20).await;

    let all: Vec<usize> = [first, middle, last].concat();
    assert_eq!(all, (0..90).collect::<Vec<_>>());
    assert_eq!(
        reader.status(),
        Status::Live {
            transport: Transport::Stream
        },
        "still streaming"
    );
    writer.close().await;
    reader.close().await;
}

/// A proxy that forwards everything but holds the body of every event stream, as a
/// proxy that buffers whole responses does. Counts the streams it held.
async fn holding_proxy(upstream: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let held = Arc::new(AtomicUsize::new(0));
    let counter = held.clone();
    tokio::spawn(async move {
        loop {
            let Ok((downstream, _)) = listener.accept().await else {
                return;
            };
            let Ok(upstream) = TcpStream::connect(&upstream).await else {
                continue;
            };
            tokio::spawn(relay(downstream, upstream, counter.clone()));
        }
    });
    (format!("http://{address}"), held)
}

/// Relays one connection. Once a request asks for an event stream, the answer's head
/// passes and its body is held.
async fn relay(downstream: TcpStream, upstream: TcpStream, held: Arc<AtomicUsize>) {
    let (mut down_read, mut down_write) = downstream.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    let streaming = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked = streaming.clone();
    let requests = tokio::spawn(async move {
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(n) = down_read.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buffer[..n]).to_ascii_lowercase();
            if text.contains("accept: text/event-stream") && !asked.swap(true, Ordering::SeqCst) {
                held.fetch_add(1, Ordering::SeqCst);
            }
            if up_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut buffer = vec![0; 16 * 1024];
    let mut head = Vec::new();
    let mut head_sent = false;
    while let Ok(n) = up_read.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        if !streaming.load(Ordering::SeqCst) {
            if down_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
            continue;
        }
        if head_sent {
            continue; // held, never sent
        }
        head.extend_from_slice(&buffer[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head_sent = true;
            if down_write.write_all(&head[..end + 4]).await.is_err() {
                break;
            }
        }
    }
    requests.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_that_holds_streams_the_client_long_polls_and_still_delivers() {
    let server = TestServer::start(&[]);
    let address = server.url().trim_start_matches("http://").to_owned();
    let (proxy, held) = holding_proxy(address).await;
    let writer = client(server.url())
        .auto_forward(true)
        .build()
        .expect("writer");
    let reader = client(proxy)
        .long_poll(Duration::from_secs(5))
        .transport(Transport::Stream)
        .build()
        .expect("reader");
    let mut events = reader.events();
    publish(&writer, 0..10);
    live_by(&reader, Transport::LongPoll).await;
    assert!(
        held.load(Ordering::SeqCst) >= 1,
        "the client tried a stream first"
    );
    publish(&writer, 10..30);
    let seqs = receive("every event through the proxy", &mut events, 30).await;
    assert_eq!(seqs, (0..30).collect::<Vec<_>>());
    assert_eq!(
        reader.status(),
        Status::Live {
            transport: Transport::LongPoll
        }
    );
    writer.close().await;
    reader.close().await;
}
