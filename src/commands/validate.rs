//! `bunting validate`: every problem in every file, one per line; exit 1 if there is any.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bunting_engine::Severity;

use crate::cli::{FractionalArg, SchemaArg};
use crate::error::CliError;
use crate::flag_file;

pub fn run(files: &[PathBuf], schema: Option<SchemaArg>) -> Result<ExitCode, CliError> {
    let mut stdout = std::io::stdout().lock();
    let mut problems = 0usize;
    for path in files {
        // The hashing form does not change what is valid.
        let compiled = match flag_file::load(path, schema, FractionalArg::Cbor) {
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
