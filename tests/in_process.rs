//! The light tier: nodes in the test's own process on in-memory stores
//! (`bunting_stores::memory::MemoryAdminStore`, `bunting_stores::shared_tier::MemoryTier`), no
//! PostgreSQL, Redis or child process. First the memory store is held to the contract PostgreSQL's
//! keeps (`common::admin_contract`, also run by `tests/postgres_store.rs`); then the services run
//! on it: the Admin API's refusals as a table, a write reaching evaluation through the feed, and
//! two nodes sharing one store and one tier, with the tier taken away and brought back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bunting_engine::CompileOptions;
use bunting_node::config::Config;
use bunting_node::server::Stores;
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::flagd::evaluation::v2;
use bunting_stores::memory::MemoryAdminStore;
use bunting_stores::shared_tier::{MemoryTier, SharedTier, TierContent};
use bunting_stores::{AdminStore, DEFAULT_FLAG_SET};
use serde_json::{Value, json};
use tonic::Code;

mod common;

use common::Channel;
use common::admin_contract::{self, flag};
use common::in_process::TestNode;

/// Long enough for any machine to deliver a change; tests wait this long only when something is
/// already broken.
const PATIENCE: Duration = Duration::from_secs(20);

fn memory() -> Arc<dyn AdminStore> {
    Arc::new(MemoryAdminStore::new(CompileOptions::default()))
}

// ---------------------------------------------------------------------------------------------
// The memory store keeps the admin store contract
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn memory_writes_bump_flag_and_set_versions() {
    admin_contract::writes_bump_flag_and_set_versions(memory()).await;
}

#[tokio::test]
async fn memory_refuses_a_stale_expected_version_and_writes_nothing() {
    admin_contract::a_stale_expected_version_is_refused_and_nothing_is_written(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_lets_exactly_one_of_two_concurrent_writers_win() {
    admin_contract::of_two_concurrent_writers_at_one_version_exactly_one_wins(memory()).await;
}

#[tokio::test]
async fn memory_refuses_an_invalid_definition_with_its_problems() {
    admin_contract::an_invalid_definition_is_refused_with_its_problems_and_nothing_is_written(
        memory(),
    )
    .await;
}

#[tokio::test]
async fn memory_audits_every_write_with_who_when_before_and_after() {
    admin_contract::every_write_is_audited_with_who_when_before_and_after(memory()).await;
}

#[tokio::test]
async fn memory_applies_a_batch_as_one_version_or_not_at_all() {
    admin_contract::a_batch_is_one_version_and_a_refused_one_writes_nothing(memory()).await;
}

#[tokio::test]
async fn memory_notifies_every_change() {
    let store = memory();
    admin_contract::a_change_written_by_another_store_is_notified(store.clone(), store).await;
}

// ---------------------------------------------------------------------------------------------
// Services on the memory stores
// ---------------------------------------------------------------------------------------------

fn config() -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        ..Config::default()
    }
}

fn on(flags: Arc<dyn AdminStore>, tier: Option<Arc<dyn SharedTier>>) -> Stores {
    Stores {
        flags,
        experiments: None,
        rollouts: None,
        tier,
    }
}

async fn admin(node: &TestNode) -> AdminClient<Channel> {
    AdminClient::new(node.channel().await)
}

/// `banner` in the default set, as node `node` serves it now.
async fn banner(node: &TestNode) -> Option<bool> {
    v2::service_client::ServiceClient::new(node.channel().await)
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "banner".into(),
            context: None,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().value)
}

