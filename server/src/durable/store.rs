//! Where Durable Streams are kept: three tables beside the events, in the same database
//! (`ds_streams`, `ds_messages`, `ds_producers`), on SQLite, PostgreSQL or MySQL/MariaDB.
//!
//! One append is one row of `ds_messages` (a JSON append keeps its flattened values
//! together, comma-joined), numbered 1, 2, 3... within its stream; a stream's offsets are
//! these numbers (see [`format_offset`]). A fork starts at its source's offset and numbers
//! its own appends from there, reading the source's rows below it.
//!
//! Every write (create, append, close, delete) is one transaction: the producer's state,
//! `Stream-Seq` and the closure commit with the append they belong to, so a retry after a
//! crash is recognised. On SQLite it begins `IMMEDIATE` (the write lock first); on
//! PostgreSQL and MySQL it locks the stream's row (`FOR UPDATE`), so that writers append
//! to one stream one at a time.

use std::time::Duration;

use futures::TryStreamExt;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Row};
use tokio::sync::watch;

use crate::store::StoreError;

/// How long a reader on PostgreSQL waits before looking again for appends of other
/// instances (appends of this instance wake it at once).
pub(crate) const SHARED_POLL: Duration = Duration::from_millis(250);

/// An offset as it appears on the wire: `0000000000000000_` and the position in 16
/// digits, zero-padded, so that the byte order of offsets is their numeric order, as the
/// protocol requires. The first part is reserved (always zero); the shape is the one of
/// the reference server, which the conformance suite writes out in its fork tests.
pub(crate) fn format_offset(position: i64) -> String {
    format!("{:016}_{position:016}", 0)
}

/// The position of an offset made by [`format_offset`]; `None` for anything else.
pub(crate) fn parse_offset(text: &str) -> Option<i64> {
    let (reserved, position) = text.split_once('_')?;
    let digits = |part: &str| {
        (1..=16).contains(&part.len()) && part.bytes().all(|byte| byte.is_ascii_digit())
    };
    if !digits(reserved) || !digits(position) || reserved.bytes().any(|byte| byte != b'0') {
        return None;
    }
    position.parse().ok()
}

/// The SQL dialect: where the databases differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

/// A stream's row.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub id: String,
    pub content_type: String,
    pub ttl_seconds: Option<i64>,
    pub expires_at: Option<String>,
    expires_at_ms: Option<i64>,
    last_access_ms: i64,
    /// The offset after the last append (the tail).
    pub tail: i64,
    pub closed: bool,
    closed_by: Option<(String, i64, i64)>,
    last_stream_seq: Option<String>,
    forked_from: Option<String>,
    fork_offset: i64,
    fork_sub_offset: i64,
    ref_count: i64,
    pub soft_deleted: bool,
}

impl Meta {
    fn expired(&self, now_ms: i64) -> bool {
        if self.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return true;
        }
        self.ttl_seconds
            .is_some_and(|ttl| now_ms >= self.last_access_ms.saturating_add(ttl * 1000))
    }

    /// Whether the stream holds JSON messages (JSON mode).
    pub fn is_json(&self) -> bool {
        is_json(&self.content_type)
    }
}

/// `application/json`, whatever its parameters and case.
pub(crate) fn is_json(content_type: &str) -> bool {
    media_type(content_type) == "application/json"
}

/// The media type alone, lower-cased: `Text/Plain; charset=utf-8` is `text/plain`.
pub(crate) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// What went wrong, in the protocol's terms; the HTTP edge maps each to its status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DsError {
    #[error("stream not found")]
    NotFound,
    #[error("the stream was deleted; its forks still read it")]
    Gone,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the stream is closed")]
    Closed { tail: i64 },
    #[error("stale producer epoch")]
    StaleEpoch { current: i64 },
    #[error("a new producer epoch must start at sequence 0")]
    InvalidEpochSeq,
    #[error("producer sequence gap")]
    SequenceGap { expected: i64, received: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another instance (PostgreSQL) or request (MySQL) created the same stream at the
    /// same time; the create is tried again.
    #[error("the stream was created concurrently; retry")]
    Raced,
}

impl From<sqlx::Error> for DsError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// A `PUT`.
#[derive(Debug, Default)]
pub(crate) struct CreateRequest {
    pub content_type: Option<String>,
    pub ttl_seconds: Option<i64>,
    /// As given (echoed by `HEAD`), and in milliseconds since the epoch.
    pub expires_at: Option<(String, i64)>,
    pub closed: bool,
    pub body: Vec<u8>,
    pub fork: Option<ForkRequest>,
}

/// `Stream-Forked-From` and its offsets.
#[derive(Debug)]
pub(crate) struct ForkRequest {
    pub source: String,
    pub offset: Option<i64>,
    pub sub_offset: i64,
}

/// An idempotent producer's headers.
#[derive(Clone, Debug)]
pub(crate) struct Producer {
    pub id: String,
    pub epoch: i64,
    pub seq: i64,
}

