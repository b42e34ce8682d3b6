//! The dispatch path's fast path: which requests skip the shards, and that admission (the request
//! cap and the looping lane) applies to them as to every other request.

use std::sync::Arc;
use std::time::Duration;

use bunting_actors::{Catalog, Node, NodeConfig, Update};
use bunting_engine::{CompileOptions, FlagType, compile};
use bunting_experiments::{
    Experiment, ExperimentId, Metric, MetricKind, MetricName, RunningExperiments,
};
use prost_types::Struct;
use serde_json::json;

use super::{BulkQuery, Dispatch, DispatchError};
use crate::service::{Gate, Limits, Refused};

/// `plain` has no experiment, `tested` has a running one, `looping` has a rule that loops.
async fn dispatch(max_concurrent_requests: usize) -> (Dispatch, Gate) {
    let doc = json!({"flags": {
        "plain": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "tested": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
                   "targeting": {"fractional": [["a", 50], ["b", 50]]}},
        "looping": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                    "targeting": {"if": [{"some": [[1, 2, 3], {"==": [{"var": ""}, 2]}]}, "on", "off"]}}
    }});
    let flags = compile(&doc.to_string(), &CompileOptions::default())
        .unwrap()
        .flag_set
        .with_version(1);
    let catalog = Catalog::new()
        .apply(&Update::Put {
            set: "default".into(),
            flags: Arc::new(flags),
            committed_at: std::time::SystemTime::now(),
        })
        .unwrap();
    let config = NodeConfig {
        shards: 4,
        ..NodeConfig::default()
    };
    let node = Arc::new(Node::start(config, catalog).await.unwrap());
    let mut experiment = Experiment::draft(
        ExperimentId::new("tested-experiment").unwrap(),
        "default",
        "tested",
        ["a".to_owned(), "b".to_owned()],
        "a",
        vec![Metric {
            name: MetricName::new("bought").unwrap(),
            event: "purchase".into(),
            kind: MetricKind::Conversion,
        }],
    )
    .unwrap();
    experiment.start(1).unwrap();
    node.install_experiments(Arc::new(RunningExperiments::new([experiment])))
        .await
        .unwrap();
    let gate = Gate::new(Limits {
        max_concurrent_requests,
        max_streams: 1,
        max_context_bytes: 1024,
        max_looping_evaluations: 1,
    });
    (Dispatch::new(node, gate.clone(), 100), gate)
}

fn context(user: &str) -> Option<Struct> {
    Some(
        bunting_proto::json::json_to_struct(json!({"targetingKey": user}).as_object().unwrap())
            .unwrap(),
    )
}

/// Fails if a flag without an experiment is not answered on the fast path, or if a flag with a
/// running experiment is (its exposure must still be recorded, by its shard).
#[tokio::test]
async fn flags_without_experiments_skip_the_shards_and_exposures_are_still_recorded() {
    let (dispatch, _) = dispatch(8).await;
    let node = dispatch.node().clone();
    let here = || node.resolved_here();

    let r = dispatch
        .resolve(
            "test",
            None,
            "plain".into(),
            context("u1"),
            Some(FlagType::Boolean),
        )
        .await
        .unwrap();
    assert_eq!(r.answer.value, Some(json!(true)));
    assert_eq!(here(), 1, "a flag without an experiment is answered here");

    let r = dispatch
        .resolve(
            "test",
            None,
            "tested".into(),
            context("u1"),
            Some(FlagType::String),
        )
        .await
        .unwrap();
    assert!(r.answer.variant.is_some());
    assert_eq!(
        here(),
        1,
        "a flag with a running experiment goes to its shard"
    );
    let totals = node
        .experiment_totals(&ExperimentId::new("tested-experiment").unwrap())
        .await
        .unwrap();
    assert_eq!(
        totals.arms.values().map(|a| a.exposed).sum::<u64>(),
        1,
        "the exposure was recorded: {totals:?}"
    );

    // Without a targeting key there is nobody to expose: the fast path again.
    dispatch
        .resolve("test", None, "tested".into(), None, Some(FlagType::String))
        .await
        .unwrap();
    assert_eq!(here(), 2);

    // A resolve-all of a set with an experiment goes to the shard; bulk of only `plain` is
    // answered here, one count per subject.
    dispatch
        .resolve_all("test", None, context("u2"))
        .await
        .unwrap();
    assert_eq!(here(), 2);
    let query = BulkQuery {
        set: None,
        keys: vec!["plain".into()],
        subjects: vec![context("u3"), context("u4")],
    };
    dispatch.bulk("test", query).await.unwrap();
    assert_eq!(here(), 4);
    node.shutdown().await;
}

/// The fast path takes a request slot (a full node refuses it) and a looping rule waits for its
/// turn in the looping lane, as on the shard path.
#[tokio::test]
async fn admission_applies_on_the_fast_path() {
    let (dispatch, gate) = dispatch(1).await;
    let held = gate.admit("test").unwrap();
    let refused = dispatch
        .resolve(
            "test",
            None,
            "plain".into(),
            context("u1"),
            Some(FlagType::Boolean),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            DispatchError::Refused(Refused::Full { limit: 1, .. })
        ),
        "{refused}"
    );
    drop(held);

    let turn = gate.looping_turn().await.unwrap();
    let waiting = {
        let dispatch = dispatch.clone();
        tokio::spawn(async move {
            dispatch
                .resolve(
                    "test",
                    None,
                    "looping".into(),
                    context("u1"),
                    Some(FlagType::Boolean),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "the looping rule waits for its turn"
    );
    drop(turn);
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.answer.value, Some(json!(true)));
    assert_eq!(dispatch.node().resolved_here(), 1, "and then runs here");
    dispatch.node().shutdown().await;
}
