//! The client: two loops (receive, send) over a [`Platform`], around the delivery core
//! ([`crate::delivery`]), which the npm package's JS drives too.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use distributed_events_shared::sse::{Frame, SseParser};
use distributed_events_shared::{
    AnyEvent, DecodeError, DomainEvent, Event, EventBus, EventRegistry, EventStream, EventsQuery,
    Receipt, StoredEvent,
};
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::channel::oneshot;
use futures::future::{select, AbortHandle, Abortable, Either, FutureExt, Shared};
use futures::StreamExt;
use uuid::Uuid;

use crate::broadcast::{Broadcast, Subscription};
use crate::config::{ClientBuilder, Mode, Settings, Start};
use crate::delivery::{Backoff, Delivery, Jitter, Outbox, StatusParts, Transport, TypeFilter};
use crate::platform::{HttpRequest, HttpResponse, MaybeSend, Platform, StreamingResponse};
use crate::protocol::{self, Failure, Page};
use crate::status::Status;
use crate::ClientError;

/// A local [`EventBus`] kept in sync with a distributed-events server.
///
/// Events stored on the server reach the bus's subscribers exactly once and in order;
/// with `auto_forward`, events published here are sent to the server through an outbox
/// that retries until the server has them. Cheap to clone; clones share one client,
/// which stops when [`close`](Self::close) is called or the last clone is dropped.
#[derive(Clone)]
#[must_use = "the client stops when the last handle is dropped"]
pub struct EventBusClient {
    handle: Arc<Handle>,
}

/// The owner's side: dropping the last one shuts the client down. The tasks hold only
/// `Inner`, so they do not keep the client alive.
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        drop(self.inner.shutdown());
    }
}

pub(crate) struct Inner {
    settings: Settings,
    bus: EventBus,
    registry: RwLock<EventRegistry>,
    platform: Box<dyn Platform>,
    state: Mutex<State>,
    events: Broadcast<StoredEvent>,
    errors: Broadcast<ClientError>,
    stored: Broadcast<Receipt>,
    status: Broadcast<Status>,
}

/// The status of a Rust client: its errors, at its times.
type Parts = StatusParts<ClientError, DateTime<Utc>>;

struct State {
    delivery: Delivery<Uuid>,
    status: Parts,
    outbox: Outbox<Uuid, StoredEvent>,
    /// Wakes the sending loop when an event is queued; `None` once closed.
    outbox_queued: Option<UnboundedSender<()>>,
    tasks: Vec<Task>,
    jitter: Jitter,
    /// The `eventType` filter ([`ClientBuilder::subscribe_to_handled_types`]).
    filter: TypeFilter,
    /// Wakes the poll in flight when the filter widens, so that it asks again at once.
    widened: Option<oneshot::Sender<()>>,
}

struct Task {
    abort: AbortHandle,
    /// Loops stop at close; a listener ends by itself once its subscription has ended.
    abort_on_close: bool,
    /// Completes when the task's future has been dropped.
    done: Shared<oneshot::Receiver<()>>,
}

impl EventBusClient {
    /// Starts configuring a client of the server at `server_url` (such as
    /// `http://localhost:8080`).
    pub fn builder(server_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(server_url.into())
    }

