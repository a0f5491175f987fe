//! The store conformance suite: what every `EventStore` backend must do. Each function
//! takes a fresh, empty store. `conformance_suite!` turns them into one test each.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use distributed_events_server::store::{event_size, Appended, Selection, SharedStore};
use distributed_events_server::StoredEvent;
use uuid::Uuid;

/// An event with a fresh id, `n` in its payload and the given tenant.
pub fn event(n: usize, tenant: Option<&str>) -> StoredEvent {
    StoredEvent {
        id: Uuid::now_v7(),
        created_at: Utc
            .timestamp_micros(1_700_000_000_000_000 + n as i64)
            .unwrap(),
        aggregate_id: format!("aggregate-{}", n % 7),
        event_type: "Numbered".into(),
        event_json: format!("{{\"n\":{n}}}"),
        user_id: Some(format!("user-{n}")),
        tenant_id: tenant.map(str::to_owned),
        session_id: None,
        context: Default::default(),
        position: None,
    }
}

fn n_of(event: &StoredEvent) -> usize {
    let value: serde_json::Value = serde_json::from_str(&event.event_json).unwrap();
    value["n"].as_u64().unwrap() as usize
}

fn new_position(appended: &Appended) -> u64 {
    match appended {
        Appended::New(event) => event.position.expect("a new event has a position"),
        Appended::Existing(event) => panic!("expected a new event, got existing {}", event.id),
    }
}

async fn read_all(store: &SharedStore) -> Vec<StoredEvent> {
    store
        .read_range(
            0,
            u64::MAX,
            usize::MAX >> 1,
            usize::MAX,
            &Selection::default(),
        )
        .await
        .unwrap()
}

pub async fn appends_get_increasing_positions_and_read_back_equal(store: SharedStore) {
    let mut written = Vec::new();
    for n in 0..10 {
        let mut e = event(n, Some("t1"));
        if n % 2 == 0 {
            e.context
                .insert("roles".into(), serde_json::json!(["admin", n]));
            e.session_id = Some(format!("s{n}"));
        }
        let appended = store.append(e.clone()).await.unwrap();
        e.position = Some(new_position(&appended));
        written.push(e);
    }
    let positions: Vec<u64> = written.iter().map(|e| e.position.unwrap()).collect();
    assert!(
        positions[0] > 0,
        "positions start above 0 so that after=0 reads everything"
    );
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions strictly increase: {positions:?}"
    );
    assert_eq!(
        read_all(&store).await,
        written,
        "events read back field for field"
    );
    assert_eq!(store.head().await.unwrap(), *positions.last().unwrap());
    assert_eq!(
        store.get(written[3].id).await.unwrap().as_ref(),
        Some(&written[3])
    );
    assert_eq!(store.get(Uuid::now_v7()).await.unwrap(), None);
}

pub async fn read_range_pages_without_gaps_or_repeats(store: SharedStore) {
    let batch: Vec<_> = (0..25).map(|n| event(n, None)).collect();
    store.append_batch(batch).await.unwrap();
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = store
            .read_range(after, u64::MAX, 7, usize::MAX, &Selection::default())
            .await
            .unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = last.position.unwrap();
        seen.extend(page.iter().map(n_of));
    }
    assert_eq!(seen, (0..25).collect::<Vec<_>>());
}

pub async fn append_is_idempotent_by_id(store: SharedStore) {
    let original = event(1, Some("t1"));
    let first = new_position(&store.append(original.clone()).await.unwrap());
    let mut changed = original.clone();
    changed.event_json = "{\"n\":999}".into();
    match store.append(changed).await.unwrap() {
        Appended::Existing(existing) => {
            assert_eq!(existing.position, Some(first));
            assert_eq!(
                existing.event_json, original.event_json,
                "an existing event is never overwritten"
            );
        }
        Appended::New(_) => panic!("the same id was stored twice"),
    }
    // The same id twice inside one batch: one event.
    let twice = event(2, None);
    let results = store
        .append_batch(vec![twice.clone(), twice])
        .await
        .unwrap();
    assert!(matches!(results[0], Appended::New(_)));
    assert!(matches!(results[1], Appended::Existing(_)));
    assert_eq!(read_all(&store).await.len(), 2);

    // Twice in one batch with different content: the first is stored, and the second is
    // answered with the first (so that the server can tell it is a conflict).
    let first = event(3, None);
    let mut second = first.clone();
    second.event_json = "{\"n\":-3}".into();
    let results = store
        .append_batch(vec![first.clone(), second])
        .await
        .unwrap();
    match &results[1] {
        Appended::Existing(existing) => assert_eq!(existing.event_json, first.event_json),
        Appended::New(_) => panic!("one id stored twice in a batch"),
    }
    assert_eq!(read_all(&store).await.len(), 3);
}

