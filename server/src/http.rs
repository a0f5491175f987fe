//! The HTTP edge: `GET /events`, `POST /events` and `GET /healthz` (docs/PROTOCOL.md).

use std::any::Any;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, RawQuery, Request, State,
};
use axum::http::header::{
    ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{request::Parts, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use distributed_events_shared::wire::{codes, ErrorBody, CURSOR_HEADER, REPLAYED_HEADER};
use distributed_events_shared::{EventsQuery, InvalidEvent, Receipt, StoredEvent};
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use uuid::Uuid;

use crate::auth::Principal;
use crate::caching;
use crate::reads::{EventsPage, ReadError};
use crate::store::StoreError;
use crate::telemetry;
use crate::{EventBusServer, PublishError};

/// The header an `EventSource` reconnects with: the `id` of the last event it received.
const LAST_EVENT_ID: &str = "last-event-id";

/// Limits of the HTTP endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest `POST /events` body, in bytes (default 1 MiB; larger answers `413`).
    pub max_body_bytes: usize,
    /// Most events in one answer; larger `limit`s are lowered to it (default 1000).
    pub max_page: usize,
    /// Most bytes of events in one answer, each counted by
    /// [`event_size`](crate::store::event_size), about its JSON (default 1 MiB). An
    /// answer carries at least one event all the same, so a reader always progresses.
    pub max_page_bytes: usize,
    /// Most memory the tail of recent events, from which live polls are answered, may
    /// hold, counting each event and its JSON (default 32 MiB).
    pub tail_bytes: usize,
    /// Longest long-poll; larger `wait`s are lowered to it (default 30 s).
    pub max_wait: Duration,
    /// Most long-polls waiting at once; past it a poll that would wait answers `503`
    /// with `Retry-After` (default 10,000).
    pub max_long_polls: usize,
    /// Most long-polls of one tenant waiting at once (anonymous callers count as one
    /// tenant); past it that tenant's polls answer `503` with `Retry-After` while other
    /// tenants still wait. `None` (the default) is a quarter of
    /// [`max_long_polls`](Self::max_long_polls). Applies only with an authenticator.
    pub max_long_polls_per_tenant: Option<usize>,
    /// Longest time a request may take beyond the longest `wait` ([`max_wait`](Self::max_wait))
    /// before it is answered `503` (default 30 s, so 60 s in all): the timeout of a
    /// request is `max_wait` plus this.
    pub timeout_beyond_wait: Duration,
    /// Longest time a `POST /events` body may take to arrive; past it the answer is `408`
    /// (default 15 s).
    pub body_read_timeout: Duration,
    /// Longest life of a stream (`Accept: text/event-stream`), and never past the
    /// credentials' expiry; then the server ends it and the client reconnects with
    /// `Last-Event-ID` (default 300 s), so that proxies and token expiry behave.
    pub max_stream_duration: Duration,
    /// How long a stream may write nothing before it sends a keep-alive comment
    /// (default 15 s).
    pub stream_keep_alive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_page: 1000,
            max_page_bytes: 1024 * 1024,
            tail_bytes: 32 * 1024 * 1024,
            max_wait: Duration::from_secs(30),
            max_long_polls: 10_000,
            max_long_polls_per_tenant: None,
            timeout_beyond_wait: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(15),
            max_stream_duration: Duration::from_secs(300),
            stream_keep_alive: Duration::from_secs(15),
        }
    }
}

impl Limits {
    /// The share of [`max_long_polls`](Self::max_long_polls) one tenant may hold.
    pub(crate) fn long_polls_per_tenant(&self) -> usize {
        self.max_long_polls_per_tenant
            .unwrap_or((self.max_long_polls / 4).max(1))
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
    /// The path, which the answer names.
    NotFound(String),
    MethodNotAllowed,
    Internal,
}

impl AppError {
    /// A store failure: the detail goes to the log, the caller gets a plain `503`; but an
    /// event the store cannot hold is the caller's to change (`400`, saying why).
    pub(crate) fn store(error: StoreError) -> Self {
        if let StoreError::Unstorable(message) = error {
            return Self::BadRequest(message);
        }
        tracing::error!(%error, "event store failed");
        metrics::counter!(telemetry::STORE_ERRORS, "during" => "request").increment(1);
        Self::Unavailable
    }
}

impl From<InvalidEvent> for AppError {
    fn from(error: InvalidEvent) -> Self {
        Self::BadRequest(error.to_string())
    }
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        Self::store(error)
    }
}

