//! The shard map as the client holds it: checked once when it arrives, so routing a request is
//! two lookups that cannot fail.

use bunting_proto::bunting::v1::{GetTopologyResponse, NodeState as WireState};

use crate::error::ClientError;

/// One version of the cluster's shard map, from the `Topology` RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The map's version; larger is newer.
    pub epoch: u64,
    /// How many shards the key space is cut into.
    pub shard_count: u32,
    /// The members that own shards or are draining.
    pub nodes: Vec<NodeInfo>,
    /// The node that answered the request for this map.
    pub answered_by: String,
    /// `shard_owner[s]` indexes `nodes`; checked to be in range, one entry per shard.
    shard_owner: Vec<usize>,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// The node's gRPC address (`host:port`).
    pub grpc_addr: String,
    pub state: NodeState,
}

/// A member's state as the cluster sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Unspecified,
    Up,
    /// Still serving, about to stop; owns no shards.
    Draining,
    /// Missed its heartbeats.
    Down,
}

impl NodeState {
    /// Whether requests may be sent to a node in this state. A node whose state is not given is
    /// assumed to serve: the client should not refuse to route on an older server's map.
    pub fn serves(self) -> bool {
        !matches!(self, NodeState::Down)
    }
}

impl Topology {
    /// Checks a `GetTopology` answer: at least one node, one owner per shard, every owner a
    /// listed node with an address.
    pub fn from_wire(wire: GetTopologyResponse) -> Result<Topology, ClientError> {
        let answered_by = wire.answered_by;
        let invalid = |reason: String| ClientError::InvalidTopology {
            answered_by: answered_by.clone(),
            reason,
        };
        if wire.shard_count == 0 {
            return Err(invalid("shard_count is 0".to_owned()));
        }
        if wire.nodes.is_empty() {
            return Err(invalid("no nodes".to_owned()));
        }
        if wire.shard_owner.len() != wire.shard_count as usize {
            return Err(invalid(format!(
                "{} shard owners for {} shards",
                wire.shard_owner.len(),
                wire.shard_count
            )));
        }
        let mut nodes = Vec::with_capacity(wire.nodes.len());
        for node in wire.nodes {
            if node.grpc_addr.is_empty() {
                return Err(invalid(format!("node `{}` has no grpc_addr", node.id)));
            }
            if nodes.iter().any(|n: &NodeInfo| n.id == node.id) {
                return Err(invalid(format!("node `{}` is listed twice", node.id)));
            }
            let state = match WireState::try_from(node.state) {
                Ok(WireState::Up) => NodeState::Up,
                Ok(WireState::Draining) => NodeState::Draining,
                Ok(WireState::Down) => NodeState::Down,
                Ok(WireState::Unspecified) | Err(_) => NodeState::Unspecified,
            };
            nodes.push(NodeInfo {
                id: node.id,
                grpc_addr: node.grpc_addr,
                state,
            });
        }
        let mut shard_owner = Vec::with_capacity(wire.shard_owner.len());
        for (shard, &owner) in wire.shard_owner.iter().enumerate() {
            let owner = owner as usize;
            if owner >= nodes.len() {
                return Err(invalid(format!(
                    "shard {shard} is owned by node index {owner}, but there are {} nodes",
                    nodes.len()
                )));
            }
            shard_owner.push(owner);
        }
        Ok(Topology {
            epoch: wire.epoch,
            shard_count: wire.shard_count,
            nodes,
            answered_by,
            shard_owner,
        })
    }

    /// The shard a targeting key belongs to: the same function every node uses.
    pub fn shard_of(&self, targeting_key: &str) -> u32 {
        bunting_keyspace::shard_of(targeting_key, self.shard_count)
    }

    /// The index in `nodes` of the key's owner.
    pub(crate) fn owner_index(&self, targeting_key: &str) -> Option<usize> {
        let shard = self.shard_of(targeting_key) as usize;
        self.shard_owner.get(shard).copied()
    }

    /// The node that owns the key's shard.
    pub fn owner_of(&self, targeting_key: &str) -> Option<&NodeInfo> {
        self.owner_index(targeting_key)
            .and_then(|index| self.nodes.get(index))
    }

    /// The owner of every shard, by node id.
    pub fn shard_owners(&self) -> impl Iterator<Item = &str> + '_ {
        self.shard_owner
            .iter()
            .filter_map(|&index| self.nodes.get(index).map(|n| n.id.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bunting_proto::bunting::v1::ClusterNode;

    fn wire(shard_count: u32, owners: Vec<u32>) -> GetTopologyResponse {
        GetTopologyResponse {
            epoch: 7,
            shard_count,
            nodes: ["a", "b", "c"]
                .iter()
                .enumerate()
                .map(|(i, id)| ClusterNode {
                    id: (*id).to_owned(),
                    grpc_addr: format!("127.0.0.1:{}", 1000 + i),
                    state: WireState::Up as i32,
                })
                .collect(),
            shard_owner: owners,
            answered_by: "a".to_owned(),
        }
    }

    #[test]
    fn routes_by_shard_of_with_the_maps_shard_count() {
        // 7 shards, owners cycling a, b, c: the owner is fixed by shard_of(key, 7), not by the
        // default shard count or any other hash.
        let owners: Vec<u32> = (0..7).map(|s| s % 3).collect();
        let topology = Topology::from_wire(wire(7, owners.clone())).unwrap();
        let ids = ["a", "b", "c"];
        for i in 0..200 {
            let key = format!("user-{i}");
            let shard = bunting_keyspace::shard_of(&key, 7);
            assert_eq!(topology.shard_of(&key), shard);
            let expected = ids[owners[shard as usize] as usize];
            assert_eq!(topology.owner_of(&key).unwrap().id, expected, "{key}");
        }
        // With 256 shards the same keys land elsewhere, so the count above really mattered.
        let moved = (0..200)
            .filter(|i| {
                let key = format!("user-{i}");
                bunting_keyspace::shard_of(&key, 7) != bunting_keyspace::shard_of(&key, 256)
            })
            .count();
        assert!(moved > 100, "{moved}");
    }

    #[test]
    fn refuses_maps_it_cannot_route_on() {
        let cases = [
            (wire(0, vec![]), "shard_count is 0"),
            (wire(3, vec![0, 1]), "2 shard owners for 3 shards"),
            (wire(2, vec![0, 3]), "shard 1 is owned by node index 3"),
        ];
        for (bad, expected) in cases {
            let error = Topology::from_wire(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        let mut twice = wire(1, vec![0]);
        twice.nodes[1].id = "a".to_owned();
        let error = Topology::from_wire(twice).unwrap_err().to_string();
        assert!(error.contains("node `a` is listed twice"), "{error}");
    }
}
