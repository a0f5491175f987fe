//! The native server of distributed-events: an [`EventBusServer`] that persists every
//! event published on its local bus, and an axum [`Router`](axum::Router) that serves
//! those events to clients (pages, long-polls and Server-Sent Events streams) and takes
//! theirs.
//!
//! # Quick start
//! ```no_run
//! use distributed_events_server::{store, DomainEvent, Event, EventBusServer};
//! use futures::StreamExt;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize, Event)]
//! struct UserCreatedEvent { email: String, name: String }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let server = EventBusServer::builder(store::open("sqlite://events.db").await?)
//!     .retention(std::time::Duration::from_secs(24 * 3600))
//!     .build();
//!
//! // Local subscribers see events published here and events posted by clients.
//! let mut created = server.on::<UserCreatedEvent>();
//! tokio::spawn(async move {
//!     while let Some(event) = created.next().await {
//!         println!("user created: {}", event.payload.email);
//!     }
//! });
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let app = server.router(); // nest or merge it into your own Router
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! // Returns once the event is durable.
//! let receipt = server
//!     .publish(DomainEvent::new("user-1", UserCreatedEvent { email: "a@example.com".into(), name: "A".into() }))
//!     .await?;
//! println!("stored at position {}", receipt.position);
//! # Ok(()) }
//! ```
//!
//! # Storage
//! | `--database` / [`store::open`] | backend |
//! |---|---|
//! | `sqlite://PATH` (default) | [`store::SqliteStore`]: one durable file, group commit |
//! | `postgres://…` | [`store::PostgresStore`]: several server instances share one database |
//! | `mysql://…` | [`store::MySqlStore`]: MySQL or MariaDB, one server instance per database |
//! | `memory` | [`store::MemoryStore`]: for tests; nothing survives a restart |
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

mod auth;
mod http;
mod jwt;
mod long_polls;
mod openapi;
mod reads;
mod serve;
pub mod store;
mod stream;
mod tail;
mod telemetry;

use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use auth::{AuthRejection, Authenticator, FilterOutcome, Principal};
pub use distributed_events_shared::*;
pub use http::{cors_layer, method_not_allowed, not_found, InvalidOrigin, Limits};
pub use jwt::{JwtAuthenticator, JwtKey, JwtKeyError};
pub use serve::{max_connections_for_open_files, serve, ServeOptions};
pub use telemetry::{metrics_router, MetricsError};

use auth::AuthorizationFilter;
use store::{Appended, SharedStore, StoreError};

/// Why publishing an event failed. Nothing was published locally when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store did not take the event.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The payload did not serialize.
    #[error("the event payload does not serialize: {0}")]
    Encode(#[from] serde_json::Error),
    /// The event breaks a rule of docs/PROTOCOL.md (such as nesting too deeply for
    /// clients to decode); nothing was stored.
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    /// The id was used before for a different event.
    #[error("event id {0} was already used for a different event; give the event a new id")]
    IdConflict(Uuid),
    /// A posted event of a registered type whose payload does not decode as that type.
    #[error("`eventJson` must decode as the registered type `{event_type}`: {error}")]
    WrongType {
        /// The event's type.
        event_type: String,
        /// Why it does not decode.
        error: DecodeError,
    },
}

/// A server-side event bus whose every event is persisted and served to clients.
///
/// Cheap to clone; clones share everything. When the last clone (and the last router
/// made from one) is dropped, the background tasks stop and release the store, as
/// [`begin_shutdown`](Self::begin_shutdown) would; [`close`](Self::close) also waits
/// for them and flushes the store.
#[derive(Clone)]
pub struct EventBusServer {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    bus: EventBus,
    registry: RwLock<EventRegistry>,
    retention: Option<Duration>,
    limits: Limits,
    authenticator: Option<Arc<dyn Authenticator>>,
    filter: Option<Arc<AuthorizationFilter>>,
    shutdown: CancellationToken,
    /// The long-polls waiting at once, in all and per tenant.
    long_polls: Arc<long_polls::LongPolls>,
    /// The recent events, from which live polls are answered.
    tail: Arc<tail::Tail>,
    /// The periodic cleanup and the tail's follower. They hold no `EventBusServer`, so
    /// they do not keep it alive.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The drop guard: the last handle gone, the background tasks stop, and with them
/// their hold on the store.
impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Configures an [`EventBusServer`].
#[must_use]
pub struct EventBusServerBuilder {
    store: SharedStore,
    bus: EventBus,
    registry: EventRegistry,
    retention: Option<Duration>,
    cleanup_interval: Option<Duration>,
    limits: Limits,
    authenticator: Option<Arc<dyn Authenticator>>,
    filter: Option<Arc<AuthorizationFilter>>,
}

impl EventBusServerBuilder {
    /// Uses `bus` as the local bus (default: a new one), so that code holding it sees the
    /// server's events. Events published on the bus directly stay local: only
    /// [`EventBusServer::publish`] persists and distributes.
    pub fn event_bus(mut self, bus: EventBus) -> Self {
        self.bus = bus;
        self
    }

