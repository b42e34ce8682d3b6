//! The hot paths allocate nothing: resolving a static flag, and resolving a rule whose conditions
//! only compare context fields with constants, make no heap allocation once warmed up.
//!
//! Its own test binary, because it replaces the global allocator with one that counts. The
//! allocator wrapper comes from `stats_alloc`: the workspace forbids `unsafe`, which a hand-written
//! `GlobalAlloc` would need. The counters are process-wide, so this binary holds a single test and
//! nothing else runs while it counts.

use std::alloc::System;
use std::hint::black_box;

use bunting_engine::{CompileOptions, EvaluationContext, FlagSet, Reason};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const DEFINITION: &str = r#"{"flags": {
    "static-bool": {
        "state": "ENABLED",
        "variants": {"on": true, "off": false},
        "defaultVariant": "on"
    },
    "multi-condition": {
        "state": "ENABLED",
        "variants": {"on": "treatment", "off": "control"},
        "defaultVariant": "off",
        "targeting": {"if": [{"and": [
            {"in": [{"var": "email"}, ["a@x.com", "b@x.com", "c@x.com"]]},
            {"starts_with": [{"var": "plan"}, "pro"]},
            {">=": [{"var": "age"}, 18]},
            {"==": [{"var": "country"}, "NZ"]},
            {"ends_with": [{"var": "email"}, "@x.com"]}
        ]}, "on", "off"]}
    }
}}"#;

const ROUNDS: usize = 1_000;

fn flag_set() -> FlagSet {
    match bunting_engine::compile(DEFINITION, &CompileOptions::default()) {
        Ok(compiled) => compiled.flag_set,
        Err(e) => fail(&format!("the test definition should compile: {e:?}")),
    }
}

#[allow(clippy::panic)]
fn fail(message: &str) -> ! {
    panic!("{message}")
}

/// Heap operations (allocations and reallocations) made by `ROUNDS` calls of `f`, after one
/// warm-up call.
fn heap_operations(mut f: impl FnMut()) -> usize {
    f();
    let region = Region::new(GLOBAL);
    for _ in 0..ROUNDS {
        f();
    }
    let change = region.change();
    change.allocations + change.reallocations
}

#[test]
fn static_and_constant_comparison_paths_do_not_allocate() {
    // The counter itself works: one allocation per round is seen as such.
    let control = heap_operations(|| {
        black_box(Vec::<u8>::with_capacity(black_box(16)));
    });
    assert_eq!(
        control, ROUNDS,
        "the counting allocator should see every allocation"
    );

    let flags = flag_set();
    let matching = EvaluationContext::new()
        .with_targeting_key("user-42")
        .with("email", "b@x.com")
        .with("plan", "pro-annual")
        .with("age", 34)
        .with("country", "NZ");
    let not_matching = EvaluationContext::new()
        .with_targeting_key("user-43")
        .with("email", "z@y.com")
        .with("plan", "free");

    // The answers first, so the counts below are of the real paths and not of an error.
    let r = flags.resolve_bool("static-bool", &matching);
    assert_eq!((r.value, r.reason), (Some(true), Reason::Static));
    let r = flags.resolve_string("multi-condition", &matching);
    assert_eq!(
        (r.value, r.reason),
        (Some("treatment"), Reason::TargetingMatch)
    );
    let r = flags.resolve_string("multi-condition", &not_matching);
    assert_eq!(
        (r.value, r.reason),
        (Some("control"), Reason::TargetingMatch)
    );

    let static_bool = heap_operations(|| {
        black_box(flags.resolve_bool(black_box("static-bool"), black_box(&matching)));
    });
    let rule_match = heap_operations(|| {
        black_box(flags.resolve_string(black_box("multi-condition"), black_box(&matching)));
    });
    let rule_miss = heap_operations(|| {
        black_box(flags.resolve_string(black_box("multi-condition"), black_box(&not_matching)));
    });
    let all = heap_operations(|| {
        for item in flags.resolve_all(black_box(&matching)) {
            black_box(item);
        }
    });

    assert_eq!(
        (static_bool, rule_match, rule_miss, all),
        (0, 0, 0, 0),
        "heap allocations in {ROUNDS} resolutions: (static resolve_bool, multi-condition match, \
         multi-condition miss, resolve_all)"
    );
}
