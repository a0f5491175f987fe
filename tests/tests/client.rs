//! The Rust client (`distributed-events-client`, native transport) against the real
//! server binary: what an application would check, with every assertion able to fail.
//! Waiting is bounded only to turn a hang into a failure; nothing asserts on timing.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use distributed_events_client::{
    event_registry, ClientError, DomainEvent, Event, EventBusClient, MemoryCursorStore, Status,
    StoredEvent, Subscription,
};
use distributed_events_tests::TestServer;
use futures::{FutureExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Event)]
struct Note {
    writer: usize,
    seq: usize,
}

/// How long a test may wait for what it expects before it fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(90);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("gave up after {PATIENCE:?}: {what}"))
}

/// Takes events from `stream` until `done` says so; the events in arrival order.
async fn collect_until<S>(
    what: &str,
    stream: &mut S,
    mut done: impl FnMut(&[StoredEvent]) -> bool,
) -> Vec<StoredEvent>
where
    S: Stream<Item = StoredEvent> + Unpin,
{
    let mut seen = Vec::new();
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done(&seen) {
            match stream.next().await {
                Some(event) => seen.push(event),
                None => panic!("the stream ended while waiting for {what}"),
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "gave up after {PATIENCE:?} waiting for {what}; got {} events",
        seen.len()
    );
    seen
}

/// Asserts that `events` holds no id twice and that the received ones come in strictly
/// increasing positions; returns the ids.
fn assert_once_in_order(who: &str, events: &[StoredEvent]) -> Vec<Uuid> {
    let mut ids = HashSet::new();
    let mut last = 0;
    for event in events {
        assert!(
            ids.insert(event.id),
            "{who}: event {} delivered twice",
            event.id
        );
        if let Some(position) = event.position {
            assert!(position > last, "{who}: position {position} after {last}");
            last = position;
        }
    }
    events.iter().map(|e| e.id).collect()
}

fn note(stored: &StoredEvent) -> Note {
    serde_json::from_str(&stored.event_json).expect("a Note payload")
}

fn client(server: &TestServer) -> distributed_events_client::ClientBuilder {
    EventBusClient::builder(server.url())
        .registry(event_registry![Note])
        .initial_position(0)
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// Every event the server holds, read by a fresh client from position 0.
async fn everything_stored(server: &TestServer, count: usize) -> Vec<StoredEvent> {
    let reader = client(server).build().expect("a reader");
    let mut events = reader.events();
    let all = collect_until("the stored events", &mut events, |seen| seen.len() >= count).await;
    reader.close().await;
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_see_every_event_once_and_in_order() {
    const CLIENTS: usize = 5;
    const EACH: usize = 30;
    let server = TestServer::start(&[]);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            client(&server)
                .auto_forward(true)
                .build()
                .expect("a client")
        })
        .collect();
    let mut streams: Vec<Subscription<StoredEvent>> =
        clients.iter().map(EventBusClient::events).collect();

    // Everyone publishes at once, interleaved.
    for seq in 0..EACH {
        for (writer, client) in clients.iter().enumerate() {
            client
                .publish(DomainEvent::new(
                    format!("writer-{writer}"),
                    Note { writer, seq },
                ))
                .expect("publish");
        }
    }

    let total = CLIENTS * EACH;
    for (index, stream) in streams.iter_mut().enumerate() {
        let who = format!("client {index}");
        let seen = collect_until(&who, stream, |seen| seen.len() >= total).await;
        let ids = assert_once_in_order(&who, &seen);
        assert_eq!(
            ids.len(),
            total,
            "{who} saw every event, its own (locally) included"
        );
        // Its own events were dispatched once, locally (no position): their echoes were not.
        let own: Vec<_> = seen
            .iter()
            .filter(|e| e.position.is_none())
            .map(note)
            .collect();
        assert!(own.iter().all(|n| n.writer == index), "{who}: {own:?}");
        assert_eq!(own.len(), EACH, "{who}");
    }

    // The server has each event once, and each writer's events in the order published.
    let stored = everything_stored(&server, total).await;
    assert_once_in_order("the server", &stored);
    let mut next_seq: HashMap<usize, usize> = HashMap::new();
    for note in stored.iter().map(note) {
        let expected = next_seq.entry(note.writer).or_default();
        assert_eq!(note.seq, *expected, "writer {} out of order", note.writer);
        *expected += 1;
    }
    for client in &clients {
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_under_polling_overlapping_long_polls_and_a_server_restart() {
    const EVENTS: usize = 150;
    let mut server = TestServer::start(&[]);
    let writer = client(&server).auto_forward(true).build().expect("writer");
    let readers = [
        ("long-poll", client(&server).build()),
        (
            "polling",
            client(&server)
                .polling_interval(Duration::from_millis(20))
                .build(),
        ),
        // Its timeout ends each empty long-poll just as the server answers it, so it keeps
        // abandoning requests and sending new ones that overlap them.
        (
            "reconnecting",
            client(&server)
                .long_poll(Duration::from_millis(50))
                .timeout_beyond_wait(Duration::from_millis(1))
                .build(),
        ),
    ];
    let mut streams: Vec<_> = readers
        .iter()
        .map(|(name, reader)| {
            (
                *name,
                reader.as_ref().expect("a reader").events(),
                Vec::new(),
            )
        })
        .collect();

    let mut published = Vec::new();
    let mut publish = |range: std::ops::Range<usize>| {
        for seq in range {
            let event = DomainEvent::new("agg", Note { writer: 0, seq });
            published.push(event.id);
            writer.publish(event).expect("publish");
        }
    };
    publish(0..EVENTS / 2);
    // Mid-stream: every reader has seen some events and waits for more...
    for (name, stream, seen) in &mut streams {
        seen.extend(collect_until(name, stream, |seen| seen.len() >= 10).await);
    }
    // ...and the writer's outbox is busy with the second half when the server dies.
    publish(EVENTS / 2..EVENTS);
    tokio::task::block_in_place(|| server.restart());

    for (name, stream, seen) in &mut streams {
        let missing = EVENTS - seen.len();
        seen.extend(collect_until(name, stream, |more| more.len() >= missing).await);
        let ids = assert_once_in_order(name, seen);
        assert_eq!(
            ids, published,
            "{name}: every event, once, in the order published"
        );
    }
    let stored = everything_stored(&server, EVENTS).await;
    assert_eq!(assert_once_in_order("the server", &stored), published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_keeps_events_while_the_server_is_down_and_stores_each_once() {
    let mut server = TestServer::start(&[]);
    let writer = client(&server).auto_forward(true).build().expect("writer");
    let reader = client(&server).build().expect("reader");
    let mut received = reader.events();
    let mut status = writer.status_changes();
    within("the writer to be live", async {
        while !matches!(status.next().await, Some(Status::Live { .. })) {}
    })
    .await;

    tokio::task::block_in_place(|| server.kill());
    let published: Vec<_> = (0..20)
        .map(|seq| {
            let event = DomainEvent::new("agg", Note { writer: 0, seq });
            writer
                .publish(event.clone())
                .expect("publish while the server is down");
            event.id
        })
        .collect();
    within("the writer to back off", async {
        loop {
            match status.next().await {
                Some(Status::BackingOff { error, .. }) if error.code() == "network_error" => break,
                Some(_) => {}
                None => panic!("status stream ended"),
            }
        }
    })
    .await;

    tokio::task::block_in_place(|| server.restart());
    let seen = collect_until("the outbox's events", &mut received, |seen| {
        seen.len() >= published.len()
    })
    .await;
    assert_eq!(assert_once_in_order("reader", &seen), published);
    let stored = everything_stored(&server, published.len()).await;
    assert_eq!(assert_once_in_order("the server", &stored), published);
    within("the writer to be live again", async {
        while !matches!(status.next().await, Some(Status::Live { .. })) {}
    })
    .await;
}

/// A new user's mistake: `serverUrl` with a path the server does not serve. The server
/// answers `404` to the polls and to the posts, and the client hears "wrong server URL":
/// the event is not dropped as refused, and the status says what to check. (That the
/// kept event is sent once the address answers is proven in the client's unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_url_with_a_wrong_path_keeps_the_event_and_says_what_to_check() {
    let server = TestServer::start(&[]);
    let misdirected = EventBusClient::builder(format!("{}/api", server.url()))
        .auto_forward(true)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .expect("a client");
    let mut errors = misdirected.errors();
    let mut status = misdirected.status_changes();
    misdirected
        .publish(DomainEvent::new("agg", Note { writer: 0, seq: 0 }))
        .expect("publish");

    let reported = within("several reports of the wrong server URL", async {
        let mut reported = Vec::new();
        while reported.len() < 6 {
            let error = errors.next().await.expect("the error stream goes on");
            assert!(
                !matches!(error, ClientError::Rejected { .. }),
                "the event was dropped as refused: {error}"
            );
            reported.push(error);
        }
        reported
    })
    .await;
    for error in &reported {
        assert_eq!(error.code(), "wrong_server_url", "{error}");
        assert!(
            error.to_string().contains("\"/api/"),
            "the message names the path that is not served: {error}"
        );
    }
    within("the status to show the wrong server URL", async {
        loop {
            match status.next().await {
                Some(Status::BackingOff { error, .. }) if error.code() == "wrong_server_url" => {
                    break
                }
                Some(_) => {}
                None => panic!("status stream ended"),
            }
        }
    })
    .await;
    misdirected.close().await;
    let http = reqwest::Client::new();
    let stored: Vec<StoredEvent> = http
        .get(format!("{}/events?after=0", server.url()))
        .send()
        .await
        .expect("a read")
        .json()
        .await
        .expect("events");
    assert!(stored.is_empty(), "nothing reached the store: {stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_events_reach_local_subscribers_once() {
    let server = TestServer::start(&[]);
    let me = client(&server).auto_forward(true).build().expect("client");
    let other = client(&server)
        .auto_forward(true)
        .build()
        .expect("other client");
    let mut typed = me.on::<Note>();
    let mut untyped = me.events();
    let mine: Vec<_> = (0..10)
        .map(|seq| {
            let event = DomainEvent::new("agg", Note { writer: 1, seq });
            me.publish(event.clone()).expect("publish");
            event.id
        })
        .collect();
    // Once the server has all of them, a marker from someone else comes after every echo.
    everything_stored(&server, mine.len()).await;
    let marker = DomainEvent::new("agg", Note { writer: 2, seq: 0 });
    other.publish(marker.clone()).expect("publish the marker");

    let seen = collect_until("the marker", &mut untyped, |seen| {
        seen.iter().any(|e| e.id == marker.id)
    })
    .await;
    let mut expected = mine.clone();
    expected.push(marker.id);
    assert_eq!(assert_once_in_order("untyped", &seen), expected);
    let typed_ids: Vec<_> = within(
        "typed events",
        (&mut typed).take(expected.len()).collect::<Vec<_>>(),
    )
    .await
    .iter()
    .map(|e| e.id)
    .collect();
    assert_eq!(typed_ids, expected);
    // Nothing more is queued: the echoes of the ten were dropped.
    assert!(
        untyped.next().now_or_never().is_none(),
        "an echo was dispatched"
    );
    assert!(
        typed.next().now_or_never().is_none(),
        "an echo was dispatched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_are_reported_with_the_event() {
    let server = TestServer::start(&[]);
    let reader = client(&server).build().expect("reader");
    let mut errors = reader.errors();
    let mut typed = reader.on::<Note>();
    let writer = client(&server).auto_forward(true).build().expect("writer");
    let mut unknown = DomainEvent::new("agg", Note { writer: 0, seq: 0 })
        .to_stored()
        .expect("stored");
    unknown.event_type = "SomethingElse".into();
    writer
        .publish_record(unknown.clone())
        .expect("publish an untyped event");
    writer
        .publish(DomainEvent::new("agg", Note { writer: 0, seq: 1 }))
        .expect("publish");

    let error = within("the decode error", errors.next())
        .await
        .expect("an error");
    assert_eq!(error.code(), "unknown_event_type");
    assert_eq!(error.event().map(|e| e.id), Some(unknown.id));
    let next = within("the next typed event", typed.next())
        .await
        .expect("a Note");
    assert_eq!(
        next.payload.seq, 1,
        "delivery went on past the unknown event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cursor_resets_delivery_and_the_app_is_told() {
    let server = TestServer::start(&["--retention", "1s", "--cleanup-interval", "100ms"]);
    let writer = client(&server).auto_forward(true).build().expect("writer");
    for seq in 0..5 {
        writer
            .publish(DomainEvent::new("agg", Note { writer: 0, seq }))
            .expect("publish");
    }
    // Until retention deleted them, position 0 is still a valid cursor.
    let http = reqwest::Client::new();
    within("retention to delete the events", async {
        loop {
            let answer = http
                .get(format!("{}/events?after=0", server.url()))
                .send()
                .await;
            if answer.is_ok_and(|a| a.status() == reqwest::StatusCode::GONE) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    let late = client(&server).build().expect("a client that starts at 0");
    let mut errors = late.errors();
    let mut events = late.events();
    let error = within("the reset", errors.next()).await.expect("an error");
    let ClientError::CursorReset {
        code,
        from,
        resume_after,
    } = error
    else {
        panic!("expected a cursor reset, got {error:?}");
    };
    assert_eq!((code.as_str(), from), ("cursor_expired", 0));
    assert!(
        resume_after >= 1,
        "resumes after the deleted events, got {resume_after}"
    );

    let after_reset = DomainEvent::new("agg", Note { writer: 0, seq: 99 });
    writer.publish(after_reset.clone()).expect("publish");
    let seen = collect_until("the event after the reset", &mut events, |seen| {
        seen.iter().any(|e| e.id == after_reset.id)
    })
    .await;
    assert_once_in_order("after the reset", &seen);
    assert!(
        seen.iter().all(|e| e.position > Some(resume_after)),
        "only events after {resume_after}: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_cursor_resumes_with_nothing_lost_and_nothing_repeated() {
    let server = TestServer::start(&[]);
    let store = MemoryCursorStore::new();
    let writer = client(&server).auto_forward(true).build().expect("writer");
    let publish = |range: std::ops::Range<usize>| -> Vec<Uuid> {
        range
            .map(|seq| {
                let event = DomainEvent::new("agg", Note { writer: 0, seq });
                writer.publish(event.clone()).expect("publish");
                event.id
            })
            .collect()
    };
    let mut expected = publish(0..10);

    let first = client(&server)
        .cursor_store(store.clone())
        .build()
        .expect("first run");
    let mut events = first.events();
    let mut seen = collect_until("the first run", &mut events, |seen| seen.len() >= 10).await;
    first.close().await; // a page reload

    expected.extend(publish(10..20));
    let second = client(&server)
        .cursor_store(store)
        .build()
        .expect("second run");
    let mut events = second.events();
    seen.extend(collect_until("the second run", &mut events, |seen| seen.len() >= 10).await);
    assert_eq!(assert_once_in_order("both runs", &seen), expected);
}
