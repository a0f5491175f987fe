use chrono::{DateTime, SubsecRound, Utc};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use crate::wire::{Context, StoredEvent};

/// A payload type that travels as a domain event. Implement it with `#[derive(Event)]`.
pub trait Event: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The type's name on the wire (`eventType`).
    const EVENT_TYPE: &'static str;
}

/// A domain event: the envelope (id, time, aggregate, context) around a typed payload.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainEvent<T> {
    /// Unique id; also the idempotency key when the event is posted to a server.
    pub id: Uuid,
    /// When the event happened, in UTC, at microsecond precision.
    ///
    /// One time, named by layer: `occurred_at` here, `occurredAt` in the JS
    /// `ClientEvent`, [`StoredEvent::created_at`](crate::StoredEvent::created_at) on a
    /// record, and `createdAt` on the wire (docs/PROTOCOL.md). All four carry the same
    /// value: the publisher's clock, truncated to microseconds by the server.
    pub occurred_at: DateTime<Utc>,
    /// The aggregate the event belongs to.
    pub aggregate_id: String,
    /// Who caused it, in which tenant, and anything else authorization needs.
    pub context: Context,
    /// Where the server stored it; `None` until it has been stored.
    pub position: Option<u64>,
    /// The event's own data.
    pub payload: T,
}

impl<T: Event> DomainEvent<T> {
    /// A new event with a fresh time-ordered id, happening now.
    pub fn new(aggregate_id: impl Into<String>, payload: T) -> Self {
        Self {
            id: Uuid::now_v7(),
            occurred_at: now(),
            aggregate_id: aggregate_id.into(),
            context: Context::new(),
            position: None,
            payload,
        }
    }

    /// Adds a context entry, such as `("tenantId", "tenant-1")`.
    #[must_use]
    pub fn with_context(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    /// The wire record of this event. `userId`, `tenantId` and `sessionId` are taken from
    /// the context; the other context entries travel in [`StoredEvent::context`].
    pub fn to_stored(&self) -> Result<StoredEvent, serde_json::Error> {
        let mut stored = StoredEvent {
            id: self.id,
            created_at: self.occurred_at,
            aggregate_id: self.aggregate_id.clone(),
            event_type: T::EVENT_TYPE.to_owned(),
            event_json: serde_json::to_string(&self.payload)?,
            user_id: None,
            tenant_id: None,
            session_id: None,
            context: Context::new(),
            position: self.position,
        };
        stored.set_full_context(self.context.clone());
        Ok(stored)
    }

    /// Decodes a wire record of this type; the inverse of [`DomainEvent::to_stored`].
    pub fn from_stored(stored: &StoredEvent) -> Result<Self, DecodeError> {
        if stored.event_type != T::EVENT_TYPE {
            return Err(DecodeError::WrongType {
                expected: T::EVENT_TYPE,
                found: stored.event_type.clone(),
            });
        }
        let payload =
            serde_json::from_str(&stored.event_json).map_err(|source| DecodeError::Payload {
                event_type: stored.event_type.clone(),
                id: stored.id,
                message: source.to_string(),
            })?;
        Ok(Self {
            id: stored.id,
            occurred_at: stored.created_at,
            aggregate_id: stored.aggregate_id.clone(),
            context: stored.full_context(),
            position: stored.position,
            payload,
        })
    }
}

/// The current time at the precision every store keeps (microseconds), so that a
/// stored event reads back equal to what was written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Why a wire record could not be turned into a typed event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No type of that name is registered. Add the type to the app's `event_registry!`.
    #[error("unknown event type `{event_type}` (event {id}); add it to the event registry")]
    UnknownType {
        /// The wire name that was not found.
        event_type: String,
        /// The event's id.
        id: Uuid,
    },
    /// The payload does not match the registered type.
    #[error("event {id} of type `{event_type}` has a payload that does not decode: {message}")]
    Payload {
        /// The event's wire name.
        event_type: String,
        /// The event's id.
        id: Uuid,
        /// What serde said.
        message: String,
    },
    /// The record is of another type than the one asked for.
    #[error("expected an event of type `{expected}`, found `{found}`")]
    WrongType {
        /// The type asked for.
        expected: &'static str,
        /// The record's type.
        found: String,
    },
}
