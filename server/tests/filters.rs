//! Property: under every combination of `eventType` and `aggregateId` filters, caller
//! (tenant, role) and start (`after`, `since`), paging through `GET /events` gives exactly
//! the events of the caller's tenant that the authorization filter lets through and the
//! filter selects, each once, in position order, in full pages; and the last cursor is
//! the head, past every event skipped. On the memory and SQLite stores, with events read
//! from the store (stored before the server started) and from the tail (posted since).

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use chrono::{DateTime, TimeZone, Utc};
use distributed_events_server::store::{self, Selection, SharedStore};
use distributed_events_server::{EventBusServer, EventsQuery, Principal, StoredEvent};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

/// Event types, some of which need percent-encoding in a query string.
const TYPES: [&str; 4] = ["A", "B C", "D&=E", "Été+"];
const AGGREGATES: [&str; 3] = ["x", "y/1", "z?"];
const TENANTS: [Option<&str>; 3] = [Some("a"), Some("b"), None];
/// Events stored before the server starts (read from the store), then posted (the tail).
const STORED: usize = 60;
const POSTED: usize = 60;

fn created_at(n: usize) -> DateTime<Utc> {
    Utc.timestamp_micros(1_700_000_000_000_000 + 1_000_000 * n as i64)
        .unwrap()
}

/// Every fifth event is secret: only an admin sees it.
fn event_json(n: usize) -> String {
    json!({ "n": n, "secret": n.is_multiple_of(5) }).to_string()
}

fn stored_event(n: usize) -> StoredEvent {
    StoredEvent {
        id: Uuid::now_v7(),
        created_at: created_at(n),
        aggregate_id: AGGREGATES[(n * 5 + 1) % 3].into(),
        event_type: TYPES[(n * 7 + 3) % 4].into(),
        event_json: event_json(n),
        user_id: None,
        tenant_id: TENANTS[n % 3].map(str::to_owned),
        session_id: None,
        context: Default::default(),
        position: None,
    }
}

/// `Bearer <tenant>:<role>`; no header: a caller of no tenant, who sees every tenant.
async fn authenticate(
    headers: HeaderMap,
) -> Result<Principal, distributed_events_server::AuthRejection> {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return Ok(Principal::default());
    };
    let (tenant, role) = token.split_once(':').unwrap_or((token, "user"));
    Ok(Principal {
        user_id: Some(format!("{tenant}-{role}")),
        tenant_id: Some(tenant.to_owned()),
        claims: [("role".to_owned(), json!(role))].into_iter().collect(),
        ..Principal::default()
    })
}

fn may_see(event: &StoredEvent, principal: &Principal) -> bool {
    !event.event_json.contains("\"secret\":true")
        || principal.claims.get("role") == Some(&json!("admin"))
}

async fn setup(store: SharedStore) -> EventBusServer {
    store
        .append_batch((0..STORED).map(stored_event).collect())
        .await
        .expect("stored");
    let server = EventBusServer::builder(store)
        .authenticator(authenticate)
        .authorization_filter(may_see)
        .build();
    for n in STORED..STORED + POSTED {
        let event = stored_event(n);
        let mut request = Request::post("/events").header(header::CONTENT_TYPE, "application/json");
        if let Some(tenant) = TENANTS[n % 3] {
            request = request.header(header::AUTHORIZATION, format!("Bearer {tenant}:user"));
        }
        let body = serde_json::to_string(&event).expect("JSON");
        let (status, answer) =
            call(&server, request.body(Body::from(body)).expect("request")).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    server
}

async fn call(server: &EventBusServer, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = server.router().oneshot(request).await.expect("infallible");
    let status = response.status();
    let cursor = response.headers().get("x-events-cursor").cloned();
    let mut body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes()
        .to_vec();
    if let Some(cursor) = cursor {
        // Carried in front of the body, to keep one return shape.
        let mut with_cursor = format!("{}\n", cursor.to_str().expect("ASCII")).into_bytes();
        with_cursor.append(&mut body);
        body = with_cursor;
    }
    (status, body)
}

/// One read: the page and its cursor.
async fn read(
    server: &EventBusServer,
    token: Option<&str>,
    query: &EventsQuery,
) -> Result<(Vec<StoredEvent>, u64), TestCaseError> {
    let mut request = Request::get(format!("/events?{}", query.to_query_string()));
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let (status, body) = call(server, request.body(Body::empty()).expect("request")).await;
    let body = String::from_utf8(body).expect("UTF-8");
    prop_assert_eq!(status, StatusCode::OK, "{}", body);
    let (cursor, page) = body.split_once('\n').expect("a cursor header");
    Ok((
        serde_json::from_str(page).expect("a page"),
        cursor.parse().expect("a cursor"),
    ))
}

#[derive(Debug, Clone)]
struct Case {
    token: Option<&'static str>,
    event_types: Vec<String>,
    aggregate_ids: Vec<String>,
    limit: u64,
    /// `after=<n>` when `Ok`, `since=<created_at of event n>` when `Err`.
    start: Result<u64, usize>,
}

fn case() -> impl Strategy<Value = Case> {
    let subset = |values: &'static [&'static str]| {
        proptest::sample::subsequence(values.to_vec(), 0..=values.len())
            .prop_map(|values| values.into_iter().map(str::to_owned).collect::<Vec<_>>())
    };
    (
        proptest::sample::select(vec![
            None,
            Some("a:user"),
            Some("a:admin"),
            Some("b:user"),
            Some("c:admin"),
        ]),
        subset(&TYPES),
        subset(&AGGREGATES),
        1..8u64,
        prop_oneof![
            (0..=(STORED + POSTED) as u64).prop_map(Ok),
            (0..STORED + POSTED + 2).prop_map(Err),
        ],
    )
        .prop_map(|(token, event_types, aggregate_ids, limit, start)| Case {
            token,
            event_types,
            aggregate_ids,
            limit,
            start,
        })
}