/// A `POST`.
#[derive(Debug, Default)]
pub(crate) struct AppendRequest {
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub close: bool,
    pub stream_seq: Option<String>,
    pub producer: Option<Producer>,
}

/// What a `POST` did.
#[derive(Debug)]
pub(crate) enum Appended {
    /// Stored (or only closed): the new tail.
    New { tail: i64, closed: bool },
    /// A producer's retry of what is stored already: nothing changed.
    Duplicate {
        tail: i64,
        last_seq: i64,
        closed: bool,
    },
}

/// One read: the messages after an offset, up to a byte budget.
#[derive(Debug)]
pub(crate) struct ReadResult {
    pub meta: Meta,
    pub messages: Vec<Vec<u8>>,
    /// The offset after the last message returned (the tail when none).
    pub next: i64,
    /// Whether `next` is the tail.
    pub up_to_date: bool,
}

/// The Durable Streams store of one server.
pub struct DurableStore {
    pool: AnyPool,
    dialect: Dialect,
    /// Moves on every write of this instance: waiting readers look again.
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

fn sqlite_schema() -> &'static str {
    "CREATE TABLE IF NOT EXISTS ds_streams (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        path TEXT NOT NULL,
        content_type TEXT NOT NULL,
        ttl_seconds BIGINT,
        expires_at TEXT,
        expires_at_ms BIGINT,
        last_access_ms BIGINT NOT NULL,
        tail BIGINT NOT NULL,
        closed BIGINT NOT NULL DEFAULT 0,
        closed_by_id TEXT,
        closed_by_epoch BIGINT,
        closed_by_seq BIGINT,
        last_stream_seq TEXT,
        forked_from TEXT,
        fork_offset BIGINT NOT NULL DEFAULT 0,
        fork_sub_offset BIGINT NOT NULL DEFAULT 0,
        ref_count BIGINT NOT NULL DEFAULT 0,
        soft_deleted BIGINT NOT NULL DEFAULT 0,
        UNIQUE (tenant, path)
    );
    CREATE TABLE IF NOT EXISTS ds_messages (
        stream_id TEXT NOT NULL,
        position BIGINT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (stream_id, position)
    );
    CREATE TABLE IF NOT EXISTS ds_producers (
        stream_id TEXT NOT NULL,
        producer_id TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        PRIMARY KEY (stream_id, producer_id)
    );"
}

/// The tables on MySQL and MariaDB. Text that sqlx's `Any` driver reads back as a `String`
/// must be `VARCHAR`/`VARBINARY` (it reads `TEXT` as bytes); `VARBINARY` compares byte for
/// byte, as SQLite and PostgreSQL do. Keys cannot hold long text, so the unique keys of
/// the tenant's path and of a producer are SHA-256 digests in stored generated columns.
/// Longer values are refused before they reach the database (see [`MYSQL_MAX_TEXT`]).
const MYSQL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ds_streams (
        id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
        tenant VARBINARY(8192) NOT NULL,
        path VARBINARY(1024) NOT NULL, -- MAX_PATH_BYTES
        content_type VARBINARY(8192) NOT NULL,
        ttl_seconds BIGINT,
        expires_at VARBINARY(1024),
        expires_at_ms BIGINT,
        last_access_ms BIGINT NOT NULL,
        tail BIGINT NOT NULL,
        closed BIGINT NOT NULL DEFAULT 0,
        closed_by_id VARBINARY(8192),
        closed_by_epoch BIGINT,
        closed_by_seq BIGINT,
        last_stream_seq VARBINARY(8192),
        forked_from VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin,
        fork_offset BIGINT NOT NULL DEFAULT 0,
        fork_sub_offset BIGINT NOT NULL DEFAULT 0,
        ref_count BIGINT NOT NULL DEFAULT 0,
        soft_deleted BIGINT NOT NULL DEFAULT 0,
        tenant_path BINARY(32) AS (UNHEX(SHA2(CONCAT(LENGTH(tenant), ':', tenant, path), 256)))
            STORED,
        UNIQUE KEY ds_streams_tenant_path (tenant_path),
        KEY ds_streams_lookup (tenant(255), path(255))
    ) ENGINE = InnoDB;
    CREATE TABLE IF NOT EXISTS ds_messages (
        stream_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        position BIGINT NOT NULL,
        data LONGBLOB NOT NULL,
        PRIMARY KEY (stream_id, position)
    ) ENGINE = InnoDB;
    CREATE TABLE IF NOT EXISTS ds_producers (
        stream_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
        producer_id VARBINARY(8192) NOT NULL,
        epoch BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        producer_key BINARY(32) AS (UNHEX(SHA2(producer_id, 256))) STORED,
        UNIQUE KEY ds_producers_key (stream_id, producer_key)
    ) ENGINE = InnoDB;";

/// The most bytes of a tenant, content type, producer id or `Stream-Seq` on MySQL: the
/// size of their `VARBINARY` columns.
const MYSQL_MAX_TEXT: usize = 8192;

