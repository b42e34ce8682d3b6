//! The shard map: which node owns each shard, at which epoch.
//!
//! Placement is consistent hashing (the `hashring` crate) over virtual nodes: every member puts
//! `vnodes` points on the ring and shard `s` belongs to the member owning the first point at or
//! after the hash of `s`. Adding or removing a member therefore moves only the shards whose
//! nearest point changed: about `1/n` of them, all to (or from) that member.
//!
//! Every node must compute the same placement from the same inputs, in every process and every
//! build. So nothing here depends on `std`'s `Hash` impls (whose byte stream for `str` is an
//! implementation detail): [`VNode`] and [`ShardPoint`] feed explicit big-endian bytes to
//! hashring's default hasher, SipHash-2-4 with fixed zero keys. `placement_is_pinned` fixes
//! one placement in a test so any change to that chain shows up as a failure.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use hashring::{DefaultHashBuilder, HashRing};

use crate::node_id::NodeId;

/// A member as a shard map names it: its id and the gRPC address clients use to reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberAddr {
    pub id: NodeId,
    pub grpc_addr: String,
}

/// Which member owns each of `shards` shards, as placed by `coordinator` at `epoch`.
///
/// Maps are values: a new placement is a new map with a higher epoch. Nodes adopt a map only if
/// it [supersedes](ShardMap::supersedes) the one they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    epoch: u64,
    coordinator: NodeId,
    /// Sorted by id, ids unique.
    members: Vec<MemberAddr>,
    /// Per shard, an index into `members`; `None` only when there are no members.
    owners: Vec<Option<u32>>,
}

/// A virtual node: one of a member's points on the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VNode {
    pub node: NodeId,
    pub index: u16,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Explicit bytes, not the derived impl: see the module comment. The 0xff separator cannot
        // occur in a node id, so (id, index) pairs never collide as byte strings.
        state.write(self.node.as_str().as_bytes());
        state.write(&[0xff]);
        state.write(&self.index.to_be_bytes());
    }
}

/// A shard's position on the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPoint(pub u32);

impl Hash for ShardPoint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(b"shard\xff");
        state.write(&self.0.to_be_bytes());
    }
}

/// A map that breaks [`ShardMap`]'s invariants (from a peer: see `wire`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("shard map members are not sorted and unique at {0:?}")]
    MembersNotSorted(NodeId),
    #[error("shard map has {got} owners for {expected} shards")]
    OwnerCount { got: usize, expected: u32 },
    #[error("shard {shard} names member index {index}, but the map has {members} members")]
    OwnerOutOfRange {
        shard: u32,
        index: u32,
        members: usize,
    },
}

impl ShardMap {
    /// Places `shards` shards on `members` with `vnodes` virtual nodes each. The result depends
    /// only on the arguments, not on the order of `members`; duplicate ids keep the entry with
    /// the smallest address. `vnodes` of 0 counts as 1.
    pub fn place(
        epoch: u64,
        coordinator: NodeId,
        shards: u32,
        vnodes: u16,
        members: &[MemberAddr],
    ) -> ShardMap {
        let mut members = members.to_vec();
        members.sort();
        members.dedup_by(|later, earlier| later.id == earlier.id);

        let mut ring: HashRing<VNode, DefaultHashBuilder> =
            HashRing::with_hasher(DefaultHashBuilder);
        ring.batch_add(
            members
                .iter()
                .flat_map(|m| {
                    (0..vnodes.max(1)).map(|index| VNode {
                        node: m.id.clone(),
                        index,
                    })
                })
                .collect(),
        );
        let owners = (0..shards)
            .map(|shard| {
                let vnode = ring.get(&ShardPoint(shard))?;
                let index = members.binary_search_by(|m| m.id.cmp(&vnode.node)).ok()?;
                u32::try_from(index).ok()
            })
            .collect();
        ShardMap {
            epoch,
            coordinator,
            members,
            owners,
        }
    }

