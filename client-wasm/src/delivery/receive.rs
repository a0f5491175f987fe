//! The receiving side: which received events reach the application, and where the
//! cursor stands.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::set::Set;

/// At most this many own events are remembered as sent but not back from the server yet
/// (under 1 MiB of ids). An echo comes back unless the server refuses the
/// event (that id is forgotten at once) or hides it from this client, so the bound is
/// reached only by that or by a very long outage; past it, the oldest id moves to the
/// recent ids, where `capacity` other events evict it.
pub const AWAITING_ECHO_CAPACITY: usize = 16_384;

/// The cursor, the ids recently dispatched, and the own events still to come back.
///
/// Generic over the id (`Uuid` in Rust, the id's text in JS); an event is known to it
/// only by its id and its position.
#[derive(Debug)]
pub struct Delivery<I> {
    /// The `after` of the next poll: every event at or below it was dispatched (or the
    /// server said it may be skipped). `None` before the start position is known.
    cursor: Option<u64>,
    recent: IdRing<I>,
    /// Own events sent to the server, kept apart from `recent` so that other traffic
    /// (a long catch-up, or others publishing while the outbox waits out an outage)
    /// cannot evict them before their echo arrives.
    awaiting_echo: IdRing<I>,
}

impl<I: Clone + Ord> Delivery<I> {
    /// Starts after `cursor` (`None`: not known yet), remembering the last `capacity`
    /// ids dispatched.
    pub fn new(cursor: Option<u64>, capacity: usize) -> Self {
        Self {
            cursor,
            recent: IdRing::new(capacity),
            awaiting_echo: IdRing::new(AWAITING_ECHO_CAPACITY),
        }
    }

    /// The position after which the next request asks; `None` until known.
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// Starts at `cursor` (the server's head) when no start position was known.
    pub fn start_at(&mut self, cursor: u64) {
        self.cursor.get_or_insert(cursor);
    }

    /// Records an event this client dispatched itself (a local publish) and sends to the
    /// server, so that its echo is not dispatched a second time, however many other
    /// events arrive before it.
    pub fn expect_echo(&mut self, id: I) {
        // Already dispatched (an app republishing a received event): nothing to wait for.
        if self.recent.contains(&id) {
            return;
        }
        if let Some(oldest) = self.awaiting_echo.insert(id) {
            self.recent.insert(oldest);
        }
    }

    /// Records an event dispatched here that is not sent from here, so that it is not
    /// dispatched again if it arrives from the server soon after.
    pub fn record_dispatched(&mut self, id: I) {
        self.recent.insert(id);
    }

    /// The server refused an event recorded with [`expect_echo`](Self::expect_echo): it
    /// will not come back. Its id stays among the recent ones, as a dispatched id does.
    pub fn forget_echo(&mut self, id: &I) {
        if self.awaiting_echo.remove(id) {
            self.recent.insert(id.clone());
        }
    }

    /// How many own events are still to come back.
    pub fn awaiting_echoes(&self) -> usize {
        self.awaiting_echo.len()
    }

    /// Whether a received event goes to the application: not when it lies at or below
    /// the cursor, its id was dispatched recently, or it is the echo of an own event
    /// (which is then no longer awaited). Records nothing else: the caller records the id
    /// once it has dispatched the event.
    fn is_new(&mut self, id: &I, position: Option<u64>) -> bool {
        if self.awaiting_echo.remove(id) {
            // Dispatched when it was published; from now on its repeats are dropped
            // like those of any dispatched event.
            self.recent.insert(id.clone());
            return false;
        }
        let behind =
            matches!((position, self.cursor), (Some(position), Some(cursor)) if position <= cursor);
        !behind && !self.recent.contains(id)
    }

    /// One received event, for a caller that cannot be interrupted while dispatching
    /// (the JS binding, whose handlers' exceptions are caught): whether to dispatch it,
    /// its id recorded either way. Call [`advance`](Self::advance) with its position
    /// after dispatching it.
    pub fn admit(&mut self, id: I, position: Option<u64>) -> bool {
        let new = self.is_new(&id, position);
        if new {
            self.recent.insert(id);
        }
        new
    }

