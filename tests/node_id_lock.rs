//! `NodeIdLock` against a real PostgreSQL (`BUNTING_TEST_DATABASE_URL`, a database per test):
//! one holder per node id and database, the id free again once its holder is gone, and a holder
//! whose session was cut told it lost the id when another process took it meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bunting_stores::postgres::{NodeIdLock, NodeLockError, lock_key};
use sqlx::{Connection, PgConnection};

mod common;

use common::postgres::TestDb;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the lock, retrying while the server has not yet noticed that the last holder is gone.
async fn take_eventually(url: &str, id: &str) -> NodeIdLock {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match NodeIdLock::take(url, id, TIMEOUT).await {
            Ok(lock) => return lock,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the id was never free: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_per_id_and_database_and_a_cut_holder_learns_it_lost_the_id() {
    let db = TestDb::create().await;
    let first = NodeIdLock::take(&db.url, "node-1", TIMEOUT).await.unwrap();

    // The same id is refused, naming it and the holder; another id is not.
    let err = NodeIdLock::take(&db.url, "node-1", TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeLockError::Held { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("\"node-1\"") && text.contains("bunting node node-1"),
        "{text}"
    );
    let other = NodeIdLock::take(&db.url, "node-2", TIMEOUT).await.unwrap();

    // Another database is another cluster: the same id is free there.
    let elsewhere = TestDb::create().await;
    let there = NodeIdLock::take(&elsewhere.url, "node-1", TIMEOUT)
        .await
        .unwrap();
    drop(there);

    // Dropping the holder frees the id.
    drop(first);
    let second = take_eventually(&db.url, "node-1").await;

    // The holder's session is cut (as a PostgreSQL restart would) and another session takes
    // the id at once, before the holder's keeper (checking every 2 s) gets it back: the holder
    // is told it lost it. (pg_terminate_backend with a timeout waits for the backend to exit,
    // so the lock is free when it returns.)
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
          WHERE application_name = 'bunting node node-1' AND datname = current_database()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(cut, [true]);
    let usurped: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key("node-1"))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(
        usurped,
        "the id was not free once its holder's session ended"
    );
    let lost = tokio::time::timeout(Duration::from_secs(15), second.lost())
        .await
        .expect("the cut holder never noticed it lost the id");
    assert!(
        matches!(lost, NodeLockError::Held { ref node_id, .. } if node_id == "node-1"),
        "{lost}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), other.lost())
            .await
            .is_err()
    );
    admin.close().await.unwrap();
}
