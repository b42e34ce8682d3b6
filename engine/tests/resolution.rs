//! Flag-level behaviour: reasons, error codes, defaults, metadata, and bad definitions.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bunting_engine::{
    CompileOptions, Compiled, Dialect, Entry, ErrorCode, EvaluationContext, FlagSet, Reason,
    Severity, compile,
};
use serde_json::json;

fn flags(doc: serde_json::Value) -> Compiled {
    compile(&doc.to_string(), &CompileOptions::default()).expect("document is well-formed")
}

fn set() -> FlagSet {
    flags(json!({
        "metadata": {"flagSetId": "shop", "team": "core"},
        "flags": {
            "banner": {
                "state": "ENABLED",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", null]},
                "metadata": {"team": "growth"}
            },
            "named-by-bool": {
                "state": "ENABLED",
                "variants": {"true": "yes", "false": "no"},
                "targeting": {"==": [{"var": "plan"}, "pro"]}
            },
            "half-bool": {
                "state": "ENABLED",
                "variants": {"true": "yes"},
                "targeting": {"==": [{"var": "plan"}, "pro"]}
            },
            "colour": {
                "state": "ENABLED",
                "variants": {"red": "#f00", "blue": "#00f"},
                "defaultVariant": "red",
                "targeting": {"if": [{"var": "pick"}, {"var": "pick"}, null]}
            },
            "limit": {"state": "ENABLED", "variants": {"low": 10, "high": 2.5}, "defaultVariant": "low"},
            "fraction": {"state": "ENABLED", "variants": {"x": 2.5}, "defaultVariant": "x"},
            "caller-default": {"state": "ENABLED", "variants": {"a": "A"}},
            "off": {"state": "DISABLED", "variants": {"a": "A"}, "defaultVariant": "a"},
            "broken": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a",
                       "targeting": {"nope": []}}
        }
    }))
    .flag_set
}

#[test]
fn reasons_follow_flagd() {
    let set = set();
    let pro = EvaluationContext::new().with("plan", "pro");
    let free = EvaluationContext::new().with("plan", "free");

    let r = set.resolve_bool("banner", &pro);
    assert_eq!(
        (r.value, r.variant, r.reason),
        (Some(true), Some("on"), Reason::TargetingMatch)
    );
    let r = set.resolve_bool("banner", &free);
    assert_eq!(
        (r.value, r.variant, r.reason),
        (Some(false), Some("off"), Reason::Default)
    );
    // A boolean targeting result picks the variant named "true" or "false".
    let r = set.resolve_string("named-by-bool", &free);
    assert_eq!((r.value, r.variant), (Some("no"), Some("false")));
    let r = set.resolve_string("half-bool", &free);
    assert_eq!(r.error.map(|e| e.code), Some(ErrorCode::General));

    let r = set.resolve_int("limit", &free);
    assert_eq!((r.value, r.reason), (Some(10), Reason::Static));

    let r = set.resolve_string("colour", &EvaluationContext::new());
    assert_eq!((r.value, r.reason), (Some("#f00"), Reason::Default));

    let r = set.resolve_string("caller-default", &free);
    assert_eq!(
        (r.value, r.variant, r.reason),
        (None, None, Reason::Default)
    );
    assert_eq!(r.value_or("mine"), "mine");

    let r = set.resolve_string("off", &free);
    assert_eq!(
        (r.value, r.variant, r.reason),
        (None, None, Reason::Disabled)
    );
    assert!(r.error.is_none());
}

#[test]
fn error_codes_follow_flagd() {
    let set = set();
    let ctx = EvaluationContext::new();
    let code = |r: Option<bunting_engine::ResolveError>| r.map(|e| e.code);

    let r = set.resolve_bool("missing", &ctx);
    assert_eq!(
        (r.reason, code(r.error)),
        (Reason::Error, Some(ErrorCode::FlagNotFound))
    );
    let r = set.resolve_bool("colour", &ctx);
    assert_eq!(code(r.error), Some(ErrorCode::TypeMismatch));
    // Whole numbers only: 2.5 is not silently truncated to an integer.
    let r = set.resolve_int("fraction", &ctx);
    assert_eq!(code(r.error), Some(ErrorCode::TypeMismatch));
    assert_eq!(set.resolve_float("fraction", &ctx).value, Some(2.5));
    assert_eq!(set.resolve_float("limit", &ctx).value, Some(10.0));
    let r = set.resolve_string("broken", &ctx);
    let error = r.error.expect("broken flag fails");
    assert_eq!(error.code, ErrorCode::ParseError);
    assert!(
        error.message.contains("unknown operator \"nope\""),
        "{}",
        error.message
    );
    let r = set.resolve_string("colour", &EvaluationContext::new().with("pick", "green"));
    assert_eq!(code(r.error), Some(ErrorCode::General));
}

#[test]
fn flag_metadata_overrides_flag_set_metadata() {
    let set = set();
    let r = set.resolve_bool("banner", &EvaluationContext::new());
    assert_eq!(r.metadata.get("team"), Some(&json!("growth")));
    assert_eq!(r.metadata.get("flagSetId"), Some(&json!("shop")));
    let r = set.resolve_int("limit", &EvaluationContext::new());
    assert_eq!(r.metadata.get("team"), Some(&json!("core")));
}

#[test]
fn resolve_all_answers_every_flag_in_key_order() {
    let set = set();
    let ctx = EvaluationContext::new().with("plan", "pro");
    let keys: Vec<&str> = set.resolve_all(&ctx).map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "banner",
            "broken",
            "caller-default",
            "colour",
            "fraction",
            "half-bool",
            "limit",
            "named-by-bool",
            "off"
        ]
    );
}

