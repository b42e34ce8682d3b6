//! Chaos on a real loopback cluster: three `bunting serve` processes on one PostgreSQL database,
//! the shard-aware client (`bunting-client`) under steady load for about 30 seconds while a node
//! is killed with SIGKILL and restarted, a fourth joins, and one is drained and stopped, with
//! admin changes made throughout.
//!
//! Asserted (and printed): evaluation success at least 99.9% (the client retries), every shard
//! owned by exactly one live node within 3 s of the kill, a flag change made mid-chaos served by
//! every live node, and no acknowledged admin change lost. Every process is killed when the test
//! ends, however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bunting_client::{Client, ClientConfig, EvaluationContext};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::cluster_admin_client::ClusterAdminClient;
use bunting_proto::flagd::evaluation::v2;
use common::cluster::{ClusterNode, agreement, postgres_flags, status_text};
use common::postgres::TestDb;
use serde_json::json;

const FLAG: &str = "chaos-banner";
/// Every shard must have exactly one live owner this soon after a node is killed.
const REASSIGN_BOUND: Duration = Duration::from_secs(3);
const LOAD_WORKERS: usize = 8;

fn banner(default_variant: &str, revision: u64) -> String {
    json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": default_variant,
        "metadata": {"revision": revision},
    })
    .to_string()
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_survives_kill_restart_join_and_drain_under_load() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("chaos");
    let flags = postgres_flags(&db.url);
    let mut n1 = ClusterNode::new(&dir, "node-1", &flags, &[]);
    let mut n2 = ClusterNode::new(&dir, "node-2", &flags, &[n1.cluster]);
    let mut n3 = ClusterNode::new(&dir, "node-3", &flags, &[n1.cluster, n2.cluster]);
    let mut n4 = ClusterNode::new(&dir, "node-4", &flags, &[n1.cluster]);
    n1.start();
    n2.start();
    n3.start();
    let formed = agreement(
        &[&n1, &n2, &n3],
        &["node-1", "node-2", "node-3"],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        formed.is_some(),
        "three nodes did not agree on a map:\n{}\n{}\n{}\n{}",
        status_text(&n1).await,
        status_text(&n2).await,
        status_text(&n3).await,
        n1.log()
    );

    // The flag every request evaluates, created through any node's admin API.
    let mut admin = common::connect_with(AdminClient::new, n1.url())
        .await
        .unwrap();
    admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: "default".into(),
            actor: "chaos".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let created = admin
        .create_flag(pb::CreateFlagRequest {
            flag_set_id: "default".into(),
            key: FLAG.into(),
            definition: banner("off", 0),
            expected_flag_set_version: 0,
            actor: "chaos".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut flag_version = created.flag.unwrap().version;
    // Flag-set versions the admin API acknowledged, each of which must be in the audit log.
    let mut acknowledged = vec![created.flag_set_version];
    for node in [&n1, &n2, &n3] {
        assert!(
            serves(node, false, Duration::from_secs(10)).await,
            "{} never served the new flag",
            node.id
        );
    }

    let client = Arc::new(
        Client::connect(ClientConfig::new(vec![
            n1.grpc.to_string(),
            n2.grpc.to_string(),
            n3.grpc.to_string(),
        ]))
        .await
        .unwrap(),
    );
    let tally = Arc::new(Tally::default());
    let running = Arc::new(AtomicBool::new(true));
    let workers: Vec<_> = (0..LOAD_WORKERS)
        .map(|w| {
            let (client, tally, running) = (client.clone(), tally.clone(), running.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while running.load(Ordering::Relaxed) {
                    i += 1;
                    let ctx = EvaluationContext::new(format!("user-{w}-{}", i % 5_000));
                    match client.resolve_boolean(FLAG, &ctx).await {
                        Ok(_) => tally.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            if tally.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                                eprintln!("evaluation failed: {e}");
                            }
                            0
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let began = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // 1. kill -9 node-2: its shards must have exactly one live owner within the bound.
    n2.kill_hard();
    let killed = Instant::now();
    let reassigned = agreement(&[&n1, &n3], &["node-1", "node-3"], Duration::from_secs(10)).await;
    let reassign_time = killed.elapsed();
    assert!(
        reassigned.is_some(),
        "survivors never agreed on a map without node-2:\n{}\n{}",
        status_text(&n1).await,
        status_text(&n3).await
    );
    assert!(
        reassign_time <= REASSIGN_BOUND,
        "shards of the killed node took {reassign_time:?} to be reassigned (bound {REASSIGN_BOUND:?})"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. Restart it (same id, same ports); it rejoins and takes shards back.
    n2.start();
    let rejoined = agreement(
        &[&n1, &n2, &n3],
        &["node-1", "node-2", "node-3"],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        rejoined.is_some(),
        "node-2 did not rejoin:\n{}",
        status_text(&n2).await
    );

    // 3. A flag change mid-chaos, through node-3's admin API, served by every live node.
    let mut admin3 = common::connect_with(AdminClient::new, n3.url())
        .await
        .unwrap();
    let changed = admin3
        .update_flag(pb::UpdateFlagRequest {
            flag_set_id: "default".into(),
            key: FLAG.into(),
            definition: banner("on", 1),
            expected_version: flag_version,
            actor: "chaos".into(),
        })
        .await
        .unwrap()
        .into_inner();
    flag_version = changed.flag.unwrap().version;
    acknowledged.push(changed.flag_set_version);
    for node in [&n1, &n2, &n3] {
        assert!(
            serves(node, true, Duration::from_secs(5)).await,
            "{} does not serve the change",
            node.id
        );
    }

    // 4. A fourth node joins, seeded with one member only.
    n4.start();
    let grown = agreement(
        &[&n1, &n2, &n3, &n4],
        &["node-1", "node-2", "node-3", "node-4"],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        grown.is_some(),
        "node-4 did not join:\n{}",
        status_text(&n4).await
    );
    assert!(
        serves(&n4, true, Duration::from_secs(5)).await,
        "node-4 does not serve the change"
    );

    // 5. Drain node-3 through node-1, then stop it gracefully; more admin changes meanwhile.
    let mut cluster_admin = common::connect_with(ClusterAdminClient::new, n1.url())
        .await
        .unwrap();
    cluster_admin
        .drain(pb::DrainRequest {
            node_id: "node-3".into(),
        })
        .await
        .unwrap();
    let drained = agreement(
        &[&n1, &n2, &n3, &n4],
        &["node-1", "node-2", "node-4"],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        drained.is_some(),
        "node-3 still owns shards after its drain"
    );
    assert!(
        n3.stop(),
        "node-3 did not stop gracefully after its drain:\n{}",
        n3.log()
    );
    for revision in 2..5u64 {
        let answer = admin
            .update_flag(pb::UpdateFlagRequest {
                flag_set_id: "default".into(),
                key: FLAG.into(),
                definition: banner("on", revision),
                expected_version: flag_version,
                actor: "chaos".into(),
            })
            .await
            .unwrap()
            .into_inner();
        flag_version = answer.flag.unwrap().version;
        acknowledged.push(answer.flag_set_version);
    }

    // Steady load until about 30 s in all.
    let rest = Duration::from_secs(30).saturating_sub(began.elapsed());
    tokio::time::sleep(rest).await;
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    // No acknowledged admin change lost: the audit log holds every acknowledged version, and every
    // live node serves the last one.
    let audit = admin
        .list_audit(pb::ListAuditRequest {
            flag_set_id: "default".into(),
            flag_key: FLAG.into(),
            before_id: 0,
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let audited: Vec<i64> = audit.entries.iter().map(|e| e.flag_set_version).collect();
    for v in &acknowledged {
        assert!(
            audited.contains(v),
            "acknowledged flag-set version {v} is missing from the audit log {audited:?}"
        );
    }
    for node in [&n1, &n2, &n4] {
        assert!(
            revision_served(node, 4, Duration::from_secs(5)).await,
            "{} does not serve the last acknowledged change",
            node.id
        );
    }

    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let rate = ok as f64 / (ok + failed).max(1) as f64;
    let stats = client.stats();
    println!(
        "chaos: {} evaluations in {:.1}s, {failed} failed, success {:.4}%; shards reassigned {:.0} ms after kill -9; \
         {} admin changes acknowledged, all audited and served; client: {stats:?}",
        ok + failed,
        began.elapsed().as_secs_f64(),
        rate * 100.0,
        reassign_time.as_secs_f64() * 1000.0,
        acknowledged.len(),
    );
    assert!(ok > 1_000, "too little load to judge: {ok} evaluations");
    assert!(
        rate >= 0.999,
        "success rate {rate:.5} is below 99.9% ({failed} of {} failed)",
        ok + failed
    );
}

/// Waits until `node` itself (not through the client) answers the flag with `value`.
async fn serves(node: &ClusterNode, value: bool, patience: Duration) -> bool {
    served(node, patience, |answer| answer.value == Some(value)).await
}

/// Waits until `node` answers the flag with metadata `revision`.
async fn revision_served(node: &ClusterNode, revision: u64, patience: Duration) -> bool {
    let wanted = prost_types::value::Kind::NumberValue(revision as f64);
    served(node, patience, |answer| {
        answer
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("revision"))
            .and_then(|v| v.kind.as_ref())
            == Some(&wanted)
    })
    .await
}

/// Waits until `node`'s own answer for the flag (no context) passes `check`.
async fn served(
    node: &ClusterNode,
    patience: Duration,
    check: impl Fn(&v2::ResolveBooleanResponse) -> bool,
) -> bool {
    common::poll(patience, || async {
        let mut client = v2::service_client::ServiceClient::connect(node.url())
            .await
            .ok()?;
        let answer = client
            .resolve_boolean(v2::ResolveBooleanRequest {
                flag_key: FLAG.into(),
                context: None,
            })
            .await
            .ok()?
            .into_inner();
        check(&answer).then_some(())
    })
    .await
    .is_some()
}