async fn check(
    server: &EventBusServer,
    all: &[StoredEvent],
    head: u64,
    case: Case,
) -> Result<(), TestCaseError> {
    let principal = match case.token {
        Some(token) => authenticate(
            [(
                header::AUTHORIZATION,
                format!("Bearer {token}").parse().expect("header"),
            )]
            .into_iter()
            .collect(),
        )
        .await
        .expect("a principal"),
        None => Principal::default(),
    };
    let filter = EventsQuery {
        event_types: case.event_types.clone(),
        aggregate_ids: case.aggregate_ids.clone(),
        ..EventsQuery::default()
    };
    let tenant = principal.tenant_id.as_deref();
    let expected: Vec<u64> = all
        .iter()
        .filter(|event| match case.start {
            Ok(after) => event.position.expect("stored") > after,
            Err(n) => event.created_at >= created_at(n),
        })
        .filter(|event| {
            Selection::of_query(tenant, &filter).selects(event) && may_see(event, &principal)
        })
        .map(|event| event.position.expect("stored"))
        .collect();

    let mut query = EventsQuery {
        limit: Some(case.limit),
        ..filter
    };
    match case.start {
        Ok(after) => query.after = Some(after),
        Err(n) => query.since = Some(created_at(n)),
    }
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (page, cursor) = read(server, case.token, &query).await?;
        let remaining = expected.len().saturating_sub(seen.len());
        prop_assert_eq!(
            page.len() as u64,
            case.limit.min(remaining as u64),
            "a full page unless it is the last; after {:?}",
            seen
        );
        seen.extend(page.iter().map(|event| event.position.expect("a position")));
        pages += 1;
        prop_assert!(pages <= STORED + POSTED + 2, "paging does not end");
        query.since = None;
        query.after = Some(cursor);
        if page.is_empty() {
            prop_assert_eq!(
                cursor,
                head,
                "the last cursor is the head, past the skipped events"
            );
            break;
        }
    }
    prop_assert_eq!(seen, expected);
    Ok(())
}

fn run(database: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (server, all, head) = runtime.block_on(async {
        let store = store::open(database).await.expect("a store");
        let server = setup(store.clone()).await;
        let all = store
            .read_range(
                0,
                u64::MAX,
                usize::MAX >> 1,
                usize::MAX,
                &Selection::default(),
            )
            .await
            .expect("everything");
        assert_eq!(all.len(), STORED + POSTED);
        let head = store.head().await.expect("the head");
        (server, all, head)
    });
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |case| {
            runtime.block_on(check(&server, &all, head, case))
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    runtime.block_on(server.close());
}

#[test]
fn filtered_reads_keep_tenants_and_authorization_on_memory() {
    run("memory");
}

#[test]
fn filtered_reads_keep_tenants_and_authorization_on_sqlite() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    run(&format!(
        "sqlite://{}",
        dir.path().join("events.db").display()
    ));
}

#[test]
fn bad_filters_answer_400_naming_the_parameter() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let server = EventBusServer::builder(store::open("memory").await.expect("a store")).build();
        let too_many = vec!["eventType=T"; 101].join("&");
        let too_long = format!("aggregateId={}", "x".repeat(201));
        for (query, named) in [
            (too_many.as_str(), "`eventType` takes at most 100 values"),
            (
                too_long.as_str(),
                "each `aggregateId` must be 1 to 200 bytes",
            ),
            ("eventType=", "each `eventType` must be 1 to 200 bytes"),
            ("after=1&after=2", "`after` is given more than once"),
        ] {
            let (status, body) = call(
                &server,
                Request::get(
                    format!("/events?after=0&{query}").replace("after=0&after=1", "after=1"),
                )
                .body(Body::empty())
                .expect("request"),
            )
            .await;
            let body: Value = serde_json::from_slice(&body).expect("a JSON error");
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert_eq!(body["code"], "bad_request");
            assert!(
                body["error"].as_str().unwrap_or_default().contains(named),
                "{query}: {body}"
            );
        }
        server.close().await;
    });
}
