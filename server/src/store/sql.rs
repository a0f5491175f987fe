//! What the SQL backends share: one [`EventStore`] over a [`Backend`], the reads, rows
//! to events, and integer conversions. The group-commit writer is in `writer.rs`.
//!
//! A backend supplies its connection setup, its insert ([`Insert`]) and whatever it
//! keeps differently (SQLite: the head in `sqlite_sequence`, retention through the
//! writer); the SQL of the reads is written once, in each backend's [`Dialect`].

use std::collections::HashMap;
use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use distributed_events_shared::StoredEvent;
use futures::stream::BoxStream;
use futures::TryStreamExt;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use tokio::sync::watch;
use uuid::Uuid;

use super::writer::{Conn, Insert, Writer};
use super::{event_size, from_micros, to_micros, Appended, EventStore, Selection, StoreError};

/// The columns of an event where `id` and `context` are text already (SQLite).
pub(super) const COLUMNS: &str =
    "position, id, created_at, aggregate_id, event_type, event_json, user_id, tenant_id, session_id, context";

/// The indexes of `events` in SQLite and PostgreSQL (MySQL declares its own).
pub(super) const EVENT_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS events_created_at ON events (created_at);
CREATE INDEX IF NOT EXISTS events_stored_at ON events (stored_at);
CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant_id, position);
";

/// Most ids one look-up statement takes (SQLite allows 32,766 parameters).
const MAX_IDS_PER_STATEMENT: usize = 1000;

/// How a backend writes the statements [`SqlStore`] runs.
#[derive(Clone, Copy, Debug)]
pub struct Dialect {
    /// The columns of an event, with `id` as text and `context` as JSON text or NULL.
    pub columns: &'static str,
    /// Parameters are `$1, $2, ...` (PostgreSQL) rather than `?`.
    pub numbered: bool,
    /// What turns a text parameter into the type of the `id` column (`::uuid`).
    pub uuid_cast: &'static str,
}

impl Dialect {
    /// The dialect of the backends with `?` parameters and text ids.
    pub const fn plain(columns: &'static str) -> Self {
        Self {
            columns,
            numbered: false,
            uuid_cast: "",
        }
    }

    /// Parameter `n` (counting from 1).
    fn param(&self, n: usize) -> String {
        if self.numbered {
            format!("${n}")
        } else {
            "?".to_owned()
        }
    }

    /// `SELECT <columns> FROM events WHERE <conditions> ORDER BY position LIMIT <the last
    /// parameter>`: first `numbers`, conditions on one integer parameter each (written
    /// `{}`), then those of `selection` on text parameters (the tenant through the
    /// `(tenant_id, position)` index; the types and aggregates as `IN` lists, checked on the
    /// rows in position order). [`SqlDatabase::read`] binds them in this order.
    fn select(&self, numbers: &[&str], selection: &Selection<'_>) -> String {
        let mut n = 0;
        let mut next = || {
            n += 1;
            self.param(n)
        };
        let mut conditions: Vec<String> = numbers
            .iter()
            .map(|condition| condition.replace("{}", &next()))
            .collect();
        if selection.tenant.is_some() {
            conditions.push(format!("tenant_id = {}", next()));
        }
        for (column, values) in [
            ("event_type", selection.event_types),
            ("aggregate_id", selection.aggregate_ids),
        ] {
            if !values.is_empty() {
                let params: Vec<String> = values.iter().map(|_| next()).collect();
                conditions.push(format!("{column} IN ({})", params.join(", ")));
            }
        }
        format!(
            "SELECT {} FROM events WHERE {} ORDER BY position LIMIT {}",
            self.columns,
            conditions.join(" AND "),
            next()
        )
    }

    /// The look-up of `count` ids.
    fn by_ids(&self, count: usize) -> String {
        let ids: Vec<String> = (1..=count)
            .map(|n| format!("{}{}", self.param(n), self.uuid_cast))
            .collect();
        format!(
            "SELECT {} FROM events WHERE id IN ({})",
            self.columns,
            ids.join(", ")
        )
    }
}

/// The sqlx database of backend `B`.
pub type Db<B> = <<B as Backend>::Writer as Insert>::Db;

