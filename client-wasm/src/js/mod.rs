//! The delivery core as the JS class `Core`: what the npm package's `EventBusClient`
//! (js/src) asks every delivery question of. It only translates: ids are the events' id
//! strings, times and positions JS numbers (positions stay below 2^53), and the outbox's
//! events and the status's error stay the JS values they are.

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use wasm_bindgen::prelude::*;

use crate::delivery::{
    classify, follow_from, is_transient, Answer, Backoff, Delivery, Jitter, Outbox, Phase,
    StatusParts, Transport, TypeFilter,
};

/// The delivery rules of one client, with no I/O: see `crate::delivery`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Core {
    delivery: Delivery<String>,
    outbox: Outbox<String, JsValue>,
    receive_backoff: Backoff,
    jitter: Jitter,
    status: StatusParts<JsValue, f64>,
    filter: TypeFilter,
}

#[wasm_bindgen]
impl Core {
    /// Remembers the last `dedup_capacity` ids; backs off from `backoff_initial_ms` up to
    /// `backoff_max_ms`, jittered from `seed`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        dedup_capacity: u32,
        backoff_initial_ms: f64,
        backoff_max_ms: f64,
        seed: u32,
    ) -> Core {
        let initial = millis(backoff_initial_ms);
        let max = millis(backoff_max_ms);
        Core {
            delivery: Delivery::new(None, dedup_capacity as usize),
            outbox: Outbox::new(initial, max),
            receive_backoff: Backoff::new(initial, max),
            jitter: Jitter::new(seed.into()),
            status: StatusParts::default(),
            filter: TypeFilter::default(),
        }
    }

    /// After which position to ask next; `undefined` until known.
    #[wasm_bindgen(getter)]
    pub fn cursor(&self) -> Option<f64> {
        self.delivery.cursor().map(|cursor| cursor as f64)
    }

    /// Sets the cursor unless one is known.
    #[wasm_bindgen(js_name = startAt)]
    pub fn start_at(&mut self, position: f64) {
        self.delivery.start_at(position as u64);
    }

    /// Whether a received event goes to the handlers (then call `advance` after them).
    pub fn admit(&mut self, id: String, position: Option<f64>) -> bool {
        self.delivery.admit(id, position.map(|p| p as u64))
    }

    /// Moves the cursor forward to `position`, never back.
    pub fn advance(&mut self, position: f64) {
        self.delivery.advance(position as u64);
    }

    /// Continues after `resume_after` (a `410` reset); returns the cursor before.
    pub fn reset(&mut self, resume_after: f64) -> Option<f64> {
        self.delivery
            .reset(resume_after as u64)
            .map(|cursor| cursor as f64)
    }

    /// Published here and queued for the server: its echo is not dispatched again.
    #[wasm_bindgen(js_name = expectEcho)]
    pub fn expect_echo(&mut self, id: String) {
        self.delivery.expect_echo(id);
    }

    /// Dispatched here, not sent from here.
    #[wasm_bindgen(js_name = recordDispatched)]
    pub fn record_dispatched(&mut self, id: String) {
        self.delivery.record_dispatched(id);
    }

    /// An own event that will not come back.
    #[wasm_bindgen(js_name = forgetEcho)]
    pub fn forget_echo(&mut self, id: String) {
        self.delivery.forget_echo(&id);
    }

    /// The `eventTypes` option (empty: every type) and `subscribeToHandledTypes`.
    #[wasm_bindgen(js_name = setTypes)]
    pub fn set_types(&mut self, event_types: Vec<String>, handled_only: bool) {
        self.filter = TypeFilter::new(event_types, handled_only);
    }

    /// A handler for `event_type` (`"*"`: every type) was added; whether the filter widened.
    #[wasm_bindgen(js_name = handleType)]
    pub fn handle_type(&mut self, event_type: &str) -> bool {
        self.filter.handle(event_type)
    }

    /// The `eventType` values to ask with; empty: every type.
    #[wasm_bindgen(js_name = eventTypes)]
    pub fn event_types(&self) -> Vec<String> {
        self.filter.event_types()
    }

    /// Where this client must stand before it applies the leader's page (after `from`, up
    /// to `to`, asked for with the `eventType` values `their_types`); behind it, it
    /// catches up first.
    pub fn follow(&self, from: Option<f64>, to: f64, their_types: Vec<String>) -> f64 {
        let covered = self.filter.is_covered_by(&their_types);
        follow_from(from.map(|from| from as u64), to as u64, covered) as f64
    }

    /// Queues `event` after the others unless an event with `id` is queued already.
    pub fn enqueue(&mut self, id: String, event: JsValue) {
        self.outbox.enqueue(id, event);
    }

    /// The event to send now: the oldest queued.
    #[wasm_bindgen(getter)]
    pub fn next(&self) -> JsValue {
        self.outbox.next().cloned().unwrap_or(JsValue::UNDEFINED)
    }

    /// How many events are queued.
    #[wasm_bindgen(getter)]
    pub fn queued(&self) -> u32 {
        self.outbox.len() as u32
    }

    /// The oldest event was stored, or `refused` for good: it leaves the queue.
    pub fn settle(&mut self, refused: bool) {
        if let Some((id, _)) = self.outbox.settle() {
            if refused {
                self.delivery.forget_echo(&id);
            }
        }
        self.status.sending();
    }

    /// Empties the outbox; its error, if it was backing off, leaves the status.
    pub fn clear(&mut self) {
        self.outbox.clear();
        self.status.sending();
    }

    /// What an answer means: `"ok"`, `"reset"`, `"refused"` or `"retry"`.
    pub fn classify(status: u16, code: Option<String>, has_resume_after: bool) -> String {
        match classify(status, code.as_deref(), has_resume_after) {
            Answer::Ok => "ok",
            Answer::Reset => "reset",
            Answer::Refused => "refused",
            Answer::Retry => "retry",
        }
        .into()
    }

    /// Whether an error with `code` (and the answer's HTTP `status`) goes away by itself:
    /// shown in the status only, not reported to `onError`.
    pub fn transient(code: &str, status: Option<u16>) -> bool {
        is_transient(code, status)
    }

    /// Receiving works, by `transport` (`"stream"`, `"long-poll"`, `"poll"`).
    pub fn receiving(&mut self, transport: &str) {
        self.receive_backoff.reset();
        self.status
            .receiving(Transport::from_name(transport).unwrap_or(Transport::Stream));
    }

    /// Receiving failed with `error`: the ms to wait, shown in the status.
    #[wasm_bindgen(js_name = receiveFailed)]
    pub fn receive_failed(
        &mut self,
        error: JsValue,
        retry_after_ms: Option<f64>,
        now_ms: f64,
    ) -> f64 {
        let delay = self
            .receive_backoff
            .next(retry_after_ms.map(millis), &mut self.jitter);
        let wait = delay.as_millis() as f64;
        self.status.receive_failed(error, now_ms + wait);
        wait
    }

    /// Sending the oldest event failed with `error`: the ms to wait, shown in the status.
    #[wasm_bindgen(js_name = sendFailed)]
    pub fn send_failed(&mut self, error: JsValue, retry_after_ms: Option<f64>, now_ms: f64) -> f64 {
        let delay = self
            .outbox
            .retry_delay(retry_after_ms.map(millis), &mut self.jitter);
        let wait = delay.as_millis() as f64;
        self.status.send_failed(error, now_ms + wait);
        wait
    }

    /// The network is back: the next failures wait the initial delay.
    #[wasm_bindgen(js_name = resetBackoff)]
    pub fn reset_backoff(&mut self) {
        self.receive_backoff.reset();
        self.outbox.reset_backoff();
    }

    /// Closed, for good.
    pub fn close(&mut self) {
        self.status.close();
    }

    /// Whether the status changed since the last call.
    #[wasm_bindgen(js_name = statusChanged)]
    pub fn status_changed(&mut self) -> bool {
        self.status.take_change()
    }

    /// `"connecting"`, `"live"`, `"backingOff"` or `"closed"`.
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> String {
        match self.status.current() {
            Phase::Connecting => "connecting",
            Phase::Live(_) => "live",
            Phase::BackingOff(..) => "backingOff",
            Phase::Closed => "closed",
        }
        .into()
    }

    /// Live: by which transport.
    #[wasm_bindgen(getter)]
    pub fn transport(&self) -> Option<String> {
        match self.status.current() {
            Phase::Live(transport) => Some(transport.as_str().into()),
            _ => None,
        }
    }

    /// Backing off: why.
    #[wasm_bindgen(getter)]
    pub fn error(&self) -> JsValue {
        match self.status.current() {
            Phase::BackingOff(error, _) => error,
            _ => JsValue::UNDEFINED,
        }
    }

    /// Backing off: when the next attempt starts (ms since the epoch).
    #[wasm_bindgen(getter, js_name = retryAt)]
    pub fn retry_at(&self) -> Option<f64> {
        match self.status.current() {
            Phase::BackingOff(_, retry_at) => Some(retry_at),
            _ => None,
        }
    }
}

/// `ms` milliseconds; a negative or NaN number is none.
fn millis(ms: f64) -> Duration {
    Duration::from_millis(ms as u64)
}
