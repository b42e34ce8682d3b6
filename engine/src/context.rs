//! The evaluation context: what the caller knows about the subject of an evaluation.

use serde_json::{Map, Value};

/// Attributes of the user (or device, or request) a flag is evaluated for, as a JSON object.
/// `targetingKey` is an ordinary attribute, as in flagd; the evaluation time can be fixed for
/// deterministic tests (otherwise `$flagd.timestamp` reads the clock when a rule asks for it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvaluationContext {
    fields: Map<String, Value>,
    now: Option<u64>,
}

/// A context that is not a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("evaluation context must be a JSON object, found {found}")]
pub struct ContextError {
    found: String,
}

impl EvaluationContext {
    pub fn new() -> EvaluationContext {
        EvaluationContext::default()
    }

    pub fn from_fields(fields: Map<String, Value>) -> EvaluationContext {
        EvaluationContext { fields, now: None }
    }

    pub fn from_value(value: Value) -> Result<EvaluationContext, ContextError> {
        match value {
            Value::Object(fields) => Ok(EvaluationContext::from_fields(fields)),
            other => Err(ContextError {
                found: kind_of(&other).to_owned(),
            }),
        }
    }

    pub fn with_targeting_key(self, key: impl Into<String>) -> EvaluationContext {
        self.with("targetingKey", Value::String(key.into()))
    }

    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> EvaluationContext {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Fixes `$flagd.timestamp` (Unix seconds) for this evaluation.
    pub fn at_time(mut self, unix_seconds: u64) -> EvaluationContext {
        self.now = Some(unix_seconds);
        self
    }

    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    pub fn targeting_key(&self) -> Option<&str> {
        self.fields.get("targetingKey").and_then(Value::as_str)
    }

    pub(crate) fn now(&self) -> Option<u64> {
        self.now
    }
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
