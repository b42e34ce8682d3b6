//! `bunting.v1.Rollouts`: create, inspect and steer rollouts, and schedule changes. Each RPC is
//! one call to the node's rollout [`Controller`] (the same operations its loop uses, so an API
//! pause and a controller tick go through one set of rules) or to its rollout store. Requests are
//! checked here (ids, fields, actor, flag-set access) before either is touched; the rules'
//! refusals become the statuses rollouts.proto lists.

use bunting_experiments::{Metric, MetricKind, MetricName};
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::rollouts_server::Rollouts as RolloutsRpc;
use bunting_rollouts::{
    Action, BadDirection, Guardrail, GuardrailLook, Hold, PauseCause, RolloutId, RolloutInput,
    RolloutSpec, RolloutState, StepInput, Verdict,
};
use bunting_stores::rollouts::{
    MAX_ROLLOUT_LIST, RolloutRecord, RolloutStoreError, ScheduleState, ScheduledAction,
    ScheduledChange,
};
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use super::admin_status::{
    bad_field, check_flag_key, check_flag_set_id, parse_definition_at, store_status,
};
use super::experiments::timestamp;
use super::request::{RequiredStore, audit_actor, caller, check_flag_set};
use super::wire_text::bounded;
use crate::auth::Caller;
use crate::config::FlagSourceConfig;
use crate::rollout::{ControlError, Controller, controller::RolloutStatus};

/// A list's size when the request leaves `limit` at 0.
pub const DEFAULT_LIST: usize = 100;

/// The alpha of a definition that leaves it unset (rollouts.proto).
const DEFAULT_ALPHA: f64 = 0.05;

/// `bunting.v1.Rollouts` over the node's rollout controller, if it has one.
#[derive(Debug, Clone)]
pub struct RolloutsService {
    controller: RequiredStore<Controller>,
}

impl RolloutsService {
    /// `controller` is `None` on a node without PostgreSQL; then every RPC is refused with
    /// FAILED_PRECONDITION saying rollouts need it.
    pub fn new(controller: Option<Controller>, flags: &FlagSourceConfig) -> RolloutsService {
        let without = match flags {
            FlagSourceConfig::File { path, .. } => format!(
                "this node serves flags from the file {}, and rollouts need PostgreSQL: use a \
                 node with [flags] source = \"postgres\"",
                path.display()
            ),
            FlagSourceConfig::Postgres { .. } => {
                "rollouts need PostgreSQL, and this node's rollout store is not available"
                    .to_owned()
            }
        };
        RolloutsService {
            controller: RequiredStore::new(controller.map(std::sync::Arc::new), without),
        }
    }

    fn controller(&self) -> Result<&Controller, Status> {
        self.controller.get()
    }

    /// The rollout, after checking the caller may touch its flag set.
    async fn visible(&self, caller: &Caller, id: &RolloutId) -> Result<RolloutRecord, Status> {
        let record = self
            .controller()?
            .rollouts()
            .get_rollout(id)
            .await
            .map_err(|e| rollouts_status("get_rollout", e))?;
        check_flag_set(caller, &record.spec.flag_set)?;
        Ok(record)
    }
}

#[tonic::async_trait]
impl RolloutsRpc for RolloutsService {
    async fn create_rollout(
        &self,
        request: Request<pb::CreateRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let controller = self.controller()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let input = definition("definition", req.definition, &caller)?;
        let principal = audit_actor(&caller, &req.actor)?;
        let record = controller
            .start_rollout(input, &principal, Utc::now())
            .await
            .map_err(|e| control_status("create_rollout", e))?;
        Ok(Response::new(pb::RolloutResponse {
            rollout: Some(rollout(&record)),
        }))
    }

    async fn get_rollout_status(
        &self,
        request: Request<pb::GetRolloutStatusRequest>,
    ) -> Result<Response<pb::GetRolloutStatusResponse>, Status> {
        let controller = self.controller()?;
        let caller = caller(request.extensions())?.clone();
        let id = rollout_id(request.into_inner().id)?;
        self.visible(&caller, &id).await?;
        let status = controller
            .status(&id, Utc::now())
            .await
            .map_err(|e| control_status("rollout_status", e))?;
        Ok(Response::new(status_response(status)))
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        let controller = self.controller()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let limit = list_limit(req.limit)?;
        let records = controller
            .rollouts()
            .list_rollouts(req.active_only)
            .await
            .map_err(|e| rollouts_status("list_rollouts", e))?;
        let rollouts = records
            .iter()
            .filter(|r| caller.allows_set(&r.spec.flag_set))
            .take(limit)
            .map(rollout)
            .collect();
        Ok(Response::new(pb::ListRolloutsResponse { rollouts }))
    }

