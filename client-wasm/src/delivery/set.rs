//! The sets the core keeps (recent ids, own ids awaited, queued ids, handled types).
//!
//! The Rust client uses `BTreeSet`. The browser build uses a sorted `Vec` instead: the same
//! answers with a tenth of the code (the B-tree was 2.5 KB of a 21 KB package, gzipped),
//! at O(n) per change, which the events one page sees can afford.

#[cfg(feature = "client")]
pub(crate) use alloc::collections::BTreeSet as Set;
#[cfg(not(feature = "client"))]
pub(crate) use SortedVec as Set;

use alloc::vec::Vec;

/// A set as a sorted `Vec`, with the part of `BTreeSet`'s API the core uses.
#[derive(Debug)]
#[cfg_attr(
    feature = "client",
    allow(
        dead_code,
        reason = "the browser build's set; tested here against BTreeSet"
    )
)]
pub(crate) struct SortedVec<T>(Vec<T>);

impl<T> Default for SortedVec<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

#[cfg_attr(
    feature = "client",
    allow(
        dead_code,
        reason = "the browser build's set; tested here against BTreeSet"
    )
)]
impl<T: Ord> SortedVec<T> {
    pub(crate) const fn new() -> Self {
        Self(Vec::new())
    }

    /// Whether `value` was new.
    pub(crate) fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, value);
                true
            }
        }
    }

    /// Whether `value` was there.
    pub(crate) fn remove(&mut self, value: &T) -> bool {
        match self.0.binary_search(value) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub(crate) fn contains(&self, value: &T) -> bool {
        self.0.binary_search(value).is_ok()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// In order, as `BTreeSet` iterates.
    pub(crate) fn iter(&self) -> core::slice::Iter<'_, T> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn answers_as_a_btreeset_does() {
        let mut sorted = SortedVec::new();
        let mut btree = BTreeSet::new();
        // A fixed pseudo-random walk of inserts and removes over a small range of values.
        let mut x = 7u64;
        for _ in 0..5_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let value = (x >> 33) % 300;
            if x.is_multiple_of(3) {
                assert_eq!(sorted.remove(&value), btree.remove(&value));
            } else {
                assert_eq!(sorted.insert(value), btree.insert(value));
            }
            assert_eq!(sorted.contains(&value), btree.contains(&value));
            assert_eq!(sorted.len(), btree.len());
        }
        assert!(sorted.iter().eq(btree.iter()));
        assert_eq!(sorted.is_empty(), btree.is_empty());
        sorted.clear();
        assert!(sorted.is_empty());
    }
}
