//! The `eventType` filter a client asks with.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use super::set::Set;

/// Most values one filter parameter (`eventType`, `aggregateId`) takes; the server's limit
/// (`distributed_events_shared::MAX_FILTER_VALUES`).
pub const MAX_FILTER_VALUES: usize = 100;
/// Most bytes of one filter value (`distributed_events_shared::MAX_FILTER_VALUE_BYTES`).
pub const MAX_FILTER_VALUE_BYTES: usize = 200;

/// The event types to ask for: the configured ones and, with
/// `subscribe_to_handled_types`, those the app has handlers for.
#[derive(Debug, Default)]
pub struct TypeFilter {
    /// The configured types; empty: every type.
    configured: Vec<String>,
    /// Whether the handled types widen the filter (`subscribe_to_handled_types`).
    handled_only: bool,
    handled: Set<String>,
    /// A handler of every type (`"*"` in JS): no type filter.
    all: bool,
    /// Raised each time the filter widens: an answer asked for with an older filter is
    /// dropped, since its cursor may lie past events of a type handled since.
    version: u64,
}

impl TypeFilter {
    /// Asks for `configured` (empty: every type) and, when `handled_only`, for the types
    /// handled.
    pub fn new(configured: Vec<String>, handled_only: bool) -> Self {
        Self {
            configured,
            handled_only,
            ..Self::default()
        }
    }

    /// The app handles `event_type` now (`"*"`: every type). Returns whether the filter
    /// widened: then the request in flight is to be dropped and asked again.
    pub fn handle(&mut self, event_type: &str) -> bool {
        if !self.handled_only {
            return false;
        }
        let new = if event_type == "*" {
            !core::mem::replace(&mut self.all, true)
        } else {
            self.handled.insert(event_type.to_owned())
        };
        if new {
            self.version += 1;
        }
        new
    }

    /// Raised each time the filter widens.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The `eventType` values to ask with; empty: every type.
    ///
    /// A filter the server would refuse (too many types, or a type name it does not take
    /// as a filter value) asks for every type instead: the handlers still get only
    /// theirs, and the server never answers `400` to every request.
    pub fn event_types(&self) -> Vec<String> {
        if !self.handled_only {
            return self.configured.clone();
        }
        let all = self.all
            || self.handled.is_empty()
            || self.handled.len() + self.configured.len() > MAX_FILTER_VALUES
            || self
                .handled
                .iter()
                .any(|t| t.is_empty() || t.len() > MAX_FILTER_VALUE_BYTES);
        if all {
            return Vec::new();
        }
        let mut types = self.configured.clone();
        types.extend(
            self.handled
                .iter()
                .filter(|t| !self.configured.contains(t))
                .cloned(),
        );
        types
    }
}

impl TypeFilter {
    /// Whether a page asked for with `theirs` (another client's `eventType` values; empty:
    /// every type) holds every event this filter asks for.
    pub fn is_covered_by(&self, theirs: &[String]) -> bool {
        let mine = self.event_types();
        theirs.is_empty() || (!mine.is_empty() && mine.iter().all(|t| theirs.contains(t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_types_widen_the_filter_once_each() {
        let mut filter = TypeFilter::new(vec!["A".into()], true);
        assert!(
            filter.event_types().is_empty(),
            "no handler yet: every type"
        );
        assert!(filter.handle("B"));
        assert!(!filter.handle("B"));
        assert!(filter.handle("A"), "configured, but handled now too");
        assert_eq!(filter.event_types(), ["A", "B"]);
        assert_eq!(filter.version(), 2);
        assert!(filter.handle("*"));
        assert!(filter.event_types().is_empty());
    }

    #[test]
    fn without_handled_types_the_configured_ones_stand() {
        let mut filter = TypeFilter::new(vec!["A".into()], false);
        assert!(!filter.handle("B"));
        assert_eq!(filter.event_types(), ["A"]);
    }

    #[test]
    fn a_filter_the_server_would_refuse_asks_for_every_type() {
        let mut filter = TypeFilter::new(Vec::new(), true);
        filter.handle("");
        assert!(filter.event_types().is_empty());
        let mut many = TypeFilter::new(Vec::new(), true);
        for n in 0..=MAX_FILTER_VALUES {
            many.handle(&format!("T{n}"));
        }
        assert!(many.event_types().is_empty());
        let mut long = TypeFilter::new(Vec::new(), true);
        long.handle(&"x".repeat(MAX_FILTER_VALUE_BYTES + 1));
        assert!(long.event_types().is_empty());
    }

    #[test]
    fn a_page_covers_a_filter_when_it_asked_for_at_least_its_types() {
        let every = TypeFilter::default();
        assert!(every.is_covered_by(&[]));
        assert!(!every.is_covered_by(&["A".into()]), "it wants every type");
        let some = TypeFilter::new(vec!["A".into(), "B".into()], false);
        assert!(some.is_covered_by(&["B".into(), "A".into(), "C".into()]));
        assert!(!some.is_covered_by(&["A".into()]));
    }

    #[cfg(feature = "client")]
    #[test]
    fn the_limits_are_the_servers() {
        assert_eq!(
            MAX_FILTER_VALUES,
            distributed_events_shared::MAX_FILTER_VALUES
        );
        assert_eq!(
            MAX_FILTER_VALUE_BYTES,
            distributed_events_shared::MAX_FILTER_VALUE_BYTES
        );
    }
}