    // `Arc` because natively the client is `Send + Sync`; in the browser it holds JS values,
    // which are neither, and everything runs on one thread anyway.
    #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
    pub(crate) fn start(config: ClientBuilder, platform: Box<dyn Platform>) -> Self {
        let (outbox_queued, outbox_wake) = unbounded();
        let mut filter = TypeFilter::new(
            config.settings.event_types.clone(),
            config.settings.handled_types,
        );
        for event_type in config.registry.event_types() {
            filter.handle(event_type);
        }
        let (initial, max) = config.settings.backoff;
        let inner = Arc::new(Inner {
            settings: config.settings,
            bus: config.bus,
            registry: RwLock::new(config.registry),
            platform,
            state: Mutex::new(State {
                delivery: Delivery::new(None, config.dedup_capacity),
                status: StatusParts::default(),
                outbox: Outbox::new(initial, max),
                outbox_queued: Some(outbox_queued),
                tasks: Vec::new(),
                // The low 64 bits of a v7 UUID are random apart from the two variant bits.
                jitter: Jitter::new(Uuid::now_v7().as_u128() as u64),
                filter,
                widened: None,
            }),
            events: Broadcast::new(),
            errors: Broadcast::new(),
            stored: Broadcast::new(),
            status: Broadcast::watch(Status::Connecting),
        });
        inner.spawn_task(receive(Arc::clone(&inner)), true);
        inner.spawn_task(send(Arc::clone(&inner), outbox_wake), true);
        Self {
            handle: Arc::new(Handle { inner }),
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// The events of type `T`: received from the server and published here. Registers
    /// `T`, so that received events of this type are decoded. Dropping the stream
    /// unsubscribes.
    pub fn on<T: Event>(&self) -> EventStream<T> {
        self.inner()
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register::<T>();
        self.inner().handle_type(T::EVENT_TYPE);
        self.inner().bus.on::<T>()
    }

    /// Every event, untyped, as wire records: received from the server (with their
    /// `position`) and published here (without). Needs no registry; the payload is
    /// [`StoredEvent::event_json`].
    pub fn events(&self) -> Subscription<StoredEvent> {
        self.inner().events.subscribe()
    }

    /// What went wrong that the app may have to act on: undecodable events, events the
    /// server refused, cursor resets (events were missed), authentication and request
    /// errors. Transient failures only show in the [`status`](Self::status).
    pub fn errors(&self) -> Subscription<ClientError> {
        self.inner().errors.subscribe()
    }

    /// The server's receipt for each event this client sent: its id and where it was
    /// stored. Events published here reach subscribers without a position (and do not
    /// come back from the server), so this is how an app learns their position.
    pub fn stored(&self) -> Subscription<Receipt> {
        self.inner().stored.subscribe()
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.inner().status.latest().unwrap_or(Status::Closed)
    }

    /// The current status, then each change.
    pub fn status_changes(&self) -> Subscription<Status> {
        self.inner().status.subscribe()
    }

    /// The position after which the next poll asks; `None` until known.
    pub fn cursor(&self) -> Option<u64> {
        self.inner().lock().delivery.cursor()
    }

    /// The local bus this client wraps.
    pub fn event_bus(&self) -> &EventBus {
        &self.inner().bus
    }

    /// Publishes `event` on the local bus and, with `auto_forward`, queues it for the
    /// server. It does not come back from the server a second time.
    pub fn publish<T: Event>(&self, event: DomainEvent<T>) -> Result<(), ClientError> {
        let stored = event
            .to_stored()
            .map_err(|error| ClientError::InvalidEvent {
                message: format!("the payload does not serialize: {error}"),
            })?;
        self.inner().publish(stored, Some(AnyEvent::new(event)))
    }

    /// Publishes an untyped event, given as a wire record that nothing has stored yet,
    /// as [`publish`](Self::publish) does; typed subscribers get it when its type is
    /// registered. Fails when `eventJson` is not JSON or does not decode as the
    /// registered type.
    pub fn publish_record(&self, mut event: StoredEvent) -> Result<(), ClientError> {
        let invalid = |message: String| ClientError::InvalidEvent { message };
        if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(&event.event_json) {
            return Err(invalid(format!("eventJson is not JSON: {error}")));
        }
        event.position = None;
        let typed = match self
            .inner()
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .decode(&event)
        {
            Ok(typed) => Some(typed),
            Err(DecodeError::UnknownType { .. }) => None,
            Err(error) => return Err(invalid(error.to_string())),
        };
        self.inner().publish(event, typed)
    }

    /// Stops the client at once: timers, in-flight requests (aborted) and subscriptions
    /// end, events not yet sent are dropped, and [`status`](Self::status) becomes
    /// [`Status::Closed`]. The local bus stays usable. The future completes when every
    /// task of the client has stopped; awaiting it is optional.
    pub fn close(&self) -> impl Future<Output = ()> + MaybeSend + 'static {
        let done = self.inner().shutdown();
        async move {
            for task in done {
                // Err only says the task is gone, which is what we wait for.
                let _ = task.await;
            }
        }
    }
}

impl fmt::Debug for EventBusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBusClient")
            .field("server_url", &self.inner().settings.server_url)
            .field("status", &self.status())
            .field("cursor", &self.cursor())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `task` until it ends or (with `abort_on_close`) the client closes. Nothing
    /// when the client is closed already. [`EventBusClient::close`] waits for every task
    /// to be gone.
    pub(crate) fn spawn_task(
        &self,
        task: impl Future<Output = ()> + MaybeSend + 'static,
        abort_on_close: bool,
    ) {
        let (abort, registration) = AbortHandle::new_pair();
        let (done_sender, done) = oneshot::channel::<()>();
        {
            let mut state = self.lock();
            if state.status.is_closed() {
                return;
            }
            state.tasks.push(Task {
                abort,
                abort_on_close,
                done: done.shared(),
            });
        }
        self.platform.spawn(Box::pin(async move {
            // Dropped with this future, after `task` was: that is what `close` awaits.
            let _done = done_sender;
            let _ = Abortable::new(task, registration).await;
        }));
    }

