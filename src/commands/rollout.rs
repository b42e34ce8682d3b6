//! `bunting rollout create|status|list|pause|resume|abort`: the Rollouts RPCs of any node, printed
//! for operators (a line per rollout, a table of guardrails) or, with `--json`, as JSON.

use std::fmt::Write as _;
use std::io::Write;
use std::process::ExitCode;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::rollouts_client::RolloutsClient;
use serde_json::{Value, json};

use super::admin_client::{listing, runtime, time};
use crate::cli::RolloutAction;
use crate::error::CliError;

pub fn run(node: &str, action: RolloutAction) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async {
        let mut client = RolloutsClient::new(super::connect(node).await?);
        let rpc = |status: tonic::Status| super::rpc_error(node, &status);
        let text = match action {
            RolloutAction::Create {
                id,
                flag,
                set,
                release,
                baseline,
                steps,
                guardrails,
                alpha,
                at,
                actor,
            } => {
                let definition = pb::RolloutDefinition {
                    id,
                    flag_set_id: set,
                    flag_key: flag,
                    released_variant: release,
                    baseline_variant: baseline,
                    steps: steps
                        .iter()
                        .map(|s| parse_step(s))
                        .collect::<Result<_, _>>()?,
                    guardrails: guardrails
                        .iter()
                        .map(|g| parse_guardrail(g))
                        .collect::<Result<_, _>>()?,
                    alpha: Some(alpha),
                };
                match at {
                    Some(at) => {
                        let due_at = super::schedule::parse_time(&at, chrono::Utc::now())?;
                        let change = client
                            .schedule_change(pb::ScheduleChangeRequest {
                                due_at: Some(due_at),
                                change: Some(pb::schedule_change_request::Change::StartRollout(
                                    definition,
                                )),
                                actor,
                            })
                            .await
                            .map_err(rpc)?
                            .into_inner()
                            .change
                            .unwrap_or_default();
                        format!(
                            "scheduled change {}: start rollout at {}\n",
                            change.id,
                            time(change.due_at.as_ref())
                        )
                    }
                    None => {
                        let r = client
                            .create_rollout(pb::CreateRolloutRequest {
                                definition: Some(definition),
                                actor,
                            })
                            .await
                            .map_err(rpc)?
                            .into_inner()
                            .rollout
                            .unwrap_or_default();
                        format!("created {}\n", summary(&r))
                    }
                }
            }
            RolloutAction::Status { id, json } => {
                let status = client
                    .get_rollout_status(pb::GetRolloutStatusRequest { id })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                if json {
                    format!("{:#}\n", status_json(&status))
                } else {
                    status_text(&status)
                }
            }
            RolloutAction::List { active, json } => {
                let rollouts = client
                    .list_rollouts(pb::ListRolloutsRequest {
                        active_only: active,
                        limit: 1000,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner()
                    .rollouts;
                listing(&rollouts, json, rollout_json, "no rollouts", summary)
            }
            RolloutAction::Pause { id, reason, actor } => {
                let r = client
                    .pause_rollout(pb::RolloutActionRequest { id, reason, actor })
                    .await
                    .map_err(rpc)?
                    .into_inner()
                    .rollout
                    .unwrap_or_default();
                format!("paused {}\n", summary(&r))
            }
            RolloutAction::Resume { id, reason, actor } => {
                let r = client
                    .resume_rollout(pb::RolloutActionRequest { id, reason, actor })
                    .await
                    .map_err(rpc)?
                    .into_inner()
                    .rollout
                    .unwrap_or_default();
                format!("resumed {}\n", summary(&r))
            }
            RolloutAction::Abort { id, reason, actor } => {
                let r = client
                    .abort_rollout(pb::RolloutActionRequest { id, reason, actor })
                    .await
                    .map_err(rpc)?
                    .into_inner()
                    .rollout
                    .unwrap_or_default();
                format!(
                    "aborted {}; the flag is as it was before the rollout\n",
                    summary(&r)
                )
            }
        };
        std::io::stdout().lock().write_all(text.as_bytes())?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `PERCENT:MIN_SECONDS:MIN_USERS` → a ramp step (the node checks the ramp as a whole).
fn parse_step(text: &str) -> Result<pb::RampStep, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--step {text:?}: expected PERCENT:MIN_SECONDS:MIN_USERS, e.g. 5:600:500"
        ))
    };
    let parts: Vec<&str> = text.split(':').collect();
    let [percent, seconds, users] = parts.as_slice() else {
        return Err(bad());
    };
    Ok(pb::RampStep {
        percent: percent.trim().parse().map_err(|_| bad())?,
        min_duration_seconds: seconds.trim().parse().map_err(|_| bad())?,
        min_users: users.trim().parse().map_err(|_| bad())?,
    })
}

