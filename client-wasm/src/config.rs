use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use distributed_events_shared::{EventBus, EventRegistry};

use crate::platform::{self, BoxFuture, MaybeSend, MaybeSync, Platform};
use crate::{ClientError, CursorStore, EventBusClient, Transport};

/// Supplies the access token sent as `Authorization: Bearer <token>`.
///
/// It is asked before every request, so it can hand out a refreshed token; `Ok(None)`
/// sends no `Authorization` header. An `Err` is reported and the request is retried
/// with backoff. Any `Fn() -> impl Future<Output = Result<Option<String>, String>>`
/// is a token source.
pub trait TokenSource: MaybeSend + MaybeSync + 'static {
    /// The token for the next request.
    fn token(&self) -> BoxFuture<'static, Result<Option<String>, String>>;
}

impl<F, Fut> TokenSource for F
where
    F: Fn() -> Fut + MaybeSend + MaybeSync + 'static,
    Fut: Future<Output = Result<Option<String>, String>> + MaybeSend + 'static,
{
    fn token(&self) -> BoxFuture<'static, Result<Option<String>, String>> {
        Box::pin(self())
    }
}

/// How the client asks for new events.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Mode {
    /// Server-Sent Events; long-polls with `wait` while streams bring nothing.
    Stream { wait: Duration },
    /// Long-poll: the server holds each request until an event commits or `wait` passes.
    LongPoll { wait: Duration },
    /// The seed's mode: ask every `interval`.
    Poll { interval: Duration },
}

impl Mode {
    pub(crate) fn transport(self) -> Transport {
        match self {
            Mode::Stream { .. } => Transport::Stream,
            Mode::LongPoll { .. } => Transport::LongPoll,
            Mode::Poll { .. } => Transport::Poll,
        }
    }
}

/// Where delivery starts when no saved cursor exists.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Start {
    /// After the events that exist now (the server's head).
    Now,
    /// After this position; `0` is the start of the retained history.
    Position(u64),
    /// At the first event created at or after this time.
    Timestamp(DateTime<Utc>),
}

/// Configures an [`EventBusClient`]; from [`EventBusClient::builder`].
///
/// ```no_run
/// # use distributed_events_client::{event_registry, EventBusClient, Event};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Debug, Serialize, Deserialize, Event)] struct UserCreatedEvent { name: String }
/// # fn run() -> Result<(), distributed_events_client::ClientError> {
/// let client = EventBusClient::builder("https://events.example.com")
///     .registry(event_registry![UserCreatedEvent])
///     .auto_forward(true)
///     .initial_position(0)
///     .build()?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientBuilder {
    pub(crate) bus: EventBus,
    pub(crate) registry: EventRegistry,
    pub(crate) dedup_capacity: usize,
    /// Kept as is by the running client.
    pub(crate) settings: Settings,
}

/// The configuration the running client reads: the builder's, moved, not copied.
pub(crate) struct Settings {
    /// Without trailing slashes once validated.
    pub(crate) server_url: String,
    pub(crate) mode: Mode,
    pub(crate) auto_forward: bool,
    pub(crate) start: Start,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) token: Option<Box<dyn TokenSource>>,
    pub(crate) cursor_store: Option<Box<dyn CursorStore>>,
    /// Set once validated (the default names the server).
    pub(crate) cursor_key: Option<String>,
    pub(crate) page_size: u32,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) timeout_beyond_wait: Duration,
}

impl Settings {
    /// The key of the saved cursor.
    pub(crate) fn cursor_key(&self) -> &str {
        self.cursor_key.as_deref().unwrap_or_default()
    }

    /// The timeout of a `GET /events` or `GET /healthz`: a long-poll's wait and the time
    /// beyond it.
    pub(crate) fn poll_timeout(&self) -> Duration {
        match self.mode {
            Mode::Stream { wait } | Mode::LongPoll { wait } => self.timeout_beyond_wait + wait,
            Mode::Poll { .. } => self.timeout_beyond_wait,
        }
    }
}

/// The long-poll wait: below the server's cap (30 s) and below the idle timeouts of
/// common proxies and load balancers (often 60 s).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(25);
/// The seed's default polling interval.
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(5);