    /// Closes the client (once) and returns what to await for every task to be gone.
    fn shutdown(&self) -> Vec<Shared<oneshot::Receiver<()>>> {
        let mut state = self.lock();
        if !state.status.is_closed() {
            state.status.close();
            for task in state.tasks.iter().filter(|task| task.abort_on_close) {
                task.abort.abort();
            }
            state.outbox.clear();
            state.outbox_queued = None;
            self.status.close_with(Some(Status::Closed));
            self.events.close_with(None);
            self.errors.close_with(None);
            self.stored.close_with(None);
        }
        state.tasks.iter().map(|task| task.done.clone()).collect()
    }

    /// The app handles `event_type` now (`"*"`: every type). With
    /// `subscribe_to_handled_types`, a type new to the subscription widens it: the poll in
    /// flight is dropped, unanswered, and the next one asks from the cursor for it too.
    pub(crate) fn handle_type(&self, event_type: &str) {
        let mut state = self.lock();
        if state.filter.handle(event_type) {
            if let Some(widened) = state.widened.take() {
                let _ = widened.send(());
            }
        }
    }

    /// The `eventType` and `aggregateId` filter to ask with, its version (see
    /// [`TypeFilter::version`]), and what wakes the poll when it widens.
    fn subscription(&self) -> (Vec<String>, Vec<String>, u64, oneshot::Receiver<()>) {
        let mut state = self.lock();
        let (widened, receiver) = oneshot::channel();
        state.widened = Some(widened);
        (
            state.filter.event_types(),
            self.settings.aggregate_ids.clone(),
            state.filter.version(),
            receiver,
        )
    }

    pub(crate) fn report(&self, error: ClientError) {
        self.errors.send(error);
    }

    /// Applies one side's outcome to the status, and tells the change, if any.
    fn update_status(&self, outcome: impl FnOnce(&mut Parts)) {
        let mut state = self.lock();
        outcome(&mut state.status);
        // Under the lock, so that concurrent changes are sent in the order they happened.
        if state.status.take_change() && !state.status.is_closed() {
            self.status.send_if_changed(state.status.current().into());
        }
    }

    fn receiving(&self, transport: Transport) {
        self.update_status(|status| status.receiving(transport));
    }

