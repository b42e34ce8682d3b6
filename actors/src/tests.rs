//! The actor tree as a whole: routing, fan-out, restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bunting_engine::{
    CompileOptions, ErrorCode, EvaluationContext, FlagSet, FlagType, Reason, compile,
};
use serde_json::json;

use crate::{Catalog, Node, NodeConfig, ResolveRequest, Update};

fn flags(version: u64, colour: &str) -> Arc<FlagSet> {
    let doc = json!({"flags": {
        "colour": {"state": "ENABLED", "variants": {"c": colour}, "defaultVariant": "c"},
        "pro": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", null]}}
    }});
    Arc::new(
        compile(&doc.to_string(), &CompileOptions::default())
            .unwrap()
            .flag_set
            .with_version(version),
    )
}

fn put(version: u64, colour: &str) -> Update {
    Update::Put {
        set: "default".into(),
        flags: flags(version, colour),
        committed_at: SystemTime::now(),
    }
}

async fn node_with(colour: &str) -> Node {
    let catalog = Catalog::new().apply(&put(1, colour)).unwrap();
    Node::start(
        NodeConfig {
            shards: 4,
            ..NodeConfig::default()
        },
        catalog,
    )
    .await
    .unwrap()
}

fn request(key: &str, user: &str) -> ResolveRequest {
    ResolveRequest {
        set: None,
        key: key.to_owned(),
        wanted: Some(FlagType::String),
        context: EvaluationContext::new()
            .with_targeting_key(user)
            .with("plan", "pro"),
    }
}

#[tokio::test]
async fn resolves_through_the_owning_shard() {
    let node = node_with("red").await;
    let r = node.resolve(request("colour", "u1")).await.unwrap();
    assert_eq!(r.value, Some(json!("red")));
    assert_eq!(r.flag_set_version, 1);
    let mut pro = request("pro", "u1");
    pro.wanted = Some(FlagType::Boolean);
    let r = node.resolve(pro).await.unwrap();
    assert_eq!(
        (r.value, r.reason),
        (Some(json!(true)), Reason::TargetingMatch)
    );
    let all = node
        .resolve_all(None, EvaluationContext::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.flags.len(), 2);
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_flag_sets_answer_flag_not_found() {
    let node = node_with("red").await;
    let mut r = request("colour", "u1");
    r.set = Some("nope".into());
    let answer = node.resolve(r).await.unwrap();
    assert_eq!(answer.error.map(|e| e.code), Some(ErrorCode::FlagNotFound));
    node.shutdown().await;
}

#[tokio::test]
async fn a_change_reaches_every_shard_and_the_watchers() {
    let node = node_with("red").await;
    let mut watch = node.watch();
    assert!(node.apply(put(2, "blue")).await.unwrap());
    assert!(
        !node.apply(put(1, "green")).await.unwrap(),
        "older versions are ignored"
    );
    watch.changed().await.unwrap();
    assert_eq!(watch.borrow().get("default").map(|s| s.version()), Some(2));
    // Users on every shard now see the new value.
    for user in 0..64 {
        let r = node
            .resolve(request("colour", &format!("user-{user}")))
            .await
            .unwrap();
        assert_eq!(r.value, Some(json!("blue")), "user-{user}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_failed_shard_is_restarted_with_the_current_catalog() {
    let node = node_with("red").await;
    assert!(node.apply(put(2, "blue")).await.unwrap());
    let victim = node.shard_for(&request("colour", "u7").context);
    node.crash_shard(victim);
    // The restart is asynchronous: poll until the new shard answers, bounded in time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match node.resolve(request("colour", "u7")).await {
            Ok(r) if r.flag_set_version == 2 => {
                assert_eq!(r.value, Some(json!("blue")));
                break;
            }
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("shard {victim} did not come back: {other:?}"),
        }
    }
    node.shutdown().await;
}

#[tokio::test]
async fn bulk_resolves_each_subject_on_its_shard_in_order() {
    let node = node_with("red").await;
    let keys: Arc<[String]> = ["pro", "missing", "colour"]
        .map(str::to_owned)
        .into_iter()
        .collect();
    // Enough subjects to land on every shard; every other one is on the pro plan.
    let contexts: Vec<EvaluationContext> = (0..64)
        .map(|i| {
            let plan = if i % 2 == 0 { "pro" } else { "free" };
            EvaluationContext::new()
                .with_targeting_key(format!("user-{i}"))
                .with("plan", plan)
        })
        .collect();
    let pinned = node.catalog().get("default").unwrap().clone();
    let answers = node
        .resolve_bulk("default".into(), pinned, keys, contexts)
        .await
        .unwrap();
    assert_eq!(answers.len(), 64);
    for (i, answer) in answers.iter().enumerate() {
        let [pro, missing, colour] = answer.as_slice() else {
            panic!("subject {i}: {answer:?}");
        };
        assert_eq!(pro.value, Some(json!(i % 2 == 0)), "subject {i}");
        assert_eq!(
            missing.error.as_ref().map(|e| e.code),
            Some(ErrorCode::FlagNotFound)
        );
        assert_eq!(missing.reason, Reason::Error);
        assert_eq!(colour.value, Some(json!("red")));
    }
    node.shutdown().await;
}

#[tokio::test]
async fn bulk_evaluates_the_pinned_version_even_after_a_change() {
    let node = node_with("red").await;
    let pinned = node.catalog().get("default").unwrap().clone();
    assert!(node.apply(put(2, "blue")).await.unwrap());
    let keys: Arc<[String]> = Arc::from(vec!["colour".to_owned()]);
    let contexts = (0..16)
        .map(|i| EvaluationContext::new().with_targeting_key(format!("user-{i}")))
        .collect();
    let answers = node
        .resolve_bulk("default".into(), pinned, keys, contexts)
        .await
        .unwrap();
    for answer in answers {
        assert_eq!(answer[0].value, Some(json!("red")));
        assert_eq!(answer[0].flag_set_version, 1);
    }
    node.shutdown().await;
}
