//! `bunting schedule add|list|cancel`: scheduled changes through any node's Rollouts API. The
//! cluster's rollout controller fires each pending change once, at its time.

use std::io::Write;
use std::process::ExitCode;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::rollouts_client::RolloutsClient;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::admin_client::{json_text, listing, runtime, time};
use crate::cli::ScheduleAction;
use crate::error::CliError;

/// The furthest a relative time (`+N[smhd]`) may reach: ten years.
const MAX_RELATIVE_SECONDS: i64 = 10 * 366 * 24 * 3600;

pub fn run(node: &str, action: ScheduleAction) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async {
        let mut client = RolloutsClient::new(super::connect(node).await?);
        let rpc = |status: tonic::Status| super::rpc_error(node, &status);
        let text = match action {
            ScheduleAction::Add {
                at,
                flag,
                set,
                definition,
                actor,
            } => {
                let due_at = parse_time(&at, Utc::now())?;
                let change = client
                    .schedule_change(pb::ScheduleChangeRequest {
                        due_at: Some(due_at),
                        change: Some(pb::schedule_change_request::Change::FlagChange(
                            pb::ScheduledFlagChange {
                                flag_set_id: set,
                                flag_key: flag,
                                definition,
                            },
                        )),
                        actor,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner()
                    .change
                    .unwrap_or_default();
                format!("scheduled {}\n", line(&change))
            }
            ScheduleAction::List { all, json } => {
                let changes = client
                    .list_scheduled(pb::ListScheduledRequest {
                        pending_only: !all,
                        limit: 1000,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner()
                    .changes;
                listing(&changes, json, change_json, "no scheduled changes", line)
            }
            ScheduleAction::Cancel { id, actor } => {
                let change = client
                    .cancel_scheduled(pb::CancelScheduledRequest { id, actor })
                    .await
                    .map_err(rpc)?
                    .into_inner()
                    .change
                    .unwrap_or_default();
                format!("cancelled {}\n", line(&change))
            }
        };
        std::io::stdout().lock().write_all(text.as_bytes())?;
        Ok(ExitCode::SUCCESS)
    })
}

/// An RFC 3339 time, or `+N` followed by s, m, h or d: that long after `now`.
pub(super) fn parse_time(
    text: &str,
    now: DateTime<Utc>,
) -> Result<prost_types::Timestamp, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--at {text:?}: expected an RFC 3339 time (2030-01-01T09:00:00Z) or +N with s, m, h \
             or d (+90s, +2h)"
        ))
    };
    let at = match text.strip_prefix('+') {
        Some(relative) => {
            let (number, unit) = relative.split_at(relative.len().saturating_sub(1));
            let n: i64 = number.parse().map_err(|_| bad())?;
            let per = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return Err(bad()),
            };
            let seconds = n
                .checked_mul(per)
                .filter(|s| (0..=MAX_RELATIVE_SECONDS).contains(s));
            now + chrono::Duration::seconds(seconds.ok_or_else(bad)?)
        }
        None => DateTime::parse_from_rfc3339(text)
            .map_err(|_| bad())?
            .with_timezone(&Utc),
    };
    Ok(prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    })
}

fn state_name(state: i32) -> &'static str {
    match pb::ScheduleState::try_from(state) {
        Ok(pb::ScheduleState::Pending) => "pending",
        Ok(pb::ScheduleState::Fired) => "fired",
        Ok(pb::ScheduleState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// `change 3 at 2030-01-01T09:00:00Z (pending): write flag default/f`.
fn line(c: &pb::ScheduledChange) -> String {
    use pb::scheduled_change::Change;
    let what = match &c.change {
        Some(Change::FlagChange(f)) => format!("write flag {}/{}", f.flag_set_id, f.flag_key),
        Some(Change::StartRollout(r)) => {
            format!("start rollout {} on {}/{}", r.id, r.flag_set_id, r.flag_key)
        }
        None => "nothing".to_owned(),
    };
    format!(
        "change {} at {} ({}): {what}",
        c.id,
        time(c.due_at.as_ref()),
        state_name(c.state)
    )
}

fn change_json(c: &pb::ScheduledChange) -> Value {
    use pb::scheduled_change::Change;
    let change = match &c.change {
        Some(Change::FlagChange(f)) => json!({
            "flag_change": {
                "flag_set_id": f.flag_set_id,
                "flag_key": f.flag_key,
                "definition": json_text(&f.definition),
            }
        }),
        Some(Change::StartRollout(r)) => {
            json!({ "start_rollout": super::rollout::definition_json(r) })
        }
        None => Value::Null,
    };
    json!({
        "id": c.id,
        "due_at": time(c.due_at.as_ref()),
        "change": change,
        "created_by": c.created_by,
        "created_at": time(c.created_at.as_ref()),
        "state": state_name(c.state),
        "settled_at": c.settled_at.as_ref().map(|t| time(Some(t))),
        "cancelled_by": c.cancelled_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_absolute_or_relative_and_bad_ones_are_named() {
        let now = DateTime::parse_from_rfc3339("2026-12-08T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |t: &str| parse_time(t, now).map(|ts| ts.seconds - now.timestamp());
        assert_eq!(at("+90s").unwrap(), 90);
        assert_eq!(at("+2m").unwrap(), 120);
        assert_eq!(at("+1h").unwrap(), 3600);
        assert_eq!(at("+1d").unwrap(), 86_400);
        assert_eq!(at("2026-12-08T03:00:00Z").unwrap(), 3600);
        for bad in ["+", "+5", "+5w", "+-5s", "+99999999999d", "tomorrow", ""] {
            let err = parse_time(bad, now).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