/// `NAME:EVENT:KIND:BAD:TOLERANCE` → a guardrail.
fn parse_guardrail(text: &str) -> Result<pb::Guardrail, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--guardrail {text:?}: expected NAME:EVENT:KIND:BAD:TOLERANCE with KIND conversion \
             or mean, BAD decrease or increase, e.g. checkout:purchase:conversion:decrease:0.02"
        ))
    };
    let parts: Vec<&str> = text.split(':').collect();
    let [name, event, kind, direction, tolerance] = parts.as_slice() else {
        return Err(bad());
    };
    let kind = match *kind {
        "conversion" => pb::MetricKind::Conversion,
        "mean" => pb::MetricKind::Mean,
        _ => return Err(bad()),
    };
    let direction = match *direction {
        "decrease" => pb::BadDirection::Decrease,
        "increase" => pb::BadDirection::Increase,
        _ => return Err(bad()),
    };
    Ok(pb::Guardrail {
        metric: Some(pb::Metric {
            name: (*name).to_owned(),
            event: (*event).to_owned(),
            kind: kind.into(),
        }),
        bad: direction.into(),
        tolerance: tolerance.trim().parse().map_err(|_| bad())?,
    })
}

fn state_name(state: i32) -> &'static str {
    match pb::RolloutState::try_from(state) {
        Ok(pb::RolloutState::Running) => "running",
        Ok(pb::RolloutState::Paused) => "paused",
        Ok(pb::RolloutState::Completed) => "completed",
        Ok(pb::RolloutState::RolledBack) => "rolled back",
        Ok(pb::RolloutState::Aborted) => "aborted",
        _ => "unknown",
    }
}

/// `rollout r1 on default/f: running at step 1 of 3 (25%)`.
fn summary(r: &pb::Rollout) -> String {
    let def = r.definition.clone().unwrap_or_default();
    let mut line = format!(
        "rollout {} on {}/{}: {}",
        def.id,
        def.flag_set_id,
        def.flag_key,
        state_name(r.state)
    );
    if let Some(step) = r.step {
        let percent = usize::try_from(step)
            .ok()
            .and_then(|i| def.steps.get(i))
            .map_or(0, |s| s.percent);
        let _ = write!(
            line,
            " at step {} of {} ({percent}% get {:?})",
            step + 1,
            def.steps.len(),
            def.released_variant
        );
    }
    if !r.pause_cause.is_empty() {
        let _ = write!(line, ", paused: {}", r.pause_cause);
    }
    line
}

fn verdict_name(verdict: i32) -> &'static str {
    match pb::GuardrailVerdict::try_from(verdict) {
        Ok(pb::GuardrailVerdict::Regressed) => "REGRESSED",
        Ok(pb::GuardrailVerdict::Safe) => "safe",
        Ok(pb::GuardrailVerdict::Inconclusive) => "inconclusive",
        Ok(pb::GuardrailVerdict::NoEstimate) => "no estimate",
        _ => "unknown",
    }
}

fn direction_name(bad: i32) -> &'static str {
    match pb::BadDirection::try_from(bad) {
        Ok(pb::BadDirection::Decrease) => "decrease",
        Ok(pb::BadDirection::Increase) => "increase",
        _ => "unknown",
    }
}

fn next_name(next: i32) -> &'static str {
    match pb::NextAction::try_from(next) {
        Ok(pb::NextAction::Hold) => "hold",
        Ok(pb::NextAction::Advance) => "advance",
        Ok(pb::NextAction::RollBack) => "roll back",
        Ok(pb::NextAction::Complete) => "complete",
        _ => "unknown",
    }
}

fn percent(x: f64) -> String {
    format!("{:+.1}%", x * 100.0)
}

