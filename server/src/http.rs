//! The HTTP edge: `GET /events`, `POST /events` and `GET /healthz` (docs/PROTOCOL.md).

use std::any::Any;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{request::Parts, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use distributed_events_shared::wire::{codes, ErrorBody, CURSOR_HEADER, REPLAYED_HEADER};
use distributed_events_shared::StoredEvent;
use serde::Deserialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

use crate::auth::{is_visible, Principal};
use crate::store::StoreError;
use crate::tail::json_of;
use crate::EventBusServer;

/// Limits of the HTTP endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest `POST /events` body, in bytes (default 1 MiB; larger answers `413`).
    pub max_body_bytes: usize,
    /// Most events in one answer; larger `limit`s are lowered to it (default 1000).
    pub max_page: usize,
    /// Longest long-poll; larger `wait`s are lowered to it (default 30 s).
    pub max_wait: Duration,
    /// Most long-polls waiting at once; past it a poll that would wait answers `503`
    /// with `Retry-After` (default 10,000).
    pub max_long_polls: usize,
    /// Longest time a request may take beyond the longest `wait` ([`max_wait`](Self::max_wait))
    /// before it is answered `503` (default 30 s, so 60 s in all).
    pub request_timeout: Duration,
    /// Longest time a `POST /events` body may take to arrive; past it the answer is `408`
    /// (default 15 s).
    pub body_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_page: 1000,
            max_wait: Duration::from_secs(30),
            max_long_polls: 10_000,
            request_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(15),
        }
    }
}

/// An error answer: its status and `{"error", "code"}` body.
#[derive(Debug)]
pub(crate) enum AppError {
    BadRequest(String),
    Unauthorized {
        challenge: String,
        message: String,
    },
    IdConflict(Uuid),
    CursorExpired {
        resume_after: u64,
    },
    CursorAhead {
        resume_after: u64,
    },
    PayloadTooLarge(usize),
    BodyTimeout(Duration),
    UnsupportedMediaType,
    Unavailable,
    Overloaded {
        retry_after: Duration,
        reason: &'static str,
    },
    NotFound,
    MethodNotAllowed,
    Internal,
}

impl AppError {
    /// A store failure: the detail goes to the log, the caller gets a plain `503`.
    pub(crate) fn store(error: StoreError) -> Self {
        tracing::error!(%error, "event store failed");
        Self::Unavailable
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, error, resume_after) = match self {
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message, None),
            Self::Unauthorized { challenge, message } => {
                let body = ErrorBody {
                    error: message,
                    code: codes::UNAUTHORIZED.into(),
                    resume_after: None,
                };
                let challenge = HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer"));
                return (StatusCode::UNAUTHORIZED, [(WWW_AUTHENTICATE, challenge)], Json(body)).into_response();
            }
            Self::IdConflict(id) => (
                StatusCode::CONFLICT,
                codes::ID_CONFLICT,
                format!("event id {id} was already used for a different event; give the event a new id"),
                None,
            ),
            Self::CursorExpired { resume_after } => (
                StatusCode::GONE,
                codes::CURSOR_EXPIRED,
                format!("events after this cursor were deleted by retention; resume with after={resume_after}"),
                Some(resume_after),
            ),
            Self::CursorAhead { resume_after } => (
                StatusCode::GONE,
                codes::CURSOR_AHEAD,
                format!("this cursor is past every stored event (was the store replaced?); resume with after={resume_after}"),
                Some(resume_after),
            ),
            Self::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                format!("the body is larger than the server's limit of {limit} bytes"),
                None,
            ),
            Self::BodyTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                codes::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within the server's {} s; send it again",
                    limit.as_secs_f64()
                ),
                None,
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                codes::UNSUPPORTED_MEDIA_TYPE,
                "send the event as JSON with `Content-Type: application/json`".to_owned(),
                None,
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                codes::UNAVAILABLE,
                "the event store is unavailable; retry later".to_owned(),
                None,
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                "no such resource; the API is `GET /events`, `POST /events` and `GET /healthz`".to_owned(),
                None,
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                codes::METHOD_NOT_ALLOWED,
                "method not allowed here: `/events` takes GET and POST, `/healthz` GET".to_owned(),
                None,
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                "internal error; the server's log has the detail".to_owned(),
                None,
            ),
            Self::Overloaded { retry_after, reason } => {
                let body = ErrorBody {
                    error: format!("{reason}; retry after {} s", retry_after.as_secs()),
                    code: codes::OVERLOADED.into(),
                    resume_after: None,
                };
                let seconds = HeaderValue::from(retry_after.as_secs());
                return (StatusCode::SERVICE_UNAVAILABLE, [(RETRY_AFTER, seconds)], Json(body)).into_response();
            }
        };
        let body = ErrorBody {
            error,
            code: code.into(),
            resume_after,
        };
        (status, Json(body)).into_response()
    }
}

