//! The evaluation budget (issue 9): rules whose worst case is visible in their constants are
//! refused when compiled; rules that blow the budget on a caller's context fail that one
//! evaluation with GENERAL, quickly and without allocating past the budget; nothing else changes.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use bunting_engine::{
    Budget, BudgetKind, CompileOptions, Compiled, Entry, ErrorCode, EvaluationContext,
    FractionalMode, Reason, Rule, Severity, compile, compile_value,
};
use serde_json::{Value, json};

/// One flag whose targeting is `rule`, answering "on" or "off".
fn flag_with(rule: &Value) -> Value {
    json!({"state": "ENABLED", "variants": {"on": "on", "off": "off"}, "defaultVariant": "off",
           "targeting": rule})
}

fn compiled(document: &Value) -> Compiled {
    compile(&document.to_string(), &CompileOptions::default()).expect("well-formed document")
}

fn numbers(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!(i)).collect())
}

/// The attack from issue 9: `reduce` doubling `cat(accumulator, accumulator)`, 2^40 bytes.
fn doubling(items: Value) -> Value {
    json!({"if": [{"==": [
        {"reduce": [items, {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]}, "xxxxxxxx"]},
        "x"]}, "on", "off"]})
}

/// Three nested `some`, each over `input(level)`.
fn nested_some(input: &dyn Fn(usize) -> Value) -> Value {
    json!({"if": [{"some": [input(0), {"some": [input(1), {"some": [input(2),
        {"==": [{"var": ""}, -1]}]}]}]}, "on", "off"]})
}

/// The error diagnostics of flag `key`, as `(path, message)`.
fn errors(compiled: &Compiled) -> Vec<(String, String)> {
    compiled
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.path.clone(), d.message.clone()))
        .collect()
}

#[test]
fn rules_that_must_exceed_the_budget_are_refused_when_compiled() {
    let c600 = numbers(600);
    // (case, rule, path of the refused operator, words the message must contain)
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "reduce doubling over a literal 40-item list",
            doubling(numbers(40)),
            "flags.bomb.targeting.if[0][\"==\"][0]",
            "over the size budget of 1048576 bytes",
        ),
        (
            "three nested some over a 600-item constant array",
            nested_some(&|_| c600.clone()),
            "flags.bomb.targeting.if[0].some[1]",
            "nested iteration over constant arrays needs 360000 steps, over the step budget of 20000",
        ),
        (
            "one loop over a constant array longer than the step budget",
            json!({"if": [{"some": [numbers(20_001), {"var": ""}]}, "on", "off"]}),
            "flags.bomb.targeting.if[0]",
            "needs 20001 steps, over the step budget of 20000",
        ),
        (
            "a constant map building more than the size budget",
            json!({"if": [{"==": [{"map": [numbers(10_000), "x".repeat(200)]}, 1]}, "on", "off"]}),
            "flags.bomb.targeting.if[0][\"==\"][0]",
            "this constant rule exceeds the size budget of 1048576 bytes",
        ),
        (
            "a constant in-list longer than the step budget can scan",
            json!({"if": [{"in": [{"var": "id"}, numbers(400_000)]}, "on", "off"]}),
            "flags.bomb.targeting.if[0]",
            "scanning a constant list of 400000 elements needs 50000 steps",
        ),
    ];
    for (case, rule, path, words) in cases {
        let compiled = compiled(
            &json!({"flags": {"bomb": flag_with(&rule), "fine": flag_with(&json!("on"))}}),
        );
        let errors = errors(&compiled);
        assert!(
            errors.iter().any(|(p, m)| p == path && m.contains(words)),
            "{case}: expected an error at {path} containing {words:?}, got {errors:?}"
        );
        // The flag with the error is broken (PARSE_ERROR, as flagd), the other one is served.
        let ctx = EvaluationContext::new();
        let r = compiled.flag_set.resolve_string("bomb", &ctx);
        assert_eq!(
            r.error.map(|e| e.code),
            Some(ErrorCode::ParseError),
            "{case}"
        );
        let r = compiled.flag_set.resolve_string("fine", &ctx);
        assert_eq!(
            (r.value, r.reason),
            (Some("on"), Reason::TargetingMatch),
            "{case}"
        );
    }
}

