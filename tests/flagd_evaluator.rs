//! flagd-evaluator's Gherkin conformance suite, run against the engine.
//!
//! Every scenario of every `.feature` file under `shared/conformance/flagd-evaluator/gherkin` runs
//! (outlines once per row of every Examples table, Background steps first) against that suite's
//! `testkit-flags.json`. A step this runner does not know fails its scenario: a suite that grows a
//! step must not pass by skipping it.
//!
//! The fractional mode follows the tags: `@fractional-v1` (on the Examples block, the scenario or
//! the feature) selects the legacy float form, `@fractional-v2` the string form, `@fractional-v3`
//! the CBOR form, anything else Bunting's default (string, the flagd server's: the untagged
//! scenarios' buckets were computed by it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::LazyLock;

use bunting_engine::{
    CompileOptions, EvaluationContext, FlagSet, FractionalMode, Metadata, Resolution, compile,
};
use gherkin::{Feature, GherkinEnv, Step};
use regex::Regex;
use serde_json::{Map, Value, json};

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/flagd-evaluator")
}

fn main() -> ExitCode {
    let mut passed = 0;
    let mut failures = Vec::new();
    for case in all_cases() {
        match case.run() {
            Ok(()) => passed += 1,
            Err(why) => failures.push(format!("FAILED {}\n    {why}", case.name)),
        }
    }
    for failure in &failures {
        println!("{failure}");
    }
    println!(
        "flagd evaluator conformance: {passed} passed, {} failed",
        failures.len()
    );
    if failures.is_empty() && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One runnable scenario: an ordinary scenario, or one Examples row of an outline.
struct Case {
    name: String,
    mode: FractionalMode,
    /// Background steps first, `<placeholders>` already filled in; or why there are none.
    steps: Result<Vec<Step>, String>,
}

/// Every case of every feature file, in file order. A file that does not parse is a case that
/// fails, so it cannot drop out of the count unnoticed.
fn all_cases() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(suite_dir().join("gherkin"))
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "feature"));
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let file = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into());
        match parse_feature(&path) {
            Ok(feature) => cases.extend(feature_cases(&file, &feature)),
            Err(why) => cases.push(Case {
                name: file,
                mode: FractionalMode::default(),
                steps: Err(format!("the feature file does not parse: {why}")),
            }),
        }
    }
    cases
}

fn parse_feature(path: &Path) -> Result<Feature, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    // Standard Gherkin keeps an unknown escape such as `\"` in a table cell as written; the
    // `gherkin` crate rejects it instead. Doubling the backslash gets the standard reading (the
    // cell holds `\"`), and `unescape` below turns it into a plain quote.
    let text = text.replace("\\\"", "\\\\\"");
    Feature::parse(text, GherkinEnv::default()).map_err(|e| e.to_string())
}

fn feature_cases(file: &str, feature: &Feature) -> Vec<Case> {
    let background = |b: Option<&gherkin::Background>| b.map_or(Vec::new(), |b| b.steps.clone());
    // Scenarios directly under the feature, then those of each `Rule:` with its own background
    // and tags added to the feature's.
    let mut groups = vec![(
        background(feature.background.as_ref()),
        feature.tags.iter().collect::<Vec<_>>(),
        &feature.scenarios,
    )];
    for rule in &feature.rules {
        let mut steps = background(feature.background.as_ref());
        steps.extend(background(rule.background.as_ref()));
        let tags = feature.tags.iter().chain(&rule.tags).collect();
        groups.push((steps, tags, &rule.scenarios));
    }
    let mut cases = Vec::new();
    for (background, group_tags, scenarios) in groups {
        for scenario in scenarios {
            let mut steps = background.clone();
            steps.extend(scenario.steps.iter().cloned());
            let mut tags = group_tags.clone();
            tags.extend(&scenario.tags);
            let name = format!("{file}: {}", scenario.name);
            if scenario.examples.is_empty() {
                cases.push(Case {
                    name,
                    mode: mode_for(&tags),
                    steps: Ok(steps),
                });
                continue;
            }
            for examples in &scenario.examples {
                let mut tags = tags.clone();
                tags.extend(&examples.tags);
                let rows = examples.table.as_ref().map_or(&[][..], |t| &t.rows[..]);
                let Some((header, rows)) = rows.split_first() else {
                    continue;
                };
                for (i, row) in rows.iter().enumerate() {
                    let label = examples.name.as_deref().unwrap_or("Examples");
                    cases.push(Case {
                        name: format!("{name} [{label} row {}: {}]", i + 1, row.join(" | ")),
                        mode: mode_for(&tags),
                        steps: Ok(steps.iter().map(|s| fill(s, header, row)).collect()),
                    });
                }
            }
        }
    }
    cases
}

