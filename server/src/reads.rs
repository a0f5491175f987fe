//! Reading events for a caller: `GET /events` without HTTP. The HTTP edge parses the
//! query ([`EventsQuery`], from `shared`), calls [`EventBusServer::read_events`], and
//! turns the page or [`ReadError`] into a response; a new query parameter is used here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use distributed_events_shared::{EventsQuery, StoredEvent};

use crate::auth::{verdict, AuthorizationFilter, Principal, Verdict};
use crate::store::{Selection, StoreError};
use crate::tail::{EventJson, PageEvent, TailPage};
use crate::telemetry::{self, LivePoll};
use crate::EventBusServer;

/// Longest a read waits for the tail to take in what the store acknowledged before it.
const TAIL_CATCH_UP: Duration = Duration::from_millis(500);

/// A page for a caller: the events (positions and JSON), in position order, and the
/// `after` of the next read.
#[derive(Debug)]
pub(crate) struct EventsPage {
    pub(crate) events: Vec<PageEvent>,
    pub(crate) cursor: u64,
    /// The same query gets this same page from now on, so caches may keep it: the page
    /// is full (it holds `limit` events, or the byte cap cut it), and nothing that could
    /// change shaped it. Not when it waited for a commit (a live answer), when the
    /// authorization filter failed on an event (hidden this time only), or, in `since`
    /// mode, with retention (deleting the first events moves where the page starts; in
    /// cursor mode such a read answers `410` instead).
    pub(crate) immutable: bool,
}

