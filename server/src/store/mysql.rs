//! A store on MySQL or MariaDB (`--database mysql://user:password@host:port/database`),
//! for one server instance.
//!
//! - **Durability.** InnoDB tables; an append is acknowledged after its transaction
//!   committed, which with the default `innodb_flush_log_at_trx_commit = 1` means the
//!   redo log was flushed to disk.
//! - **Positions.** The row of `events_head` holds the highest position ever assigned;
//!   each group locks it (`FOR UPDATE`), stores its events at the positions after it and
//!   raises it in the same transaction, so positions follow commit order and are never
//!   reused, even after retention empties the table.
//! - **One instance per database.** The writer holds a named lock (`GET_LOCK`) for its
//!   session; a second server on the same database is refused at start. Unlike
//!   PostgreSQL's NOTIFY, MySQL has no way to wake the other instances' long-polls, and
//!   whether a reader can see position `p + 1` commit before `p` becomes visible has not
//!   been shown for InnoDB: for several instances, use PostgreSQL.
//! - **Text.** `utf8mb4` with a binary collation without padding, so that tenant ids
//!   compare byte for byte (`a` and `A`, or `a` and `a `, are different tenants); long
//!   text in `LONGTEXT`. The group is split into statements that stay below the server's
//!   `max_allowed_packet`; an event larger than that fails alone, saying so.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use distributed_events_shared::StoredEvent;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, MySqlConnection};
use tokio::sync::watch;
use uuid::Uuid;

use super::sql::{
    bind_event, parse_url, sql_position, to_position, unreachable, value_rows, Backend, Dialect,
    SqlStore, INSERT_COLUMNS,
};
use super::writer::Insert;
use super::{event_size, to_micros, StoreError};

/// Connections of the reading pool (reads, retention, health).
const POOL_SIZE: u32 = 8;

/// How long a request waits for a pooled connection before it fails with 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest an append group may take, connecting included, before it fails with 503.
const GROUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Most rows one insert statement takes (11 parameters each; MySQL allows 65,535).
const MAX_ROWS_PER_STATEMENT: usize = 1000;

/// The named lock of the store in the current database (64 characters at most).
const OWNER_LOCK: &str = "CONCAT('distributed-events:', MD5(DATABASE()))";

const SCHEMA_VERSION: i32 = 1;

/// The schema; `{collation}` is a binary collation without padding.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position     BIGINT   NOT NULL PRIMARY KEY,        -- from events_head: never reused
    id           CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at   BIGINT   NOT NULL,                    -- microseconds since the epoch
    stored_at    BIGINT   NOT NULL,                    -- the server's clock, for retention
    -- Text of any length; event_json read back byte for byte, context a JSON object or
    -- NULL when empty.
    aggregate_id LONGTEXT NOT NULL, event_type LONGTEXT NOT NULL, event_json LONGTEXT NOT NULL,
    user_id LONGTEXT, tenant_id LONGTEXT, session_id LONGTEXT, context LONGTEXT,
    UNIQUE KEY events_id (id),
    KEY events_created_at (created_at),
    KEY events_stored_at (stored_at),
    KEY events_tenant (tenant_id(191), position)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = {collation};
CREATE TABLE IF NOT EXISTS events_head (
    id   INT    NOT NULL PRIMARY KEY,
    head BIGINT NOT NULL
) ENGINE = InnoDB;
INSERT IGNORE INTO events_head (id, head) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS events_retention (
    id             INT    NOT NULL PRIMARY KEY,
    pruned_through BIGINT NOT NULL
) ENGINE = InnoDB;
INSERT IGNORE INTO events_retention (id, pruned_through) VALUES (1, 0);
";

/// The table of the schema's version.
const VERSION_TABLE: &str = "
CREATE TABLE IF NOT EXISTS events_schema (
    id      INT NOT NULL PRIMARY KEY,
    version INT NOT NULL
) ENGINE = InnoDB;
";

/// The columns of an event. The binary collations make MySQL describe text columns as
/// binary, which sqlx will not read as a `String`; `CAST(... AS CHAR)` gives them the
/// connection's (utf8mb4) collation on the way out, with no conversion.
const COLUMNS: &str = "position, CAST(id AS CHAR) AS id, created_at, \
     CAST(aggregate_id AS CHAR) AS aggregate_id, CAST(event_type AS CHAR) AS event_type, \
     CAST(event_json AS CHAR) AS event_json, CAST(user_id AS CHAR) AS user_id, \
     CAST(tenant_id AS CHAR) AS tenant_id, CAST(session_id AS CHAR) AS session_id, \
     CAST(context AS CHAR) AS context";

/// The MySQL/MariaDB store, for one server instance per database.
pub type MySqlStore = SqlStore<MySql>;

/// What only the MySQL store has: nothing beyond the shared tables.
#[derive(Debug)]
pub struct MySql;

/// The writer's side of the MySQL store. Its connection holds the owner lock; after any
/// error it is replaced, and the new one takes the lock again.
#[derive(Debug)]
pub struct MySqlWriter {
    options: MySqlConnectOptions,
    /// Most bytes of events one statement carries: below `max_allowed_packet`.
    statement_bytes: usize,
}

impl SqlStore<MySql> {
    /// Connects to the database at `url` (`mysql://user:password@host:port/database`),
    /// takes the database for this server, creates or migrates the schema, and starts
    /// the writer.
    ///
    /// Fails when another server has the database open as a store.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = parse_url::<MySqlConnectOptions>(url, "MySQL")?.charset("utf8mb4");
        let mut writer = MySqlWriter {
            options: options.clone(),
            statement_bytes: 0,
        };
        let mut connection = writer.connect().await?;
        migrate(&mut connection).await?;
        let packet: u64 = sqlx::query_scalar("SELECT @@max_allowed_packet")
            .fetch_one(&mut connection)
            .await?;
        let head: i64 = sqlx::query_scalar("SELECT head FROM events_head WHERE id = 1")
            .fetch_one(&mut connection)
            .await?;
        // A quarter is left for the statement's text and the protocol.
        writer.statement_bytes = usize::try_from(packet).unwrap_or(usize::MAX) / 4 * 3;

