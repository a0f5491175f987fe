//! The Server-Sent Events mode of `GET /events` (docs/PROTOCOL.md, "Streaming"): the
//! cursor-mode read of [`read_events`](EventBusServer::read_events) in a loop, each page
//! written as one chunk of frames built from the events' JSON as the tail holds it (so
//! an event is serialized once, however many streams carry it).

use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Bytes;
use distributed_events_shared::wire::{codes, ErrorBody};
use distributed_events_shared::EventsQuery;
use futures::Stream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::auth::Principal;
use crate::long_polls::Permit;
use crate::reads::{EventsPage, ReadError};
use crate::telemetry::LivePoll;
use crate::EventBusServer;

/// What a stream says first: a comment, so that the client sees bytes at once, and how
/// long an `EventSource` waits before it reconnects.
const OPENING: &[u8] = b": ok\n\nretry: 1000\n\n";
/// Written when nothing else was for [`Limits::stream_keep_alive`](crate::Limits).
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
/// The shortest keep-alive interval, whatever [`Limits::stream_keep_alive`](crate::Limits) says.
const MIN_KEEP_ALIVE: Duration = Duration::from_millis(10);

impl EventBusServer {
    /// The stream `query` asks for, resuming after `last_event_id` when given (it wins
    /// over `after` and `since`: an `EventSource` reconnects to the same URL). Whatever
    /// refuses it (a bad query, `410`, `503` at the long-poll cap) comes before any byte.
    pub(crate) async fn open_stream(
        &self,
        principal: Principal,
        mut query: EventsQuery,
        last_event_id: Option<u64>,
    ) -> Result<impl Stream<Item = Bytes> + Send + 'static, ReadError> {
        if let Some(id) = last_event_id {
            query.after = Some(id);
            query.since = None;
        }
        // A stream waits between pages itself; each read answers at once.
        query.wait = None;
        let inner = &self.inner;
        let limits = &inner.limits;
        let permit = inner
            .long_polls
            .try_acquire(principal.tenant_id.as_deref())
            .map_err(|refusal| ReadError::Overloaded(refusal.reason()))?;
        // Never past the token's expiry: the client reconnects with a fresh one.
        let mut lifetime = limits.max_stream_duration;
        if let Some(expires_at) = principal.expires_at {
            let left = (expires_at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            lifetime = lifetime.min(left);
        }
        // A lifetime past what an `Instant` holds is no end at all: a year is as good.
        let ends_at = Instant::now()
            .checked_add(lifetime)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
        // A keep-alive of zero would write comments in a loop.
        let keep_alive = limits.stream_keep_alive.max(MIN_KEEP_ALIVE);
        // Subscribed before the first read, so that no commit after it is missed.
        let end = inner.tail.watch_end();
        let first = self.read_events(&principal, &query).await?;
        let mut opening = Vec::from(OPENING);
        let cursor = query.after.unwrap_or_default();
        append_frames(&mut opening, &first, cursor);
        let reader = Reader {
            server: self.clone(),
            principal,
            cursor: first.cursor,
            query,
            end,
            ends: Box::pin(tokio::time::sleep_until(ends_at)),
            keep_alive,
            silence: Box::pin(tokio::time::sleep(keep_alive)),
            next: Some(Bytes::from(opening)),
            ended: false,
            _permit: LivePoll::stream(permit),
        };
        Ok(futures::stream::unfold(reader, |mut reader| async move {
            let chunk = reader.next_chunk().await?;
            let keep_alive = reader.keep_alive;
            reader.silence.as_mut().reset(Instant::now() + keep_alive);
            Some((chunk, reader))
        }))
    }
}

/// An open stream between two chunks.
struct Reader {
    server: EventBusServer,
    principal: Principal,
    query: EventsQuery,
    /// The position of the last id sent.
    cursor: u64,
    end: watch::Receiver<u64>,
    /// The end of the stream's life. Timers are kept, not made anew at each wake-up:
    /// a commit wakes every stream.
    ends: Pin<Box<Sleep>>,
    keep_alive: Duration,
    /// When to write a keep-alive, reset at each write.
    silence: Pin<Box<Sleep>>,
    /// A chunk to send before reading again.
    next: Option<Bytes>,
    /// A `cursor_expired` was sent: nothing may follow.
    ended: bool,
    /// Dropped with the stream (its end, or hyper dropping the body of a closed
    /// connection): the slot goes back to the long-poll cap.
    _permit: LivePoll<Permit>,
}

impl Reader {
    /// The next chunk to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(chunk) = self.next.take() {
            return Some(chunk);
        }
        if self.ended {
            return None;
        }
        let inner = &self.server.inner;
        // Wait for the tail's end to pass this; past the cursor, or past where the end
        // was when a read found nothing new, so that such a read is not repeated at once.
        let mut wait_past = self.cursor;
        loop {
            let cursor = self.cursor;
            tokio::select! {
                biased;
                () = inner.shutdown.cancelled() => return None,
                () = self.ends.as_mut() => return None,
                moved = self.end.wait_for(|&end| end > wait_past) => {
                    // The tail is gone: the server is going away.
                    moved.ok()?;
                }
                () = self.silence.as_mut() => {
                    return Some(Bytes::from_static(KEEP_ALIVE));
                }
            }
            let end = *self.end.borrow();
            // From here on the query reads after the cursor, even if it began with `since`.
            self.query.since = None;
            self.query.after = Some(cursor);
            match self
                .server
                .read_stream_page(&self.principal, &self.query)
                .await
            {
                Ok(page) if page.cursor > cursor => {
                    let mut chunk = Vec::new();
                    append_frames(&mut chunk, &page, cursor);
                    self.cursor = page.cursor;
                    return Some(Bytes::from(chunk));
                }
                // Nothing past the cursor yet, though the tail's end is (a store read
                // behind the tail, say): wait for the end to move again.
                Ok(_) => wait_past = end,
                Err(ReadError::CursorExpired { resume_after }) => {
                    self.ended = true;
                    return Some(cursor_expired(resume_after));
                }
                Err(error) => {
                    // The client reconnects with `Last-Event-ID` and gets the error
                    // answer, if it lasts.
                    tracing::warn!(%error, "a stream's read failed; ending the stream");
                    return None;
                }
            }
        }
    }
}

/// Appends `page`'s frames to `chunk`: one `id:`/`data:` message per event, then a bare
/// `id:` when the page's cursor moved past events this reader does not see.
fn append_frames(chunk: &mut Vec<u8>, page: &EventsPage, after: u64) {
    chunk.reserve(
        page.events
            .iter()
            .map(|event| event.json.bytes.len() + 32)
            .sum::<usize>()
            + 32,
    );
    let mut last = after;
    for event in &page.events {
        let _ = write!(chunk, "id: {}\ndata: ", event.position);
        chunk.extend_from_slice(&event.json.bytes);
        chunk.extend_from_slice(b"\n\n");
        last = event.position;
    }
    if page.cursor > last {
        let _ = write!(chunk, "id: {}\n\n", page.cursor);
    }
}

/// The message that ends a stream that retention overtook.
fn cursor_expired(resume_after: u64) -> Bytes {
    let body = ErrorBody {
        error: ReadError::CursorExpired { resume_after }.to_string(),
        code: codes::CURSOR_EXPIRED.into(),
        resume_after: Some(resume_after),
    };
    let json = serde_json::to_string(&body).unwrap_or_default();
    Bytes::from(format!("event: cursor_expired\ndata: {json}\n\n"))
}
