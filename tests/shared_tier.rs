//! The shared tier against real Redis: one behaviour suite, run on a standalone server and on a
//! 3-master Redis Cluster, each started by the test on spare loopback ports (`redis-server` and
//! `redis-cli` must be installed: `scripts/redis-up`). Outages are real: the servers are killed
//! and started again on the same ports.
//!
//! Waits are bounded polls; nothing here asserts how fast anything is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bunting_experiments::{Experiment, ExperimentId, Metric, MetricKind, MetricName};
use bunting_node::config::{RedisTierConfig, SharedTierConfig};
use bunting_stores::shared_tier::seal::{Sealed, Sealer};
use bunting_stores::shared_tier::{
    self, BreakerState, SharedTier, SharedTierError, SnapshotWrite, TierChange, TierContent,
    WriteOutcome,
};
use serde_json::json;

mod common;

use common::redis::{RedisCluster, RedisServer};
use common::wait_until;

const PATIENCE: Duration = Duration::from_secs(20);

/// A standalone server or a cluster, behind one interface so each test body runs on both.
enum Deployment {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Deployment {
    fn start(cluster: bool, label: &str) -> Deployment {
        // Single and cluster runs of one test share a process: their directories must differ.
        let mode = if cluster { "cluster" } else { "single" };
        let dir = common::scratch_dir(&format!("{label}-{mode}"));
        if cluster {
            Deployment::Cluster(RedisCluster::start(&dir))
        } else {
            Deployment::Single(RedisServer::start(&dir))
        }
    }

    fn config(&self) -> RedisTierConfig {
        let mut config = RedisTierConfig {
            failure_threshold: 2,
            open_for_ms: 300,
            timeout_ms: 1_000,
            signing_key_file: Some(common::redis::tier_key_file()),
            ..RedisTierConfig::default()
        };
        match self {
            Deployment::Single(s) => config.url = Some(s.url().into()),
            Deployment::Cluster(c) => {
                config.cluster = c.urls().into_iter().map(Into::into).collect()
            }
        }
        config
    }

    /// The label the tier's metrics carry.
    fn endpoint(&self) -> String {
        match self {
            Deployment::Single(s) => s.url(),
            Deployment::Cluster(c) => c.urls().remove(0),
        }
    }

    async fn tier(&self) -> Arc<dyn SharedTier> {
        shared_tier::connect(&SharedTierConfig::Redis(self.config()))
            .await
            .unwrap()
            .unwrap()
    }

