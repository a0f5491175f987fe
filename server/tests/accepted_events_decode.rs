//! Property: whatever `POST /events` answers `201` to, every client decodes when it is
//! served in a page: the page, each record and each payload. What the server refuses it
//! refuses with a `400`, never a 5xx. Posts are generated around the limits (nesting
//! near [`MAX_NESTING`] and serde_json's 127 levels, leap seconds, years past 9999, NUL).

use std::cell::Cell;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use distributed_events_server::{store, EventBusServer, Receipt, StoredEvent, MAX_NESTING};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tower::ServiceExt;

/// `depth` levels of arrays or objects around a number.
fn nested(depth: usize, objects: bool) -> Value {
    (0..depth).fold(json!(1), |inner, _| {
        if objects {
            json!({ "k": inner })
        } else {
            json!([inner])
        }
    })
}

/// Depths near 0, near the limit and near serde_json's.
fn depth() -> impl Strategy<Value = usize> {
    prop_oneof![
        0..4usize,
        (MAX_NESTING - 6)..(MAX_NESTING + 3),
        120..132usize,
    ]
}

fn created_at() -> impl Strategy<Value = String> {
    // Second 60 is a leap second, which chrono parses.
    let valid = (
        0..=9999i32,
        1..=12u32,
        1..=28u32,
        0..=23u32,
        0..=60u32,
        0..1_000_000u32,
    )
        .prop_map(|(year, month, day, hour, second, micros)| {
            format!("{year:04}-{month:02}-{day:02}T{hour:02}:59:{second:02}.{micros:06}Z")
        });
    prop_oneof![
        4 => valid,
        1 => Just("2024-12-31T23:59:60Z".to_owned()),
        1 => Just("+10000-01-01T00:00:00Z".to_owned()),
        1 => Just("-0001-12-31T00:00:00Z".to_owned()),
    ]
    .boxed()
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![8 => "[a-z]{1,4}", 1 => Just(String::new()), 1 => Just("a\u{0}".to_owned())]
}

fn post() -> impl Strategy<Value = Value> {
    (
        any::<u128>(),
        created_at(),
        text(),
        (depth(), any::<bool>()),
        proptest::option::of((depth(), any::<bool>())),
        proptest::option::of(text()),
    )
        .prop_map(|(id, created_at, name, payload, context, tenant)| {
            let mut body = json!({
                "id": uuid::Uuid::from_u128(id),
                "createdAt": created_at,
                "aggregateId": name.clone(),
                "eventType": name,
                "eventJson": nested(payload.0, payload.1).to_string(),
                "tenantId": tenant,
            });
            if let Some((depth, objects)) = context {
                body["context"] = json!({ "c": nested(depth, objects) });
            }
            body
        })
}

async fn call(server: &EventBusServer, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = server.router().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = response.into_body().collect().await.expect("a body");
    (status, body.to_bytes().to_vec())
}

/// Posts `body`; when it is accepted, reads it back in a page and decodes that as a
/// client does. Returns whether it was accepted.
async fn check(server: &EventBusServer, body: &Value) -> Result<bool, TestCaseError> {
    let request = Request::post("/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request");
    let (status, answer) = call(server, request).await;
    let answer = String::from_utf8_lossy(&answer);
    if status != StatusCode::CREATED {
        prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", answer);
        return Ok(false);
    }
    let receipt: Value = serde_json::from_str(&answer).expect("a receipt");
    let position = receipt["position"].as_u64().expect("a position");
    let read = Request::get(format!("/events?after={}&limit=1", position - 1))
        .body(Body::empty())
        .expect("a request");
    let (status, page) = call(server, read).await;
    prop_assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).expect("UTF-8");
    let decoded = distributed_events_client::fuzzing::decode_page(&page);
    prop_assert!(decoded.is_ok(), "accepted {} but {:?}", body, decoded);
    let events = decoded.unwrap_or_default();
    prop_assert_eq!(events.len(), 1);
    prop_assert_eq!(
        events[0].id.to_string(),
        body["id"].as_str().unwrap_or_default()
    );
    let acknowledged: Receipt = serde_json::from_value(receipt).expect("a receipt");
    prop_assert_eq!(
        events[0].created_at,
        acknowledged.created_at,
        "read back as acknowledged"
    );
    // As a whole, too: no accepted record relies on the client's record-by-record path.
    prop_assert!(serde_json::from_str::<Vec<StoredEvent>>(&page).is_ok());
    Ok(true)
}

#[test]
fn whatever_the_server_accepts_every_client_decodes() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let database = format!("sqlite://{}", dir.path().join("events.db").display());
    let server = runtime.block_on(async {
        let store = store::open(&database).await.expect("a SQLite store");
        EventBusServer::builder(store).build()
    });
    let (accepted, refused) = (Cell::new(0), Cell::new(0));
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&post(), |body| {
            let counter = if runtime.block_on(check(&server, &body))? {
                &accepted
            } else {
                &refused
            };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    // Both sides of the limits were exercised, or the property proves little.
    assert!(
        accepted.get() > 50 && refused.get() > 50,
        "accepted {}, refused {}",
        accepted.get(),
        refused.get()
    );
    runtime.block_on(server.close());
}
