//! Bunting's own API (`bunting.v1` Admin and Evaluation) on real nodes, started in-process with
//! `bunting_node::server::bind` on free ports, against PostgreSQL at `BUNTING_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`; `scripts/test` starts it). Each test makes a
//! database of its own and drops it at the end, as tests/postgres_store.rs does.
//!
//! Changes travel asynchronously (commit, NOTIFY, re-read, fan-out, stream): tests wait for them
//! with a generous deadline and never assert how fast they arrive (benches/propagation.rs does).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bunting_node::config::{Config, FlagSourceConfig};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::evaluation_client::EvaluationClient;
use bunting_proto::bunting::v1::flag_result::Value as Resolved;
use bunting_proto::flagd::evaluation::{v1, v2};
use bunting_proto::flagd::sync::v1::SyncFlagsRequest;
use bunting_proto::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use bunting_proto::json::{json_to_struct, struct_to_json};
use bunting_stores::file::BrokenFlags;
use chrono::Utc;
use common::Channel;
use prost_types::Struct;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

mod common;

use common::eventually;
use common::in_process::TestNode;

use common::postgres::{TestDb, with_database};

/// Long enough for any machine to deliver a change; tests wait this long only when something is
/// already broken.
const PATIENCE: Duration = Duration::from_secs(20);

/// Nodes here repair missed notifications this rarely, so a change that arrives within a test
/// arrived by LISTEN/NOTIFY.
const NO_VERSION_CHECK: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// A database per test
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

impl TestNode {
    async fn postgres(db: &TestDb) -> TestNode {
        TestNode::start(postgres_config(db)).await
    }

    async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    async fn bulk(&self) -> EvaluationClient<Channel> {
        EvaluationClient::new(self.channel().await)
    }
}

fn base_config() -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 4,
        ..Config::default()
    }
}

fn postgres_config(db: &TestDb) -> Config {
    Config {
        flags: FlagSourceConfig::Postgres {
            url: db.url.clone().into(),
            version_check: NO_VERSION_CHECK,
        },
        ..base_config()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

fn structure(value: Value) -> Struct {
    json_to_struct(value.as_object().unwrap()).unwrap()
}

fn banner(default_variant: &str) -> Value {
    json!({
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": default_variant,
        "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", null]},
    })
}

fn colour(value: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"c": value}, "defaultVariant": "c"})
}

async fn create_set(admin: &mut AdminClient<Channel>, id: &str) -> pb::FlagSet {
    admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: id.into(),
            metadata: Some(structure(json!({"team": "growth"}))),
            evaluators: None,
            actor: "ada".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flag_set
        .unwrap()
}

