//! The accept loop: HTTP/1 connections with a header-read timeout, an idle keep-alive
//! timeout and a cap on open connections, so that silent clients cannot hold the server.

use std::collections::HashMap;
use std::future::Future;
use std::io::ErrorKind;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// How [`serve`] treats connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// Longest time a client may take to send a whole request head, from when it connects
    /// or from its first byte after an idle spell (default 10 s); past it the connection
    /// is closed.
    pub header_read_timeout: Duration,
    /// Longest time a keep-alive connection may wait, with nothing sent, for its next
    /// request after an answer (default 60 s); past it the connection is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once (default: [`max_connections_for_open_files`]). At
    /// the cap the connection that has waited longest for a request is closed to make
    /// room; when every connection has a request in flight, new ones wait in the
    /// listener's backlog.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: max_connections_for_open_files().unwrap_or(1000),
        }
    }
}

/// File descriptors kept out of the connection cap, at least: the listener, the store's
/// connections and files, standard streams, the runtime's own.
const RESERVED_FILES: u64 = 64;

/// The most connections the process's open-file limit (`ulimit -n`) allows while keeping a
/// tenth of it, and at least 64 descriptors, for the store and the runtime; an error when
/// the limit leaves no room for connections.
pub fn max_connections_for_open_files() -> Result<usize, String> {
    #[cfg(unix)]
    let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_err(|error| format!("cannot read the open-file limit: {error}"))?
        .0;
    #[cfg(not(unix))]
    let open_files: u64 = 10_000;
    let reserved = RESERVED_FILES.max(open_files / 10);
    match open_files.checked_sub(reserved) {
        Some(connections) if connections > 0 => {
            Ok(usize::try_from(connections).unwrap_or(usize::MAX))
        }
        _ => Err(format!(
            "the open-file limit ({open_files}) leaves no room for connections after the \
             {reserved} descriptors kept for the store; raise it (`ulimit -n`) above {}",
            2 * RESERVED_FILES
        )),
    }
}

