//! An evaluation forwarded from one node to the owner of its subject's shard: the bytes that
//! cross the cluster (`bunting.v1.PeerRequest` / `PeerResponse`, see cluster.proto) and the
//! owner's side of the exchange.
//!
//! Everything that arrives here came from a peer, so it is decoded defensively: a payload that is
//! too large, not protobuf, or not the JSON it should carry is answered with `refused`, never a
//! panic, and the asking node then evaluates locally.

use std::sync::Arc;

use bunting_actors::{Node, ResolveRequest, ResolvedFlag, TrackRefused, TrackRequest};
use bunting_cluster::{ForwardHandler, NodeId};
use bunting_engine::{ErrorCode, EvaluationContext, FlagType, Metadata, Reason, ResolveError};
use bunting_experiments::{ExperimentId, ExperimentTotals};
use bunting_proto::bunting::v1::{
    PeerRequest, PeerResolve, PeerResponse, PeerTotals, PeerTrack, peer_request, peer_response,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::service::Gate;

/// Larger peer messages are refused, and the cluster transport is configured with the same limit:
/// a context passed the sender's `max_context_bytes` already, and a whole flag set's answers
/// (about 200 bytes a flag) stay far below this.
pub const MAX_PEER_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// What the owner answered.
pub type Answer = Result<Vec<(String, ResolvedFlag)>, ResolveError>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("peer message of {0} bytes is over the {MAX_PEER_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("peer message is not a bunting.v1 peer message: {0}")]
    Undecodable(String),
    #[error("peer message has no request or answer in it")]
    Empty,
    #[error("unknown flag type {0:?} in a forwarded request")]
    UnknownType(String),
    #[error("the owner refused the forwarded evaluation: {0}")]
    Refused(String),
}

/// The request a non-owner sends.
pub fn encode_request(
    set: Option<&str>,
    key: &str,
    context: &EvaluationContext,
    wanted: Option<FlagType>,
) -> Vec<u8> {
    PeerRequest {
        kind: Some(peer_request::Kind::Resolve(PeerResolve {
            flag_set: set.unwrap_or_default().to_owned(),
            flag_key: key.to_owned(),
            context_json: Value::Object(context.fields().clone()).to_string(),
            flag_type: wanted.map(type_name).unwrap_or_default().to_owned(),
        })),
    }
    .encode_to_vec()
}

/// The owner's answer as the non-owner reads it.
pub fn decode_answer(bytes: &[u8]) -> Result<Answer, PeerError> {
    match decode_response(bytes)? {
        peer_response::Kind::ResolvedJson(json) => {
            let wire: WireAnswer =
                serde_json::from_str(&json).map_err(|e| PeerError::Undecodable(e.to_string()))?;
            wire.into_answer()
        }
        peer_response::Kind::Refused(why) => Err(PeerError::Refused(why)),
        _ => Err(PeerError::Undecodable(
            "not an answer to a resolve".to_owned(),
        )),
    }
}

/// What the owner answered to a forwarded Track: the experiments it counted toward, or why the
/// event itself is bad (the caller's error, not the cluster's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tracked {
    Counted(Vec<ExperimentId>),
    BadEvent(String),
}

pub fn encode_track(user: &str, event: &str, value: f64, flag_set: Option<&str>) -> Vec<u8> {
    PeerRequest {
        kind: Some(peer_request::Kind::Track(PeerTrack {
            targeting_key: user.to_owned(),
            event: event.to_owned(),
            value,
            flag_set: flag_set.unwrap_or_default().to_owned(),
        })),
    }
    .encode_to_vec()
}

pub fn decode_tracked(bytes: &[u8]) -> Result<Tracked, PeerError> {
    match decode_response(bytes)? {
        peer_response::Kind::TrackedJson(json) => {
            serde_json::from_str(&json).map_err(|e| PeerError::Undecodable(e.to_string()))
        }
        peer_response::Kind::Refused(why) => Err(PeerError::Refused(why)),
        _ => Err(PeerError::Undecodable(
            "not an answer to a Track".to_owned(),
        )),
    }
}

pub fn encode_totals(experiment: &ExperimentId) -> Vec<u8> {
    PeerRequest {
        kind: Some(peer_request::Kind::Totals(PeerTotals {
            experiment_id: experiment.to_string(),
        })),
    }
    .encode_to_vec()
}

