//! HTTP caching of `GET /events` (docs/PROTOCOL.md, "Caching"): a full page is
//! immutable and carries the same bytes and `ETag` whoever builds it; every other answer
//! is `no-store`; `If-None-Match` answers `304`, never to a caller without credentials.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Request, StatusCode};
use distributed_events_server::store::{MemoryStore, SharedStore, SqliteStore};
use distributed_events_server::{AuthRejection, EventBusServer, Limits, Principal, StoredEvent};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

const PUBLIC: &str = "public, max-age=31536000, immutable";
const PRIVATE: &str = "private, max-age=31536000, immutable";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |value| value.to_str().unwrap())
    }

    fn events(&self) -> Vec<StoredEvent> {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn cursor(&self) -> u64 {
        self.header("x-events-cursor").parse().unwrap()
    }
}

/// `GET uri` with `headers` (name, value).
async fn get(server: &EventBusServer, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = server
        .router()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.into_body().collect().await.unwrap().to_bytes(),
    }
}

fn event(aggregate: &str, payload: &str) -> Value {
    json!({
        "id": Uuid::now_v7(),
        "createdAt": "2024-12-04T10:00:15Z",
        "aggregateId": aggregate,
        "eventType": "Thing",
        "eventJson": payload,
    })
}

async fn post(server: &EventBusServer, body: &Value, token: Option<&str>) {
    let mut request = Request::post("/events").header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = server
        .router()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

fn assert_vary(answer: &Answer) {
    assert_eq!(answer.header("vary"), "Authorization, Accept");
}

fn memory_server() -> EventBusServer {
    EventBusServer::builder(Arc::new(MemoryStore::new())).build()
}

/// Tokens `alice` (tenant-a) and `bob` (tenant-b); anything else is refused.
fn with_auth(store: SharedStore, limits: Limits) -> EventBusServer {
    EventBusServer::builder(store)
        .limits(limits)
        .authenticator(|headers: HeaderMap| async move {
            let tenant = match headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
            {
                Some("Bearer alice") => "tenant-a",
                Some("Bearer bob") => "tenant-b",
                _ => return Err(AuthRejection::bearer("a valid bearer token is required")),
            };
            Ok(Principal {
                tenant_id: Some(tenant.into()),
                ..Principal::default()
            })
        })
        .authorization_filter(|event: &StoredEvent, _: &Principal| event.aggregate_id != "hidden")
        .build()
}

#[tokio::test]
async fn a_full_page_is_immutable_and_every_other_answer_is_no_store() {
    let server = memory_server();
    for n in 0..5 {
        post(&server, &event("a", &format!("{{\"n\":{n}}}")), None).await;
    }
    let full = get(&server, "/events?after=0&limit=3", &[]).await;
    assert_eq!(full.status, StatusCode::OK);
    assert_eq!(full.events().len(), 3);
    assert_eq!(full.header("cache-control"), PUBLIC);
    assert!(full.header("etag").starts_with('"'), "a strong ETag");
    assert_vary(&full);

    // A limit over the server's cap is lowered to it: the page is full at the cap.
    let capped_server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .limits(Limits {
            max_page: 2,
            ..Limits::default()
        })
        .build();
    for _ in 0..3 {
        post(&capped_server, &event("a", "{}"), None).await;
    }
    let capped = get(&capped_server, "/events?after=0&limit=50", &[]).await;
    assert_eq!(
        (capped.events().len(), capped.header("cache-control")),
        (2, PUBLIC)
    );

    let head = get(&server, "/events?after=3&limit=3", &[]).await;
    assert_eq!(head.events().len(), 2);
    assert_eq!(
        head.header("cache-control"),
        "no-store",
        "the page at the head grows"
    );
    assert!(
        head.header("etag").starts_with('"'),
        "every page has an ETag"
    );
    assert_vary(&head);
    let empty = get(&server, "/events?after=5", &[]).await;
    assert_eq!(empty.header("cache-control"), "no-store");

    for (uri, status) in [
        ("/events?after=x", StatusCode::BAD_REQUEST),
        ("/events?after=99", StatusCode::GONE),
    ] {
        let error = get(&server, uri, &[]).await;
        assert_eq!(error.status, status);
        assert_eq!(error.header("cache-control"), "no-store", "{uri}");
        assert_eq!(error.header("etag"), "", "{uri}");
        assert_vary(&error);
    }
}

#[tokio::test]
async fn if_none_match_answers_304_with_the_same_headers_and_no_body() {
    let server = memory_server();
    for _ in 0..4 {
        post(&server, &event("a", "{}"), None).await;
    }
    let full = get(&server, "/events?after=0&limit=3", &[]).await;
    let etag = full.header("etag");
    let again = get(
        &server,
        "/events?after=0&limit=3",
        &[("if-none-match", etag)],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    for name in ["etag", "cache-control", "vary", "x-events-cursor"] {
        assert_eq!(again.header(name), full.header(name), "{name}");
    }
    let weak = format!("\"nope\", W/{etag}");
    assert_eq!(
        get(
            &server,
            "/events?after=0&limit=3",
            &[("if-none-match", &weak)]
        )
        .await
        .status,
        StatusCode::NOT_MODIFIED
    );
    let other = get(
        &server,
        "/events?after=0&limit=3",
        &[("if-none-match", "\"nope\"")],
    )
    .await;
    assert_eq!((other.status, other.body), (StatusCode::OK, full.body));

    // The page at the head: 304 while it is the same, 200 once it has grown.
    let head = get(&server, "/events?after=3", &[]).await;
    let head_etag = head.header("etag");
    assert_eq!(
        get(&server, "/events?after=3", &[("if-none-match", head_etag)])
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );
    post(&server, &event("a", "{}"), None).await;
    let grown = get(&server, "/events?after=3", &[("if-none-match", head_etag)]).await;
    assert_eq!(grown.status, StatusCode::OK);
    assert_eq!(grown.events().len(), 2);
    assert_ne!(grown.header("etag"), head_etag);
}

#[tokio::test]
async fn with_authentication_pages_are_private_and_a_304_needs_credentials() {
    let server = with_auth(Arc::new(MemoryStore::new()), Limits::default());
    for token in ["alice", "bob", "alice", "bob", "alice"] {
        post(&server, &event("a", "{}"), Some(token)).await;
    }
    let alice = get(
        &server,
        "/events?after=0&limit=2",
        &[("authorization", "Bearer alice")],
    )
    .await;
    assert_eq!(alice.events().len(), 2);
    assert_eq!(alice.header("cache-control"), PRIVATE);
    assert_vary(&alice);
    let etag = alice.header("etag");

    let anonymous = get(
        &server,
        "/events?after=0&limit=2",
        &[("if-none-match", etag)],
    )
    .await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "no 304 (\"your copy is current\") without credentials"
    );
    assert_eq!(anonymous.header("cache-control"), "no-store");
    assert_vary(&anonymous);
    let bob = get(
        &server,
        "/events?after=0&limit=2",
        &[("authorization", "Bearer bob"), ("if-none-match", etag)],
    )
    .await;
    assert_eq!(bob.status, StatusCode::OK, "bob's page is another page");
    assert_ne!(bob.header("etag"), etag);
    let alice_again = get(
        &server,
        "/events?after=0&limit=2",
        &[("authorization", "Bearer alice"), ("if-none-match", etag)],
    )
    .await;
    assert_eq!(alice_again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(alice_again.header("cache-control"), PRIVATE);
}

/// A long-poll that waited for its events is a live answer, `no-store` even when full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answer_that_waited_is_no_store() {
    // One long-poll slot: a probe that would wait is refused while the poll holds it,
    // which tells that the poll is waiting (a probe that takes the slot first makes the
    // poll try again).
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .limits(Limits {
            max_long_polls: 1,
            ..Limits::default()
        })
        .build();
    let poll = {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                let answer = get(&server, "/events?after=0&limit=1&wait=30", &[]).await;
                if answer.status != StatusCode::SERVICE_UNAVAILABLE {
                    return answer;
                }
            }
        })
    };
    let started = Instant::now();
    while get(&server, "/events?after=0&wait=0.01", &[]).await.status
        != StatusCode::SERVICE_UNAVAILABLE
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the long-poll never started waiting"
        );
    }
    post(&server, &event("a", "{}"), None).await;
    let answer = poll.await.unwrap();
    assert_eq!(answer.events().len(), 1, "a full page of limit=1");
    assert_eq!(answer.header("cache-control"), "no-store");
    let later = get(&server, "/events?after=0&limit=1&wait=30", &[]).await;
    assert_eq!(
        (later.header("cache-control"), later.header("etag")),
        (PUBLIC, answer.header("etag")),
        "the same page read without waiting is immutable, with the same ETag"
    );
}

