//! Memory per request: pages are capped in bytes, so concurrent readers of large events
//! hold about a page each, whatever the event count limit (the real binary, on SQLite).
#![cfg(target_os = "linux")]

mod common;

use common::ServerProcess;
use distributed_events_server::StoredEvent;
use serde_json::json;
use uuid::Uuid;

const EVENTS: usize = 40;
const EVENT_BYTES: usize = 400 * 1024;
const PAGE_BYTES: usize = 1024 * 1024;
const READERS: usize = 4;

/// The peak resident memory of a process so far, in bytes (`VmHWM`).
fn peak_memory(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kilobytes = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"));
    kilobytes * 1024
}

/// Every event from the start, page by page; checks each page against the byte cap.
async fn read_all(client: reqwest::Client, base: String) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{base}/events?after={after}");
        let (page, cursor, body_len) = common::read_page(&client, &url).await;
        if page.is_empty() {
            return all;
        }
        // (The few quotes in each payload, escaped, fit in the cap's allowance for keys.)
        assert!(
            body_len <= PAGE_BYTES + 2 || page.len() == 1,
            "a page of {} events is {} bytes, over --max-page-bytes {PAGE_BYTES}",
            page.len(),
            body_len
        );
        assert_eq!(
            Some(cursor),
            page.last().and_then(|event| event.position),
            "the cursor is the last event's position, so nothing is skipped"
        );
        all.extend(page);
        after = cursor;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_of_large_events_hold_about_a_page_each() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("events.db");
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    {
        let writer = ServerProcess::sqlite(&db, &[]);
        for n in 0..EVENTS {
            let id = Uuid::now_v7();
            let payload = json!({ "n": n, "pad": "x".repeat(EVENT_BYTES) }).to_string();
            let response = client
                .post(format!("{}/events", writer.base))
                .json(&json!({
                    "id": id,
                    "createdAt": "2024-12-04T10:00:15Z",
                    "aggregateId": "big",
                    "eventType": "Large",
                    "eventJson": payload,
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201, "posting event {n}");
            ids.push(id);
        }
        assert!(writer.terminate(), "the writer stopped cleanly");
    }

    // A fresh process: its peak so far is its start, and every read comes from the store
    // (its tail of recent events starts at the head).
    let page_bytes = PAGE_BYTES.to_string();
    let server = ServerProcess::sqlite(&db, &["--max-page-bytes", &page_bytes]);
    let pid = server.child.id();
    let before = peak_memory(pid);
    let readers: Vec<_> = (0..READERS)
        .map(|_| tokio::spawn(read_all(client.clone(), server.base.clone())))
        .collect();
    for reader in readers {
        let events = reader.await.unwrap();
        let seen: Vec<Uuid> = events.iter().map(|event| event.id).collect();
        assert_eq!(seen, ids, "each reader got every event once, in order");
    }
    let after = peak_memory(pid);

    // A request holds its page about three times (rows being decoded, events, their
    // JSON) plus an event or two it read past the cap; allow that, and 16 MiB for the
    // allocator and the connections. (Measured: about 15 MiB in all. Without the byte
    // cap, each reader holds all 16 MB of events at least twice: about 75 MiB.)
    let allowed = READERS * (3 * PAGE_BYTES + 2 * EVENT_BYTES) + 16 * 1024 * 1024;
    let grown = after.saturating_sub(before);
    println!(
        "peak memory {} MiB before the reads, {} MiB after: grew {} KiB (allowed {} KiB)",
        before >> 20,
        after >> 20,
        grown >> 10,
        allowed >> 10
    );
    assert!(
        grown <= allowed,
        "{READERS} readers of {EVENTS} events of {EVENT_BYTES} bytes, pages capped at \
         {PAGE_BYTES} bytes, grew the server's peak memory by {grown} bytes (allowed {allowed})"
    );
}
