//! `bunting audit` and `bunting flags history`: the Admin API's audit log, newest first, a page at
//! a time. Each page ends with the cursor of the next (`--before`), so a script or a person can
//! read on; `--all` follows the cursors itself.

use std::io::Write;
use std::process::ExitCode;

use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use serde_json::{Value, json};

use super::admin_client::{action_name, change_summary, json_text, rpc_error, runtime, time};
use crate::error::CliError;

#[derive(Debug)]
pub struct Query<'a> {
    pub node: &'a str,
    pub set: Option<&'a str>,
    pub key: Option<&'a str>,
    pub limit: i32,
    pub before: Option<i64>,
    /// Follow the pages to the oldest entry.
    pub all: bool,
    pub json: bool,
    /// How to ask for the next page, for the line that names it (`bunting audit --set web`).
    pub again: String,
}

pub fn run(query: &Query<'_>) -> Result<ExitCode, CliError> {
    if let Some(before) = query.before
        && before < 1
    {
        return Err(CliError::Usage(format!(
            "--before {before}: pass a cursor a previous page printed (a positive entry id)"
        )));
    }
    runtime()?.block_on(async {
        let mut admin = AdminClient::new(super::connect(query.node).await?);
        let (entries, next) = read(&mut admin, query).await?;
        let mut out = std::io::stdout().lock();
        if query.json {
            let entries: Vec<Value> = entries.iter().map(entry_json).collect();
            let next = (next != 0).then_some(next);
            writeln!(out, "{:#}", json!({"entries": entries, "nextBefore": next}))?;
            return Ok(ExitCode::SUCCESS);
        }
        print_table(&mut out, &entries)?;
        if next != 0 {
            writeln!(out, "more: {} --before {next}", query.again)?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One page, or every page from the cursor on; with the cursor after what was read (0: none).
pub(super) async fn read(
    admin: &mut AdminClient<bunting_node::auth::client::AuthChannel>,
    query: &Query<'_>,
) -> Result<(Vec<pb::AuditEntry>, i64), CliError> {
    let set = query.set.unwrap_or_default();
    let mut entries = Vec::new();
    let mut before = query.before.unwrap_or(0);
    loop {
        let page = admin
            .list_audit(pb::ListAuditRequest {
                flag_set_id: set.to_owned(),
                flag_key: query.key.unwrap_or_default().to_owned(),
                before_id: before,
                limit: query.limit,
            })
            .await
            .map_err(|s| rpc_error(query.node, &s, set))?
            .into_inner();
        entries.extend(page.entries);
        // A cursor that does not move back would page forever; ids only decrease.
        let moves_on = before == 0 || (page.next_before_id != 0 && page.next_before_id < before);
        if !query.all || page.next_before_id == 0 || !moves_on {
            return Ok((entries, page.next_before_id));
        }
        before = page.next_before_id;
    }
}

fn print_table(out: &mut impl Write, entries: &[pb::AuditEntry]) -> std::io::Result<()> {
    if entries.is_empty() {
        return writeln!(out, "no audit entries");
    }
    writeln!(
        out,
        "{:>8}  {:>7}  {:<20}  {:<7}  {:<16}  {:<24}  {:<24}  CHANGE",
        "ID", "VERSION", "AT", "ACTION", "SET", "FLAG", "ACTOR"
    )?;
    for e in entries {
        let flag = if e.flag_key.is_empty() {
            "(the set)"
        } else {
            e.flag_key.as_str()
        };
        let line = format!(
            "{:>8}  {:>7}  {:<20}  {:<7}  {:<16}  {:<24}  {:<24}  {}",
            e.id,
            e.flag_set_version,
            time(e.at.as_ref()),
            action_name(e.action),
            e.flag_set_id,
            flag,
            e.actor,
            change_summary(&json_text(&e.before_json), &json_text(&e.after_json)),
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn entry_json(e: &pb::AuditEntry) -> Value {
    json!({
        "id": e.id,
        "flagSetId": e.flag_set_id,
        "flagKey": (!e.flag_key.is_empty()).then_some(&e.flag_key),
        "action": action_name(e.action),
        "actor": e.actor,
        "at": time(e.at.as_ref()),
        "flagSetVersion": e.flag_set_version,
        "before": json_text(&e.before_json),
        "after": json_text(&e.after_json),
    })
}
