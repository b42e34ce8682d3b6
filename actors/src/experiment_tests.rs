//! Exposures, conversions and their statistics in the actor tree: counted once per user, only by
//! the owning node, kept across an ownership move and a shard restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bunting_engine::{CompileOptions, EvaluationContext, FlagType, compile};
use bunting_experiments::{
    Experiment, ExperimentId, MemoryEventStore, Metric, MetricKind, MetricName, RunningExperiments,
};
use serde_json::json;

use crate::{
    Catalog, MemoryUserStates, Node, NodeConfig, ResolveRequest, ShardServices, TrackRefused,
    TrackRequest, Update, UserStateError, UserStateStore,
};

const SHARDS: u32 = 4;

fn catalog() -> Catalog {
    let doc = json!({"flags": {
        "button": {"state": "ENABLED", "variants": {"blue": "blue", "green": "green", "red": "red"},
                   "defaultVariant": "blue",
                   "targeting": {"fractional": [["blue", 50], ["green", 50]]}},
        "solid": {"state": "ENABLED", "variants": {"red": "red", "blue": "blue"}, "defaultVariant": "red"}
    }});
    let flags = compile(&doc.to_string(), &CompileOptions::default())
        .unwrap()
        .flag_set
        .with_version(1);
    Catalog::new()
        .apply(&Update::Put {
            set: "default".into(),
            flags: Arc::new(flags),
            committed_at: SystemTime::now(),
        })
        .unwrap()
}

fn experiment() -> Experiment {
    let metric = |name: &str, kind| Metric {
        name: MetricName::new(name).unwrap(),
        event: "purchase".into(),
        kind,
    };
    let mut e = Experiment::draft(
        ExperimentId::new("checkout").unwrap(),
        "default",
        "button",
        ["blue".to_owned(), "green".to_owned()],
        "blue",
        vec![
            metric("bought", MetricKind::Conversion),
            metric("revenue", MetricKind::Mean),
        ],
    )
    .unwrap();
    e.start(1).unwrap();
    e
}

async fn node(services: &ShardServices) -> Node {
    let node = Node::start_with(
        NodeConfig {
            shards: SHARDS,
            ..NodeConfig::default()
        },
        catalog(),
        services.clone(),
    )
    .await
    .unwrap();
    node.install_experiments(Arc::new(RunningExperiments::new([experiment()])))
        .await
        .unwrap();
    node
}

async fn evaluate(node: &Node, user: &str) -> String {
    let r = node
        .resolve(ResolveRequest {
            set: None,
            key: "button".into(),
            wanted: Some(FlagType::String),
            context: EvaluationContext::new().with_targeting_key(user),
        })
        .await
        .unwrap();
    r.variant.unwrap()
}

async fn track(node: &Node, user: &str, value: f64) -> Result<Vec<ExperimentId>, TrackRefused> {
    node.track(TrackRequest {
        user: user.into(),
        event: "purchase".into(),
        value,
        flag_set: None,
    })
    .await
    .unwrap()
}

fn id() -> ExperimentId {
    ExperimentId::new("checkout").unwrap()
}