    async fn pause_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let (id, principal, reason) = self.action(request, "paused").await?;
        let record = self
            .controller()?
            .pause(&id, &principal, &reason, Utc::now())
            .await
            .map_err(|e| control_status("pause_rollout", e))?;
        Ok(Response::new(pb::RolloutResponse {
            rollout: Some(rollout(&record)),
        }))
    }

    async fn resume_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let (id, principal, reason) = self.action(request, "resumed").await?;
        let record = self
            .controller()?
            .resume(&id, &principal, &reason, Utc::now())
            .await
            .map_err(|e| control_status("resume_rollout", e))?;
        Ok(Response::new(pb::RolloutResponse {
            rollout: Some(rollout(&record)),
        }))
    }

    async fn abort_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let (id, principal, reason) = self.action(request, "aborted").await?;
        let record = self
            .controller()?
            .abort(&id, &principal, &reason, Utc::now())
            .await
            .map_err(|e| control_status("abort_rollout", e))?;
        Ok(Response::new(pb::RolloutResponse {
            rollout: Some(rollout(&record)),
        }))
    }

    async fn schedule_change(
        &self,
        request: Request<pb::ScheduleChangeRequest>,
    ) -> Result<Response<pb::ScheduledChangeResponse>, Status> {
        let controller = self.controller()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let due_at = match req.due_at {
            None => return Err(bad_field("due_at", "is required: when the change fires")),
            Some(t) => {
                DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
                    .ok_or_else(|| bad_field("due_at", format!("{}s is not a time", t.seconds)))?
            }
        };
        let action = match req.change {
            None => {
                return Err(bad_field(
                    "change",
                    "is required: a flag_change or a start_rollout",
                ));
            }
            Some(pb::schedule_change_request::Change::FlagChange(change)) => {
                check_flag_set_id("flag_change.flag_set_id", &change.flag_set_id)?;
                check_flag_set(&caller, &change.flag_set_id)?;
                check_flag_key("flag_change.flag_key", &change.flag_key)?;
                let definition = parse_definition_at("flag_change.definition", &change.definition)?;
                ScheduledAction::FlagChange {
                    flag_set: change.flag_set_id,
                    flag_key: change.flag_key,
                    definition,
                }
            }
            Some(pb::schedule_change_request::Change::StartRollout(def)) => {
                let rollout = definition("start_rollout", Some(def), &caller)?;
                ScheduledAction::StartRollout { rollout }
            }
        };
        let principal = audit_actor(&caller, &req.actor)?;
        let change = controller
            .rollouts()
            .schedule(due_at, action, &principal)
            .await
            .map_err(|e| rollouts_status("schedule_change", e))?;
        Ok(Response::new(pb::ScheduledChangeResponse {
            change: Some(scheduled(&change)),
        }))
    }

    async fn list_scheduled(
        &self,
        request: Request<pb::ListScheduledRequest>,
    ) -> Result<Response<pb::ListScheduledResponse>, Status> {
        let controller = self.controller()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let limit = list_limit(req.limit)?;
        let changes = controller
            .rollouts()
            .list_scheduled(req.pending_only)
            .await
            .map_err(|e| rollouts_status("list_scheduled", e))?;
        let changes = changes
            .iter()
            .filter(|c| caller.allows_set(action_set(&c.action)))
            .take(limit)
            .map(scheduled)
            .collect();
        Ok(Response::new(pb::ListScheduledResponse { changes }))
    }

    async fn cancel_scheduled(
        &self,
        request: Request<pb::CancelScheduledRequest>,
    ) -> Result<Response<pb::ScheduledChangeResponse>, Status> {
        let controller = self.controller()?;
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let principal = audit_actor(&caller, &req.actor)?;
        if !caller.allows_all_sets() {
            // The request names only the change: find its flag set before cancelling it. Only a
            // pending change can be cancelled, so the pending ones are where to look; one not
            // among them (gone, settled, or past the list's bound) is not cancelled for a caller
            // whose sets cannot be checked.
            let pending = controller
                .rollouts()
                .list_scheduled(true)
                .await
                .map_err(|e| rollouts_status("cancel_scheduled", e))?;
            match pending.iter().find(|c| c.id == req.id) {
                Some(change) => check_flag_set(&caller, action_set(&change.action))?,
                None => {
                    return Err(Status::not_found(format!(
                        "scheduled change {} is not pending on a flag set this token may touch",
                        req.id
                    )));
                }
            }
        }
        let change = controller
            .rollouts()
            .cancel_scheduled(req.id, &principal)
            .await
            .map_err(|e| rollouts_status("cancel_scheduled", e))?;
        Ok(Response::new(pb::ScheduledChangeResponse {
            change: Some(scheduled(&change)),
        }))
    }
}

