//! Throw-away databases for the tests that need PostgreSQL or MySQL: the URL from the
//! environment (a skip that says so outside CI, a failure in CI), and a fresh schema
//! (PostgreSQL) or database (MySQL) per test, so that tests run in parallel.
//!
//! One file for every test crate: `server/tests` has it as `common::databases`, the
//! cross-crate tests in `tests/tests` include it with `#[path]`.
#![allow(dead_code)] // each test binary uses a part

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, MySqlConnection, PgConnection};

/// What the throw-away schemas and databases are called: `de_test_<unix seconds>_<random>`.
const PREFIX: &str = "de_test_";
/// Those of earlier runs older than this are dropped.
const STALE_SECS: u64 = 3600;

/// `DATABASE_URL_TEST`, the PostgreSQL test database; see [`url_from_env`].
pub fn postgres_url() -> Option<String> {
    url_from_env(
        "DATABASE_URL_TEST",
        "postgres://postgres@127.0.0.1:5432/test",
        "scripts/ci-postgres.sh",
    )
}

/// `MYSQL_URL_TEST`, the MySQL/MariaDB test server; see [`url_from_env`].
pub fn mysql_url() -> Option<String> {
    url_from_env(
        "MYSQL_URL_TEST",
        "mysql://root@127.0.0.1:3306/test",
        "scripts/ci-mysql.sh",
    )
}

/// The URL in `variable`, or `None` after saying clearly that the test is skipped. In CI
/// a missing database is a failure, never a skip; set but unreachable fails the test
/// too (in the `fresh_*` helpers).
fn url_from_env(variable: &str, example: &str, script: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{variable} is not set in CI; scripts/test.sh sets it with {script}"
            );
            // Straight to stderr, not `eprintln!`: the harness hides `eprintln!` output of
            // passing tests, and a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {variable} not set (e.g. {example}; `eval \"$({script})\"` sets it up)"
            );
            None
        }
    }
}

/// A fresh name, and those of `existing` that earlier runs left behind long enough ago.
fn fresh_name(existing: Vec<String>) -> (String, Vec<String>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let stale = existing
        .into_iter()
        .filter(|name| {
            let created = name
                .strip_prefix(PREFIX)
                .unwrap_or_default()
                .split('_')
                .next()
                .and_then(|secs| secs.parse::<u64>().ok());
            created.is_some_and(|created| created + STALE_SECS < now)
        })
        .collect();
    let name = format!("{PREFIX}{now}_{}", uuid::Uuid::now_v7().simple());
    (name, stale)
}

/// Creates an empty schema of its own for one test in the PostgreSQL database at `url`,
/// after dropping those that runs more than an hour ago left behind, and returns the
/// `--database` URL that puts the store's tables in it.
pub async fn fresh_postgres_schema(url: &str) -> String {
    let mut db = PgConnection::connect(url).await.unwrap_or_else(|error| {
        panic!("DATABASE_URL_TEST is set but PostgreSQL is unreachable: {error}")
    });
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'de\\_test\\_%'",
    )
    .fetch_all(&mut db)
    .await
    .expect("list schemas");
    let (schema, stale) = fresh_name(existing);
    for name in stale {
        // Best effort: a parallel test may be dropping it too.
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
            .execute(&mut db)
            .await;
    }
    sqlx::raw_sql(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&mut db)
        .await
        .expect("create a test schema");
    db.close().await.ok();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options[search_path]={schema}")
}

/// Creates an empty database of its own for one test on the MySQL server at `url`, after
/// dropping those that runs more than an hour ago left behind, and returns the
/// `--database` URL of it.
pub async fn fresh_mysql_database(url: &str) -> String {
    let mut db = MySqlConnection::connect(url)
        .await
        .unwrap_or_else(|error| panic!("MYSQL_URL_TEST is set but MySQL is unreachable: {error}"));
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA \
         WHERE SCHEMA_NAME LIKE 'de\\_test\\_%'",
    )
    .fetch_all(&mut db)
    .await
    .expect("list databases");
    let (database, stale) = fresh_name(existing);
    for name in stale {
        let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(&mut db)
            .await;
    }
    sqlx::raw_sql(&format!("CREATE DATABASE `{database}`"))
        .execute(&mut db)
        .await
        .expect("create a test database");
    db.close().await.ok();
    // mysql://user@host:port/DATABASE?params: the path names the database.
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let authority_end = base.find("://").map_or(0, |scheme| scheme + 3);
    let server = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("{server}/{database}{query}")
}