impl From<ReadError> for AppError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Store(error) => Self::store(error),
            ReadError::Query(message) => Self::BadRequest(message.into()),
            ReadError::CursorExpired { resume_after } => Self::CursorExpired { resume_after },
            ReadError::CursorAhead { resume_after } => Self::CursorAhead { resume_after },
            ReadError::Overloaded(reason) => Self::Overloaded {
                retry_after: Duration::from_secs(1),
                reason,
            },
        }
    }
}

impl From<PublishError> for AppError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Store(error) => Self::store(error),
            PublishError::IdConflict(id) => Self::IdConflict(id),
            PublishError::Invalid(_) | PublishError::Encode(_) | PublishError::WrongType { .. } => {
                Self::BadRequest(error.to_string())
            }
        }
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
            Self::NotFound(path) => (
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                format!(
                    "no such path {path:?}: the API is `GET /events`, `POST /events`, `GET /healthz` and `GET /openapi.json` \
                     at the server's root; check that the client's server URL has no extra path"
                ),
                None,
            ),
            // The router adds the `Allow` header with the methods the path takes.
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                codes::METHOD_NOT_ALLOWED,
                "this path does not take this method; the `Allow` header lists the ones it takes"
                    .to_owned(),
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
    let max_body = server.limits().max_body_bytes;
    Router::new()
        .route("/events", get(get_events).post(post_event))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .merge(crate::durable::router())
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(server.clone(), deadline))
        .layer(middleware::from_fn(record))
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

/// The JSON `404 not_found` for paths the API does not have, whatever the method: the
/// binary's fallback, also for what its static folder does not have. An app that mounts
/// [`EventBusServer::router`] can use it as its own fallback.
pub async fn not_found(uri: Uri) -> Response {
    AppError::NotFound(uri.path().to_owned()).into_response()
}