impl ClientBuilder {
    pub(crate) fn new(server_url: String) -> Self {
        Self {
            bus: EventBus::new(),
            registry: EventRegistry::new(),
            dedup_capacity: 4096,
            settings: Settings {
                server_url,
                mode: Mode::Stream { wait: DEFAULT_WAIT },
                auto_forward: false,
                start: Start::Now,
                headers: Vec::new(),
                token: None,
                cursor_store: None,
                cursor_key: None,
                page_size: 1000,
                backoff: (Duration::from_millis(500), Duration::from_secs(30)),
                timeout_beyond_wait: Duration::from_secs(15),
            },
        }
    }

    /// The local bus to wrap (default: a new one). Code holding it sees the events
    /// received from the server; it stays usable after the client is closed.
    pub fn event_bus(mut self, bus: EventBus) -> Self {
        self.bus = bus;
        self
    }

    /// The event types to decode for typed subscribers ([`EventBusClient::on`] adds its
    /// type too). Once any type is known, received events of other types are reported
    /// as [`ClientError::Decode`]; untyped subscribers get every event regardless.
    pub fn registry(mut self, registry: EventRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// How events arrive (default [`Transport::Stream`]). `LongPoll` and `Poll` keep the
    /// wait and interval set by [`long_poll`](Self::long_poll) and
    /// [`polling_interval`](Self::polling_interval), or their defaults.
    pub fn transport(mut self, transport: Transport) -> Self {
        let wait = match self.settings.mode {
            Mode::Stream { wait } | Mode::LongPoll { wait } => wait,
            Mode::Poll { .. } => DEFAULT_WAIT,
        };
        self.settings.mode = match transport {
            Transport::Stream => Mode::Stream { wait },
            Transport::LongPoll => Mode::LongPoll { wait },
            Transport::Poll => Mode::Poll {
                interval: match self.settings.mode {
                    Mode::Poll { interval } => interval,
                    _ => DEFAULT_POLLING_INTERVAL,
                },
            },
        };
        self
    }

    /// Long-polls with this `wait` (default 25 s) instead of streaming: events arrive
    /// within milliseconds of being stored. The server lowers waits above its cap (30 s).
    /// A stream's fallback long-polls with this wait too:
    /// `.long_poll(wait).transport(Transport::Stream)`.
    pub fn long_poll(mut self, wait: Duration) -> Self {
        self.settings.mode = Mode::LongPoll { wait };
        self
    }

    /// Asks every `interval` instead of streaming, as the seed did.
    pub fn polling_interval(mut self, interval: Duration) -> Self {
        self.settings.mode = Mode::Poll { interval };
        self
    }

    /// Whether [`EventBusClient::publish`] also sends events to the server (default: no,
    /// as in the seed).
    pub fn auto_forward(mut self, auto_forward: bool) -> Self {
        self.settings.auto_forward = auto_forward;
        self
    }

    /// Start after this position (`0`: everything the server kept). Without this or
    /// [`initial_timestamp`](Self::initial_timestamp) the client starts with the events
    /// stored from now on. A saved cursor (see [`cursor_store`](Self::cursor_store))
    /// wins over both.
    pub fn initial_position(mut self, position: u64) -> Self {
        self.settings.start = Start::Position(position);
        self
    }

    /// Start at the events created at or after `since`, as the seed did. Creation times
    /// come from event creators' clocks, so this only finds the starting point; from
    /// there the client follows the server's positions.
    pub fn initial_timestamp(mut self, since: DateTime<Utc>) -> Self {
        self.settings.start = Start::Timestamp(since);
        self
    }

    /// A header sent with every request, such as a tenant or API key header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.headers.push((name.into(), value.into()));
        self
    }

