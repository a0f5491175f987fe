//! The JSON wire format, shared by the server, the clients and `docs/PROTOCOL.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Context entries of an event: who caused it and in which tenant, plus anything an app
/// wants its authorization filter to see.
pub type Context = BTreeMap<String, serde_json::Value>;

/// Context key whose string value becomes [`StoredEvent::user_id`].
pub const CONTEXT_USER_ID: &str = "userId";
/// Context key whose string value becomes [`StoredEvent::tenant_id`].
pub const CONTEXT_TENANT_ID: &str = "tenantId";
/// Context key whose string value becomes [`StoredEvent::session_id`].
pub const CONTEXT_SESSION_ID: &str = "sessionId";

/// Header on every `GET /events` answer: the `after` to poll with next. It can lie past
/// the last event returned when the server skipped events this caller may not see.
pub const CURSOR_HEADER: &str = "x-events-cursor";
/// Header on a `POST /events` answer that replays the result of an earlier post of the
/// same event id.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// An event as stored and sent over HTTP (the seed's `StoredEvent`, plus `position`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    /// Unique event id, chosen by whoever created the event; the idempotency key.
    pub id: Uuid,
    /// When the event happened (RFC 3339, UTC). The same time as a decoded event's
    /// `occurred_at` (`occurredAt` in JS); `DomainEvent::occurred_at` lists its names.
    pub created_at: DateTime<Utc>,
    /// The aggregate the event belongs to.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub aggregate_id: String,
    /// The event type's wire name, such as `UserCreatedEvent`.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub event_type: String,
    /// The payload, as a string of JSON.
    #[cfg_attr(feature = "openapi", schema(content_media_type = "application/json"))]
    pub event_json: String,
    /// The `userId` of the event's context.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The `tenantId` of the event's context.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// The `sessionId` of the event's context.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The rest of the event's context: an app's own authorization fields, such as roles
    /// or an organisation id.
    #[serde(default, skip_serializing_if = "Context::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub context: Context,
    /// Where the server stored the event: strictly increasing in commit order. Absent in
    /// a post; the server assigns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

impl StoredEvent {
    /// The event's whole context as a [`DomainEvent`](crate::DomainEvent) sees it:
    /// [`StoredEvent::context`] plus `userId`, `tenantId` and `sessionId` when set.
    pub fn full_context(&self) -> Context {
        let mut context = self.context.clone();
        for (key, value) in [
            (CONTEXT_USER_ID, &self.user_id),
            (CONTEXT_TENANT_ID, &self.tenant_id),
            (CONTEXT_SESSION_ID, &self.session_id),
        ] {
            if let Some(value) = value {
                context.insert(key.to_owned(), serde_json::Value::String(value.clone()));
            }
        }
        context
    }

    /// Sets the context from a whole one, the inverse of [`StoredEvent::full_context`]:
    /// string values of `userId`, `tenantId` and `sessionId` go to their own fields,
    /// everything else to [`StoredEvent::context`].
    pub fn set_full_context(&mut self, mut context: Context) {
        let mut take = |key: &str| match context.remove(key) {
            Some(serde_json::Value::String(value)) => Some(value),
            Some(other) => {
                // Not a string: keep it as an ordinary context entry rather than lose it.
                context.insert(key.to_owned(), other);
                None
            }
            None => None,
        };
        self.user_id = take(CONTEXT_USER_ID);
        self.tenant_id = take(CONTEXT_TENANT_ID);
        self.session_id = take(CONTEXT_SESSION_ID);
        self.context = context;
    }
}

/// The answer to a successful `POST /events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// The event's id.
    pub id: Uuid,
    /// The event's `createdAt`, as stored.
    pub created_at: DateTime<Utc>,
    /// The position the server assigned.
    pub position: u64,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// What went wrong and what to do, for people.
    pub error: String,
    /// A stable code to branch on, such as `cursor_expired`.
    pub code: String,
    /// With `cursor_expired` and `cursor_ahead`: poll again with `after` set to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<u64>,
}

/// Error codes carried in [`ErrorBody::code`].
pub mod codes {
    /// The request was malformed (400).
    pub const BAD_REQUEST: &str = "bad_request";
    /// No or invalid credentials (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The event id was already used for a different event (409).
    pub const ID_CONFLICT: &str = "id_conflict";
    /// Events after the cursor were deleted by retention (410); resume from `resumeAfter`.
    pub const CURSOR_EXPIRED: &str = "cursor_expired";
    /// The cursor is past every event the server ever stored (410), as after the store
    /// was replaced; resume from `resumeAfter`.
    pub const CURSOR_AHEAD: &str = "cursor_ahead";
    /// No such path (404).
    pub const NOT_FOUND: &str = "not_found";
    /// The path does not take this method (405).
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// The request body did not arrive in time (408); send it again, faster.
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    /// The body is larger than the server accepts (413).
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// The body is not `application/json` (415).
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// The server cannot reach its store now; retry later (503).
    pub const UNAVAILABLE: &str = "unavailable";
    /// The server is shutting down or at a limit; retry later (503).
    pub const OVERLOADED: &str = "overloaded";
    /// A server fault; the detail is in the server's log (500).
    pub const INTERNAL: &str = "internal";
}
