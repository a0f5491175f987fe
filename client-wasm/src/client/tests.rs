//! The client's loops against an in-memory server that speaks the protocol, on a
//! single-threaded executor: deterministic, no sockets, no clocks. The same properties
//! are proven against the real server in `tests/tests/client.rs`.

use std::collections::VecDeque;
use std::future::{pending, ready};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::*;
use crate::platform::{Method, StreamingResponse};
use crate::{CursorStore, MemoryCursorStore, Receipt};
use distributed_events_shared::MAX_FILTER_VALUE_BYTES;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, distributed_events_shared::Event)]
struct Ping {
    n: u32,
}

/// Sleeps at least this long never end, so request timeouts never fire in these tests;
/// shorter ones (backoff) end at once and are recorded.
const FOREVER: Duration = Duration::from_secs(3600);

enum Scripted {
    /// Answer the next request of this method with this, without touching the log.
    Answer(Method, HttpResponse),
    /// Fail the next request of this method as a network error would.
    Fail(Method),
    /// Carry out the next request of this method, then lose the answer.
    LoseAnswer(Method),
    /// Answer the next stream request with a stream whose bytes never come (a buffering
    /// proxy in between).
    HoldStream,
    /// Open streams send `event: cursor_expired` with this `resumeAfter`, then end.
    ExpireStreams(u64),
}

#[derive(Default)]
struct FakeState {
    log: Vec<StoredEvent>,
    head: u64,
    script: VecDeque<Scripted>,
    requests: Vec<String>,
    sleeps: Vec<Duration>,
    wakers: Vec<Waker>,
    spawned: Vec<crate::BoxFuture<'static, ()>>,
    in_flight: usize,
    /// Each stream request: its URL and `Last-Event-ID`.
    streams: Vec<(String, Option<String>)>,
    /// Bumped to end every open stream, as the server does after a while.
    stream_generation: u64,
    /// Set to cut every open stream in the middle of its next message.
    cut_streams: bool,
}

