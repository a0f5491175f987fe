//! Helpers of the cross-crate tests in `tests/`: [`TestServer`], a real
//! `distributed-events-server` process on a temporary SQLite file that a test can kill
//! and restart at the same address, watch (its PID and memory) and starve of disk space
//! (a file-size limit); and [`spawn_listening`], the one launcher of a server process,
//! which `server/tests`, `tests/` and `bench/` all start their servers with.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The server binary: `DISTRIBUTED_EVENTS_SERVER_BIN`, or the one built next to the test
/// binary (`target/<profile>/`). `cargo test --workspace` builds it; `cargo test -p
/// distributed-events-tests` alone does not, hence the message.
pub fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DISTRIBUTED_EVENTS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    // target/<profile>/deps/<test> -> target/<profile>/distributed-events-server
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under target/<profile>/deps");
    let path = profile_dir.join(format!(
        "distributed-events-server{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p distributed-events-server` (same profile as the tests)",
        path.display()
    );
    path
}

/// A `distributed-events-server` on a SQLite file of its own, killed when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// Holds the database; deleted with the server.
    dir: tempfile::TempDir,
    /// The `--database` of a server on a database server; `None` for a SQLite file in
    /// `dir`.
    database: Option<String>,
    extra: Vec<String>,
    /// Whether the process ignores SIGXFSZ (see [`TestServer::start_ignoring_sigxfsz`]).
    ignore_sigxfsz: bool,
    /// `127.0.0.1:<port>`, kept across restarts so that clients find the server again.
    address: String,
    child: Option<Child>,
}

impl TestServer {
    /// Starts a server on a free port with `extra` arguments (such as
    /// `["--retention", "1s"]`), and waits until it listens.
    pub fn start(extra: &[&str]) -> Self {
        Self::launch(None, extra, false)
    }

    /// Like [`start`](Self::start), on `database` (a `--database` URL such as
    /// `mysql://…`) instead of a SQLite file of its own.
    pub fn start_on(database: &str, extra: &[&str]) -> Self {
        Self::launch(Some(database.to_owned()), extra, false)
    }

    /// Like [`start`](Self::start), but the process ignores SIGXFSZ (it is started
    /// through `sh -c 'trap "" XFSZ; exec …'`, and an ignored signal stays ignored across
    /// `exec`), so that a file-size limit set with
    /// [`limit_file_size`](Self::limit_file_size) makes its writes fail with `EFBIG`, as a
    /// full disk makes them fail, instead of killing it. Restarts keep this.
    pub fn start_ignoring_sigxfsz(extra: &[&str]) -> Self {
        Self::launch(None, extra, true)
    }

    fn launch(database: Option<String>, extra: &[&str], ignore_sigxfsz: bool) -> Self {
        let mut server = Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            database,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            ignore_sigxfsz,
            address: "127.0.0.1:0".into(),
            child: None,
        };
        server.spawn();
        server
    }

    /// The base URL, such as `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The process id of the running server; `None` after [`kill`](Self::kill).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's resident memory (`VmRSS` of `/proc/<pid>/status`), in bytes; `None`
    /// when the server is not running or the value cannot be read (not Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        // "VmRSS:     12345 kB"
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Sets the running server's soft file-size limit (RLIMIT_FSIZE) with `prlimit`:
    /// `Some(bytes)` makes every write past that offset of any regular file fail, as
    /// on a full disk (`Some(0)`: every write fails); `None` lifts it. The hard limit is
    /// left alone, so lifting needs no privilege. Needs a server started with
    /// [`start_ignoring_sigxfsz`](Self::start_ignoring_sigxfsz), which the limit would
    /// otherwise kill, and `prlimit` (util-linux).
    pub fn limit_file_size(&self, bytes: Option<u64>) {
        assert!(
            self.ignore_sigxfsz,
            "start the server with TestServer::start_ignoring_sigxfsz: a file-size limit kills a process that does not ignore SIGXFSZ"
        );
        let pid = self.pid().expect("the server is running");
        let soft = bytes.map_or_else(|| "unlimited".to_owned(), |bytes| bytes.to_string());
        let output = Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            // `soft:` sets the soft limit only.
            .arg(format!("--fsize={soft}:"))
            .output()
            .expect("run prlimit (util-linux)");
        assert!(
            output.status.success(),
            "prlimit --pid={pid} --fsize={soft}: failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same database and address.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The server's SQLite file.
    pub fn database_path(&self) -> PathBuf {
        self.dir.path().join("events.db")
    }

    fn spawn(&mut self) {
        let database = self
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.database_path().display()));
        // The port of a killed server can take a moment to be free again.
        for attempt in 0..50 {
            let mut command = if self.ignore_sigxfsz {
                let mut shell = Command::new("sh");
                shell
                    .args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""])
                    .arg(server_binary());
                shell
            } else {
                Command::new(server_binary())
            };
            command
                .args(["--bind", &self.address, "--database", &database])
                .args(["--static-dir", "/nonexistent"])
                .args(&self.extra)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                );
            let (mut child, listening) =
                spawn_listening(command, "server").expect("start distributed-events-server");
            match listening {
                Ok(address) => {
                    self.address = address;
                    self.child = Some(child);
                    return;
                }
                // The process exited without listening: most likely the port was busy (or,
                // on MySQL, the killed server's session still held the database).
                Err(mpsc::RecvTimeoutError::Disconnected) if attempt < 49 => {
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => {
                    let _ = child.kill();
                    panic!(
                        "the server did not start listening on {} ({error}); see its log above",
                        self.address
                    );
                }
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `command` (a server binary and its arguments), sends its log to the caller's
/// standard error (a test's captured output) with `[label]` before each line, and waits
/// for its `listening on http://ADDR` line: the process and `ADDR`, or why no address
/// came (it exited first, or printed none within 30 s). `Err` when it cannot be started.
pub fn spawn_listening(
    mut command: Command,
    label: &str,
) -> std::io::Result<(Child, Result<String, mpsc::RecvTimeoutError>)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
    let (found, listening) = mpsc::channel();
    let label = label.to_owned();
    // Drains stderr for the process's whole life, so that it never blocks on a full
    // pipe; spawned threads inherit the test's output capture.
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("listening on http://") {
                if let Some(found) = found.take() {
                    let _ = found.send(address.trim().to_owned());
                }
            }
            eprintln!("[{label}] {line}");
        }
    });
    let address = listening.recv_timeout(Duration::from_secs(30));
    Ok((child, address))
}
