//! The client of distributed-events: a local [`EventBus`] kept in sync with a server over
//! HTTP. Events stored on the server reach the bus exactly once and in order; events
//! published here go to the server through an outbox that retries until they are stored.
//! The same client runs in the browser (wasm32) and natively (feature `native`).
//!
//! # Quick start
//! ```no_run
//! use distributed_events_client::{event_registry, DomainEvent, Event, EventBusClient};
//! use futures::StreamExt;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize, Event)]
//! struct UserCreatedEvent {
//!     email: String,
//!     name: String,
//! }
//!
//! # async fn run() -> Result<(), distributed_events_client::ClientError> {
//! let client = EventBusClient::builder("http://localhost:8080")
//!     .registry(event_registry![UserCreatedEvent])
//!     .auto_forward(true)
//!     .build()?;
//!
//! // Events from the server (and from `publish` here), as a Stream. Subscribed before
//! // the first `.await`; on a multi-threaded runtime, see `ClientBuilder::build`.
//! let mut created = client.on::<UserCreatedEvent>();
//!
//! client.publish(DomainEvent::new(
//!     "user-1",
//!     UserCreatedEvent { email: "alice@example.com".into(), name: "Alice".into() },
//! ))?;
//!
//! while let Some(event) = created.next().await {
//!     println!("user created: {}", event.payload.name);
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! [`EventBusClient::status_changes`] and [`EventBusClient::errors`] are Streams too,
//! ready for a Yew or Leptos component to turn into state.
//!
//! # Delivery
//! - The cursor is the server's `position`: the client moves it only after an event was
//!   dispatched, and drops repeats by id, so each event reaches the bus once, in order.
//! - It streams by default (Server-Sent Events, [`Transport::Stream`]) and long-polls
//!   when a stream brings nothing (a buffering proxy); long-polling
//!   ([`ClientBuilder::long_poll`]) and the seed's fixed interval
//!   ([`ClientBuilder::polling_interval`]) are options ([`ClientBuilder::transport`]).
//! - With a [`CursorStore`] it resumes where it stopped after a restart or page reload.
//! - Network errors and `5xx` are retried with exponential backoff and jitter, honouring
//!   `Retry-After`; [`EventBusClient::status`] shows it.
//!
//! The rules of delivery (the cursor, dedupe, the outbox's order and retries, backoff,
//! the status) live in [`delivery`], a core with no I/O that the npm package's JS drives
//! too, so that both clients follow one implementation.
//!
//! # Feature flags
//! | feature | what it adds |
//! |---|---|
//! | `client` *(default)* | the Rust client; in the browser (wasm32): gloo-net fetch, gloo-timers, `spawn_local`, `LocalStorageCursorStore` |
//! | `native` | the native transport: reqwest on the current tokio runtime |
//! | `js` | the delivery core as the JS class `Core`, for the npm package (wasm32 only; build it with `--no-default-features`) |
#![deny(missing_docs)]
// The browser build of the npm package (`js` without `client`) has no std: its panics and
// formatting machinery would weigh more than the whole delivery core.
#![cfg_attr(all(not(feature = "client"), not(test)), no_std)]

extern crate alloc;

pub mod delivery;

#[cfg(feature = "client")]
mod broadcast;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
mod config;
#[cfg(feature = "client")]
mod cursor;
#[cfg(feature = "client")]
mod error;
#[cfg(feature = "client")]
mod platform;
#[cfg(feature = "client")]
mod protocol;
#[cfg(feature = "client")]
mod status;

/// The delivery core as the JS class `Core` (feature `js`, wasm32), for the npm package.
#[cfg(all(feature = "js", target_arch = "wasm32"))]
pub mod js;

#[cfg(feature = "client")]
pub use broadcast::Subscription;
#[cfg(feature = "client")]
pub use client::EventBusClient;
#[cfg(feature = "client")]
pub use config::{ClientBuilder, TokenSource, DEFAULT_POLLING_INTERVAL, DEFAULT_WAIT};
#[cfg(feature = "client")]
pub use cursor::{CursorStore, MemoryCursorStore};
pub use delivery::Transport;
#[cfg(feature = "client")]
pub use error::ClientError;
#[cfg(all(feature = "client", target_arch = "wasm32"))]
pub use platform::web::LocalStorageCursorStore;
#[cfg(feature = "client")]
pub use platform::{BoxFuture, MaybeSend, MaybeSync};
#[cfg(feature = "client")]
pub use status::Status;

// The shared crate's items at the root, so that an app depending on this crate alone can
// `#[derive(Event)]` (the derive names `::distributed_events_client::Event`).
#[cfg(feature = "client")]
pub use distributed_events_shared::*;

/// Entry points for the fuzz targets in `fuzz/` and the server's property tests; not
/// part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::platform::HttpResponse;
    use distributed_events_shared::StoredEvent;

    /// Decodes the body of a `200` page as the Rust and JS clients do, down to each
    /// payload: the events, or why some record or payload would not reach the app.
    pub fn decode_page(body: &str) -> Result<Vec<StoredEvent>, String> {
        let page = crate::protocol::read_page(HttpResponse {
            status: 200,
            cursor: Some("0".into()),
            body: body.into(),
            ..HttpResponse::default()
        })
        .map_err(|failure| format!("the page does not decode: {failure:?}"))?;
        if let Some(error) = page.undecodable.first() {
            return Err(error.to_string());
        }
        for event in &page.events {
            // A typed subscriber decodes the payload with serde_json, depth limit and all.
            serde_json::from_str::<serde_json::Value>(&event.event_json).map_err(|error| {
                format!("the payload of event {} does not decode: {error}", event.id)
            })?;
        }
        Ok(page.events)
    }

    /// Decodes one server answer the ways the client does: as a page of events, as the
    /// health check and as a post's receipt. Must never panic, whatever the answer.
    pub fn decode_answer(
        status: u16,
        cursor: Option<String>,
        retry_after: Option<String>,
        body: String,
    ) {
        let answer = || HttpResponse {
            status,
            cursor: cursor.clone(),
            retry_after: retry_after.clone(),
            body: body.clone(),
        };
        let _ = crate::protocol::read_page(answer());
        let _ = crate::protocol::read_head(answer());
        let _ = crate::protocol::read_receipt(answer());
    }

    /// Reads an event stream as the client does, in the chunks given: its frames, and
    /// what the client makes of each message. The same bytes cut anywhere else must give
    /// the same frames; nothing may panic.
    pub fn decode_stream(chunks: &[&[u8]]) -> Vec<crate::sse::Frame> {
        let mut parser = crate::sse::SseParser::new(64 * 1024);
        let mut frames = Vec::new();
        for chunk in chunks {
            if parser.feed(chunk, &mut frames).is_err() {
                break;
            }
        }
        let mut page = crate::protocol::Page {
            events: Vec::new(),
            cursor: 0,
            undecodable: Vec::new(),
        };
        for frame in &frames {
            if let crate::sse::Frame::Message(message) = frame {
                let _ = crate::protocol::read_message(message, &mut page);
            }
        }
        frames
    }
}
