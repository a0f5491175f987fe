//! The server's metrics, in Prometheus's text format.
//!
//! Every site records through the [`metrics`] facade in one line, with a name from here;
//! without a recorder (no [`metrics_router`] called) that costs next to nothing.
//! [`metrics_router`] installs the Prometheus recorder and serves what it gathered.
//! Labels take a few fixed values each (routes, not paths; no ids, no tenants).

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests answered, by `method`, `route` and `status`.
pub(crate) const HTTP_REQUESTS: &str = "distributed_events_http_requests_total";
/// Time to answer an HTTP request (long-polls included: their wait counts), by `method`
/// and `route`.
pub(crate) const HTTP_DURATION: &str = "distributed_events_http_request_duration_seconds";
/// Events appended, by `outcome`: `new` (stored), `replayed` (an idempotent repost),
/// `conflict` (an id reused for a different event).
pub(crate) const APPENDED: &str = "distributed_events_appended_total";
/// Events delivered in `GET /events` answers and streams, by `source`: `tail` (memory)
/// or `store`.
pub(crate) const DELIVERED: &str = "distributed_events_delivered_total";
/// Connections held open to wait for events, by `kind` (`long_poll` or `stream`).
pub(crate) const LIVE_CONNECTIONS: &str = "distributed_events_live_connections";
/// Events in the tail (the recent events live polls are answered from).
pub(crate) const TAIL_EVENTS: &str = "distributed_events_tail_events";
/// Bytes of JSON in the tail.
pub(crate) const TAIL_BYTES: &str = "distributed_events_tail_bytes";
/// Failed store operations, by `during`: `request`, `follow` (the tail's follower) or
/// `cleanup`.
pub(crate) const STORE_ERRORS: &str = "distributed_events_store_errors_total";
/// Store operations tried again after a failure, by `task`: `follow` (after a backoff)
/// or `cleanup` (at the next interval).
pub(crate) const STORE_RETRIES: &str = "distributed_events_store_retries_total";
/// Retention cleanups run, by `outcome` (`ok` or `error`).
pub(crate) const CLEANUP_RUNS: &str = "distributed_events_cleanup_runs_total";
/// Events deleted by retention cleanups.
pub(crate) const CLEANUP_DELETED: &str = "distributed_events_cleanup_deleted_total";
/// Times the PostgreSQL listener (commits of other instances) lost its connection and
/// connected again.
pub(crate) const LISTENER_RECONNECTS: &str =
    "distributed_events_postgres_listener_reconnects_total";

/// Histogram buckets of the `_seconds` metrics: from a millisecond to a minute (the
/// longest long-poll plus the request timeout).
const SECONDS_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Another [`metrics`] recorder was installed in this process before [`metrics_router`]
/// was first called: render that one instead.
#[derive(Debug, thiserror::Error)]
#[error("another metrics recorder is installed in this process; serve its output instead of metrics_router()")]
pub struct MetricsError;

/// A router that answers `GET /metrics` in Prometheus's text format, with the metrics of
/// every [`EventBusServer`](crate::EventBusServer) in this process. The first call
/// installs the Prometheus recorder as the process's global [`metrics`] recorder.
///
/// Serve it on an address that only the monitoring can reach (the binary's
/// `--metrics-bind`), not to the tenants' clients:
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = distributed_events_server::metrics_router()?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
/// tokio::spawn(async move { axum::serve(listener, metrics).await });
/// # Ok(()) }
/// ```
pub fn metrics_router() -> Result<Router, MetricsError> {
    let handle = handle()?.clone();
    Ok(Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
            }
        }),
    ))
}

/// The handle of the recorder installed by the first call.
fn handle() -> Result<&'static PrometheusHandle, MetricsError> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
        .ok_or(MetricsError)
}

/// The help text of every metric, and a first zero for those without labels, so that
/// they show before anything happened.
fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, long-poll waits included, by method and route."
    );
    describe_counter!(
        APPENDED,
        "Events appended, by outcome: new, replayed (an idempotent repost) or conflict."
    );
    describe_counter!(
        DELIVERED,
        "Events delivered in GET /events answers and streams, by source: tail or store."
    );
    describe_gauge!(LIVE_CONNECTIONS, "Connections waiting for events, by kind.");
    describe_gauge!(
        TAIL_EVENTS,
        Unit::Count,
        "Events in the in-memory tail that live polls are answered from."
    );
    describe_gauge!(
        TAIL_BYTES,
        Unit::Bytes,
        "Bytes of JSON in the in-memory tail."
    );
    describe_counter!(
        STORE_ERRORS,
        "Failed store operations, by during: request, follow or cleanup."
    );
    describe_counter!(
        STORE_RETRIES,
        "Store operations tried again after a failure, by task: follow or cleanup."
    );
    describe_counter!(
        CLEANUP_RUNS,
        "Retention cleanups run, by outcome: ok or error."
    );
    describe_counter!(CLEANUP_DELETED, "Events deleted by retention cleanups.");
    describe_counter!(
        LISTENER_RECONNECTS,
        "Times the PostgreSQL listener lost its connection and connected again."
    );
    metrics::counter!(CLEANUP_DELETED).absolute(0);
    metrics::counter!(LISTENER_RECONNECTS).absolute(0);
    metrics::gauge!(LIVE_CONNECTIONS, "kind" => "long_poll").set(0.0);
    metrics::gauge!(LIVE_CONNECTIONS, "kind" => "stream").set(0.0);
}

/// Counts a long-poll or a stream as a live connection for as long as it is held.
#[derive(Debug)]
pub(crate) struct LivePoll<T> {
    _held: T,
    kind: &'static str,
}

impl<T> LivePoll<T> {
    /// A waiting long-poll.
    pub(crate) fn new(held: T) -> Self {
        Self::of_kind("long_poll", held)
    }

    /// An open stream (Server-Sent Events).
    pub(crate) fn stream(held: T) -> Self {
        Self::of_kind("stream", held)
    }

    fn of_kind(kind: &'static str, held: T) -> Self {
        metrics::gauge!(LIVE_CONNECTIONS, "kind" => kind).increment(1.0);
        Self { _held: held, kind }
    }
}

impl<T> Drop for LivePoll<T> {
    fn drop(&mut self) {
        metrics::gauge!(LIVE_CONNECTIONS, "kind" => self.kind).decrement(1.0);
    }
}