pub fn decode_totals(bytes: &[u8]) -> Result<ExperimentTotals, PeerError> {
    match decode_response(bytes)? {
        peer_response::Kind::TotalsJson(json) => {
            serde_json::from_str(&json).map_err(|e| PeerError::Undecodable(e.to_string()))
        }
        peer_response::Kind::Refused(why) => Err(PeerError::Refused(why)),
        _ => Err(PeerError::Undecodable(
            "not an answer to a Totals".to_owned(),
        )),
    }
}

fn decode_response(bytes: &[u8]) -> Result<peer_response::Kind, PeerError> {
    check_size(bytes)?;
    PeerResponse::decode(bytes)
        .map_err(|e| PeerError::Undecodable(e.to_string()))?
        .kind
        .ok_or(PeerError::Empty)
}

/// The owner's side: evaluates forwarded requests on its own shard actors.
#[derive(Debug, Clone)]
pub struct PeerHandler {
    node: Arc<Node>,
    /// The node's one admission gate: forwarded work reaches the same mailboxes as local work, so
    /// it counts against the same cap.
    gate: Gate,
}

/// The label of refused peer requests in `bunting_requests_shed_total`.
const SERVICE: &str = "cluster.peer";

impl PeerHandler {
    pub fn new(node: Arc<Node>, gate: Gate) -> PeerHandler {
        PeerHandler { node, gate }
    }

    /// The answer to any peer request; `Err` is a refusal (the asker falls back or fails).
    async fn answer(&self, request: &[u8]) -> Result<peer_response::Kind, String> {
        match decode_request(request).map_err(|e| e.to_string())? {
            peer_request::Kind::Resolve(resolve) => {
                let wire = self.resolve(resolve).await?;
                serde_json::to_string(&wire)
                    .map(peer_response::Kind::ResolvedJson)
                    .map_err(|e| format!("encoding the answer: {e}"))
            }
            peer_request::Kind::Track(track) => {
                let tracked = self.track(track).await?;
                serde_json::to_string(&tracked)
                    .map(peer_response::Kind::TrackedJson)
                    .map_err(|e| format!("encoding the answer: {e}"))
            }
            peer_request::Kind::Totals(totals) => {
                let id = ExperimentId::new(totals.experiment_id).map_err(|e| e.to_string())?;
                let totals = self
                    .node
                    .experiment_totals(&id)
                    .await
                    .map_err(|e| e.to_string())?;
                serde_json::to_string(&totals)
                    .map(peer_response::Kind::TotalsJson)
                    .map_err(|e| format!("encoding the answer: {e}"))
            }
        }
    }

