//! Scenario 4, fan-out: 1,000 native clients in live mode (streaming or long-polling, per
//! `--transport`), each receiving every event exactly once.
//! Producers post a fixed number of events as fast as the server acknowledges them; the
//! clock runs from the first post to the last delivery. Deliveries per second, and the
//! server's CPU and peak RSS (VmHWM) over the run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::report::{Report, Target};
use crate::scenarios::{
    head, live_clients, mib, new_event, own_cpu_seconds, post, start_server, wait_until,
};
use crate::server::Database;
use crate::{Args, BenchError, Transport};

const SCENARIO: &str = "fanout";

/// Issue 5's targets for long-polling, issue 11's for streaming: deliveries/s at least,
/// server CPU per delivery at most (µs).
fn targets(transport: Transport) -> (f64, Option<f64>) {
    match transport {
        Transport::LongPoll => (200_000.0, None),
        Transport::Stream => (500_000.0, Some(0.5)),
    }
}

pub async fn run(args: &Args, report: &Report, transport: Transport) -> Result<(), BenchError> {
    let database = Database::sqlite()?;
    let server = start_server(args, &database, &[])?;
    let url = server.url().to_owned();
    let http = reqwest::Client::new();
    post(&http, &url, &new_event(0)).await?;
    let start = head(&http, &url).await?;
    let n_clients = args.count(args.fanout_clients.max(1), 20);
    let n_events = args.count(args.fanout_events.max(1), 50);
    let clients = live_clients(&url, n_clients, start, transport).await?;

    // Every delivery counts once; a client that has all its events counts as finished; an
    // event received twice fails the run (the events are those after `start`, in order).
    let deliveries = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let last_delivery = Arc::new(std::sync::Mutex::new(Instant::now()));
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    for client in &clients {
        let mut events = client.events();
        let failure = Arc::clone(&failure);
        let deliveries = Arc::clone(&deliveries);
        let finished = Arc::clone(&finished);
        let last_delivery = Arc::clone(&last_delivery);
        tokio::spawn(async move {
            let mut got = 0;
            let mut seen = vec![false; n_events];
            while let Some(event) = events.next().await {
                let index = event
                    .position
                    .and_then(|position| position.checked_sub(start + 1))
                    .and_then(|index| usize::try_from(index).ok());
                let problem = match index.and_then(|index| seen.get_mut(index)) {
                    Some(seen) if !*seen => {
                        *seen = true;
                        None
                    }
                    Some(_) => Some(format!("the event at {:?} came twice", event.position)),
                    None => Some(format!("an unexpected event at {:?}", event.position)),
                };
                if let Some(problem) = problem {
                    failure
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_or_insert(problem);
                    break;
                }
                got += 1;
                deliveries.fetch_add(1, Ordering::Relaxed);
                if got == n_events {
                    *last_delivery
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
                    finished.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        });
    }

    let server_cpu_before = server.cpu_seconds()?;
    let own_cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let producers = args.fanout_producers.max(1);
    // The producers run on a runtime of their own: on the clients' runtime each commit
    // queues 1,000 client tasks ahead of the producer waiting for its `201`, and the
    // posting rate would measure that queue instead of the server.
    let url_for_producers = url.clone();
    let producing = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| BenchError(format!("the producers' runtime: {error}")))?;
        runtime.block_on(async move {
            let http = reqwest::Client::new();
            let next = Arc::new(AtomicUsize::new(0));
            let posts: Vec<_> = (0..producers)
                .map(|_| {
                    let (http, url, next) =
                        (http.clone(), url_for_producers.clone(), Arc::clone(&next));
                    tokio::spawn(async move {
                        loop {
                            let seq = next.fetch_add(1, Ordering::Relaxed);
                            if seq >= n_events {
                                return Ok::<_, BenchError>(());
                            }
                            post(&http, &url, &new_event(seq as u64)).await?;
                        }
                    })
                })
                .collect();
            for task in posts {
                task.await
                    .map_err(|error| BenchError(format!("producer task failed: {error}")))??;
            }
            Ok(())
        })
    });
    tokio::task::spawn_blocking(move || producing.join())
        .await
        .map_err(|error| BenchError(format!("producer thread failed: {error}")))?
        .map_err(|_| BenchError("a producer panicked".into()))??;
    let published = started.elapsed().as_secs_f64();
    let limit = Duration::from_secs(if args.smoke { 30 } else { 300 });
    let failed = || {
        failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    };
    let all = wait_until(limit, || {
        finished.load(Ordering::Relaxed) == n_clients || failed().is_some()
    })
    .await;
    if let Some(error) = failed() {
        return Err(BenchError(format!("a client failed: {error}")));
    }
    if !all {
        return Err(BenchError(format!(
            "after {} s, {} of {n_clients} clients had every event ({} of {} deliveries)",
            limit.as_secs(),
            finished.load(Ordering::Relaxed),
            deliveries.load(Ordering::Relaxed),
            n_clients * n_events
        )));
    }
    let elapsed = last_delivery
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .duration_since(started)
        .as_secs_f64();
    let server_cpu = server.cpu_seconds()? - server_cpu_before;
    let own_cpu = own_cpu_seconds() - own_cpu_before;
    let peak = server.peak_rss_bytes()?;
    for client in &clients {
        client.close().await;
    }

    let what = format!(
        "{n_clients} live clients ({}), {n_events} events",
        transport.name()
    );
    let (deliveries_target, cpu_target) = targets(transport);
    report.record(
        SCENARIO,
        format!("{what}: deliveries"),
        (n_clients * n_events) as f64 / elapsed,
        "deliveries/s",
        Some(Target::AtLeast(deliveries_target)),
    );
    report.record(
        SCENARIO,
        format!("{what}: events posted"),
        n_events as f64 / published,
        "events/s",
        None,
    );
    report.record(
        SCENARIO,
        format!("{what}: server CPU"),
        server_cpu / elapsed,
        "cores",
        None,
    );
    report.record(
        SCENARIO,
        format!("{what}: server CPU per delivery"),
        server_cpu * 1e6 / (n_clients * n_events) as f64,
        "us",
        cpu_target.map(Target::AtMost),
    );
    report.record(
        SCENARIO,
        format!("{what}: bench (clients) CPU"),
        own_cpu / elapsed,
        "cores",
        None,
    );
    report.record(
        SCENARIO,
        format!("{what}: server peak RSS"),
        mib(peak),
        "MiB",
        None,
    );
    drop(server);
    database.remove().await;
    Ok(())
}
