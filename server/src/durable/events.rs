//! The event log as a read-only Durable Streams JSON stream at `/v1/stream/_events`:
//! each message is one event record, exactly as `GET /events` answers it; an offset is a
//! position (zero-padded, so `after=N` is offset `N`), and the reader sees what
//! `GET /events` would show it (its tenant's events, through the authorization filter).

use axum::http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use distributed_events_shared::EventsQuery;

use super::{
    format_offset, header_value, read_query, response_cursor, text, Live, LONG_POLL_TIMEOUT,
    STREAM_CURSOR, STREAM_NEXT_OFFSET, STREAM_UP_TO_DATE,
};
use crate::auth::Principal;
use crate::reads::ReadError;
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
    if query.live == Live::Sse {
        return text(
            StatusCode::BAD_REQUEST,
            "the event log streams with live=long-poll (or GET /events with Accept: text/event-stream)",
        );
    }
    let after = match query.offset {
        Some(None) => head,
        Some(Some(offset)) => u64::try_from(offset).unwrap_or_default(),
        None => 0,
    };
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
        Err(ReadError::CursorExpired { resume_after }) => text(
            StatusCode::GONE,
            format!(
                "retention deleted events after this offset; resume at offset {}",
                format_offset(to_i64(resume_after))
            ),
        ),
        Err(ReadError::CursorAhead { resume_after }) => text(
            StatusCode::BAD_REQUEST,
            format!(
                "this offset is past the end of the log; resume at offset {}",
                format_offset(to_i64(resume_after))
            ),
        ),
        Err(ReadError::Query(message)) => text(StatusCode::BAD_REQUEST, message),
        Err(ReadError::Overloaded(message)) => super::overloaded(message),
        Err(ReadError::Store(error)) => super::DsError::Store(error).into_response(),
    }
}

fn page(
    events: Vec<axum::body::Bytes>,
    cursor: u64,
    head: u64,
    private: bool,
    stream_cursor: Option<String>,
) -> Response {
    let messages: Vec<Vec<u8>> = events.into_iter().map(|event| event.to_vec()).collect();
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