    fn publish(&self, event: StoredEvent, typed: Option<AnyEvent>) -> Result<(), ClientError> {
        if event.event_type.trim().is_empty() || event.aggregate_id.is_empty() {
            return Err(ClientError::InvalidEvent {
                message: "eventType and aggregateId must not be empty".into(),
            });
        }
        let mut state = self.lock();
        if state.status.is_closed() {
            return Err(ClientError::Closed);
        }
        if let Some(typed) = typed {
            self.bus.publish_any(typed);
        }
        let state = &mut *state;
        match &state.outbox_queued {
            Some(queued) if self.settings.auto_forward => {
                // Under the lock, before the event can reach the server, so that its echo
                // is recognised.
                state.delivery.expect_echo(event.id);
                state.outbox.enqueue(event.id, event.clone());
                // The receiver lives as long as the client is open.
                let _ = queued.unbounded_send(());
            }
            // Not sent from here, but the app may store it another way (its own backend):
            // then it arrives like any other event, already dispatched.
            _ => state.delivery.record_dispatched(event.id),
        }
        self.events.send(event);
        Ok(())
    }

    /// Dispatches a page, reports its undecodable records, and saves the cursor, which
    /// lies past both. Drops the page (and returns `false`) when it was asked for with a
    /// filter older than the current one (`filter`, from [`Inner::subscription`]): its
    /// cursor may lie past events of a type handled since.
    fn deliver(&self, page: Page, filter: u64) -> bool {
        let cursor = {
            let mut state = self.lock();
            if state.status.is_closed() || state.filter.version() != filter {
                return false;
            }
            // Only for a page that is kept: a dropped one is asked for again.
            for error in page.undecodable {
                self.report(error);
            }
            let before = state.delivery.cursor();
            state.delivery.apply_page(
                page.events,
                page.cursor,
                |event| (event.id, event.position),
                |event| self.dispatch(event),
            );
            let after = state.delivery.cursor();
            after.filter(|_| after != before)
        };
        if let Some(cursor) = cursor {
            self.save_cursor(cursor);
        }
        true
    }

    /// The outbox's oldest event was stored, or `refused` for good (or could not be sent
    /// at all): then it will not come back from the server.
    fn settle_oldest(&self, refused: bool) {
        {
            let mut state = self.lock();
            if let Some((id, _)) = state.outbox.settle() {
                if refused {
                    state.delivery.forget_echo(&id);
                }
            }
        }
        self.update_status(Parts::sending);
    }

    /// Hands one received event to the subscribers.
    fn dispatch(&self, event: StoredEvent) {
        if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(&event.event_json) {
            let error = DecodeError::Payload {
                event_type: event.event_type.clone(),
                id: event.id,
                message: format!("eventJson is not JSON: {error}"),
            };
            self.report(ClientError::Decode {
                event: Box::new(event),
                error,
            });
            return;
        }
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        // Typed decoding is on once the app named a type.
        if registry.event_types().next().is_some() {
            match registry.decode(&event) {
                Ok(typed) => self.bus.publish_any(typed),
                Err(error) => self.report(ClientError::Decode {
                    event: Box::new(event.clone()),
                    error,
                }),
            }
        }
        drop(registry);
        self.events.send(event);
    }

    fn save_cursor(&self, cursor: u64) {
        if let Some(store) = &self.settings.cursor_store {
            if let Err(message) = store.save(self.settings.cursor_key(), cursor) {
                self.report(ClientError::CursorStore { message });
            }
        }
    }

    /// `request` with the configured headers and token.
    async fn authorize(&self, mut request: HttpRequest) -> Result<HttpRequest, Failure> {
        request
            .headers
            .extend(self.settings.headers.iter().cloned());
        if let Some(source) = &self.settings.token {
            match source.token().await {
                Ok(Some(token)) => request
                    .headers
                    .push(("authorization".into(), format!("Bearer {token}"))),
                Ok(None) => {}
                Err(message) => return Err(retry(ClientError::Token { message })),
            }
        }
        Ok(request)
    }

    /// Sends `request` with the configured headers and token, within `timeout`.
    async fn exchange(
        &self,
        request: HttpRequest,
        timeout: Duration,
    ) -> Result<HttpResponse, Failure> {
        let request = self.authorize(request).await?;
        // A request that never answers (a dead connection) must not stall the loop.
        match select(self.platform.fetch(request), self.platform.sleep(timeout)).await {
            Either::Left((Ok(response), _)) => Ok(response),
            Either::Left((Err(message), _)) => Err(retry(ClientError::Network { message })),
            Either::Right(((), _)) => Err(retry(ClientError::Timeout { after: timeout })),
        }
    }

