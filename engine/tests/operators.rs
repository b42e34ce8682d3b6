//! JsonLogic and flagd operator semantics, as data: rule, context, expected result.
//! Expected values follow json-logic-js (the reference implementation) and flagd's documentation.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bunting_engine::{EvaluationContext, FractionalMode, Rule};
use serde_json::{Value, json};

fn check(rule: Value, context: Value, expected: Value) {
    let ctx = EvaluationContext::from_value(context).expect("context is an object");
    let (compiled, _) = Rule::compile(&rule, FractionalMode::Cbor)
        .unwrap_or_else(|d| panic!("{rule} should compile: {d:?}"));
    let got = compiled.evaluate("my-flag", &ctx.at_time(1_700_000_000));
    assert_eq!(got, expected, "rule {rule}");
}

fn check_all(cases: &[(Value, Value, Value)]) {
    for (rule, context, expected) in cases {
        check(rule.clone(), context.clone(), expected.clone());
    }
}

#[test]
fn equality_and_logic() {
    check_all(&[
        (json!({"==": [1, 1]}), json!({}), json!(true)),
        (json!({"==": [1, "1"]}), json!({}), json!(true)),
        (json!({"==": [0, false]}), json!({}), json!(true)),
        (json!({"==": [null, 0]}), json!({}), json!(false)),
        (json!({"===": [1, "1"]}), json!({}), json!(false)),
        (json!({"===": [1, 1.0]}), json!({}), json!(true)),
        (json!({"!=": [1, 2]}), json!({}), json!(true)),
        (json!({"!==": [1, "1"]}), json!({}), json!(true)),
        (json!({"!": [true]}), json!({}), json!(false)),
        (json!({"!": true}), json!({}), json!(false)),
        (json!({"!!": [[]]}), json!({}), json!(false)),
        (json!({"!!": ["0"]}), json!({}), json!(true)),
        (json!({"or": [false, 0, "a"]}), json!({}), json!("a")),
        (json!({"or": [false, 0]}), json!({}), json!(0)),
        (json!({"and": [true, "", 3]}), json!({}), json!("")),
        (json!({"and": [1, 2]}), json!({}), json!(2)),
        (json!({"if": [true, "yes", "no"]}), json!({}), json!("yes")),
        (
            json!({"if": [false, "a", false, "b", "c"]}),
            json!({}),
            json!("c"),
        ),
        (json!({"if": [false, "a"]}), json!({}), json!(null)),
        (json!({"?:": [true, 1, 2]}), json!({}), json!(1)),
        (
            json!({"if": [{"var": "vip"}, "gold", "standard"]}),
            json!({"vip": true}),
            json!("gold"),
        ),
    ]);
}

#[test]
fn comparisons_and_between() {
    check_all(&[
        (json!({"<": [1, 2]}), json!({}), json!(true)),
        (json!({"<": [1, 2, 3]}), json!({}), json!(true)),
        (json!({"<": [1, 1, 3]}), json!({}), json!(false)),
        (json!({"<=": [1, 1, 3]}), json!({}), json!(true)),
        (json!({">": ["b", "a"]}), json!({}), json!(true)),
        (json!({">": [3, 2, 1]}), json!({}), json!(true)),
        (json!({">=": [2, "2"]}), json!({}), json!(true)),
        (json!({"<": ["abc", 1]}), json!({}), json!(false)),
        (
            json!({">=": [{"var": "age"}, 18]}),
            json!({"age": 30}),
            json!(true),
        ),
        (json!({">=": [{"var": "age"}, 18]}), json!({}), json!(false)),
    ]);
}

#[test]
fn arithmetic() {
    check_all(&[
        (json!({"max": [1, 3, 2]}), json!({}), json!(3)),
        (json!({"min": [1, 3, 2]}), json!({}), json!(1)),
        (json!({"max": []}), json!({}), json!(null)),
        (json!({"+": [1, "2"]}), json!({}), json!(3)),
        (json!({"+": "3.5"}), json!({}), json!(3.5)),
        (json!({"-": [5, 2]}), json!({}), json!(3)),
        (json!({"-": [2]}), json!({}), json!(-2)),
        (json!({"*": [2, "3"]}), json!({}), json!(6)),
        (json!({"/": [6, 4]}), json!({}), json!(1.5)),
        (json!({"%": [7, 3]}), json!({}), json!(1)),
        (json!({"/": [1, 0]}), json!({}), json!(null)),
        (
            json!({"+": [{"var": "a"}, {"var": "b"}]}),
            json!({"a": 1, "b": 2.5}),
            json!(3.5),
        ),
    ]);
}

