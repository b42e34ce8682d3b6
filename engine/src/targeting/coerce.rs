//! JavaScript's coercion rules, which JsonLogic inherits: truthiness, loose equality, `ToNumber`,
//! `ToString`. Implemented once here so every operator agrees with json-logic-js.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde_json::{Number, Value};

/// JsonLogic truthiness: JavaScript's, except that an empty array is false.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
    }
}

/// JavaScript `ToNumber`. `NaN` stands for "not a number".
pub(crate) fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => string_to_number(s),
        Value::Array(_) => string_to_number(&to_js_string(v)),
        Value::Object(_) => f64::NAN,
    }
}

fn string_to_number(s: &str) -> f64 {
    let t = s.trim();
    if t.is_empty() {
        return 0.0;
    }
    // Rust accepts "inf", "nan" and "infinity", which JavaScript does not; JavaScript accepts only
    // "Infinity" and hex literals, which flag rules never use in practice.
    match t {
        "Infinity" | "+Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        _ if t
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            f64::NAN
        }
        _ => t.parse().unwrap_or(f64::NAN),
    }
}

/// JavaScript `parseFloat`, which `+` and `*` use: the longest numeric prefix, else `NaN`.
pub(crate) fn parse_float(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => {
            let t = s.trim_start();
            let bytes = t.as_bytes();
            let mut end = 0;
            let mut seen_digit = false;
            let mut seen_dot = false;
            let mut seen_exp = false;
            while end < bytes.len() {
                let b = bytes[end];
                let ok = match b {
                    b'0'..=b'9' => {
                        seen_digit = true;
                        true
                    }
                    b'+' | b'-' => end == 0 || matches!(bytes[end - 1], b'e' | b'E'),
                    b'.' if !seen_dot && !seen_exp => {
                        seen_dot = true;
                        true
                    }
                    b'e' | b'E' if seen_digit && !seen_exp => {
                        seen_exp = true;
                        true
                    }
                    _ => false,
                };
                if !ok {
                    break;
                }
                end += 1;
            }
            // Back off a dangling exponent or sign ("1e", "1e+").
            let mut candidate = &t[..end];
            while !candidate.is_empty() && candidate.parse::<f64>().is_err() {
                candidate = &candidate[..candidate.len() - 1];
            }
            candidate.parse().unwrap_or(f64::NAN)
        }
        Value::Array(a) if a.len() == 1 => parse_float(&a[0]),
        _ => f64::NAN,
    }
}

/// JavaScript `String(v)`.
pub(crate) fn to_js_string(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed("null"),
        Value::Bool(true) => Cow::Borrowed("true"),
        Value::Bool(false) => Cow::Borrowed("false"),
        Value::Number(n) => Cow::Owned(number_to_js_string(n)),
        Value::Array(items) => {
            // Array.prototype.join: null elements become empty strings.
            let parts: Vec<Cow<'_, str>> = items
                .iter()
                .map(|item| match item {
                    Value::Null => Cow::Borrowed(""),
                    other => to_js_string(other),
                })
                .collect();
            Cow::Owned(parts.join(","))
        }
        Value::Object(_) => Cow::Borrowed("[object Object]"),
    }
}

fn number_to_js_string(n: &Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        format!("{f}")
    }
}

/// A number as a JSON value, keeping integers integral so `{"+": [1, 2]}` is `3`, not `3.0`.
/// Not-a-number and the infinities have no JSON form and become null.
pub(crate) fn number_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        // Exact: |f| < 2^53, so the conversion to i64 loses nothing.
        #[allow(clippy::cast_possible_truncation)]
        return Value::Number(Number::from(f as i64));
    }
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// JavaScript `===`, extended structurally to arrays and objects (JsonLogic data has no identity).
pub(crate) fn strict_equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// JavaScript `==` (the abstract equality algorithm).
pub(crate) fn loose_equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Array(_), Value::Array(_))
        | (Value::Object(_), Value::Object(_)) => strict_equals(a, b),
        (Value::Bool(_), _) | (_, Value::Bool(_)) | (Value::Number(_), Value::String(_)) => {
            to_number(a) == to_number(b)
        }
        (Value::String(_), Value::Number(_)) => to_number(a) == to_number(b),
        // An array or object meets a primitive: compare its string form.
        (Value::Array(_) | Value::Object(_), _) => {
            loose_equals(&Value::String(to_js_string(a).into_owned()), b)
        }
        (_, Value::Array(_) | Value::Object(_)) => {
            loose_equals(a, &Value::String(to_js_string(b).into_owned()))
        }
    }
}

/// JavaScript's relational comparison: two strings compare as strings, anything else as numbers.
/// `None` when either side is `NaN` (every comparison is then false).
pub(crate) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Value::String(x), Value::String(y)) = (a, b) {
        return Some(x.as_str().cmp(y.as_str()));
    }
    to_number(a).partial_cmp(&to_number(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truthiness_follows_json_logic() {
        for falsy in [json!(null), json!(false), json!(0), json!(""), json!([])] {
            assert!(!truthy(&falsy), "{falsy} should be falsy");
        }
        for truthy_v in [json!(true), json!(-1), json!("0"), json!([0]), json!({})] {
            assert!(truthy(&truthy_v), "{truthy_v} should be truthy");
        }
    }

    #[test]
    fn loose_equality_coerces_like_javascript() {
        assert!(loose_equals(&json!(1), &json!("1")));
        assert!(loose_equals(&json!(true), &json!(1)));
        assert!(loose_equals(&json!("1"), &json!(true)));
        assert!(loose_equals(&json!([1, 2]), &json!("1,2")));
        assert!(!loose_equals(&json!(null), &json!(0)));
        assert!(!loose_equals(&json!("a"), &json!(0)));
        assert!(loose_equals(&json!(1.0), &json!(1)));
    }

    #[test]
    fn parse_float_reads_the_numeric_prefix() {
        assert_eq!(parse_float(&json!("12abc")), 12.0);
        assert_eq!(parse_float(&json!(" 1.5e2x")), 150.0);
        assert_eq!(parse_float(&json!("1e")), 1.0);
        assert!(parse_float(&json!("abc")).is_nan());
        assert!(parse_float(&json!(true)).is_nan());
    }

    #[test]
    fn strings_convert_like_javascript() {
        assert_eq!(to_js_string(&json!(1.0)), "1");
        assert_eq!(to_js_string(&json!(0.5)), "0.5");
        assert_eq!(to_js_string(&json!([1, null, "a"])), "1,,a");
        assert_eq!(to_number(&json!(" 42 ")), 42.0);
        assert_eq!(to_number(&json!("")), 0.0);
        assert!(to_number(&json!("inf")).is_nan());
    }

    #[test]
    fn integral_results_stay_integers() {
        assert_eq!(number_value(3.0), json!(3));
        assert_eq!(number_value(0.5), json!(0.5));
        assert_eq!(number_value(f64::NAN), json!(null));
    }
}
