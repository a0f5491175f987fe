//! The sending side: events to send, in the order they were published, each until the
//! server stored or refused it.

use alloc::collections::VecDeque;
use core::time::Duration;

use super::set::Set;
use super::{Backoff, Jitter};

/// The events waiting to be sent, oldest first, and the backoff of the one in front.
///
/// One event is sent at a time, the oldest, so that the server stores them in the order
/// they were published; a failure is retried (the id makes a resend idempotent) and only
/// a success or a refusal lets the next one go.
#[derive(Debug)]
pub struct Outbox<I, E> {
    queue: VecDeque<(I, E)>,
    /// The ids in `queue`: an event queued twice (storage read again after a reload, a
    /// publish announced twice) is sent once.
    ids: Set<I>,
    backoff: Backoff,
}

impl<I: Clone + Ord, E> Outbox<I, E> {
    /// An empty outbox whose retries back off from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            queue: VecDeque::new(),
            ids: Set::new(),
            backoff: Backoff::new(initial, max),
        }
    }

    /// Queues `event` after the others, unless an event with this id is queued already.
    /// Returns whether it was queued.
    pub fn enqueue(&mut self, id: I, event: E) -> bool {
        if !self.ids.insert(id.clone()) {
            return false;
        }
        self.queue.push_back((id, event));
        true
    }

    /// The event to send now: the oldest.
    pub fn next(&self) -> Option<&E> {
        self.queue.front().map(|(_, event)| event)
    }

    /// How many events wait.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The oldest event was stored, or refused for good: it leaves the queue, and the
    /// next failure waits the initial delay again. Returns it with its id.
    pub fn settle(&mut self) -> Option<(I, E)> {
        let settled = self.queue.pop_front()?;
        self.ids.remove(&settled.0);
        self.backoff.reset();
        Some(settled)
    }

    /// Sending the oldest event failed: how long to wait before sending it again (at
    /// least the server's `retry_after`).
    pub fn retry_delay(&mut self, retry_after: Option<Duration>, jitter: &mut Jitter) -> Duration {
        self.backoff.next(retry_after, jitter)
    }

    /// The network is back: the next failure waits the initial delay.
    pub fn reset_backoff(&mut self) {
        self.backoff.reset();
    }

    /// Drops every event (the client closed, or another sends them now); the next
    /// failure waits the initial delay.
    pub fn clear(&mut self) {
        self.queue.clear();
        self.ids.clear();
        self.backoff.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn events_leave_in_publication_order_each_once() {
        let mut outbox = Outbox::new(INITIAL, MAX);
        for id in 1..=3 {
            assert!(outbox.enqueue(id, format!("event {id}")));
        }
        assert!(!outbox.enqueue(2, "read again".into()), "queued once");
        let mut sent = Vec::new();
        while let Some(event) = outbox.next().cloned() {
            sent.push(event);
            outbox.settle();
        }
        assert_eq!(sent, ["event 1", "event 2", "event 3"]);
        assert!(outbox.is_empty());
        assert!(
            outbox.enqueue(2, "again".into()),
            "settled: a new publish may reuse it"
        );
    }

    #[test]
    fn a_failure_keeps_the_event_in_front_and_backs_off_until_it_settles() {
        let mut jitter = Jitter::new(1);
        let mut outbox = Outbox::new(INITIAL, MAX);
        outbox.enqueue(1, "first");
        outbox.enqueue(2, "second");
        let first = outbox.retry_delay(None, &mut jitter);
        let mut later = first;
        for _ in 0..5 {
            later = outbox.retry_delay(None, &mut jitter);
        }
        assert_eq!(outbox.next(), Some(&"first"), "not skipped");
        assert!(later > first, "{later:?} backs off from {first:?}");
        assert_eq!(
            outbox.retry_delay(Some(Duration::from_secs(60)), &mut jitter),
            Duration::from_secs(60),
            "the server's Retry-After is a floor"
        );
        assert_eq!(outbox.settle(), Some((1, "first")));
        assert!(
            outbox.retry_delay(None, &mut jitter) <= INITIAL,
            "settling resets"
        );
        assert_eq!(outbox.next(), Some(&"second"));
        for _ in 0..5 {
            outbox.retry_delay(None, &mut jitter);
        }
        outbox.clear();
        assert!(outbox.is_empty());
        assert!(
            outbox.retry_delay(None, &mut jitter) <= INITIAL,
            "clearing resets: whoever sends next starts afresh"
        );
    }
}
