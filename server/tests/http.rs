//! The HTTP endpoints, one behaviour at a time: every status code of docs/PROTOCOL.md,
//! long-poll wake-up, idempotent posts under concurrency, authorization and retention.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use distributed_events_server::store::{EventStore, MemoryStore, SharedStore, SqliteStore};
use distributed_events_server::{
    AuthRejection, DomainEvent, Event, EventBusServer, Limits, Principal, StoredEvent,
};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
struct OrderPurchasedEvent {
    amount: f64,
    product_id: String,
}

fn server() -> EventBusServer {
    EventBusServer::builder(Arc::new(MemoryStore::new())).build()
}

fn post_body(id: Uuid, event_type: &str, event_json: &str) -> Value {
    json!({
        "id": id,
        "createdAt": "2024-12-04T10:00:15.000Z",
        "aggregateId": "order-1",
        "eventType": event_type,
        "eventJson": event_json,
        "userId": "user-1",
    })
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

async fn call(server: &EventBusServer, request: Request<Body>) -> Answer {
    let response = server.router().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(server: &EventBusServer, uri: &str) -> Answer {
    call(server, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn post(server: &EventBusServer, body: &Value) -> Answer {
    let request = Request::post("/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    call(server, request).await
}

fn assert_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "body: {}", answer.body);
    assert_eq!(answer.body["code"], code, "body: {}", answer.body);
    assert!(answer.body["error"].as_str().is_some_and(|e| !e.is_empty()));
}

#[tokio::test]
async fn post_then_get_in_both_modes() {
    let server = server();
    let id = Uuid::now_v7();
    let created = post(
        &server,
        &post_body(
            id,
            "OrderPurchasedEvent",
            r#"{"amount":9.5,"product_id":"p1"}"#,
        ),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        created.body,
        json!({"id": id, "createdAt": "2024-12-04T10:00:15Z", "position": 1})
    );

    let polled = get(&server, "/events?after=0").await;
    assert_eq!(polled.status, StatusCode::OK);
    assert_eq!(polled.headers["x-events-cursor"], "1");
    let events: Vec<StoredEvent> = serde_json::from_value(polled.body).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].id, events[0].position), (id, Some(1)));
    assert_eq!(events[0].user_id.as_deref(), Some("user-1"));

    let since = get(&server, "/events?since=2024-12-04T10:00:00Z").await;
    assert_eq!(since.status, StatusCode::OK);
    assert_eq!(since.body.as_array().unwrap().len(), 1);
    let later = get(&server, "/events?since=2024-12-04T11:00:00%2B01:00").await;
    assert_eq!(
        later.body.as_array().unwrap().len(),
        1,
        "offsets are honoured: 11:00+01:00 is 10:00Z"
    );
    let after = get(&server, "/events?since=2024-12-04T10:00:16Z").await;
    assert_eq!(after.body, json!([]));
}

/// A read answers everything acknowledged before it (read your own writes), even while
/// the tail that live reads are answered from has not yet taken in the newest commit.
#[tokio::test]
async fn a_read_right_after_a_post_includes_it() {
    let server = server();
    for n in 1..=20 {
        let id = Uuid::now_v7();
        let posted = post(&server, &post_body(id, "OrderPurchasedEvent", "{}")).await;
        assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
        let page = get(&server, "/events?after=0").await;
        let ids: Vec<&str> = page
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids.len(),
            n,
            "the read right after post {n} left events out"
        );
        assert_eq!(ids.last().copied(), Some(id.to_string().as_str()));
        // Let the tail's follower take the commit in, so that the next read finds a tail
        // that holds all but the next post.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
}

