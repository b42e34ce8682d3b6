//! Conversions between `google.protobuf.Struct` / `Value` (as [`prost_types`]) and JSON (as
//! [`serde_json`]).
//!
//! The engine takes and gives JSON; the flagd protocols and Bunting's API carry evaluation
//! contexts, object values and metadata as `Struct`. Every request crosses this boundary, so:
//!
//! - Nesting is capped at [`MAX_DEPTH`] containers. A caller-supplied context is untrusted input,
//!   and an unbounded nesting would make every recursive walk of it (this one, the engine's, the
//!   eventual drop) a stack-overflow risk.
//! - The path to a problem is built only while an error unwinds, so a conversion that succeeds
//!   (almost all of them) allocates nothing for paths.
//! - Numbers: a protobuf `Value` has only doubles. Going to JSON, a whole number within ±2^53 (the
//!   range where every integer is exactly representable as a double) becomes a JSON integer, so
//!   `{"age": 42}` comes back as `42`, not `42.0`, and integer flags and `==` against integer
//!   constants behave as the caller wrote them. Other finite numbers stay floats. NaN and
//!   infinities have no JSON form and are an error. Going to protobuf, every JSON number becomes
//!   the nearest double (integers beyond ±2^53 lose precision, as they do in any JSON parser that
//!   uses doubles, JavaScript's included).
//! - A `Value` with no kind set (which the protobuf JSON mapping does not allow, but the wire can
//!   carry) reads as JSON `null`, the most lenient reading of "nothing here".

use std::fmt;

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as ProtoValue};
use serde_json::{Map, Number, Value as JsonValue};

/// The deepest nesting of objects and arrays accepted, the outermost one counting as the first
/// level. Generous for any real evaluation context or flag value; small enough that recursive
/// walks stay far from the stack's end.
pub const MAX_DEPTH: usize = 64;

/// The largest integer magnitude a double holds exactly, and every smaller one too: 2^53.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Why a value could not be converted. `path` is where, as a JSON path in the engine's style
/// (`user.address["zip code"].lines[2]`); empty means the value itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// Objects and arrays nested deeper than [`MAX_DEPTH`]; `path` is the first container past
    /// the limit.
    #[error("value {} is nested deeper than {limit} levels", Located(.path))]
    TooDeep { path: String, limit: usize },
    /// A number with no JSON (or no double) form: NaN, an infinity, or a JSON number beyond the
    /// double range.
    #[error("number {} is not finite: {number}", Located(.path))]
    NotFinite { path: String, number: String },
}

/// A caller sent a context (or any other Struct) that cannot be used: that is the caller's
/// mistake, so INVALID_ARGUMENT, with the path in the message.
impl From<ConversionError> for tonic::Status {
    fn from(e: ConversionError) -> tonic::Status {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// Renders a path for a message: "at `a.b`", or "at the top level" for the value itself.
struct Located<'a>(&'a String);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("at the top level")
        } else {
            write!(f, "at `{}`", self.0)
        }
    }
}

/// A `google.protobuf.Struct` as a JSON object.
pub fn struct_to_json(s: &Struct) -> Result<Map<String, JsonValue>, ConversionError> {
    fields_to_json(s, 1).map_err(Failure::finish)
}

/// As [`struct_to_json`], consuming the `Struct` so that keys and strings move instead of being
/// copied (a request's context is owned and used once).
pub fn struct_into_json(s: Struct) -> Result<Map<String, JsonValue>, ConversionError> {
    fields_into_json(s, 1).map_err(Failure::finish)
}

/// A `google.protobuf.Value` as a JSON value.
pub fn value_to_json(v: &ProtoValue) -> Result<JsonValue, ConversionError> {
    proto_to_json(v, 0).map_err(Failure::finish)
}

