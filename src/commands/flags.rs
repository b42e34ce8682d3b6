//! `bunting flags push FILE --set ID`: make a PostgreSQL-backed cluster's flag set match a flagd
//! flag file, through any node's `bunting.v1.Admin` API. Flags are created, updated (each with the
//! version it was read at, so a concurrent edit is refused rather than overwritten) or, with
//! `--prune`, deleted; identical ones are left alone. The file is checked locally first, and the
//! node validates every write again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use bunting_node::auth::client::AuthChannel as Channel;
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
        let rpc = |status: tonic::Status| super::rpc_error(args.node, &status);
        ensure_set(&mut admin, args, &document).await.map_err(rpc)?;
        let existing: BTreeMap<String, pb::Flag> = admin
            .list_flags(pb::ListFlagsRequest {
                flag_set_id: args.set.to_owned(),
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .flags
            .into_iter()
            .map(|f| (f.key.clone(), f))
            .collect();
        let mut summary = Summary::default();
        for (key, definition) in flags {
            match existing.get(key) {
                Some(current) if same_definition(&current.definition, definition) => {
                    summary.unchanged += 1;
                }
                Some(current) => {
                    admin
                        .update_flag(pb::UpdateFlagRequest {
                            flag_set_id: args.set.to_owned(),
                            key: key.clone(),
                            definition: definition.to_string(),
                            expected_version: current.version,
                            actor: args.actor.to_owned(),
                        })
                        .await
                        .map_err(|s| super::rpc_error(args.node, &s.with_context(key)))?;
                    summary.updated += 1;
                }
                None => {
                    admin
                        .create_flag(pb::CreateFlagRequest {
                            flag_set_id: args.set.to_owned(),
                            key: key.clone(),
                            definition: definition.to_string(),
                            expected_flag_set_version: 0,
                            actor: args.actor.to_owned(),
                        })
                        .await
                        .map_err(|s| super::rpc_error(args.node, &s.with_context(key)))?;
                    summary.created += 1;
                }
            }
        }
        for (key, current) in &existing {
            if flags.contains_key(key) {
                continue;
            }
            if args.prune {
                admin
                    .delete_flag(pb::DeleteFlagRequest {
                        flag_set_id: args.set.to_owned(),
                        key: key.clone(),
                        expected_version: current.version,
                        actor: args.actor.to_owned(),
                    })
                    .await
                    .map_err(|s| super::rpc_error(args.node, &s.with_context(key)))?;
                summary.deleted += 1;
            } else {
                summary.kept.push(key.clone());
            }
        }
        let version = admin
            .get_flag_set(pb::GetFlagSetRequest {
                id: args.set.to_owned(),
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .flag_set
            .map_or(0, |s| s.version);
        let mut out = std::io::stdout().lock();
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

#[derive(Debug, Default)]
struct Summary {
    created: usize,
    updated: usize,
    unchanged: usize,
    deleted: usize,
    kept: Vec<String>,
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

/// Creates the set (with the file's metadata and `$evaluators`) when the node has none by that id.
async fn ensure_set(
    admin: &mut AdminClient<Channel>,
    args: &Push<'_>,
    document: &Map<String, Value>,
) -> Result<(), tonic::Status> {
    let exists = admin
        .get_flag_set(pb::GetFlagSetRequest {
            id: args.set.to_owned(),
        })
        .await;
    match exists {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::NotFound => {
            let structure = |key: &str| {
                document
                    .get(key)
                    .and_then(Value::as_object)
                    .and_then(|m| bunting_proto::json::json_to_struct(m).ok())
            };
            admin
                .create_flag_set(pb::CreateFlagSetRequest {
                    id: args.set.to_owned(),
                    metadata: structure("metadata"),
                    evaluators: structure("$evaluators"),
                    actor: args.actor.to_owned(),
                })
                .await
                .map(|_| ())
        }
        Err(status) => Err(status),
    }
}

/// Whether the stored definition (JSON text) is the file's, compared as JSON values so key order
/// and whitespace do not count as changes.
fn same_definition(stored: &str, wanted: &Value) -> bool {
    serde_json::from_str::<Value>(stored).is_ok_and(|s| &s == wanted)
}

trait WithContext {
    fn with_context(self, key: &str) -> tonic::Status;
}

impl WithContext for tonic::Status {
    /// Names the flag a refused write was for.
    fn with_context(self, key: &str) -> tonic::Status {
        tonic::Status::new(self.code(), format!("flag {key}: {}", self.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
