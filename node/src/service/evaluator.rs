//! What the flagd services share: their handle on the node's [`Dispatch`], and the typed wire
//! forms of a resolved value.

use bunting_actors::{Node, ResolvedFlag};
use prost_types::Struct;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tonic::Status;

use super::admission::Gate;
use crate::dispatch::Dispatch;

/// What flagd's evaluation and sync services hold: the node's [`Dispatch`] (every evaluation
/// goes through it) and the shutdown signal their streams end on.
#[derive(Debug, Clone)]
pub struct Evaluator {
    pub(crate) dispatch: Dispatch,
    /// Flips to `true` when the server shuts down, so long-lived streams end and graceful
    /// shutdown does not wait on them forever.
    pub(crate) closing: watch::Receiver<bool>,
}

impl Evaluator {
    pub fn new(dispatch: Dispatch, closing: watch::Receiver<bool>) -> Evaluator {
        Evaluator { dispatch, closing }
    }

    pub(crate) fn node(&self) -> &Node {
        self.dispatch.node()
    }

    pub(crate) fn gate(&self) -> &Gate {
        self.dispatch.gate()
    }

    /// Refuses the request unless its caller may touch `set` (the selector's), or the node's
    /// default set when the request names none: where an evaluation or sync request's set is
    /// known, before any work.
    pub(crate) fn authorize_set(
        &self,
        extensions: &http::Extensions,
        set: Option<&str>,
    ) -> Result<(), Status> {
        let caller = super::request::caller(extensions)?;
        let set = set.unwrap_or(self.node().config().default_set.as_str());
        super::request::check_flag_set(caller, set)
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