fn status_text(s: &pb::GetRolloutStatusResponse) -> String {
    let r = s.rollout.clone().unwrap_or_default();
    let def = r.definition.clone().unwrap_or_default();
    let mut out = format!("{}\n", summary(&r));
    let _ = writeln!(
        out,
        "released {:?} against baseline {:?}; {} users have seen {:?}",
        def.released_variant, def.baseline_variant, s.released_users, def.released_variant
    );
    if !s.guardrails.is_empty() {
        let _ = writeln!(
            out,
            "{:<16} {:<9} {:>9} {:>9} {:>19}  verdict",
            "guardrail", "bad", "tolerance", "estimate", "interval"
        );
        for g in &s.guardrails {
            let estimate = g.estimate.map_or_else(|| "-".to_owned(), percent);
            let interval = match (g.lower, g.upper) {
                (Some(l), Some(u)) => format!("[{}, {}]", percent(l), percent(u)),
                _ => "-".to_owned(),
            };
            let mut verdict = verdict_name(g.verdict).to_owned();
            if !g.detail.is_empty() {
                let _ = write!(verdict, " ({})", g.detail);
            }
            let _ = writeln!(
                out,
                "{:<16} {:<9} {:>9} {:>9} {:>19}  {verdict}",
                g.metric,
                direction_name(g.bad),
                format!("{:.1}%", g.tolerance * 100.0),
                estimate,
                interval,
            );
        }
    }
    let _ = write!(out, "next: {}", next_name(s.next));
    if !s.next_detail.is_empty() {
        let _ = write!(out, " ({})", s.next_detail);
    }
    out.push('\n');
    out
}

pub(super) fn definition_json(d: &pb::RolloutDefinition) -> Value {
    json!({
        "id": d.id,
        "flag_set_id": d.flag_set_id,
        "flag_key": d.flag_key,
        "released_variant": d.released_variant,
        "baseline_variant": d.baseline_variant,
        "steps": d.steps.iter().map(|s| json!({
            "percent": s.percent,
            "min_duration_seconds": s.min_duration_seconds,
            "min_users": s.min_users,
        })).collect::<Vec<_>>(),
        "guardrails": d.guardrails.iter().map(|g| {
            let m = g.metric.clone().unwrap_or_default();
            json!({
                "metric": m.name,
                "event": m.event,
                "kind": pb::MetricKind::try_from(m.kind)
                    .map_or("METRIC_KIND_UNSPECIFIED", |k| k.as_str_name()),
                "bad": direction_name(g.bad),
                "tolerance": g.tolerance,
            })
        }).collect::<Vec<_>>(),
        "alpha": d.alpha,
    })
}

fn rollout_json(r: &pb::Rollout) -> Value {
    json!({
        "definition": r.definition.as_ref().map(definition_json),
        "state": state_name(r.state),
        "step": r.step,
        "pause_cause": r.pause_cause,
        "version": r.version,
        "created_at": time(r.created_at.as_ref()),
        "updated_at": time(r.updated_at.as_ref()),
    })
}

fn status_json(s: &pb::GetRolloutStatusResponse) -> Value {
    json!({
        "rollout": s.rollout.as_ref().map(rollout_json),
        "guardrails": s.guardrails.iter().map(|g| json!({
            "metric": g.metric,
            "bad": direction_name(g.bad),
            "tolerance": g.tolerance,
            "estimate": g.estimate,
            "lower": g.lower,
            "upper": g.upper,
            "verdict": verdict_name(g.verdict),
            "detail": g.detail,
        })).collect::<Vec<_>>(),
        "released_users": s.released_users,
        "next": next_name(s.next),
        "next_detail": s.next_detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_guardrails_parse_or_name_the_bad_argument() {
        let step = parse_step("5:600:500").unwrap();
        assert_eq!(
            (step.percent, step.min_duration_seconds, step.min_users),
            (5, 600, 500)
        );
        for bad in ["5:600", "x:1:1", "5:1:1:1", ""] {
            let err = parse_step(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        let g = parse_guardrail("checkout:purchase:conversion:decrease:0.02").unwrap();
        assert_eq!(g.bad, pb::BadDirection::Decrease as i32);
        assert_eq!(g.tolerance, 0.02);
        assert_eq!(g.metric.unwrap().kind, pb::MetricKind::Conversion as i32);
        for bad in [
            "checkout:purchase:conversion:down:0.02",
            "checkout:purchase:sum:decrease:0.02",
            "checkout:purchase:conversion:decrease",
            "checkout:purchase:conversion:decrease:x",
        ] {
            let err = parse_guardrail(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
