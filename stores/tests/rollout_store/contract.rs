//! The contract every `RolloutStore` keeps: `stores/tests/rollout_store.rs` runs each function
//! here against the memory store and against PostgreSQL, so the store in-process nodes run on
//! behaves as production's does.

use std::sync::Arc;

use bunting_experiments::{Metric, MetricKind, MetricName};
use bunting_rollouts::{
    BadDirection, Guardrail, PauseCause, RolloutId, RolloutInput, RolloutSpec, RolloutState,
    StepInput,
};
use bunting_stores::rollouts::{RolloutStore, RolloutStoreError, ScheduleState, ScheduledAction};
use chrono::{Duration, Utc};
use serde_json::json;

pub fn spec(id: &str, flag_key: &str) -> RolloutSpec {
    RolloutSpec::new(RolloutInput {
        id: id.to_owned(),
        flag_set: "default".to_owned(),
        flag_key: flag_key.to_owned(),
        released: "on".to_owned(),
        baseline: "off".to_owned(),
        steps: [5, 50, 100]
            .map(|percent| StepInput {
                percent,
                min_duration_secs: 60,
                min_users: 100,
            })
            .to_vec(),
        guardrails: vec![Guardrail {
            metric: Metric {
                name: MetricName::new("errors").unwrap(),
                event: "error".to_owned(),
                kind: MetricKind::Conversion,
            },
            bad: BadDirection::Increase,
            tolerance: 0.01,
        }],
        alpha: 0.05,
    })
    .unwrap()
}

fn pre() -> serde_json::Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"})
}

pub async fn a_rollout_reads_back_as_written_with_its_history(store: Arc<dyn RolloutStore>) {
    let spec = spec("banner-on", "banner");
    let created = store
        .create_rollout(&spec, pre(), RolloutState::started(1_000), "ada", "launch")
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.spec, spec);
    assert_eq!(created.pre_rollout, pre());
    assert_eq!(store.get_rollout(&spec.id).await.unwrap(), created);

    let advanced = store
        .transition(
            &spec.id,
            1,
            created.state.advance(2_000).unwrap(),
            "rollout:banner-on",
            "step 0 held 60 s and 100 users",
        )
        .await
        .unwrap();
    assert_eq!(advanced.version, 2);
    assert_eq!(
        advanced.state,
        RolloutState::Running {
            step: 1,
            step_started_at: 2_000
        }
    );
    let paused = advanced
        .state
        .pause(3_000, PauseCause::ManualEdit { audit_id: 42 })
        .unwrap();
    store
        .transition(
            &spec.id,
            2,
            paused.clone(),
            "rollout:banner-on",
            "edited by grace",
        )
        .await
        .unwrap();

    let history = store.history(&spec.id).await.unwrap();
    let rows: Vec<_> = history
        .iter()
        .map(|e| {
            (
                e.from.as_deref(),
                e.to.name(),
                e.principal.as_str(),
                e.reason.as_str(),
                e.version,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (None, "running", "ada", "launch", 1),
            (
                Some("running"),
                "running",
                "rollout:banner-on",
                "step 0 held 60 s and 100 users",
                2
            ),
            (
                Some("running"),
                "paused",
                "rollout:banner-on",
                "edited by grace",
                3
            ),
        ]
    );
    assert_eq!(history[2].to, paused);
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at));

    let missing = RolloutId::new("nope").unwrap();
    assert!(matches!(
        store.get_rollout(&missing).await,
        Err(RolloutStoreError::NotFound(_))
    ));
    assert!(matches!(
        store.history(&missing).await,
        Err(RolloutStoreError::NotFound(_))
    ));
}

pub async fn one_active_rollout_per_flag_and_ids_are_unique(store: Arc<dyn RolloutStore>) {
    let first = spec("first", "banner");
    store
        .create_rollout(&first, pre(), RolloutState::started(0), "ada", "")
        .await
        .unwrap();
    let again = store
        .create_rollout(&first, pre(), RolloutState::started(0), "ada", "")
        .await;
    assert!(
        matches!(again, Err(RolloutStoreError::AlreadyExists(_))),
        "{again:?}"
    );

    let second = spec("second", "banner");
    let busy = store
        .create_rollout(&second, pre(), RolloutState::started(0), "ada", "")
        .await;
    match busy {
        Err(RolloutStoreError::FlagBusy {
            other, flag_key, ..
        }) => {
            assert_eq!(other.as_str(), "first");
            assert_eq!(flag_key, "banner");
        }
        other => panic!("expected FlagBusy, got {other:?}"),
    }
    // Another flag is free.
    store
        .create_rollout(
            &spec("third", "checkout"),
            pre(),
            RolloutState::started(0),
            "ada",
            "",
        )
        .await
        .unwrap();
    // Once the first is over, the flag takes a new rollout.
    store
        .transition(
            &first.id,
            1,
            RolloutState::Aborted { step: 0, at: 5 },
            "ada",
            "wrong variant",
        )
        .await
        .unwrap();
    store
        .create_rollout(&second, pre(), RolloutState::started(0), "ada", "")
        .await
        .unwrap();

    let active: Vec<String> = store
        .list_rollouts(true)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.spec.id.to_string())
        .collect();
    assert_eq!(active, ["second", "third"]);
    assert_eq!(store.list_rollouts(false).await.unwrap().len(), 3);
}

