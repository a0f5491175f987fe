//! Where events are kept: the [`EventStore`] trait and its backends.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use distributed_events_shared::{filter_selects, EventsQuery, StoredEvent};
use tokio::sync::watch;

mod memory;
mod mysql;
mod postgres;
mod sql;
mod sqlite;
mod writer;

pub use memory::MemoryStore;
pub use mysql::MySqlStore;
pub use postgres::PostgresStore;
pub use sql::SqlStore;
pub use sqlite::SqliteStore;

/// A failure of the store itself (as opposed to bad input).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused the operation; retrying later may work.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The store has been closed.
    #[error("event store is closed")]
    Closed,
    /// Stored data could not be read back.
    #[error("event store holds data that does not decode: {0}")]
    Corrupt(String),
    /// The event is valid but this backend cannot store it (PostgreSQL's `text` refuses
    /// U+0000); retrying will not help.
    #[error("the event store cannot store this event: {0}")]
    Unstorable(String),
}

impl StoreError {
    /// A copy, for each caller of a failed group (`sqlx::Error`, the usual source, is not
    /// `Clone`).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Unavailable(message) => Self::Unavailable(message.clone()),
            Self::Closed => Self::Closed,
            Self::Corrupt(message) => Self::Corrupt(message.clone()),
            Self::Unstorable(message) => Self::Unstorable(message.clone()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// What an append did with one event.
#[derive(Clone, Debug, PartialEq)]
pub enum Appended {
    /// Stored now, at the position it carries.
    New(StoredEvent),
    /// An event with this id was stored before; this is that event, unchanged.
    Existing(StoredEvent),
}

impl Appended {
    /// The stored event, whichever way.
    pub fn event(&self) -> &StoredEvent {
        match self {
            Self::New(event) | Self::Existing(event) => event,
        }
    }
}

/// One answer to a cursor read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Page {
    /// The events, in position order.
    pub events: Vec<StoredEvent>,
    /// The `after` to read from next. At least the last event's position; more when the
    /// read skipped events the predicate refused.
    pub cursor: u64,
    /// Holds `limit` events or was cut by the byte limit: its cursor is then the last
    /// event's position, and no later commit changes the page.
    pub full: bool,
}

/// How many events [`EventStore::read_after`] may examine per event it returns before it
/// stops and answers with what it has (and a cursor past what it examined).
const SCAN_FACTOR: usize = 16;

/// How many positions a read filtered by type or aggregate lets the store's query cover:
/// a filter that matches few events would otherwise scan all history in one request.
/// The cursor moves past what was covered, so the next read goes on from there.
pub const FILTERED_SCAN_POSITIONS: u64 = 100_000;

/// Which events a read takes, in the store's own query: those of `tenant` (when given),
/// of one of `event_types` (unless empty) and of one of `aggregate_ids` (unless empty).
#[derive(Clone, Copy, Debug, Default)]
pub struct Selection<'a> {
    /// Only this tenant's events.
    pub tenant: Option<&'a str>,
    /// Only events of these types; empty: every type.
    pub event_types: &'a [String],
    /// Only events of these aggregates; empty: every aggregate.
    pub aggregate_ids: &'a [String],
}

impl<'a> Selection<'a> {
    /// Every event of `tenant` (of every tenant when `None`).
    pub fn tenant(tenant: Option<&'a str>) -> Self {
        Self {
            tenant,
            ..Self::default()
        }
    }

    /// The events of `tenant` that `query`'s filter takes.
    pub fn of_query(tenant: Option<&'a str>, query: &'a EventsQuery) -> Self {
        Self {
            tenant,
            event_types: &query.event_types,
            aggregate_ids: &query.aggregate_ids,
        }
    }

    /// Whether a type or aggregate filter is set.
    pub fn is_filtered(&self) -> bool {
        !self.event_types.is_empty() || !self.aggregate_ids.is_empty()
    }

