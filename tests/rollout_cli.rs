//! `bunting rollout ...` and `bunting schedule ...`, the real binary, against a node started
//! in-process on PostgreSQL at `BUNTING_TEST_DATABASE_URL` (a database per test): a rollout
//! created, read, paused, resumed and aborted (the flag restored); bad definitions and bad states
//! refused with exit 2 and a message naming the input; scheduled changes added, listed and
//! cancelled once; and a node serving a file answering that rollouts need PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::admin::create_set_with_flags;
use common::in_process::TestNode;

use std::process::Output;
use std::time::Duration;

use bunting_node::config::{Config, FlagSourceConfig};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use common::postgres::TestDb;
use serde_json::{Value, json};

const FLAG: &str = "new-checkout";

fn config(flags: FlagSourceConfig) -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        flags,
        ..Config::default()
    }
}

async fn postgres_node(db: &TestDb) -> TestNode {
    TestNode::start(config(FlagSourceConfig::Postgres {
        url: db.url.clone().into(),
        version_check: Duration::from_secs(3600),
    }))
    .await
}

/// Runs the real `bunting` with `args` against `node`, off the runtime's threads.
async fn bunting(node: &TestNode, args: &[&str]) -> Output {
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.extend(["--node".to_owned(), node.grpc.to_string()]);
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

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{o:?}");
    stdout(o)
}

/// Exit 2 with every one of `needles` in stderr.
fn refused(o: &Output, needles: &[&str]) {
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = stderr(o);
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

fn off_flag() -> Value {
    json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": "off"
    })
}

