use std::fmt;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::Stream;

/// One sender, many [`Subscription`]s, each with its own unbounded buffer, so that
/// sending never blocks and never runs a subscriber's code. With `latest`, a new
/// subscription starts with the last value sent (a watch, for the status).
pub(crate) struct Broadcast<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    senders: Vec<UnboundedSender<T>>,
    latest: Option<T>,
    closed: bool,
}

impl<T: Clone> Broadcast<T> {
    pub(crate) fn new() -> Self {
        Self::with(None)
    }

    /// A broadcast that remembers the last value and starts each subscription with it.
    pub(crate) fn watch(initial: T) -> Self {
        Self::with(Some(initial))
    }

    fn with(latest: Option<T>) -> Self {
        Self {
            state: Mutex::new(State {
                senders: Vec::new(),
                latest,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A stream of the values sent from now on (after the latest, for a watch). Once the
    /// broadcast is closed it yields what it buffered, then ends.
    pub(crate) fn subscribe(&self) -> Subscription<T> {
        let (sender, receiver) = unbounded();
        let mut state = self.lock();
        if let Some(latest) = &state.latest {
            // Cannot fail: the receiver is right here.
            let _ = sender.unbounded_send(latest.clone());
        }
        if !state.closed {
            state.senders.push(sender);
        }
        Subscription { receiver }
    }

    pub(crate) fn send(&self, value: T) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        // Dropped subscriptions fail here and are forgotten.
        state
            .senders
            .retain(|sender| sender.unbounded_send(value.clone()).is_ok());
        if state.latest.is_some() {
            state.latest = Some(value);
        }
    }

    /// Sends `value` as the last one, and ends every subscription after it.
    pub(crate) fn close_with(&self, value: Option<T>) {
        if let Some(value) = value {
            self.send(value);
        }
        let mut state = self.lock();
        state.closed = true;
        state.senders.clear();
    }

    pub(crate) fn latest(&self) -> Option<T> {
        self.lock().latest.clone()
    }
}

impl<T: Clone + PartialEq> Broadcast<T> {
    /// Sends `value` unless it equals the latest.
    pub(crate) fn send_if_changed(&self, value: T) {
        if self.lock().latest.as_ref() != Some(&value) {
            self.send(value);
        }
    }
}

/// A stream of what a client reports: events, errors or status changes. Dropping it
/// unsubscribes. It ends when the client closes.
///
/// Each subscription buffers what its owner has not consumed yet, so one that is kept but
/// never polled grows.
#[must_use = "a subscription receives nothing unless it is polled"]
pub struct Subscription<T> {
    receiver: UnboundedReceiver<T>,
}

impl<T> Stream for Subscription<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("item", &std::any::type_name::<T>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::StreamExt;

    use super::*;

    #[test]
    fn a_watch_starts_with_the_latest_value_and_ends_after_close() {
        let watch = Broadcast::watch(1);
        watch.send(2);
        let early = watch.subscribe();
        watch.send_if_changed(2);
        watch.send_if_changed(3);
        watch.close_with(Some(4));
        let late = watch.subscribe();
        assert_eq!(block_on(early.collect::<Vec<_>>()), [2, 3, 4]);
        assert_eq!(block_on(late.collect::<Vec<_>>()), [4]);
    }

    #[test]
    fn dropped_subscriptions_are_forgotten() {
        let broadcast = Broadcast::new();
        let kept = broadcast.subscribe();
        drop(broadcast.subscribe());
        broadcast.send("x");
        assert_eq!(broadcast.lock().senders.len(), 1);
        broadcast.close_with(None);
        assert_eq!(block_on(kept.collect::<Vec<_>>()), ["x"]);
    }
}