    /// Hands the new events of a page to `dispatch`, in order, then moves the cursor to
    /// the page's `next` cursor. An event is skipped when it lies at or below the cursor,
    /// its id was dispatched recently, or it is the echo of an own event. The cursor
    /// moves past an event only after `dispatch` returned, so an interrupted page is
    /// fetched again from that event on.
    ///
    /// The cursor never moves back here; only [`Delivery::reset`] does that.
    pub fn apply_page<E>(
        &mut self,
        events: Vec<E>,
        next: u64,
        key: impl Fn(&E) -> (I, Option<u64>),
        mut dispatch: impl FnMut(E),
    ) {
        for event in events {
            let (id, position) = key(&event);
            if self.is_new(&id, position) {
                dispatch(event);
                self.recent.insert(id);
            }
            if let Some(position) = position {
                self.advance(position);
            }
        }
        self.advance(next);
    }

    /// The server lost the events after the cursor (`410`); continue at `resume_after`.
    /// Returns the cursor before the reset. Recent ids stay, so events the server still
    /// had are not dispatched twice.
    pub fn reset(&mut self, resume_after: u64) -> Option<u64> {
        self.cursor.replace(resume_after)
    }

    /// Moves the cursor to `to` unless it stands there or further already.
    pub fn advance(&mut self, to: u64) {
        if self.cursor.is_none_or(|cursor| to > cursor) {
            self.cursor = Some(to);
        }
    }
}

/// Where a client must stand before it applies a page another client delivered (a tab
/// following the leader of its browser): the page holds the events after `from` (`None`:
/// not known) up to `to`, asked for with a filter that `covered` this client's or not.
/// A client standing there or further applies it (its [`Delivery`] drops what it had);
/// one behind catches up by itself first, or it would skip the events in between.
pub fn follow_from(from: Option<u64>, to: u64, covered: bool) -> u64 {
    match (covered, from) {
        (true, Some(from)) => from,
        // A page of fewer types than this client's, or from who knows where: only what
        // it moved past is sure, so catch up to its end.
        _ => to,
    }
}

/// The last `capacity` ids inserted, in bounded memory: the recent ids (duplicate
/// detection) and the own events still to come back (which also removes ids).
#[derive(Debug)]
struct IdRing<I> {
    /// Insertion order. A removed id stays here until it reaches the front; it still
    /// counts against `capacity`, so memory stays bounded.
    order: VecDeque<I>,
    set: Set<I>,
    capacity: usize,
}

