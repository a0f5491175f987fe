//! The core of distributed-events: the domain-event model, the wire format shared by
//! server and clients, and the local [`EventBus`]. Plain Rust with no async runtime, so
//! it builds for `wasm32-unknown-unknown` and natively alike.
//!
//! # Quick start
//! ```
//! use distributed_events_shared::{event_registry, DomainEvent, Event, EventBus};
//! use futures::StreamExt;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize, Event)]
//! struct UserCreatedEvent {
//!     email: String,
//!     name: String,
//! }
//!
//! let bus = EventBus::new();
//! let mut created = bus.on::<UserCreatedEvent>();
//! bus.publish(DomainEvent::new(
//!     "user-1",
//!     UserCreatedEvent { email: "alice@example.com".into(), name: "Alice".into() },
//! ));
//! let event = futures::executor::block_on(created.next()).unwrap();
//! assert_eq!(event.payload.name, "Alice");
//!
//! // The wire record, and back through a registry built from one list of types.
//! let stored = event.to_stored().unwrap();
//! assert_eq!(stored.event_type, "UserCreatedEvent");
//! let registry = event_registry![UserCreatedEvent];
//! let decoded = registry.decode(&stored).unwrap();
//! assert_eq!(decoded.downcast_ref::<UserCreatedEvent>().unwrap().payload.email, "alice@example.com");
//! ```
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

// Lets `#[derive(Event)]` name this crate the same way inside it as outside.
#[allow(unused_extern_crates)]
extern crate self as distributed_events_shared;

mod bus;
mod event;
mod query;
mod registry;
mod rules;
pub mod sse;
pub mod wire;

pub use bus::{AnyEventStream, EventBus, EventStream};
pub use event::{now, DecodeError, DomainEvent, Event};
pub use query::EventsQuery;
pub use registry::{AnyEvent, EventRegistry};
pub use rules::{InvalidEvent, MAX_NESTING};
pub use wire::{
    Context, ErrorBody, Receipt, StoredEvent, CONTEXT_SESSION_ID, CONTEXT_TENANT_ID,
    CONTEXT_USER_ID,
};

/// `#[derive(Event)]`: makes a serde type a domain-event payload. The wire name is the
/// type's name unless `#[event(name = "...")]` sets it.
pub use distributed_events_derive::Event;

/// Re-exported so that apps name the same versions as this crate.
pub use chrono;
/// Re-exported so that apps name the same versions as this crate.
pub use uuid;

/// Event types the unit tests share.
#[cfg(test)]
mod test_events {
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, crate::Event)]
    pub(crate) struct Created {
        pub(crate) name: String,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, crate::Event)]
    #[event(name = "orders.purchased")]
    pub(crate) struct Purchased {
        pub(crate) amount: f64,
    }
}
