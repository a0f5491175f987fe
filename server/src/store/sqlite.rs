//! The embedded default store: one SQLite file in WAL mode with `synchronous = FULL`, so
//! an acknowledged event survives `kill -9` and power loss.
//!
//! All writes go through one writer task. It takes every append that is waiting when it
//! starts a transaction and commits them together (group commit), so many concurrent
//! producers share one fsync. Reads use a separate pool and never wait for the writer.
//!
//! One server per file: the store holds an OS lock on a file beside the database
//! (`PATH-lock`) for as long as it is open, and a second server on the same file is
//! refused at start. SQLite would let it in, but each server keeps the head and the
//! recent events in memory, so neither would see the other's commits.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use distributed_events_shared::StoredEvent;
use fs4::fs_std::FileExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::sql::{decode, decode_all, decode_until, sql_limit, sql_position, to_position};
use super::{to_micros, Appended, EventStore, StoreError};

/// Most events one transaction takes, so that one huge burst does not starve readers of
/// its acknowledgements.
const MAX_GROUP: usize = 4096;

/// Most rows one statement takes: 10 columns each stays far below SQLite's limit of
/// 32,766 parameters.
const MAX_ROWS_PER_STATEMENT: usize = 1000;

/// How long a write waits for another process's write lock before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the `/healthz` write probe waits for the write lock, and how long its
/// answer is reused, so that frequent health checks cost the writer little.
const PROBE_WAIT: Duration = Duration::from_millis(200);
const PROBE_REUSE: Duration = Duration::from_secs(1);

const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position     INTEGER PRIMARY KEY AUTOINCREMENT, -- AUTOINCREMENT: never reused after deletes
    id           TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,                   -- microseconds since the epoch
    stored_at    INTEGER NOT NULL,                   -- the server's clock, for retention
    aggregate_id TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    event_json   TEXT    NOT NULL,
    user_id      TEXT,
    tenant_id    TEXT,
    session_id   TEXT,
    context      TEXT                                -- JSON object, NULL when empty
);
CREATE INDEX IF NOT EXISTS events_created_at ON events (created_at);
CREATE INDEX IF NOT EXISTS events_stored_at ON events (stored_at);
CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant_id, position);
CREATE TABLE IF NOT EXISTS retention (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through INTEGER NOT NULL
);
INSERT OR IGNORE INTO retention (id, pruned_through) VALUES (1, 0);
";