impl RolloutsService {
    /// The id, principal and reason of a pause, resume or abort, once the caller is allowed it.
    async fn action(
        &self,
        request: Request<pb::RolloutActionRequest>,
        default_reason: &str,
    ) -> Result<(RolloutId, String, String), Status> {
        let caller = caller(request.extensions())?.clone();
        let req = request.into_inner();
        let id = rollout_id(req.id)?;
        let principal = audit_actor(&caller, &req.actor)?;
        self.visible(&caller, &id).await?;
        let reason = match req.reason.trim() {
            "" => default_reason.to_owned(),
            r => bounded(r.to_owned()),
        };
        Ok((id, principal, reason))
    }
}

fn action_set(action: &ScheduledAction) -> &str {
    match action {
        ScheduledAction::FlagChange { flag_set, .. } => flag_set,
        ScheduledAction::StartRollout { rollout } => &rollout.flag_set,
    }
}

fn rollout_id(id: String) -> Result<RolloutId, Status> {
    RolloutId::new(id).map_err(|e| bad_field("id", e.to_string()))
}

/// 0 means [`DEFAULT_LIST`]; above [`MAX_ROLLOUT_LIST`] or negative is refused.
fn list_limit(limit: i32) -> Result<usize, Status> {
    match usize::try_from(limit) {
        Ok(0) => Ok(DEFAULT_LIST),
        Ok(n) if n <= MAX_ROLLOUT_LIST => Ok(n),
        _ => Err(bad_field(
            "limit",
            format!("is {limit}; it must be 0 (the default, {DEFAULT_LIST}) to {MAX_ROLLOUT_LIST}"),
        )),
    }
}

/// A definition from the wire, its fields checked and named under `field`; the rules
/// (`RolloutSpec::new`) are checked by the controller, or here for a scheduled start.
fn definition(
    field: &str,
    def: Option<pb::RolloutDefinition>,
    caller: &Caller,
) -> Result<RolloutInput, Status> {
    let def = def.ok_or_else(|| bad_field(field, "is required: the rollout to create"))?;
    check_flag_set_id(&format!("{field}.flag_set_id"), &def.flag_set_id)?;
    check_flag_set(caller, &def.flag_set_id)?;
    check_flag_key(&format!("{field}.flag_key"), &def.flag_key)?;
    for (name, value) in [
        ("released_variant", &def.released_variant),
        ("baseline_variant", &def.baseline_variant),
    ] {
        if value.is_empty() {
            return Err(bad_field(
                &format!("{field}.{name}"),
                "is empty; name one of the flag's variants",
            ));
        }
    }
    let guardrails = def
        .guardrails
        .into_iter()
        .enumerate()
        .map(|(i, g)| guardrail(&format!("{field}.guardrails[{i}]"), g))
        .collect::<Result<Vec<_>, _>>()?;
    let input = RolloutInput {
        id: def.id,
        flag_set: def.flag_set_id,
        flag_key: def.flag_key,
        released: def.released_variant,
        baseline: def.baseline_variant,
        steps: def
            .steps
            .into_iter()
            .map(|s| StepInput {
                percent: s.percent,
                min_duration_secs: s.min_duration_seconds,
                min_users: s.min_users,
            })
            .collect(),
        guardrails,
        alpha: def.alpha.unwrap_or(DEFAULT_ALPHA),
    };
    // Checked here too, so a scheduled start is refused now rather than when it fires.
    RolloutSpec::new(input.clone()).map_err(|e| bad_field(field, e.to_string()))?;
    Ok(input)
}

