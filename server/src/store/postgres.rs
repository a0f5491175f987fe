//! The shared store: one PostgreSQL database behind any number of stateless server
//! instances (`--database postgres://...`).
//!
//! # What each guarantee rests on
//!
//! - **Positions in commit order, across processes.** Every append is one statement (see
//!   [`APPEND`]) that starts with `UPDATE events_head SET head = head + n`. That row lock
//!   is held until the statement's transaction commits, so appends of all instances are
//!   serialized: the next append gets the lock, and its positions, only once the previous
//!   one is committed *and visible* (PostgreSQL releases row locks after the commit is
//!   visible to new snapshots). A reader that sees position `p` therefore sees every
//!   position below `p` as well, and polling `after=<position>` never skips an event that
//!   committed late. A plain sequence would not give this: `nextval` hands out numbers at
//!   insert time, so 7 can commit after 8 has been read.
//! - **A short critical section.** The statement runs as its own implicit transaction, so
//!   the lock is held only while PostgreSQL executes it and flushes its commit, never
//!   across a network round trip, and a client that freezes cannot keep holding it.
//! - **Group commit.** Within one instance the shared writer (`writer.rs`) takes every
//!   append that is waiting and this backend stores them with one statement, so the lock
//!   and the WAL flush are paid once per group.
//! - **Idempotency by id.** The `id` column is `UNIQUE` and the insert says `ON CONFLICT
//!   (id) DO NOTHING`, which holds across instances: two instances that insert the same id
//!   at once store it once, and the loser reads the winner's event back. Ids are looked up
//!   before the append too, so that the common case, a client retrying a post, takes no
//!   lock and uses no position; only a true race leaves a position unused.
//! - **Wake-up across instances.** The statement calls `pg_notify` with the new head;
//!   PostgreSQL delivers it only on commit and only once the commit is visible. A listener
//!   task per instance advances [`EventStore::watch_head`] from it. After the listener
//!   (re)connects it re-reads the head, so a notification lost while disconnected is made
//!   up for; nothing polls the store in a loop.
//! - **Retention with several instances.** Cleanup locks the one row of
//!   `events_retention` for its transaction, so concurrent cleanups run one after the
//!   other; each deletes a prefix of committed positions (`<= MAX(position) WHERE stored_at
//!   < cutoff`), which cannot reach an uncommitted append because that one holds positions
//!   above every committed one. `stored_at` comes from the database clock, one clock for
//!   all instances.
//! - **Connection loss.** Reads use a pool that drops broken connections and connects
//!   again; the writer holds one connection and replaces it after any error. While the
//!   database is down every call fails with [`StoreError::Unavailable`] (HTTP 503), and an
//!   append is acknowledged only after its commit succeeded, so nothing acknowledged is
//!   lost; an append whose answer was lost is retried by the client under the same id.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use distributed_events_shared::StoredEvent;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::sql::{
    context_json, parse_url, to_position, unreachable, Backend, Dialect, SqlStore, EVENT_INDEXES,
};
use super::writer::{advance, Insert};
use super::{to_micros, StoreError};

/// Connections of the request pool (reads, retention, health); each instance also holds
/// one for its writer and one for its listener.
const POOL_SIZE: u32 = 8;

/// How long a request waits for a pooled connection before it fails with 503. Short, so
/// that clients hear about an outage and back off instead of piling up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest an append group may take, connecting included, before it fails with 503.
const GROUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Session settings of the writer connection: an append that cannot get the head lock
/// within 5 s (the database is overloaded or something holds the row) fails with 503
/// instead of hanging.
const WRITER_SETTINGS: [(&str, &str); 1] = [("lock_timeout", "5s")];

/// Key of the advisory lock that serializes schema migrations of concurrently starting
/// instances (`CREATE TABLE IF NOT EXISTS` is not safe against itself).
const MIGRATION_LOCK: i64 = 0x6469_7374_6576_7473; // "distevts"