    fn servers(&self) -> Vec<&RedisServer> {
        match self {
            Deployment::Single(s) => vec![s],
            Deployment::Cluster(c) => c.nodes.iter().collect(),
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        self.servers()[0].cli(args)
    }

    fn stop(&mut self) {
        match self {
            Deployment::Single(s) => s.stop(),
            Deployment::Cluster(c) => c.stop(),
        }
    }

    fn restart(&mut self) {
        match self {
            Deployment::Single(s) => s.restart(),
            Deployment::Cluster(c) => c.restart(),
        }
    }
}

/// A running experiment `id` on flag `id` of set `shop`.
fn running(id: &str) -> Experiment {
    let mut experiment = Experiment::draft(
        ExperimentId::new(id).unwrap(),
        "shop",
        id,
        ["a".to_owned(), "b".to_owned()],
        "a",
        vec![Metric {
            name: MetricName::new("bought").unwrap(),
            event: "purchase".into(),
            kind: MetricKind::Conversion,
        }],
    )
    .unwrap();
    experiment.start(1_700_000_000_000).unwrap();
    experiment
}

async fn next_change(changes: &mut shared_tier::ChangeStream) -> TierChange {
    tokio::time::timeout(PATIENCE, changes.recv())
        .await
        .expect("no change notification")
        .expect("the change stream ended")
}

async fn snapshot_cas_and_index(cluster: bool) {
    let redis = Deployment::start(cluster, "tier-cas");
    let tier = redis.tier().await;
    let v = |n: u32| json!({ "flags": {}, "metadata": { "n": n } }).to_string();

    assert_eq!(tier.snapshot("a").await.unwrap(), None);
    assert_eq!(
        tier.put_snapshot("a", 2, &v(2)).await.unwrap(),
        SnapshotWrite::Stored
    );
    // An older version, and the same version from a second writer, never overwrite.
    assert_eq!(
        tier.put_snapshot("a", 1, &v(1)).await.unwrap(),
        SnapshotWrite::NotNewer { stored: 2 }
    );
    assert_eq!(
        tier.put_snapshot("a", 2, &v(99)).await.unwrap(),
        SnapshotWrite::NotNewer { stored: 2 }
    );
    let a = tier.snapshot("a").await.unwrap().unwrap();
    assert_eq!(
        (a.version, a.flags().unwrap()["metadata"]["n"].clone()),
        (2, json!(2))
    );
    assert_eq!(
        tier.put_snapshot("a", 3, &v(3)).await.unwrap(),
        SnapshotWrite::Stored
    );
    assert_eq!(
        tier.put_snapshot("b", 1, &v(1)).await.unwrap(),
        SnapshotWrite::Stored
    );

    let all = tier.snapshots().await.unwrap();
    let listed: Vec<(&str, u64)> = all.iter().map(|s| (s.set.as_str(), s.version)).collect();
    assert_eq!(listed, [("a", 3), ("b", 1)]);
    assert_eq!(all[0].flags().unwrap()["metadata"]["n"], json!(3));

    // A deletion is a tombstone at its version: listed, read back as deleted, and under the same
    // compare-and-set, so neither an older snapshot written late nor an older tombstone undoes
    // what is newer, while a re-creation at a newer version does.
    assert_eq!(
        tier.delete_snapshot("b", 2).await.unwrap(),
        SnapshotWrite::Stored
    );
    let b = tier.snapshot("b").await.unwrap().unwrap();
    assert_eq!((b.version, b.content), (2, TierContent::Deleted));
    assert_eq!(
        tier.put_snapshot("b", 1, &v(1)).await.unwrap(),
        SnapshotWrite::NotNewer { stored: 2 }
    );
    assert_eq!(
        tier.delete_snapshot("a", 2).await.unwrap(),
        SnapshotWrite::NotNewer { stored: 3 }
    );
    let listed: Vec<(String, u64, bool)> = tier
        .snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.set.clone(), s.version, s.flags().is_some()))
        .collect();
    assert_eq!(
        listed,
        [("a".to_owned(), 3, true), ("b".to_owned(), 2, false)]
    );
    assert_eq!(
        tier.put_snapshot("b", 3, &v(3)).await.unwrap(),
        SnapshotWrite::Stored,
        "a set re-created after its deletion"
    );
    assert!(tier.snapshot("b").await.unwrap().unwrap().flags().is_some());

    // Not JSON: refused before anything is written.
    match tier.put_snapshot("c", 1, "{not json").await {
        Err(SharedTierError::InvalidSnapshot { set, version, .. }) => {
            assert_eq!((set.as_str(), version), ("c", 1));
        }
        other => panic!("expected InvalidSnapshot, got {other:?}"),
    }
    assert_eq!(tier.snapshot("c").await.unwrap(), None);
}

/// The seals the nodes of this test deployment make (`common::redis::TIER_KEY`, deployment id
/// `bunting`, the default key prefix).
fn sealer() -> Sealer {
    Sealer::new(common::redis::TIER_KEY.as_bytes(), "bunting").unwrap()
}

