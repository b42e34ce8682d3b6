//! `bunting.v1.Experiments` on a real node (started in-process with `bunting_node::server::bind`)
//! against PostgreSQL at `BUNTING_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), a database per test: the life cycle, every refused
//! input (with its status code, and that nothing was written), concurrent starts, and the
//! running-experiment feed following starts and stops.
//!
//! The feed is asynchronous (commit, NOTIFY, re-read): tests wait for it with a generous deadline
//! and never assert how fast it is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bunting_experiments::{ExperimentId, MetricKind};
use bunting_node::config::{Config, FlagSourceConfig};
use bunting_node::experiment_feed::{self, ExperimentCatalog};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_stores::PostgresStore;
use bunting_stores::experiments::{ExperimentAction, ExperimentStore, PostgresExperimentStore};
use bunting_stores::file::BrokenFlags;
use common::Channel;
use serde_json::{Value, json};
use tokio::sync::watch;
use tonic::{Code, Status};
use tonic_types::StatusExt;

mod common;

use common::admin::create_set_with_flags;
use common::in_process::TestNode;

use common::postgres::TestDb;

/// Long enough for any machine to deliver a change; tests wait this long only when something is
/// already broken.
const PATIENCE: Duration = Duration::from_secs(20);

/// Nodes and feeds here repair missed notifications this rarely, so a change that arrives within a
/// test arrived by LISTEN/NOTIFY.
const NO_VERSION_CHECK: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Nodes and clients
// ---------------------------------------------------------------------------------------------

impl TestNode {
    async fn postgres(db: &TestDb) -> TestNode {
        TestNode::start(Config {
            flags: FlagSourceConfig::Postgres {
                url: db.url.clone().into(),
                version_check: NO_VERSION_CHECK,
            },
            ..base_config()
        })
        .await
    }

    async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    async fn experiments(&self) -> ExperimentsClient<Channel> {
        ExperimentsClient::new(self.channel().await)
    }
}

fn base_config() -> Config {
    Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        ..Config::default()
    }
}

/// The experiment store on the test database, beside the node (for the audit log and the feed).
async fn store(db: &TestDb) -> Arc<dyn ExperimentStore> {
    let flags = PostgresStore::connect(&db.url, Default::default())
        .await
        .unwrap();
    Arc::new(PostgresExperimentStore::new(&flags))
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// The flag set `shop` with `button` (blue, green, red), `solo` (one variant) and `banner`
/// (on, off).
async fn shop(admin: &mut AdminClient<Channel>) {
    let flags = [
        (
            "button",
            json!({"state": "ENABLED", "variants": {"red": "#f00", "green": "#0f0", "blue": "#00f"},
                   "defaultVariant": "blue"}),
        ),
        (
            "solo",
            json!({"state": "ENABLED", "variants": {"only": 1}, "defaultVariant": "only"}),
        ),
        (
            "banner",
            json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                   "defaultVariant": "off"}),
        ),
    ];
    create_set_with_flags(admin, "shop", &flags, "ada").await;
}

fn metric(name: &str, event: &str, kind: pb::MetricKind) -> pb::Metric {
    pb::Metric {
        name: name.into(),
        event: event.into(),
        kind: kind.into(),
    }
}

/// A valid request: `id` on shop/button, control blue, a conversion and a mean metric.
fn create_request(id: &str) -> pb::CreateExperimentRequest {
    pb::CreateExperimentRequest {
        id: id.into(),
        flag_set_id: "shop".into(),
        flag_key: "button".into(),
        control_variant: "blue".into(),
        metrics: vec![
            metric("purchased", "purchase", pb::MetricKind::Conversion),
            metric("revenue", "purchase", pb::MetricKind::Mean),
        ],
        traffic_split: Default::default(),
        analysis: None,
        actor: "ada".into(),
    }
}

async fn create(
    client: &mut ExperimentsClient<Channel>,
    request: pb::CreateExperimentRequest,
) -> Result<pb::Experiment, Status> {
    client
        .create_experiment(request)
        .await
        .map(|r| r.into_inner().experiment.unwrap())
}

async fn start(
    client: &mut ExperimentsClient<Channel>,
    id: &str,
) -> Result<pb::Experiment, Status> {
    client
        .start_experiment(pb::StartExperimentRequest {
            id: id.into(),
            actor: "ada".into(),
        })
        .await
        .map(|r| r.into_inner().experiment.unwrap())
}

async fn stop(client: &mut ExperimentsClient<Channel>, id: &str) -> Result<pb::Experiment, Status> {
    client
        .stop_experiment(pb::StopExperimentRequest {
            id: id.into(),
            actor: "bob".into(),
        })
        .await
        .map(|r| r.into_inner().experiment.unwrap())
}

