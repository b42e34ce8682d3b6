//! `bunting experiment results|list`, the real binary, against a node started in-process
//! (`bunting_node::server::bind`) on PostgreSQL at `BUNTING_TEST_DATABASE_URL` (a database per test):
//! an experiment created and started through gRPC, users evaluated and purchases tracked, then the
//! table and the JSON checked against what was simulated; and the exit status 2 with a message
//! naming the node and the experiment when there are no results to show.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::admin::create_set_with_flags;
use common::in_process::TestNode;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use bunting_node::config::{Config, FlagSourceConfig};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_proto::flagd::evaluation::v1;
use bunting_proto::json::json_to_struct;
use common::postgres::TestDb;
use serde_json::{Value, json};

const FLAG: &str = "checkout-button";
const USERS: u64 = 60;
/// Bounds how long a broken node can hang the test; never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(20);

impl TestNode {
    async fn postgres(db: &TestDb) -> TestNode {
        TestNode::postgres_in(db, None).await
    }

    /// A node keeping experiment state in `data_dir` (files), or in memory.
    async fn postgres_in(db: &TestDb, data_dir: Option<std::path::PathBuf>) -> TestNode {
        TestNode::start(Config {
            data_dir,
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            shards: 2,
            flags: FlagSourceConfig::Postgres {
                url: db.url.clone().into(),
                version_check: Duration::from_secs(3600),
            },
            ..Config::default()
        })
        .await
    }
}