    /// Shows `error` in the status (`show`: which side failed), reports it unless
    /// transient, and waits `delay`.
    async fn back_off(
        &self,
        error: ClientError,
        delay: Duration,
        show: fn(&mut Parts, ClientError, DateTime<Utc>),
    ) {
        let retry_at = retry_time(Utc::now(), delay);
        if !error.is_transient() {
            self.report(error.clone());
        }
        self.update_status(|status| show(status, error, retry_at));
        self.platform.sleep(delay).await;
    }

    /// After a failed poll: a reset moves the cursor (and is reported); anything else
    /// backs off.
    async fn recover_receiving(&self, failure: Failure, backoff: &mut Backoff) {
        match failure {
            Failure::Reset { code, resume_after } => {
                let from = self.lock().delivery.reset(resume_after);
                self.save_cursor(resume_after);
                self.report(ClientError::CursorReset {
                    code,
                    from: from.unwrap_or_default(),
                    resume_after,
                });
            }
            Failure::Retry { error, retry_after } => {
                let delay = self.next_delay(backoff, retry_after);
                self.back_off(error, delay, Parts::receive_failed).await;
            }
            Failure::Rejected(error) => {
                // A query the server will not take: the app hears of it; retrying slowly
                // lets a fixed server pick up again.
                let delay = self.next_delay(backoff, None);
                self.back_off(error, delay, Parts::receive_failed).await;
            }
        }
    }

    /// The query of every poll and stream: after `cursor`, or by `since` while there is
    /// none, with the subscription filter; and the filter's version and what wakes the
    /// request when the filter widens (see [`Inner::subscription`]).
    fn events_query(
        &self,
        cursor: Option<u64>,
        since: Option<DateTime<Utc>>,
    ) -> (EventsQuery, u64, oneshot::Receiver<()>) {
        let (event_types, aggregate_ids, filter, widened) = self.subscription();
        let query = EventsQuery {
            after: cursor,
            since: since.filter(|_| cursor.is_none()),
            event_types,
            aggregate_ids,
            ..EventsQuery::default()
        };
        (query, filter, widened)
    }

    fn next_delay(&self, backoff: &mut Backoff, retry_after: Option<Duration>) -> Duration {
        backoff.next(retry_after, &mut self.lock().jitter)
    }
}

/// A failure worth retrying as is.
fn retry(error: ClientError) -> Failure {
    Failure::Retry {
        error,
        retry_after: None,
    }
}

/// When a retry after `delay` from `now` is due; the latest time there is when that lies
/// past it (a backoff of `Duration::MAX`).
fn retry_time(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A stream that brings no byte within this falls back to long-polling: the server
/// writes `: ok` at once, so something in between holds the bytes (a buffering proxy).
const STREAM_FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);
/// After falling back, long-poll this long before streaming is tried again.
const STREAM_AGAIN_AFTER: Duration = Duration::from_secs(300);
/// The server writes a keep-alive when nothing else was written for this long.
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The receiving loop: find the start, then stream or poll.
async fn receive(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(inner.settings.backoff.0, inner.settings.backoff.1);
    let since = resolve_start(&inner, &mut backoff).await;
    match inner.settings.mode {
        Mode::Stream { wait } => loop {
            stream(&inner, since, &mut backoff).await;
            let until = retry_time(Utc::now(), STREAM_AGAIN_AFTER);
            poll(
                &inner,
                since,
                Mode::LongPoll { wait },
                Some(until),
                &mut backoff,
            )
            .await;
        },
        mode => poll(&inner, since, mode, None, &mut backoff).await,
    }
}