fn mode_for(tags: &[&String]) -> FractionalMode {
    if tags.iter().any(|t| *t == "fractional-v1") {
        FractionalMode::LegacyFloat
    } else if tags.iter().any(|t| *t == "fractional-v3") {
        FractionalMode::Cbor
    } else {
        // `@fractional-v2`: the buckets the flagd server computes today. They run under the
        // default mode, not an explicit `String`, so a default that stopped agreeing with the
        // flagd server would fail them (README, "Fractional bucketing across clients").
        FractionalMode::default()
    }
}

/// The step with every `<column>` replaced by this row's value, in its text and its table.
fn fill(step: &Step, header: &[String], row: &[String]) -> Step {
    let substitute = |text: &str| {
        header
            .iter()
            .zip(row)
            .fold(text.to_owned(), |text, (column, value)| {
                text.replace(&format!("<{column}>"), value)
            })
    };
    let mut step = step.clone();
    step.value = substitute(&step.value);
    if let Some(table) = &mut step.table {
        for cell in table.rows.iter_mut().flatten() {
            *cell = substitute(cell);
        }
    }
    step
}

/// What the steps have set up so far, and the outcome once the flag was evaluated.
#[derive(Default)]
struct World {
    flags: Option<FlagSet>,
    flag: Option<(FlagKind, String, Value)>,
    context: Map<String, Value>,
    outcome: Option<Outcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Boolean,
    String,
    Integer,
    Float,
    Object,
}

/// A resolution as the caller sees it: the fallback already applied when the engine gave no value.
#[derive(Debug)]
struct Outcome {
    value: Value,
    reason: String,
    error_code: Option<String>,
    metadata: Metadata,
}

macro_rules! step_patterns {
    ($($name:ident = $pattern:literal;)*) => {
        $(static $name: LazyLock<Regex> = LazyLock::new(|| Regex::new($pattern).unwrap());)*
    };
}

step_patterns! {
    FLAG = r#"^an? (\w+)-flag with key "(.*)" and a fallback value "(.*)"$"#;
    TARGETING_KEY = r#"^a context containing a targeting key with value "(.*)"$"#;
    TYPED_KEY = r#"^a context containing a key "(.*)", with type "(\w+)" and with value "(.*)"$"#;
    NESTED = r#"^a context containing a nested property with outer key "(.*)" and inner key "(.*)", with value "(.*)"$"#;
    VALUE = r#"^the resolved details value should be "(.*)"$"#;
    REASON = r#"^the reason should be "(.*)"$"#;
    ERROR_CODE = r#"^the error-code should be "(.*)"$"#;
}

impl Case {
    fn run(&self) -> Result<(), String> {
        let mut world = World::default();
        for step in self.steps.as_ref()? {
            world
                .step(step, self.mode)
                .map_err(|why| format!("step `{}`: {why}", step.value))?;
        }
        Ok(())
    }
}

impl World {
    fn step(&mut self, step: &Step, mode: FractionalMode) -> Result<(), String> {
        let text = step.value.as_str();
        if text == "an evaluator" {
            self.flags = Some(load_flags(mode)?);
        } else if let Some(c) = FLAG.captures(text) {
            let kind = FlagKind::parse(&c[1])?;
            let fallback = kind.value(&c[3])?;
            self.flag = Some((kind, c[2].to_owned(), fallback));
        } else if let Some(c) = TARGETING_KEY.captures(text) {
            self.context.insert("targetingKey".into(), json!(&c[1]));
        } else if let Some(c) = TYPED_KEY.captures(text) {
            let value = FlagKind::parse(&c[2])?.value(&c[3])?;
            self.context.insert(c[1].to_owned(), value);
        } else if let Some(c) = NESTED.captures(text) {
            let outer = self.context.entry(&c[1]).or_insert_with(|| json!({}));
            let outer = outer
                .as_object_mut()
                .ok_or("the outer key holds no object")?;
            outer.insert(c[2].to_owned(), json!(&c[3]));
        } else if text == "the flag was evaluated with details" {
            self.outcome = Some(self.evaluate()?);
        } else if let Some(c) = VALUE.captures(text) {
            let (kind, _, _) = self.flag.as_ref().ok_or("no flag was given")?;
            let expected = kind.value(&c[1])?;
            let got = &self.outcome()?.value;
            if !same_value(&expected, got) {
                return Err(format!("expected value {expected}, got {got}"));
            }
        } else if let Some(c) = REASON.captures(text) {
            let got = &self.outcome()?.reason;
            if got != &c[1] {
                return Err(format!("expected reason {}, got {got}", &c[1]));
            }
        } else if let Some(c) = ERROR_CODE.captures(text) {
            let got = &self.outcome()?.error_code;
            if got.as_deref() != Some(&c[1]) {
                return Err(format!("expected error code {}, got {got:?}", &c[1]));
            }
        } else if text == "the resolved metadata should contain" {
            let table = step.table.as_ref().ok_or("the step has no table")?;
            check_metadata(&self.outcome()?.metadata, &table.rows)?;
        } else if text == "the resolved metadata is empty" {
            let metadata = &self.outcome()?.metadata;
            if !metadata.is_empty() {
                return Err(format!("expected no metadata, got {metadata:?}"));
            }
        } else {
            return Err("unknown step".to_owned());
        }
        Ok(())
    }

