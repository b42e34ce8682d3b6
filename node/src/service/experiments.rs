//! `bunting.v1.Experiments`: experiments on flags, each RPC one call to the node's
//! [`ExperimentStore`]. Requests are checked here (ids, names, kinds, actor) before the store is
//! touched; the store checks the definition against the stored flag and the life cycle, and its
//! refusals become the statuses experiments.proto lists. `Track` goes to the shard actor owning
//! the user (on this node, or forwarded over the cluster); `GetExperimentResults` gathers every
//! owner's live statistics and analyses them ([`super::experiment_results`]).

use std::sync::Arc;

use bunting_experiments::{
    Experiment, ExperimentId, ExperimentState, Metric, MetricKind, MetricName, TrafficSplit,
};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::experiments_server::Experiments as ExperimentsRpc;
use chrono::{DateTime, Utc};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use super::admin_status::{
    bad_field, check_actor, check_flag_key, check_flag_set_id, store_status,
};
use super::request::{RequiredStore, audit_actor, caller, check_all_flag_sets, check_flag_set};
use super::wire_text::bounded;
use super::{analysis_settings, experiment_results};
use crate::config::FlagSourceConfig;
use crate::dispatch::{Dispatch, TrackFailed};
use bunting_actors::TrackRequest;
use bunting_stores::experiments::{
    ExperimentFilter, ExperimentRecord, ExperimentStore, ExperimentStoreError, NewExperiment,
    PageLimit, PageSize, StateKind,
};

/// `bunting.v1.Experiments` over the node's experiment store, if it has one.
#[derive(Debug, Clone)]
pub struct ExperimentsService {
    store: RequiredStore<dyn ExperimentStore>,
    /// The way to the shard actors (the shards own users' records and statistics): admission,
    /// the owner of each user's shard, and every member's statistics.
    dispatch: Dispatch,
}

/// The label of this service's refusals in `bunting_requests_shed_total`.
const SERVICE: &str = "bunting.v1.Experiments";

impl ExperimentsService {
    /// `store` is `None` when `flags` names a source without a database (a file); then every RPC
    /// is refused with FAILED_PRECONDITION naming that source, as the Admin API does. A PostgreSQL
    /// node always has a store: while PostgreSQL is unreachable it is a pending one, whose
    /// `Unavailable` (naming PostgreSQL) every RPC that needs it answers as UNAVAILABLE; `Track`
    /// needs only the shards and works meanwhile.
    pub fn new(
        store: Option<Arc<dyn ExperimentStore>>,
        flags: &FlagSourceConfig,
        dispatch: Dispatch,
    ) -> ExperimentsService {
        let without_store = match flags {
            FlagSourceConfig::File { path, .. } => format!(
                "this node serves flags from the file {}, and experiments live in PostgreSQL: use \
                 a node with [flags] source = \"postgres\"",
                path.display()
            ),
            // Not reached by `server::bind`, which always gives a PostgreSQL node a store.
            FlagSourceConfig::Postgres { .. } => {
                "this node's experiment store is not available".to_owned()
            }
        };
        ExperimentsService {
            store: RequiredStore::new(store, without_store),
            dispatch,
        }
    }

    fn store(&self) -> Result<&dyn ExperimentStore, Status> {
        self.store.get()
    }

    /// For a caller limited to some flag sets, the experiment's set must be one of them; the
    /// request names only the experiment, so this reads it (a caller allowed every set skips the
    /// read).
    async fn check_experiment_set(
        &self,
        caller: &crate::auth::Caller,
        id: &ExperimentId,
        op: &'static str,
    ) -> Result<(), Status> {
        if caller.allows_all_sets() {
            return Ok(());
        }
        let record = self
            .store()?
            .get_experiment(id)
            .await
            .map_err(|e| experiment_status(op, e))?;
        check_flag_set(caller, &record.experiment.flag_set)
    }
}