#[test]
fn data_access() {
    let ctx = json!({"a": {"b": 1}, "arr": [10, 20], "nil": null});
    check_all(&[
        (json!({"var": "a.b"}), ctx.clone(), json!(1)),
        (json!({"var": ["a.b"]}), ctx.clone(), json!(1)),
        (
            json!({"var": ["x", "fallback"]}),
            ctx.clone(),
            json!("fallback"),
        ),
        (json!({"var": "arr.1"}), ctx.clone(), json!(20)),
        (json!({"var": "a.b.c"}), ctx.clone(), json!(null)),
        (json!({"var": "nil"}), ctx.clone(), json!(null)),
        (json!({"var": ""}), json!({"k": 1}), json!({"k": 1})),
        (json!({"var": {"cat": ["a", ".b"]}}), ctx.clone(), json!(1)),
        (
            json!({"missing": ["a", "b"]}),
            json!({"a": 1}),
            json!(["b"]),
        ),
        (
            json!({"missing": ["a", "b"]}),
            json!({"a": ""}),
            json!(["a", "b"]),
        ),
        (
            json!({"missing_some": [1, ["a", "b"]]}),
            json!({"a": 1}),
            json!([]),
        ),
        (
            json!({"missing_some": [2, ["a", "b", "c"]]}),
            json!({"a": 1}),
            json!(["b", "c"]),
        ),
    ]);
}

#[test]
fn strings_and_arrays() {
    check_all(&[
        (
            json!({"in": ["Spring", "Springfield"]}),
            json!({}),
            json!(true),
        ),
        (json!({"in": [1, [1, 2]]}), json!({}), json!(true)),
        (
            json!({"in": [{"var": "c"}, ["NZ", "AU"]]}),
            json!({"c": "AU"}),
            json!(true),
        ),
        (
            json!({"in": [{"var": "c"}, ["NZ", "AU"]]}),
            json!({"c": "US"}),
            json!(false),
        ),
        (
            json!({"cat": ["I love", " pie"]}),
            json!({}),
            json!("I love pie"),
        ),
        (
            json!({"cat": [1, 2.5, true, null]}),
            json!({}),
            json!("12.5truenull"),
        ),
        (
            json!({"substr": ["jsonlogic", 4]}),
            json!({}),
            json!("logic"),
        ),
        (
            json!({"substr": ["jsonlogic", -5]}),
            json!({}),
            json!("logic"),
        ),
        (
            json!({"substr": ["jsonlogic", 1, 3]}),
            json!({}),
            json!("son"),
        ),
        (
            json!({"substr": ["jsonlogic", 4, -2]}),
            json!({}),
            json!("log"),
        ),
        (
            json!({"merge": [[1, 2], [3], 4]}),
            json!({}),
            json!([1, 2, 3, 4]),
        ),
        (
            json!({"map": [[1, 2, 3], {"*": [{"var": ""}, 2]}]}),
            json!({}),
            json!([2, 4, 6]),
        ),
        (
            json!({"map": [{"var": "nums"}, {"+": [{"var": ""}, 1]}]}),
            json!({"nums": [1, 2]}),
            json!([2, 3]),
        ),
        (
            json!({"filter": [[1, 2, 3], {">": [{"var": ""}, 1]}]}),
            json!({}),
            json!([2, 3]),
        ),
        (
            json!({"reduce": [[1, 2, 3], {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]}),
            json!({}),
            json!(6),
        ),
        (
            json!({"all": [[1, 2], {">": [{"var": ""}, 0]}]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"all": [[], {">": [{"var": ""}, 0]}]}),
            json!({}),
            json!(false),
        ),
        (
            json!({"none": [[1], {"<": [{"var": ""}, 0]}]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"some": [[1, -1], {"<": [{"var": ""}, 0]}]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"some": [{"var": "roles"}, {"==": [{"var": "name"}, "admin"]}]}),
            json!({"roles": [{"name": "dev"}, {"name": "admin"}]}),
            json!(true),
        ),
    ]);
}

#[test]
fn flagd_operators_and_enrichment() {
    check_all(&[
        (
            json!({"starts_with": ["abc", "ab"]}),
            json!({}),
            json!(true),
        ),
        (json!({"ends_with": ["abc", "bc"]}), json!({}), json!(true)),
        (
            json!({"starts_with": [{"var": "n"}, "a"]}),
            json!({"n": 1}),
            json!(null),
        ),
        (
            json!({"sem_ver": ["1.2.3", ">", "1.2.0"]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "~", "1.2.0"]}),
            json!({"v": "1.2.9"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "~", "1.2.0"]}),
            json!({"v": "1.3.0"}),
            json!(false),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "^", "1.0.0"]}),
            json!({"v": "v1.9.0"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "<", "2.0.0"]}),
            json!({"v": "2.0.0-rc.1"}),
            json!(true),
        ),
        (
            json!({"sem_ver": [{"var": "v"}, "=", "1.0.0"]}),
            json!({"v": "nope"}),
            json!(null),
        ),
        (
            json!({"var": "$flagd.flagKey"}),
            json!({}),
            json!("my-flag"),
        ),
        (
            json!({"var": "$flagd.timestamp"}),
            json!({}),
            json!(1_700_000_000),
        ),
        (
            json!({"var": "$flagd"}),
            json!({}),
            json!({"flagKey": "my-flag", "timestamp": 1_700_000_000}),
        ),
        (
            json!({">": [{"var": "$flagd.timestamp"}, 1_600_000_000]}),
            json!({}),
            json!(true),
        ),
        (
            json!({"var": "targetingKey"}),
            json!({"targetingKey": "u1"}),
            json!("u1"),
        ),
    ]);
}

