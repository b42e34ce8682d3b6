//! The rollout store's contract (`rollout_store/contract.rs`) against the memory store and
//! against PostgreSQL (`BUNTING_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`;
//! each test creates a database of its own and drops it when it ends).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bunting_engine::CompileOptions;
use bunting_stores::rollouts::{MemoryRolloutStore, PostgresRolloutStore, RolloutStore};
use bunting_stores::{PostgresSettings, PostgresStore};

#[path = "rollout_store/contract.rs"]
mod contract;
// Shared with the workspace's tests; only part of it is used here.
#[allow(dead_code)]
#[path = "../../tests/common/postgres.rs"]
mod postgres;

use postgres::TestDb;

async fn on_postgres(db: &TestDb) -> Arc<dyn RolloutStore> {
    let flags = PostgresStore::connect_with(
        db.options.clone(),
        PostgresSettings {
            compile: CompileOptions::default(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(2),
        },
    )
    .await
    .unwrap();
    Arc::new(PostgresRolloutStore::new(&flags))
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