const STREAM_COLUMNS: &str = "id, content_type, ttl_seconds, expires_at, expires_at_ms, \
    last_access_ms, tail, closed, closed_by_id, closed_by_epoch, closed_by_seq, \
    last_stream_seq, forked_from, fork_offset, fork_sub_offset, ref_count, soft_deleted";

fn meta_from_row(row: &AnyRow) -> Result<Meta, sqlx::Error> {
    let closed_by_id: Option<String> = row.try_get("closed_by_id")?;
    let closed_by = match closed_by_id {
        Some(id) => Some((
            id,
            row.try_get::<Option<i64>, _>("closed_by_epoch")?
                .unwrap_or_default(),
            row.try_get::<Option<i64>, _>("closed_by_seq")?
                .unwrap_or_default(),
        )),
        None => None,
    };
    Ok(Meta {
        id: row.try_get("id")?,
        content_type: row.try_get("content_type")?,
        ttl_seconds: row.try_get("ttl_seconds")?,
        expires_at: row.try_get("expires_at")?,
        expires_at_ms: row.try_get("expires_at_ms")?,
        last_access_ms: row.try_get("last_access_ms")?,
        tail: row.try_get("tail")?,
        closed: row.try_get::<i64, _>("closed")? != 0,
        closed_by,
        last_stream_seq: row.try_get("last_stream_seq")?,
        forked_from: row.try_get("forked_from")?,
        fork_offset: row.try_get("fork_offset")?,
        fork_sub_offset: row.try_get("fork_sub_offset")?,
        ref_count: row.try_get("ref_count")?,
        soft_deleted: row.try_get::<i64, _>("soft_deleted")? != 0,
    })
}

/// Sets a MySQL session to `READ COMMITTED`: without gap locks, a `FOR UPDATE` that finds
/// no stream locks nothing, so that creates of different paths never wait on (or deadlock
/// with) each other; two creates of one path meet at its unique key.
fn read_committed(
    conn: &mut AnyConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        sqlx::Executor::execute(
            conn,
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )
        .await?;
        Ok(())
    })
}

fn now_ms() -> i64 {
    distributed_events_shared::now().timestamp_millis()
}

/// The messages of a JSON body: one level of array flattened, each value's text kept as
/// sent; `None` for invalid JSON.
fn json_values(body: &[u8]) -> Option<Vec<String>> {
    let value: &serde_json::value::RawValue = serde_json::from_slice(body).ok()?;
    let text = value.get();
    if text.starts_with('[') {
        let values: Vec<&serde_json::value::RawValue> = serde_json::from_str(text).ok()?;
        Some(values.iter().map(|value| value.get().to_owned()).collect())
    } else {
        Some(vec![text.to_owned()])
    }
}

/// The row of a JSON append: its values, comma-joined.
fn json_row(values: &[String]) -> Vec<u8> {
    values.join(",").into_bytes()
}

/// The values of a JSON row.
pub(crate) fn json_row_values(row: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(row);
    serde_json::from_str::<Vec<&serde_json::value::RawValue>>(&format!("[{text}]"))
        .map(|values| values.iter().map(|value| value.get().to_owned()).collect())
        .unwrap_or_default()
}