/// One SQL backend. Its [`Insert`] runs in the shared writer task; the defaults of the
/// other methods serve a database with the `events_head` and `events_retention` rows
/// (PostgreSQL, MySQL).
#[async_trait]
pub trait Backend: Debug + Send + Sync + Sized + 'static {
    /// What runs on the writer's connection; it names the database and the dialect.
    type Writer: Insert;

    /// The highest position ever assigned, read from the database.
    async fn head(&self, readers: &Pool<Db<Self>>) -> Result<u64, StoreError> {
        Db::<Self>::position(readers, "SELECT head FROM events_head WHERE id = 1").await
    }

    /// See `EventStore::pruned_through`. Read each time: another instance may have pruned.
    async fn pruned_through(&self, readers: &Pool<Db<Self>>) -> Result<u64, StoreError> {
        Db::<Self>::position(
            readers,
            "SELECT pruned_through FROM events_retention WHERE id = 1",
        )
        .await
    }

    /// See `EventStore::delete_older_than`.
    async fn delete_older_than(
        &self,
        readers: &Pool<Db<Self>>,
        _writer: &Writer<Self::Writer>,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Db::<Self>::prune(
            readers,
            &<Self::Writer as Insert>::DIALECT,
            to_micros(cutoff),
        )
        .await
    }

    /// See `EventStore::accepts_writes`.
    async fn accepts_writes(&self, _writer: &Writer<Self::Writer>) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Stops what the backend runs besides the writer (after the writer has stopped).
    async fn close(&self) {}
}

/// A store on a SQL database: the shared writer, the shared reads, and a [`Backend`].
#[derive(Debug)]
pub struct SqlStore<B: Backend> {
    backend: B,
    readers: Pool<Db<B>>,
    writer: Writer<B::Writer>,
    head: watch::Sender<u64>,
    /// The statement of `get`.
    by_id: String,
}

impl<B: Backend> SqlStore<B> {
    /// A store that reads through `readers` and writes through `writer` (on
    /// `connection`, if it has one already), which raises `head`.
    pub(super) fn new(
        backend: B,
        readers: Pool<Db<B>>,
        writer: B::Writer,
        connection: Option<Conn<B::Writer>>,
        head: watch::Sender<u64>,
    ) -> Self {
        let dialect = B::Writer::DIALECT;
        Self {
            backend,
            readers,
            writer: Writer::start(writer, connection, head.clone()),
            head,
            by_id: dialect.by_ids(1),
        }
    }

    /// Runs a read (see [`Dialect::select`]) whose integer conditions are `numbers` on
    /// `values`, for `selection`.
    async fn read(
        &self,
        numbers: &[&str],
        values: &[i64],
        selection: &Selection<'_>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = B::Writer::DIALECT.select(numbers, selection);
        let texts: Vec<&str> = selection
            .tenant
            .into_iter()
            .chain(selection.event_types.iter().map(String::as_str))
            .chain(selection.aggregate_ids.iter().map(String::as_str))
            .collect();
        Db::<B>::read(self.readers()?, &sql, values, &texts, limit, max_bytes).await
    }

    /// The reading pool, unless the store was closed.
    fn readers(&self) -> Result<&Pool<Db<B>>, StoreError> {
        if self.readers.is_closed() {
            return Err(StoreError::Closed);
        }
        Ok(&self.readers)
    }
}

#[async_trait]
impl<B: Backend> EventStore for SqlStore<B> {
    async fn append_batch(&self, events: Vec<StoredEvent>) -> Result<Vec<Appended>, StoreError> {
        self.writer.append(events).await
    }

    async fn read_range(
        &self,
        after: u64,
        through: u64,
        limit: usize,
        max_bytes: usize,
        selection: &Selection<'_>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(
            &["position > {}", "position <= {}"],
            &[sql_position(after), sql_position(through)],
            selection,
            limit,
            max_bytes,
        )
        .await
    }

    async fn read_since(
        &self,
        since: DateTime<Utc>,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(
            &["created_at >= {}"],
            &[to_micros(since)],
            &Selection::tenant(tenant),
            limit,
            usize::MAX,
        )
        .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        Db::<B>::get(self.readers()?, &self.by_id, id).await
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        self.backend
            .delete_older_than(self.readers()?, &self.writer, cutoff)
            .await
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        self.backend.pruned_through(self.readers()?).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.backend.head(self.readers()?).await
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
        self.backend.close().await;
    }

    async fn accepts_writes(&self) -> Result<bool, StoreError> {
        self.backend.accepts_writes(&self.writer).await
    }
}

