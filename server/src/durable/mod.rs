//! The Durable Streams protocol at `/v1/stream/{path}` (create, append, read: catch-up,
//! long-poll, SSE; `HEAD`, `DELETE`; JSON mode, closure, forks, idempotent producers),
//! on the same database as `/events`, and the event log as a read-only JSON stream at
//! `/v1/stream/_events`. The choices the protocol leaves to a server are in
//! `docs/PROTOCOL.md`, "Durable Streams".

mod events;
mod store;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tokio::time::Instant;

use crate::store::StoreError;
use crate::EventBusServer;
pub use store::DurableStore;
use store::{
    format_offset, is_json, media_type, AppendRequest, Appended, CreateRequest, DsError,
    ForkRequest, Producer, ReadResult, SHARED_POLL,
};

/// Where streams live: `/v1/stream/{path}`.
const PREFIX: &str = "/v1/stream/";
/// Longest wait of a long-poll without data (also capped by `--max-wait`).
const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(15);
/// An SSE answer ends after this, so that caches can collapse readers (Section 8.2).
const SSE_DURATION: Duration = Duration::from_secs(60);
/// Longest path of a stream, in bytes.
const MAX_PATH_BYTES: usize = 1024;
/// The largest integer a JavaScript number holds exactly (producer epochs and seqs).
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

const STREAM_NEXT_OFFSET: &str = "stream-next-offset";
const STREAM_UP_TO_DATE: &str = "stream-up-to-date";
const STREAM_CURSOR: &str = "stream-cursor";
const STREAM_CLOSED: &str = "stream-closed";
const STREAM_TTL: &str = "stream-ttl";
const STREAM_EXPIRES_AT: &str = "stream-expires-at";
const STREAM_SEQ: &str = "stream-seq";
const PRODUCER_ID: &str = "producer-id";
const PRODUCER_EPOCH: &str = "producer-epoch";
const PRODUCER_SEQ: &str = "producer-seq";
const PRODUCER_EXPECTED_SEQ: &str = "producer-expected-seq";
const PRODUCER_RECEIVED_SEQ: &str = "producer-received-seq";
const FORKED_FROM: &str = "stream-forked-from";
const FORK_OFFSET: &str = "stream-fork-offset";
const FORK_SUB_OFFSET: &str = "stream-fork-sub-offset";

/// The routes of `/v1/stream`, for [`crate::http::router`].
pub(crate) fn router() -> Router<EventBusServer> {
    Router::new()
        .route("/v1/stream/{*path}", any(handle))
        .layer(middleware::from_fn(browser_headers))
}

/// The headers of Section 10.7 on every answer, and CORS for the protocol's headers.
async fn browser_headers(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        if !headers.contains_key(name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    };
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "cross-origin-resource-policy", "cross-origin");
    set(headers, "access-control-allow-origin", "*");
    set(
        headers,
        "access-control-allow-methods",
        "GET, POST, PUT, DELETE, HEAD, OPTIONS",
    );
    set(
        headers,
        "access-control-allow-headers",
        "authorization, content-type, if-none-match, stream-seq, stream-ttl, \
         stream-expires-at, stream-closed, producer-id, producer-epoch, producer-seq, \
         stream-forked-from, stream-fork-offset, stream-fork-sub-offset",
    );
    set(
        headers,
        "access-control-expose-headers",
        "stream-next-offset, stream-cursor, stream-up-to-date, stream-closed, \
         stream-ttl, stream-expires-at, producer-epoch, producer-seq, \
         producer-expected-seq, producer-received-seq, stream-sse-data-encoding, etag, \
         location, content-type",
    );
    response
}

/// A plain-text error answer.
fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        message.into(),
    )
        .into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    text(StatusCode::BAD_REQUEST, message)
}