    /// Whether `event` is one of the selected events.
    pub fn selects(&self, event: &StoredEvent) -> bool {
        self.tenant
            .is_none_or(|tenant| event.tenant_id.as_deref() == Some(tenant))
            && filter_selects(self.event_types, &event.event_type)
            && filter_selects(self.aggregate_ids, &event.aggregate_id)
    }
}

/// Durable, ordered storage of events (the seed's `EventRepository`).
///
/// Positions are assigned by the store, strictly increasing in commit order, and never
/// reused, even after events are deleted. Appends are idempotent by event id.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores `events` in order, each at a new position, or reports the event stored
    /// before under the same id. Returns once the new events are durable.
    async fn append_batch(&self, events: Vec<StoredEvent>) -> Result<Vec<Appended>, StoreError>;

    /// Up to `limit` events with `after < position <= through`, in position order, of
    /// those that `selection` takes (filtered in the query: the tenant through an index,
    /// types and aggregates on the rows in position order).
    /// Stops early, without reading further rows, once the events' sizes
    /// ([`event_size`]) reach `max_bytes` in total, so a read holds about `max_bytes`
    /// plus one event however large events are.
    async fn read_range(
        &self,
        after: u64,
        through: u64,
        limit: usize,
        max_bytes: usize,
        selection: &Selection<'_>,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Up to `limit` events with `createdAt >= since`, in position order; with a
    /// `tenant`, only that tenant's events.
    async fn read_since(
        &self,
        since: DateTime<Utc>,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The event with this id.
    async fn get(&self, id: uuid::Uuid) -> Result<Option<StoredEvent>, StoreError>;

    /// Deletes every event stored before `cutoff` (by the store's clock), as a prefix of
    /// positions, and returns how many it deleted.
    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError>;

    /// The highest position retention has deleted (0 if none): a cursor below it has
    /// missed events.
    async fn pruned_through(&self) -> Result<u64, StoreError>;

    /// The highest position ever assigned (0 if none), read from the store itself.
    async fn head(&self) -> Result<u64, StoreError>;

    /// The highest committed position this process knows of, updated as commits happen
    /// (here or, for shared stores, on other instances). Long-polls wait on it.
    ///
    /// It must start at [`head`](EventStore::head) as of opening the store: the server's
    /// in-memory tail of recent events starts there, and vouches for every position
    /// after it.
    fn watch_head(&self) -> watch::Receiver<u64>;

    /// Flushes and releases the store. Later calls fail with [`StoreError::Closed`].
    async fn close(&self);

    /// Whether a write would be taken now, for `/healthz`. `false` while the store
    /// answers reads but refuses writes (SQLite: another process holds the write lock).
    async fn accepts_writes(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Stores one event; see [`EventStore::append_batch`].
    async fn append(&self, event: StoredEvent) -> Result<Appended, StoreError> {
        let mut appended = self.append_batch(vec![event]).await?;
        appended
            .pop()
            .ok_or_else(|| StoreError::Corrupt("append returned no result".into()))
    }

    /// Up to `limit` events after `after` that `selection` takes and for which `visible`
    /// holds, in position order, whose sizes ([`event_size`]) add up to at most
    /// `max_bytes`; a page holds at least one event all the same, so a reader always
    /// progresses.
    /// The selection and the predicate run before the limits, so a page is full whenever
    /// enough such events exist; the scan stops after examining `limit * 16` events (and,
    /// with a type or aggregate filter, [`FILTERED_SCAN_POSITIONS`] positions), and the
    /// cursor then lies past what was examined so that the next read goes on from there.
    /// When `limit` or the byte limit ends the page, it is [`full`](Page::full) and the
    /// cursor is the last event's position, not past events the predicate refused after
    /// it: so the page is the same whoever builds it (the server's tail reads it the same
    /// way).
    ///
    /// The read covers the committed positions as of its start ([`head`](Self::head)):
    /// every position up to the head is committed (positions follow commit order), so a
    /// query that finds fewer events than asked for has seen every selected event up to
    /// there, and the cursor moves to it, past what the selection left out.
    async fn read_after(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
        selection: &Selection<'_>,
        visible: &Visibility<'_>,
    ) -> Result<Page, StoreError> {
        let limit = limit.max(1);
        let mut through = self.head().await?;
        if selection.is_filtered() {
            through = through.min(after.saturating_add(FILTERED_SCAN_POSITIONS));
        }
        let mut page = Page {
            events: Vec::new(),
            cursor: after,
            full: false,
        };
        let mut bytes = 0usize;
        let mut budget = limit.saturating_mul(SCAN_FACTOR);
        while page.events.len() < limit && budget > 0 {
            let wanted = limit.min(budget);
            let room = max_bytes.saturating_sub(bytes).max(1);
            let batch = self
                .read_range(page.cursor, through, wanted, room, selection)
                .await?;
            budget = budget.saturating_sub(batch.len());
            let mut read_bytes = 0usize;
            let count = batch.len();
            for event in batch {
                let size = event_size(&event);
                read_bytes = read_bytes.saturating_add(size);
                if visible(&event) {
                    if let Some(last) = page.events.last() {
                        if bytes.saturating_add(size) > max_bytes {
                            // Full: this event starts the next page.
                            page.cursor = last.position.unwrap_or(page.cursor);
                            page.full = true;
                            return Ok(page);
                        }
                    }
                    bytes += size;
                    page.cursor = event.position.unwrap_or(page.cursor);
                    page.events.push(event);
                    if page.events.len() == limit || bytes >= max_bytes {
                        page.full = true;
                        return Ok(page);
                    }
                } else {
                    page.cursor = event.position.unwrap_or(page.cursor);
                }
            }
            // A batch that stopped short of both limits found every selected event up to
            // `through`: the cursor goes there, past the events the selection left out.
            if count < wanted && read_bytes < room {
                page.cursor = page.cursor.max(through);
                break;
            }
        }
        Ok(page)
    }
}

/// What an event counts for against a byte limit: about the length of its JSON (its text,
/// its context's JSON, and 256 bytes for the keys, id, time and position; characters
/// that JSON escapes count once). Cheap: no pass over the payload.
pub fn event_size(event: &StoredEvent) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut context = Counter(0);
    if !event.context.is_empty() {
        // A map of JSON values always serializes.
        let _ = serde_json::to_writer(&mut context, &event.context);
    }
    let optional = [&event.user_id, &event.tenant_id, &event.session_id]
        .into_iter()
        .flatten()
        .map(String::len)
        .sum::<usize>();
    256 + event.aggregate_id.len()
        + event.event_type.len()
        + event.event_json.len()
        + optional
        + context.0
}

/// Whether the reader may see an event (see [`EventStore::read_after`]).
pub type Visibility<'a> = dyn Fn(&StoredEvent) -> bool + Send + Sync + 'a;

/// A shared handle to any store.
pub type SharedStore = Arc<dyn EventStore>;

/// Opens the store a `--database` value names: `memory`, `sqlite://PATH`,
/// `postgres://...` (also `postgresql://...`) or `mysql://...` (MySQL or MariaDB).
pub async fn open(database: &str) -> Result<SharedStore, OpenError> {
    if database == "memory" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if let Some(path) = database.strip_prefix("sqlite://") {
        return Ok(Arc::new(SqliteStore::open(path).await?));
    }
    if database.starts_with("postgres://") || database.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::open(database).await?));
    }
    if database.starts_with("mysql://") {
        return Ok(Arc::new(MySqlStore::open(database).await?));
    }
    Err(OpenError::UnknownScheme(database.to_owned()))
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The `--database` value names no backend.
    #[error("unsupported database `{0}`: use `memory`, `sqlite://PATH`, `postgres://USER@HOST:PORT/DATABASE` or `mysql://USER@HOST:PORT/DATABASE`")]
    UnknownScheme(String),
    /// The backend failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Microseconds since the Unix epoch: how the SQL backends keep time.
pub(crate) fn to_micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// The inverse of [`to_micros`].
pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {micros} out of range")))
}

impl fmt::Debug for dyn EventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventStore")
    }
}
