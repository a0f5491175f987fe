//! The event log as a read-only Durable Streams JSON stream at `/v1/stream/_events`:
//! each message is one event record, exactly as `GET /events` answers it; an offset is a
//! position (zero-padded, so `after=N` is offset `N`), and the reader sees what
//! `GET /events` would show it (its tenant's events, through the authorization filter).

use axum::http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use distributed_events_shared::EventsQuery;

use axum::body::Bytes;
use tokio::time::Instant;

use super::{
    format_offset, header_value, read_query, response_cursor, sse_data, text, Live,
    LONG_POLL_TIMEOUT, STREAM_CURSOR, STREAM_NEXT_OFFSET, STREAM_UP_TO_DATE,
};
use crate::auth::Principal;
use crate::reads::ReadError;
use crate::tail::PageEvent;
use crate::EventBusServer;

/// The path of the event log under `/v1/stream/` (names starting with `_` are reserved).
pub(super) const PATH: &str = "_events";

pub(super) async fn handle(
    server: &EventBusServer,
    parts: &Parts,
    principal: &Principal,
    private: bool,
) -> Response {
    let head = *server.store().watch_head().borrow();
    match parts.method {
        Method::HEAD => {
            let mut response = StatusCode::OK.into_response();
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(
                STREAM_NEXT_OFFSET,
                header_value(format_offset(to_i64(head))),
            );
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Method::GET => read(server, parts, principal, private, head).await,
        _ => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the event log is read-only here: publish with POST /events",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
    }
}

fn to_i64(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

async fn read(
    server: &EventBusServer,
    parts: &Parts,
    principal: &Principal,
    private: bool,
    head: u64,
) -> Response {
    let query = match read_query(parts.uri.query()) {
        Ok(query) => query,
        Err(error) => return error.into_response(),
    };
    let after = match query.offset {
        Some(None) => head,
        Some(Some(offset)) => u64::try_from(offset).unwrap_or_default(),
        None => 0,
    };
    if query.live == Live::Sse {
        return sse(server, principal, after, query.cursor).await;
    }
    if matches!(query.offset, Some(None)) && query.live == Live::No {
        return page(Vec::new(), after, head, private, None);
    }
    let events_query = EventsQuery {
        after: Some(after),
        wait: (query.live == Live::LongPoll)
            .then_some(LONG_POLL_TIMEOUT.min(server.limits().max_wait)),
        ..EventsQuery::default()
    };
    match server.read_events(principal, &events_query).await {
        Ok(result) => {
            let head = head.max(*server.store().watch_head().borrow());
            let cursor =
                (query.live == Live::LongPoll).then(|| response_cursor(query.cursor.as_deref()));
            if query.live == Live::LongPoll && result.events.is_empty() {
                let mut response = StatusCode::NO_CONTENT.into_response();
                let headers = response.headers_mut();
                headers.insert(
                    STREAM_NEXT_OFFSET,
                    header_value(format_offset(to_i64(result.cursor))),
                );
                headers.insert(STREAM_UP_TO_DATE, HeaderValue::from_static("true"));
                headers.insert(STREAM_CURSOR, header_value(cursor.unwrap_or_default()));
                return response;
            }
            page(result.events, result.cursor, head, private, cursor)
        }
        Err(error) => read_error(error),
    }
}

fn read_error(error: ReadError) -> Response {
    match error {
        ReadError::CursorExpired { resume_after } => text(
            StatusCode::GONE,
            format!(
                "retention deleted events after this offset; resume at offset {}",
                format_offset(to_i64(resume_after))
            ),
        ),
        ReadError::CursorAhead { resume_after } => text(
            StatusCode::BAD_REQUEST,
            format!(
                "this offset is past the end of the log; resume at offset {}",
                format_offset(to_i64(resume_after))
            ),
        ),
        ReadError::Query(message) => text(StatusCode::BAD_REQUEST, message),
        ReadError::Overloaded(message) => super::overloaded(message),
        ReadError::Store(error) => super::DsError::Store(error).into_response(),
    }
}

/// `live=sse` on the log: each page of records is a data event (a JSON array) followed
/// by a control event with the offset after it, until the reader leaves, retention overtakes it, the
/// server shuts down, or [`SSE_DURATION`](super::SSE_DURATION) passes (or the bearer token expires).
async fn sse(
    server: &EventBusServer,
    principal: &Principal,
    after: u64,
    cursor: Option<String>,
) -> Response {
    // The first page checks the offset (410, 400) before the answer starts.
    let first = server
        .read_events(
            principal,
            &EventsQuery {
                after: Some(after),
                ..EventsQuery::default()
            },
        )
        .await;
    let first = match first {
        Ok(first) => first,
        Err(error) => return read_error(error),
    };
    let permit = match server
        .inner
        .long_polls
        .try_acquire(principal.tenant_id.as_deref())
    {
        Ok(permit) => permit,
        Err(refusal) => return super::overloaded(refusal.reason()),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    let server = server.clone();
    let principal = principal.clone();
    let deadline = super::sse_deadline(principal.expires_at);
    tokio::spawn(async move {
        let _permit = permit;
        let mut end = server.inner.tail.watch_end();
        let keep_alive = LONG_POLL_TIMEOUT.min(server.limits().max_wait);
        let mut page = first;
        loop {
            let head = *server.store().watch_head().borrow();
            // One data event per page: the protocol lets a JSON stream batch its
            // messages in one array.
            let mut out = String::new();
            if !page.events.is_empty() {
                let messages: Vec<Vec<u8>> = page
                    .events
                    .iter()
                    .map(|event| event.json.bytes.to_vec())
                    .collect();
                out.push_str("event: data\n");
                out.push_str(&sse_data(&String::from_utf8_lossy(&super::body_of(
                    true, &messages,
                ))));
            }
            out.push_str(&control(
                page.cursor,
                page.cursor >= head,
                cursor.as_deref(),
            ));
            if sender.send(Bytes::from(out)).await.is_err()
                || Instant::now() >= deadline
                || server.inner.shutdown.is_cancelled()
            {
                return;
            }
            // Waits here, on the permit this stream holds (a long-poll read would take
            // a second one), until the tail passes the cursor, the keep-alive is due, or
            // the client leaves.
            let wait = keep_alive.min(deadline.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = tokio::time::timeout(wait, end.wait_for(|&end| end > page.cursor)) => {}
                () = sender.closed() => return,
                () = server.inner.shutdown.cancelled() => {}
            }
            let query = EventsQuery {
                after: Some(page.cursor),
                ..EventsQuery::default()
            };
            page = match server.read_stream_page(&principal, &query).await {
                Ok(next) => next,
                // Retention overtook the reader: it reconnects and learns so (410).
                Err(_) => return,
            };
        }
    });
    super::sse_response(receiver, true)
}

/// A control event: the offset after what was sent.
fn control(offset: u64, up_to_date: bool, cursor: Option<&str>) -> String {
    let mut control = serde_json::json!({
        "streamNextOffset": format_offset(to_i64(offset)),
        "streamCursor": response_cursor(cursor),
    });
    if up_to_date {
        control["upToDate"] = true.into();
    }
    format!("event: control\n{}", sse_data(&control.to_string()))
}

fn page(
    events: Vec<PageEvent>,
    cursor: u64,
    head: u64,
    private: bool,
    stream_cursor: Option<String>,
) -> Response {
    let messages: Vec<Vec<u8>> = events
        .into_iter()
        .map(|event| event.json.bytes.to_vec())
        .collect();
    let mut response = (StatusCode::OK, super::body_of(true, &messages)).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        STREAM_NEXT_OFFSET,
        header_value(format_offset(to_i64(cursor))),
    );
    if cursor >= head {
        headers.insert(STREAM_UP_TO_DATE, HeaderValue::from_static("true"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    } else {
        headers.insert(
            CACHE_CONTROL,
            HeaderValue::from_static(if private {
                "private, max-age=60, stale-while-revalidate=300"
            } else {
                "public, max-age=60, stale-while-revalidate=300"
            }),
        );
    }
    if let Some(stream_cursor) = stream_cursor {
        headers.insert(STREAM_CURSOR, header_value(stream_cursor));
    }
    response
}
