//! `tail`: the server's events on stdout, through the native client.

use std::io::Write;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use distributed_events_client::{ClientError, EventBusClient, Status, StoredEvent};
use futures::StreamExt;

use crate::http::{refusal, unreachable, Server};
use crate::term::{self, Spinner};
use crate::Failure;

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Start after this position (`0`: everything the server kept). Default: from now on.
    #[arg(long, conflicts_with = "since")]
    after: Option<u64>,
    /// Start at the first event created at or after this time, such as
    /// `2024-12-04T10:00:00Z`.
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    types: Vec<String>,
    /// Stop after printing this many events.
    #[arg(long)]
    count: Option<u64>,
    /// `json`: one wire record per line; `table`: aligned columns; `auto`: a table on a
    /// terminal, JSON lines otherwise.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Format {
    Auto,
    Json,
    Table,
}

pub(crate) async fn run(server: &Server, args: TailArgs) -> Result<(), Failure> {
    let mut builder = EventBusClient::builder(server.url());
    if let Some(after) = args.after {
        builder = builder.initial_position(after);
    }
    if let Some(since) = args.since {
        builder = builder.initial_timestamp(since);
    }
    if let Some(token) = server.token() {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    let client = builder
        .build()
        .map_err(|error| Failure::Usage(error.to_string()))?;
    // Subscribed before the first await: on this one-thread runtime nothing was received
    // yet, so nothing is missed.
    let mut events = client.events();
    let mut statuses = client.status_changes();
    let mut errors = client.errors();

    let table = match args.format {
        Format::Auto => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        Format::Json => false,
        Format::Table => true,
    };
    let colour = table && term::colour_stdout();
    let mut out = std::io::stdout().lock();
    if table {
        let header = format!(
            "{:>8}  {:<20}  {:<24}  {:<20}  PAYLOAD",
            "POSITION", "CREATED", "TYPE", "AGGREGATE"
        );
        writeln!(out, "{}", term::bold(&header)).map_err(output_failed)?;
    }

    let spinner = Spinner::start();
    let mut printed = 0;
    let mut was_live = false;
    let result = loop {
        if args.count.is_some_and(|count| printed >= count) {
            break Ok(());
        }
        tokio::select! {
            // Errors first: a reset must stop us before events past the gap print.
            biased;
            Some(error) = errors.next() => {
                if let ClientError::CursorReset { from: 0, resume_after, .. } = &error {
                    if args.after == Some(0) {
                        // `--after 0` asks for everything kept: retention deleted the
                        // start, so everything kept begins after `resume_after`.
                        eprintln!(
                            "the server deleted its oldest events: following from the oldest it kept, after position {resume_after}"
                        );
                        continue;
                    }
                }
                if let Some(failure) = fatal(server, &error) {
                    break Err(failure);
                }
            }
            Some(status) = statuses.next() => match status {
                Status::Connecting => spinner.show(format!("connecting to {}…", server.url())),
                Status::Live { .. } => {
                    was_live = true;
                    spinner.hide();
                }
                Status::BackingOff { error, retry_at } => {
                    // Before the first answer, no answer means a wrong URL or a server
                    // that is not running: say so rather than wait forever.
                    match &error {
                        ClientError::Network { message } if !was_live => break Err(unreachable(server.url(), message)),
                        ClientError::Timeout { .. } if !was_live => break Err(unreachable(server.url(), &error.to_string())),
                        _ => {}
                    }
                    if let Some(failure) = fatal(server, &error) {
                        break Err(failure);
                    }
                    let wait = (retry_at - Utc::now()).num_seconds().max(0);
                    let text = format!("{error}; retrying in {wait} s");
                    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                        spinner.show(text);
                    } else {
                        eprintln!("{text}");
                    }
                }
                Status::Closed => break Ok(()),
                _ => {}
            },
            Some(event) = events.next() => {
                if !args.types.is_empty() && !args.types.contains(&event.event_type) {
                    continue;
                }
                let line = if table { table_row(&event, colour) } else { json_line(&event)? };
                spinner.hide();
                writeln!(out, "{line}").map_err(output_failed)?;
                out.flush().map_err(output_failed)?;
                printed += 1;
            }
            else => break Ok(()),
        }
    };
    spinner.hide();
    client.close().await;
    result
}

/// The errors that end `tail`: the server refused us for good, or events were missed.
fn fatal(server: &Server, error: &ClientError) -> Option<Failure> {
    match error {
        ClientError::CursorReset {
            code,
            from,
            resume_after,
        } => Some(Failure::CursorGone(format!(
            "the server answered 410 {code}: it has no events right after position {from}. \
             Run again with --after {resume_after} to go on from the oldest event it kept, \
             or without --after to follow from now on."
        ))),
        ClientError::Http {
            status,
            code,
            message,
        } if !error.is_transient() => {
            Some(refusal(*status, code, message, server.token().is_some()))
        }
        _ => None,
    }
}

fn json_line(event: &StoredEvent) -> Result<String, Failure> {
    serde_json::to_string(event)
        .map_err(|error| Failure::Refused(format!("cannot write the event as JSON: {error}")))
}

/// One row: position, creation time, type, aggregate, and the payload cut to fit.
fn table_row(event: &StoredEvent, colour: bool) -> String {
    const PAYLOAD_WIDTH: usize = 60;
    let position = event
        .position
        .map_or_else(|| "-".to_owned(), |p| p.to_string());
    let created = event
        .created_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!(
        "{}  {}  {}  {}  {}",
        term::colour(colour, "33", &format!("{position:>8}")),
        term::colour(colour, "2", &format!("{created:<20}")),
        term::colour(
            colour,
            "1;36",
            &format!("{:<24}", fit(&event.event_type, 24))
        ),
        term::colour(
            colour,
            "32",
            &format!("{:<20}", fit(&event.aggregate_id, 20))
        ),
        fit(&event.event_json, PAYLOAD_WIDTH),
    )
}

/// `text`, cut to `width` characters with an ellipsis if longer.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let cut: String = text.chars().take(width - 1).collect();
    format!("{cut}…")
}

fn output_failed(error: std::io::Error) -> Failure {
    Failure::Refused(format!("cannot write to standard output: {error}"))
}
