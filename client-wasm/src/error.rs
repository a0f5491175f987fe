use std::time::Duration;

use distributed_events_shared::{DecodeError, StoredEvent};
use uuid::Uuid;

/// Everything that can go wrong in a client, as reported on
/// [`EventBusClient::errors`](crate::EventBusClient::errors), in
/// [`Status::BackingOff`](crate::Status::BackingOff), or returned by a call.
///
/// [`code`](Self::code) is stable, for programs to branch on; the message is for people
/// and says what to do.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No answer from the server: it is down, unreachable, or refused (CORS). Retried.
    #[error("cannot reach the server: {message}")]
    Network {
        /// What the HTTP client said.
        message: String,
    },
    /// No answer within the request timeout. Retried.
    #[error("the server did not answer within {} ms", after.as_millis())]
    Timeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// The server answered with an error status.
    #[error("the server answered {status}: {message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The server's error code (see `wire::codes`), or `http_error` when the answer
        /// had no error body (a proxy's page, say).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server URL leads to no events API: the answer was `404` or `405`, which says
    /// the address is wrong, not the request. Retried, and events to send wait in the
    /// outbox, until the address answers (the server or a proxy in between is fixed).
    #[error("the server answered {status} ({message}): the server URL does not lead to the events API; check that it is the server's root, such as http://localhost:8080 with no path after it, and that a proxy in between passes /events and /healthz on. Events to send wait in the outbox meanwhile")]
    WrongServerUrl {
        /// The HTTP status.
        status: u16,
        /// What the server said, or `no error body`.
        message: String,
    },
    /// The server's answer could not be read, as when a proxy answers instead. Retried.
    #[error("the server's answer could not be read: {message}")]
    InvalidResponse {
        /// What was wrong with it.
        message: String,
    },
    /// The token source failed; the request was not sent. Retried.
    #[error("getting an access token failed: {message}")]
    Token {
        /// What the token source said.
        message: String,
    },
    /// The server no longer has the events after the cursor (retention deleted them,
    /// `cursor_expired`) or never had them (its store was replaced, `cursor_ahead`).
    /// The client resumed from `resume_after`; events in between were missed, so an app
    /// that mirrors state should reload it.
    #[error("the server cannot continue from position {from} ({code}); resumed after {resume_after}, events in between were missed: reload state that depends on them")]
    CursorReset {
        /// `cursor_expired` or `cursor_ahead`.
        code: String,
        /// The cursor the client had.
        from: u64,
        /// Where it continues.
        resume_after: u64,
    },
    /// A received event could not be handed to typed subscribers: its type is not in the
    /// registry, or its payload does not decode. Untyped subscribers still get it.
    #[error("{error}")]
    Decode {
        /// The event as received.
        event: Box<StoredEvent>,
        /// Why it did not decode.
        error: DecodeError,
    },
    /// A record of a page could not be decoded at all (as one a server stored before it
    /// checked nesting depth). It was skipped, and delivery went on past it: the app never
    /// sees this event.
    #[error("the server sent a record that cannot be decoded{}{}; it was skipped: {message}",
        position.map(|position| format!(" at position {position}")).unwrap_or_default(),
        event_id.map(|id| format!(" (event {id})")).unwrap_or_default())]
    UndecodableRecord {
        /// The record's `position`, when it could be read.
        position: Option<u64>,
        /// The record's `id`, when it could be read.
        event_id: Option<Uuid>,
        /// Why it did not decode.
        message: String,
    },
    /// The server refused a forwarded event for good (as `409 id_conflict`); it was
    /// dropped from the outbox.
    #[error("the server refused event {id} ({code}): {message}", id = event.id)]
    Rejected {
        /// The event that was refused.
        event: Box<StoredEvent>,
        /// The HTTP status.
        status: u16,
        /// The server's error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The cursor store failed; delivery goes on, but a restart may repeat events.
    #[error("the cursor store failed: {message}")]
    CursorStore {
        /// What the store said.
        message: String,
    },
    /// The configuration is unusable.
    #[error("invalid client configuration: {message}")]
    Config {
        /// What to change.
        message: String,
    },
    /// An event to publish is not valid: fix it and publish again.
    #[error("cannot publish this event: {message}")]
    InvalidEvent {
        /// What is wrong with it.
        message: String,
    },
    /// The client was closed; create a new one to go on.
    #[error("the client is closed; create a new client to publish or receive")]
    Closed,
}

impl ClientError {
    /// A stable code: the server's code for [`Http`](Self::Http) and
    /// [`Rejected`](Self::Rejected), `cursor_expired`/`cursor_ahead` for a reset, and
    /// otherwise one of `network_error`, `timeout`, `wrong_server_url`,
    /// `invalid_response`, `token_failed`, `unknown_event_type`, `undecodable_payload`,
    /// `undecodable_record`, `cursor_store_failed`,
    /// `invalid_config`, `invalid_event`, `closed`.
    pub fn code(&self) -> &str {
        match self {
            Self::Network { .. } => "network_error",
            Self::Timeout { .. } => "timeout",
            Self::WrongServerUrl { .. } => "wrong_server_url",
            Self::Http { code, .. }
            | Self::Rejected { code, .. }
            | Self::CursorReset { code, .. } => code,
            Self::InvalidResponse { .. } => "invalid_response",
            Self::Token { .. } => "token_failed",
            Self::Decode {
                error: DecodeError::UnknownType { .. },
                ..
            } => "unknown_event_type",
            Self::Decode { .. } => "undecodable_payload",
            Self::UndecodableRecord { .. } => "undecodable_record",
            Self::CursorStore { .. } => "cursor_store_failed",
            Self::Config { .. } => "invalid_config",
            Self::InvalidEvent { .. } => "invalid_event",
            Self::Closed => "closed",
        }
    }

    /// Whether the error goes away by itself (the server is down or overloaded, the
    /// network failed). Such errors only show in the status; the others are also sent
    /// on [`EventBusClient::errors`](crate::EventBusClient::errors), because the app may
    /// have to act.
    pub fn is_transient(&self) -> bool {
        let status = match self {
            Self::Http { status, .. } => Some(*status),
            _ => None,
        };
        crate::delivery::is_transient(self.code(), status)
    }

    /// The event the error is about, for [`Decode`](Self::Decode) and
    /// [`Rejected`](Self::Rejected).
    pub fn event(&self) -> Option<&StoredEvent> {
        match self {
            Self::Decode { event, .. } | Self::Rejected { event, .. } => Some(event),
            _ => None,
        }
    }
}