pub async fn concurrent_appends_lose_and_repeat_nothing(store: SharedStore) {
    const WRITERS: usize = 16;
    const EACH: usize = 40;
    let shared_id_event = event(100_000, None);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let duplicate = shared_id_event.clone();
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..EACH {
                let appended = store.append(event(w * EACH + i, None)).await.unwrap();
                positions.push(new_position(&appended));
                if i == EACH / 2 {
                    // Every writer also posts one shared id: it must be stored once.
                    store.append(duplicate.clone()).await.unwrap();
                }
            }
            positions
        }));
    }
    let mut acknowledged = HashSet::new();
    for task in tasks {
        for position in task.await.unwrap() {
            assert!(
                acknowledged.insert(position),
                "position {position} given twice"
            );
        }
    }
    let all = read_all(&store).await;
    assert_eq!(
        all.len(),
        WRITERS * EACH + 1,
        "every acknowledged event, and the shared id once"
    );
    let positions: Vec<u64> = all.iter().map(|e| e.position.unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert!(acknowledged.iter().all(|p| positions.contains(p)));
    let ids: HashSet<Uuid> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), all.len());
}

pub async fn read_after_filters_before_the_limit(store: SharedStore) {
    // Tenants alternate a, b, b, a, b, b, ...: a third of the events are tenant a's.
    let events: Vec<_> = (0..60)
        .map(|n| event(n, Some(if n % 3 == 0 { "a" } else { "b" })))
        .collect();
    store.append_batch(events).await.unwrap();
    let only_a = |e: &StoredEvent| e.tenant_id.as_deref() == Some("a");
    let page = store
        .read_after(0, 5, usize::MAX, &Selection::default(), &only_a)
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(n_of).collect::<Vec<_>>(),
        [0, 3, 6, 9, 12],
        "a full page of visible events"
    );
    assert_eq!(page.cursor, page.events.last().unwrap().position.unwrap());

    // Continuing from the cursor gives the rest, and the last page's cursor lies past
    // the trailing invisible events, so a poller does not re-scan them.
    let rest = store
        .read_after(page.cursor, 100, usize::MAX, &Selection::default(), &only_a)
        .await
        .unwrap();
    assert_eq!(rest.events.len(), 15);
    assert_eq!(rest.cursor, store.head().await.unwrap());

    let nobody = |_: &StoredEvent| false;
    let empty = store
        .read_after(0, 2, usize::MAX, &Selection::default(), &nobody)
        .await
        .unwrap();
    assert!(empty.events.is_empty());
    assert!(empty.cursor > 0, "the cursor moves past what was examined");
}