const SCHEMA_VERSION: i32 = 1;
/// Created in the connection's current schema (the first existing one on `search_path`).
/// Times are microseconds since the Unix epoch, so events read back exactly.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position     BIGINT PRIMARY KEY,      -- from events_head: commit order, never reused
    id           UUID   NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,         -- microseconds since the epoch
    stored_at    BIGINT NOT NULL,         -- the database's clock, for retention
    aggregate_id TEXT   NOT NULL,
    event_type   TEXT   NOT NULL,
    event_json   TEXT   NOT NULL,         -- kept as text: reads back byte for byte
    user_id      TEXT,
    tenant_id    TEXT,
    session_id   TEXT,
    context      TEXT                     -- JSON object, NULL when empty
);
-- One row; locked by every append statement until it commits (see the module docs).
CREATE TABLE IF NOT EXISTS events_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    head BIGINT  NOT NULL
);
INSERT INTO events_head (id, head) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
-- One row; locked by every retention cleanup until it commits.
CREATE TABLE IF NOT EXISTS events_retention (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through BIGINT  NOT NULL
);
INSERT INTO events_retention (id, pruned_through) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS events_schema (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
";

const COLUMNS: &str =
    "position, id::text AS id, created_at, aggregate_id, event_type, event_json, \
                       user_id, tenant_id, session_id, context";

/// The PostgreSQL store. Any number of server processes may open the same database.
pub type PostgresStore = SqlStore<Postgres>;

/// What only the PostgreSQL store runs: the listener that hears other instances' commits.
#[derive(Debug)]
pub struct Postgres {
    /// The one connection of the listener task, kept apart so that it never waits for
    /// (or starves) request traffic.
    listen_pool: PgPool,
    listener: Mutex<Option<JoinHandle<()>>>,
}

/// The writer's side of the PostgreSQL store: one connection, replaced after any error.
#[derive(Debug)]
pub struct PgWriter {
    options: PgConnectOptions,
    /// The notification channel of this schema.
    channel: String,
}

impl SqlStore<Postgres> {
    /// Connects to the database at `url` (`postgres://user@host:port/database`, with any
    /// parameter that sqlx understands, e.g. `?options[search_path]=events`), creates or
    /// migrates the schema, and starts the writer and listener tasks.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = parse_url::<PgConnectOptions>(url, "PostgreSQL")?
            .application_name("distributed-events");
        let unreachable =
            |error| unreachable("PostgreSQL", options.get_host(), options.get_port(), error);

        let mut setup = options.connect().await.map_err(unreachable)?;
        let channel = migrate(&mut setup).await?;
        let head = read_head(&mut setup).await?;
        setup.close().await.ok();

        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(unreachable)?;
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());

        let head = watch::Sender::new(head);
        let listener = tokio::spawn(run_listener(
            listen_pool.clone(),
            channel.clone(),
            head.clone(),
        ));
        let writer = PgWriter {
            options: options.options(WRITER_SETTINGS),
            channel,
        };
        let backend = Postgres {
            listen_pool,
            listener: Mutex::new(Some(listener)),
        };
        Ok(Self::new(backend, pool, writer, None, head))
    }
}