/// An in-memory server and platform.
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    fn append(&self, mut event: StoredEvent) -> u64 {
        let mut state = self.state();
        state.head += 1;
        event.position = Some(state.head);
        state.log.push(event);
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
        state.head
    }

    /// Positions taken by events this caller may not see.
    fn skip(&self, count: u64) {
        let mut state = self.state();
        state.head += count;
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
    }

    fn script(&self, step: Scripted) {
        let mut state = self.state();
        state.script.push_back(step);
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
    }

    fn take_script(&self, method: Method) -> Option<Scripted> {
        let mut state = self.state();
        let index = state.script.iter().position(|step| match step {
            Scripted::Answer(m, _) | Scripted::Fail(m) | Scripted::LoseAnswer(m) => *m == method,
            Scripted::HoldStream | Scripted::ExpireStreams(_) => false,
        })?;
        state.script.remove(index)
    }

    /// Takes the first script step that `matches`.
    fn take_step(&self, matches: impl Fn(&Scripted) -> bool) -> Option<Scripted> {
        let mut state = self.state();
        let index = state.script.iter().position(matches)?;
        state.script.remove(index)
    }

    /// Ends every open stream; `cut`: in the middle of a message.
    fn end_streams(&self, cut: bool) {
        let mut state = self.state();
        state.stream_generation += 1;
        state.cut_streams = cut;
        for waker in state.wakers.drain(..) {
            waker.wake();
        }
    }

    /// The body of an event stream after `after`, as the server writes it, in chunks
    /// that cut lines anywhere.
    fn event_stream(
        &self,
        mut after: u64,
    ) -> crate::platform::BoxStream<'static, Result<Vec<u8>, String>> {
        let fake = self.clone();
        let generation = self.state().stream_generation;
        let mut chunks: VecDeque<Vec<u8>> = VecDeque::from([b": ok\n\nretry: 1000\n\n".to_vec()]);
        let mut ended = false;
        Box::pin(futures::stream::poll_fn(move |cx| {
            if let Some(chunk) = chunks.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            if ended {
                return Poll::Ready(None);
            }
            if let Some(Scripted::ExpireStreams(resume_after)) =
                fake.take_step(|step| matches!(step, Scripted::ExpireStreams(_)))
            {
                ended = true;
                let message = format!(
                    "event: cursor_expired\ndata: {{\"error\":\"gone\",\"code\":\"cursor_expired\",\"resumeAfter\":{resume_after}}}\n\n"
                );
                return Poll::Ready(Some(Ok(message.into_bytes())));
            }
            let mut state = fake.state();
            let mut text = String::new();
            let from = after;
            for event in state.log.iter().filter(|e| e.position > Some(from)) {
                let position = event.position.unwrap();
                let json = serde_json::to_string(event).unwrap();
                text.push_str(&format!("id: {position}\ndata: {json}\n\n"));
                after = position;
            }
            if state.head > after {
                // Positions this reader does not see: an id alone moves its cursor.
                text.push_str(&format!("id: {}\r\n\r\n", state.head));
                after = state.head;
            }
            if state.stream_generation != generation {
                ended = true;
                if state.cut_streams && !text.is_empty() {
                    text.truncate(text.len() / 2);
                    return Poll::Ready(Some(Ok(text.into_bytes())));
                }
                return Poll::Ready(None);
            }
            if text.is_empty() {
                state.wakers.push(cx.waker().clone());
                return Poll::Pending;
            }
            let bytes = text.into_bytes();
            let (first, second) = bytes.split_at(bytes.len() / 3);
            chunks.push_back(second.to_vec());
            Poll::Ready(Some(Ok(first.to_vec())))
        }))
    }

    fn positions(&self) -> Vec<u64> {
        self.state().log.iter().filter_map(|e| e.position).collect()
    }

    /// Answers `request` as the protocol says; `None` while a long-poll waits.
    fn serve(&self, request: &HttpRequest) -> Option<HttpResponse> {
        let mut state = self.state();
        let (path, query) = request.url.split_once('?').unwrap_or((&request.url, ""));
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_owned())
        };
        let json = |status: u16, body: String| HttpResponse {
            status,
            body,
            ..HttpResponse::default()
        };
        if path.ends_with("/healthz") {
            return Some(json(
                200,
                format!("{{\"status\":\"ok\",\"head\":{}}}", state.head),
            ));
        }
        if request.method == Method::Post {
            let posted: StoredEvent =
                serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
            let existing = state.log.iter().find(|e| e.id == posted.id).cloned();
            let stored = match existing {
                Some(existing) if existing.event_json == posted.event_json => existing,
                Some(_) => {
                    return Some(json(
                        409,
                        r#"{"error":"id used","code":"id_conflict"}"#.into(),
                    ))
                }
                None => {
                    drop(state);
                    self.append(posted.clone());
                    state = self.state();
                    state.log.last().cloned().unwrap()
                }
            };
            let receipt = Receipt {
                id: stored.id,
                created_at: stored.created_at,
                position: stored.position.unwrap(),
            };
            return Some(json(201, serde_json::to_string(&receipt).unwrap()));
        }
        let limit: usize = param("limit").unwrap().parse().unwrap();
        let filter = EventsQuery::from_query_string(query).unwrap();
        let page: Vec<StoredEvent> = match (param("after"), param("since")) {
            (Some(after), _) => {
                let after: u64 = after.parse().unwrap();
                state
                    .log
                    .iter()
                    .filter(|e| e.position > Some(after) && filter.selects(e))
                    .take(limit)
                    .cloned()
                    .collect()
            }
            (None, Some(since)) => {
                let since: chrono::DateTime<Utc> = since.parse().unwrap();
                state
                    .log
                    .iter()
                    .filter(|e| e.created_at >= since && filter.selects(e))
                    .take(limit)
                    .cloned()
                    .collect()
            }
            _ => panic!("bad query {query}"),
        };
        if page.is_empty() && param("wait").is_some() {
            return None;
        }
        let after: u64 = param("after").map_or(0, |a| a.parse().unwrap());
        let cursor = page
            .last()
            .and_then(|e| e.position)
            .unwrap_or(state.head.max(after));
        Some(HttpResponse {
            status: 200,
            cursor: Some(cursor.to_string()),
            retry_after: None,
            body: serde_json::to_string(&page).unwrap(),
        })
    }

    /// Runs every task until none can make progress.
    fn settle(&self, pool: &mut LocalPool) {
        loop {
            let spawned: Vec<_> = self.state().spawned.drain(..).collect();
            for task in spawned {
                pool.spawner().spawn_local(task).unwrap();
            }
            pool.run_until_stalled();
            if self.state().spawned.is_empty() {
                return;
            }
        }
    }

    fn client(&self, configure: impl FnOnce(ClientBuilder) -> ClientBuilder) -> EventBusClient {
        let builder = EventBusClient::builder("http://fake/")
            .timeout_beyond_wait(FOREVER)
            .long_poll(Duration::from_secs(10));
        configure(builder).build_on(Box::new(self.clone())).unwrap()
    }
}

/// Counts the fetches alive, to see that dropping one (close) really ends it.
struct InFlight(Fake);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.state().in_flight -= 1;
    }
}

