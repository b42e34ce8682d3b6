//! A node's view of the cluster: who is a member, who is alive, which map is current, and when
//! this node must place a new one. Pure state and rules (time is passed in), so the protocol is
//! tested without sockets; the membership actor (`membership`) drives it.
//!
//! The rules:
//! - A member is whoever sent this node a heartbeat; it is Down once not heard from for
//!   `failure_timeout`, and forgotten when it leaves cleanly (or after `FORGET_AFTER` down).
//!   A heartbeat with a newer incarnation (the node restarted) replaces the record; one with an
//!   older incarnation is ignored while the recorded one is alive, as is any from an
//!   incarnation that left in the last `TOMBSTONE_FOR`. (Incarnations are start times: after a
//!   clock step back a restarted node has a smaller one, and must still get back in once its
//!   previous run is down or forgotten.)
//! - The coordinator is the smallest id among this node and the members it considers alive.
//! - A node started with seeds must join before it owns anything: it starts with a map of no
//!   members (epoch 0) and places no map until a peer has accepted it (its first accepted
//!   heartbeat). So a node that never gets in (a wrong cookie, another shard count) owns no
//!   shard, where it used to form a cluster of one owning them all. Only a node without seeds
//!   bootstraps a cluster by itself.
//! - The coordinator places a new map when the set of live, non-draining members (with their
//!   gRPC addresses) differs from the current map's, with epoch = highest epoch seen + 1.
//! - Every node adopts a map only if it supersedes the one it holds (`ShardMap::supersedes`).
//!   Heartbeats carry the sender's epoch and a digest of its map; a node attaches its map to
//!   its heartbeat for a peer that is behind or holds a different map of the same epoch, so
//!   maps also spread node to node, not only from the coordinator.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashring::DefaultHashBuilder;
use prost::Message as _;

use crate::node_id::NodeId;
use crate::shard_map::{MemberAddr, ShardMap};
use crate::wire::{self, Heartbeat, HeartbeatWire, KnownWire};

/// A member down for this long is forgotten (no longer listed, no longer redialled).
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How long a clean leave shuts out heartbeats of the incarnation that left: longer than any
/// heartbeat can be in flight, short enough that a restart with a stepped-back clock gets in.
pub(crate) const TOMBSTONE_FOR: Duration = Duration::from_secs(30);

/// This node, as it describes itself to peers.
#[derive(Debug, Clone)]
pub(crate) struct SelfInfo {
    pub id: NodeId,
    pub incarnation: u64,
    pub grpc_addr: String,
    pub cluster_addr: SocketAddr,
    pub shards: u32,
    /// The application's peer protocol version (`ClusterConfig::peer_protocol`).
    pub peer_protocol: u32,
    pub vnodes: u16,
}

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub incarnation: u64,
    pub grpc_addr: String,
    pub cluster_addr: SocketAddr,
    pub draining: bool,
    pub last_heard: Instant,
    /// The epoch and digest of the map the member last said it holds.
    pub map_epoch: u64,
    pub map_digest: u64,
    /// Whether this node already acted on the member going down (logged, dropped sessions).
    pub down_noted: bool,
}

