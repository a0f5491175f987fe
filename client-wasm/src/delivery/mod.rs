//! The delivery core: the rules of delivery, with no I/O, no runtime and no event format.
//!
//! Inputs go in (an event's id and position, an answer's status, a failure), decisions
//! come out (dispatch this event or not, where the cursor stands, which event to send
//! next, how long to wait, what the status is). The Rust client drives it with typed
//! events on its own tasks; the browser build of the npm package drives it from JS with
//! JS values (see the `js` feature), so both follow one implementation of:
//!
//! - the cursor and the dedupe of repeats and of own echoes ([`Delivery`]), and when a
//!   client may apply what another delivered ([`follow_from`]);
//! - the outbox's order and retries ([`Outbox`]);
//! - backoff with jitter ([`Backoff`]);
//! - the status that both sides' outcomes make ([`StatusParts`]);
//! - the type filter a subscription asks with ([`TypeFilter`]);
//! - what a server's answer means ([`classify`]), and which errors pass by themselves
//!   ([`is_transient`]).
//!
//! It needs nothing beyond `core` and `alloc`: no std, serde, clock or randomness of its
//! own (the caller passes times and a seed), so the browser build stays small.

mod answer;
mod backoff;
mod filter;
mod outbox;
mod receive;
mod set;
mod status;

pub use answer::{classify, is_transient, Answer};
pub use backoff::{Backoff, Jitter};
pub use filter::{TypeFilter, MAX_FILTER_VALUES, MAX_FILTER_VALUE_BYTES};
pub use outbox::Outbox;
pub use receive::{follow_from, Delivery, AWAITING_ECHO_CAPACITY};
pub use status::{Phase, StatusParts, Transport};