impl Platform for Fake {
    fn fetch(
        &self,
        request: HttpRequest,
    ) -> crate::BoxFuture<'static, Result<HttpResponse, String>> {
        let fake = self.clone();
        {
            let mut state = self.state();
            state.requests.push(request.url.clone());
            state.in_flight += 1;
        }
        let guard = InFlight(self.clone());
        Box::pin(async move {
            let _guard = guard;
            // The script is read on every poll, so that it also answers a waiting poll.
            futures::future::poll_fn(|cx| {
                match fake.take_script(request.method) {
                    Some(Scripted::Answer(_, response)) => return Poll::Ready(Ok(response)),
                    Some(Scripted::Fail(_)) => {
                        return Poll::Ready(Err("connection refused".into()))
                    }
                    Some(Scripted::LoseAnswer(_)) => {
                        fake.serve(&request);
                        return Poll::Ready(Err("connection reset".into()));
                    }
                    Some(Scripted::HoldStream | Scripted::ExpireStreams(_)) => {
                        unreachable!("taken by streams only")
                    }
                    None => {}
                }
                match fake.serve(&request) {
                    Some(response) => Poll::Ready(Ok(response)),
                    None => {
                        fake.state().wakers.push(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await
        })
    }

    fn fetch_stream(
        &self,
        request: HttpRequest,
    ) -> crate::BoxFuture<'static, Result<StreamingResponse, String>> {
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(header("accept").as_deref(), Some("text/event-stream"));
        let last_event_id = header("last-event-id");
        self.state()
            .streams
            .push((request.url.clone(), last_event_id.clone()));
        let held = self.take_step(|step| matches!(step, Scripted::HoldStream));
        let scripted = self.take_script(Method::Get);
        let event_stream = |body| StreamingResponse {
            status: 200,
            content_type: Some("text/event-stream".into()),
            retry_after: None,
            body,
        };
        let response = match (held, scripted) {
            (Some(_), _) => Ok(event_stream(Box::pin(futures::stream::pending()))),
            (_, Some(Scripted::Answer(_, answer))) => Ok(StreamingResponse {
                status: answer.status,
                content_type: Some("application/json".into()),
                retry_after: answer.retry_after,
                body: Box::pin(futures::stream::iter([Ok(answer.body.into_bytes())])),
            }),
            (_, Some(_)) => Err("connection refused".to_owned()),
            (None, None) => {
                // The header wins over the query, as on the server.
                let query = request.url.split_once('?').map_or("", |(_, query)| query);
                let after = last_event_id.or_else(|| {
                    query
                        .split('&')
                        .find_map(|pair| pair.strip_prefix("after="))
                        .map(str::to_owned)
                });
                let after = after
                    .expect("the fake streams by cursor only")
                    .parse()
                    .unwrap();
                Ok(event_stream(self.event_stream(after)))
            }
        };
        Box::pin(ready(response))
    }

    fn sleep(&self, duration: Duration) -> crate::BoxFuture<'static, ()> {
        if duration >= FOREVER {
            return Box::pin(pending());
        }
        self.state().sleeps.push(duration);
        Box::pin(ready(()))
    }

    fn spawn(&self, task: crate::BoxFuture<'static, ()>) {
        self.state().spawned.push(task);
    }
}

fn ping(n: u32) -> StoredEvent {
    DomainEvent::new(format!("agg-{n}"), Ping { n })
        .to_stored()
        .unwrap()
}

fn raw(event_type: &str, event_json: &str) -> StoredEvent {
    StoredEvent {
        event_type: event_type.into(),
        event_json: event_json.into(),
        ..ping(0)
    }
}

fn drain<S: Stream + Unpin>(stream: &mut S) -> Vec<S::Item> {
    let mut items = Vec::new();
    while let Some(Some(item)) = stream.next().now_or_never() {
        items.push(item);
    }
    items
}

fn page(events: &[StoredEvent], cursor: u64) -> HttpResponse {
    HttpResponse {
        status: 200,
        cursor: Some(cursor.to_string()),
        retry_after: None,
        body: serde_json::to_string(events).unwrap(),
    }
}

#[test]
fn events_arrive_in_order_exactly_once_and_the_cursor_follows_the_server() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let early: Vec<_> = (1..=3).map(ping).collect();
    for event in &early {
        fake.append(event.clone());
    }
    fake.skip(4); // positions 4..=7: events this caller may not see
                  // The first answer says so: cursor 7, past the last event.
    let mut first = early.clone();
    for (event, position) in first.iter_mut().zip(1..) {
        event.position = Some(position);
    }
    fake.script(Scripted::Answer(Method::Get, page(&first, 7)));
    let client = fake.client(|b| b.initial_position(0));
    let mut events = client.events();
    let mut typed = client.on::<Ping>();
    fake.settle(&mut pool);
    assert!(
        fake.state()
            .requests
            .iter()
            .any(|url| url.contains("after=7")),
        "{:?}",
        fake.state().requests
    );

    let late: Vec<_> = (8..=9).map(|n| fake.append(ping(n))).collect();
    fake.settle(&mut pool);
    // An overlapping answer repeats 8 and 9 before the new 10.
    let tenth = ping(10);
    let mut overlap = fake.state().log[3..].to_vec();
    overlap.push(StoredEvent {
        position: Some(10),
        ..tenth.clone()
    });
    fake.script(Scripted::Answer(Method::Get, page(&overlap, 10)));
    fake.settle(&mut pool);

    let positions: Vec<_> = drain(&mut events)
        .iter()
        .filter_map(|e| e.position)
        .collect();
    assert_eq!(positions, [1, 2, 3, late[0], late[1], 10]);
    let payloads: Vec<_> = drain(&mut typed).iter().map(|e| e.payload.n).collect();
    assert_eq!(payloads, [1, 2, 3, 8, 9, 10]);
    assert_eq!(
        client.status(),
        Status::Live {
            transport: Transport::LongPoll
        }
    );
}

#[test]
fn own_events_are_not_dispatched_again_when_they_come_back() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = fake.client(|b| b.initial_position(0).auto_forward(true));
    let mut events = client.events();
    let mut typed = client.on::<Ping>();
    fake.settle(&mut pool);
    client
        .publish(DomainEvent::new("a", Ping { n: 1 }))
        .unwrap();
    fake.settle(&mut pool);
    assert_eq!(fake.positions(), [1], "forwarded to the server");
    fake.append(ping(2)); // someone else's
    fake.settle(&mut pool);