async fn corrupt_snapshots_are_typed_errors(cluster: bool) {
    let redis = Deployment::start(cluster, "tier-corrupt");
    let tier = redis.tier().await;
    tier.put_snapshot("good", 1, "{}").await.unwrap();
    // What no Bunting node writes, put there by hand: sealed with the deployment's key (so only
    // its content is wrong), and without a seal.
    let sealed_garbage = sealer().seal(Sealed::Snapshot {
        set: "badjson",
        version: 4,
        json: "{oops",
    });
    redis.cli(&[
        "HSET",
        "{bunting:set:badjson}:snapshot",
        "version",
        "4",
        "json",
        "{oops",
        "seal",
        &sealed_garbage,
    ]);
    redis.cli(&[
        "SADD",
        "{bunting}:sets",
        "badjson",
        "badversion",
        "unsealed",
    ]);
    redis.cli(&[
        "HSET",
        "{bunting:set:badversion}:snapshot",
        "version",
        "four",
        "json",
        "{}",
    ]);
    redis.cli(&[
        "HSET",
        "{bunting:set:unsealed}:snapshot",
        "version",
        "5",
        "json",
        "{}",
    ]);
    for set in ["badjson", "badversion"] {
        match tier.snapshot(set).await {
            Err(SharedTierError::Corrupt { key, .. }) => assert!(key.contains(set), "{key}"),
            other => panic!("{set}: expected Corrupt, got {other:?}"),
        }
    }
    match tier.snapshot("unsealed").await {
        Err(SharedTierError::Unverified { key, .. }) => assert!(key.contains("unsealed"), "{key}"),
        other => panic!("unsealed: expected Unverified, got {other:?}"),
    }
    // One corrupt set does not hide the others.
    let sets: Vec<String> = tier
        .snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.set)
        .collect();
    assert_eq!(sets, ["good"]);
    // Redis answered each time: the breaker stays closed.
    assert_eq!(tier.breaker_state(), BreakerState::Closed);
}