/// Sets the cursor to where receiving starts: the saved one, the configured position, or
/// the server's head (asked for until it answers). For a start by time it returns the
/// time instead: the first poll asks by it, and its answer sets the cursor.
async fn resolve_start(inner: &Inner, backoff: &mut Backoff) -> Option<DateTime<Utc>> {
    let mut start = inner.settings.start;
    if let Some(store) = &inner.settings.cursor_store {
        match store.load(inner.settings.cursor_key()) {
            Ok(Some(saved)) => start = Start::Position(saved),
            Ok(None) => {}
            Err(message) => inner.report(ClientError::CursorStore { message }),
        }
    }
    match start {
        Start::Position(position) => inner.lock().delivery.start_at(position),
        Start::Timestamp(since) => return Some(since),
        Start::Now => {
            while inner.lock().delivery.cursor().is_none() {
                let request = protocol::head_request(&inner.settings.server_url);
                match inner
                    .exchange(request, inner.settings.poll_timeout())
                    .await
                    .and_then(protocol::read_head)
                {
                    Ok(head) => {
                        inner.lock().delivery.start_at(head);
                        inner.save_cursor(head);
                        inner.receiving(inner.settings.mode.transport());
                        backoff.reset();
                    }
                    Err(failure) => inner.recover_receiving(failure, backoff).await,
                }
            }
        }
    }
    None
}

/// Polls after the cursor (by `since` while there is none), dispatches, repeats; in
/// `mode` (long-poll or poll), until the time `until` if given.
async fn poll(
    inner: &Inner,
    since: Option<DateTime<Utc>>,
    mode: Mode,
    until: Option<DateTime<Utc>>,
    backoff: &mut Backoff,
) {
    // Catch up without waiting; long-poll only once a page came back short.
    let mut caught_up = false;
    while until.is_none_or(|until| Utc::now() < until) {
        let cursor = inner.lock().delivery.cursor();
        let wait = match mode {
            Mode::Stream { wait } | Mode::LongPoll { wait } => caught_up.then_some(wait),
            Mode::Poll { .. } => None,
        };
        let (query, filter, widened) = inner.events_query(cursor, since);
        let query = EventsQuery {
            limit: Some(inner.settings.page_size.into()),
            wait: wait.filter(|_| cursor.is_some()),
            ..query
        };
        let asked_at = Utc::now();
        let exchange = std::pin::pin!(inner.exchange(
            protocol::events_request(&inner.settings.server_url, &query),
            inner.settings.poll_timeout(),
        ));
        let result = match select(exchange, widened).await {
            Either::Left((result, _)) => result.and_then(protocol::read_page),
            // The app handles a new type: drop this request, ask again with it.
            Either::Right((Ok(()), _)) => continue,
            // Not widened (the sender is only replaced by the next poll): wait on.
            Either::Right((Err(_), exchange)) => exchange.await.and_then(protocol::read_page),
        };
        match result {
            Ok(page) => {
                backoff.reset();
                inner.receiving(mode.transport());
                let count = page.events.len() + page.undecodable.len();
                if !inner.deliver(page, filter) {
                    // Asked for with a narrower filter than now: ask again.
                    continue;
                }
                let short = count < inner.settings.page_size as usize;
                match mode {
                    Mode::Poll { interval } if short => inner.platform.sleep(interval).await,
                    Mode::LongPoll { wait } if caught_up && count == 0 => {
                        // An empty answer long before the wait ended: the server is
                        // shutting down and answers at once. Do not spin on it.
                        let waited = (Utc::now() - asked_at).to_std().unwrap_or_default();
                        if waited < wait / 2 {
                            inner.platform.sleep(inner.settings.backoff.0).await;
                        }
                    }
                    _ => {}
                }
                caught_up = short;
            }
            Err(failure) => {
                if matches!(failure, Failure::Reset { .. }) {
                    caught_up = false;
                }
                inner.recover_receiving(failure, backoff).await;
            }
        }
    }
}