async fn flag_definition(node: &TestNode, key: &str) -> Value {
    let mut admin = AdminClient::new(node.channel().await);
    let flags = admin
        .list_flags(pb::ListFlagsRequest {
            flag_set_id: "default".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flags;
    let flag = flags.into_iter().find(|f| f.key == key).unwrap();
    serde_json::from_str(&flag.definition).unwrap()
}

const CREATE: &[&str] = &[
    "rollout",
    "create",
    "checkout-v2",
    "--flag",
    FLAG,
    "--release",
    "on",
    "--baseline",
    "off",
    "--step",
    "10:3600:100",
    "--step",
    "50:3600:1000",
    "--step",
    "100:3600:1000",
    "--guardrail",
    "checkout:purchase:conversion:decrease:0.02",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_created_read_paused_resumed_and_aborted_from_the_cli() {
    let db = TestDb::create().await;
    let node = postgres_node(&db).await;
    let mut admin = AdminClient::new(node.channel().await);
    create_set_with_flags(
        &mut admin,
        "default",
        &[(FLAG, off_flag()), ("other", off_flag())],
        "test",
    )
    .await;

    let created = ok(&bunting(&node, CREATE).await);
    assert_eq!(
        created,
        "created rollout checkout-v2 on default/new-checkout: running at step 1 of 3 (10% get \"on\")\n"
    );
    // The first step is served: the flag now splits 10% on.
    let served = flag_definition(&node, FLAG).await;
    assert_ne!(served, off_flag(), "{served}");
    assert!(served.to_string().contains("fractional"), "{served}");

    let status = ok(&bunting(&node, &["rollout", "status", "checkout-v2"]).await);
    assert!(status.contains("running at step 1 of 3"), "{status}");
    assert!(status.contains("0 users have seen \"on\""), "{status}");
    assert!(
        status.lines().any(|l| l.starts_with("checkout")
            && l.contains("decrease")
            && l.contains("2.0%")
            && l.contains("no estimate")),
        "{status}"
    );
    assert!(status.contains("next: hold ("), "{status}");
    let json: Value = serde_json::from_str(&ok(&bunting(
        &node,
        &["rollout", "status", "checkout-v2", "--json"],
    )
    .await))
    .unwrap();
    assert_eq!(json["rollout"]["state"], "running");
    assert_eq!(json["rollout"]["step"], 0);
    assert_eq!(json["guardrails"][0]["metric"], "checkout");
    assert_eq!(json["guardrails"][0]["verdict"], "no estimate");
    assert_eq!(json["next"], "hold");

    // A second rollout on the same flag, and bad definitions: refused, naming the input.
    let mut second = CREATE.to_vec();
    second[2] = "again";
    refused(
        &bunting(&node, &second).await,
        &["FailedPrecondition", "already in rollout checkout-v2"],
    );
    let mut decreasing = CREATE.to_vec();
    decreasing[2] = "bad-steps";
    decreasing[4] = "other";
    decreasing[12] = "5:60:10";
    refused(
        &bunting(&node, &decreasing).await,
        &["InvalidArgument", "step 1 is 5%", "strictly increase"],
    );
    let mut unknown_variant = CREATE.to_vec();
    unknown_variant[2] = "bad-variant";
    unknown_variant[4] = "other";
    unknown_variant[6] = "maybe";
    refused(
        &bunting(&node, &unknown_variant).await,
        &["FailedPrecondition", "\"maybe\""],
    );
    let mut no_flag = CREATE.to_vec();
    no_flag[2] = "no-flag";
    no_flag[4] = "missing";
    refused(&bunting(&node, &no_flag).await, &["NotFound", "missing"]);
    refused(
        &bunting(&node, &["rollout", "pause", "nope"]).await,
        &["NotFound", "rollout nope not found"],
    );

    let list = ok(&bunting(&node, &["rollout", "list"]).await);
    assert_eq!(
        list.lines().filter(|l| l.starts_with("rollout ")).count(),
        1,
        "the refused ones were not recorded:\n{list}"
    );

    let paused = ok(&bunting(
        &node,
        &[
            "rollout",
            "pause",
            "checkout-v2",
            "--reason",
            "checking logs",
        ],
    )
    .await);
    assert!(paused.contains(": paused at step 1 of 3"), "{paused}");
    assert!(paused.contains("paused: requested"), "{paused}");
    refused(
        &bunting(&node, &["rollout", "pause", "checkout-v2"]).await,
        &[
            "FailedPrecondition",
            "the rollout is paused; it cannot pause",
        ],
    );
    let resumed = ok(&bunting(&node, &["rollout", "resume", "checkout-v2"]).await);
    assert!(resumed.contains(": running at step 1 of 3"), "{resumed}");

    let aborted = ok(&bunting(&node, &["rollout", "abort", "checkout-v2"]).await);
    assert!(aborted.contains(": aborted at step 1 of 3"), "{aborted}");
    assert_eq!(flag_definition(&node, FLAG).await, off_flag());
    refused(
        &bunting(&node, &["rollout", "abort", "checkout-v2"]).await,
        &[
            "FailedPrecondition",
            "the rollout is aborted; it cannot abort",
        ],
    );
    let active = ok(&bunting(&node, &["rollout", "list", "--active"]).await);
    assert_eq!(active, "no rollouts\n");
    let all: Value =
        serde_json::from_str(&ok(&bunting(&node, &["rollout", "list", "--json"]).await)).unwrap();
    assert_eq!(all[0]["state"], "aborted", "{all}");
    assert_eq!(all[0]["definition"]["steps"][1]["percent"], 50, "{all}");

    // Once aborted, the flag is free for another rollout.
    let mut again = CREATE.to_vec();
    again[2] = "checkout-v3";
    ok(&bunting(&node, &again).await);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_changes_are_added_listed_and_cancelled_once() {
    let db = TestDb::create().await;
    let node = postgres_node(&db).await;
    let mut admin = AdminClient::new(node.channel().await);
    create_set_with_flags(&mut admin, "default", &[(FLAG, off_flag())], "test").await;

    let on = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                    "defaultVariant": "on"})
    .to_string();
    let added = ok(&bunting(
        &node,
        &[
            "schedule",
            "add",
            "--at",
            "2030-01-01T09:00:00Z",
            "--flag",
            FLAG,
            "--definition",
            &on,
            "--actor",
            "release-manager",
        ],
    )
    .await);
    assert_eq!(
        added,
        "scheduled change 1 at 2030-01-01T09:00:00Z (pending): write flag default/new-checkout\n"
    );
    let mut start = CREATE.to_vec();
    start.extend(["--at", "+1d"]);
    let scheduled = ok(&bunting(&node, &start).await);
    assert!(
        scheduled.starts_with("scheduled change 2: start rollout at "),
        "{scheduled}"
    );
    // A scheduled start is checked now, not when it fires.
    let mut bad = start.clone();
    bad[12] = "5:60:10";
    refused(
        &bunting(&node, &bad).await,
        &["InvalidArgument", "strictly increase"],
    );
    refused(
        &bunting(
            &node,
            &[
                "schedule",
                "add",
                "--at",
                "+1h",
                "--flag",
                FLAG,
                "--definition",
                "[1]",
            ],
        )
        .await,
        &["InvalidArgument", "flag_change.definition"],
    );
    refused(
        &bunting(
            &node,
            &[
                "schedule",
                "add",
                "--at",
                "soon",
                "--flag",
                FLAG,
                "--definition",
                &on,
            ],
        )
        .await,
        &["--at \"soon\""],
    );

    let list = ok(&bunting(&node, &["schedule", "list"]).await);
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(
        list.lines()
            .next()
            .unwrap()
            .ends_with("(pending): start rollout checkout-v2 on default/new-checkout"),
        "{list}"
    );
    let json: Value =
        serde_json::from_str(&ok(&bunting(&node, &["schedule", "list", "--json"]).await)).unwrap();
    // By due time: the start tomorrow, then the change in 2030.
    assert_eq!(json[0]["id"], 2, "{json}");
    assert_eq!(
        json[1]["change"]["flag_change"]["definition"]["defaultVariant"],
        "on"
    );
    // The caller's token is the principal; the actor is a note after it.
    let by = json[1]["created_by"].as_str().unwrap();
    assert!(
        by.ends_with(" (release-manager)") && by.len() > " (release-manager)".len(),
        "{by}"
    );

    let cancelled = ok(&bunting(&node, &["schedule", "cancel", "1"]).await);
    assert!(
        cancelled.starts_with("cancelled change 1 at 2030-01-01T09:00:00Z (cancelled)"),
        "{cancelled}"
    );
    refused(
        &bunting(&node, &["schedule", "cancel", "1"]).await,
        &[
            "FailedPrecondition",
            "scheduled change 1 is cancelled, not pending",
        ],
    );
    refused(
        &bunting(&node, &["schedule", "cancel", "99"]).await,
        &["NotFound", "scheduled change 99 not found"],
    );
    let pending = ok(&bunting(&node, &["schedule", "list"]).await);
    assert_eq!(pending.lines().count(), 1, "{pending}");
    let all = ok(&bunting(&node, &["schedule", "list", "--all"]).await);
    assert_eq!(all.lines().count(), 2, "{all}");
    // Nothing fired: the flag is untouched.
    assert_eq!(flag_definition(&node, FLAG).await, off_flag());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serving_a_file_says_rollouts_need_postgresql() {
    let dir = common::scratch_dir("rollout-cli-file");
    let path = dir.join("flags.json");
    std::fs::write(&path, json!({"flags": {FLAG: off_flag()}}).to_string()).unwrap();
    let node = TestNode::start(config(FlagSourceConfig::File {
        path,
        set: "default".into(),
        broken_flags: Default::default(),
    }))
    .await;
    for args in [
        &["rollout", "list"][..],
        &["rollout", "status", "x"][..],
        &["schedule", "list"][..],
        CREATE,
    ] {
        refused(
            &bunting(&node, args).await,
            &["FailedPrecondition", "rollouts need PostgreSQL"],
        );
    }
    node.stop().await;
}