/// Creates or migrates the schema; returns the notification channel of this schema.
///
/// Several instances may start at once: the advisory lock makes them migrate one after the
/// other, and each finds the work done by the one before.
async fn migrate(connection: &mut PgConnection) -> Result<String, StoreError> {
    let mut tx = connection.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    // The channel is per schema, so that several stores in one database (tests, or
    // separate deployments) do not wake each other. md5 keeps it under the 63-byte limit
    // of identifiers whatever the schema's name.
    let (schema, channel): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT current_schema()::text, 'distributed_events_' || left(md5(current_schema()), 16)",
    )
    .fetch_one(&mut *tx)
    .await?;
    let (Some(schema), Some(channel)) = (schema, channel) else {
        return Err(StoreError::Unavailable(
            "no schema of the connection's search_path exists: create it (CREATE SCHEMA ...) or fix \
             `options[search_path]` in the database URL"
                .into(),
        ));
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('events_schema') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    let version: Option<i32> = if exists {
        sqlx::query_scalar("SELECT version FROM events_schema WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?
    } else {
        None
    };
    match version {
        Some(version) if version > SCHEMA_VERSION => {
            return Err(StoreError::Unavailable(format!(
                "schema `{schema}` has version {version}, newer than this server's {SCHEMA_VERSION}; upgrade the server"
            )));
        }
        // Up to date: no DDL, so that a database user without CREATE rights can run the
        // server once the schema exists.
        Some(SCHEMA_VERSION) => {}
        // Version 1 is the whole schema; a later version adds its steps here, each
        // guarded by `version < N`.
        _ => {
            sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
            sqlx::raw_sql(EVENT_INDEXES).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO events_schema (id, version) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
            )
            .bind(SCHEMA_VERSION)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    tracing::info!(%schema, version = SCHEMA_VERSION, "PostgreSQL schema ready");
    Ok(channel)
}

async fn read_head<'c>(executor: impl sqlx::PgExecutor<'c>) -> Result<u64, StoreError> {
    let head: i64 = sqlx::query_scalar("SELECT head FROM events_head WHERE id = 1")
        .fetch_one(executor)
        .await?;
    to_position(head)
}

/// Why PostgreSQL cannot store these events, if it cannot: its `text` type refuses U+0000,
/// which a Rust string (and SQLite) accepts.
fn nul_in(events: &[StoredEvent]) -> Option<StoreError> {
    events.iter().find_map(|event| {
        let name = event.field_with_nul()?;
        Some(StoreError::Unstorable(format!(
            "event {}: `{name}` contains U+0000, which this server's PostgreSQL store cannot hold; leave it out",
            event.id
        )))
    })
}

/// The columns of a group's new events, one array per column, for one `INSERT ... SELECT
/// FROM UNNEST(...)`: one statement whatever the group's size.
#[derive(Default)]
struct Columns {
    id: Vec<String>,
    created_at: Vec<i64>,
    aggregate_id: Vec<String>,
    event_type: Vec<String>,
    event_json: Vec<String>,
    user_id: Vec<Option<String>>,
    tenant_id: Vec<Option<String>>,
    session_id: Vec<Option<String>>,
    context: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, event: &StoredEvent) -> Result<(), StoreError> {
        let context = context_json(event)?;
        self.id.push(event.id.to_string());
        self.created_at.push(to_micros(event.created_at));
        self.aggregate_id.push(event.aggregate_id.clone());
        self.event_type.push(event.event_type.clone());
        self.event_json.push(event.event_json.clone());
        self.user_id.push(event.user_id.clone());
        self.tenant_id.push(event.tenant_id.clone());
        self.session_id.push(event.session_id.clone());
        self.context.push(context);
        Ok(())
    }
}

/// The append itself: one statement, so one implicit transaction and one round trip. The
/// `UPDATE` takes the row lock that orders all appends of all instances and, after
/// waiting for it, adds to the head as the previous holder left it; the lock is held only
/// while this statement runs and commits, with no network round trip in between. Positions
/// are `old head + 1 ..= new head` in input order. `ON CONFLICT (id) DO NOTHING` is what
/// makes an id stored once even when two instances race with it (the unique index sees
/// rows of transactions committed after this statement's snapshot); such an id leaves its
/// position unused. `pg_notify` is delivered when, and only if, this commits.
const APPEND: &str = "
WITH moved AS (
    UPDATE events_head SET head = head + $1 WHERE id = 1 RETURNING head
),
inserted AS (
    INSERT INTO events (position, id, created_at, stored_at, aggregate_id, event_type, event_json,
                        user_id, tenant_id, session_id, context)
    SELECT moved.head - $1 + t.ord, t.id::uuid, t.created_at,
           (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint,
           t.aggregate_id, t.event_type, t.event_json, t.user_id, t.tenant_id, t.session_id, t.context
    FROM moved,
         UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                $9::text[], $10::text[])
             WITH ORDINALITY AS t(id, created_at, aggregate_id, event_type, event_json, user_id,
                                  tenant_id, session_id, context, ord)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, position
),
notified AS (
    SELECT pg_notify($11, head::text) FROM moved
)
SELECT moved.head,
       (SELECT count(*) FROM notified) AS notified,
       COALESCE((SELECT array_agg(id::text ORDER BY position) FROM inserted), '{}') AS ids,
       COALESCE((SELECT array_agg(position ORDER BY position) FROM inserted), '{}') AS positions
FROM moved
";

#[async_trait]
impl Insert for PgWriter {
    type Db = sqlx::Postgres;
    const DIALECT: Dialect = Dialect {
        columns: COLUMNS,
        numbered: true,
        uuid_cast: "::uuid",
    };
    type Job = std::convert::Infallible;
    const NAME: &'static str = "PostgreSQL";
    const GROUP_TIMEOUT: Option<Duration> = Some(GROUP_TIMEOUT);

    fn unstorable(&self, events: &[StoredEvent]) -> Option<StoreError> {
        nul_in(events)
    }

