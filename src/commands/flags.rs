//! `bunting flags push FILE --set ID`: make a PostgreSQL-backed cluster's flag set match a flagd
//! flag file, through any node's `bunting.v1.Admin` API. Flags are created, updated (each with the
//! version it was read at, so a concurrent edit is refused rather than overwritten) or, with
//! `--prune`, deleted; identical ones are left alone. All of it is one `ApplyFlagChanges` batch:
//! one transaction and one new version of the set, refused whole if any write is. The file is
//! checked locally first, and the node validates every write again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use serde_json::{Map, Value};
use tonic::Code;

use crate::error::CliError;

#[derive(Debug)]
pub struct Push<'a> {
    pub file: &'a Path,
    pub set: &'a str,
    pub node: &'a str,
    pub actor: &'a str,
    pub prune: bool,
}

pub fn push(args: &Push<'_>) -> Result<ExitCode, CliError> {
    let document = read_document(args.file)?;
    let flags = document
        .get("flags")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{}: no \"flags\" object (the map form is required)",
                args.file.display()
            ))
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let mut admin = AdminClient::new(super::connect(args.node).await?);
        let rpc = |status: tonic::Status| {
            super::admin_client::rpc_error(args.node, &status, args.set)
        };
        let existing = match admin
            .list_flags(pb::ListFlagsRequest {
                flag_set_id: args.set.to_owned(),
            })
            .await
        {
            Ok(list) => Some(list.into_inner()),
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(rpc(status)),
        };
        let current: BTreeMap<String, pb::Flag> = existing
            .iter()
            .flat_map(|list| list.flags.iter())
            .map(|f| (f.key.clone(), f.clone()))
            .collect();
        let (changes, summary) = bunting_node::service::flag_history::plan(flags, &current, args.prune);
        let mut out = std::io::stdout().lock();
        let version = if changes.is_empty() && existing.is_some() {
            existing.as_ref().map_or(0, |l| l.flag_set_version)
        } else {
            // The whole file is one write: one transaction, one new version of the set, so no
            // node ever serves half of it; a missing set is created in the same write.
            let structure = |key: &str| {
                document
                    .get(key)
                    .and_then(Value::as_object)
                    .and_then(|m| bunting_proto::json::json_to_struct(m).ok())
            };
            admin
                .apply_flag_changes(pb::ApplyFlagChangesRequest {
                    flag_set_id: args.set.to_owned(),
                    changes,
                    expected_flag_set_version: 0,
                    create_flag_set: existing.is_none(),
                    metadata: structure("metadata"),
                    evaluators: structure("$evaluators"),
                    actor: args.actor.to_owned(),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .flag_set_version
        };
        writeln!(
            out,
            "flag set {}: {} created, {} updated, {} unchanged, {} deleted; now at version {version}",
            args.set, summary.created, summary.updated, summary.unchanged, summary.deleted
        )?;
        if !summary.kept.is_empty() {
            writeln!(
                out,
                "kept {} flag(s) that are not in the file (use --prune to delete them): {}",
                summary.kept.len(),
                summary.kept.join(", ")
            )?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The file as JSON, refused before anything is sent if the engine reports an error in it.
fn read_document(path: &Path) -> Result<Map<String, Value>, CliError> {
    let compiled = crate::flag_file::load(path, None, crate::cli::FractionalArg::String)?;
    let errors: Vec<String> = compiled
        .diagnostics
        .iter()
        .filter(|d| d.severity == bunting_engine::Severity::Error)
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(CliError::Usage(format!(
            "{} has {} problem(s); nothing was pushed:\n{}",
            path.display(),
            errors.len(),
            errors.join("\n")
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(CliError::Usage(format!(
            "{}: not a JSON object",
            path.display()
        ))),
    }
}
