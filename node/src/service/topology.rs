//! `bunting.v1.Topology` (the shard map for shard-aware clients) and `bunting.v1.ClusterAdmin`
//! (membership status, draining and undraining, behind `bunting cluster status|drain|undrain`).
//!
//! A node without a `[cluster]` section answers Topology as a cluster of one (every shard its own,
//! epoch 0), so the Rust client works against a single node unchanged; ClusterAdmin answers
//! FAILED_PRECONDITION there.

use std::time::Duration;

use bunting_cluster::{ClusterError, MemberState, NodeId, ShardMap};
use bunting_proto::bunting::v1::{
    ClusterNode, ClusterStatusRequest, ClusterStatusResponse, DrainRequest, DrainResponse,
    GetTopologyRequest, GetTopologyResponse, MemberStatus, NodeState, UndrainRequest,
    UndrainResponse, cluster_admin_server::ClusterAdmin, topology_server::Topology,
};
use tonic::{Request, Response, Status};

use super::wire_text::{bounded, quoted};
use crate::routing::Routing;

/// How long `Drain` waits for the cluster to adopt a map without the node.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The id a single (unclustered) node gives itself in its topology.
const STANDALONE_ID: &str = "standalone";

#[derive(Debug, Clone)]
pub struct TopologyService {
    routing: Option<Routing>,
    /// This node's gRPC address as clients should dial it.
    grpc_addr: String,
    shards: u32,
}

impl TopologyService {
    pub fn new(routing: Option<Routing>, grpc_addr: String, shards: u32) -> TopologyService {
        TopologyService {
            routing,
            grpc_addr,
            shards,
        }
    }

    fn routing(&self) -> Result<&Routing, Status> {
        self.routing.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this node is not part of a cluster (no [cluster] in its config)",
            )
        })
    }
}

#[tonic::async_trait]
impl Topology for TopologyService {
    async fn get_topology(
        &self,
        _request: Request<GetTopologyRequest>,
    ) -> Result<Response<GetTopologyResponse>, Status> {
        let Some(routing) = &self.routing else {
            return Ok(Response::new(GetTopologyResponse {
                epoch: 0,
                shard_count: self.shards,
                nodes: vec![ClusterNode {
                    id: STANDALONE_ID.to_owned(),
                    grpc_addr: self.grpc_addr.clone(),
                    state: NodeState::Up.into(),
                }],
                shard_owner: vec![0; usize::try_from(self.shards).unwrap_or(0)],
                answered_by: STANDALONE_ID.to_owned(),
            }));
        };
        let cluster = routing.cluster();
        let map = cluster.shard_map().borrow().clone();
        let status = cluster.status();
        let state_of = |id: &NodeId| {
            status
                .members
                .iter()
                .find(|m| &m.id == id)
                .map_or(NodeState::Up, |m| node_state(m.state))
        };
        Ok(Response::new(topology(&map, state_of, cluster.local_id())))
    }
}

/// The wire form of a shard map: nodes listed once, shards pointing at them by index.
fn topology(
    map: &ShardMap,
    state_of: impl Fn(&NodeId) -> NodeState,
    answered_by: &NodeId,
) -> GetTopologyResponse {
    let members = map.members();
    let nodes = members
        .iter()
        .map(|m| ClusterNode {
            id: m.id.to_string(),
            grpc_addr: m.grpc_addr.clone(),
            state: state_of(&m.id).into(),
        })
        .collect();
    let shard_owner = map
        .owners()
        .map(|(_, owner)| {
            members
                .iter()
                .position(|m| &m.id == owner)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0)
        })
        .collect();
    GetTopologyResponse {
        epoch: map.epoch(),
        shard_count: u32::try_from(map.owners().count()).unwrap_or(u32::MAX),
        nodes,
        shard_owner,
        answered_by: answered_by.to_string(),
    }
}

fn node_state(state: MemberState) -> NodeState {
    match state {
        MemberState::Up => NodeState::Up,
        MemberState::Draining => NodeState::Draining,
        MemberState::Down => NodeState::Down,
    }
}

#[tonic::async_trait]
impl ClusterAdmin for TopologyService {
    async fn status(
        &self,
        _request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let cluster = self.routing()?.cluster();
        let status = cluster.status();
        let map = cluster.shard_map().borrow().clone();
        Ok(Response::new(ClusterStatusResponse {
            answered_by: cluster.local_id().to_string(),
            epoch: map.epoch(),
            coordinator: status.coordinator.to_string(),
            shard_count: self.shards,
            members: status
                .members
                .iter()
                .map(|m| MemberStatus {
                    id: m.id.to_string(),
                    grpc_addr: m.grpc_addr.clone(),
                    cluster_addr: m.cluster_addr.to_string(),
                    state: node_state(m.state).into(),
                    last_heard_ms: m
                        .since_heartbeat
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    shards_owned: m.shards_owned,
                })
                .collect(),
        }))
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        let cluster = self.routing()?.cluster();
        let name = request.into_inner().node_id;
        let node: NodeId = name.parse().map_err(|e| {
            Status::invalid_argument(bounded(format!("node_id {}: {e}", quoted(&name))))
        })?;
        let epoch = cluster
            .drain(&node, DRAIN_TIMEOUT)
            .await
            .map_err(|e| Status::failed_precondition(format!("drain {node}: {e}")))?;
        Ok(Response::new(DrainResponse { epoch }))
    }

    async fn undrain(
        &self,
        request: Request<UndrainRequest>,
    ) -> Result<Response<UndrainResponse>, Status> {
        let cluster = self.routing()?.cluster();
        let name = request.into_inner().node_id;
        let node: NodeId = name.parse().map_err(|e| {
            Status::invalid_argument(bounded(format!("node_id {}: {e}", quoted(&name))))
        })?;
        let epoch = cluster.undrain(&node, DRAIN_TIMEOUT).await.map_err(|e| {
            let hint = match e {
                ClusterError::NotDraining(_) => {
                    "; `bunting cluster status` shows which members are draining"
                }
                _ => "",
            };
            Status::failed_precondition(format!("undrain {node}: {e}{hint}"))
        })?;
        Ok(Response::new(UndrainResponse { epoch }))
    }
}
