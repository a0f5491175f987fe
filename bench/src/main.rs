//! `distributed-events-bench`: the benchmarks of issue 5, run against the real server
//! binary over loopback HTTP (docs/PERFORMANCE.md has the results and how to repeat them).
//!
//! ```text
//! cargo build --release -p distributed-events-server -p distributed-events-bench
//! cargo run --release -p distributed-events-bench -- all
//! cargo run --release -p distributed-events-bench -- append --database sqlite,postgres
//! ```
//!
//! Every figure is printed as it is taken, as one line `BENCH {json}`, and all of them in
//! a table at the end. `--smoke` runs each scenario for a second or two with tiny counts,
//! to check that the harness works (CI); its figures mean nothing. A missed target never
//! fails the run; a harness failure (the server does not start, requests fail, events go
//! missing) does.

mod report;
mod scenarios;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use report::Report;

/// A failure of the harness itself (not a missed target).
#[derive(Debug)]
pub struct BenchError(pub String);

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1. Single-event `POST /events` with 1, 16 and 64 producers: events/s acknowledged.
    Append,
    /// 2. `append_batch` through the library on a SQLite store: events/s.
    Batch,
    /// 3. Publish-to-handler latency at a steady rate, 100 live clients (per --transport).
    Latency,
    /// 4. 1,000 live clients receiving every event: deliveries/s, server CPU, RSS.
    Fanout,
    /// 5. 10,000 parked long-polls or open streams: server RSS and CPU while nothing happens.
    Idle,
    /// 6. Empty `GET /events?after=<head>` against a hello-world route of the same server.
    Ceiling,
    /// 7. Gzipped bytes of what a browser loads of the npm package (`js/dist`).
    Size,
    /// Every scenario above, in order.
    All,
    /// Internal: the library server plus `/hello`, for `ceiling` (prints `listening on`).
    #[value(hide = true)]
    ServeHello,
}

/// How the clients of `latency`, `fanout` and `idle` follow the server (docs/PROTOCOL.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// Long-polling: `GET /events?after=N&wait=30`, again after each answer.
    LongPoll,
    /// Server-Sent Events: one `GET /events?after=N` with `Accept: text/event-stream`.
    Stream,
}

impl Transport {
    /// How figures name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::LongPoll => "long-poll",
            Self::Stream => "stream",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Benchmarks of distributed-events against the real server binary over loopback HTTP.
#[derive(Debug, Parser)]
#[command(about, long_about = None)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,

    /// Seconds-long runs with tiny counts: checks that the harness works, nothing more.
    #[arg(long)]
    smoke: bool,

    /// Stores for the `append` scenario (comma-separated). The others use SQLite, the
    /// server's default.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite")]
    database: Vec<Backend>,

    /// The PostgreSQL database for `--database postgres`; each run uses a fresh schema in
    /// it and drops it afterwards.
    #[arg(long, env = "DATABASE_URL_TEST")]
    postgres_url: Option<String>,

    /// The server binary [default: `distributed-events-server` next to this program,
    /// i.e. target/release/ under `cargo run --release`].
    #[arg(long)]
    server_bin: Option<PathBuf>,

    /// Transports of `latency`, `fanout` and `idle` (comma-separated): each scenario runs
    /// once per transport, on a fresh server.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "long-poll,stream"
    )]
    transport: Vec<Transport>,

    /// Seconds of each timed measurement (append per producer count, ceiling per round,
    /// latency, batch).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,

    /// Producer counts of `append`.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    producers: Vec<usize>,

    /// Events per `append_batch` call in `batch`.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,

    /// Live clients in `latency`.
    #[arg(long, default_value_t = 100)]
    latency_clients: usize,

    /// Events per second published in `latency`.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,

    /// Live clients in `fanout`.
    #[arg(long, default_value_t = 1000)]
    fanout_clients: usize,

    /// Events published in `fanout`.
    #[arg(long, default_value_t = 2000)]
    fanout_events: usize,

    /// Concurrent producers posting the `fanout` events.
    #[arg(long, default_value_t = 16)]
    fanout_producers: usize,

    /// Parked long-polls (or open streams) in `idle`.
    #[arg(long, default_value_t = 10_000)]
    idle_polls: usize,

    /// Concurrent connections of the `ceiling` load loops.
    #[arg(long, default_value_t = 32)]
    connections: usize,

    /// The npm package folder for `size`.
    #[arg(long, default_value = "js")]
    package_dir: PathBuf,

    /// `serve-hello` only: the store to serve (`memory`, `sqlite://PATH`, ...).
    #[arg(long, hide = true, default_value = "memory")]
    store: String,
}