#[tonic::async_trait]
impl ExperimentsRpc for ExperimentsService {
    async fn create_experiment(
        &self,
        request: Request<pb::CreateExperimentRequest>,
    ) -> Result<Response<pb::CreateExperimentResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let id = experiment_id(req.id)?;
        check_flag_set_id("flag_set_id", &req.flag_set_id)?;
        check_flag_set(&caller, &req.flag_set_id)?;
        check_flag_key("flag_key", &req.flag_key)?;
        if req.control_variant.is_empty() {
            return Err(bad_field(
                "control_variant",
                "is empty; name one of the flag's variants",
            ));
        }
        let metrics = req
            .metrics
            .into_iter()
            .enumerate()
            .map(|(i, m)| metric(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let analysis = analysis_settings::from_request(req.analysis)?;
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        let new = NewExperiment {
            id,
            flag_set: req.flag_set_id,
            flag_key: req.flag_key,
            control: req.control_variant,
            metrics,
            split: req.traffic_split.into_iter().collect(),
            analysis,
        };
        let record = store
            .create_experiment(new, &actor)
            .await
            .map_err(|e| experiment_status("create_experiment", e))?;
        Ok(Response::new(pb::CreateExperimentResponse {
            experiment: Some(experiment(record)),
        }))
    }

    async fn start_experiment(
        &self,
        request: Request<pb::StartExperimentRequest>,
    ) -> Result<Response<pb::StartExperimentResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let id = experiment_id(req.id)?;
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        self.check_experiment_set(&caller, &id, "start_experiment")
            .await?;
        let record = store
            .start_experiment(&id, &actor)
            .await
            .map_err(|e| experiment_status("start_experiment", e))?;
        Ok(Response::new(pb::StartExperimentResponse {
            experiment: Some(experiment(record)),
        }))
    }

    async fn stop_experiment(
        &self,
        request: Request<pb::StopExperimentRequest>,
    ) -> Result<Response<pb::StopExperimentResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let id = experiment_id(req.id)?;
        check_actor(&req.actor)?;
        let actor = audit_actor(&caller, &req.actor)?;
        self.check_experiment_set(&caller, &id, "stop_experiment")
            .await?;
        let record = store
            .stop_experiment(&id, &actor)
            .await
            .map_err(|e| experiment_status("stop_experiment", e))?;
        Ok(Response::new(pb::StopExperimentResponse {
            experiment: Some(experiment(record)),
        }))
    }

    async fn get_experiment(
        &self,
        request: Request<pb::GetExperimentRequest>,
    ) -> Result<Response<pb::GetExperimentResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        let id = experiment_id(request.into_inner().id)?;
        let record = store
            .get_experiment(&id)
            .await
            .map_err(|e| experiment_status("get_experiment", e))?;
        check_flag_set(&caller, &record.experiment.flag_set)?;
        Ok(Response::new(pb::GetExperimentResponse {
            experiment: Some(experiment(record)),
        }))
    }

    async fn list_experiments(
        &self,
        request: Request<pb::ListExperimentsRequest>,
    ) -> Result<Response<pb::ListExperimentsResponse>, Status> {
        let store = self.store()?;
        let caller = caller(request.extensions())?.clone();
        match request.get_ref().flag_set_id.as_deref() {
            Some(set) if !set.is_empty() => check_flag_set(&caller, set)?,
            _ => check_all_flag_sets(&caller, "ListExperiments")?,
        }
        let filter = list_filter(request.into_inner())?;
        let page = store
            .list_experiments(&filter)
            .await
            .map_err(|e| experiment_status("list_experiments", e))?;
        Ok(Response::new(pb::ListExperimentsResponse {
            experiments: page.experiments.into_iter().map(experiment).collect(),
            next_after_id: page.next_after.map(String::from).unwrap_or_default(),
        }))
    }

    async fn track(
        &self,
        request: Request<pb::TrackRequest>,
    ) -> Result<Response<pb::TrackResponse>, Status> {
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        // Unset means every set's experiments: only a caller allowed every set may.
        match req.flag_set_id.as_deref() {
            Some(set) if !set.is_empty() => check_flag_set(&caller, set)?,
            _ => check_all_flag_sets(&caller, "Track")?,
        }
        if req.targeting_key.is_empty() {
            return Err(bad_field("targeting_key", "must not be empty"));
        }
        bunting_experiments::aggregate::check_event(&req.event, req.value).map_err(|e| {
            bad_field(
                if req.event.trim().is_empty() {
                    "event"
                } else {
                    "value"
                },
                e.to_string(),
            )
        })?;
        let request = TrackRequest {
            user: req.targeting_key,
            event: req.event,
            value: req.value,
            flag_set: req.flag_set_id.filter(|s| !s.is_empty()),
        };
        match self.dispatch.track(SERVICE, request).await {
            Ok(ids) => Ok(counted(ids)),
            Err(TrackFailed::BadEvent(why)) => Err(Status::invalid_argument(bounded(why))),
            Err(TrackFailed::Unavailable(why)) => Err(Status::unavailable(why)),
            Err(TrackFailed::Refused(refused)) => Err(refused.into()),
        }
    }

    /// Asks every shard (and every peer) for its totals, through the dispatch (which admits
    /// that part: the store read before it reaches no actor).
    async fn get_experiment_results(
        &self,
        request: Request<pb::GetExperimentResultsRequest>,
    ) -> Result<Response<pb::GetExperimentResultsResponse>, Status> {
        let caller = caller(request.extensions())?.clone();
        let request = request.into_inner();
        let store = self.store()?;
        let id = experiment_id(request.id)?;
        let record = store
            .get_experiment(&id)
            .await
            .map_err(|e| experiment_status("get_experiment_results", e))?;
        check_flag_set(&caller, &record.experiment.flag_set)?;
        if record.experiment.state == ExperimentState::Draft {
            return Err(Status::failed_precondition(format!(
                "experiment {id} is a draft: nothing has been counted; start it first"
            )));
        }
        let totals = self.dispatch.experiment_totals(SERVICE, id).await?;
        let analysed = record.experiment.clone();
        Ok(Response::new(experiment_results::results(
            &analysed,
            &totals,
            experiment(record),
        )))
    }
}