/// Posts an event of `aggregate` created at `created_at`.
async fn post_at(server: &EventBusServer, aggregate: &str, created_at: &str) {
    let mut body = post_body(Uuid::now_v7(), "OrderPurchasedEvent", "{}");
    body["aggregateId"] = json!(aggregate);
    body["createdAt"] = json!(created_at);
    assert_eq!(post(server, &body).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_since_query_with_nothing_to_show_answers_the_head_as_cursor_not_zero() {
    let server = server();
    for _ in 0..3 {
        post_at(&server, "old", "2024-12-04T09:00:00Z").await;
    }
    // A client that starts "from now" must go on after the head, not replay from 0.
    let now = get(&server, "/events?since=2024-12-04T10:00:00Z").await;
    assert_eq!(now.body, json!([]));
    assert_eq!(now.headers["x-events-cursor"], "3");
}

#[tokio::test]
async fn a_since_query_filters_before_the_limit_and_answers_a_cursor_to_go_on_from() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .authorization_filter(|event: &StoredEvent, _: &Principal| event.aggregate_id != "hidden")
        .build();
    post_at(&server, "old", "2024-12-04T09:00:00Z").await; // 1: before `since`
    post_at(&server, "hidden", "2024-12-04T10:00:01Z").await; // 2
    post_at(&server, "hidden", "2024-12-04T10:00:02Z").await; // 3
    post_at(&server, "a", "2024-12-04T10:00:03Z").await; // 4
    post_at(&server, "old", "2024-12-04T09:30:00Z").await; // 5: before `since`
    post_at(&server, "b", "2024-12-04T10:00:04Z").await; // 6
    post_at(&server, "c", "2024-12-04T10:00:05Z").await; // 7

    let page = get(&server, "/events?since=2024-12-04T10:00:00Z&limit=2").await;
    let aggregates: Vec<&str> = page
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["aggregateId"].as_str().unwrap())
        .collect();
    assert_eq!(
        aggregates,
        ["a", "b"],
        "a full page of visible events at or after `since`"
    );
    assert_eq!(page.headers["x-events-cursor"], "6");
    let rest = get(&server, "/events?after=6").await;
    assert_eq!(
        rest.body.as_array().unwrap().len(),
        1,
        "cursor mode goes on from there"
    );
    assert_eq!(rest.body[0]["aggregateId"], "c");
}