fn guardrail(field: &str, g: pb::Guardrail) -> Result<Guardrail, Status> {
    let m = g
        .metric
        .ok_or_else(|| bad_field(&format!("{field}.metric"), "is required"))?;
    let name = MetricName::new(m.name)
        .map_err(|e| bad_field(&format!("{field}.metric.name"), e.to_string()))?;
    let kind = match pb::MetricKind::try_from(m.kind) {
        Ok(pb::MetricKind::Conversion) => MetricKind::Conversion,
        Ok(pb::MetricKind::Mean) => MetricKind::Mean,
        Ok(pb::MetricKind::Unspecified) | Err(_) => {
            return Err(bad_field(
                &format!("{field}.metric.kind"),
                format!(
                    "{} is not a metric kind: METRIC_KIND_CONVERSION or METRIC_KIND_MEAN",
                    m.kind
                ),
            ));
        }
    };
    let bad = match pb::BadDirection::try_from(g.bad) {
        Ok(pb::BadDirection::Decrease) => BadDirection::Decrease,
        Ok(pb::BadDirection::Increase) => BadDirection::Increase,
        Ok(pb::BadDirection::Unspecified) | Err(_) => {
            return Err(bad_field(
                &format!("{field}.bad"),
                format!(
                    "{} is not a direction: BAD_DIRECTION_DECREASE or BAD_DIRECTION_INCREASE",
                    g.bad
                ),
            ));
        }
    };
    Ok(Guardrail {
        metric: Metric {
            name,
            event: m.event,
            kind,
        },
        bad,
        tolerance: g.tolerance,
    })
}

/// A controller refusal as the status rollouts.proto gives it.
fn control_status(op: &'static str, error: ControlError) -> Status {
    let message = bounded(error.to_string());
    match error {
        ControlError::Definition(e) => bad_field("definition", e.to_string()),
        ControlError::Flag(_) | ControlError::Transition(_) => Status::failed_precondition(message),
        ControlError::Rollouts(e) => rollouts_status(op, e),
        ControlError::FlagStore(e) => store_status(op, e),
        ControlError::Counts(_) => {
            tracing::warn!(op, error = %message, "rollout guardrail counts failed");
            Status::unavailable(message)
        }
    }
}

fn rollouts_status(op: &'static str, error: RolloutStoreError) -> Status {
    let message = bounded(error.to_string());
    match error {
        RolloutStoreError::NotFound(_) | RolloutStoreError::ScheduleNotFound(_) => {
            Status::not_found(message)
        }
        RolloutStoreError::AlreadyExists(_) => Status::already_exists(message),
        RolloutStoreError::FlagBusy { .. } | RolloutStoreError::NotPending { .. } => {
            Status::failed_precondition(message)
        }
        RolloutStoreError::VersionConflict { .. } => {
            Status::failed_precondition(format!("{message}; re-read and retry"))
        }
        RolloutStoreError::Corrupt { .. } => {
            tracing::error!(op, error = %message, "stored rollout refused");
            Status::internal(message)
        }
        RolloutStoreError::Store(e) => store_status(op, e),
    }
}

fn wire_definition(spec: &RolloutSpec) -> pb::RolloutDefinition {
    wire_input(&spec.to_input())
}

fn wire_input(input: &RolloutInput) -> pb::RolloutDefinition {
    pb::RolloutDefinition {
        id: input.id.clone(),
        flag_set_id: input.flag_set.clone(),
        flag_key: input.flag_key.clone(),
        released_variant: input.released.clone(),
        baseline_variant: input.baseline.clone(),
        steps: input
            .steps
            .iter()
            .map(|s| pb::RampStep {
                percent: s.percent,
                min_duration_seconds: s.min_duration_secs,
                min_users: s.min_users,
            })
            .collect(),
        guardrails: input
            .guardrails
            .iter()
            .map(|g| pb::Guardrail {
                metric: Some(pb::Metric {
                    name: g.metric.name.to_string(),
                    event: g.metric.event.clone(),
                    kind: match g.metric.kind {
                        MetricKind::Conversion => pb::MetricKind::Conversion,
                        MetricKind::Mean => pb::MetricKind::Mean,
                    } as i32,
                }),
                bad: direction(g.bad) as i32,
                tolerance: g.tolerance,
            })
            .collect(),
        alpha: Some(input.alpha),
    }
}