fn header_value(value: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&value.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl IntoResponse for DsError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            Self::NotFound => text(StatusCode::NOT_FOUND, message),
            Self::Gone => text(StatusCode::GONE, message),
            Self::Conflict(_) => text(StatusCode::CONFLICT, message),
            Self::BadRequest(_) | Self::InvalidEpochSeq => text(StatusCode::BAD_REQUEST, message),
            Self::Closed { tail } => {
                let mut response = text(StatusCode::CONFLICT, message);
                let headers = response.headers_mut();
                headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
                headers.insert(STREAM_NEXT_OFFSET, header_value(format_offset(tail)));
                response
            }
            Self::StaleEpoch { current } => {
                let mut response = text(StatusCode::FORBIDDEN, message);
                response
                    .headers_mut()
                    .insert(PRODUCER_EPOCH, header_value(current));
                response
            }
            Self::SequenceGap { expected, received } => {
                let mut response = text(StatusCode::CONFLICT, message);
                let headers = response.headers_mut();
                headers.insert(PRODUCER_EXPECTED_SEQ, header_value(expected));
                headers.insert(PRODUCER_RECEIVED_SEQ, header_value(received));
                response
            }
            Self::Raced => Self::Store(StoreError::Unavailable(message)).into_response(),
            Self::Store(error) => {
                tracing::warn!(%error, "durable streams: the store failed");
                let mut response = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store is unavailable; retry later",
                );
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
        }
    }
}

/// When an SSE answer ends: after [`SSE_DURATION`], and never past the bearer token's
/// expiry (the client reconnects with a fresh one), as `/events` streams do.
fn sse_deadline(token_expires_at: Option<chrono::DateTime<chrono::Utc>>) -> Instant {
    let mut lifetime = SSE_DURATION;
    if let Some(expires_at) = token_expires_at {
        let left = (expires_at - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        lifetime = lifetime.min(left);
    }
    Instant::now() + lifetime
}

/// One request's context: the stream's store, the caller's tenant and the stream path.
struct Target {
    store: Arc<DurableStore>,
    /// The caller's tenant (`""` without authentication or without a tenant).
    tenant: String,
    /// Whether the caller authenticated (answers are then `private` to caches).
    private: bool,
    /// When the caller's bearer token expires.
    token_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    path: String,
}

async fn handle(State(server): State<EventBusServer>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(store) = server.inner.durable.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            "Durable Streams are not enabled on this server",
        );
    };
    let (principal, private) = match server.authenticator() {
        None => (crate::auth::Principal::default(), false),
        Some(authenticator) => match authenticator.authenticate(&parts).await {
            Ok(principal) => (principal, true),
            Err(rejection) => {
                let mut response = text(StatusCode::UNAUTHORIZED, rejection.message);
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, header_value(rejection.challenge));
                return response;
            }
        },
    };
    let path = parts
        .uri
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default()
        .to_owned();
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return bad_request(format!(
            "a stream path is 1 to {MAX_PATH_BYTES} bytes after {PREFIX}"
        ));
    }
    if path == events::PATH {
        return events::handle(&server, &parts, &principal, private).await;
    }
    let target = Target {
        store,
        tenant: principal.tenant_id.unwrap_or_default(),
        private,
        token_expires_at: principal.expires_at,
        path,
    };
    let read_body = read_body(
        body,
        server.limits().max_body_bytes,
        server.limits().body_read_timeout,
    );
    let result = match parts.method {
        Method::PUT => match read_body.await {
            Ok(body) => create(&target, &parts, body).await,
            Err(response) => return response,
        },
        Method::POST => match read_body.await {
            Ok(body) => append(&target, &parts.headers, body).await,
            Err(response) => return response,
        },
        Method::GET => read(&server, &target, &parts).await,
        Method::HEAD => head(&target).await,
        Method::DELETE => target
            .store
            .delete(&target.tenant, &target.path)
            .await
            .map(|()| StatusCode::NO_CONTENT.into_response()),
        _ => Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, HEAD, PUT, POST or DELETE",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The most of a too-large body read (and dropped) before answering `413`: answering
/// before the client has sent its body would close the connection under it, and the
/// client would see a reset instead of the answer.
const MAX_DRAINED_BYTES: usize = 64 * 1024 * 1024;

/// The request body, at most `max` bytes (`413` past it), within `timeout` (`408`).
async fn read_body(body: Body, max: usize, timeout: Duration) -> Result<Bytes, Response> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total = 0usize;
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| bad_request("the body did not arrive whole"))?;
            total = total.saturating_add(chunk.len());
            if total <= max {
                kept.extend_from_slice(&chunk);
            } else if total > MAX_DRAINED_BYTES {
                break;
            }
        }
        Ok::<_, Response>(())
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => {
            return Err(text(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long to arrive",
            ))
        }
        Ok(Err(response)) => return Err(response),
        Ok(Ok(())) => {}
    }
    if total > max {
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes (--max-body-bytes)"),
        ));
    }
    Ok(Bytes::from(kept))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap_or("\u{0}"))
}