/// Serves `app` on HTTP/1 until `shutdown` completes, then lets requests in flight finish.
///
/// Not `axum::serve`: it serves each connection through hyper-util's auto builder with
/// upgrades, whose per-connection state costs about 10 KiB more; with 10,000 parked
/// long-polls that is 256 MiB of RSS against 155 MiB here (docs/PERFORMANCE.md). A client
/// that half-closes its side after sending a request still gets its answer; but when the
/// answer is a stream (`text/event-stream`), the client closing its side ends it at once,
/// so that a stream whose client left does not wait for its next write to notice.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = Connections::new(options.max_connections);
    let mut last_cap_warning: Option<Instant> = None;
    let mut shutdown = pin!(shutdown);
    'serve: loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // A client that gave up before it was accepted: nothing to do.
                Err(error) if matches!(
                    error.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
                ) => continue,
                Err(error) => {
                    // Out of file descriptors despite the cap, say: wait for some to be
                    // freed (as axum::serve does), saying so once a second at most.
                    tracing::error!(%error, "cannot accept connections; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match connections.try_open() {
            Some(slot) => slot,
            None => {
                if last_cap_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        max_connections = options.max_connections,
                        "at the connection cap: closing the connections that waited longest \
                         for a request, or holding new ones back until some close"
                    );
                    last_cap_warning = Some(Instant::now());
                }
                // Room for the new one: from a connection that sends nothing, or, when
                // every one is answering a request, from the first to finish.
                loop {
                    connections.evict_longest_waiting();
                    tokio::select! {
                        slot = connections.open() => break slot,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = &mut shutdown => break 'serve,
                    }
                }
            }
        };
        // Long-poll answers are small and must not wait for more to send.
        let _ = stream.set_nodelay(true);
        // Shared with the watchdog, which notices a stream's client leaving.
        let stream = Arc::new(stream);
        let activity = slot.activity.clone();
        let io = TokioIo::new(Watched {
            stream: stream.clone(),
            activity: activity.clone(),
            read_size: READ_SIZES.0,
        });
        let app = TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |request| {
            let busy = Busy::start(activity.clone());
            let answer = hyper::service::Service::call(&app, request);
            async move {
                // Busy until the body is sent, not only until the handler returns: a
                // page still being written must be neither evicted nor timed out.
                let response = answer.await?;
                if is_event_stream(&response) {
                    busy.streaming();
                }
                Ok::<_, std::convert::Infallible>(response.map(|body| WhileBusy {
                    body,
                    busy: Some(busy),
                }))
            }
        });
        let connection = http1::Builder::new()
            .half_close(true)
            .serve_connection(io, service);
        let connection = graceful.watch(connection);
        let options = options.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                },
                () = slot.activity.expired(&options, &stream) => {
                    tracing::debug!("closed a connection that sent no request in time, or whose stream's client left");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Where a connection is, for its timeouts.
#[derive(Clone, Copy, Debug)]
enum State {
    /// Waiting for a request head since this moment (connected or first byte).
    Reading(Instant),
    /// Answered everything, waiting for the next request since this moment.
    Idle(Instant),
    /// A request is being answered: the server's own limits apply, not these.
    Busy,
    /// A stream (Server-Sent Events) is being sent: busy, and the client closing its
    /// side ends it (no stream client half-closes and waits for more).
    Streaming,
    /// Closed to make room for a new connection.
    Evicted,
}

/// A connection's state, shared by its socket, its service and its watchdog.
#[derive(Debug)]
struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

impl Activity {
    fn set(&self, change: impl FnOnce(State) -> Option<State>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(next) = change(*state) {
            *state = next;
            self.changed.notify_one();
        }
    }

    fn get(&self) -> State {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes when the connection has waited too long for a request, was evicted, or
    /// its stream's client closed the connection. Hyper does not notice that last one
    /// (it reads nothing while answering, so that half-closed clients get their answer);
    /// a stream might write nothing for a long time, so its socket is watched here.
    async fn expired(&self, options: &ServeOptions, stream: &TcpStream) {
        // The client sent bytes during this stream (pipelining): its close can no longer
        // be told by peeking.
        let mut sent_more = false;
        let mut peeked = [0u8; 1];
        loop {
            let state = self.get();
            let deadline = match state {
                State::Reading(since) => Some(since + options.header_read_timeout),
                State::Idle(since) => Some(since + options.idle_timeout),
                State::Busy | State::Streaming => None,
                State::Evicted => return,
            };
            match deadline {
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = self.changed.notified() => {}
                },
                None if matches!(state, State::Streaming) && !sent_more => tokio::select! {
                    () = self.changed.notified() => {}
                    peek = stream.peek(&mut peeked) => match peek {
                        Ok(0) | Err(_) => return,
                        Ok(_) => sent_more = true,
                    },
                },
                None => {
                    sent_more = false;
                    self.changed.notified().await;
                }
            }
        }
    }
}

/// Marks a connection busy while its request is answered, idle again after.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Self {
        activity.set(|_| Some(State::Busy));
        Self(activity)
    }

    /// The answer is a stream.
    fn streaming(&self) {
        self.0.set(|state| match state {
            State::Busy => Some(State::Streaming),
            _ => None,
        });
    }
}

/// Whether `response` is a stream of Server-Sent Events.
fn is_event_stream<B>(response: &hyper::Response<B>) -> bool {
    response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"))
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.set(|_| Some(State::Idle(Instant::now())));
    }
}

/// A response body that keeps its connection [`Busy`] until it is sent whole (or
/// dropped).
struct WhileBusy {
    body: axum::body::Body,
    busy: Option<Busy>,
}

