//! Whole nodes (`bunting::server::bind`, in-process, free ports) with PostgreSQL
//! (`tests/common/postgres.rs`) and a shared tier on real Redis started by the test: a standalone
//! server or a 3-master Redis Cluster (`tests/common/redis.rs`; `scripts/redis-up` installs it).
//!
//! Changes travel asynchronously; tests wait with a generous deadline and never assert speed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use bunting::config::{Config, FlagSourceConfig, RedisTierConfig, SharedTierConfig};
use bunting::shared_tier::{self, SharedTier};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::flagd::evaluation::v2;
use serde_json::{Value, json};
use tonic::transport::Channel;

mod common;

use common::in_process::TestNode;
use common::wait_until;

use common::postgres::TestDb;
use common::redis::{RedisCluster, RedisServer};

const PATIENCE: Duration = Duration::from_secs(20);

/// Changes must arrive by notification, not by the periodic repair.
const NO_VERSION_CHECK: Duration = Duration::from_secs(3600);

impl TestNode {
    async fn flagd(&self) -> v2::service_client::ServiceClient<Channel> {
        v2::service_client::ServiceClient::new(self.channel().await)
    }
}

fn tier_config(redis: &Redis) -> RedisTierConfig {
    let mut config = RedisTierConfig {
        failure_threshold: 2,
        open_for_ms: 300,
        timeout_ms: 1_000,
        ..RedisTierConfig::default()
    };
    match redis {
        Redis::Single(s) => config.url = Some(s.url()),
        Redis::Cluster(c) => config.cluster = c.urls(),
    }
    config
}

fn node_config(url: String, redis: &Redis) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        flags: FlagSourceConfig::Postgres {
            url,
            version_check: NO_VERSION_CHECK,
        },
        shared_tier: SharedTierConfig::Redis(tier_config(redis)),
        ..Config::default()
    }
}

enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    fn start(cluster: bool, label: &str) -> Redis {
        // Single and cluster runs of one test share a process: their directories must differ.
        let mode = if cluster { "cluster" } else { "single" };
        let dir = common::scratch_dir(&format!("{label}-{mode}"));
        if cluster {
            Redis::Cluster(RedisCluster::start(&dir))
        } else {
            Redis::Single(RedisServer::start(&dir))
        }
    }

    /// A client of the same tier the nodes use, to look at what they wrote.
    async fn tier(&self) -> std::sync::Arc<dyn SharedTier> {
        shared_tier::connect(&SharedTierConfig::Redis(tier_config(self)))
            .await
            .unwrap()
            .unwrap()
    }
}

/// A PostgreSQL URL nothing listens on.
fn unreachable_postgres() -> String {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("postgres://postgres@127.0.0.1:{port}/nowhere")
}

fn colour(value: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"c": value}, "defaultVariant": "c"})
}

async fn create_colour(admin: &mut AdminClient<Channel>, value: &str) {
    admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: "default".into(),
            metadata: None,
            evaluators: None,
            actor: "ada".into(),
        })
        .await
        .unwrap();
    admin
        .create_flag(pb::CreateFlagRequest {
            flag_set_id: "default".into(),
            key: "colour".into(),
            definition: colour(value).to_string(),
            expected_flag_set_version: 0,
            actor: "ada".into(),
        })
        .await
        .unwrap();
}

async fn set_colour(admin: &mut AdminClient<Channel>, value: &str, expected_version: i64) {
    admin
        .update_flag(pb::UpdateFlagRequest {
            flag_set_id: "default".into(),
            key: "colour".into(),
            definition: colour(value).to_string(),
            expected_version,
            actor: "grace".into(),
        })
        .await
        .unwrap();
}