pub async fn a_stale_version_is_refused_and_nothing_is_recorded(store: Arc<dyn RolloutStore>) {
    let spec = spec("stale", "banner");
    store
        .create_rollout(&spec, pre(), RolloutState::started(0), "ada", "")
        .await
        .unwrap();
    let to = RolloutState::started(0).advance(10).unwrap();
    store
        .transition(&spec.id, 1, to.clone(), "rollout:stale", "first")
        .await
        .unwrap();
    let stale = store
        .transition(&spec.id, 1, to, "rollout:stale", "second")
        .await;
    match stale {
        Err(RolloutStoreError::VersionConflict {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (1, 2));
        }
        other => panic!("expected VersionConflict, got {other:?}"),
    }
    assert_eq!(store.history(&spec.id).await.unwrap().len(), 2);
    assert_eq!(store.get_rollout(&spec.id).await.unwrap().version, 2);
}

pub async fn of_two_concurrent_transitions_at_one_version_exactly_one_wins(
    store: Arc<dyn RolloutStore>,
) {
    let spec = spec("race", "banner");
    store
        .create_rollout(&spec, pre(), RolloutState::started(0), "ada", "")
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let store = Arc::clone(&store);
            let id = spec.id.clone();
            tokio::spawn(async move {
                let to = RolloutState::started(0).advance(n).unwrap();
                store.transition(&id, 1, to, "rollout:race", "tick").await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(RolloutStoreError::VersionConflict { .. }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.history(&spec.id).await.unwrap().len(), 2);
}

pub async fn a_scheduled_change_leaves_pending_once(store: Arc<dyn RolloutStore>) {
    let now = Utc::now();
    let flag_change = ScheduledAction::FlagChange {
        flag_set: "default".to_owned(),
        flag_key: "banner".to_owned(),
        definition: pre(),
    };
    let later = store
        .schedule(now + Duration::hours(2), flag_change.clone(), "ada")
        .await
        .unwrap();
    let start = ScheduledAction::StartRollout {
        rollout: spec("at-nine", "checkout").to_input(),
    };
    let sooner = store
        .schedule(now + Duration::hours(1), start.clone(), "grace")
        .await
        .unwrap();
    assert_eq!(sooner.state, ScheduleState::Pending);
    assert_eq!(sooner.action, start);
    assert_ne!(sooner.id, later.id);

    let listed: Vec<i64> = store
        .list_scheduled(true)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, [sooner.id, later.id], "pending, by due time");

    let fired = store.claim_scheduled(sooner.id, now).await.unwrap();
    assert!(matches!(fired.state, ScheduleState::Fired { .. }));
    let twice = store.claim_scheduled(sooner.id, now).await;
    assert!(
        matches!(
            twice,
            Err(RolloutStoreError::NotPending { state: "fired", .. })
        ),
        "{twice:?}"
    );
    let cancel_fired = store.cancel_scheduled(sooner.id, "ada").await;
    assert!(matches!(
        cancel_fired,
        Err(RolloutStoreError::NotPending { .. })
    ));

    let cancelled = store.cancel_scheduled(later.id, "ada").await.unwrap();
    assert_eq!(
        match &cancelled.state {
            ScheduleState::Cancelled { by, .. } => by.as_str(),
            other => panic!("{other:?}"),
        },
        "ada"
    );
    let claim_cancelled = store.claim_scheduled(later.id, now).await;
    assert!(
        matches!(
            claim_cancelled,
            Err(RolloutStoreError::NotPending {
                state: "cancelled",
                ..
            })
        ),
        "{claim_cancelled:?}"
    );
    assert!(matches!(
        store.claim_scheduled(9_999, now).await,
        Err(RolloutStoreError::ScheduleNotFound(9_999))
    ));
    assert!(store.list_scheduled(true).await.unwrap().is_empty());
    assert_eq!(store.list_scheduled(false).await.unwrap().len(), 2);
}

pub async fn of_concurrent_claims_exactly_one_fires(store: Arc<dyn RolloutStore>) {
    let change = store
        .schedule(
            Utc::now(),
            ScheduledAction::FlagChange {
                flag_set: "default".to_owned(),
                flag_key: "banner".to_owned(),
                definition: pre(),
            },
            "ada",
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim_scheduled(change.id, Utc::now()).await })
        })
        .collect();
    let mut fired = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            fired += 1;
        }
    }
    assert_eq!(fired, 1);
}
