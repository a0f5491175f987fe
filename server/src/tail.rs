//! The tail: the most recent events in memory, each serialized once.
//!
//! Clients in live mode all poll at the head, so every commit wakes every one of them.
//! Instead of each re-reading the store, one follower task reads each commit once and
//! appends it here; waiting polls wait on the tail and are answered from memory, sharing
//! each event's JSON. Polls further back than the tail read the store as before.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use distributed_events_shared::StoredEvent;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{event_size, SharedStore, Visibility};
use crate::telemetry;

/// Most events the tail keeps.
const MAX_EVENTS: usize = 8192;
/// Most events the follower reads at once.
const FOLLOW_BATCH: usize = 1024;
/// Most bytes of JSON the follower reads at once (and then holds twice, briefly).
const FOLLOW_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// What an entry costs besides its JSON and the event's strings: the event's fields and
/// the tail's bookkeeping.
const ENTRY_OVERHEAD: usize = 256;

/// An event and its JSON.
#[derive(Clone, Debug)]
pub(crate) struct Serialized {
    pub(crate) event: StoredEvent,
    pub(crate) json: Bytes,
}

impl Serialized {
    pub(crate) fn new(event: StoredEvent) -> Self {
        let json = json_of(&event);
        Self { event, json }
    }

    fn position(&self) -> u64 {
        self.event.position.unwrap_or_default()
    }

    /// The memory the entry holds, erring high: its JSON, the event (whose strings are
    /// no longer than the JSON that carries them) and the overhead.
    fn weight(&self) -> usize {
        2 * self.json.len() + ENTRY_OVERHEAD
    }
}

/// The JSON of an event. A `StoredEvent` is strings, numbers and a map of JSON values,
/// so it always serializes.
pub(crate) fn json_of(event: &StoredEvent) -> Bytes {
    // As a boxed slice, so that the buffer holds no spare capacity.
    Bytes::from(
        serde_json::to_vec(event)
            .unwrap_or_default()
            .into_boxed_slice(),
    )
}

/// An event of a page: its position (a stream's `id:`) and its JSON.
#[derive(Clone, Debug)]
pub(crate) struct PageEvent {
    pub(crate) position: u64,
    pub(crate) json: Bytes,
}

/// A page answered from the tail.
#[derive(Debug)]
pub(crate) struct TailPage {
    pub(crate) events: Vec<PageEvent>,
    pub(crate) cursor: u64,
    /// Cut by the limit or the byte cap: its cursor is the last event's position.
    pub(crate) full: bool,
}

/// The recent events: every event with a position in `(start, end]`, in order.
#[derive(Debug)]
pub(crate) struct Tail {
    state: RwLock<State>,
    /// Most memory the entries may hold (their [`weight`](Serialized::weight)).
    max_bytes: usize,
    /// `end`, for polls waiting for it to pass their cursor.
    end: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    start: u64,
    end: u64,
    events: VecDeque<Serialized>,
    bytes: usize,
}

impl Tail {
    /// An empty tail that starts at `head`: it covers what is committed after it, and
    /// keeps about `max_bytes` of the latest events.
    pub(crate) fn new(head: u64, max_bytes: usize) -> Self {
        Self {
            state: RwLock::new(State {
                start: head,
                end: head,
                events: VecDeque::new(),
                bytes: 0,
            }),
            max_bytes,
            end: watch::Sender::new(head),
        }
    }

    /// Waits on this for the tail's end to move.
    pub(crate) fn watch_end(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    /// Up to `limit` events after `after` that `tenant` (when given) owns and `visible`
    /// accepts, whose sizes ([`event_size`]) add up to at most `max_bytes` (but at least
    /// one event), or
    /// `None` when `after` lies before the tail (read the store then).
    pub(crate) fn read(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
        tenant: Option<&str>,
        visible: &Visibility<'_>,
    ) -> Option<TailPage> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if after < state.start {
            return None;
        }
        let first = state.events.partition_point(|e| e.position() <= after);
        let mut page = TailPage {
            events: Vec::new(),
            cursor: after.max(state.end),
            full: false,
        };
        let mut bytes = 0usize;
        let mut last = after;
        for entry in state.events.range(first..) {
            let owned = tenant.is_none_or(|t| entry.event.tenant_id.as_deref() == Some(t));
            if owned && visible(&entry.event) {
                bytes = bytes.saturating_add(event_size(&entry.event));
                if !page.events.is_empty() && bytes > max_bytes {
                    // This event starts the next page.
                    page.cursor = last;
                    page.full = true;
                    break;
                }
                page.events.push(PageEvent {
                    position: entry.position(),
                    json: entry.json.clone(),
                });
                if page.events.len() == limit {
                    page.cursor = entry.position();
                    page.full = true;
                    break;
                }
            }
            last = entry.position();
        }
        Some(page)
    }

