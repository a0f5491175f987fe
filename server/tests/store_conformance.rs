//! Runs the conformance suite (tests/common/conformance.rs) against every backend.

mod common;

use std::sync::Arc;

use common::databases;
use distributed_events_server::store::{
    MemoryStore, MySqlStore, PostgresStore, SharedStore, SqliteStore,
};

async fn memory() -> Option<SharedStore> {
    Some(Arc::new(MemoryStore::new()))
}

async fn sqlite() -> Option<SharedStore> {
    // The directory is leaked so that the file outlives the store; it is removed with
    // the system's temp files.
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("events.db");
    Some(Arc::new(
        SqliteStore::open(path.to_str().unwrap()).await.unwrap(),
    ))
}

/// A PostgreSQL store in a schema of its own, so that the tests run in parallel; `None`
/// (skipped, and said so) when `DATABASE_URL_TEST` is not set. A database that is set but
/// unreachable fails the test.
async fn postgres() -> Option<SharedStore> {
    let url = postgres_url().await?;
    Some(Arc::new(
        PostgresStore::open(&url)
            .await
            .expect("open the PostgreSQL store"),
    ))
}

/// `DATABASE_URL_TEST` with a fresh schema of its own, or `None` after saying that the
/// test is skipped.
async fn postgres_url() -> Option<String> {
    let url = databases::postgres_url()?;
    Some(databases::fresh_postgres_schema(&url).await)
}

/// A MySQL store in a database of its own; `None` (skipped, and said so) when
/// `MYSQL_URL_TEST` is not set. A server that is set but unreachable fails the test.
async fn mysql() -> Option<SharedStore> {
    let url = mysql_url().await?;
    Some(Arc::new(
        MySqlStore::open(&url).await.expect("open the MySQL store"),
    ))
}

/// `MYSQL_URL_TEST` with a fresh database of its own, or `None` after saying that the
/// test is skipped.
async fn mysql_url() -> Option<String> {
    let url = databases::mysql_url()?;
    Some(databases::fresh_mysql_database(&url).await)
}

conformance_suite!(memory_store, memory().await);
conformance_suite!(sqlite_store, sqlite().await);
conformance_suite!(postgres_store, postgres().await);
conformance_suite!(mysql_store, mysql().await);

/// What only the PostgreSQL backend has to show: several stores (instances) on one
/// database, and input that PostgreSQL's `text` refuses.
mod postgres_only {
    use std::time::{Duration, Instant};

    use distributed_events_server::store::{Appended, EventStore, PostgresStore, StoreError};

