//! The most expensive evaluations that still fit the default [`Budget`]: how long one takes and
//! how many bytes it allocates. The budget's promise is "about a millisecond of CPU and at most the
//! size budget of allocation"; these cases are the worst shapes we know how to build.
//!
//! Each case is a rule with a size knob `n` (a constant array's length, a context array's length,
//! a string's length, a fan-out). Setup finds the largest `n` whose evaluation still fits the
//! default budget (a binary search on "resolves without error"), prints its allocation, and the
//! benchmark times that evaluation and the first one that does not fit (`n + 1`, which fails with
//! GENERAL and must cost no more).
//!
//! `cargo bench -p bunting-engine --bench eval_budget -- --warm-up-time 1 --measurement-time 3`

use std::alloc::System;
use std::hint::black_box;

use bunting_engine::{Budget, CompileOptions, EvaluationContext, FlagSet};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[allow(clippy::panic)]
fn fail(message: &str) -> ! {
    panic!("{message}")
}

fn numbers(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!(i)).collect())
}

/// A case: its flag document and the context for size `n`.
struct Case {
    name: &'static str,
    build: fn(usize) -> (Value, EvaluationContext),
    /// The search range for `n`.
    max_n: usize,
}

fn flag(rule: &Value) -> Value {
    json!({"state": "ENABLED", "variants": {"on": "on", "off": "off"}, "defaultVariant": "off",
           "targeting": {"if": [rule, "on", "off"]}})
}

fn document(rule: &Value) -> Value {
    json!({"flags": {"worst": flag(rule)}})
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "nested_some_constant",
            // Two nested loops over constant arrays, never matching: every iteration runs.
            build: |n| {
                let rule = json!({"some": [numbers(n), {"some": [numbers(n),
                    {"==": [{"var": ""}, -1]}]}]});
                (document(&rule), EvaluationContext::new())
            },
            max_n: 1_000,
        },
        Case {
            name: "map_context_array",
            build: |n| {
                let rule = json!({"map": [{"var": "items"}, {"+": [{"var": ""}, 1]}]});
                (
                    document(&rule),
                    EvaluationContext::new().with("items", numbers(n)),
                )
            },
            max_n: 100_000,
        },
        Case {
            name: "reduce_cat_doubling",
            build: |n| {
                let rule = json!({"==": [{"reduce": [{"var": "items"},
                    {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]}, "xxxxxxxx"]}, "x"]});
                (
                    document(&rule),
                    EvaluationContext::new().with("items", numbers(n)),
                )
            },
            max_n: 64,
        },
        Case {
            name: "reduce_cat_linear",
            // The accumulator grows by 64 bytes a round: quadratic total allocation.
            build: |n| {
                let rule = json!({"==": [{"reduce": [{"var": "items"},
                    {"cat": [{"var": "accumulator"}, "x".repeat(64)]}, ""]}, "x"]});
                (
                    document(&rule),
                    EvaluationContext::new().with("items", numbers(n)),
                )
            },
            max_n: 10_000,
        },
        Case {
            name: "cat_merge_substr",
            // A long context string concatenated, sliced and merged ten times over.
            build: |n| {
                let s = json!({"var": "s"});
                let cat = json!({"cat": vec![s.clone(); 10]});
                let rule = json!({"==": [{"merge": [
                    {"substr": [cat.clone(), 1]}, {"substr": [cat, 2, -1]},
                    {"merge": vec![json!({"var": "a"}); 10]}]}, "x"]});
                (
                    document(&rule),
                    EvaluationContext::new()
                        .with("s", "s".repeat(n))
                        .with("a", numbers(64)),
                )
            },
            max_n: 1 << 20,
        },
        Case {
            name: "shared_ref_fanout",
            // e2 = n copies of e1, e1 = n copies of e0: n^2 evaluations of e0.
            build: |n| {
                let mut evaluators = Map::new();
                evaluators.insert("e0".into(), json!({"+": [{"var": "n"}, 1]}));
                evaluators.insert("e1".into(), json!({"+": vec![json!({"$ref": "e0"}); n]}));
                evaluators.insert("e2".into(), json!({"+": vec![json!({"$ref": "e1"}); n]}));
                let document = json!({"$evaluators": evaluators,
                    "flags": {"worst": flag(&json!({">": [{"$ref": "e2"}, 0]}))}});
                (document, EvaluationContext::new().with("n", 1))
            },
            max_n: 1_000,
        },
        Case {
            name: "shared_ref_long_compare",
            // 100 evaluations of a comparison of two equal context strings of n bytes.
            build: |n| {
                let mut evaluators = Map::new();
                evaluators.insert(
                    "e0".into(),
                    json!({"if": [{"==": [{"var": "a"}, {"var": "b"}]}, 1, 0]}),
                );
                evaluators.insert("e1".into(), json!({"+": vec![json!({"$ref": "e0"}); 10]}));
                evaluators.insert("e2".into(), json!({"+": vec![json!({"$ref": "e1"}); 10]}));
                let document = json!({"$evaluators": evaluators,
                    "flags": {"worst": flag(&json!({">": [{"$ref": "e2"}, 0]}))}});
                let ctx = EvaluationContext::new()
                    .with("a", "q".repeat(n))
                    .with("b", "q".repeat(n));
                (document, ctx)
            },
            max_n: 1 << 20,
        },
        Case {
            name: "some_in_constant_list",
            // Every element of a context array looked up in a 1,000-entry constant list.
            build: |n| {
                let rule = json!({"some": [{"var": "items"},
                    {"in": [{"var": ""}, Value::Array((0..1_000).map(|i| json!(format!("id-{i}"))).collect())]}]});
                let items: Vec<Value> = (0..n).map(|i| json!(format!("user-{i}"))).collect();
                (
                    document(&rule),
                    EvaluationContext::new().with("items", Value::Array(items)),
                )
            },
            max_n: 100_000,
        },
        Case {
            name: "filter_copying_strings",
            build: |n| {
                let rule = json!({"filter": [{"var": "items"}, true]});
                let items: Vec<Value> = (0..n).map(|_| json!("y".repeat(1_000))).collect();
                (
                    document(&rule),
                    EvaluationContext::new().with("items", Value::Array(items)),
                )
            },
            max_n: 100_000,
        },
        Case {
            name: "array_equality_coercion",
            // `==` between an array element and a string goes through the array's string form.
            build: |n| {
                let rule = json!({"some": [{"var": "rows"}, {"==": [{"var": ""}, "x"]}]});
                let rows: Vec<Value> = (0..n).map(|_| numbers(100)).collect();
                (
                    document(&rule),
                    EvaluationContext::new().with("rows", Value::Array(rows)),
                )
            },
            max_n: 10_000,
        },
    ]
}

