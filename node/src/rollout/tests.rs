//! The controller on in-memory stores with scripted guardrail counts: what it writes to the flag,
//! as whom, and what it records, for each action; the manual-edit pause; scheduled changes that
//! fire once; a second controller continuing from the stored state.

// The memory admin store is the point here: the controller on in-process stores.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bunting_engine::CompileOptions;
use bunting_experiments::{
    ArmTotals, ExperimentId, ExperimentTotals, Metric, MetricKind, MetricName, MetricTotals,
};
use bunting_rollouts::{
    BadDirection, Guardrail, PauseCause, RolloutId, RolloutInput, RolloutSpec, RolloutState,
    StepInput,
};
use bunting_stores::memory::MemoryAdminStore;
use bunting_stores::rollouts::{MemoryRolloutStore, RolloutStore, ScheduleState, ScheduledAction};
use bunting_stores::{AdminStore, FlagSetFields};
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Value, json};

use super::controller::{ControlError, Controller, GuardrailCounts, Taken};
use super::webhook::Webhook;

#[derive(Debug, Default)]
struct Scripted {
    totals: Mutex<ExperimentTotals>,
    running_experiment: Mutex<Option<ExperimentId>>,
    started: Mutex<Vec<String>>,
    stopped: Mutex<Vec<String>>,
    /// Refuse to start counting (an experiment store that is down).
    refuse_start: Mutex<bool>,
}

impl Scripted {
    /// `users` per arm; conversions of `purchase` at the given rates.
    fn set(&self, users: u64, baseline_rate: f64, released_rate: f64) {
        let arm = |rate: f64| ArmTotals {
            exposed: users,
            metrics: [(
                MetricName::new("purchase").unwrap(),
                MetricTotals {
                    converted: (users as f64 * rate) as u64,
                    ..Default::default()
                },
            )]
            .into(),
        };
        *self.totals.lock().unwrap() = ExperimentTotals {
            arms: [
                ("off".to_owned(), arm(baseline_rate)),
                ("on".to_owned(), arm(released_rate)),
            ]
            .into(),
        };
    }
}

#[async_trait]
impl GuardrailCounts for Scripted {
    async fn running_experiment(&self, _: &str, _: &str) -> Result<Option<ExperimentId>, String> {
        Ok(self.running_experiment.lock().unwrap().clone())
    }
    async fn start(&self, spec: &RolloutSpec, _: &str) -> Result<(), String> {
        if *self.refuse_start.lock().unwrap() {
            return Err("experiment store unavailable".to_owned());
        }
        self.started.lock().unwrap().push(spec.id.to_string());
        Ok(())
    }
    async fn totals(&self, _: &RolloutSpec) -> Result<ExperimentTotals, String> {
        Ok(self.totals.lock().unwrap().clone())
    }
    async fn stop(&self, spec: &RolloutSpec, _: &str) -> Result<(), String> {
        self.stopped.lock().unwrap().push(spec.id.to_string());
        Ok(())
    }
}

struct Fixture {
    flags: Arc<dyn AdminStore>,
    rollouts: Arc<dyn RolloutStore>,
    counts: Arc<Scripted>,
    controller: Controller,
}

fn pre() -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
}

async fn fixture(webhook: Option<Webhook>) -> Fixture {
    let flags: Arc<dyn AdminStore> = Arc::new(MemoryAdminStore::new(CompileOptions::default()));
    flags
        .create_flag_set("default", FlagSetFields::default(), "ada")
        .await
        .unwrap();
    flags
        .create_flag("default", "banner", pre(), None, "ada")
        .await
        .unwrap();
    let rollouts: Arc<dyn RolloutStore> = Arc::new(MemoryRolloutStore::new());
    let counts = Arc::new(Scripted::default());
    let controller = Controller::new(flags.clone(), rollouts.clone(), counts.clone(), webhook);
    Fixture {
        flags,
        rollouts,
        counts,
        controller,
    }
}

