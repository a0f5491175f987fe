//! Operations: the Prometheus metrics (library and `--metrics-bind`) and the OpenAPI
//! document, over real sockets.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use distributed_events_server::{metrics_router, store, EventBusServer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use uuid::Uuid;

/// Serves `router` on a free loopback port; returns its base URL.
async fn serve(router: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

/// The value of the sample of `name` whose labels include every one of `labels`
/// (`key="value"`), or 0 when there is none yet.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name && labels.iter().all(|label| series_labels.contains(label))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

async fn scrape(client: &reqwest::Client, metrics_base: &str) -> String {
    let response = client
        .get(format!("{metrics_base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "Prometheus's text format, got {content_type}"
    );
    response.text().await.unwrap()
}

fn event(id: Uuid) -> Value {
    json!({
        "id": id,
        "createdAt": "2024-12-04T10:00:15Z",
        "aggregateId": "order-1",
        "eventType": "OrderPurchasedEvent",
        "eventJson": "{\"amount\":1}",
    })
}

#[tokio::test]
async fn metrics_count_requests_appends_deliveries_and_waiting_polls() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("events.db").display());
    let metrics = serve(metrics_router().expect("no other recorder in this test")).await;
    let server = EventBusServer::builder(store::open(&database).await.unwrap()).build();
    let api = serve(server.router()).await;
    let client = reqwest::Client::new();
    let before = scrape(&client, &metrics).await;
    let moved = |after: &str, name: &str, labels: &[&str]| {
        sample(after, name, labels) - sample(&before, name, labels)
    };

    // A long-poll at the head waits: it shows as a live connection until a post wakes it.
    let poll = tokio::spawn({
        let (client, api) = (client.clone(), api.clone());
        async move {
            let response = client
                .get(format!("{api}/events?after=0&wait=30"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Vec<Value>>().await.unwrap()
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = scrape(&client, &metrics).await;
        let waiting = sample(
            &now,
            "distributed_events_live_connections",
            &[r#"kind="long_poll""#],
        );
        if waiting == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the long-poll never showed as waiting:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let id = Uuid::now_v7();
    for _ in 0..2 {
        let response = client
            .post(format!("{api}/events"))
            .json(&event(id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let delivered = poll.await.unwrap();
    assert_eq!(
        delivered.len(),
        1,
        "the waiting poll got the post: {delivered:?}"
    );
    let page = client
        .get(format!("{api}/events?after=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let bad = client
        .get(format!("{api}/events?after=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let after = scrape(&client, &metrics).await;
    let appended = |outcome: &str| {
        moved(
            &after,
            "distributed_events_appended_total",
            &[&format!(r#"outcome="{outcome}""#)],
        )
    };
    assert_eq!(
        (appended("new"), appended("replayed")),
        (1.0, 1.0),
        "{after}"
    );
    let requests = |method: &str, status: &str| {
        moved(
            &after,
            "distributed_events_http_requests_total",
            &[
                &format!(r#"method="{method}""#),
                r#"route="/events""#,
                &format!(r#"status="{status}""#),
            ],
        )
    };
    assert_eq!(requests("POST", "201"), 2.0, "{after}");
    assert_eq!(requests("GET", "200"), 2.0, "{after}");
    assert_eq!(requests("GET", "400"), 1.0, "{after}");
    let timed = moved(
        &after,
        "distributed_events_http_request_duration_seconds_count",
        &[r#"method="GET""#, r#"route="/events""#],
    );
    assert_eq!(timed, 3.0, "every GET /events was timed:\n{after}");
    assert_eq!(
        moved(&after, "distributed_events_delivered_total", &[]),
        2.0,
        "one event to the long-poll, one to the page read:\n{after}"
    );
    assert_eq!(
        sample(
            &after,
            "distributed_events_live_connections",
            &[r#"kind="long_poll""#]
        ),
        0.0,
        "the answered poll no longer counts:\n{after}"
    );
    assert_eq!(
        sample(&after, "distributed_events_tail_events", &[]),
        1.0,
        "{after}"
    );
    assert!(
        sample(&after, "distributed_events_tail_bytes", &[]) > 100.0,
        "{after}"
    );

    // An open stream counts as a live connection of its kind, and its events as
    // delivered, until its client leaves.
    let mut stream = client
        .get(format!("{api}/events?after=0"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut received = String::new();
    while !received.contains("data: ") {
        let chunk = stream.chunk().await.unwrap().expect("the stream goes on");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let streaming = |expected: f64| {
        let (client, metrics) = (client.clone(), metrics.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let now = scrape(&client, &metrics).await;
                let open = sample(
                    &now,
                    "distributed_events_live_connections",
                    &[r#"kind="stream""#],
                );
                if open == expected {
                    return now;
                }
                assert!(
                    Instant::now() < deadline,
                    "never {expected} open streams:\n{now}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let open = streaming(1.0).await;
    assert_eq!(
        moved(&open, "distributed_events_delivered_total", &[]),
        3.0,
        "and one event to the stream:\n{open}"
    );
    drop(stream);
    streaming(0.0).await;
    server.close().await;
}

/// The document in the repository; `UPDATE_OPENAPI=1` rewrites it from the served one.
fn repository_document() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[tokio::test]
async fn the_served_openapi_document_is_the_one_in_the_repository() {
    let server = EventBusServer::builder(store::open("memory").await.unwrap()).build();
    let api = serve(server.router()).await;
    let response = reqwest::get(format!("{api}/openapi.json")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = response.text().await.unwrap();
    let parsed: Value = serde_json::from_str(&served).unwrap();
    assert!(
        parsed["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1, got {}",
        parsed["openapi"]
    );
    for (path, method) in [("/events", "get"), ("/events", "post"), ("/healthz", "get")] {
        assert!(
            parsed["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
    }
    let path = repository_document();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &served).unwrap();
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        kept == served,
        "{} differs from the document the server serves; if the API changed on purpose, \
         regenerate it with `UPDATE_OPENAPI=1 cargo test -p distributed-events-server --test operations openapi` \
         and commit it",
        path.display()
    );
}

#[tokio::test]
async fn metrics_bind_serves_metrics_apart_from_the_api() {
    // A free port for the metrics; the binary prints only the API's address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_bind = format!("127.0.0.1:{port}");
    let server =
        common::ServerProcess::start(&["--database", "memory", "--metrics-bind", &metrics_bind]);
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/events", server.base))
        .json(&event(Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let metrics = scrape(&client, &format!("http://{metrics_bind}")).await;
    assert_eq!(
        sample(
            &metrics,
            "distributed_events_appended_total",
            &[r#"outcome="new""#]
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("# HELP distributed_events_http_requests_total"),
        "{metrics}"
    );
    let on_api = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        on_api.status(),
        404,
        "the API's clients cannot read the metrics"
    );
}