/// A non-negative decimal integer without sign, leading zeros or exponent.
fn strict_integer(text: &str) -> Option<i64> {
    let canonical = text == "0"
        || (!text.is_empty()
            && !text.starts_with('0')
            && text.bytes().all(|byte| byte.is_ascii_digit()));
    canonical.then(|| text.parse().ok()).flatten()
}

/// An offset given by a client: `-1` (the start), or one this server made. `None` for
/// `now`, resolved by the caller to the tail.
fn parse_offset(text: &str) -> Result<Option<i64>, DsError> {
    match text {
        "-1" => Ok(Some(0)),
        "now" => Ok(None),
        _ => store::parse_offset(text).map(Some).ok_or_else(|| {
            DsError::BadRequest(format!(
                "invalid offset {text:?}: use -1, now, or a Stream-Next-Offset of this stream"
            ))
        }),
    }
}

/// A stream path from `Stream-Forked-From`: a path under `/v1/stream/` or a full URL.
fn source_path(value: &str) -> Option<String> {
    let path = match value.find("://") {
        Some(scheme) => {
            let rest = &value[scheme + 3..];
            &rest[rest.find('/')?..]
        }
        None => value,
    };
    let path = path
        .strip_prefix(PREFIX)
        .unwrap_or(path.trim_start_matches('/'));
    (!path.is_empty()).then(|| path.to_owned())
}

/// A content type as given, or `None` when missing or not `type/subtype`.
fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = header(headers, CONTENT_TYPE.as_str())?.trim();
    let media = media_type(value);
    let (kind, sub) = media.split_once('/')?;
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&byte))
    };
    (token(kind) && token(sub)).then(|| value.to_owned())
}