    use super::common::conformance::event;
    use super::postgres_url;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_on_one_database_share_positions_ids_and_wake_ups() {
        let Some(url) = postgres_url().await else {
            return;
        };
        // Opened at once: their migrations race, as instances starting together do.
        let (a, b) = tokio::join!(PostgresStore::open(&url), PostgresStore::open(&url));
        let (a, b) = (a.expect("open store a"), b.expect("open store b"));
        let mut b_head = b.watch_head();

        let started = Instant::now();
        let appended = a.append(event(1, None)).await.expect("append on a");
        let Appended::New(stored) = &appended else {
            panic!("a fresh event")
        };
        let position = stored.position.expect("a position");
        let seen = tokio::time::timeout(
            Duration::from_secs(5),
            b_head.wait_for(|&head| head >= position),
        )
        .await
        .expect("b learns of a's commit by NOTIFY")
        .map(|head| *head)
        .expect("b is open");
        eprintln!(
            "store b woke {:?} after store a began its append",
            started.elapsed()
        );
        assert_eq!(seen, position);
        assert_eq!(
            b.read_range(
                0,
                u64::MAX,
                10,
                usize::MAX,
                &distributed_events_server::store::Selection::default()
            )
            .await
            .expect("read on b"),
            vec![stored.clone()]
        );
        assert_eq!(b.head().await.expect("head on b"), position);

        // The id is known to b as well; b's next position follows a's.
        match b.append(stored.clone()).await.expect("append on b") {
            Appended::Existing(existing) => assert_eq!(&existing, stored),
            Appended::New(_) => panic!("b stored a's event again"),
        }
        let next = b.append(event(2, None)).await.expect("append on b");
        assert_eq!(next.event().position, Some(position + 1));
        a.close().await;
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_racing_with_the_same_ids_store_each_once() {
        let Some(url) = postgres_url().await else {
            return;
        };
        let (a, b) = tokio::join!(PostgresStore::open(&url), PostgresStore::open(&url));
        let (a, b) = (a.expect("open store a"), b.expect("open store b"));
        const ROUNDS: usize = 50;
        for round in 0..ROUNDS {
            // The same ten fresh ids, appended by both stores at the same moment.
            let batch: Vec<_> = (0..10).map(|n| event(round * 10 + n, None)).collect();
            let (from_a, from_b) =
                tokio::join!(a.append_batch(batch.clone()), b.append_batch(batch));
            let (from_a, from_b) = (from_a.expect("append on a"), from_b.expect("append on b"));
            for (x, y) in from_a.iter().zip(&from_b) {
                assert_eq!(x.event(), y.event(), "both report the one stored event");
                let new = [x, y]
                    .iter()
                    .filter(|r| matches!(r, Appended::New(_)))
                    .count();
                assert_eq!(new, 1, "exactly one store stored {}", x.event().id);
            }
        }
        let all = a
            .read_range(
                0,
                u64::MAX,
                10 * ROUNDS + 1,
                usize::MAX,
                &distributed_events_server::store::Selection::default(),
            )
            .await
            .expect("read");
        assert_eq!(all.len(), 10 * ROUNDS, "each id once");
        let unused = a.head().await.expect("head") - all.len() as u64;
        eprintln!("{unused} positions left unused by lost races (the lookup before the lock catches the rest)");
        a.close().await;
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_postgres_cannot_store_fails_alone() {
        let Some(url) = postgres_url().await else {
            return;
        };
        let store = PostgresStore::open(&url).await.expect("open the store");
        let mut bad = event(0, None);
        bad.aggregate_id = "nul\0inside".into();
        // Posted together with good events, so that they share a group commit.
        let good = futures::future::join_all((1..=20).map(|n| store.append(event(n, None))));
        let (bad, good) = tokio::join!(store.append(bad), good);
        let error = bad.expect_err("PostgreSQL text cannot hold U+0000");
        assert!(
            error.to_string().contains("U+0000"),
            "the error says why: {error}"
        );
        // Not `Corrupt` or `Unavailable`: nothing is wrong with the store, and a retry
        // would fail the same way.
        assert!(
            matches!(error, StoreError::Unstorable(_)),
            "an event the store cannot hold is its own kind of error: {error:?}"
        );
        assert!(
            good.iter().all(Result::is_ok),
            "the good events of the group are stored: {good:?}"
        );
        assert_eq!(
            store
                .read_range(
                    0,
                    u64::MAX,
                    100,
                    usize::MAX,
                    &distributed_events_server::store::Selection::default()
                )
                .await
                .expect("read")
                .len(),
            20
        );
        store.close().await;
    }
}

/// What only the MySQL backend has to show: one instance per database, and tenant ids
/// compared byte for byte despite MySQL's habit of comparing text without case or
/// trailing spaces.
mod mysql_only {
    use distributed_events_server::store::{EventStore, MySqlStore, StoreError};

    use super::common::conformance::event;
    use super::mysql_url;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_store_on_one_database_is_refused_until_the_first_closes() {
        let Some(url) = mysql_url().await else {
            return;
        };
        let first = MySqlStore::open(&url).await.expect("open the first store");
        match MySqlStore::open(&url).await {
            Err(StoreError::Unavailable(message)) => assert!(
                message.contains("another server"),
                "the refusal says why: {message}"
            ),
            other => panic!("a second store on the database was not refused: {other:?}"),
        }
        first.append(event(1, None)).await.expect("append");
        first.close().await;
        let second = MySqlStore::open(&url)
            .await
            .expect("the database is free once the first store closed");
        assert_eq!(second.head().await.expect("head"), 1);
        second.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tenants_that_differ_only_in_case_or_trailing_spaces_stay_apart() {
        let Some(url) = mysql_url().await else {
            return;
        };
        let store = MySqlStore::open(&url).await.expect("open the store");
        let tenants = ["acme", "ACME", "acme "];
        for (n, tenant) in tenants.iter().enumerate() {
            store.append(event(n, Some(tenant))).await.expect("append");
        }
        for tenant in tenants {
            let seen = store
                .read_range(
                    0,
                    u64::MAX,
                    10,
                    usize::MAX,
                    &distributed_events_server::store::Selection::tenant(Some(tenant)),
                )
                .await
                .expect("read");
            let owners: Vec<_> = seen.iter().map(|e| e.tenant_id.as_deref()).collect();
            assert_eq!(
                owners,
                [Some(tenant)],
                "tenant {tenant:?} sees only its own"
            );
        }
        store.close().await;
    }
}