pub(crate) fn router(server: EventBusServer) -> Router {
    let max_body = server.inner.limits.max_body_bytes;
    Router::new()
        .route("/events", get(get_events).post(post_event))
        .route("/healthz", get(healthz))
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(server.clone(), deadline))
        // A panic (in an app's authenticator, say) answers 500 rather than dropping the
        // connection; the detail goes to the log.
        .layer(CatchPanicLayer::custom(|panic: Box<dyn Any + Send>| {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%detail, "a request handler panicked");
            AppError::Internal.into_response()
        }))
        .with_state(server)
}

/// The JSON `404` for paths the API does not have (and, for methods other than GET and
/// HEAD, the JSON `405`): the binary's fallback, also for what its static folder does not
/// have. An app that mounts [`EventBusServer::router`] can use it as its own fallback.
pub async fn not_found(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        AppError::NotFound.into_response()
    } else {
        AppError::MethodNotAllowed.into_response()
    }
}

/// Answers `503` when a request outlives the longest `wait` by more than the request
/// timeout, as when the store hangs.
async fn deadline(State(server): State<EventBusServer>, request: Request, next: Next) -> Response {
    let limits = &server.inner.limits;
    match tokio::time::timeout(limits.max_wait + limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("request timed out");
            AppError::Overloaded {
                retry_after: Duration::from_secs(1),
                reason: "the request timed out",
            }
            .into_response()
        }
    }
}

/// An origin for [`cors_layer`] that is not `*` nor `scheme://host[:port]`.
#[derive(Debug, thiserror::Error)]
#[error("invalid CORS origin {0:?}: use `*` or an origin such as `https://app.example.com` or `http://localhost:5173` (no path, no trailing slash)")]
pub struct InvalidOrigin(String);

/// A CORS layer for browser clients on `origins` (`*` allows any origin). Refuses a
/// value that no browser would ever send as its `Origin`, which would silently match
/// nothing.
pub fn cors_layer(origins: &[String]) -> Result<CorsLayer, InvalidOrigin> {
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| {
                let (scheme, host) = origin.split_once("://").unwrap_or_default();
                let well_formed = matches!(scheme, "http" | "https")
                    && !host.is_empty()
                    && !host.contains(['/', '?', '#', ' ']);
                well_formed
                    .then(|| HeaderValue::from_str(origin).ok())
                    .flatten()
                    .ok_or_else(|| InvalidOrigin(origin.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([CONTENT_TYPE, axum::http::header::AUTHORIZATION])
        .expose_headers([
            HeaderName::from_static(CURSOR_HEADER),
            HeaderName::from_static(REPLAYED_HEADER),
            axum::http::header::RETRY_AFTER,
        ]))
}

/// The authenticated caller of a request.
struct Caller(Principal);

impl FromRequestParts<EventBusServer> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        server: &EventBusServer,
    ) -> Result<Self, AppError> {
        let Some(authenticator) = &server.inner.authenticator else {
            return Ok(Self(Principal::default()));
        };
        authenticator
            .authenticate(parts)
            .await
            .map(Self)
            .map_err(|rejection| AppError::Unauthorized {
                challenge: rejection.challenge,
                message: rejection.message,
            })
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
}

async fn get_events(
    State(server): State<EventBusServer>,
    Caller(principal): Caller,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|rejection| AppError::BadRequest(rejection.body_text()))?;
    let limits = &server.inner.limits;
    let limit = parse_limit(query.limit.as_deref(), limits.max_page)?;
    match (query.after.as_deref(), query.since.as_deref()) {
        (Some(_), Some(_)) => Err(AppError::BadRequest(
            "pass either `after` (a position) or `since` (a time), not both".into(),
        )),
        (None, None) => Err(AppError::BadRequest(
            "`since` is missing: pass `after=<position>` (0 for the start) or `since=<RFC 3339 time>`".into(),
        )),
        (None, Some(since)) => read_since(&server, &principal, since, limit).await,
        (Some(after), None) => {
            let after = after.parse::<u64>().map_err(|_| {
                AppError::BadRequest(format!("`after` must be a whole number of 0 or more, got {after:?}"))
            })?;
            let wait = parse_wait(query.wait.as_deref(), limits.max_wait)?;
            read_after(&server, &principal, after, limit, wait).await
        }
    }
}