#[test]
fn context_driven_bombs_fail_their_evaluation_with_general() {
    let items = |n: usize| numbers(n);
    let rows = Value::Array((0..600).map(|_| numbers(600)).collect());
    // (case, rule, context, the budget it must exceed)
    let cases: Vec<(&str, Value, EvaluationContext, BudgetKind)> = vec![
        (
            "reduce doubling over a caller's 34-item array",
            doubling(json!({"var": "items"})),
            EvaluationContext::new().with("items", items(34)),
            BudgetKind::BuiltBytes,
        ),
        (
            "three nested some, the outer two over the caller's 600x600 array",
            nested_some(&|level| match level {
                0 => json!({"var": "rows"}),
                1 => json!({"var": ""}),
                _ => numbers(600),
            }),
            EvaluationContext::new().with("rows", rows.clone()),
            BudgetKind::Steps,
        ),
        (
            "map over a caller's array too long for the step budget",
            json!({"if": [{"map": [{"var": "items"}, {"+": [{"var": ""}, 1]}]}, "on", "off"]}),
            EvaluationContext::new().with("items", items(30_000)),
            BudgetKind::Steps,
        ),
        (
            "filter copying a caller's large strings past the size budget",
            json!({"if": [{"filter": [{"var": "items"}, true]}, "on", "off"]}),
            EvaluationContext::new().with(
                "items",
                Value::Array((0..100).map(|_| json!("y".repeat(20_000))).collect()),
            ),
            BudgetKind::BuiltBytes,
        ),
        (
            "cat of a caller's long string with itself, ten times over",
            json!({"if": [{"cat": vec![json!({"var": "s"}); 10]}, "on", "off"]}),
            EvaluationContext::new().with("s", "z".repeat(200_000)),
            BudgetKind::BuiltBytes,
        ),
    ];
    for (case, rule, ctx, kind) in cases {
        let compiled = compiled(&json!({"flags": {"bomb": flag_with(&rule)}}));
        assert_eq!(errors(&compiled), vec![], "{case}: compiles clean");
        let started = Instant::now();
        let r = compiled.flag_set.resolve_string("bomb", &ctx);
        // Not a benchmark: on main these ran for seconds or aborted the process.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{case}: took {:?}",
            started.elapsed()
        );
        let error = r.error.expect(case);
        assert_eq!(
            (error.code, error.exceeded, r.reason, r.value),
            (ErrorCode::General, Some(kind), Reason::Error, None),
            "{case}"
        );
        let budget = match kind {
            BudgetKind::Steps => "step budget of 20000".to_owned(),
            BudgetKind::BuiltBytes => "size budget of 1048576 bytes".to_owned(),
        };
        assert_eq!(
            error.message,
            format!("flag \"bomb\": evaluation exceeded its {budget}"),
            "{case}"
        );
    }
}

#[test]
fn the_same_rules_within_the_budget_resolve_as_before() {
    // (rule, context, variant): the bombs above, at sizes that fit.
    let cases: Vec<(Value, EvaluationContext, &str)> = vec![
        (
            doubling(json!({"var": "items"})),
            EvaluationContext::new().with("items", numbers(10)),
            "off",
        ),
        (
            json!({"if": [{"==": [{"reduce": [numbers(10), {"cat": [{"var": "accumulator"}, {"var": "accumulator"}]}, "x"]}, "x".repeat(1024)]}, "on", "off"]}),
            EvaluationContext::new(),
            "on",
        ),
        (
            nested_some(&|_| numbers(15)),
            EvaluationContext::new(),
            "off",
        ),
        (
            json!({"if": [{"some": [{"var": "items"}, {"==": [{"var": ""}, 2_999]}]}, "on", "off"]}),
            EvaluationContext::new().with("items", numbers(3_000)),
            "on",
        ),
        (
            json!({"if": [{"in": [{"var": "id"}, numbers(100_000)]}, "on", "off"]}),
            EvaluationContext::new().with("id", 99_999),
            "on",
        ),
    ];
    for (rule, ctx, variant) in cases {
        let compiled = compiled(&json!({"flags": {"f": flag_with(&rule)}}));
        assert_eq!(errors(&compiled), vec![], "{rule}");
        let r = compiled.flag_set.resolve_string("f", &ctx);
        assert_eq!((r.value, r.error), (Some(variant), None), "{rule}");
    }
}

