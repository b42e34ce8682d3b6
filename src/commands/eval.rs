//! `bunting eval`: resolve one flag and print the resolution as flagd's JSON shape.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use bunting_engine::{EvaluationContext, Reason, Resolution};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::cli::{CompileArgs, TypeArg};
use crate::error::CliError;
use crate::flag_file;

pub fn run(
    flags: &Path,
    key: &str,
    context: &str,
    flag_type: TypeArg,
    options: &CompileArgs,
) -> Result<ExitCode, CliError> {
    let compiled = flag_file::load(flags, None, options.fractional)?;
    for d in &compiled.diagnostics {
        eprintln!("{}: {d}", flags.display());
    }
    let context: Value = serde_json::from_str(context).map_err(CliError::ContextJson)?;
    let ctx = EvaluationContext::from_value(context)?;
    let set = &compiled.flag_set;
    let output = match flag_type {
        TypeArg::Any => render(set.resolve(key, &ctx), |v| v.clone()),
        TypeArg::Boolean => render(set.resolve_bool(key, &ctx), Value::Bool),
        TypeArg::String => render(set.resolve_string(key, &ctx), |s| json!(s)),
        TypeArg::Integer => render(set.resolve_int(key, &ctx), |i| json!(i)),
        TypeArg::Float => render(set.resolve_float(key, &ctx), |f| json!(f)),
        TypeArg::Object => render(set.resolve_object(key, &ctx), |o| Value::Object(o.clone())),
    };
    let failed = output.reason == Reason::Error.as_str();
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &output).map_err(std::io::Error::from)?;
    writeln!(stdout)?;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The resolution in flagd's field names and order; fields that do not apply are left out.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Rendered<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<String>,
    metadata: &'a Map<String, Value>,
}

fn render<'a, V>(resolution: Resolution<'a, V>, value: impl FnOnce(V) -> Value) -> Rendered<'a> {
    Rendered {
        value: resolution.value.map(value),
        variant: resolution.variant,
        reason: resolution.reason.as_str(),
        error_code: resolution.error.as_ref().map(|e| e.code.as_str()),
        error_message: resolution.error.map(|e| e.message),
        metadata: resolution.metadata,
    }
}
