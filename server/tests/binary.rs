//! The real binary over real sockets: durability across `kill -9`, graceful shutdown.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::ServerProcess;
use distributed_events_server::StoredEvent;
use serde_json::{json, Value};
use uuid::Uuid;

fn event(n: usize) -> Value {
    json!({
        "id": Uuid::now_v7(),
        "createdAt": "2024-12-04T10:00:15Z",
        "aggregateId": format!("order-{}", n % 5),
        "eventType": "OrderPurchasedEvent",
        "eventJson": format!("{{\"n\":{n}}}"),
    })
}

async fn read_all(client: &reqwest::Client, base: &str) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{base}/events?after={after}&limit=500");
        let (page, cursor, _) = common::read_page(client, &url).await;
        if page.is_empty() {
            return all;
        }
        all.extend(page);
        after = cursor;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let server = ServerProcess::sqlite(&db, &[]);
    let client = reqwest::Client::new();

    // Producers post until the server dies under them; keep what was acknowledged.
    let mut producers = Vec::new();
    for p in 0..8 {
        let client = client.clone();
        let base = server.base.clone();
        producers.push(tokio::spawn(async move {
            let mut acknowledged = BTreeMap::new();
            for i in 0.. {
                let body = event(p * 1_000_000 + i);
                match client
                    .post(format!("{base}/events"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(response) if response.status() == 201 => {
                        let receipt: Value = response.json().await.unwrap();
                        acknowledged.insert(
                            receipt["position"].as_u64().unwrap(),
                            body["id"].as_str().unwrap().to_owned(),
                        );
                    }
                    Ok(response) => panic!("unexpected status {}", response.status()),
                    Err(_) => return acknowledged, // the server is gone
                }
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill_hard();
    let mut acknowledged = BTreeMap::new();
    for producer in producers {
        acknowledged.extend(producer.await.unwrap());
    }
    assert!(
        acknowledged.len() > 50,
        "too few posts before the kill to prove anything: {}",
        acknowledged.len()
    );

    let restarted = ServerProcess::sqlite(&db, &[]);
    let stored = read_all(&client, &restarted.base).await;
    let by_position: BTreeMap<u64, String> = stored
        .iter()
        .map(|e| (e.position.unwrap(), e.id.to_string()))
        .collect();
    assert_eq!(by_position.len(), stored.len(), "no position twice");
    for (position, id) in &acknowledged {
        assert_eq!(
            by_position.get(position),
            Some(id),
            "acknowledged event at {position} lost by kill -9"
        );
    }
    println!(
        "{} acknowledged before kill -9, {} stored after restart",
        acknowledged.len(),
        stored.len()
    );

    // Positions go on after the restart: nothing reused.
    let last = *by_position.keys().last().unwrap();
    let response = client
        .post(format!("{}/events", restarted.base))
        .json(&event(0))
        .send()
        .await
        .unwrap();
    let receipt: Value = response.json().await.unwrap();
    assert!(receipt["position"].as_u64().unwrap() > last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_waiting_polls_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let server = ServerProcess::sqlite(&db, &[]);
    let client = reqwest::Client::new();
    for n in 0..20 {
        let response = client
            .post(format!("{}/events", server.base))
            .json(&event(n))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let waiting = tokio::spawn({
        let url = format!("{}/events?after=20&wait=30", server.base);
        let client = client.clone();
        async move { client.get(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let base = server.base.clone();
    assert!(
        tokio::task::spawn_blocking(move || server.terminate())
            .await
            .unwrap(),
        "clean exit on SIGTERM"
    );
    let answer = waiting
        .await
        .unwrap()
        .expect("the waiting poll got an answer, not a reset connection");
    assert_eq!(answer.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown waited out the long-poll"
    );
    assert!(
        client.get(format!("{base}/healthz")).send().await.is_err(),
        "the server is gone"
    );

    let restarted = ServerProcess::sqlite(&db, &[]);
    assert_eq!(read_all(&client, &restarted.base).await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_static_files_and_cors_for_configured_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("index.html"), "<h1>demo</h1>").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "not for the web").unwrap();
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--static-dir",
        site.to_str().unwrap(),
        "--cors-origin",
        "http://app.example",
    ]);
    let client = reqwest::Client::new();
    let page = client
        .get(format!("{}/", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap(), "<h1>demo</h1>");
    for escape in ["/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"] {
        let response = client
            .get(format!("{}{escape}", server.base))
            .send()
            .await
            .unwrap();
        assert_ne!(response.status(), 200, "{escape} escaped the static folder");
    }

    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{}/events", server.base))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type,x-tenant")
            .send()
    };
    let allowed = preflight("http://app.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-headers"],
        "content-type,x-tenant",
        "a client's own headers (its `headers` option) are allowed too"
    );
    let refused = preflight("http://evil.example").await.unwrap();
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let polled = client
        .get(format!("{}/events?after=0", server.base))
        .header("Origin", "http://app.example")
        .send()
        .await
        .unwrap();
    let exposed = polled.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("x-events-cursor"),
        "scripts must be able to read the cursor: {exposed}"
    );
}

/// After a restart the server's memory of recent events starts at the stored head, so
/// a client that polls from the start still gets everything, at once, from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_serves_what_was_stored_before() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let client = reqwest::Client::new();
    let first = ServerProcess::sqlite(&db, &[]);
    for n in 0..5 {
        let response = client
            .post(format!("{}/events", first.base))
            .json(&event(n))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    drop(first);
    let second = ServerProcess::sqlite(&db, &[]);
    let polled: Vec<StoredEvent> = client
        .get(format!("{}/events?after=0&wait=5", second.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(polled.len(), 5);
}

/// Runs the binary with `args` and returns its stderr once it has exited, unsuccessfully;
/// fails (and stops it) if it is still running after 30 s.
fn refused_at_start(args: &[&str]) -> String {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distributed-events-server"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with {args:?} instead of refusing to");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{args:?}: exit status {status}");
    stderr
}

#[test]
fn a_cors_origin_no_browser_would_send_fails_at_start() {
    for origin in [
        "http://app.example/",
        "app.example",
        "http://app.example/path",
        "ftp://app.example",
    ] {
        let stderr = refused_at_start(&[
            "--database",
            "memory",
            "--bind",
            "127.0.0.1:0",
            "--cors-origin",
            origin,
        ]);
        assert!(stderr.contains("invalid CORS origin"), "{origin}: {stderr}");
    }
}

/// What a request answered: its status, `Allow` header and error code.
async fn answer_of(request: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get("allow")
        .map(|value| value.to_str().unwrap().to_owned());
    (status, allow, response.json().await.unwrap_or(Value::Null))
}

/// Unknown paths answer the JSON `404` whatever the method, with or without a static
/// folder; a path that exists answers a method it does not take with the JSON `405` and
/// `Allow`. A client pointed at `http://host/api` must hear "not found", never a `405`
/// that sounds like a refusal of its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_answer_404_for_every_method_and_known_ones_405_with_allow() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<h1>demo</h1>").unwrap();
    let static_dir = dir.path().to_str().unwrap();
    let with_files = ServerProcess::start(&["--database", "memory", "--static-dir", static_dir]);
    let without_files =
        ServerProcess::start(&["--database", "memory", "--static-dir", "/no/such/dir"]);
    let client = reqwest::Client::new();
    for server in [&with_files, &without_files] {
        let base = &server.base;
        for method in [
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            for path in ["/api/events", "/nope.html"] {
                let (status, _, body) = answer_of(
                    client
                        .request(method.clone(), format!("{base}{path}"))
                        .json(&event(0)),
                )
                .await;
                assert_eq!(
                    (status, body["code"].as_str()),
                    (404, Some("not_found")),
                    "{method} {path}: {body}"
                );
                assert!(
                    body["error"].as_str().unwrap().contains(path),
                    "{method} {path}: the message names the path: {body}"
                );
            }
        }
        let (status, allow, body) =
            answer_of(client.put(format!("{base}/events")).json(&event(0))).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (405, Some("method_not_allowed"))
        );
        let allow = allow.expect("an Allow header");
        assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
        let stored = read_all(&client, base).await;
        assert!(stored.is_empty(), "nothing was stored: {stored:?}");
    }
    let (status, allow, body) =
        answer_of(client.post(format!("{}/index.html", with_files.base))).await;
    assert_eq!(
        (status, body["code"].as_str(), allow.as_deref()),
        (405, Some("method_not_allowed"), Some("GET,HEAD")),
        "a POST to a static file: {body}"
    );
    let page = client
        .get(format!("{}/index.html", with_files.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.text().await.unwrap(), "<h1>demo</h1>");
}

/// Two servers on one SQLite file would each keep their own head and recent events in
/// memory and miss the other's commits: the second is refused at start, with a message
/// that says why, and the file is free again once the first has gone (even by SIGKILL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_sqlite_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let database = format!("sqlite://{}", db.display());
    let client = reqwest::Client::new();
    let first = ServerProcess::sqlite(&db, &[]);
    let posted = client
        .post(format!("{}/events", first.base))
        .json(&event(1))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);

    let stderr = refused_at_start(&["--database", &database, "--bind", "127.0.0.1:0"]);
    assert!(
        stderr.contains("another server is using"),
        "the second server says why it stops: {stderr}"
    );
    assert_eq!(
        read_all(&client, &first.base).await.len(),
        1,
        "the first server goes on"
    );

    first.kill_hard();
    let second = ServerProcess::sqlite(&db, &[]);
    assert_eq!(read_all(&client, &second.base).await.len(), 1);
}

/// The start-up log as a file or a pipe gets it: plain text (no colour codes), the CORS
/// origins in effect, and a warning when the demo page's folder is missing.
#[test]
fn the_start_up_log_is_plain_text_and_says_what_is_served() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distributed-events-server"))
        .args(["--database", "memory", "--bind", "127.0.0.1:0"])
        .args(["--static-dir", "/nonexistent/www/dist"])
        .args(["--cors-origin", "http://app.example"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Everything up to the address line; a server that exits first ends the lines.
    let log: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .take_while(|line| !line.starts_with("listening on "))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join("\n");
    assert!(!log.contains('\x1b'), "colour codes in a piped log:\n{log}");
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && line.contains("the demo page is not served")),
        "no warning about the missing --static-dir:\n{log}"
    );
    assert!(
        log.lines()
            .any(|line| line.contains("origins") && line.contains("http://app.example")),
        "the CORS origins in effect are not logged:\n{log}"
    );
}

#[test]
fn limits_that_make_the_server_useless_fail_at_start() {
    for (flag, value) in [
        ("--max-body-bytes", "0"),
        ("--max-long-polls", "0"),
        ("--max-long-polls-per-tenant", "0"),
        ("--max-connections", "0"),
        ("--header-read-timeout", "0s"),
        ("--idle-timeout", "0s"),
        ("--body-read-timeout", "0s"),
    ] {
        let stderr =
            refused_at_start(&["--database", "memory", "--bind", "127.0.0.1:0", flag, value]);
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
