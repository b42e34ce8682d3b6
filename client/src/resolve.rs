//! Typed evaluation over flagd.evaluation.v2, the protocol stock flagd providers speak.

use std::collections::BTreeMap;

use bunting_proto::flagd::evaluation::v2::any_flag::Value as AnyValue;
use bunting_proto::flagd::evaluation::v2::service_client::ServiceClient;
use bunting_proto::flagd::evaluation::v2::{
    ResolveAllRequest, ResolveBooleanRequest, ResolveFloatRequest, ResolveIntRequest,
    ResolveObjectRequest, ResolveStringRequest,
};
use prost_types::Struct;
use serde_json::{Map, Value};

use crate::client::Client;
use crate::context::EvaluationContext;
use crate::error::{ClientError, Operation};

/// One flag resolved for one context.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution<T> {
    /// The value; `None` when the flag has no default variant and its targeting picked none, or
    /// it is disabled: the caller's code default applies.
    pub value: Option<T>,
    /// The variant whose value this is; `None` when there is no value.
    pub variant: Option<String>,
    /// STATIC, TARGETING_MATCH, DEFAULT, DISABLED, ... (open-ended, as in OpenFeature).
    pub reason: String,
    /// Flag metadata merged over flag-set metadata.
    pub metadata: Map<String, Value>,
}

impl<T> Resolution<T> {
    /// The value, or the caller's code default when the flag gave none.
    pub fn value_or(self, default: T) -> T {
        self.value.unwrap_or(default)
    }
}

/// A flag value of any type, as `resolve_all` and bulk evaluation return them.
#[derive(Debug, Clone, PartialEq)]
pub enum FlagValue {
    Bool(bool),
    String(String),
    /// Only bulk evaluation tells integers apart; `resolve_all` carries every number as a float.
    Int(i64),
    Float(f64),
    Object(Map<String, Value>),
}

/// Every flag of the set for one context.
#[derive(Debug, Clone, PartialEq)]
pub struct AllFlags {
    pub flags: BTreeMap<String, Resolution<FlagValue>>,
    /// The flag set's metadata.
    pub metadata: Map<String, Value>,
}

/// One typed resolver method: the request type, the client method, and how the wire value
/// becomes the Rust value.
macro_rules! typed_resolver {
    ($(#[$doc:meta])* $name:ident, $request:ident, $ty:ty, $convert:expr) => {
        $(#[$doc])*
        pub async fn $name(
            &self,
            flag_key: &str,
            context: &EvaluationContext,
        ) -> Result<Resolution<$ty>, ClientError> {
            let wire_context = wire_context(flag_key, context)?;
            let operation = Operation::Resolve { flag_key };
            let (answer, node) = self
                .router
                .call(context.targeting_key(), operation, |channel, timeout| {
                    let mut request = tonic::Request::new($request {
                        flag_key: flag_key.to_owned(),
                        context: Some(wire_context.clone()),
                    });
                    request.set_timeout(timeout);
                    self.router.config.authorize(&mut request);
                    async move { ServiceClient::new(channel).$name(request).await }
                })
                .await?;
            let convert: fn(_) -> Result<$ty, String> = $convert;
            let value = answer
                .value
                .map(convert)
                .transpose()
                .map_err(|reason| malformed(&node, reason))?;
            Ok(Resolution {
                value,
                variant: answer.variant,
                reason: answer.reason,
                metadata: metadata_json(answer.metadata, &node)?,
            })
        }
    };
}

impl Client {
    typed_resolver!(
        /// Resolves a boolean flag for `context`, on the node that owns its targeting key.
        resolve_boolean, ResolveBooleanRequest, bool, Ok
    );
    typed_resolver!(
        /// Resolves a string flag.
        resolve_string, ResolveStringRequest, String, Ok
    );
    typed_resolver!(
        /// Resolves an integer flag.
        resolve_int, ResolveIntRequest, i64, Ok
    );
    typed_resolver!(
        /// Resolves a float flag.
        resolve_float, ResolveFloatRequest, f64, Ok
    );
    typed_resolver!(
        /// Resolves an object flag, as a JSON object.
        resolve_object,
        ResolveObjectRequest,
        Map<String, Value>,
        |s: Struct| bunting_proto::json::struct_into_json(s).map_err(|e| e.to_string())
    );

    /// Resolves every flag of the set for `context`.
    pub async fn resolve_all(&self, context: &EvaluationContext) -> Result<AllFlags, ClientError> {
        let wire_context = context.to_struct()?;
        let (answer, node) = self
            .router
            .call(
                context.targeting_key(),
                Operation::ResolveAll,
                |channel, timeout| {
                    let mut request = tonic::Request::new(ResolveAllRequest {
                        context: Some(wire_context.clone()),
                    });
                    request.set_timeout(timeout);
                    self.router.config.authorize(&mut request);
                    async move { ServiceClient::new(channel).resolve_all(request).await }
                },
            )
            .await?;
        let mut flags = BTreeMap::new();
        for (key, flag) in answer.flags {
            let value = match flag.value {
                None => None,
                Some(AnyValue::BoolValue(b)) => Some(FlagValue::Bool(b)),
                Some(AnyValue::StringValue(s)) => Some(FlagValue::String(s)),
                Some(AnyValue::DoubleValue(f)) => Some(FlagValue::Float(f)),
                Some(AnyValue::ObjectValue(s)) => Some(FlagValue::Object(
                    bunting_proto::json::struct_into_json(s)
                        .map_err(|e| malformed(&node, format!("flag `{key}`: {e}")))?,
                )),
            };
            let resolution = Resolution {
                value,
                variant: flag.variant,
                reason: flag.reason,
                metadata: metadata_json(flag.metadata, &node)?,
            };
            flags.insert(key, resolution);
        }
        Ok(AllFlags {
            flags,
            metadata: metadata_json(answer.metadata, &node)?,
        })
    }
}

/// The request's context, refusing an empty flag key before anything is sent (no flag has one).
fn wire_context(flag_key: &str, context: &EvaluationContext) -> Result<Struct, ClientError> {
    if flag_key.is_empty() {
        return Err(ClientError::FlagNotFound {
            flag_key: String::new(),
            message: "the flag key is empty".to_owned(),
        });
    }
    context.to_struct()
}

pub(crate) fn metadata_json(
    metadata: Option<Struct>,
    node: &str,
) -> Result<Map<String, Value>, ClientError> {
    match metadata {
        None => Ok(Map::new()),
        Some(s) => bunting_proto::json::struct_into_json(s)
            .map_err(|e| malformed(node, format!("metadata: {e}"))),
    }
}

pub(crate) fn malformed(node: &str, reason: String) -> ClientError {
    ClientError::Malformed {
        node: node.to_owned(),
        reason,
    }
}
