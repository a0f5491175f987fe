//! An in-memory store, for unit tests and `--database memory`. Nothing survives a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use distributed_events_shared::StoredEvent;
use tokio::sync::watch;
use uuid::Uuid;

use super::{event_size, Appended, EventStore, Selection, StoreError};

/// Keeps events in memory.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    head: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Events with the time they were stored, in position order.
    events: VecDeque<(StoredEvent, DateTime<Utc>)>,
    by_id: HashMap<Uuid, u64>,
    head: u64,
    pruned_through: u64,
    closed: bool,
}

impl State {
    fn index_of(&self, position: u64) -> usize {
        self.events
            .partition_point(|(event, _)| event.position.unwrap_or(0) <= position)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            head: watch::Sender::new(0),
        }
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed {
            return Err(StoreError::Closed);
        }
        Ok(state)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append_batch(&self, events: Vec<StoredEvent>) -> Result<Vec<Appended>, StoreError> {
        let mut state = self.state()?;
        let now = distributed_events_shared::now();
        let results = events
            .into_iter()
            .map(|mut event| {
                if let Some(&position) = state.by_id.get(&event.id) {
                    let index = state.index_of(position - 1);
                    return Appended::Existing(state.events[index].0.clone());
                }
                state.head += 1;
                let position = state.head;
                event.position = Some(position);
                state.by_id.insert(event.id, position);
                state.events.push_back((event.clone(), now));
                Appended::New(event)
            })
            .collect();
        self.head.send_replace(state.head);
        Ok(results)
    }

    async fn read_range(
        &self,
        after: u64,
        through: u64,
        limit: usize,
        max_bytes: usize,
        selection: &Selection<'_>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let state = self.state()?;
        let start = state.index_of(after);
        let end = state.index_of(through).max(start);
        let mut bytes = 0usize;
        Ok(state
            .events
            .range(start..end)
            .filter(|(event, _)| selection.selects(event))
            .take(limit)
            .take_while(|(event, _)| {
                let more = bytes < max_bytes.max(1);
                bytes = bytes.saturating_add(event_size(event));
                more
            })
            .map(|(event, _)| event.clone())
            .collect())
    }

    async fn read_since(
        &self,
        since: DateTime<Utc>,
        limit: usize,
        tenant: Option<&str>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let state = self.state()?;
        Ok(state
            .events
            .iter()
            .filter(|(event, _)| {
                event.created_at >= since && Selection::tenant(tenant).selects(event)
            })
            .take(limit)
            .map(|(event, _)| event.clone())
            .collect())
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredEvent>, StoreError> {
        let state = self.state()?;
        let Some(&position) = state.by_id.get(&id) else {
            return Ok(None);
        };
        Ok(Some(state.events[state.index_of(position - 1)].0.clone()))
    }

    async fn delete_older_than(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut state = self.state()?;
        let Some(last) = state
            .events
            .iter()
            .rev()
            .find(|(_, stored_at)| *stored_at < cutoff)
            .and_then(|(event, _)| event.position)
        else {
            return Ok(0);
        };
        let count = state.index_of(last);
        for (event, _) in state.events.drain(..count).collect::<Vec<_>>() {
            state.by_id.remove(&event.id);
        }
        state.pruned_through = state.pruned_through.max(last);
        Ok(count as u64)
    }

    async fn pruned_through(&self) -> Result<u64, StoreError> {
        Ok(self.state()?.pruned_through)
    }

    async fn head(&self) -> Result<u64, StoreError> {
        Ok(self.state()?.head)
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn close(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
    }
}