#[tokio::test]
async fn bad_queries_answer_400() {
    let server = server();
    for uri in [
        "/events",
        "/events?since=yesterday",
        "/events?since=2024-12-04",
        "/events?after=-1",
        "/events?after=abc",
        "/events?after=18446744073709551616",
        "/events?after=0&since=2024-12-04T10:00:00Z",
        "/events?after=0&limit=0",
        "/events?after=0&limit=-5",
        "/events?after=0&wait=-1",
        "/events?after=0&wait=NaN",
        "/events?after=0&wait=inf",
    ] {
        assert_error(
            &get(&server, uri).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    // Oversized limit and wait are lowered to the caps, not refused.
    let capped = get(&server, "/events?after=0&limit=1000000&wait=0").await;
    assert_eq!(capped.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_posts_answer_400_413_415() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .limits(Limits {
            max_body_bytes: 2048,
            ..Limits::default()
        })
        .build();
    let _ = server.on::<OrderPurchasedEvent>();
    let id = Uuid::now_v7();
    let valid = post_body(
        id,
        "OrderPurchasedEvent",
        r#"{"amount":1,"product_id":"p"}"#,
    );
    let mut cases = vec![];
    for field in ["id", "createdAt", "aggregateId", "eventType", "eventJson"] {
        let mut missing = valid.clone();
        missing.as_object_mut().unwrap().remove(field);
        cases.push(missing);
    }
    for (field, wrong) in [
        ("id", json!("not-a-uuid")),
        ("createdAt", json!("yesterday")),
        ("eventJson", json!({"amount": 1})),
        ("eventJson", json!("{not json")),
        ("eventType", json!("")),
        ("aggregateId", json!("")),
        ("userId", json!(5)),
        // A registered type whose payload does not decode as that type.
        ("eventJson", json!(r#"{"amount":"lots"}"#)),
    ] {
        let mut case = valid.clone();
        case[field] = wrong;
        cases.push(case);
    }
    cases.push(json!([1, 2]));
    for case in &cases {
        assert_error(
            &post(&server, case).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    let not_json = Request::post("/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"id\": "))
        .unwrap();
    assert_error(
        &call(&server, not_json).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    let mut huge = valid.clone();
    huge["eventJson"] = json!(format!("\"{}\"", "x".repeat(4096)));
    assert_error(
        &post(&server, &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = Request::post("/events");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let answer = call(
            &server,
            request.body(Body::from(valid.to_string())).unwrap(),
        )
        .await;
        assert_error(
            &answer,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    let charset = Request::post("/events")
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(valid.to_string()))
        .unwrap();
    assert_eq!(call(&server, charset).await.status, StatusCode::CREATED);

    // None of the refused posts stored anything.
    let all = get(&server, "/events?after=0").await;
    assert_eq!(all.body.as_array().unwrap().len(), 1);
}

/// `depth` arrays around a number.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}

/// A post that clients could not decode, or that the store would change, is refused with
/// a `400` naming the field; the deepest post allowed is served and decodes.
#[tokio::test]
async fn posts_clients_could_not_read_back_answer_400_naming_the_field() {
    let server = server();
    let valid = post_body(Uuid::now_v7(), "T", "{}");
    let with = |field: &str, value: Value| {
        let mut case = valid.clone();
        case[field] = value;
        case
    };
    let page_levels_around_context_values = 3;
    let deepest_context_value =
        distributed_events_server::MAX_NESTING - page_levels_around_context_values;
    let cases = [
        // A poison event: served in a page, 128 levels deep, past serde_json's limit.
        ("context", with("context", json!({"a": nested(125)}))),
        (
            "context",
            with("context", json!({"a": nested(deepest_context_value + 1)})),
        ),
        (
            "eventJson",
            with(
                "eventJson",
                json!(nested(distributed_events_server::MAX_NESTING + 1).to_string()),
            ),
        ),
        (
            "createdAt",
            with("createdAt", json!("2024-12-31T23:59:60Z")),
        ),
        (
            "createdAt",
            with("createdAt", json!("+10000-01-01T00:00:00Z")),
        ),
        ("id", with("id", json!("v1"))),
        ("eventJson", with("eventJson", json!({"amount": 1}))),
        ("tenantId", with("tenantId", json!(["t"]))),
    ];
    for (field, case) in &cases {
        let answer = post(&server, case).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
        let message = answer.body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("`{field}`")),
            "the message must name `{field}`: {message}"
        );
    }
    let neither = get(&server, "/events?limit=5").await;
    assert_error(&neither, StatusCode::BAD_REQUEST, "bad_request");
    let message = neither.body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("`after`") && message.contains("`since`"),
        "{message}"
    );
    assert_eq!(get(&server, "/events?after=0").await.body, json!([]));

    // At the limit: accepted, served, and decoded by serde_json as the clients do.
    let deepest = with("context", json!({"a": nested(deepest_context_value)}));
    assert_eq!(post(&server, &deepest).await.status, StatusCode::CREATED);
    let page = call(
        &server,
        Request::get("/events?after=0").body(Body::empty()).unwrap(),
    )
    .await;
    let events: Vec<StoredEvent> = serde_json::from_value(page.body).unwrap();
    assert_eq!(events[0].context["a"], nested(deepest_context_value));
}

#[tokio::test]
async fn reposting_an_id_replays_and_a_different_event_conflicts() {
    let server = server();
    let id = Uuid::now_v7();
    let body = post_body(id, "Thing", "{}");
    let first = post(&server, &body).await;
    let again = post(&server, &body).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert!(first.headers.get("idempotent-replayed").is_none());

    let mut different = body.clone();
    different["eventJson"] = json!(r#"{"other":true}"#);
    assert_error(
        &post(&server, &different).await,
        StatusCode::CONFLICT,
        "id_conflict",
    );
    let all = get(&server, "/events?after=0").await;
    assert_eq!(all.body.as_array().unwrap().len(), 1);
    assert_eq!(all.body[0]["eventJson"], "{}", "never overwritten");
}

#[tokio::test]
async fn posted_events_reach_server_handlers_exactly_once() {
    let server = server();
    let mut purchases = server.on::<OrderPurchasedEvent>();
    let id = Uuid::now_v7();
    let body = post_body(
        id,
        "OrderPurchasedEvent",
        r#"{"amount":42.0,"product_id":"p-9"}"#,
    );
    post(&server, &body).await;
    post(&server, &body).await; // a retry: stored and published once
    let event = purchases.next().await.unwrap();
    assert_eq!(event.id, id);
    assert_eq!(event.position, Some(1));
    assert_eq!(event.payload.product_id, "p-9");
    assert_eq!(event.context["userId"], "user-1");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), purchases.next())
            .await
            .is_err(),
        "the replay was published again"
    );
}

#[tokio::test]
async fn server_publish_is_persisted_then_delivered() {
    let server = server();
    let mut local = server.on::<OrderPurchasedEvent>();
    let event = DomainEvent::new(
        "order-7",
        OrderPurchasedEvent {
            amount: 99.99,
            product_id: "product-123".into(),
        },
    )
    .with_context("tenantId", "tenant-1");
    let receipt = server.publish(event.clone()).await.unwrap();
    assert_eq!(receipt.position, 1);
    let again = server.publish(event.clone()).await.unwrap();
    assert_eq!(
        again, receipt,
        "publishing the same event twice stores it once"
    );
    let seen = local.next().await.unwrap();
    assert_eq!(seen.position, Some(1));
    assert_eq!(seen.payload, event.payload);

    let polled = get(&server, "/events?after=0").await;
    assert_eq!(polled.body[0]["eventType"], "OrderPurchasedEvent");
    assert_eq!(polled.body[0]["tenantId"], "tenant-1");
    assert_eq!(polled.body.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn authentication_refuses_with_401_and_stamps_identity() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .authenticator(|headers: axum::http::HeaderMap| async move {
            match headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
            {
                Some("Bearer alice") => Ok(Principal {
                    user_id: Some("alice".into()),
                    tenant_id: Some("tenant-a".into()),
                    ..Principal::default()
                }),
                Some("Bearer bob") => Ok(Principal {
                    user_id: Some("bob".into()),
                    tenant_id: Some("tenant-b".into()),
                    ..Principal::default()
                }),
                _ => Err(AuthRejection::bearer("a valid bearer token is required")),
            }
        })
        .build();
    let anonymous = get(&server, "/events?after=0").await;
    assert_error(&anonymous, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(anonymous.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));

    let as_user = |token: &str, body: Option<Value>| {
        let builder = match &body {
            Some(_) => Request::post("/events").header(header::CONTENT_TYPE, "application/json"),
            None => Request::get("/events?after=0"),
        };
        builder
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .unwrap()
    };
    // Alice claims to be bob in tenant-b: the server stamps her verified identity.
    let mut spoofed = post_body(Uuid::now_v7(), "Thing", "{}");
    spoofed["userId"] = json!("bob");
    spoofed["tenantId"] = json!("tenant-b");
    assert_eq!(
        call(&server, as_user("alice", Some(spoofed))).await.status,
        StatusCode::CREATED
    );
    call(
        &server,
        as_user("bob", Some(post_body(Uuid::now_v7(), "Thing", "{}"))),
    )
    .await;

    let alice_sees = call(&server, as_user("alice", None)).await.body;
    let bob_sees = call(&server, as_user("bob", None)).await.body;
    assert_eq!(alice_sees.as_array().unwrap().len(), 1);
    assert_eq!(alice_sees[0]["tenantId"], "tenant-a");
    assert_eq!(alice_sees[0]["userId"], "alice");
    assert_eq!(bob_sees.as_array().unwrap().len(), 1);
    assert_eq!(bob_sees[0]["tenantId"], "tenant-b");
}

#[tokio::test]
async fn authorization_filter_keeps_pages_full_and_survives_failures() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let server = EventBusServer::builder(store)
        .authorization_filter(
            |event: &StoredEvent, _: &Principal| -> Result<bool, String> {
                match event.aggregate_id.as_str() {
                    "panics" => panic!("filter bug"),
                    "errors" => Err("lookup failed".into()),
                    "hidden" => Ok(false),
                    _ => Ok(true),
                }
            },
        )
        .build();
    let kinds = ["visible", "panics", "errors", "hidden"];
    for n in 0..20 {
        let mut body = post_body(Uuid::now_v7(), "Thing", &format!("{{\"n\":{n}}}"));
        body["aggregateId"] = json!(kinds[n % 4]);
        assert_eq!(post(&server, &body).await.status, StatusCode::CREATED);
    }
    let page = get(&server, "/events?after=0&limit=3").await;
    assert_eq!(page.status, StatusCode::OK);
    let ns: Vec<_> = page
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventJson"].clone())
        .collect();
    assert_eq!(
        ns,
        [json!("{\"n\":0}"), json!("{\"n\":4}"), json!("{\"n\":8}")],
        "a full page of visible events"
    );
    let rest = get(
        &server,
        &format!(
            "/events?after={}",
            page.headers["x-events-cursor"].to_str().unwrap()
        ),
    )
    .await;
    assert_eq!(rest.body.as_array().unwrap().len(), 2);
    assert_eq!(
        rest.headers["x-events-cursor"], "20",
        "the cursor passes the hidden tail"
    );
}

#[tokio::test]
async fn expired_and_ahead_cursors_answer_410_with_where_to_resume() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .retention(Duration::from_millis(50))
        .build();
    for _ in 0..3 {
        post(&server, &post_body(Uuid::now_v7(), "Thing", "{}")).await;
    }
    tokio::time::sleep(Duration::from_millis(120)).await;
    post(&server, &post_body(Uuid::now_v7(), "Thing", "{}")).await;
    assert_eq!(server.cleanup().await.unwrap(), 3);

    let expired = get(&server, "/events?after=1").await;
    assert_error(&expired, StatusCode::GONE, "cursor_expired");
    assert_eq!(expired.body["resumeAfter"], 3);
    let resumed = get(&server, "/events?after=3").await;
    assert_eq!(resumed.body.as_array().unwrap().len(), 1);

    let ahead = get(&server, "/events?after=50").await;
    assert_error(&ahead, StatusCode::GONE, "cursor_ahead");
    assert_eq!(ahead.body["resumeAfter"], 4);
    assert_eq!(
        get(&server, "/events?after=4").await.status,
        StatusCode::OK,
        "the head itself is a valid cursor"
    );
}

#[tokio::test]
async fn periodic_cleanup_runs_by_itself() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .retention(Duration::from_millis(20))
        .cleanup_interval(Duration::from_millis(20))
        .build();
    post(&server, &post_body(Uuid::now_v7(), "Thing", "{}")).await;
    let start = Instant::now();
    while server.store().pruned_through().await.unwrap() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cleanup never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(&server, "/events?after=1").await.body, json!([]));
    server.close().await;
}

/// Dropping the last handle without `close()` stops the tail follower and the periodic
/// cleanup, which release the store: a second server can then open the same SQLite file
/// (whose store holds an exclusive lock file while it is open).
#[tokio::test]
async fn dropping_the_server_stops_its_tasks_and_releases_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let path = path.to_str().unwrap();
    let store: SharedStore = Arc::new(SqliteStore::open(path).await.unwrap());
    let server = EventBusServer::builder(store)
        .retention(Duration::from_secs(3600))
        .cleanup_interval(Duration::from_millis(10))
        .build();
    post(&server, &post_body(Uuid::now_v7(), "Thing", "{}")).await;
    let Err(error) = SqliteStore::open(path).await else {
        panic!("a second store opened a file in use");
    };
    assert!(
        error.to_string().contains("another server is using"),
        "{error}"
    );
    drop(server);
    let start = Instant::now();
    let reopened = loop {
        match SqliteStore::open(path).await {
            Ok(store) => break store,
            Err(error) => assert!(
                start.elapsed() < Duration::from_secs(20),
                "the dropped server still holds the store: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        reopened.head().await.unwrap(),
        1,
        "the event survived the drop"
    );
    reopened.close().await;
}

#[tokio::test]
async fn healthz_reports_the_head_and_a_dead_store_answers_503() {
    let server = server();
    post(&server, &post_body(Uuid::now_v7(), "Thing", "{}")).await;
    let health = get(&server, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        health.body,
        json!({"status": "ok", "writable": true, "head": 1})
    );

    server.store().close().await;
    let health = get(&server, "/healthz").await;
    assert_error(&health, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let polled = get(&server, "/events?after=0").await;
    assert_error(&polled, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(
        !polled.body["error"].as_str().unwrap().contains("closed"),
        "no store detail in the body"
    );
    let posted = post(&server, &post_body(Uuid::now_v7(), "Thing", "{}")).await;
    assert_error(&posted, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
}

/// A long-poll sent now, answered later.
fn poll(client: &reqwest::Client, url: String) -> tokio::task::JoinHandle<Vec<StoredEvent>> {
    let request = client.get(url);
    tokio::spawn(async move {
        request
            .send()
            .await
            .unwrap()
            .json::<Vec<StoredEvent>>()
            .await
            .unwrap()
    })
}

/// Over a real socket: a waiting long-poll wakes on the commit, not on its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_commit() {
    let server = server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = server.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    let started = Instant::now();
    let waiting = poll(&client, format!("{base}/events?after=0&wait=20"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the poll answered before any event");
    let id = Uuid::now_v7();
    let posted = client
        .post(format!("{base}/events"))
        .json(&post_body(id, "Thing", "{}"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::CREATED);
    let events = waiting.await.unwrap();
    let waited = started.elapsed();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, id);
    assert!(
        waited < Duration::from_secs(10),
        "woke by timeout ({waited:?}), not by the commit"
    );

    // Begin shutdown: a waiting poll is answered at once, empty.
    let waiting = poll(&client, format!("{base}/events?after=1&wait=25"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    let answered = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered on shutdown");
    assert!(answered.unwrap().is_empty());
}

/// Over a real socket: many concurrent posts of one id store exactly one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_posts_store_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = distributed_events_server::store::open(&format!(
        "sqlite://{}",
        dir.path().join("e.db").display()
    ))
    .await
    .unwrap();
    let server = EventBusServer::builder(store).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = server.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    let mut posts = Vec::new();
    for round in 0..20 {
        for id in &ids {
            let client = client.clone();
            let request = client
                .post(format!("{base}/events"))
                .json(&post_body(*id, "Thing", "{}"));
            posts.push(tokio::spawn(async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), StatusCode::CREATED, "round {round}");
                response.json::<Value>().await.unwrap()
            }));
        }
    }
    let mut receipts = std::collections::HashMap::new();
    for post in posts {
        let receipt = post.await.unwrap();
        let previous = receipts.insert(receipt["id"].as_str().unwrap().to_owned(), receipt.clone());
        if let Some(previous) = previous {
            assert_eq!(
                previous, receipt,
                "every post of one id gets the same receipt"
            );
        }
    }
    let all: Vec<StoredEvent> = client
        .get(format!("{base}/events?after=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), ids.len(), "100 posts of 5 ids stored 5 events");
    server.close().await;
}

/// Past the cap on waiting long-polls, a poll that would wait answers 503 with
/// `Retry-After`; polls that need not wait are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_past_the_cap_answer_503_with_retry_after() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .limits(Limits {
            max_long_polls: 1,
            ..Limits::default()
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = server.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    let first = tokio::spawn(client.get(format!("{base}/events?after=0&wait=20")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = client
        .get(format!("{base}/events?after=0&wait=20"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "overloaded");
    let short = client
        .get(format!("{base}/events?after=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        short.status(),
        StatusCode::OK,
        "a poll that need not wait is served"
    );

    post_via(&client, &base).await;
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    let again = client
        .get(format!("{base}/events?after=1&wait=0.2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "the permit came back with the answer"
    );
}

async fn post_via(client: &reqwest::Client, base: &str) {
    post_via_id(client, base, Uuid::now_v7()).await;
}

/// A store that counts reads, to see who reads it.
struct CountingStore {
    inner: MemoryStore,
    reads: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl distributed_events_server::store::EventStore for CountingStore {
    async fn append_batch(
        &self,
        events: Vec<StoredEvent>,
    ) -> Result<
        Vec<distributed_events_server::store::Appended>,
        distributed_events_server::store::StoreError,
    > {
        self.inner.append_batch(events).await
    }
    async fn read_range(
        &self,
        after: u64,
        through: u64,
        limit: usize,
        max_bytes: usize,
        selection: &distributed_events_server::store::Selection<'_>,
    ) -> Result<Vec<StoredEvent>, distributed_events_server::store::StoreError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .read_range(after, through, limit, max_bytes, selection)
            .await
    }
    async fn read_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<Vec<StoredEvent>, distributed_events_server::store::StoreError> {
        self.inner.read_since(since, limit, tenant).await
    }
    async fn get(
        &self,
        id: Uuid,
    ) -> Result<Option<StoredEvent>, distributed_events_server::store::StoreError> {
        self.inner.get(id).await
    }
    async fn delete_older_than(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, distributed_events_server::store::StoreError> {
        self.inner.delete_older_than(cutoff).await
    }
    async fn pruned_through(&self) -> Result<u64, distributed_events_server::store::StoreError> {
        self.inner.pruned_through().await
    }
    async fn head(&self) -> Result<u64, distributed_events_server::store::StoreError> {
        self.inner.head().await
    }
    fn watch_head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.watch_head()
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

/// Many parked long-polls and one commit: every poll gets the event, and the store is
/// read a handful of times, not once per poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_every_live_poll_without_a_read_per_poll() {
    const POLLS: usize = 200;
    let store = Arc::new(CountingStore {
        inner: MemoryStore::new(),
        reads: Default::default(),
    });
    let server = EventBusServer::builder(store.clone()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = server.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(POLLS)
        .build()
        .unwrap();

    let polls: Vec<_> = (0..POLLS)
        .map(|_| poll(&client, format!("{base}/events?after=0&wait=20")))
        .collect();
    // Wait until every poll is parked: none has an answer, and reads have stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(polls.iter().all(|p| !p.is_finished()));
    let before = store.reads.load(std::sync::atomic::Ordering::SeqCst);

    let id = Uuid::now_v7();
    post_via_id(&client, &base, id).await;
    for poll in polls {
        let events = poll.await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, id);
    }
    let reads = store.reads.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(
        reads < 10,
        "{reads} store reads to answer {POLLS} live polls"
    );
}

async fn post_via_id(client: &reqwest::Client, base: &str, id: Uuid) {
    let response = client
        .post(format!("{base}/events"))
        .json(&post_body(id, "Thing", "{}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_panicking_authenticator_answers_500_with_a_json_error_and_the_server_goes_on() {
    let server = EventBusServer::builder(Arc::new(MemoryStore::new()))
        .authenticator(|headers: axum::http::HeaderMap| async move {
            if headers.contains_key("x-panic") {
                panic!("the app's authenticator has a bug");
            }
            Ok::<_, AuthRejection>(Principal::default())
        })
        .build();
    let request = Request::get("/events?after=0")
        .header("x-panic", "1")
        .body(Body::empty())
        .unwrap();
    let answer = call(&server, request).await;
    assert_error(&answer, StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(
        !answer.body["error"].as_str().unwrap().contains("bug"),
        "no detail in the body"
    );
    assert_eq!(get(&server, "/events?after=0").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_method_the_api_does_not_take_answers_405_with_a_json_error_and_allow() {
    for (method, path, allowed) in [
        (Method::PUT, "/events", &["GET", "POST"][..]),
        (Method::DELETE, "/events", &["GET", "POST"]),
        (Method::POST, "/healthz", &["GET"]),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let answer = call(&server(), request).await;
        assert_error(
            &answer,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
        let allow = answer.headers[header::ALLOW].to_str().unwrap();
        for method in allowed {
            assert!(allow.contains(method), "{method} {path}: Allow: {allow}");
        }
    }
}

/// A client pointed at a path the server does not serve hears `404` whatever the
/// method: a `405` would say the path exists, and a client would take it as a refusal
/// of its event.
#[tokio::test]
async fn an_unknown_path_answers_404_for_every_method_and_names_the_path() {
    let server = server();
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
        let request = Request::builder()
            .method(method.clone())
            .uri("/api/events?after=0")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                post_body(Uuid::now_v7(), "Thing", "{}").to_string(),
            ))
            .unwrap();
        let response = server
            .router()
            .fallback(distributed_events_server::not_found)
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method}");
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(body["code"], "not_found", "{method}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("/api/events"),
            "{method}: the message names the path: {body}"
        );
    }
    assert_eq!(
        get(&server, "/events?after=0").await.body,
        json!([]),
        "nothing was stored"
    );
}