    let seen: Vec<_> = drain(&mut events).iter().map(|e| e.position).collect();
    assert_eq!(
        seen,
        [None, Some(2)],
        "the local publish, then only the other event"
    );
    let payloads: Vec<_> = drain(&mut typed).iter().map(|e| e.payload.n).collect();
    assert_eq!(payloads, [1, 2]);
    assert_eq!(client.cursor(), Some(2), "the echo still moved the cursor");
}

#[test]
fn the_receipt_of_an_own_event_tells_its_position() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    fake.append(ping(1)); // someone else's, so that ours is not at position 1
    let client = fake.client(|b| b.initial_position(0).auto_forward(true));
    let mut stored = client.stored();
    let event = DomainEvent::new("a", Ping { n: 2 });
    let id = event.id;
    client.publish(event).unwrap();
    fake.settle(&mut pool);

    let receipts: Vec<_> = drain(&mut stored)
        .iter()
        .map(|receipt| (receipt.id, receipt.position))
        .collect();
    assert_eq!(receipts, [(id, 2)], "one receipt, with the stored position");
}

#[test]
fn an_own_event_published_during_a_long_catch_up_is_dispatched_once() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    for n in 1..=20 {
        fake.append(ping(n));
    }
    // Far fewer remembered ids than events to catch up on before the echo.
    let client = fake.client(|b| {
        b.initial_position(0)
            .auto_forward(true)
            .dedup_capacity(4)
            .page_size(5)
    });
    let mut typed = client.on::<Ping>();
    client
        .publish(DomainEvent::new("own", Ping { n: 100 }))
        .unwrap();
    fake.settle(&mut pool);

    assert_eq!(fake.positions().len(), 21, "stored after the 20 others");
    let payloads: Vec<_> = drain(&mut typed).iter().map(|e| e.payload.n).collect();
    let mut expected = vec![100];
    expected.extend(1..=20);
    assert_eq!(payloads, expected, "the own event once, from the publish");
    assert_eq!(client.cursor(), Some(21), "its echo moved the cursor");
}

#[test]
fn without_auto_forward_own_events_are_not_sent_and_not_dispatched_twice_if_stored_elsewhere() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = fake.client(|b| b.initial_position(0));
    let mut typed = client.on::<Ping>();
    let own: Vec<_> = (1..=3).map(|n| DomainEvent::new("a", Ping { n })).collect();
    for event in &own {
        client.publish(event.clone()).unwrap();
    }
    fake.settle(&mut pool);
    assert!(fake.positions().is_empty(), "nothing was sent");
    assert_eq!(
        client.inner().lock().delivery.awaiting_echoes(),
        0,
        "an event never sent is not awaited"
    );
    assert_eq!(drain(&mut typed).len(), 3);
    // The app stored one of them another way (its own backend, say): it arrives from
    // the server, and is not dispatched a second time.
    fake.append(own[1].to_stored().unwrap());
    fake.append(ping(9));
    fake.settle(&mut pool);
    let payloads: Vec<_> = drain(&mut typed).iter().map(|e| e.payload.n).collect();
    assert_eq!(payloads, [9]);
}

#[test]
fn the_outbox_retries_with_backoff_and_the_server_stores_each_event_once() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = fake.client(|b| b.initial_position(0).auto_forward(true));
    let mut status = client.status_changes();
    fake.script(Scripted::Fail(Method::Post));
    let mut busy = HttpResponse {
        status: 503,
        body: r#"{"error":"busy","code":"overloaded"}"#.into(),
        ..HttpResponse::default()
    };
    busy.retry_after = Some("7".into());
    fake.script(Scripted::Answer(Method::Post, busy));
    fake.script(Scripted::LoseAnswer(Method::Post));
    let sent: Vec<_> = (1..=3).map(|n| DomainEvent::new("a", Ping { n })).collect();
    for event in &sent {
        client.publish(event.clone()).unwrap();
    }
    fake.settle(&mut pool);

    let stored: Vec<_> = fake.state().log.iter().map(|e| e.id).collect();
    let expected: Vec<_> = sent.iter().map(|e| e.id).collect();
    assert_eq!(
        stored, expected,
        "in order, once each, despite the lost answer"
    );
    let sleeps = fake.state().sleeps.clone();
    assert_eq!(sleeps.len(), 3, "{sleeps:?}");
    let ms = Duration::from_millis;
    assert!(sleeps[0] >= ms(250) && sleeps[0] <= ms(500), "{sleeps:?}");
    assert_eq!(sleeps[1], Duration::from_secs(7), "Retry-After is honoured");
    assert!(sleeps[2] >= ms(1000) && sleeps[2] <= ms(2000), "{sleeps:?}");

    let changes = drain(&mut status);
    assert!(
        changes.iter().any(
            |s| matches!(s, Status::BackingOff { error, .. } if error.code() == "network_error")
        ),
        "{changes:?}"
    );
    assert_eq!(
        changes.last(),
        Some(&Status::Live {
            transport: Transport::LongPoll
        })
    );
}

