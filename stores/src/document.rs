//! A stored flag set as one flagd document, and the check every write passes before it is kept.

use bunting_engine::{CompileOptions, DefinitionError, FlagSet};
use serde_json::{Map, Value};

use super::StoreError;

/// Ids and keys travel in `pg_notify` payloads (8000 bytes at most) and in URLs; a bound keeps
/// both comfortable.
pub(crate) const MAX_NAME_LEN: usize = 256;

/// The flagd document of a set: `{"flags": {...}, "$evaluators": {...}, "metadata": {...}}`.
pub(crate) fn build<'a>(
    metadata: &Map<String, Value>,
    evaluators: &Map<String, Value>,
    flags: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Value {
    let flags: Map<String, Value> = flags
        .into_iter()
        .map(|(key, definition)| (key.to_owned(), definition.clone()))
        .collect();
    let mut document = Map::new();
    document.insert("flags".into(), Value::Object(flags));
    document.insert("$evaluators".into(), Value::Object(evaluators.clone()));
    document.insert("metadata".into(), Value::Object(metadata.clone()));
    Value::Object(document)
}

/// Compiles the document and accepts it only if the engine reports nothing, warnings included:
/// what the admin API stores must be served exactly as written.
pub(crate) fn validate(document: &Value, options: &CompileOptions) -> Result<FlagSet, StoreError> {
    let compiled = bunting_engine::compile_value(document, options).map_err(|e| match e {
        DefinitionError::Shape { path, message } => StoreError::invalid(&path, message),
        DefinitionError::Json(message) => StoreError::invalid("", message),
        // Limits and duplicate keys (the message names the path and the limit or key).
        other => StoreError::invalid("", other.to_string()),
    })?;
    compiled
        .into_clean()
        .map_err(|problems| StoreError::Invalid { problems })
}

/// A flag set id or flag key: non-empty and bounded. `path` is where a problem is reported.
pub(crate) fn check_name(path: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        Err(StoreError::invalid(path, "must not be empty"))
    } else if name.len() > MAX_NAME_LEN {
        Err(StoreError::invalid(
            path,
            format!("is {} bytes long, more than {MAX_NAME_LEN}", name.len()),
        ))
    } else {
        Ok(())
    }
}

/// The set's own fields, as the audit log records them.
pub(crate) fn fields_json(metadata: &Map<String, Value>, evaluators: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    out.insert("metadata".into(), Value::Object(metadata.clone()));
    out.insert("$evaluators".into(), Value::Object(evaluators.clone()));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bunting_engine::Severity;
    use serde_json::json;

    #[test]
    fn a_problem_is_reported_at_its_path_in_the_set() {
        let flag = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "nope"});
        let doc = build(&Map::new(), &Map::new(), [("banner", &flag)]);
        let Err(StoreError::Invalid { problems }) = validate(&doc, &CompileOptions::default())
        else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "flags.banner.defaultVariant");
        assert_eq!(problems[0].severity, Severity::Error);
    }

    #[test]
    fn a_clean_set_compiles() {
        let flag = json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"});
        let doc = build(&Map::new(), &Map::new(), [("banner", &flag)]);
        assert!(validate(&doc, &CompileOptions::default()).is_ok());
    }

    #[test]
    fn names_are_bounded() {
        assert!(check_name("id", "").is_err());
        assert!(check_name("id", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_name("id", "default").is_ok());
    }
}