fn parse_limit(limit: Option<&str>, max: usize) -> Result<usize, AppError> {
    let Some(limit) = limit else { return Ok(max) };
    match limit.parse::<u64>() {
        Ok(0) | Err(_) => Err(AppError::BadRequest(format!(
            "`limit` must be a whole number from 1 to {max}, got {limit:?}"
        ))),
        Ok(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX).min(max)),
    }
}

fn parse_wait(wait: Option<&str>, max: Duration) -> Result<Duration, AppError> {
    let Some(wait) = wait else {
        return Ok(Duration::ZERO);
    };
    match wait.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Ok(Duration::from_secs_f64(seconds.min(max.as_secs_f64())))
        }
        _ => Err(AppError::BadRequest(format!(
            "`wait` must be a number of seconds from 0 to {}, got {wait:?}",
            max.as_secs_f64()
        ))),
    }
}

/// Cursor mode, with the long-poll: read; if nothing is visible, wait for the next
/// commit (not for a timer) and read again, until `wait` runs out or shutdown begins.
async fn read_after(
    server: &EventBusServer,
    principal: &Principal,
    after: u64,
    limit: usize,
    wait: Duration,
) -> Result<Response, AppError> {
    let store = &server.inner.store;
    let tail = &server.inner.tail;
    let tenant = principal.tenant_id.as_deref();
    let filter = server.inner.filter.as_deref();
    let visible = |event: &StoredEvent| is_visible(filter, event, principal);
    // Subscribe before the first read so that no commit between read and wait is missed.
    let mut end = tail.watch_end();
    let committed = store.watch_head();
    let deadline = tokio::time::Instant::now() + wait;
    let mut cursor = after;
    let mut checked_ahead = false;
    // Held while this request waits; released with the answer.
    let mut permit = None;
    loop {
        // The tail answers unless the cursor lies before it, or it has nothing yet for a
        // commit the store already acknowledged (read your own writes).
        let from_tail = tail
            .read(cursor, limit, tenant, &visible)
            .filter(|page| !page.events.is_empty() || page.cursor >= *committed.borrow());
        let events = match from_tail {
            Some(page) => {
                cursor = page.cursor;
                page.events
            }
            None => {
                let page = store
                    .read_after(cursor, limit, tenant, &visible)
                    .await
                    .map_err(AppError::store)?;
                // Checked after the read: a cleanup that ran before it (on any instance)
                // shows here, so a read that missed deleted events is never answered as
                // complete.
                let pruned_through = store.pruned_through().await.map_err(AppError::store)?;
                if cursor < pruned_through {
                    return Err(AppError::CursorExpired {
                        resume_after: pruned_through,
                    });
                }
                cursor = page.cursor;
                page.events.iter().map(json_of).collect()
            }
        };
        if events.is_empty() && !checked_ahead && cursor > *end.borrow() {
            // This process has not seen that position; ask the store whether anyone has.
            let stored_head = store.head().await.map_err(AppError::store)?;
            if cursor > stored_head {
                return Err(AppError::CursorAhead {
                    resume_after: stored_head,
                });
            }
            checked_ahead = true;
        }
        if !events.is_empty()
            || tokio::time::Instant::now() >= deadline
            || server.inner.shutdown.is_cancelled()
        {
            return Ok(events_response(&events, cursor));
        }
        if permit.is_none() {
            permit = Some(
                server
                    .inner
                    .long_polls
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| AppError::Overloaded {
                        retry_after: Duration::from_secs(1),
                        reason: "too many long-polls are waiting on this server",
                    })?,
            );
        }
        tokio::select! {
            changed = end.wait_for(|&end| end > cursor) => {
                if changed.is_err() {
                    return Ok(events_response(&[], cursor));
                }
            }
            () = tokio::time::sleep_until(deadline) => {}
            () = server.inner.shutdown.cancelled() => {}
        }
    }
}

