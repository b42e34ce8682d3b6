//! `EvaluateBulk` through a 3-node cluster of real `bunting serve` processes with a running
//! experiment: whichever node a batch reaches, each subject is evaluated on the owner of its
//! shard, so every exposure is recorded exactly once (a batch sent again, through another node,
//! counts nothing new), and the answer carries `bunting-epoch`, plus `bunting-owner` when every
//! subject of the batch has the same other owner.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::evaluation_client::EvaluationClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use common::admin::{conversion, start_ab_experiment};
use common::cluster::{ClusterNode, agreement, postgres_flags, status_text, topology};
use common::postgres::TestDb;
use serde_json::json;

const FLAG: &str = "checkout-button";
const EXPERIMENT: &str = "bulk-colour";
const USERS_PER_NODE: usize = 150;

fn subject(user: &str) -> pb::Subject {
    pb::Subject {
        context: Some(
            bunting_proto::json::json_to_struct(json!({"targetingKey": user}).as_object().unwrap())
                .unwrap(),
        ),
    }
}

async fn bulk(node: &ClusterNode, users: &[String]) -> tonic::Response<pb::EvaluateBulkResponse> {
    common::connect_with(EvaluationClient::new, node.url())
        .await
        .unwrap()
        .evaluate_bulk(pb::EvaluateBulkRequest {
            flag_set_id: String::new(),
            flag_keys: vec![FLAG.into()],
            subjects: users.iter().map(|u| subject(u)).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("EvaluateBulk through {}: {e}", node.id))
}

fn header(response: &tonic::Response<pb::EvaluateBulkResponse>, name: &str) -> Option<String> {
    response
        .metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Exposed users per arm, as `node` reports the whole cluster's results.
async fn exposed(node: &ClusterNode) -> Option<BTreeMap<String, u64>> {
    let mut client = common::connect_with(ExperimentsClient::new, node.url())
        .await
        .ok()?;
    let results = client
        .get_experiment_results(pb::GetExperimentResultsRequest {
            id: EXPERIMENT.into(),
        })
        .await
        .ok()?
        .into_inner();
    Some(
        results
            .users
            .iter()
            .map(|u| (u.arm.clone(), u.users))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_evaluations_record_each_exposure_once_on_its_owner_and_say_who_owns() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("cluster-bulk");
    let flags = postgres_flags(&db.url);
    let mut n1 = ClusterNode::new(&dir, "node-1", &flags, &[]);
    let mut n2 = ClusterNode::new(&dir, "node-2", &flags, &[n1.cluster]);
    let mut n3 = ClusterNode::new(&dir, "node-3", &flags, &[n1.cluster]);
    n1.start();
    n2.start();
    n3.start();
    let nodes = [&n1, &n2, &n3];
    let Some(epoch) = agreement(
        &nodes,
        &["node-1", "node-2", "node-3"],
        Duration::from_secs(20),
    )
    .await
    else {
        panic!("no cluster:\n{}", status_text(&n1).await);
    };

    start_ab_experiment(
        n1.url(),
        n2.url(),
        FLAG,
        EXPERIMENT,
        vec![conversion("purchased", "purchase")],
        "bulk",
    )
    .await;
    // Every node must have the experiment (and the flag's set) before the batches go out.
    for node in nodes {
        let ready = common::poll(Duration::from_secs(15), || async {
            let counted = exposed(node).await?;
            (counted.values().sum::<u64>() == 0).then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "{} never served the running experiment",
            node.id
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Each node gets its own users, spread over every owner; the arms come back in the answers.
    let mut arms: BTreeMap<String, String> = BTreeMap::new();
    let mut batches = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let users: Vec<String> = (0..USERS_PER_NODE)
            .map(|u| format!("user-{i}-{u}"))
            .collect();
        let response = bulk(node, &users).await;
        assert_eq!(
            header(&response, "bunting-epoch"),
            Some(epoch.to_string()),
            "a batch through {} carries no epoch",
            node.id
        );
        for (user, subject) in users.iter().zip(&response.get_ref().subjects) {
            assert_eq!(&subject.targeting_key, user);
            let variant = &subject.results[0].variant;
            assert!(!variant.is_empty(), "{user}: {:?}", subject.results[0]);
            arms.insert(user.clone(), variant.clone());
        }
        batches.push(users);
    }
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for arm in arms.values() {
        *expected.entry(arm.clone()).or_default() += 1;
    }
    assert_eq!(expected.values().sum::<u64>(), 3 * USERS_PER_NODE as u64);

    // The same batches again, each through the next node: nothing more is counted.
    for (i, users) in batches.iter().enumerate() {
        let response = bulk(nodes[(i + 1) % 3], users).await;
        for (user, subject) in users.iter().zip(&response.get_ref().subjects) {
            assert_eq!(arms[user], subject.results[0].variant, "{user} changed arm");
        }
    }

    for node in nodes {
        let counted = common::poll(Duration::from_secs(10), || async {
            exposed(node).await.filter(|c| *c == expected)
        })
        .await;
        assert!(
            counted.is_some(),
            "exposures through {} are {:?}, expected {expected:?} (each user once)",
            node.id,
            exposed(node).await
        );
    }

    // A batch whose subjects all belong to one other node names that owner, as a single
    // evaluation would.
    let map = topology(&n1).await.unwrap();
    let owner_of = |user: &str| {
        let shard = bunting_keyspace::shard_of(user, map.shard_count);
        let index = map.shard_owner[shard as usize] as usize;
        map.nodes[index].id.clone()
    };
    for asked in nodes {
        let other = nodes.iter().find(|n| n.id != asked.id).unwrap();
        let theirs: Vec<String> = arms
            .keys()
            .filter(|u| owner_of(u) == other.id)
            .take(20)
            .cloned()
            .collect();
        let response = bulk(asked, &theirs).await;
        assert_eq!(
            header(&response, "bunting-owner").as_deref(),
            Some(other.id.as_str()),
            "{} answering for {}'s users",
            asked.id,
            other.id
        );
        assert_eq!(header(&response, "bunting-epoch"), Some(epoch.to_string()));
        let mine: Vec<String> = arms
            .keys()
            .filter(|u| owner_of(u) == asked.id)
            .take(20)
            .cloned()
            .collect();
        let response = bulk(asked, &mine).await;
        assert_eq!(
            header(&response, "bunting-owner"),
            None,
            "{} owns these",
            asked.id
        );
        let mixed: Vec<String> = arms.keys().take(30).cloned().collect();
        let response = bulk(asked, &mixed).await;
        assert_eq!(
            header(&response, "bunting-owner"),
            None,
            "a mixed batch names no owner"
        );
        assert_eq!(header(&response, "bunting-epoch"), Some(epoch.to_string()));
    }

    // Nothing fell back: every group reached its owner.
    for node in nodes {
        assert!(
            !node
                .metrics_text()
                .contains("bunting_forwards_total{outcome=\"fallback\"}"),
            "{} fell back:\n{}",
            node.id,
            node.log()
        );
    }
    println!("exposures per arm: {expected:?} (epoch {epoch})");
}
