//! `bunting flags rollback --set S --to-version N`: the set's flags as they were at version N,
//! restored as one `ApplyFlagChanges` batch (one new version, audited like any other write).
//!
//! The reconstruction from the audit log is `bunting_node::service::flag_history`'s, shared with
//! the console's "roll back to this version". The batch is guarded by the set version read before the
//! log, so a change that lands meanwhile refuses the rollback instead of being undone unseen.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use bunting_node::service::flag_history;
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;

use super::admin_client::{rpc_error, runtime};
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
        let target = flag_history::flags_at(&entries, args.to_version).map_err(CliError::Usage)?;
        let flags: BTreeMap<String, pb::Flag> = current
            .flags
            .iter()
            .map(|f| (f.key.clone(), f.clone()))
            .collect();
        let (changes, summary) = flag_history::plan(&target, &flags, true);
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