    async fn resolve(&self, resolve: PeerResolve) -> Result<WireAnswer, String> {
        let wanted = parse_type(&resolve.flag_type).map_err(|e| e.to_string())?;
        let context = serde_json::from_str::<Value>(&resolve.context_json)
            .map_err(|e| format!("context_json: {e}"))
            .and_then(|v| {
                EvaluationContext::from_value(v).map_err(|e| format!("context_json: {e}"))
            })?;
        let set = (!resolve.flag_set.is_empty()).then(|| Arc::from(resolve.flag_set.as_str()));
        let answer = if resolve.flag_key.is_empty() {
            self.node
                .resolve_all(set, context)
                .await
                .map_err(|e| e.to_string())?
        } else {
            let resolved = self
                .node
                .resolve(ResolveRequest {
                    set,
                    key: resolve.flag_key.clone(),
                    wanted,
                    context,
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(vec![(resolve.flag_key, resolved)])
        };
        Ok(WireAnswer::from_answer(answer))
    }

    /// A tracked event for a user this node owns. Not owning the shard (any more) or a store
    /// failure is a refusal: the asker reports UNAVAILABLE and the client retries.
    async fn track(&self, track: PeerTrack) -> Result<Tracked, String> {
        let answer = self
            .node
            .track(TrackRequest {
                user: track.targeting_key,
                event: track.event,
                value: track.value,
                flag_set: (!track.flag_set.is_empty()).then_some(track.flag_set),
            })
            .await
            .map_err(|e| e.to_string())?;
        match answer {
            Ok(counted) => Ok(Tracked::Counted(counted)),
            Err(TrackRefused::BadEvent(e)) => Ok(Tracked::BadEvent(e.to_string())),
            Err(other) => Err(other.to_string()),
        }
    }
}

#[async_trait::async_trait]
impl ForwardHandler for PeerHandler {
    async fn handle(&self, from: &NodeId, request: Vec<u8>) -> Vec<u8> {
        metrics::counter!("bunting_forwards_received_total").increment(1);
        let this = self.clone();
        let answered = self
            .gate
            .run(SERVICE, async move { Ok(this.answer(&request).await) })
            .await;
        // A refusal at the gate goes back as a refusal: the asker evaluates locally (or answers
        // UNAVAILABLE for a Track) rather than queueing on a full node.
        let answered = answered.unwrap_or_else(|shed| Err(shed.message().to_owned()));
        let kind = match answered {
            Ok(kind) => kind,
            Err(why) => {
                tracing::warn!(peer = %from, %why, "refused a peer request");
                peer_response::Kind::Refused(why)
            }
        };
        PeerResponse { kind: Some(kind) }.encode_to_vec()
    }
}

fn decode_request(bytes: &[u8]) -> Result<peer_request::Kind, PeerError> {
    check_size(bytes)?;
    PeerRequest::decode(bytes)
        .map_err(|e| PeerError::Undecodable(e.to_string()))?
        .kind
        .ok_or(PeerError::Empty)
}

fn check_size(bytes: &[u8]) -> Result<(), PeerError> {
    if bytes.len() > MAX_PEER_MESSAGE_BYTES {
        return Err(PeerError::TooLarge(bytes.len()));
    }
    Ok(())
}

fn type_name(t: FlagType) -> &'static str {
    match t {
        FlagType::Boolean => "boolean",
        FlagType::String => "string",
        FlagType::Integer => "integer",
        FlagType::Float => "float",
        FlagType::Object => "object",
    }
}

fn parse_type(name: &str) -> Result<Option<FlagType>, PeerError> {
    Ok(Some(match name {
        "" => return Ok(None),
        "boolean" => FlagType::Boolean,
        "string" => FlagType::String,
        "integer" => FlagType::Integer,
        "float" => FlagType::Float,
        "object" => FlagType::Object,
        other => return Err(PeerError::UnknownType(other.to_owned())),
    }))
}

/// The answer's JSON form: the engine's types, with reasons and codes as flagd's names.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum WireAnswer {
    Resolved { flags: Vec<WireFlag> },
    Failed { code: String, message: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct WireFlag {
    key: String,
    value: Option<Value>,
    variant: Option<String>,
    reason: String,
    error: Option<WireError>,
    metadata: Metadata,
    flag_set_version: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireError {
    code: String,
    message: String,
}

impl WireAnswer {
    fn from_answer(answer: Answer) -> WireAnswer {
        match answer {
            Ok(flags) => WireAnswer::Resolved {
                flags: flags
                    .into_iter()
                    .map(|(key, r)| WireFlag {
                        key,
                        value: r.value,
                        variant: r.variant,
                        reason: r.reason.as_str().to_owned(),
                        error: r.error.map(|e| WireError {
                            code: e.code.as_str().to_owned(),
                            message: e.message,
                        }),
                        metadata: r.metadata,
                        flag_set_version: r.flag_set_version,
                    })
                    .collect(),
            },
            Err(e) => WireAnswer::Failed {
                code: e.code.as_str().to_owned(),
                message: e.message,
            },
        }
    }

    fn into_answer(self) -> Result<Answer, PeerError> {
        match self {
            WireAnswer::Resolved { flags } => flags
                .into_iter()
                .map(|f| {
                    let reason = Reason::from_wire(&f.reason).ok_or_else(|| {
                        PeerError::Undecodable(format!("unknown reason {:?}", f.reason))
                    })?;
                    let error = f.error.map(WireError::into_error).transpose()?;
                    Ok((
                        f.key,
                        ResolvedFlag {
                            value: f.value,
                            variant: f.variant,
                            reason,
                            error,
                            metadata: f.metadata,
                            flag_set_version: f.flag_set_version,
                        },
                    ))
                })
                .collect::<Result<Vec<_>, PeerError>>()
                .map(Ok),
            WireAnswer::Failed { code, message } => {
                Ok(Err(WireError { code, message }.into_error()?))
            }
        }
    }
}

impl WireError {
    fn into_error(self) -> Result<ResolveError, PeerError> {
        let code = ErrorCode::from_wire(&self.code)
            .ok_or_else(|| PeerError::Undecodable(format!("unknown error code {:?}", self.code)))?;
        Ok(ResolveError {
            code,
            message: self.message,
            exceeded: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_bytes(answer: Answer) -> Vec<u8> {
        let json = serde_json::to_string(&WireAnswer::from_answer(answer)).unwrap();
        PeerResponse {
            kind: Some(peer_response::Kind::ResolvedJson(json)),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_resolution_survives_the_round_trip() {
        let mut metadata = Metadata::new();
        metadata.insert("team".into(), "growth".into());
        let flag = ResolvedFlag {
            value: Some(Value::Bool(true)),
            variant: Some("on".into()),
            reason: Reason::TargetingMatch,
            error: None,
            metadata,
            flag_set_version: 7,
        };
        let decoded = decode_answer(&answer_bytes(Ok(vec![("f".into(), flag.clone())]))).unwrap();
        assert_eq!(decoded, Ok(vec![("f".to_owned(), flag)]));

        let missing = ResolveError {
            code: ErrorCode::FlagNotFound,
            message: "flag g not found".into(),
            exceeded: None,
        };
        assert_eq!(
            decode_answer(&answer_bytes(Err(missing.clone()))).unwrap(),
            Err(missing)
        );
    }

    #[test]
    fn requests_carry_set_key_type_and_context() {
        let ctx = EvaluationContext::new()
            .with_targeting_key("user-1")
            .with("plan", "pro");
        let bytes = encode_request(Some("web"), "banner", &ctx, Some(FlagType::String));
        let peer_request::Kind::Resolve(decoded) = decode_request(&bytes).unwrap() else {
            panic!("not a resolve");
        };
        assert_eq!(decoded.flag_set, "web");
        assert_eq!(decoded.flag_key, "banner");
        assert_eq!(parse_type(&decoded.flag_type), Ok(Some(FlagType::String)));
        let back: Value = serde_json::from_str(&decoded.context_json).unwrap();
        assert_eq!(back["plan"], "pro");
        assert_eq!(back["targetingKey"], "user-1");
    }

    #[test]
    fn malformed_peer_bytes_are_errors_not_panics() {
        assert!(matches!(
            decode_answer(&[0xff, 0xff, 0xff]),
            Err(PeerError::Undecodable(_))
        ));
        assert_eq!(decode_answer(&[]), Err(PeerError::Empty));
        let huge = vec![0u8; MAX_PEER_MESSAGE_BYTES + 1];
        assert_eq!(
            decode_answer(&huge),
            Err(PeerError::TooLarge(MAX_PEER_MESSAGE_BYTES + 1))
        );
        let bad_json = PeerResponse {
            kind: Some(peer_response::Kind::ResolvedJson(
                "{\"outcome\":\"resolved\"".into(),
            )),
        }
        .encode_to_vec();
        assert!(matches!(
            decode_answer(&bad_json),
            Err(PeerError::Undecodable(_))
        ));
        let bad_reason = PeerResponse {
            kind: Some(peer_response::Kind::ResolvedJson(
                r#"{"outcome":"resolved","flags":[{"key":"f","value":null,"variant":null,"reason":"MAYBE","error":null,"metadata":{},"flag_set_version":1}]}"#.into(),
            )),
        }
        .encode_to_vec();
        assert!(
            matches!(decode_answer(&bad_reason), Err(PeerError::Undecodable(m)) if m.contains("MAYBE"))
        );
        assert_eq!(
            parse_type("bool"),
            Err(PeerError::UnknownType("bool".into()))
        );
        let refused = PeerResponse {
            kind: Some(peer_response::Kind::Refused("stopping".into())),
        }
        .encode_to_vec();
        assert_eq!(
            decode_answer(&refused),
            Err(PeerError::Refused("stopping".into()))
        );
    }

    /// A forwarded request on a full node is refused (the asker evaluates locally), counted
    /// like any other refusal, and evaluated once a slot is free.
    #[tokio::test]
    async fn forwarded_requests_pass_the_same_gate() {
        let node = Arc::new(
            Node::start(
                bunting_actors::NodeConfig::default(),
                bunting_actors::Catalog::new(),
            )
            .await
            .unwrap(),
        );
        let gate = Gate::new(crate::service::Limits {
            max_concurrent_requests: 1,
            max_streams: 1,
            max_context_bytes: 1024,
        });
        let handler = PeerHandler::new(node.clone(), gate.clone());
        let from = NodeId::new("asker").unwrap();
        let request = encode_request(None, "f", &EvaluationContext::new(), None);
        let held = gate.admit("test").unwrap();
        let refused = PeerResponse::decode(handler.handle(&from, request.clone()).await.as_slice())
            .unwrap()
            .kind;
        assert!(
            matches!(&refused, Some(peer_response::Kind::Refused(why)) if why.contains("limit")),
            "{refused:?}"
        );
        drop(held);
        let answered = PeerResponse::decode(handler.handle(&from, request).await.as_slice())
            .unwrap()
            .kind;
        assert!(
            matches!(answered, Some(peer_response::Kind::ResolvedJson(_))),
            "{answered:?}"
        );
        node.shutdown().await;
    }
}