async fn get(client: &mut ExperimentsClient<Channel>, id: &str) -> Result<pb::Experiment, Status> {
    client
        .get_experiment(pb::GetExperimentRequest { id: id.into() })
        .await
        .map(|r| r.into_inner().experiment.unwrap())
}

/// The first page at the default size, which these tests' few experiments fit in whole.
async fn list(
    client: &mut ExperimentsClient<Channel>,
    flag_set_id: Option<&str>,
    state: Option<pb::ExperimentState>,
) -> Vec<pb::Experiment> {
    let page = list_page(
        client,
        pb::ListExperimentsRequest {
            flag_set_id: flag_set_id.map(Into::into),
            state: state.map(Into::into),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.next_after_id, "", "one page holds them all");
    page.experiments
}

async fn list_page(
    client: &mut ExperimentsClient<Channel>,
    request: pb::ListExperimentsRequest,
) -> Result<pb::ListExperimentsResponse, Status> {
    client
        .list_experiments(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Follows `request`'s pages from its after_id to the last: each page's ids, and the
/// next_after_id it gave.
async fn pages(
    client: &mut ExperimentsClient<Channel>,
    mut request: pb::ListExperimentsRequest,
) -> Vec<(Vec<String>, String)> {
    let mut pages = Vec::new();
    loop {
        let page = list_page(client, request.clone()).await.unwrap();
        let ids = page.experiments.iter().map(|e| e.id.clone()).collect();
        pages.push((ids, page.next_after_id.clone()));
        if page.next_after_id.is_empty() || pages.len() > 20 {
            return pages;
        }
        request.after_id = page.next_after_id;
    }
}

fn page(ids: &[&str], next: &str) -> (Vec<String>, String) {
    (
        ids.iter().map(|&id| id.to_owned()).collect(),
        next.to_owned(),
    )
}

fn ids(experiments: &[pb::Experiment]) -> Vec<&str> {
    experiments.iter().map(|e| e.id.as_str()).collect()
}

fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

async fn audit_actions(store: &dyn ExperimentStore, id: &str) -> Vec<(ExperimentAction, i64)> {
    let mut entries = store
        .experiment_audit(&ExperimentId::new(id).unwrap())
        .await
        .unwrap();
    entries.reverse();
    entries.into_iter().map(|e| (e.action, e.version)).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_goes_from_draft_to_running_to_stopped() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    shop(&mut node.admin().await).await;
    let mut client = node.experiments().await;

    let created = create(&mut client, create_request("checkout"))
        .await
        .unwrap();
    assert_eq!(created.state(), pb::ExperimentState::Draft);
    assert_eq!(created.version, 1);
    // The arms are the flag's variants at creation, sorted.
    assert_eq!(created.arms, ["blue", "green", "red"]);
    assert_eq!(created.control_variant, "blue");
    assert_eq!(
        (created.flag_set_id.as_str(), created.flag_key.as_str()),
        ("shop", "button")
    );
    assert_eq!(created.metrics, create_request("checkout").metrics);
    assert!(created.started_at.is_none() && created.stopped_at.is_none());
    assert_eq!(get(&mut client, "checkout").await.unwrap(), created);
    let draft_results = client
        .get_experiment_results(pb::GetExperimentResultsRequest {
            id: "checkout".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        draft_results.code(),
        Code::FailedPrecondition,
        "a draft has no results"
    );

    let started = start(&mut client, "checkout").await.unwrap();
    assert_eq!(started.state(), pb::ExperimentState::Running);
    assert_eq!(started.version, 2);
    let started_at = started.started_at.unwrap();
    assert!(started.stopped_at.is_none());
    assert_eq!(
        ids(&list(&mut client, None, Some(pb::ExperimentState::Running)).await),
        ["checkout"]
    );

    let stopped = stop(&mut client, "checkout").await.unwrap();
    assert_eq!(stopped.state(), pb::ExperimentState::Stopped);
    assert_eq!(stopped.version, 3);
    assert_eq!(stopped.started_at, Some(started_at));
    let stopped_at = stopped.stopped_at.unwrap();
    assert!((stopped_at.seconds, stopped_at.nanos) >= (started_at.seconds, started_at.nanos));
    assert_eq!(get(&mut client, "checkout").await.unwrap(), stopped);

    // A second experiment in another state, then the filters. It declares a 90/10 ramp with the
    // third variant unused: stored and read back as given.
    let mut ramp = create_request("later");
    ramp.traffic_split = [("blue".into(), 90), ("green".into(), 10), ("red".into(), 0)].into();
    let later = create(&mut client, ramp.clone()).await.unwrap();
    assert_eq!(later.traffic_split, ramp.traffic_split);
    assert_eq!(
        get(&mut client, "later").await.unwrap().traffic_split,
        ramp.traffic_split
    );
    assert!(
        created.traffic_split.is_empty(),
        "no split given: an even split"
    );
    assert_eq!(
        ids(&list(&mut client, None, None).await),
        ["checkout", "later"]
    );
    assert_eq!(
        ids(&list(&mut client, Some("shop"), Some(pb::ExperimentState::Draft)).await),
        ["later"]
    );
    assert_eq!(
        ids(&list(&mut client, None, Some(pb::ExperimentState::Stopped)).await),
        ["checkout"]
    );
    assert!(
        list(&mut client, None, Some(pb::ExperimentState::Running))
            .await
            .is_empty()
    );
    assert!(list(&mut client, Some("elsewhere"), None).await.is_empty());

    // Every write is audited with its actor.
    let store = store(&db).await;
    let entries = store
        .experiment_audit(&ExperimentId::new("checkout").unwrap())
        .await
        .unwrap();
    let audited: Vec<(ExperimentAction, &str, i64)> = entries
        .iter()
        .map(|e| (e.action, e.actor.as_str(), e.version))
        .collect();
    assert_eq!(
        audited,
        [
            // The token that wrote (the tests' bootstrap token), then the caller's own actor.
            (ExperimentAction::Stop, "bootstrap (bob)", 3),
            (ExperimentAction::Start, "bootstrap (ada)", 2),
            (ExperimentAction::Create, "bootstrap (ada)", 1),
        ]
    );
    assert_eq!(
        entries[0].before.as_ref().unwrap()["state"]["state"],
        "running"
    );
    assert_eq!(entries[0].after["state"]["state"], "stopped");

    // Track for a user never exposed counts toward nothing (not an error); bad events are
    // refused naming the field; results of the stopped experiment exist (no users), and an
    // unknown experiment has none.
    let track = |key: &str, event: &str, value: f64| pb::TrackRequest {
        targeting_key: key.into(),
        event: event.into(),
        value,
        flag_set_id: None,
    };
    let tracked = client
        .track(track("u1", "purchase", 1.0))
        .await
        .unwrap()
        .into_inner();
    assert!(tracked.counted.is_empty(), "{tracked:?}");
    for (request, field) in [
        (track("", "purchase", 1.0), "targeting_key"),
        (track("u1", "", 1.0), "event"),
        (track("u1", "purchase", f64::NAN), "value"),
        (track("u1", "purchase", -1.0), "value"),
        (track("u1", "purchase", f64::INFINITY), "value"),
    ] {
        let refused = client.track(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().starts_with(field),
            "{field}: {}",
            refused.message()
        );
    }
    let results = client
        .get_experiment_results(pb::GetExperimentResultsRequest {
            id: "checkout".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(results.users.iter().map(|u| u.users).sum::<u64>(), 0);
    assert_eq!(
        results.metrics.len(),
        results.experiment.as_ref().unwrap().metrics.len()
    );
    let unknown = client
        .get_experiment_results(pb::GetExperimentResultsRequest {
            id: "no-such-experiment".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    drop(client);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_its_status_and_writes_nothing() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    let mut admin = node.admin().await;
    shop(&mut admin).await;
    let mut client = node.experiments().await;
    let store = store(&db).await;
    create(&mut client, create_request("existing"))
        .await
        .unwrap();
    let before = list(&mut client, None, None).await;

    type Edit = fn(&mut pb::CreateExperimentRequest);
    // (what, edit of a valid request, code, the field named in the details or a message part)
    let cases: Vec<(&str, Edit, Code, &str)> = vec![
        (
            "bad id",
            |r| r.id = "has space".into(),
            Code::InvalidArgument,
            "id",
        ),
        (
            "empty id",
            |r| r.id = String::new(),
            Code::InvalidArgument,
            "id",
        ),
        (
            "bad set id",
            |r| r.flag_set_id = "a/b".into(),
            Code::InvalidArgument,
            "flag_set_id",
        ),
        (
            "empty flag key",
            |r| r.flag_key = String::new(),
            Code::InvalidArgument,
            "flag_key",
        ),
        (
            "unknown set",
            |r| r.flag_set_id = "nowhere".into(),
            Code::NotFound,
            "\"nowhere\"",
        ),
        (
            "unknown flag",
            |r| r.flag_key = "ghost".into(),
            Code::NotFound,
            "\"ghost\"",
        ),
        (
            "control not a variant",
            |r| r.control_variant = "purple".into(),
            Code::InvalidArgument,
            "control_variant",
        ),
        (
            "empty control",
            |r| r.control_variant = String::new(),
            Code::InvalidArgument,
            "control_variant",
        ),
        (
            "one variant",
            |r| {
                r.flag_key = "solo".into();
                r.control_variant = "only".into();
            },
            Code::FailedPrecondition,
            "\"solo\"",
        ),
        (
            "a split naming a variant the flag lacks",
            |r| {
                r.traffic_split = [
                    ("blue".into(), 1),
                    ("green".into(), 1),
                    ("red".into(), 1),
                    ("teal".into(), 1),
                ]
                .into();
            },
            Code::InvalidArgument,
            "traffic_split[teal]",
        ),
        (
            "a split leaving a variant out",
            |r| r.traffic_split = [("blue".into(), 1), ("green".into(), 1)].into(),
            Code::InvalidArgument,
            "traffic_split[red]",
        ),
        (
            "a split starving the control",
            |r| {
                r.traffic_split =
                    [("blue".into(), 0), ("green".into(), 1), ("red".into(), 1)].into();
            },
            Code::InvalidArgument,
            "traffic_split[blue]",
        ),
        (
            "a split with only the control weighted",
            |r| {
                r.traffic_split =
                    [("blue".into(), 9), ("green".into(), 0), ("red".into(), 0)].into();
            },
            Code::InvalidArgument,
            "traffic_split",
        ),
        (
            "alpha above one half",
            |r| {
                r.analysis = Some(pb::AnalysisSettings {
                    alpha: Some(0.6),
                    ..Default::default()
                });
            },
            Code::InvalidArgument,
            "analysis.alpha",
        ),
        (
            "a zero sequential tuning",
            |r| {
                r.analysis = Some(pb::AnalysisSettings {
                    sequential_tuning: Some(0.0),
                    ..Default::default()
                });
            },
            Code::InvalidArgument,
            "analysis.sequential_tuning",
        ),
        (
            "a one-sided sequential test",
            |r| {
                r.analysis = Some(pb::AnalysisSettings {
                    sides: pb::TestSides::OneSided.into(),
                    sequential: Some(true),
                    ..Default::default()
                });
            },
            Code::InvalidArgument,
            "analysis.sequential",
        ),
        (
            "a prior on a frequentist analysis",
            |r| {
                r.analysis = Some(pb::AnalysisSettings {
                    prior: Some(pb::GaussianPrior {
                        mean: 0.0,
                        variance: 0.09,
                    }),
                    ..Default::default()
                });
            },
            Code::InvalidArgument,
            "analysis.prior",
        ),
        (
            "a prior without variance",
            |r| {
                r.analysis = Some(pb::AnalysisSettings {
                    engine: pb::AnalysisEngine::Bayesian.into(),
                    prior: Some(pb::GaussianPrior {
                        mean: 0.0,
                        variance: 0.0,
                    }),
                    ..Default::default()
                });
            },
            Code::InvalidArgument,
            "analysis.prior.variance",
        ),
        (
            "no metrics",
            |r| r.metrics.clear(),
            Code::InvalidArgument,
            "metrics",
        ),
        (
            "duplicate metric",
            |r| r.metrics[1].name = "purchased".into(),
            Code::InvalidArgument,
            "metrics[1].name",
        ),
        (
            "empty event",
            |r| r.metrics[0].event = "  ".into(),
            Code::InvalidArgument,
            "metrics[0].event",
        ),
        (
            "bad metric name",
            |r| r.metrics[1].name = String::new(),
            Code::InvalidArgument,
            "metrics[1].name",
        ),
        (
            "no metric kind",
            |r| r.metrics[0].kind = 0,
            Code::InvalidArgument,
            "metrics[0].kind",
        ),
        (
            "unknown metric kind",
            |r| r.metrics[0].kind = 9,
            Code::InvalidArgument,
            "metrics[0].kind",
        ),
        (
            "no actor",
            |r| r.actor = " ".into(),
            Code::InvalidArgument,
            "actor",
        ),
        (
            "existing id",
            |r| r.id = "existing".into(),
            Code::AlreadyExists,
            "existing",
        ),
    ];
    for (what, edit, code, named) in cases {
        let mut request = create_request("fresh");
        edit(&mut request);
        let refused = create(&mut client, request).await.unwrap_err();
        assert_eq!(refused.code(), code, "{what}: {refused:?}");
        if code == Code::InvalidArgument {
            assert_eq!(violated_fields(&refused), [named], "{what}: {refused:?}");
            assert!(refused.message().starts_with(named), "{what}: {refused:?}");
        } else {
            assert!(refused.message().contains(named), "{what}: {refused:?}");
        }
    }
    assert_eq!(
        list(&mut client, None, None).await,
        before,
        "a refused create wrote something"
    );
    assert!(audit_actions(store.as_ref(), "fresh").await.is_empty());

    // Transitions out of order, unknown and malformed ids.
    let refused = stop(&mut client, "existing").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("existing") && refused.message().contains("draft"));
    for refused in [
        start(&mut client, "unknown").await.unwrap_err(),
        stop(&mut client, "unknown").await.unwrap_err(),
        get(&mut client, "unknown").await.unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        assert!(refused.message().contains("unknown"), "{refused:?}");
    }
    for refused in [
        start(&mut client, "no/slash").await.unwrap_err(),
        get(&mut client, "").await.unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(violated_fields(&refused), ["id"]);
    }
    let refused = client
        .start_experiment(pb::StartExperimentRequest {
            id: "existing".into(),
            actor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["actor"]);
    assert_eq!(list(&mut client, None, None).await, before);

    let running = start(&mut client, "existing").await.unwrap();
    let refused = start(&mut client, "existing").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("running"), "{refused:?}");
    assert_eq!(get(&mut client, "existing").await.unwrap(), running);

    // One running experiment per flag.
    create(&mut client, create_request("rival")).await.unwrap();
    let refused = start(&mut client, "rival").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("existing"), "{refused:?}");
    assert_eq!(
        get(&mut client, "rival").await.unwrap().state(),
        pb::ExperimentState::Draft
    );

    let stopped = stop(&mut client, "existing").await.unwrap();
    for refused in [
        start(&mut client, "existing").await.unwrap_err(),
        stop(&mut client, "existing").await.unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("stopped"), "{refused:?}");
    }
    assert_eq!(get(&mut client, "existing").await.unwrap(), stopped);
    assert_eq!(
        audit_actions(store.as_ref(), "existing").await,
        [
            (ExperimentAction::Create, 1),
            (ExperimentAction::Start, 2),
            (ExperimentAction::Stop, 3)
        ]
    );

    // A flag whose variants changed since the experiment was defined cannot start it: its arms
    // would not be the flag's variants.
    let flag = admin
        .list_flags(pb::ListFlagsRequest {
            flag_set_id: "shop".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .flags
        .into_iter()
        .find(|f| f.key == "button")
        .unwrap();
    let mut definition: Value = serde_json::from_str(&flag.definition).unwrap();
    definition["variants"]["yellow"] = json!("#ff0");
    admin
        .update_flag(pb::UpdateFlagRequest {
            flag_set_id: "shop".into(),
            key: "button".into(),
            definition: definition.to_string(),
            expected_version: flag.version,
            actor: "ada".into(),
        })
        .await
        .unwrap();
    let refused = start(&mut client, "rival").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("yellow"), "{refused:?}");
    assert_eq!(get(&mut client, "rival").await.unwrap().version, 1);
    assert_eq!(
        audit_actions(store.as_ref(), "rival").await,
        [(ExperimentAction::Create, 1)]
    );

    drop((client, admin));
    node.stop().await;
}

/// Analysis settings are stored with the experiment, read back whole, and name themselves in the
/// results; an experiment stored before settings existed (NULL) reads with the defaults, which
/// are what it was analysed with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_settings_are_stored_and_judge_the_results() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    shop(&mut node.admin().await).await;
    let mut client = node.experiments().await;

    let bayesian = pb::AnalysisSettings {
        alpha: Some(0.1),
        engine: pb::AnalysisEngine::Bayesian.into(),
        prior: Some(pb::GaussianPrior {
            mean: 0.0,
            variance: 0.09,
        }),
        ..Default::default()
    };
    let created = create(
        &mut client,
        pb::CreateExperimentRequest {
            analysis: Some(bayesian),
            ..create_request("judged")
        },
    )
    .await
    .unwrap();
    let in_force = pb::AnalysisSettings {
        sides: pb::TestSides::TwoSided.into(),
        sequential: Some(false),
        ..bayesian
    };
    assert_eq!(created.analysis.as_ref(), Some(&in_force));
    assert_eq!(get(&mut client, "judged").await.unwrap(), created);

    start(&mut client, "judged").await.unwrap();
    let results = client
        .get_experiment_results(pb::GetExperimentResultsRequest {
            id: "judged".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(results.analysis.as_ref(), Some(&in_force));
    assert_eq!(results.alpha, 0.1);
    assert!(!results.sequential);
    assert_eq!(
        results.decision_rule,
        "Bayesian, Gaussian prior on the relative lift (mean 0, variance 0.09), chance to beat \
         control at least 0.9 or at most 0.1"
    );

    // Defaults, written out in full.
    let plain = create(&mut client, create_request("plain")).await.unwrap();
    let defaults = pb::AnalysisSettings {
        alpha: Some(0.05),
        sides: pb::TestSides::TwoSided.into(),
        sequential: Some(true),
        sequential_tuning: Some(5000.0),
        engine: pb::AnalysisEngine::Frequentist.into(),
        prior: None,
    };
    assert_eq!(plain.analysis.as_ref(), Some(&defaults));

    // A row from before the column: NULL reads as the defaults.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
    sqlx::query("UPDATE experiments SET analysis = NULL WHERE id = 'judged'")
        .execute(&mut conn)
        .await
        .unwrap();
    let store = store(&db).await;
    let old = store
        .get_experiment(&ExperimentId::new("judged").unwrap())
        .await
        .unwrap();
    assert_eq!(old.experiment.analysis, Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_starts_exactly_one_wins() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    shop(&mut node.admin().await).await;
    let mut client = node.experiments().await;
    create(&mut client, create_request("race")).await.unwrap();
    let mut other = create_request("other");
    other.flag_key = "banner".into();
    other.control_variant = "off".into();
    create(&mut client, other).await.unwrap();
    let mut rival = create_request("rival");
    rival.flag_key = "banner".into();
    rival.control_variant = "off".into();
    create(&mut client, rival).await.unwrap();

    // The same experiment started from eight connections at once, and two experiments on one
    // flag started at once.
    let mut attempts = Vec::new();
    for id in std::iter::repeat_n("race", 8).chain(["other", "rival"]) {
        let mut client = node.experiments().await;
        attempts.push(tokio::spawn(
            async move { (id, start(&mut client, id).await) },
        ));
    }
    let mut won = Vec::new();
    for attempt in attempts {
        let (id, outcome) = attempt.await.unwrap();
        match outcome {
            Ok(e) => won.push((id, e.version)),
            Err(refused) => assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}"),
        }
    }
    won.sort_unstable();
    assert_eq!(
        won.iter().filter(|(id, _)| *id == "race").count(),
        1,
        "{won:?}"
    );
    assert_eq!(
        won.iter()
            .filter(|(id, _)| *id == "other" || *id == "rival")
            .count(),
        1,
        "{won:?}"
    );
    assert!(won.iter().all(|(_, version)| *version == 2), "{won:?}");

    let store = store(&db).await;
    assert_eq!(
        audit_actions(store.as_ref(), "race").await,
        [(ExperimentAction::Create, 1), (ExperimentAction::Start, 2)]
    );
    let running = list(&mut client, None, Some(pb::ExperimentState::Running)).await;
    assert_eq!(running.len(), 2, "{:?}", ids(&running));

    drop(client);
    node.stop().await;
}

/// `request` for `id` on flag `flag_key` of set `set`, a flag with the variants on and off.
fn on_off_request(id: &str, set: &str, flag_key: &str) -> pb::CreateExperimentRequest {
    pb::CreateExperimentRequest {
        flag_set_id: set.into(),
        flag_key: flag_key.into(),
        control_variant: "off".into(),
        ..create_request(id)
    }
}

/// The flag set `lab` with `toggle` (on, off).
async fn lab(admin: &mut AdminClient<Channel>) {
    let toggle = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                        "defaultVariant": "off"});
    create_set_with_flags(admin, "lab", &[("toggle", toggle)], "ada").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_are_listed_a_page_at_a_time() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    let mut admin = node.admin().await;
    shop(&mut admin).await;
    let mut client = node.experiments().await;
    // Created out of order: pages follow the ids, not the creation.
    for id in ["e4", "e1", "e5", "e3", "e2"] {
        let request = if id == "e2" || id == "e4" {
            on_off_request(id, "shop", "banner")
        } else {
            create_request(id)
        };
        create(&mut client, request).await.unwrap();
    }
    let request = |after_id: &str, limit: i32| pb::ListExperimentsRequest {
        after_id: after_id.into(),
        limit,
        ..Default::default()
    };

    // Two at a time: 2, 2, 1, and the last page says it is the last.
    assert_eq!(
        pages(&mut client, request("", 2)).await,
        [
            page(&["e1", "e2"], "e2"),
            page(&["e3", "e4"], "e4"),
            page(&["e5"], "")
        ]
    );
    // 0 is the default page (100), which holds all five.
    assert_eq!(
        pages(&mut client, request("", 0)).await,
        [page(&["e1", "e2", "e3", "e4", "e5"], "")]
    );
    // A page that is exactly full is the last when nothing follows it, and not when something does.
    assert_eq!(
        pages(&mut client, request("", 5)).await,
        [page(&["e1", "e2", "e3", "e4", "e5"], "")]
    );
    assert_eq!(
        pages(&mut client, request("", 4)).await,
        [page(&["e1", "e2", "e3", "e4"], "e4"), page(&["e5"], "")]
    );
    // The cursor need not be an experiment: it is a position among the ids.
    assert_eq!(
        pages(&mut client, request("e2a", 2)).await,
        [page(&["e3", "e4"], "e4"), page(&["e5"], "")]
    );
    // After the last, or beyond every id: an empty last page, not an error.
    for after in ["e5", "zzz"] {
        assert_eq!(
            pages(&mut client, request(after, 2)).await,
            [page(&[], "")],
            "after {after}"
        );
    }

    // Filters and pages together: the filters narrow first, the pages cut what matches.
    lab(&mut admin).await;
    for id in ["e2-lab", "e4-lab"] {
        create(&mut client, on_off_request(id, "lab", "toggle"))
            .await
            .unwrap();
    }
    start(&mut client, "e2").await.unwrap();
    start(&mut client, "e3").await.unwrap();
    start(&mut client, "e4-lab").await.unwrap();
    let filtered = |set: Option<&str>, state: Option<pb::ExperimentState>, limit: i32| {
        pb::ListExperimentsRequest {
            flag_set_id: set.map(Into::into),
            state: state.map(Into::into),
            after_id: String::new(),
            limit,
        }
    };
    let running = Some(pb::ExperimentState::Running);
    let draft = Some(pb::ExperimentState::Draft);
    for (request, expected) in [
        (
            filtered(Some("shop"), None, 2),
            vec![
                page(&["e1", "e2"], "e2"),
                page(&["e3", "e4"], "e4"),
                page(&["e5"], ""),
            ],
        ),
        (
            filtered(Some("lab"), None, 1),
            vec![page(&["e2-lab"], "e2-lab"), page(&["e4-lab"], "")],
        ),
        (
            filtered(None, running, 2),
            vec![page(&["e2", "e3"], "e3"), page(&["e4-lab"], "")],
        ),
        (
            filtered(Some("shop"), draft, 1),
            vec![page(&["e1"], "e1"), page(&["e4"], "e4"), page(&["e5"], "")],
        ),
        (
            pb::ListExperimentsRequest {
                after_id: "e1".into(),
                ..filtered(None, draft, 2)
            },
            vec![page(&["e2-lab", "e4"], "e4"), page(&["e5"], "")],
        ),
        (filtered(Some("elsewhere"), None, 1), vec![page(&[], "")]),
    ] {
        let followed = pages(&mut client, request.clone()).await;
        assert_eq!(followed, expected, "{request:?}");
        // The pages add up to the filter's whole answer, in order.
        let whole = list_page(
            &mut client,
            pb::ListExperimentsRequest {
                limit: 1000,
                ..request.clone()
            },
        )
        .await
        .unwrap();
        let joined: Vec<String> = followed.into_iter().flat_map(|(ids, _)| ids).collect();
        assert_eq!(joined, ids(&whole.experiments), "{request:?}");
    }

    drop(client);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pages_are_refused_naming_the_field() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    shop(&mut node.admin().await).await;
    let mut client = node.experiments().await;
    create(&mut client, create_request("checkout"))
        .await
        .unwrap();
    for (limit, after_id, field) in [
        (-1, "", "limit"),
        (1001, "", "limit"),
        (i32::MIN, "", "limit"),
        (0, "not an id", "after_id"),
    ] {
        let refused = list_page(
            &mut client,
            pb::ListExperimentsRequest {
                after_id: after_id.into(),
                limit,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(violated_fields(&refused), [field], "{refused:?}");
        assert!(refused.message().starts_with(field), "{refused:?}");
    }
    // The bounds themselves are taken.
    for limit in [1, 1000] {
        let page = list_page(
            &mut client,
            pb::ListExperimentsRequest {
                limit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (ids(&page.experiments), page.next_after_id.as_str()),
            (vec!["checkout"], "")
        );
    }
    drop(client);
    node.stop().await;
}

/// More running experiments than a default page holds: the API pages them, and the feed, which
/// must count every one of them, still loads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_loads_every_running_experiment_beyond_a_page() {
    use sqlx::{Connection, Executor};

    const RUNNING: usize = 150;
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    shop(&mut node.admin().await).await;
    // Written directly: 150 flags and 450 RPCs would only slow the test down. Each on its own
    // flag key, as one running experiment per flag requires (the store does not check that the
    // flags exist; neither does the feed).
    let mut db_conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    db_conn
        .execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO experiments (id, flag_set_id, flag_key, arms, control, metrics, state,
                                      started_at, version)
             SELECT format('run-%s', lpad(n::text, 3, '0')), 'shop', format('flag-%s', n),
                    ARRAY['off', 'on'], 'off',
                    '[{{\"name\": \"m\", \"event\": \"e\", \"kind\": \"conversion\"}}]',
                    'running', now(), 2
             FROM generate_series(1, {RUNNING}) AS n"
        )))
        .await
        .unwrap();
    db_conn.close().await.unwrap();
    let expected: Vec<String> = (1..=RUNNING).map(|n| format!("run-{n:03}")).collect();

    let catalog = experiment_feed::load(store(&db).await.as_ref())
        .await
        .unwrap();
    assert_eq!(catalog.len(), RUNNING);
    assert!(expected.iter().all(|id| {
        catalog
            .get(&ExperimentId::new(id.as_str()).unwrap())
            .is_some()
    }));

    let mut client = node.experiments().await;
    let running = |after_id: &str, limit: i32| pb::ListExperimentsRequest {
        state: Some(pb::ExperimentState::Running.into()),
        after_id: after_id.into(),
        limit,
        ..Default::default()
    };
    let first = list_page(&mut client, running("", 0)).await.unwrap();
    assert_eq!(ids(&first.experiments), expected[..100]);
    assert_eq!(first.next_after_id, "run-100");
    let rest = pages(&mut client, running(&first.next_after_id, 0)).await;
    assert_eq!(rest, [(expected[100..].to_vec(), String::new())]);
    drop(client);
    node.stop().await;
}

fn ids_on<'c>(catalog: &'c ExperimentCatalog, flag_key: &str) -> Vec<&'c str> {
    catalog
        .on_flag("shop", flag_key)
        .iter()
        .map(|e| e.id.as_str())
        .collect()
}

/// Waits until the catalog satisfies `check`.
async fn catalog_until(
    catalog: &mut watch::Receiver<Arc<ExperimentCatalog>>,
    what: &str,
    check: impl FnMut(&Arc<ExperimentCatalog>) -> bool,
) -> Arc<ExperimentCatalog> {
    tokio::time::timeout(PATIENCE, catalog.wait_for(check))
        .await
        .unwrap_or_else(|_| panic!("{what}: not seen within {PATIENCE:?}"))
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_follows_starts_and_stops() {
    let db = TestDb::create().await;
    let node = TestNode::postgres(&db).await;
    shop(&mut node.admin().await).await;
    let mut client = node.experiments().await;
    create(&mut client, create_request("checkout"))
        .await
        .unwrap();
    // Already running when the feed starts: in its first catalog.
    let mut early = create_request("early");
    early.flag_key = "banner".into();
    early.control_variant = "off".into();
    create(&mut client, early).await.unwrap();
    start(&mut client, "early").await.unwrap();

    let (closing_tx, closing) = watch::channel(false);
    let feed = experiment_feed::follow(
        store(&db).await,
        None,
        experiment_feed::Start::Store,
        NO_VERSION_CHECK,
        closing,
    )
    .await
    .unwrap();
    let mut catalog = feed.catalog.clone();
    let first = catalog.borrow().clone();
    assert_eq!(first.len(), 1);
    assert_eq!(ids_on(&first, "banner"), ["early"]);
    assert!(
        ids_on(&first, "button").is_empty(),
        "a draft is not running"
    );

    start(&mut client, "checkout").await.unwrap();
    let seen = catalog_until(&mut catalog, "the start", |c| {
        !c.on_flag("shop", "button").is_empty()
    })
    .await;
    let running = &seen.on_flag("shop", "button")[0];
    assert_eq!(running.id.as_str(), "checkout");
    assert!(running.state.is_running());
    assert_eq!(
        running.arms.iter().collect::<Vec<_>>(),
        ["blue", "green", "red"]
    );
    assert_eq!(running.control, "blue");
    let kinds: Vec<(&str, &str, MetricKind)> = running
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m.event.as_str(), m.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("purchased", "purchase", MetricKind::Conversion),
            ("revenue", "purchase", MetricKind::Mean)
        ]
    );
    assert!(seen.get(&ExperimentId::new("checkout").unwrap()).is_some());
    assert_eq!(seen.len(), 2);

    stop(&mut client, "checkout").await.unwrap();
    let seen = catalog_until(&mut catalog, "the stop", |c| {
        c.on_flag("shop", "button").is_empty()
    })
    .await;
    assert!(seen.get(&ExperimentId::new("checkout").unwrap()).is_none());
    assert_eq!(
        ids_on(&seen, "banner"),
        ["early"],
        "the other one still runs"
    );
    assert_eq!(seen.len(), 1);

    closing_tx.send(true).unwrap();
    tokio::time::timeout(PATIENCE, feed.task)
        .await
        .expect("the feed did not end when closing")
        .unwrap();
    drop(client);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_node_refuses_experiment_calls_naming_its_file() {
    let dir =
        std::env::temp_dir().join(format!("bunting-experiments-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flags.json");
    std::fs::write(
        &path,
        json!({"flags": {"b": {"state": "ENABLED", "variants": {"x": 1, "y": 2},
                               "defaultVariant": "x"}}})
        .to_string(),
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
    let mut client = node.experiments().await;
    let mut request = create_request("e");
    request.flag_set_id = "default".into();
    for refused in [
        create(&mut client, request).await.unwrap_err(),
        client
            .list_experiments(pb::ListExperimentsRequest::default())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains(&path.display().to_string()),
            "{refused:?}"
        );
    }
    drop(client);
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