/// How one event stream ended.
enum StreamEnd {
    /// The server ended it (it does after a while, or when shutting down); `delivered`:
    /// whether it brought any message.
    Ended {
        delivered: bool,
    },
    /// It brought no byte in time, or the server does not stream: long-poll instead.
    FallBack,
    /// The app handles a new type since it opened: open one with the wider filter.
    Widened,
    Failed(Failure),
}

/// Follows the server's event stream after the cursor (by `since` while there is none),
/// reconnecting with `Last-Event-ID` after each end, until a stream brings nothing in
/// time.
async fn stream(inner: &Inner, since: Option<DateTime<Utc>>, backoff: &mut Backoff) {
    let mut reconnecting = false;
    loop {
        let cursor = inner.lock().delivery.cursor();
        let (query, filter, widened) = inner.events_query(cursor, since);
        // In the browser `after` alone says it: `Last-Event-ID` is no CORS-safelisted
        // header, so it would cost a preflight, and fail where a server does not allow it.
        let last_event_id = cursor.filter(|_| reconnecting && !cfg!(target_arch = "wasm32"));
        let request = protocol::stream_request(&inner.settings.server_url, &query, last_event_id);
        let end = match select(
            std::pin::pin!(follow(inner, request, backoff, filter)),
            widened,
        )
        .await
        {
            Either::Left((end, _)) => end,
            // The app handles a new type: drop this stream, open one with it.
            Either::Right((Ok(()), _)) => StreamEnd::Widened,
            // Not widened (the sender is only replaced by the next request): follow on.
            Either::Right((Err(_), following)) => following.await,
        };
        match end {
            StreamEnd::Widened => reconnecting = true,
            StreamEnd::Ended { delivered } => {
                reconnecting = true;
                // A server that ends every stream at once (shutting down) must not
                // make the client spin.
                if !delivered {
                    inner.platform.sleep(inner.settings.backoff.0).await;
                }
            }
            StreamEnd::FallBack => return,
            StreamEnd::Failed(failure) => {
                reconnecting = true;
                inner.recover_receiving(failure, backoff).await;
            }
        }
    }
}