async fn resolve_colour(flagd: &mut v2::service_client::ServiceClient<Channel>) -> Option<String> {
    flagd
        .resolve_string(v2::ResolveStringRequest {
            flag_key: "colour".into(),
            context: None,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().value)
}

async fn serves(node: &TestNode, value: &str, what: &str) {
    let flagd = node.flagd().await;
    wait_until(what, PATIENCE, || {
        let mut flagd = flagd.clone();
        async move { resolve_colour(&mut flagd).await.as_deref() == Some(value) }
    })
    .await;
}

async fn tier_holds(tier: &dyn SharedTier, value: &str) -> bool {
    tier.snapshot("default")
        .await
        .ok()
        .flatten()
        .is_some_and(|s| s.json["flags"]["colour"]["variants"]["c"] == json!(value))
}

/// A node writes its snapshots to Redis; a node that cannot reach PostgreSQL starts on them and
/// follows later changes through Redis's notifications alone.
async fn a_node_without_postgres_serves_the_shared_snapshots(cluster: bool) {
    let db = TestDb::create().await;
    let redis = Redis::start(cluster, "node-tier-start");
    let tier = redis.tier().await;

    let writer = TestNode::start(node_config(db.url.clone(), &redis)).await;
    let mut admin = AdminClient::new(writer.channel().await);
    create_colour(&mut admin, "red").await;
    serves(&writer, "red", "the writer serving its own change").await;
    wait_until("the writer's snapshot in redis", PATIENCE, || {
        tier_holds(tier.as_ref(), "red")
    })
    .await;

    let cut_off = TestNode::start(node_config(unreachable_postgres(), &redis)).await;
    serves(&cut_off, "red", "the cut-off node serving redis's snapshot").await;

    // Its version check never runs and it has no database: only a Redis notification can bring it
    // this change.
    set_colour(&mut admin, "blue", 1).await;
    serves(
        &cut_off,
        "blue",
        "the cut-off node hearing of a change through redis",
    )
    .await;
    let snapshot = tier.snapshot("default").await.unwrap().unwrap();
    assert_eq!(
        snapshot.json["flags"]["colour"]["variants"]["c"],
        json!("blue")
    );

    cut_off.stop().await;
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_redis_a_node_without_postgres_serves_the_shared_snapshots() {
    a_node_without_postgres_serves_the_shared_snapshots(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_a_node_without_postgres_serves_the_shared_snapshots() {
    a_node_without_postgres_serves_the_shared_snapshots(true).await;
}

/// Redis dies: the node goes on evaluating and applying PostgreSQL's changes, shows the open
/// breaker in its metrics, and writes the missed snapshot once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_evaluating_while_redis_is_down() {
    let db = TestDb::create().await;
    let mut redis = Redis::start(false, "node-tier-outage");
    let Redis::Single(server) = &redis else {
        unreachable!()
    };
    let gauge = format!(
        "bunting_shared_tier_breaker_state{{endpoint=\"{}\"}}",
        server.url()
    );
    let node = TestNode::start(node_config(db.url.clone(), &redis)).await;
    let mut admin = AdminClient::new(node.channel().await);
    create_colour(&mut admin, "red").await;
    serves(&node, "red", "the first version").await;

    if let Redis::Single(server) = &mut redis {
        server.stop();
    }
    serves(&node, "red", "evaluation with redis down").await;
    set_colour(&mut admin, "blue", 1).await;
    serves(&node, "blue", "a postgres change applied with redis down").await;
    wait_until(
        "the breaker open in the node's metrics",
        PATIENCE,
        || async { node.scrape().await.contains(&format!("{gauge} 2")) },
    )
    .await;

    if let Redis::Single(server) = &mut redis {
        server.restart();
    }
    let tier = redis.tier().await;
    wait_until(
        "the queued snapshot written after redis came back",
        PATIENCE,
        || tier_holds(tier.as_ref(), "blue"),
    )
    .await;
    wait_until(
        "the breaker closed in the node's metrics",
        PATIENCE,
        || async { node.scrape().await.contains(&format!("{gauge} 0")) },
    )
    .await;
    serves(&node, "blue", "evaluation after redis came back").await;
    node.stop().await;
}
