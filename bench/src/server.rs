//! The server under test: a child process (the real binary, or this bench's own
//! hello-world server), its URL, and what `/proc` says about its CPU, memory and sockets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::BenchError;

/// A running server process, killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    url: String,
}

impl ServerProcess {
    /// Starts `program args...` and waits for its `listening on http://ADDR` line.
    pub fn start(program: &Path, args: &[String]) -> Result<Self, BenchError> {
        let mut command = Command::new(program);
        command.args(args).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        let (mut child, listening) = distributed_events_tests::spawn_listening(command, "server")
            .map_err(|error| {
                BenchError(format!(
                    "cannot start {}: {error}; build it first with `cargo build --release -p distributed-events-server`",
                    program.display()
                ))
            })?;
        match listening {
            Ok(address) => Ok(Self {
                child,
                url: format!("http://{address}"),
            }),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(BenchError(format!(
                    "{} did not start listening ({error}); see its log above",
                    program.display()
                )))
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn proc_file(&self, name: &str) -> Result<String, BenchError> {
        let path = format!("/proc/{}/{name}", self.child.id());
        std::fs::read_to_string(&path).map_err(|error| BenchError(format!("{path}: {error}")))
    }

    /// User plus system CPU time the process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64, BenchError> {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    /// A `VmXxx` line of `/proc/PID/status`, in bytes.
    fn status_bytes(&self, key: &str) -> Result<f64, BenchError> {
        let status = self.proc_file("status")?;
        status
            .lines()
            .find_map(|line| {
                let value = line.strip_prefix(key)?.strip_prefix(':')?;
                let kib: f64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
                Some(kib * 1024.0)
            })
            .ok_or_else(|| BenchError(format!("no {key} in /proc/PID/status")))
    }

    /// Resident memory now, in bytes.
    pub fn rss_bytes(&self) -> Result<f64, BenchError> {
        self.status_bytes("VmRSS")
    }

    /// Highest resident memory so far, in bytes.
    pub fn peak_rss_bytes(&self) -> Result<f64, BenchError> {
        self.status_bytes("VmHWM")
    }

    /// Open file descriptors (sockets included).
    pub fn open_fds(&self) -> Result<usize, BenchError> {
        let path = format!("/proc/{}/fd", self.child.id());
        std::fs::read_dir(&path)
            .map(Iterator::count)
            .map_err(|error| BenchError(format!("{path}: {error}")))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU seconds of a process, from its `/proc/PID/stat`.
pub fn cpu_seconds(stat_path: &str) -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string(stat_path)
        .map_err(|error| BenchError(format!("{stat_path}: {error}")))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| BenchError(format!("unexpected {stat_path}")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5); `rest` starts at field 3.
    let ticks = |index: usize| -> Result<f64, BenchError> {
        fields
            .get(index - 3)
            .and_then(|field| field.parse::<f64>().ok())
            .ok_or_else(|| BenchError(format!("unexpected {stat_path}")))
    };
    Ok((ticks(14)? + ticks(15)?) / clock_ticks_per_second())
}

/// `getconf CLK_TCK`, 100 when it cannot be asked (the value on every Linux we know).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The server binary built next to this bench (`target/<profile>/`), so that
/// `cargo run --release -p distributed-events-bench` uses the release server.
pub fn default_server_binary() -> PathBuf {
    let name = format!("distributed-events-server{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(&name)))
        .unwrap_or_else(|| PathBuf::from("target/release").join(name))
}

/// A database for one server: a SQLite file in a temporary directory, or a fresh schema
/// of the PostgreSQL database, dropped afterwards.
#[derive(Debug)]
pub enum Database {
    Sqlite(tempfile::TempDir),
    Postgres { base: String, schema: String },
}

impl Database {
    pub fn sqlite() -> Result<Self, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("distributed-events-bench")
            .tempdir()
            .map_err(|error| BenchError(format!("cannot create a temporary directory: {error}")))?;
        Ok(Self::Sqlite(dir))
    }

    /// A new schema `bench_<pid>_<n>` in the database at `base`.
    pub async fn postgres(base: &str) -> Result<Self, BenchError> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let schema = format!("bench_{}_{n}", std::process::id());
        let mut connection = connect(base).await?;
        sqlx::raw_sql(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .execute(&mut connection)
        .await
        .map_err(|error| BenchError(format!("cannot create schema {schema}: {error}")))?;
        Ok(Self::Postgres {
            base: base.to_owned(),
            schema,
        })
    }

    /// The `--database` value for the server.
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("events.db").display()),
            Self::Postgres { base, schema } => {
                let separator = if base.contains('?') { '&' } else { '?' };
                format!("{base}{separator}options[search_path]={schema}")
            }
        }
    }

    /// Drops a PostgreSQL schema (a SQLite directory goes when dropped).
    pub async fn remove(self) {
        if let Self::Postgres { base, schema } = self {
            match connect(&base).await {
                Ok(mut connection) => {
                    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                    if let Err(error) = sqlx::raw_sql(&sql).execute(&mut connection).await {
                        eprintln!("warning: cannot drop schema {schema}: {error}");
                    }
                }
                Err(error) => eprintln!("warning: cannot drop schema {schema}: {error}"),
            }
        }
    }
}

async fn connect(url: &str) -> Result<sqlx::PgConnection, BenchError> {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .map_err(|error| BenchError(format!("cannot connect to PostgreSQL: {error}")))
}
