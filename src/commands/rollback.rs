//! `bunting flags rollback --set S --to-version N`: the set's flags as they were at version N,
//! restored as one `ApplyFlagChanges` batch (one new version, audited like any other write).
//!
//! The store keeps no old versions, but its audit log holds every change with the flag's
//! definition after it and the set version it produced: replaying a set's entries up to N, in
//! commit order, rebuilds its flags at N. The batch is guarded by the set version read before the
//! log, so a change that lands meanwhile refuses the rollback instead of being undone unseen.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use serde_json::{Map, Value};

use super::admin_client::{json_text, rpc_error, runtime};
use super::audit::{self, Query};
use crate::error::CliError;

#[derive(Debug)]
pub struct Rollback<'a> {
    pub node: &'a str,
    pub set: &'a str,
    pub to_version: i64,
    pub actor: &'a str,
    pub dry_run: bool,
}

pub fn run(args: &Rollback<'_>) -> Result<ExitCode, CliError> {
    let (node, set) = (args.node, args.set);
    runtime()?.block_on(async {
        let mut admin = AdminClient::new(super::connect(node).await?);
        let current = super::flags_read::list_flags(&mut admin, node, set).await?;
        if args.to_version < 1 || args.to_version > current.flag_set_version {
            return Err(CliError::Usage(format!(
                "--to-version {}: flag set {set} has versions 1 to {}; `bunting flags history \
                 --set {set}` shows what each changed",
                args.to_version, current.flag_set_version
            )));
        }
        let query = Query {
            node,
            set: Some(set),
            key: None,
            limit: 1000,
            before: None,
            all: true,
            json: false,
            again: String::new(),
        };
        let (mut entries, _) = audit::read(&mut admin, &query).await?;
        entries.reverse();
        let target = flags_at(&entries, args.to_version).map_err(CliError::Usage)?;
        let flags: BTreeMap<String, pb::Flag> = current
            .flags
            .iter()
            .map(|f| (f.key.clone(), f.clone()))
            .collect();
        let (changes, summary) = super::flags::plan(&target, &flags, true);
        let mut out = std::io::stdout().lock();
        let counts = format!(
            "{} created, {} updated, {} deleted",
            summary.created, summary.updated, summary.deleted
        );
        if changes.is_empty() {
            writeln!(
                out,
                "flag set {set} at version {} already has the flags of version {}; nothing changed",
                current.flag_set_version, args.to_version
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        if args.dry_run {
            writeln!(
                out,
                "would restore flag set {set} to the flags of version {}: {counts} (dry run, \
                 nothing changed)",
                args.to_version
            )?;
            for change in &changes {
                let kind = pb::FlagChangeKind::try_from(change.kind).map_or("?", |k| {
                    k.as_str_name().trim_start_matches("FLAG_CHANGE_KIND_")
                });
                writeln!(out, "  {:<6}  {}", kind.to_lowercase(), change.key)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        let applied = admin
            .apply_flag_changes(pb::ApplyFlagChangesRequest {
                flag_set_id: set.to_owned(),
                changes,
                expected_flag_set_version: current.flag_set_version,
                actor: args.actor.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|s| rpc_error(node, &s, set))?
            .into_inner();
        writeln!(
            out,
            "restored flag set {set} to the flags of version {}: {counts}; now at version {}",
            args.to_version, applied.flag_set_version
        )?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The set's flags after every entry at or below `version`, from its audit entries in commit
/// order (oldest first). A flag entry's `after` is the flag's whole definition; deleting the set
/// removes every flag, and (re)creating it starts empty.
fn flags_at(entries: &[pb::AuditEntry], version: i64) -> Result<Map<String, Value>, String> {
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
}
