//! `bunting resolve`: what a running cluster answers for one subject, through the shard-aware
//! client (so the answer comes from the subject's owner, as an application's would).

use std::io::Write;
use std::process::ExitCode;

use bunting_client::{Client, ClientConfig, EvaluationContext, FlagValue};
use serde_json::{Map, Value, json};

use crate::error::CliError;

pub fn run(node: &str, flag: Option<&str>, context: &str) -> Result<ExitCode, CliError> {
    let context = match serde_json::from_str(context).map_err(CliError::ContextJson)? {
        Value::Object(map) => EvaluationContext::from_json(map),
        _ => {
            return Err(CliError::Usage(
                "--context must be a JSON object".to_owned(),
            ));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        let client = Client::connect(ClientConfig {
            token: super::BEARER.get().and_then(|b| b.client_token()),
            ..ClientConfig::new([node.to_owned()])
        })
        .await
        .map_err(|e| CliError::Usage(format!("cannot reach the cluster through {node}: {e}")))?;
        let owner = context
            .targeting_key()
            .and_then(|key| client.topology().owner_of(key).map(|n| n.id.clone()));
        let all = client
            .resolve_all(&context)
            .await
            .map_err(|e| CliError::Usage(format!("resolve through {node}: {e}")))?;
        let mut flags = Map::new();
        for (key, r) in all.flags {
            if flag.is_some_and(|f| f != key) {
                continue;
            }
            flags.insert(
                key,
                json!({
                    "value": r.value.map(flag_value),
                    "variant": r.variant,
                    "reason": r.reason,
                    "metadata": r.metadata,
                }),
            );
        }
        let missing = flag.is_some_and(|f| !flags.contains_key(f));
        let answer = json!({
            "owner": owner,
            "epoch": client.topology().epoch,
            "flags": flags,
        });
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        )?;
        if missing {
            writeln!(
                std::io::stderr(),
                "flag {:?} is not in the answer (unknown, or it failed to resolve)",
                flag.unwrap_or_default()
            )?;
            return Ok(ExitCode::from(1));
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn flag_value(value: FlagValue) -> Value {
    match value {
        FlagValue::Bool(b) => Value::Bool(b),
        FlagValue::String(s) => Value::String(s),
        FlagValue::Int(i) => Value::from(i),
        FlagValue::Float(f) => Value::from(f),
        FlagValue::Object(m) => Value::Object(m),
    }
}