    /// A map received from a peer, checked against the invariants `place` guarantees.
    pub(crate) fn from_parts(
        epoch: u64,
        coordinator: NodeId,
        shards: u32,
        members: Vec<MemberAddr>,
        owners: Vec<u32>,
    ) -> Result<ShardMap, MapError> {
        if let Some(pair) = members
            .windows(2)
            .find(|w| matches!(w, [a, b] if a.id >= b.id))
        {
            let id = pair
                .get(1)
                .map_or_else(|| coordinator.clone(), |m| m.id.clone());
            return Err(MapError::MembersNotSorted(id));
        }
        if u32::try_from(owners.len()).ok() != Some(shards) {
            return Err(MapError::OwnerCount {
                got: owners.len(),
                expected: shards,
            });
        }
        let owners = if members.is_empty() {
            // A map without members (every node draining) owns nothing; the wire carries no
            // owners for it, or zeros, which mean the same.
            vec![None; owners.len()]
        } else {
            owners
                .into_iter()
                .zip(0u32..)
                .map(|(index, shard)| {
                    if usize::try_from(index).is_ok_and(|i| i < members.len()) {
                        Ok(Some(index))
                    } else {
                        Err(MapError::OwnerOutOfRange {
                            shard,
                            index,
                            members: members.len(),
                        })
                    }
                })
                .collect::<Result<_, _>>()?
        };
        Ok(ShardMap {
            epoch,
            coordinator,
            members,
            owners,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The node that placed this map.
    pub fn coordinator(&self) -> &NodeId {
        &self.coordinator
    }

    pub fn shards(&self) -> u32 {
        // `owners` has one entry per shard and was built from a u32 count.
        u32::try_from(self.owners.len()).unwrap_or(u32::MAX)
    }

    /// The owner of `shard`; `None` if the shard is out of range or the map has no members.
    pub fn owner(&self, shard: u32) -> Option<&MemberAddr> {
        let index = (*self.owners.get(usize::try_from(shard).ok()?)?)?;
        self.members.get(usize::try_from(index).ok()?)
    }

    /// Every owned shard with its owner, in shard order.
    pub fn owners(&self) -> impl Iterator<Item = (u32, &NodeId)> {
        self.owners.iter().zip(0u32..).filter_map(|(index, shard)| {
            let member = self.members.get(usize::try_from((*index)?).ok()?)?;
            Some((shard, &member.id))
        })
    }

    /// The members shards were placed on, sorted by id (draining and down nodes are not among
    /// them).
    pub fn members(&self) -> &[MemberAddr] {
        &self.members
    }

    pub fn member(&self, id: &NodeId) -> Option<&MemberAddr> {
        let index = self.members.binary_search_by(|m| m.id.cmp(id)).ok()?;
        self.members.get(index)
    }

    /// How many shards `id` owns.
    pub fn owned_by(&self, id: &NodeId) -> u32 {
        let Ok(index) = self.members.binary_search_by(|m| m.id.cmp(id)) else {
            return 0;
        };
        let count = self
            .owners
            .iter()
            .filter(|owner| owner.and_then(|o| usize::try_from(o).ok()) == Some(index))
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    pub(crate) fn owner_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.owners.iter().map(|o| o.unwrap_or(0))
    }

    /// Whether a node holding `other` should replace it with `self`.
    ///
    /// The higher epoch wins. Two maps with one epoch come from two coordinators that could not
    /// hear each other (a partition) or from a coordinator that restarted; the map placed by the
    /// smaller coordinator id wins, because that node is the coordinator once everyone hears
    /// everyone, and it then places the next epoch from the whole membership anyway. Equal
    /// epoch and coordinator with different content (a restarted coordinator) falls back to
    /// comparing the content, so every node still picks the same map. A map never supersedes
    /// an equal one.
    pub fn supersedes(&self, other: &ShardMap) -> bool {
        self.order(other) == Ordering::Greater
    }

    fn order(&self, other: &ShardMap) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| other.coordinator.cmp(&self.coordinator))
            .then_with(|| self.members.cmp(&other.members))
            .then_with(|| self.owners.cmp(&other.owners))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn id(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn members(ids: &[&str]) -> Vec<MemberAddr> {
        ids.iter()
            .map(|s| MemberAddr {
                id: id(s),
                grpc_addr: format!("{s}.example:8013"),
            })
            .collect()
    }

    fn owner_ids(map: &ShardMap) -> Vec<String> {
        (0..map.shards())
            .map(|s| map.owner(s).map_or("-".into(), |m| m.id.to_string()))
            .collect()
    }

    fn place(ids: &[&str]) -> ShardMap {
        ShardMap::place(1, id("a"), 256, 128, &members(ids))
    }

    #[test]
    fn placement_ignores_member_order() {
        let reference = place(&["a", "b", "c", "d"]);
        for order in [
            ["d", "c", "b", "a"],
            ["b", "d", "a", "c"],
            ["c", "a", "d", "b"],
        ] {
            assert_eq!(place(&order), reference, "order {order:?}");
        }
        // Duplicates collapse to one member.
        assert_eq!(place(&["a", "b", "b", "c", "d", "a"]), reference);
    }

    #[test]
    fn placement_is_pinned() {
        // Computed once; every node of every build must agree with it. A failure here means the
        // hash chain (hashring's hasher, VNode/ShardPoint bytes) changed and mixed versions
        // would disagree on owners. The string was also reproduced by a separate SipHash-2-4
        // implementation (zero keys) over the same bytes, so it is a function of the bytes
        // alone, not of this build.
        let map = ShardMap::place(
            1,
            id("a"),
            24,
            128,
            &members(&["node-a", "node-b", "node-c"]),
        );
        let owners: String = owner_ids(&map)
            .iter()
            .map(|o| o.trim_start_matches("node-"))
            .collect();
        assert_eq!(owners, PINNED);
    }
    const PINNED: &str = "abcbacbbbbcbbbabccacbbcb";

    #[test]
    fn adding_a_fourth_node_moves_about_a_quarter_and_only_to_it() {
        let before = place(&["a", "b", "c"]);
        let after = place(&["a", "b", "c", "d"]);
        let moved: Vec<u32> = (0..256)
            .filter(|&s| before.owner(s) != after.owner(s))
            .collect();
        let fraction = moved.len() as f64 / 256.0;
        println!(
            "3 -> 4 nodes: {} of 256 shards moved ({fraction:.3})",
            moved.len()
        );
        assert!(
            (0.15..0.35).contains(&fraction),
            "moved fraction {fraction}"
        );
        for s in moved {
            assert_eq!(
                after.owner(s).map(|m| m.id.as_str()),
                Some("d"),
                "shard {s}"
            );
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_shards() {
        let before = place(&["a", "b", "c", "d"]);
        let after = place(&["a", "b", "d"]);
        for s in 0..256 {
            let was = before.owner(s).map(|m| m.id.as_str());
            if was != Some("c") {
                assert_eq!(
                    after.owner(s).map(|m| m.id.as_str()),
                    was,
                    "shard {s} moved"
                );
            } else {
                assert_ne!(after.owner(s).map(|m| m.id.as_str()), Some("c"));
            }
        }
    }

    #[test]
    fn three_nodes_share_the_shards_reasonably() {
        let map = ShardMap::place(
            1,
            id("node-1"),
            256,
            128,
            &members(&["node-1", "node-2", "node-3"]),
        );
        let mut counts = BTreeMap::new();
        for (_, owner) in map.owners() {
            *counts.entry(owner.to_string()).or_insert(0u32) += 1;
        }
        let max = counts.values().copied().max().unwrap();
        let min = counts.values().copied().min().unwrap();
        println!(
            "256 shards on 3 nodes x 128 vnodes: {counts:?}, max/min {:.2}",
            f64::from(max) / f64::from(min)
        );
        assert_eq!(counts.values().sum::<u32>(), 256);
        assert_eq!(counts.len(), 3);
        // A fair share is 85.3; virtual nodes keep every node within half of it either way.
        assert!(min >= 43 && max <= 128, "{counts:?}");
        for m in map.members() {
            assert_eq!(map.owned_by(&m.id), counts[m.id.as_str()]);
        }
    }

    #[test]
    fn no_members_no_owners() {
        let map = ShardMap::place(3, id("a"), 8, 128, &[]);
        assert_eq!(map.owners().count(), 0);
        assert_eq!(map.owner(0), None);
        assert_eq!(map.shards(), 8);
        assert_eq!(map.owner(8), None);
    }

    #[test]
    fn supersedes_by_epoch_then_smaller_coordinator_then_content() {
        let m = members(&["a", "b", "c"]);
        let e1 = ShardMap::place(1, id("a"), 16, 8, &m);
        let e2 = ShardMap::place(2, id("b"), 16, 8, &m[..2]);
        assert!(e2.supersedes(&e1) && !e1.supersedes(&e2));
        assert!(!e1.supersedes(&e1.clone()), "never supersedes an equal map");

        let by_a = ShardMap::place(5, id("a"), 16, 8, &m[..1]);
        let by_b = ShardMap::place(5, id("b"), 16, 8, &m[1..]);
        assert!(by_a.supersedes(&by_b) && !by_b.supersedes(&by_a));

        let x = ShardMap::place(5, id("a"), 16, 8, &m[..2]);
        let y = ShardMap::place(5, id("a"), 16, 8, &m);
        assert_ne!(
            x.supersedes(&y),
            y.supersedes(&x),
            "exactly one of two different maps wins"
        );
    }

    #[test]
    fn from_parts_checks_what_a_peer_sends() {
        let m = members(&["a", "b"]);
        let ok = ShardMap::from_parts(1, id("a"), 3, m.clone(), vec![0, 1, 1]).unwrap();
        assert_eq!(owner_ids(&ok), ["a", "b", "b"]);
        assert_eq!(
            ShardMap::from_parts(1, id("a"), 4, m.clone(), vec![0, 1, 1]),
            Err(MapError::OwnerCount {
                got: 3,
                expected: 4
            })
        );
        assert_eq!(
            ShardMap::from_parts(1, id("a"), 3, m.clone(), vec![0, 2, 1]),
            Err(MapError::OwnerOutOfRange {
                shard: 1,
                index: 2,
                members: 2
            })
        );
        let unsorted = vec![m[1].clone(), m[0].clone()];
        assert_eq!(
            ShardMap::from_parts(1, id("a"), 1, unsorted, vec![0]),
            Err(MapError::MembersNotSorted(id("a")))
        );
        let round_trip = place(&["a", "b", "c"]);
        let again = ShardMap::from_parts(
            round_trip.epoch(),
            round_trip.coordinator().clone(),
            round_trip.shards(),
            round_trip.members().to_vec(),
            round_trip.owner_indices().collect(),
        );
        assert_eq!(again, Ok(round_trip));
    }
}
