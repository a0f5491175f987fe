use chrono::{DateTime, Utc};

use crate::ClientError;

/// Where a client stands, from [`EventBusClient::status`](crate::EventBusClient::status)
/// and [`EventBusClient::status_changes`](crate::EventBusClient::status_changes).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Status {
    /// Starting: no answer from the server yet.
    Connecting,
    /// The last request succeeded; events arrive as they are stored.
    Live,
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
        parts.receive = Status::Live;
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
