//! A flag set's history as flags: the reconstruction `bunting flags rollback` and the console's
//! "roll back to this version" share, and the plan of writes that makes a set's flags a wanted
//! map (also `bunting flags push`'s). Pure functions over the Admin API's messages, so the CLI
//! (through gRPC) and the console (in process) reach the same batch.
//!
//! The store keeps no old versions, but its audit log holds every change with the flag's
//! definition after it and the set version it produced: replaying a set's entries up to N, in
//! commit order, rebuilds its flags at N.

use std::collections::BTreeMap;

use bunting_proto::bunting::v1 as pb;
use serde_json::{Map, Value};

/// The writes that make the set's flags `wanted`: creates, updates (each against the version it
/// was read at) and, with `prune`, deletes; identical flags are left alone.
pub fn plan(
    wanted: &Map<String, Value>,
    current: &BTreeMap<String, pb::Flag>,
    prune: bool,
) -> (Vec<pb::FlagChange>, Summary) {
    let mut summary = Summary::default();
    let mut changes = Vec::new();
    for (key, definition) in wanted {
        match current.get(key) {
            Some(flag) if same_definition(&flag.definition, definition) => summary.unchanged += 1,
            Some(flag) => {
                changes.push(pb::FlagChange {
                    kind: pb::FlagChangeKind::Update.into(),
                    key: key.clone(),
                    definition: definition.to_string(),
                    expected_version: flag.version,
                });
                summary.updated += 1;
            }
            None => {
                changes.push(pb::FlagChange {
                    kind: pb::FlagChangeKind::Create.into(),
                    key: key.clone(),
                    definition: definition.to_string(),
                    expected_version: 0,
                });
                summary.created += 1;
            }
        }
    }
    for (key, flag) in current {
        if wanted.contains_key(key) {
            continue;
        }
        if prune {
            changes.push(pb::FlagChange {
                kind: pb::FlagChangeKind::Delete.into(),
                key: key.clone(),
                definition: String::new(),
                expected_version: flag.version,
            });
            summary.deleted += 1;
        } else {
            summary.kept.push(key.clone());
        }
    }
    (changes, summary)
}

#[derive(Debug, Default)]
pub struct Summary {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub deleted: usize,
    pub kept: Vec<String>,
}

/// The set's flags after every entry at or below `version`, from its audit entries in commit
/// order (oldest first). A flag entry's `after` is the flag's whole definition; deleting the set
/// removes every flag, and (re)creating it starts empty.
pub fn flags_at(entries: &[pb::AuditEntry], version: i64) -> Result<Map<String, Value>, String> {
    let mut flags = Map::new();
    let mut exists = false;
    for entry in entries.iter().filter(|e| e.flag_set_version <= version) {
        let action = pb::AuditAction::try_from(entry.action).unwrap_or_default();
        match (entry.flag_key.as_str(), action) {
            ("", pb::AuditAction::Create) => {
                flags.clear();
                exists = true;
            }
            ("", pb::AuditAction::Delete) => {
                flags.clear();
                exists = false;
            }
            ("", _) => {}
            (key, pb::AuditAction::Create | pb::AuditAction::Update) => {
                match json_text(&entry.after_json) {
                    Value::Object(definition) => {
                        flags.insert(key.to_owned(), Value::Object(definition));
                    }
                    _ => {
                        return Err(format!(
                            "audit entry {} (flag {key}) holds no definition to restore",
                            entry.id
                        ));
                    }
                }
            }
            (key, pb::AuditAction::Delete) => {
                flags.remove(key);
            }
            (key, pb::AuditAction::Unspecified) => {
                return Err(format!(
                    "audit entry {} (flag {key}) has an action this command does not know; \
                     update bunting",
                    entry.id
                ));
            }
        }
    }
    if !exists {
        return Err(format!(
            "the set did not exist at version {version} (deleted, or its history starts later); \
             `bunting flags history` shows its versions"
        ));
    }
    Ok(flags)
}

/// An audit entry's JSON text as a value (empty: null).
fn json_text(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    }
}

/// Whether the stored definition (JSON text) is the file's, compared as JSON values so key order
/// and whitespace do not count as changes.
fn same_definition(stored: &str, wanted: &Value) -> bool {
    serde_json::from_str::<Value>(stored).is_ok_and(|s| &s == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(
        id: i64,
        version: i64,
        key: &str,
        action: pb::AuditAction,
        after: Value,
    ) -> pb::AuditEntry {
        pb::AuditEntry {
            id,
            flag_set_id: "web".into(),
            flag_key: key.into(),
            action: action.into(),
            after_json: if after.is_null() {
                String::new()
            } else {
                after.to_string()
            },
            flag_set_version: version,
            ..Default::default()
        }
    }

    #[test]
    fn the_log_replays_to_any_version() {
        use pb::AuditAction::{Create, Delete, Update};
        let f = |v: &str| json!({"state": "ENABLED", "variants": {"v": v}, "defaultVariant": "v"});
        let log = [
            entry(1, 1, "", Create, json!({"metadata": {}, "$evaluators": {}})),
            entry(2, 2, "a", Create, f("a1")),
            entry(3, 2, "b", Create, f("b1")),
            entry(4, 3, "a", Update, f("a2")),
            entry(5, 4, "b", Delete, Value::Null),
            entry(
                6,
                5,
                "",
                Update,
                json!({"metadata": {"x": 1}, "$evaluators": {}}),
            ),
            entry(7, 6, "", Delete, Value::Null),
            entry(8, 7, "", Create, json!({"metadata": {}, "$evaluators": {}})),
            entry(9, 7, "c", Create, f("c1")),
        ];
        for (version, flags) in [
            (1, json!({})),
            (2, json!({"a": f("a1"), "b": f("b1")})),
            (3, json!({"a": f("a2"), "b": f("b1")})),
            (4, json!({"a": f("a2")})),
            (5, json!({"a": f("a2")})),
            (7, json!({"c": f("c1")})),
        ] {
            assert_eq!(
                Value::Object(flags_at(&log, version).unwrap()),
                flags,
                "version {version}"
            );
        }
        let gone = flags_at(&log, 6).unwrap_err();
        assert!(gone.contains("did not exist at version 6"), "{gone}");
    }

    #[test]
    fn definitions_compare_as_json() {
        let wanted: Value = serde_json::json!({"state": "ENABLED", "variants": {"a": 1}});
        assert!(same_definition(
            r#"{"variants":{"a":1},"state":"ENABLED"}"#,
            &wanted
        ));
        assert!(!same_definition(
            r#"{"variants":{"a":2},"state":"ENABLED"}"#,
            &wanted
        ));
        assert!(!same_definition("not json", &wanted));
    }
}
