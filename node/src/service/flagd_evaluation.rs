//! flagd's evaluation protocol, `flagd.evaluation.v1` and `v2`. The two differ only in whether
//! `value` and `variant` may be absent (v2: absent means "use your code default"; v1 sends the
//! zero value), so one macro writes both from the same body.

use std::pin::Pin;

use bunting_actors::ResolvedFlag;
use bunting_engine::{FlagType, Reason};
use bunting_proto::flagd::evaluation::{v1, v2};
use futures_core::Stream;
use serde_json::Value;
use tonic::{Request, Response, Status};

use super::evaluator::{
    Evaluator, bool_value, float_value, int_value, metadata_struct, object_value, string_value,
};
use super::events;
use super::request::{resolution_status, selector};
use crate::dispatch::Routed;

/// `flagd.evaluation.v1.Service`.
#[derive(Debug, Clone)]
pub struct FlagdV1(pub Evaluator);

/// `flagd.evaluation.v2.Service`.
#[derive(Debug, Clone)]
pub struct FlagdV2(pub Evaluator);

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// v1 has no field presence: an absent value goes out as the zero value.
macro_rules! present_v1 {
    ($e:expr) => {
        $e.unwrap_or_default()
    };
}

macro_rules! present_v2 {
    ($e:expr) => {
        $e
    };
}

macro_rules! flagd_evaluation_service {
    ($service:ident, $proto:ident, $label:literal, $present:ident) => {
        #[tonic::async_trait]
        impl $proto::service_server::Service for $service {
            async fn resolve_boolean(
                &self,
                request: Request<$proto::ResolveBooleanRequest>,
            ) -> Result<Response<$proto::ResolveBooleanResponse>, Status> {
                let set = selector(request.metadata(), "");
                self.0.authorize_set(request.extensions(), set.as_deref())?;
                let req = request.into_inner();
                let (r, stamp) = resolved(
                    self.0
                        .dispatch
                        .resolve(
                            $label,
                            set,
                            req.flag_key,
                            req.context,
                            Some(FlagType::Boolean),
                        )
                        .await?,
                )?;
                Ok(stamped(
                    stamp,
                    $proto::ResolveBooleanResponse {
                        value: $present!(bool_value(&r)),
                        reason: r.reason.as_str().to_owned(),
                        metadata: Some(metadata_struct(&r.metadata)?),
                        variant: $present!(r.variant),
                    },
                ))
            }

            async fn resolve_string(
                &self,
                request: Request<$proto::ResolveStringRequest>,
            ) -> Result<Response<$proto::ResolveStringResponse>, Status> {
                let set = selector(request.metadata(), "");
                self.0.authorize_set(request.extensions(), set.as_deref())?;
                let req = request.into_inner();
                let (mut r, stamp) = resolved(
                    self.0
                        .dispatch
                        .resolve(
                            $label,
                            set,
                            req.flag_key,
                            req.context,
                            Some(FlagType::String),
                        )
                        .await?,
                )?;
                Ok(stamped(
                    stamp,
                    $proto::ResolveStringResponse {
                        value: $present!(string_value(&mut r)),
                        reason: r.reason.as_str().to_owned(),
                        metadata: Some(metadata_struct(&r.metadata)?),
                        variant: $present!(r.variant),
                    },
                ))
            }

            async fn resolve_float(
                &self,
                request: Request<$proto::ResolveFloatRequest>,
            ) -> Result<Response<$proto::ResolveFloatResponse>, Status> {
                let set = selector(request.metadata(), "");
                self.0.authorize_set(request.extensions(), set.as_deref())?;
                let req = request.into_inner();
                let (r, stamp) = resolved(
                    self.0
                        .dispatch
                        .resolve(
                            $label,
                            set,
                            req.flag_key,
                            req.context,
                            Some(FlagType::Float),
                        )
                        .await?,
                )?;
                Ok(stamped(
                    stamp,
                    $proto::ResolveFloatResponse {
                        value: $present!(float_value(&r)),
                        reason: r.reason.as_str().to_owned(),
                        metadata: Some(metadata_struct(&r.metadata)?),
                        variant: $present!(r.variant),
                    },
                ))
            }

            async fn resolve_int(
                &self,
                request: Request<$proto::ResolveIntRequest>,
            ) -> Result<Response<$proto::ResolveIntResponse>, Status> {
                let set = selector(request.metadata(), "");
                self.0.authorize_set(request.extensions(), set.as_deref())?;
                let req = request.into_inner();
                let (r, stamp) = resolved(
                    self.0
                        .dispatch
                        .resolve(
                            $label,
                            set,
                            req.flag_key,
                            req.context,
                            Some(FlagType::Integer),
                        )
                        .await?,
                )?;
                Ok(stamped(
                    stamp,
                    $proto::ResolveIntResponse {
                        value: $present!(int_value(&r)),
                        reason: r.reason.as_str().to_owned(),
                        metadata: Some(metadata_struct(&r.metadata)?),
                        variant: $present!(r.variant),
                    },
                ))
            }

            async fn resolve_object(
                &self,
                request: Request<$proto::ResolveObjectRequest>,
            ) -> Result<Response<$proto::ResolveObjectResponse>, Status> {
                let set = selector(request.metadata(), "");
                self.0.authorize_set(request.extensions(), set.as_deref())?;
                let req = request.into_inner();
                let (mut r, stamp) = resolved(
                    self.0
                        .dispatch
                        .resolve(
                            $label,
                            set,
                            req.flag_key,
                            req.context,
                            Some(FlagType::Object),
                        )
                        .await?,
                )?;
                Ok(stamped(
                    stamp,
                    $proto::ResolveObjectResponse {
                        value: object_value(&mut r)?,
                        reason: r.reason.as_str().to_owned(),
                        metadata: Some(metadata_struct(&r.metadata)?),
                        variant: $present!(r.variant),
                    },
                ))
            }

            async fn resolve_all(
                &self,
                request: Request<$proto::ResolveAllRequest>,
            ) -> Result<Response<$proto::ResolveAllResponse>, Status> {
                let set = selector(request.metadata(), "");
                self.0.authorize_set(request.extensions(), set.as_deref())?;
                let req = request.into_inner();
                let routed = self
                    .0
                    .dispatch
                    .resolve_all($label, set, req.context)
                    .await?;
                let all = routed.answer.map_err(|e| resolution_status(&e))?;
                let stamp = routed.stamp;
                let mut flags = std::collections::HashMap::with_capacity(all.flags.len());
                for (key, mut r) in all.flags {
                    if !listed_by_resolve_all(&r) {
                        continue;
                    }
                    let value = match r.value.take() {
                        None => None,
                        Some(Value::Bool(b)) => Some($proto::any_flag::Value::BoolValue(b)),
                        Some(Value::String(s)) => Some($proto::any_flag::Value::StringValue(s)),
                        Some(Value::Number(n)) => {
                            n.as_f64().map($proto::any_flag::Value::DoubleValue)
                        }
                        Some(Value::Object(m)) => {
                            Some($proto::any_flag::Value::ObjectValue(metadata_struct(&m)?))
                        }
                        Some(_) => None,
                    };
                    flags.insert(
                        key,
                        $proto::AnyFlag {
                            reason: r.reason.as_str().to_owned(),
                            variant: $present!(r.variant),
                            value,
                            metadata: Some(metadata_struct(&r.metadata)?),
                        },
                    );
                }
                // The metadata of the set version that resolved the flags, on whichever node
                // that was.
                Ok(stamped(
                    stamp,
                    $proto::ResolveAllResponse {
                        flags,
                        metadata: Some(metadata_struct(&all.metadata)?),
                    },
                ))
            }

            type EventStreamStream = EventStream<$proto::EventStreamResponse>;

            async fn event_stream(
                &self,
                request: Request<$proto::EventStreamRequest>,
            ) -> Result<Response<Self::EventStreamStream>, Status> {
                let set = selector(request.metadata(), "");
                self.0.authorize_set(request.extensions(), set.as_deref())?;
                let stream = events::stream(
                    &self.0,
                    concat!($label, ".EventStream"),
                    set,
                    |kind, data| $proto::EventStreamResponse {
                        r#type: kind.to_owned(),
                        data: Some(data),
                    },
                )?;
                Ok(Response::new(Box::pin(stream)))
            }
        }
    };
}

