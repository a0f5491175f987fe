//! The embedded default store: one SQLite file in WAL mode with `synchronous = FULL`, so
//! an acknowledged event survives `kill -9` and power loss.
//!
//! All writes go through the shared group-commit writer (`writer.rs`): every append that
//! is waiting goes into one transaction, so many concurrent producers share one fsync.
//! Reads use a separate pool and never wait for the writer.
//!
//! One server per file: the store holds an OS lock on a file beside the database
//! (`PATH-lock`) for as long as it is open, and a second server on the same file is
//! refused at start. SQLite would let it in, but each server keeps the head and the
//! recent events in memory, so neither would see the other's commits.

use std::collections::HashMap;
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
use tokio::sync::{watch, Mutex};
use uuid::Uuid;

use super::sql::{
    bind_event, to_position, value_rows, Backend, Dialect, SqlStore, COLUMNS, EVENT_INDEXES,
    INSERT_COLUMNS,
};
use super::writer::{Insert, Reply, Writer};
use super::{to_micros, StoreError};

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
CREATE TABLE IF NOT EXISTS retention (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through INTEGER NOT NULL
);
INSERT OR IGNORE INTO retention (id, pruned_through) VALUES (1, 0);
";

/// The highest position ever assigned: AUTOINCREMENT keeps it, deletes or not.
const HEAD: &str = "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)";

/// The SQLite store.
pub type SqliteStore = SqlStore<Sqlite>;

/// What only the SQLite store keeps: the retention mark, the write probe, the file lock.
#[derive(Debug)]
pub struct Sqlite {
    pruned_through: Arc<AtomicU64>,
    /// The last write probe: when, and whether the write lock could be had.
    last_probe: Mutex<Option<(Instant, bool)>>,
    /// The lock that keeps a second server off this file; `None` for an in-memory
    /// database, and once closed.
    owner_lock: std::sync::Mutex<Option<File>>,
}

/// The writer's side of the SQLite store.
#[derive(Debug)]
pub struct SqliteWriter {
    options: SqliteConnectOptions,
    pruned_through: Arc<AtomicU64>,
}

/// Work of the SQLite store that needs the writer's connection.
#[derive(Debug)]
pub enum SqliteJob {
    /// Retention: see `EventStore::delete_older_than`.
    Prune(DateTime<Utc>, Reply<u64>),
    /// Answers whether the write lock can be had now.
    Probe(Reply<bool>),
}

impl SqlStore<Sqlite> {
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
            .connect_with(options.clone().read_only(true).row_buffer_size(2))
            .await?;

        let head: i64 = sqlx::query_scalar(HEAD).fetch_one(&mut writer).await?;
        let pruned: i64 = sqlx::query_scalar("SELECT pruned_through FROM retention WHERE id = 1")
            .fetch_one(&mut writer)
            .await?;
        let pruned_through = Arc::new(AtomicU64::new(to_position(pruned)?));
        let backend = Sqlite {
            pruned_through: pruned_through.clone(),
            last_probe: Mutex::new(None),
            owner_lock: std::sync::Mutex::new(owner_lock),
        };
        let head = watch::Sender::new(to_position(head)?);
        let sqlite_writer = SqliteWriter {
            options,
            pruned_through,
        };
        Ok(Self::new(
            backend,
            readers,
            sqlite_writer,
            Some(writer),
            head,
        ))
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
    sqlx::raw_sql(EVENT_INDEXES).execute(&mut *tx).await?;
    sqlx::raw_sql(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Insert for SqliteWriter {
    type Db = sqlx::Sqlite;
    const DIALECT: Dialect = Dialect::plain(COLUMNS);
    type Job = SqliteJob;
    const NAME: &'static str = "SQLite";

    async fn connect(&self) -> Result<SqliteConnection, StoreError> {
        Ok(SqliteConnection::connect_with(&self.options).await?)
    }

    async fn insert(
        &self,
        connection: &mut SqliteConnection,
        fresh: &[&StoredEvent],
    ) -> Result<(HashMap<Uuid, u64>, u64), StoreError> {
        let stored_at = to_micros(distributed_events_shared::now());
        begin(connection).await?;
        let mut positions: HashMap<Uuid, u64> = HashMap::with_capacity(fresh.len());
        for chunk in fresh.chunks(MAX_ROWS_PER_STATEMENT) {
            // Rows take positions in the order of VALUES, which is the order of the group.
            let sql = format!(
                "INSERT INTO events ({INSERT_COLUMNS}) VALUES {} RETURNING id, position",
                value_rows(10, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for event in chunk {
                query = bind_event(query, event, stored_at)?;
            }
            for row in query.fetch_all(&mut *connection).await? {
                let id: String = row.try_get("id")?;
                let id = Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                positions.insert(id, to_position(row.try_get("position")?)?);
            }
        }
        commit(connection).await?;
        let last = positions.values().copied().max().unwrap_or(0);
        Ok((positions, last))
    }

    async fn recover(&self, mut connection: SqliteConnection) -> Option<SqliteConnection> {
        // A local file: the connection stays good; only the transaction must end.
        roll_back(&mut connection).await;
        Some(connection)
    }

    async fn run(&self, connection: &mut SqliteConnection, job: SqliteJob) {
        match job {
            SqliteJob::Prune(cutoff, reply) => {
                let _ =
                    reply.send(prune_or_roll_back(connection, cutoff, &self.pruned_through).await);
            }
            SqliteJob::Probe(reply) => {
                let _ = reply.send(Ok(probe(connection).await));
            }
        }
    }
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
// (`Insert::recover`), whose own error, when no transaction is left, means nothing.

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

#[async_trait]
impl Backend for Sqlite {
    type Writer = SqliteWriter;

    async fn head(&self, readers: &SqlitePool) -> Result<u64, StoreError> {
        let head: i64 = sqlx::query_scalar(HEAD).fetch_one(readers).await?;
        to_position(head)
    }

    async fn pruned_through(&self, _readers: &SqlitePool) -> Result<u64, StoreError> {
        Ok(self.pruned_through.load(Ordering::SeqCst))
    }

    async fn delete_older_than(
        &self,
        _readers: &SqlitePool,
        writer: &Writer<SqliteWriter>,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        writer.job(|reply| SqliteJob::Prune(cutoff, reply)).await
    }

    async fn accepts_writes(&self, writer: &Writer<SqliteWriter>) -> Result<bool, StoreError> {
        // One probe at a time; callers within PROBE_REUSE share its answer.
        let mut last = self.last_probe.lock().await;
        if let Some((at, writable)) = *last {
            if at.elapsed() < PROBE_REUSE {
                return Ok(writable);
            }
        }
        let writable = writer.job(SqliteJob::Probe).await?;
        *last = Some((Instant::now(), writable));
        Ok(writable)
    }

    async fn close(&self) {
        // Dropping the file releases the lock: another server may open the file now.
        drop(
            self.owner_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}
