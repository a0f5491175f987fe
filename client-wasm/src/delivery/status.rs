//! The status: what the receiving side and the sending side last met, made one.

/// How the client asks for new events; chosen with
/// [`ClientBuilder::transport`](crate::ClientBuilder::transport) and shown in the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// The default: one open response (Server-Sent Events) that the server writes each
    /// event to as it commits. Falls back to long-polling when a stream brings no bytes
    /// within 10 s (a buffering proxy), and tries streaming again 5 minutes later.
    Stream,
    /// One request at a time that the server holds until an event commits or the wait
    /// passes.
    LongPoll,
    /// A request every polling interval.
    Poll,
}

impl Transport {
    /// `"stream"`, `"long-poll"` or `"poll"`, as in the JS option and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stream => "stream",
            Transport::LongPoll => "long-poll",
            Transport::Poll => "poll",
        }
    }

    /// The transport named by [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "stream" => Some(Transport::Stream),
            "long-poll" => Some(Transport::LongPoll),
            "poll" => Some(Transport::Poll),
            _ => None,
        }
    }
}

/// Where a client stands, with the error type `E` and the time type `T` of its edge
/// (`ClientError` and `DateTime<Utc>` in Rust, JS values and milliseconds in JS).
#[derive(Clone, Debug, PartialEq)]
pub enum Phase<E, T> {
    /// Starting: no answer from the server yet.
    Connecting,
    /// The last request succeeded; events arrive by this transport.
    Live(Transport),
    /// A request failed with this error; the next attempt starts at this time.
    BackingOff(E, T),
    /// Closed. Final.
    Closed,
}

/// The two sides' outcomes, made one status: a receiving error shows first, then a
/// sending error, else the receiving side's phase. Tracks whether that status changed
/// since [`take_change`](Self::take_change) was last asked.
#[derive(Debug)]
pub struct StatusParts<E, T> {
    receive: Phase<E, T>,
    /// `Some` while the outbox backs off.
    send: Option<(E, T)>,
    closed: bool,
    changed: bool,
}

impl<E, T> Default for StatusParts<E, T> {
    fn default() -> Self {
        Self {
            receive: Phase::Connecting,
            send: None,
            closed: false,
            // The first status (connecting) is news to whoever listens.
            changed: true,
        }
    }
}

impl<E: Clone, T: Clone> StatusParts<E, T> {
    /// The status now.
    pub fn current(&self) -> Phase<E, T> {
        if self.closed {
            return Phase::Closed;
        }
        match (&self.receive, &self.send) {
            (Phase::BackingOff(..), _) | (_, None) => self.receive.clone(),
            (_, Some((error, retry_at))) => Phase::BackingOff(error.clone(), retry_at.clone()),
        }
    }

    /// Receiving works, by `transport`.
    pub fn receiving(&mut self, transport: Transport) {
        let shown = !self.closed && !matches!(self.receive, Phase::Live(t) if t == transport);
        // A receiving error hid the sending side's; it shows again.
        self.changed |= shown && (self.send.is_none() || self.is_receive_backing_off());
        self.receive = Phase::Live(transport);
    }

    /// Receiving failed with `error`; the next attempt is at `retry_at`.
    pub fn receive_failed(&mut self, error: E, retry_at: T) {
        self.changed |= !self.closed;
        self.receive = Phase::BackingOff(error, retry_at);
    }

    /// Sending failed with `error`; the next attempt is at `retry_at`.
    pub fn send_failed(&mut self, error: E, retry_at: T) {
        self.changed |= !self.closed && !self.is_receive_backing_off();
        self.send = Some((error, retry_at));
    }

    /// Sending works again (an event was stored or refused for good).
    pub fn sending(&mut self) {
        self.changed |= !self.closed && self.send.is_some() && !self.is_receive_backing_off();
        self.send = None;
    }

    /// Closed, for good.
    pub fn close(&mut self) {
        self.changed |= !self.closed;
        self.closed = true;
    }

    /// Whether it is closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the status changed since the last call.
    pub fn take_change(&mut self) -> bool {
        core::mem::take(&mut self.changed)
    }

    fn is_receive_backing_off(&self) -> bool {
        matches!(self.receive, Phase::BackingOff(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parts = StatusParts<&'static str, u64>;

    #[test]
    fn receiving_errors_show_first_then_sending_errors_then_the_receive_phase() {
        let mut parts = Parts::default();
        assert_eq!(parts.current(), Phase::Connecting);
        parts.receiving(Transport::Stream);
        parts.send_failed("down", 1);
        assert_eq!(parts.current(), Phase::BackingOff("down", 1));
        parts.receive_failed("timeout", 2);
        assert_eq!(parts.current(), Phase::BackingOff("timeout", 2));
        parts.receiving(Transport::LongPoll);
        assert_eq!(
            parts.current(),
            Phase::BackingOff("down", 1),
            "sending still fails"
        );
        parts.sending();
        assert_eq!(parts.current(), Phase::Live(Transport::LongPoll));
        parts.close();
        assert_eq!(parts.current(), Phase::Closed);
        parts.receiving(Transport::Stream);
        assert_eq!(parts.current(), Phase::Closed, "closed is final");
    }

    #[test]
    fn a_change_is_told_once_and_only_when_the_status_changed() {
        let mut parts = Parts::default();
        assert!(parts.take_change(), "connecting, at first");
        assert!(!parts.take_change());
        parts.receiving(Transport::Stream);
        assert!(parts.take_change());
        parts.receiving(Transport::Stream);
        assert!(!parts.take_change(), "still live by stream");
        parts.receiving(Transport::LongPoll);
        assert!(parts.take_change());
        parts.receive_failed("a", 1);
        assert!(parts.take_change());
        parts.receive_failed("b", 2);
        assert!(parts.take_change(), "a new error and retry time");
        parts.send_failed("c", 3);
        assert!(!parts.take_change(), "hidden behind the receiving error");
        parts.receiving(Transport::Stream);
        assert!(parts.take_change(), "now the sending error shows");
        parts.sending();
        assert!(parts.take_change());
        parts.sending();
        assert!(!parts.take_change());
        parts.close();
        assert!(parts.take_change());
        parts.receive_failed("d", 4);
        assert!(!parts.take_change(), "nothing changes once closed");
    }
}