fn input() -> RolloutInput {
    RolloutInput {
        id: "banner-on".to_owned(),
        flag_set: "default".to_owned(),
        flag_key: "banner".to_owned(),
        released: "on".to_owned(),
        baseline: "off".to_owned(),
        steps: [10, 50, 100]
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

fn id() -> RolloutId {
    RolloutId::new("banner-on").unwrap()
}

impl Fixture {
    async fn flag(&self) -> Value {
        self.flags
            .get_flag("default", "banner")
            .await
            .unwrap()
            .definition
    }

    async fn last_writer(&self) -> String {
        self.flags
            .list_audit(Some("default"), Some("banner"), None, 1)
            .await
            .unwrap()[0]
            .actor
            .clone()
    }

    async fn state(&self) -> RolloutState {
        self.rollouts.get_rollout(&id()).await.unwrap().state
    }
}

#[tokio::test]
async fn starting_writes_the_first_step_as_the_rollout() {
    let f = fixture(None).await;
    let record = f
        .controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap();
    assert_eq!(record.pre_rollout, pre());
    assert_eq!(
        f.flag().await["targeting"],
        json!({"fractional": [["on", 10], ["off", 90]]})
    );
    assert_eq!(f.last_writer().await, "rollout:banner-on");
    assert_eq!(*f.counts.started.lock().unwrap(), ["banner-on"]);
    let history = f.rollouts.history(&id()).await.unwrap();
    assert_eq!(
        (history[0].principal.as_str(), history[0].reason.as_str()),
        ("ada", "started")
    );
}

#[tokio::test]
async fn starts_the_flag_cannot_carry_are_refused_and_write_nothing() {
    let f = fixture(None).await;
    let mut wrong_variant = input();
    wrong_variant.released = "blue".into();
    let err = f
        .controller
        .start_rollout(wrong_variant, "ada", at(0))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("released variant \"blue\""),
        "{err}"
    );

    let mut bad_steps = input();
    bad_steps.steps[1].percent = 5;
    let err = f
        .controller
        .start_rollout(bad_steps, "ada", at(0))
        .await
        .unwrap_err();
    assert!(matches!(err, ControlError::Definition(_)), "{err}");

    *f.counts.running_experiment.lock().unwrap() = Some(ExperimentId::new("exp-1").unwrap());
    let err = f
        .controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("running experiment exp-1"),
        "{err}"
    );
    *f.counts.running_experiment.lock().unwrap() = None;

    assert_eq!(f.flag().await, pre(), "nothing was written");
    assert!(f.rollouts.list_rollouts(false).await.unwrap().is_empty());

    f.controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap();
    let mut second = input();
    second.id = "again".into();
    let err = f
        .controller
        .start_rollout(second, "ada", at(0))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("already in rollout banner-on"),
        "{err}"
    );
}

#[tokio::test]
async fn a_neutral_release_climbs_each_step_and_completes() {
    let f = fixture(None).await;
    f.controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap();
    f.counts.set(500, 0.1, 0.1);
    assert_eq!(
        f.controller.tick(at(30)).await,
        [],
        "too early and too few users"
    );
    assert_eq!(f.controller.tick(at(61)).await, [], "too few users");
    f.counts.set(2_000, 0.1, 0.1);
    assert_eq!(
        f.controller.tick(at(62)).await,
        [Taken::Advanced {
            rollout: id(),
            to_step: 1
        }]
    );
    assert_eq!(
        f.flag().await["targeting"],
        json!({"fractional": [["on", 50], ["off", 50]]})
    );
    assert_eq!(f.last_writer().await, "rollout:banner-on");
    assert_eq!(
        f.controller.tick(at(100)).await,
        [],
        "step 1's clock started at 62 s"
    );

    // Another controller (the node that took the lease over) continues from the stored state.
    let successor = Controller::new(f.flags.clone(), f.rollouts.clone(), f.counts.clone(), None);
    assert_eq!(
        successor.tick(at(123)).await,
        [Taken::Advanced {
            rollout: id(),
            to_step: 2
        }]
    );
    assert_eq!(
        successor.tick(at(184)).await,
        [Taken::Completed { rollout: id() }]
    );
    let done = f.flag().await;
    assert_eq!(done["defaultVariant"], "on");
    assert!(done.get("targeting").is_none());
    assert!(matches!(f.state().await, RolloutState::Completed { .. }));
    assert_eq!(*f.counts.stopped.lock().unwrap(), ["banner-on"]);
    assert_eq!(
        successor.tick(at(300)).await,
        [],
        "a finished rollout is left alone"
    );
}

/// A one-shot HTTP listener: the request it got (head and body), answered 204.
async fn listener() -> (String, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/s3cr3t", socket.local_addr().unwrap());
    let handle = tokio::spawn(async move {
        let (mut stream, _) = socket.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        stream
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8_lossy(&got).to_string()
    });
    (url, handle)
}

