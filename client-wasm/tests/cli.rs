//! The `distributed-events` command-line tool against the real server binary (on a
//! temporary SQLite file): what it prints, and its exit codes and messages on `401`,
//! `410` and a server that is not there.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use distributed_events_client::StoredEvent;
use distributed_events_tests::TestServer;
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

/// Runs the CLI with `args` (and `stdin`, if any) and waits for it to exit; fails if it
/// is still running after 60 s.
fn cli(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_distributed-events"))
        .args(args)
        .env_remove("DISTRIBUTED_EVENTS_URL")
        .env_remove("DISTRIBUTED_EVENTS_TOKEN")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start distributed-events");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    // Drain both pipes while waiting, so that a chatty process cannot block on them.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "distributed-events {args:?} still ran after 60 s; its stderr:\n{}",
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that `output` exited with `code` and said `needle` on stderr.
fn assert_failed(output: &Output, code: i32, needle: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit status {}, stderr:\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains(needle),
        "stderr does not say {needle:?}:\n{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "colour codes on a pipe:\n{stderr}"
    );
}

fn assert_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit status {}, stderr:\n{}",
        output.status,
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn token(tenant: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "ada", "tenant_id": tenant, "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn json_lines(stdout: &str) -> Vec<StoredEvent> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

#[test]
fn posted_events_come_back_from_tail_as_json_lines_in_order() {
    let server = TestServer::start(&[]);
    let url = server.url();
    let mut receipts = Vec::new();
    let posts: [(&[&str], Option<&str>); 3] = [
        (
            &[
                "post",
                "OrderPlaced",
                r#"{"size":"large","item":"Latte"}"#,
                "--aggregate-id",
                "order-1",
                "--context",
                "userId=u1",
                "--context",
                "organizationId=org-7",
            ],
            None,
        ),
        (&["post", "OrderPlaced", "-"], Some(r#"{"item":"Tea"}"#)),
        (&["post", "OrderShipped"], Some(r#"{"carrier":"post"}"#)),
    ];
    for (args, stdin) in posts {
        let args: Vec<&str> = args.iter().copied().chain(["--url", &url]).collect();
        let receipt: Value = serde_json::from_str(assert_ok(&cli(&args, stdin)).trim())
            .expect("the receipt is one line of JSON");
        receipts.push(receipt);
    }
    let positions: Vec<u64> = receipts
        .iter()
        .map(|r| r["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [1, 2, 3]);

    let tailed = json_lines(&assert_ok(&cli(
        &["tail", "--url", &url, "--after", "0", "--count", "3"],
        None,
    )));
    let seen: Vec<(Option<u64>, &str, &str)> = tailed
        .iter()
        .map(|e| (e.position, e.event_type.as_str(), e.event_json.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (Some(1), "OrderPlaced", r#"{"size":"large","item":"Latte"}"#),
            (Some(2), "OrderPlaced", r#"{"item":"Tea"}"#),
            (Some(3), "OrderShipped", r#"{"carrier":"post"}"#),
        ]
    );
    for (event, receipt) in tailed.iter().zip(&receipts) {
        assert_eq!(event.id.to_string(), receipt["id"].as_str().unwrap());
    }
    assert_eq!(tailed[0].aggregate_id, "order-1");
    assert_eq!(tailed[0].user_id.as_deref(), Some("u1"));
    assert_eq!(tailed[0].context["organizationId"], "org-7");

    // From a cursor, and filtered by type.
    let shipped = json_lines(&assert_ok(&cli(
        &[
            "tail",
            "--url",
            &url,
            "--after",
            "1",
            "--type",
            "OrderShipped",
            "--count",
            "1",
        ],
        None,
    )));
    assert_eq!(shipped.len(), 1);
    assert_eq!(shipped[0].position, Some(3));

    // The table, forced on a pipe: no colour there, one row per event.
    let table = assert_ok(&cli(
        &[
            "tail", "--url", &url, "--after", "0", "--count", "3", "--format", "table",
        ],
        None,
    ));
    assert!(!table.contains('\x1b'), "colour on a pipe:\n{table}");
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "a header and three rows:\n{table}");
    assert!(rows[0].contains("POSITION") && rows[0].contains("TYPE"));
    assert!(rows[3].contains("OrderShipped") && rows[3].contains(r#"{"carrier":"post"}"#));

    let stats = assert_ok(&cli(&["stats", "--url", &url], None));
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("head") && l.trim_end().ends_with(" 3")),
        "{stats}"
    );
    assert!(stats.contains("positions 1 to 3"), "{stats}");
}

#[test]
fn a_post_that_is_not_json_is_refused_before_sending() {
    // No server at all: the payload is checked first.
    let output = cli(
        &[
            "post",
            "--url",
            "http://127.0.0.1:9",
            "OrderPlaced",
            "{item",
        ],
        None,
    );
    assert_failed(&output, 2, "the payload must be JSON");
}

#[test]
fn a_missing_or_wrong_token_exits_4_and_says_so() {
    let server = TestServer::start(&["--jwt-secret", SECRET]);
    let url = server.url();
    for command in [
        &["post", "OrderPlaced", "{}"][..],
        &["tail", "--after", "0"][..],
        &["tail"][..],
        &["stats"][..],
    ] {
        let args: Vec<&str> = command.iter().copied().chain(["--url", &url]).collect();
        assert_failed(&cli(&args, None), 4, "needs a token");
        let wrong: Vec<&str> = args.iter().copied().chain(["--token", "nope"]).collect();
        assert_failed(&cli(&wrong, None), 4, "was refused");
    }

    // With a valid token the same commands work, and the server stamps the tenant.
    let token = token("tenant-1");
    assert_ok(&cli(
        &[
            "post",
            "OrderPlaced",
            "{}",
            "--url",
            &url,
            "--token",
            &token,
        ],
        None,
    ));
    let tailed = json_lines(&assert_ok(&cli(
        &[
            "tail", "--url", &url, "--token", &token, "--after", "0", "--count", "1",
        ],
        None,
    )));
    assert_eq!(tailed[0].tenant_id.as_deref(), Some("tenant-1"));
}

#[test]
fn a_cursor_the_server_does_not_have_exits_5_and_says_where_to_go_on() {
    let server = TestServer::start(&[]);
    let url = server.url();
    assert_ok(&cli(&["post", "OrderPlaced", "{}", "--url", &url], None));
    // Past the head: 410 cursor_ahead, resume after 1.
    let output = cli(&["tail", "--url", &url, "--after", "7"], None);
    assert_failed(&output, 5, "410 cursor_ahead");
    assert!(
        text(&output.stderr).contains("--after 1"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        output.stdout.is_empty(),
        "printed events: {}",
        text(&output.stdout)
    );
}

#[test]
fn a_server_that_is_not_there_exits_3_and_says_so() {
    // A port that was free a moment ago: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for command in [
        &["post", "OrderPlaced", "{}"][..],
        &["tail", "--after", "0"][..],
        &["tail"][..],
        &["stats"][..],
    ] {
        let args: Vec<&str> = command.iter().copied().chain(["--url", &url]).collect();
        let output = cli(&args, None);
        assert_failed(&output, 3, &format!("cannot reach the server at {url}"));
        assert!(
            text(&output.stderr).contains("Connection refused")
                || text(&output.stderr).contains("connection refused"),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
}

#[test]
fn stats_prints_the_metrics_that_matter() {
    let server = TestServer::start(&[]);
    // A metrics endpoint as the server's `--metrics-bind` serves one.
    let metrics = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_url = format!("http://{}/metrics", metrics.local_addr().unwrap());
    let serving = std::thread::spawn(move || {
        let (mut connection, _) = metrics.accept().unwrap();
        let mut request = [0; 4096];
        let _ = connection.read(&mut request);
        let body = "# TYPE events_stored_total counter\nevents_stored_total 12\nlatency_seconds_bucket{le=\"0.1\"} 3\nlatency_seconds_count 3\n";
        write!(
            connection,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    let stats = assert_ok(&cli(
        &[
            "stats",
            "--url",
            &server.url(),
            "--metrics-url",
            &metrics_url,
        ],
        None,
    ));
    serving.join().unwrap();
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("head") && l.trim_end().ends_with(" 0")),
        "{stats}"
    );
    assert!(stats.contains("events_stored_total 12"), "{stats}");
    assert!(stats.contains("latency_seconds_count 3"), "{stats}");
    assert!(!stats.contains("_bucket"), "{stats}");
}

/// The status of `GET path` on the server at `url` (`http://host:port`).
fn status_of(url: &str, path: &str) -> u16 {
    let address = url.trim_start_matches("http://");
    let mut connection = std::net::TcpStream::connect(address).unwrap();
    write!(
        connection,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = connection.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[test]
fn after_a_cleanup_stats_works_and_tail_after_0_follows_what_was_kept() {
    let server = TestServer::start(&["--retention", "1s", "--cleanup-interval", "1s"]);
    let url = server.url();
    for _ in 0..2 {
        assert_ok(&cli(&["post", "OrderPlaced", "{}", "--url", &url], None));
    }
    // Wait for retention to delete both: the events after 1 (and 0) are then gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_of(&url, "/events?after=1&limit=1") != 410 {
        assert!(
            Instant::now() < deadline,
            "retention deleted nothing in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let stats = assert_ok(&cli(&["stats", "--url", &url], None));
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("head") && l.trim_end().ends_with(" 2")),
        "{stats}"
    );
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("retained") && l.contains("no events")),
        "{stats}"
    );

    // `--after 0` is everything kept: it goes on from the oldest kept event.
    let tail_url = url.clone();
    let tail = std::thread::spawn(move || {
        cli(
            &["tail", "--url", &tail_url, "--after", "0", "--count", "1"],
            None,
        )
    });
    assert_ok(&cli(&["post", "OrderShipped", "{}", "--url", &url], None));
    let output = tail.join().unwrap();
    let tailed = json_lines(&assert_ok(&output));
    assert_eq!(
        tailed
            .iter()
            .map(|e| (e.event_type.as_str(), e.position))
            .collect::<Vec<_>>(),
        [("OrderShipped", Some(3))]
    );
    assert!(
        text(&output.stderr).contains("following from the oldest it kept"),
        "{}",
        text(&output.stderr)
    );
}
