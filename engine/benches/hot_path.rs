//! The engine's hot paths on their own: the Bunting cases of the root crate's `benches/engine.rs`
//! that matter for per-request overhead (a static flag, a three-condition rule, `fractional`,
//! resolve-all over 100 and 1,000 flags) and compiling a 100-flag document from its text.
//!
//! It uses only API that predates the evaluation budget, so the same file measures the engine
//! before and after a change: `cargo bench -p bunting-engine --bench hot_path -- --warm-up-time 1
//! --measurement-time 3`.

use std::hint::black_box;

use bunting_engine::{CompileOptions, EvaluationContext, FlagSet};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

fn multi_condition_rule() -> Value {
    json!({"if": [{"and": [
        {"in": [{"var": "email"}, ["a@x.com", "b@x.com", "c@x.com"]]},
        {"starts_with": [{"var": "plan"}, "pro"]},
        {">=": [{"var": "age"}, 18]}
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

fn cases_definition() -> Value {
    json!({"flags": {
        "static-bool": bool_flag(),
        "multi-condition": string_flag(Some(multi_condition_rule())),
        "fractional": string_flag(Some(fractional_rule())),
    }})
}

/// Per ten flags: five static booleans, one static string, four targeted ones, as in the root
/// crate's resolve-all case.
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
            (format!("flag-{i:04}"), flag)
        })
        .collect();
    json!({ "flags": flags })
}

fn context() -> EvaluationContext {
    EvaluationContext::new()
        .with_targeting_key("user-42")
        .with("email", "b@x.com")
        .with("plan", "pro-annual")
        .with("age", 34)
        .with("version", "1.4.2")
}

#[allow(clippy::panic)]
fn fail(message: &str) -> ! {
    panic!("{message}")
}

fn flag_set(text: &str) -> FlagSet {
    match bunting_engine::compile(text, &CompileOptions::default()) {
        Ok(compiled) if compiled.diagnostics.is_empty() => compiled.flag_set,
        Ok(compiled) => fail(&format!("diagnostics: {:?}", compiled.diagnostics)),
        Err(e) => fail(&format!("the benchmark flags do not compile: {e:?}")),
    }
}

fn single_flag_cases(c: &mut Criterion) {
    let set = flag_set(&cases_definition().to_string());
    let ctx = context();
    let mut group = c.benchmark_group("hot_path");
    group.bench_function("static_bool", |b| {
        b.iter(|| {
            set.resolve_bool(black_box("static-bool"), black_box(&ctx))
                .value
        });
    });
    group.bench_function("multi_condition", |b| {
        b.iter(|| {
            set.resolve_string(black_box("multi-condition"), black_box(&ctx))
                .value
        });
    });
    group.bench_function("fractional", |b| {
        b.iter(|| {
            set.resolve_string(black_box("fractional"), black_box(&ctx))
                .value
        });
    });
    group.finish();
}

fn resolve_all(c: &mut Criterion) {
    let ctx = context();
    let mut group = c.benchmark_group("hot_path_resolve_all");
    for n in [100usize, 1_000] {
        let set = flag_set(&mixed_definition(n).to_string());
        if set.resolve_all(&ctx).any(|(_, r)| r.error.is_some()) {
            fail("resolve-all errors");
        }
        #[allow(clippy::cast_possible_truncation)]
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
            b.iter(|| {
                for item in set.resolve_all(black_box(&ctx)) {
                    black_box(item);
                }
            });
        });
    }
    group.finish();
}

/// Parsing and compiling a 100-flag document from its text: what every update pays.
fn compile_100(c: &mut Criterion) {
    let text = mixed_definition(100).to_string();
    c.bench_function("hot_path_compile_100_flags", |b| {
        b.iter(|| bunting_engine::compile(black_box(&text), &CompileOptions::default()).is_ok());
    });
}

criterion_group!(benches, single_flag_cases, resolve_all, compile_100);
criterion_main!(benches);