        let readers = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        let head = watch::Sender::new(to_position(head)?);
        Ok(Self::new(MySql, readers, writer, Some(connection), head))
    }
}

/// Creates the schema if it is missing; refuses a newer one.
async fn migrate(connection: &mut MySqlConnection) -> Result<(), StoreError> {
    // The version's own table first (MySQL has no `to_regclass`); the rest below.
    sqlx::raw_sql(VERSION_TABLE)
        .execute(&mut *connection)
        .await?;
    let version: Option<i32> = sqlx::query_scalar("SELECT version FROM events_schema WHERE id = 1")
        .fetch_optional(&mut *connection)
        .await?;
    match version {
        Some(version) if version > SCHEMA_VERSION => Err(StoreError::Unavailable(format!(
            "the database has schema version {version}, newer than this server's {SCHEMA_VERSION}; upgrade the server"
        ))),
        Some(SCHEMA_VERSION) => Ok(()),
        // Version 1 is the whole schema. MySQL commits DDL at once, so each statement
        // is safe to run again if a start stops halfway.
        _ => {
            // MariaDB and MySQL 8 name their binary collation without padding differently.
            let collation: Option<String> = sqlx::query_scalar(
                "SELECT COLLATION_NAME FROM information_schema.COLLATIONS \
                 WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin') LIMIT 1",
            )
            .fetch_optional(&mut *connection)
            .await?;
            let collation = collation.unwrap_or_else(|| "utf8mb4_bin".into());
            sqlx::raw_sql(&SCHEMA.replace("{collation}", &collation))
                .execute(&mut *connection)
                .await?;
            sqlx::query(
                "INSERT INTO events_schema (id, version) VALUES (1, ?) \
                 ON DUPLICATE KEY UPDATE version = VALUES(version)",
            )
            .bind(SCHEMA_VERSION)
            .execute(&mut *connection)
            .await?;
            tracing::info!(version = SCHEMA_VERSION, %collation, "MySQL schema ready");
            Ok(())
        }
    }
}

#[async_trait]
impl Insert for MySqlWriter {
    type Db = sqlx::MySql;
    const DIALECT: Dialect = Dialect::plain(COLUMNS);
    type Job = std::convert::Infallible;
    const NAME: &'static str = "MySQL";
    const GROUP_TIMEOUT: Option<Duration> = Some(GROUP_TIMEOUT);

    fn unstorable(&self, events: &[StoredEvent]) -> Option<StoreError> {
        let event = events
            .iter()
            .find(|event| event_size(event) > self.statement_bytes)?;
        Some(StoreError::Unstorable(format!(
            "event {} has about {} bytes, more than this MySQL server takes in one statement \
             ({} bytes, three quarters of its `max_allowed_packet`); raise max_allowed_packet",
            event.id,
            event_size(event),
            self.statement_bytes
        )))
    }

    /// Connects, and takes the owner lock (closing the session releases it).
    async fn connect(&self) -> Result<MySqlConnection, StoreError> {
        let (host, port) = (self.options.get_host(), self.options.get_port());
        let mut connection = self
            .options
            .connect()
            .await
            .map_err(|error| unreachable("MySQL", host, port, error))?;
        // The server drops a session idle for `wait_timeout` (8 hours by default), and the
        // owner lock with it: the writer's session stays for as long as the store is open.
        sqlx::query("SET SESSION wait_timeout = 31536000")
            .execute(&mut connection)
            .await?;
        let owned: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({OWNER_LOCK}, 0)"))
            .fetch_one(&mut connection)
            .await?;
        if owned == Some(1) {
            return Ok(connection);
        }
        let database: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
            .fetch_one(&mut connection)
            .await?;
        Err(StoreError::Unavailable(format!(
            "another server is using MySQL database `{}`: stop it, or give this server a \
             database of its own; the MySQL store serves one instance (for several \
             instances, use PostgreSQL)",
            database.unwrap_or_default()
        )))
    }

    async fn insert(
        &self,
        connection: &mut MySqlConnection,
        fresh: &[&StoredEvent],
    ) -> Result<(HashMap<Uuid, u64>, u64), StoreError> {
        let mut tx = connection.begin().await?;
        let stored_at = to_micros(distributed_events_shared::now());
        let head: i64 = sqlx::query_scalar("SELECT head FROM events_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let mut head = to_position(head)?;
        let mut positions = HashMap::with_capacity(fresh.len());
        let mut rest = fresh;
        while !rest.is_empty() {
            // As many rows as fit in one statement (at least one: `unstorable` refused
            // larger events).
            let mut bytes = 0;
            let count = rest
                .iter()
                .take(MAX_ROWS_PER_STATEMENT)
                .take_while(|event| {
                    bytes += event_size(event);
                    bytes <= self.statement_bytes
                })
                .count()
                .max(1);
            let (chunk, later) = rest.split_at(count);
            rest = later;
            let sql = format!(
                "INSERT INTO events (position, {INSERT_COLUMNS}) VALUES {}",
                value_rows(11, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for event in chunk {
                head += 1;
                positions.insert(event.id, head);
                query = bind_event(query.bind(sql_position(head)), event, stored_at)?;
            }
            query.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE events_head SET head = ? WHERE id = 1")
            .bind(sql_position(head))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((positions, head))
    }
}

impl Backend for MySql {
    type Writer = MySqlWriter;
}