/// Why a read has no page to answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The query asks for no read, or for two at once.
    #[error("{0}")]
    Query(&'static str),
    /// Retention deleted events after the cursor; go on after `resume_after`.
    #[error("events after this cursor were deleted; resume after {resume_after}")]
    CursorExpired { resume_after: u64 },
    /// The cursor is past every position ever assigned; go on after `resume_after`.
    #[error("this cursor is past every stored event; resume after {resume_after}")]
    CursorAhead { resume_after: u64 },
    /// Too many long-polls wait already (on this server, or of this tenant).
    #[error("{0}")]
    Overloaded(&'static str),
}

/// What a cursor-mode read must include.
#[derive(Clone, Copy)]
enum Freshness {
    /// Everything acknowledged before the read (read your own writes).
    Acknowledged,
    /// What the tail holds, when it covers the cursor.
    Tail,
}

impl EventBusServer {
    /// The page `query` asks for: after a cursor (long-polling with `wait`) or since a
    /// time, of the events its filter (`eventType`, `aggregateId`) takes, `limit` and
    /// `wait` lowered to the server's caps.
    pub(crate) async fn read_events(
        &self,
        principal: &Principal,
        query: &EventsQuery,
    ) -> Result<EventsPage, ReadError> {
        self.read(principal, query, Freshness::Acknowledged).await
    }

    /// The next page of an open stream: as [`read_events`](Self::read_events), but
    /// from the tail as far as it goes, without waiting for it to take in commits it has
    /// not seen yet. The stream sends those as soon as the tail has them, so a stream's
    /// wake-up never waits on the store while producers keep committing.
    pub(crate) async fn read_stream_page(
        &self,
        principal: &Principal,
        query: &EventsQuery,
    ) -> Result<EventsPage, ReadError> {
        self.read(principal, query, Freshness::Tail).await
    }

    async fn read(
        &self,
        principal: &Principal,
        query: &EventsQuery,
        freshness: Freshness,
    ) -> Result<EventsPage, ReadError> {
        let limits = &self.inner.limits;
        let limit = query.limit.map_or(limits.max_page, |limit| {
            usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .min(limits.max_page)
        });
        match (query.after, query.since) {
            (Some(_), Some(_)) => Err(ReadError::Query(
                "pass either `after` (a position) or `since` (a time), not both",
            )),
            (None, None) => Err(ReadError::Query(
                "`after` or `since` is required: pass `after=<position>` (a whole number, 0 for the start) or `since=<RFC 3339 time>`",
            )),
            (None, Some(since)) => self.page_since(principal, query, since, limit).await,
            (Some(after), None) => {
                let wait = query.wait.unwrap_or_default().min(limits.max_wait);
                self.read_after(principal, query, after, limit, wait, freshness)
                    .await
            }
        }
    }

    /// Cursor mode, with the long-poll: read; if nothing is visible, wait for the next
    /// commit (not for a timer) and read again, until `wait` runs out or shutdown begins.
    /// Only the events `filter`'s `eventType` and `aggregateId` take (its other fields are
    /// not used here); the cursor moves past the others.
    async fn read_after(
        &self,
        principal: &Principal,
        filter: &EventsQuery,
        after: u64,
        limit: usize,
        wait: Duration,
        freshness: Freshness,
    ) -> Result<EventsPage, ReadError> {
        let inner = &self.inner;
        let store = &inner.store;
        let tail = &inner.tail;
        let tenant = principal.tenant_id.as_deref();
        let selection = Selection::of_query(tenant, filter);
        let authorization = inner.filter.as_deref();
        let max_bytes = inner.limits.max_page_bytes;
        let filter_failed = AtomicBool::new(false);
        // The subscriber's filter first: it is cheap, and the app's filter need not see
        // events the subscriber does not want.
        let visible = |event: &StoredEvent| {
            filter.selects(event) && sees(authorization, event, principal, &filter_failed)
        };
        // Subscribe before the first read so that no commit between read and wait is missed.
        let mut end = tail.watch_end();
        // What was acknowledged before this request: its answer must not leave any of it
        // out (read your own writes), even while the tail is still taking it in.
        let acknowledged = match freshness {
            Freshness::Acknowledged => *store.watch_head().borrow(),
            Freshness::Tail => 0,
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut cursor = after;
        let mut checked_ahead = false;
        let mut waited = false;
        // Held while this request waits; released with the answer.
        let mut permit = None;
        loop {
            // The tail answers unless the cursor lies before it, or its page is not full and
            // stops short of what was acknowledged: then its follower gets a moment to
            // catch up (it reads each commit within milliseconds), and the store answers
            // if it has not.
            let covers = |page: &TailPage| page.full || page.cursor >= acknowledged;
            let mut from_tail = tail.read(cursor, limit, max_bytes, tenant, &visible);
            if from_tail.as_ref().is_some_and(|page| !covers(page)) {
                // Not once shutdown has begun: the follower has stopped.
                tokio::select! {
                    _ = tokio::time::timeout(TAIL_CATCH_UP, end.wait_for(|&end| end >= acknowledged)) => {}
                    () = inner.shutdown.cancelled() => {}
                }
                from_tail = tail
                    .read(cursor, limit, max_bytes, tenant, &visible)
                    .filter(covers);
            }
            let (events, full) = match from_tail {
                Some(page) => {
                    cursor = page.cursor;
                    metrics::counter!(telemetry::DELIVERED, "source" => "tail")
                        .increment(page.events.len() as u64);
                    (page.events, page.full)
                }
                None => {
                    let page = store
                        .read_after(cursor, limit, max_bytes, &selection, &visible)
                        .await?;
                    // Checked after the read: a cleanup that ran before it (on any
                    // instance) shows here, so a read that missed deleted events is never
                    // answered as complete.
                    let pruned_through = store.pruned_through().await?;
                    if cursor < pruned_through {
                        return Err(ReadError::CursorExpired {
                            resume_after: pruned_through,
                        });
                    }
                    cursor = page.cursor;
                    (serialized(page.events), page.full)
                }
            };
            if events.is_empty() && !checked_ahead && cursor > *end.borrow() {
                // This process has not seen that position; ask the store whether anyone has.
                let stored_head = store.head().await?;
                if cursor > stored_head {
                    return Err(ReadError::CursorAhead {
                        resume_after: stored_head,
                    });
                }
                checked_ahead = true;
            }
            if !events.is_empty()
                || tokio::time::Instant::now() >= deadline
                || inner.shutdown.is_cancelled()
            {
                let immutable = full && !waited && !filter_failed.load(Ordering::Relaxed);
                return Ok(EventsPage {
                    events,
                    cursor,
                    immutable,
                });
            }
            if permit.is_none() {
                permit = Some(LivePoll::new(
                    inner
                        .long_polls
                        .try_acquire(tenant)
                        .map_err(|refusal| ReadError::Overloaded(refusal.reason()))?,
                ));
            }
            waited = true;
            tokio::select! {
                changed = end.wait_for(|&end| end > cursor) => {
                    if changed.is_err() {
                        return Ok(EventsPage { events: Vec::new(), cursor, immutable: false });
                    }
                }
                () = tokio::time::sleep_until(deadline) => {}
                () = inner.shutdown.cancelled() => {}
            }
        }
    }

    /// Timestamp mode (the seed's API): events with `createdAt >= since`, from the first
    /// such event on in position order, filtered before the limit as in cursor mode. The
    /// cursor works as in cursor mode, so a client can go on with `after=`. With no such
    /// event it is the head as of before the read, never 0: a client that starts "from
    /// now" must not replay history. (The store's `read_since` only finds the first
    /// event.)
    async fn page_since(
        &self,
        principal: &Principal,
        filter: &EventsQuery,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<EventsPage, ReadError> {
        let store = &self.inner.store;
        let tenant = principal.tenant_id.as_deref();
        let authorization = self.inner.filter.as_deref();
        // Read before the search: whatever commits after it lies past it.
        let head = store.head().await?;
        let first = store
            .read_since(since, 1, tenant)
            .await?
            .first()
            .and_then(|event| event.position);
        let Some(first) = first else {
            return Ok(EventsPage {
                events: Vec::new(),
                cursor: head,
                immutable: false,
            });
        };
        let filter_failed = AtomicBool::new(false);
        let visible = |event: &StoredEvent| {
            event.created_at >= since
                && filter.selects(event)
                && sees(authorization, event, principal, &filter_failed)
        };
        let max_bytes = self.inner.limits.max_page_bytes;
        let selection = Selection::of_query(tenant, filter);
        let page = store
            .read_after(
                first.saturating_sub(1),
                limit,
                max_bytes,
                &selection,
                &visible,
            )
            .await?;
        let immutable =
            page.full && self.inner.retention.is_none() && !filter_failed.load(Ordering::Relaxed);
        Ok(EventsPage {
            events: serialized(page.events),
            cursor: page.cursor,
            immutable,
        })
    }
}

/// Whether `principal` sees `event`, noting in `filter_failed` when the authorization
/// filter failed on it.
fn sees(
    filter: Option<&AuthorizationFilter>,
    event: &StoredEvent,
    principal: &Principal,
    filter_failed: &AtomicBool,
) -> bool {
    match verdict(filter, event, principal) {
        Verdict::Visible => true,
        Verdict::Hidden => false,
        Verdict::FilterFailed => {
            filter_failed.store(true, Ordering::Relaxed);
            false
        }
    }
}

/// The JSON of events read from the store, counted as delivered from it. Each event is
/// dropped once serialized: the page is held about once.
fn serialized(events: Vec<StoredEvent>) -> Vec<PageEvent> {
    metrics::counter!(telemetry::DELIVERED, "source" => "store").increment(events.len() as u64);
    events
        .into_iter()
        .map(|event| PageEvent {
            position: event.position.unwrap_or_default(),
            json: EventJson::of(&event),
        })
        .collect()
}