    /// The app's event types. A posted event of a registered type must decode as that
    /// type (else `400`) and is published on the local bus; types not registered are
    /// stored and relayed to clients only. [`EventBusServer::on`] registers its type too.
    pub fn registry(mut self, registry: EventRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Keep events this long; [`EventBusServer::cleanup`] deletes older ones. Default:
    /// keep everything.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Run cleanup every `interval` in the background (needs a retention).
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = Some(interval);
        self
    }

    /// Request limits of the HTTP endpoints.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks every request's credentials; a refusal answers `401`.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Decides which events a caller may read (the seed's authorizationFilter). It runs
    /// before the page limit, so pages stay full. Returning an error or panicking hides
    /// the event; it never fails the request.
    pub fn authorization_filter<F, R>(mut self, filter: F) -> Self
    where
        F: Fn(&StoredEvent, &Principal) -> R + Send + Sync + 'static,
        R: FilterOutcome,
    {
        self.filter = Some(Arc::new(
            move |event: &StoredEvent, principal: &Principal| {
                filter(event, principal).into_decision()
            },
        ));
        self
    }

    /// The server. Starts the periodic cleanup when configured, so it must be called
    /// inside a tokio runtime.
    pub fn build(self) -> EventBusServer {
        // Without an authenticator every caller is the same anonymous principal: a share
        // would only lower the cap.
        let per_tenant = match self.authenticator {
            Some(_) => self.limits.long_polls_per_tenant(),
            None => self.limits.max_long_polls,
        };
        let long_polls = long_polls::LongPolls::new(self.limits.max_long_polls, per_tenant);
        let tail = Arc::new(tail::Tail::new(
            *self.store.watch_head().borrow(),
            self.limits.tail_bytes,
        ));
        let shutdown = CancellationToken::new();
        let follower = tokio::spawn(tail::follow(
            tail.clone(),
            self.store.clone(),
            shutdown.clone(),
        ));
        let server = EventBusServer {
            inner: Arc::new(Inner {
                store: self.store,
                bus: self.bus,
                registry: RwLock::new(self.registry),
                retention: self.retention,
                limits: self.limits,
                authenticator: self.authenticator,
                filter: self.filter,
                shutdown,
                long_polls,
                tail,
                tasks: Mutex::new(vec![follower]),
            }),
        };
        if let (Some(_), Some(interval)) = (self.retention, self.cleanup_interval) {
            let task = tokio::spawn(run_cleanup(
                Arc::downgrade(&server.inner),
                server.inner.shutdown.clone(),
                interval,
            ));
            server
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(task);
        }
        server
    }
}

/// Cleans up every `interval` until shutdown. It holds the server only while a cleanup
/// runs: a strong reference would keep it alive forever.
async fn run_cleanup(server: Weak<Inner>, shutdown: CancellationToken, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(inner) = server.upgrade() else {
            return;
        };
        match (EventBusServer { inner }).cleanup().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "retention cleanup"),
            Err(error) => {
                metrics::counter!(telemetry::STORE_RETRIES, "task" => "cleanup").increment(1);
                tracing::warn!(%error, "retention cleanup failed; retrying next interval")
            }
        }
    }
}

impl EventBusServer {
    /// Starts configuring a server over `store`.
    pub fn builder(store: SharedStore) -> EventBusServerBuilder {
        EventBusServerBuilder {
            store,
            bus: EventBus::new(),
            registry: EventRegistry::new(),
            retention: None,
            cleanup_interval: None,
            limits: Limits::default(),
            authenticator: None,
            filter: None,
        }
    }

    /// Persists `event`, then publishes it on the local bus. Returns once it is durable;
    /// on error nothing was published. Publishing the same event (same id) again is a
    /// no-op that returns the original receipt.
    pub async fn publish<T: Event>(&self, event: DomainEvent<T>) -> Result<Receipt, PublishError> {
        let stored = event.to_stored()?;
        let (receipt, _) = self
            .append_checked(stored, |saved| {
                self.inner.bus.publish(DomainEvent {
                    position: saved.position,
                    occurred_at: saved.created_at,
                    ..event
                });
            })
            .await?;
        Ok(receipt)
    }

    /// The one way in for every event: stamps the time as stores keep it, checks the
    /// event rules, stores it, and calls `on_new` with what was stored when it is new.
    /// Returns the receipt and whether it replays an earlier append of the same event.
    async fn append_checked(
        &self,
        mut event: StoredEvent,
        on_new: impl FnOnce(&StoredEvent),
    ) -> Result<(Receipt, bool), PublishError> {
        event.position = None;
        event.created_at = normalize_time(event.created_at);
        // After stamping, so that what is stored is what was checked.
        event.validate()?;
        match self.inner.store.append(event.clone()).await? {
            Appended::New(saved) => {
                metrics::counter!(telemetry::APPENDED, "outcome" => "new").increment(1);
                on_new(&saved);
                Ok((receipt(&saved), false))
            }
            Appended::Existing(existing) if same_event(&existing, &event) => {
                metrics::counter!(telemetry::APPENDED, "outcome" => "replayed").increment(1);
                Ok((receipt(&existing), true))
            }
            Appended::Existing(_) => {
                metrics::counter!(telemetry::APPENDED, "outcome" => "conflict").increment(1);
                Err(PublishError::IdConflict(event.id))
            }
        }
    }

