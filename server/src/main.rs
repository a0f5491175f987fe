//! `distributed-events-server`: the event server on its own, with the demo page.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use clap::Parser;
use distributed_events_server::{
    cors_layer, max_connections_for_open_files, method_not_allowed, not_found, serve, store,
    DurableStore, EventBusServer, JwtAuthenticator, JwtKey, Limits, ServeOptions,
};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

/// Persists domain events and serves them to clients over HTTP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(
        long,
        env = "DISTRIBUTED_EVENTS_BIND",
        default_value = "127.0.0.1:8080"
    )]
    bind: SocketAddr,

    /// Where events are kept: `sqlite://PATH`, `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`
    /// (several instances may share one), `mysql://USER[:PASSWORD]@HOST[:PORT]/DB` (MySQL
    /// or MariaDB; one instance per database), or `memory` (lost on exit).
    #[arg(
        long,
        env = "DISTRIBUTED_EVENTS_DATABASE",
        default_value = "sqlite://distributed-events.db"
    )]
    database: String,

    /// How long events are kept, such as `24h`, `7days` or `90s`.
    #[arg(long, env = "DISTRIBUTED_EVENTS_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    retention: Duration,

    /// How often expired events are deleted.
    #[arg(long, env = "DISTRIBUTED_EVENTS_CLEANUP_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    cleanup_interval: Duration,

    /// An origin browsers may call the API from, such as `https://app.example.com`
    /// (repeatable; `*` allows any). Without one, only same-origin pages can.
    #[arg(
        long = "cors-origin",
        env = "DISTRIBUTED_EVENTS_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,

    /// Folder of static files served at `/` (the built demo page), when it exists.
    #[arg(
        long,
        env = "DISTRIBUTED_EVENTS_STATIC_DIR",
        default_value = "www/dist"
    )]
    static_dir: PathBuf,

    /// Require `Authorization: Bearer <JWT>` signed with this HS256 secret (32+ bytes).
    #[arg(
        long,
        env = "DISTRIBUTED_EVENTS_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    jwt_secret: Option<String>,

    /// Require `Authorization: Bearer <JWT>` verified with this PEM public key file.
    #[arg(long, env = "DISTRIBUTED_EVENTS_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,

    /// The algorithm of `--jwt-public-key`.
    #[arg(
        long,
        env = "DISTRIBUTED_EVENTS_JWT_ALGORITHM",
        value_enum,
        default_value = "rs256"
    )]
    jwt_algorithm: PublicKeyAlgorithm,

    /// Accept only tokens with this `iss` claim.
    #[arg(long, env = "DISTRIBUTED_EVENTS_JWT_ISSUER")]
    jwt_issuer: Option<String>,

    /// Accept only tokens with this `aud` claim.
    #[arg(long, env = "DISTRIBUTED_EVENTS_JWT_AUDIENCE")]
    jwt_audience: Option<String>,

    /// The token claim that names the caller's tenant (required in every token).
    #[arg(
        long,
        env = "DISTRIBUTED_EVENTS_JWT_TENANT_CLAIM",
        default_value = "tenant_id"
    )]
    jwt_tenant_claim: String,

    /// Most long-polls waiting at once; past it polls are answered 503 with Retry-After.
    /// Lowered to 90% of --max-connections, so that other requests always find a slot.
    #[arg(long, env = "DISTRIBUTED_EVENTS_MAX_LONG_POLLS", default_value_t = Limits::default().max_long_polls)]
    max_long_polls: usize,

    /// Largest accepted `POST /events` body, in bytes.
    #[arg(long, env = "DISTRIBUTED_EVENTS_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,

    // Memory per request, and fairness between tenants.
    /// Most bytes of events in one `GET /events` answer (one event is sent even if larger).
    #[arg(long, env = "DISTRIBUTED_EVENTS_MAX_PAGE_BYTES", default_value_t = Limits::default().max_page_bytes)]
    max_page_bytes: usize,

    /// Most memory the in-memory tail of recent events (for live polls) may hold, in bytes.
    #[arg(long, env = "DISTRIBUTED_EVENTS_TAIL_BYTES", default_value_t = Limits::default().tail_bytes)]
    tail_bytes: usize,

    /// Most long-polls of one tenant waiting at once (with JWT auth); past it that tenant's
    /// polls are answered 503 with Retry-After. Default: a quarter of --max-long-polls.
    #[arg(long, env = "DISTRIBUTED_EVENTS_MAX_LONG_POLLS_PER_TENANT")]
    max_long_polls_per_tenant: Option<usize>,

    // --- operations: metrics ---
    /// Serve Prometheus metrics at `http://ADDRESS/metrics` (such as `127.0.0.1:9090`).
    /// A separate address, so that the API's clients cannot reach them. Off by default.
    #[arg(long, env = "DISTRIBUTED_EVENTS_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,

    /// Longest long-poll, such as `30s`: larger `wait`s are lowered to it.
    #[arg(long, env = "DISTRIBUTED_EVENTS_MAX_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    max_wait: Duration,
    // --- end operations ---
    /// Longest life of a stream (`Accept: text/event-stream`), such as `5m`; then the
    /// server ends it and the client reconnects where it left off. Never past the token's
    /// `exp`.
    #[arg(long, env = "DISTRIBUTED_EVENTS_MAX_STREAM_DURATION", default_value = "300s", value_parser = humantime::parse_duration)]
    max_stream_duration: Duration,

    // Connection limits: slow or silent clients must not hold the server.
    /// Longest time a client may take to send a request head; past it the connection closes.
    #[arg(long, env = "DISTRIBUTED_EVENTS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,

    /// Longest time a keep-alive connection may stay idle between requests.
    #[arg(long, env = "DISTRIBUTED_EVENTS_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,

    /// Longest time a `POST /events` body may take to arrive; past it the answer is 408.
    #[arg(long, env = "DISTRIBUTED_EVENTS_BODY_READ_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    body_read_timeout: Duration,

    /// Most connections open at once [default: the open-file limit less a tenth, at least 64].
    #[arg(long, env = "DISTRIBUTED_EVENTS_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PublicKeyAlgorithm {
    Rs256,
    Es256,
}