impl<I: Clone + Ord> IdRing<I> {
    fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::new(),
            set: Set::new(),
            capacity: capacity.max(1),
        }
    }

    fn contains(&self, id: &I) -> bool {
        self.set.contains(id)
    }

    fn len(&self) -> usize {
        self.set.len()
    }

    /// Adds `id`; returns the oldest id still held when it had to go to keep the bound.
    fn insert(&mut self, id: I) -> Option<I> {
        if !self.set.insert(id.clone()) {
            return None;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            let oldest = self.order.pop_front()?;
            if self.set.remove(&oldest) {
                return Some(oldest);
            }
        }
        None
    }

    /// Whether `id` was there.
    fn remove(&mut self, id: &I) -> bool {
        self.set.remove(id)
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;

    /// An event as the core sees it: an id and a position.
    #[derive(Clone, Debug, PartialEq)]
    struct Event {
        id: u64,
        position: Option<u64>,
    }

    /// A fresh id for each event, whatever its position.
    fn event(position: u64) -> Event {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Event {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            position: Some(position),
        }
    }

    fn key(event: &Event) -> (u64, Option<u64>) {
        (event.id, event.position)
    }

    fn positions(events: &[Event]) -> Vec<u64> {
        events.iter().filter_map(|e| e.position).collect()
    }

    #[test]
    fn pages_are_dispatched_in_order_and_the_cursor_follows_the_server() {
        let mut delivery = Delivery::<u64>::new(Some(0), 100);
        let page: Vec<_> = (1..=3).map(event).collect();
        let mut seen = Vec::new();
        // The server skipped events 4..=9 this caller may not see: the cursor says 9.
        delivery.apply_page(page, 9, key, |e| seen.push(e));
        assert_eq!(positions(&seen), [1, 2, 3]);
        assert_eq!(delivery.cursor(), Some(9));
    }

    #[test]
    fn repeats_are_dropped_by_position_and_by_id() {
        let mut delivery = Delivery::<u64>::new(Some(0), 100);
        let first: Vec<_> = (1..=3).map(event).collect();
        let mut seen = Vec::new();
        delivery.apply_page(first.clone(), 3, key, |e| seen.push(e));
        // An overlapping answer (same events again, plus one new).
        let mut overlap = first.clone();
        overlap.push(event(4));
        delivery.apply_page(overlap, 4, key, |e| seen.push(e));
        // The same ids at new positions, as when a store is restored from a backup.
        let mut moved = first[0].clone();
        moved.position = Some(10);
        delivery.apply_page(vec![moved], 10, key, |e| seen.push(e));
        assert_eq!(positions(&seen), [1, 2, 3, 4]);
        assert_eq!(delivery.cursor(), Some(10));
    }

    #[test]
    fn the_cursor_moves_only_after_an_event_was_dispatched() {
        let mut delivery = Delivery::<u64>::new(Some(0), 100);
        let page: Vec<_> = (1..=3).map(event).collect();
        let mut seen = Vec::new();
        let interrupted = catch_unwind(AssertUnwindSafe(|| {
            delivery.apply_page(page.clone(), 3, key, |e| {
                assert!(e.position != Some(2), "the handler of event 2 fails");
                seen.push(e);
            });
        }));
        assert!(interrupted.is_err());
        assert_eq!(
            delivery.cursor(),
            Some(1),
            "event 2 was not dispatched, so the cursor stays before it"
        );
        // The next poll fetches from event 2 on, and it is not mistaken for a repeat.
        delivery.apply_page(page[1..].to_vec(), 3, key, |e| seen.push(e));
        assert_eq!(positions(&seen), [1, 2, 3]);
    }

    #[test]
    fn a_local_event_is_not_dispatched_again_when_it_comes_back() {
        let mut delivery = Delivery::<u64>::new(Some(0), 100);
        let own = event(1);
        delivery.expect_echo(own.id);
        let mut seen = Vec::new();
        delivery.apply_page(vec![own, event(2)], 2, key, |e| seen.push(e));
        assert_eq!(positions(&seen), [2]);
        assert_eq!(
            delivery.cursor(),
            Some(2),
            "the echo still moves the cursor"
        );
        assert!(delivery.awaiting_echoes() == 0, "nothing left to wait for");
    }

    #[test]
    fn an_own_event_is_not_dispatched_again_however_many_others_arrive_before_its_echo() {
        // Published during a catch-up, or while the outbox waited out an outage: far more
        // than `dedup_capacity` other events are dispatched before the echo.
        let capacity = 100;
        let mut delivery = Delivery::<u64>::new(Some(0), capacity);
        let own = event(3 * capacity as u64 + 1);
        delivery.expect_echo(own.id);
        let others: Vec<_> = (1..=3 * capacity as u64).map(event).collect();
        let mut seen = Vec::new();
        for page in others.chunks(capacity / 2) {
            let next = page.last().and_then(|e| e.position).unwrap_or_default();
            delivery.apply_page(page.to_vec(), next, key, |e| seen.push(e));
        }
        delivery.apply_page(vec![own.clone()], 3 * capacity as u64 + 1, key, |e| {
            seen.push(e)
        });
        assert_eq!(seen.len(), others.len(), "only the others were dispatched");
        assert!(
            seen.iter().all(|e| e.id != own.id),
            "the echo was not dispatched"
        );
        assert_eq!(delivery.cursor(), own.position);
        // A repeat of the echo (the server replays after a reset) is dropped as well.
        delivery.reset(3 * capacity as u64);
        delivery.apply_page(vec![own.clone()], 3 * capacity as u64 + 1, key, |e| {
            seen.push(e)
        });
        assert!(seen.iter().all(|e| e.id != own.id), "nor its repeat");
    }

    #[test]
    fn an_own_event_the_server_refused_is_no_longer_awaited() {
        let mut delivery = Delivery::<u64>::new(Some(0), 100);
        let refused = event(1);
        delivery.expect_echo(refused.id);
        delivery.forget_echo(&refused.id);
        assert!(delivery.awaiting_echoes() == 0);
        // Its id counts as recently dispatched, as before it was sent.
        let mut seen = Vec::new();
        delivery.apply_page(vec![refused], 1, key, |e| seen.push(e));
        assert!(seen.is_empty());
    }

    #[test]
    fn own_events_awaited_are_bounded_and_the_oldest_moves_to_the_recent_ids() {
        let mut delivery = Delivery::<u64>::new(Some(0), 100);
        delivery.awaiting_echo = IdRing::new(2);
        let own: Vec<_> = (1..=3).map(event).collect();
        for event in &own {
            delivery.expect_echo(event.id);
            delivery.expect_echo(event.id);
        }
        assert_eq!(delivery.awaiting_echo.len(), 2);
        assert_eq!(delivery.awaiting_echo.order.len(), 2);
        assert!(!delivery.awaiting_echo.contains(&own[0].id));
        assert!(
            delivery.recent.contains(&own[0].id),
            "still dropped for a while"
        );
        let mut seen = Vec::new();
        delivery.apply_page(own, 3, key, |e| seen.push(e));
        assert!(seen.is_empty());
        assert_eq!(delivery.awaiting_echo.len(), 0);
    }

    #[test]
    fn a_received_event_published_again_is_not_awaited() {
        let mut delivery = Delivery::<u64>::new(Some(0), 100);
        let received = event(1);
        delivery.apply_page(vec![received.clone()], 1, key, |_| {});
        delivery.expect_echo(received.id);
        assert!(
            delivery.awaiting_echoes() == 0,
            "its echo would lie behind the cursor and never come"
        );
    }

    #[test]
    fn a_reset_moves_the_cursor_back_without_repeating_what_was_dispatched() {
        let mut delivery = Delivery::<u64>::new(Some(0), 100);
        let page: Vec<_> = (1..=5).map(event).collect();
        let mut seen = Vec::new();
        delivery.apply_page(page.clone(), 5, key, |e| seen.push(e));
        // The store was replaced: it answers cursor_ahead and has the old events again.
        assert_eq!(delivery.reset(2), Some(5));
        assert_eq!(delivery.cursor(), Some(2));
        let mut replayed = page[2..].to_vec();
        replayed.push(event(6));
        delivery.apply_page(replayed, 6, key, |e| seen.push(e));
        assert_eq!(positions(&seen), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_follower_applies_a_page_only_from_where_it_stands() {
        assert_eq!(follow_from(Some(10), 15, true), 10);
        assert_eq!(
            follow_from(Some(10), 15, false),
            15,
            "other types: to its end"
        );
        assert_eq!(follow_from(None, 15, true), 15);
    }

    #[test]
    fn admit_dispatches_each_event_once_and_drops_echoes_and_repeats() {
        let mut delivery = Delivery::<u64>::new(Some(0), 100);
        delivery.expect_echo(7);
        assert!(delivery.admit(1, Some(1)));
        delivery.advance(1);
        assert!(!delivery.admit(1, Some(1)), "a repeat");
        assert!(!delivery.admit(7, Some(2)), "the echo of an own event");
        delivery.advance(2);
        assert_eq!(delivery.awaiting_echoes(), 0);
        assert!(!delivery.admit(7, Some(3)), "nor a repeat of the echo");
        assert!(!delivery.admit(9, Some(2)), "behind the cursor");
        assert!(delivery.admit(10, None), "no position: by id alone");
        assert!(!delivery.admit(10, None));
    }

    #[test]
    fn the_cursor_never_moves_back_on_a_page() {
        let mut delivery = Delivery::<u64>::new(Some(7), 100);
        delivery.apply_page(Vec::new(), 3, key, |_| unreachable!());
        assert_eq!(delivery.cursor(), Some(7));
        delivery.start_at(1);
        assert_eq!(
            delivery.cursor(),
            Some(7),
            "a known cursor wins over the server's head"
        );
        let mut fresh = Delivery::<u64>::new(None, 100);
        fresh.start_at(4);
        assert_eq!(fresh.cursor(), Some(4));
    }

    #[test]
    fn recent_ids_are_bounded_and_forget_the_oldest() {
        let mut recent = IdRing::new(3);
        let ids: Vec<u64> = (0..5).collect();
        for id in &ids {
            recent.insert(*id);
            recent.insert(*id);
        }
        assert_eq!(recent.set.len(), 3);
        assert_eq!(recent.order.len(), 3);
        assert!(!recent.contains(&ids[1]));
        assert!(recent.contains(&ids[4]));
    }
}