#[tokio::test]
async fn each_user_is_exposed_once_and_converts_toward_their_arm() {
    let services = ShardServices::in_memory();
    let node = node(&services).await;
    let mut arms = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..200 {
        let user = format!("user-{i}");
        let variant = evaluate(&node, &user).await;
        // Repeated evaluations are not new exposures.
        assert_eq!(evaluate(&node, &user).await, variant);
        *arms.entry(variant).or_default() += 1;
    }
    assert_eq!(track(&node, "user-1", 10.0).await.unwrap(), vec![id()]);
    assert_eq!(track(&node, "user-1", 5.0).await.unwrap(), vec![id()]);
    assert!(
        track(&node, "never-exposed", 1.0).await.unwrap().is_empty(),
        "no exposure, no conversion"
    );
    assert!(matches!(
        track(&node, "user-2", f64::NAN).await,
        Err(TrackRefused::BadEvent(_))
    ));
    assert!(matches!(
        track(&node, "user-2", -3.0).await,
        Err(TrackRefused::BadEvent(_))
    ));

    let live = node.experiment_totals(&id()).await.unwrap();
    assert!(node.flush().await.unwrap() > 0);
    assert_eq!(
        services.events.totals(&id()).await.unwrap(),
        live,
        "the flush wrote the live counts"
    );
    let totals = services.events.totals(&id()).await.unwrap();
    assert_eq!(totals.exposed(), 200);
    for (arm, users) in &arms {
        assert_eq!(totals.arms[arm].exposed, *users, "arm {arm}");
    }
    let arm_of_user_1 = evaluate(&node, "user-1").await;
    let metrics = &totals.arms[&arm_of_user_1].metrics;
    assert_eq!(metrics[&MetricName::new("bought").unwrap()].converted, 1);
    let revenue = metrics[&MetricName::new("revenue").unwrap()];
    assert_eq!((revenue.sum, revenue.sum_squares), (15.0, 225.0));
    assert_eq!(
        node.flush().await.unwrap(),
        0,
        "nothing changed since the last flush"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_shard_moved_to_another_node_keeps_its_users() {
    // Two nodes sharing the stores, as two cluster members share Redis and the event store.
    let services = ShardServices {
        user_states: Arc::new(MemoryUserStates::default()),
        events: Arc::new(MemoryEventStore::default()),
    };
    let a = node(&services).await;
    let b = node(&services).await;
    b.set_owned(vec![false; SHARDS as usize], 1).await.unwrap();
    for i in 0..100 {
        evaluate(&a, &format!("user-{i}")).await;
    }
    track(&a, "user-7", 4.0).await.unwrap();
    // The move: A gives every shard up, B takes them.
    a.set_owned(vec![false; SHARDS as usize], 2).await.unwrap();
    b.set_owned(vec![true; SHARDS as usize], 2).await.unwrap();
    assert!(matches!(
        track(&a, "user-7", 1.0).await,
        Err(TrackRefused::NotOwner(_))
    ));
    // Users already exposed are not exposed again on B; their conversions continue.
    for i in 0..100 {
        evaluate(&b, &format!("user-{i}")).await;
    }
    assert_eq!(track(&b, "user-7", 1.0).await.unwrap(), vec![id()]);
    b.flush().await.unwrap();
    let totals = services.events.totals(&id()).await.unwrap();
    assert_eq!(totals.exposed(), 100, "a move must not count users twice");
    let arm = evaluate(&b, "user-7").await;
    let revenue = totals.arms[&arm].metrics[&MetricName::new("revenue").unwrap()];
    assert_eq!(
        (revenue.sum, revenue.sum_squares),
        (5.0, 25.0),
        "user-7's total is 4 + 1"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_restarted_shard_reloads_its_users() {
    let services = ShardServices::in_memory();
    let node = node(&services).await;
    for i in 0..50 {
        evaluate(&node, &format!("user-{i}")).await;
    }
    for shard in 0..SHARDS {
        node.crash_shard(shard);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..50 {
        evaluate(&node, &format!("user-{i}")).await;
    }
    node.flush().await.unwrap();
    assert_eq!(services.events.totals(&id()).await.unwrap().exposed(), 50);
    node.shutdown().await;
}

#[tokio::test]
async fn a_variant_that_is_not_an_arm_counts_nothing() {
    // The flag's variants changed after the experiment was defined: "red" is served, but the arms
    // are blue and green. Such evaluations are not exposures (and are counted in a metric).
    let services = ShardServices::in_memory();
    let node = node(&services).await;
    let mut on_solid = experiment();
    on_solid.id = ExperimentId::new("solid-test").unwrap();
    on_solid.flag_key = "solid".into();
    node.install_experiments(Arc::new(RunningExperiments::new([experiment(), on_solid])))
        .await
        .unwrap();
    for i in 0..20 {
        let r = node
            .resolve(ResolveRequest {
                set: None,
                key: "solid".into(),
                wanted: Some(FlagType::String),
                context: EvaluationContext::new().with_targeting_key(format!("user-{i}")),
            })
            .await
            .unwrap();
        assert_eq!(r.variant.as_deref(), Some("red"));
    }
    let solid = ExperimentId::new("solid-test").unwrap();
    assert_eq!(node.experiment_totals(&solid).await.unwrap().exposed(), 0);
    assert!(
        track(&node, "user-1", 1.0).await.unwrap().is_empty(),
        "not exposed, so nothing to attribute"
    );
    node.shutdown().await;
}

/// Memory user states that fence like the shared tier: a per-shard owner epoch set by each claim
/// (the last claimant wins), and writes at any other epoch refused. Counts claims per shard.
#[derive(Debug, Default)]
struct FencingStates {
    inner: MemoryUserStates,
    owners: std::sync::Mutex<std::collections::HashMap<u32, u64>>,
    claims: std::sync::Mutex<Vec<(u32, u64)>>,
}

#[async_trait::async_trait]
impl UserStateStore for FencingStates {
    async fn claim(&self, shard: u32, epoch: u64) -> Result<(), UserStateError> {
        self.claims.lock().unwrap().push((shard, epoch));
        self.owners.lock().unwrap().insert(shard, epoch);
        Ok(())
    }

    async fn load(&self, shard: u32) -> Result<Vec<(String, Vec<u8>)>, UserStateError> {
        self.inner.load(shard).await
    }

    async fn save(
        &self,
        shard: u32,
        epoch: u64,
        user: &str,
        state: &[u8],
    ) -> Result<(), UserStateError> {
        let owner = self.owners.lock().unwrap().get(&shard).copied();
        if let Some(owner) = owner.filter(|owner| *owner != epoch) {
            return Err(UserStateError::Fenced {
                shard,
                epoch,
                owner_epoch: owner,
            });
        }
        self.inner.save(shard, epoch, user, state).await
    }
}

/// Shard services on one [`FencingStates`] (returned too, to look into), as two nodes share a
/// Redis.
fn fencing_services() -> (Arc<FencingStates>, ShardServices) {
    let store = Arc::new(FencingStates::default());
    let services = ShardServices {
        user_states: store.clone(),
        events: Arc::new(MemoryEventStore::default()),
    };
    (store, services)
}

/// A user of `shard` (users are spread over shards by the key's hash).
fn user_in(shard: u32, not: &str) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| u != not && bunting_keyspace::shard_of(u, SHARDS) == shard)
        .unwrap()
}

#[tokio::test]
async fn a_fenced_shard_stops_owning_and_still_answers() {
    let (store, services) = fencing_services();
    // A holds every shard from the start (epoch 0). B takes them under map 2, which A has not
    // adopted yet: for a while both believe they own the shards.
    let a = node(&services).await;
    let b = node(&services).await;
    b.set_owned(vec![false; SHARDS as usize], 1).await.unwrap();
    b.set_owned(vec![true; SHARDS as usize], 2).await.unwrap();

    let ann = "user-1";
    let ann_shard = bunting_keyspace::shard_of(ann, SHARDS);
    // The stale owner's write is fenced: the evaluation is still answered, nothing is counted,
    // and A no longer acts as the shard's owner.
    let variant = evaluate(&a, ann).await;
    assert!(["blue", "green"].contains(&variant.as_str()), "{variant}");
    assert_eq!(a.experiment_totals(&id()).await.unwrap().exposed(), 0);
    assert!(matches!(
        track(&a, ann, 1.0).await,
        Err(TrackRefused::NotOwner(shard)) if shard == ann_shard
    ));
    assert!(store.inner.load(ann_shard).await.unwrap().is_empty());
    // The exposure was left to the new owner, which records it when it handles the user.
    assert_eq!(evaluate(&b, ann).await, variant);
    assert_eq!(b.experiment_totals(&id()).await.unwrap().exposed(), 1);

    // Map 4 gives every shard back to A. Ann's shard, released by the fence, is claimed again
    // at 4 and finds B's record of her.
    b.set_owned(vec![false; SHARDS as usize], 4).await.unwrap();
    a.set_owned(vec![true; SHARDS as usize], 4).await.unwrap();
    assert_eq!(track(&a, ann, 2.0).await.unwrap(), vec![id()]);
    assert!(store.claims.lock().unwrap().contains(&(ann_shard, 4)));
    assert_eq!(evaluate(&a, ann).await, variant);

    // Another shard A held since epoch 0 without noticing B: its first write is fenced too, and
    // since A's map (4) is newer than that acquisition, it is claimed again at once; the user's
    // next evaluation is counted.
    let other_shard = (ann_shard + 1) % SHARDS;
    let bob = user_in(other_shard, ann);
    evaluate(&a, &bob).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.experiment_totals(&id()).await.unwrap().exposed() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "shard {other_shard} was never re-acquired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        evaluate(&a, &bob).await;
    }
    assert!(store.claims.lock().unwrap().contains(&(other_shard, 4)));
    assert_eq!(a.experiment_totals(&id()).await.unwrap().exposed(), 2);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_claim_from_a_stale_map_is_taken_back_and_the_stale_owner_lets_go() {
    let (store, services) = fencing_services();
    let a = node(&services).await;
    let b = node(&services).await;
    b.set_owned(vec![false; SHARDS as usize], 1).await.unwrap();
    a.set_owned(vec![false; SHARDS as usize], 2).await.unwrap();
    // B owns every shard under map 5; A, lagging, acts on map 3, which gave it the shards, and
    // claims them after B did: the last claim is A's.
    b.set_owned(vec![true; SHARDS as usize], 5).await.unwrap();
    a.set_owned(vec![true; SHARDS as usize], 3).await.unwrap();

    let ann = "user-1";
    let ann_shard = bunting_keyspace::shard_of(ann, SHARDS);
    let claims_at = |epoch: u64| {
        store
            .claims
            .lock()
            .unwrap()
            .iter()
            .filter(|c| **c == (ann_shard, epoch))
            .count()
    };
    // B's write is fenced by A's claim; B's map (5) is newer than A's (3), so B claims the shard
    // back, and the user's next evaluation on B is counted.
    let variant = evaluate(&b, ann).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.experiment_totals(&id()).await.unwrap().exposed() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "B never took the shard back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(evaluate(&b, ann).await, variant);
    }
    assert_eq!(claims_at(5), 2, "B's acquisition and its one claim back");
    // A's write is fenced by B's claim; A's map is older, so A lets go: it still answers,
    // counts nothing, and refuses the user's Track.
    assert_eq!(evaluate(&a, ann).await, variant);
    assert!(matches!(
        track(&a, ann, 1.0).await,
        Err(TrackRefused::NotOwner(shard)) if shard == ann_shard
    ));
    for _ in 0..5 {
        evaluate(&a, ann).await;
        evaluate(&b, ann).await;
    }
    assert_eq!(
        (claims_at(3), claims_at(5)),
        (1, 2),
        "no further claims: the two do not take turns"
    );
    assert_eq!(a.experiment_totals(&id()).await.unwrap().exposed(), 0);
    assert_eq!(b.experiment_totals(&id()).await.unwrap().exposed(), 1);
    assert_eq!(track(&b, ann, 1.0).await.unwrap(), vec![id()]);
    a.shutdown().await;
    b.shutdown().await;
}

/// The fast path is taken exactly for what records no per-user state: a flag without a running
/// experiment, or a context without a targeting key. A flag with one still goes to its shard, and
/// its exposure is recorded there; the same for a resolve-all of a set with one.
#[tokio::test]
async fn only_evaluations_without_per_user_state_take_the_fast_path() {
    use crate::{Lane, ResolveAllRequest};

    let services = ShardServices::in_memory();
    let node = node(&services).await;
    let request = |key: &str, user: Option<&str>| ResolveRequest {
        set: None,
        key: key.into(),
        wanted: Some(FlagType::String),
        context: match user {
            Some(user) => EvaluationContext::new().with_targeting_key(user),
            None => EvaluationContext::new(),
        },
    };
    // (flag, targeting key, expected lane)
    let table = [
        ("solid", Some("user-1"), "here"),
        ("solid", None, "here"),
        ("missing", Some("user-1"), "here"),
        ("button", None, "here"),
        ("button", Some("user-1"), "shard"),
    ];
    for (key, user, expected) in table {
        let before = node.resolved_here();
        let answer = match node.lane(request(key, user)) {
            Lane::Here(here) => {
                assert_eq!(expected, "here", "{key} for {user:?}");
                node.resolve_here(here)
            }
            Lane::Shard(request) => {
                assert_eq!(expected, "shard", "{key} for {user:?}");
                node.resolve(request).await.unwrap()
            }
        };
        let counted = node.resolved_here() - before;
        assert_eq!(counted, u64::from(expected == "here"), "{key} for {user:?}");
        // The same answer on either path.
        assert_eq!(
            answer,
            node.resolve(request(key, user)).await.unwrap(),
            "{key} for {user:?}"
        );
    }
    let totals = node.experiment_totals(&id()).await.unwrap();
    assert_eq!(
        totals.arms.values().map(|a| a.exposed).sum::<u64>(),
        1,
        "user-1's exposure to the experiment on button was recorded by its shard: {totals:?}"
    );

    let all = |user: &str| ResolveAllRequest {
        set: None,
        context: EvaluationContext::new().with_targeting_key(user),
    };
    assert!(
        matches!(node.lane_all(all("user-2")), Lane::Shard(_)),
        "a set with a running experiment on one of its flags goes to the shard"
    );
    node.install_experiments(Arc::new(RunningExperiments::default()))
        .await
        .unwrap();
    let Lane::Here(here) = node.lane_all(all("user-2")) else {
        panic!("without experiments a resolve-all takes the fast path");
    };
    let set = node.resolve_all_here(here).unwrap();
    assert_eq!(
        set.flags
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["button", "solid"]
    );
    assert!(
        matches!(node.lane(request("button", Some("user-3"))), Lane::Here(_)),
        "a stopped experiment no longer needs the shard"
    );
    node.shutdown().await;
}