fn direction(bad: BadDirection) -> pb::BadDirection {
    match bad {
        BadDirection::Decrease => pb::BadDirection::Decrease,
        BadDirection::Increase => pb::BadDirection::Increase,
    }
}

fn rollout(record: &RolloutRecord) -> pb::Rollout {
    let (state, pause_cause) = match &record.state {
        RolloutState::Running { .. } => (pb::RolloutState::Running, String::new()),
        RolloutState::Paused { cause, .. } => (
            pb::RolloutState::Paused,
            match cause {
                PauseCause::Requested => "requested".to_owned(),
                PauseCause::ManualEdit { audit_id } => format!("manual edit (audit {audit_id})"),
            },
        ),
        RolloutState::Completed { .. } => (pb::RolloutState::Completed, String::new()),
        RolloutState::RolledBack { .. } => (pb::RolloutState::RolledBack, String::new()),
        RolloutState::Aborted { .. } => (pb::RolloutState::Aborted, String::new()),
    };
    let step = match &record.state {
        RolloutState::Running { step, .. }
        | RolloutState::Paused { step, .. }
        | RolloutState::RolledBack { step, .. }
        | RolloutState::Aborted { step, .. } => u32::try_from(*step).ok(),
        RolloutState::Completed { .. } => None,
    };
    pb::Rollout {
        definition: Some(wire_definition(&record.spec)),
        state: state as i32,
        step,
        pause_cause,
        version: record.version,
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
    }
}

fn guardrail_status(look: &GuardrailLook) -> pb::GuardrailStatus {
    let (verdict, detail) = match &look.verdict {
        Verdict::Regressed => (pb::GuardrailVerdict::Regressed, String::new()),
        Verdict::Safe => (pb::GuardrailVerdict::Safe, String::new()),
        Verdict::Inconclusive => (pb::GuardrailVerdict::Inconclusive, String::new()),
        Verdict::NoEstimate(why) => (pb::GuardrailVerdict::NoEstimate, why.clone()),
    };
    pb::GuardrailStatus {
        metric: look.metric.to_string(),
        bad: direction(look.bad) as i32,
        tolerance: look.tolerance,
        estimate: look.estimate,
        lower: look.interval.map(|(l, _)| l),
        upper: look.interval.map(|(_, u)| u),
        verdict: verdict as i32,
        detail,
    }
}

fn status_response(status: RolloutStatus) -> pb::GetRolloutStatusResponse {
    let (next, next_detail) = match &status.next {
        Action::Hold { why } => (
            pb::NextAction::Hold,
            match why {
                Hold::NotRunning => format!("the rollout is {}", status.record.state.name()),
                Hold::Duration { remaining_ms } => {
                    format!(
                        "the step holds {} s more",
                        remaining_ms.saturating_add(999) / 1000
                    )
                }
                Hold::Users { seen, needed } => {
                    format!("{seen} of the step's {needed} users have seen the released variant")
                }
                Hold::UnknownStep { step } => {
                    format!("stored step {step} is not in the ramp: abort the rollout")
                }
            },
        ),
        Action::Advance { to } => (pb::NextAction::Advance, format!("to step {to}")),
        Action::RollBack { reason, .. } => (pb::NextAction::RollBack, reason.clone()),
        Action::Complete => (pb::NextAction::Complete, String::new()),
    };
    pb::GetRolloutStatusResponse {
        rollout: Some(rollout(&status.record)),
        guardrails: status.guardrails.iter().map(guardrail_status).collect(),
        released_users: status.released_users,
        next: next as i32,
        next_detail,
    }
}

