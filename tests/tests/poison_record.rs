//! A record that no client can decode (as one stored before the server checked nesting
//! depth) must not stop delivery: the Rust client, over real HTTP, delivers the other
//! events of its page, reports the bad one with its position and id, and moves its
//! cursor past it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distributed_events_client::{ClientError, EventBusClient, StoredEvent};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the test may wait for what it expects before it fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

const GOOD_1: &str = "0193a5a0-7a4c-7c8e-9d2e-1f0a3b4c5d61";
const POISON: &str = "0193a5a0-7a4c-7c8e-9d2e-1f0a3b4c5d62";
const GOOD_3: &str = "0193a5a0-7a4c-7c8e-9d2e-1f0a3b4c5d63";

fn record(position: u64, id: &str, context: &str) -> String {
    format!(
        r#"{{"id":"{id}","createdAt":"2024-12-04T10:00:00Z","aggregateId":"a","eventType":"T","eventJson":"{{}}","context":{context},"position":{position}}}"#
    )
}

/// The page after position 0: a poison record, whose context nests past serde_json's
/// limit (127 levels) even outside a page, between two good ones.
fn first_page() -> String {
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    format!(
        "[{},{},{}]",
        record(1, GOOD_1, "{}"),
        record(2, POISON, &deep),
        record(3, GOOD_3, "{}")
    )
}

/// A minimal events server on a real socket: `after=0` gets [`first_page`], any other
/// request an empty page; every answer's cursor is 3. Returns its URL and the request
/// targets it saw.
async fn serve() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            // Each connection on its own task: a connection the client opened and left
            // idle (its pool may keep one) must not hold up the next.
            tokio::spawn(answer(stream, log.clone()));
        }
    });
    (url, seen)
}

/// Reads one request from `stream`, logs its target and answers it.
async fn answer(mut stream: TcpStream, log: Arc<Mutex<Vec<String>>>) {
    let mut request = Vec::new();
    let mut buffer = [0; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let target = request.split(' ').nth(1).unwrap_or_default().to_owned();
    let body = if target.starts_with("/events?after=0&") {
        first_page()
    } else {
        "[]".to_owned()
    };
    log.lock().expect("log").push(target);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Events-Cursor: 3\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_record_is_reported_and_skipped_and_the_others_are_delivered() {
    assert!(
        serde_json::from_str::<Vec<StoredEvent>>(&first_page()).is_err(),
        "the page must not decode as a whole, or this test proves nothing"
    );
    let (url, requests) = serve().await;
    let client = EventBusClient::builder(url)
        .initial_position(0)
        .polling_interval(Duration::from_millis(50))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .expect("a client");
    let mut events = client.events();
    let mut errors = client.errors();

    let delivered = tokio::time::timeout(PATIENCE, async {
        let mut ids = Vec::new();
        while ids.len() < 2 {
            let event = events.next().await.expect("the events stream ended");
            ids.push(event.id.to_string());
        }
        ids
    })
    .await
    .unwrap_or_else(|_| {
        let seen = requests.lock().expect("log").clone();
        panic!("the two good events within the patience; the server saw {seen:?}")
    });
    assert_eq!(delivered, [GOOD_1, GOOD_3]);

    let error = tokio::time::timeout(PATIENCE, errors.next())
        .await
        .expect("an error within the patience")
        .expect("an error");
    let ClientError::UndecodableRecord {
        position, event_id, ..
    } = &error
    else {
        panic!("expected the undecodable record, got {error:?}");
    };
    assert_eq!(
        (*position, event_id.map(|id| id.to_string())),
        (Some(2), Some(POISON.to_owned())),
        "{error}"
    );
    assert_eq!(error.code(), "undecodable_record");

    // The cursor moved past the bad record: the next poll asks after 3, and the first
    // page is not asked for again.
    tokio::time::timeout(PATIENCE, async {
        while !requests
            .lock()
            .expect("log")
            .iter()
            .any(|target| target.starts_with("/events?after=3&"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a poll after 3 within the patience");
    assert_eq!(client.cursor(), Some(3));
    let first_page_asks = requests
        .lock()
        .expect("log")
        .iter()
        .filter(|target| target.starts_with("/events?after=0&"))
        .count();
    assert_eq!(first_page_asks, 1, "the first page was asked for again");
    client.close().await;
}