/// The authenticator the flags ask for, if any.
fn jwt_authenticator(args: &Args) -> Result<Option<JwtAuthenticator>, Box<dyn std::error::Error>> {
    let key = match (&args.jwt_secret, &args.jwt_public_key) {
        (Some(secret), _) => JwtKey::Hs256(secret.as_bytes().to_vec()),
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|error| {
                format!("cannot read --jwt-public-key {}: {error}", path.display())
            })?;
            match args.jwt_algorithm {
                PublicKeyAlgorithm::Rs256 => JwtKey::Rs256Pem(pem),
                PublicKeyAlgorithm::Es256 => JwtKey::Es256Pem(pem),
            }
        }
        (None, None) => return Ok(None),
    };
    let mut authenticator = JwtAuthenticator::new(key)?.tenant_claim(&args.jwt_tenant_claim);
    if let Some(issuer) = &args.jwt_issuer {
        authenticator = authenticator.issuer(issuer);
    }
    if let Some(audience) = &args.jwt_audience {
        authenticator = authenticator.audience(audience);
    }
    Ok(Some(authenticator))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal; plain text in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.retention.is_zero() || args.cleanup_interval.is_zero() {
        return Err("--retention and --cleanup-interval must be longer than zero".into());
    }
    let serve_options = serve_options(&args)?;
    let cors = (!args.cors_origins.is_empty())
        .then(|| cors_layer(&args.cors_origins))
        .transpose()?;
    let store = store::open(&args.database).await.map_err(|error| {
        format!(
            "cannot open the database {}: {error}",
            redacted(&args.database)
        )
    })?;
    let authenticator = jwt_authenticator(&args)?;
    let durable = DurableStore::open(&args.database).await.map_err(|error| {
        format!(
            "cannot open the Durable Streams tables in {}: {error}",
            redacted(&args.database)
        )
    })?;
    let mut builder = EventBusServer::builder(store)
        .retention(args.retention)
        .cleanup_interval(args.cleanup_interval)
        .limits(Limits {
            max_body_bytes: args.max_body_bytes,
            max_long_polls: long_poll_cap(args.max_long_polls, serve_options.max_connections),
            max_page_bytes: args.max_page_bytes,
            tail_bytes: args.tail_bytes,
            max_long_polls_per_tenant: args.max_long_polls_per_tenant,
            max_wait: args.max_wait,
            body_read_timeout: args.body_read_timeout,
            max_stream_duration: args.max_stream_duration,
            ..Limits::default()
        })
        .durable_streams(durable);
    if let Some(authenticator) = authenticator {
        tracing::info!(?authenticator, "requests need a bearer JWT");
        builder = builder.authenticator(authenticator);
    } else {
        tracing::info!(
            "no --jwt-secret or --jwt-public-key: every caller is anonymous and sees all events"
        );
    }
    // Before the server starts, so that its metrics are recorded from the first request.
    let metrics = match args.metrics_bind {
        Some(address) => Some(metrics_listener(address).await?),
        None => None,
    };
    let server = builder.build();

    let mut app = server.router();
    if args.static_dir.is_dir() {
        tracing::info!(dir = %args.static_dir.display(), "serving static files at /");
        let files = ServeDir::new(&args.static_dir).fallback(axum::routing::any(not_found));
        app = app.fallback(move |request: Request| static_file(files.clone(), request));
    } else {
        tracing::warn!(dir = %args.static_dir.display(), "--static-dir does not exist: the demo page is not served and `/` answers 404 (build it with ./scripts/build-web.sh, or point --static-dir at it)");
        app = app.fallback(not_found);
    }
    if let Some(cors) = cors {
        tracing::info!(origins = ?args.cors_origins, "browsers may call the API from these origins");
        app = app.layer(cors);
    } else {
        tracing::info!(
            "no --cors-origin: browsers may call the API only from pages this server serves"
        );
    }
    let app = app.layer(TraceLayer::new_for_http());

    let listener = TcpListener::bind(args.bind)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.bind))?;
    let address = listener.local_addr()?;
    // Tests and scripts wait for this exact line. One write: `eprintln!` writes each piece
    // of its format on its own to unbuffered stderr, and a reader could see
    // "listening on http://127" (which parses as the host 0.0.0.127).
    let line = format!("listening on http://{address}\n");
    std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes())?;
    tracing::info!(database = %redacted(&args.database), retention = ?args.retention, max_connections = serve_options.max_connections, "ready");

    let draining = server.clone();
    if let Some((listener, router)) = metrics {
        // Answers until the process exits, so that the drain can be watched too.
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "the metrics server failed");
            }
        });
    }
    serve(listener, app, serve_options, async move {
        shutdown_signal().await;
        tracing::info!("shutting down: answering waiting polls, finishing requests");
        draining.begin_shutdown();
    })
    .await;
    server.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// A file of the static folder; for what it does not have, the JSON `404`. A method
