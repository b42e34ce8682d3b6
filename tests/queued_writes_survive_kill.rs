//! Per-user writes queued while Redis is unreachable survive `kill -9` of the node: one
//! `bunting serve` process (a cluster of one, with a `data_dir`) on PostgreSQL and a Redis server
//! this test starts and stops itself (never the shared one). Users are exposed to a running
//! experiment while that Redis is down, so their writes queue in the node's write-ahead log; the
//! node is killed, Redis comes back, the node starts again and replays its log.
//!
//! Asserted: every exposed user's record is in Redis (0 writes lost), and after the restart the
//! node counts each of them toward the experiment on a `Track` without a new evaluation (their
//! exposure was recorded once, before the kill, and is what the restarted node loaded).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bunting_node::config::{RedisTierConfig, SharedTierConfig};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_proto::flagd::evaluation::v2;
use bunting_stores::shared_tier;
use common::admin::{conversion, start_ab_experiment};
use common::cluster::{ClusterNode, agreement, postgres_flags};
use common::postgres::TestDb;
use common::redis::RedisServer;
use serde_json::json;

const USERS: usize = 40;
const FLAG: &str = "checkout-button";
const EXPERIMENT: &str = "checkout-colour";
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_writes_queued_during_a_redis_outage_survive_kill_9() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("queued-writes-kill");
    let mut redis = RedisServer::start(&dir);
    let data_dir = dir.join("node-data");
    let tier = format!(
        "[shared_tier]\nkind = \"redis\"\nurl = \"{}\"\nfailure_threshold = 2\nopen_for_ms = 300\ntimeout_ms = 500\n",
        redis.url()
    );
    let mut node = ClusterNode::new(&dir, "node-1", &postgres_flags(&db.url), &[])
        .top_level_config(&format!("data_dir = \"{}\"", data_dir.display()))
        .extra_config(&tier);
    node.start();
    owns_every_shard(&node).await;

    start_ab_experiment(
        node.url(),
        node.url(),
        FLAG,
        EXPERIMENT,
        vec![conversion("purchased", "purchase")],
        "test",
    )
    .await;
    let ready = common::poll(PATIENCE, || async {
        let r = results(&node).await.ok()?;
        (r.users.iter().map(|u| u.users).sum::<u64>() == 0).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "the node never ran the experiment:\n{}",
        node.log()
    );

    // A shard loads its users from Redis when it first serves one, and records nothing for a
    // user it could not load: so the test users' shards are warmed (by other users on the same
    // shards) before the outage.
    let users: Vec<String> = (0..USERS).map(|i| format!("wal-user-{i}")).collect();
    let tier = shared_tier::connect(&SharedTierConfig::Redis(RedisTierConfig {
        url: Some(redis.url().into()),
        signing_key_file: Some(common::redis::tier_key_file()),
        ..RedisTierConfig::default()
    }))
    .await
    .unwrap()
    .unwrap();
    let shards = bunting_keyspace::DEFAULT_SHARDS;
    let mut warm_users: BTreeSet<String> = BTreeSet::new();
    for user in &users {
        let shard = bunting_keyspace::shard_of(user, shards);
        let warm = (0..)
            .map(|j| format!("warm-{j}"))
            .find(|w| bunting_keyspace::shard_of(w, shards) == shard)
            .unwrap();
        warm_users.insert(warm);
    }
    // Evaluated until recorded: the shards may get the running experiment a moment after the
    // results API shows it (a repeated exposure counts nothing).
    let warmed = common::poll(PATIENCE, || async {
        for warm in &warm_users {
            evaluate(&node, warm).await;
        }
        let held = held_users(tier.as_ref()).await?;
        warm_users.is_subset(&held).then_some(())
    })
    .await;
    assert!(
        warmed.is_some(),
        "no exposure before the outage: {:?}\n{}\n{}",
        held_users(tier.as_ref()).await,
        node.metrics_text()
            .lines()
            .filter(|l| l.contains("expos") || l.contains("user_state") || l.contains("shard"))
            .collect::<Vec<_>>()
            .join("\n"),
        node.log()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The outage: this test's Redis is killed; every exposure now queues.
    redis.stop();
    for user in &users {
        evaluate(&node, user).await;
    }
    // Exposures are recorded by the users' shards as the evaluations answer: wait until all of
    // them queued (the gauge counts queued writes; each was logged before it was queued).
    let gauge = format!(
        "bunting_shared_tier_queued_writes{{endpoint=\"{}\"}}",
        redis.url()
    );
    let queued = common::poll(PATIENCE, || async {
        let text = node.metrics_text();
        let line = text.lines().find(|l| l.starts_with(&gauge))?;
        let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (n >= USERS as f64).then_some(())
    })
    .await;
    assert!(
        queued.is_some(),
        "the exposures never queued:\n{}\n{}",
        node.metrics_text(),
        node.log()
    );
    let log = data_dir.join("shared-tier").join("user-writes.log");
    let logged = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(
        logged > 0,
        "no write-ahead log at {}:\n{}",
        log.display(),
        node.log()
    );

    node.kill_hard();
    redis.restart();
    node.start();
    owns_every_shard(&node).await;

    // Every user's record reaches Redis from the log the killed process left.
    let wanted: BTreeSet<String> = users.iter().cloned().collect();
    let stored = common::poll(PATIENCE, || async {
        let held = held_users(tier.as_ref()).await?;
        wanted.is_subset(&held).then_some(held)
    })
    .await;
    assert!(
        stored.is_some(),
        "users' records missing from redis after the restart:\n{}",
        node.log()
    );

    // The restarted node knows each user was exposed (it loaded their records), so a Track
    // counts toward the experiment with no new evaluation.
    let mut uncounted = Vec::new();
    for user in &users {
        // A shard answers UNAVAILABLE until it has loaded its users after the restart.
        let counted = common::poll(PATIENCE, || async {
            let mut experiments = common::connect_with(ExperimentsClient::new, node.url())
                .await
                .ok()?;
            let tracked = experiments
                .track(pb::TrackRequest {
                    targeting_key: user.clone(),
                    event: "purchase".into(),
                    value: 1.0,
                    flag_set_id: None,
                })
                .await
                .ok()?;
            Some(tracked.into_inner().counted)
        })
        .await
        .unwrap_or_else(|| panic!("no Track answer for {user}:\n{}", node.log()));
        if !counted.iter().any(|c| c == EXPERIMENT) {
            uncounted.push(user.clone());
        }
    }
    assert!(
        uncounted.is_empty(),
        "users not counted after the restart: {uncounted:?}"
    );
    assert_eq!(
        std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0),
        0,
        "the log is cut once replayed"
    );
    assert!(
        node.stop(),
        "the node did not stop cleanly:\n{}",
        node.log()
    );
}