async fn create(
    target: &Target,
    parts: &axum::http::request::Parts,
    body: Bytes,
) -> Result<Response, DsError> {
    let headers = &parts.headers;
    let ttl = header(headers, STREAM_TTL);
    let expires = header(headers, STREAM_EXPIRES_AT);
    if ttl.is_some() && expires.is_some() {
        return Ok(bad_request(
            "give Stream-TTL or Stream-Expires-At, not both",
        ));
    }
    let ttl_seconds =
        match ttl {
            None => None,
            Some(text) => match strict_integer(text) {
                Some(seconds) => Some(seconds),
                None => return Ok(bad_request(
                    "Stream-TTL is a whole number of seconds (no sign, leading zero or decimals)",
                )),
            },
        };
    let expires_at = match expires {
        None => None,
        Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(time) => Some((text.to_owned(), time.timestamp_millis())),
            Err(_) => return Ok(bad_request("Stream-Expires-At is an RFC 3339 time")),
        },
    };
    let forked_from = header(headers, FORKED_FROM);
    let fork_offset = header(headers, FORK_OFFSET);
    let sub_offset = header(headers, FORK_SUB_OFFSET);
    let fork = match forked_from {
        None => {
            if sub_offset.is_some() || fork_offset.is_some() {
                return Ok(bad_request(
                    "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From",
                ));
            }
            None
        }
        Some(source) => {
            let Some(source) = source_path(source) else {
                return Ok(bad_request("Stream-Forked-From names no stream"));
            };
            let offset = match fork_offset {
                None => None,
                Some(text) => match parse_offset(text) {
                    Ok(Some(offset)) if text != "-1" => Some(offset),
                    _ => {
                        return Ok(bad_request(
                            "Stream-Fork-Offset is not an offset of this server",
                        ))
                    }
                },
            };
            let sub_offset = match sub_offset {
                None => 0,
                Some(text) => match strict_integer(text) {
                    Some(sub) => sub,
                    None => {
                        return Ok(bad_request(
                            "Stream-Fork-Sub-Offset is a non-negative whole number",
                        ))
                    }
                },
            };
            if sub_offset > 0 && offset.is_none() {
                return Ok(bad_request(
                    "Stream-Fork-Sub-Offset needs Stream-Fork-Offset",
                ));
            }
            Some(ForkRequest {
                source,
                offset,
                sub_offset,
            })
        }
    };
    let content_type = content_type(headers);
    let request = CreateRequest {
        content_type,
        ttl_seconds,
        expires_at,
        closed: header(headers, STREAM_CLOSED) == Some("true"),
        body: body.to_vec(),
        fork,
    };
    let (new, meta) = target
        .store
        .create(&target.tenant, &target.path, request)
        .await?;
    let mut response = if new {
        let host = header(headers, "host").unwrap_or("localhost");
        let mut response = StatusCode::CREATED.into_response();
        response.headers_mut().insert(
            LOCATION,
            header_value(format!("http://{host}{}", parts.uri.path())),
        );
        response
    } else {
        StatusCode::OK.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, header_value(&meta.content_type));
    headers.insert(STREAM_NEXT_OFFSET, header_value(format_offset(meta.tail)));
    if meta.closed {
        headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

async fn append(target: &Target, headers: &HeaderMap, body: Bytes) -> Result<Response, DsError> {
    let close = header(headers, STREAM_CLOSED) == Some("true");
    let producer_headers =
        [PRODUCER_ID, PRODUCER_EPOCH, PRODUCER_SEQ].map(|name| header(headers, name));
    let producer = match producer_headers {
        [None, None, None] => None,
        [Some(id), Some(epoch), Some(seq)] => {
            if id.is_empty() {
                return Ok(bad_request("Producer-Id is empty"));
            }
            let number = |text: &str| {
                (!text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
                    .then(|| text.parse::<i64>().ok())
                    .flatten()
                    .filter(|value| *value <= MAX_SAFE_INTEGER)
            };
            let (Some(epoch), Some(seq)) = (number(epoch), number(seq)) else {
                return Ok(bad_request(
                    "Producer-Epoch and Producer-Seq are whole numbers up to 2^53-1",
                ));
            };
            Some(Producer {
                id: id.to_owned(),
                epoch,
                seq,
            })
        }
        _ => {
            return Ok(bad_request(
                "give Producer-Id, Producer-Epoch and Producer-Seq together",
            ))
        }
    };
    if body.is_empty() && !close {
        return Ok(bad_request("an append needs a body"));
    }
    let content_type = content_type(headers);
    if !body.is_empty() && content_type.is_none() {
        return Ok(bad_request("an append needs a Content-Type"));
    }
    let with_producer = producer.is_some();
    let request = AppendRequest {
        content_type,
        body: body.to_vec(),
        close,
        stream_seq: header(headers, STREAM_SEQ).map(str::to_owned),
        producer: producer.clone(),
    };
    let appended = target
        .store
        .append(&target.tenant, &target.path, request)
        .await?;
    let (status, tail, closed, seq) = match appended {
        Appended::New { tail, closed } => (
            // A producer's append is a 200 (it carries the producer's headers).
            if with_producer && !body.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            },
            tail,
            closed,
            producer.as_ref().map(|producer| producer.seq),
        ),
        Appended::Duplicate {
            tail,
            last_seq,
            closed,
        } => (StatusCode::NO_CONTENT, tail, closed, Some(last_seq)),
    };
    let mut response = status.into_response();
    let headers = response.headers_mut();
    headers.insert(STREAM_NEXT_OFFSET, header_value(format_offset(tail)));
    if closed {
        headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    if let (Some(producer), Some(seq)) = (&producer, seq) {
        headers.insert(PRODUCER_EPOCH, header_value(producer.epoch));
        headers.insert(PRODUCER_SEQ, header_value(seq));
    }
    Ok(response)
}

async fn head(target: &Target) -> Result<Response, DsError> {
    let meta = target.store.head(&target.tenant, &target.path).await?;
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, header_value(&meta.content_type));
    headers.insert(STREAM_NEXT_OFFSET, header_value(format_offset(meta.tail)));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(ttl) = meta.ttl_seconds {
        headers.insert(STREAM_TTL, header_value(ttl));
    }
    if let Some(expires_at) = &meta.expires_at {
        headers.insert(STREAM_EXPIRES_AT, header_value(expires_at));
    }
    if meta.closed {
        headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    let closed = if meta.closed { ":c" } else { "" };
    headers.insert(
        ETAG,
        header_value(format!(
            "\"{}:-1:{}{closed}\"",
            meta.id,
            format_offset(meta.tail)
        )),
    );
    Ok(response)
}

/// The query of a read.
struct ReadQuery {
    /// `None`: the start; `Some(None)`: `now`.
    offset: Option<Option<i64>>,
    /// As given, for the `ETag`.
    offset_text: String,
    live: Live,
    cursor: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Live {
    No,
    LongPoll,
    Sse,
}

fn read_query(query: Option<&str>) -> Result<ReadQuery, DsError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let mut offsets = pairs.iter().filter(|(key, _)| key == "offset");
    let offset_text = offsets.next().map(|(_, value)| value.clone());
    if offsets.next().is_some() {
        return Err(DsError::BadRequest("give offset once".into()));
    }
    let offset = match &offset_text {
        None => None,
        Some(text) => Some(parse_offset(text)?),
    };
    let live = match pairs
        .iter()
        .find(|(key, _)| key == "live")
        .map(|(_, value)| value.as_str())
    {
        None => Live::No,
        Some("long-poll") => Live::LongPoll,
        Some("sse") => Live::Sse,
        Some(other) => {
            return Err(DsError::BadRequest(format!(
                "unknown live mode {other:?}: use long-poll or sse"
            )))
        }
    };
    if live != Live::No && offset.is_none() {
        return Err(DsError::BadRequest("a live read needs an offset".into()));
    }
    Ok(ReadQuery {
        offset,
        offset_text: offset_text.unwrap_or_else(|| "-1".to_owned()),
        live,
        cursor: pairs
            .into_iter()
            .find(|(key, _)| key == "cursor")
            .map(|(_, value)| value),
    })
}

/// The cursor of a live answer (Section 8.1): the number of 20-second intervals since
/// 2024-10-09, moved ahead by 1 to 180 intervals when the client's is not behind it, so
/// that it never goes back.
fn response_cursor(client: Option<&str>) -> String {
    const EPOCH_SECS: u64 = 1_728_432_000;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let current = now.as_secs().saturating_sub(EPOCH_SECS) / 20;
    match client.and_then(|cursor| cursor.parse::<u64>().ok()) {
        Some(client) if client >= current => {
            let jitter = 1 + u64::from(now.subsec_nanos()) % 180;
            (client + jitter).to_string()
        }
        _ => current.to_string(),
    }
}

/// The body of messages read, as the stream's type frames them.
fn body_of(json: bool, messages: &[Vec<u8>]) -> Vec<u8> {
    if !json {
        return messages.concat();
    }
    let mut body = Vec::with_capacity(messages.iter().map(Vec::len).sum::<usize>() + 2);
    body.push(b'[');
    for (index, message) in messages.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(message);
    }
    body.push(b']');
    body
}

async fn read(
    server: &EventBusServer,
    target: &Target,
    parts: &axum::http::request::Parts,
) -> Result<Response, DsError> {
    let query = read_query(parts.uri.query())?;
    let max_bytes = server.limits().max_page_bytes;
    let start = query.offset.flatten();
    let now = matches!(query.offset, Some(None));
    if query.live == Live::Sse {
        return sse(server, target, start, query.cursor).await;
    }
    let mut result = target
        .store
        .read(
            &target.tenant,
            &target.path,
            if now { None } else { Some(start.unwrap_or(0)) },
            max_bytes,
        )
        .await?;
    if now && query.live == Live::No {
        let mut response = (
            StatusCode::OK,
            if result.meta.is_json() { "[]" } else { "" },
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, header_value(&result.meta.content_type));
        headers.insert(STREAM_NEXT_OFFSET, header_value(format_offset(result.next)));
        headers.insert(STREAM_UP_TO_DATE, HeaderValue::from_static("true"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if result.meta.closed {
            headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
        }
        return Ok(response);
    }
    if query.live == Live::LongPoll && result.messages.is_empty() {
        let from = result.next;
        if !result.meta.closed {
            let permit = match server
                .inner
                .long_polls
                .try_acquire(Some(target.tenant.as_str()))
            {
                Ok(permit) => permit,
                Err(refusal) => return Ok(overloaded(refusal.reason())),
            };
            let deadline = Instant::now() + LONG_POLL_TIMEOUT.min(server.limits().max_wait);
            let mut changes = target.store.subscribe();
            loop {
                if !wait(server, &target.store, &mut changes, deadline).await {
                    break;
                }
                result = target
                    .store
                    .read(&target.tenant, &target.path, Some(from), max_bytes)
                    .await?;
                if !result.messages.is_empty() || result.meta.closed {
                    break;
                }
            }
            drop(permit);
        }
        if result.messages.is_empty() {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let headers = response.headers_mut();
            headers.insert(STREAM_NEXT_OFFSET, header_value(format_offset(from)));
            headers.insert(STREAM_UP_TO_DATE, HeaderValue::from_static("true"));
            headers.insert(
                STREAM_CURSOR,
                header_value(response_cursor(query.cursor.as_deref())),
            );
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if result.meta.closed && result.up_to_date {
                headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
            }
            return Ok(response);
        }
    }
    let closed = result.meta.closed && result.up_to_date;
    let etag = format!(
        "\"{}:{}:{}{}\"",
        result.meta.id,
        query.offset_text,
        format_offset(result.next),
        if closed { ":c" } else { "" }
    );
    if header(&parts.headers, IF_NONE_MATCH.as_str()) == Some(etag.as_str()) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(ETAG, header_value(etag));
        return Ok(response);
    }
    Ok(data_response(
        target,
        &result,
        etag,
        query.live,
        query.cursor.as_deref(),
    ))
}

fn data_response(
    target: &Target,
    result: &ReadResult,
    etag: String,
    live: Live,
    cursor: Option<&str>,
) -> Response {
    let mut response = (
        StatusCode::OK,
        body_of(result.meta.is_json(), &result.messages),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, header_value(&result.meta.content_type));
    headers.insert(STREAM_NEXT_OFFSET, header_value(format_offset(result.next)));
    if result.up_to_date {
        headers.insert(STREAM_UP_TO_DATE, HeaderValue::from_static("true"));
        if result.meta.closed {
            headers.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
        }
    }
    if live == Live::LongPoll {
        headers.insert(STREAM_CURSOR, header_value(response_cursor(cursor)));
    }
    headers.insert(ETAG, header_value(etag));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(if target.private {
            "private, max-age=60, stale-while-revalidate=300"
        } else {
            "public, max-age=60, stale-while-revalidate=300"
        }),
    );
    response
}

fn overloaded(reason: &'static str) -> Response {
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, reason);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Waits for a write (of this instance, or, on a shared database, maybe of another:
/// then it looks again every [`SHARED_POLL`]). `false` at the deadline or at shutdown.
async fn wait(
    server: &EventBusServer,
    store: &DurableStore,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
) -> bool {
    let until = if store.shared() {
        deadline.min(Instant::now() + SHARED_POLL)
    } else {
        deadline
    };
    tokio::select! {
        changed = changes.changed() => changed.is_ok(),
        () = tokio::time::sleep_until(until) => Instant::now() < deadline,
        () = server.inner.shutdown.cancelled() => false,
    }
}

/// `data:` lines for a payload: every line break (CR, LF or CRLF) starts a new line, so
/// a payload cannot forge events.
fn sse_data(payload: &str) -> String {
    let mut out = String::with_capacity(payload.len() + 16);
    for line in payload
        .split("\r\n")
        .flat_map(|part| part.split(['\r', '\n']))
    {
        out.push_str("data:");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * index)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `live=sse`: data events, each followed by a control event, until the stream closes,
/// the client leaves, the server shuts down, or [`SSE_DURATION`] passes (or the bearer
/// token expires).
async fn sse(
    server: &EventBusServer,
    target: &Target,
    start: Option<i64>,
    cursor: Option<String>,
) -> Result<Response, DsError> {
    // The first read checks that the stream exists, before the answer starts.
    let first = target
        .store
        .read(
            &target.tenant,
            &target.path,
            start,
            server.limits().max_page_bytes,
        )
        .await?;
    let permit = match server
        .inner
        .long_polls
        .try_acquire(Some(target.tenant.as_str()))
    {
        Ok(permit) => permit,
        Err(refusal) => return Ok(overloaded(refusal.reason())),
    };
    let content_type = media_type(&first.meta.content_type);
    let textual = content_type.starts_with("text/") || is_json(&content_type);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    let server_task = server.clone();
    let store = target.store.clone();
    let (tenant, path) = (target.tenant.clone(), target.path.clone());
    let json = first.meta.is_json();
    let deadline = sse_deadline(target.token_expires_at);
    tokio::spawn(async move {
        let _permit = permit;
        let keep_alive = LONG_POLL_TIMEOUT.min(server_task.limits().max_wait);
        let mut changes = store.subscribe();
        let mut result = first;
        loop {
            // Each data event is followed by its control event, whose offset is the one
            // after that message; only the last can say up to date or closed.
            let mut out = String::new();
            let count = i64::try_from(result.messages.len()).unwrap_or(i64::MAX);
            let first_offset = result.next - count;
            let offset = result.next;
            let closed = result.meta.closed && result.up_to_date;
            let control = |after: i64, last: bool| {
                let mut control = serde_json::json!({"streamNextOffset": format_offset(after)});
                if last && closed {
                    control["streamClosed"] = true.into();
                } else {
                    control["streamCursor"] = response_cursor(cursor.as_deref()).into();
                    if last && result.up_to_date {
                        control["upToDate"] = true.into();
                    }
                }
                format!("event: control\n{}", sse_data(&control.to_string()))
            };
            for (index, message) in result.messages.iter().enumerate() {
                let payload = if !textual {
                    base64(message)
                } else if json {
                    String::from_utf8_lossy(&body_of(true, std::slice::from_ref(message)))
                        .into_owned()
                } else {
                    String::from_utf8_lossy(message).into_owned()
                };
                out.push_str("event: data\n");
                out.push_str(&sse_data(&payload));
                let after = first_offset + i64::try_from(index).unwrap_or(0) + 1;
                out.push_str(&control(after, after == offset));
            }
            if result.messages.is_empty() {
                out.push_str(&control(offset, true));
            }
            if sender.send(Bytes::from(out)).await.is_err() || closed {
                return;
            }
            let max_bytes = server_task.limits().max_page_bytes;
            if !result.up_to_date {
                // More is stored: send it at once.
                match store.read(&tenant, &path, Some(offset), max_bytes).await {
                    Ok(next) => result = next,
                    Err(_) => return,
                }
                continue;
            }
            // At the tail: wait for new messages or the closure; a keep-alive control
            // event when nothing came for a while.
            let quiet_until = (Instant::now() + keep_alive).min(deadline);
            loop {
                let woken = wait(&server_task, &store, &mut changes, quiet_until).await;
                if !woken
                    && (Instant::now() >= deadline || server_task.inner.shutdown.is_cancelled())
                {
                    return;
                }
                match store.read(&tenant, &path, Some(offset), max_bytes).await {
                    Ok(next) => {
                        let news = !next.messages.is_empty() || next.meta.closed;
                        result = next;
                        if news || !woken {
                            break;
                        }
                    }
                    Err(_) => return,
                }
                if sender.is_closed() {
                    return;
                }
            }
        }
    });
    Ok(sse_response(receiver, textual))
}

/// The `200` of an SSE read whose events a task sends on `receiver`.
fn sse_response(receiver: tokio::sync::mpsc::Receiver<Bytes>, textual: bool) -> Response {
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), receiver))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    if !textual {
        headers.insert(
            HeaderName::from_static("stream-sse-data-encoding"),
            HeaderValue::from_static("base64"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_data_splits_every_kind_of_line_break() {
        assert_eq!(sse_data("a"), "data:a\n\n");
        assert_eq!(
            sse_data("a\nb\r\nc\rd"),
            "data:a\ndata:b\ndata:c\ndata:d\n\n"
        );
        assert_eq!(
            sse_data("x\n\nevent: fake"),
            "data:x\ndata:\ndata:event: fake\n\n",
            "a payload cannot start an event of its own"
        );
    }

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0, 255, 254, 253]), "AP/+/Q==");
    }

    #[test]
    fn cursors_never_go_back() {
        let current: u64 = response_cursor(None).parse().unwrap();
        assert_eq!(
            response_cursor(Some("1")),
            current.to_string(),
            "an old cursor"
        );
        for client in [current, current + 500] {
            let next: u64 = response_cursor(Some(&client.to_string())).parse().unwrap();
            assert!(next > client, "{next} after {client}");
        }
    }

    #[test]
    fn strict_integers_refuse_signs_zeros_and_decimals() {
        assert_eq!(strict_integer("0"), Some(0));
        assert_eq!(strict_integer("3600"), Some(3600));
        for bad in ["", "03600", "+3600", "3600.0", "3.6e3", "-1", " 1"] {
            assert_eq!(strict_integer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fork_sources_are_paths_or_urls() {
        assert_eq!(source_path("/v1/stream/a/b").as_deref(), Some("a/b"));
        assert_eq!(
            source_path("http://host:1/v1/stream/a").as_deref(),
            Some("a")
        );
        assert_eq!(source_path("/v1/stream/"), None);
    }
}