/// Timestamp mode (the seed's API): events with `createdAt >= since`, from the first
/// such event on in position order, filtered before the limit as in cursor mode. The
/// cursor header works as in cursor mode, so a client can go on with `after=`. With no
/// such event it is the head as of before the read, never 0: a client that starts "from
/// now" must not replay history.
async fn read_since(
    server: &EventBusServer,
    principal: &Principal,
    since: &str,
    limit: usize,
) -> Result<Response, AppError> {
    let since = DateTime::parse_from_rfc3339(since)
        .map_err(|error| {
            AppError::BadRequest(format!(
                "`since` must be an RFC 3339 time such as 2024-12-04T10:00:00Z, got {since:?} ({error})"
            ))
        })?
        .with_timezone(&Utc);
    let store = &server.inner.store;
    let tenant = principal.tenant_id.as_deref();
    let filter = server.inner.filter.as_deref();
    // Read before the search: whatever commits after it lies past it.
    let head = store.head().await.map_err(AppError::store)?;
    let first = store
        .read_since(since, 1, tenant)
        .await
        .map_err(AppError::store)?
        .first()
        .and_then(|event| event.position);
    let Some(first) = first else {
        return Ok(events_response(&[], head));
    };
    let visible =
        |event: &StoredEvent| event.created_at >= since && is_visible(filter, event, principal);
    let page = store
        .read_after(first.saturating_sub(1), limit, tenant, &visible)
        .await
        .map_err(AppError::store)?;
    let events: Vec<Bytes> = page.events.iter().map(json_of).collect();
    Ok(events_response(&events, page.cursor))
}

/// A JSON array of already serialized events, with the cursor header.
fn events_response(events: &[Bytes], cursor: u64) -> Response {
    let size = events.iter().map(Bytes::len).sum::<usize>() + events.len() + 2;
    let mut body = Vec::with_capacity(size);
    body.push(b'[');
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.push(b']');
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (
                HeaderName::from_static(CURSOR_HEADER),
                HeaderValue::from(cursor),
            ),
        ],
        body,
    )
        .into_response()
}

async fn post_event(
    State(server): State<EventBusServer>,
    Caller(principal): Caller,
    request: Request,
) -> Result<Response, AppError> {
    if !is_json(request.headers()) {
        return Err(AppError::UnsupportedMediaType);
    }
    let limits = &server.inner.limits;
    // Refused before the body is read, so that `Expect: 100-continue` gets no `100`.
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return Err(AppError::PayloadTooLarge(limits.max_body_bytes));
    }
    let body = tokio::time::timeout(limits.body_read_timeout, Bytes::from_request(request, &()))
        .await
        .map_err(|_| AppError::BodyTimeout(limits.body_read_timeout))?
        .map_err(|rejection: BytesRejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(limits.max_body_bytes),
            _ => AppError::BadRequest(rejection.body_text()),
        })?;
    let event: StoredEvent = serde_json::from_slice(&body)
        .map_err(|error| AppError::BadRequest(format!("invalid event: {error}")))?;
    let (receipt, replayed) = server.accept(event, &principal).await?;
    let mut response = (StatusCode::CREATED, Json(receipt)).into_response();
    if replayed {
        response.headers_mut().insert(
            HeaderName::from_static(REPLAYED_HEADER),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// `application/json` or any `application/*+json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn healthz(State(server): State<EventBusServer>) -> Result<Response, AppError> {
    let head = server.inner.store.head().await.map_err(AppError::store)?;
    Ok(Json(serde_json::json!({ "status": "ok", "head": head })).into_response())
}
