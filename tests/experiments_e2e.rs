//! An A/B test end to end through a running cluster: three `bunting serve` processes on one
//! PostgreSQL database and one Redis (the shared tier holding users' experiment records), the
//! shard-aware client evaluating a flag for 20,000 simulated users, control converting at 10% and
//! treatment at 12%, every conversion sent with `Track` to whichever node.
//!
//! Asserted (and printed): the exposures per arm equal the simulated users per arm exactly, the
//! conversions too, the results detect the difference, and the counts are unchanged after a node
//! is killed with SIGKILL (its shards' new owners rebuild from Redis) and after another is stopped
//! gracefully.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bunting_client::{Client, ClientConfig, EvaluationContext};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use common::admin::{conversion, start_ab_experiment};
use common::cluster::{ClusterNode, agreement, postgres_flags, status_text};
use common::postgres::TestDb;
use common::redis::RedisServer;
use tokio::sync::Mutex;

const USERS: u64 = 20_000;
/// Users first seen after the whole cluster restarted.
const LATE_USERS: u64 = 500;
const WORKERS: u64 = 16;
const FLAG: &str = "checkout-button";
const EXPERIMENT: &str = "checkout-colour";

/// A deterministic per-user coin: splitmix64 of the user number, as a fraction in [0, 1).
fn coin(user: u64, salt: u64) -> f64 {
    let mut z = user.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(salt);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Default)]
struct Simulated {
    users: BTreeMap<String, u64>,
    converted: BTreeMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_test_through_the_cluster_counts_every_user_once_and_finds_the_winner() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("experiments-e2e");
    let redis = RedisServer::start(&dir);
    let tier = format!(
        "[shared_tier]\nkind = \"redis\"\nurl = \"{}\"\n",
        redis.url()
    );
    let flags = postgres_flags(&db.url);
    let mut n1 = ClusterNode::new(&dir, "node-1", &flags, &[]).extra_config(&tier);
    let mut n2 = ClusterNode::new(&dir, "node-2", &flags, &[n1.cluster]).extra_config(&tier);
    let mut n3 = ClusterNode::new(&dir, "node-3", &flags, &[n1.cluster]).extra_config(&tier);
    n1.start();
    n2.start();
    n3.start();
    let all = ["node-1", "node-2", "node-3"];
    assert!(
        agreement(&[&n1, &n2, &n3], &all, Duration::from_secs(20))
            .await
            .is_some(),
        "no cluster:\n{}",
        status_text(&n1).await
    );

