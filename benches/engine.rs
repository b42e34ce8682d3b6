//! Bunting's engine against two peers, in the same run and on the same machine:
//!
//! - `flagd-evaluation-engine`, flagd's own Rust evaluator, on the very same flagd JSON and an
//!   equivalent OpenFeature context;
//! - `unleash-yggdrasil`, Unleash's compiled engine, on Unleash toggles that ask the same
//!   questions (default strategy, flexibleRollout, constraints).
//!
//! Every engine gets its definitions loaded (and, where it can, compiled) and its context built
//! before the timed loop; the loop only resolves. See BENCHMARKS.md for the figures.

use std::collections::HashMap;
use std::hint::black_box;

use bunting_engine::{CompileOptions, EvaluationContext, FlagSet, Reason};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flagd_evaluation_engine::{FeatureFlag, FlagParser, Operator};
use serde_json::{Value, json};
use unleash_yggdrasil::{ClientFeatures, Context, EngineState, UpdateMessage};

// ---------------------------------------------------------------------------------------------
// The cases: one flagd rule per case, and the Unleash toggle that asks the same question.
// ---------------------------------------------------------------------------------------------

const STATIC: &str = "static-bool";
const MULTI: &str = "multi-condition";
const MULTI2: &str = "multi-condition-2";
const FRACTIONAL: &str = "fractional";
const FRACTIONAL_SHORTHAND: &str = "fractional-shorthand";
const SEMVER: &str = "semver";

fn multi_condition_rule() -> Value {
    json!({"if": [{"and": [
        {"in": [{"var": "email"}, ["a@x.com", "b@x.com", "c@x.com"]]},
        {"starts_with": [{"var": "plan"}, "pro"]},
        {">=": [{"var": "age"}, 18]}
    ]}, "on", "off"]})
}

/// The first two conditions only: what the two-constraint Unleash toggle asks.
fn two_condition_rule() -> Value {
    json!({"if": [{"and": [
        {"in": [{"var": "email"}, ["a@x.com", "b@x.com", "c@x.com"]]},
        {"starts_with": [{"var": "plan"}, "pro"]}
    ]}, "on", "off"]})
}

fn ends_with_rule() -> Value {
    json!({"if": [{"ends_with": [{"var": "email"}, "@x.com"]}, "on", "off"]})
}

fn fractional_rule() -> Value {
    json!({"fractional": [{"var": "targetingKey"}, ["on", 50], ["off", 50]]})
}

fn fractional_shorthand_rule() -> Value {
    json!({"fractional": [["on", 50], ["off", 50]]})
}

fn semver_rule() -> Value {
    json!({"if": [{"sem_ver": [{"var": "version"}, ">=", "1.2.0"]}, "on", "off"]})
}

fn bool_flag() -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"})
}

fn string_flag(targeting: Option<Value>) -> Value {
    let mut flag = json!({
        "state": "ENABLED",
        "variants": {"on": "treatment", "off": "control"},
        "defaultVariant": "off"
    });
    if let (Some(rule), Some(map)) = (targeting, flag.as_object_mut()) {
        map.insert("targeting".into(), rule);
    }
    flag
}

/// The single-flag cases, as one flagd definition.
fn cases_definition() -> Value {
    json!({"flags": {
        STATIC: bool_flag(),
        MULTI: string_flag(Some(multi_condition_rule())),
        MULTI2: string_flag(Some(two_condition_rule())),
        FRACTIONAL: string_flag(Some(fractional_rule())),
        FRACTIONAL_SHORTHAND: string_flag(Some(fractional_shorthand_rule())),
        SEMVER: string_flag(Some(semver_rule())),
    }})
}

/// An Unleash constraint. List operators (IN, STR_*) take `values`; the numeric, date and semver
/// ones take a single `value`.
fn constraint(context_name: &str, operator: &str, values: &[&str]) -> Value {
    let single = ["NUM_", "DATE_", "SEMVER_"]
        .iter()
        .any(|prefix| operator.starts_with(prefix));
    match values {
        [value] if single => {
            json!({"contextName": context_name, "operator": operator, "value": value})
        }
        _ => json!({"contextName": context_name, "operator": operator, "values": values}),
    }
}

fn toggle(name: &str, strategy: Value) -> Value {
    json!({"name": name, "enabled": true, "strategies": [strategy]})
}

