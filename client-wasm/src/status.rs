use chrono::{DateTime, Utc};

use crate::delivery::Phase;
use crate::{ClientError, Transport};

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

impl From<Phase<ClientError, DateTime<Utc>>> for Status {
    fn from(phase: Phase<ClientError, DateTime<Utc>>) -> Self {
        match phase {
            Phase::Connecting => Status::Connecting,
            Phase::Live(transport) => Status::Live { transport },
            Phase::BackingOff(error, retry_at) => Status::BackingOff { error, retry_at },
            Phase::Closed => Status::Closed,
        }
    }
}
