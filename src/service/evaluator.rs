//! The part of every evaluation RPC that does not depend on the protocol version: admit, decode,
//! route to the owning shard, count, and turn resolution errors into flagd's status codes.

use std::sync::Arc;
use std::time::Instant;

use bunting_actors::{Node, ResolveRequest, ResolvedFlag};
use bunting_cluster::NodeId;
use bunting_engine::{EvaluationContext, FlagType, ResolveError};
use prost_types::Struct;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tonic::Status;

use super::admission::Gate;
use super::request::{node_status, resolution_status};
use crate::routing::{Route, Routing, Stamp};

#[derive(Debug, Clone)]
pub struct Evaluator {
    pub(crate) node: Arc<Node>,
    pub(crate) gate: Gate,
    /// Flips to `true` when the server shuts down, so long-lived streams end and graceful
    /// shutdown does not wait on them forever.
    pub(crate) closing: watch::Receiver<bool>,
    /// `Some` on a clustered node: requests for shards another node owns are forwarded there.
    pub(crate) routing: Option<Routing>,
}

impl Evaluator {
    pub fn new(
        node: Arc<Node>,
        gate: Gate,
        closing: watch::Receiver<bool>,
        routing: Option<Routing>,
    ) -> Evaluator {
        Evaluator {
            node,
            gate,
            closing,
            routing,
        }
    }

    /// Where a request for `context` runs, and what its answer tells the client about routing.
    fn route(&self, context: &EvaluationContext) -> (Option<(&Routing, NodeId)>, Stamp) {
        let Some(routing) = &self.routing else {
            return (None, Stamp::default());
        };
        match routing.route(context) {
            (Route::Remote(owner), stamp) => (Some((routing, owner)), stamp),
            (Route::Local, stamp) => (None, stamp),
        }
    }

    /// One typed resolution, admitted (see [`Gate::run`]). A resolution error is returned as the
    /// gRPC status flagd uses.
    pub async fn resolve(
        &self,
        service: &'static str,
        set: Option<Arc<str>>,
        key: String,
        context: Option<Struct>,
        wanted: FlagType,
    ) -> Result<(ResolvedFlag, Stamp), Status> {
        let this = self.clone();
        self.gate
            .run(service, async move {
                this.resolve_admitted(service, set, key, context, wanted)
                    .await
            })
            .await
    }

    async fn resolve_admitted(
        &self,
        service: &'static str,
        set: Option<Arc<str>>,
        key: String,
        context: Option<Struct>,
        wanted: FlagType,
    ) -> Result<(ResolvedFlag, Stamp), Status> {
        let started = Instant::now();
        if key.is_empty() {
            return Err(Status::invalid_argument("flag_key is empty"));
        }
        let context = self.gate.context(context)?;
        let (remote, stamp) = self.route(&context);
        let forwarded = match remote {
            Some((routing, owner)) => routing
                .forward(&owner, set.as_deref(), &key, &context, Some(wanted))
                .await
                .ok()
                .and_then(|answer| answer.ok())
                .and_then(|mut flags| flags.pop().map(|(_, r)| r)),
            None => None,
        };
        let resolved = match forwarded {
            Some(resolved) => resolved,
            None => self
                .node
                .resolve(ResolveRequest {
                    set,
                    key,
                    wanted: Some(wanted),
                    context,
                })
                .await
                .map_err(node_status)?,
        };
        record(service, &resolved, started);
        match &resolved.error {
            Some(error) => Err(resolution_status(error)),
            None => Ok((resolved, stamp)),
        }
    }

    /// Every flag of a set for one subject, admitted (see [`Gate::run`]).
    pub async fn resolve_all(
        &self,
        service: &'static str,
        set: Option<Arc<str>>,
        context: Option<Struct>,
    ) -> Result<(Vec<(String, ResolvedFlag)>, Stamp), Status> {
        let this = self.clone();
        self.gate
            .run(service, async move {
                this.resolve_all_admitted(service, set, context).await
            })
            .await
    }

    async fn resolve_all_admitted(
        &self,
        service: &'static str,
        set: Option<Arc<str>>,
        context: Option<Struct>,
    ) -> Result<(Vec<(String, ResolvedFlag)>, Stamp), Status> {
        let started = Instant::now();
        let context: EvaluationContext = self.gate.context(context)?;
        let (remote, stamp) = self.route(&context);
        let forwarded = match remote {
            Some((routing, owner)) => routing
                .forward(&owner, set.as_deref(), "", &context, None)
                .await
                .ok(),
            None => None,
        };
        let answer = match forwarded {
            Some(answer) => answer,
            None => self
                .node
                .resolve_all(set, context)
                .await
                .map_err(node_status)?,
        };
        let all = answer.map_err(|e: ResolveError| resolution_status(&e))?;
        metrics::histogram!("bunting_evaluation_seconds", "service" => service)
            .record(started.elapsed().as_secs_f64());
        for (_, r) in &all {
            metrics::counter!("bunting_evaluations_total", "service" => service, "reason" => r.reason.as_str())
                .increment(1);
        }
        Ok((all, stamp))
    }
}

fn record(service: &'static str, resolved: &ResolvedFlag, started: Instant) {
    metrics::histogram!("bunting_evaluation_seconds", "service" => service)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("bunting_evaluations_total", "service" => service, "reason" => resolved.reason.as_str())
        .increment(1);
    if let Some(error) = &resolved.error {
        metrics::counter!("bunting_evaluation_errors_total", "service" => service, "code" => error.code.as_str())
            .increment(1);
    }
}

/// Metadata as a protobuf Struct. Metadata values are strings, numbers and booleans (the engine
/// guarantees it), so the conversion cannot fail in practice; if it ever did, say so.
pub fn metadata_struct(metadata: &Map<String, Value>) -> Result<Struct, Status> {
    bunting_proto::json::json_to_struct(metadata)
        .map_err(|e| Status::internal(format!("flag metadata: {e}")))
}

/// The resolved value, typed for the wire. `None` when the caller's default applies.
pub fn bool_value(r: &ResolvedFlag) -> Option<bool> {
    r.value.as_ref().and_then(Value::as_bool)
}

pub fn string_value(r: &mut ResolvedFlag) -> Option<String> {
    match r.value.take() {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

pub fn float_value(r: &ResolvedFlag) -> Option<f64> {
    r.value.as_ref().and_then(Value::as_f64)
}

pub fn int_value(r: &ResolvedFlag) -> Option<i64> {
    r.value.as_ref().and_then(Value::as_i64)
}

pub fn object_value(r: &mut ResolvedFlag) -> Result<Option<Struct>, Status> {
    match r.value.take() {
        Some(Value::Object(map)) => bunting_proto::json::json_to_struct(&map)
            .map(Some)
            .map_err(|e| Status::internal(format!("flag value: {e}"))),
        _ => Ok(None),
    }
}