/// As [`value_to_json`], consuming the value.
pub fn value_into_json(v: ProtoValue) -> Result<JsonValue, ConversionError> {
    proto_into_json(v, 0).map_err(Failure::finish)
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn json_to_struct(map: &Map<String, JsonValue>) -> Result<Struct, ConversionError> {
    object_to_proto(map, 1).map_err(Failure::finish)
}

/// A JSON value as a `google.protobuf.Value`.
pub fn json_to_value(v: &JsonValue) -> Result<ProtoValue, ConversionError> {
    json_to_proto(v, 0).map_err(Failure::finish)
}

/// One step of a path, recorded innermost first while an error unwinds.
#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

/// An error on its way up: the problem, and the path segments collected so far (innermost
/// first).
#[derive(Debug)]
struct Failure {
    problem: Problem,
    segments: Vec<Segment>,
}

#[derive(Debug)]
enum Problem {
    TooDeep,
    NotFinite(String),
}

impl Failure {
    fn new(problem: Problem) -> Failure {
        Failure {
            problem,
            segments: Vec::new(),
        }
    }

    fn under_key(mut self, key: &str) -> Failure {
        self.segments.push(Segment::Key(key.to_owned()));
        self
    }

    fn under_index(mut self, index: usize) -> Failure {
        self.segments.push(Segment::Index(index));
        self
    }

    /// Renders the path the way the engine's diagnostics do: a leading key bare, plain keys after
    /// a dot, other keys quoted in brackets, indexes in brackets.
    fn finish(self) -> ConversionError {
        let mut path = String::new();
        for segment in self.segments.iter().rev() {
            match segment {
                Segment::Index(i) => path.push_str(&format!("[{i}]")),
                Segment::Key(k) if path.is_empty() => path.push_str(k),
                Segment::Key(k) if is_plain_key(k) => {
                    path.push('.');
                    path.push_str(k);
                }
                Segment::Key(k) => path.push_str(&format!("[{k:?}]")),
            }
        }
        match self.problem {
            Problem::TooDeep => ConversionError::TooDeep {
                path,
                limit: MAX_DEPTH,
            },
            Problem::NotFinite(number) => ConversionError::NotFinite { path, number },
        }
    }
}

fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'))
}

/// `depth` is the nesting level of the container about to be entered (the outermost is 1).
fn check_depth(depth: usize) -> Result<(), Failure> {
    if depth > MAX_DEPTH {
        Err(Failure::new(Problem::TooDeep))
    } else {
        Ok(())
    }
}

fn number_to_json(n: f64) -> Result<JsonValue, Failure> {
    if !n.is_finite() {
        return Err(Failure::new(Problem::NotFinite(n.to_string())));
    }
    if n.fract() == 0.0 && n.abs() <= MAX_EXACT_INTEGER {
        // Exact: the value is a whole number well inside i64's range. -0.0 becomes 0, which JSON
        // cannot tell apart anyway.
        return Ok(JsonValue::Number(Number::from(n as i64)));
    }
    // Finite, so `from_f64` cannot refuse it; the fallback only keeps this total.
    Ok(Number::from_f64(n).map_or(JsonValue::Null, JsonValue::Number))
}

// --- protobuf -> JSON, borrowed ---------------------------------------------------------------

/// `depth` is the level of the container the fields belong to.
fn fields_to_json(s: &Struct, depth: usize) -> Result<Map<String, JsonValue>, Failure> {
    check_depth(depth)?;
    let mut map = Map::new();
    for (key, value) in &s.fields {
        let v = proto_to_json(value, depth).map_err(|f| f.under_key(key))?;
        map.insert(key.clone(), v);
    }
    Ok(map)
}

/// `depth` is the level of the container holding `v` (0 for a value at the top).
fn proto_to_json(v: &ProtoValue, depth: usize) -> Result<JsonValue, Failure> {
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => JsonValue::Null,
        Some(Kind::BoolValue(b)) => JsonValue::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n)?,
        Some(Kind::StringValue(s)) => JsonValue::String(s.clone()),
        Some(Kind::StructValue(s)) => JsonValue::Object(fields_to_json(s, depth + 1)?),
        Some(Kind::ListValue(list)) => {
            check_depth(depth + 1)?;
            let items = list
                .values
                .iter()
                .enumerate()
                .map(|(i, item)| proto_to_json(item, depth + 1).map_err(|f| f.under_index(i)))
                .collect::<Result<Vec<_>, _>>()?;
            JsonValue::Array(items)
        }
    })
}

// --- protobuf -> JSON, owned ------------------------------------------------------------------

fn fields_into_json(s: Struct, depth: usize) -> Result<Map<String, JsonValue>, Failure> {
    check_depth(depth)?;
    let mut map = Map::new();
    for (key, value) in s.fields {
        match proto_into_json(value, depth) {
            Ok(v) => {
                map.insert(key, v);
            }
            Err(f) => return Err(f.under_key(&key)),
        }
    }
    Ok(map)
}

fn proto_into_json(v: ProtoValue, depth: usize) -> Result<JsonValue, Failure> {
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => JsonValue::Null,
        Some(Kind::BoolValue(b)) => JsonValue::Bool(b),
        Some(Kind::NumberValue(n)) => number_to_json(n)?,
        Some(Kind::StringValue(s)) => JsonValue::String(s),
        Some(Kind::StructValue(s)) => JsonValue::Object(fields_into_json(s, depth + 1)?),
        Some(Kind::ListValue(list)) => {
            check_depth(depth + 1)?;
            let items = list
                .values
                .into_iter()
                .enumerate()
                .map(|(i, item)| proto_into_json(item, depth + 1).map_err(|f| f.under_index(i)))
                .collect::<Result<Vec<_>, _>>()?;
            JsonValue::Array(items)
        }
    })
}