/// A checked ListExperiments request as the store's filter: always one page (an API caller
/// never reads the whole table in one answer), each refused field named.
fn list_filter(req: pb::ListExperimentsRequest) -> Result<ExperimentFilter, Status> {
    if let Some(set) = &req.flag_set_id {
        check_flag_set_id("flag_set_id", set)?;
    }
    let state = match req.state.map(pb::ExperimentState::try_from) {
        None | Some(Ok(pb::ExperimentState::Unspecified)) => None,
        Some(Ok(pb::ExperimentState::Draft)) => Some(StateKind::Draft),
        Some(Ok(pb::ExperimentState::Running)) => Some(StateKind::Running),
        Some(Ok(pb::ExperimentState::Stopped)) => Some(StateKind::Stopped),
        Some(Err(e)) => return Err(bad_field("state", format!("{e}"))),
    };
    // A cursor is an id (the previous page's last), so anything that could not be one is a
    // caller's mistake worth naming, not a position to read from.
    let after = match req.after_id.as_str() {
        "" => None,
        _ => Some(ExperimentId::new(req.after_id).map_err(|e| {
            bad_field(
                "after_id",
                format!("{e}; pass empty or a previous page's next_after_id"),
            )
        })?),
    };
    let size = PageSize::from_request(req.limit).map_err(|e| bad_field("limit", e.to_string()))?;
    Ok(ExperimentFilter {
        flag_set: req.flag_set_id,
        state,
        after,
        limit: PageLimit::AtMost(size),
    })
}

fn counted(ids: Vec<ExperimentId>) -> Response<pb::TrackResponse> {
    Response::new(pb::TrackResponse {
        counted: ids.into_iter().map(|id| id.to_string()).collect(),
    })
}

fn experiment_id(id: String) -> Result<ExperimentId, Status> {
    ExperimentId::new(id).map_err(|e| bad_field("id", e.to_string()))
}

fn metric(index: usize, metric: pb::Metric) -> Result<Metric, Status> {
    let name = MetricName::new(metric.name)
        .map_err(|e| bad_field(&format!("metrics[{index}].name"), e.to_string()))?;
    let kind = match pb::MetricKind::try_from(metric.kind) {
        Ok(pb::MetricKind::Conversion) => MetricKind::Conversion,
        Ok(pb::MetricKind::Mean) => MetricKind::Mean,
        Ok(pb::MetricKind::Unspecified) | Err(_) => {
            return Err(bad_field(
                &format!("metrics[{index}].kind"),
                format!(
                    "{} is not a metric kind: METRIC_KIND_CONVERSION or METRIC_KIND_MEAN",
                    metric.kind
                ),
            ));
        }
    };
    Ok(Metric {
        name,
        event: metric.event,
        kind,
    })
}

