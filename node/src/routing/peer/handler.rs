//! The owner's side of the peer protocol: a request forwarded by another node is decoded
//! (anything malformed, too large or of another protocol version is refused, never a panic) and
//! served by this node's [`Dispatch`] without routing, so it passes the same admission as a
//! client's request and is evaluated here, never forwarded again.

use bunting_actors::TrackRequest;
use bunting_cluster::{ForwardHandler, NodeId};

use super::wire::{
    Answer, Request, Resolve, Target, Track, Tracked, decode_request, encode_answer,
};
use crate::dispatch::{Dispatch, DispatchError, TrackFailed};

/// The label of peer requests in `bunting_requests_shed_total` and the evaluation metrics.
const SERVICE: &str = "cluster.peer";

/// Serves peers' requests on this node's shard actors.
#[derive(Debug, Clone)]
pub struct PeerHandler {
    /// This node only (built with [`Dispatch::new`]).
    dispatch: Dispatch,
}

impl PeerHandler {
    pub fn new(dispatch: Dispatch) -> PeerHandler {
        PeerHandler { dispatch }
    }

    /// The answer to one peer request: a refusal when it cannot be served (the asker falls back
    /// to local evaluation, or answers UNAVAILABLE for a Track).
    async fn answer(&self, request: &[u8]) -> Answer {
        let request = match decode_request(request) {
            Ok(request) => request,
            Err(e) => return Answer::Refused(e.to_string()),
        };
        let refused = |error: DispatchError| Answer::Refused(error.to_string());
        let dispatch = &self.dispatch;
        match request {
            Request::Resolve(Resolve {
                set,
                context,
                target: Target::Flag { key, wanted },
            }) => dispatch
                .resolve(SERVICE, set, key, Some(context), wanted)
                .await
                .map_or_else(refused, |routed| Answer::Flag(routed.answer)),
            Request::Resolve(Resolve {
                set,
                context,
                target: Target::All,
            }) => dispatch
                .resolve_all(SERVICE, set, Some(context))
                .await
                .map_or_else(refused, |routed| Answer::All(routed.answer)),
            Request::Bulk(bulk) => dispatch
                .bulk_forwarded(SERVICE, bulk)
                .await
                .map_or_else(refused, Answer::Bulk),
            Request::Track(Track {
                user,
                event,
                value,
                flag_set,
            }) => {
                let request = TrackRequest {
                    user,
                    event,
                    value,
                    flag_set,
                };
                match dispatch.track(SERVICE, request).await {
                    Ok(ids) => Answer::Tracked(Tracked::Counted(ids)),
                    Err(TrackFailed::BadEvent(why)) => Answer::Tracked(Tracked::BadEvent(why)),
                    Err(other) => Answer::Refused(other.to_string()),
                }
            }
            Request::Totals(id) => dispatch
                .experiment_totals(SERVICE, id)
                .await
                .map_or_else(refused, Answer::Totals),
        }
    }
}