#[test]
fn fractional_distributes_by_weight_and_is_sticky() {
    let rule = json!({"fractional": [["a", 25], ["b", 75]]});
    let (compiled, _) = Rule::compile(&rule, FractionalMode::Cbor).unwrap();
    let mut counts = [0u32; 2];
    for i in 0..20_000 {
        let ctx = EvaluationContext::new().with_targeting_key(format!("user-{i}"));
        let first = compiled.evaluate("exp", &ctx);
        assert_eq!(first, compiled.evaluate("exp", &ctx), "sticky per user");
        counts[usize::from(first == json!("b"))] += 1;
    }
    let share_a = f64::from(counts[0]) / 20_000.0;
    assert!((share_a - 0.25).abs() < 0.015, "a got {share_a}");
    // Without a targeting key there is nothing to bucket by: null, so the default variant applies.
    assert_eq!(
        compiled.evaluate("exp", &EvaluationContext::new()),
        json!(null)
    );
}

#[test]
fn absurd_fractional_weights_answer_null_instead_of_overflowing() {
    // Found by the `targeting` fuzz target: weights whose sum overflows u64.
    let huge = u64::MAX / 2 + 1;
    check(
        json!({"fractional": [["a", huge], ["b", huge], ["c", huge]]}),
        json!({"targetingKey": "u"}),
        json!(null),
    );
    check(
        json!({"fractional": [["a", {"var": "w"}], ["b", {"var": "w"}]]}),
        json!({"targetingKey": "u", "w": 1.8e19}),
        json!(null),
    );
}

#[test]
fn compile_errors_name_the_place() {
    let cases = [
        (
            json!({"if": [true, {"fo": 1}]}),
            "rule.if[1]",
            "unknown operator \"fo\"",
        ),
        (
            json!({"==": [1, 2, 3]}),
            "rule",
            "\"==\" takes 2 arguments, found 3",
        ),
        (json!({"a": 1, "b": 2}), "rule", "exactly one operator"),
        (json!({"var": [1, 2, 3]}), "rule.var", "optional default"),
        (
            json!({"$ref": "nowhere"}),
            "rule.$ref",
            "no evaluator named \"nowhere\"",
        ),
    ];
    for (rule, path, message) in cases {
        let problems = Rule::compile(&rule, FractionalMode::Cbor)
            .err()
            .unwrap_or_else(|| panic!("{rule} should be refused"));
        assert!(
            problems
                .iter()
                .any(|d| d.path == path && d.message.contains(message)),
            "{rule}: expected {path}: {message}, got {problems:?}"
        );
    }
}

#[test]
fn absurdly_deep_rules_are_refused_not_overflowed() {
    let mut rule = json!(true);
    for _ in 0..100 {
        rule = json!({"!": [rule]});
    }
    let problems = Rule::compile(&rule, FractionalMode::Cbor).unwrap_err();
    assert!(
        problems[0].message.contains("nested deeper than"),
        "{problems:?}"
    );
}