/// Waits until `holds` says yes, failing the test with `what` after [`PATIENCE`].
async fn eventually<F: Future<Output = bool>>(what: &str, mut holds: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !holds().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` serves `banner` as `expected`.
async fn until_banner(node: &TestNode, expected: bool, what: &str) {
    let what = format!("{what}: banner is {expected}");
    eventually(&what, || async { banner(node).await == Some(expected) }).await;
}

/// The version of the default set the tier holds.
async fn tier_version(tier: &MemoryTier) -> Option<u64> {
    tier.snapshot(DEFAULT_FLAG_SET)
        .await
        .unwrap()
        .map(|snapshot| snapshot.version)
}

/// One Admin API write, as a row of a table.
#[derive(Debug)]
enum Write {
    CreateSet(&'static str),
    CreateFlag {
        set: &'static str,
        key: &'static str,
        definition: String,
    },
    UpdateFlag {
        key: &'static str,
        definition: String,
        expected: i64,
    },
    DeleteFlag {
        key: &'static str,
        expected: i64,
    },
    DeleteSet {
        expected: i64,
    },
}

impl Write {
    async fn send(self, admin: &mut AdminClient<Channel>) -> Result<(), tonic::Status> {
        let actor = "mallory".to_owned();
        let set = DEFAULT_FLAG_SET.to_owned();
        match self {
            Write::CreateSet(id) => admin
                .create_flag_set(pb::CreateFlagSetRequest {
                    id: id.into(),
                    actor,
                    ..Default::default()
                })
                .await
                .map(drop),
            Write::CreateFlag {
                set,
                key,
                definition,
            } => admin
                .create_flag(pb::CreateFlagRequest {
                    flag_set_id: set.into(),
                    key: key.into(),
                    definition,
                    expected_flag_set_version: 0,
                    actor,
                })
                .await
                .map(drop),
            Write::UpdateFlag {
                key,
                definition,
                expected,
            } => admin
                .update_flag(pb::UpdateFlagRequest {
                    flag_set_id: set,
                    key: key.into(),
                    definition,
                    expected_version: expected,
                    actor,
                })
                .await
                .map(drop),
            Write::DeleteFlag { key, expected } => admin
                .delete_flag(pb::DeleteFlagRequest {
                    flag_set_id: set,
                    key: key.into(),
                    expected_version: expected,
                    actor,
                })
                .await
                .map(drop),
            Write::DeleteSet { expected } => admin
                .delete_flag_set(pb::DeleteFlagSetRequest {
                    id: set,
                    expected_version: expected,
                    actor,
                })
                .await
                .map(drop),
        }
    }
}

fn text(value: Value) -> String {
    value.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_admin_writes_name_the_problem_and_change_nothing() {
    let store = memory();
    let node = TestNode::start_with(config(), on(store.clone(), None)).await;
    let mut admin = admin(&node).await;
    common::admin::create_set_with_flags(
        &mut admin,
        DEFAULT_FLAG_SET,
        &[("banner", flag("off"))],
        "ada",
    )
    .await;
    let before = store.snapshot(DEFAULT_FLAG_SET).await.unwrap();
    let audited = store.list_audit(None, None, None, 1000).await.unwrap();

    let broken = json!({"state": "SOMETIMES", "variants": {"on": true}, "defaultVariant": "off"});
    let table = [
        (
            Write::CreateSet(DEFAULT_FLAG_SET),
            Code::AlreadyExists,
            "flag set \"default\" already exists",
        ),
        (
            Write::CreateSet(""),
            Code::InvalidArgument,
            "id: is empty; name a flag set",
        ),
        (
            Write::CreateFlag {
                set: "nope",
                key: "x",
                definition: text(flag("on")),
            },
            Code::NotFound,
            "flag set \"nope\" not found",
        ),
        (
            Write::CreateFlag {
                set: DEFAULT_FLAG_SET,
                key: "banner",
                definition: text(flag("on")),
            },
            Code::AlreadyExists,
            "flag \"banner\" in flag set \"default\" already exists",
        ),
        (
            Write::CreateFlag {
                set: DEFAULT_FLAG_SET,
                key: "x",
                definition: "{\"state\": ".into(),
            },
            Code::InvalidArgument,
            "definition",
        ),
        (
            Write::CreateFlag {
                set: DEFAULT_FLAG_SET,
                key: "x",
                definition: text(broken.clone()),
            },
            Code::InvalidArgument,
            "flags.x.state",
        ),
        (
            Write::UpdateFlag {
                key: "banner",
                definition: text(broken),
                expected: 1,
            },
            Code::InvalidArgument,
            "flags.banner.defaultVariant",
        ),
        (
            Write::UpdateFlag {
                key: "banner",
                definition: text(flag("on")),
                expected: 7,
            },
            Code::FailedPrecondition,
            "is at version 1, not the expected version 7; re-read",
        ),
        (
            Write::UpdateFlag {
                key: "ghost",
                definition: text(flag("on")),
                expected: 1,
            },
            Code::NotFound,
            "flag \"ghost\" in flag set \"default\" not found",
        ),
        (
            Write::DeleteFlag {
                key: "banner",
                expected: 2,
            },
            Code::FailedPrecondition,
            "not the expected version 2",
        ),
        (
            Write::DeleteSet { expected: 1 },
            Code::FailedPrecondition,
            "flag set \"default\" is at version 2, not the expected version 1",
        ),
    ];
    for (write, code, fragment) in table {
        let row = format!("{write:?}");
        let status = write
            .send(&mut admin)
            .await
            .expect_err(&format!("{row}: accepted"));
        assert_eq!(status.code(), code, "{row}: {status:?}");
        assert!(
            status.message().contains(fragment),
            "{row}: {:?} does not say {fragment:?}",
            status.message()
        );
    }

    assert_eq!(store.snapshot(DEFAULT_FLAG_SET).await.unwrap(), before);
    assert_eq!(
        store.list_audit(None, None, None, 1000).await.unwrap(),
        audited
    );
    assert_eq!(banner(&node).await, Some(false));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_evaluation_on_every_node_of_one_store_and_the_tier() {
    let store = memory();
    let tier = Arc::new(MemoryTier::new());
    let shared: Arc<dyn SharedTier> = tier.clone();
    let first = TestNode::start_with(config(), on(store.clone(), Some(shared.clone()))).await;
    let second = TestNode::start_with(config(), on(store.clone(), Some(shared))).await;
    let mut admin = admin(&first).await;
    common::admin::create_set_with_flags(
        &mut admin,
        DEFAULT_FLAG_SET,
        &[("banner", flag("off"))],
        "ada",
    )
    .await;
    until_banner(&second, false, "created through the first node").await;

    Write::UpdateFlag {
        key: "banner",
        definition: text(flag("on")),
        expected: 1,
    }
    .send(&mut admin)
    .await
    .unwrap();
    until_banner(&first, true, "the writing node").await;
    until_banner(&second, true, "the other node").await;
    eventually("the tier holds version 3", || async {
        tier_version(&tier).await == Some(3)
    })
    .await;
    let snapshot = tier.snapshot(DEFAULT_FLAG_SET).await.unwrap();
    let Some(TierContent::Flags(document)) = snapshot.map(|s| s.content) else {
        panic!("the tier holds a tombstone");
    };
    assert_eq!(document["flags"]["banner"], flag("on"));

    // Without the tier, writes still land and reach both nodes (through the store's notices);
    // once it is back, the nodes bring it up to date by version.
    tier.set_reachable(false);
    Write::UpdateFlag {
        key: "banner",
        definition: text(flag("off")),
        expected: 2,
    }
    .send(&mut admin)
    .await
    .unwrap();
    until_banner(&first, false, "tier away, the writing node").await;
    until_banner(&second, false, "tier away, the other node").await;
    tier.set_reachable(true);
    eventually("the tier brought up to version 4", || async {
        tier_version(&tier).await == Some(4)
    })
    .await;
    first.stop().await;
    second.stop().await;
}