#[test]
fn an_event_the_server_refuses_is_reported_and_dropped() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = fake.client(|b| b.initial_position(0).auto_forward(true));
    let mut errors = client.errors();
    let conflict = HttpResponse {
        status: 409,
        body: r#"{"error":"id used","code":"id_conflict"}"#.into(),
        ..HttpResponse::default()
    };
    fake.script(Scripted::Answer(Method::Post, conflict));
    let refused = DomainEvent::new("a", Ping { n: 1 });
    let next = DomainEvent::new("a", Ping { n: 2 });
    client.publish(refused.clone()).unwrap();
    client.publish(next.clone()).unwrap();
    fake.settle(&mut pool);

    let ids: Vec<_> = fake.state().log.iter().map(|e| e.id).collect();
    assert_eq!(ids, [next.id]);
    assert_eq!(
        client.inner().lock().delivery.awaiting_echoes(),
        0,
        "neither the refused event nor the stored one is still awaited"
    );
    let errors = drain(&mut errors);
    assert!(
        matches!(&errors[..], [ClientError::Rejected { event, code, .. }] if event.id == refused.id && code == "id_conflict"),
        "{errors:?}"
    );
}

/// A client pointed at a path the server does not serve gets `404`s and `405`s: that
/// says the address is wrong, not the event. The event stays in the outbox, the status
/// says what to check, and once the address answers (a proxy fixed, say) it is stored.
#[test]
fn a_wrong_server_url_keeps_the_outbox_and_says_what_to_check() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = fake.client(|b| b.initial_position(0).auto_forward(true));
    let mut errors = client.errors();
    let mut status = client.status_changes();
    let wrong_place = |status: u16, body: &str| HttpResponse {
        status,
        body: body.into(),
        ..HttpResponse::default()
    };
    fake.script(Scripted::Answer(
        Method::Post,
        wrong_place(405, r#"{"error":"no","code":"method_not_allowed"}"#),
    ));
    fake.script(Scripted::Answer(
        Method::Post,
        wrong_place(404, r#"{"error":"no such path","code":"not_found"}"#),
    ));
    fake.script(Scripted::Answer(
        Method::Post,
        wrong_place(404, "Not Found"),
    ));
    let event = DomainEvent::new("a", Ping { n: 1 });
    client.publish(event.clone()).unwrap();
    fake.settle(&mut pool);

    let ids: Vec<_> = fake.state().log.iter().map(|e| e.id).collect();
    assert_eq!(ids, [event.id], "stored once the address answered");
    let errors = drain(&mut errors);
    assert_eq!(errors.len(), 3, "{errors:?}");
    for error in &errors {
        assert_eq!(error.code(), "wrong_server_url", "{errors:?}");
        assert!(error.to_string().contains("server URL"), "{error}");
    }
    let changes = drain(&mut status);
    assert!(
        changes.iter().any(|s| matches!(
            s,
            Status::BackingOff { error, .. } if error.code() == "wrong_server_url"
        )),
        "{changes:?}"
    );
    assert_eq!(
        changes.last(),
        Some(&Status::Live {
            transport: Transport::LongPoll
        })
    );
    assert_eq!(
        client.inner().lock().delivery.awaiting_echoes(),
        0,
        "the echo of the stored event came back"
    );
}

#[test]
fn an_expired_cursor_resets_and_the_app_hears_of_it() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    for n in 1..=3 {
        fake.append(ping(n));
    }
    let gone = HttpResponse {
        status: 410,
        body: r#"{"error":"expired","code":"cursor_expired","resumeAfter":2}"#.into(),
        ..HttpResponse::default()
    };
    fake.script(Scripted::Answer(Method::Get, gone));
    let client = fake.client(|b| b.initial_position(0));
    let mut events = client.events();
    let mut errors = client.errors();
    fake.settle(&mut pool);

    let errors = drain(&mut errors);
    assert_eq!(
        errors,
        [ClientError::CursorReset {
            code: "cursor_expired".into(),
            from: 0,
            resume_after: 2
        }]
    );
    let positions: Vec<_> = drain(&mut events)
        .iter()
        .filter_map(|e| e.position)
        .collect();
    assert_eq!(positions, [3]);
}

#[test]
fn unknown_types_and_undecodable_payloads_are_reported_with_the_event() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = fake.client(|b| b.initial_position(0));
    let mut typed = client.on::<Ping>(); // registers Ping
    let mut events = client.events();
    let mut errors = client.errors();
    let unknown = raw("Other", "{}");
    let mistyped = raw("Ping", r#"{"n":"lots"}"#);
    let broken = raw("Ping", "not json");
    for event in [
        ping(1),
        unknown.clone(),
        mistyped.clone(),
        broken.clone(),
        ping(2),
    ] {
        fake.append(event);
    }
    fake.settle(&mut pool);

    let payloads: Vec<_> = drain(&mut typed).iter().map(|e| e.payload.n).collect();
    assert_eq!(payloads, [1, 2]);
    let errors: Vec<_> = drain(&mut errors)
        .into_iter()
        .map(|e| (e.code().to_owned(), e.event().map(|event| event.id)))
        .collect();
    assert_eq!(
        errors,
        [
            ("unknown_event_type".to_owned(), Some(unknown.id)),
            ("undecodable_payload".to_owned(), Some(mistyped.id)),
            ("undecodable_payload".to_owned(), Some(broken.id)),
        ]
    );
    let untyped: Vec<_> = drain(&mut events)
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(
        untyped,
        ["Ping", "Other", "Ping", "Ping"],
        "all but the one that is not JSON"
    );
}