fn compiled(document: &Value) -> FlagSet {
    match bunting_engine::compile(&document.to_string(), &CompileOptions::default()) {
        Ok(c) if !c.has_errors() => c.flag_set,
        Ok(c) => fail(&format!("refused at compile time: {:?}", c.diagnostics)),
        Err(e) => fail(&format!("not a document: {e}")),
    }
}

/// Whether size `n` compiles and evaluates within the default budget.
fn fits(case: &Case, n: usize) -> bool {
    let (document, ctx) = (case.build)(n);
    match bunting_engine::compile(&document.to_string(), &CompileOptions::default()) {
        Ok(c) if !c.has_errors() => c.flag_set.resolve_string("worst", &ctx).error.is_none(),
        _ => false,
    }
}

/// The largest `n` in `1..=max_n` that fits (evaluation cost grows with `n`).
fn largest_fitting(case: &Case) -> usize {
    let (mut lo, mut hi) = (1, case.max_n);
    if !fits(case, lo) {
        fail(&format!("{}: even n = 1 does not fit", case.name));
    }
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(case, mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Bytes allocated by one evaluation (after a warm-up one).
fn bytes_allocated(set: &FlagSet, ctx: &EvaluationContext) -> usize {
    black_box(set.resolve_string("worst", ctx).value);
    let region = Region::new(GLOBAL);
    black_box(set.resolve_string("worst", ctx).value);
    region.change().bytes_allocated
}

fn worst_cases(c: &mut Criterion) {
    let budget = Budget::default();
    println!(
        "default budget: {} steps, {} built bytes",
        budget.max_steps, budget.max_built_bytes
    );
    let mut group = c.benchmark_group("eval_budget");
    for case in cases() {
        let n = largest_fitting(&case);
        let (document, ctx) = (case.build)(n);
        let fitting = compiled(&document);
        let (over_document, over_ctx) = (case.build)(n + 1);
        let over = bunting_engine::compile(&over_document.to_string(), &CompileOptions::default());
        let over = match over {
            Ok(c) => c.flag_set,
            Err(e) => fail(&e.to_string()),
        };
        let over_error = over
            .resolve_string("worst", &over_ctx)
            .error
            .map_or_else(|| "none".to_owned(), |e| e.to_string());
        println!(
            "{}: largest n within budget = {n}; one evaluation allocates {} bytes (n + 1: {} bytes, {over_error})",
            case.name,
            bytes_allocated(&fitting, &ctx),
            bytes_allocated(&over, &over_ctx),
        );
        group.bench_function(format!("{}/fits", case.name), |b| {
            b.iter(|| {
                fitting
                    .resolve_string(black_box("worst"), black_box(&ctx))
                    .value
            });
        });
        group.bench_function(format!("{}/over", case.name), |b| {
            b.iter(|| {
                over.resolve_string(black_box("worst"), black_box(&over_ctx))
                    .value
            });
        });
    }
    group.finish();
}

criterion_group!(benches, worst_cases);
criterion_main!(benches);
