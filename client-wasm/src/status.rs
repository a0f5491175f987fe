use chrono::{DateTime, Utc};

use crate::ClientError;

/// Where a client stands, from [`EventBusClient::status`](crate::EventBusClient::status)
/// and [`EventBusClient::status_changes`](crate::EventBusClient::status_changes).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Status {
    /// Starting: no answer from the server yet.
    Connecting,
    /// The last request succeeded; events arrive as they are stored, by `transport`.
    Live {
        /// How events arrive now: [`Transport::LongPoll`] also while a stream falls
        /// back to long-polling.
        transport: Transport,
    },
    /// A request failed; the client retries at `retry_at`. Receiving and sending retry on
    /// their own; this shows the receiving side's error first.
    BackingOff {
        /// Why.
        error: ClientError,
        /// When the next attempt starts.
        retry_at: DateTime<Utc>,
    },
    /// [`EventBusClient::close`](crate::EventBusClient::close) was called, or the last
    /// handle dropped. Final.
    Closed,
}

/// How the client asks for new events; chosen with
/// [`ClientBuilder::transport`](crate::ClientBuilder::transport) and shown in
/// [`Status::Live`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// The default: one open response (Server-Sent Events) that the server writes each
    /// event to as it commits. Falls back to long-polling when a stream brings no bytes
    /// within 10 s (a buffering proxy), and tries streaming again 5 minutes later.
    Stream,
    /// One request at a time that the server holds until an event commits or the wait
    /// ([`ClientBuilder::long_poll`](crate::ClientBuilder::long_poll)) passes.
    LongPoll,
    /// A request every interval
    /// ([`ClientBuilder::polling_interval`](crate::ClientBuilder::polling_interval)).
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
}

/// The two loops' views, combined into one [`Status`].
#[derive(Debug)]
pub(crate) struct StatusParts {
    /// `Connecting`, `Live` or `BackingOff`, from the receiving loop.
    pub(crate) receive: Status,
    /// `Some` while the outbox backs off.
    pub(crate) send: Option<(ClientError, DateTime<Utc>)>,
    pub(crate) closed: bool,
}

impl Default for StatusParts {
    fn default() -> Self {
        Self {
            receive: Status::Connecting,
            send: None,
            closed: false,
        }
    }
}

impl StatusParts {
    pub(crate) fn current(&self) -> Status {
        if self.closed {
            return Status::Closed;
        }
        match (&self.receive, &self.send) {
            (Status::BackingOff { .. }, _) | (_, None) => self.receive.clone(),
            (_, Some((error, retry_at))) => Status::BackingOff {
                error: error.clone(),
                retry_at: *retry_at,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiving_errors_show_first_then_sending_errors_then_the_receive_phase() {
        let network = ClientError::Network {
            message: "down".into(),
        };
        let at = Utc::now();
        let mut parts = StatusParts::default();
        assert_eq!(parts.current(), Status::Connecting);
        parts.receive = Status::Live {
            transport: Transport::Stream,
        };
        parts.send = Some((network.clone(), at));
        assert!(matches!(parts.current(), Status::BackingOff { error, .. } if error == network));
        let timeout = ClientError::Timeout {
            after: std::time::Duration::from_secs(1),
        };
        parts.receive = Status::BackingOff {
            error: timeout.clone(),
            retry_at: at,
        };
        assert!(matches!(parts.current(), Status::BackingOff { error, .. } if error == timeout));
        parts.closed = true;
        assert_eq!(parts.current(), Status::Closed);
    }
}
