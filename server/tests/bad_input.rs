//! Hostile and malformed requests against the real binary: every answer is a 4xx with a
//! JSON error (never a 5xx, a panic or a hang), and the stored data stays unchanged.

mod common;

use common::ServerProcess;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn valid_event() -> Value {
    json!({
        "id": Uuid::now_v7(),
        "createdAt": "2024-12-04T10:00:15Z",
        "aggregateId": "order-1",
        "eventType": "OrderPurchasedEvent",
        "eventJson": "{\"amount\":1}",
    })
}

/// Sends raw bytes and returns the status code and body of the answer.
async fn raw(base: &str, request: &[u8]) -> (u16, String) {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // The server may answer (and close) before it has read everything, as for a body
    // over the limit: a failed write is not the test's failure, a missing answer is.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn post_raw(body: &[u8], content_type: &str) -> Vec<u8> {
    let mut request = format!(
        "POST /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn get_raw(target: &[u8]) -> Vec<u8> {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    request
}

fn assert_json_4xx(what: &str, (status, body): &(u16, String)) {
    assert!(
        (400..500).contains(status),
        "{what}: status {status}, body {body}"
    );
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
    assert!(
        body["error"].is_string() && body["code"].is_string(),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_json_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("site")).unwrap();
    std::fs::write(dir.path().join("site/index.html"), "ok").unwrap();
    let site = dir.path().join("site");
    let server = ServerProcess::sqlite(
        &dir.path().join("e.db"),
        &["--static-dir", site.to_str().unwrap()],
    );
    let base = &server.base;
    let client = reqwest::Client::new();
    let stored = client
        .post(format!("{base}/events"))
        .json(&valid_event())
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let before = client
        .get(format!("{base}/events?after=0"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // Bodies.
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut deep_field = valid_event();
    deep_field["context"] =
        serde_json::from_str(&format!("{}1{}", "{\"a\":".repeat(100), "}".repeat(100))).unwrap();
    deep_field["eventJson"] = json!(deep);
    // Decodes in a post, but not in a page (128 levels there): no client could read it.
    let mut poison = valid_event();
    poison["context"] = serde_json::from_str(&format!(
        "{{\"a\":{}1{}}}",
        "[".repeat(125),
        "]".repeat(125)
    ))
    .unwrap();
    let mut huge_string = valid_event();
    huge_string["aggregateId"] = json!("x".repeat(2 * 1024 * 1024));
    let mut invalid_utf8 = serde_json::to_vec(&valid_event()).unwrap();
    invalid_utf8.splice(10..10, [0xff, 0xfe, 0xc3]);
    let mut negative_position = valid_event();
    negative_position["position"] = json!(-1);
    let mut wrong_types = valid_event();
    wrong_types["createdAt"] = json!(12345);
    let bodies: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty body", vec![], "application/json"),
        ("not JSON", b"hello".to_vec(), "application/json"),
        ("truncated", b"{\"id\":".to_vec(), "application/json"),
        ("null", b"null".to_vec(), "application/json"),
        ("array", b"[]".to_vec(), "application/json"),
        (
            "deeply nested body",
            deep.clone().into_bytes(),
            "application/json",
        ),
        (
            "deeply nested eventJson",
            serde_json::to_vec(&deep_field).unwrap(),
            "application/json",
        ),
        (
            "context too deep for a page",
            serde_json::to_vec(&poison).unwrap(),
            "application/json",
        ),
        (
            "2 MiB string",
            serde_json::to_vec(&huge_string).unwrap(),
            "application/json",
        ),
        ("invalid UTF-8", invalid_utf8, "application/json"),
        (
            "negative position",
            serde_json::to_vec(&negative_position).unwrap(),
            "application/json",
        ),
        (
            "wrong types",
            serde_json::to_vec(&wrong_types).unwrap(),
            "application/json",
        ),
        (
            "form content type",
            serde_json::to_vec(&valid_event()).unwrap(),
            "application/x-www-form-urlencoded",
        ),
    ];
    for (what, body, content_type) in &bodies {
        assert_json_4xx(what, &raw(base, &post_raw(body, content_type)).await);
    }

    // Queries.
    let targets: Vec<&[u8]> = vec![
        b"/events",
        b"/events?after=",
        b"/events?after=-1",
        b"/events?after=1e3",
        b"/events?after=99999999999999999999999999",
        b"/events?after=0&limit=-1",
        b"/events?after=0&limit=99999999999999999999999999",
        b"/events?after=0&wait=-0.5",
        b"/events?after=0&wait=1e999",
        b"/events?after=0&wait=abc",
        b"/events?after=%ff%fe",
        b"/events?after=0&after=1",
        b"/events?since=",
        b"/events?since=2024-12-04",
        b"/events?since=2024-12-04T10:00:00",
        b"/events?since=1733306400",
        b"/events?since=2024-13-45T99:00:00Z",
        b"/events?since=%00",
    ];
    for target in &targets {
        assert_json_4xx(
            &String::from_utf8_lossy(target),
            &raw(base, &get_raw(target)).await,
        );
    }

    // Path traversal against the static files never leaves the folder.
    for target in [
        &b"/../e.db"[..],
        b"/%2e%2e/e.db",
        b"/..%2fe.db",
        b"/%2e%2e%2fe.db",
        b"/site/../../e.db",
        b"/....//e.db",
    ] {
        let answer = raw(base, &get_raw(target)).await;
        assert!(!answer.1.contains("SQLite"));
        assert_json_4xx(&String::from_utf8_lossy(target), &answer);
    }

    // Paths and methods the API does not have.
    for (what, request) in [
        ("unknown path", get_raw(b"/nope")),
        ("unknown API path", get_raw(b"/events/1")),
        (
            "PUT /events",
            b"PUT /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ),
        (
            "POST to a static file",
            b"POST /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        (
            "DELETE /healthz",
            b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
    ] {
        assert_json_4xx(what, &raw(base, &request).await);
    }

    // Requests that are not valid HTTP (control characters in a header, an oversized
    // header) are refused by the HTTP layer itself, with 400 or 431 and no body.
    let (status, _) = raw(base, &post_raw(b"{}", "\u{1}\u{2}")).await;
    assert_eq!(status, 400, "control characters in a header");
    let mut huge_header =
        b"GET /events?after=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ".to_vec();
    huge_header.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    huge_header.extend_from_slice(b"\r\n\r\n");
    let (status, _) = raw(base, &huge_header).await;
    assert!(
        (400..500).contains(&status) || status == 0,
        "oversized header: {status}"
    );

    // Nothing changed, and the server still works.
    let after = client
        .get(format!("{base}/events?after=0"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(after, before);
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