async fn running_experiments_round_trip(cluster: bool) {
    let redis = Deployment::start(cluster, "tier-experiments");
    let tier = redis.tier().await;
    assert_eq!(tier.running_experiments().await.unwrap(), None);
    let both = vec![running("a"), running("b")];
    assert_eq!(
        tier.put_running_experiments(&both).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(tier.running_experiments().await.unwrap(), Some(both));
    // Written whole: the next list replaces it, an empty one too (and is not "none written").
    tier.put_running_experiments(&[running("c")]).await.unwrap();
    assert_eq!(
        tier.running_experiments().await.unwrap(),
        Some(vec![running("c")])
    );
    tier.put_running_experiments(&[]).await.unwrap();
    assert_eq!(tier.running_experiments().await.unwrap(), Some(vec![]));
    // What no Bunting node writes, put there by hand: a typed error naming the key. Unsealed
    // (or the old, unsealed format) is Unverified; sealed with the deployment's key but not a
    // list of experiments is Corrupt.
    let sealed_garbage = |experiments: &str| {
        json!({
            "seal": sealer().seal(Sealed::RunningExperiments { json: experiments }),
            "experiments": experiments,
        })
        .to_string()
    };
    let key = "{bunting:experiments}:running";
    for (garbage, corrupt) in [
        ("{oops".to_owned(), false),
        ("[{\"id\": \"no arms\"}]".to_owned(), false),
        (sealed_garbage("{oops"), true),
        (sealed_garbage("[{\"id\": \"no arms\"}]"), true),
    ] {
        redis.cli(&["SET", key, &garbage]);
        match (tier.running_experiments().await, corrupt) {
            (Err(SharedTierError::Corrupt { key: k, .. }), true)
            | (Err(SharedTierError::Unverified { key: k, .. }), false) => assert_eq!(k, key),
            (other, _) => panic!("{garbage}: expected corrupt = {corrupt}, got {other:?}"),
        }
    }
    assert_eq!(tier.breaker_state(), BreakerState::Closed);
}

async fn notifications_reach_subscribers(cluster: bool) {
    let redis = Deployment::start(cluster, "tier-notify");
    let tier = redis.tier().await;
    let mut changes = tier.subscribe();
    assert_eq!(next_change(&mut changes).await, TierChange::Resync);
    // A malformed message on the channel is ignored; the next one still arrives.
    redis.cli(&["PUBLISH", "bunting:changes", "garbage"]);
    assert_eq!(
        tier.publish_change("flags", 7).await.unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(
        next_change(&mut changes).await,
        TierChange::Changed {
            set: "flags".to_owned(),
            version: 7
        }
    );
}

async fn user_state_round_trip(cluster: bool) {
    let redis = Deployment::start(cluster, "tier-users");
    let tier = redis.tier().await;
    for shard in 0..12u32 {
        for user in ["alice", "bob"] {
            let state = format!("{user}@{shard}").into_bytes();
            tier.put_user_state(shard, 0, user, &state).await.unwrap();
        }
    }
    tier.put_user_state(3, 0, "bin", &[0, 255, 1])
        .await
        .unwrap();
    tier.delete_user_state(5, 0, "bob").await.unwrap();
    for shard in 0..12u32 {
        let states = tier.load_user_states(shard).await.unwrap();
        let mut expected = vec![("alice".to_owned(), format!("alice@{shard}").into_bytes())];
        if shard == 3 {
            expected.push(("bin".to_owned(), vec![0, 255, 1]));
        }
        if shard != 5 {
            expected.push(("bob".to_owned(), format!("bob@{shard}").into_bytes()));
        }
        assert_eq!(states, expected, "shard {shard}");
    }
    assert!(tier.load_user_states(99).await.unwrap().is_empty());
    if cluster {
        // The shards' hashes spread over the masters rather than sharing one slot.
        let holding = redis
            .servers()
            .iter()
            .filter(|s| s.cli(&["DBSIZE"]) != "0")
            .count();
        assert!(
            holding >= 2,
            "12 shards' state landed on {holding} master(s)"
        );
    }
}

async fn breaker_opens_and_queued_writes_drain(cluster: bool) {
    let metrics = bunting_node::metrics_http::handle().expect("the test installs the recorder");
    let mut redis = Deployment::start(cluster, "tier-outage");
    let tier = redis.tier().await;
    tier.put_snapshot("s", 1, "{\"v\":1}").await.unwrap();
    let gauge = format!(
        "bunting_shared_tier_breaker_state{{endpoint=\"{}\"}}",
        redis.endpoint()
    );

    redis.stop();
    // The first calls fail on the network; once the threshold is reached calls are refused
    // without touching it.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tier.snapshot("s").await {
            Err(SharedTierError::Unavailable { .. }) => break,
            Err(e) => assert!(e.is_transient(), "{e}"),
            Ok(s) => panic!("read {s:?} from a stopped redis"),
        }
        assert!(Instant::now() < deadline, "the breaker never opened");
    }
    assert_eq!(tier.breaker_state(), BreakerState::Open);
    let rendered = metrics.render();
    assert!(
        rendered.contains(&format!("{gauge} 2")),
        "{gauge} not 2 in:\n{rendered}"
    );
    assert!(matches!(
        tier.load_user_states(1).await,
        Err(SharedTierError::Unavailable { .. })
    ));

    // Writes while down wait in the queue, in order.
    assert_eq!(
        tier.put_snapshot("s", 2, "{\"v\":2}").await.unwrap(),
        SnapshotWrite::Queued
    );
    assert_eq!(
        tier.put_snapshot("s", 3, "{\"v\":3}").await.unwrap(),
        SnapshotWrite::Queued
    );
    assert_eq!(
        tier.put_user_state(1, 0, "u", b"state").await.unwrap(),
        WriteOutcome::Queued
    );
    assert_eq!(
        tier.publish_change("s", 3).await.unwrap(),
        WriteOutcome::Queued
    );
    assert_eq!(
        tier.put_running_experiments(&[running("queued")])
            .await
            .unwrap(),
        WriteOutcome::Queued
    );
    assert_eq!(tier.queued_writes(), 5);

    redis.restart();
    wait_until("the queue to drain", PATIENCE, || async {
        tier.queued_writes() == 0
    })
    .await;
    assert_eq!(tier.breaker_state(), BreakerState::Closed);
    assert!(metrics.render().contains(&format!("{gauge} 0")));
    let s = tier.snapshot("s").await.unwrap().unwrap();
    assert_eq!((s.version, s.flags().cloned()), (3, Some(json!({"v": 3}))));
    assert_eq!(
        tier.load_user_states(1).await.unwrap(),
        [("u".to_owned(), b"state".to_vec())]
    );
    assert_eq!(
        tier.running_experiments().await.unwrap(),
        Some(vec![running("queued")])
    );
}

