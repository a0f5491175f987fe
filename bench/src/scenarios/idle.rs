//! Scenario 5, idle: 10,000 long-polls parked on the server (or 10,000 streams open, per
//! `--transport`) while nothing is posted; the server's RSS and CPU. The polls are plain
//! `GET /events?after=<head>&wait=30` requests, the streams the same without `wait` and
//! with `Accept: text/event-stream`, on 10,000 connections of one reqwest client, not full
//! clients (a full client costs the bench, not the server, more; the server sees the same
//! request).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::{Report, Target};
use crate::scenarios::{describe, head, mib, new_event, post, start_server, wait_until};
use crate::server::Database;
use crate::{Args, BenchError, Transport};

const SCENARIO: &str = "idle";
/// Issue 5: at most 100 MB of server RSS with 10,000 parked long-polls.
const RSS_TARGET_MIB: f64 = 100.0 * 1e6 / (1024.0 * 1024.0);
/// "Idle CPU near zero", read as at most 1 % of one core.
const CPU_TARGET: f64 = 0.01;

pub async fn run(args: &Args, report: &Report, transport: Transport) -> Result<(), BenchError> {
    let database = Database::sqlite()?;
    let n_polls = args.count(args.idle_polls.max(1), 200);
    let limit = (n_polls + 100).to_string();
    let server = start_server(args, &database, &["--max-long-polls", &limit])?;
    let url = server.url().to_owned();
    let http = reqwest::Client::new();
    post(&http, &url, &new_event(0)).await?;
    let start = head(&http, &url).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = server.rss_bytes()?;
    let fds_before = server.open_fds()?;

    // The wait outlasts the ramp and the measurement, so that no poll is answered.
    let wait = if args.smoke { 10 } else { 30 };
    let window = if args.smoke {
        Duration::from_secs(1)
    } else {
        args.window().min(Duration::from_secs(15))
    };
    let pollers = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|error| BenchError(format!("cannot build an HTTP client: {error}")))?;
    let answered = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let first_sent = Instant::now();
    let mut tasks = Vec::with_capacity(n_polls);
    for i in 0..n_polls {
        let (answered, failed) = (Arc::clone(&answered), Arc::clone(&failed));
        let (pollers, url, opened) = (pollers.clone(), url.clone(), Arc::clone(&opened));
        tasks.push(tokio::spawn(async move {
            let outcome = match transport {
                Transport::LongPoll => {
                    let request = pollers.get(format!("{url}/events?after={start}&wait={wait}"));
                    match request.send().await {
                        Ok(response) => format!("answered {}", response.status()),
                        Err(error) => describe(&error),
                    }
                }
                Transport::Stream => idle_stream(&pollers, &url, start, &opened).await,
            };
            answered.fetch_add(1, Ordering::Relaxed);
            failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_or_insert(outcome);
        }));
        // Stay under the listen backlog (1024) while connections are accepted.
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every poll has a connection of its own on the server once its fd count says so; a
    // stream is open once its first bytes arrived.
    let connected = wait_until(Duration::from_secs(20), || {
        server
            .open_fds()
            .is_ok_and(|fds| fds >= fds_before + n_polls)
            && (transport == Transport::LongPoll || opened.load(Ordering::Relaxed) == n_polls)
    })
    .await;
    let ramp = first_sent.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let cpu_before = server.cpu_seconds()?;
    let measured = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = (server.cpu_seconds()? - cpu_before) / measured.elapsed().as_secs_f64();
    let rss = server.rss_bytes()?;
    let fds = server.open_fds()?;
    let early = answered.load(Ordering::Relaxed);
    let outcome = failed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    // A stream has no wait to outlast (its keep-alive comment comes after 15 s of silence).
    let in_time =
        transport == Transport::Stream || first_sent.elapsed() < Duration::from_secs(wait);
    for task in &tasks {
        task.abort();
    }
    drop(pollers);

    if !connected || early > 0 || !in_time {
        return Err(BenchError(format!(
            "not every {} stayed parked: {} of {n_polls} connections ({} streams open) after {:.1} s, \
             {early} answered early (first: {}), measurement {} the {wait} s wait",
            transport.name(),
            fds.saturating_sub(fds_before),
            opened.load(Ordering::Relaxed),
            ramp.as_secs_f64(),
            outcome.unwrap_or_default(),
            if in_time { "within" } else { "outlasted" },
        )));
    }
    let what = match transport {
        Transport::LongPoll => format!("{n_polls} parked long-polls"),
        Transport::Stream => format!("{n_polls} open streams"),
    };
    report.record(
        SCENARIO,
        format!("{what}: server RSS"),
        mib(rss),
        "MiB",
        Some(Target::AtMost(RSS_TARGET_MIB)),
    );
    report.record(
        SCENARIO,
        format!("{what}: server RSS per connection"),
        (rss - rss_before) / n_polls as f64 / 1024.0,
        "KiB",
        None,
    );
    report.record(
        SCENARIO,
        format!("{what}: server CPU"),
        cpu,
        "cores",
        Some(Target::AtMost(CPU_TARGET)),
    );
    report.record(
        SCENARIO,
        format!("{what}: time to park them all"),
        ramp.as_secs_f64(),
        "s",
        None,
    );
    drop(server);
    database.remove().await;
    Ok(())
}

/// Opens a stream and reads it until something other than the opening comments arrives,
/// counting it in `opened` at its first bytes: what happened, for the error message (while
/// all is well, it never returns before the scenario aborts it).
async fn idle_stream(
    http: &reqwest::Client,
    url: &str,
    after: u64,
    opened: &AtomicUsize,
) -> String {
    use distributed_events_client::sse::{Frame, SseParser};
    let request = http
        .get(format!("{url}/events?after={after}"))
        .header("accept", "text/event-stream");
    let mut response = match request.send().await {
        Ok(response) if response.status() == reqwest::StatusCode::OK => response,
        Ok(response) => return format!("the stream answered {}", response.status()),
        Err(error) => return describe(&error),
    };
    let mut parser = SseParser::new(1 << 20);
    let mut frames = Vec::new();
    let mut first = true;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if first {
                    first = false;
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(error) = parser.feed(&chunk, &mut frames) {
                    return error.to_string();
                }
                // Comments (`: ok`, keep-alives) and `retry:` are what an idle stream sends.
                if let Some(message) = frames
                    .iter()
                    .find(|frame| matches!(frame, Frame::Message(_)))
                {
                    return format!("the stream sent {message:?}");
                }
                frames.clear();
            }
            Ok(None) => return "the server ended the stream".into(),
            Err(error) => return describe(&error),
        }
    }
}
