//! The rollout controller on PostgreSQL: two "nodes" (controllers with their own leases on one
//! database) where only the lease holder acts; the holder's session is killed mid-rollout and
//! the other node continues from the stored state; a scheduled change survives a restart (new
//! store, new controller) and fires once. Guardrail counts are scripted (neutral), so this is
//! about the lease, the stores and the writes; the statistics are `bunting-rollouts`' tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bunting_engine::CompileOptions;
use bunting_experiments::{
    ArmTotals, ExperimentId, ExperimentTotals, Metric, MetricKind, MetricName, MetricTotals,
};
use bunting_node::rollout::{Controller, GuardrailCounts, Taken};
use bunting_rollouts::{
    BadDirection, Guardrail, RolloutId, RolloutInput, RolloutSpec, RolloutState, StepInput,
};
use bunting_stores::rollouts::{
    Lease, PgLease, PostgresRolloutStore, RolloutStore, ScheduledAction,
};
use bunting_stores::{AdminStore, FlagSetFields, PostgresSettings, PostgresStore};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

mod common;

use common::postgres::TestDb;

/// Neutral counts: 5,000 users per arm, 10% conversion in both.
#[derive(Debug)]
struct Neutral;

#[async_trait]
impl GuardrailCounts for Neutral {
    async fn running_experiment(&self, _: &str, _: &str) -> Result<Option<ExperimentId>, String> {
        Ok(None)
    }
    async fn start(&self, _: &RolloutSpec, _: &str) -> Result<(), String> {
        Ok(())
    }
    async fn totals(&self, _: &RolloutSpec) -> Result<ExperimentTotals, String> {
        let arm = || ArmTotals {
            exposed: 5_000,
            metrics: [(
                MetricName::new("purchase").unwrap(),
                MetricTotals {
                    converted: 500,
                    ..Default::default()
                },
            )]
            .into(),
        };
        Ok(ExperimentTotals {
            arms: [("off".to_owned(), arm()), ("on".to_owned(), arm())].into(),
        })
    }
    async fn stop(&self, _: &RolloutSpec, _: &str) -> Result<(), String> {
        Ok(())
    }
}

fn pre() -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
}