#[test]
fn definition_problems_name_their_path() {
    let compiled = flags(json!({
        "flags": {
            "welcome-banner": {
                "state": "ENABLED",
                "variants": {"on": true, "off": false},
                "defaultVariant": "on",
                "targeting": {"if": [true, {"fo": [1]}, "off"]}
            },
            "mixed": {"state": "ENABLED", "variants": {"a": true, "b": "x"}},
            "bad-default": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "z"},
            "bad-state": {"state": "ON", "variants": {"a": 1}},
            "no-variants": {"state": "ENABLED"},
            "bad-weight": {"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a",
                           "targeting": {"fractional": [{"var": "targetingKey"}, ["a", -5], ["b", 5]]}}
        }
    }));
    let lines: Vec<String> = compiled
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    let expect = [
        "error: flags.welcome-banner.targeting.if[1]: unknown operator \"fo\"",
        "error: flags.mixed.variants.b: is a string, but variant \"a\" is a boolean",
        "error: flags.bad-default.defaultVariant: names variant \"z\"",
        "error: flags.bad-state.state: must be \"ENABLED\" or \"DISABLED\", found \"ON\"",
        "error: flags.no-variants: missing \"variants\"",
        "warning: flags.bad-weight.targeting.fractional[1][1]: weight -5 is negative and counts as 0",
    ];
    for e in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e)),
            "missing {e:?} in {lines:#?}"
        );
    }
    // Broken flags stay in the set and answer PARSE_ERROR; the one with a warning is served.
    assert!(matches!(
        compiled.flag_set.get("mixed"),
        Some(Entry::Broken(_))
    ));
    assert!(matches!(
        compiled.flag_set.get("bad-weight"),
        Some(Entry::Ready(_))
    ));
    assert!(compiled.has_errors());
    assert!(compiled.into_clean().is_err());
}

#[test]
fn malformed_documents_are_refused_whole() {
    for (doc, expect) in [
        ("{", "not valid JSON"),
        ("[]", "a flag definition is a JSON object"),
        ("{}", "flags: required"),
        (r#"{"flags": 3}"#, "flags: must be a map"),
        (r#"{"flags": [{"state": "ENABLED"}]}"#, "needs a \"key\""),
        (r#"{"flags": {}, "$evaluators": []}"#, "$evaluators"),
    ] {
        let err = compile(doc, &CompileOptions::default()).expect_err(doc);
        assert!(err.to_string().contains(expect), "{doc}: {err}");
    }
    let provider = CompileOptions {
        dialect: Dialect::Provider,
        ..CompileOptions::default()
    };
    let array = r#"{"flags": [{"key": "a", "state": "ENABLED", "variants": {"x": 1}}]}"#;
    assert!(compile(array, &provider).is_err());
    assert!(compile(array, &CompileOptions::default()).is_ok());
}

#[test]
fn evaluator_cycles_and_missing_refs_break_only_their_flags() {
    let compiled = flags(json!({
        "$evaluators": {
            "a": {"$ref": "b"},
            "b": {"and": [{"$ref": "a"}]},
            "ok": {"==": [{"var": "x"}, 1]}
        },
        "flags": {
            "cyclic": {"state": "ENABLED", "variants": {"true": 1, "false": 0}, "defaultVariant": "false",
                       "targeting": {"$ref": "a"}},
            "missing": {"state": "ENABLED", "variants": {"true": 1, "false": 0}, "defaultVariant": "false",
                        "targeting": {"$ref": "zzz"}},
            "fine": {"state": "ENABLED", "variants": {"true": 1, "false": 0}, "defaultVariant": "false",
                     "targeting": {"$ref": "ok"}}
        }
    }));
    assert!(
        compiled
            .diagnostics
            .iter()
            .any(|d| d.message.contains("cycle"))
    );
    let set = &compiled.flag_set;
    let ctx = EvaluationContext::new().with("x", 1);
    assert_eq!(
        set.resolve_int("cyclic", &ctx).error.map(|e| e.code),
        Some(ErrorCode::ParseError)
    );
    assert_eq!(
        set.resolve_int("missing", &ctx).error.map(|e| e.code),
        Some(ErrorCode::ParseError)
    );
    assert_eq!(set.resolve_int("fine", &ctx).value, Some(1));
}

#[test]
fn a_ten_megabyte_context_is_just_data() {
    let set = set();
    let big: Vec<String> = (0..200_000).map(|i| format!("item-{i:040}")).collect();
    let ctx = EvaluationContext::new()
        .with("plan", "pro")
        .with("blob", "x".repeat(2_000_000))
        .with("items", big);
    let r = set.resolve_bool("banner", &ctx);
    assert_eq!(r.value, Some(true));
}

#[test]
fn warnings_do_not_break_flags_but_do_fail_clean_loading() {
    let compiled = flags(json!({
        "flags": {"f": {"state": "ENABLED", "variants": {"a": "a"}, "defaultVariant": "a",
                        "metadata": {"nested": {"no": 1}}}}
    }));
    assert_eq!(compiled.diagnostics.len(), 1);
    assert_eq!(compiled.diagnostics[0].severity, Severity::Warning);
    assert!(!compiled.has_errors());
    let r = compiled
        .flag_set
        .resolve_string("f", &EvaluationContext::new());
    assert_eq!(r.value, Some("a"));
    assert!(compiled.into_clean().is_err());
}

#[test]
fn versions_stamp_snapshots() {
    let set = set().with_version(7);
    assert_eq!(set.version(), 7);
    // The provider form carries every flag as a map entry, for in-process providers.
    assert!(set.document()["flags"]["banner"]["variants"].is_object());
}