    /// Appends events read after `end`, then moves `end` to `covered`: the follower
    /// read everything up to it.
    fn extend(&self, entries: Vec<Serialized>, covered: u64) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        for entry in entries {
            if entry.position() <= state.end {
                continue;
            }
            state.end = entry.position();
            state.bytes += entry.weight();
            state.events.push_back(entry);
        }
        state.end = state.end.max(covered);
        while state.events.len() > MAX_EVENTS || state.bytes > self.max_bytes {
            let Some(oldest) = state.events.pop_front() else {
                break;
            };
            state.bytes -= oldest.weight();
            state.start = oldest.position();
        }
        let end = state.end;
        state.report();
        drop(state);
        self.announce_end(end);
    }

    /// Wakes the polls (and reads catching up) waiting for `end` to pass their cursor.
    fn announce_end(&self, end: u64) {
        self.end.send_if_modified(|known| {
            let moved = end > *known;
            *known = (*known).max(end);
            moved
        });
    }

    /// Forgets everything at or below `position`: retention deleted events there (the
    /// follower may not even have seen them), so the tail no longer serves that range.
    pub(crate) fn forget_through(&self, position: u64) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if position <= state.start {
            return;
        }
        while state
            .events
            .front()
            .is_some_and(|e| e.position() <= position)
        {
            if let Some(oldest) = state.events.pop_front() {
                state.bytes -= oldest.weight();
            }
        }
        state.start = position;
        state.end = state.end.max(position);
        let end = state.end;
        state.report();
        drop(state);
        self.announce_end(end);
    }
}

impl State {
    /// Publishes the tail's size as metrics.
    fn report(&self) {
        metrics::gauge!(telemetry::TAIL_EVENTS).set(self.events.len() as f64);
        metrics::gauge!(telemetry::TAIL_BYTES).set(self.bytes as f64);
    }
}