flagd_evaluation_service!(FlagdV1, v1, "flagd.evaluation.v1", present_v1);
flagd_evaluation_service!(FlagdV2, v2, "flagd.evaluation.v2", present_v2);

/// A typed resolution's flag and stamp, or flagd's status for its resolution error.
/// Whether flagd's `ResolveAll` lists a flag: not when it failed to resolve (rather than failing
/// the whole call), and not when it is disabled (flagd's `ResolveAllValues` skips disabled flags,
/// so providers built on it, `@openfeature/flagd-web-provider` among them, answer such a flag as
/// not found and use the code default). Shared with the Connect form (`http/connect.rs`).
pub(crate) fn listed_by_resolve_all(resolved: &ResolvedFlag) -> bool {
    resolved.error.is_none() && resolved.reason != Reason::Disabled
}

fn resolved(routed: Routed<ResolvedFlag>) -> Result<(ResolvedFlag, crate::routing::Stamp), Status> {
    match &routed.answer.error {
        Some(error) => Err(resolution_status(error)),
        None => Ok((routed.answer, routed.stamp)),
    }
}

/// The answer with the routing metadata a shard-aware client reads (see `crate::routing`).
fn stamped<T>(stamp: crate::routing::Stamp, message: T) -> Response<T> {
    let mut response = Response::new(message);
    stamp.apply(response.metadata_mut());
    response
}