impl DurableStore {
    /// Opens the store of a `--database` value (`sqlite://PATH`, `postgres://...`,
    /// `mysql://...`, or `memory`: an SQLite database in memory), creating its tables if
    /// needed.
    pub async fn open(database: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, dialect, max) = if database == "memory" {
            ("sqlite::memory:".to_owned(), Dialect::Sqlite, 1)
        } else if let Some(path) = database.strip_prefix("sqlite://") {
            (format!("sqlite://{path}"), Dialect::Sqlite, 4)
        } else if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            (database.to_owned(), Dialect::Postgres, 8)
        } else if database.starts_with("mysql://") {
            (database.to_owned(), Dialect::MySql, 8)
        } else {
            return Err(StoreError::Unavailable(format!(
                "Durable Streams need SQLite, PostgreSQL or MySQL, not `{database}`"
            )));
        };
        let options: AnyConnectOptions = url.parse()?;
        let mut pool = AnyPoolOptions::new();
        if dialect == Dialect::MySql {
            pool = pool.after_connect(read_committed);
        }
        let pool = pool
            .max_connections(max)
            .min_connections(if database == "memory" { 1 } else { 0 })
            // An in-memory SQLite database lives as long as its one connection.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        let store = Self {
            pool,
            dialect,
            changed: watch::Sender::new(0),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        match self.dialect {
            Dialect::Sqlite => {
                sqlx::raw_sql(sqlite_schema()).execute(&mut *conn).await?;
            }
            Dialect::Postgres => {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                // Instances starting together create the tables one after the other.
                sqlx::raw_sql("SELECT pg_advisory_xact_lock(7311852211)")
                    .execute(&mut *tx)
                    .await?;
                sqlx::raw_sql(&sqlite_schema().replace("BLOB", "BYTEA"))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Dialect::MySql => {
                // One instance per database: the events store's owner lock is held already.
                sqlx::raw_sql(MYSQL_SCHEMA).execute(&mut *conn).await?;
            }
        }
        Ok(())
    }

    /// `?` placeholders as the dialect wants them (`$1`, `$2`... on PostgreSQL).
    fn sql(&self, text: &str) -> String {
        match self.dialect {
            Dialect::Sqlite | Dialect::MySql => text.to_owned(),
            Dialect::Postgres => {
                let mut out = String::with_capacity(text.len() + 8);
                let mut n = 0;
                for c in text.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// A receiver that moves on every write of this instance.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether other instances may write (readers must look again now and then).
    pub(crate) fn shared(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    fn notify(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// A write transaction: on SQLite it takes the write lock first (`IMMEDIATE`), so
    /// that it never fails to upgrade a read lock.
    async fn begin(&self) -> Result<sqlx::Transaction<'_, sqlx::Any>, DsError> {
        Ok(match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres | Dialect::MySql => self.pool.begin().await?,
        })
    }

    /// Commits `tx` when `result` is a success (and wakes waiting readers), else rolls
    /// it back.
    async fn finish<T>(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Any>,
        result: Result<T, DsError>,
    ) -> Result<T, DsError> {
        match result {
            Ok(value) => {
                tx.commit().await?;
                self.notify();
                Ok(value)
            }
            Err(error) => {
                tx.rollback().await.ok();
                Err(error)
            }
        }
    }

    /// The stream's row, locked for the transaction on PostgreSQL and MySQL.
    async fn row(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        path: &str,
        lock: bool,
    ) -> Result<Option<Meta>, DsError> {
        let lock = if lock && self.dialect != Dialect::Sqlite {
            " FOR UPDATE"
        } else {
            ""
        };
        let row = sqlx::query(&self.sql(&format!(
            "SELECT {STREAM_COLUMNS} FROM ds_streams WHERE tenant = ? AND path = ?{lock}"
        )))
        .bind(tenant)
        .bind(path)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(row.as_ref().map(meta_from_row).transpose()?)
    }

    async fn row_by_id(&self, conn: &mut AnyConnection, id: &str) -> Result<Option<Meta>, DsError> {
        let row = sqlx::query(&self.sql(&format!(
            "SELECT {STREAM_COLUMNS} FROM ds_streams WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(row.as_ref().map(meta_from_row).transpose()?)
    }

    /// The live stream at `path`: expired streams are removed on the way (or kept as
    /// soft-deleted while forks read them).
    async fn live_row(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        path: &str,
    ) -> Result<Option<Meta>, DsError> {
        let Some(meta) = self.row(conn, tenant, path, true).await? else {
            return Ok(None);
        };
        if !meta.soft_deleted && meta.expired(now_ms()) {
            self.remove(conn, &meta).await?;
            return Ok(None);
        }
        Ok(Some(meta))
    }

    /// Deletes a stream: soft while forks read it, else its rows, and then its source's
    /// when that was soft-deleted and this was its last fork.
    async fn remove(&self, conn: &mut AnyConnection, meta: &Meta) -> Result<(), DsError> {
        if meta.ref_count > 0 {
            sqlx::query(&self.sql("UPDATE ds_streams SET soft_deleted = 1 WHERE id = ?"))
                .bind(&meta.id)
                .execute(&mut *conn)
                .await?;
            return Ok(());
        }
        let mut next = Some(meta.clone());
        while let Some(stream) = next.take() {
            for table in ["ds_messages", "ds_producers"] {
                sqlx::query(&self.sql(&format!("DELETE FROM {table} WHERE stream_id = ?")))
                    .bind(&stream.id)
                    .execute(&mut *conn)
                    .await?;
            }
            sqlx::query(&self.sql("DELETE FROM ds_streams WHERE id = ?"))
                .bind(&stream.id)
                .execute(&mut *conn)
                .await?;
            if let Some(source) = &stream.forked_from {
                sqlx::query(&self.sql(
                    "UPDATE ds_streams SET ref_count = ref_count - 1 WHERE id = ? AND ref_count > 0",
                ))
                .bind(source)
                .execute(&mut *conn)
                .await?;
                if let Some(parent) = self.row_by_id(conn, source).await? {
                    if parent.ref_count == 0 && parent.soft_deleted {
                        next = Some(parent);
                    }
                }
            }
        }
        Ok(())
    }

    async fn touch(&self, conn: &mut AnyConnection, meta: &Meta) -> Result<(), DsError> {
        if meta.ttl_seconds.is_some() {
            sqlx::query(&self.sql("UPDATE ds_streams SET last_access_ms = ? WHERE id = ?"))
                .bind(now_ms())
                .bind(&meta.id)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    async fn insert_message(
        &self,
        conn: &mut AnyConnection,
        stream: &str,
        position: i64,
        data: Vec<u8>,
    ) -> Result<(), DsError> {
        sqlx::query(
            &self.sql("INSERT INTO ds_messages (stream_id, position, data) VALUES (?, ?, ?)"),
        )
        .bind(stream)
        .bind(position)
        .bind(data)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// `PUT`: creates the stream, or confirms one created with the same configuration.
    /// Returns whether it is new, and its row.
    pub(crate) async fn create(
        &self,
        tenant: &str,
        path: &str,
        request: CreateRequest,
    ) -> Result<(bool, Meta), DsError> {
        let mut tx = self.begin().await?;
        let result = self.create_in(&mut tx, tenant, path, &request).await;
        if !matches!(result, Err(DsError::Raced)) {
            return self.finish(tx, result).await;
        }
        // Another instance created the stream since this one looked: now it sees it.
        tx.rollback().await.ok();
        let mut tx = self.begin().await?;
        let result = self.create_in(&mut tx, tenant, path, &request).await;
        self.finish(tx, result).await
    }

    async fn create_in(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        path: &str,
        request: &CreateRequest,
    ) -> Result<(bool, Meta), DsError> {
        self.fits(&[
            ("the tenant", Some(tenant)),
            ("Content-Type", request.content_type.as_deref()),
        ])?;
        if let Some(existing) = self.live_row(conn, tenant, path).await? {
            if existing.soft_deleted {
                return Err(DsError::Conflict(
                    "the stream was deleted but its forks still read it: the path cannot be \
                     reused until they are deleted"
                        .into(),
                ));
            }
            return if self.same_config(conn, &existing, request).await? {
                Ok((false, existing))
            } else {
                Err(DsError::Conflict(
                    "a stream exists at this path with another configuration".into(),
                ))
            };
        }

        let mut content_type = request
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let mut ttl_seconds = request.ttl_seconds;
        let mut expires_at = request.expires_at.clone();
        let mut tail = 0;
        let mut prefix = None;
        let mut source_id = None;
        if let Some(fork) = &request.fork {
            let source = match self.live_row(conn, tenant, &fork.source).await? {
                None => return Err(DsError::NotFound),
                Some(source) if source.soft_deleted => {
                    return Err(DsError::Conflict(
                        "the source stream was deleted but its forks still read it".into(),
                    ))
                }
                Some(source) => source,
            };
            match &request.content_type {
                Some(given) if media_type(given) != media_type(&source.content_type) => {
                    return Err(DsError::Conflict(
                        "the content type differs from the source stream's".into(),
                    ))
                }
                Some(_) => {}
                None => content_type = source.content_type.clone(),
            }
            let offset = fork.offset.unwrap_or(source.tail);
            if offset < 0 || offset > source.tail {
                return Err(DsError::BadRequest(
                    "Stream-Fork-Offset is beyond the source stream's tail".into(),
                ));
            }
            if fork.sub_offset > 0 {
                let next = self.read_chain(conn, &source, offset, 1, 1).await?;
                let Some(first) = next.into_iter().next() else {
                    return Err(DsError::BadRequest(
                        "Stream-Fork-Sub-Offset: the source has no message at Stream-Fork-Offset"
                            .into(),
                    ));
                };
                let sub = usize::try_from(fork.sub_offset).unwrap_or(usize::MAX);
                prefix = Some(if source.is_json() {
                    let values = json_row_values(&first);
                    if sub > values.len() {
                        return Err(DsError::BadRequest(
                            "Stream-Fork-Sub-Offset is past the message's values".into(),
                        ));
                    }
                    json_row(&values[..sub])
                } else {
                    if sub > first.len() {
                        return Err(DsError::BadRequest(
                            "Stream-Fork-Sub-Offset is past the message's bytes".into(),
                        ));
                    }
                    first[..sub].to_vec()
                });
            }
            if ttl_seconds.is_none() && expires_at.is_none() {
                ttl_seconds = source.ttl_seconds;
                expires_at = source.expires_at.clone().zip(source.expires_at_ms);
            }
            sqlx::query(&self.sql("UPDATE ds_streams SET ref_count = ref_count + 1 WHERE id = ?"))
                .bind(&source.id)
                .execute(&mut *conn)
                .await?;
            tail = offset;
            source_id = Some(source.id);
        }

        let json = is_json(&content_type);
        let initial = if request.body.is_empty() {
            None
        } else if json {
            let values = json_values(&request.body)
                .ok_or_else(|| DsError::BadRequest("the body is not valid JSON".into()))?;
            (!values.is_empty()).then(|| json_row(&values))
        } else {
            Some(request.body.clone())
        };

        let id = uuid::Uuid::now_v7().simple().to_string();
        let fork = request.fork.as_ref();
        sqlx::query(&self.sql(
            "INSERT INTO ds_streams (id, tenant, path, content_type, ttl_seconds, expires_at, \
             expires_at_ms, last_access_ms, tail, closed, forked_from, fork_offset, \
             fork_sub_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&id)
        .bind(tenant)
        .bind(path)
        .bind(&content_type)
        .bind(ttl_seconds)
        .bind(expires_at.as_ref().map(|(text, _)| text.clone()))
        .bind(expires_at.as_ref().map(|(_, ms)| *ms))
        .bind(now_ms())
        .bind(tail)
        .bind(i64::from(request.closed))
        .bind(source_id)
        .bind(tail)
        .bind(fork.map_or(0, |fork| fork.sub_offset))
        .execute(&mut *conn)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(database) if database.is_unique_violation() => DsError::Raced,
            _ => error.into(),
        })?;
        for data in prefix.into_iter().chain(initial) {
            tail += 1;
            self.insert_message(conn, &id, tail, data).await?;
        }
        sqlx::query(&self.sql("UPDATE ds_streams SET tail = ? WHERE id = ?"))
            .bind(tail)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        let meta = self
            .row_by_id(conn, &id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a created stream vanished".into()))?;
        Ok((true, meta))
    }

    /// Refuses text that the dialect's columns cannot hold whole (MySQL's `VARBINARY`).
    fn fits(&self, values: &[(&str, Option<&str>)]) -> Result<(), DsError> {
        if self.dialect != Dialect::MySql {
            return Ok(());
        }
        match values
            .iter()
            .find(|(_, value)| value.is_some_and(|value| value.len() > MYSQL_MAX_TEXT))
        {
            Some((name, _)) => Err(DsError::BadRequest(format!(
                "{name} is longer than {MYSQL_MAX_TEXT} bytes, the most the MySQL store keeps"
            ))),
            None => Ok(()),
        }
    }

    async fn same_config(
        &self,
        conn: &mut AnyConnection,
        existing: &Meta,
        request: &CreateRequest,
    ) -> Result<bool, DsError> {
        let content_type_matches = match &request.content_type {
            Some(given) => media_type(given) == media_type(&existing.content_type),
            None => request.fork.is_some() || existing.content_type == "application/octet-stream",
        };
        let fork_matches = match (&request.fork, &existing.forked_from) {
            (None, None) => true,
            (Some(fork), Some(source_id)) => {
                let source = self.row_by_id(conn, source_id).await?;
                source.is_some_and(|_| true)
                    && fork
                        .offset
                        .is_none_or(|offset| offset == existing.fork_offset)
                    && fork.sub_offset == existing.fork_sub_offset
                    && self.path_of(conn, source_id).await?.as_deref() == Some(&fork.source)
            }
            _ => false,
        };
        let expiry_matches = if request.fork.is_some()
            && request.ttl_seconds.is_none()
            && request.expires_at.is_none()
        {
            true
        } else {
            request.ttl_seconds == existing.ttl_seconds
                && request.expires_at.as_ref().map(|(text, _)| text) == existing.expires_at.as_ref()
        };
        Ok(content_type_matches
            && fork_matches
            && expiry_matches
            && request.closed == existing.closed)
    }

    async fn path_of(&self, conn: &mut AnyConnection, id: &str) -> Result<Option<String>, DsError> {
        Ok(
            sqlx::query_scalar::<_, String>(&self.sql("SELECT path FROM ds_streams WHERE id = ?"))
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?,
        )
    }

    /// `POST`: appends (and/or closes), checking `Stream-Seq` and the producer in the same
    /// transaction.
    pub(crate) async fn append(
        &self,
        tenant: &str,
        path: &str,
        request: AppendRequest,
    ) -> Result<Appended, DsError> {
        let mut tx = self.begin().await?;
        let result = self.append_in(&mut tx, tenant, path, request).await;
        self.finish(tx, result).await
    }

    async fn append_in(
        &self,
        conn: &mut AnyConnection,
        tenant: &str,
        path: &str,
        request: AppendRequest,
    ) -> Result<Appended, DsError> {
        self.fits(&[
            (
                "Producer-Id",
                request
                    .producer
                    .as_ref()
                    .map(|producer| producer.id.as_str()),
            ),
            ("Stream-Seq", request.stream_seq.as_deref()),
        ])?;
        let meta = match self.live_row(conn, tenant, path).await? {
            None => return Err(DsError::NotFound),
            Some(meta) if meta.soft_deleted => return Err(DsError::Gone),
            Some(meta) => meta,
        };
        if meta.closed {
            if request.body.is_empty() && request.producer.is_none() {
                // Closing again: nothing to do.
                return Ok(Appended::New {
                    tail: meta.tail,
                    closed: true,
                });
            }
            if let (Some(producer), Some((id, epoch, seq))) = (&request.producer, &meta.closed_by) {
                if producer.id == *id && producer.epoch == *epoch && producer.seq == *seq {
                    return Ok(Appended::Duplicate {
                        tail: meta.tail,
                        last_seq: *seq,
                        closed: true,
                    });
                }
            }
            return Err(DsError::Closed { tail: meta.tail });
        }
        let data = if request.body.is_empty() {
            None
        } else {
            if let Some(given) = &request.content_type {
                if media_type(given) != media_type(&meta.content_type) {
                    return Err(DsError::Conflict(
                        "the content type differs from the stream's".into(),
                    ));
                }
            }
            Some(if meta.is_json() {
                let values = json_values(&request.body)
                    .ok_or_else(|| DsError::BadRequest("the body is not valid JSON".into()))?;
                if values.is_empty() {
                    return Err(DsError::BadRequest(
                        "an empty JSON array appends nothing".into(),
                    ));
                }
                json_row(&values)
            } else {
                request.body
            })
        };

        if let Some(producer) = &request.producer {
            let state: Option<(i64, i64)> = sqlx::query(&self.sql(
                "SELECT epoch, last_seq FROM ds_producers WHERE stream_id = ? AND producer_id = ?",
            ))
            .bind(&meta.id)
            .bind(&producer.id)
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| -> Result<_, sqlx::Error> { Ok((row.try_get(0)?, row.try_get(1)?)) })
            .transpose()?;
            match state {
                None if producer.seq != 0 => {
                    return Err(DsError::SequenceGap {
                        expected: 0,
                        received: producer.seq,
                    })
                }
                Some((epoch, _)) if producer.epoch < epoch => {
                    return Err(DsError::StaleEpoch { current: epoch })
                }
                Some((epoch, _)) if producer.epoch > epoch && producer.seq != 0 => {
                    return Err(DsError::InvalidEpochSeq)
                }
                Some((epoch, last_seq)) if producer.epoch == epoch && producer.seq <= last_seq => {
                    return Ok(Appended::Duplicate {
                        tail: meta.tail,
                        last_seq,
                        closed: meta.closed,
                    })
                }
                Some((epoch, last_seq))
                    if producer.epoch == epoch && producer.seq > last_seq + 1 =>
                {
                    return Err(DsError::SequenceGap {
                        expected: last_seq + 1,
                        received: producer.seq,
                    })
                }
                _ => {}
            }
            let sql = match state {
                None => {
                    "INSERT INTO ds_producers (epoch, last_seq, stream_id, producer_id) \
                         VALUES (?, ?, ?, ?)"
                }
                Some(_) => {
                    "UPDATE ds_producers SET epoch = ?, last_seq = ? \
                            WHERE stream_id = ? AND producer_id = ?"
                }
            };
            sqlx::query(&self.sql(sql))
                .bind(producer.epoch)
                .bind(producer.seq)
                .bind(&meta.id)
                .bind(&producer.id)
                .execute(&mut *conn)
                .await?;
        }

        if let Some(seq) = &request.stream_seq {
            if meta
                .last_stream_seq
                .as_ref()
                .is_some_and(|last| seq.as_bytes() <= last.as_bytes())
            {
                return Err(DsError::Conflict(format!(
                    "Stream-Seq {seq} is not greater than the last one"
                )));
            }
        }

        let mut tail = meta.tail;
        if let Some(data) = data {
            tail += 1;
            self.insert_message(conn, &meta.id, tail, data).await?;
        }
        let closed_by = request.close.then_some(request.producer.as_ref()).flatten();
        sqlx::query(&self.sql(
            "UPDATE ds_streams SET tail = ?, last_access_ms = ?, \
             last_stream_seq = COALESCE(?, last_stream_seq), closed = ?, \
             closed_by_id = ?, closed_by_epoch = ?, closed_by_seq = ? WHERE id = ?",
        ))
        .bind(tail)
        .bind(now_ms())
        .bind(request.stream_seq)
        .bind(i64::from(request.close))
        .bind(closed_by.map(|producer| producer.id.clone()))
        .bind(closed_by.map(|producer| producer.epoch))
        .bind(closed_by.map(|producer| producer.seq))
        .bind(&meta.id)
        .execute(&mut *conn)
        .await?;
        Ok(Appended::New {
            tail,
            closed: request.close,
        })
    }

    /// `DELETE`.
    pub(crate) async fn delete(&self, tenant: &str, path: &str) -> Result<(), DsError> {
        let mut tx = self.begin().await?;
        let result = match self.live_row(&mut tx, tenant, path).await {
            Err(error) => Err(error),
            Ok(None) => Err(DsError::NotFound),
            Ok(Some(meta)) if meta.soft_deleted => Err(DsError::Gone),
            Ok(Some(meta)) => self.remove(&mut tx, &meta).await,
        };
        self.finish(tx, result).await
    }

    /// `HEAD`: the stream's row, without counting as an access.
    pub(crate) async fn head(&self, tenant: &str, path: &str) -> Result<Meta, DsError> {
        let mut conn = self.pool.acquire().await?;
        match self.row(&mut conn, tenant, path, false).await? {
            None => Err(DsError::NotFound),
            Some(meta) if meta.soft_deleted => Err(DsError::Gone),
            Some(meta) if meta.expired(now_ms()) => Err(DsError::NotFound),
            Some(meta) => Ok(meta),
        }
    }

    /// A read after `offset` of at most about `max_bytes` (at least one message), which
    /// counts as an access (a TTL restarts).
    pub(crate) async fn read(
        &self,
        tenant: &str,
        path: &str,
        offset: Option<i64>,
        max_bytes: usize,
    ) -> Result<ReadResult, DsError> {
        let mut conn = self.pool.acquire().await?;
        let meta = match self.row(&mut conn, tenant, path, false).await? {
            None => return Err(DsError::NotFound),
            Some(meta) if meta.soft_deleted => return Err(DsError::Gone),
            Some(meta) if meta.expired(now_ms()) => return Err(DsError::NotFound),
            Some(meta) => meta,
        };
        self.touch(&mut conn, &meta).await?;
        let from = offset.unwrap_or(meta.tail).min(meta.tail);
        let messages = self
            .read_chain(&mut conn, &meta, from, i64::MAX, max_bytes)
            .await?;
        let next = from + i64::try_from(messages.len()).unwrap_or(i64::MAX);
        Ok(ReadResult {
            up_to_date: next >= meta.tail,
            next,
            messages,
            meta,
        })
    }

    /// The messages of `meta` after `from`, through its forks' sources: `max_count`
    /// messages at most, and no more than about `max_bytes` (at least one).
    async fn read_chain(
        &self,
        conn: &mut AnyConnection,
        meta: &Meta,
        from: i64,
        max_count: i64,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, DsError> {
        // The segments to read, the oldest ancestor first: (stream, after, through).
        let mut segments = Vec::new();
        let mut stream = meta.clone();
        let mut through = i64::MAX;
        loop {
            let own_from = from.max(stream.fork_offset);
            if own_from < through {
                segments.push((stream.id.clone(), own_from, through));
            }
            match &stream.forked_from {
                Some(source) if from < stream.fork_offset => {
                    through = through.min(stream.fork_offset);
                    stream = self
                        .row_by_id(conn, source)
                        .await?
                        .ok_or_else(|| StoreError::Corrupt("a fork lost its source".into()))?;
                }
                _ => break,
            }
        }
        segments.reverse();
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        for (stream, after, through) in segments {
            let query = self.sql(
                "SELECT data FROM ds_messages WHERE stream_id = ? AND position > ? \
                 AND position <= ? ORDER BY position LIMIT ?",
            );
            let remaining = max_count - i64::try_from(messages.len()).unwrap_or(0);
            // Rows arrive one by one: the read stops at its byte budget without holding
            // the rest.
            let mut rows = sqlx::query(&query)
                .bind(&stream)
                .bind(after)
                .bind(through)
                .bind(remaining)
                .fetch(&mut *conn);
            while let Some(row) = rows.try_next().await? {
                let data: Vec<u8> = row.try_get(0)?;
                if !messages.is_empty() && bytes + data.len() > max_bytes {
                    return Ok(messages);
                }
                bytes += data.len();
                messages.push(data);
                if i64::try_from(messages.len()).unwrap_or(i64::MAX) >= max_count {
                    return Ok(messages);
                }
            }
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_sort_as_their_positions_and_parse_back() {
        let positions = [0, 1, 9, 10, 99, 100, 12_345_678, 9_999_999_999_999_999];
        let offsets: Vec<String> = positions.iter().map(|&p| format_offset(p)).collect();
        let mut sorted = offsets.clone();
        sorted.sort();
        assert_eq!(sorted, offsets, "byte order is position order");
        for (offset, position) in offsets.iter().zip(positions) {
            assert_eq!(parse_offset(offset), Some(position));
        }
        for bad in [
            "", "-1", "now", "12", "1_", "_1", "1_1", "0_a", "0_-1", "0,1", "0 _1",
        ] {
            assert_eq!(parse_offset(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn json_bodies_flatten_one_level_and_keep_values_as_sent() {
        assert_eq!(
            json_values(br#"{"b":1,"a":2}"#).unwrap(),
            [r#"{"b":1,"a":2}"#]
        );
        assert_eq!(json_values(b"[[1,2], [3]]").unwrap(), ["[1,2]", "[3]"]);
        assert_eq!(json_values(b"[[[1]]]").unwrap(), ["[[1]]"]);
        assert_eq!(json_values(b"[]").unwrap(), Vec::<String>::new());
        assert_eq!(
            json_values(b"12345678901234567890").unwrap(),
            ["12345678901234567890"]
        );
        assert!(json_values(b"{").is_none());
        assert!(json_values(b"[1,]").is_none());
        let row = json_row(&json_values(br#"[{"a":1},"x,y",[2]]"#).unwrap());
        assert_eq!(json_row_values(&row), [r#"{"a":1}"#, r#""x,y""#, "[2]"]);
    }

    #[test]
    fn media_types_compare_without_case_or_parameters() {
        assert_eq!(media_type(" Text/Plain ; charset=utf-8"), "text/plain");
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("application/ndjson"));
    }
}
