//! Input limits and duplicate keys (issue 9): what `compile` refuses before it compiles anything,
//! and how each refusal names the limit and the offending input.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bunting_engine::{
    CompileOptions, DefinitionError, DiagnosticSummary, Entry, ErrorCode, EvaluationContext,
    LimitKind, Limits, Severity, compile, parse_document,
};
use serde_json::{Map, Value, json};

fn flag() -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"})
}

fn flags(n: usize) -> Value {
    let flags: Map<String, Value> = (0..n).map(|i| (format!("f{i}"), flag())).collect();
    json!({ "flags": flags })
}

fn with_limits(limits: Limits) -> CompileOptions {
    CompileOptions {
        limits,
        ..CompileOptions::default()
    }
}

#[test]
fn documents_over_a_set_limit_are_refused_whole() {
    let small = Limits {
        max_document_bytes: 4_096,
        max_flags: 10,
        max_evaluators: 2,
        ..Limits::default()
    };
    let evaluators = |n: usize| -> Value {
        let map: Map<String, Value> = (0..n).map(|i| (format!("e{i}"), json!(true))).collect();
        json!({"$evaluators": map, "flags": {"f": flag()}})
    };
    let big = flags(60).to_string();
    // (case, document, the limit it is over, how big it is, the message)
    let cases: Vec<(&str, String, LimitKind, usize, String)> = vec![
        (
            "document bytes",
            big.clone(),
            LimitKind::DocumentBytes,
            big.len(),
            format!(
                "the document is {} bytes, over the limit of 4096 bytes (max_document_bytes)",
                big.len()
            ),
        ),
        (
            "flags",
            flags(11).to_string(),
            LimitKind::Flags,
            11,
            "flags: 11 flags, over the limit of 10 flags per set (max_flags)".to_owned(),
        ),
        (
            "flags in flagd's array form",
            json!({"flags": (0..11).map(|i| {
                let mut f = flag();
                f["key"] = json!(format!("f{i}"));
                f
            }).collect::<Vec<_>>()})
            .to_string(),
            LimitKind::Flags,
            11,
            "flags: 11 flags, over the limit of 10 flags per set (max_flags)".to_owned(),
        ),
        (
            "evaluators",
            evaluators(3).to_string(),
            LimitKind::Evaluators,
            3,
            "$evaluators: 3 evaluators, over the limit of 2 (max_evaluators)".to_owned(),
        ),
    ];
    for (case, text, kind, found, message) in cases {
        let error = compile(&text, &with_limits(small)).expect_err(case);
        assert_eq!(
            error,
            DefinitionError::Limit {
                kind,
                found,
                limit: match kind {
                    LimitKind::DocumentBytes => 4_096,
                    LimitKind::Flags => 10,
                    LimitKind::Evaluators => 2,
                },
            },
            "{case}"
        );
        assert_eq!(error.to_string(), message, "{case}");
    }
    // At the limits, the same documents load.
    for text in [flags(10).to_string(), evaluators(2).to_string()] {
        assert!(compile(&text, &with_limits(small)).is_ok());
    }
}