async fn a_full_queue_drops_its_oldest_writes(cluster: bool) {
    let mut redis = Deployment::start(cluster, "tier-full");
    let config = RedisTierConfig {
        write_queue: 3,
        ..redis.config()
    };
    let tier = shared_tier::connect(&SharedTierConfig::Redis(config))
        .await
        .unwrap()
        .unwrap();
    redis.stop();
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        tier.put_user_state(0, 0, user, b"x").await.unwrap();
    }
    assert_eq!(tier.queued_writes(), 3);
    redis.restart();
    wait_until("the queue to drain", PATIENCE, || async {
        tier.queued_writes() == 0
    })
    .await;
    let users: BTreeSet<String> = tier
        .load_user_states(0)
        .await
        .unwrap()
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    // The three newest always land. The drainer's probe may have had the oldest write on the
    // wire when Redis came back, so that one may land too; the others were dropped.
    let newest: BTreeSet<String> = ["u3", "u4", "u5"].map(str::to_owned).into();
    assert!(newest.is_subset(&users), "{users:?}");
    assert!(users.len() <= 4 && !users.contains("u2"), "{users:?}");
}

/// The shard's record of `user`, if any.
async fn record(tier: &dyn SharedTier, shard: u32, user: &str) -> Option<Vec<u8>> {
    tier.load_user_states(shard)
        .await
        .unwrap()
        .into_iter()
        .find_map(|(u, s)| (u == user).then_some(s))
}

async fn user_state_writes_are_fenced_by_the_owner_epoch(cluster: bool) {
    let redis = Deployment::start(cluster, "tier-fence");
    let tier = redis.tier().await;
    let shard = 7;
    // Before any claim, writes at any epoch land (a single node writes at epoch 0).
    tier.put_user_state(shard, 0, "ann", b"v0").await.unwrap();
    assert_eq!(
        tier.claim_user_states(shard, 5).await.unwrap(),
        None,
        "the first claim"
    );
    tier.put_user_state(shard, 5, "ann", b"v5").await.unwrap();

    // A stale owner (epoch 4) is refused, naming the shard and both epochs, and the record stays.
    match tier.put_user_state(shard, 4, "ann", b"stale").await {
        Err(SharedTierError::Fenced {
            shard: 7,
            epoch: 4,
            owner_epoch: 5,
        }) => {}
        other => panic!("a write at epoch 4 after a claim at 5: {other:?}"),
    }
    assert!(matches!(
        tier.delete_user_state(shard, 4, "ann").await,
        Err(SharedTierError::Fenced { .. })
    ));
    assert_eq!(
        record(tier.as_ref(), shard, "ann").await.as_deref(),
        Some(&b"v5"[..])
    );

    // Only the owner's epoch writes: a node at a newer epoch that has not claimed the shard is
    // no owner either.
    assert!(matches!(
        tier.put_user_state(shard, 6, "ann", b"v6").await,
        Err(SharedTierError::Fenced {
            epoch: 6,
            owner_epoch: 5,
            ..
        })
    ));
    tier.put_user_state(shard, 5, "bob", b"b5").await.unwrap();
    assert_eq!(
        record(tier.as_ref(), shard, "bob").await.as_deref(),
        Some(&b"b5"[..])
    );

    // The last claimant wins, also at a lower epoch: a whole cluster restarted counts its map
    // epochs from zero again and must be able to own its shards. (A claim from a stale map is
    // taken back by the owner it displaced; the supervisor decides that.)
    assert_eq!(tier.claim_user_states(shard, 3).await.unwrap(), Some(5));
    tier.put_user_state(shard, 3, "ann", b"v3").await.unwrap();
    assert_eq!(
        record(tier.as_ref(), shard, "ann").await.as_deref(),
        Some(&b"v3"[..])
    );
    assert!(matches!(
        tier.put_user_state(shard, 5, "ann", b"displaced").await,
        Err(SharedTierError::Fenced { owner_epoch: 3, .. })
    ));
    // The epoch is per shard: another shard is not fenced.
    tier.put_user_state(shard + 1, 0, "ann", b"other")
        .await
        .unwrap();
    assert_eq!(
        record(tier.as_ref(), shard + 1, "ann").await.as_deref(),
        Some(&b"other"[..])
    );
}