/// An experiment store refusal as the status experiments.proto gives it.
fn experiment_status(op: &'static str, error: ExperimentStoreError) -> Status {
    let message = bounded(error.to_string());
    match error {
        ExperimentStoreError::UnknownFlagSet { .. }
        | ExperimentStoreError::UnknownFlag { .. }
        | ExperimentStoreError::UnknownExperiment(_) => Status::not_found(message),
        ExperimentStoreError::AlreadyExists(_) => Status::already_exists(message),
        ExperimentStoreError::Invalid { field, source } => Status::with_error_details(
            Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request(vec![FieldViolation::new(
                field,
                bounded(source.to_string()),
            )]),
        ),
        ExperimentStoreError::TooFewVariants { .. }
        | ExperimentStoreError::Transition(_)
        | ExperimentStoreError::FlagBusy { .. }
        | ExperimentStoreError::FlagChanged { .. } => Status::failed_precondition(message),
        ExperimentStoreError::Store(e) => store_status(op, e),
    }
}

fn experiment(record: ExperimentRecord) -> pb::Experiment {
    let ExperimentRecord {
        experiment,
        version,
        created_at,
        updated_at,
    } = record;
    let Experiment {
        id,
        flag_set,
        flag_key,
        arms,
        control,
        metrics,
        split,
        analysis,
        state,
    } = experiment;
    let (state, started_at, stopped_at) = match state {
        ExperimentState::Draft => (pb::ExperimentState::Draft, None, None),
        ExperimentState::Running { started_at } => {
            (pb::ExperimentState::Running, Some(started_at), None)
        }
        ExperimentState::Stopped {
            started_at,
            stopped_at,
        } => (
            pb::ExperimentState::Stopped,
            Some(started_at),
            Some(stopped_at),
        ),
    };
    pb::Experiment {
        id: id.into(),
        flag_set_id: flag_set,
        flag_key,
        arms: arms.into_iter().collect(),
        control_variant: control,
        metrics: metrics
            .into_iter()
            .map(|m| pb::Metric {
                name: m.name.into(),
                event: m.event,
                kind: match m.kind {
                    MetricKind::Conversion => pb::MetricKind::Conversion,
                    MetricKind::Mean => pb::MetricKind::Mean,
                }
                .into(),
            })
            .collect(),
        traffic_split: match split {
            TrafficSplit::Even => Default::default(),
            TrafficSplit::Weighted(weights) => weights.into_iter().collect(),
        },
        analysis: Some(analysis_settings::to_proto(&analysis)),
        state: state.into(),
        started_at: started_at.map(millis_timestamp),
        stopped_at: stopped_at.map(millis_timestamp),
        version,
        created_at: Some(timestamp(created_at)),
        updated_at: Some(timestamp(updated_at)),
    }
}

fn millis_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // Below 10^9 by construction, so it fits.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub(super) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(after_id: &str, limit: i32) -> pb::ListExperimentsRequest {
        pb::ListExperimentsRequest {
            after_id: after_id.into(),
            limit,
            ..Default::default()
        }
    }

    fn refused_field(status: &Status) -> Vec<String> {
        status
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn list_requests_become_one_page() {
        let filter = list_filter(request("", 0)).unwrap();
        assert_eq!(filter.after, None);
        assert_eq!(filter.limit, PageLimit::AtMost(PageSize::DEFAULT));

        let filter = list_filter(pb::ListExperimentsRequest {
            flag_set_id: Some("shop".into()),
            state: Some(pb::ExperimentState::Running.into()),
            after_id: "checkout".into(),
            limit: 1000,
        })
        .unwrap();
        assert_eq!(filter.flag_set.as_deref(), Some("shop"));
        assert_eq!(filter.state, Some(StateKind::Running));
        assert_eq!(filter.after.as_ref().map(|a| a.as_str()), Some("checkout"));
        assert_eq!(filter.limit, PageLimit::AtMost(PageSize::MAX));
    }

    #[test]
    fn bad_pages_are_refused_naming_the_field() {
        for (req, field) in [
            (request("", -1), "limit"),
            (request("", 1001), "limit"),
            (request("", i32::MIN), "limit"),
            (request("no spaces", 0), "after_id"),
            (request(&"x".repeat(65), 0), "after_id"),
        ] {
            let status = list_filter(req).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert_eq!(refused_field(&status), [field], "{status:?}");
            assert!(status.message().starts_with(field), "{status:?}");
        }
    }
}