#[async_trait::async_trait]
impl ForwardHandler for PeerHandler {
    async fn handle(&self, from: &NodeId, request: Vec<u8>) -> Vec<u8> {
        metrics::counter!("bunting_forwards_received_total").increment(1);
        let answer = self.answer(&request).await;
        if let Answer::Refused(why) = &answer {
            tracing::warn!(peer = %from, %why, "refused a peer request");
        }
        encode_answer(answer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bunting_actors::{Node, ResolvedFlag};
    use bunting_engine::{ErrorCode, EvaluationContext, FlagType, Metadata, Reason, ResolveError};
    use bunting_proto::bunting::v1 as pb;
    use prost::Message;

    use super::*;
    use crate::routing::peer::wire::{
        MAX_PEER_MESSAGE_BYTES, PEER_PROTOCOL_VERSION, PeerError, decode_answer, encode_request,
    };
    use crate::service::{Gate, Limits};

    fn one_flag(key: &str) -> Vec<u8> {
        encode_request(Request::Resolve(Resolve {
            set: None,
            context: Default::default(),
            target: Target::Flag {
                key: key.into(),
                wanted: Some(FlagType::Boolean),
            },
        }))
    }

    #[test]
    fn answers_survive_the_round_trip() {
        let mut metadata = Metadata::new();
        metadata.insert("team".into(), "growth".into());
        let flag = ResolvedFlag {
            value: Some(serde_json::json!({"colour": "green", "n": 3})),
            variant: Some("on".into()),
            reason: Reason::TargetingMatch,
            error: None,
            metadata,
            flag_set_version: 7,
        };
        let back = decode_answer(&encode_answer(Answer::Flag(flag.clone()))).unwrap();
        assert_eq!(back, Answer::Flag(flag.clone()));

        let missing = ResolveError {
            code: ErrorCode::FlagNotFound,
            message: "flag set g not found".into(),
            exceeded: None,
        };
        let back = decode_answer(&encode_answer(Answer::All(Err(missing.clone())))).unwrap();
        assert_eq!(back, Answer::All(Err(missing)));

        let bulk = Answer::Bulk(crate::routing::peer::wire::BulkAnswer::Subjects(vec![
            vec![flag.clone()],
            vec![flag],
        ]));
        assert_eq!(decode_answer(&encode_answer(bulk.clone())).unwrap(), bulk);
    }

    #[test]
    fn requests_carry_set_target_and_context() {
        let ctx = EvaluationContext::new()
            .with_targeting_key("user-1")
            .with("plan", "pro");
        let context = bunting_proto::json::json_to_struct(ctx.fields()).unwrap();
        let request = Request::Resolve(Resolve {
            set: Some("web".into()),
            context,
            target: Target::Flag {
                key: "banner".into(),
                wanted: Some(FlagType::String),
            },
        });
        assert_eq!(
            decode_request(&encode_request(request.clone())),
            Ok(request)
        );
        let untyped = Request::Resolve(Resolve {
            set: None,
            context: Default::default(),
            target: Target::Flag {
                key: "banner".into(),
                wanted: None,
            },
        });
        assert_eq!(
            decode_request(&encode_request(untyped.clone())),
            Ok(untyped)
        );
        let all = Request::Resolve(Resolve {
            set: None,
            context: Default::default(),
            target: Target::All,
        });
        assert_eq!(decode_request(&encode_request(all.clone())), Ok(all));
    }

    #[test]
    fn malformed_peer_bytes_are_errors_not_panics() {
        assert!(matches!(
            decode_answer(&[0xff, 0xff, 0xff]),
            Err(PeerError::Undecodable(_))
        ));
        let huge = vec![0u8; MAX_PEER_MESSAGE_BYTES + 1];
        assert_eq!(
            decode_request(&huge),
            Err(PeerError::TooLarge(MAX_PEER_MESSAGE_BYTES + 1))
        );
        // A version-1 request (JSON text in field 1) has no version and no request in it.
        let old = [0x0a, 0x02, 0x0a, 0x00];
        assert_eq!(
            decode_request(&old),
            Err(PeerError::Version {
                theirs: 0,
                ours: PEER_PROTOCOL_VERSION
            })
        );
        let unknown_reason = pb::PeerResponse {
            protocol_version: PEER_PROTOCOL_VERSION,
            kind: Some(pb::peer_response::Kind::Resolved(pb::PeerResolved {
                result: Some(pb::peer_resolved::Result::Flag(pb::PeerFlag {
                    reason: "MAYBE".into(),
                    ..Default::default()
                })),
            })),
        }
        .encode_to_vec();
        assert!(
            matches!(decode_answer(&unknown_reason), Err(PeerError::Malformed { problem, .. }) if problem.contains("MAYBE"))
        );
        // A type that is present must be one: UNSPECIFIED is not "untyped" (that is absence).
        let unspecified = pb::PeerRequest {
            protocol_version: PEER_PROTOCOL_VERSION,
            kind: Some(pb::peer_request::Kind::Resolve(pb::PeerResolve {
                flag_set: None,
                context: None,
                target: Some(pb::peer_resolve::Target::Flag(pb::PeerOneFlag {
                    key: "f".into(),
                    flag_type: Some(0),
                })),
            })),
        }
        .encode_to_vec();
        assert!(matches!(
            decode_request(&unspecified),
            Err(PeerError::Malformed {
                field: "resolve.flag.flag_type",
                ..
            })
        ));
        let refused = pb::PeerResponse {
            protocol_version: 0,
            kind: Some(pb::peer_response::Kind::Refused("stopping".into())),
        }
        .encode_to_vec();
        assert_eq!(
            decode_answer(&refused),
            Ok(Answer::Refused("stopping".into()))
        );
    }

    async fn handler(requests: usize) -> (Arc<Node>, Gate, PeerHandler) {
        let node = Arc::new(
            Node::start(
                bunting_actors::NodeConfig::default(),
                bunting_actors::Catalog::new(),
            )
            .await
            .unwrap(),
        );
        let gate = Gate::new(Limits {
            max_concurrent_requests: requests,
            max_streams: 1,
            max_context_bytes: 1024,
            max_looping_evaluations: 1,
        });
        let handler = PeerHandler::new(Dispatch::new(node.clone(), gate.clone(), 100));
        (node, gate, handler)
    }

    /// A forwarded request on a full node is refused (the asker evaluates locally), counted
    /// like any other refusal, and evaluated once a slot is free.
    #[tokio::test]
    async fn forwarded_requests_pass_the_same_gate() {
        let (node, gate, handler) = handler(1).await;
        let from = NodeId::new("asker").unwrap();
        let held = gate.admit("test").unwrap();
        let refused = decode_answer(&handler.handle(&from, one_flag("f")).await).unwrap();
        assert!(
            matches!(&refused, Answer::Refused(why) if why.contains("limit")),
            "{refused:?}"
        );
        drop(held);
        let answered = decode_answer(&handler.handle(&from, one_flag("f")).await).unwrap();
        assert!(
            matches!(&answered, Answer::Flag(r) if r.error.is_some()),
            "{answered:?}"
        );
        node.shutdown().await;
    }

    /// A peer of another protocol version is refused with both versions named.
    #[tokio::test]
    async fn a_peer_of_another_version_is_refused_by_name() {
        let (node, _gate, handler) = handler(4).await;
        let from = NodeId::new("old").unwrap();
        let mut request = pb::PeerRequest::decode(one_flag("f").as_slice()).unwrap();
        request.protocol_version = PEER_PROTOCOL_VERSION + 1;
        let answer = decode_answer(&handler.handle(&from, request.encode_to_vec()).await).unwrap();
        let Answer::Refused(why) = answer else {
            panic!("not refused: {answer:?}");
        };
        assert!(
            why.contains(&format!("version {}", PEER_PROTOCOL_VERSION + 1)),
            "{why}"
        );
        node.shutdown().await;
    }
}
