//! Scenario 1, append: single-event `POST /events` from 1, 16 and 64 concurrent
//! producers, each waiting for its `201` (durable) before the next post; events per
//! second.

use std::time::{Duration, Instant};

use crate::report::{percentile, Report, Target};
use crate::scenarios::{new_event, post, start_server};
use crate::server::Database;
use crate::{Args, Backend, BenchError};

const SCENARIO: &str = "append";
/// Issue 5: durable single-event posts on SQLite with 64 producers.
const SQLITE_64_TARGET: f64 = 10_000.0;
/// Most posts one producer makes in one measurement, whatever the time.
const MAX_POSTS_PER_PRODUCER: usize = 200_000;

pub async fn run(args: &Args, report: &Report) -> Result<(), BenchError> {
    for backend in &args.database {
        let (name, database) = match backend {
            Backend::Sqlite => ("sqlite", Database::sqlite()?),
            Backend::Postgres => {
                let url = args.postgres_url.as_deref().unwrap_or_default();
                ("postgres", Database::postgres(url).await?)
            }
        };
        let result = run_on(args, report, name, &database).await;
        database.remove().await;
        result?;
    }
    Ok(())
}

async fn run_on(
    args: &Args,
    report: &Report,
    backend: &'static str,
    database: &Database,
) -> Result<(), BenchError> {
    let server = start_server(args, database, &[])?;
    let url = server.url().to_owned();
    let http = reqwest::Client::new();
    // Warm up: connections, statements, the store's files.
    for seq in 0..args.count(200, 20) as u64 {
        post(&http, &url, &new_event(seq)).await?;
    }
    for &producers in &args.producers {
        let producers = producers.max(1);
        let cpu_before = server.cpu_seconds()?;
        let started = Instant::now();
        let deadline = started + args.window();
        let tasks: Vec<_> = (0..producers)
            .map(|producer| {
                let http = http.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut seq = (producer as u64) << 32;
                    while Instant::now() < deadline && latencies.len() < MAX_POSTS_PER_PRODUCER {
                        let event = new_event(seq);
                        seq += 1;
                        let sent = Instant::now();
                        post(&http, &url, &event).await?;
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok::<_, BenchError>(latencies)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            let task = task
                .await
                .map_err(|error| BenchError(format!("producer task failed: {error}")))?;
            latencies.extend(task?);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = (server.cpu_seconds()? - cpu_before) / elapsed;
        latencies.sort_by(f64::total_cmp);
        let target =
            (backend == "sqlite" && producers == 64).then_some(Target::AtLeast(SQLITE_64_TARGET));
        let figure = format!("{backend}, {producers} producers");
        report.record(
            SCENARIO,
            format!("{figure}: acknowledged"),
            latencies.len() as f64 / elapsed,
            "events/s",
            target,
        );
        report.record(
            SCENARIO,
            format!("{figure}: POST p50"),
            percentile(&latencies, 50.0),
            "ms",
            None,
        );
        report.record(
            SCENARIO,
            format!("{figure}: POST p99"),
            percentile(&latencies, 99.0),
            "ms",
            None,
        );
        report.record(
            SCENARIO,
            format!("{figure}: server CPU"),
            cpu,
            "cores",
            None,
        );
        // Let the last group commit settle before the next level.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
