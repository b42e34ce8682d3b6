//! Reading a flag-definition document from JSON text, refusing what `serde_json::Value` would
//! silently accept: an object with a key repeated. serde_json keeps the last of the repeats, so a
//! flag defined twice, or a variant listed twice with different values, would load as whichever
//! came last, unnoticed. Here the first repeat refuses the document, naming where it is.
//!
//! Nesting is capped by serde_json itself: its deserializer refuses documents nested deeper than
//! 128 arrays or objects ("recursion limit exceeded"), for every visitor including this one (see
//! the test below), so neither parsing nor dropping the value can exhaust the stack.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use crate::diagnostic::{DefinitionError, Path};
use crate::limits::shown;

/// Parses a flag-definition document (or any JSON text) into a value, refusing any object with a
/// repeated key ([`DefinitionError::DuplicateKey`]) and anything that is not JSON
/// ([`DefinitionError::Json`]). [`compile`](crate::compile) reads its text through this.
pub fn parse_document(text: &str) -> Result<Value, DefinitionError> {
    let trail = Trail::default();
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = ValueSeed { trail: &trail }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    parsed.map_err(|e| trail.into_error(&e))
}

/// Where an error happened, recorded only as it unwinds (innermost segment first), so a clean
/// parse pays nothing for it.
#[derive(Debug, Default)]
struct Trail {
    segments: RefCell<Vec<Segment>>,
    duplicate: RefCell<Option<(String, usize)>>,
}

#[derive(Debug)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Trail {
    fn unwinding(&self, segment: Segment) {
        self.segments.borrow_mut().push(segment);
    }

    fn into_error(self, e: &serde_json::Error) -> DefinitionError {
        let path =
            self.segments
                .into_inner()
                .into_iter()
                .rev()
                .fold(Path::default(), |path, segment| match segment {
                    Segment::Key(k) => path.key(&shown(&k)),
                    Segment::Index(i) => path.index(i),
                });
        match self.duplicate.into_inner() {
            Some((key, member)) => DefinitionError::DuplicateKey {
                path: path.as_str().to_owned(),
                key: shown(&key).into_owned(),
                member,
                line: e.line(),
                column: e.column(),
            },
            None if path.as_str().is_empty() => DefinitionError::Json(e.to_string()),
            None => DefinitionError::Json(format!("{}: {e}", path.as_str())),
        }
    }
}

/// Builds a `Value` exactly as serde_json's own visitor does, except for repeated keys.
#[derive(Clone, Copy)]
struct ValueSeed<'t> {
    trail: &'t Trail,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json: JSON text cannot spell a non-finite number, so this is never null here.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    self.trail.unwinding(Segment::Index(items.len()));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        let mut member = 0usize;
        while let Some(key) = access.next_key::<String>()? {
            member += 1;
            let value = match access.next_value_seed(self) {
                Ok(value) => value,
                Err(e) => {
                    self.trail.unwinding(Segment::Key(key));
                    return Err(e);
                }
            };
            match map.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(first) => {
                    let key = first.key().clone();
                    let message = format!("duplicate key {:?}", shown(&key));
                    *self.trail.duplicate.borrow_mut() = Some((key, member));
                    return Err(de::Error::custom(message));
                }
            }
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_like_serde_json() {
        let text = r#"{"a": [1, -2, 2.5, "x", true, null, {"b": {}}], "c": 18446744073709551615}"#;
        let ours = parse_document(text);
        let theirs: Result<Value, _> = serde_json::from_str(text);
        assert_eq!(ours.ok(), theirs.ok());
    }

    #[test]
    fn serde_json_caps_nesting_for_this_visitor_too() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        match parse_document(&deep) {
            Err(DefinitionError::Json(message)) => {
                assert!(message.contains("recursion limit exceeded"), "{message}");
            }
            other => panic!("expected the recursion limit, got {other:?}"),
        }
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_document(&fine).is_ok());
    }

    #[test]
    fn trailing_text_and_syntax_errors_are_json_errors_with_the_path() {
        assert!(matches!(
            parse_document("{} x"),
            Err(DefinitionError::Json(_))
        ));
        match parse_document(r#"{"flags": {"a": [1, 2, }]}}"#) {
            Err(DefinitionError::Json(message)) => {
                assert!(message.starts_with("flags.a[2]: "), "{message}");
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn a_repeated_key_is_refused_with_its_object_member_and_position() {
        let text = "{\"flags\": {\"a\": {\"variants\": {\"on\": 1, \"off\": 2,\n \"on\": 3}}}}";
        assert_eq!(
            parse_document(text),
            Err(DefinitionError::DuplicateKey {
                path: "flags.a.variants".to_owned(),
                key: "on".to_owned(),
                member: 3,
                line: 2,
                column: 9,
            })
        );
        assert_eq!(
            parse_document(r#"{"k": [1, {"x": 1}]}"#),
            Ok(json!({"k": [1, {"x": 1}]}))
        );
    }
}
