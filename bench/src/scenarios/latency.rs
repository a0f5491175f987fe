//! Scenario 3, delivery latency: events posted at a steady rate, received by 100 native
//! clients in live mode (streaming or long-polling, per `--transport`); for each delivery,
//! the time from just before the `POST` was sent to the moment the client's
//! `on::<BenchEvent>()` stream yields it (the handler). The `POST` itself (a durable
//! commit) is part of that time; its own latency is reported beside it.

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::report::{percentile, Report, Target};
use crate::scenarios::{head, live_clients, new_event, now_us, post, start_server, BenchEvent};
use crate::server::Database;
use crate::{Args, BenchError, Transport};

const SCENARIO: &str = "latency";

/// Issue 5's targets for long-polling, issue 11's for streaming: (p50, p99) in ms.
fn targets(transport: Transport) -> (f64, f64) {
    match transport {
        Transport::LongPoll => (2.0, 10.0),
        Transport::Stream => (1.0, 5.0),
    }
}

pub async fn run(args: &Args, report: &Report, transport: Transport) -> Result<(), BenchError> {
    let database = Database::sqlite()?;
    let server = start_server(args, &database, &[])?;
    let url = server.url().to_owned();
    let http = reqwest::Client::new();
    for seq in 0..10 {
        post(&http, &url, &new_event(seq)).await?; // warm up
    }
    let start = head(&http, &url).await?;
    let n_clients = args.count(args.latency_clients.max(1), 10);
    let clients = live_clients(&url, n_clients, start, transport).await?;

    let rate = args.rate.max(0.1);
    let n_events = ((rate * args.window().as_secs_f64()).ceil() as usize).max(1);
    let listeners: Vec<_> = clients
        .iter()
        .map(|client| {
            let mut events = client.on::<BenchEvent>();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(n_events);
                while let Some(event) = events.next().await {
                    let received = now_us();
                    latencies.push(received.saturating_sub(event.payload.sent_us) as f64 / 1000.0);
                    if latencies.len() == n_events {
                        break;
                    }
                }
                latencies
            })
        })
        .collect();

    // The publisher: one post per tick, each in its own task so that a slow commit does not
    // shift the schedule.
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut posts = Vec::with_capacity(n_events);
    for seq in 0..n_events as u64 {
        ticks.tick().await;
        let http = http.clone();
        let url = url.clone();
        posts.push(tokio::spawn(async move {
            let event = new_event(1_000_000 + seq);
            let sent = Instant::now();
            post(&http, &url, &event).await?;
            Ok::<_, BenchError>(sent.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut acks = Vec::with_capacity(n_events);
    for task in posts {
        let ack = task
            .await
            .map_err(|error| BenchError(format!("publisher task failed: {error}")))??;
        acks.push(ack);
    }

    let mut latencies = Vec::with_capacity(n_events * n_clients);
    let collect = async {
        for task in listeners {
            let got = task
                .await
                .map_err(|error| BenchError(format!("listener task failed: {error}")))?;
            latencies.push(got);
        }
        Ok::<_, BenchError>(())
    };
    match tokio::time::timeout(Duration::from_secs(30), collect).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(BenchError(
                "clients did not receive every event within 30 s of the last post".into(),
            ))
        }
    }
    if let Some((i, short)) = latencies
        .iter()
        .enumerate()
        .find(|(_, got)| got.len() != n_events)
    {
        return Err(BenchError(format!(
            "client {i} received {} of {n_events} events",
            short.len()
        )));
    }
    for client in &clients {
        client.close().await;
    }
    let mut latencies: Vec<f64> = latencies.into_iter().flatten().collect();
    latencies.sort_by(f64::total_cmp);
    acks.sort_by(f64::total_cmp);

    let what = format!(
        "{n_clients} live clients ({}), {rate} events/s",
        transport.name()
    );
    let (p50_target, p99_target) = targets(transport);
    report.record(
        SCENARIO,
        format!("{what}: publish to handler p50"),
        percentile(&latencies, 50.0),
        "ms",
        Some(Target::AtMost(p50_target)),
    );
    report.record(
        SCENARIO,
        format!("{what}: publish to handler p99"),
        percentile(&latencies, 99.0),
        "ms",
        Some(Target::AtMost(p99_target)),
    );
    report.record(
        SCENARIO,
        format!("{what}: publish to handler max"),
        latencies.last().copied().unwrap_or(f64::NAN),
        "ms",
        None,
    );
    report.record(
        SCENARIO,
        format!("{what}: POST acknowledged p50"),
        percentile(&acks, 50.0),
        "ms",
        None,
    );
    report.record(
        SCENARIO,
        format!("{what}: POST acknowledged p99"),
        percentile(&acks, 99.0),
        "ms",
        None,
    );
    drop(server);
    database.remove().await;
    Ok(())
}
