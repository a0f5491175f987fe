//! Scenario 2, batch append. The HTTP API has no batch endpoint, so this goes through the
//! library: `EventBusServer::store().append_batch(...)` on a SQLite store in a temporary
//! directory (the server binary's default backend, `synchronous = FULL`), one batch at a
//! time, each durable before the next.

use std::time::Instant;

use distributed_events_server::{store, EventBusServer};

use crate::report::{Report, Target};
use crate::scenarios::new_event;
use crate::server::Database;
use crate::{Args, BenchError};

const SCENARIO: &str = "batch";
const TARGET: f64 = 100_000.0;
/// Most batches in one measurement, whatever the time.
const MAX_BATCHES: usize = 10_000;

pub async fn run(args: &Args, report: &Report) -> Result<(), BenchError> {
    let database = Database::sqlite()?;
    let store = store::open(&database.url())
        .await
        .map_err(|error| BenchError(format!("cannot open the SQLite store: {error}")))?;
    let server = EventBusServer::builder(store).build();
    let batch_size = args.count(args.batch_size.max(1), 100);
    let mut seq = 0u64;
    let mut batch = || {
        (0..batch_size)
            .map(|_| {
                seq += 1;
                new_event(seq)
            })
            .collect::<Vec<_>>()
    };
    let append = |events| async {
        server
            .store()
            .append_batch(events)
            .await
            .map_err(|error| BenchError(format!("append_batch failed: {error}")))
    };
    append(batch()).await?; // warm up
    let started = Instant::now();
    let deadline = started + args.window();
    let mut stored = 0usize;
    let mut batches = 0usize;
    while Instant::now() < deadline && batches < MAX_BATCHES {
        // Building the events is timed too: a caller has to build them as well.
        let appended = append(batch()).await?;
        stored += appended.len();
        batches += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    server.close().await;
    report.record(
        SCENARIO,
        format!("sqlite, append_batch of {batch_size}"),
        stored as f64 / elapsed,
        "events/s",
        Some(Target::AtLeast(TARGET)),
    );
    report.record(
        SCENARIO,
        format!("sqlite, one batch of {batch_size}"),
        elapsed * 1000.0 / batches as f64,
        "ms",
        None,
    );
    Ok(())
}
