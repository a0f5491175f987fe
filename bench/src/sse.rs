//! Raw Server-Sent Events readers of `GET /events` (docs/PROTOCOL.md, the stream): what
//! the `idle` and `fanout` scenarios open by the thousand, where a full client would cost
//! the bench more than the server. A small line parser, enough for the server's streams.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::scenarios::{describe, BenchEvent};
use crate::BenchError;

/// One message of a stream: the fields up to a blank line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
}

/// Bytes in, messages out; comments (`: ok`, `: keep-alive`) and `retry:` are skipped.
#[derive(Debug, Default)]
pub struct Parser {
    buffer: Vec<u8>,
    message: Message,
}

impl Parser {
    /// Feeds a chunk; the messages it completes go to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Message>) {
        self.buffer.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buffer[start..start + end];
            start += end + 1;
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if line.is_empty() {
                let message = std::mem::take(&mut self.message);
                if message != Message::default() {
                    out.push(message);
                }
                continue;
            }
            let line = String::from_utf8_lossy(line);
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "id" => self.message.id = Some(value),
                "event" => self.message.event = Some(value),
                "data" => match &mut self.message.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(&value);
                    }
                    None => self.message.data = Some(value),
                },
                _ => {}
            }
        }
        self.buffer.drain(..start);
    }
}

/// Opens the stream of the events after `after`: the response once its head is in.
pub async fn open(
    http: &reqwest::Client,
    url: &str,
    after: u64,
) -> Result<reqwest::Response, BenchError> {
    let response = http
        .get(format!("{url}/events?after={after}"))
        .header("accept", "text/event-stream")
        .header("last-event-id", after.to_string())
        .send()
        .await
        .map_err(|error| {
            BenchError(format!("GET /events (stream) failed: {}", describe(&error)))
        })?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let body = response.text().await.unwrap_or_default();
        return Err(BenchError(format!(
            "GET /events (stream) answered {status}: {body}"
        )));
    }
    Ok(response)
}

/// The payload of a `data:` line: an event record whose `eventJson` is a [`BenchEvent`].
pub fn decode(data: &str) -> Result<BenchEvent, BenchError> {
    #[derive(Deserialize)]
    struct Record {
        #[serde(rename = "eventJson")]
        event_json: String,
    }
    serde_json::from_str::<Record>(data)
        .and_then(|record| serde_json::from_str(&record.event_json))
        .map_err(|error| BenchError(format!("undecodable stream message {data:?}: {error}")))
}

/// A raw reader following the stream from `after`, each event's payload sent on `events`.
/// Counts itself in `opened` at its first bytes (the server's `: ok`); when the server ends
/// the stream, it resumes after the last id it saw, as a client does. Sends the error and
/// stops on any failure; stops when `events` is dropped.
pub fn follow(
    http: reqwest::Client,
    url: String,
    after: u64,
    opened: Arc<AtomicUsize>,
    events: mpsc::UnboundedSender<Result<BenchEvent, BenchError>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut cursor = after;
        let mut first = true;
        let mut messages = Vec::new();
        loop {
            let mut response = match open(&http, &url, cursor).await {
                Ok(response) => response,
                Err(error) => {
                    let _ = events.send(Err(error));
                    return;
                }
            };
            let mut parser = Parser::default();
            loop {
                let chunk = match response.chunk().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break, // the server ended the stream: resume
                    Err(error) => {
                        let message = format!("the stream failed: {}", describe(&error));
                        let _ = events.send(Err(BenchError(message)));
                        return;
                    }
                };
                if first {
                    first = false;
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                parser.feed(&chunk, &mut messages);
                for message in messages.drain(..) {
                    if let Some(id) = message.id.as_deref().and_then(|id| id.parse().ok()) {
                        cursor = id;
                    }
                    let event = if message.event.as_deref() == Some("cursor_expired") {
                        Err(BenchError(format!(
                            "cursor_expired mid-stream: {}",
                            message.data.unwrap_or_default()
                        )))
                    } else if let Some(data) = message.data {
                        decode(&data)
                    } else {
                        continue; // an id alone: the cursor moved past skipped events
                    };
                    let failed = event.is_err();
                    if events.send(event).is_err() || failed {
                        return;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_split_across_chunks_and_skips_comments() {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        parser.feed(b": ok\n\nretry: 1000\n\nid: 7\nda", &mut out);
        assert!(out.is_empty());
        parser.feed(
            b"ta: {}\r\n\r\nid: 9\n\nevent: cursor_expired\ndata: a\ndata: b\n\n",
            &mut out,
        );
        let message = |id: Option<&str>, event: Option<&str>, data: Option<&str>| Message {
            id: id.map(str::to_owned),
            event: event.map(str::to_owned),
            data: data.map(str::to_owned),
        };
        assert_eq!(
            out,
            [
                message(Some("7"), None, Some("{}")),
                message(Some("9"), None, None),
                message(None, Some("cursor_expired"), Some("a\nb")),
            ]
        );
    }
}
