//! The client against in-process fake nodes (tests/fake): routing to owners, refreshes on
//! wrong-owner answers and newer epochs, failover when a node dies, what is and is not retried,
//! and bulk evaluation across nodes.

// Test support: a failed setup step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod fake;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bunting_client::{Client, ClientConfig, ClientError, EvaluationContext, FlagValue};
use fake::{FakeCluster, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

fn config(cluster: &FakeCluster) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(3),
        retry_backoff: Duration::from_millis(5),
        // No rate limit: single-flight alone must keep refreshes to one.
        topology_refresh_min_interval: Duration::ZERO,
        ..ClientConfig::new(cluster.seeds())
    }
}

async fn who(client: &Client, key: &str) -> String {
    client
        .resolve_string("who", &EvaluationContext::new(key))
        .await
        .unwrap()
        .value
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_the_owner() {
    let cluster = FakeCluster::start(3, 16);
    let client = Client::connect(config(&cluster)).await.unwrap();
    let view = cluster.view();
    for i in 0..30 {
        let key = format!("user-{i}");
        assert_eq!(who(&client, &key).await, view.owner_of(&key), "{key}");
        assert_eq!(cluster.served_by(&key, "who"), vec![view.owner_of(&key)]);
    }
    let stats = client.stats();
    assert_eq!(
        (stats.requests, stats.retries, stats.wrong_owner),
        (30, 0, 0)
    );
    assert_eq!(stats.topology_refreshes, 0);
    assert_eq!(client.topology().epoch, 1);

    // Every typed resolver decodes its value, and goes to the owner too.
    let ctx = EvaluationContext::new("user-1").with("plan", "pro");
    let owner = view.owner_of("user-1");
    assert!(
        client
            .resolve_boolean("b", &ctx)
            .await
            .unwrap()
            .value_or(false)
    );
    assert_eq!(client.resolve_int("i", &ctx).await.unwrap().value, Some(42));
    assert_eq!(
        client.resolve_float("f", &ctx).await.unwrap().value,
        Some(0.5)
    );
    let object = client.resolve_object("o", &ctx).await.unwrap();
    assert_eq!(
        object.value.map(serde_json::Value::Object),
        Some(json!({"node": owner}))
    );
    assert_eq!(object.variant.as_deref(), Some("canned"));
    let all = client.resolve_all(&ctx).await.unwrap();
    assert_eq!(
        all.flags["who"].value,
        Some(FlagValue::String(owner.clone()))
    );
    assert_eq!(all.flags["on"].value, Some(FlagValue::Bool(true)));
    for what in ["b", "i", "f", "o", "*"] {
        assert_eq!(
            cluster.served_by("user-1", what),
            vec![owner.clone()],
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_owner_answer_triggers_one_refresh_then_requests_go_to_the_new_owner() {
    let cluster = FakeCluster::start(3, 16);
    let client = Client::connect(config(&cluster)).await.unwrap();
    let key = cluster.key_owned_by("n0");
    assert_eq!(who(&client, &key).await, "n0");
    let calls_before = cluster.topology_calls();

    // The cluster moves the key's shard to n1 without the client knowing (same epoch: only the
    // owner header can tell).
    cluster.update(|v| {
        let shard = bunting_keyspace::shard_of(&key, v.shard_count) as usize;
        v.shard_owner[shard] = v.index_of("n1");
    });
    // n0 still answers (a node accepts any request) but names the owner.
    assert_eq!(who(&client, &key).await, "n0");
    assert!(eventually(WAIT, || client.stats().topology_refreshes == 1).await);

    for _ in 0..10 {
        assert_eq!(who(&client, &key).await, "n1");
    }
    let stats = client.stats();
    assert_eq!(stats.wrong_owner, 1, "{stats}");
    assert_eq!(stats.topology_refreshes, 1, "{stats}");
    assert_eq!(cluster.topology_calls(), calls_before + 1);
    assert_eq!(client.topology().owner_of(&key).unwrap().id, "n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_epoch_in_an_answer_triggers_a_refresh() {
    let cluster = FakeCluster::start(3, 16);
    let client = Client::connect(config(&cluster)).await.unwrap();
    let key = cluster.key_owned_by("n2");
    let other = cluster.key_owned_by("n0");
    // Epoch 2 moves another key's shard; this key's owner stays, so no owner header is sent.
    cluster.update(|v| {
        v.epoch = 2;
        let shard = bunting_keyspace::shard_of(&other, v.shard_count) as usize;
        v.shard_owner[shard] = v.index_of("n1");
    });
    assert_eq!(who(&client, &key).await, "n2");
    assert!(eventually(WAIT, || client.topology().epoch == 2).await);
    assert_eq!(who(&client, &other).await, "n1");
    let stats = client.stats();
    assert_eq!(
        (stats.wrong_owner, stats.topology_refreshes),
        (0, 1),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_retried_on_the_new_owner() {
    let mut cluster = FakeCluster::start(3, 16);
    let client = Client::connect(config(&cluster)).await.unwrap();
    let key = cluster.key_owned_by("n0");
    // A live connection to n0 first, so the kill breaks an open connection, not only connects.
    assert_eq!(who(&client, &key).await, "n0");

    cluster.kill("n0");
    // The cluster notices and gives n0's shards to n1.
    cluster.update(|v| {
        v.epoch = 2;
        let n0 = v.index_of("n0");
        let n1 = v.index_of("n1");
        for owner in &mut v.shard_owner {
            if *owner == n0 {
                *owner = n1;
            }
        }
    });
    assert_eq!(who(&client, &key).await, "n1");
    let stats = client.stats();
    assert!(stats.retries >= 1, "{stats}");
    assert_eq!(stats.failures, 0, "{stats}");
    assert_eq!(client.topology().epoch, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_killed_node_succeed_and_share_one_refresh() {
    let mut cluster = FakeCluster::start(3, 16);
    let client = Client::connect(config(&cluster)).await.unwrap();
    let view = cluster.view();
    let keys: Vec<String> = (0..)
        .map(|i| format!("user-{i}"))
        .filter(|k| view.owner_of(k) == "n0")
        .take(50)
        .collect();
    let calls_before = cluster.topology_calls();
    cluster.kill("n0");
    // The map does not change (the cluster has not noticed yet): retries go to other nodes.
    let tasks: Vec<_> = keys
        .iter()
        .map(|key| {
            let client = client.clone();
            let key = key.clone();
            tokio::spawn(async move { who(&client, &key).await })
        })
        .collect();
    for task in tasks {
        let served = task.await.unwrap();
        assert!(served == "n1" || served == "n2", "{served}");
    }
    let stats = client.stats();
    assert_eq!(stats.failures, 0, "{stats}");
    assert!(stats.retries >= 1, "{stats}");
    assert_eq!(stats.topology_refreshes, 1, "{stats}");
    assert_eq!(cluster.topology_calls(), calls_before + 1);

    // The dead node is quarantined: its keys now go straight to a live node, no retry needed.
    for key in keys.iter().take(10) {
        assert_ne!(who(&client, key).await, "n0");
    }
    assert_eq!(client.stats().retries, stats.retries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_that_are_the_callers_are_returned_after_one_attempt() {
    let cluster = FakeCluster::start(3, 16);
    let client = Client::connect(config(&cluster)).await.unwrap();
    let ctx = EvaluationContext::new("user-7");

    let error = client.resolve_boolean("missing", &ctx).await.unwrap_err();
    assert!(matches!(&error, ClientError::FlagNotFound { flag_key, .. } if flag_key == "missing"));
    let error = client
        .resolve_boolean("wrong-type", &ctx)
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::TypeMismatch { .. }), "{error}");
    let error = client
        .resolve_boolean("bad-context", &ctx)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::InvalidContext { .. }),
        "{error}"
    );
    let error = client
        .evaluate_bulk("missing", &["who".to_owned()], std::slice::from_ref(&ctx))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::FlagSetNotFound { .. }),
        "{error}"
    );

    for flag in ["missing", "wrong-type", "bad-context"] {
        assert_eq!(cluster.served_by("user-7", flag).len(), 1, "{flag}");
    }
    let stats = client.stats();
    assert_eq!((stats.retries, stats.topology_refreshes), (0, 0), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_nodes_are_retried_elsewhere_then_named_when_all_fail() {
    let cluster = FakeCluster::start(3, 16);
    let client = Client::connect(config(&cluster)).await.unwrap();
    let key = cluster.key_owned_by("n0");
    cluster.update(|v| v.stopping = vec!["n0".to_owned()]);
    let served = who(&client, &key).await;
    assert!(served == "n1" || served == "n2", "{served}");

    cluster.update(|v| v.stopping = vec!["n0".into(), "n1".into(), "n2".into()]);
    let error = client
        .resolve_string("who", &EvaluationContext::new(cluster.key_owned_by("n1")))
        .await
        .unwrap_err();
    let ClientError::Unavailable {
        attempts, nodes, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!(*attempts, 3);
    let mut nodes = nodes.clone();
    nodes.sort();
    assert_eq!(nodes, ["n0", "n1", "n2"], "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_targeting_key_go_round_robin_avoiding_draining_nodes() {
    let cluster = FakeCluster::start(4, 16);
    cluster.update(|v| v.draining = vec!["n3".to_owned()]);
    let client = Client::connect(config(&cluster)).await.unwrap();
    for _ in 0..6 {
        client
            .resolve_string("who", &EvaluationContext::anonymous())
            .await
            .unwrap();
    }
    let mut per_node = BTreeMap::new();
    for served in cluster.served_by("", "who") {
        *per_node.entry(served).or_insert(0) += 1;
    }
    assert_eq!(
        per_node,
        BTreeMap::from([("n0".into(), 2), ("n1".into(), 2), ("n2".into(), 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_answers_come_back_in_input_order_across_nodes() {
    let cluster = FakeCluster::start(3, 16);
    let client = Client::connect(config(&cluster)).await.unwrap();
    let view = cluster.view();
    let mut subjects: Vec<EvaluationContext> = (0..40)
        .map(|i| EvaluationContext::new(format!("user-{i}")))
        .collect();
    subjects.insert(5, EvaluationContext::anonymous());
    subjects.push(EvaluationContext::anonymous());
    let flags = ["who".to_owned(), "other".to_owned()];

    let results = client.evaluate_bulk("", &flags, &subjects).await.unwrap();
    assert_eq!(results.len(), subjects.len());
    let mut anonymous_nodes = Vec::new();
    for (subject, result) in subjects.iter().zip(&results) {
        assert_eq!(result.targeting_key.as_deref(), subject.targeting_key());
        assert_eq!(result.results.len(), 2);
        assert_eq!(result.results[0].flag_key, "who");
        let Some(FlagValue::String(node)) = &result.results[0].value else {
            panic!("{result:?}");
        };
        match subject.targeting_key() {
            Some(key) => assert_eq!(node, &view.owner_of(key), "{key}"),
            None => anonymous_nodes.push(node.clone()),
        }
    }
    // The anonymous subjects were one group: one node answered both.
    assert_eq!(anonymous_nodes.len(), 2);
    assert_eq!(anonymous_nodes[0], anonymous_nodes[1]);
    // One call per owner plus one for the anonymous group.
    let bulk_calls = cluster.served().iter().filter(|s| s.what == "bulk").count();
    assert_eq!(bulk_calls, 4);
    assert_eq!(client.stats().requests, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_uses_the_first_seed_that_answers_and_names_every_seed_otherwise() {
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
            // Dropped here: nothing listens on the port any more.
        })
        .collect();
    let error = Client::connect(ClientConfig::new(dead.clone()))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, ClientError::NoSeedAnswered { .. }),
        "{text}"
    );
    for seed in &dead {
        assert!(text.contains(seed.as_str()), "{text}");
    }

    let cluster = FakeCluster::start(2, 8);
    let mut seeds = dead.clone();
    seeds.extend(cluster.seeds());
    let client = Client::connect(ClientConfig::new(seeds)).await.unwrap();
    assert_eq!(client.topology().nodes.len(), 2);
    assert_eq!(client.topology().shard_count, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_killed_node_fails_no_request() {
    let mut cluster = FakeCluster::start(3, 64);
    let client = Client::connect(config(&cluster)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, stop) = (client.clone(), Arc::clone(&stop));
            let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let ctx = EvaluationContext::new(format!("user-{}", i % 500));
                    match client.resolve_string("who", &ctx).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("{e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    i += 8;
                }
            })
        })
        .collect();
    let phase = Duration::from_millis(300);
    tokio::time::sleep(phase).await;
    cluster.kill("n1");
    tokio::time::sleep(phase).await;
    // The cluster notices: n1's shards go to n2.
    cluster.update(|v| {
        v.epoch = 2;
        let (n1, n2) = (v.index_of("n1"), v.index_of("n2"));
        v.shard_owner
            .iter_mut()
            .filter(|o| **o == n1)
            .for_each(|o| *o = n2);
    });
    tokio::time::sleep(phase).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("ok={ok} failed={failed} {}", client.stats());
    assert!(ok > 0);
    assert_eq!(failed, 0, "{}", client.stats());
    assert_eq!(client.topology().epoch, 2);
}