    // The flag (50/50 by targeting key) and the experiment on it, through the admin APIs.
    let revenue = pb::Metric {
        name: "revenue".into(),
        event: "purchase".into(),
        kind: pb::MetricKind::Mean.into(),
    };
    start_ab_experiment(
        n1.url(),
        n2.url(),
        FLAG,
        EXPERIMENT,
        vec![conversion("purchased", "purchase"), revenue],
        "e2e",
    )
    .await;
    // Every node must count before the simulation starts: wait until each has the experiment
    // (a draft or unknown experiment gives no results; a running one gives zero users).
    for node in [&n1, &n2, &n3] {
        let ready = common::poll(Duration::from_secs(15), || async {
            let r = results(node).await.ok()?;
            (r.users.iter().map(|u| u.users).sum::<u64>() == 0).then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "{} never answered results for the running experiment",
            node.id
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let client = Arc::new(
        Client::connect(ClientConfig::new(vec![
            n1.grpc.to_string(),
            n2.grpc.to_string(),
            n3.grpc.to_string(),
        ]))
        .await
        .unwrap(),
    );
    let urls = Arc::new([n1.url(), n2.url(), n3.url()]);
    let simulated = Arc::new(Mutex::new(Simulated::default()));
    let began = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (client, urls, simulated) = (client.clone(), urls.clone(), simulated.clone());
            tokio::spawn(async move {
                let mut trackers = Vec::new();
                for url in urls.iter() {
                    trackers.push(
                        common::connect_with(ExperimentsClient::new, url.clone())
                            .await
                            .unwrap(),
                    );
                }
                let mut local = Simulated::default();
                for user in (w..USERS).step_by(WORKERS as usize) {
                    let key = format!("user-{user}");
                    let answer = client
                        .resolve_string(FLAG, &EvaluationContext::new(key.clone()))
                        .await
                        .unwrap();
                    let arm = answer.variant.unwrap();
                    *local.users.entry(arm.clone()).or_default() += 1;
                    let rate = if arm == "treatment" { 0.12 } else { 0.10 };
                    if coin(user, 1) < rate {
                        *local.converted.entry(arm).or_default() += 1;
                        let value = 20.0 + 10.0 * coin(user, 2);
                        // Any node takes a Track; it goes to the user's owner.
                        let tracker = &mut trackers[(user % 3) as usize];
                        let counted = tracker
                            .track(pb::TrackRequest {
                                targeting_key: key,
                                event: "purchase".into(),
                                value,
                                flag_set_id: None,
                            })
                            .await
                            .unwrap()
                            .into_inner()
                            .counted;
                        assert_eq!(counted, [EXPERIMENT], "user-{user}'s purchase");
                    }
                }
                let mut all = simulated.lock().await;
                for (arm, n) in local.users {
                    *all.users.entry(arm).or_default() += n;
                }
                for (arm, n) in local.converted {
                    *all.converted.entry(arm).or_default() += n;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = began.elapsed();
    let simulated = simulated.lock().await;
    assert_eq!(simulated.users.values().sum::<u64>(), USERS);

    // Exposures equal simulated users per arm, exactly; conversions too.
    let counts = |r: &pb::GetExperimentResultsResponse| {
        let users: BTreeMap<String, u64> =
            r.users.iter().map(|u| (u.arm.clone(), u.users)).collect();
        let converted: BTreeMap<String, u64> = r.metrics[0]
            .arms
            .iter()
            .map(|a| (a.arm.clone(), a.converted))
            .collect();
        (users, converted)
    };
    let expected = (simulated.users.clone(), simulated.converted.clone());
    let r = results(&n2).await.unwrap();
    assert_eq!(
        counts(&r),
        expected,
        "the results must count every simulated user exactly once"
    );
    let purchased = &r.metrics[0].arms[1];
    assert_eq!(purchased.arm, "treatment");
    let relative = purchased
        .comparison
        .as_ref()
        .unwrap()
        .relative
        .as_ref()
        .unwrap();
    assert!(relative.unavailable.is_empty(), "{}", relative.unavailable);
    assert!(
        relative.p_value < 0.05,
        "10% vs 12% over {USERS} users not detected: p = {}",
        relative.p_value
    );
    assert!(relative.chance_to_beat_control > 0.95);
    assert!(
        r.srm_p_value.unwrap() > 0.001,
        "a 50/50 split must not look like a sample-ratio mismatch"
    );
    println!(
        "experiment: {USERS} users in {:.1}s; users {:?}; converted {:?}; relative lift {:+.1}% \
         (95% CI {:+.1}%..{:+.1}%), p = {:.2e}, sequential p = {:.2e}, chance to beat control {:.4}, SRM p = {:.3}",
        elapsed.as_secs_f64(),
        simulated.users,
        simulated.converted,
        relative.estimate * 100.0,
        relative.confidence_interval.as_ref().unwrap().lower * 100.0,
        relative.confidence_interval.as_ref().unwrap().upper * 100.0,
        relative.p_value,
        relative.sequential_p_value.unwrap_or(f64::NAN),
        relative.chance_to_beat_control,
        r.srm_p_value.unwrap(),
    );

    // kill -9 a node: its shards move, and their new owners rebuild every user from Redis.
    n3.kill_hard();
    let killed = Instant::now();
    assert!(
        agreement(&[&n1, &n2], &["node-1", "node-2"], Duration::from_secs(10))
            .await
            .is_some()
    );
    // The new owners load the moved shards' users as they take them: poll, bounded.
    let recovered = common::poll(Duration::from_secs(10), || async {
        let r = results(&n1).await.ok()?;
        (counts(&r) == expected).then_some(())
    })
    .await
    .is_some();
    let last = results(&n1).await.map(|r| counts(&r));
    assert!(
        recovered,
        "kill -9 of a node lost counted events: {last:?} != {expected:?}"
    );
    let recovery = killed.elapsed();
    // Stop another one gracefully: the last node holds everything.
    assert!(n2.stop(), "node-2 did not stop gracefully:\n{}", n2.log());
    assert!(
        agreement(&[&n1], &["node-1"], Duration::from_secs(10))
            .await
            .is_some()
    );
    let stopped = common::poll(Duration::from_secs(10), || async {
        let r = results(&n1).await.ok()?;
        (counts(&r) == expected).then_some(())
    })
    .await
    .is_some();
    assert!(stopped, "a graceful stop lost counted events");
    println!(
        "after kill -9 of node-3 (counts whole again {:.0} ms after the kill) and a graceful stop of node-2: 0 events lost",
        recovery.as_secs_f64() * 1000.0
    );

    // The whole cluster restarts: its shard map epochs count from zero again while Redis still
    // holds the old owners' claims. The restarted owners must rebuild every count and go on
    // recording new users (a fencing rule where the highest epoch wins would refuse them).
    assert!(n1.stop(), "node-1 did not stop gracefully:\n{}", n1.log());
    for node in [&mut n1, &mut n2, &mut n3] {
        node.start();
    }
    assert!(
        agreement(
            &[&n1, &n2, &n3],
            &["node-1", "node-2", "node-3"],
            Duration::from_secs(20)
        )
        .await
        .is_some(),
        "the restarted cluster did not agree:\n{}",
        status_text(&n1).await
    );
    let restarted = common::poll(Duration::from_secs(10), || async {
        let r = results(&n1).await.ok()?;
        (counts(&r) == expected).then_some(())
    })
    .await
    .is_some();
    assert!(restarted, "a whole-cluster restart lost counted events");
    let client = Client::connect(ClientConfig::new(vec![
        n1.grpc.to_string(),
        n2.grpc.to_string(),
        n3.grpc.to_string(),
    ]))
    .await
    .unwrap();
    let mut after = expected.0.clone();
    for user in 0..LATE_USERS {
        let answer = client
            .resolve_string(FLAG, &EvaluationContext::new(format!("late-user-{user}")))
            .await
            .unwrap();
        *after.entry(answer.variant.unwrap()).or_default() += 1;
    }
    let recorded = common::poll(Duration::from_secs(10), || async {
        let r = results(&n2).await.ok()?;
        (counts(&r).0 == after).then_some(())
    })
    .await
    .is_some();
    let last = results(&n2).await.map(|r| counts(&r).0);
    assert!(
        recorded,
        "users exposed after a whole-cluster restart were not all counted: {last:?} != {after:?}"
    );
    println!(
        "after a whole-cluster restart: every count rebuilt, and {LATE_USERS} new users counted exactly"
    );
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
