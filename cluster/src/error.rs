//! The cluster's errors.

use std::net::SocketAddr;
use std::time::Duration;

use crate::node_id::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid cluster config: {0}")]
    Config(String),
    #[error("cannot listen for cluster peers on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a cluster is already running in this process (node {0}); ractor's process groups are \
         process-wide, so one process hosts one member"
    )]
    AlreadyRunning(NodeId),
    #[error("cannot start the cluster's {what}: {message}")]
    Spawn { what: &'static str, message: String },
    #[error("node {0} is not a known cluster member")]
    UnknownNode(NodeId),
    #[error("node {0} is down")]
    NodeDown(NodeId),
    #[error("cannot reach node {node}: {error}")]
    Unreachable { node: NodeId, error: CallError },
    #[error("no shard map without node {node} was adopted within {timeout:?}")]
    DrainTimeout { node: NodeId, timeout: Duration },
    #[error("node {0} is not draining: there is nothing to undrain")]
    NotDraining(NodeId),
    #[error("no shard map with node {node} was adopted within {timeout:?}")]
    UndrainTimeout { node: NodeId, timeout: Duration },
    #[error("the cluster is shut down")]
    ShutDown,
}

/// Why `Cluster::call` returned no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("node {0} is not a known cluster member")]
    UnknownNode(NodeId),
    #[error("node {0} is down (no heartbeat within the failure timeout)")]
    NodeDown(NodeId),
    #[error("no connection to node {0}")]
    NotConnected(NodeId),
    #[error("connection to node {0} closed before it answered")]
    Disconnected(NodeId),
    #[error("node {node} did not answer within {timeout:?}")]
    Timeout { node: NodeId, timeout: Duration },
    #[error("node {0} is at its limit of requests in flight")]
    Busy(NodeId),
    #[error("request of {len} bytes exceeds the {limit}-byte payload limit")]
    TooLarge { len: usize, limit: usize },
    #[error("node {node} failed the request: {message}")]
    Remote { node: NodeId, message: String },
    #[error("the cluster is shut down")]
    ShutDown,
}
