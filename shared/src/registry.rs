use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

use crate::event::{DecodeError, DomainEvent, Event};
use crate::wire::StoredEvent;

/// A typed event with its type erased, as the bus carries it: any `DomainEvent<T>`.
#[derive(Clone)]
pub struct AnyEvent(Arc<dyn ErasedEvent>);

trait ErasedEvent: Send + Sync {
    fn event_type(&self) -> &'static str;
    fn id(&self) -> Uuid;
    fn to_stored(&self) -> Result<StoredEvent, serde_json::Error>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Event> ErasedEvent for DomainEvent<T> {
    fn event_type(&self) -> &'static str {
        T::EVENT_TYPE
    }
    fn id(&self) -> Uuid {
        self.id
    }
    fn to_stored(&self) -> Result<StoredEvent, serde_json::Error> {
        DomainEvent::to_stored(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl AnyEvent {
    /// Erases the type of `event`.
    pub fn new<T: Event>(event: DomainEvent<T>) -> Self {
        Self(Arc::new(event))
    }

    /// The event type's wire name.
    pub fn event_type(&self) -> &'static str {
        self.0.event_type()
    }

    /// The event's id.
    pub fn id(&self) -> Uuid {
        self.0.id()
    }

    /// The typed event, when it is a `DomainEvent<T>`.
    pub fn downcast_ref<T: Event>(&self) -> Option<&DomainEvent<T>> {
        self.0.as_any().downcast_ref()
    }

    /// The wire record of the event.
    pub fn to_stored(&self) -> Result<StoredEvent, serde_json::Error> {
        self.0.to_stored()
    }

    pub(crate) fn type_id(&self) -> TypeId {
        self.0.as_any().type_id()
    }
}

impl fmt::Debug for AnyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyEvent")
            .field("event_type", &self.event_type())
            .field("id", &self.id())
            .finish()
    }
}

type Decoder = fn(&StoredEvent) -> Result<AnyEvent, DecodeError>;

/// Maps wire names to decoders, built from one list of the app's event types:
/// `event_registry![UserCreatedEvent, OrderPurchasedEvent]`.
#[derive(Clone, Default)]
pub struct EventRegistry {
    decoders: HashMap<&'static str, (TypeId, Decoder)>,
}

impl EventRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `T`. Two types with one wire name are a programming error, reported at once.
    ///
    /// # Panics
    /// When another type with the same wire name is already registered.
    #[must_use]
    pub fn with<T: Event>(mut self) -> Self {
        self.register::<T>();
        self
    }

    /// Adds `T`; see [`EventRegistry::with`].
    ///
    /// # Panics
    /// When another type with the same wire name is already registered.
    pub fn register<T: Event>(&mut self) {
        let decoder: Decoder = |stored| DomainEvent::<T>::from_stored(stored).map(AnyEvent::new);
        let type_id = TypeId::of::<T>();
        if let Some((existing, _)) = self.decoders.insert(T::EVENT_TYPE, (type_id, decoder)) {
            assert!(
                existing == type_id,
                "two event types share the wire name `{}`; give one #[event(name = \"...\")]",
                T::EVENT_TYPE
            );
        }
    }

    /// Whether a type of this wire name is registered.
    pub fn contains(&self, event_type: &str) -> bool {
        self.decoders.contains_key(event_type)
    }

    /// The registered wire names.
    pub fn event_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.decoders.keys().copied()
    }

    /// Decodes a wire record into its registered type.
    pub fn decode(&self, stored: &StoredEvent) -> Result<AnyEvent, DecodeError> {
        let (_, decoder) = self
            .decoders
            .get(stored.event_type.as_str())
            .ok_or_else(|| DecodeError::UnknownType {
                event_type: stored.event_type.clone(),
                id: stored.id,
            })?;
        decoder(stored)
    }
}

impl fmt::Debug for EventRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.event_types().collect();
        names.sort_unstable();
        f.debug_struct("EventRegistry")
            .field("event_types", &names)
            .finish()
    }
}

/// Builds an [`EventRegistry`] from a list of event types.
#[macro_export]
macro_rules! event_registry {
    ($($event:ty),* $(,)?) => {
        $crate::EventRegistry::new()$(.with::<$event>())*
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_events::{Created, Purchased};

    #[test]
    fn registry_round_trips_and_reports_unknown_types() {
        let registry = event_registry![Created, Purchased];
        let event = DomainEvent::new("agg", Purchased { amount: 9.5 })
            .with_context("tenantId", "t1")
            .with_context("roles", serde_json::json!(["admin"]));
        let stored = event.to_stored().unwrap();
        assert_eq!(stored.tenant_id.as_deref(), Some("t1"));
        assert_eq!(
            stored.context.get("roles"),
            Some(&serde_json::json!(["admin"]))
        );
        let decoded = registry.decode(&stored).unwrap();
        assert_eq!(decoded.downcast_ref::<Purchased>(), Some(&event));

        let mut unknown = stored.clone();
        unknown.event_type = "Nope".into();
        assert!(matches!(
            registry.decode(&unknown),
            Err(DecodeError::UnknownType { .. })
        ));
        let mut broken = stored;
        broken.event_json = "{\"amount\":\"lots\"}".into();
        assert!(matches!(
            registry.decode(&broken),
            Err(DecodeError::Payload { .. })
        ));
    }

    #[test]
    fn stored_event_uses_the_seed_field_names() {
        let event =
            DomainEvent::new("user-1", Created { name: "A".into() }).with_context("userId", "u1");
        let json = serde_json::to_value(event.to_stored().unwrap()).unwrap();
        for key in [
            "id",
            "createdAt",
            "aggregateId",
            "eventType",
            "eventJson",
            "userId",
            "tenantId",
            "sessionId",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["eventType"], "Created");
        assert!(json.get("position").is_none());
    }
}