#[test]
fn close_aborts_the_waiting_poll_and_leaves_the_bus_usable() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let bus = EventBus::new();
    let client = fake.client(|b| b.initial_position(0).event_bus(bus.clone()));
    let mut events = client.events();
    let mut status = client.status_changes();
    fake.settle(&mut pool);
    assert_eq!(fake.state().in_flight, 1, "a long-poll is waiting");

    let mut closed = Box::pin(client.close());
    fake.settle(&mut pool);
    assert!(
        closed.as_mut().now_or_never().is_some(),
        "close completed: every task stopped"
    );
    assert_eq!(fake.state().in_flight, 0, "the waiting poll was dropped");
    assert_eq!(client.status(), Status::Closed);
    assert_eq!(drain(&mut status).last(), Some(&Status::Closed));
    assert_eq!(
        events.next().now_or_never(),
        Some(None),
        "subscriptions ended"
    );
    assert_eq!(
        client.publish(DomainEvent::new("a", Ping { n: 1 })),
        Err(ClientError::Closed)
    );

    let mut on_bus = bus.on::<Ping>();
    bus.publish(DomainEvent::new("a", Ping { n: 2 }));
    assert_eq!(
        on_bus.next().now_or_never().flatten().map(|e| e.payload.n),
        Some(2)
    );

    // Dropping the last handle closes too.
    let dropped = fake.client(|b| b.initial_position(0));
    fake.settle(&mut pool);
    assert_eq!(fake.state().in_flight, 1);
    drop(dropped);
    fake.settle(&mut pool);
    assert_eq!(fake.state().in_flight, 0);
}

#[test]
fn a_saved_cursor_resumes_with_nothing_lost_and_nothing_repeated() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let store = MemoryCursorStore::new();
    for n in 1..=3 {
        fake.append(ping(n));
    }
    let first = fake.client(|b| b.initial_position(0).cursor_store(store.clone()));
    let mut seen = first.events();
    fake.settle(&mut pool);
    drop(first); // a page reload
    fake.settle(&mut pool);
    let mut positions: Vec<_> = drain(&mut seen).iter().filter_map(|e| e.position).collect();

    fake.append(ping(4));
    fake.append(ping(5));
    let second = fake.client(|b| b.initial_position(0).cursor_store(store.clone()));
    let mut seen = second.events();
    fake.settle(&mut pool);
    positions.extend(drain(&mut seen).iter().filter_map(|e| e.position));
    assert_eq!(positions, [1, 2, 3, 4, 5]);
}

#[test]
fn by_default_delivery_starts_at_the_servers_head() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    fake.append(ping(1));
    fake.append(ping(2));
    let client = fake.client(|b| b);
    let mut events = client.events();
    fake.settle(&mut pool);
    fake.append(ping(3));
    fake.settle(&mut pool);
    let positions: Vec<_> = drain(&mut events)
        .iter()
        .filter_map(|e| e.position)
        .collect();
    assert_eq!(positions, [3]);
}

#[test]
fn an_initial_timestamp_finds_the_start_then_the_cursor_takes_over() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let base = distributed_events_shared::now();
    for n in 0..4u32 {
        let mut event = ping(n);
        event.created_at = base + chrono::Duration::seconds(i64::from(n));
        fake.append(event);
    }
    let client = fake.client(|b| b.initial_timestamp(base + chrono::Duration::seconds(2)));
    let mut events = client.events();
    fake.settle(&mut pool);
    fake.append(ping(9));
    fake.settle(&mut pool);
    let positions: Vec<_> = drain(&mut events)
        .iter()
        .filter_map(|e| e.position)
        .collect();
    assert_eq!(positions, [3, 4, 5]);
    assert!(fake.state().requests[0].contains("since="));
    assert!(fake.state().requests[1].contains("after=4"));
}

#[test]
fn a_backoff_near_duration_max_backs_off_without_panicking() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = fake.client(|b| b.initial_position(0).backoff(Duration::MAX, Duration::MAX));
    let mut status = client.status_changes();
    fake.script(Scripted::Fail(Method::Get));
    fake.settle(&mut pool);
    let changes = drain(&mut status);
    assert!(
        changes.iter().any(|s| matches!(
            s,
            Status::BackingOff { retry_at, .. } if *retry_at == DateTime::<Utc>::MAX_UTC
        )),
        "the retry lies past the latest time there is: {changes:?}"
    );
    let now = Utc::now();
    assert_eq!(
        retry_time(now, Duration::from_secs(2)),
        now + chrono::Duration::seconds(2)
    );
}

#[test]
fn a_bad_url_error_names_the_builders_argument() {
    let error = EventBusClient::builder("localhost:8080")
        .build_on(Box::new(Fake::default()))
        .expect_err("a URL without a scheme is refused");
    let message = error.to_string();
    assert!(
        message.contains("EventBusClient::builder") && !message.contains("serverUrl"),
        "{message}"
    );
}