const COLUMNS: &str =
    "position, id, created_at, aggregate_id, event_type, event_json, user_id, tenant_id, session_id, context";

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    readers: SqlitePool,
    head: watch::Sender<u64>,
    pruned_through: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The last write probe: when, and whether the write lock could be had.
    last_probe: Mutex<Option<(Instant, bool)>>,
    /// The lock that keeps a second server off this file; `None` for an in-memory
    /// database, and once closed.
    owner_lock: std::sync::Mutex<Option<File>>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Command {
    Append(Vec<StoredEvent>, Reply<Vec<Appended>>),
    Prune(DateTime<Utc>, Reply<u64>),
    /// Answers whether the write lock can be had now.
    Probe(Reply<bool>),
    /// Ends the writer once the commands queued before it are done.
    Close,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    ///
    /// Fails when another process (another server) has the file open as a store.
    pub async fn open(path: &str) -> Result<Self, StoreError> {
        let owner_lock = lock_owner(path)?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let mut writer = SqliteConnection::connect_with(&options).await?;
        migrate(&mut writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            // A local file has no connection to go stale: skip the ping on every acquire.
            .test_before_acquire(false)
            // Rows wait in a channel for the reader; a short one keeps a read that stops
            // at its byte limit from holding many large rows it will not use.
            .connect_with(options.read_only(true).row_buffer_size(2))
            .await?;

        let head: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        )
        .fetch_one(&mut writer)
        .await?;
        let pruned: i64 = sqlx::query_scalar("SELECT pruned_through FROM retention WHERE id = 1")
            .fetch_one(&mut writer)
            .await?;
        let head = watch::Sender::new(to_position(head)?);
        let pruned_through = Arc::new(AtomicU64::new(to_position(pruned)?));

        let (commands, receiver) = mpsc::channel(MAX_GROUP);
        let task = tokio::spawn(run_writer(
            writer,
            receiver,
            head.clone(),
            pruned_through.clone(),
        ));
        Ok(Self {
            commands,
            readers,
            head,
            pruned_through,
            writer: Mutex::new(Some(task)),
            last_probe: Mutex::new(None),
            owner_lock: std::sync::Mutex::new(owner_lock),
        })
    }

    async fn send<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Takes the lock file beside the database at `path` (`None` for an in-memory one).
/// An OS lock: it goes away with the process, however the process ends.
fn lock_owner(path: &str) -> Result<Option<File>, StoreError> {
    let file = path.split('?').next().unwrap_or_default();
    if file.is_empty() || file == ":memory:" {
        return Ok(None);
    }
    let lock_path = format!("{file}-lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| StoreError::Unavailable(format!("cannot open {lock_path}: {error}")))?;
    match lock.try_lock_exclusive() {
        Ok(true) => Ok(Some(lock)),
        Ok(false) => Err(StoreError::Unavailable(format!(
            "another server is using {file} (it holds {lock_path}): stop it, or give this \
             server a database of its own; two servers on one SQLite file would not see each \
             other's events (for several instances, use PostgreSQL)"
        ))),
        Err(error) => Err(StoreError::Unavailable(format!(
            "cannot lock {lock_path}: {error}"
        ))),
    }
}

async fn migrate(connection: &mut SqliteConnection) -> Result<(), StoreError> {
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *connection)
        .await?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {version}, newer than this server's {SCHEMA_VERSION}; upgrade the server"
        )));
    }
    let mut tx = connection.begin().await?;
    sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
    sqlx::raw_sql(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn run_writer(
    mut connection: SqliteConnection,
    mut commands: mpsc::Receiver<Command>,
    head: watch::Sender<u64>,
    pruned_through: Arc<AtomicU64>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Append(events, reply) => {
                // Group commit: take every append already waiting into this transaction.
                let mut group = vec![(events, reply)];
                let mut size = group[0].0.len();
                let mut next = None;
                while size < MAX_GROUP {
                    match commands.try_recv() {
                        Ok(Command::Append(events, reply)) => {
                            size += events.len();
                            group.push((events, reply));
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                match append_group(&mut connection, &group).await {
                    Ok((results, last)) => {
                        head.send_if_modified(|known| {
                            let changed = last > *known;
                            *known = (*known).max(last);
                            changed
                        });
                        for ((_, reply), result) in group.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "append to SQLite failed");
                        roll_back(&mut connection).await;
                        for (_, reply) in group {
                            let _ = reply.send(Err(StoreError::Unavailable(error.to_string())));
                        }
                    }
                }
                match next {
                    Some(Command::Prune(cutoff, reply)) => {
                        let _ = reply.send(
                            prune_or_roll_back(&mut connection, cutoff, &pruned_through).await,
                        );
                    }
                    Some(Command::Probe(reply)) => {
                        let _ = reply.send(Ok(probe(&mut connection).await));
                    }
                    Some(Command::Close) => break,
                    _ => {}
                }
            }
            Command::Prune(cutoff, reply) => {
                let _ =
                    reply.send(prune_or_roll_back(&mut connection, cutoff, &pruned_through).await);
            }
            Command::Probe(reply) => {
                let _ = reply.send(Ok(probe(&mut connection).await));
            }
            Command::Close => break,
        }
    }
    if let Err(error) = connection.close().await {
        tracing::warn!(%error, "closing the SQLite writer failed");
    }
}

/// Appends every batch of the group in one transaction; returns the per-batch results
/// and the highest position assigned.
async fn append_group(
    connection: &mut SqliteConnection,
    group: &[(Vec<StoredEvent>, Reply<Vec<Appended>>)],
) -> Result<(Vec<Vec<Appended>>, u64), StoreError> {
    let stored_at = to_micros(distributed_events_shared::now());
    let events: Vec<&StoredEvent> = group.iter().flat_map(|(events, _)| events).collect();
    begin(connection).await?;

    // The writer is alone, so looking first is race-free; and unlike
    // `ON CONFLICT DO NOTHING` it spends no position on a replay.
    let mut known: HashMap<Uuid, StoredEvent> = HashMap::new();
    for chunk in events.chunks(MAX_ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for event in chunk {
            query = query.bind(event.id.to_string());
        }
        for row in query.fetch_all(&mut *connection).await? {
            let existing = decode(&row)?;
            known.insert(existing.id, existing);
        }
    }
    // The first of several events with one id is the one stored.
    let mut fresh: Vec<&StoredEvent> = Vec::new();
    let mut taken = HashSet::new();
    for event in &events {
        if !known.contains_key(&event.id) && taken.insert(event.id) {
            fresh.push(event);
        }
    }

    let mut positions: HashMap<Uuid, u64> = HashMap::with_capacity(fresh.len());
    for chunk in fresh.chunks(MAX_ROWS_PER_STATEMENT) {
        // Rows take positions in the order of VALUES, which is the order of the group.
        let sql = format!(
            "INSERT INTO events (id, created_at, stored_at, aggregate_id, event_type, event_json, \
             user_id, tenant_id, session_id, context) VALUES {} RETURNING id, position",
            vec![format!("({})", placeholders(10, 1)); chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for event in chunk {
            let context = if event.context.is_empty() {
                None
            } else {
                Some(
                    serde_json::to_string(&event.context)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                )
            };
            query = query
                .bind(event.id.to_string())
                .bind(to_micros(event.created_at))
                .bind(stored_at)
                .bind(&event.aggregate_id)
                .bind(&event.event_type)
                .bind(&event.event_json)
                .bind(&event.user_id)
                .bind(&event.tenant_id)
                .bind(&event.session_id)
                .bind(context);
        }
        for row in query.fetch_all(&mut *connection).await? {
            let id: String = row.try_get("id")?;
            let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            positions.insert(id, to_position(row.try_get("position")?)?);
        }
    }
    commit(connection).await?;

    // Each stored event as it was stored: for a second post of one id in this group, the
    // answer is the first post's event, not its own.
    let mut stored: HashMap<Uuid, StoredEvent> = HashMap::with_capacity(fresh.len());
    for event in fresh {
        let position = *positions.get(&event.id).ok_or_else(|| {
            StoreError::Corrupt(format!("no position came back for event {}", event.id))
        })?;
        let event = StoredEvent {
            position: Some(position),
            ..event.clone()
        };
        stored.insert(event.id, event);
    }
    let last = positions.values().copied().max().unwrap_or(0);
    let mut answered: HashSet<Uuid> = HashSet::with_capacity(stored.len());
    let results = group
        .iter()
        .map(|(events, _)| {
            events
                .iter()
                .map(
                    |event| match (known.get(&event.id), stored.get(&event.id)) {
                        (Some(existing), _) => Ok(Appended::Existing(existing.clone())),
                        (None, Some(new)) if answered.insert(event.id) => {
                            Ok(Appended::New(new.clone()))
                        }
                        (None, Some(first)) => Ok(Appended::Existing(first.clone())),
                        (None, None) => Err(StoreError::Corrupt(format!(
                            "event {} was neither found nor stored",
                            event.id
                        ))),
                    },
                )
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((results, last))
}

/// `count` groups of `width` placeholders: `?, ?, ?` for a width of 1, `?, ?` per group.
fn placeholders(width: usize, count: usize) -> String {
    vec!["?"; width * count].join(", ")
}

async fn prune_or_roll_back(
    connection: &mut SqliteConnection,
    cutoff: DateTime<Utc>,
    pruned_through: &AtomicU64,
) -> Result<u64, StoreError> {
    let outcome = prune(connection, cutoff, pruned_through).await;
    if outcome.is_err() {
        roll_back(connection).await;
    }
    outcome
}

async fn prune(
    connection: &mut SqliteConnection,
    cutoff: DateTime<Utc>,
    pruned_through: &AtomicU64,
) -> Result<u64, StoreError> {
    // The writer is alone: what it reads here stays true until it writes.
    let last: Option<i64> =
        sqlx::query_scalar("SELECT MAX(position) FROM events WHERE stored_at < ?")
            .bind(to_micros(cutoff))
            .fetch_one(&mut *connection)
            .await?;
    let Some(last) = last else { return Ok(0) };
    begin(connection).await?;
    let deleted = sqlx::query("DELETE FROM events WHERE position <= ?")
        .bind(last)
        .execute(&mut *connection)
        .await?
        .rows_affected();
    sqlx::query("UPDATE retention SET pruned_through = MAX(pruned_through, ?) WHERE id = 1")
        .bind(last)
        .execute(&mut *connection)
        .await?;
    // Raised before the commit, so that no reader can see the rows gone while the mark
    // still says they are there; if the commit fails, the mark is merely too cautious.
    pruned_through.fetch_max(to_position(last)?, Ordering::SeqCst);
    commit(connection).await?;
    Ok(deleted)
}

// The writer runs its transactions with plain BEGIN/COMMIT/ROLLBACK statements, not
// sqlx's `Transaction`: when SQLite fails a COMMIT (a full disk) it may already have
// rolled back, sqlx's own rollback then fails, and sqlx goes on believing a transaction
// is open, nesting every later one as a savepoint that is never committed, while each
// append is still acknowledged. Here every failed write ends with a ROLLBACK
// (see `run_writer`), whose own error, when no transaction is left, means nothing.

async fn begin(connection: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *connection)
        .await?;
    Ok(())
}

async fn commit(connection: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::query("COMMIT").execute(&mut *connection).await?;
    Ok(())
}

/// Whether the write lock can be had within [`PROBE_WAIT`]: an empty write transaction,
/// rolled back. Writes nothing.
async fn probe(connection: &mut SqliteConnection) -> bool {
    let _ = set_busy_timeout(connection, PROBE_WAIT).await;
    let writable = begin(connection).await.is_ok();
    roll_back(connection).await;
    if let Err(error) = set_busy_timeout(connection, BUSY_TIMEOUT).await {
        tracing::warn!(%error, "cannot restore the SQLite busy timeout after a write probe");
    }
    writable
}

async fn set_busy_timeout(
    connection: &mut SqliteConnection,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    let pragma = format!("PRAGMA busy_timeout = {}", timeout.as_millis());
    sqlx::query(&pragma).execute(&mut *connection).await?;
    Ok(())
}

/// Ends whatever transaction a failed write left open.
async fn roll_back(connection: &mut SqliteConnection) {
    if let Err(error) = sqlx::query("ROLLBACK").execute(&mut *connection).await {
        tracing::debug!(%error, "rollback after a failed write (usually: none was open)");
    }
}

/// The tenant condition of a read. Without a tenant it is a no-op on the (then NULL)
/// first parameter, so both forms bind the same parameters; with one, the
/// `(tenant_id, position)` index serves the query.
fn tenant_clause(tenant: Option<&str>) -> &'static str {
    match tenant {
        Some(_) => "tenant_id = ? AND",
        None => "? IS NULL AND",
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append_batch(&self, events: Vec<StoredEvent>) -> Result<Vec<Appended>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.send(|reply| Command::Append(events, reply)).await
    }

    async fn read_range(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
        tenant: Option<&str>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE {} position > ? ORDER BY position LIMIT ?",
            tenant_clause(tenant)
        );
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(sql_position(after))
            .bind(sql_limit(limit))
            .fetch(&self.readers);
        decode_until(rows, max_bytes).await
    }

    async fn read_since(
        &self,
        since: DateTime<Utc>,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM events WHERE {} created_at >= ? ORDER BY position LIMIT ?",
            tenant_clause(tenant)
        );
        let rows = sqlx::query(&sql)
            .bind(tenant)
            .bind(to_micros(since))
            .bind(sql_limit(limit))
            .fetch_all(&self.readers)
            .await?;
        decode_all(&rows)
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM events WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.readers)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        self.send(|reply| Command::Prune(cutoff, reply)).await
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        Ok(self.pruned_through.load(Ordering::SeqCst))
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let head: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        )
        .fetch_one(&self.readers)
        .await?;
        to_position(head)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn close(&self) {
        let task = self.writer.lock().await.take();
        if let Some(task) = task {
            let _ = self.commands.send(Command::Close).await;
            let _ = task.await;
        }
        self.readers.close().await;
        // Dropping the file releases the lock: another server may open the file now.
        drop(
            self.owner_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    async fn accepts_writes(&self) -> Result<bool, StoreError> {
        // One probe at a time; callers within PROBE_REUSE share its answer.
        let mut last = self.last_probe.lock().await;
        if let Some((at, writable)) = *last {
            if at.elapsed() < PROBE_REUSE {
                return Ok(writable);
            }
        }
        let writable = self.send(Command::Probe).await?;
        *last = Some((Instant::now(), writable));
        Ok(writable)
    }
}