/// The text of an error answer's body, as much as arrives within the request timeout
/// (an error body is small; a proxy's may not end).
async fn read_to_end(
    inner: &Inner,
    body: &mut crate::platform::BoxStream<'static, Result<Vec<u8>, String>>,
) -> String {
    let mut bytes = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = body.next().await {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > protocol::MAX_MESSAGE_BYTES {
                break;
            }
        }
    };
    select(
        Box::pin(read),
        inner.platform.sleep(inner.settings.timeout_beyond_wait),
    )
    .await;
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Opens one stream and delivers what it brings, until it ends.
async fn follow(
    inner: &Inner,
    request: HttpRequest,
    backoff: &mut Backoff,
    filter: u64,
) -> StreamEnd {
    let request = match inner.authorize(request).await {
        Ok(request) => request,
        Err(failure) => return StreamEnd::Failed(failure),
    };
    // One deadline for the answer and its first bytes.
    let mut first_bytes = inner.platform.sleep(STREAM_FIRST_BYTES_WITHIN);
    let response = match select(inner.platform.fetch_stream(request), &mut first_bytes).await {
        Either::Left((Ok(response), _)) => response,
        Either::Left((Err(message), _)) => {
            return StreamEnd::Failed(retry(ClientError::Network { message }))
        }
        Either::Right(((), _)) => return StreamEnd::FallBack,
    };
    let StreamingResponse {
        status,
        content_type,
        retry_after,
        mut body,
    } = response;
    if !(200..300).contains(&status) {
        let body = read_to_end(inner, &mut body).await;
        return StreamEnd::Failed(protocol::read_stream_error(HttpResponse {
            status,
            cursor: None,
            retry_after,
            body,
        }));
    }
    if !protocol::is_event_stream(content_type.as_deref()) {
        // A server without streams answered with a page.
        return StreamEnd::FallBack;
    }
    let mut parser = SseParser::new(protocol::MAX_MESSAGE_BYTES);
    let mut frames = Vec::new();
    let mut got_bytes = false;
    let mut delivered = false;
    let mut deadline = first_bytes;
    let idle = STREAM_KEEP_ALIVE.saturating_add(inner.settings.timeout_beyond_wait);
    loop {
        let chunk = match select(body.next(), &mut deadline).await {
            Either::Left((Some(Ok(chunk)), _)) => chunk,
            Either::Left((Some(Err(message)), _)) => {
                return StreamEnd::Failed(retry(ClientError::Network { message }))
            }
            Either::Left((None, _)) => return StreamEnd::Ended { delivered },
            Either::Right(((), _)) if !got_bytes => return StreamEnd::FallBack,
            Either::Right(((), _)) => {
                return StreamEnd::Failed(retry(ClientError::Timeout { after: idle }))
            }
        };
        deadline = inner.platform.sleep(idle);
        if chunk.is_empty() {
            continue;
        }
        if !std::mem::replace(&mut got_bytes, true) {
            backoff.reset();
            inner.receiving(Transport::Stream);
        }
        frames.clear();
        let parsed = parser.feed(&chunk, &mut frames);
        // The messages of one read are delivered together, up to one that stops them.
        let mut page = Page {
            events: Vec::new(),
            cursor: inner.lock().delivery.cursor().unwrap_or_default(),
            undecodable: Vec::new(),
        };
        let mut any = false;
        let mut stop = None;
        for frame in &frames {
            if let Frame::Message(message) = frame {
                match protocol::read_message(message, &mut page) {
                    Ok(added) => any |= added,
                    Err(failure) => {
                        stop = Some(failure);
                        break;
                    }
                }
            }
        }
        if any {
            delivered = true;
            if !inner.deliver(page, filter) {
                // Opened with a narrower filter than now.
                return StreamEnd::Widened;
            }
        }
        if let Some(failure) = stop {
            return StreamEnd::Failed(failure);
        }
        if let Err(too_large) = parsed {
            return StreamEnd::Failed(retry(ClientError::InvalidResponse {
                message: too_large.to_string(),
            }));
        }
    }
}

/// The sending loop: posts the outbox's oldest event until the server stored or refused
/// it, then the next; waits for a publish while the outbox is empty.
async fn send(inner: Arc<Inner>, mut queued: UnboundedReceiver<()>) {
    loop {
        let Some(event) = inner.lock().outbox.next().cloned() else {
            // The sender goes when the client closes.
            if queued.next().await.is_none() {
                return;
            }
            continue;
        };
        let request = match protocol::post_request(&inner.settings.server_url, &event) {
            Ok(request) => request,
            Err(error) => {
                inner.settle_oldest(true);
                inner.report(error);
                continue;
            }
        };
        loop {
            // The same body each time: the event id makes the retry idempotent.
            let result = inner
                .exchange(request.clone(), inner.settings.timeout_beyond_wait)
                .await
                .and_then(protocol::read_receipt);
            match result {
                Ok(receipt) => {
                    inner.settle_oldest(false);
                    inner.stored.send(receipt);
                    break;
                }
                Err(Failure::Retry { error, retry_after }) => {
                    let delay = {
                        let state = &mut *inner.lock();
                        state.outbox.retry_delay(retry_after, &mut state.jitter)
                    };
                    inner.back_off(error, delay, Parts::send_failed).await;
                }
                Err(Failure::Rejected(error)) => {
                    inner.settle_oldest(true);
                    inner.report(match error {
                        ClientError::Http {
                            status,
                            code,
                            message,
                        } => ClientError::Rejected {
                            event: Box::new(event),
                            status,
                            code,
                            message,
                        },
                        other => other,
                    });
                    break;
                }
                Err(Failure::Reset { code, .. }) => {
                    // Not an answer a post can get; treat it as a refusal.
                    inner.settle_oldest(true);
                    inner.report(ClientError::Rejected {
                        event: Box::new(event),
                        status: 410,
                        code,
                        message: "unexpected answer to a post".into(),
                    });
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