/// A filter that fails hides the event this time only: the page is not final. A filter
/// that decides (true or false) makes final pages.
#[tokio::test]
async fn a_page_the_authorization_filter_failed_on_is_no_store() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .authorization_filter(
            |event: &StoredEvent, _: &Principal| -> Result<bool, String> {
                match event.aggregate_id.as_str() {
                    "errors" => Err("lookup failed".into()),
                    "hidden" => Ok(false),
                    _ => Ok(true),
                }
            },
        )
        .build();
    for aggregate in ["a", "hidden", "a", "errors", "a", "a"] {
        post(&server, &event(aggregate, "{}"), None).await;
    }
    let skipped_hidden = get(&server, "/events?after=0&limit=2", &[]).await;
    assert_eq!(skipped_hidden.cursor(), 3);
    assert_eq!(skipped_hidden.header("cache-control"), PUBLIC);
    let over_failure = get(&server, "/events?after=3&limit=2", &[]).await;
    assert_eq!(over_failure.events().len(), 2, "5 and 6");
    assert_eq!(over_failure.header("cache-control"), "no-store");
}

/// In `since` mode a page starts at the first event at or after the time: retention
/// deleting it would move the page, so with retention it is not final.
#[tokio::test]
async fn since_pages_are_immutable_only_without_retention() {
    for (retention, expected) in [
        (None, PUBLIC),
        (Some(Duration::from_secs(3600)), "no-store"),
    ] {
        let mut builder = EventBusServer::builder(Arc::new(MemoryStore::new()));
        if let Some(retention) = retention {
            builder = builder.retention(retention);
        }
        let server = builder.build();
        for _ in 0..3 {
            post(&server, &event("a", "{}"), None).await;
        }
        let full = get(&server, "/events?since=2024-12-04T10:00:00Z&limit=2", &[]).await;
        assert_eq!(full.events().len(), 2);
        assert_eq!(full.header("cache-control"), expected, "{retention:?}");
        let rest = get(&server, "/events?since=2024-12-04T10:00:00Z&limit=5", &[]).await;
        assert_eq!(rest.header("cache-control"), "no-store");
    }
}