// --- JSON -> protobuf -------------------------------------------------------------------------

fn object_to_proto(map: &Map<String, JsonValue>, depth: usize) -> Result<Struct, Failure> {
    check_depth(depth)?;
    let mut fields = std::collections::BTreeMap::new();
    for (key, value) in map {
        let v = json_to_proto(value, depth).map_err(|f| f.under_key(key))?;
        fields.insert(key.clone(), v);
    }
    Ok(Struct { fields })
}

fn json_to_proto(v: &JsonValue, depth: usize) -> Result<ProtoValue, Failure> {
    let kind = match v {
        // The enum's only value; prost stores enums as their i32.
        JsonValue::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        JsonValue::Bool(b) => Kind::BoolValue(*b),
        JsonValue::Number(n) => match n.as_f64() {
            // Without serde_json's arbitrary_precision every Number is a finite f64 or an integer;
            // with it, a literal beyond the double range parses to nothing or to an infinity.
            Some(f) if f.is_finite() => Kind::NumberValue(f),
            _ => return Err(Failure::new(Problem::NotFinite(n.to_string()))),
        },
        JsonValue::String(s) => Kind::StringValue(s.clone()),
        JsonValue::Array(items) => {
            check_depth(depth + 1)?;
            let values = items
                .iter()
                .enumerate()
                .map(|(i, item)| json_to_proto(item, depth + 1).map_err(|f| f.under_index(i)))
                .collect::<Result<Vec<_>, _>>()?;
            Kind::ListValue(ListValue { values })
        }
        JsonValue::Object(map) => Kind::StructValue(object_to_proto(map, depth + 1)?),
    };
    Ok(ProtoValue { kind: Some(kind) })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;

    fn num(n: f64) -> ProtoValue {
        ProtoValue {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    fn obj(v: JsonValue) -> Map<String, JsonValue> {
        match v {
            JsonValue::Object(m) => m,
            other => panic!("test fixture is not an object: {other}"),
        }
    }

    /// `levels` objects nested inside one another, the innermost holding `{"leaf": 1}`.
    fn nested_objects(levels: usize) -> JsonValue {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!({ "a": v });
        }
        v
    }

    /// `levels` arrays nested inside one another.
    fn nested_arrays(levels: usize) -> JsonValue {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!([v]);
        }
        v
    }

    #[test]
    fn round_trips_keep_every_json_shape() {
        let doc = obj(json!({
            "targetingKey": "user-1",
            "null": null,
            "yes": true,
            "no": false,
            "int": 42,
            "negative": -7,
            "zero": 0,
            "float": 1.5,
            "tiny": 1e-300,
            "big_float": 1e300,
            "string": "hé \u{1F600} \"quoted\"",
            "empty_string": "",
            "empty_object": {},
            "empty_array": [],
            "array": [1, "two", null, [3.25, {"k": false}]],
            "object": {"nested": {"deeper": [true]}},
            "key with spaces": 1,
        }));
        let s = json_to_struct(&doc).unwrap();
        assert_eq!(struct_to_json(&s).unwrap(), doc);
        assert_eq!(struct_into_json(s).unwrap(), doc);

        for value in [
            json!(null),
            json!("s"),
            json!(3),
            json!(-2.5),
            json!([1, [2]]),
        ] {
            let p = json_to_value(&value).unwrap();
            assert_eq!(value_to_json(&p).unwrap(), value);
            assert_eq!(value_into_json(p).unwrap(), value);
        }
    }

    #[test]
    fn whole_numbers_within_2_pow_53_become_json_integers() {
        let cases: &[(f64, JsonValue)] = &[
            (0.0, json!(0)),
            (-0.0, json!(0)),
            (42.0, json!(42)),
            (-42.0, json!(-42)),
            (9_007_199_254_740_992.0, json!(9_007_199_254_740_992_i64)),
            (-9_007_199_254_740_992.0, json!(-9_007_199_254_740_992_i64)),
            // Past 2^53 a double no longer says which integer it was: it stays a float.
            (18_014_398_509_481_984.0, json!(18_014_398_509_481_984.0)),
            (1.5, json!(1.5)),
            (-0.25, json!(-0.25)),
        ];
        for (n, expected) in cases {
            let got = value_to_json(&num(*n)).unwrap();
            assert_eq!(&got, expected, "converting {n}");
            assert_eq!(got.is_i64(), expected.is_i64(), "integer-ness of {n}");
        }
    }

    #[test]
    fn json_integers_become_doubles() {
        let p = json_to_value(&json!(7)).unwrap();
        assert_eq!(p.kind, Some(Kind::NumberValue(7.0)));
        // Beyond 2^53 the nearest double is kept, as any double-based JSON reader would.
        let p = json_to_value(&json!(u64::MAX)).unwrap();
        assert_eq!(p.kind, Some(Kind::NumberValue(u64::MAX as f64)));
    }

    #[test]
    fn non_finite_numbers_are_refused_with_their_path() {
        for (n, shown) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ] {
            let s = Struct {
                fields: [(
                    "user".to_owned(),
                    ProtoValue {
                        kind: Some(Kind::StructValue(Struct {
                            fields: [(
                                "scores".to_owned(),
                                ProtoValue {
                                    kind: Some(Kind::ListValue(ListValue {
                                        values: vec![num(1.0), num(n)],
                                    })),
                                },
                            )]
                            .into(),
                        })),
                    },
                )]
                .into(),
            };
            let expected = ConversionError::NotFinite {
                path: "user.scores[1]".to_owned(),
                number: shown.to_owned(),
            };
            assert_eq!(struct_to_json(&s).unwrap_err(), expected);
            assert_eq!(struct_into_json(s).unwrap_err(), expected);
        }

        let err = value_to_json(&num(f64::NAN)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "number at the top level is not finite: NaN"
        );
    }

    #[test]
    fn depth_limit_counts_the_outermost_container_as_level_one() {
        // nested_objects(n) has n objects; the outermost is the struct itself.
        let at_limit = obj(nested_objects(MAX_DEPTH));
        let s = json_to_struct(&at_limit).unwrap();
        assert_eq!(struct_to_json(&s).unwrap(), at_limit);

        let past = obj(nested_objects(MAX_DEPTH + 1));
        let err = json_to_struct(&past).unwrap_err();
        let expected_path = vec!["a"; MAX_DEPTH].join(".");
        assert_eq!(
            err,
            ConversionError::TooDeep {
                path: expected_path.clone(),
                limit: MAX_DEPTH,
            }
        );
        assert_eq!(
            err.to_string(),
            format!("value at `{expected_path}` is nested deeper than {MAX_DEPTH} levels")
        );

        // The same limit on the protobuf side, for a Struct that arrives over the wire already
        // too deep (built here by hand, since json_to_struct refuses to make one).
        let mut v = num(1.0);
        for _ in 0..=MAX_DEPTH {
            v = ProtoValue {
                kind: Some(Kind::StructValue(Struct {
                    fields: [("a".to_owned(), v)].into(),
                })),
            };
        }
        let Some(Kind::StructValue(deep)) = v.kind else {
            panic!("built a struct");
        };
        let expected = ConversionError::TooDeep {
            path: expected_path,
            limit: MAX_DEPTH,
        };
        assert_eq!(struct_to_json(&deep).unwrap_err(), expected);
        assert_eq!(struct_into_json(deep).unwrap_err(), expected);
    }

    #[test]
    fn depth_limit_applies_to_arrays_and_values_at_the_top() {
        let at_limit = nested_arrays(MAX_DEPTH);
        let p = json_to_value(&at_limit).unwrap();
        assert_eq!(value_to_json(&p).unwrap(), at_limit);

        let err = json_to_value(&nested_arrays(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(
            err,
            ConversionError::TooDeep {
                path: "[0]".repeat(MAX_DEPTH),
                limit: MAX_DEPTH,
            }
        );
    }

    #[test]
    fn paths_quote_keys_that_are_not_plain() {
        let doc =
            obj(json!({ "user": { "home address": { "lines": [ nested_objects(MAX_DEPTH) ] } } }));
        let err = json_to_struct(&doc).unwrap_err();
        let ConversionError::TooDeep { path, .. } = err else {
            panic!("expected TooDeep, got {err:?}");
        };
        assert!(
            path.starts_with(r#"user["home address"].lines[0].a"#),
            "path was {path}"
        );
    }

    #[test]
    fn errors_become_invalid_argument_statuses() {
        let status = tonic::Status::from(value_to_json(&num(f64::INFINITY)).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "number at the top level is not finite: inf"
        );
    }

    #[test]
    fn a_value_without_a_kind_reads_as_null() {
        assert_eq!(
            value_to_json(&ProtoValue { kind: None }).unwrap(),
            JsonValue::Null
        );
    }
}