fn default_strategy(constraints: Vec<Value>) -> Value {
    json!({"name": "default", "constraints": constraints, "parameters": {}})
}

fn rollout_strategy(name: &str, stickiness: &str) -> Value {
    json!({"name": "flexibleRollout", "constraints": [], "parameters":
        {"rollout": "50", "stickiness": stickiness, "groupId": name}})
}

fn multi_constraints() -> Vec<Value> {
    vec![
        constraint("email", "IN", &["a@x.com", "b@x.com", "c@x.com"]),
        constraint("plan", "STR_STARTS_WITH", &["pro"]),
        constraint("age", "NUM_GTE", &["18"]),
    ]
}

/// The same questions as Unleash toggles.
fn cases_features() -> Value {
    json!({"version": 2, "features": [
        toggle(STATIC, default_strategy(vec![])),
        toggle(MULTI, default_strategy(multi_constraints())),
        toggle(MULTI2, default_strategy(multi_constraints()[..2].to_vec())),
        toggle(FRACTIONAL, rollout_strategy(FRACTIONAL, "userId")),
        toggle(FRACTIONAL_SHORTHAND, rollout_strategy(FRACTIONAL_SHORTHAND, "default")),
        toggle(SEMVER, default_strategy(vec![constraint("version", "SEMVER_GTE", &["1.2.0"])])),
    ]})
}

/// A realistic mix for resolve-all: per ten flags, five static booleans, one static string, and
/// four targeted ones (multi-condition, ends_with, fractional, sem_ver).
fn mixed_key(i: usize) -> String {
    format!("flag-{i:04}")
}

fn mixed_definition(n: usize) -> Value {
    let flags: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let flag = match i % 10 {
                0..=4 => bool_flag(),
                5 => string_flag(None),
                6 => string_flag(Some(multi_condition_rule())),
                7 => string_flag(Some(ends_with_rule())),
                8 => string_flag(Some(fractional_shorthand_rule())),
                _ => string_flag(Some(semver_rule())),
            };
            (mixed_key(i), flag)
        })
        .collect();
    json!({ "flags": flags })
}

fn mixed_features(n: usize) -> Value {
    let features: Vec<Value> = (0..n)
        .map(|i| {
            let name = mixed_key(i);
            let strategy = match i % 10 {
                0..=5 => default_strategy(vec![]),
                6 => default_strategy(multi_constraints()),
                7 => default_strategy(vec![constraint("email", "STR_ENDS_WITH", &["@x.com"])]),
                8 => rollout_strategy(&name, "default"),
                _ => default_strategy(vec![constraint("version", "SEMVER_GTE", &["1.2.0"])]),
            };
            toggle(&name, strategy)
        })
        .collect();
    json!({"version": 2, "features": features})
}

// ---------------------------------------------------------------------------------------------
// The subject every engine sees: it matches every rule above.
// ---------------------------------------------------------------------------------------------

const TARGETING_KEY: &str = "user-42";
const EMAIL: &str = "b@x.com";
const PLAN: &str = "pro-annual";
const AGE: i64 = 34;
const VERSION: &str = "1.4.2";

fn bunting_context() -> EvaluationContext {
    EvaluationContext::new()
        .with_targeting_key(TARGETING_KEY)
        .with("email", EMAIL)
        .with("plan", PLAN)
        .with("age", AGE)
        .with("version", VERSION)
}

fn flagd_context() -> open_feature::EvaluationContext {
    open_feature::EvaluationContext::default()
        .with_targeting_key(TARGETING_KEY)
        .with_custom_field("email", EMAIL)
        .with_custom_field("plan", PLAN)
        .with_custom_field("age", AGE)
        .with_custom_field("version", VERSION)
}