async fn a_queued_write_fenced_after_recovery_is_dropped(cluster: bool) {
    let metrics = bunting_node::metrics_http::handle().expect("the test installs the recorder");
    let mut redis = Deployment::start(cluster, "tier-fence-queue");
    let config = RedisTierConfig {
        // Once open, the breaker lets no replay through for this long: the restart and the newer
        // owner's claim below fit in it (checked below, so a slow machine fails loudly).
        open_for_ms: 6_000,
        ..redis.config()
    };
    let stale = shared_tier::connect(&SharedTierConfig::Redis(config))
        .await
        .unwrap()
        .unwrap();
    let shard = 2;
    stale.claim_user_states(shard, 1).await.unwrap();
    stale.put_user_state(shard, 1, "ann", b"old").await.unwrap();

    redis.stop();
    // The old owner's writes during the outage wait in its queue, in order: a fenced one must
    // not block the one behind it (another shard, which nobody else claimed).
    let deadline = Instant::now() + PATIENCE;
    loop {
        match stale.put_user_state(shard, 1, "ann", b"queued").await {
            Ok(WriteOutcome::Queued) => break,
            Ok(WriteOutcome::Written) => panic!("wrote to a stopped redis"),
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
        assert!(Instant::now() < deadline, "the write was never queued");
    }
    assert_eq!(
        stale
            .put_user_state(shard + 1, 1, "bob", b"queued")
            .await
            .unwrap(),
        WriteOutcome::Queued
    );
    assert_eq!(stale.queued_writes(), 2);
    // The drainer's failed attempts open the breaker; from that moment no replay is tried for
    // `open_for_ms`.
    wait_until("the breaker to open", PATIENCE, || async {
        stale.breaker_state() == BreakerState::Open
    })
    .await;

    redis.restart();
    // The shard moved meanwhile: its new owner (another node, its own connection) claims it at
    // a newer epoch and records the user before the old owner's queue is replayed.
    let owner = redis.tier().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match owner.claim_user_states(shard, 2).await {
            Ok(_) => break,
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "could not claim after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    owner.put_user_state(shard, 2, "ann", b"new").await.unwrap();
    assert!(
        stale.queued_writes() > 0,
        "replayed before the claim; the test proves nothing"
    );

    wait_until("the queue to drain", PATIENCE, || async {
        stale.queued_writes() == 0
    })
    .await;
    assert_eq!(
        record(owner.as_ref(), shard, "ann").await.as_deref(),
        Some(&b"new"[..])
    );
    assert_eq!(
        record(owner.as_ref(), shard + 1, "bob").await.as_deref(),
        Some(&b"queued"[..])
    );
    let rendered = metrics.render();
    assert!(
        rendered
            .lines()
            .any(|l| l.starts_with("bunting_user_state_fenced_total{at=\"replay\"}")),
        "no replayed write counted as fenced in:\n{rendered}"
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(false).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(true).await;
                }
            )*
        }
    };
}

suite!(
    snapshot_cas_and_index,
    corrupt_snapshots_are_typed_errors,
    running_experiments_round_trip,
    notifications_reach_subscribers,
    user_state_round_trip,
    breaker_opens_and_queued_writes_drain,
    a_full_queue_drops_its_oldest_writes,
    user_state_writes_are_fenced_by_the_owner_epoch,
    a_queued_write_fenced_after_recovery_is_dropped,
);
