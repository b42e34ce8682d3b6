//! Preparing a PostgreSQL-backed node for the experiment workload through its own admin APIs: the
//! flag set, a 50/50 string flag and, optionally, a running experiment on it. Idempotent, so a
//! script can run it against a node that already has some or all of it.

use std::future::Future;
use std::time::{Duration, Instant};

use bunting_node::auth::client::{AuthChannel as Channel, Bearer};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use bunting_proto::flagd::evaluation::v2::ResolveStringRequest;
use bunting_proto::flagd::evaluation::v2::service_client::ServiceClient;
use tonic::Code;

use super::{LoadError, connect, context_for};

/// The flag set the setup writes to: unselected flagd requests evaluate against the node's
/// `default_set`, whose default is this.
pub const FLAG_SET: &str = "default";
const ACTOR: &str = "bunting-bench";
/// The user the readiness probe evaluates and tracks; outside the `user-N` keys of the load.
const PROBE_USER: &str = "bench-setup-probe";
/// How long a freshly written flag or experiment may take to reach the node's shards.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// What to create.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    pub target: String,
    pub flag: String,
    /// `Some(event)`: also an experiment on the flag with a conversion and a mean metric on
    /// `event`, started.
    pub experiment_event: Option<String>,
    /// The token the setup's Admin and Experiments calls carry.
    pub bearer: Bearer,
}

/// What the node serves once the setup returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub flag: String,
    pub experiment: Option<String>,
}

/// The experiment id the setup uses for a flag (ids allow fewer characters than flag keys; the
/// node names the id if this one is refused).
pub fn experiment_id(flag: &str) -> String {
    format!("{flag}-experiment")
}

/// The flag: two string variants split 50/50 on the targeting key, as an A/B test's flag is.
fn definition() -> String {
    serde_json::json!({
        "state": "ENABLED",
        "variants": {"control": "blue", "treatment": "green"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["control", 50], ["treatment", 50]]}
    })
    .to_string()
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> LoadError {
    move |status| LoadError::Setup { call, status }
}

/// `Ok(())` also when the thing already exists: the setup is idempotent.
fn created<T>(call: &'static str, answer: Result<T, tonic::Status>) -> Result<(), LoadError> {
    match answer {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => Ok(()),
        Err(status) => Err(LoadError::Setup { call, status }),
    }
}

pub async fn prepare(config: &SetupConfig) -> Result<Prepared, LoadError> {
    let channel = connect(&config.target, &config.bearer).await?;
    let mut admin = AdminClient::new(channel.clone());
    created(
        "CreateFlagSet",
        admin
            .create_flag_set(pb::CreateFlagSetRequest {
                id: FLAG_SET.to_owned(),
                actor: ACTOR.to_owned(),
                ..Default::default()
            })
            .await,
    )?;
    created(
        "CreateFlag",
        admin
            .create_flag(pb::CreateFlagRequest {
                flag_set_id: FLAG_SET.to_owned(),
                key: config.flag.clone(),
                definition: definition(),
                expected_flag_set_version: 0,
                actor: ACTOR.to_owned(),
            })
            .await,
    )?;
    let flagd = ServiceClient::new(channel.clone());
    let flag = config.flag.clone();
    wait_until(format!("flag {flag:?} served"), || {
        let (mut flagd, flag) = (flagd.clone(), flag.clone());
        async move { served(&mut flagd, &flag).await }
    })
    .await?;

    let Some(event) = &config.experiment_event else {
        return Ok(Prepared {
            flag: config.flag.clone(),
            experiment: None,
        });
    };
    let id = experiment_id(&config.flag);
    let mut experiments = ExperimentsClient::new(channel);
    start_experiment(&mut experiments, &id, &config.flag, event).await?;
    // Running in the store is not yet running in the shards (the node follows a feed), so wait
    // until an evaluation exposes the probe user and its event counts: the very path the load
    // then measures.
    wait_until(format!("experiment {id:?} counting {event:?}"), || {
        let (mut flagd, mut experiments) = (flagd.clone(), experiments.clone());
        let (flag, event, id) = (config.flag.clone(), event.clone(), id.clone());
        async move {
            served(&mut flagd, &flag).await?;
            let counted = experiments
                .track(pb::TrackRequest {
                    targeting_key: PROBE_USER.to_owned(),
                    event,
                    value: 1.0,
                    flag_set_id: Some(FLAG_SET.to_owned()),
                })
                .await
                .map_err(rpc("Track"))?
                .into_inner()
                .counted;
            Ok(counted.contains(&id))
        }
    })
    .await?;
    Ok(Prepared {
        flag: config.flag.clone(),
        experiment: Some(id),
    })
}

fn probe(flag: &str) -> ResolveStringRequest {
    ResolveStringRequest {
        flag_key: flag.to_owned(),
        context: Some(context_for(PROBE_USER)),
    }
}

/// Whether the node resolves the flag to one of the setup's variants (a flag not yet propagated
/// answers NOT_FOUND, which is "not yet", not a failure).
async fn served(flagd: &mut ServiceClient<Channel>, flag: &str) -> Result<bool, LoadError> {
    match flagd.resolve_string(probe(flag)).await {
        Ok(r) => Ok(matches!(
            r.into_inner().variant.as_deref(),
            Some("control" | "treatment")
        )),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(status) => Err(LoadError::Setup {
            call: "ResolveString",
            status,
        }),
    }
}

async fn start_experiment(
    experiments: &mut ExperimentsClient<Channel>,
    id: &str,
    flag: &str,
    event: &str,
) -> Result<(), LoadError> {
    let metric = |name: &str, kind: pb::MetricKind| pb::Metric {
        name: name.to_owned(),
        event: event.to_owned(),
        kind: kind.into(),
    };
    created(
        "CreateExperiment",
        experiments
            .create_experiment(pb::CreateExperimentRequest {
                id: id.to_owned(),
                flag_set_id: FLAG_SET.to_owned(),
                flag_key: flag.to_owned(),
                control_variant: "control".to_owned(),
                metrics: vec![
                    metric("converted", pb::MetricKind::Conversion),
                    metric("value", pb::MetricKind::Mean),
                ],
                traffic_split: Default::default(),
                analysis: None,
                actor: ACTOR.to_owned(),
            })
            .await,
    )?;
    match experiments
        .start_experiment(pb::StartExperimentRequest {
            id: id.to_owned(),
            actor: ACTOR.to_owned(),
        })
        .await
    {
        Ok(_) => Ok(()),
        // Started by an earlier run: fine if it is still running, not if it was stopped.
        Err(s) if s.code() == Code::FailedPrecondition => {
            let state = experiments
                .get_experiment(pb::GetExperimentRequest { id: id.to_owned() })
                .await
                .map_err(rpc("GetExperiment"))?
                .into_inner()
                .experiment
                .map(|e| e.state());
            if state == Some(pb::ExperimentState::Running) {
                Ok(())
            } else {
                Err(LoadError::ExperimentNotRunning {
                    id: id.to_owned(),
                    state: format!("{state:?}"),
                    start: s,
                })
            }
        }
        Err(status) => Err(LoadError::Setup {
            call: "StartExperiment",
            status,
        }),
    }
}

/// Polls `check` until it answers `true`, for at most [`READY_WITHIN`].
async fn wait_until<F, Fut>(what: String, mut check: F) -> Result<(), LoadError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, LoadError>>,
{
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LoadError::NotReady {
                what,
                waited: READY_WITHIN,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
