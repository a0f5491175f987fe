//! `distributed-events`: a distributed-events server from the terminal. `tail` follows its
//! events (through the native client, so it gets the client's ordering, deduplication
//! and reconnects), `post` publishes one, `stats` shows the head, the retained window
//! and a few metrics.
//!
//! Exit codes: 0 done, 1 the server refused or failed, 2 bad arguments, 3 the server
//! cannot be reached, 4 `401` (no or a wrong token), 5 `410` (the cursor is gone).

mod http;
mod tail;
mod term;

use std::io::Read;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use distributed_events_client::{Context, StoredEvent};
use uuid::Uuid;

use crate::http::Server;

/// Follow, publish to and inspect a distributed-events server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the server is and how to sign in; accepted before or after the subcommand.
#[derive(Debug, Args)]
struct ServerArgs {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUTED_EVENTS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,

    /// A bearer token (JWT) for servers started with --jwt-secret or --jwt-public-key.
    #[arg(
        long,
        global = true,
        env = "DISTRIBUTED_EVENTS_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the server's events as they are stored: from a cursor (`--after`), a time
    /// (`--since`) or, by default, from now on.
    Tail(tail::TailArgs),
    /// Publish one event; prints the server's receipt (id, createdAt, position).
    Post(PostArgs),
    /// Print the head, the retained window and, with --metrics-url, a few metrics.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
struct PostArgs {
    /// The event type, such as `OrderPlaced`.
    event_type: String,
    /// The payload as JSON; `-` or nothing reads it from standard input.
    payload: Option<String>,
    /// The aggregate the event belongs to (default: a new UUID).
    #[arg(long)]
    aggregate_id: Option<String>,
    /// The event id (default: a new UUIDv7). Posting the same id again is safe: the
    /// server answers with the first receipt and stores nothing new.
    #[arg(long)]
    id: Option<Uuid>,
    /// A context entry, such as `userId=u1` or `organizationId=org-7` (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = context_entry)]
    context: Vec<(String, String)>,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// The server's Prometheus metrics endpoint (the one `--metrics-bind` serves), such as
    /// `http://127.0.0.1:9090/metrics`.
    #[arg(long, env = "DISTRIBUTED_EVENTS_METRICS_URL")]
    metrics_url: Option<String>,
}

/// Why the command failed: the message for stderr and the exit code.
#[derive(Debug)]
enum Failure {
    /// The server answered with an error that is not one of the below.
    Refused(String),
    /// What the user gave cannot be used.
    Usage(String),
    /// No answer: the server is down, the URL is wrong, or the network failed.
    Unreachable(String),
    /// `401`: no token, or one the server does not accept.
    Unauthorized(String),
    /// `410`: the events after the cursor are gone (or never existed).
    CursorGone(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Refused(_) => 1,
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
            Self::Unauthorized(_) => 4,
            Self::CursorGone(_) => 5,
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Refused(message)
            | Self::Usage(message)
            | Self::Unreachable(message)
            | Self::Unauthorized(message)
            | Self::CursorGone(message) => message,
        }
    }
}

// One thread: the CLI waits on the network, and the client's tasks then start only when
// `tail` first awaits, after it has subscribed (see `ClientBuilder::build`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = Server::new(&cli.server.url, cli.server.token.clone());
    let result = match cli.command {
        Command::Tail(args) => tail::run(&server, args).await,
        Command::Post(args) => post(&server, args).await,
        Command::Stats(args) => stats(&server, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}: {}", term::red("error"), failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn post(server: &Server, args: PostArgs) -> Result<(), Failure> {
    let payload = match args.payload.as_deref() {
        Some(payload) if payload != "-" => payload.to_owned(),
        _ => read_stdin()?,
    };
    // Checked here, sent as written (key order and all).
    let payload = payload.trim();
    serde_json::from_str::<serde::de::IgnoredAny>(payload).map_err(|error| {
        Failure::Usage(format!(
            "the payload must be JSON, such as '{{\"item\":\"Latte\"}}' ({error})"
        ))
    })?;
    let mut event = StoredEvent {
        id: args.id.unwrap_or_else(Uuid::now_v7),
        created_at: Utc::now(),
        aggregate_id: args
            .aggregate_id
            .unwrap_or_else(|| Uuid::now_v7().to_string()),
        event_type: args.event_type,
        event_json: payload.to_owned(),
        user_id: None,
        tenant_id: None,
        session_id: None,
        context: Context::new(),
        position: None,
    };
    event.set_full_context(
        args.context
            .into_iter()
            .map(|(key, value)| (key, serde_json::Value::String(value)))
            .collect(),
    );
    let receipt = term::while_waiting(
        &format!("posting to {}", server.url()),
        server.post_event(&event),
    )
    .await?;
    println!("{receipt}");
    Ok(())
}

fn read_stdin() -> Result<String, Failure> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(Failure::Usage(
            "give the payload as an argument (post TYPE '{\"key\":\"value\"}') or on standard input".into(),
        ));
    }
    let mut payload = String::new();
    std::io::stdin()
        .read_to_string(&mut payload)
        .map_err(|error| Failure::Usage(format!("cannot read standard input: {error}")))?;
    Ok(payload)
}

fn context_entry(entry: &str) -> Result<(String, String), String> {
    match entry.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {entry:?}")),
    }
}

async fn stats(server: &Server, args: StatsArgs) -> Result<(), Failure> {
    let (head, oldest) = term::while_waiting(&format!("asking {}", server.url()), async {
        Ok((server.head().await?, server.oldest().await?))
    })
    .await?;
    let label = |text: &str| term::bold(&format!("{text:<9}"));
    println!("{} {}", label("server"), server.url());
    println!("{} {head}", label("head"));
    match oldest {
        Some(oldest) => {
            let first = oldest.position.unwrap_or_default();
            // Below `first - 1`, the events right after the cursor were deleted (`0`
            // goes on from the oldest kept all the same).
            let expired = if first > 2 {
                format!("; `tail --after` 1 to {} gets 410", first - 2)
            } else {
                String::new()
            };
            println!(
                "{} positions {first} to {head}, the oldest created {}{expired}",
                label("retained"),
                rfc3339(oldest.created_at),
            );
        }
        None => println!(
            "{} no events (or none this token may see)",
            label("retained")
        ),
    }
    if let Some(metrics_url) = args.metrics_url {
        let metrics = term::while_waiting(
            &format!("asking {metrics_url}"),
            server.metrics(&metrics_url),
        )
        .await?;
        println!("{}", label("metrics"));
        for line in http::interesting_metrics(&metrics) {
            println!("  {line}");
        }
    }
    Ok(())
}

/// A time as the wire writes it, to the second.
fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