#[test]
fn resolve_all_fails_only_the_flag_that_blew_its_budget() {
    let compiled = compiled(&json!({"flags": {
        "a-static": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"},
        "b-bomb": flag_with(&doubling(json!({"var": "items"}))),
        "c-rule": flag_with(&json!({"if": [{">": [{"var": "age"}, 18]}, "on", "off"]})),
    }}));
    let ctx = EvaluationContext::new()
        .with("items", numbers(34))
        .with("age", 30);
    let answers: Vec<(String, Option<Value>, Option<ErrorCode>, bool)> = compiled
        .flag_set
        .resolve_all(&ctx)
        .map(|(key, r)| {
            let exceeded = r.error.as_ref().is_some_and(|e| e.exceeded.is_some());
            (
                key.to_owned(),
                r.value.cloned(),
                r.error.map(|e| e.code),
                exceeded,
            )
        })
        .collect();
    assert_eq!(
        answers,
        vec![
            ("a-static".to_owned(), Some(json!(true)), None, false),
            ("b-bomb".to_owned(), None, Some(ErrorCode::General), true),
            ("c-rule".to_owned(), Some(json!("on")), None, false),
        ]
    );
}

/// A shared evaluator referenced many times in a tree, and again in the evaluators that use it:
/// `$ref` sharing multiplies work (10^6 evaluations of the innermost rule here), and every
/// evaluated node is a step, so the budget stops it.
#[test]
fn shared_evaluators_cannot_multiply_work_past_the_budget() {
    let mut evaluators = serde_json::Map::new();
    evaluators.insert("e0".into(), json!({"+": [{"var": "n"}, 1]}));
    for level in 1..=6 {
        let refs = vec![json!({"$ref": format!("e{}", level - 1)}); 10];
        evaluators.insert(format!("e{level}"), json!({ "+": refs }));
    }
    let document = json!({"$evaluators": evaluators, "flags": {
        "shared": flag_with(&json!({"if": [{">": [{"$ref": "e6"}, 0]}, "on", "off"]})),
        "small": flag_with(&json!({"if": [{">": [{"$ref": "e2"}, 0]}, "on", "off"]})),
    }});
    let compiled = compiled(&document);
    assert_eq!(errors(&compiled), vec![]);
    let ctx = EvaluationContext::new().with("n", 1);
    let started = Instant::now();
    let r = compiled.flag_set.resolve_string("shared", &ctx);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.error.and_then(|e| e.exceeded), Some(BudgetKind::Steps));
    // 10^2 evaluations of e0 fit.
    let r = compiled.flag_set.resolve_string("small", &ctx);
    assert_eq!((r.value, r.error), (Some("on"), None));
}

#[test]
fn the_budget_is_configurable_and_carried_by_the_flag_set() {
    let rule =
        json!({"if": [{"some": [{"var": "items"}, {"==": [{"var": ""}, -1]}]}, "on", "off"]});
    let document = json!({"flags": {"f": flag_with(&rule)}}).to_string();
    let tight = CompileOptions {
        budget: Budget {
            max_steps: 100,
            max_built_bytes: 1_000,
        },
        ..CompileOptions::default()
    };
    let set = compile(&document, &tight).unwrap().flag_set;
    assert_eq!(set.budget(), tight.budget);
    let ctx = |n| EvaluationContext::new().with("items", numbers(n));
    assert_eq!(set.resolve_string("f", &ctx(10)).value, Some("off"));
    let error = set.resolve_string("f", &ctx(200)).error.unwrap();
    assert_eq!(error.exceeded, Some(BudgetKind::Steps));
    assert_eq!(
        error.message,
        "flag \"f\": evaluation exceeded its step budget of 100"
    );
    // The default budget takes the same context in its stride.
    let set = compiled(&json!({"flags": {"f": flag_with(&rule)}})).flag_set;
    assert_eq!(set.budget(), Budget::default());
    assert_eq!(set.resolve_string("f", &ctx(200)).value, Some("off"));
    // A compile-time refusal follows the configured budget too.
    let nested = json!({"flags": {"f": flag_with(&nested_some(&|_| numbers(5)))}}).to_string();
    let compiled = compile(&nested, &tight).unwrap();
    assert!(
        matches!(compiled.flag_set.get("f"), Some(Entry::Broken(_))),
        "{:?}",
        compiled.diagnostics
    );
}

