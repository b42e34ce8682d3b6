//! Loading a flag-definition file from disk.

use std::path::Path;

use bunting_engine::{CompileOptions, Compiled, Dialect};

use crate::cli::{FractionalArg, SchemaArg};
use crate::error::CliError;

pub fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads and compiles a flag file. The dialect is the one asked for, else the one the file's
/// `$schema` declares, else flagd's.
pub fn load(
    path: &Path,
    schema: Option<SchemaArg>,
    fractional: FractionalArg,
) -> Result<Compiled, CliError> {
    let text = read(path)?;
    let definition_error = |source| CliError::Definition {
        path: path.to_owned(),
        source,
    };
    // The engine's parser, not serde_json's: it refuses duplicate keys (serde_json keeps the
    // last) and documents over the size limit.
    let limits = bunting_engine::Limits::default();
    if text.len() > limits.max_document_bytes {
        return Err(definition_error(bunting_engine::DefinitionError::Limit {
            kind: bunting_engine::LimitKind::DocumentBytes,
            found: text.len(),
            limit: limits.max_document_bytes,
        }));
    }
    let document = bunting_engine::parse_document(&text).map_err(definition_error)?;
    let dialect = match schema {
        Some(SchemaArg::Flagd) => Dialect::Flagd,
        Some(SchemaArg::Provider) => Dialect::Provider,
        None => Dialect::declared_by(&document).unwrap_or_default(),
    };
    let options = CompileOptions {
        dialect,
        fractional: fractional.mode(),
        ..CompileOptions::default()
    };
    bunting_engine::compile_value(&document, &options).map_err(definition_error)
}