    /// The events of type `T` published here or posted by clients, from now on.
    /// Registers `T`, so posts of it are checked and decoded.
    pub fn on<T: Event>(&self) -> EventStream<T> {
        self.inner
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register::<T>();
        self.inner.bus.on::<T>()
    }

    /// The local bus, for `subscribe_all` or code that takes an [`EventBus`]. Publishing
    /// on it directly reaches local subscribers only; use [`publish`](Self::publish) to
    /// store an event and send it to clients.
    pub fn event_bus(&self) -> &EventBus {
        &self.inner.bus
    }

    /// The store behind this server.
    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    /// Deletes events older than the retention duration; returns how many. Without a
    /// retention it deletes nothing. Safe to call at any time.
    pub async fn cleanup(&self) -> Result<u64, StoreError> {
        let Some(retention) = self.inner.retention else {
            return Ok(0);
        };
        let result = self.delete_expired(retention).await;
        let outcome = match &result {
            Ok(deleted) => {
                metrics::counter!(telemetry::CLEANUP_DELETED).increment(*deleted);
                "ok"
            }
            Err(_) => {
                metrics::counter!(telemetry::STORE_ERRORS, "during" => "cleanup").increment(1);
                "error"
            }
        };
        metrics::counter!(telemetry::CLEANUP_RUNS, "outcome" => outcome).increment(1);
        result
    }

    async fn delete_expired(&self, retention: Duration) -> Result<u64, StoreError> {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = chrono::Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let deleted = self.inner.store.delete_older_than(cutoff).await?;
        // Deleted means gone from live answers too, not only from the store.
        let pruned_through = self.inner.store.pruned_through().await?;
        self.inner.tail.forget_through(pruned_through);
        Ok(deleted)
    }

    /// The HTTP endpoints: `GET`/`POST /events` and `GET /healthz`.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// Answers waiting long-polls at once and stops the periodic cleanup. Publishing
    /// still works; call it when a graceful shutdown begins, before in-flight requests
    /// are drained.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Shuts down: [`begin_shutdown`](Self::begin_shutdown), waits for background tasks,
    /// and closes the store after flushing what it acknowledged.
    pub async fn close(&self) {
        self.begin_shutdown();
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            let _ = task.await;
        }
        self.inner.store.close().await;
    }

    /// Stamps a posted event with the caller's identity, checks it against the
    /// registry, stores it, then publishes it locally. Returns the receipt and whether it
    /// replays an earlier post.
    pub(crate) async fn accept(
        &self,
        mut event: StoredEvent,
        principal: &Principal,
    ) -> Result<(Receipt, bool), PublishError> {
        // Identity comes from authentication, never from the body: with an
        // authenticator, a principal without a user (a token without `sub`) posts events
        // without one rather than with whatever the body claims, in its fields or in its
        // `context` (which handlers read merged with the fields).
        if self.inner.authenticator.is_some() {
            event.tenant_id.clone_from(&principal.tenant_id);
            event.user_id.clone_from(&principal.user_id);
            event.context.remove(CONTEXT_TENANT_ID);
            event.context.remove(CONTEXT_USER_ID);
            if principal.session_id.is_some() {
                event.session_id.clone_from(&principal.session_id);
                event.context.remove(CONTEXT_SESSION_ID);
            }
        }
        let known_type = match self.registry().decode(&event) {
            Ok(_) => true,
            Err(DecodeError::UnknownType { .. }) => false,
            Err(error) => {
                return Err(PublishError::WrongType {
                    event_type: event.event_type,
                    error,
                })
            }
        };
        self.append_checked(event, |saved| {
            if known_type {
                if let Ok(decoded) = self.registry().decode(saved) {
                    self.inner.bus.publish_any(decoded);
                }
            }
        })
        .await
    }

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, EventRegistry> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The limits of the HTTP endpoints.
    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Who checks the credentials of requests; `None`: everyone is anonymous.
    pub(crate) fn authenticator(&self) -> Option<&dyn Authenticator> {
        self.inner.authenticator.as_deref()
    }
}

impl std::fmt::Debug for EventBusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBusServer")
            .field("retention", &self.inner.retention)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EventBusServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBusServerBuilder")
            .field("retention", &self.retention)
            .field("cleanup_interval", &self.cleanup_interval)
            .finish_non_exhaustive()
    }
}

/// Whether a stored event and a re-post of its id carry the same event.
fn same_event(stored: &StoredEvent, posted: &StoredEvent) -> bool {
    stored.aggregate_id == posted.aggregate_id
        && stored.event_type == posted.event_type
        && stored.event_json == posted.event_json
        && stored.tenant_id == posted.tenant_id
}

fn receipt(event: &StoredEvent) -> Receipt {
    Receipt {
        id: event.id,
        created_at: event.created_at,
        position: event.position.unwrap_or_default(),
    }
}

/// Stores keep microseconds; truncate so that what is acknowledged reads back equal.
fn normalize_time(time: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    time.trunc_subsecs(6)
}