/// Keeps `tail` up with the store: after each commit the store reports, reads what is
/// new once. Ends at shutdown.
pub(crate) async fn follow(tail: Arc<Tail>, store: SharedStore, shutdown: CancellationToken) {
    let mut store_head = store.watch_head();
    let mut failures = 0u32;
    loop {
        let end = *tail.end.borrow();
        tokio::select! {
            changed = store_head.wait_for(|&head| head > end) => {
                if changed.is_err() {
                    return;
                }
            }
            () = shutdown.cancelled() => return,
        }
        // Everything up to the head seen before the read is committed, so a short read
        // covers up to it (positions in between were spent without an event).
        let target = *store_head.borrow();
        let read = store
            .read_range(end, FOLLOW_BATCH, FOLLOW_BATCH_BYTES, None)
            .await;
        let pruned = store.pruned_through().await;
        match (read, pruned) {
            (Ok(events), Ok(pruned)) => {
                failures = 0;
                if pruned > end {
                    tail.forget_through(pruned);
                }
                // The store stops a read at `FOLLOW_BATCH` events or once their
                // `event_size`s reach `FOLLOW_BATCH_BYTES`: judged by the same measure,
                // a read that hit neither read everything up to `target`. A read that
                // hit one covers only through its last event.
                let sizes: usize = events.iter().map(event_size).sum();
                let read_all = events.len() < FOLLOW_BATCH && sizes < FOLLOW_BATCH_BYTES;
                let covered = if read_all { target } else { 0 };
                tail.extend(events.into_iter().map(Serialized::new).collect(), covered);
            }
            (Err(error), _) | (_, Err(error)) => {
                failures = failures.saturating_add(1);
                metrics::counter!(telemetry::STORE_ERRORS, "during" => "follow").increment(1);
                metrics::counter!(telemetry::STORE_RETRIES, "task" => "follow").increment(1);
                tracing::warn!(%error, "reading new events for live polls failed; retrying");
                let backoff = Duration::from_millis(50 << failures.min(6));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, tenant: &str) -> StoredEvent {
        StoredEvent {
            id: uuid::Uuid::now_v7(),
            created_at: chrono::Utc::now(),
            aggregate_id: "a".into(),
            event_type: "T".into(),
            event_json: "{}".into(),
            user_id: None,
            tenant_id: Some(tenant.into()),
            session_id: None,
            context: Default::default(),
            position: Some(position),
        }
    }

    fn positions(page: &TailPage) -> Vec<u64> {
        page.events
            .iter()
            .map(|event| {
                let position = serde_json::from_slice::<StoredEvent>(&event.json)
                    .unwrap()
                    .position
                    .unwrap();
                assert_eq!(
                    position, event.position,
                    "a page event's position is its JSON's"
                );
                position
            })
            .collect()
    }

    #[test]
    fn serves_what_it_covers_and_refuses_what_lies_before() {
        let tail = Tail::new(10, usize::MAX);
        tail.extend(
            (11..=15)
                .map(|p| Serialized::new(event(p, if p % 2 == 0 { "a" } else { "b" })))
                .collect(),
            17,
        );
        let all = |_: &StoredEvent| true;
        assert!(
            tail.read(9, 100, usize::MAX, None, &all).is_none(),
            "before the tail: read the store"
        );
        let page = tail.read(10, 100, usize::MAX, None, &all).unwrap();
        assert_eq!(positions(&page), [11, 12, 13, 14, 15]);
        assert_eq!(
            page.cursor, 17,
            "covered through 17, though 16 and 17 hold no event"
        );
        let page = tail.read(11, 2, usize::MAX, None, &all).unwrap();
        assert_eq!((positions(&page), page.cursor), (vec![12, 13], 13));
        let page = tail.read(10, 100, usize::MAX, Some("a"), &all).unwrap();
        assert_eq!(positions(&page), [12, 14]);
        let none = |_: &StoredEvent| false;
        assert_eq!(
            tail.read(12, 5, usize::MAX, None, &none).unwrap().cursor,
            17
        );
    }

    #[test]
    fn forgetting_a_pruned_range_sends_older_cursors_to_the_store() {
        let tail = Tail::new(0, usize::MAX);
        tail.extend((1..=5).map(|p| Serialized::new(event(p, "a"))).collect(), 5);
        tail.forget_through(3);
        let all = |_: &StoredEvent| true;
        assert!(tail.read(2, 10, usize::MAX, None, &all).is_none());
        assert_eq!(
            positions(&tail.read(3, 10, usize::MAX, None, &all).unwrap()),
            [4, 5]
        );
    }

    #[test]
    fn keeps_at_most_its_capacity() {
        let tail = Tail::new(0, usize::MAX);
        let count = MAX_EVENTS as u64 + 10;
        tail.extend(
            (1..=count)
                .map(|p| Serialized::new(event(p, "a")))
                .collect(),
            count,
        );
        let all = |_: &StoredEvent| true;
        assert!(tail.read(5, 10, usize::MAX, None, &all).is_none());
        assert_eq!(
            tail.read(count - 2, 10, usize::MAX, None, &all)
                .unwrap()
                .events
                .len(),
            2
        );
    }

    /// A burst larger than one follower read (in `event_size` bytes) reaches the tail
    /// whole: a read the store cut short must not count as covering up to the head.
    #[tokio::test]
    async fn the_follower_misses_nothing_of_a_burst_larger_than_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        let store: SharedStore = Arc::new(
            crate::store::SqliteStore::open(path.to_str().unwrap())
                .await
                .unwrap(),
        );
        // About 5 KB each, together more than two follower batches.
        let count = 2 * FOLLOW_BATCH_BYTES / 5_000 + 100;
        let burst: Vec<StoredEvent> = (0..count)
            .map(|_| {
                let mut event = event(0, "a");
                event.position = None;
                event.event_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(5_000));
                event
            })
            .collect();
        store.append_batch(burst).await.unwrap();
        let head = store.head().await.unwrap();
        assert_eq!(head, count as u64);

        let tail = Arc::new(Tail::new(0, usize::MAX));
        let shutdown = CancellationToken::new();
        let follower = tokio::spawn(follow(tail.clone(), store.clone(), shutdown.clone()));
        let mut end = tail.watch_end();
        tokio::time::timeout(Duration::from_secs(60), end.wait_for(|&end| end >= head))
            .await
            .expect("the tail reaches the store's head")
            .unwrap();
        shutdown.cancel();
        follower.await.unwrap();

        let all = |_: &StoredEvent| true;
        let mut seen = Vec::new();
        let mut after = 0;
        while after < head {
            let page = tail.read(after, 1000, usize::MAX, None, &all).unwrap();
            assert!(page.cursor > after, "the tail moves on from {after}");
            seen.extend(positions(&page));
            after = page.cursor;
        }
        let expected: Vec<u64> = (1..=head).collect();
        assert_eq!(
            seen.len(),
            expected.len(),
            "every event of the burst, once, in the tail"
        );
        assert_eq!(seen, expected);
    }

    #[test]
    fn pages_and_memory_are_bounded_in_bytes() {
        let big = |p: u64| {
            let mut event = event(p, "a");
            event.event_json = format!("{{\"pad\":\"{}\"}}", "x".repeat(10_000));
            Serialized::new(event)
        };
        // Two-digit positions throughout, so that every event's JSON has the same length.
        let size = event_size(&big(10).event);
        let tail = Tail::new(10, 10 * big(10).weight());
        tail.extend((11..=30).map(big).collect(), 30);
        let all = |_: &StoredEvent| true;
        assert!(
            tail.read(19, 100, usize::MAX, None, &all).is_none(),
            "the tail keeps no more than its bytes: 10 of 20 events"
        );
        let page = tail.read(20, 100, 3 * size, None, &all).unwrap();
        assert_eq!((positions(&page), page.cursor), (vec![21, 22, 23], 23));
        let page = tail.read(23, 100, 3 * size - 1, None, &all).unwrap();
        assert_eq!((positions(&page), page.cursor), (vec![24, 25], 25));
        let page = tail.read(25, 100, 1, None, &all).unwrap();
        assert_eq!(
            (positions(&page), page.cursor),
            (vec![26], 26),
            "a page carries one event even when it alone is over the limit"
        );
    }
}