#[tokio::test]
async fn a_regression_rolls_the_flag_back_as_the_rollout_and_announces_it() {
    let (url, request) = listener().await;
    let f = fixture(Some(Webhook::parse(&url, Duration::from_secs(5)).unwrap())).await;
    f.controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap();
    // 10% → 5% conversion on 20,000 users each: a clear regression, before the step's time.
    f.counts.set(20_000, 0.10, 0.05);
    let taken = f.controller.tick(at(5)).await;
    let [Taken::RolledBack { rollout, reason }] = taken.as_slice() else {
        panic!("{taken:?}");
    };
    assert_eq!(rollout, &id());
    assert!(
        reason.starts_with("guardrail purchase regressed"),
        "{reason}"
    );
    assert_eq!(f.flag().await, pre(), "the pre-rollout definition is back");
    assert_eq!(f.last_writer().await, "rollout:banner-on");
    assert!(matches!(
        f.state().await,
        RolloutState::RolledBack { step: 0, .. }
    ));
    let history = f.rollouts.history(&id()).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(
        (last.principal.as_str(), last.reason.as_str()),
        ("rollout:banner-on", reason.as_str())
    );

    let request = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .unwrap()
        .unwrap();
    assert!(
        request.starts_with("POST /hooks/s3cr3t HTTP/1.1"),
        "{request}"
    );
    let body: Value = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["event"], "rolled_back");
    assert_eq!(body["rollout"], "banner-on");
    assert_eq!(body["flag_key"], "banner");
    assert_eq!(f.controller.tick(at(10)).await, [], "rolled back once");
}

#[tokio::test]
async fn a_manual_edit_pauses_the_rollout_and_says_who() {
    let f = fixture(None).await;
    f.controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap();
    let current = f.flags.get_flag("default", "banner").await.unwrap();
    let mut edited = current.definition.clone();
    edited["defaultVariant"] = json!("on");
    f.flags
        .update_flag(
            "default",
            "banner",
            edited.clone(),
            current.version,
            "grace",
        )
        .await
        .unwrap();
    f.counts.set(2_000, 0.1, 0.1);
    let taken = f.controller.tick(at(61)).await;
    let [
        Taken::PausedForManualEdit {
            actor, audit_id, ..
        },
    ] = taken.as_slice()
    else {
        panic!("{taken:?}");
    };
    assert_eq!(actor, "grace");
    assert!(matches!(
        f.state().await,
        RolloutState::Paused { cause: PauseCause::ManualEdit { audit_id: a }, .. } if a == *audit_id
    ));
    let history = f.rollouts.history(&id()).await.unwrap();
    assert!(
        history
            .last()
            .unwrap()
            .reason
            .contains("flag edited by grace")
    );
    assert_eq!(f.flag().await, edited, "the person's edit stands");
    assert_eq!(
        f.controller.tick(at(120)).await,
        [],
        "paused: nothing happens"
    );

    // Resuming re-applies the step and restarts its clock.
    f.controller
        .resume(&id(), "ada", "edit reverted", at(130))
        .await
        .unwrap();
    assert_eq!(
        f.flag().await["targeting"],
        json!({"fractional": [["on", 10], ["off", 90]]})
    );
    assert_eq!(
        f.controller.tick(at(131)).await,
        [],
        "no pause: the last write is the rollout's"
    );
    assert_eq!(
        f.controller.tick(at(191)).await,
        [Taken::Advanced {
            rollout: id(),
            to_step: 1
        }]
    );
}

#[tokio::test]
async fn abort_restores_the_flag_and_ends_the_rollout() {
    let f = fixture(None).await;
    f.controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap();
    f.controller
        .pause(&id(), "ada", "looking", at(1))
        .await
        .unwrap();
    let err = f
        .controller
        .pause(&id(), "ada", "again", at(2))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "the rollout is paused; it cannot pause");
    f.controller
        .abort(&id(), "ada", "wrong day", at(3))
        .await
        .unwrap();
    assert_eq!(f.flag().await, pre());
    assert!(matches!(f.state().await, RolloutState::Aborted { .. }));
    assert!(f.controller.resume(&id(), "ada", "", at(4)).await.is_err());
}

#[tokio::test]
async fn scheduled_changes_fire_once_when_due_and_not_when_cancelled() {
    let f = fixture(None).await;
    let mut changed = pre();
    changed["defaultVariant"] = json!("on");
    let flag_change = f
        .rollouts
        .schedule(
            at(100),
            ScheduledAction::FlagChange {
                flag_set: "default".into(),
                flag_key: "banner".into(),
                definition: changed.clone(),
            },
            "ada",
        )
        .await
        .unwrap();
    let cancelled = f
        .rollouts
        .schedule(
            at(50),
            ScheduledAction::StartRollout { rollout: input() },
            "ada",
        )
        .await
        .unwrap();
    f.rollouts
        .cancel_scheduled(cancelled.id, "grace")
        .await
        .unwrap();

    assert_eq!(f.controller.tick(at(99)).await, [], "not due yet");
    // Two controllers at once (a lease changing hands): the change fires once.
    let other = Controller::new(f.flags.clone(), f.rollouts.clone(), f.counts.clone(), None);
    let (a, b) = tokio::join!(f.controller.tick(at(100)), other.tick(at(100)));
    let fired: Vec<_> = a.into_iter().chain(b).collect();
    assert_eq!(
        fired,
        [Taken::Fired {
            schedule: flag_change.id
        }]
    );
    assert_eq!(f.flag().await, changed);
    assert_eq!(
        f.last_writer().await,
        format!("schedule:{}", flag_change.id)
    );
    assert_eq!(f.controller.tick(at(200)).await, []);
    assert!(
        f.rollouts.list_rollouts(false).await.unwrap().is_empty(),
        "the cancelled start never ran"
    );
    let states: Vec<&str> = f
        .rollouts
        .list_scheduled(false)
        .await
        .unwrap()
        .iter()
        .map(|c| c.state.name())
        .collect();
    assert_eq!(states, ["cancelled", "fired"]);
    assert!(matches!(
        f.rollouts.list_scheduled(false).await.unwrap()[1].state,
        ScheduleState::Fired { .. }
    ));
}

