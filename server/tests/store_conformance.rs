//! Runs the conformance suite (tests/common/conformance.rs) against every backend.

mod common;

use std::sync::Arc;

use distributed_events_server::store::{MemoryStore, SharedStore, SqliteStore};

async fn memory() -> Option<SharedStore> {
    Some(Arc::new(MemoryStore::new()))
}

async fn sqlite() -> Option<SharedStore> {
    // The directory is leaked so that the file outlives the store; it is removed with
    // the system's temp files.
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("events.db");
    Some(Arc::new(SqliteStore::open(path.to_str().unwrap()).await.unwrap()))
}

conformance_suite!(memory_store, memory().await);
conformance_suite!(sqlite_store, sqlite().await);