    fn outcome(&self) -> Result<&Outcome, String> {
        self.outcome
            .as_ref()
            .ok_or_else(|| "the flag was not evaluated".to_owned())
    }

    fn evaluate(&self) -> Result<Outcome, String> {
        let flags = self.flags.as_ref().ok_or("there is no evaluator")?;
        let (kind, key, fallback) = self.flag.as_ref().ok_or("no flag was given")?;
        let ctx = EvaluationContext::from_fields(self.context.clone());
        Ok(match kind {
            FlagKind::Boolean => Outcome::of(flags.resolve_bool(key, &ctx), fallback, Value::from),
            FlagKind::String => Outcome::of(flags.resolve_string(key, &ctx), fallback, Value::from),
            FlagKind::Integer => Outcome::of(flags.resolve_int(key, &ctx), fallback, Value::from),
            FlagKind::Float => Outcome::of(flags.resolve_float(key, &ctx), fallback, Value::from),
            FlagKind::Object => Outcome::of(flags.resolve_object(key, &ctx), fallback, |m| {
                Value::Object(m.clone())
            }),
        })
    }
}

impl Outcome {
    fn of<T>(r: Resolution<'_, T>, fallback: &Value, to_json: impl FnOnce(T) -> Value) -> Outcome {
        Outcome {
            value: r.value.map_or_else(|| fallback.clone(), to_json),
            reason: r.reason.as_str().to_owned(),
            error_code: r.error.map(|e| e.code.as_str().to_owned()),
            metadata: r.metadata.clone(),
        }
    }
}

fn load_flags(mode: FractionalMode) -> Result<FlagSet, String> {
    let path = suite_dir().join("flags/testkit-flags.json");
    let json = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let options = CompileOptions {
        fractional: mode,
        ..CompileOptions::default()
    };
    // The suite's flag file is deliberately not clean (a `$ref` to a missing evaluator, operators
    // with wrong arguments): those flags are what some scenarios test, so diagnostics are expected.
    compile(&json, &options)
        .map(|compiled| compiled.flag_set)
        .map_err(|e| e.to_string())
}

impl FlagKind {
    fn parse(name: &str) -> Result<FlagKind, String> {
        Ok(match name {
            "Boolean" => FlagKind::Boolean,
            "String" => FlagKind::String,
            "Integer" => FlagKind::Integer,
            "Float" => FlagKind::Float,
            "Object" => FlagKind::Object,
            other => return Err(format!("unknown type {other:?}")),
        })
    }

    /// A value written in a step, read as this type.
    fn value(self, text: &str) -> Result<Value, String> {
        let bad = |e: &dyn std::fmt::Display| format!("{text:?} is not a {self:?}: {e}");
        Ok(match self {
            FlagKind::String => Value::String(text.to_owned()),
            FlagKind::Boolean => Value::Bool(text.parse::<bool>().map_err(|e| bad(&e))?),
            FlagKind::Integer => Value::from(text.parse::<i64>().map_err(|e| bad(&e))?),
            FlagKind::Float => Value::from(text.parse::<f64>().map_err(|e| bad(&e))?),
            FlagKind::Object => serde_json::from_str(&unescape(text)).map_err(|e| bad(&e))?,
        })
    }
}

/// A table cell's `\"` as a plain quote (see `parse_feature`).
fn unescape(text: &str) -> String {
    text.replace("\\\"", "\"")
}

/// Equality as the suite means it: numbers compare by value, so `0.0` matches `0`.
fn same_value(expected: &Value, got: &Value) -> bool {
    match (expected, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => expected == got,
    }
}

fn check_metadata(metadata: &Metadata, rows: &[Vec<String>]) -> Result<(), String> {
    let Some((header, rows)) = rows.split_first() else {
        return Err("the metadata table is empty".to_owned());
    };
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("the metadata table has no {name:?} column"))
    };
    let (key, kind, value) = (column("key")?, column("metadata_type")?, column("value")?);
    let mut problems = String::new();
    for row in rows {
        let expected = FlagKind::parse(&row[kind])?.value(&row[value])?;
        match metadata.get(&row[key]) {
            Some(got) if same_value(&expected, got) => {}
            got => {
                let _ = write!(
                    problems,
                    "metadata {:?}: expected {expected}, got {got:?}; ",
                    row[key]
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