fn unleash_context() -> Context {
    let properties = [
        ("email", EMAIL.to_owned()),
        ("plan", PLAN.to_owned()),
        ("age", AGE.to_string()),
        ("version", VERSION.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Context {
        user_id: Some(TARGETING_KEY.to_owned()),
        properties: Some(properties),
        ..Context::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Loading each engine.
// ---------------------------------------------------------------------------------------------

fn bunting(definition: &Value) -> FlagSet {
    // CBOR, not the default (string): flagd-evaluation-engine 0.1 hashes CBOR, and the sanity
    // check below compares buckets.
    let options = CompileOptions {
        fractional: bunting_engine::FractionalMode::Cbor,
        ..CompileOptions::default()
    };
    match bunting_engine::compile(&definition.to_string(), &options) {
        Ok(compiled) => compiled.flag_set,
        Err(e) => fail(&format!("Bunting rejected the benchmark flags: {e:?}")),
    }
}

/// flagd-evaluation-engine resolves a flag the way flagd's in-process provider does: look the flag
/// up, serve the default variant when there is no targeting, otherwise run the targeting rule and
/// map the variant name it returns to the variant's value. Its only evaluation entry point,
/// `Operator::apply`, takes the rule as JSON text, so the text is rendered once here, outside
/// the timed loop (more generous than re-rendering it per call).
struct Flagd {
    operator: Operator,
    flags: HashMap<String, (FeatureFlag, Option<String>)>,
    /// The flag keys in order, for resolve-all.
    keys: Vec<String>,
}

impl Flagd {
    fn load(definition: &Value) -> Flagd {
        let parsed = match FlagParser::parse_string(&definition.to_string()) {
            Ok(parsed) => parsed,
            Err(e) => fail(&format!(
                "flagd-evaluation-engine rejected the flags: {e:?}"
            )),
        };
        let mut keys: Vec<String> = parsed.flags.keys().cloned().collect();
        keys.sort();
        let flags = parsed
            .flags
            .into_iter()
            .map(|(key, flag)| {
                let rule = flag.targeting.as_ref().map(Value::to_string);
                (key, (flag, rule))
            })
            .collect();
        Flagd {
            operator: Operator::new(),
            flags,
            keys,
        }
    }

    fn resolve(&self, key: &str, ctx: &open_feature::EvaluationContext) -> Option<&Value> {
        let (flag, rule) = self.flags.get(key)?;
        if flag.state == "DISABLED" {
            return None;
        }
        let Some(rule) = rule else {
            return flag.variants.get(&flag.default_variant);
        };
        match self.operator.apply(key, rule, ctx) {
            Ok(Some(variant)) => flag.variants.get(&variant),
            Ok(None) => flag.variants.get(&flag.default_variant),
            Err(_) => None,
        }
    }
}

fn yggdrasil(features: Value) -> EngineState {
    let features: ClientFeatures = match serde_json::from_value(features) {
        Ok(features) => features,
        Err(e) => fail(&format!("the Unleash toggles do not parse: {e}")),
    };
    let engine = EngineState::default();
    if let Some(warnings) = engine.take_state(UpdateMessage::FullResponse(features)) {
        fail(&format!("Yggdrasil warned about the toggles: {warnings:?}"));
    }
    engine
}

#[allow(clippy::panic)]
fn fail(message: &str) -> ! {
    panic!("{message}")
}

fn check(ok: bool, what: &str) {
    if !ok {
        fail(what);
    }
}

/// Before timing anything: every engine answers the expected value for the benchmark context, so
/// no engine is measured taking a short cut through an error or a non-match.
fn check_answers(set: &FlagSet, flagd: &Flagd, ygg: &EngineState) {
    let (bc, fc, uc) = (bunting_context(), flagd_context(), unleash_context());
    let r = set.resolve_bool(STATIC, &bc);
    check(
        r.value == Some(true) && r.reason == Reason::Static,
        "bunting static",
    );
    check(
        flagd.resolve(STATIC, &fc) == Some(&json!(true)),
        "flagd static",
    );
    for key in [MULTI, MULTI2, SEMVER] {
        let r = set.resolve_string(key, &bc);
        check(
            r.value == Some("treatment") && r.reason == Reason::TargetingMatch,
            &format!("bunting {key}: {r:?}"),
        );
        check(
            flagd.resolve(key, &fc) == Some(&json!("treatment")),
            &format!("flagd {key}"),
        );
    }
    for key in [FRACTIONAL, FRACTIONAL_SHORTHAND] {
        let bunting = set.resolve_string(key, &bc);
        check(
            bunting.reason == Reason::TargetingMatch,
            &format!("bunting {key}"),
        );
        // Both hash CBOR here (flagd-evaluation-engine 0.1 always does), so they put the user in
        // the same bucket.
        check(
            flagd.resolve(key, &fc).and_then(Value::as_str) == bunting.value,
            &format!("flagd and Bunting disagree on {key}"),
        );
    }
    for name in [STATIC, MULTI, MULTI2, SEMVER] {
        check(
            ygg.is_enabled(name, &uc, &None),
            &format!("yggdrasil {name}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmarks.
// ---------------------------------------------------------------------------------------------

fn single_flag_cases(c: &mut Criterion) {
    let set = bunting(&cases_definition());
    let flagd = Flagd::load(&cases_definition());
    let ygg = yggdrasil(cases_features());
    check_answers(&set, &flagd, &ygg);
    let (bc, fc, uc) = (bunting_context(), flagd_context(), unleash_context());
    let no_external: Option<HashMap<String, bool>> = None;

    // (group, flag key (the Unleash toggle has the same name), Bunting resolves a boolean?)
    let cases = [
        ("static_bool", STATIC, true),
        ("multi_condition", MULTI, false),
        ("multi_condition_2", MULTI2, false),
        ("fractional", FRACTIONAL, false),
        ("fractional_shorthand", FRACTIONAL_SHORTHAND, false),
        ("sem_ver", SEMVER, false),
    ];
    for (group_name, key, boolean) in cases {
        let mut group = c.benchmark_group(group_name);
        if boolean {
            group.bench_function("bunting", |b| {
                b.iter(|| set.resolve_bool(black_box(key), black_box(&bc)).value);
            });
        } else {
            group.bench_function("bunting", |b| {
                b.iter(|| set.resolve_string(black_box(key), black_box(&bc)).value);
            });
        }
        // The value is typed as Bunting's typed resolution types it, so both do the same work.
        group.bench_function("flagd-evaluation-engine", |b| {
            b.iter(|| {
                flagd.resolve(black_box(key), black_box(&fc)).map(|v| {
                    if boolean {
                        v.as_bool().is_some()
                    } else {
                        v.is_string()
                    }
                })
            });
        });
        group.bench_function("yggdrasil", |b| {
            b.iter(|| ygg.is_enabled(black_box(key), black_box(&uc), &no_external));
        });
        group.finish();
    }
}

fn resolve_all(c: &mut Criterion) {
    let (bc, fc, uc) = (bunting_context(), flagd_context(), unleash_context());
    let no_external: Option<HashMap<String, bool>> = None;
    for n in [100usize, 1_000] {
        let set = bunting(&mixed_definition(n));
        let flagd = Flagd::load(&mixed_definition(n));
        let ygg = yggdrasil(mixed_features(n));
        let keys: Vec<String> = (0..n).map(mixed_key).collect();
        check(set.len() == n && flagd.keys == keys, "flag counts");
        check(
            set.resolve_all(&bc).all(|(_, r)| r.error.is_none()),
            "bunting resolve-all errors",
        );

        let mut group = c.benchmark_group("resolve_all");
        #[allow(clippy::cast_possible_truncation)]
        group.throughput(Throughput::Elements(n as u64));
        // Bunting's own resolve-all: a lazy walk over the flags in key order.
        group.bench_with_input(BenchmarkId::new("bunting", n), &set, |b, set| {
            b.iter(|| {
                for item in set.resolve_all(black_box(&bc)) {
                    black_box(item);
                }
            });
        });
        // The same, one keyed lookup per flag, as the peers below must do it.
        group.bench_with_input(BenchmarkId::new("bunting-by-key", n), &set, |b, set| {
            b.iter(|| {
                for key in &keys {
                    black_box(set.resolve(black_box(key), black_box(&bc)));
                }
            });
        });
        group.bench_with_input(
            BenchmarkId::new("flagd-evaluation-engine", n),
            &flagd,
            |b, flagd| {
                b.iter(|| {
                    for key in &flagd.keys {
                        black_box(flagd.resolve(black_box(key), black_box(&fc)));
                    }
                });
            },
        );
        group.bench_with_input(BenchmarkId::new("yggdrasil", n), &ygg, |b, ygg| {
            b.iter(|| {
                for key in &keys {
                    black_box(ygg.is_enabled(black_box(key), black_box(&uc), &no_external));
                }
            });
        });
        group.finish();
    }
}

criterion_group!(benches, single_flag_cases, resolve_all);
criterion_main!(benches);
