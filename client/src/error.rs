//! The client's one error type, and how gRPC statuses map onto it.

use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};

/// Why a call failed. Variants that are the caller's fault (`FlagNotFound`, `TypeMismatch`,
/// `InvalidContext`, ...) come back after one attempt; `Unavailable` only after every attempt.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The configuration lists no seed at all.
    #[error("no seeds configured: give at least one node address")]
    NoSeeds,
    /// A seed or a node address from the topology is not a usable URI.
    #[error("address `{address}` is not usable: {reason}")]
    InvalidAddress { address: String, reason: String },
    /// No seed answered `GetTopology`; every seed is named with its error.
    #[error("no seed answered GetTopology: {}", SeedList(.tried))]
    NoSeedAnswered { tried: Vec<SeedFailure> },
    /// A node answered `GetTopology` with a map that cannot be routed on.
    #[error("node `{answered_by}` sent an unusable topology: {reason}")]
    InvalidTopology { answered_by: String, reason: String },
    /// The flag set has no flag with this key (`NOT_FOUND`).
    #[error("flag `{flag_key}` not found: {message}")]
    FlagNotFound { flag_key: String, message: String },
    /// The flag set named by a bulk evaluation does not exist (`NOT_FOUND`).
    #[error("flag set `{flag_set_id}` not found: {message}")]
    FlagSetNotFound {
        flag_set_id: String,
        message: String,
    },
    /// The flag's value is not of the requested type (`INVALID_ARGUMENT`, as flagd maps it).
    #[error("flag `{flag_key}` is not of the requested type: {message}")]
    TypeMismatch { flag_key: String, message: String },
    /// The evaluation context could not be used, here or on the node.
    #[error("invalid evaluation context: {message}")]
    InvalidContext { message: String },
    /// The flag's definition did not compile on the node (`DATA_LOSS`).
    #[error("flag `{flag_key}` has a broken definition: {message}")]
    ParseError { flag_key: String, message: String },
    /// The node could not resolve the flag for another reason (`UNKNOWN` from the node).
    #[error("flag `{flag_key}` could not be resolved: {message}")]
    General { flag_key: String, message: String },
    /// A request the node refused and that retrying will not fix.
    #[error("{operation} refused by node `{node}` with {code:?}: {message}")]
    Rejected {
        operation: String,
        node: String,
        code: Code,
        message: String,
    },
    /// Every attempt failed on a node-side or network problem; `nodes` are the nodes tried, in
    /// order, and `last` is the last failure.
    #[error("{operation} unavailable after {attempts} attempt(s) on nodes [{}]: {last}", .nodes.join(", "))]
    Unavailable {
        operation: String,
        attempts: u32,
        nodes: Vec<String>,
        last: String,
    },
    /// The request timeout ran out before an attempt succeeded.
    #[error("{operation} timed out after {timeout:?} and {attempts} attempt(s) on nodes [{}]", .nodes.join(", "))]
    Timeout {
        operation: String,
        timeout: Duration,
        attempts: u32,
        nodes: Vec<String>,
    },
    /// A node sent an answer that does not fit the protocol (wrong number of results, a value that
    /// has no JSON form).
    #[error("malformed answer from node `{node}`: {reason}")]
    Malformed { node: String, reason: String },
}

/// One seed that did not answer while connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFailure {
    pub seed: String,
    pub error: String,
}

struct SeedList<'a>(&'a [SeedFailure]);

impl fmt::Display for SeedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "`{}`: {}", failure.seed, failure.error)?;
        }
        Ok(())
    }
}

/// What a call was doing, so an error can name the flag or flag set it concerns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation<'a> {
    Resolve { flag_key: &'a str },
    ResolveAll,
    Bulk { flag_set_id: &'a str },
}

impl fmt::Display for Operation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Resolve { flag_key } => write!(f, "resolving flag `{flag_key}`"),
            Operation::ResolveAll => f.write_str("resolving all flags"),
            Operation::Bulk { flag_set_id: "" } => {
                f.write_str("bulk evaluation of the default flag set")
            }
            Operation::Bulk { flag_set_id } => {
                write!(f, "bulk evaluation of flag set `{flag_set_id}`")
            }
        }
    }
}