/// Why a peer is refused membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// It uses another shard count: it cannot share a map with this node.
    Shards { theirs: u32 },
    /// It speaks another version of the application's peer protocol: what this node would
    /// forward to it (or it to this node) would be refused.
    PeerProtocol { theirs: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeartbeatOutcome {
    /// The sender cannot be a member alongside this node.
    Refused(Mismatch),
    /// From an incarnation that restarted or left since.
    Stale,
    Accepted {
        /// A new member, a restarted one, or one that was down.
        joined: bool,
        /// The heartbeat carried a map this node adopted.
        adopted: bool,
    },
}

#[derive(Debug)]
pub(crate) struct View {
    me: SelfInfo,
    draining: bool,
    failure_timeout: Duration,
    members: BTreeMap<NodeId, Member>,
    /// Incarnations that left cleanly, and when; their late heartbeats must not bring them back.
    left: BTreeMap<NodeId, (u64, Instant)>,
    /// Addresses learned from gossip for nodes that are not (yet) members: dial targets.
    gossip: BTreeMap<NodeId, (SocketAddr, Instant)>,
    map: Arc<ShardMap>,
    map_digest: u64,
    max_epoch: u64,
    /// Whether this node may place maps: from the start for a node without seeds, from the
    /// first accepted heartbeat for one that must join.
    admitted: bool,
}

impl View {
    pub(crate) fn new(me: SelfInfo, failure_timeout: Duration) -> View {
        let map = ShardMap::place(
            0,
            me.id.clone(),
            me.shards,
            me.vnodes,
            &[MemberAddr {
                id: me.id.clone(),
                grpc_addr: me.grpc_addr.clone(),
            }],
        );
        View {
            map_digest: digest(&map),
            map: Arc::new(map),
            me,
            draining: false,
            failure_timeout,
            members: BTreeMap::new(),
            left: BTreeMap::new(),
            gossip: BTreeMap::new(),
            max_epoch: 0,
            admitted: true,
        }
    }

    /// A view for a node that must join a cluster (it has seeds): it owns nothing and places
    /// nothing until a peer accepts it.
    pub(crate) fn must_join(mut self) -> View {
        let map = ShardMap::place(0, self.me.id.clone(), self.me.shards, self.me.vnodes, &[]);
        self.map_digest = digest(&map);
        self.map = Arc::new(map);
        self.admitted = false;
        self
    }

    pub(crate) fn me(&self) -> &SelfInfo {
        &self.me
    }

    pub(crate) fn map(&self) -> &Arc<ShardMap> {
        &self.map
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining
    }

    pub(crate) fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    pub(crate) fn is_alive(&self, member: &Member, now: Instant) -> bool {
        now.saturating_duration_since(member.last_heard) < self.failure_timeout
    }

    pub(crate) fn on_heartbeat(&mut self, hb: Heartbeat, now: Instant) -> HeartbeatOutcome {
        if hb.node == self.me.id {
            return HeartbeatOutcome::Stale;
        }
        if hb.shards != self.me.shards {
            return HeartbeatOutcome::Refused(Mismatch::Shards { theirs: hb.shards });
        }
        if hb.peer_protocol != self.me.peer_protocol {
            return HeartbeatOutcome::Refused(Mismatch::PeerProtocol {
                theirs: hb.peer_protocol,
            });
        }
        let left_recently = self.left.get(&hb.node).is_some_and(|&(gone, at)| {
            hb.incarnation <= gone && now.saturating_duration_since(at) < TOMBSTONE_FOR
        });
        if left_recently {
            return HeartbeatOutcome::Stale;
        }
        let joined = match self.members.get(&hb.node) {
            Some(m) if hb.incarnation < m.incarnation && self.is_alive(m, now) => {
                return HeartbeatOutcome::Stale;
            }
            Some(m) if hb.incarnation < m.incarnation => true,
            Some(m) => hb.incarnation > m.incarnation || !self.is_alive(m, now),
            None => true,
        };
        self.max_epoch = self.max_epoch.max(hb.map_epoch);
        for (id, addr) in hb.known {
            if id != self.me.id && !self.members.contains_key(&id) && id != hb.node {
                self.gossip.insert(id, (addr, now));
            }
        }
        self.gossip.remove(&hb.node);
        self.admitted = true;
        self.members.insert(
            hb.node,
            Member {
                incarnation: hb.incarnation,
                grpc_addr: hb.grpc_addr,
                cluster_addr: hb.cluster_addr,
                draining: hb.draining,
                last_heard: now,
                map_epoch: hb.map_epoch,
                map_digest: hb.map_digest,
                down_noted: false,
            },
        );
        let adopted = hb.map.is_some_and(|map| self.adopt(map));
        HeartbeatOutcome::Accepted { joined, adopted }
    }

    /// Takes `map` if it supersedes the current one (and has this node's shard count).
    pub(crate) fn adopt(&mut self, map: ShardMap) -> bool {
        if map.shards() != self.me.shards {
            return false;
        }
        self.max_epoch = self.max_epoch.max(map.epoch());
        if !map.supersedes(&self.map) {
            return false;
        }
        self.map_digest = digest(&map);
        self.map = Arc::new(map);
        true
    }

    /// A member left cleanly: forget it now rather than wait for the failure timeout.
    pub(crate) fn on_leave(&mut self, id: &NodeId, incarnation: u64, now: Instant) -> bool {
        let gone = self.left.entry(id.clone()).or_insert((incarnation, now));
        *gone = (gone.0.max(incarnation), now);
        match self.members.get(id) {
            Some(m) if m.incarnation <= incarnation => {
                self.members.remove(id);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn set_draining(&mut self) {
        self.draining = true;
    }

    /// Back in placement from the next map on.
    pub(crate) fn clear_draining(&mut self) {
        self.draining = false;
    }

    /// The smallest id among this node and the members it hears from.
    pub(crate) fn coordinator(&self, now: Instant) -> &NodeId {
        self.members
            .iter()
            .filter(|(_, m)| self.is_alive(m, now))
            .map(|(id, _)| id)
            .chain(std::iter::once(&self.me.id))
            .min()
            .unwrap_or(&self.me.id)
    }

    /// The members shards should be on: alive and not draining, this node included.
    fn placement(&self, now: Instant) -> Vec<MemberAddr> {
        let mut members: Vec<MemberAddr> = self
            .members
            .iter()
            .filter(|(_, m)| self.is_alive(m, now) && !m.draining)
            .map(|(id, m)| MemberAddr {
                id: id.clone(),
                grpc_addr: m.grpc_addr.clone(),
            })
            .collect();
        if !self.draining {
            members.push(MemberAddr {
                id: self.me.id.clone(),
                grpc_addr: self.me.grpc_addr.clone(),
            });
        }
        members.sort();
        members
    }

    /// If this node is the coordinator and the live membership differs from the map's, places
    /// and adopts the next map.
    pub(crate) fn place_if_coordinator(&mut self, now: Instant) -> Option<Arc<ShardMap>> {
        if !self.admitted || *self.coordinator(now) != self.me.id {
            return None;
        }
        let members = self.placement(now);
        if members == self.map.members() {
            return None;
        }
        let epoch = self.max_epoch.max(self.map.epoch()).saturating_add(1);
        let map = ShardMap::place(
            epoch,
            self.me.id.clone(),
            self.me.shards,
            self.me.vnodes,
            &members,
        );
        self.max_epoch = epoch;
        self.map_digest = digest(&map);
        self.map = Arc::new(map);
        Some(self.map.clone())
    }

    /// Members that went down since the last call (each reported once per outage).
    pub(crate) fn newly_down(&mut self, now: Instant) -> Vec<NodeId> {
        let timeout = self.failure_timeout;
        self.members
            .iter_mut()
            .filter(|(_, m)| {
                !m.down_noted && now.saturating_duration_since(m.last_heard) >= timeout
            })
            .map(|(id, m)| {
                m.down_noted = true;
                id.clone()
            })
            .collect()
    }

    /// Forgets members down (and gossip heard) longer than `FORGET_AFTER`.
    pub(crate) fn reap(&mut self, now: Instant) {
        self.members
            .retain(|_, m| now.saturating_duration_since(m.last_heard) < FORGET_AFTER);
        self.gossip
            .retain(|_, (_, heard)| now.saturating_duration_since(*heard) < FORGET_AFTER);
        self.left
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < TOMBSTONE_FOR);
    }

    /// This node's heartbeat for `peer` (None: a peer that has not sent one yet).
    pub(crate) fn heartbeat_for(&self, peer: Option<&Member>, now: Instant) -> Vec<u8> {
        let behind = peer.is_none_or(|m| {
            m.map_epoch < self.map.epoch()
                || (m.map_epoch == self.map.epoch() && m.map_digest != self.map_digest)
        });
        let known = self
            .members
            .iter()
            .filter(|(_, m)| self.is_alive(m, now))
            .map(|(id, m)| KnownWire {
                node: id.to_string(),
                cluster_addr: m.cluster_addr.to_string(),
            })
            .collect();
        wire::encode_frame(wire::frame_wire::Body::Heartbeat(HeartbeatWire {
            node: self.me.id.to_string(),
            incarnation: self.me.incarnation,
            grpc_addr: self.me.grpc_addr.clone(),
            cluster_addr: self.me.cluster_addr.to_string(),
            draining: self.draining,
            shards: self.me.shards,
            peer_protocol: self.me.peer_protocol,
            map_epoch: self.map.epoch(),
            map_digest: self.map_digest,
            known,
            map: behind.then(|| wire::map_to_wire(&self.map)),
        }))
    }

    /// Cluster addresses worth dialling: members (down ones too, until forgotten) and nodes
    /// heard of through gossip.
    pub(crate) fn dial_targets(&self) -> Vec<(NodeId, SocketAddr)> {
        self.members
            .iter()
            .map(|(id, m)| (id.clone(), m.cluster_addr))
            .chain(
                self.gossip
                    .iter()
                    .map(|(id, (addr, _))| (id.clone(), *addr)),
            )
            .collect()
    }
}

/// A digest of a map's content, to tell two maps of one epoch apart in heartbeats without
/// sending them. Deterministic across processes (fixed-key SipHash over the prost encoding).
fn digest(map: &ShardMap) -> u64 {
    DefaultHashBuilder.hash_one(wire::map_to_wire(map).encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn me(name: &str) -> SelfInfo {
        SelfInfo {
            id: id(name),
            incarnation: 1,
            grpc_addr: format!("{name}:8013"),
            cluster_addr: "127.0.0.1:7000".parse().unwrap(),
            shards: 32,
            peer_protocol: 2,
            vnodes: 16,
        }
    }

    fn hb(from: &str, incarnation: u64) -> Heartbeat {
        Heartbeat {
            node: id(from),
            incarnation,
            grpc_addr: format!("{from}:8013"),
            cluster_addr: "127.0.0.1:7001".parse().unwrap(),
            draining: false,
            shards: 32,
            peer_protocol: 2,
            map_epoch: 0,
            map_digest: 0,
            known: vec![],
            map: None,
        }
    }

    fn ids(map: &ShardMap) -> Vec<&str> {
        map.members().iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn smallest_live_id_coordinates_and_places_the_next_epoch() {
        let t0 = Instant::now();
        let mut a = View::new(me("a"), TIMEOUT);
        let mut b = View::new(me("b"), TIMEOUT);
        assert_eq!(
            a.on_heartbeat(hb("b", 1), t0),
            HeartbeatOutcome::Accepted {
                joined: true,
                adopted: false
            }
        );
        assert_eq!(
            b.on_heartbeat(hb("a", 1), t0),
            HeartbeatOutcome::Accepted {
                joined: true,
                adopted: false
            }
        );
        assert_eq!(b.place_if_coordinator(t0), None, "b is not the coordinator");
        let map = a.place_if_coordinator(t0).expect("a places");
        assert_eq!((map.epoch(), ids(&map)), (1, vec!["a", "b"]));
        assert_eq!(a.place_if_coordinator(t0), None, "nothing changed");
        assert!(b.adopt((*map).clone()));
        assert!(
            !b.adopt((*map).clone()),
            "the same map is not adopted twice"
        );
    }

    #[test]
    fn a_node_with_seeds_owns_nothing_and_places_nothing_until_a_peer_accepts_it() {
        let t0 = Instant::now();
        let mut m = View::new(me("a"), TIMEOUT).must_join();
        assert_eq!(m.map().epoch(), 0);
        assert!(m.map().members().is_empty());
        assert_eq!((0..32).filter(|&s| m.map().owner(s).is_some()).count(), 0);
        // Alone (nobody accepts it: a wrong cookie, say), it never places a map of itself, not
        // even after draining and undraining, which change its placement.
        assert_eq!(m.place_if_coordinator(t0), None);
        m.set_draining();
        assert_eq!(m.place_if_coordinator(t0), None);
        m.clear_draining();
        assert_eq!(m.place_if_coordinator(t0 + TIMEOUT * 5), None);
        // A peer's heartbeat admits it; as the smallest id it now places the two of them.
        m.on_heartbeat(hb("b", 1), t0);
        let map = m.place_if_coordinator(t0).expect("placed once admitted");
        assert_eq!((map.epoch(), ids(&map)), (1, vec!["a", "b"]));

        // A node without seeds bootstraps: it owns every shard at epoch 0 from the start.
        let alone = View::new(me("a"), TIMEOUT);
        assert_eq!(
            (0..32).filter(|&s| alone.map().owner(s).is_some()).count(),
            32
        );
    }

    #[test]
    fn a_silent_member_goes_down_and_the_coordinator_replaces_it() {
        let t0 = Instant::now();
        let mut a = View::new(me("a"), TIMEOUT);
        a.on_heartbeat(hb("b", 1), t0);
        a.on_heartbeat(hb("c", 1), t0);
        assert_eq!(ids(&a.place_if_coordinator(t0).unwrap()), ["a", "b", "c"]);
        let later = t0 + Duration::from_millis(1500);
        a.on_heartbeat(hb("b", 1), later);
        assert_eq!(a.newly_down(later), [id("c")]);
        assert!(a.newly_down(later).is_empty(), "reported once");
        let map = a.place_if_coordinator(later).unwrap();
        assert_eq!((map.epoch(), ids(&map)), (2, vec!["a", "b"]));
    }

    #[test]
    fn when_the_coordinator_dies_the_next_smallest_takes_over_above_every_epoch_seen() {
        let t0 = Instant::now();
        let mut b = View::new(me("b"), TIMEOUT);
        let mut from_a = hb("a", 1);
        from_a.map_epoch = 7;
        b.on_heartbeat(from_a, t0);
        b.on_heartbeat(hb("c", 1), t0);
        assert_eq!(b.coordinator(t0), &id("a"));
        assert_eq!(b.place_if_coordinator(t0), None);
        let later = t0 + Duration::from_millis(1100);
        b.on_heartbeat(hb("c", 1), later);
        assert_eq!(b.coordinator(later), &id("b"));
        let map = b.place_if_coordinator(later).unwrap();
        assert_eq!((map.epoch(), ids(&map)), (8, vec!["b", "c"]));
    }

    #[test]
    fn restarts_leaves_and_stale_heartbeats() {
        let t0 = Instant::now();
        let mut a = View::new(me("a"), TIMEOUT);
        a.on_heartbeat(hb("b", 5), t0);
        assert_eq!(a.on_heartbeat(hb("b", 4), t0), HeartbeatOutcome::Stale);
        assert_eq!(
            a.on_heartbeat(hb("b", 5), t0),
            HeartbeatOutcome::Accepted {
                joined: false,
                adopted: false
            }
        );
        assert_eq!(
            a.on_heartbeat(hb("b", 6), t0),
            HeartbeatOutcome::Accepted {
                joined: true,
                adopted: false
            }
        );
        assert!(a.on_leave(&id("b"), 6, t0));
        assert!(a.members().is_empty());
        assert_eq!(
            a.on_heartbeat(hb("b", 6), t0),
            HeartbeatOutcome::Stale,
            "a late heartbeat of a leaver"
        );
        assert_eq!(
            a.on_heartbeat(hb("b", 7), t0),
            HeartbeatOutcome::Accepted {
                joined: true,
                adopted: false
            }
        );
    }

    #[test]
    fn a_restart_with_a_clock_that_stepped_back_still_gets_in() {
        let t0 = Instant::now();
        let joined = HeartbeatOutcome::Accepted {
            joined: true,
            adopted: false,
        };
        let mut a = View::new(me("a"), TIMEOUT);
        a.on_heartbeat(hb("b", 100), t0);
        // The old run is alive: a smaller incarnation is a stale message.
        assert_eq!(a.on_heartbeat(hb("b", 50), t0), HeartbeatOutcome::Stale);
        // Once it is down, the smaller incarnation is a new run.
        let later = t0 + TIMEOUT;
        assert_eq!(a.on_heartbeat(hb("b", 50), later), joined);
        assert_eq!(a.members()[&id("b")].incarnation, 50);
        // After a clean leave, shut out only for a while.
        assert!(a.on_leave(&id("b"), 50, later));
        assert_eq!(a.on_heartbeat(hb("b", 40), later), HeartbeatOutcome::Stale);
        let after_tombstone = later + TOMBSTONE_FOR;
        a.reap(after_tombstone);
        assert_eq!(a.on_heartbeat(hb("b", 40), after_tombstone), joined);
    }

    #[test]
    fn other_shard_counts_are_refused() {
        let mut a = View::new(me("a"), TIMEOUT);
        let mut other = hb("b", 1);
        other.shards = 64;
        assert_eq!(
            a.on_heartbeat(other, Instant::now()),
            HeartbeatOutcome::Refused(Mismatch::Shards { theirs: 64 })
        );
        assert!(a.members().is_empty());
        assert!(!a.adopt(ShardMap::place(9, id("b"), 64, 4, &[])));
    }

    #[test]
    fn other_peer_protocol_versions_are_refused() {
        let mut a = View::new(me("a"), TIMEOUT);
        let mut other = hb("b", 1);
        other.peer_protocol = 1;
        assert_eq!(
            a.on_heartbeat(other, Instant::now()),
            HeartbeatOutcome::Refused(Mismatch::PeerProtocol { theirs: 1 })
        );
        assert!(a.members().is_empty());
    }

    #[test]
    fn draining_leaves_the_placement_but_not_the_membership() {
        let t0 = Instant::now();
        let mut a = View::new(me("a"), TIMEOUT);
        a.on_heartbeat(hb("b", 1), t0);
        a.place_if_coordinator(t0);
        let mut draining = hb("b", 1);
        draining.draining = true;
        a.on_heartbeat(draining, t0);
        assert_eq!(ids(&a.place_if_coordinator(t0).unwrap()), ["a"]);
        assert!(a.members().contains_key(&id("b")));
        a.set_draining();
        let empty = a.place_if_coordinator(t0).unwrap();
        assert!(empty.members().is_empty() && empty.owners().next().is_none());
    }

    #[test]
    fn partitioned_coordinators_converge_on_one_map() {
        // {a} and {b, c} cannot hear each other; each side places epoch 1.
        let t0 = Instant::now();
        let mut a = View::new(me("a"), TIMEOUT);
        let mut b = View::new(me("b"), TIMEOUT);
        a.on_heartbeat(hb("z", 1), t0);
        b.on_heartbeat(hb("c", 1), t0);
        let map_a = a.place_if_coordinator(t0).unwrap();
        let map_b = b.place_if_coordinator(t0).unwrap();
        assert_eq!((map_a.epoch(), map_b.epoch()), (1, 1));
        // Healed: b adopts a's map (same epoch, smaller coordinator), a refuses b's.
        assert!(b.adopt((*map_a).clone()));
        assert!(!a.adopt((*map_b).clone()));
        // a hears b and c now and places the whole membership at epoch 2.
        let mut from_b = hb("b", 1);
        from_b.map_epoch = 1;
        a.on_heartbeat(from_b, t0);
        a.on_heartbeat(hb("c", 1), t0);
        let merged = a.place_if_coordinator(t0).unwrap();
        assert_eq!(
            (merged.epoch(), ids(&merged)),
            (2, vec!["a", "b", "c", "z"])
        );
    }

    #[test]
    fn heartbeats_carry_the_map_only_to_peers_that_need_it() {
        let t0 = Instant::now();
        let mut a = View::new(me("a"), TIMEOUT);
        a.on_heartbeat(hb("b", 1), t0);
        a.place_if_coordinator(t0);
        let decode = |bytes: Vec<u8>| match wire::decode_frame(&bytes) {
            Ok(wire::Inbound::Heartbeat(hb)) => hb,
            other => panic!("not a heartbeat: {other:?}"),
        };
        assert!(
            decode(a.heartbeat_for(None, t0)).map.is_some(),
            "unknown peer"
        );
        let behind = a.members()[&id("b")].clone();
        assert!(
            decode(a.heartbeat_for(Some(&behind), t0)).map.is_some(),
            "peer at epoch 0"
        );
        let in_sync = Member {
            map_epoch: 1,
            map_digest: a.map_digest,
            ..behind.clone()
        };
        let sent = decode(a.heartbeat_for(Some(&in_sync), t0));
        assert!(sent.map.is_none());
        assert_eq!(
            sent.known,
            vec![(id("b"), "127.0.0.1:7001".parse().unwrap())]
        );
        let diverged = Member {
            map_epoch: 1,
            map_digest: a.map_digest ^ 1,
            ..behind
        };
        assert!(
            decode(a.heartbeat_for(Some(&diverged), t0)).map.is_some(),
            "same epoch, other map"
        );
    }

    #[test]
    fn gossip_yields_dial_targets_and_old_entries_are_forgotten() {
        let t0 = Instant::now();
        let mut a = View::new(me("a"), TIMEOUT);
        let mut from_b = hb("b", 1);
        from_b.known = vec![
            (id("c"), "127.0.0.1:7002".parse().unwrap()),
            (id("a"), "127.0.0.1:7000".parse().unwrap()),
        ];
        a.on_heartbeat(from_b, t0);
        let targets: Vec<String> = a
            .dial_targets()
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect();
        assert_eq!(targets, ["b=127.0.0.1:7001", "c=127.0.0.1:7002"]);
        a.reap(t0 + FORGET_AFTER);
        assert!(a.dial_targets().is_empty() && a.members().is_empty());
    }
}
