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
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use distributed_events_shared::StoredEvent;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, MySqlConnection};
use tokio::sync::watch;
use uuid::Uuid;

use super::sql::{
    bind_event, fetch, sql_position, to_position, value_rows, Backend, Dialect, SqlStore,
    INSERT_COLUMNS,
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
    aggregate_id LONGTEXT NOT NULL,
    event_type   LONGTEXT NOT NULL,
    event_json   LONGTEXT NOT NULL,                    -- kept as text: reads back byte for byte
    user_id      LONGTEXT,
    tenant_id    LONGTEXT,
    session_id   LONGTEXT,
    context      LONGTEXT,                             -- JSON object, NULL when empty
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

/// The writer's side of the MySQL store: one connection, which holds the owner lock;
/// replaced after any error.
#[derive(Debug)]
pub struct MySqlWriter {
    options: MySqlConnectOptions,
    connection: Option<MySqlConnection>,
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
        let options = MySqlConnectOptions::from_str(url)
            .map_err(|error| StoreError::Unavailable(format!("invalid MySQL URL: {error}")))?
            .charset("utf8mb4");
        let mut writer = MySqlWriter {
            options: options.clone(),
            connection: None,
            statement_bytes: 0,
        };
        let connection = writer.connection().await?;
        migrate(connection).await?;
        let packet: u64 = sqlx::query_scalar("SELECT @@max_allowed_packet")
            .fetch_one(&mut *connection)
            .await?;
        let head: i64 = sqlx::query_scalar("SELECT head FROM events_head WHERE id = 1")
            .fetch_one(&mut *connection)
            .await?;
        // A quarter is left for the statement's text and the protocol.
        writer.statement_bytes = usize::try_from(packet).unwrap_or(usize::MAX) / 4 * 3;

        let readers = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        let head = watch::Sender::new(to_position(head)?);
        Ok(Self::new(MySql, readers, writer, head))
    }
}

/// Creates the schema if it is missing; refuses a newer one.
async fn migrate(connection: &mut MySqlConnection) -> Result<(), StoreError> {
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'events_schema'",
    )
    .fetch_one(&mut *connection)
    .await?;
    let version: Option<i32> = if exists > 0 {
        sqlx::query_scalar("SELECT version FROM events_schema WHERE id = 1")
            .fetch_optional(&mut *connection)
            .await?
    } else {
        None
    };
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

impl MySqlWriter {
    /// The writer's connection, connecting first (and taking the owner lock) if there is
    /// none.
    async fn connection(&mut self) -> Result<&mut MySqlConnection, StoreError> {
        if let Some(ref mut connection) = self.connection {
            return Ok(connection);
        }
        let mut connection = self.options.connect().await.map_err(|error| {
            StoreError::Unavailable(format!(
                "cannot connect to MySQL at {}:{}: {error}",
                self.options.get_host(),
                self.options.get_port()
            ))
        })?;
        let owned: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({OWNER_LOCK}, 0)"))
            .fetch_one(&mut connection)
            .await?;
        if owned != Some(1) {
            let database: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
                .fetch_one(&mut connection)
                .await?;
            return Err(StoreError::Unavailable(format!(
                "another server is using MySQL database `{}`: stop it, or give this server a \
                 database of its own; the MySQL store serves one instance (for several \
                 instances, use PostgreSQL)",
                database.unwrap_or_default()
            )));
        }
        Ok(self.connection.insert(connection))
    }
}

#[async_trait]
impl Insert for MySqlWriter {
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

    async fn fetch(&mut self, ids: &[Uuid]) -> Result<HashMap<Uuid, StoredEvent>, StoreError> {
        fetch::<MySql>(self.connection().await?, ids).await
    }

    async fn insert(
        &mut self,
        fresh: &[&StoredEvent],
    ) -> Result<(HashMap<Uuid, u64>, u64), StoreError> {
        let stored_at = to_micros(distributed_events_shared::now());
        let statement_bytes = self.statement_bytes;
        let mut tx = self.connection().await?.begin().await?;
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
                    bytes <= statement_bytes
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

    async fn recover(&mut self) {
        // The connection may be broken or mid-transaction: start over with a new one
        // (which takes the owner lock again).
        self.connection = None;
    }

    async fn run(&mut self, job: std::convert::Infallible) {
        match job {}
    }

    async fn close(self) {
        if let Some(connection) = self.connection {
            // Closing the session releases the owner lock.
            connection.close().await.ok();
        }
    }
}

impl Backend for MySql {
    type Db = sqlx::MySql;
    type Writer = MySqlWriter;
    const DIALECT: Dialect = Dialect {
        columns: COLUMNS,
        numbered: false,
        uuid_cast: "",
        text_cast: "",
    };
}
