//! A rollout end to end on a real node (in process, on PostgreSQL) with simulated traffic: users
//! resolve the flag through the node's gRPC API and send `Track` events; the node's own rollout
//! controller (holding the lease on the test database) judges the guardrail on the counts the
//! shards keep and writes the flag. A release that halves conversion is rolled back; a neutral
//! one climbs to 100%. The rollout is started from the test with `Controller::start_rollout`
//! (there is no rollout API yet).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bunting_experiments::{
    AnalysisSettings, ExperimentId, ExperimentTotals, Metric, MetricKind, MetricName,
};
use bunting_node::config::{Config, FlagSourceConfig};
use bunting_node::rollout::{Controller, GuardrailCounts};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_proto::flagd::evaluation::v1 as flagd;
use bunting_rollouts::{
    BadDirection, Guardrail, RolloutId, RolloutInput, RolloutSpec, RolloutState, StepInput,
};
use bunting_stores::experiments::{ExperimentStore, NewExperiment, PostgresExperimentStore};
use bunting_stores::rollouts::{PostgresRolloutStore, RolloutStore};
use bunting_stores::{AdminStore, PostgresStore};
use serde_json::json;

mod common;

use common::admin::create_set_with_flags;
use common::in_process::TestNode;
use common::postgres::TestDb;

/// How long a rollout may take to finish here; it bounds a broken test, it is not a speed check.
const PATIENCE: Duration = Duration::from_secs(90);

/// Starts a rollout's counting the way the node does (an experiment `rollout.<id>`), for the
/// test's own controller, which never ticks: the node's does.
#[derive(Debug)]
struct StartOnly(Arc<dyn ExperimentStore>);

#[async_trait]
impl GuardrailCounts for StartOnly {
    async fn running_experiment(&self, _: &str, _: &str) -> Result<Option<ExperimentId>, String> {
        Ok(None)
    }
    async fn start(&self, spec: &RolloutSpec, principal: &str) -> Result<(), String> {
        let id = ExperimentId::new(format!("rollout.{}", spec.id)).unwrap();
        self.0
            .create_experiment(
                NewExperiment {
                    id: id.clone(),
                    flag_set: spec.flag_set.clone(),
                    flag_key: spec.flag_key.clone(),
                    control: spec.baseline.clone(),
                    metrics: spec.guardrails.iter().map(|g| g.metric.clone()).collect(),
                    split: Default::default(),
                    analysis: AnalysisSettings::default(),
                },
                principal,
            )
            .await
            .map_err(|e| e.to_string())?;
        self.0
            .start_experiment(&id, principal)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    async fn totals(&self, _: &RolloutSpec) -> Result<ExperimentTotals, String> {
        Err("the test's controller never ticks".into())
    }
    async fn stop(&self, _: &RolloutSpec, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// A deterministic per-user coin in [0, 1): splitmix64 of the user number.
fn coin(user: u64) -> f64 {
    let mut z = user
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(0x5eed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn input(id: &str) -> RolloutInput {
    RolloutInput {
        id: id.to_owned(),
        flag_set: "default".to_owned(),
        flag_key: "banner".to_owned(),
        released: "on".to_owned(),
        baseline: "off".to_owned(),
        steps: [20, 50, 100]
            .map(|percent| StepInput {
                percent,
                min_duration_secs: 1,
                min_users: 200,
            })
            .to_vec(),
        guardrails: vec![Guardrail {
            metric: Metric {
                name: MetricName::new("purchase").unwrap(),
                event: "purchase".to_owned(),
                kind: MetricKind::Conversion,
            },
            bad: BadDirection::Decrease,
            tolerance: 0.0,
        }],
        alpha: 0.05,
    }
}

struct Run {
    end: RolloutState,
    /// Users served the released variant before the rollout ended.
    saw_released: u64,
}

/// Starts the rollout, then sends users until it ends: each resolves `banner` and converts with
/// `rate(variant)`.
async fn run(rate: fn(&str) -> f64) -> Run {
    let db = TestDb::create().await;
    let node = TestNode::start(Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        flags: FlagSourceConfig::Postgres {
            url: db.url.clone().into(),
            version_check: Duration::from_secs(1),
        },
        shards: 2,
        ..Config::default()
    })
    .await;
    let pre = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                     "defaultVariant": "off"});
    let mut admin = AdminClient::new(node.channel().await);
    create_set_with_flags(&mut admin, "default", &[("banner", pre.clone())], "ada").await;

    let flags = PostgresStore::connect(&db.url, Default::default())
        .await
        .unwrap();
    let rollouts: Arc<dyn RolloutStore> = Arc::new(PostgresRolloutStore::new(&flags));
    let starter = Controller::new(
        Arc::new(flags.clone()),
        rollouts.clone(),
        Arc::new(StartOnly(Arc::new(PostgresExperimentStore::new(&flags)))),
        None,
    );
    let id = RolloutId::new("banner-on").unwrap();
    starter
        .start_rollout(input(id.as_str()), "ada", chrono::Utc::now())
        .await
        .unwrap();

    let mut resolve = flagd::service_client::ServiceClient::new(node.channel().await);
    let mut track = ExperimentsClient::new(node.channel().await);
    let started = Instant::now();
    let mut saw_released = 0;
    let mut user = 0u64;
    let end = loop {
        let state = rollouts.get_rollout(&id).await.unwrap().state;
        if !state.is_active() {
            break state;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "still {state:?} after {PATIENCE:?}"
        );
        for _ in 0..100 {
            user += 1;
            let key = format!("user-{user}");
            let context = prost_types::Struct {
                fields: [(
                    "targetingKey".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(key.clone())),
                    },
                )]
                .into(),
            };
            let answer = resolve
                .resolve_boolean(flagd::ResolveBooleanRequest {
                    flag_key: "banner".into(),
                    context: Some(context),
                })
                .await
                .unwrap()
                .into_inner();
            if answer.variant == "on" {
                saw_released += 1;
            }
            if coin(user) < rate(&answer.variant) {
                track
                    .track(pb::TrackRequest {
                        targeting_key: key,
                        event: "purchase".into(),
                        value: 1.0,
                        flag_set_id: None,
                    })
                    .await
                    .unwrap();
            }
        }
    };
    let elapsed = started.elapsed();
    let flag = flags.get_flag("default", "banner").await.unwrap();
    match end {
        RolloutState::RolledBack { .. } => assert_eq!(flag.definition, pre),
        RolloutState::Completed { .. } => assert_eq!(flag.definition["defaultVariant"], "on"),
        ref other => panic!("ended {other:?}"),
    }
    assert_eq!(
        flags
            .list_audit(Some("default"), Some("banner"), None, 1)
            .await
            .unwrap()[0]
            .actor,
        "rollout:banner-on"
    );
    eprintln!(
        "{end:?} after {elapsed:?} and {user} users, {saw_released} of them served the release"
    );
    node.stop().await;
    Run { end, saw_released }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_halves_conversion_is_rolled_back() {
    let run = run(|variant| if variant == "on" { 0.10 } else { 0.30 }).await;
    assert!(
        matches!(run.end, RolloutState::RolledBack { .. }),
        "{:?}",
        run.end
    );
    assert!(run.saw_released > 0);
}

/// By design a neutral release is rolled back with chance at most alpha / 2 (2.5%): the users
/// and their conversions are deterministic, but where the controller looks depends on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neutral_release_reaches_everyone() {
    let run = run(|_| 0.2).await;
    assert!(
        matches!(run.end, RolloutState::Completed { .. }),
        "{:?}",
        run.end
    );
}