/// The JSON `405 method_not_allowed` with `Allow: <allow>`, for a path that exists but
/// does not take the request's method (a static file that gets a POST, say).
pub fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = AppError::MethodNotAllowed.into_response();
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Counts each request and its time to answer, by route (not path: the label's values
/// stay few) and status.
async fn record(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |path| path.as_str().to_owned());
    // Any token is a method in HTTP; only the ones the API knows become label values.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let response = next.run(request).await;
    let status = response.status().as_str().to_owned();
    metrics::counter!(telemetry::HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(telemetry::HTTP_DURATION, "method" => method, "route" => route)
        .record(started.elapsed());
    response
}

/// Answers `503` when a request outlives the longest `wait` by more than the request
/// timeout, as when the store hangs.
async fn deadline(State(server): State<EventBusServer>, request: Request, next: Next) -> Response {
    let limits = server.limits();
    match tokio::time::timeout(
        limits.max_wait + limits.timeout_beyond_wait,
        next.run(request),
    )
    .await
    {
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
        // Whatever headers an allowed origin's page asks for: the clients' `headers` option
        // (a tenant or API-key header a gateway in between reads) must not fail every
        // request in the browser. The origin list is the guard, not the header list.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            HeaderName::from_static(CURSOR_HEADER),
            HeaderName::from_static(REPLAYED_HEADER),
            axum::http::header::RETRY_AFTER,
            ETAG,
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
        let Some(authenticator) = server.authenticator() else {
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

/// The error answers that `/events` may give to any request.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only documents: `AppError` builds these answers
enum CommonErrors {
    /// `unauthorized`: credentials are missing or invalid.
    #[response(status = 401, headers(("WWW-Authenticate" = String, description = "The challenge, such as `Bearer`.")))]
    Unauthorized(ErrorBody),
    /// `internal`: a server fault; the detail is in the server's log.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `unavailable` (the store cannot be reached) or `overloaded` (at a limit or shutting
    /// down); retry later.
    #[response(status = 503, headers(("Retry-After" = u64, description = "With `overloaded`: seconds to wait before retrying.")))]
    Unavailable(ErrorBody),
}

/// The events after a cursor or since a time; with `Accept: text/event-stream`, a stream
/// of them (Server-Sent Events): the catch-up, then each event as it commits.
#[utoipa::path(
    get,
    path = "/events",
    params(
        EventsQuery,
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a page the caller holds: answered `304` (no body) while the page is the same."),
        ("Last-Event-ID" = Option<u64>, Header, description = "With `Accept: text/event-stream`: resume the stream after this position (wins over `after` and `since`; an `EventSource` sends it when it reconnects)."),
    ),
    responses(
        (status = 200, description = "The events, in ascending position order; `[]` when none came within `wait`. With `Accept: text/event-stream`: a stream, `: ok` first, then one message per event (`id:` its position, `data:` its record as in a page), `id:` alone when the cursor moves past events the caller may not see, `: keep-alive` comments, and `event: cursor_expired` before the end when retention overtook the stream (docs/PROTOCOL.md). The server ends a stream after a while; reconnect with `Last-Event-ID`.",
            content(
                (Vec<StoredEvent> = "application/json"),
                (String = "text/event-stream"),
            ),
            headers(
                ("X-Events-Cursor" = u64, description = "Not on a stream. The `after` of the next request: at least the last event's position, further when the server skipped events the caller may not see."),
                ("ETag" = String, description = "Not on a stream. A strong validator of this answer (its body and cursor); send it back in `If-None-Match` to get `304` while the page is the same."),
                ("Cache-Control" = String, description = "`public, max-age=31536000, immutable` (`private, …` with authentication) for a full page, which never changes for its query; `no-store` for every other answer, streams included."),
                ("Vary" = String, description = "`Authorization, Accept`."),
            )),
        (status = 304, description = "`If-None-Match` named this page's `ETag`: the caller has it already. No body; the same `ETag`, `Cache-Control`, `Vary` and `X-Events-Cursor` as the `200`."),
        (status = 400, description = "`bad_request`: a parameter (or `Last-Event-ID`) is missing or malformed, or `after` and `since` came together.", body = ErrorBody),
        CommonErrors,
        (status = 410, description = "`cursor_expired` (retention deleted events after `after`) or `cursor_ahead` (`after` is past every position ever assigned): resume with `after` = `resumeAfter`.", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
async fn get_events(
    State(server): State<EventBusServer>,
    caller: Result<Caller, AppError>,
    request: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let answer = async {
        // Credentials first: a `304` tells that the caller's page is current.
        let Caller(principal) = caller?;
        let query = EventsQuery::from_query_string(query.as_deref().unwrap_or_default())
            .map_err(AppError::BadRequest)?;
        if accepts_event_stream(&request) {
            let last_event_id = last_event_id(&request)?;
            let stream = server.open_stream(principal, query, last_event_id).await?;
            return Ok(event_stream_response(stream));
        }
        let page = server.read_events(&principal, &query).await?;
        Ok::<_, AppError>(page_response(
            page,
            server.authenticator().is_some(),
            &request,
        ))
    };
    let mut response = answer.await.unwrap_or_else(IntoResponse::into_response);
    caching::set_defaults(response.headers_mut());
    response
}

/// A page's answer: its JSON array with the cursor and the caching headers, or `304`
/// when the request's `If-None-Match` names it.
fn page_response(page: EventsPage, authenticated: bool, request: &HeaderMap) -> Response {
    let EventsPage {
        events,
        cursor,
        immutable,
    } = page;
    let etag = caching::etag(events.iter().map(|event| &event.json.digest), cursor);
    let mut response = if caching::not_modified(request, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = json_array(events.into_iter().map(|event| event.json.bytes));
        let size = body.iter().map(Bytes::len).sum::<usize>();
        let body = Body::from_stream(futures::stream::iter(
            body.into_iter().map(Ok::<_, Infallible>),
        ));
        (
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (CONTENT_LENGTH, HeaderValue::from(size)),
            ],
            body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static(CURSOR_HEADER),
        HeaderValue::from(cursor),
    );
    headers.insert(ETAG, etag);
    headers.insert(
        CACHE_CONTROL,
        caching::cache_control(immutable, authenticated),
    );
    response
}

/// Whether the request asks for Server-Sent Events (`Accept: text/event-stream`, alone
/// or among other types).
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            range
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("text/event-stream")
        })
}

/// The `Last-Event-ID` a reconnecting stream resumes after, if sent.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, AppError> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            AppError::BadRequest(
                "the Last-Event-ID header must be a whole number: the `id` of the last event the stream delivered".to_owned(),
            )
        })
}

