//! Authentication and authorization on a real PostgreSQL-backed `bunting serve` (the binary, its
//! log captured): every RPC of the scope table × every kind of caller, the state read back with an
//! admin token to show refused writes changed nothing, bad headers, the audit log naming the
//! token, revocation, the bootstrap token's life, and no secret in any answer or log line.
//!
//! Needs PostgreSQL at `BUNTING_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bunting_node::auth::ApiToken;
use bunting_node::auth::client::{AuthChannel, Bearer};
use bunting_node::auth::scope::{METHODS, Scope};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::cluster_admin_client::ClusterAdminClient;
use bunting_proto::bunting::v1::evaluation_client::EvaluationClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_proto::bunting::v1::rollouts_client::RolloutsClient;
use bunting_proto::bunting::v1::tokens_client::TokensClient;
use bunting_proto::bunting::v1::topology_client::TopologyClient;
use bunting_proto::flagd::evaluation::{v1, v2};
use bunting_proto::flagd::sync::v1 as sync;
use bunting_proto::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use serde_json::json;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

mod common;

use common::postgres::TestDb;
use common::{Guarded, TEST_TOKEN, free_ports, read_log, toml_string, workspace};

/// A PostgreSQL-backed node process with its log.
struct PgNode {
    _process: Guarded,
    grpc: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl PgNode {
    fn start(dir: &Path, db: &TestDb, label: &str, auth: &str) -> PgNode {
        let (grpc_port, metrics_port) = free_ports();
        let config = dir.join(format!("{label}.toml"));
        std::fs::write(
            &config,
            format!(
                "grpc_addr = \"127.0.0.1:{grpc_port}\"\n\
                 metrics_addr = \"127.0.0.1:{metrics_port}\"\nhttp_addr = \"127.0.0.1:0\"\n\
                 [flags]\n\
                 source = \"postgres\"\n\
                 url = {}\n\
                 [auth]\n\
                 {auth}\n",
                toml_string(Path::new(&db.url)),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{label}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_bunting"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(workspace())
            .env("NO_COLOR", "1")
            // Everything the node says, so the secret check sees as much as there is.
            .env("RUST_LOG", "debug")
            .env("BUNTING_BOOTSTRAP_TOKEN", TEST_TOKEN)
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let mut process = Guarded::spawn(command, "bunting serve (postgres)");
        let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, grpc_port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&grpc, Duration::from_millis(200)).is_err() {
            assert!(
                process.exited().is_none(),
                "node exited:\n{}",
                read_log(&log)
            );
            assert!(
                Instant::now() < deadline,
                "node did not start:\n{}",
                read_log(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PgNode {
            _process: process,
            grpc,
            metrics: SocketAddr::from((Ipv4Addr::LOCALHOST, metrics_port)),
            log,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

fn bearer(token: &str) -> Bearer {
    Bearer::new(Some(token)).unwrap()
}

fn selector<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("flagd-selector", "shop".parse().unwrap());
    request
}

/// Calls `method` (a gRPC path of the scope table) on flag set `shop` where the method has a set,
/// with bodies that would change state if they were let through. Panics on a method it does not
/// know, so a method added to the table without a line here fails the test.
async fn call(method: &str, ch: AuthChannel) -> Result<(), Status> {
    fn ok<T>(_: T) {}
    match method {
        m if m.starts_with("/flagd.evaluation.v1.Service/") => {
            let mut c = v1::service_client::ServiceClient::new(ch);
            let key = "banner".to_owned();
            match m.rsplit('/').next().unwrap() {
                "ResolveAll" => c
                    .resolve_all(selector(v1::ResolveAllRequest::default()))
                    .await
                    .map(ok),
                "ResolveBoolean" => c
                    .resolve_boolean(selector(v1::ResolveBooleanRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "ResolveString" => c
                    .resolve_string(selector(v1::ResolveStringRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "ResolveFloat" => c
                    .resolve_float(selector(v1::ResolveFloatRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "ResolveInt" => c
                    .resolve_int(selector(v1::ResolveIntRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "ResolveObject" => c
                    .resolve_object(selector(v1::ResolveObjectRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "EventStream" => c
                    .event_stream(selector(v1::EventStreamRequest::default()))
                    .await
                    .map(ok),
                other => panic!("no call for {other}"),
            }
        }
        m if m.starts_with("/flagd.evaluation.v2.Service/") => {
            let mut c = v2::service_client::ServiceClient::new(ch);
            let key = "banner".to_owned();
            match m.rsplit('/').next().unwrap() {
                "ResolveAll" => c
                    .resolve_all(selector(v2::ResolveAllRequest::default()))
                    .await
                    .map(ok),
                "ResolveBoolean" => c
                    .resolve_boolean(selector(v2::ResolveBooleanRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "ResolveString" => c
                    .resolve_string(selector(v2::ResolveStringRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "ResolveFloat" => c
                    .resolve_float(selector(v2::ResolveFloatRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "ResolveInt" => c
                    .resolve_int(selector(v2::ResolveIntRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "ResolveObject" => c
                    .resolve_object(selector(v2::ResolveObjectRequest {
                        flag_key: key,
                        context: None,
                    }))
                    .await
                    .map(ok),
                "EventStream" => c
                    .event_stream(selector(v2::EventStreamRequest::default()))
                    .await
                    .map(ok),
                other => panic!("no call for {other}"),
            }
        }
        "/flagd.sync.v1.FlagSyncService/SyncFlags" => FlagSyncServiceClient::new(ch)
            .sync_flags(sync::SyncFlagsRequest {
                provider_id: "t".into(),
                selector: "shop".into(),
            })
            .await
            .map(ok),
        "/flagd.sync.v1.FlagSyncService/FetchAllFlags" => FlagSyncServiceClient::new(ch)
            .fetch_all_flags(sync::FetchAllFlagsRequest {
                provider_id: "t".into(),
                selector: "shop".into(),
            })
            .await
            .map(ok),
        "/flagd.sync.v1.FlagSyncService/GetMetadata" => FlagSyncServiceClient::new(ch)
            .get_metadata(selector(sync::GetMetadataRequest::default()))
            .await
            .map(ok),
        "/bunting.v1.Evaluation/EvaluateBulk" => EvaluationClient::new(ch)
            .evaluate_bulk(pb::EvaluateBulkRequest {
                flag_set_id: "shop".into(),
                ..Default::default()
            })
            .await
            .map(ok),
        "/bunting.v1.Topology/GetTopology" => TopologyClient::new(ch)
            .get_topology(pb::GetTopologyRequest {})
            .await
            .map(ok),
        m if m.starts_with("/bunting.v1.Admin/") => {
            let mut c = AdminClient::new(ch);
            let actor = "mallory".to_owned();
            match m.rsplit('/').next().unwrap() {
                "CreateFlagSet" => c
                    .create_flag_set(pb::CreateFlagSetRequest {
                        id: "shop".into(),
                        actor,
                        ..Default::default()
                    })
                    .await
                    .map(ok),
                "UpdateFlagSet" => c
                    .update_flag_set(pb::UpdateFlagSetRequest {
                        id: "shop".into(),
                        expected_version: 2,
                        actor,
                        ..Default::default()
                    })
                    .await
                    .map(ok),
                "DeleteFlagSet" => c
                    .delete_flag_set(pb::DeleteFlagSetRequest {
                        id: "shop".into(),
                        expected_version: 2,
                        actor,
                    })
                    .await
                    .map(ok),
                "ListFlagSets" => c.list_flag_sets(pb::ListFlagSetsRequest {}).await.map(ok),
                "GetFlagSet" => c
                    .get_flag_set(pb::GetFlagSetRequest { id: "shop".into() })
                    .await
                    .map(ok),
                "CreateFlag" => c
                    .create_flag(pb::CreateFlagRequest {
                        flag_set_id: "shop".into(),
                        key: "evil".into(),
                        definition: flag("x").to_string(),
                        expected_flag_set_version: 0,
                        actor,
                    })
                    .await
                    .map(ok),
                "UpdateFlag" => c
                    .update_flag(pb::UpdateFlagRequest {
                        flag_set_id: "shop".into(),
                        key: "banner".into(),
                        definition: flag("y").to_string(),
                        expected_version: 1,
                        actor,
                    })
                    .await
                    .map(ok),
                "DeleteFlag" => c
                    .delete_flag(pb::DeleteFlagRequest {
                        flag_set_id: "shop".into(),
                        key: "banner".into(),
                        expected_version: 1,
                        actor,
                    })
                    .await
                    .map(ok),
                "ListFlags" => c
                    .list_flags(pb::ListFlagsRequest {
                        flag_set_id: "shop".into(),
                    })
                    .await
                    .map(ok),
                "ListAudit" => c
                    .list_audit(pb::ListAuditRequest {
                        flag_set_id: "shop".into(),
                        ..Default::default()
                    })
                    .await
                    .map(ok),
                // Stale on purpose: let through, the answer is FAILED_PRECONDITION and nothing
                // changes.
                "ApplyFlagChanges" => c
                    .apply_flag_changes(pb::ApplyFlagChangesRequest {
                        flag_set_id: "shop".into(),
                        changes: vec![pb::FlagChange {
                            kind: pb::FlagChangeKind::Update.into(),
                            key: "banner".into(),
                            definition: flag("z").to_string(),
                            expected_version: 99,
                        }],
                        actor,
                        ..Default::default()
                    })
                    .await
                    .map(ok),
                other => panic!("no call for {other}"),
            }
        }
        m if m.starts_with("/bunting.v1.Experiments/") => {
            let mut c = ExperimentsClient::new(ch);
            let actor = "mallory".to_owned();
            let id = "exp".to_owned();
            match m.rsplit('/').next().unwrap() {
                "CreateExperiment" => c
                    .create_experiment(pb::CreateExperimentRequest {
                        id,
                        flag_set_id: "shop".into(),
                        flag_key: "banner".into(),
                        control_variant: "a".into(),
                        metrics: vec![pb::Metric {
                            name: "buy".into(),
                            event: "buy".into(),
                            kind: pb::MetricKind::Conversion.into(),
                        }],
                        actor,
                        ..Default::default()
                    })
                    .await
                    .map(ok),
                "StartExperiment" => c
                    .start_experiment(pb::StartExperimentRequest { id, actor })
                    .await
                    .map(ok),
                "StopExperiment" => c
                    .stop_experiment(pb::StopExperimentRequest { id, actor })
                    .await
                    .map(ok),
                "GetExperiment" => c
                    .get_experiment(pb::GetExperimentRequest { id })
                    .await
                    .map(ok),
                "ListExperiments" => c
                    .list_experiments(pb::ListExperimentsRequest {
                        flag_set_id: Some("shop".into()),
                        ..Default::default()
                    })
                    .await
                    .map(ok),
                "GetExperimentResults" => c
                    .get_experiment_results(pb::GetExperimentResultsRequest { id })
                    .await
                    .map(ok),
                "Track" => c
                    .track(pb::TrackRequest {
                        targeting_key: "u1".into(),
                        event: "buy".into(),
                        value: 1e9,
                        flag_set_id: Some("shop".into()),
                    })
                    .await
                    .map(ok),
                other => panic!("no call for {other}"),
            }
        }
        m if m.starts_with("/bunting.v1.Rollouts/") => {
            let mut c = RolloutsClient::new(ch);
            let actor = "mallory".to_owned();
            let id = "ro".to_owned();
            let action = || pb::RolloutActionRequest {
                id: id.clone(),
                reason: "mallory was here".into(),
                actor: actor.clone(),
            };
            match m.rsplit('/').next().unwrap() {
                "CreateRollout" => c
                    .create_rollout(pb::CreateRolloutRequest {
                        definition: Some(rollout_definition("ro2")),
                        actor: actor.clone(),
                    })
                    .await
                    .map(ok),
                "GetRolloutStatus" => c
                    .get_rollout_status(pb::GetRolloutStatusRequest { id: id.clone() })
                    .await
                    .map(ok),
                "ListRollouts" => c
                    .list_rollouts(pb::ListRolloutsRequest::default())
                    .await
                    .map(ok),
                "PauseRollout" => c.pause_rollout(action()).await.map(ok),
                "ResumeRollout" => c.resume_rollout(action()).await.map(ok),
                "AbortRollout" => c.abort_rollout(action()).await.map(ok),
                "ScheduleChange" => c
                    .schedule_change(pb::ScheduleChangeRequest {
                        due_at: Some(prost_types::Timestamp {
                            seconds: 0,
                            nanos: 0,
                        }),
                        change: Some(pb::schedule_change_request::Change::FlagChange(
                            pb::ScheduledFlagChange {
                                flag_set_id: "shop".into(),
                                flag_key: "banner".into(),
                                definition: flag("mallory").to_string(),
                            },
                        )),
                        actor: actor.clone(),
                    })
                    .await
                    .map(ok),
                "ListScheduled" => c
                    .list_scheduled(pb::ListScheduledRequest::default())
                    .await
                    .map(ok),
                "CancelScheduled" => c
                    .cancel_scheduled(pb::CancelScheduledRequest { id: 1, actor })
                    .await
                    .map(ok),
                other => panic!("no call for {other}"),
            }
        }
        "/bunting.v1.ClusterAdmin/Status" => ClusterAdminClient::new(ch)
            .status(pb::ClusterStatusRequest {})
            .await
            .map(ok),
        "/bunting.v1.ClusterAdmin/Drain" => ClusterAdminClient::new(ch)
            .drain(pb::DrainRequest {
                node_id: "node-1".into(),
            })
            .await
            .map(ok),
        "/bunting.v1.ClusterAdmin/Undrain" => ClusterAdminClient::new(ch)
            .undrain(pb::UndrainRequest {
                node_id: "node-1".into(),
            })
            .await
            .map(ok),
        "/bunting.v1.Tokens/CreateToken" => TokensClient::new(ch)
            .create_token(pb::CreateTokenRequest {
                name: "minted".into(),
                // What a token with only tokens:admin on shop may grant: no more than it has.
                scopes: vec!["tokens:admin".into()],
                flag_sets: vec!["shop".into()],
                ..Default::default()
            })
            .await
            .map(ok),
        "/bunting.v1.Tokens/ListTokens" => TokensClient::new(ch)
            .list_tokens(pb::ListTokensRequest {})
            .await
            .map(ok),
        "/bunting.v1.Tokens/RevokeToken" => TokensClient::new(ch)
            // An id no token has: let through, the answer is NOT_FOUND and nothing changes.
            .revoke_token(pb::RevokeTokenRequest {
                id: "00000000000000ff".into(),
            })
            .await
            .map(ok),
        other => panic!("no call for {other}: add one to tests/auth.rs"),
    }
}

/// Whether a method's request names flag set `shop` (so a token for another set is refused).
fn has_set(method: &str) -> bool {
    !(method.starts_with("/bunting.v1.ClusterAdmin/")
        || method.starts_with("/bunting.v1.Tokens/")
        || method == "/bunting.v1.Topology/GetTopology"
        || method == "/bunting.v1.Admin/ListFlagSets"
        // Lists show only the caller's sets, and a change is found by its id.
        || method == "/bunting.v1.Rollouts/ListRollouts"
        || method == "/bunting.v1.Rollouts/ListScheduled"
        || method == "/bunting.v1.Rollouts/CancelScheduled")
}

/// A rollout on shop's `banner` (b released against a) whose first step waits for an hour and
/// 1,000 users, so the controller writes nothing while the test runs.
fn rollout_definition(id: &str) -> pb::RolloutDefinition {
    pb::RolloutDefinition {
        id: id.into(),
        flag_set_id: "shop".into(),
        flag_key: "banner".into(),
        released_variant: "b".into(),
        baseline_variant: "a".into(),
        steps: [10, 100]
            .into_iter()
            .map(|percent| pb::RampStep {
                percent,
                min_duration_seconds: 3600,
                min_users: 1000,
            })
            .collect(),
        guardrails: vec![pb::Guardrail {
            metric: Some(pb::Metric {
                name: "buy".into(),
                event: "buy".into(),
                kind: pb::MetricKind::Conversion.into(),
            }),
            bad: pb::BadDirection::Decrease.into(),
            tolerance: 0.02,
        }],
        alpha: None,
    }
}

fn flag(value: &str) -> serde_json::Value {
    json!({"state": "ENABLED", "variants": {"a": value, "b": "other"}, "defaultVariant": "a"})
}

/// What an admin reads back: every flag of both sets with versions, the audit log, the
/// experiments and the tokens.
async fn state(admin: &AuthChannel) -> String {
    let mut a = AdminClient::new(admin.clone());
    let mut out = String::new();
    let sets = a
        .list_flag_sets(pb::ListFlagSetsRequest {})
        .await
        .unwrap()
        .into_inner();
    out.push_str(&format!(
        "{:?}\n",
        sets.flag_sets
            .iter()
            .map(|s| (&s.id, s.version))
            .collect::<Vec<_>>()
    ));
    for set in ["shop", "other"] {
        let flags = a
            .list_flags(pb::ListFlagsRequest {
                flag_set_id: set.into(),
            })
            .await
            .unwrap()
            .into_inner();
        out.push_str(&format!(
            "{set}: {:?}\n",
            flags
                .flags
                .iter()
                .map(|f| (&f.key, f.version, &f.definition))
                .collect::<Vec<_>>()
        ));
        let audit = a
            .list_audit(pb::ListAuditRequest {
                flag_set_id: set.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.push_str(&format!("audit {set}: {}\n", audit.entries.len()));
    }
    let experiments = ExperimentsClient::new(admin.clone())
        .list_experiments(pb::ListExperimentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    out.push_str(&format!("experiments: {}\n", experiments.experiments.len()));
    let mut rollouts = RolloutsClient::new(admin.clone());
    let listed = rollouts
        .list_rollouts(pb::ListRolloutsRequest::default())
        .await
        .unwrap()
        .into_inner();
    out.push_str(&format!("rollouts: {:?}\n", listed.rollouts));
    let scheduled = rollouts
        .list_scheduled(pb::ListScheduledRequest::default())
        .await
        .unwrap()
        .into_inner();
    out.push_str(&format!("scheduled: {:?}\n", scheduled.changes));
    let tokens = TokensClient::new(admin.clone())
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner();
    out.push_str(&format!(
        "tokens: {:?}\n",
        tokens
            .tokens
            .iter()
            .map(|t| (&t.id, t.revoked_at.is_some()))
            .collect::<Vec<_>>()
    ));
    out
}

async fn create_token(
    admin: &AuthChannel,
    name: &str,
    scopes: &[Scope],
    sets: Option<&[&str]>,
) -> String {
    TokensClient::new(admin.clone())
        .create_token(pb::CreateTokenRequest {
            name: name.into(),
            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            flag_sets: sets
                .unwrap_or(&[])
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            all_flag_sets: sets.is_none(),
            expires_at: None,
        })
        .await
        .unwrap()
        .into_inner()
        .token_secret
}

async fn revoke(admin: &AuthChannel, token: &str) {
    TokensClient::new(admin.clone())
        .revoke_token(pb::RevokeTokenRequest {
            id: ApiToken::parse(token).unwrap().id().to_string(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_every_bad_caller_and_changes_nothing() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("auth-table");
    let node = PgNode::start(&dir, &db, "node", "");
    let channel = node.channel().await;
    let admin = bearer(TEST_TOKEN).wrap(channel.clone());

    // Two sets, one flag each, through the bootstrap token.
    for set in ["shop", "other"] {
        common::admin::create_set_with_flags(
            &mut AdminClient::new(admin.clone()),
            set,
            &[("banner", flag("x"))],
            "ops",
        )
        .await;
    }

    // An experiment on shop, so experiment calls by id have a set to be refused on.
    ExperimentsClient::new(admin.clone())
        .create_experiment(pb::CreateExperimentRequest {
            id: "exp".into(),
            flag_set_id: "shop".into(),
            flag_key: "banner".into(),
            control_variant: "a".into(),
            metrics: vec![pb::Metric {
                name: "buy".into(),
                event: "buy".into(),
                kind: pb::MetricKind::Conversion.into(),
            }],
            actor: "ops".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // A rollout and a scheduled change on shop, so calls by id have a set to be refused on.
    let mut rollouts = RolloutsClient::new(admin.clone());
    rollouts
        .create_rollout(pb::CreateRolloutRequest {
            definition: Some(rollout_definition("ro")),
            actor: "ops".into(),
        })
        .await
        .unwrap();

    // The callers.
    let mut exactly: BTreeMap<Scope, String> = BTreeMap::new();
    let mut lacking: BTreeMap<Scope, String> = BTreeMap::new();
    for scope in Scope::ALL {
        exactly.insert(
            scope,
            create_token(&admin, &format!("only-{scope}"), &[scope], Some(&["shop"])).await,
        );
        let others: Vec<Scope> = Scope::ALL.into_iter().filter(|s| *s != scope).collect();
        lacking.insert(
            scope,
            create_token(&admin, &format!("not-{scope}"), &others, None).await,
        );
    }
    let other_set = create_token(&admin, "other-set", &Scope::ALL, Some(&["other"])).await;
    let revoked = create_token(&admin, "revoked", &Scope::ALL, None).await;
    revoke(&admin, &revoked).await;
    // Expired: written straight into the table, as no API makes a token that is already expired.
    let expired = ApiToken::generate().unwrap();
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&db.options).await.unwrap();
        sqlx::query("INSERT INTO api_tokens (id, name, hash, scopes, expires_at, created_by) VALUES ($1, 'expired', $2, $3, now() - interval '1 minute', 'test')")
            .bind(expired.id().as_str())
            .bind(expired.hash().as_bytes())
            .bind(Scope::ALL.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>())
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("SELECT pg_notify('bunting_tokens', $1)")
            .bind(expired.id().as_str())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let expired = expired.reveal();
    let unknown = ApiToken::generate().unwrap().reveal(); // another deployment's token
    let huge = format!("bnt_{}", "a".repeat(8_000));
    // The revocation and the direct insert reach the registry by notification or repair.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = state(&admin).await;
    let mut answers: Vec<String> = Vec::new();
    let mut refusals = 0;
    for (method, scope) in METHODS {
        let mut cases: Vec<(&str, Bearer, Code)> = vec![
            ("no token", Bearer::none(), Code::Unauthenticated),
            ("malformed", bearer("not-a-token"), Code::Unauthenticated),
            ("huge", bearer(&huge), Code::Unauthenticated),
            ("unknown", bearer(&unknown), Code::Unauthenticated),
            ("revoked", bearer(&revoked), Code::Unauthenticated),
            ("expired", bearer(&expired), Code::Unauthenticated),
            (
                "wrong scope",
                bearer(&lacking[scope]),
                Code::PermissionDenied,
            ),
        ];
        if has_set(method) {
            cases.push(("other flag set", bearer(&other_set), Code::PermissionDenied));
        }
        for (case, who, expected) in cases {
            let got = call(method, who.wrap(channel.clone())).await;
            let status = got.expect_err(&format!("{method} with {case} was let through"));
            assert_eq!(status.code(), expected, "{method} with {case}: {status:?}");
            answers.push(status.message().to_owned());
            refusals += 1;
        }
    }
    assert!(refusals >= 7 * METHODS.len());
    // Nothing a refused caller sent changed anything.
    assert_eq!(state(&admin).await, before);

    // A token with exactly the method's scope, for set shop only, gets through: each answer is
    // the service's own (OK, NOT_FOUND, ALREADY_EXISTS, a version conflict...), never a refusal.
    for (method, scope) in METHODS {
        let got = call(method, bearer(&exactly[scope]).wrap(channel.clone())).await;
        if let Err(status) = &got {
            assert!(
                !matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ),
                "{method} with scope {scope}: {status:?}"
            );
            answers.push(status.message().to_owned());
        }
    }

    // A scheduled change is cancelled only by a token for its flag set.
    let far = rollouts
        .schedule_change(pb::ScheduleChangeRequest {
            due_at: Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
            change: Some(pb::schedule_change_request::Change::FlagChange(
                pb::ScheduledFlagChange {
                    flag_set_id: "shop".into(),
                    flag_key: "banner".into(),
                    definition: flag("later").to_string(),
                },
            )),
            actor: "ops".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .change
        .unwrap();
    let cancel = |token: &str| {
        let mut c = RolloutsClient::new(bearer(token).wrap(channel.clone()));
        async move {
            c.cancel_scheduled(pb::CancelScheduledRequest {
                id: far.id,
                actor: "someone".into(),
            })
            .await
        }
    };
    let refused = cancel(&other_set).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let cancelled = cancel(&exactly[&Scope::FlagsWrite]).await.unwrap();
    assert_eq!(
        cancelled.into_inner().change.unwrap().state,
        pb::ScheduleState::Cancelled as i32
    );

    // A tokens:admin token cannot mint a token with a scope or a set it does not have.
    for (scopes, sets) in [
        (vec!["evaluate"], vec!["shop"]),
        (vec!["tokens:admin"], vec!["other"]),
    ] {
        let status = TokensClient::new(bearer(&exactly[&Scope::TokensAdmin]).wrap(channel.clone()))
            .create_token(pb::CreateTokenRequest {
                name: "escalated".into(),
                scopes: scopes.into_iter().map(String::from).collect(),
                flag_sets: sets.into_iter().map(String::from).collect(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }

    // The audit log names the token, not the caller's `actor` (UpdateFlag above ran as
    // only-flags:write with actor "mallory").
    let audit = AdminClient::new(admin.clone())
        .list_audit(pb::ListAuditRequest {
            flag_set_id: "shop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let actors: Vec<&str> = audit.entries.iter().map(|e| e.actor.as_str()).collect();
    assert!(actors.contains(&"only-flags:write (mallory)"), "{actors:?}");
    assert!(!actors.contains(&"mallory"), "{actors:?}");
    assert_eq!(actors.last(), Some(&"bootstrap (ops)"), "{actors:?}");

    // A token for one set lists only that set.
    let listed = AdminClient::new(bearer(&other_set).wrap(channel.clone()))
        .list_flag_sets(pb::ListFlagSetsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .flag_sets
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["other"]
    );

    // No secret in any answer or in the node's log.
    let mut secrets: Vec<String> = exactly.values().chain(lacking.values()).cloned().collect();
    secrets.extend([
        other_set.clone(),
        revoked.clone(),
        expired.clone(),
        unknown.clone(),
        TEST_TOKEN.to_owned(),
    ]);
    let log = read_log(&node.log);
    assert!(
        log.contains("authorization"),
        "the node logged nothing useful:\n{log}"
    );
    for secret in &secrets {
        // The part after the id: the secret itself.
        let hidden = &secret[21..];
        for answer in &answers {
            assert!(
                !answer.contains(hidden),
                "an answer quotes a secret: {answer}"
            );
        }
        assert!(!log.contains(hidden), "the log holds a secret");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_within_a_second_and_the_bootstrap_stays_revoked() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("auth-revoke");
    let node = PgNode::start(&dir, &db, "first", "");
    let channel = node.channel().await;
    let admin = bearer(TEST_TOKEN).wrap(channel.clone());
    let second_admin = create_token(&admin, "second-admin", &Scope::ALL, None).await;
    let reader = create_token(&admin, "reader", &[Scope::FlagsRead], None).await;
    let list = |token: String| {
        let channel = channel.clone();
        async move {
            AdminClient::new(bearer(&token).wrap(channel))
                .list_flag_sets(pb::ListFlagSetsRequest {})
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    assert_eq!(list(reader.clone()).await, Ok(()));
    let revoked_at = Instant::now();
    revoke(&admin, &reader).await;
    common::wait_until("the revoked token refused", Duration::from_secs(1), || {
        let reader = reader.clone();
        let list = &list;
        async move { list(reader).await == Err(Code::Unauthenticated) }
    })
    .await;
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    // The bootstrap token, revoked by another admin, is not brought back by a restart that still
    // has the secret in its environment.
    revoke(&bearer(&second_admin).wrap(channel.clone()), TEST_TOKEN).await;
    drop(node);
    let node = PgNode::start(&dir, &db, "second", "");
    let channel = node.channel().await;
    let status = AdminClient::new(bearer(TEST_TOKEN).wrap(channel.clone()))
        .list_flag_sets(pb::ListFlagSetsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    AdminClient::new(bearer(&second_admin).wrap(channel))
        .list_flag_sets(pb::ListFlagSetsRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opened_evaluation_needs_no_token_but_sync_and_writes_still_do() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("auth-open");
    let node = PgNode::start(&dir, &db, "node", "open_evaluation = true");
    let channel = node.channel().await;
    let admin = bearer(TEST_TOKEN).wrap(channel.clone());
    common::admin::create_set_with_flags(
        &mut AdminClient::new(admin.clone()),
        "shop",
        &[("banner", flag("x"))],
        "ops",
    )
    .await;
    let anonymous = || Bearer::none().wrap(channel.clone());
    let resolve = "/flagd.evaluation.v2.Service/ResolveString";
    common::wait_until(
        "the anonymous evaluation served",
        Duration::from_secs(20),
        || async { call(resolve, anonymous()).await.is_ok() },
    )
    .await;
    for method in [
        "/flagd.sync.v1.FlagSyncService/FetchAllFlags",
        "/bunting.v1.Admin/CreateFlag",
        "/bunting.v1.Experiments/Track",
    ] {
        let status = call(method, anonymous()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{method}: {status:?}");
    }
    // A token sent on an open method is still checked.
    let status = call(resolve, bearer("bnt_nope").wrap(channel.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

/// A PostgreSQL node with nothing opened: health still answers a probe that sends no token (and
/// refuses a bad token sent anyway), while evaluation does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_needs_no_token_on_a_closed_node() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let db = TestDb::create().await;
    let dir = common::scratch_dir("auth-health");
    let node = PgNode::start(&dir, &db, "node", "");
    let channel = node.channel().await;
    let check = |with: Bearer| {
        let mut client = HealthClient::new(with.wrap(channel.clone()));
        async move {
            client
                .check(HealthCheckRequest {
                    service: "flagd.evaluation.v2.Service".into(),
                })
                .await
                .map(|r| r.into_inner().status)
        }
    };
    common::wait_until(
        "an anonymous health check answers SERVING",
        Duration::from_secs(20),
        || async { check(Bearer::none()).await.ok() == Some(ServingStatus::Serving as i32) },
    )
    .await;
    let status = check(bearer("bnt_nope")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = call(
        "/flagd.evaluation.v2.Service/ResolveString",
        Bearer::none().wrap(channel.clone()),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_refused_by_every_node_of_a_cluster_within_a_second() {
    use common::cluster::{ClusterNode, agreement, postgres_flags};
    let db = TestDb::create().await;
    let dir = common::scratch_dir("auth-cluster");
    let flags = postgres_flags(&db.url);
    let mut n1 = ClusterNode::new(&dir, "node-1", &flags, &[]);
    let mut n2 = ClusterNode::new(&dir, "node-2", &flags, &[n1.cluster]);
    let mut n3 = ClusterNode::new(&dir, "node-3", &flags, &[n1.cluster]);
    for node in [&mut n1, &mut n2, &mut n3] {
        node.start();
    }
    agreement(
        &[&n1, &n2, &n3],
        &["node-1", "node-2", "node-3"],
        Duration::from_secs(30),
    )
    .await
    .expect("the cluster formed");
    let mut channels = Vec::new();
    for node in [&n1, &n2, &n3] {
        channels.push(
            Channel::from_shared(node.url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let admin = |i: usize| common::authorized(channels[i].clone());
    let reader = create_token(&admin(0), "reader", &[Scope::FlagsRead], None).await;
    // Every node learns the new token (by notification or the repair), then is asked again.
    let reads = |token: String| {
        let channels = channels.clone();
        async move {
            let mut codes = Vec::new();
            for channel in channels {
                let got = AdminClient::new(bearer(&token).wrap(channel))
                    .list_flag_sets(pb::ListFlagSetsRequest {})
                    .await;
                codes.push(got.map(|_| ()).map_err(|s| s.code()));
            }
            codes
        }
    };
    common::wait_until(
        "every node accepts the new token",
        Duration::from_secs(5),
        || {
            let reads = &reads;
            let reader = reader.clone();
            async move { reads(reader).await.iter().all(Result::is_ok) }
        },
    )
    .await;
    let revoked_at = Instant::now();
    revoke(&admin(1), &reader).await;
    common::wait_until(
        "every node refuses the revoked token",
        Duration::from_secs(1),
        || {
            let reads = &reads;
            let reader = reader.clone();
            async move {
                reads(reader)
                    .await
                    .iter()
                    .all(|r| *r == Err(Code::Unauthenticated))
            }
        },
    )
    .await;
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
}

/// `GET /metrics` with `authorization` (if any): the status line and the body.
fn scrape(node: &PgNode, authorization: Option<&str>) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&node.metrics, Duration::from_secs(2)).unwrap();
    let header = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_cluster_read_token() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("auth-metrics");
    let node = PgNode::start(&dir, &db, "node", "metrics_token_required = true");
    let admin = bearer(TEST_TOKEN).wrap(node.channel().await);
    let reader = create_token(&admin, "flags-reader", &[Scope::FlagsRead], None).await;
    let scraper = create_token(&admin, "prometheus", &[Scope::ClusterRead], None).await;
    let cases = [
        (None, "HTTP/1.1 401"),
        (Some("Bearer not-a-token".to_owned()), "HTTP/1.1 401"),
        (Some(format!("Bearer {reader}")), "HTTP/1.1 403"),
        (Some(format!("Bearer {scraper}")), "HTTP/1.1 200"),
    ];
    for (authorization, expected) in cases {
        let (status, body) = scrape(&node, authorization.as_deref());
        assert!(
            status.starts_with(expected),
            "{authorization:?}: {status}\n{body}"
        );
        assert!(!body.contains(&scraper[21..]) && !body.contains(&reader[21..]));
        if expected.ends_with("200") {
            assert!(body.contains("bunting_"), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_a_token_s_rate_are_refused_and_not_written() {
    let db = TestDb::create().await;
    let dir = common::scratch_dir("auth-rate");
    let node = PgNode::start(&dir, &db, "node", "write_rate_per_second = 1");
    let mut admin = AdminClient::new(bearer(TEST_TOKEN).wrap(node.channel().await));
    let mut codes = Vec::new();
    for i in 0..6 {
        let got = admin
            .create_flag_set(pb::CreateFlagSetRequest {
                id: format!("set-{i}"),
                actor: "ops".into(),
                ..Default::default()
            })
            .await;
        codes.push(got.map(|_| ()).map_err(|s| s.code()));
    }
    // A burst of one, then refused until a second has passed (six calls take far less than the
    // five seconds that would let them all through).
    assert_eq!(codes[0], Ok(()));
    assert!(codes.contains(&Err(Code::ResourceExhausted)), "{codes:?}");
    // Reads are not limited, and show only what was let through.
    let sets = admin
        .list_flag_sets(pb::ListFlagSetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .flag_sets;
    let written = codes.iter().filter(|c| c.is_ok()).count();
    assert_eq!(sets.len(), written);
}