#[test]
fn a_standalone_rule_reports_its_budget() {
    let rule = doubling(json!({"var": "items"}));
    let (rule, _) = Rule::compile(&rule, FractionalMode::Cbor).unwrap();
    let ctx = EvaluationContext::new().with("items", numbers(34));
    assert_eq!(
        rule.try_evaluate("f", &ctx).map_err(|e| e.kind),
        Err(BudgetKind::BuiltBytes)
    );
    assert_eq!(rule.evaluate("f", &ctx), Value::Null);
    let ctx = EvaluationContext::new().with("items", numbers(3));
    assert_eq!(rule.try_evaluate("f", &ctx), Ok(json!("off")));
}

/// Work between two steps is linear in the operands, and long operands pay for their bytes: a
/// shared comparison of two 100 KB context strings evaluated 100 times through `$ref` fan-out
/// would otherwise cost a few hundred steps and 10 MB of comparing.
#[test]
fn long_operands_pay_for_their_bytes() {
    let mut evaluators = serde_json::Map::new();
    evaluators.insert(
        "e0".into(),
        json!({"if": [{"==": [{"var": "a"}, {"var": "b"}]}, 1, 0]}),
    );
    evaluators.insert("e1".into(), json!({"+": vec![json!({"$ref": "e0"}); 10]}));
    evaluators.insert("e2".into(), json!({"+": vec![json!({"$ref": "e1"}); 10]}));
    let document = json!({"$evaluators": evaluators, "flags": {
        "compare": flag_with(&json!({"if": [{">": [{"$ref": "e2"}, 0]}, "on", "off"]})),
    }});
    let set = compiled(&document).flag_set;
    let ctx = |len: usize| {
        EvaluationContext::new()
            .with("a", "q".repeat(len))
            .with("b", "q".repeat(len))
    };
    let r = set.resolve_string("compare", &ctx(100_000));
    assert_eq!(r.error.and_then(|e| e.exceeded), Some(BudgetKind::Steps));
    let r = set.resolve_string("compare", &ctx(1_000));
    assert_eq!((r.value, r.error), (Some("on"), None));
}

/// Which flags may loop: what a node uses to keep costly evaluations in a lane of their own.
#[test]
fn flags_with_loops_are_known_when_compiled() {
    let rule = |targeting: serde_json::Value| {
        json!({"state": "ENABLED", "variants": {"on": true, "off": false},
               "defaultVariant": "off", "targeting": targeting})
    };
    let document = json!({
        "$evaluators": {"looping": {"some": [{"var": "ids"}, {"==": [{"var": ""}, 1]}]}},
        "flags": {
            "static": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"},
            "compare": rule(json!({"if": [{"==": [{"var": "plan"}, "pro"]}, "on", "off"]})),
            "direct": rule(json!({"if": [{"all": [{"var": "ids"}, {">": [{"var": ""}, 0]}]}, "on", "off"]})),
            "shared": rule(json!({"if": [{"$ref": "looping"}, "on", "off"]})),
            "in_fraction": rule(json!({"fractional": [
                {"cat": [{"reduce": [{"var": "ids"}, {"+": [{"var": "accumulator"}, 1]}, 0]}]},
                ["on", 50], ["off", 50]]})),
        }
    });
    let set = compile_value(&document, &CompileOptions::default())
        .unwrap()
        .flag_set;
    for (key, iterates) in [
        ("static", false),
        ("compare", false),
        ("direct", true),
        ("shared", true),
        ("in_fraction", true),
        ("missing", false),
    ] {
        assert_eq!(set.iterates(Some(key)), iterates, "{key}");
    }
    assert!(set.iterates(None), "a set with one looping flag");
    let plain = json!({"flags": {"compare": rule(json!({"==": [{"var": "a"}, 1]}))}});
    let plain = compile_value(&plain, &CompileOptions::default())
        .unwrap()
        .flag_set;
    assert!(!plain.iterates(None));
}
