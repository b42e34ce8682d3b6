//! What `Cluster::status` reports.

use std::net::SocketAddr;
use std::time::Duration;

use crate::node_id::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Heard from within the failure timeout; holds shards.
    Up,
    /// Heard from, but moving its shards away: excluded from placement, still a member.
    Draining,
    /// Not heard from within the failure timeout.
    Down,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberState::Up => "Up",
            MemberState::Draining => "Draining",
            MemberState::Down => "Down",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    /// When this run of the node started (µs since the Unix epoch); a restart is a new one.
    pub incarnation: u64,
    pub grpc_addr: String,
    pub cluster_addr: SocketAddr,
    pub state: MemberState,
    /// Time since this node last heard the member's heartbeat; `None` for the local node.
    pub since_heartbeat: Option<Duration>,
    /// Shards the member owns in this node's current map.
    pub shards_owned: u32,
    pub is_local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub local: NodeId,
    /// The epoch of this node's current shard map.
    pub epoch: u64,
    /// The coordinator as this node sees it now: the smallest id among the live members.
    pub coordinator: NodeId,
    /// Every member this node knows, itself included, sorted by id.
    pub members: Vec<MemberStatus>,
}