/// A stream's `200`: its chunks as they come, never cached nor buffered by a proxy.
fn event_stream_response(stream: impl futures::Stream<Item = Bytes> + Send + 'static) -> Response {
    use futures::StreamExt;
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(stream.map(Ok::<_, Infallible>)),
    )
        .into_response()
}

/// A JSON array of already serialized events, as chunks: sent as the events' own
/// buffers, not copied into one, and each freed once written.
fn json_array(events: impl ExactSizeIterator<Item = Bytes>) -> Vec<Bytes> {
    let mut chunks = Vec::with_capacity(2 * events.len() + 1);
    chunks.push(Bytes::from_static(b"["));
    for (i, event) in events.enumerate() {
        if i > 0 {
            chunks.push(Bytes::from_static(b","));
        }
        chunks.push(event);
    }
    chunks.push(Bytes::from_static(b"]"));
    chunks
}

/// Stores one event; posting the same event (same id and content) again is a no-op.
#[utoipa::path(
    post,
    path = "/events",
    request_body(content = StoredEvent, content_type = "application/json",
        description = "One event record; `position` is ignored."),
    responses(
        (status = 201, description = "Stored and durable; or, with `Idempotent-Replayed: true`, stored before by an earlier post of this event.",
            body = Receipt,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer replays an earlier post of the same event."))),
        (status = 400, description = "`bad_request`: invalid JSON, a missing or mistyped field, or an event the server refuses; `error` says which field and why.", body = ErrorBody),
        CommonErrors,
        (status = 409, description = "`id_conflict`: the id was used before for a different event.", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within the body-read timeout (15 s by default).", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is over the server's limit (1 MiB by default).", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json`.", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
async fn post_event(
    State(server): State<EventBusServer>,
    Caller(principal): Caller,
    request: Request,
) -> Result<Response, AppError> {
    let json = is_json(request.headers());
    let limits = server.limits();
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
    // Checked once the body is read: answering before it would close the connection on
    // unread bytes, and the reset can reach the client before the answer.
    if !json {
        return Err(AppError::UnsupportedMediaType);
    }
    let event = StoredEvent::from_json(&body)?;
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

/// The answer of `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok`, or `read_only` when the store does not take writes.
    status: &'static str,
    /// Whether the store takes writes.
    writable: bool,
    /// The highest position assigned: only for a caller who may read (with
    /// authentication, one with a valid token).
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<u64>,
}

/// Whether the server and its store answer. The head only for a caller who may read:
/// with authentication, one with a valid token, since the head of the shared sequence
/// tells how much every tenant has written (docs/PROTOCOL.md).
#[utoipa::path(
    get,
    path = "/healthz",
    responses(
        (status = 200, description = "The store answers.", body = Health),
        (status = 500, description = "`internal`: a server fault; the detail is in the server's log.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store cannot be reached.", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
async fn healthz(
    State(server): State<EventBusServer>,
    caller: Result<Caller, AppError>,
) -> Result<Response, AppError> {
    let store = server.store();
    let head = store.head().await?;
    let writable = store.accepts_writes().await?;
    let status = if writable { "ok" } else { "read_only" };
    let head = caller.is_ok().then_some(head);
    Ok(Json(Health {
        status,
        writable,
        head,
    })
    .into_response())
}

/// This API's OpenAPI document (docs/openapi.json).
async fn openapi() -> Response {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        crate::openapi::document(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_stream_is_asked_for_by_its_media_type_among_others() {
        for value in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            "application/json, text/event-stream;q=0.5",
        ] {
            assert!(accepts_event_stream(&accept(value)), "{value}");
        }
        for value in ["application/json", "*/*", "text/*", "text/event-streams"] {
            assert!(!accepts_event_stream(&accept(value)), "{value}");
        }
        assert!(!accepts_event_stream(&HeaderMap::new()));
    }

    #[test]
    fn last_event_id_is_a_whole_number_when_sent() {
        let mut headers = HeaderMap::new();
        assert_eq!(last_event_id(&headers).unwrap(), None);
        headers.insert(LAST_EVENT_ID, HeaderValue::from_static("42"));
        assert_eq!(last_event_id(&headers).unwrap(), Some(42));
        for bad in ["", "4.2", "-1", "x", "18446744073709551616"] {
            headers.insert(LAST_EVENT_ID, HeaderValue::from_static(bad));
            assert!(last_event_id(&headers).is_err(), "{bad:?}");
        }
    }
}
