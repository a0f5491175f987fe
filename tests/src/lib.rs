//! Helpers of the cross-crate tests in `tests/`: [`TestServer`], a real
//! `distributed-events-server` process on a temporary SQLite file that a test can kill
//! and restart at the same address.

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
    extra: Vec<String>,
    /// `127.0.0.1:<port>`, kept across restarts so that clients find the server again.
    address: String,
    child: Option<Child>,
}

impl TestServer {
    /// Starts a server on a free port with `extra` arguments (such as
    /// `["--retention", "1s"]`), and waits until it listens.
    pub fn start(extra: &[&str]) -> Self {
        let mut server = Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
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

    fn spawn(&mut self) {
        let database = format!("sqlite://{}", self.dir.path().join("events.db").display());
        // The port of a killed server can take a moment to be free again.
        for attempt in 0..50 {
            let mut child = Command::new(server_binary())
                .args(["--bind", &self.address, "--database", &database])
                .args(["--static-dir", "/nonexistent"])
                .args(&self.extra)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start distributed-events-server");
            let stderr = child.stderr.take().expect("piped stderr");
            let (found, listening) = mpsc::channel();
            // Drains stderr for the process's whole life, so that it never blocks on a
            // full pipe; the lines show in the output of a failing test.
            std::thread::spawn(move || {
                let mut found = Some(found);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(url) = line.strip_prefix("listening on http://") {
                        if let Some(found) = found.take() {
                            let _ = found.send(url.trim().to_owned());
                        }
                    }
                    eprintln!("[server] {line}");
                }
            });
            match listening.recv_timeout(Duration::from_secs(30)) {
                Ok(address) => {
                    self.address = address;
                    self.child = Some(child);
                    return;
                }
                // The process exited without listening: most likely the port was busy.
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
