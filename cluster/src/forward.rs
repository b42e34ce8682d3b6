//! The server's side of `Cluster::call`: what a node does with a request a peer sends it.

use crate::node_id::NodeId;

/// Answers requests that peers send with `Cluster::call` (the server forwards evaluations with
/// it). Requests and answers are opaque bytes to the cluster; the server decodes them.
///
/// A handler runs on its own task per request, at most `ClusterConfig::max_inflight_requests`
/// at a time per node (a request past that is answered `CallError::Busy` at once). Its answer
/// must fit `ClusterConfig::max_payload_bytes`; a larger one reaches the caller as
/// `CallError::Remote`.
#[async_trait::async_trait]
pub trait ForwardHandler: Send + Sync + 'static {
    async fn handle(&self, from: &NodeId, request: Vec<u8>) -> Vec<u8>;
}
