//! Helpers shared by the server's integration tests.
#![allow(dead_code)]

pub mod conformance;
pub mod databases;

use std::path::Path;
use std::process::{Child, Command};

/// One `GET` of `url` (a cursor read): the page's events, its `X-Events-Cursor` and
/// the length of its body.
pub async fn read_page(
    client: &reqwest::Client,
    url: &str,
) -> (Vec<distributed_events_server::StoredEvent>, u64, usize) {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    let cursor: u64 = response.headers()["x-events-cursor"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = response.bytes().await.unwrap();
    let page = serde_json::from_slice(&body).unwrap();
    (page, cursor, body.len())
}

/// The real `distributed-events-server` binary, running on a free port.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
}

impl ServerProcess {
    /// Starts the binary with `args` and waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_distributed-events-server")),
            args,
        )
    }

    /// Starts the binary with `args` under an open-file limit (`ulimit -n`) of
    /// `open_files`, set with `prlimit` (util-linux).
    pub fn start_with_open_files(open_files: u64, args: &[&str]) -> Self {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={open_files}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_distributed-events-server"));
        Self::spawn(command, args)
    }

    fn spawn(mut command: Command, args: &[&str]) -> Self {
        command
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn");
        let (child, address) = distributed_events_tests::spawn_listening(command, "server")
            .expect("the server binary starts");
        let address = address.expect("the server printed its address");
        Self {
            child,
            base: format!("http://{address}"),
        }
    }

    /// Starts the binary on a SQLite file.
    pub fn sqlite(path: &Path, extra: &[&str]) -> Self {
        let database = format!("sqlite://{}", path.display());
        let mut args = vec!["--database", database.as_str()];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit and returns whether it was successful.
    pub fn terminate(mut self) -> bool {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap().success()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