    async fn connect(&self) -> Result<PgConnection, StoreError> {
        Ok(self.options.connect().await?)
    }

    async fn insert(
        &self,
        connection: &mut PgConnection,
        fresh: &[&StoredEvent],
    ) -> Result<(HashMap<Uuid, u64>, u64), StoreError> {
        let mut columns = Columns::default();
        for event in fresh {
            columns.push(event)?;
        }
        let count = i64::try_from(fresh.len()).unwrap_or(i64::MAX);
        let channel = self.channel.clone();
        let row = sqlx::query(APPEND)
            .bind(count)
            .bind(&columns.id)
            .bind(&columns.created_at)
            .bind(&columns.aggregate_id)
            .bind(&columns.event_type)
            .bind(&columns.event_json)
            .bind(&columns.user_id)
            .bind(&columns.tenant_id)
            .bind(&columns.session_id)
            .bind(&columns.context)
            .bind(channel)
            .fetch_one(connection)
            .await?;
        let head = to_position(row.try_get("head")?)?;
        let ids: Vec<String> = row.try_get("ids")?;
        let positions: Vec<i64> = row.try_get("positions")?;
        let mut stored = HashMap::with_capacity(ids.len());
        for (id, position) in ids.iter().zip(positions) {
            let id = Uuid::parse_str(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            stored.insert(id, to_position(position)?);
        }
        Ok((stored, head))
    }
}

/// How long the listener may hear nothing before it checks its connection with a query.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long that query may take before the connection counts as dead.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// First wait of the listener before it connects again; doubles up to 2 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Keeps `head` up to date with commits of every instance, by LISTEN/NOTIFY; reconnects by
/// itself, with backoff, for as long as the store is open.
async fn run_listener(pool: PgPool, channel: String, head: watch::Sender<u64>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let error = listen(&pool, &channel, &head, &mut backoff).await;
        if pool.is_closed() {
            return;
        }
        tracing::warn!(%error, retry_in = ?backoff, "PostgreSQL listener lost its connection");
        metrics::counter!(crate::telemetry::LISTENER_RECONNECTS).increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Listens until the connection fails; returns why. Resets `backoff` once connected.
async fn listen(
    pool: &PgPool,
    channel: &str,
    head: &watch::Sender<u64>,
    backoff: &mut Duration,
) -> StoreError {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(error) => return error.into(),
    };
    if let Err(error) = listener.listen(channel).await {
        return error.into();
    }
    // LISTEN is active; anything that committed before it is in the head we read now.
    match read_head(&mut listener).await {
        Ok(position) => advance(head, position),
        Err(error) => return error,
    }
    tracing::debug!(%channel, "listening for commits of other instances");
    *backoff = FIRST_BACKOFF;
    loop {
        let Ok(received) = tokio::time::timeout(HEARTBEAT, listener.try_recv()).await else {
            // Quiet for a while. A half-open connection (a firewall that dropped the flow)
            // would stay quiet for ever, and this instance would never hear of other
            // instances' commits: a query proves the connection alive, and catches up.
            match tokio::time::timeout(HEARTBEAT_TIMEOUT, read_head(&mut listener)).await {
                Ok(Ok(position)) => advance(head, position),
                Ok(Err(error)) => return error,
                Err(_) => {
                    return StoreError::Unavailable(format!(
                        "the listener's connection did not answer within {HEARTBEAT_TIMEOUT:?}"
                    ))
                }
            }
            continue;
        };
        match received {
            Ok(Some(notification)) => match notification.payload().parse::<u64>() {
                Ok(position) => advance(head, position),
                Err(_) => tracing::warn!(
                    payload = notification.payload(),
                    "ignoring a malformed notification"
                ),
            },
            // The connection dropped and the listener connected again (eagerly, LISTEN
            // included): catch up on what was notified in between.
            Ok(None) => match read_head(&mut listener).await {
                Ok(position) => advance(head, position),
                Err(error) => return error,
            },
            Err(error) => return error.into(),
        }
    }
}

#[async_trait]
impl Backend for Postgres {
    type Writer = PgWriter;

    async fn close(&self) {
        let listener = self.listener.lock().await.take();
        if let Some(listener) = listener {
            listener.abort();
            let _ = listener.await;
        }
        self.listen_pool.close().await;
    }
}
