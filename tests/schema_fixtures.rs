//! flagd-schemas' positive and negative fixtures: every positive definition compiles without a
//! single diagnostic, every negative one is rejected or draws at least one.
//!
//! Each test walks its fixture folders, collects every file that misbehaves and fails once at the
//! end naming all of them, so one run shows the whole picture.

use std::path::{Path, PathBuf};

use bunting_engine::{CompileOptions, Compiled, DefinitionError, Dialect, compile_value};
use serde_json::{Map, Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/flagd-schema/fixtures")
}

/// The `.json` files in `fixtures/<dir>`, sorted. A missing folder counts as empty: the callers
/// check that each kind of fixture is actually exercised.
fn files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join(dir))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    files
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
}

/// Compiles a document in the dialect its `$schema` declares (flagd's own by default).
fn compile_document(document: &Value) -> Result<Compiled, DefinitionError> {
    let options = CompileOptions {
        dialect: Dialect::declared_by(document).unwrap_or_default(),
        ..CompileOptions::default()
    };
    compile_value(document, &options)
}

/// What is wrong with a positive fixture's compilation, if anything.
fn positive_problem(result: Result<Compiled, DefinitionError>) -> Option<String> {
    match result {
        Err(e) => Some(format!("rejected: {e}")),
        Ok(compiled) if compiled.diagnostics.is_empty() => None,
        Ok(compiled) => Some(
            compiled
                .diagnostics
                .iter()
                .map(|d| format!("\n      {d}"))
                .collect(),
        ),
    }
}

/// Why a negative fixture's compilation is wrong: it was accepted without a word.
fn negative_problem(result: Result<Compiled, DefinitionError>) -> Option<String> {
    match result {
        Ok(compiled) if compiled.diagnostics.is_empty() => {
            Some("accepted without a diagnostic".to_owned())
        }
        _ => None,
    }
}

fn check(
    dirs: &[&str],
    load: impl Fn(&Path) -> Result<Value, String>,
    judge: fn(Result<Compiled, DefinitionError>) -> Option<String>,
) {
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in dirs.iter().flat_map(|d| files(d)) {
        checked += 1;
        let problem = match load(&path) {
            Ok(document) => judge(compile_document(&document)),
            Err(e) => Some(format!("unreadable fixture: {e}")),
        };
        if let Some(problem) = problem {
            failures.push(format!("  {}: {problem}", path.display()));
        }
    }
    assert!(checked > 0, "no fixtures found under {dirs:?}");
    assert!(
        failures.is_empty(),
        "{} of {checked} fixtures misjudged:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn positive_flag_definitions_compile_cleanly() {
    check(
        &["flags/positive", "flagd/positive"],
        read_json,
        positive_problem,
    );
}

#[test]
fn negative_flag_definitions_are_rejected() {
    check(
        &["flags/negative", "flagd/negative"],
        read_json,
        negative_problem,
    );
}

#[test]
fn positive_targeting_rules_compile_cleanly() {
    check(
        &["targeting/positive"],
        targeting_document,
        positive_problem,
    );
}

#[test]
fn negative_targeting_rules_draw_diagnostics() {
    check(
        &["targeting/negative"],
        targeting_document,
        negative_problem,
    );
}

/// A bare targeting rule as the `targeting` of a one-flag document. The flag's string variants
/// cover every string literal in the rule plus "true" and "false", so whatever the rule can return
/// is a variant. A bare rule cannot carry `$evaluators`, and flagd's targeting schema accepts any
/// `$ref` name, so each name it refers to gets a trivial evaluator.
fn targeting_document(path: &Path) -> Result<Value, String> {
    let rule = read_json(path)?;
    let mut strings = vec!["true".to_owned(), "false".to_owned()];
    let mut refs = Vec::new();
    collect_strings(&rule, &mut strings, &mut refs);
    let variants: Map<String, Value> = strings.into_iter().map(|s| (s.clone(), json!(s))).collect();
    let evaluators: Map<String, Value> = refs.into_iter().map(|r| (r, json!(true))).collect();
    Ok(json!({
        "flags": {
            "fixture": {
                "state": "ENABLED",
                "variants": variants,
                "defaultVariant": "false",
                "targeting": rule,
            }
        },
        "$evaluators": evaluators,
    }))
}

fn collect_strings(v: &Value, strings: &mut Vec<String>, refs: &mut Vec<String>) {
    match v {
        Value::String(s) => strings.push(s.clone()),
        Value::Array(items) => {
            for item in items {
                collect_strings(item, strings, refs);
            }
        }
        Value::Object(map) => {
            if let Some(Value::String(name)) = map.get("$ref") {
                refs.push(name.clone());
            }
            for item in map.values() {
                collect_strings(item, strings, refs);
            }
        }
        _ => {}
    }
}
