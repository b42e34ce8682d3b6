//! `bunting flags list|get|delete`: a PostgreSQL-backed node's flag sets and flags, read (and one
//! flag deleted) through its `bunting.v1.Admin` API.

use std::io::Write;
use std::process::ExitCode;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use serde_json::{Value, json};

use super::admin_client::{json_text, rpc_error, runtime, time};
use crate::error::CliError;

/// Every set with its version and flag count, or one set's flags.
pub fn list(node: &str, set: Option<&str>, as_json: bool) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async {
        let mut admin = AdminClient::new(super::connect(node).await?);
        let mut out = std::io::stdout().lock();
        let Some(set) = set else {
            let sets = admin
                .list_flag_sets(pb::ListFlagSetsRequest {})
                .await
                .map_err(|s| rpc_error(node, &s, ""))?
                .into_inner()
                .flag_sets;
            let mut rows = Vec::with_capacity(sets.len());
            for s in sets {
                // A set deleted between the two reads just drops out of the list.
                let flags = match list_flags(&mut admin, node, &s.id).await {
                    Ok(list) => list.flags.len(),
                    Err(_) => continue,
                };
                rows.push((s.id, s.version, flags));
            }
            if as_json {
                let sets: Vec<Value> = rows
                    .iter()
                    .map(|(id, version, flags)| json!({"id": id, "version": version, "flags": flags}))
                    .collect();
                writeln!(out, "{:#}", Value::Array(sets))?;
            } else if rows.is_empty() {
                writeln!(out, "no flag sets; `bunting flags push FILE --set ID` creates one")?;
            } else {
                writeln!(out, "{:<24}  {:>7}  {:>6}", "SET", "VERSION", "FLAGS")?;
                for (id, version, flags) in rows {
                    writeln!(out, "{id:<24}  {version:>7}  {flags:>6}")?;
                }
            }
            return Ok(ExitCode::SUCCESS);
        };
        let list = list_flags(&mut admin, node, set).await?;
        if as_json {
            let flags: Vec<Value> = list.flags.iter().map(flag_json).collect();
            writeln!(
                out,
                "{:#}",
                json!({"flagSetId": set, "version": list.flag_set_version, "flags": flags})
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        writeln!(out, "flag set {set} at version {}", list.flag_set_version)?;
        if list.flags.is_empty() {
            writeln!(out, "no flags")?;
            return Ok(ExitCode::SUCCESS);
        }
        writeln!(
            out,
            "{:<32}  {:>7}  {:<8}  {:<16}  UPDATED",
            "KEY", "VERSION", "STATE", "DEFAULT"
        )?;
        for flag in &list.flags {
            let definition = json_text(&flag.definition);
            let field = |name: &str| match definition.get(name) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "-".to_owned(),
                Some(other) => other.to_string(),
            };
            writeln!(
                out,
                "{:<32}  {:>7}  {:<8}  {:<16}  {}",
                flag.key,
                flag.version,
                field("state"),
                field("defaultVariant"),
                time(flag.updated_at.as_ref())
            )?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One flag's definition, as `push` takes it; with `as_json`, its whole record.
pub fn get(node: &str, set: &str, key: &str, as_json: bool) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async {
        let mut admin = AdminClient::new(super::connect(node).await?);
        let flag = find(&mut admin, node, set, key).await?;
        let mut out = std::io::stdout().lock();
        if as_json {
            writeln!(out, "{:#}", flag_json(&flag))?;
        } else {
            writeln!(out, "{:#}", json_text(&flag.definition))?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Deletes one flag at the version just read.
pub fn delete(node: &str, set: &str, key: &str, actor: &str) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async {
        let mut admin = AdminClient::new(super::connect(node).await?);
        let flag = find(&mut admin, node, set, key).await?;
        let version = admin
            .delete_flag(pb::DeleteFlagRequest {
                flag_set_id: set.to_owned(),
                key: key.to_owned(),
                expected_version: flag.version,
                actor: actor.to_owned(),
            })
            .await
            .map_err(|s| rpc_error(node, &s, set))?
            .into_inner()
            .flag_set_version;
        writeln!(
            std::io::stdout().lock(),
            "deleted flag {key} (version {}) from flag set {set}; the set is now at version \
             {version} (`bunting flags rollback --set {set} --to-version {}` brings it back)",
            flag.version,
            version - 1
        )?;
        Ok(ExitCode::SUCCESS)
    })
}

pub(super) async fn list_flags(
    admin: &mut AdminClient<bunting_node::auth::client::AuthChannel>,
    node: &str,
    set: &str,
) -> Result<pb::ListFlagsResponse, CliError> {
    Ok(admin
        .list_flags(pb::ListFlagsRequest {
            flag_set_id: set.to_owned(),
        })
        .await
        .map_err(|s| rpc_error(node, &s, set))?
        .into_inner())
}

/// The flag, or an error naming the set's flags to choose from.
async fn find(
    admin: &mut AdminClient<bunting_node::auth::client::AuthChannel>,
    node: &str,
    set: &str,
    key: &str,
) -> Result<pb::Flag, CliError> {
    let list = list_flags(admin, node, set).await?;
    let keys: Vec<&str> = list.flags.iter().map(|f| f.key.as_str()).collect();
    if let Some(flag) = list.flags.iter().find(|f| f.key == key) {
        return Ok(flag.clone());
    }
    let shown = keys.iter().take(20).copied().collect::<Vec<_>>().join(", ");
    let more = if keys.len() > 20 { ", ..." } else { "" };
    Err(CliError::Usage(if keys.is_empty() {
        format!("flag set {set} has no flags, so no flag {key:?}")
    } else {
        format!("flag set {set} has no flag {key:?}; its flags: {shown}{more}")
    }))
}

fn flag_json(flag: &pb::Flag) -> Value {
    json!({
        "flagSetId": flag.flag_set_id,
        "key": flag.key,
        "version": flag.version,
        "updatedAt": time(flag.updated_at.as_ref()),
        "definition": json_text(&flag.definition),
    })
}