    /// Where the access token comes from; see [`TokenSource`].
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.settings.token = Some(Box::new(source));
        self
    }

    /// Saves the cursor after every page and resumes from it on the next start.
    pub fn cursor_store(mut self, store: impl CursorStore) -> Self {
        self.settings.cursor_store = Some(Box::new(store));
        self
    }

    /// The key of the saved cursor (default: `distributed-events:cursor:<serverUrl>`).
    /// Give each client of one server its own key when several run side by side.
    pub fn cursor_key(mut self, key: impl Into<String>) -> Self {
        self.settings.cursor_key = Some(key.into());
        self
    }

    /// At most this many events per request (default and server cap: 1000).
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.settings.page_size = page_size;
        self
    }

    /// How many recently dispatched event ids are remembered to drop repeats (default
    /// 4096). The client's own forwarded events are remembered apart, until they come
    /// back from the server, so this bound does not apply to them.
    pub fn dedup_capacity(mut self, capacity: usize) -> Self {
        self.dedup_capacity = capacity;
        self
    }

    /// Retry delays: the first retry waits about `initial`, each next one twice as long,
    /// up to `max` (defaults: 500 ms and 30 s); each delay is jittered down by up to half.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.settings.backoff = (initial, max);
        self
    }

    /// How long a request may take beyond its long-poll wait (default 15 s): a long-poll
    /// times out after its wait plus this; a post or a poll without a wait, after this;
    /// a stream, after this plus 15 s without a byte (the server's keep-alive interval).
    pub fn timeout_beyond_wait(mut self, timeout: Duration) -> Self {
        self.settings.timeout_beyond_wait = timeout;
        self
    }

    /// Starts the client: it catches up, then follows the server until closed.
    ///
    /// Its tasks start at once, and a subscription sees only what is dispatched after it
    /// was made. In the browser (and on a current-thread tokio runtime) they first run
    /// when the caller yields, so subscribing before the first `.await` misses nothing;
    /// on a multi-threaded runtime subscribe on your own bus first and pass it with
    /// [`event_bus`](Self::event_bus), naming its types in [`registry`](Self::registry).
    ///
    /// Natively this needs the `native` feature and must run inside a tokio runtime.
    pub fn build(self) -> Result<EventBusClient, ClientError> {
        let platform = platform::default_platform()?;
        self.build_on(platform)
    }

    pub(crate) fn build_on(
        mut self,
        platform: Box<dyn Platform>,
    ) -> Result<EventBusClient, ClientError> {
        self.validate()?;
        Ok(EventBusClient::start(self, platform))
    }

    fn validate(&mut self) -> Result<(), ClientError> {
        let fail = |message: String| Err(ClientError::Config { message });
        self.settings.server_url = server_url(
            &self.settings.server_url,
            "the server URL of `EventBusClient::builder`",
        )
        .map_err(|message| ClientError::Config { message })?;
        if self.settings.cursor_key.is_none() {
            self.settings.cursor_key = Some(format!(
                "distributed-events:cursor:{}",
                self.settings.server_url
            ));
        }
        for (name, value) in &self.settings.headers {
            let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token_char) {
                return fail(format!("{name:?} is not a valid HTTP header name"));
            }
            if value.chars().any(|c| c == '\r' || c == '\n') {
                return fail(format!(
                    "the value of header {name:?} contains a line break"
                ));
            }
        }
        match self.settings.mode {
            Mode::Stream { wait } | Mode::LongPoll { wait } if wait.is_zero() => {
                return fail(
                    "the long-poll wait must be above zero; use polling_interval to poll".into(),
                )
            }
            Mode::Poll { interval } if interval.is_zero() => {
                return fail("the polling interval must be above zero".into())
            }
            _ => {}
        }
        if !(1..=1000).contains(&self.settings.page_size) {
            return fail(format!(
                "the page size must be 1 to 1000, got {}",
                self.settings.page_size
            ));
        }
        if self.dedup_capacity == 0 {
            return fail("the dedup capacity must be at least 1".into());
        }
        if self.settings.backoff.0.is_zero() {
            return fail("the initial backoff must be above zero".into());
        }
        Ok(())
    }
}

/// `url` without surrounding blanks and trailing slashes, or what is wrong with it,
/// calling it `name` (the builder's argument, or the JS option).
pub(crate) fn server_url(url: &str, name: &str) -> Result<String, String> {
    let trimmed = url.trim();
    // Relative URLs ("/api") reach the page's own origin, which only a browser has.
    let relative_ok = cfg!(target_arch = "wasm32") && trimmed.starts_with('/');
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://") || relative_ok) {
        return Err(format!(
            "{name} must start with http:// or https://, got {url:?}"
        ));
    }
    Ok(trimmed.trim_end_matches('/').to_owned())
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("server_url", &self.settings.server_url)
            .field("mode", &self.settings.mode)
            .field("auto_forward", &self.settings.auto_forward)
            .field("start", &self.settings.start)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}
