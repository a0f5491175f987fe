//! Several real server processes on one PostgreSQL database (issue 4): concurrent writers
//! and readers on different instances lose nothing, repeat nothing and agree on one
//! order; the same id posted to two instances at once is stored once; a long-poll on one
//! instance wakes within milliseconds of a post to another; retention run by every
//! instance at once deletes a clean prefix.
//!
//! Needs `DATABASE_URL_TEST` (see `scripts/ci-postgres.sh`) and the server binary
//! (`cargo build -p distributed-events-server`); without the URL each test says it was
//! skipped. Each test works in a schema of its own, so they run in parallel.

mod postgres_servers;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use postgres_servers::{
    new_event, poll, post_until_stored, read_all, read_until, start_cluster, summary, Ack,
};

const PATIENCE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_on_three_instances_lose_and_repeat_nothing() {
    let Some(url) = postgres_servers::database_url() else {
        return;
    };
    let database = postgres_servers::fresh_schema(&url).await;
    let servers = start_cluster(3, &database, &[]);
    let client = reqwest::Client::new();

    let acks = write_and_read_concurrently(&servers, &client, 4, 100).await;
    let total = acks.len();

    // Every acknowledged event is stored exactly once, at the position its receipt named.
    let acknowledged: HashMap<&str, u64> = acks
        .iter()
        .map(|ack| (ack.id.as_str(), ack.position))
        .collect();
    assert_eq!(
        acknowledged.len(),
        total,
        "each post got its own id and receipt"
    );
    let stored = read_all(&client, &servers[0]).await;
    assert_eq!(stored.len(), total, "stored exactly what was acknowledged");
    for event in &stored {
        let id = event["id"].as_str().expect("id");
        assert_eq!(
            acknowledged.get(id).copied(),
            event["position"].as_u64(),
            "event {id}: receipt and store disagree"
        );
    }

    // A replay to another instance answers with the original position.
    for ack in acks.iter().step_by(97) {
        let event = stored
            .iter()
            .find(|e| e["id"] == ack.id.as_str())
            .expect("stored");
        let mut repost = event.clone();
        repost.as_object_mut().expect("object").remove("position");
        let replay = post_until_stored(&client, &servers[2], &repost, PATIENCE).await;
        assert!(replay.replayed, "a repost carries Idempotent-Replayed");
        assert_eq!(replay.position, ack.position);
    }
    assert_eq!(
        read_all(&client, &servers[1]).await.len(),
        total,
        "replays stored nothing"
    );
}