/// The statements every SQL database runs the same way; implemented for each sqlx
/// database whose types fit.
#[async_trait]
pub trait SqlDatabase: Database {
    /// The events of a read (see [`Dialect::select`], which binds `numbers`, `texts`,
    /// then `limit`), until their sizes reach `max_bytes`: see `EventStore::read_range`.
    async fn read(
        pool: &Pool<Self>,
        sql: &str,
        numbers: &[i64],
        texts: &[&str],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The stored events among `ids` (see [`Dialect::by_ids`]).
    async fn by_ids(
        connection: &mut Self::Connection,
        sql: &str,
        ids: &[Uuid],
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The stored event with this id (see [`Dialect::by_ids`]).
    async fn get(pool: &Pool<Self>, sql: &str, id: Uuid)
        -> Result<Option<StoredEvent>, StoreError>;

    /// The one position that `sql` selects.
    async fn position(pool: &Pool<Self>, sql: &str) -> Result<u64, StoreError>;

    /// Retention on a database that several instances share: deletes every event stored
    /// before `cutoff` (microseconds), as a prefix of positions, in one transaction.
    async fn prune(pool: &Pool<Self>, dialect: &Dialect, cutoff: i64) -> Result<u64, StoreError>;
}

#[async_trait]
impl<DB> SqlDatabase for DB
where
    DB: Database,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    &'static str: ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    DB::QueryResult: RowsAffected,
    for<'r> String: Decode<'r, DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> Option<i64>: Decode<'r, DB>,
{
    async fn read(
        pool: &Pool<Self>,
        sql: &str,
        numbers: &[i64],
        texts: &[&str],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut query = sqlx::query(sql);
        for &number in numbers {
            query = query.bind(number);
        }
        for &text in texts {
            query = query.bind(text);
        }
        let rows = query.bind(sql_limit(limit)).fetch(pool);
        decode_until(rows, max_bytes).await
    }

    async fn by_ids(
        connection: &mut Self::Connection,
        sql: &str,
        ids: &[Uuid],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut query = sqlx::query(sql);
        for id in ids {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(connection).await?;
        rows.iter().map(decode).collect()
    }

    async fn get(
        pool: &Pool<Self>,
        sql: &str,
        id: Uuid,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let row = sqlx::query(sql)
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn position(pool: &Pool<Self>, sql: &str) -> Result<u64, StoreError> {
        let value: i64 = sqlx::query_scalar(sql).fetch_one(pool).await?;
        to_position(value)
    }

    async fn prune(pool: &Pool<Self>, dialect: &Dialect, cutoff: i64) -> Result<u64, StoreError> {
        let p1 = dialect.param(1);
        let mut tx = pool.begin().await?;
        // Concurrent cleanups of several instances queue here, one after the other; each
        // statement after the lock sees what the previous cleanup deleted.
        sqlx::query("SELECT pruned_through FROM events_retention WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        let last: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT MAX(position) FROM events WHERE stored_at < {p1}"
        ))
        .bind(cutoff)
        .fetch_one(&mut *tx)
        .await?;
        let Some(last) = last else { return Ok(0) };
        let deleted = sqlx::query(&format!("DELETE FROM events WHERE position <= {p1}"))
            .bind(last)
            .execute(&mut *tx)
            .await?
            .count();
        sqlx::query(&format!(
            "UPDATE events_retention SET pruned_through = GREATEST(pruned_through, {p1}) WHERE id = 1"
        ))
        .bind(last)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

/// The connect options that the database URL `url` gives; `name` names the database
/// in the error.
pub(super) fn parse_url<O>(url: &str, name: &str) -> Result<O, StoreError>
where
    O: std::str::FromStr<Err = sqlx::Error>,
{
    url.parse()
        .map_err(|error| StoreError::Unavailable(format!("invalid {name} URL: {error}")))
}

/// A failure to connect to the `name` database at `host:port`, saying so.
pub(super) fn unreachable(name: &str, host: &str, port: u16, error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!(
        "cannot connect to {name} at {host}:{port}: {error}"
    ))
}

/// How many rows a statement changed (each sqlx database has its own result type).
pub trait RowsAffected {
    /// The number of rows.
    fn count(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn count(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn count(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn count(&self) -> u64 {
        self.rows_affected()
    }
}

/// The stored events among `ids`, through the writer's `connection`, in statements of
/// at most [`MAX_IDS_PER_STATEMENT`] ids (for [`Insert::fetch`]).
pub(super) async fn fetch<DB: SqlDatabase>(
    connection: &mut DB::Connection,
    dialect: &Dialect,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, StoredEvent>, StoreError> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(MAX_IDS_PER_STATEMENT) {
        let sql = dialect.by_ids(chunk.len());
        for event in DB::by_ids(&mut *connection, &sql, chunk).await? {
            found.insert(event.id, event);
        }
    }
    Ok(found)
}

/// An event's `context` as the JSON text the SQL backends store, NULL when empty.
pub(super) fn context_json(event: &StoredEvent) -> Result<Option<String>, StoreError> {
    if event.context.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&event.context)
        .map(Some)
        .map_err(|error| StoreError::Unstorable(format!("event {}: context: {error}", event.id)))
}

/// The columns an insert of the `?` backends names after `position` (when it gives
/// positions), in the order of [`bind_event`].
pub(super) const INSERT_COLUMNS: &str =
    "id, created_at, stored_at, aggregate_id, event_type, event_json, \
     user_id, tenant_id, session_id, context";

/// Binds the values of [`INSERT_COLUMNS`] for `event`, stored at `stored_at`.
pub(super) fn bind_event<'q, DB>(
    query: sqlx::query::Query<'q, DB, DB::Arguments<'q>>,
    event: &'q StoredEvent,
    stored_at: i64,
) -> Result<sqlx::query::Query<'q, DB, DB::Arguments<'q>>, StoreError>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    Ok(query
        .bind(event.id.to_string())
        .bind(to_micros(event.created_at))
        .bind(stored_at)
        .bind(&event.aggregate_id)
        .bind(&event.event_type)
        .bind(&event.event_json)
        .bind(&event.user_id)
        .bind(&event.tenant_id)
        .bind(&event.session_id)
        .bind(context_json(event)?))
}

/// `count` groups of `width` placeholders `?`: `(?, ?), (?, ?)` for a width of 2 and a
/// count of 2.
pub(super) fn value_rows(width: usize, count: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(", "));
    vec![row; count].join(", ")
}

/// A stored position from its SQL integer.
pub(super) fn to_position(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative position {value}")))
}

/// A position as an SQL integer (positions stay far below `i64::MAX`).
pub(super) fn sql_position(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

/// A row count as an SQL integer.
pub(super) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// An event from a row of the backend's `columns` (see [`Dialect`]).
pub(super) fn decode<'r, R>(row: &'r R) -> Result<StoredEvent, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let id: String = row.try_get("id")?;
    let context: Option<String> = row.try_get("context")?;
    Ok(StoredEvent {
        position: Some(to_position(row.try_get("position")?)?),
        id: Uuid::parse_str(&id).map_err(|e| corrupt(&e))?,
        created_at: from_micros(row.try_get("created_at")?)?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        event_json: row.try_get("event_json")?,
        user_id: row.try_get("user_id")?,
        tenant_id: row.try_get("tenant_id")?,
        session_id: row.try_get("session_id")?,
        context: match context {
            Some(json) => serde_json::from_str(&json).map_err(|e| corrupt(&e))?,
            None => Default::default(),
        },
    })
}

/// Events decoded from `rows` as they arrive, until the query's end or until their sizes
/// reach `max_bytes` (see `EventStore::read_range`); the rows after that are never read.
async fn decode_until<R>(
    mut rows: BoxStream<'_, Result<R, sqlx::Error>>,
    max_bytes: usize,
) -> Result<Vec<StoredEvent>, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut events = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        let event = decode(&row)?;
        bytes = bytes.saturating_add(event_size(&event));
        events.push(event);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(events)
}
