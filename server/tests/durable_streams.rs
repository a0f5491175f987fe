//! Durable Streams at `/v1/stream/{path}`, on the real binary: what the protocol's own
//! conformance suite (scripts/durable-streams-conformance.sh) does not cover: tenants,
//! the event log as a stream, restarts (on SQLite and MySQL), limits, and several
//! instances on PostgreSQL.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::databases::{fresh_mysql_database, fresh_postgres_schema, mysql_url, postgres_url};
use common::ServerProcess;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

fn token(tenant: &str) -> String {
    token_for(tenant, 600)
}

/// A token of `tenant` that expires in `seconds`.
fn token_for(tenant: &str, seconds: u64) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + seconds;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "someone", "tenant_id": tenant, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn next_offset(response: &reqwest::Response) -> String {
    response.headers()["stream-next-offset"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_own_streams() {
    let server = ServerProcess::start(&["--database", "memory", "--jwt-secret", SECRET]);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/stream/orders", server.base);
    let (acme, globex) = (token("acme"), token("globex"));

    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "a read without a token is refused");

    let created = client
        .put(&url)
        .bearer_auth(&acme)
        .header("content-type", "text/plain")
        .body("acme's")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let other = client.get(&url).bearer_auth(&globex).send().await.unwrap();
    assert_eq!(
        other.status(),
        404,
        "another tenant does not see the stream"
    );
    let head = client.head(&url).bearer_auth(&globex).send().await.unwrap();
    assert_eq!(head.status(), 404);
    let append = client
        .post(&url)
        .bearer_auth(&globex)
        .header("content-type", "text/plain")
        .body("intruder")
        .send()
        .await
        .unwrap();
    assert_eq!(append.status(), 404, "nor appends to it");

    // The same path is another stream for the other tenant.
    let own = client
        .put(&url)
        .bearer_auth(&globex)
        .header("content-type", "text/plain")
        .body("globex's")
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 201, "the path is free for this tenant");
    for (token, expected) in [(&acme, "acme's"), (&globex, "globex's")] {
        let read = client
            .get(format!("{url}?offset=-1"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
        assert!(
            read.headers()["cache-control"]
                .to_str()
                .unwrap()
                .starts_with("private"),
            "an authenticated read is private to caches"
        );
        assert_eq!(read.text().await.unwrap(), expected);
    }
}

fn event(n: usize) -> Value {
    json!({
        "id": Uuid::now_v7(),
        "createdAt": "2024-12-04T10:00:15Z",
        "aggregateId": "order-1",
        "eventType": "OrderPurchasedEvent",
        "eventJson": format!("{{\"n\":{n}}}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_reads_as_a_read_only_json_stream() {
    let server = ServerProcess::start(&["--database", "memory"]);
    let client = reqwest::Client::new();
    let log = format!("{}/v1/stream/_events", server.base);
    for n in 0..3 {
        let posted = client
            .post(format!("{}/events", server.base))
            .json(&event(n))
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 201);
    }

    let read = client.get(format!("{log}?offset=-1")).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["content-type"], "application/json");
    assert_eq!(read.headers()["stream-up-to-date"], "true");
    let offset = next_offset(&read);
    let records: Vec<Value> = read.json().await.unwrap();
    let numbers: Vec<&str> = records
        .iter()
        .map(|record| record["eventJson"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#]);
    assert_eq!(
        offset,
        format!(
            "0000000000000000_{:016}",
            records[2]["position"].as_u64().unwrap()
        ),
        "the offset is the last record's position"
    );

    // A long-poll at the end wakes with the next event.
    let poll = tokio::spawn({
        let client = client.clone();
        let url = format!("{log}?offset={offset}&live=long-poll");
        async move { client.get(url).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .post(format!("{}/events", server.base))
        .json(&event(3))
        .send()
        .await
        .unwrap();
    let woken = poll.await.unwrap();
    assert_eq!(woken.status(), 200);
    let records: Vec<Value> = woken.json().await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["eventJson"], r#"{"n":3}"#);

    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let refused = client
            .request(method.clone(), &log)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 405, "{method} on the event log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_producer_state_survive_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("streams.db").display());
    streams_and_producer_state_survive_a_restart(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_producer_state_survive_a_restart_on_mysql() {
    let Some(url) = mysql_url() else { return };
    let database = fresh_mysql_database(&url).await;
    streams_and_producer_state_survive_a_restart(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_values_longer_than_mysql_keeps_are_refused_with_400() {
    let Some(url) = mysql_url() else { return };
    let database = fresh_mysql_database(&url).await;
    let server = ServerProcess::start(&["--database", &database]);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/stream/log", server.base);
    let created = client
        .put(&url)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let refused = client
        .post(&url)
        .header("content-type", "text/plain")
        .header("producer-id", "p".repeat(8193))
        .header("producer-epoch", "0")
        .header("producer-seq", "0")
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let kept = client
        .post(&url)
        .header("content-type", "text/plain")
        .header("producer-id", "p".repeat(8192))
        .header("producer-epoch", "0")
        .header("producer-seq", "0")
        .body("a")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 200, "8 KiB is kept");
}

/// Appends of an idempotent producer, a restart, and its retry: a duplicate. Paths and
/// producer ids that differ only in case are different (MySQL's default collations would
/// merge them), and long ones are kept whole.
async fn streams_and_producer_state_survive_a_restart(database: &str) {
    let client = reqwest::Client::new();
    let long_producer = "p".repeat(3000);
    let long_path = "x".repeat(1000);
    let append = |base: &str, path: &str, producer: &str, seq: u64, body: &'static str| {
        client
            .post(format!("{base}/v1/stream/{path}"))
            .header("content-type", "text/plain")
            .header("producer-id", producer)
            .header("producer-epoch", "0")
            .header("producer-seq", seq.to_string())
            .body(body)
            .send()
    };
    let create = |base: &str, path: &str| {
        client
            .put(format!("{base}/v1/stream/{path}"))
            .header("content-type", "text/plain")
            .send()
    };

    let server = ServerProcess::start(&["--database", database]);
    for path in ["log", "Log", &long_path] {
        assert_eq!(
            create(&server.base, path).await.unwrap().status(),
            201,
            "{path}"
        );
    }
    for (producer, seq, body) in [
        ("writer-1", 0, "a"),
        ("writer-1", 1, "b"),
        ("Writer-1", 0, "B"),
        (&long_producer, 0, "l"),
    ] {
        let appended = append(&server.base, "log", producer, seq, body)
            .await
            .unwrap();
        assert_eq!(appended.status(), 200, "{producer} {seq}");
    }
    assert_eq!(
        append(&server.base, &long_path, "writer-1", 0, "z")
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(server.terminate(), "the server stops cleanly");

    let server = ServerProcess::start(&["--database", database]);
    let retry = append(&server.base, "log", "writer-1", 1, "b")
        .await
        .unwrap();
    assert_eq!(
        retry.status(),
        204,
        "a retry after the restart is a duplicate"
    );
    assert_eq!(retry.headers()["producer-seq"], "1");
    let long_retry = append(&server.base, "log", &long_producer, 0, "l")
        .await
        .unwrap();
    assert_eq!(
        long_retry.status(),
        204,
        "the long producer id is kept whole"
    );
    assert_eq!(
        append(&server.base, "log", "writer-1", 2, "c")
            .await
            .unwrap()
            .status(),
        200
    );
    let read = |path: &str| {
        client
            .get(format!("{}/v1/stream/{path}?offset=-1", server.base))
            .send()
    };
    assert_eq!(read("log").await.unwrap().text().await.unwrap(), "abBlc");
    assert_eq!(read("Log").await.unwrap().text().await.unwrap(), "");
    assert_eq!(read(&long_path).await.unwrap().text().await.unwrap(), "z");
}

/// An SSE answer lasts 60 s at most; with a token that expires sooner it ends then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_read_ends_when_the_bearer_token_expires() {
    let server = ServerProcess::start(&["--database", "memory", "--jwt-secret", SECRET]);
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}/v1/stream/feed", server.base))
        .bearer_auth(token("a"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    for path in ["feed", "_events"] {
        let response = client
            .get(format!(
                "{}/v1/stream/{path}?offset=-1&live=sse",
                server.base
            ))
            .bearer_auth(token_for("a", 2))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        // Well below the 60 s an SSE answer lasts otherwise.
        let body = tokio::time::timeout(Duration::from_secs(30), response.text())
            .await
            .unwrap_or_else(|_| panic!("the SSE answer of {path} outlived its token"))
            .unwrap();
        assert!(body.contains("event: control"), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_with_413() {
    let server = ServerProcess::start(&["--database", "memory", "--max-body-bytes", "1000"]);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/stream/big", server.base);
    client
        .put(&url)
        .header("content-type", "application/octet-stream")
        .send()
        .await
        .unwrap();
    let refused = client
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 413);
    let accepted = client
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_one_postgres_share_streams_and_wake_each_other() {
    let Some(url) = postgres_url() else { return };
    let database = fresh_postgres_schema(&url).await;
    let reader = ServerProcess::start(&["--database", &database]);
    let writer = ServerProcess::start(&["--database", &database]);
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}/v1/stream/shared", writer.base))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let tail = next_offset(&created);

    let poll = tokio::spawn({
        let client = client.clone();
        let url = format!(
            "{}/v1/stream/shared?offset={tail}&live=long-poll",
            reader.base
        );
        async move { client.get(url).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let appended = client
        .post(format!("{}/v1/stream/shared", writer.base))
        .header("content-type", "application/json")
        .body(r#"[{"n":1},{"n":2}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(appended.status(), 204);
    let woken = poll.await.unwrap();
    assert_eq!(
        woken.status(),
        200,
        "the reader's instance saw the other's append"
    );
    let values: Vec<Value> = woken.json().await.unwrap();
    assert_eq!(values, [json!({"n": 1}), json!({"n": 2})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_stops_at_max_page_bytes_and_the_next_goes_on() {
    let server = ServerProcess::start(&["--database", "memory", "--max-page-bytes", "10"]);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/stream/pages", server.base);
    client
        .put(&url)
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    for chunk in ["aaaaaa", "bbbbbb", "cccccc"] {
        let appended = client
            .post(&url)
            .header("content-type", "text/plain")
            .body(chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(appended.status(), 204);
    }
    let mut offset = "-1".to_owned();
    let mut pages = Vec::new();
    loop {
        let read = client
            .get(format!("{url}?offset={offset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
        let done = read.headers().contains_key("stream-up-to-date");
        offset = next_offset(&read);
        pages.push(read.text().await.unwrap());
        if done {
            break;
        }
        assert!(pages.len() < 10, "the reads never reach the end: {pages:?}");
    }
    assert_eq!(
        pages,
        ["aaaaaa", "bbbbbb", "cccccc"],
        "one 6-byte append per 10-byte page"
    );
}

/// An SSE reader of the event log holds one parked-connection slot for its whole life:
/// with as many readers as slots, each still gets the next event (a reader that asked
/// for a second slot at each wait would be refused, and its answer would end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_sse_readers_hold_one_slot_each() {
    let server = ServerProcess::start(&["--database", "memory", "--max-long-polls", "2"]);
    let client = reqwest::Client::new();
    let mut readers = Vec::new();
    for _ in 0..2 {
        let response = client
            .get(format!(
                "{}/v1/stream/_events?offset=-1&live=sse",
                server.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        readers.push(response);
    }
    let posted = client
        .post(format!("{}/events", server.base))
        .json(&event(7))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    for (i, mut reader) in readers.into_iter().enumerate() {
        let mut seen = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            while !seen.contains(r#"{\"n\":7}"#) {
                match reader.chunk().await.unwrap() {
                    Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                    None => return false,
                }
            }
            true
        })
        .await;
        assert_eq!(
            read,
            Ok(true),
            "reader {i} did not get the event before its answer ended; it read: {seen}"
        );
    }
}