/// Runs `writers_per_instance` writers on each instance, each posting `per_writer` events
/// one after the other, and one long-polling reader per instance, all at once; checks that
/// every reader saw exactly the acknowledged events, all in the same order. Returns the
/// acknowledgements.
async fn write_and_read_concurrently(
    servers: &[postgres_servers::Server],
    client: &reqwest::Client,
    writers_per_instance: usize,
    per_writer: usize,
) -> Vec<Ack> {
    let total = servers.len() * writers_per_instance * per_writer;
    let started = Instant::now();
    let writers = servers.iter().flat_map(|server| {
        (0..writers_per_instance).map(move |w| async move {
            let mut acks = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let event = new_event(&format!("{}-{w}-{i}", server.name));
                let ack = post_until_stored(client, server, &event, PATIENCE).await;
                assert!(!ack.replayed, "a fresh id was reported as a replay");
                acks.push(ack);
            }
            acks
        })
    });
    let readers = servers
        .iter()
        .map(|server| read_until(client, server, total, PATIENCE));
    let (acks, seen) = tokio::join!(
        futures::future::join_all(writers),
        futures::future::join_all(readers)
    );
    let elapsed = started.elapsed();
    let acks: Vec<Ack> = acks.into_iter().flatten().collect();
    eprintln!(
        "{} events from {} writers on {} instances in {elapsed:?} ({:.0} events/s, readers polling meanwhile)",
        acks.len(),
        servers.len() * writers_per_instance,
        servers.len(),
        acks.len() as f64 / elapsed.as_secs_f64()
    );
    let acked: HashSet<&str> = acks.iter().map(|ack| ack.id.as_str()).collect();
    for (server, reader) in servers.iter().zip(&seen) {
        let ids: HashSet<&str> = reader.ids.iter().map(String::as_str).collect();
        assert_eq!(
            ids, acked,
            "the reader on {} saw exactly the acknowledged events",
            server.name
        );
        assert_eq!(
            reader.ids, seen[0].ids,
            "the readers on {} and server-1 saw different orders",
            server.name
        );
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_id_posted_to_two_instances_at_once_is_stored_once() {
    let Some(url) = postgres_servers::database_url() else {
        return;
    };
    let database = postgres_servers::fresh_schema(&url).await;
    let servers = start_cluster(2, &database, &[]);
    let client = reqwest::Client::new();

    const ROUNDS: usize = 100;
    for _ in 0..ROUNDS {
        let event = new_event("twice");
        let (a, b) = tokio::join!(
            post_until_stored(&client, &servers[0], &event, PATIENCE),
            post_until_stored(&client, &servers[1], &event, PATIENCE)
        );
        assert_eq!(
            a.position, b.position,
            "both answers name the one stored event"
        );
        assert!(
            a.replayed != b.replayed,
            "exactly one of the two posts stored it: {a:?} {b:?}"
        );
    }
    let stored = read_all(&client, &servers[0]).await;
    assert_eq!(stored.len(), ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_on_one_instance_wakes_on_a_post_to_another() {
    let Some(url) = postgres_servers::database_url() else {
        return;
    };
    let database = postgres_servers::fresh_schema(&url).await;
    let servers = start_cluster(2, &database, &[]);
    let client = reqwest::Client::new();
    let (waiter, poster) = (&servers[0], &servers[1]);

    const ROUNDS: usize = 30;
    let mut after = 0;
    let mut latencies = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let event = new_event(&format!("wake-{round}"));
        let wait = async {
            let answer = poll(&client, waiter, after, 20.0).await;
            (answer, Instant::now())
        };
        let post = async {
            // Let the poll reach the server and start waiting first.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sent = Instant::now();
            (
                sent,
                post_until_stored(&client, poster, &event, PATIENCE).await,
            )
        };
        let ((answer, answered), (sent, ack)) = tokio::join!(wait, post);
        let (events, cursor) = answer.expect("the long-poll answers 200");
        let latency = answered.saturating_duration_since(sent);
        // Without the wake-up, the poll would run its full 20 s.
        assert!(
            latency < Duration::from_secs(5),
            "round {round}: the long-poll took {latency:?} to wake"
        );
        latencies.push(latency);
        assert_eq!(
            events.len(),
            1,
            "the waiting poll returns the event posted elsewhere"
        );
        assert_eq!(events[0]["position"].as_u64(), Some(ack.position));
        after = cursor;
    }
    let (median, p95, max) = summary(&mut latencies);
    eprintln!(
        "cross-instance wake-up, from sending the POST on one instance to the long-poll answer on the other \
         ({ROUNDS} rounds): median {median:?}, p95 {p95:?}, max {max:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_run_by_every_instance_deletes_a_clean_prefix() {
    let Some(url) = postgres_servers::database_url() else {
        return;
    };
    let database = postgres_servers::fresh_schema(&url).await;
    // Every instance cleans up ten times a second, keeping one second of events, while
    // every instance appends.
    let servers = start_cluster(
        3,
        &database,
        &["--retention", "1s", "--cleanup-interval", "100ms"],
    );
    let client = reqwest::Client::new();
    let mut db = PgConnection::connect(&database)
        .await
        .expect("connect to the test schema");

    let deadline = Instant::now() + Duration::from_secs(3);
    let writers = servers.iter().map(|server| {
        let client = &client;
        async move {
            let mut acks = Vec::new();
            while Instant::now() < deadline {
                acks.push(
                    post_until_stored(client, server, &new_event("expiring"), PATIENCE).await,
                );
            }
            acks
        }
    });
    // Meanwhile, look at the table in consistent snapshots: what is stored is always
    // exactly the positions after `pruned_through` up to the head, with no hole that a
    // cleanup racing an append or another cleanup could have made.
    let watcher = async {
        let mut snapshots = 0;
        let mut saw_pruning = false;
        while Instant::now() < deadline {
            let (pruned, head, positions) = snapshot(&mut db).await;
            let expected: Vec<i64> = (pruned + 1..=head).collect();
            assert_eq!(
                positions, expected,
                "stored positions are not exactly ({pruned}, {head}]"
            );
            saw_pruning |= pruned > 0;
            snapshots += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (snapshots, saw_pruning)
    };
    let (acks, (snapshots, saw_pruning)) =
        tokio::join!(futures::future::join_all(writers), watcher);
    let acks: Vec<Ack> = acks.into_iter().flatten().collect();
    assert!(
        saw_pruning,
        "retention deleted something while the writers wrote"
    );
    let last = acks
        .iter()
        .map(|ack| ack.position)
        .max()
        .expect("some posts");

    // A little over a second later everything has expired: all gone, and positions go on.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (pruned, head, positions) = snapshot(&mut db).await;
    assert!(positions.is_empty(), "expired events left: {positions:?}");
    assert_eq!(
        (pruned, head),
        (last as i64, last as i64),
        "pruned through the last acknowledged event"
    );
    let expired = client
        .get(servers[1].url("/events?after=0"))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        expired.status(),
        reqwest::StatusCode::GONE,
        "after=0 is below what retention kept"
    );
    let body: serde_json::Value = expired.json().await.expect("JSON error body");
    assert_eq!(
        (body["code"].as_str(), body["resumeAfter"].as_u64()),
        (Some("cursor_expired"), Some(last))
    );
    let next = post_until_stored(&client, &servers[2], &new_event("after"), PATIENCE).await;
    assert_eq!(next.position, last + 1, "positions are never reused");
    eprintln!("{} events written and expired under 3 cleaning instances; {snapshots} snapshots without a hole", acks.len());
}

/// `pruned_through`, the head and every stored position, in one snapshot.
async fn snapshot(db: &mut PgConnection) -> (i64, i64, Vec<i64>) {
    let mut tx = db.begin().await.expect("begin");
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .expect("snapshot isolation");
    let pruned: i64 = sqlx::query_scalar("SELECT pruned_through FROM events_retention")
        .fetch_one(&mut *tx)
        .await
        .expect("pruned_through");
    let head: i64 = sqlx::query_scalar("SELECT head FROM events_head")
        .fetch_one(&mut *tx)
        .await
        .expect("head");
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(&mut *tx)
        .await
        .expect("positions");
    tx.commit().await.expect("end the snapshot");
    (pruned, head, positions)
}

/// The figures of `docs/SCALE-OUT.md`: append throughput and latency with concurrent
/// writers on one and three instances (SQLite on one instance for comparison), and the
/// cross-instance wake-up latency. Not a pass/fail test; run it in release:
/// `cargo test --release -p distributed-events-tests --test postgres_cluster -- --ignored --nocapture measure`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it explicitly"]
async fn measure_throughput_and_wake_up() {
    let Some(url) = postgres_servers::database_url() else {
        return;
    };
    const SECONDS: u64 = 5;
    let client = reqwest::Client::new();
    eprintln!("| backend | instances | concurrent writers | events/s | post latency p50 | p99 |");
    eprintln!("|---|---|---|---|---|---|");
    for (backend, instances, writers) in [
        ("SQLite", 1, 1),
        ("SQLite", 1, 32),
        ("PostgreSQL", 1, 1),
        ("PostgreSQL", 1, 32),
        ("PostgreSQL", 3, 3),
        ("PostgreSQL", 3, 32),
        ("PostgreSQL", 3, 96),
    ] {
        // A fresh SQLite file (removed afterwards) or a fresh PostgreSQL schema.
        let sqlite_dir =
            std::env::temp_dir().join(format!("de-measure-{}", uuid::Uuid::now_v7().simple()));
        let database = match backend {
            "SQLite" => {
                std::fs::create_dir_all(&sqlite_dir).expect("temp dir");
                format!("sqlite://{}", sqlite_dir.join("events.db").display())
            }
            _ => postgres_servers::fresh_schema(&url).await,
        };
        let servers = start_cluster(instances, &database, &[]);
        let deadline = Instant::now() + Duration::from_secs(SECONDS);
        let tasks = (0..writers).map(|w| {
            let (client, server) = (&client, &servers[w % servers.len()]);
            async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    post_until_stored(client, server, &new_event("measure"), PATIENCE).await;
                    latencies.push(sent.elapsed());
                }
                latencies
            }
        });
        let mut latencies: Vec<Duration> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .flatten()
            .collect();
        let count = latencies.len();
        latencies.sort();
        let p99 = latencies[(count - 1) * 99 / 100];
        let (p50, _, _) = summary(&mut latencies);
        eprintln!(
            "| {backend} | {instances} | {writers} | {:.0} | {p50:.1?} | {p99:.1?} |",
            count as f64 / SECONDS as f64
        );
        drop(servers);
        let _ = std::fs::remove_dir_all(&sqlite_dir);
    }

    let database = postgres_servers::fresh_schema(&url).await;
    let servers = start_cluster(2, &database, &[]);
    let mut after = 0;
    let mut latencies = Vec::new();
    for round in 0..100 {
        let event = new_event(&format!("wake-{round}"));
        let wait = async {
            (
                poll(&client, &servers[0], after, 20.0).await,
                Instant::now(),
            )
        };
        let post = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let sent = Instant::now();
            (
                sent,
                post_until_stored(&client, &servers[1], &event, PATIENCE).await,
            )
        };
        let ((answer, answered), (sent, _)) = tokio::join!(wait, post);
        after = answer.expect("long-poll").1;
        latencies.push(answered.saturating_duration_since(sent));
    }
    let (median, p95, max) = summary(&mut latencies);
    eprintln!("cross-instance wake-up (POST sent on B -> long-poll answered on A), 100 rounds: median {median:.1?}, p95 {p95:.1?}, max {max:.1?}");
}
