//! `bunting validate`: every problem in every file, one per line; exit 1 if there is any.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bunting_engine::{FractionalMode, Severity};

use crate::cli::{FractionalArg, SchemaArg};
use crate::error::CliError;
use crate::flag_file;

pub fn run(
    files: &[PathBuf],
    schema: Option<SchemaArg>,
    fractional: FractionalArg,
) -> Result<ExitCode, CliError> {
    let mut stdout = std::io::stdout().lock();
    let mut problems = 0usize;
    // The hashing form does not change what is valid, but it decides who gets which arm, and
    // clients that disagree on it split users differently: say which one this check used.
    writeln!(stdout, "{}", fractional_line(fractional.mode()))?;
    for path in files {
        let compiled = match flag_file::load(path, schema, fractional) {
            Ok(compiled) => compiled,
            Err(e @ (CliError::Definition { .. } | CliError::Read { .. })) => {
                writeln!(stdout, "error: {e}")?;
                problems += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let errors = compiled
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        let warnings = compiled.diagnostics.len() - errors;
        for d in &compiled.diagnostics {
            writeln!(stdout, "{}: {d}", path.display())?;
        }
        if compiled.diagnostics.is_empty() {
            writeln!(
                stdout,
                "{}: ok ({} flags)",
                path.display(),
                compiled.flag_set.len()
            )?;
        } else {
            writeln!(
                stdout,
                "{}: {errors} error(s), {warnings} warning(s)",
                path.display()
            )?;
        }
        problems += compiled.diagnostics.len();
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The line naming the `fractional` mode, and the clients it agrees with (README, "Fractional
/// bucketing across clients").
pub fn fractional_line(mode: FractionalMode) -> String {
    let agrees = match mode {
        FractionalMode::String => {
            "the flagd server and the Go, Java, JavaScript and .NET in-process providers"
        }
        FractionalMode::Cbor => "the Python (0.6) and Rust (0.3) in-process providers",
        FractionalMode::LegacyFloat => "flagd servers before v0.15 and the Rust provider 0.2",
    };
    format!("fractional: {mode} (buckets agree with {agrees})")
}