/// other than GET or HEAD answers the JSON `405` where there is a file, else the `404`
/// (an unknown path is unknown whatever the method).
async fn static_file(files: ServeDir<MethodRouter>, mut request: Request) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        let Ok(response) = files.oneshot(request).await;
        return response.into_response();
    }
    let uri = request.uri().clone();
    *request.method_mut() = Method::HEAD;
    let Ok(found) = files.oneshot(request).await;
    if found.status().is_success() || found.status().is_redirection() {
        method_not_allowed("GET,HEAD")
    } else {
        not_found(uri).await
    }
}

/// The connection limits the flags ask for; refuses values that would make the server
/// useless.
fn serve_options(args: &Args) -> Result<ServeOptions, String> {
    if args.max_body_bytes == 0 || args.max_long_polls == 0 {
        return Err("--max-body-bytes and --max-long-polls must be at least 1: with 0 no event could be posted, or no poll could wait".into());
    }
    if args.max_long_polls_per_tenant == Some(0) {
        return Err(
            "--max-long-polls-per-tenant must be at least 1: with 0 no tenant's poll could wait"
                .into(),
        );
    }
    if args.header_read_timeout.is_zero()
        || args.idle_timeout.is_zero()
        || args.body_read_timeout.is_zero()
        || args.max_stream_duration.is_zero()
    {
        return Err("--header-read-timeout, --idle-timeout, --body-read-timeout and --max-stream-duration must be longer than zero".into());
    }
    let max_connections = match args.max_connections {
        Some(0) => return Err("--max-connections must be at least 1".into()),
        Some(max) => max,
        None => {
            // Parked long-polls each hold a descriptor: take the hard limit, as most
            // servers do, rather than a soft limit of 1024 meant for interactive shells.
            #[cfg(unix)]
            if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
                tracing::warn!(%error, "cannot raise the open-file limit");
            }
            max_connections_for_open_files()?
        }
    };
    Ok(ServeOptions {
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections,
    })
}

/// The long-polls that may wait at once: `asked`, but no more than 90% of the connection
/// cap. A parked poll holds its connection and the cap never closes a connection with a
/// request in flight, so without the headroom parked polls could take every slot and
/// leave `/healthz` and posts unserved.
fn long_poll_cap(asked: usize, max_connections: usize) -> usize {
    let cap = max_connections
        .saturating_sub(max_connections.div_ceil(10))
        .max(1);
    if asked <= cap {
        return asked;
    }
    tracing::info!(
        max_long_polls = cap,
        asked,
        max_connections,
        "--max-long-polls lowered to 90% of the connection cap, so that parked polls leave room for other requests"
    );
    cap
}

/// The listener and router of `--metrics-bind`.
async fn metrics_listener(
    address: SocketAddr,
) -> Result<(TcpListener, Router), Box<dyn std::error::Error>> {
    let router = distributed_events_server::metrics_router()?;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen on --metrics-bind {address}: {error}"))?;
    // Tests and scripts wait for this exact line.
    eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
    Ok((listener, router))
}

/// The database URL without its password, for logs.
fn redacted(database: &str) -> String {
    let Some((scheme, rest)) = database.split_once("://") else {
        return database.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => database.to_owned(),
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_reach_the_log() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/events"),
            "postgres://app:***@db:5432/events"
        );
        assert_eq!(
            redacted("postgres://app@db/events"),
            "postgres://app@db/events"
        );
        assert_eq!(
            redacted("sqlite://distributed-events.db"),
            "sqlite://distributed-events.db"
        );
        assert_eq!(redacted("memory"), "memory");
    }
}
