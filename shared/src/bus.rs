use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::Stream;

use crate::event::{DomainEvent, Event};
use crate::registry::AnyEvent;

/// An in-process publish/subscribe bus for domain events.
///
/// `publish` never blocks and never runs a subscriber's code: each subscription is a
/// [`Stream`] that its owner polls in its own task, so handlers never run re-entrantly
/// inside the publisher. Dropping a stream unsubscribes it. Each subscription buffers
/// what its owner has not consumed yet, so a stream that is kept but never polled grows.
/// Clones share the same subscribers.
#[derive(Clone, Default)]
pub struct EventBus {
    subscribers: Arc<Mutex<Subscribers>>,
}

#[derive(Default)]
struct Subscribers {
    typed: HashMap<TypeId, Vec<UnboundedSender<AnyEvent>>>,
    all: Vec<UnboundedSender<AnyEvent>>,
}

impl EventBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `event` to every current subscriber of `T` and of all events.
    pub fn publish<T: Event>(&self, event: DomainEvent<T>) {
        self.publish_any(AnyEvent::new(event));
    }

    /// Publishes an event whose type was erased, as decoded by an
    /// [`EventRegistry`](crate::EventRegistry).
    pub fn publish_any(&self, event: AnyEvent) {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let send_all = |senders: &mut Vec<UnboundedSender<AnyEvent>>| {
            senders.retain(|sender| sender.unbounded_send(event.clone()).is_ok());
        };
        if let Some(senders) = subscribers.typed.get_mut(&event.type_id()) {
            send_all(senders);
        }
        send_all(&mut subscribers.all);
    }

    /// A stream of every event of type `T` published from now on.
    pub fn on<T: Event>(&self) -> EventStream<T> {
        let (sender, receiver) = unbounded();
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers
            .typed
            .entry(TypeId::of::<DomainEvent<T>>())
            .or_default()
            .push(sender);
        EventStream {
            receiver,
            _type: PhantomData,
        }
    }

    /// A stream of every event published from now on, whatever its type.
    pub fn subscribe_all(&self) -> AnyEventStream {
        let (sender, receiver) = unbounded();
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.all.push(sender);
        AnyEventStream { receiver }
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let typed: usize = subscribers.typed.values().map(Vec::len).sum();
        f.debug_struct("EventBus")
            .field("typed_subscribers", &typed)
            .field("all_subscribers", &subscribers.all.len())
            .finish()
    }
}

/// The events of one type, from [`EventBus::on`]. Ends when the bus is dropped.
#[must_use = "a subscription receives nothing unless it is polled"]
pub struct EventStream<T> {
    receiver: UnboundedReceiver<AnyEvent>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Event> Stream for EventStream<T> {
    type Item = DomainEvent<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.receiver).poll_next(cx) {
                Poll::Ready(Some(event)) => {
                    // Only `DomainEvent<T>`s are routed here, so this always succeeds.
                    if let Some(typed) = event.downcast_ref::<T>() {
                        return Poll::Ready(Some(typed.clone()));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

/// Every event, type-erased, from [`EventBus::subscribe_all`].
#[must_use = "a subscription receives nothing unless it is polled"]
#[derive(Debug)]
pub struct AnyEventStream {
    receiver: UnboundedReceiver<AnyEvent>,
}

impl Stream for AnyEventStream {
    type Item = AnyEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::StreamExt;

    use super::*;

    use crate::test_events::{Created, Purchased};

    #[test]
    fn typed_subscribers_see_only_their_type_in_publish_order() {
        let bus = EventBus::new();
        let mut created = bus.on::<Created>();
        let all = bus.subscribe_all();
        for i in 0..3 {
            bus.publish(DomainEvent::new(
                "a",
                Created {
                    name: format!("n{i}"),
                },
            ));
            bus.publish(DomainEvent::new(
                "a",
                Purchased {
                    amount: f64::from(i),
                },
            ));
        }
        drop(bus);
        let names: Vec<_> = block_on(created.by_ref().map(|e| e.payload.name).collect::<Vec<_>>());
        assert_eq!(names, ["n0", "n1", "n2"]);
        let types: Vec<_> = block_on(all.map(|e| e.event_type()).collect::<Vec<_>>());
        assert_eq!(types.len(), 6);
        assert_eq!(types[1], "orders.purchased");
    }

    #[test]
    fn dropped_subscription_is_removed() {
        let bus = EventBus::new();
        let first = bus.on::<Created>();
        let _second = bus.on::<Created>();
        drop(first);
        bus.publish(DomainEvent::new("a", Created { name: "x".into() }));
        let typed: usize = bus
            .subscribers
            .lock()
            .unwrap()
            .typed
            .values()
            .map(Vec::len)
            .sum();
        assert_eq!(typed, 1);
    }
}
