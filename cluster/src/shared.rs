//! State the membership actor publishes for the `Cluster` handle to read without a round trip
//! through the actor's mailbox (status, call routing, publishing notices).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::{broadcast, watch};

use crate::node_id::NodeId;
use crate::notice::Notice;
use crate::peer_msg::MemberMsg;
use crate::shard_map::ShardMap;
use crate::status::{ClusterStatus, MemberState, MemberStatus};
use crate::view::{Member, SelfInfo, View};

/// The members as the actor last saw them.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub draining: bool,
    pub members: BTreeMap<NodeId, Member>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub me: SelfInfo,
    pub failure_timeout: Duration,
    pub max_payload: usize,
    /// Each peer's membership actor (a ractor_cluster `RemoteActor`), found through the
    /// process groups: remote actors are not in ractor's name registry.
    pub peers: RwLock<BTreeMap<NodeId, ActorRef<MemberMsg>>>,
    pub snapshot: RwLock<Arc<Snapshot>>,
    pub map: watch::Sender<Arc<ShardMap>>,
    pub notices: broadcast::Sender<(NodeId, Notice)>,
}

/// A poisoned lock only means a writer panicked mid-update of plain data; the data is still
/// the last complete value written, so reading on is safe.
pub(crate) fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a member heard from at `last_heard` is alive at `now`.
pub(crate) fn alive(last_heard: Instant, now: Instant, failure_timeout: Duration) -> bool {
    now.saturating_duration_since(last_heard) < failure_timeout
}

impl Shared {
    pub(crate) fn publish_view(&self, view: &View) {
        *write(&self.snapshot) = Arc::new(Snapshot {
            draining: view.draining(),
            members: view.members().clone(),
        });
        if !Arc::ptr_eq(&self.map.borrow(), view.map()) {
            self.map.send_replace(view.map().clone());
        }
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        read(&self.snapshot).clone()
    }

    pub(crate) fn member_state(&self, member: &Member, now: Instant) -> MemberState {
        if !alive(member.last_heard, now, self.failure_timeout) {
            MemberState::Down
        } else if member.draining {
            MemberState::Draining
        } else {
            MemberState::Up
        }
    }

    pub(crate) fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        let snapshot = self.snapshot();
        let map = self.map.borrow().clone();
        let mut members: Vec<MemberStatus> = snapshot
            .members
            .iter()
            .map(|(id, m)| MemberStatus {
                id: id.clone(),
                incarnation: m.incarnation,
                grpc_addr: m.grpc_addr.clone(),
                cluster_addr: m.cluster_addr,
                state: self.member_state(m, now),
                since_heartbeat: Some(now.saturating_duration_since(m.last_heard)),
                shards_owned: map.owned_by(id),
                is_local: false,
            })
            .collect();
        members.push(MemberStatus {
            id: self.me.id.clone(),
            incarnation: self.me.incarnation,
            grpc_addr: self.me.grpc_addr.clone(),
            cluster_addr: self.me.cluster_addr,
            state: if snapshot.draining {
                MemberState::Draining
            } else {
                MemberState::Up
            },
            since_heartbeat: None,
            shards_owned: map.owned_by(&self.me.id),
            is_local: true,
        });
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let coordinator = members
            .iter()
            .find(|m| m.state != MemberState::Down)
            .map_or_else(|| self.me.id.clone(), |m| m.id.clone());
        ClusterStatus {
            local: self.me.id.clone(),
            epoch: map.epoch(),
            coordinator,
            members,
        }
    }
}