async fn owns_every_shard(node: &ClusterNode) {
    assert!(
        agreement(&[node], &["node-1"], PATIENCE).await.is_some(),
        "the node never owned its shards:\n{}",
        node.log()
    );
}

/// Every user with a record in the tier; `None` while it cannot say.
async fn held_users(tier: &dyn shared_tier::SharedTier) -> Option<BTreeSet<String>> {
    let mut held = BTreeSet::new();
    for shard in 0..bunting_keyspace::DEFAULT_SHARDS {
        match tier.load_user_states(shard).await {
            Ok(users) => held.extend(users.into_iter().map(|(user, _)| user)),
            Err(e) => {
                eprintln!("loading shard {shard}'s users: {e}");
                return None;
            }
        }
    }
    Some(held)
}

async fn evaluate(node: &ClusterNode, user: &str) {
    let mut flagd = common::connect_with(v2::service_client::ServiceClient::new, node.url())
        .await
        .unwrap();
    flagd
        .resolve_string(v2::ResolveStringRequest {
            flag_key: FLAG.into(),
            context: Some(
                bunting_proto::json::json_to_struct(
                    json!({"targetingKey": user}).as_object().unwrap(),
                )
                .unwrap(),
            ),
        })
        .await
        .unwrap();
}

async fn results(node: &ClusterNode) -> Result<pb::GetExperimentResultsResponse, tonic::Status> {
    let mut client = common::connect_with(ExperimentsClient::new, node.url())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .get_experiment_results(pb::GetExperimentResultsRequest {
            id: EXPERIMENT.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}