fn input() -> RolloutInput {
    RolloutInput {
        id: "banner-on".to_owned(),
        flag_set: "default".to_owned(),
        flag_key: "banner".to_owned(),
        released: "on".to_owned(),
        baseline: "off".to_owned(),
        steps: [5, 50, 100]
            .map(|percent| StepInput {
                percent,
                min_duration_secs: 60,
                min_users: 1_000,
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

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
}

/// One node's view: its own connection pool (as a node has), its controller and its lease.
struct Node {
    flags: PostgresStore,
    rollouts: Arc<dyn RolloutStore>,
    controller: Controller,
    lease: PgLease,
}

async fn node(db: &TestDb, key: i64) -> Node {
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
    let rollouts: Arc<dyn RolloutStore> = Arc::new(PostgresRolloutStore::new(&flags));
    let controller = Controller::new(
        Arc::new(flags.clone()),
        rollouts.clone(),
        Arc::new(Neutral),
        None,
    );
    Node {
        lease: PgLease::with_key(&flags, key),
        flags,
        rollouts,
        controller,
    }
}

impl Node {
    /// What the loop does each tick: act only while holding the lease.
    async fn tick(&mut self, now: DateTime<Utc>) -> Option<Vec<Taken>> {
        if self.lease.hold().await {
            Some(self.controller.tick(now).await)
        } else {
            None
        }
    }
}

/// A lease key of this test process's own, so tests on one server do not share a lease.
fn key(n: i64) -> i64 {
    (i64::from(std::process::id()) << 24) | n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_continues_on_another_node_when_the_controllers_node_dies() {
    let db = TestDb::create().await;
    let mut a = node(&db, key(1)).await;
    let mut b = node(&db, key(1)).await;
    a.flags
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    a.flags
        .create_flag("default", "banner", pre(), None, "ada")
        .await
        .unwrap();
    a.controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap();

    assert_eq!(
        a.tick(at(1)).await,
        Some(vec![]),
        "a holds the lease; too early"
    );
    assert_eq!(b.tick(at(1)).await, None, "b does not act");
    let id = RolloutId::new("banner-on").unwrap();
    assert_eq!(
        a.tick(at(61)).await,
        Some(vec![Taken::Advanced {
            rollout: id.clone(),
            to_step: 1
        }])
    );

    // a's node dies: its session (and so its lock) ends with it.
    let mut raw: sqlx::PgConnection = sqlx::ConnectOptions::connect(&db.options).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
          WHERE locktype = 'advisory' AND objid = ($1::bigint & 4294967295)::oid AND granted",
    )
    .bind(key(1))
    .fetch_all(&mut raw)
    .await
    .unwrap();
    assert_eq!(killed, [(true,)]);
    drop(a);

    // b takes over within a few ticks and continues from the stored step.
    let mut taken = None;
    for _ in 0..50 {
        taken = b.tick(at(122)).await;
        if taken.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        taken,
        Some(vec![Taken::Advanced {
            rollout: id.clone(),
            to_step: 2
        }])
    );
    assert_eq!(
        b.tick(at(183)).await,
        Some(vec![Taken::Completed {
            rollout: id.clone()
        }])
    );
    let flag = b
        .flags
        .get_flag("default", "banner")
        .await
        .unwrap()
        .definition;
    assert_eq!(flag["defaultVariant"], "on");
    assert!(matches!(
        b.rollouts.get_rollout(&id).await.unwrap().state,
        RolloutState::Completed { .. }
    ));
    // Every step is in the audit log as the rollout's write.
    let writers: Vec<String> = b
        .flags
        .list_audit(Some("default"), Some("banner"), None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.actor)
        .collect();
    assert_eq!(
        writers,
        [
            "rollout:banner-on",
            "rollout:banner-on",
            "rollout:banner-on",
            "rollout:banner-on",
            "ada"
        ],
        "newest first: the completion, 100%, 50%, the start at 5%, then the flag's creation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_change_fires_once_at_its_time_after_a_restart() {
    let db = TestDb::create().await;
    let due = at(600);
    {
        let first = node(&db, key(2)).await;
        first
            .flags
            .create_flag_set("default", FlagSetFields::default(), "ada")
            .await
            .unwrap();
        first
            .flags
            .create_flag("default", "banner", pre(), None, "ada")
            .await
            .unwrap();
        let mut on = pre();
        on["defaultVariant"] = json!("on");
        first
            .rollouts
            .schedule(
                due,
                ScheduledAction::FlagChange {
                    flag_set: "default".into(),
                    flag_key: "banner".into(),
                    definition: on,
                },
                "ada",
            )
            .await
            .unwrap();
        first.flags.close().await;
    }
    // The restart: a new pool, a new controller, the same database.
    let mut second = node(&db, key(2)).await;
    assert_eq!(second.tick(at(599)).await, Some(vec![]), "not due yet");
    let fired = second.tick(due).await.unwrap();
    assert!(
        matches!(fired.as_slice(), [Taken::Fired { .. }]),
        "{fired:?}"
    );
    let flag = second.flags.get_flag("default", "banner").await.unwrap();
    assert_eq!(flag.definition["defaultVariant"], "on");
    assert_eq!(second.tick(at(700)).await, Some(vec![]), "fired once");
    let audit = second
        .flags
        .list_audit(Some("default"), Some("banner"), None, 100)
        .await
        .unwrap();
    assert_eq!(audit.len(), 2, "the creation and the one scheduled write");
    assert!(
        audit[0].actor.starts_with("schedule:"),
        "{}",
        audit[0].actor
    );
}
