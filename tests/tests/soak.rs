//! The bounded soak (issue 6): many native clients publish and receive at a steady rate
//! for a while; no request fails, every client's handlers get every event exactly once
//! and in order, and the server's memory stays flat.
//!
//! A plain `cargo test` runs it for 20 s; `scripts/test.sh` (so CI) for 3 minutes. For a
//! longer soak, run it in release mode so that the test process keeps up (the server
//! binary is the one built next to the tests):
//!
//! ```bash
//! cargo build --release -p distributed-events-server
//! SOAK_SECONDS=600 cargo test --release -p distributed-events-tests --test soak -- --nocapture
//! ```
//!
//! `SOAK_CLIENTS` (default 50) and `SOAK_INTERVAL_MS` (default 1000: how often each
//! client publishes) shape the traffic. The memory samples (the server's `VmRSS`) are
//! printed; the check is a resource bound, not a timing assertion: the last sample may
//! exceed the first one after the warm-up by at most half plus 20 MiB. Waiting is bounded
//! only to turn a hang into a failure.

mod delivery_checks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_events_tests::TestServer;
use futures::StreamExt;
use uuid::Uuid;

use delivery_checks::{
    assert_producers_in_order, assert_store_consistent, client, count_backoffs, end_with_marker,
    publish_steadily, wait_until_stored, Recorder,
};

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {value:?}")),
        Err(_) => default,
    }
}

/// The server's memory over time.
struct Samples(Vec<(Duration, u64)>);

impl Samples {
    fn print(&self) {
        for (at, rss) in &self.0 {
            eprintln!("  {:>6.1} s  {:>7.1} MiB", at.as_secs_f64(), mib(*rss));
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_for_a_while_no_errors_every_event_once_in_order_and_memory_flat() {
    let duration = Duration::from_secs(env_number("SOAK_SECONDS", 20));
    let clients = usize::try_from(env_number("SOAK_CLIENTS", 50)).expect("a count");
    let interval = Duration::from_millis(env_number("SOAK_INTERVAL_MS", 1000));
    let warm_up = (duration / 4).max(Duration::from_secs(5)).min(duration);
    let sample_every = (duration / 40).max(Duration::from_secs(1));
    eprintln!(
        "soak: {clients} clients, each publishing every {interval:?}, for {duration:?} (warm-up {warm_up:?})"
    );

    let server = TestServer::start(&[]);
    let base = server.url();
    let http = reqwest::Client::new();

    // Every client publishes and receives with the default settings (long-polls of
    // 25 s); two more only receive, so that one order can be compared exactly.
    let producers: Vec<Recorder> = (0..clients)
        .map(|i| {
            Recorder::new(
                format!("client {i}"),
                client(&base).auto_forward(true).build().expect("client"),
            )
        })
        .collect();
    let consumers: Vec<Recorder> = (0..2)
        .map(|i| {
            Recorder::new(
                format!("consumer {i}"),
                client(&base).build().expect("client"),
            )
        })
        .collect();
    let backoffs = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    for recorder in producers.iter().chain(&consumers) {
        watchers.push(count_backoffs(&recorder.client, &backoffs));
        let mut reported = recorder.client.errors();
        let (errors, who) = (Arc::clone(&errors), recorder.name.clone());
        watchers.push(tokio::spawn(async move {
            while let Some(error) = reported.next().await {
                eprintln!("{who}: {error}");
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Steady traffic, the clients' phases spread over the interval.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing: Vec<_> = producers
        .iter()
        .enumerate()
        .map(|(i, producer)| {
            let (name, client, stop) = (
                producer.name.clone(),
                producer.client.clone(),
                Arc::clone(&stop),
            );
            let phase = interval.mul_f64(i as f64 / clients as f64);
            tokio::spawn(async move {
                tokio::time::sleep(phase).await;
                publish_steadily(name, client, interval, usize::MAX, stop)
                    .await
                    .expect("publisher")
            })
        })
        .collect();
    let mut samples = Samples(Vec::new());
    while started.elapsed() < duration {
        tokio::time::sleep(sample_every.min(duration.saturating_sub(started.elapsed()))).await;
        let rss = server.rss_bytes().expect("the server's VmRSS (Linux)");
        samples.0.push((started.elapsed(), rss));
    }
    stop.store(true, Ordering::SeqCst);
    let mut published: HashMap<String, Vec<Uuid>> = HashMap::new();
    for (producer, task) in producers.iter().zip(publishing) {
        published.insert(producer.name.clone(), task.await.expect("publisher"));
    }
    let total: usize = published.values().map(Vec::len).sum();
    eprintln!(
        "published {total} events in {:?}; the server's memory:",
        started.elapsed()
    );
    samples.print();

    // Everything arrives: the server has each event once, in each client's order...
    let all: Vec<Uuid> = published.values().flatten().copied().collect();
    let stored = wait_until_stored(&http, &base, &all).await;
    let expected = assert_store_consistent(&stored);
    assert_eq!(
        stored.len(),
        total,
        "the server holds exactly the published events"
    );
    assert_producers_in_order(&stored, &published);
    // ...and, up to a last marker, every handler got each event once, in order.
    end_with_marker(&http, &base, expected, consumers, producers).await;
    for watcher in watchers {
        watcher.await.expect("watcher");
    }

    // Zero errors: no request failed, nothing was reported.
    assert_eq!(
        (
            backoffs.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        ),
        (0, 0),
        "(times a client backed off, errors reported) in a soak without faults"
    );

    // Memory flat: after the warm-up, the server grows by at most half plus 20 MiB.
    let (at, baseline) = *samples
        .0
        .iter()
        .find(|(at, _)| *at >= warm_up)
        .expect("a sample after the warm-up");
    let (end, last) = *samples.0.last().expect("samples");
    let bound = baseline + baseline / 2 + 20 * 1024 * 1024;
    assert!(
        last <= bound,
        "the server's memory grew from {:.1} MiB at {at:?} to {:.1} MiB at {end:?}, past the bound of {:.1} MiB",
        mib(baseline),
        mib(last),
        mib(bound)
    );
}