fn scheduled(change: &ScheduledChange) -> pb::ScheduledChange {
    use pb::scheduled_change::Change;
    let (state, settled_at, cancelled_by) = match &change.state {
        ScheduleState::Pending => (pb::ScheduleState::Pending, None, String::new()),
        ScheduleState::Fired { at } => (
            pb::ScheduleState::Fired,
            Some(timestamp(*at)),
            String::new(),
        ),
        ScheduleState::Cancelled { at, by } => (
            pb::ScheduleState::Cancelled,
            Some(timestamp(*at)),
            by.clone(),
        ),
    };
    let action = match &change.action {
        ScheduledAction::FlagChange {
            flag_set,
            flag_key,
            definition,
        } => Change::FlagChange(pb::ScheduledFlagChange {
            flag_set_id: flag_set.clone(),
            flag_key: flag_key.clone(),
            definition: definition.to_string(),
        }),
        ScheduledAction::StartRollout { rollout } => Change::StartRollout(wire_input(rollout)),
    };
    pb::ScheduledChange {
        id: change.id,
        due_at: Some(timestamp(change.due_at)),
        change: Some(action),
        created_by: change.created_by.clone(),
        created_at: Some(timestamp(change.created_at)),
        state: state as i32,
        settled_at,
        cancelled_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::RolloutDefinition {
        pb::RolloutDefinition {
            id: "r1".into(),
            flag_set_id: "default".into(),
            flag_key: "banner".into(),
            released_variant: "on".into(),
            baseline_variant: "off".into(),
            steps: vec![
                pb::RampStep {
                    percent: 10,
                    min_duration_seconds: 60,
                    min_users: 100,
                },
                pb::RampStep {
                    percent: 100,
                    min_duration_seconds: 60,
                    min_users: 100,
                },
            ],
            guardrails: vec![pb::Guardrail {
                metric: Some(pb::Metric {
                    name: "signups".into(),
                    event: "signup".into(),
                    kind: pb::MetricKind::Conversion as i32,
                }),
                bad: pb::BadDirection::Decrease as i32,
                tolerance: 0.02,
            }],
            alpha: None,
        }
    }

    #[test]
    fn definitions_are_refused_naming_the_offending_field() {
        let accepted = definition("definition", Some(good()), &Caller::Anonymous).unwrap();
        assert_eq!(accepted.alpha, DEFAULT_ALPHA);
        assert_eq!(accepted.steps[0].percent, 10);
        assert_eq!(accepted.guardrails[0].bad, BadDirection::Decrease);
        type Edit = fn(&mut pb::RolloutDefinition);
        let cases: &[(&str, Edit, &str)] = &[
            ("bad id", |d| d.id = "a/b".into(), "rollout id \"a/b\""),
            (
                "no set",
                |d| d.flag_set_id.clear(),
                "definition.flag_set_id: is empty",
            ),
            (
                "no flag",
                |d| d.flag_key.clear(),
                "definition.flag_key: is empty",
            ),
            (
                "no released variant",
                |d| d.released_variant.clear(),
                "definition.released_variant: is empty",
            ),
            (
                "steps down",
                |d| d.steps[1].percent = 5,
                "step 1 is 5%, not above step 0's 10%",
            ),
            ("no 100%", |d| d.steps[1].percent = 50, "must end at 100%"),
            (
                "no direction",
                |d| d.guardrails[0].bad = 0,
                "definition.guardrails[0].bad: 0 is not a direction",
            ),
            (
                "no kind",
                |d| d.guardrails[0].metric.as_mut().unwrap().kind = 9,
                "definition.guardrails[0].metric.kind: 9 is not a metric kind",
            ),
            (
                "no metric",
                |d| d.guardrails[0].metric = None,
                "definition.guardrails[0].metric: is required",
            ),
            (
                "tolerance",
                |d| d.guardrails[0].tolerance = 2.0,
                "tolerates a regression of 2",
            ),
            ("alpha", |d| d.alpha = Some(0.9), "alpha 0.9"),
        ];
        for (name, edit, needle) in cases {
            let mut d = good();
            edit(&mut d);
            let status = definition("definition", Some(d), &Caller::Anonymous).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{name}");
            assert!(
                status.message().contains(needle),
                "{name}: {:?} lacks {needle:?}",
                status.message()
            );
        }
        let missing = definition("start_rollout", None, &Caller::Anonymous).unwrap_err();
        assert!(missing.message().starts_with("start_rollout: is required"));
    }

    #[test]
    fn list_limits_default_and_are_bounded() {
        assert_eq!(list_limit(0).unwrap(), DEFAULT_LIST);
        assert_eq!(list_limit(7).unwrap(), 7);
        assert_eq!(list_limit(1000).unwrap(), 1000);
        for bad in [-1, 1001, i32::MAX] {
            let status = list_limit(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(status.message().contains(&bad.to_string()), "{bad}");
        }
    }
}