/// Runs the real `bunting` with `args`, off the runtime's threads (the node serves on them).
async fn bunting(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_bunting"))
            .args(&args)
            .env("BUNTING_TOKEN", common::TEST_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// The flag set `default` with a 50/50 flag (control, treatment) and two experiments on it:
/// `checkout` (started) and `later` (a draft), each with a conversion and a mean metric.
async fn set_up(node: &TestNode) {
    let mut admin = AdminClient::new(node.channel().await);
    let fifty_fifty = json!({
        "state": "ENABLED",
        "variants": {"control": "blue", "treatment": "green"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["control", 50], ["treatment", 50]]}
    });
    let flags = [(FLAG, fifty_fifty.clone()), ("banner", fifty_fifty)];
    create_set_with_flags(&mut admin, "default", &flags, "test").await;
    let mut experiments = ExperimentsClient::new(node.channel().await);
    for (id, flag) in [("checkout", FLAG), ("later", "banner")] {
        let metric = |name: &str, kind: pb::MetricKind| pb::Metric {
            name: name.into(),
            event: "purchase".into(),
            kind: kind.into(),
        };
        experiments
            .create_experiment(pb::CreateExperimentRequest {
                id: id.into(),
                flag_set_id: "default".into(),
                flag_key: flag.into(),
                control_variant: "control".into(),
                metrics: vec![
                    metric("purchased", pb::MetricKind::Conversion),
                    metric("revenue", pb::MetricKind::Mean),
                ],
                traffic_split: Default::default(),
                analysis: None,
                actor: "test".into(),
            })
            .await
            .unwrap();
    }
    experiments
        .start_experiment(pb::StartExperimentRequest {
            id: "checkout".into(),
            actor: "test".into(),
        })
        .await
        .unwrap();
}

/// Evaluates the flag for every user until the node has exposed them all: the running
/// experiment reaches the evaluators asynchronously, and a user evaluated before it did is
/// exposed by the next evaluation (exactly once either way). Returns the users per arm.
async fn expose_everyone(node: &TestNode) -> BTreeMap<String, Vec<u64>> {
    let mut flagd = v1::service_client::ServiceClient::new(node.channel().await);
    let mut experiments = ExperimentsClient::new(node.channel().await);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut arms: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for user in 0..USERS {
            let context = json!({"targetingKey": format!("user-{user}")});
            let answer = flagd
                .resolve_string(v1::ResolveStringRequest {
                    flag_key: FLAG.into(),
                    context: Some(json_to_struct(context.as_object().unwrap()).unwrap()),
                })
                .await
                .unwrap()
                .into_inner();
            arms.entry(answer.variant).or_default().push(user);
        }
        let results = experiments
            .get_experiment_results(pb::GetExperimentResultsRequest {
                id: "checkout".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let exposed: u64 = results.users.iter().map(|u| u.users).sum();
        assert!(exposed <= USERS, "a user was exposed twice: {results:?}");
        if exposed == USERS {
            return arms;
        }
        assert!(
            Instant::now() < deadline,
            "only {exposed} of {USERS} users exposed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whitespace-separated cells of the first line under `section` that starts with `arm`.
fn row(table: &str, section: &str, arm: &str) -> Vec<String> {
    let from = table
        .find(section)
        .unwrap_or_else(|| panic!("no {section:?} in\n{table}"));
    table[from..]
        .lines()
        .find(|l| l.starts_with(arm))
        .unwrap_or_else(|| panic!("no {arm} row under {section:?} in\n{table}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Issue 14 through a node: a control arm where nobody buys has no variance, so every lift says
/// "not enough information", in the RPC (verdict, no p-value) and in the CLI's table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arm_without_variance_is_not_enough_information_end_to_end() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    set_up(&node).await;
    let arms = expose_everyone(&node).await;
    let mut tracker = ExperimentsClient::new(node.channel().await);
    for user in arms["treatment"].iter().filter(|u| *u % 2 == 0) {
        tracker
            .track(pb::TrackRequest {
                targeting_key: format!("user-{user}"),
                event: "purchase".into(),
                value: 10.0,
                flag_set_id: None,
            })
            .await
            .unwrap();
    }

    let results = tracker
        .get_experiment_results(pb::GetExperimentResultsRequest {
            id: "checkout".into(),
        })
        .await
        .unwrap()
        .into_inner();
    for metric in &results.metrics {
        let comparison = metric.arms[1].comparison.clone().unwrap();
        for lift in [comparison.absolute.unwrap(), comparison.relative.unwrap()] {
            assert_eq!(
                lift.verdict,
                i32::from(pb::Verdict::NotEnoughInformation),
                "{}: {lift:?}",
                metric.metric
            );
            assert!(
                lift.unavailable
                    .starts_with("not enough information: every user in the control arm"),
                "{}",
                lift.unavailable
            );
            assert_eq!((lift.p_value, lift.sequential_p_value), (0.0, None));
        }
    }

    let addr = node.grpc.to_string();
    let out = bunting(&["experiment", "results", "checkout", "--node", &addr]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let lines = table
        .lines()
        .filter(|l| l.contains("NOT ENOUGH INFORMATION: every user in the control arm"))
        .count();
    assert_eq!(lines, 4, "two lifts of two metrics:\n{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_a_table_per_metric_and_arm_and_errors_exit_2() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    set_up(&node).await;
    let arms = expose_everyone(&node).await;
    assert_eq!(
        arms.keys().collect::<Vec<_>>(),
        ["control", "treatment"],
        "{arms:?}"
    );

    // Purchases: every third control user, every second treatment user, 10.0 each (a second
    // purchase by some treatment users counts toward revenue, not twice toward conversion).
    let mut tracker = ExperimentsClient::new(node.channel().await);
    let mut converted: BTreeMap<&str, u64> = BTreeMap::new();
    let mut revenue: BTreeMap<&str, f64> = BTreeMap::new();
    for (arm, users) in &arms {
        let (every, purchases) = if arm == "treatment" { (2, 2) } else { (3, 1) };
        for user in users.iter().filter(|u| *u % every == 0) {
            *converted.entry(arm).or_default() += 1;
            for _ in 0..purchases {
                *revenue.entry(arm).or_default() += 10.0;
                let counted = tracker
                    .track(pb::TrackRequest {
                        targeting_key: format!("user-{user}"),
                        event: "purchase".into(),
                        value: 10.0,
                        flag_set_id: None,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .counted;
                assert_eq!(counted, ["checkout"]);
            }
        }
    }

    let addr = node.grpc.to_string();
    let out = bunting(&["experiment", "results", "checkout", "--node", &addr]).await;
    let table = stdout(&out);
    assert!(out.status.success(), "{out:?}\n{}", stderr(&out));
    println!("{table}");
    let (nc, nt) = (arms["control"].len(), arms["treatment"].len());
    assert!(
        table.starts_with(&format!(
            "experiment checkout  flag default/{FLAG}  state running  control control\n"
        )),
        "{table}"
    );
    assert!(table.contains("sequential yes"), "{table}");
    assert!(
        table.contains(&format!("users  control {nc}  treatment {nt}  (SRM p = ")),
        "{table}"
    );
    // Control first, then treatment, under each metric, with the simulated counts.
    for section in [
        "\npurchased (conversion of \"purchase\")",
        "\nrevenue (mean",
    ] {
        let at = table.find(section).unwrap();
        let control = table[at..].find("\ncontrol ").unwrap();
        let treatment = table[at..].find("\ntreatment ").unwrap();
        assert!(control < treatment, "{table}");
    }
    let rate = |arm: &str, n: usize| format!("{:.2}%", converted[arm] as f64 / n as f64 * 100.0);
    let control = row(&table, "\npurchased", "control");
    assert_eq!(
        control[..4],
        [
            "control".to_owned(),
            nc.to_string(),
            converted["control"].to_string(),
            rate("control", nc),
        ]
    );
    let treatment = row(&table, "\npurchased", "treatment");
    assert_eq!(
        treatment[..4],
        [
            "treatment".to_owned(),
            nt.to_string(),
            converted["treatment"].to_string(),
            rate("treatment", nt),
        ]
    );
    // The absolute lift in percentage points, then its interval, p-values and chance to beat.
    let lift = (converted["treatment"] as f64 / nt as f64
        - converted["control"] as f64 / nc as f64)
        * 100.0;
    let lift_at = treatment
        .iter()
        .position(|c| c == "pp")
        .expect("an absolute lift in percentage points");
    assert_eq!(
        treatment[lift_at - 1],
        format!("{lift:+.2}"),
        "{treatment:?}"
    );
    // Then the chance to beat control and the verdict.
    let chance = &treatment[treatment.len() - 2];
    assert!(chance.ends_with('%'), "{treatment:?}");
    assert!(
        ["higher", "lower", "inconclusive"].contains(&treatment.last().unwrap().as_str()),
        "{treatment:?}"
    );
    let mean = |arm: &str, n: usize| format!("{:.2}", revenue[arm] / n as f64);
    let control = row(&table, "\nrevenue", "control");
    assert_eq!(
        control[..3],
        ["control".to_owned(), nc.to_string(), mean("control", nc)]
    );
    let treatment = row(&table, "\nrevenue", "treatment");
    assert_eq!(treatment[2], mean("treatment", nt), "{treatment:?}");
    assert!(!table.contains("WARNING"), "{table}");

    // --json: the same response, machine-readable.
    let out = bunting(&[
        "experiment",
        "results",
        "checkout",
        "--node",
        &addr,
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["experiment"]["id"], "checkout");
    assert_eq!(v["experiment"]["state"], "EXPERIMENT_STATE_RUNNING");
    assert_eq!(
        v["users"],
        json!([{"arm": "control", "users": nc}, {"arm": "treatment", "users": nt}])
    );
    assert_eq!(v["metrics"][0]["metric"], "purchased");
    assert_eq!(
        v["metrics"][0]["arms"][1]["converted"],
        converted["treatment"]
    );
    let absolute = &v["metrics"][0]["arms"][1]["comparison"]["absolute"];
    assert!(
        (absolute["estimate"].as_f64().unwrap() - lift / 100.0).abs() < 1e-12,
        "{absolute}"
    );
    assert!(absolute["sequential_p_value"].is_f64(), "{absolute}");
    assert!(absolute["holm_p_value"].is_f64(), "{absolute}");

    // list: both experiments with their states.
    let out = bunting(&["experiment", "list", "--node", &addr]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    assert_eq!(
        row(&list, "ID", "checkout")[..3],
        ["checkout", &format!("default/{FLAG}"), "running"]
    );
    assert_eq!(
        row(&list, "ID", "later")[..3],
        ["later", "default/banner", "draft"]
    );

    // An unknown experiment: exit 2, naming the node and the experiment.
    let out = bunting(&["experiment", "results", "no-such-test", "--node", &addr]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = stderr(&out);
    assert!(
        message.contains(&addr) && message.contains("no-such-test") && message.contains("NotFound"),
        "{message}"
    );
    assert!(stdout(&out).is_empty());

    // A draft: exit 2 with the node's FAILED_PRECONDITION message.
    let out = bunting(&["experiment", "results", "later", "--node", &addr]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = stderr(&out);
    assert!(
        message.contains("FailedPrecondition")
            && message.contains("experiment later is a draft: nothing has been counted"),
        "{message}"
    );

    node.stop().await;

    // No node: exit 2, naming the address.
    let out = bunting(&["experiment", "results", "checkout", "--node", &addr]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let message = stderr(&out);
    assert!(
        message.contains(&format!("cannot reach node {addr}")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_are_created_started_tracked_and_stopped_from_the_command_line() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    set_up(&node).await;
    let addr = node.grpc.to_string();
    let run = |args: Vec<&'static str>| {
        let addr = addr.clone();
        async move {
            let mut all: Vec<&str> = vec!["experiment", "--node", &addr];
            all.extend(args);
            bunting(&all).await
        }
    };
    let created = run(vec![
        "create",
        "cli-made",
        "--flag",
        "banner",
        "--control",
        "treatment",
        "--metric",
        "signed-up:signup:conversion",
    ])
    .await;
    // `banner` already has a running-or-draft experiment ("later", a draft): a second draft is
    // allowed; only one may run at a time.
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stdout(&created).contains("arms control, treatment"),
        "{}",
        stdout(&created)
    );
    // The suggested next command reaches the same node (issue 13: it left out --node).
    assert!(
        stdout(&created).contains(&format!(
            "`bunting experiment start cli-made --node {addr}`"
        )),
        "{}",
        stdout(&created)
    );
    let bad_metric = run(vec![
        "create",
        "bad",
        "--flag",
        "banner",
        "--control",
        "control",
        "--metric",
        "x:y:median",
    ])
    .await;
    assert_eq!(bad_metric.status.code(), Some(2));
    assert!(
        stderr(&bad_metric).contains("NAME:EVENT:KIND"),
        "{}",
        stderr(&bad_metric)
    );
    // Analysis settings: given as flags, echoed in force; a bad value exits 2 naming its field.
    let bayesian = run(vec![
        "create",
        "cli-bayes",
        "--flag",
        "banner",
        "--control",
        "control",
        "--metric",
        "signed-up:signup:conversion",
        "--engine",
        "bayesian",
        "--alpha",
        "0.1",
        "--prior",
        "0:0.09",
    ])
    .await;
    assert!(bayesian.status.success(), "{}", stderr(&bayesian));
    assert!(
        stdout(&bayesian).contains("analysis: Bayesian, alpha 0.1, prior N(0, 0.09)"),
        "{}",
        stdout(&bayesian)
    );
    let bad_alpha = run(vec![
        "create",
        "cli-lax",
        "--flag",
        "banner",
        "--control",
        "control",
        "--metric",
        "signed-up:signup:conversion",
        "--alpha",
        "0.7",
    ])
    .await;
    assert_eq!(bad_alpha.status.code(), Some(2));
    assert!(
        stderr(&bad_alpha)
            .contains("analysis.alpha: alpha must be above 0 and at most 0.5, got 0.7"),
        "{}",
        stderr(&bad_alpha)
    );
    let early_stop = run(vec!["stop", "cli-made"]).await;
    assert_eq!(
        early_stop.status.code(),
        Some(2),
        "a stop before a start is refused"
    );
    let started = run(vec!["start", "cli-made"]).await;
    assert!(started.status.success(), "{}", stderr(&started));
    let tracked = run(vec!["track", "nobody", "signup"]).await;
    assert!(tracked.status.success(), "{}", stderr(&tracked));
    assert!(
        stdout(&tracked).contains("counted toward no experiment"),
        "{}",
        stdout(&tracked)
    );
    let stopped = run(vec!["stop", "cli-made"]).await;
    assert!(stopped.status.success(), "{}", stderr(&stopped));
    let list = run(vec!["list"]).await;
    assert!(stdout(&list).contains("cli-made"), "{}", stdout(&list));

    // ListExperiments is paged: the list follows the pages to the last, whatever their size.
    let everything = ["checkout", "cli-bayes", "cli-made", "later"];
    for page_size in ["1", "2", "1000"] {
        let list = run(vec!["list", "--page-size", page_size]).await;
        assert!(list.status.success(), "{}", stderr(&list));
        let shown: Vec<String> = stdout(&list)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        assert_eq!(
            shown,
            everything,
            "--page-size {page_size}:\n{}",
            stdout(&list)
        );
        let json = run(vec!["list", "--json", "--page-size", page_size]).await;
        assert!(json.status.success(), "{}", stderr(&json));
        let listed: Value = serde_json::from_str(&stdout(&json)).unwrap();
        let ids: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, everything, "--page-size {page_size} --json");
    }
    for refused in ["0", "1001"] {
        let list = run(vec!["list", "--page-size", refused]).await;
        assert_eq!(
            list.status.code(),
            Some(2),
            "--page-size {refused}: {list:?}"
        );
        assert!(stderr(&list).contains("--page-size"), "{}", stderr(&list));
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_with_a_data_dir_keeps_its_counts_across_a_restart() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("experiment-restart");
    let node = TestNode::postgres_in(&db, Some(dir.clone())).await;
    set_up(&node).await;
    let arms = expose_everyone(&node).await;
    let mut tracker = ExperimentsClient::new(node.channel().await);
    for user in arms["treatment"].iter().take(5) {
        let counted = tracker
            .track(pb::TrackRequest {
                targeting_key: format!("user-{user}"),
                event: "purchase".into(),
                value: 3.0,
                flag_set_id: None,
            })
            .await
            .unwrap()
            .into_inner()
            .counted;
        assert_eq!(counted, ["checkout"]);
    }
    let before = bunting(&[
        "experiment",
        "--node",
        &node.grpc.to_string(),
        "results",
        "checkout",
        "--json",
    ])
    .await;
    let before: serde_json::Value = serde_json::from_slice(&before.stdout).unwrap();
    node.stop().await;

    // The same data_dir: the users' records come back, so evaluating everyone again exposes
    // nobody twice, and the conversions are still there.
    let node = TestNode::postgres_in(&db, Some(dir.clone())).await;
    let again = expose_everyone(&node).await;
    assert_eq!(again, arms, "assignment is deterministic");
    let after = bunting(&[
        "experiment",
        "--node",
        &node.grpc.to_string(),
        "results",
        "checkout",
        "--json",
    ])
    .await;
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(
        after["users"], before["users"],
        "a restart must not count users twice or lose them"
    );
    assert_eq!(after["metrics"][0]["arms"], before["metrics"][0]["arms"]);
    assert!(dir.join("users").is_dir() && dir.join("events").is_dir());
    node.stop().await;
}
