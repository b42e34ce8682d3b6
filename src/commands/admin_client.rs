//! What the admin commands (`flags list|get|delete|history|rollback`, `audit`) share: a runtime
//! per command, node errors that say what to do next, and times and JSON printed for people.

use bunting_proto::bunting::v1 as pb;
use serde_json::Value;

use crate::error::CliError;

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// A node's error answer, naming the node, with the next step added for the answers a person can
/// act on: a missing set or flag, a stale version, a token without the scope.
pub(super) fn rpc_error(node: &str, status: &tonic::Status, set: &str) -> CliError {
    let hint = match status.code() {
        tonic::Code::NotFound => {
            format!(
                "; `bunting flags list` shows the sets, `bunting flags list --set {set}` its flags"
            )
        }
        tonic::Code::FailedPrecondition if status.message().contains("version") => {
            "; someone changed it meanwhile: run the command again to act on what is there now"
                .to_owned()
        }
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            "; pass a token with the scope the message names (--token or $BUNTING_TOKEN)".to_owned()
        }
        _ => String::new(),
    };
    let with_hint = tonic::Status::new(status.code(), format!("{}{hint}", status.message()));
    super::rpc_error(node, &with_hint)
}

/// A store time as `2026-12-07T22:01:08Z` (UTC, whole seconds).
pub(super) fn time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// JSON text from the node as a value; empty text (no before, no after) is `null`.
pub(super) fn json_text(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }
}

pub(super) fn action_name(action: i32) -> &'static str {
    match pb::AuditAction::try_from(action) {
        Ok(pb::AuditAction::Create) => "create",
        Ok(pb::AuditAction::Update) => "update",
        Ok(pb::AuditAction::Delete) => "delete",
        _ => "unknown",
    }
}

/// What an update changed, one top-level field at a time: `defaultVariant: "off" -> "on"` for a
/// scalar, `targeting changed` for anything larger. Empty for a create or a delete.
pub(super) fn change_summary(before: &Value, after: &Value) -> String {
    let (Some(before), Some(after)) = (before.as_object(), after.as_object()) else {
        return String::new();
    };
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let scalar = |v: &Value| !(v.is_object() || v.is_array());
    keys.into_iter()
        .filter_map(|key| {
            let (b, a) = (before.get(key), after.get(key));
            match (b, a) {
                _ if b == a => None,
                (Some(b), Some(a)) if scalar(b) && scalar(a) => Some(format!("{key}: {b} -> {a}")),
                (None, Some(_)) => Some(format!("{key} added")),
                (Some(_), None) => Some(format!("{key} removed")),
                _ => Some(format!("{key} changed")),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A list command's output: the items as a JSON array with `--json`, else `empty` when there
/// are none, else one `line` each.
pub fn listing<T>(
    items: &[T],
    json: bool,
    as_json: impl Fn(&T) -> serde_json::Value,
    empty: &str,
    line: impl Fn(&T) -> String,
) -> String {
    if json {
        let list: Vec<serde_json::Value> = items.iter().map(as_json).collect();
        format!("{:#}\n", serde_json::Value::Array(list))
    } else if items.is_empty() {
        format!("{empty}\n")
    } else {
        items.iter().map(|item| line(item) + "\n").collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_update_is_summarised_field_by_field() {
        let flag = |default: &str, targeting: Value| {
            json!({"state": "ENABLED", "variants": {"on": true, "off": false},
                   "defaultVariant": default, "targeting": targeting})
        };
        for (before, after, summary) in [
            (
                flag("off", json!({})),
                flag("on", json!({})),
                r#"defaultVariant: "off" -> "on""#,
            ),
            (
                flag("off", json!({})),
                flag("off", json!({"if": [true, "on", "off"]})),
                "targeting changed",
            ),
            (
                json!({"state": "ENABLED"}),
                json!({"state": "ENABLED", "metadata": {}}),
                "metadata added",
            ),
            (Value::Null, flag("on", json!({})), ""),
        ] {
            assert_eq!(change_summary(&before, &after), summary);
        }
    }
}