/// How the client treats a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The caller's fault or a definitive answer: return it at once.
    Final,
    /// The node is unreachable or stopping: avoid it for a while, refresh the map, retry
    /// elsewhere.
    NodeDown,
    /// The node is alive but busy (shedding load): retry elsewhere, the map is fine.
    Busy,
}

/// Classifies a status. A status with a `source` was made by the client's own transport (reset
/// connection, refused connect, broken stream), never sent by a node, so it means the node is
/// down whatever code tonic gave it; a node's own `UNKNOWN` is flagd's GENERAL error and final.
pub(crate) fn classify(status: &Status) -> Failure {
    if std::error::Error::source(status).is_some() {
        return Failure::NodeDown;
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            Failure::NodeDown
        }
        Code::ResourceExhausted => Failure::Busy,
        _ => Failure::Final,
    }
}

/// flagd's mapping of statuses back to resolution errors (the node maps FLAG_NOT_FOUND to
/// NOT_FOUND, TYPE_MISMATCH to INVALID_ARGUMENT, PARSE_ERROR to DATA_LOSS, GENERAL to UNKNOWN).
/// INVALID_ARGUMENT also covers an unusable context; the node's message says which.
pub(crate) fn from_status(status: &Status, operation: Operation<'_>, node: &str) -> ClientError {
    let message = status.message().to_owned();
    let context_problem = message.contains("context");
    match (status.code(), operation) {
        (Code::InvalidArgument, _) if context_problem => ClientError::InvalidContext { message },
        (Code::NotFound, Operation::Resolve { flag_key }) => ClientError::FlagNotFound {
            flag_key: flag_key.to_owned(),
            message,
        },
        (Code::NotFound, Operation::Bulk { flag_set_id }) => ClientError::FlagSetNotFound {
            flag_set_id: flag_set_id.to_owned(),
            message,
        },
        (Code::InvalidArgument, Operation::Resolve { flag_key }) => ClientError::TypeMismatch {
            flag_key: flag_key.to_owned(),
            message,
        },
        (Code::DataLoss, Operation::Resolve { flag_key }) => ClientError::ParseError {
            flag_key: flag_key.to_owned(),
            message,
        },
        (Code::Unknown, Operation::Resolve { flag_key }) => ClientError::General {
            flag_key: flag_key.to_owned(),
            message,
        },
        (code, operation) => ClientError::Rejected {
            operation: operation.to_string(),
            node: node.to_owned(),
            code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_statuses_map_like_flagd() {
        let resolve = Operation::Resolve { flag_key: "f" };
        let cases = [
            (Status::not_found("no flag"), "FlagNotFound"),
            (Status::invalid_argument("wrong type"), "TypeMismatch"),
            (
                Status::invalid_argument("evaluation context: too deep"),
                "InvalidContext",
            ),
            (Status::data_loss("broken"), "ParseError"),
            (Status::unknown("bad variant"), "General"),
            (Status::permission_denied("no"), "Rejected"),
        ];
        for (status, expected) in cases {
            let error = from_status(&status, resolve, "n1");
            assert!(
                format!("{error:?}").starts_with(expected),
                "{status:?} gave {error:?}"
            );
            assert_eq!(classify(&status), Failure::Final, "{status:?}");
        }
    }

    #[test]
    fn only_node_side_failures_are_retried() {
        assert_eq!(
            classify(&Status::unavailable("stopping")),
            Failure::NodeDown
        );
        assert_eq!(
            classify(&Status::deadline_exceeded("slow")),
            Failure::NodeDown
        );
        assert_eq!(classify(&Status::resource_exhausted("full")), Failure::Busy);
        // The transport's own UNKNOWN (a reset stream) carries its cause; a node's does not.
        let transport = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(classify(&transport), Failure::NodeDown);
    }

    #[test]
    fn no_seed_error_names_every_seed() {
        let error = ClientError::NoSeedAnswered {
            tried: vec![
                SeedFailure {
                    seed: "a:1".into(),
                    error: "refused".into(),
                },
                SeedFailure {
                    seed: "b:2".into(),
                    error: "timed out".into(),
                },
            ],
        };
        let text = error.to_string();
        assert!(
            text.contains("`a:1`: refused") && text.contains("`b:2`: timed out"),
            "{text}"
        );
    }
}
