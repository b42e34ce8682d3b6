//! The evaluation context a caller sends: who the subject is (the targeting key, which also picks
//! the node) and the attributes targeting rules read.

use prost_types::Struct;
use serde_json::{Map, Value};

use crate::error::ClientError;

/// The context field that carries the targeting key, as in OpenFeature and flagd.
pub(crate) const TARGETING_KEY: &str = "targetingKey";

/// A subject's evaluation context: an optional targeting key and JSON attributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvaluationContext {
    targeting_key: Option<String>,
    attributes: Map<String, Value>,
}

impl EvaluationContext {
    /// A context for the subject with this targeting key.
    pub fn new(targeting_key: impl Into<String>) -> EvaluationContext {
        EvaluationContext {
            targeting_key: Some(targeting_key.into()),
            attributes: Map::new(),
        }
    }

    /// A context with no targeting key; such requests go to any live node.
    pub fn anonymous() -> EvaluationContext {
        EvaluationContext::default()
    }

    /// A context from a JSON object in OpenFeature's shape: a string `targetingKey` member
    /// becomes the targeting key, every other member an attribute.
    pub fn from_json(mut object: Map<String, Value>) -> EvaluationContext {
        let targeting_key = match object.remove(TARGETING_KEY) {
            Some(Value::String(key)) => Some(key),
            // Not a string: leave it where it was, for the node to judge.
            Some(other) => {
                object.insert(TARGETING_KEY.to_owned(), other);
                None
            }
            None => None,
        };
        EvaluationContext {
            targeting_key,
            attributes: object,
        }
    }

    /// Adds (or replaces) one attribute.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> EvaluationContext {
        self.attributes.insert(name.into(), value.into());
        self
    }

    pub fn targeting_key(&self) -> Option<&str> {
        self.targeting_key.as_deref()
    }

    pub fn attributes(&self) -> &Map<String, Value> {
        &self.attributes
    }

    /// The wire form: the attributes, with `targetingKey` set from the targeting key (which wins
    /// over an attribute of that name, so the key that routed the request is the key the node
    /// evaluates with).
    pub(crate) fn to_struct(&self) -> Result<Struct, ClientError> {
        let mut fields = bunting_proto::json::json_to_struct(&self.attributes).map_err(|e| {
            ClientError::InvalidContext {
                message: e.to_string(),
            }
        })?;
        if let Some(key) = &self.targeting_key {
            fields.fields.insert(
                TARGETING_KEY.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(key.clone())),
                },
            );
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targeting_key_travels_as_the_context_field() {
        let ctx = EvaluationContext::new("user-1")
            .with("plan", "pro")
            .with(TARGETING_KEY, "spoofed");
        let wire = bunting_proto::json::struct_to_json(&ctx.to_struct().unwrap()).unwrap();
        assert_eq!(
            Value::Object(wire),
            json!({"plan": "pro", "targetingKey": "user-1"})
        );
    }

    #[test]
    fn from_json_takes_the_targeting_key_out() {
        let Value::Object(object) = json!({"targetingKey": "u", "age": 3}) else {
            unreachable!()
        };
        let ctx = EvaluationContext::from_json(object);
        assert_eq!(ctx.targeting_key(), Some("u"));
        assert_eq!(Value::Object(ctx.attributes().clone()), json!({"age": 3}));
    }

    #[test]
    fn too_deep_a_context_is_refused_before_sending() {
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!({ "a": deep });
        }
        let error = EvaluationContext::new("u")
            .with("deep", deep)
            .to_struct()
            .unwrap_err();
        assert!(
            matches!(error, ClientError::InvalidContext { .. }),
            "{error}"
        );
    }
}
