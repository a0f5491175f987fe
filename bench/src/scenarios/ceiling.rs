//! Scenario 6, ceiling: how close an empty `GET /events?after=<head>` comes to the
//! cheapest answer the same server can give. The binary has no hello-world route, so this
//! runs a server built from the library —
//! `EventBusServer::builder(store).build().router()` merged with `GET /hello` — in a
//! child process (this program, `serve-hello`), on SQLite like the binary, and loads both
//! routes alternately in the same run.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::routing::get;
use distributed_events_server::{store, EventBusServer};

use crate::report::{Report, Target};
use crate::scenarios::{describe, head, new_event, post};
use crate::server::{Database, ServerProcess};
use crate::{Args, BenchError};

const SCENARIO: &str = "ceiling";
const TARGET: f64 = 0.5;

/// The child process: the library's router plus `/hello` on a free port.
pub async fn serve_hello(database: &str) -> Result<(), BenchError> {
    let store = store::open(database)
        .await
        .map_err(|error| BenchError(format!("cannot open {database}: {error}")))?;
    let server = EventBusServer::builder(store).build();
    let app = server
        .router()
        .merge(axum::Router::new().route("/hello", get(|| async { "Hello, World!" })));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| BenchError(format!("cannot listen: {error}")))?;
    let address = listener
        .local_addr()
        .map_err(|error| BenchError(error.to_string()))?;
    eprintln!("listening on http://{address}");
    axum::serve(listener, app)
        .await
        .map_err(|error| BenchError(format!("server failed: {error}")))
}

/// Requests per second, and server CPU microseconds per request, of `url` under
/// `connections` concurrent request loops for one window.
async fn load(args: &Args, server: &ServerProcess, url: &str) -> Result<(f64, f64), BenchError> {
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let cpu_before = server.cpu_seconds()?;
    let started = Instant::now();
    let loops: Vec<_> =
        (0..args.connections.max(1))
            .map(|_| {
                let (http, url) = (http.clone(), url.to_owned());
                let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let response = http.get(&url).send().await.map_err(|error| {
                            BenchError(format!("GET {url}: {}", describe(&error)))
                        })?;
                        if !response.status().is_success() {
                            return Err(BenchError(format!(
                                "GET {url} answered {}",
                                response.status()
                            )));
                        }
                        response.bytes().await.map_err(|error| {
                            BenchError(format!("GET {url}: {}", describe(&error)))
                        })?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
    tokio::time::sleep(args.window()).await;
    stop.store(true, Ordering::Relaxed);
    let requests = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu_before;
    for task in loops {
        task.await
            .map_err(|error| BenchError(format!("load task failed: {error}")))??;
    }
    Ok((
        requests as f64 / elapsed,
        cpu * 1e6 / requests.max(1) as f64,
    ))
}

pub async fn run(args: &Args, report: &Report) -> Result<(), BenchError> {
    let database = Database::sqlite()?;
    let program = std::env::current_exe()
        .map_err(|error| BenchError(format!("cannot find this program: {error}")))?;
    let server = ServerProcess::start(
        &program,
        &[
            "serve-hello".to_owned(),
            "--store".to_owned(),
            database.url(),
        ],
    )?;
    let base = server.url().to_owned();
    let http = reqwest::Client::new();
    for seq in 0..100 {
        post(&http, &base, &new_event(seq)).await?;
    }
    let head = head(&http, &base).await?;
    let hello = format!("{base}/hello");
    let empty = format!("{base}/events?after={head}");
    // Alternate, so that a change of the machine's background load hits both routes.
    let rounds = if args.smoke { 1 } else { 2 };
    let (mut hello_rate, mut hello_cpu, mut empty_rate, mut empty_cpu) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..rounds {
        let (rate, cpu) = load(args, &server, &hello).await?;
        hello_rate += rate / f64::from(rounds);
        hello_cpu += cpu / f64::from(rounds);
        let (rate, cpu) = load(args, &server, &empty).await?;
        empty_rate += rate / f64::from(rounds);
        empty_cpu += cpu / f64::from(rounds);
    }
    let c = args.connections.max(1);
    report.record(
        SCENARIO,
        format!("GET /hello, {c} connections"),
        hello_rate,
        "req/s",
        None,
    );
    report.record(
        SCENARIO,
        format!("GET /events?after=head (empty), {c} connections"),
        empty_rate,
        "req/s",
        None,
    );
    report.record(
        SCENARIO,
        "empty poll / hello, rate",
        empty_rate / hello_rate,
        "ratio",
        Some(Target::AtLeast(TARGET)),
    );
    report.record(
        SCENARIO,
        "GET /hello: server CPU per request",
        hello_cpu,
        "us",
        None,
    );
    report.record(
        SCENARIO,
        "empty poll: server CPU per request",
        empty_cpu,
        "us",
        None,
    );
    report.record(
        SCENARIO,
        "hello / empty poll, server CPU per request",
        hello_cpu / empty_cpu,
        "ratio",
        None,
    );
    drop(server);
    database.remove().await;
    Ok(())
}