#[tokio::test]
async fn a_scheduled_rollout_start_runs_as_its_author() {
    let f = fixture(None).await;
    f.rollouts
        .schedule(
            at(10),
            ScheduledAction::StartRollout { rollout: input() },
            "ada",
        )
        .await
        .unwrap();
    let taken = f.controller.tick(at(10)).await;
    assert!(
        matches!(taken.as_slice(), [Taken::Fired { .. }]),
        "{taken:?}"
    );
    let history = f.rollouts.history(&id()).await.unwrap();
    assert_eq!(history[0].principal, "ada");
    assert_eq!(
        f.flag().await["targeting"],
        json!({"fractional": [["on", 10], ["off", 90]]})
    );
}

#[tokio::test]
async fn a_rollout_that_cannot_begin_counting_is_ended_and_the_flag_left_alone() {
    let f = fixture(None).await;
    *f.counts.refuse_start.lock().unwrap() = true;
    let err = f
        .controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "guardrail counts: experiment store unavailable"
    );
    assert_eq!(f.flag().await, pre());
    assert!(matches!(f.state().await, RolloutState::Aborted { .. }));
    let history = f.rollouts.history(&id()).await.unwrap();
    assert!(
        history
            .last()
            .unwrap()
            .reason
            .starts_with("could not begin")
    );
    // The flag is free again.
    *f.counts.refuse_start.lock().unwrap() = false;
    let mut again = input();
    again.id = "banner-on-2".into();
    f.controller
        .start_rollout(again, "ada", at(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn status_shows_each_guardrail_and_what_the_next_tick_would_do() {
    let f = fixture(None).await;
    f.controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap();
    f.counts.set(20_000, 0.10, 0.05);
    let status = f.controller.status(&id(), at(5)).await.unwrap();
    assert_eq!(status.released_users, 20_000);
    let [look] = status.guardrails.as_slice() else {
        panic!("{status:?}");
    };
    assert_eq!(look.metric.as_str(), "purchase");
    assert!((look.estimate.unwrap() + 0.5).abs() < 1e-9, "{look:?}");
    let (lower, upper) = look.interval.unwrap();
    assert!(lower < -0.5 && upper < 0.0, "{look:?}");
    assert_eq!(look.verdict, bunting_rollouts::Verdict::Regressed);
    assert!(matches!(
        status.next,
        bunting_rollouts::Action::RollBack { .. }
    ));
    // Status does not act: the flag is still at the first step.
    assert_eq!(
        f.flag().await["targeting"],
        json!({"fractional": [["on", 10], ["off", 90]]})
    );
    f.controller.tick(at(6)).await;
    let ended = f.controller.status(&id(), at(7)).await.unwrap();
    assert!(ended.guardrails.is_empty());
    assert!(matches!(
        ended.record.state,
        RolloutState::RolledBack { .. }
    ));
}

#[tokio::test]
async fn resuming_after_an_edit_undone_by_hand_does_not_pause_again() {
    let f = fixture(None).await;
    f.controller
        .start_rollout(input(), "ada", at(0))
        .await
        .unwrap();
    let step_0 = f.flag().await;
    let current = f.flags.get_flag("default", "banner").await.unwrap();
    let mut edited = step_0.clone();
    edited["defaultVariant"] = json!("on");
    let edited = f
        .flags
        .update_flag("default", "banner", edited, current.version, "grace")
        .await
        .unwrap();
    // grace puts back exactly what the rollout had written.
    f.flags
        .update_flag("default", "banner", step_0.clone(), edited.version, "grace")
        .await
        .unwrap();
    let taken = f.controller.tick(at(1)).await;
    assert!(
        matches!(taken.as_slice(), [Taken::PausedForManualEdit { .. }]),
        "{taken:?}"
    );
    f.controller
        .resume(&id(), "ada", "edit undone", at(2))
        .await
        .unwrap();
    assert_eq!(f.last_writer().await, "rollout:banner-on");
    assert_eq!(f.controller.tick(at(3)).await, []);
    assert!(matches!(f.state().await, RolloutState::Running { .. }));
}