/// A streaming client on the fake: it falls back only when a test holds a stream.
fn streaming(
    fake: &Fake,
    configure: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> EventBusClient {
    fake.client(|b| configure(b.transport(Transport::Stream)))
}

const STREAM: Status = Status::Live {
    transport: Transport::Stream,
};

#[test]
fn a_stream_delivers_in_order_once_and_moves_the_cursor_on_ids_alone() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    fake.append(ping(1));
    let store = MemoryCursorStore::new();
    let client = streaming(&fake, |b| b.initial_position(0).cursor_store(store.clone()));
    let mut typed = client.on::<Ping>();
    fake.settle(&mut pool);
    for n in 2..=4 {
        fake.append(ping(n));
    }
    fake.settle(&mut pool);
    let payloads: Vec<_> = drain(&mut typed).iter().map(|e| e.payload.n).collect();
    assert_eq!(payloads, [1, 2, 3, 4]);
    assert_eq!(client.status(), STREAM);

    fake.skip(3);
    fake.settle(&mut pool);
    assert_eq!(
        client.cursor(),
        Some(7),
        "an id without data moves the cursor"
    );
    assert_eq!(
        CursorStore::load(&store, "distributed-events:cursor:http://fake").unwrap(),
        Some(7)
    );
    assert_eq!(fake.state().streams.len(), 1, "one stream all along");
    assert!(fake.state().requests.is_empty(), "no polls");
}

/// The server ends streams after a while; the client opens the next one after the
/// last id it read (`Last-Event-ID`), also when the end cut a message in two.
#[test]
fn after_the_server_ends_a_stream_the_next_resumes_with_nothing_lost_or_repeated() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = streaming(&fake, |b| b.initial_position(0));
    let mut typed = client.on::<Ping>();
    fake.append(ping(1));
    fake.settle(&mut pool);
    fake.end_streams(false);
    fake.settle(&mut pool);
    fake.append(ping(2));
    fake.append(ping(3));
    // Ends while writing 2 and 3: half of that reaches the client.
    fake.end_streams(true);
    fake.settle(&mut pool);
    fake.append(ping(4));
    fake.settle(&mut pool);

    let payloads: Vec<_> = drain(&mut typed).iter().map(|e| e.payload.n).collect();
    assert_eq!(payloads, [1, 2, 3, 4]);
    let streams = fake.state().streams.clone();
    assert_eq!(streams.len(), 3, "{streams:?}");
    assert_eq!(streams[0], ("http://fake/events?after=0".into(), None));
    assert_eq!(streams[1].1.as_deref(), Some("1"));
    let resumed: u64 = streams[2].1.as_deref().unwrap().parse().unwrap();
    assert!(
        (1..=2).contains(&resumed),
        "after the last whole message: {streams:?}"
    );
    assert_eq!(client.status(), STREAM);
}

/// `event: cursor_expired` mid-stream is the stream's `410`: reset, report, go on.
#[test]
fn a_cursor_expired_mid_stream_resets_like_a_410() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = streaming(&fake, |b| b.initial_position(0));
    let mut events = client.events();
    let mut errors = client.errors();
    fake.append(ping(1));
    fake.settle(&mut pool);
    // Retention dropped 2..=5 before the reader got them.
    fake.skip(4);
    fake.script(Scripted::ExpireStreams(5));
    fake.settle(&mut pool);
    fake.append(ping(6));
    fake.settle(&mut pool);

    assert_eq!(
        drain(&mut errors),
        [ClientError::CursorReset {
            code: "cursor_expired".into(),
            from: 1,
            resume_after: 5
        }]
    );
    let positions: Vec<_> = drain(&mut events)
        .iter()
        .filter_map(|e| e.position)
        .collect();
    assert_eq!(positions, [1, 6]);
    let streams = fake.state().streams.clone();
    assert_eq!(streams[1].1.as_deref(), Some("5"), "{streams:?}");
}

/// Errors before a stream starts are the ordinary answers: a `503` backs off as told.
#[test]
fn an_error_before_the_stream_starts_backs_off_as_for_a_poll() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = streaming(&fake, |b| b.initial_position(0));
    let mut typed = client.on::<Ping>();
    let mut status = client.status_changes();
    fake.script(Scripted::Answer(
        Method::Get,
        HttpResponse {
            status: 503,
            retry_after: Some("7".into()),
            body: r#"{"error":"busy","code":"overloaded"}"#.into(),
            ..HttpResponse::default()
        },
    ));
    fake.append(ping(1));
    fake.settle(&mut pool);

    assert!(fake.state().sleeps.contains(&Duration::from_secs(7)));
    let changes = drain(&mut status);
    assert!(
        changes
            .iter()
            .any(|s| matches!(s, Status::BackingOff { error, .. } if error.code() == "overloaded")),
        "{changes:?}"
    );
    assert_eq!(changes.last(), Some(&STREAM));
    assert_eq!(drain(&mut typed).len(), 1);
}

