//! The rollout store's contract (`rollout_store/contract.rs`) against the memory store and
//! against PostgreSQL (`BUNTING_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! each test creates a database of its own and drops it when it ends).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bunting_engine::CompileOptions;
use bunting_stores::rollouts::{
    Lease, MemoryRolloutStore, PgLease, PostgresRolloutStore, RolloutStore,
};
use bunting_stores::{PostgresSettings, PostgresStore};

#[path = "rollout_store/contract.rs"]
mod contract;
// Shared with the workspace's tests; only part of it is used here.
#[allow(dead_code)]
#[path = "../../tests/common/postgres.rs"]
mod postgres;

use postgres::TestDb;

async fn flag_store(db: &TestDb) -> PostgresStore {
    PostgresStore::connect_with(
        db.options.clone(),
        PostgresSettings {
            compile: CompileOptions::default(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(2),
        },
    )
    .await
    .unwrap()
}

async fn on_postgres(db: &TestDb) -> Arc<dyn RolloutStore> {
    Arc::new(PostgresRolloutStore::new(&flag_store(db).await))
}

fn in_memory() -> Arc<dyn RolloutStore> {
    Arc::new(MemoryRolloutStore::new())
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::contract::$name(super::in_memory()).await;
                }
            )*
        }
        mod postgresql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::create().await;
                    super::contract::$name(super::on_postgres(&db).await).await;
                }
            )*
        }
    };
}

contract!(
    a_rollout_reads_back_as_written_with_its_history,
    one_active_rollout_per_flag_and_ids_are_unique,
    a_stale_version_is_refused_and_nothing_is_recorded,
    of_two_concurrent_transitions_at_one_version_exactly_one_wins,
    a_scheduled_change_leaves_pending_once,
    of_concurrent_claims_exactly_one_fires,
);

/// One holder at a time; the lease passes on when the holder's session ends, as it does when its
/// node dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_has_one_holder_and_passes_on_when_its_session_ends() {
    let db = TestDb::create().await;
    let flags = flag_store(&db).await;
    // A key of this test's own: other tests' leases on the same server do not interfere.
    let key = i64::from(std::process::id()) << 20 | 0x1ea5e;
    let mut first = PgLease::with_key(&flags, key);
    let mut second = PgLease::with_key(&flags, key);
    assert!(first.hold().await);
    assert!(!second.hold().await);
    assert!(first.hold().await, "a holder keeps holding");
    // The holder's connection is killed behind its back (as when its node dies).
    let mut raw: sqlx::PgConnection = sqlx::ConnectOptions::connect(&db.options).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
          WHERE locktype = 'advisory' AND objid = ($1::bigint & 4294967295)::oid AND granted",
    )
    .bind(key)
    .fetch_all(&mut raw)
    .await
    .unwrap();
    assert_eq!(killed, [(true,)]);
    let mut taken = false;
    for _ in 0..50 {
        if second.hold().await {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "the lease never passed on");
    assert!(
        !first.hold().await,
        "the old holder notices it lost the lease"
    );
    second.release().await;
    assert!(first.hold().await);
}
