//! Why the dispatch path did not answer, as a type every front end maps to its own protocol
//! (`From<DispatchError> for tonic::Status` here; an HTTP layer maps the same variants).
//! Resolution errors are not here: they are answers (`ResolvedFlag::error`), per flag.

use std::sync::Arc;

use bunting_actors::NodeError;
use bunting_cluster::NodeId;
use tonic::Status;

use crate::routing::ForwardFailed;
use crate::service::wire_text::quoted;
use crate::service::{ContextRefused, Refused};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Not admitted (the node is full), or the request's task failed.
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Context(#[from] ContextRefused),
    #[error("flag_key is empty")]
    EmptyFlagKey,
    #[error("subjects is empty: name at least one subject to evaluate for")]
    NoSubjects,
    #[error("subjects[{index}]: {source}")]
    SubjectContext {
        index: usize,
        source: ContextRefused,
    },
    #[error("flag_keys[{0}] is empty")]
    EmptyKey(usize),
    #[error("flag set {} not found", quoted(.0))]
    UnknownSet(Arc<str>),
    #[error(
        "{subjects} subjects x {keys} flags is {evaluations} evaluations, over this node's limit \
         of {limit} per call; split the batch"
    )]
    BatchTooLarge {
        subjects: usize,
        keys: usize,
        evaluations: usize,
        limit: usize,
    },
    /// The actor tree did not answer (a shard restarting, the node stopping).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A member did not report its statistics: partial results would be wrong without saying so.
    #[error("results incomplete: node {node} did not report: {error}; retry")]
    PeerTotals { node: NodeId, error: ForwardFailed },
}

impl From<DispatchError> for Status {
    fn from(error: DispatchError) -> Status {
        match error {
            DispatchError::Refused(refused) => refused.into(),
            DispatchError::Context(refused) => refused.into(),
            DispatchError::UnknownSet(_) => Status::not_found(error.to_string()),
            DispatchError::Node(_) | DispatchError::PeerTotals { .. } => {
                Status::unavailable(error.to_string())
            }
            DispatchError::EmptyFlagKey
            | DispatchError::NoSubjects
            | DispatchError::SubjectContext { .. }
            | DispatchError::EmptyKey(_)
            | DispatchError::BatchTooLarge { .. } => Status::invalid_argument(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_refusal_has_its_status_code_and_names_the_input() {
        let table: Vec<(DispatchError, Code, &str)> = vec![
            (
                Refused::Full {
                    limit: 4,
                    what: "requests in flight",
                }
                .into(),
                Code::ResourceExhausted,
                "limit of 4",
            ),
            (
                ContextRefused::TooLarge { size: 9, limit: 8 }.into(),
                Code::InvalidArgument,
                "9 bytes",
            ),
            (
                DispatchError::EmptyKey(3),
                Code::InvalidArgument,
                "flag_keys[3]",
            ),
            (
                DispatchError::SubjectContext {
                    index: 2,
                    source: ContextRefused::Malformed("too deep".into()),
                },
                Code::InvalidArgument,
                "subjects[2]: evaluation context: too deep",
            ),
            (
                DispatchError::UnknownSet("shop".into()),
                Code::NotFound,
                "flag set \"shop\" not found",
            ),
            (
                NodeError::SupervisorGone.into(),
                Code::Unavailable,
                "supervisor",
            ),
        ];
        for (error, code, text) in table {
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(text), "{status:?}");
        }
    }
}
