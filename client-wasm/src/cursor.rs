use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::platform::{MaybeSend, MaybeSync};

/// Where a client keeps its cursor between runs, so that a restart (or a page reload)
/// resumes with nothing lost and nothing repeated. The client saves after each page it
/// dispatched, under a key naming the server (`distributed-events:cursor:<serverUrl>`).
///
/// In the browser use `LocalStorageCursorStore` (wasm32 only).
pub trait CursorStore: MaybeSend + MaybeSync + 'static {
    /// The saved cursor, if any. An error is reported and the client starts as if none
    /// was saved.
    fn load(&self, key: &str) -> Result<Option<u64>, String>;
    /// Saves the cursor. An error is reported; delivery goes on.
    fn save(&self, key: &str, cursor: u64) -> Result<(), String>;
}

/// A cursor store in memory, shared by its clones: for tests, and for programs that
/// run several clients one after the other.
#[derive(Clone, Debug, Default)]
pub struct MemoryCursorStore {
    cursors: Arc<Mutex<HashMap<String, u64>>>,
}

impl MemoryCursorStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl CursorStore for MemoryCursorStore {
    fn load(&self, key: &str) -> Result<Option<u64>, String> {
        Ok(self
            .cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied())
    }

    fn save(&self, key: &str, cursor: u64) -> Result<(), String> {
        self.cursors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), cursor);
        Ok(())
    }
}