/// The store at `path`, once the server that had it released it.
async fn open_sqlite(path: &str) -> SharedStore {
    let start = Instant::now();
    loop {
        match SqliteStore::open(path).await {
            Ok(store) => return Arc::new(store),
            Err(error) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "the dropped server still holds the store: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every page of `token`'s events with `query` (such as `limit=3`), from `after=0` to
/// the head: `(uri, answer)`.
async fn read_all(server: &EventBusServer, token: &str, query: &str) -> Vec<(String, Answer)> {
    let auth = format!("Bearer {token}");
    let mut pages = Vec::new();
    let mut after = 0;
    loop {
        let uri = format!("/events?after={after}&{query}");
        let answer = get(server, &uri, &[("authorization", &auth)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}");
        let next = answer.cursor();
        let last = answer.header("cache-control") == "no-store";
        pages.push((uri, answer));
        if last {
            return pages;
        }
        after = next;
    }
}

/// The same full page from the server's memory (the tail, where reads at the head are
/// answered) and from the store (after a restart, the tail starts at the head): the same
/// bytes, cursor and ETag, also for pages the byte cap cut and with the events of other
/// tenants and of hidden aggregates in between.
#[tokio::test]
async fn a_full_page_is_the_same_bytes_from_memory_and_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let path = path.to_str().unwrap();
    let limits = Limits {
        max_page_bytes: 1500,
        ..Limits::default()
    };
    let server = with_auth(open_sqlite(path).await, limits.clone());
    // Sizes that make the byte cap end pages at varying places, tenants and hidden
    // events interleaved.
    for n in 0..60 {
        let token = if n % 3 == 0 { "bob" } else { "alice" };
        let aggregate = if n % 5 == 0 { "hidden" } else { "a" };
        let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat((n * 37) % 400));
        post(&server, &event(aggregate, &payload), Some(token)).await;
    }
    let queries = ["limit=3", "limit=1000"];
    let mut from_memory = Vec::new();
    for token in ["alice", "bob"] {
        for query in queries {
            from_memory.push((token, read_all(&server, token, query).await));
        }
    }
    drop(server);

    let server = with_auth(open_sqlite(path).await, limits);
    let (mut cut_by_limit, mut cut_by_bytes) = (0, 0);
    for (token, pages) in from_memory {
        let auth = format!("Bearer {token}");
        for (uri, memory) in pages {
            if memory.header("cache-control") == "no-store" {
                continue;
            }
            assert_eq!(memory.header("cache-control"), PRIVATE);
            let store = get(&server, &uri, &[("authorization", &auth)]).await;
            assert_eq!(store.status, StatusCode::OK);
            assert_eq!(
                (
                    store.header("cache-control"),
                    store.cursor(),
                    store.header("etag"),
                ),
                (
                    memory.header("cache-control"),
                    memory.cursor(),
                    memory.header("etag"),
                ),
                "{token} {uri}"
            );
            assert_eq!(store.body, memory.body, "{token} {uri}");
            let events = memory.events();
            assert_eq!(
                memory.cursor(),
                events.last().unwrap().position.unwrap(),
                "a full page ends at its last event"
            );
            if uri.ends_with("limit=3") && events.len() == 3 {
                cut_by_limit += 1;
            } else {
                cut_by_bytes += 1;
            }
        }
    }
    assert!(
        cut_by_limit >= 3 && cut_by_bytes >= 3,
        "pages cut by the limit ({cut_by_limit}) and by the byte cap ({cut_by_bytes})"
    );
}