/// A proxy that holds the stream's bytes: the client long-polls instead, and says so.
#[test]
fn a_stream_without_bytes_in_time_falls_back_to_long_polling() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    fake.script(Scripted::HoldStream);
    let client = streaming(&fake, |b| b.initial_position(0));
    let mut typed = client.on::<Ping>();
    fake.append(ping(1));
    fake.settle(&mut pool);
    fake.append(ping(2));
    fake.settle(&mut pool);

    let payloads: Vec<_> = drain(&mut typed).iter().map(|e| e.payload.n).collect();
    assert_eq!(payloads, [1, 2]);
    assert_eq!(
        client.status(),
        Status::Live {
            transport: Transport::LongPoll
        }
    );
    assert_eq!(fake.state().streams.len(), 1);
    assert!(
        fake.state()
            .requests
            .iter()
            .any(|url| url.contains("wait=10")),
        "long-polls: {:?}",
        fake.state().requests
    );
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, distributed_events_shared::Event)]
struct Pong {
    n: u32,
}

fn pong(n: u32) -> StoredEvent {
    DomainEvent::new(format!("agg-{n}"), Pong { n })
        .to_stored()
        .unwrap()
}

#[test]
fn the_filter_is_sent_and_a_handler_added_later_loses_nothing_of_its_type() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    fake.append(ping(1));
    fake.append(pong(2));
    let client = fake.client(|b| {
        b.initial_position(0)
            .aggregate_ids(["agg-1", "agg-2", "agg-3", "agg 4"])
            .subscribe_to_handled_types()
    });
    let mut pings = client.on::<Ping>();
    fake.settle(&mut pool);
    assert_eq!(drain(&mut pings).len(), 1);
    let last = fake.state().requests.last().cloned().unwrap();
    assert!(
        last.contains("after=1") && last.ends_with("&eventType=Ping&aggregateId=agg-1&aggregateId=agg-2&aggregateId=agg-3&aggregateId=agg+4"),
        "{last}"
    );
    assert_eq!(fake.state().in_flight, 1, "a long-poll for Pings waits");

    // A Pong commits while that poll waits; then the app handles Pongs.
    fake.append(pong(3));
    fake.settle(&mut pool);
    let mut pongs = client.on::<Pong>();
    fake.settle(&mut pool);
    let requests = fake.state().requests.clone();
    assert!(
        requests
            .iter()
            .any(|url| url.contains("after=1&") && url.contains("eventType=Ping&eventType=Pong")),
        "asked again from the cursor with both types: {requests:?}"
    );
    assert_eq!(fake.state().in_flight, 1, "the narrower poll was dropped");
    let received: Vec<_> = drain(&mut pongs).iter().map(|e| e.payload.n).collect();
    assert_eq!(received, [2, 3], "every Pong after the cursor");

    // An answer to a poll asked for with the old filter is dropped, cursor and all.
    client.inner().handle_type("Third");
    fake.script(Scripted::Answer(Method::Get, page(&[], 100)));
    fake.settle(&mut pool);
    assert_eq!(
        client.cursor(),
        Some(3),
        "the stale answer did not move the cursor"
    );
    let last = fake.state().requests.last().cloned().unwrap();
    assert!(
        last.contains("after=3&") && last.contains("eventType=Third"),
        "{last}"
    );
    // (Of aggregate agg-1: the filter on aggregates still holds.)
    fake.append(pong(1));
    fake.append(pong(5));
    fake.settle(&mut pool);
    assert_eq!(
        drain(&mut pongs)
            .iter()
            .map(|e| e.payload.n)
            .collect::<Vec<_>>(),
        [1]
    );
    assert!(drain(&mut pings).is_empty());
}

#[test]
fn without_opting_in_handlers_do_not_filter_and_bad_filters_are_refused() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = fake.client(|b| b.initial_position(0));
    let _pings = client.on::<Ping>();
    fake.settle(&mut pool);
    let requests = fake.state().requests.clone();
    assert!(
        requests.iter().all(|url| !url.contains("eventType")),
        "{requests:?}"
    );

    let too_many = (0..101).map(|n| format!("T{n}"));
    let error = EventBusClient::builder("http://fake")
        .event_types(too_many)
        .build_on(Box::new(fake.clone()))
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("event_types takes at most 100 values"),
        "{error}"
    );
    let error = EventBusClient::builder("http://fake")
        .aggregate_ids([""])
        .build_on(Box::new(fake.clone()))
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("each of aggregate_ids must be 1 to 200 bytes"),
        "{error}"
    );
}

/// A handled type that the server does not take as a filter value (empty, or longer than
/// 200 bytes) makes the client ask for every type, not a filter every request would have
/// refused with `400`.
#[test]
fn a_handled_type_the_server_cannot_filter_on_asks_for_every_type() {
    let fake = Fake::default();
    let mut pool = LocalPool::new();
    let client = fake.client(|b| b.initial_position(0).subscribe_to_handled_types());
    let _pings = client.on::<Ping>();
    fake.settle(&mut pool);
    let last = fake.state().requests.last().cloned().unwrap();
    assert!(last.contains("eventType=Ping"), "{last}");

    client
        .inner()
        .handle_type(&"T".repeat(MAX_FILTER_VALUE_BYTES + 1));
    fake.settle(&mut pool);
    let last = fake.state().requests.last().cloned().unwrap();
    assert!(
        !last.contains("eventType"),
        "every type once a handled type cannot be a filter value: {last}"
    );
}
