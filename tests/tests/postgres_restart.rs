//! PostgreSQL goes away under load and comes back (issue 4): while it is down every
//! request fails with 503 and a JSON error, the servers reconnect by themselves, nothing
//! acknowledged is lost or stored twice, and waiting readers and the cross-instance
//! wake-up resume.
//!
//! This test stops and starts the local cluster with `pg_ctlcluster`, so it lives alone in
//! this test binary: cargo runs test binaries one after the other, and no other test of
//! this run uses PostgreSQL meanwhile. It needs `DATABASE_URL_TEST` pointing at that local
//! cluster and the rights to run `pg_ctlcluster` (root, as in CI); without the URL it says
//! that it was skipped.

mod postgres_servers;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postgres_servers::{
    assert_json_error, new_event, poll, post_until_stored, read_all, read_until_target,
    start_cluster, Ack,
};

const PATIENCE: Duration = Duration::from_secs(120);

/// The local Debian cluster behind `DATABASE_URL_TEST`. While a value of this type lives
/// the cluster may be stopped; dropping it (also when the test panics) starts it again.
struct LocalCluster {
    version: String,
}

impl LocalCluster {
    fn find(url: &str) -> Self {
        let local = ["@127.0.0.1", "@localhost", "@[::1]"]
            .iter()
            .any(|host| url.contains(host));
        assert!(
            local,
            "the restart test stops and starts the local cluster; DATABASE_URL_TEST ({url}) must name 127.0.0.1 or localhost"
        );
        let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
            .expect("/etc/postgresql lists the local clusters (Debian's postgresql-common)")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|version| {
                std::path::Path::new(&format!("/etc/postgresql/{version}/main")).is_dir()
            })
            .collect();
        versions.sort();
        let version = versions
            .pop()
            .expect("a cluster named main under /etc/postgresql");
        Self { version }
    }

    fn ctl(&self, action: &str) {
        let output = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.version, "main", action])
            .output()
            .expect("run pg_ctlcluster (postgresql-common)");
        assert!(
            output.status.success(),
            "pg_ctlcluster {} main {action} failed: {}",
            self.version,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn ready(&self) -> bool {
        Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1"])
            .status()
            .is_ok_and(|status| status.success())
    }

    fn stop(&self) {
        self.ctl("stop");
    }

    fn start(&self) {
        if !self.ready() {
            self.ctl("start");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ready() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not come back within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.ready() {
            let _ = Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &self.version, "main", "start"])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load_loses_nothing_acknowledged() {
    let Some(url) = postgres_servers::database_url() else {
        return;
    };
    let cluster = LocalCluster::find(&url);
    let database = postgres_servers::fresh_schema(&url).await;
    let servers = start_cluster(2, &database, &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");

    // Load: two writers per instance, posting until told to stop (each post retried under
    // its id until stored), and a long-polling reader on each instance.
    let stop = AtomicBool::new(false);
    let total = AtomicUsize::new(usize::MAX);
    let writers = servers.iter().flat_map(|server| {
        let (client, stop) = (&client, &stop);
        (0..2).map(move |w| async move {
            let mut acks = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                acks.push(
                    post_until_stored(
                        client,
                        server,
                        &new_event(&format!("{}-{w}-{i}", server.name)),
                        PATIENCE,
                    )
                    .await,
                );
                i += 1;
            }
            acks
        })
    });
    let readers = servers
        .iter()
        .map(|server| read_until_target(&client, server, &total, PATIENCE));

    let scenario = async {
        tokio::time::sleep(Duration::from_secs(1)).await;

        let stopped = Instant::now();
        tokio::task::block_in_place(|| cluster.stop());
        eprintln!(
            "PostgreSQL stopped under load (took {:?})",
            stopped.elapsed()
        );

        // While it is down: 503 with the protocol's JSON error, on every endpoint.
        for server in &servers {
            for (method, path) in [
                ("GET", "/healthz"),
                ("GET", "/events?after=0"),
                // Timestamp mode always reads the store: never from memory.
                ("GET", "/events?since=2000-01-01T00:00:00Z"),
                ("POST", "/events"),
            ] {
                let request = match method {
                    "POST" => client.post(server.url(path)).json(&new_event("while-down")),
                    _ => client.get(server.url(path)),
                };
                let asked = Instant::now();
                let response = request.send().await.expect("the server itself stays up");
                let status = response.status();
                if path.starts_with("/events?after=") && status == reqwest::StatusCode::OK {
                    // Recent events are served from the server's memory (its tail), which
                    // holds only what was committed: reads go on while the store is down.
                    let events: Vec<serde_json::Value> =
                        response.json().await.expect("an array of events");
                    assert!(
                        events.iter().all(|e| e["position"].as_u64().is_some()),
                        "only stored events are served"
                    );
                    eprintln!(
                        "{method} {path} on {}: {} recent events from memory",
                        server.name,
                        events.len()
                    );
                    continue;
                }
                let code = assert_json_error(&response.text().await.unwrap_or_default());
                assert_eq!(
                    (status, code.as_str()),
                    (reqwest::StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                    "{method} {path} on {} while PostgreSQL is down",
                    server.name
                );
                eprintln!(
                    "{method} {path} on {}: 503 unavailable after {:?}",
                    server.name,
                    asked.elapsed()
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;

        let starting = Instant::now();
        tokio::task::block_in_place(|| cluster.start());
        let started = Instant::now();
        eprintln!("PostgreSQL started again (took {:?})", started - starting);
        // Both instances accept posts again by themselves.
        for server in &servers {
            let ack = post_until_stored(&client, server, &new_event("probe"), PATIENCE).await;
            eprintln!(
                "{} stores again {:?} after PostgreSQL answered ({} failed attempts)",
                server.name,
                started.elapsed(),
                ack.failures
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::SeqCst);
    };

    // When the writers are done, read everything once and tell the readers how much
    // there is.
    let writing = async {
        let acks: Vec<Ack> = futures::future::join_all(writers)
            .await
            .into_iter()
            .flatten()
            .collect();
        let stored = read_all(&client, &servers[1]).await;
        total.store(stored.len(), Ordering::SeqCst);
        (acks, stored)
    };
    // Writers, readers and the outage all at once.
    let ((acks, stored), seen, ()) =
        tokio::join!(writing, futures::future::join_all(readers), scenario);
    let retried = acks.iter().filter(|ack| ack.failures > 0).count();

    // Nothing acknowledged is lost, nothing is stored twice; receipts match the store.
    let by_id: HashMap<&str, u64> = stored
        .iter()
        .map(|event| {
            (
                event["id"].as_str().expect("id"),
                event["position"].as_u64().expect("position"),
            )
        })
        .collect();
    assert_eq!(by_id.len(), stored.len(), "an id stored twice");
    for ack in &acks {
        assert_eq!(
            by_id.get(ack.id.as_str()),
            Some(&ack.position),
            "acknowledged event {} lost or moved",
            ack.id
        );
    }
    // The probes are in the store too; nothing else is (the posts refused with 503 were
    // not stored).
    assert_eq!(
        stored.len(),
        acks.len() + servers.len(),
        "stored exactly the acknowledged posts and the probes"
    );

    // The readers, which kept polling through the outage, resumed and saw it all, in order.
    let order: Vec<&str> = stored
        .iter()
        .map(|event| event["id"].as_str().expect("id"))
        .collect();
    for (server, seen) in servers.iter().zip(&seen) {
        assert_eq!(
            seen.ids, order,
            "the reader on {} saw every event once, in order",
            server.name
        );
    }
    eprintln!(
        "{} events acknowledged across the restart; {retried} of them needed retries; readers retried {:?} times",
        acks.len(),
        seen.iter().map(|seen| seen.errors).collect::<Vec<_>>()
    );

    // The cross-instance wake-up works again (the listeners reconnected).
    let head = stored
        .last()
        .and_then(|event| event["position"].as_u64())
        .unwrap_or(0);
    let wake = async {
        let answer = poll(&client, &servers[0], head, 20.0).await;
        (answer, Instant::now())
    };
    let post = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = Instant::now();
        (
            sent,
            post_until_stored(&client, &servers[1], &new_event("after-restart"), PATIENCE).await,
        )
    };
    let ((answer, answered), (sent, ack)) = tokio::join!(wake, post);
    let (events, _) = answer.expect("the long-poll answers 200");
    assert_eq!(
        events.first().and_then(|event| event["position"].as_u64()),
        Some(ack.position)
    );
    let latency = answered.saturating_duration_since(sent);
    eprintln!("cross-instance wake-up after the restart: {latency:?}");
    assert!(
        latency < Duration::from_secs(5),
        "the wake-up took {latency:?}"
    );
    drop(cluster);
}