impl hyper::body::Body for WhileBusy {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.busy = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket of a connection: the first byte after an idle spell starts the header-read
/// timeout. The socket is shared with the connection's watchdog, which only peeks, so
/// reads and writes go through `&TcpStream` (readiness, then `try_*`).
struct Watched {
    stream: Arc<TcpStream>,
    activity: Arc<Activity>,
    /// How much of the reader's buffer the next read zeroes (`try_read` needs initialized
    /// memory): small after a read that did not fill it, so that an idle connection
    /// touches (and keeps resident) little of hyper's buffer; doubled after a full one,
    /// so that a large body is still read in large pieces.
    read_size: usize,
}

/// The smallest and the largest [`Watched::read_size`].
const READ_SIZES: (usize, usize) = (1024, 64 * 1024);

/// Calls `io` once `ready` says the socket is ready, again until it does not block.
fn poll_io<T>(
    cx: &mut Context<'_>,
    mut ready: impl FnMut(&mut Context<'_>) -> Poll<std::io::Result<()>>,
    mut io: impl FnMut() -> std::io::Result<T>,
) -> Poll<std::io::Result<T>> {
    loop {
        if let Err(error) = std::task::ready!(ready(cx)) {
            return Poll::Ready(Err(error));
        }
        match io() {
            Err(error) if error.kind() == ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let stream = &this.stream;
        let room = buf.remaining().min(this.read_size);
        let read = std::task::ready!(poll_io(
            cx,
            |cx| stream.poll_read_ready(cx),
            || stream.try_read(buf.initialize_unfilled_to(room)),
        ))?;
        buf.advance(read);
        this.read_size = if read == room {
            (this.read_size * 2).min(READ_SIZES.1)
        } else {
            READ_SIZES.0
        };
        if read > 0 {
            this.activity.set(|state| match state {
                State::Idle(_) => Some(State::Reading(Instant::now())),
                _ => None,
            });
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let stream = &self.stream;
        poll_io(
            cx,
            |cx| stream.poll_write_ready(cx),
            || stream.try_write(buf),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let stream = &self.stream;
        poll_io(
            cx,
            |cx| stream.poll_write_ready(cx),
            || stream.try_write_vectored(bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Writes go straight to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // What `TcpStream::poll_shutdown` does, through a shared reference.
        let shut = socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match shut {
            Err(error) if error.kind() == ErrorKind::NotConnected => Ok(()),
            result => result,
        })
    }
}

/// The open connections: one permit each, and their states for eviction at the cap.
struct Connections {
    permits: Arc<Semaphore>,
    open: Arc<Mutex<HashMap<u64, Arc<Activity>>>>,
    next_id: u64,
}

/// One open connection's place; frees it when dropped.
struct Slot {
    activity: Arc<Activity>,
    id: u64,
    open: Arc<Mutex<HashMap<u64, Arc<Activity>>>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            open: Arc::default(),
            next_id: 0,
        }
    }

    fn try_open(&mut self) -> Option<Slot> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.slot(permit))
    }

    async fn open(&mut self) -> Slot {
        loop {
            // The semaphore is never closed.
            if let Ok(permit) = self.permits.clone().acquire_owned().await {
                return self.slot(permit);
            }
        }
    }

    fn slot(&mut self, permit: tokio::sync::OwnedSemaphorePermit) -> Slot {
        let id = self.next_id;
        self.next_id += 1;
        let activity = Arc::new(Activity {
            state: Mutex::new(State::Reading(Instant::now())),
            changed: Notify::new(),
        });
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, activity.clone());
        Slot {
            activity,
            id,
            open: self.open.clone(),
            _permit: permit,
        }
    }

    /// Closes the connection that has waited longest for a request, if any does; those
    /// answering a request (parked long-polls included) are left alone.
    fn evict_longest_waiting(&self) {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let longest = open
            .values()
            .filter_map(|activity| match activity.get() {
                State::Reading(since) | State::Idle(since) => Some((since, activity)),
                State::Busy | State::Streaming | State::Evicted => None,
            })
            .min_by_key(|(since, _)| *since);
        if let Some((_, activity)) = longest {
            activity.set(|state| match state {
                State::Reading(_) | State::Idle(_) => Some(State::Evicted),
                State::Busy | State::Streaming | State::Evicted => None,
            });
        }
    }
}