pub async fn read_after_filters_by_type_and_aggregate_in_the_query(store: SharedStore) {
    // Types cycle A, B, C, O'Brien "x"; aggregates cycle aggregate-0..6; tenants a, b.
    let types = ["A", "B", "C", "O'Brien \"x\" %_"];
    let events: Vec<_> = (0..80)
        .map(|n| {
            let mut e = event(n, Some(if n % 2 == 0 { "a" } else { "b" }));
            e.event_type = types[n % 4].into();
            e
        })
        .collect();
    store.append_batch(events).await.unwrap();
    let head = store.head().await.unwrap();
    let strings = |values: &[&str]| values.iter().map(|v| v.to_string()).collect::<Vec<_>>();
    let all = |_: &StoredEvent| true;

    // Pages of a filtered read are full, in order, and together hold every match once;
    // the last one's cursor is the head, past the events the filter left out.
    let cases: [(Option<&str>, Vec<String>, Vec<String>); 6] = [
        (None, strings(&["B"]), vec![]),
        (None, strings(&["A", types[3]]), vec![]),
        (None, vec![], strings(&["aggregate-3"])),
        (Some("a"), strings(&["A", "C"]), vec![]),
        (
            Some("b"),
            strings(&["B", types[3]]),
            strings(&["aggregate-1", "aggregate-5"]),
        ),
        (None, strings(&["A"]), strings(&["aggregate-1"])),
    ];
    for (tenant, event_types, aggregate_ids) in cases {
        let selection = Selection {
            tenant,
            event_types: &event_types,
            aggregate_ids: &aggregate_ids,
        };
        let expected: Vec<usize> = (0..80)
            .filter(|&n| {
                tenant.is_none_or(|t| t == if n % 2 == 0 { "a" } else { "b" })
                    && (event_types.is_empty() || event_types.iter().any(|t| t == types[n % 4]))
                    && (aggregate_ids.is_empty()
                        || aggregate_ids.contains(&format!("aggregate-{}", n % 7)))
            })
            .collect();
        let case = format!("{tenant:?} {event_types:?} {aggregate_ids:?}");
        let mut seen = Vec::new();
        let mut cursor = 0;
        loop {
            let page = store
                .read_after(cursor, 3, usize::MAX, &selection, &all)
                .await
                .unwrap();
            let remaining = expected.len() - seen.len();
            assert_eq!(page.events.len(), remaining.min(3), "a full page: {case}");
            assert!(page.cursor >= cursor, "{case}");
            seen.extend(page.events.iter().map(n_of));
            cursor = page.cursor;
            if page.events.len() < 3 {
                break;
            }
        }
        assert_eq!(seen, expected, "every match once, in order: {case}");
        assert_eq!(
            cursor, head,
            "the cursor moves past the skipped events: {case}"
        );
    }

    // Nothing matches: an empty page whose cursor is the head, so the events are never
    // read again.
    let nothing = strings(&["Unknown"]);
    let selection = Selection {
        event_types: &nothing,
        ..Selection::default()
    };
    let page = store
        .read_after(0, 10, usize::MAX, &selection, &all)
        .await
        .unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.cursor, head);

    // The app's own predicate still runs on what the query selected.
    let a_types = strings(&["A"]);
    let selection = Selection {
        event_types: &a_types,
        ..Selection::default()
    };
    let odd_n = |e: &StoredEvent| n_of(e) % 8 == 4;
    let page = store
        .read_after(0, 100, usize::MAX, &selection, &odd_n)
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(n_of).collect::<Vec<_>>(),
        (0..80).filter(|n| n % 8 == 4).collect::<Vec<_>>()
    );
    assert_eq!(page.cursor, head);

    // `through` bounds a range read: the store is fresh, its positions are 1 to 80.
    let first = store
        .read_range(0, 5, 100, usize::MAX, &Selection::default())
        .await
        .unwrap();
    assert_eq!(
        first
            .iter()
            .map(|e| e.position.unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

pub async fn pages_are_capped_in_bytes_without_gaps_or_repeats(store: SharedStore) {
    // Sizes vary from a few bytes to 12 KB; every fourth event is invisible.
    let events: Vec<_> = (0..40)
        .map(|n| {
            let mut e = event(n, None);
            e.event_json = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat((n % 5) * 3000));
            e
        })
        .collect();
    store.append_batch(events).await.unwrap();
    let visible = |e: &StoredEvent| n_of(e) % 4 != 3;
    let max_bytes = 8000;

    let batch = store
        .read_range(0, u64::MAX, 100, max_bytes, &Selection::default())
        .await
        .unwrap();
    let sizes: Vec<usize> = batch.iter().map(event_size).collect();
    let before_last: usize = sizes[..sizes.len() - 1].iter().sum();
    assert!(
        before_last < max_bytes && sizes.iter().sum::<usize>() >= max_bytes,
        "read_range stops once its events reach the limit: sizes {sizes:?}"
    );

    let mut cursor = 0;
    let mut seen = Vec::new();
    let (mut pages, mut full_pages) = (0, 0);
    loop {
        let page = store
            .read_after(cursor, 100, max_bytes, &Selection::default(), &visible)
            .await
            .unwrap();
        let Some(last) = page.events.last() else {
            break;
        };
        let bytes: usize = page.events.iter().map(event_size).sum();
        assert!(
            bytes <= max_bytes || page.events.len() == 1,
            "page of {} events holds {bytes} bytes, over the limit of {max_bytes}",
            page.events.len()
        );
        assert!(
            page.cursor >= last.position.unwrap(),
            "the cursor is at or past the last event"
        );
        if page.full {
            // The server's tail cuts the same way: a full page is one page, cacheable.
            assert_eq!(
                page.cursor,
                last.position.unwrap(),
                "a full page ends at its last event, not past invisible events after it"
            );
            full_pages += 1;
        }
        seen.extend(page.events.iter().map(n_of));
        cursor = page.cursor;
        pages += 1;
        assert!(pages < 100, "paging does not end: {seen:?}");
    }
    let expected: Vec<usize> = (0..40).filter(|n| n % 4 != 3).collect();
    assert_eq!(seen, expected, "every visible event once, in order");
    assert!(
        pages > 5 && full_pages + 1 >= pages,
        "the byte limit split the read into full pages ({full_pages} of {pages}), but for the last"
    );

    let huge = store
        .read_after(0, 100, 1, &Selection::default(), &visible)
        .await
        .unwrap();
    assert_eq!(
        huge.events.iter().map(n_of).collect::<Vec<_>>(),
        [0],
        "a page carries one event even when that is over the limit"
    );
    assert_eq!(huge.cursor, huge.events[0].position.unwrap());
    assert!(huge.full);
    let by_limit = store
        .read_after(0, 2, usize::MAX, &Selection::default(), &visible)
        .await
        .unwrap();
    assert!(by_limit.full && by_limit.events.len() == 2);
    let rest = store
        .read_after(30, 100, usize::MAX, &Selection::default(), &visible)
        .await
        .unwrap();
    assert!(
        !rest.full && !rest.events.is_empty(),
        "a page short of both limits may still grow"
    );
}

pub async fn tenant_reads_see_only_that_tenant_in_order(store: SharedStore) {
    let tenants = [Some("a"), Some("b"), None, Some("b"), Some("c")];
    let events: Vec<_> = (0..50)
        .map(|n| event(n, tenants[n % tenants.len()]))
        .collect();
    store.append_batch(events).await.unwrap();

    for tenant in ["a", "b", "c"] {
        let mut after = 0;
        let mut seen = Vec::new();
        // Small pages: paging by the last position must neither skip nor repeat.
        loop {
            let page = store
                .read_range(
                    after,
                    u64::MAX,
                    3,
                    usize::MAX,
                    &Selection::tenant(Some(tenant)),
                )
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.position.unwrap();
            assert!(page.iter().all(|e| e.tenant_id.as_deref() == Some(tenant)));
            seen.extend(page.iter().map(n_of));
        }
        let expected: Vec<usize> = (0..50)
            .filter(|n| tenants[n % tenants.len()] == Some(tenant))
            .collect();
        assert_eq!(seen, expected, "tenant {tenant}");
    }
    // The page is full of the tenant's events even though most events are others'.
    let page = store
        .read_after(0, 5, usize::MAX, &Selection::tenant(Some("a")), &|_| true)
        .await
        .unwrap();
    assert_eq!(
        page.events.iter().map(n_of).collect::<Vec<_>>(),
        [0, 5, 10, 15, 20]
    );
    let since = Utc.timestamp_micros(1_700_000_000_000_000).unwrap();
    let c = store.read_since(since, 100, Some("c")).await.unwrap();
    assert_eq!(c.len(), 10);
    assert!(c.iter().all(|e| e.tenant_id.as_deref() == Some("c")));
    assert!(store
        .read_range(
            0,
            u64::MAX,
            100,
            usize::MAX,
            &Selection::tenant(Some("nobody"))
        )
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .read_range(0, u64::MAX, 100, usize::MAX, &Selection::default())
            .await
            .unwrap()
            .len(),
        50
    );
}

pub async fn read_since_uses_created_at_in_position_order(store: SharedStore) {
    // Out-of-order creation times: position order is what counts.
    let times = [50, 10, 40, 20, 30];
    let events: Vec<_> = times
        .iter()
        .enumerate()
        .map(|(n, &t)| StoredEvent {
            created_at: Utc.timestamp_opt(1_700_000_000 + t, 0).unwrap(),
            ..event(n, None)
        })
        .collect();
    store.append_batch(events).await.unwrap();
    let since = Utc.timestamp_opt(1_700_000_030, 0).unwrap();
    let found = store.read_since(since, 100, None).await.unwrap();
    assert_eq!(
        found.iter().map(n_of).collect::<Vec<_>>(),
        [0, 2, 4],
        "createdAt >= since, in position order"
    );
    assert_eq!(store.read_since(since, 2, None).await.unwrap().len(), 2);
}

pub async fn deleting_old_events_removes_a_prefix_and_never_reuses_positions(store: SharedStore) {
    let early: Vec<_> = (0..5).map(|n| event(n, None)).collect();
    store.append_batch(early).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff: DateTime<Utc> = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = store.append(event(5, None)).await.unwrap();
    let head_before = store.head().await.unwrap();

    assert_eq!(store.pruned_through().await.unwrap(), 0);
    assert_eq!(store.delete_older_than(cutoff).await.unwrap(), 5);
    let left = read_all(&store).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, late.event().id);
    let pruned = store.pruned_through().await.unwrap();
    assert_eq!(
        pruned,
        late.event().position.unwrap() - 1,
        "pruned through the last deleted position"
    );
    assert_eq!(
        store.delete_older_than(cutoff).await.unwrap(),
        0,
        "cleanup is idempotent"
    );

    // Delete everything, then append: the new position continues, never reused.
    store
        .delete_older_than(Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert!(read_all(&store).await.is_empty());
    let next = new_position(&store.append(event(6, None)).await.unwrap());
    assert!(
        next > head_before,
        "position {next} reused (head was {head_before})"
    );
    assert!(store.pruned_through().await.unwrap() >= head_before);
}

pub async fn watch_head_follows_commits(store: SharedStore) {
    let mut head = store.watch_head();
    let start = *head.borrow_and_update();
    let store2 = store.clone();
    let waiter = tokio::spawn(async move {
        let mut head = store2.watch_head();
        let seen = *head.wait_for(|&h| h > start).await.unwrap();
        seen
    });
    tokio::task::yield_now().await;
    let position = new_position(&store.append(event(1, None)).await.unwrap());
    let seen = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("a waiter on watch_head wakes after a commit")
        .unwrap();
    assert!(seen >= position);
    assert!(*head.borrow_and_update() >= position);
}

pub async fn closed_store_refuses_work(store: SharedStore) {
    store.append(event(1, None)).await.unwrap();
    store.close().await;
    assert!(store.append(event(2, None)).await.is_err());
}

/// One `#[tokio::test]` per property, for a backend made by `$make` (an async
/// expression giving `Option<SharedStore>`; `None` skips, after the maker said why).
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            $crate::conformance_suite!(@tests $make;
                appends_get_increasing_positions_and_read_back_equal,
                read_range_pages_without_gaps_or_repeats,
                append_is_idempotent_by_id,
                concurrent_appends_lose_and_repeat_nothing,
                read_after_filters_before_the_limit,
                read_after_filters_by_type_and_aggregate_in_the_query,
                pages_are_capped_in_bytes_without_gaps_or_repeats,
                read_since_uses_created_at_in_position_order,
                tenant_reads_see_only_that_tenant_in_order,
                deleting_old_events_removes_a_prefix_and_never_reuses_positions,
                watch_head_follows_commits,
                closed_store_refuses_work,
            );
        }
    };
    (@tests $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                if let Some(store) = $make {
                    common::conformance::$test(store).await;
                }
            }
        )*
    };
}