async fn create_flag(
    admin: &mut AdminClient<Channel>,
    set: &str,
    key: &str,
    definition: &Value,
) -> Result<pb::CreateFlagResponse, Status> {
    admin
        .create_flag(pb::CreateFlagRequest {
            flag_set_id: set.into(),
            key: key.into(),
            definition: definition.to_string(),
            expected_flag_set_version: 0,
            actor: "ada".into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn update_flag(
    admin: &mut AdminClient<Channel>,
    set: &str,
    key: &str,
    definition: &Value,
    expected_version: i64,
    actor: &str,
) -> Result<pb::UpdateFlagResponse, Status> {
    admin
        .update_flag(pb::UpdateFlagRequest {
            flag_set_id: set.into(),
            key: key.into(),
            definition: definition.to_string(),
            expected_version,
            actor: actor.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn list_flags(admin: &mut AdminClient<Channel>, set: &str) -> pb::ListFlagsResponse {
    admin
        .list_flags(pb::ListFlagsRequest {
            flag_set_id: set.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn audit(
    admin: &mut AdminClient<Channel>,
    set: &str,
    key: &str,
    before_id: i64,
    limit: i32,
) -> pb::ListAuditResponse {
    admin
        .list_audit(pb::ListAuditRequest {
            flag_set_id: set.into(),
            flag_key: key.into(),
            before_id,
            limit,
        })
        .await
        .unwrap()
        .into_inner()
}

fn json_of(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap()
    }
}

fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The next message of a stream, within [`PATIENCE`].
async fn next<T>(stream: &mut Streaming<T>, what: &str) -> T {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing arrived within {PATIENCE:?}"))
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: the stream ended"))
}

/// One bulk result as (key, value, variant, reason, error code).
type ResultRow<'r> = (&'r str, Option<Resolved>, &'r str, &'r str, i32);

async fn resolve_string(
    client: &mut v2::service_client::ServiceClient<Channel>,
    key: &str,
) -> Option<String> {
    client
        .resolve_string(v2::ResolveStringRequest {
            flag_key: key.into(),
            context: None,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().value)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_are_versioned_validated_and_audited() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    let mut admin = node.admin().await;
    let start = Utc::now() - chrono::Duration::seconds(5);

    let set = create_set(&mut admin, "default").await;
    assert_eq!((set.id.as_str(), set.version), ("default", 1));
    assert_eq!(
        struct_to_json(set.metadata.as_ref().unwrap()).unwrap(),
        *json!({"team": "growth"}).as_object().unwrap()
    );
    let created = create_flag(&mut admin, "default", "banner", &banner("off"))
        .await
        .unwrap();
    let flag = created.flag.unwrap();
    assert_eq!((flag.version, created.flag_set_version), (1, 2));
    assert_eq!(json_of(&flag.definition), banner("off"));
    let updated = update_flag(&mut admin, "default", "banner", &banner("on"), 1, "grace")
        .await
        .unwrap();
    assert_eq!(
        (updated.flag.unwrap().version, updated.flag_set_version),
        (2, 3)
    );
    let before = list_flags(&mut admin, "default").await;
    assert_eq!(before.flag_set_version, 3);
    let audited = audit(&mut admin, "default", "", 0, 0).await.entries.len();

    // A writer still holding version 1 is refused, and nothing changes.
    let stale = update_flag(&mut admin, "default", "banner", &banner("off"), 1, "linus")
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    assert!(stale.message().contains("version 2"), "{}", stale.message());
    let stale_delete = admin
        .delete_flag(pb::DeleteFlagRequest {
            flag_set_id: "default".into(),
            key: "banner".into(),
            expected_version: 1,
            actor: "linus".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale_delete.code(), Code::FailedPrecondition);
    let stale_create = admin
        .create_flag(pb::CreateFlagRequest {
            flag_set_id: "default".into(),
            key: "other".into(),
            definition: colour("red").to_string(),
            expected_flag_set_version: 2,
            actor: "linus".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale_create.code(), Code::FailedPrecondition);
    assert_eq!(list_flags(&mut admin, "default").await, before);

    // An invalid definition is refused with every problem at its path, and nothing changes.
    let invalid = update_flag(
        &mut admin,
        "default",
        "banner",
        &banner("maybe"),
        2,
        "linus",
    )
    .await
    .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    assert!(
        invalid.message().contains("flags.banner.defaultVariant"),
        "{}",
        invalid.message()
    );
    assert_eq!(violated_fields(&invalid), ["flags.banner.defaultVariant"]);
    let two_problems = json!({
        "state": "ENABLED",
        "variants": {"on": true},
        "defaultVariant": "nope",
        "targeting": {"no_such_operator": [1]},
    });
    let invalid = create_flag(&mut admin, "default", "broken", &two_problems)
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let fields = violated_fields(&invalid);
    assert!(fields.len() >= 2, "{fields:?}");
    for field in &fields {
        assert!(field.starts_with("flags.broken."), "{fields:?}");
        assert!(invalid.message().contains(field.as_str()), "{invalid:?}");
    }
    assert_eq!(list_flags(&mut admin, "default").await, before);
    assert_eq!(
        audit(&mut admin, "default", "", 0, 0).await.entries.len(),
        audited
    );

    // Malformed requests never reach the store.
    let bad_id = admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: "no spaces".into(),
            actor: "ada".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad_id), ["id"]);
    let no_actor = update_flag(&mut admin, "default", "banner", &banner("off"), 2, "")
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&no_actor), ["actor"]);
    let not_json = admin
        .create_flag(pb::CreateFlagRequest {
            flag_set_id: "default".into(),
            key: "x".into(),
            definition: "{".into(),
            actor: "ada".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&not_json), ["definition"]);

    // The store's other refusals.
    let duplicate = admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: "default".into(),
            actor: "ada".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let missing = admin
        .get_flag_set(pb::GetFlagSetRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let missing_flag = update_flag(&mut admin, "default", "nope", &banner("on"), 1, "ada")
        .await
        .unwrap_err();
    assert_eq!(missing_flag.code(), Code::NotFound);

    // The audit log: who, when, before and after, newest first.
    let end = Utc::now() + chrono::Duration::seconds(5);
    let log = audit(&mut admin, "default", "", 0, 0).await;
    assert_eq!(log.next_before_id, 0);
    let summary: Vec<(i32, &str, &str, i64)> = log
        .entries
        .iter()
        .map(|e| {
            (
                e.action,
                e.flag_key.as_str(),
                e.actor.as_str(),
                e.flag_set_version,
            )
        })
        .collect();
    let (create, update) = (
        i32::from(pb::AuditAction::Create),
        i32::from(pb::AuditAction::Update),
    );
    assert_eq!(
        summary,
        [
            // The token that wrote (the tests' bootstrap token), then the caller's own actor.
            (update, "banner", "bootstrap (grace)", 3),
            (create, "banner", "bootstrap (ada)", 2),
            (create, "", "bootstrap (ada)", 1),
        ]
    );
    for entry in &log.entries {
        let at = entry.at.unwrap();
        let at = chrono::DateTime::from_timestamp(at.seconds, at.nanos as u32).unwrap();
        assert!(start <= at && at <= end, "{at}");
    }
    assert_eq!(json_of(&log.entries[0].before_json), banner("off"));
    assert_eq!(json_of(&log.entries[0].after_json), banner("on"));
    assert_eq!(json_of(&log.entries[1].before_json), Value::Null);
    assert_eq!(
        json_of(&log.entries[2].after_json),
        json!({"metadata": {"team": "growth"}, "$evaluators": {}})
    );
    // One flag's history, and pages cut by next_before_id.
    let banner_log = audit(&mut admin, "default", "banner", 0, 0).await;
    assert_eq!(banner_log.entries, log.entries[..2]);
    let first = audit(&mut admin, "default", "", 0, 2).await;
    assert_eq!(first.next_before_id, first.entries[1].id);
    let second = audit(&mut admin, "default", "", first.next_before_id, 2).await;
    assert_eq!(second.next_before_id, 0);
    assert_eq!([first.entries, second.entries].concat(), log.entries);
    let bad_limit = admin
        .list_audit(pb::ListAuditRequest {
            limit: 1001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_limit.code(), Code::InvalidArgument);

    // Store refusals are counted per operation.
    let metrics = node.scrape().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bunting_store_errors_total")
                && l.contains("op=\"update_flag\"")
                && l.contains("kind=\"version_conflict\"")),
        "{metrics}"
    );

    drop(admin);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_reaches_open_event_and_sync_streams() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    let mut admin = node.admin().await;
    create_set(&mut admin, "default").await;
    create_flag(&mut admin, "default", "banner", &banner("off"))
        .await
        .unwrap();
    // The node serves what it was told before the streams open.
    let flagd = v2::service_client::ServiceClient::new(node.channel().await);
    eventually("the new flag on the node", PATIENCE, || {
        let mut flagd = flagd.clone();
        async move {
            let r = flagd
                .resolve_boolean(v2::ResolveBooleanRequest {
                    flag_key: "banner".into(),
                    context: None,
                })
                .await
                .ok()?;
            r.into_inner().value.is_some().then_some(())
        }
    })
    .await;

    let mut events = v1::service_client::ServiceClient::new(node.channel().await)
        .event_stream(v1::EventStreamRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next(&mut events, "provider_ready").await.r#type,
        "provider_ready"
    );
    let mut sync = FlagSyncServiceClient::new(node.channel().await)
        .sync_flags(SyncFlagsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let initial = json_of(&next(&mut sync, "the initial sync").await.flag_configuration);
    assert_eq!(initial["flags"]["banner"], banner("off"));

    update_flag(&mut admin, "default", "banner", &banner("on"), 1, "grace")
        .await
        .unwrap();

    // flagd v1 EventStream: a configuration_change naming the flag (keep-alives may come first).
    let change = loop {
        let event = next(&mut events, "configuration_change").await;
        if event.r#type == "configuration_change" {
            break struct_to_json(&event.data.unwrap()).unwrap();
        }
        assert_eq!(event.r#type, "keep_alive", "{event:?}");
    };
    assert_eq!(
        Value::Object(change),
        json!({"flags": {"banner": {"type": "update", "flagKey": "banner"}}})
    );
    // SyncFlags: the new flag configuration.
    let synced = json_of(&next(&mut sync, "the changed sync").await.flag_configuration);
    assert_eq!(synced["flags"]["banner"], banner("on"));
    assert_eq!(synced["metadata"], json!({"team": "growth"}));

    // And flagd evaluations see it.
    let mut pro = flagd.clone();
    let value = pro
        .resolve_boolean(v2::ResolveBooleanRequest {
            flag_key: "banner".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .value;
    assert_eq!(value, Some(true));

    drop((events, sync, admin, flagd));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_a_second_node_reaches_the_first() {
    let db = TestDb::create().await;
    let first = TestNode::postgres(&db).await;
    let second = TestNode::postgres(&db).await;

    // Written through the second node only.
    let mut admin = second.admin().await;
    create_set(&mut admin, "default").await;
    create_flag(&mut admin, "default", "colour", &colour("red"))
        .await
        .unwrap();

    let flagd = v2::service_client::ServiceClient::new(first.channel().await);
    eventually("the flag written through the other node", PATIENCE, || {
        let mut flagd = flagd.clone();
        async move { (resolve_string(&mut flagd, "colour").await? == "red").then_some(()) }
    })
    .await;
    update_flag(&mut admin, "default", "colour", &colour("blue"), 1, "grace")
        .await
        .unwrap();
    eventually(
        "the update written through the other node",
        PATIENCE,
        || {
            let mut flagd = flagd.clone();
            async move { (resolve_string(&mut flagd, "colour").await? == "blue").then_some(()) }
        },
    )
    .await;
    // Bulk evaluation on the first node reports the version the second node's write produced.
    let bulk = first
        .bulk()
        .await
        .evaluate_bulk(pb::EvaluateBulkRequest {
            subjects: vec![pb::Subject { context: None }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bulk.flag_set_version, 3);
    assert_eq!(
        bulk.subjects[0].results[0].value,
        Some(Resolved::StringValue("blue".into()))
    );

    drop((admin, flagd));
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_bulk_answers_per_subject_with_per_flag_errors() {
    let db = TestDb::create().await;
    let node = TestNode::start(Config {
        max_bulk_evaluations: 12,
        ..postgres_config(&db)
    })
    .await;
    let mut admin = node.admin().await;
    create_set(&mut admin, "shop").await;
    let flags = [
        ("banner", banner("off")),
        ("colour", colour("red")),
        (
            "limit",
            json!({"state": "ENABLED", "variants": {"low": 3, "high": 2.5}, "defaultVariant": "low",
                   "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "high", null]},
                   "metadata": {"owner": "billing"}}),
        ),
        (
            "layout",
            json!({"state": "ENABLED", "variants": {"grid": {"columns": 3}}, "defaultVariant": "grid"}),
        ),
        (
            "legacy",
            json!({"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}),
        ),
    ];
    let mut version = 0;
    for (key, definition) in &flags {
        version = create_flag(&mut admin, "shop", key, definition)
            .await
            .unwrap()
            .flag_set_version;
    }
    let mut bulk = node.bulk().await;
    let subjects = vec![
        pb::Subject {
            context: Some(structure(json!({"targetingKey": "u-pro", "plan": "pro"}))),
        },
        pb::Subject {
            context: Some(structure(json!({"targetingKey": "u-free", "plan": "free"}))),
        },
        pb::Subject { context: None },
    ];
    let request = pb::EvaluateBulkRequest {
        flag_set_id: "shop".into(),
        flag_keys: ["limit", "missing", "banner", "limit"]
            .map(str::to_owned)
            .to_vec(),
        subjects: subjects.clone(),
    };
    let response = eventually("the flags on the node", PATIENCE, || {
        let (mut bulk, request) = (bulk.clone(), request.clone());
        async move {
            let r = bulk.evaluate_bulk(request).await.ok()?.into_inner();
            (r.flag_set_version == version).then_some(r)
        }
    })
    .await;
    assert_eq!(
        struct_to_json(response.flag_set_metadata.as_ref().unwrap()).unwrap(),
        *json!({"team": "growth"}).as_object().unwrap()
    );
    let targeting_keys: Vec<&str> = response
        .subjects
        .iter()
        .map(|s| s.targeting_key.as_str())
        .collect();
    assert_eq!(targeting_keys, ["u-pro", "u-free", ""]);
    let not_found = i32::from(pb::ErrorCode::FlagNotFound);
    let summary: Vec<Vec<ResultRow>> = response
        .subjects
        .iter()
        .map(|s| {
            s.results
                .iter()
                .map(|r| {
                    (
                        r.flag_key.as_str(),
                        r.value.clone(),
                        r.variant.as_str(),
                        r.reason.as_str(),
                        r.error_code,
                    )
                })
                .collect()
        })
        .collect();
    // Duplicates once, at their first position; an unknown key is a result, not a failure.
    assert_eq!(
        summary,
        [
            vec![
                (
                    "limit",
                    Some(Resolved::DoubleValue(2.5)),
                    "high",
                    "TARGETING_MATCH",
                    0
                ),
                ("missing", None, "", "ERROR", not_found),
                (
                    "banner",
                    Some(Resolved::BoolValue(true)),
                    "on",
                    "TARGETING_MATCH",
                    0
                ),
            ],
            vec![
                ("limit", Some(Resolved::IntValue(3)), "low", "DEFAULT", 0),
                ("missing", None, "", "ERROR", not_found),
                (
                    "banner",
                    Some(Resolved::BoolValue(false)),
                    "off",
                    "DEFAULT",
                    0
                ),
            ],
            vec![
                ("limit", Some(Resolved::IntValue(3)), "low", "DEFAULT", 0),
                ("missing", None, "", "ERROR", not_found),
                (
                    "banner",
                    Some(Resolved::BoolValue(false)),
                    "off",
                    "DEFAULT",
                    0
                ),
            ],
        ]
    );
    let missing = &response.subjects[0].results[1];
    assert!(missing.error_message.contains("missing"), "{missing:?}");
    // Flag metadata over flag-set metadata.
    assert_eq!(
        struct_to_json(response.subjects[0].results[0].metadata.as_ref().unwrap()).unwrap(),
        *json!({"team": "growth", "owner": "billing"})
            .as_object()
            .unwrap()
    );

    // No keys: every flag in key order.
    let all = bulk
        .evaluate_bulk(pb::EvaluateBulkRequest {
            flag_set_id: "shop".into(),
            flag_keys: vec![],
            subjects: subjects[..1].to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let results = &all.subjects[0].results;
    let keys: Vec<&str> = results.iter().map(|r| r.flag_key.as_str()).collect();
    assert_eq!(keys, ["banner", "colour", "layout", "legacy", "limit"]);
    assert_eq!(
        results[2].value,
        Some(Resolved::ObjectValue(structure(json!({"columns": 3}))))
    );
    assert_eq!(
        (results[3].reason.as_str(), &results[3].value),
        ("DISABLED", &None)
    );

    // Refusals: no subjects, an unknown set, a batch over the node's limit (3 x 5 > 12), a bad
    // context.
    let refused = |request: pb::EvaluateBulkRequest| {
        let mut bulk = bulk.clone();
        async move { bulk.evaluate_bulk(request).await.unwrap_err() }
    };
    let none = refused(pb::EvaluateBulkRequest {
        flag_set_id: "shop".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(none.code(), Code::InvalidArgument);
    let unknown = refused(pb::EvaluateBulkRequest {
        flag_set_id: "nope".into(),
        subjects: subjects.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(unknown.code(), Code::NotFound);
    let too_many = refused(pb::EvaluateBulkRequest {
        flag_set_id: "shop".into(),
        subjects: subjects.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(too_many.message().contains("limit of 12"), "{too_many:?}");
    let bad_context = refused(pb::EvaluateBulkRequest {
        flag_set_id: "shop".into(),
        flag_keys: vec!["banner".into()],
        subjects: vec![
            subjects[0].clone(),
            pb::Subject {
                // Over the node's default 64 KiB context limit.
                context: Some(structure(json!({"blob": "x".repeat(70_000)}))),
            },
        ],
    })
    .await;
    assert_eq!(bad_context.code(), Code::InvalidArgument);
    assert!(
        bad_context.message().contains("subjects[1]"),
        "{bad_context:?}"
    );

    // Counted with the flagd services' metrics, under their own label.
    let metrics = node.scrape().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bunting_evaluations_total")
                && l.contains("service=\"bunting.v1\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bunting_evaluation_errors_total")
                && l.contains("service=\"bunting.v1\"")
                && l.contains("code=\"FLAG_NOT_FOUND\"")),
        "{metrics}"
    );

    drop((admin, bulk));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_node_refuses_admin_calls_naming_its_file() {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "bunting-node-admin-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("flags.json");
    std::fs::write(
        &path,
        json!({"flags": {"colour": colour("red")}}).to_string(),
    )
    .unwrap();
    let node = TestNode::start(Config {
        flags: FlagSourceConfig::File {
            path: path.clone(),
            set: "default".into(),
            broken_flags: BrokenFlags::default(),
        },
        ..base_config()
    })
    .await;
    let mut admin = node.admin().await;

    let listed = admin
        .list_flag_sets(pb::ListFlagSetsRequest {})
        .await
        .unwrap_err();
    let created = admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: "default".into(),
            actor: "ada".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let applied = apply(
        &mut admin,
        "default",
        vec![change(
            pb::FlagChangeKind::Create,
            "new",
            Some(&colour("x")),
            0,
        )],
        0,
    )
    .await
    .unwrap_err();
    for refused in [listed, created, applied] {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("file"), "{refused:?}");
        assert!(
            refused.message().contains(&path.display().to_string()),
            "{refused:?}"
        );
    }
    // Evaluation is served from the file as usual.
    let bulk = node
        .bulk()
        .await
        .evaluate_bulk(pb::EvaluateBulkRequest {
            subjects: vec![pb::Subject { context: None }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        bulk.subjects[0].results[0].value,
        Some(Resolved::StringValue("red".into()))
    );

    drop(admin);
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn test_database_urls_keep_their_parameters() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@db/test?sslmode=disable", "x"),
        "postgres://u:p@db/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://db", "x"), "postgres://db/x");
}

// ---------------------------------------------------------------------------------------------
// A PostgreSQL outage, made by cutting a TCP proxy between one node and the server
// ---------------------------------------------------------------------------------------------

/// A loopback TCP proxy to PostgreSQL that can be cut (every connection dropped, new ones refused)
/// and restored, so one node loses its database while the server and other nodes keep it.
struct Proxy {
    addr: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (open, links) = (open.clone(), links.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            }
        });
        Proxy {
            addr,
            open,
            links,
            accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_serves_from_memory_and_catches_up_by_version() {
    let db = TestDb::create().await;
    let writer = TestNode::postgres(&db).await;
    let mut direct = writer.admin().await;
    create_set(&mut direct, "default").await;
    create_flag(&mut direct, "default", "colour", &colour("red"))
        .await
        .unwrap();

    // The node under test reaches PostgreSQL only through the proxy, and checks versions every
    // second so it repairs what it missed once the database is back.
    let upstream = SocketAddr::new(db.server.get_host().parse().unwrap(), db.server.get_port());
    let proxy = Proxy::start(upstream).await;
    let url = format!(
        "postgres://{}@{}/{}",
        db.server.get_username(),
        proxy.addr,
        db.name
    );
    let node = TestNode::start(Config {
        flags: FlagSourceConfig::Postgres {
            url: url.into(),
            version_check: Duration::from_secs(1),
        },
        ..base_config()
    })
    .await;
    let mut flagd = v2::service_client::ServiceClient::new(node.channel().await);
    assert_eq!(
        resolve_string(&mut flagd, "colour").await.as_deref(),
        Some("red")
    );

    proxy.cut();
    // Evaluation goes on from memory.
    assert_eq!(
        resolve_string(&mut flagd, "colour").await.as_deref(),
        Some("red")
    );
    // Admin writes through the cut-off node fail clearly, and change nothing.
    let refused = update_flag(
        &mut node.admin().await,
        "default",
        "colour",
        &colour("green"),
        1,
        "ada",
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Meanwhile the flag changes through a node that still has the database.
    update_flag(
        &mut direct,
        "default",
        "colour",
        &colour("blue"),
        1,
        "grace",
    )
    .await
    .unwrap();
    assert_eq!(
        resolve_string(&mut flagd, "colour").await.as_deref(),
        Some("red")
    );

    proxy.restore();
    eventually(
        "the change made during the outage, after reconnecting",
        PATIENCE,
        || {
            let mut flagd = flagd.clone();
            async move { (resolve_string(&mut flagd, "colour").await? == "blue").then_some(()) }
        },
    )
    .await;
    let flags = list_flags(&mut direct, "default").await;
    assert_eq!(
        flags.flags[0].version, 2,
        "the refused write changed nothing"
    );

    drop((direct, flagd));
    node.stop().await;
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bunting_flags_push_makes_a_set_match_a_file() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    let dir = common::scratch_dir("flags-push");
    let file = dir.join("flags.json");
    let push = |extra: &[&str]| {
        let mut args = vec![
            "flags".to_owned(),
            "push".to_owned(),
            file.display().to_string(),
            "--set".to_owned(),
            "web".to_owned(),
            "--node".to_owned(),
            node.grpc.to_string(),
            "--actor".to_owned(),
            "ci".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bunting"))
            .args(&args)
            .env("BUNTING_TOKEN", common::TEST_TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let write =
        |flags: Value| std::fs::write(&file, json!({ "flags": flags }).to_string()).unwrap();

    // Each push is one write: the set and its six flags are version 1 together (issue 13: six
    // flags once made seven versions), and each later push adds exactly one version.
    let six: serde_json::Map<String, Value> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| ((*k).to_owned(), colour(k)))
        .chain([("banner".to_owned(), banner("off"))])
        .collect();
    write(Value::Object(six.clone()));
    // (extra args, file change, what the push says, and what it keeps)
    let steps: Vec<(&[&str], Option<Value>, &str, &str)> = vec![
        (
            &[],
            None,
            "6 created, 0 updated, 0 unchanged, 0 deleted; now at version 1",
            "",
        ),
        (
            &[],
            None,
            "0 created, 0 updated, 6 unchanged, 0 deleted; now at version 1",
            "",
        ),
        (
            &[],
            Some(json!({"banner": banner("on"), "a": colour("A"), "f": colour("f")})),
            "1 created, 2 updated, 0 unchanged, 0 deleted; now at version 2",
            "kept 4 flag(s) that are not in the file (use --prune to delete them): b, c, d, e",
        ),
        (
            &["--prune"],
            None,
            "0 created, 0 updated, 3 unchanged, 4 deleted; now at version 3",
            "",
        ),
    ];
    for (extra, file, says, keeps) in steps {
        if let Some(flags) = file {
            write(flags);
        }
        let (code, out) = push(extra);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains(says), "expected {says:?} in {out}");
        assert_eq!(out.contains("kept"), !keeps.is_empty(), "{out}");
        assert!(out.contains(keeps), "expected {keeps:?} in {out}");
    }
    let audited = common::connect_with(AdminClient::new, format!("http://{}", node.grpc))
        .await
        .unwrap()
        .list_audit(pb::ListAuditRequest {
            flag_set_id: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let per_version = |v: i64| audited.iter().filter(|e| e.flag_set_version == v).count();
    assert_eq!((per_version(1), per_version(2), per_version(3)), (7, 3, 4));

    // A file with an error is refused before anything is sent.
    write(
        json!({"banner": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "nope"}}),
    );
    let before = list_flags(
        &mut common::connect_with(AdminClient::new, format!("http://{}", node.grpc))
            .await
            .unwrap(),
        "web",
    )
    .await;
    let (code, out) = push(&[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("nothing was pushed"), "{out}");
    let after = list_flags(
        &mut common::connect_with(AdminClient::new, format!("http://{}", node.grpc))
            .await
            .unwrap(),
        "web",
    )
    .await;
    assert_eq!(before.flag_set_version, after.flag_set_version);
    node.stop().await;
}

/// Issue 9's write-side bounds: a flag write checks its own flag (budget, duplicate keys) and the
/// set's flag count; a refused write changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_writes_are_refused_past_the_budget_the_flag_limit_and_on_duplicate_keys() {
    let db = TestDb::create().await;
    let mut config = postgres_config(&db);
    config.definitions.max_flags = std::num::NonZeroUsize::new(3).unwrap();
    let node = TestNode::start(config).await;
    let mut admin = node.admin().await;
    create_set(&mut admin, "shop").await;

    // Three nested `some` over 600 constants: 216 million steps, refused when compiled, at the
    // rule's path.
    let big: Vec<Value> = (0..600).map(Value::from).collect();
    let cpu_bomb = json!({
        "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"if": [
            {"some": [big, {"some": [big, {"some": [big, {"==": [{"var": ""}, -1]}]}]}]},
            "on", "off"
        ]}
    });
    let refused = create_flag(&mut admin, "shop", "bomb", &cpu_bomb)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("budget"), "{refused:?}");
    assert!(
        violated_fields(&refused)
            .iter()
            .any(|f| f.starts_with("flags.bomb.targeting")),
        "{:?}",
        violated_fields(&refused)
    );

    // A repeated key is an error, not the last one silently kept.
    let duplicated =
        r#"{"state": "ENABLED", "variants": {"on": true, "on": false}, "defaultVariant": "on"}"#;
    let refused = admin
        .create_flag(pb::CreateFlagRequest {
            flag_set_id: "shop".into(),
            key: "twice".into(),
            definition: duplicated.into(),
            expected_flag_set_version: 0,
            actor: "ada".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("duplicate key"), "{refused:?}");

    for key in ["a", "b", "c"] {
        create_flag(&mut admin, "shop", key, &banner("off"))
            .await
            .unwrap();
    }
    let refused = create_flag(&mut admin, "shop", "d", &banner("off"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("max_flags"), "{refused:?}");
    let listed = list_flags(&mut admin, "shop").await;
    let keys: Vec<&str> = listed.flags.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"], "refused writes changed nothing");
    node.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Atomic whole-set writes (ApplyFlagChanges)
// ---------------------------------------------------------------------------------------------

fn change(
    kind: pb::FlagChangeKind,
    key: &str,
    definition: Option<&Value>,
    version: i64,
) -> pb::FlagChange {
    pb::FlagChange {
        kind: kind.into(),
        key: key.into(),
        definition: definition.map(Value::to_string).unwrap_or_default(),
        expected_version: version,
    }
}

async fn apply(
    admin: &mut AdminClient<Channel>,
    set: &str,
    changes: Vec<pb::FlagChange>,
    expected_flag_set_version: i64,
) -> Result<pb::ApplyFlagChangesResponse, Status> {
    admin
        .apply_flag_changes(pb::ApplyFlagChangesRequest {
            flag_set_id: set.into(),
            changes,
            expected_flag_set_version,
            actor: "ada".into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_version_and_a_refused_batch_changes_nothing() {
    use pb::FlagChangeKind::{Create, Delete, Update};
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    let mut admin = node.admin().await;

    // A batch may create its set: the set and its three flags are version 1 together.
    let created = admin
        .apply_flag_changes(pb::ApplyFlagChangesRequest {
            flag_set_id: "default".into(),
            changes: ["a", "b", "c"]
                .iter()
                .map(|k| change(Create, k, Some(&colour(k)), 0))
                .collect(),
            create_flag_set: true,
            metadata: Some(structure(json!({"team": "growth"}))),
            actor: "ada".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.flag_set_version, created.created_flag_set),
        (1, true)
    );
    let entries = audit(&mut admin, "default", "", 0, 0).await.entries;
    assert_eq!(
        entries.len(),
        4,
        "the set's creation and one entry per flag"
    );
    assert!(
        entries
            .iter()
            .all(|e| e.flag_set_version == 1 && e.actor.contains("ada"))
    );
    let before = list_flags(&mut admin, "default").await;

    let broken = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "nope"});
    // (what, changes, expected set version, code, words the message must hold)
    let refused: Vec<(&str, Vec<pb::FlagChange>, i64, Code, &str)> = vec![
        (
            "a stale update among good writes",
            vec![
                change(Create, "d", Some(&colour("d")), 0),
                change(Update, "b", Some(&colour("B")), 7),
            ],
            0,
            Code::FailedPrecondition,
            "flag \"b\"",
        ),
        (
            "a stale delete",
            vec![change(Delete, "c", None, 2)],
            0,
            Code::FailedPrecondition,
            "flag \"c\"",
        ),
        (
            "a create of an existing flag",
            vec![
                change(Update, "b", Some(&colour("B")), 1),
                change(Create, "a", Some(&colour("a")), 0),
            ],
            0,
            Code::AlreadyExists,
            "flag \"a\"",
        ),
        (
            "a delete of a missing flag",
            vec![change(Delete, "zz", None, 1)],
            0,
            Code::NotFound,
            "flag \"zz\"",
        ),
        (
            "a definition that does not compile",
            vec![
                change(Create, "d", Some(&colour("d")), 0),
                change(Update, "c", Some(&broken), 1),
            ],
            0,
            Code::InvalidArgument,
            "flags.c.defaultVariant",
        ),
        (
            "a stale set version",
            vec![change(Update, "b", Some(&colour("B")), 1)],
            9,
            Code::FailedPrecondition,
            "flag set \"default\"",
        ),
    ];
    for (what, changes, set_version, code, words) in refused {
        let status = apply(&mut admin, "default", changes, set_version)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(
            status.message().contains(words),
            "{what}: {}",
            status.message()
        );
        assert_eq!(
            list_flags(&mut admin, "default").await,
            before,
            "{what}: nothing changed"
        );
    }
    let invalid = apply(
        &mut admin,
        "default",
        vec![change(Update, "c", Some(&broken), 1)],
        0,
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&invalid), ["flags.c.defaultVariant"]);
    assert_eq!(
        audit(&mut admin, "default", "", 0, 0).await.entries.len(),
        4
    );

    // A good batch: one new version, one audit entry per flag at it.
    let applied = apply(
        &mut admin,
        "default",
        vec![
            change(Update, "a", Some(&colour("A")), 1),
            change(Delete, "b", None, 1),
            change(Create, "d", Some(&colour("d")), 0),
        ],
        1,
    )
    .await
    .unwrap();
    assert_eq!(applied.flag_set_version, 2);
    assert_eq!(applied.deleted_keys, ["b"]);
    let written: Vec<(&str, i64)> = applied
        .flags
        .iter()
        .map(|f| (f.key.as_str(), f.version))
        .collect();
    assert_eq!(written, [("a", 2), ("d", 1)]);
    let after = list_flags(&mut admin, "default").await;
    let keys: Vec<&str> = after.flags.iter().map(|f| f.key.as_str()).collect();
    assert_eq!((after.flag_set_version, keys), (2, vec!["a", "c", "d"]));
    let newest: Vec<(String, String, i64)> = audit(&mut admin, "default", "", 0, 3)
        .await
        .entries
        .into_iter()
        .map(|e| (e.flag_key, e.before_json, e.flag_set_version))
        .collect();
    assert_eq!(
        newest,
        [
            ("d".to_owned(), String::new(), 2),
            ("b".to_owned(), colour("b").to_string(), 2),
            ("a".to_owned(), colour("a").to_string(), 2),
        ]
    );
    // The node serves the whole batch at once.
    let mut v2 = v2::service_client::ServiceClient::new(node.channel().await);
    common::wait_until("the batch is served", PATIENCE, || {
        let mut v2 = v2.clone();
        async move { resolve_string(&mut v2, "d").await.as_deref() == Some("d") }
    })
    .await;
    assert_eq!(resolve_string(&mut v2, "a").await.as_deref(), Some("A"));
    drop((admin, v2));
    node.stop().await;
}

/// `bunting` against `node` with the test token: (exit code, stdout, stderr).
fn cli(node: &TestNode, args: &[&str]) -> (Option<i32>, String, String) {
    let grpc = node.grpc.to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bunting"))
        .args(args)
        .args(["--node", &grpc])
        .env("BUNTING_TOKEN", common::TEST_TOKEN)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The set's flags as key -> definition.
async fn flag_state(admin: &mut AdminClient<Channel>, set: &str) -> (i64, Value) {
    let list = list_flags(admin, set).await;
    let flags = list
        .flags
        .iter()
        .map(|f| (f.key.clone(), json_of(&f.definition)))
        .collect();
    (list.flag_set_version, Value::Object(flags))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_gets_deletes_rolls_back_and_pages_the_audit_log() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    let mut admin = node.admin().await;
    let dir = common::scratch_dir("flags-cli");
    let file = dir.join("flags.json");
    let push = |flags: Value, extra: &[&str]| {
        std::fs::write(&file, json!({ "flags": flags }).to_string()).unwrap();
        let path = file.display().to_string();
        let mut args = vec!["flags", "push", &path, "--set", "web", "--actor", "ci"];
        args.extend(extra);
        let (code, out, err) = cli(&node, &args);
        assert_eq!(code, Some(0), "{out}{err}");
    };

    // Versions 1 to 4, each state kept to compare the rollbacks with.
    let mut states = vec![(0, Value::Null)];
    push(json!({"banner": banner("off"), "a": colour("red")}), &[]);
    states.push(flag_state(&mut admin, "web").await);
    push(
        json!({"banner": banner("on"), "b": colour("blue")}),
        &["--prune"],
    );
    states.push(flag_state(&mut admin, "web").await);
    let (code, out, err) = cli(&node, &["flags", "delete", "banner", "--set", "web"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("deleted flag banner (version 2)"), "{out}");
    states.push(flag_state(&mut admin, "web").await);
    push(
        json!({"b": colour("green"), "c": colour("c")}),
        &["--prune"],
    );
    states.push(flag_state(&mut admin, "web").await);
    let versions: Vec<i64> = states.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, [0, 1, 2, 3, 4]);

    // list and get, for people and for scripts.
    let (code, out, _) = cli(&node, &["flags", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["web", "4", "2"])),
        "{out}"
    );
    let (_, out, _) = cli(&node, &["flags", "list", "--set", "web", "--json"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            listed["version"].as_i64(),
            listed["flags"].as_array().map(Vec::len)
        ),
        (Some(4), Some(2))
    );
    let (_, out, _) = cli(&node, &["flags", "get", "b", "--set", "web"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        colour("green")
    );
    let (code, _, err) = cli(&node, &["flags", "get", "banner", "--set", "web"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("has no flag \"banner\"; its flags: b, c"),
        "{err}"
    );

    // Rollback to each earlier version restores exactly that version's flags, as one new
    // version, audited under the principal and actor.
    for target in [1_i64, 3, 2, 4] {
        let before = flag_state(&mut admin, "web").await.0;
        let to = target.to_string();
        let (code, out, err) = cli(
            &node,
            &[
                "flags",
                "rollback",
                "--set",
                "web",
                "--to-version",
                &to,
                "--actor",
                "oncall",
            ],
        );
        assert_eq!(code, Some(0), "{out}{err}");
        let (version, flags) = flag_state(&mut admin, "web").await;
        assert_eq!(flags, states[target as usize].1, "rollback to {target}");
        assert_eq!(
            version,
            before + 1,
            "rollback to {target} is one version: {out}"
        );
        let entries = audit(&mut admin, "web", "", 0, 0).await.entries;
        assert!(
            entries
                .iter()
                .filter(|e| e.flag_set_version == version)
                .all(|e| e.actor.contains("oncall")),
            "rollback to {target} is audited"
        );
    }
    // A rollback to where the set already is changes nothing; a version it never had is refused.
    let current = flag_state(&mut admin, "web").await.0;
    let (code, out, _) = cli(
        &node,
        &["flags", "rollback", "--set", "web", "--to-version", "4"],
    );
    assert!(code == Some(0) && out.contains("nothing changed"), "{out}");
    let (code, _, err) = cli(
        &node,
        &["flags", "rollback", "--set", "web", "--to-version", "99"],
    );
    assert!(
        code == Some(2) && err.contains("has versions 1 to"),
        "{err}"
    );
    assert_eq!(flag_state(&mut admin, "web").await.0, current);

    // The audit log, paged two at a time by the cursor each page prints, covers every entry
    // exactly once, newest first; `--all` gives the same.
    let every: Vec<i64> = audit(&mut admin, "web", "", 0, 1000)
        .await
        .entries
        .iter()
        .map(|e| e.id)
        .collect();
    assert!(every.len() > 10, "{every:?}");
    let mut paged = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut args = vec![
            "audit".to_owned(),
            "--set".into(),
            "web".into(),
            "--limit".into(),
            "2".into(),
            "--json".into(),
        ];
        if let Some(b) = before {
            args.extend(["--before".to_owned(), b.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = cli(&node, &args);
        assert_eq!(code, Some(0), "{err}");
        let page: Value = serde_json::from_str(&out).unwrap();
        let ids = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap());
        paged.extend(ids);
        match page["nextBefore"].as_i64() {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, every);
    let (_, out, _) = cli(
        &node,
        &["audit", "--set", "web", "--limit", "3", "--all", "--json"],
    );
    let all: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all["entries"].as_array().unwrap().len(), every.len());
    // The table names the next page's command.
    let (_, out, _) = cli(
        &node,
        &["flags", "history", "b", "--set", "web", "--limit", "1"],
    );
    assert!(
        out.contains("more: bunting flags history b --set web --limit 1 --before "),
        "{out}"
    );
    assert!(out.contains("variants changed"), "{out}");
    drop(admin);
    node.stop().await;
}