#[test]
fn the_default_limits_refuse_the_issue_9_file_and_accept_a_large_real_one() {
    // 100,000 flags of about 670 bytes each, 67 MB as in the issue: refused on its size (the
    // first check) before anything is parsed.
    let description = "d".repeat(600);
    let one = format!(
        r#"{{"state":"ENABLED","variants":{{"on":true,"off":false}},"defaultVariant":"on","metadata":{{"description":"{description}"}}}}"#
    );
    let body: Vec<String> = (0..100_000).map(|i| format!(r#""f{i}":{one}"#)).collect();
    let huge = format!(r#"{{"flags":{{{}}}}}"#, body.join(","));
    assert!(huge.len() > 16 << 20, "{} bytes", huge.len());
    assert!(matches!(
        compile(&huge, &CompileOptions::default()),
        Err(DefinitionError::Limit {
            kind: LimitKind::DocumentBytes,
            ..
        })
    ));
    // 100,000 small flags under the size limit: refused on their count.
    let many: Map<String, Value> = (0..100_000).map(|i| (format!("{i}"), json!({}))).collect();
    let many = json!({ "flags": many }).to_string();
    assert!(many.len() < 16 << 20);
    assert!(matches!(
        compile(&many, &CompileOptions::default()),
        Err(DefinitionError::Limit {
            kind: LimitKind::Flags,
            found: 100_000,
            limit: 20_000
        })
    ));
    // 5,000 ordinary flags: fine.
    let real = compile(&flags(5_000).to_string(), &CompileOptions::default()).unwrap();
    assert!(real.diagnostics.is_empty());
    assert_eq!(real.flag_set.len(), 5_000);
}

#[test]
fn flags_over_a_per_flag_limit_break_alone_and_never_echo_a_huge_key() {
    let small = Limits {
        max_variants: 3,
        max_flag_key_bytes: 300,
        max_variant_name_bytes: 300,
        ..Limits::default()
    };
    let long_key = "k".repeat(10_000);
    let long_name = "v".repeat(10_000);
    let variants = |n: usize| -> Value {
        let map: Map<String, Value> = (0..n).map(|i| (format!("v{i}"), json!(i))).collect();
        Value::Object(map)
    };
    let mut long_named = Map::new();
    long_named.insert(long_name.clone(), json!(1));
    let document = json!({"flags": {
        "ok": flag(),
        "many-variants": {"state": "ENABLED", "variants": variants(4), "defaultVariant": "v0"},
        "long-variant": {"state": "ENABLED", "variants": long_named},
        long_key.clone(): flag(),
    }});
    let compiled = compile(&document.to_string(), &with_limits(small)).unwrap();
    let shown = format!("{}…", "k".repeat(256));
    // (flag, path, message)
    let expected = vec![
        (
            "long-variant",
            "flags.long-variant.variants".to_owned(),
            format!(
                "variant name {:?} is 10000 bytes, over the limit of 300 bytes (max_variant_name_bytes)",
                format!("{}…", "v".repeat(256))
            ),
        ),
        (
            "many-variants",
            "flags.many-variants.variants".to_owned(),
            "4 variants, over the limit of 3 per flag (max_variants)".to_owned(),
        ),
        (
            long_key.as_str(),
            format!("flags[{shown:?}]"),
            format!(
                "flag key {shown:?} is 10000 bytes, over the limit of 300 bytes (max_flag_key_bytes)"
            ),
        ),
    ];
    let mut got: Vec<(String, String)> = compiled
        .diagnostics
        .iter()
        .map(|d| {
            assert_eq!(d.severity, Severity::Error);
            (d.path.clone(), d.message.clone())
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(_, p, m)| (p.clone(), m.clone()))
        .collect();
    want.sort();
    assert_eq!(got, want);
    let ctx = EvaluationContext::new();
    for (key, _, _) in &expected {
        let r = compiled.flag_set.resolve(key, &ctx);
        let error = r.error.unwrap();
        assert_eq!(
            error.code,
            ErrorCode::ParseError,
            "{}",
            &key[..20.min(key.len())]
        );
        assert!(error.message.len() < 2_000, "{}", error.message.len());
    }
    assert!(matches!(
        compiled.flag_set.get(&long_key),
        Some(Entry::Broken(_))
    ));
    assert_eq!(compiled.flag_set.resolve_bool("ok", &ctx).value, Some(true));
}

#[test]
fn a_repeated_key_anywhere_refuses_the_document_naming_where() {
    // (case, text, object path, key, member)
    let cases = [
        ("top level", r#"{"flags": {}, "flags": {}}"#, "", "flags", 2),
        (
            "a flag defined twice",
            r#"{"flags": {"banner": {"state": "ENABLED"}, "other": {}, "banner": {"state": "DISABLED"}}}"#,
            "flags",
            "banner",
            3,
        ),
        (
            "a variant listed twice",
            r#"{"flags": {"banner": {"variants": {"on": true, "off": false, "on": false}}}}"#,
            "flags.banner.variants",
            "on",
            3,
        ),
        (
            "targeting",
            r#"{"flags": {"banner": {"targeting": {"if": [{"==": [1, 1], "==": [1, 2]}, "on"]}}}}"#,
            "flags.banner.targeting.if[0]",
            "==",
            2,
        ),
        (
            "metadata",
            r#"{"metadata": {"team": "a", "team": "b"}, "flags": {}}"#,
            "metadata",
            "team",
            2,
        ),
        (
            "an evaluator",
            r#"{"$evaluators": {"e": {"in": [1, [1]]}, "e": true}, "flags": {}}"#,
            "$evaluators",
            "e",
            2,
        ),
    ];
    for (case, text, path, key, member) in cases {
        match compile(text, &CompileOptions::default()) {
            Err(DefinitionError::DuplicateKey {
                path: p,
                key: k,
                member: m,
                line: 1,
                column,
            }) => {
                assert_eq!((p.as_str(), k.as_str(), m), (path, key, member), "{case}");
                assert!(column > 1 && column <= text.len(), "{case}");
            }
            other => panic!("{case}: expected a duplicate key, got {other:?}"),
        }
        assert!(parse_document(text).is_err(), "{case}");
        // serde_json alone would have taken the last one silently.
        assert!(serde_json::from_str::<Value>(text).is_ok(), "{case}");
    }
    let message = compile(cases[2].1, &CompileOptions::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "flags.banner.variants: duplicate key \"on\": member 3 of the object repeats an earlier member (line 1, column 73)"
    );
}

#[test]
fn a_summary_caps_the_report_of_a_file_of_broken_flags() {
    let broken: Map<String, Value> = (0..1_000)
        .map(|i| (format!("f{i:04}"), json!({"state": "ENABLED"})))
        .collect();
    let compiled = compile(
        &json!({ "flags": broken }).to_string(),
        &CompileOptions::default(),
    )
    .unwrap();
    assert_eq!(compiled.diagnostics.len(), 1_000);
    let summary = DiagnosticSummary::new(&compiled.diagnostics, 100);
    assert_eq!((summary.shown.len(), summary.omitted), (100, 900));
    let text = summary.to_string();
    assert_eq!(text.lines().count(), 101);
    assert_eq!(text.lines().last(), Some("... and 900 more"));
}