impl Args {
    /// The timed window of a measurement: `--seconds`, or one second in smoke mode.
    fn window(&self) -> Duration {
        if self.smoke {
            Duration::from_secs(1)
        } else {
            Duration::from_secs_f64(self.seconds.max(0.1))
        }
    }

    /// `full` normally, `smoke` in smoke mode.
    fn count(&self, full: usize, smoke: usize) -> usize {
        if self.smoke {
            smoke.min(full)
        } else {
            full
        }
    }

    fn server_bin(&self) -> PathBuf {
        self.server_bin
            .clone()
            .unwrap_or_else(server::default_server_binary)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // 1,000 clients and 10,000 long-polls need as many sockets; the server inherits it.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < 12_000 && !args.smoke => eprintln!(
            "warning: only {limit} open files allowed (ulimit -Hn); `idle` needs about 10,100"
        ),
        Ok(_) => {}
        Err(error) => eprintln!("warning: cannot raise the open-file limit: {error}"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    if args.scenario == Scenario::ServeHello {
        return match runtime.block_on(scenarios::ceiling::serve_hello(&args.store)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let report = Report::new(args.smoke);
    eprintln!(
        "distributed-events-bench: {:?}{}, load average {:.2}, {} CPUs",
        args.scenario,
        if args.smoke { " (smoke)" } else { "" },
        report::load_average(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    let result = runtime.block_on(run(&args, &report));
    report.print_table();
    // The clients' tasks may still hold sockets; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Marks where a scenario starts in the output, with the time and load, so that server
/// warnings can be placed.
fn banner(scenario: &str) {
    eprintln!(
        "==> {scenario} at {}, load average {:.2}",
        chrono::Utc::now().format("%H:%M:%S"),
        report::load_average()
    );
}

async fn run(args: &Args, report: &Report) -> Result<(), BenchError> {
    let all = args.scenario == Scenario::All;
    let wants = |scenario: Scenario| all || args.scenario == scenario;
    if wants(Scenario::Append)
        && args.database.contains(&Backend::Postgres)
        && args.postgres_url.is_none()
    {
        return Err(BenchError(
            "--database postgres needs --postgres-url or DATABASE_URL_TEST \
             (eval \"$(scripts/ci-postgres.sh)\")"
                .into(),
        ));
    }
    if wants(Scenario::Append) {
        banner("append");
        scenarios::append::run(args, report).await?;
    }
    if wants(Scenario::Batch) {
        banner("batch");
        scenarios::batch::run(args, report).await?;
    }
    if wants(Scenario::Latency) {
        for &transport in &args.transport {
            banner(&format!("latency ({})", transport.name()));
            scenarios::latency::run(args, report, transport).await?;
        }
    }
    if wants(Scenario::Fanout) {
        for &transport in &args.transport {
            banner(&format!("fanout ({})", transport.name()));
            scenarios::fanout::run(args, report, transport).await?;
        }
    }
    if wants(Scenario::Idle) {
        for &transport in &args.transport {
            banner(&format!("idle ({})", transport.name()));
            scenarios::idle::run(args, report, transport).await?;
        }
    }
    if wants(Scenario::Ceiling) {
        banner("ceiling");
        scenarios::ceiling::run(args, report).await?;
    }
    if wants(Scenario::Size) {
        banner("size");
        scenarios::size::run(args, report)?;
    }
    Ok(())
}
