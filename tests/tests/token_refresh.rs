//! A client whose bearer token expires: the server answers 401, the client asks its token
//! source again and goes on, losing neither its cursor nor its outbox.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use distributed_events_client::{event_registry, DomainEvent, Event, EventBusClient, Status};
use distributed_events_tests::TestServer;
use futures::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::json;

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
const PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
struct Note {
    seq: usize,
}

/// A token source that hands out valid tokens, or expired ones while `expired` is set,
/// and counts the calls.
#[derive(Clone, Default)]
struct Tokens {
    expired: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl Tokens {
    fn source(
        &self,
    ) -> impl Fn() -> futures::future::Ready<Result<Option<String>, String>> + Send + Sync + 'static
    {
        let tokens = self.clone();
        move || {
            tokens.calls.fetch_add(1, Ordering::SeqCst);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            // Beyond the server's leeway for clock skew (60 s).
            let exp = if tokens.expired.load(Ordering::SeqCst) {
                now - 600
            } else {
                now + 600
            };
            let claims = json!({"sub": "ada", "tenant_id": "tenant-1", "exp": exp});
            let token = encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            );
            futures::future::ready(token.map(Some).map_err(|e| e.to_string()))
        }
    }
}

async fn next_seq(
    stream: &mut (impl futures::Stream<Item = DomainEvent<Note>> + Unpin),
) -> DomainEvent<Note> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_without_losing_cursor_or_outbox() {
    // Streams end every second, as they do at a token's `exp`: the reader reconnects with
    // whatever token its source hands out then.
    let server = TestServer::start(&["--jwt-secret", SECRET, "--max-stream-duration", "1s"]);
    let (writer_tokens, reader_tokens) = (Tokens::default(), Tokens::default());
    let writer = EventBusClient::builder(server.url())
        .registry(event_registry![Note])
        .auto_forward(true)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .token_source(writer_tokens.source())
        .build()
        .expect("a writer");
    let reader = EventBusClient::builder(server.url())
        .registry(event_registry![Note])
        .initial_position(0)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .token_source(reader_tokens.source())
        .build()
        .expect("a reader");
    let mut received = reader.on::<Note>();

    // Valid tokens: the first events flow.
    for seq in 0..3 {
        writer
            .publish(DomainEvent::new("notes", Note { seq }))
            .expect("published");
    }
    for seq in 0..3 {
        assert_eq!(next_seq(&mut received).await.payload.seq, seq);
    }

    // Every token is expired now: posts and polls are refused with 401.
    writer_tokens.expired.store(true, Ordering::SeqCst);
    reader_tokens.expired.store(true, Ordering::SeqCst);
    let (mut writer_status, mut reader_status) = (writer.status_changes(), reader.status_changes());
    // Another caller, with a valid token, posts seq 3: the reader's stream (let in before
    // the expiry) brings it, and the reader's next stream is refused.
    let posted = reqwest::Client::new()
        .post(format!("{}/events", server.url()))
        .bearer_auth(Tokens::default().source()().into_inner().unwrap().unwrap())
        .json(&json!({
            "id": uuid::Uuid::now_v7(),
            "createdAt": "2024-12-04T10:00:00Z",
            "aggregateId": "notes",
            "eventType": "Note",
            "eventJson": "{\"seq\":3}",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    for seq in 4..6 {
        writer
            .publish(DomainEvent::new("notes", Note { seq }))
            .expect("published");
    }
    for (who, status) in [
        ("writer", &mut writer_status),
        ("reader", &mut reader_status),
    ] {
        tokio::time::timeout(PATIENCE, async {
            while let Some(status) = status.next().await {
                if matches!(status, Status::BackingOff { .. }) {
                    break;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the {who} backs off on 401"));
    }
    let calls_while_expired = writer_tokens.calls.load(Ordering::SeqCst);
    let reader_calls_while_expired = reader_tokens.calls.load(Ordering::SeqCst);

    // The token source has fresh tokens again: the outbox drains, the reader resumes
    // from its cursor, and nothing arrives twice.
    writer_tokens.expired.store(false, Ordering::SeqCst);
    reader_tokens.expired.store(false, Ordering::SeqCst);
    for seq in 3..6 {
        let event = next_seq(&mut received).await;
        assert_eq!(
            event.payload.seq, seq,
            "in order, nothing lost, nothing repeated"
        );
    }
    assert!(
        writer_tokens.calls.load(Ordering::SeqCst) > calls_while_expired,
        "the writer asked its token source again after the 401"
    );
    assert!(
        reader_tokens.calls.load(Ordering::SeqCst) > reader_calls_while_expired,
        "the reader asked its token source again after the 401"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), received.next())
            .await
            .is_err(),
        "an event arrived twice"
    );

    // The server holds each event once.
    let stored: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!("{}/events?after=0", server.url()))
        .bearer_auth(Tokens::default().source()().into_inner().unwrap().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored.len(), 6);
    writer.close().await;
    reader.close().await;
}
