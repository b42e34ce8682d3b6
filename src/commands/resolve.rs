//! `bunting resolve`: what a running cluster answers for one subject, through the shard-aware
//! client (so the answer comes from the subject's owner, as an application's would).

use std::io::Write;
use std::process::ExitCode;

use bunting_client::{Client, ClientConfig, ClientError, EvaluationContext, FlagValue};
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
        // A flag ResolveAll left out is unknown or failed; one typed resolution says which, with
        // flagd's error code, instead of an answer of no flags and no reason.
        let error = match flag {
            Some(key) if !flags.contains_key(key) => {
                let (code, message) = match client.resolve_boolean(key, &context).await {
                    Err(ClientError::FlagNotFound { message, .. }) => ("FLAG_NOT_FOUND", message),
                    Err(ClientError::ParseError { message, .. }) => ("PARSE_ERROR", message),
                    Err(e) => ("GENERAL", e.to_string()),
                    Ok(_) => ("GENERAL", "left out of the bulk answer".to_owned()),
                };
                Some((key, code, message))
            }
            _ => None,
        };
        let mut answer = Map::new();
        // Only a targeting key has an owner; without one, any node answers.
        if let Some(owner) = owner {
            answer.insert("owner".into(), Value::String(owner));
        }
        answer.insert("epoch".into(), json!(client.topology().epoch));
        answer.insert("flags".into(), Value::Object(flags));
        if let Some((key, code, message)) = &error {
            answer.insert(
                "error".into(),
                json!({"flag": key, "errorCode": code, "errorMessage": message}),
            );
        }
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&Value::Object(answer)).unwrap_or_default()
        )?;
        if let Some((key, code, message)) = error {
            let hint = if code == "FLAG_NOT_FOUND" {
                "; `bunting resolve` without --flag lists the flags the node serves"
            } else {
                ""
            };
            writeln!(std::io::stderr(), "flag {key:?}: {code}: {message}{hint}")?;
            return Ok(ExitCode::from(1));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// A value as JSON. ResolveAll carries numbers as doubles (a protobuf Struct), so an integral one
/// is printed as an integer, as `bunting eval` prints an integer flag (`25`, not `25.0`).
fn flag_value(value: FlagValue) -> Value {
    match value {
        FlagValue::Bool(b) => Value::Bool(b),
        FlagValue::String(s) => Value::String(s),
        FlagValue::Int(i) => Value::from(i),
        FlagValue::Float(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
            // Below 2^53 every integral double is exactly an i64.
            Value::from(f as i64)
        }
        FlagValue::Float(f) => Value::from(f),
        FlagValue::Object(m) => Value::Object(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_numbers_print_as_integers() {
        for (value, printed) in [
            (FlagValue::Float(25.0), "25"),
            (FlagValue::Float(-3.0), "-3"),
            (FlagValue::Float(0.5), "0.5"),
            (FlagValue::Float(1e300), "1e+300"),
            (FlagValue::Int(7), "7"),
        ] {
            assert_eq!(flag_value(value).to_string(), printed);
        }
    }
}
