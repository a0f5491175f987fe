//! Catch-up through nginx's cache (issue 11 §3): the server binary on SQLite behind
//! Debian's nginx, configured with docs/nginx.conf as the README shows it. A full page
//! read twice reaches the server once; the page at the head reaches it every time. The
//! server's own request count (its metrics) is the proof.
//!
//! Needs `nginx` (scripts/setup.sh installs it): skipped with a message without it,
//! failed in CI.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

/// The configuration the README documents, run as is but for its address, port and
/// cache folder.
const NGINX_CONF: &str = include_str!("../../docs/nginx.conf");

#[test]
fn the_readme_shows_the_tested_configuration() {
    assert!(
        include_str!("../../README.md").contains(NGINX_CONF),
        "README.md's nginx block (\"Behind a CDN or nginx\") differs from docs/nginx.conf: copy the file into it"
    );
}

/// The nginx binary: on `PATH`, or Debian's place for it (not on a user's `PATH`).
/// `None` after saying so, outside CI; in CI a missing nginx fails the test.
fn nginx_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nginx"))
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|path| path.is_file());
    if on_path.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is not installed in CI; scripts/setup.sh installs it (apt-get install nginx)"
        );
        // Straight to stderr: the harness hides `eprintln!` output of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: nginx not installed (scripts/setup.sh installs it: apt-get install nginx)"
        );
    }
    on_path
}

/// `text` with `from` replaced by `to`, which must be there: a change to
/// docs/nginx.conf that this test no longer understands fails here, not later.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "docs/nginx.conf no longer has {from:?}; update this test with it"
    );
    text.replace(from, to)
}

/// nginx in the foreground, as the current user, with everything in `dir`; killed when
/// dropped.
struct Nginx {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Nginx {
    fn start(binary: &Path, dir: &Path, upstream: &str) -> Self {
        let port = free_port();
        let site = replace(
            NGINX_CONF,
            "server 127.0.0.1:8080;",
            &format!("server {upstream};"),
        );
        let site = replace(&site, "listen 80;", &format!("listen 127.0.0.1:{port};"));
        let cache = dir.join("cache");
        let site = replace(
            &site,
            "/var/cache/nginx/distributed-events",
            cache.to_str().unwrap(),
        );
        let d = dir.display();
        // One process (no master and workers), so that killing it stops nginx whole.
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
             access_log {d}/access.log;\n\
             client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             {site}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start nginx");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir: dir.to_owned(),
        }
    }

    /// Its error log, for a failure's message.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Waits until nginx passes requests to the server.
    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", self.log());
            }
            if let Ok(response) = client.get(format!("{}/healthz", self.base)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nginx did not pass requests within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many `GET /events` the server answered, whatever the status: its
/// `distributed_events_http_requests_total` samples for them, summed.
async fn reads_answered(client: &reqwest::Client, metrics: &str) -> u64 {
    let text = client
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("distributed_events_http_requests_total{")
                && line.contains(r#"method="GET""#)
                && line.contains(r#"route="/events""#)
        })
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("a sample line: {line}")) as u64
        })
        .sum()
}

struct Read {
    status: u16,
    cache: String,
    etag: String,
    cache_control: String,
    body: String,
}

async fn read(client: &reqwest::Client, url: &str, if_none_match: Option<&str>) -> Read {
    let mut request = client.get(url);
    if let Some(etag) = if_none_match {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map_or(String::new(), |value| value.to_str().unwrap().to_owned())
    };
    let (status, cache, etag, cache_control) = (
        response.status().as_u16(),
        header("x-cache-status"),
        header("etag"),
        header("cache-control"),
    );
    Read {
        status,
        cache,
        etag,
        cache_control,
        body: response.text().await.unwrap(),
    }
}

fn count(body: &str) -> usize {
    serde_json::from_str::<Vec<serde_json::Value>>(body)
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_full_page_comes_from_nginx_s_cache_and_the_head_from_the_server() {
    let Some(nginx_binary) = nginx_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let server =
        common::ServerProcess::sqlite(&dir.path().join("events.db"), &["--metrics-bind", &metrics]);
    let metrics = format!("http://{metrics}");
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir(&nginx_dir).unwrap();
    let upstream = server.base.trim_start_matches("http://");
    let mut nginx = Nginx::start(&nginx_binary, &nginx_dir, upstream);
    let client = reqwest::Client::new();
    nginx.wait_ready(&client).await;

    for n in 0..10 {
        let posted = client
            .post(format!("{}/events", nginx.base))
            .json(&json!({
                "id": Uuid::now_v7(),
                "createdAt": "2024-12-04T10:00:15Z",
                "aggregateId": "order-1",
                "eventType": "Thing",
                "eventJson": format!("{{\"n\":{n}}}"),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 201, "a post through nginx");
    }

    // A full page: the first read reaches the server, the second and a revalidation
    // do not.
    let full = format!("{}/events?after=0&limit=4", nginx.base);
    let before = reads_answered(&client, &metrics).await;
    let first = read(&client, &full, None).await;
    assert_eq!((first.status, count(&first.body)), (200, 4));
    assert_eq!(first.cache_control, "public, max-age=31536000, immutable");
    assert_eq!(first.cache, "MISS");
    assert_eq!(reads_answered(&client, &metrics).await, before + 1);
    let second = read(&client, &full, None).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.cache, "HIT", "nginx log:\n{}", nginx.log());
    assert_eq!((&second.body, &second.etag), (&first.body, &first.etag));
    let revalidated = read(&client, &full, Some(&first.etag)).await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(
        reads_answered(&client, &metrics).await,
        before + 1,
        "the second read and the revalidation were answered by nginx alone"
    );

    // The page at the head: every read reaches the server, and sees new events.
    let head = format!("{}/events?after=8&limit=4", nginx.base);
    for expected in [2, 2] {
        let page = read(&client, &head, None).await;
        assert_eq!((page.status, count(&page.body)), (200, expected));
        assert_eq!(page.cache_control, "no-store");
    }
    assert_eq!(reads_answered(&client, &metrics).await, before + 3);
    client
        .post(format!("{}/events", nginx.base))
        .json(&json!({
            "id": Uuid::now_v7(),
            "createdAt": "2024-12-04T10:00:16Z",
            "aggregateId": "order-1",
            "eventType": "Thing",
            "eventJson": "{}",
        }))
        .send()
        .await
        .unwrap();
    let grown = read(&client, &head, None).await;
    assert_eq!(count(&grown.body), 3, "the head page is never stale");

    // A long-poll skips the cache altogether.
    let poll = read(
        &client,
        &format!("{}/events?after=0&limit=4&wait=1", nginx.base),
        None,
    )
    .await;
    assert_eq!((poll.status, poll.cache.as_str()), (200, "BYPASS"));
    assert_eq!(reads_answered(&client, &metrics).await, before + 5);
}
