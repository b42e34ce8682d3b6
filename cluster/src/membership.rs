//! The membership actor: one per node, in the process group `member/<id>/<incarnation>` of
//! scope [`SCOPE`], so every connected peer gets a ractor_cluster `RemoteActor` for it.
//!
//! It drives the [`View`]: every heartbeat interval it refreshes the peers from the process
//! groups, notes members that went down, places a new map if it is the coordinator, and casts a
//! heartbeat to every peer. Frames and requests from peers arrive as bytes and are decoded here
//! (`wire`); anything undecodable is logged and dropped. Forwarded requests run on their own
//! tasks, bounded by a semaphore, so a slow handler never delays heartbeats.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent, pg};
use tokio::sync::{Semaphore, mpsc};

use crate::connector::ConnectorCmd;
use crate::forward::ForwardHandler;
use crate::node_id::NodeId;
use crate::peer_msg::MemberMsg;
use crate::shared::{Shared, read, write};
use crate::view::{HeartbeatOutcome, Mismatch, View};
use crate::wire::{self, Inbound, Request, Response};

/// The ractor process-group scope of Bunting's membership actors.
pub(crate) const SCOPE: &str = "bunting.cluster";

/// A refused undrain's answer over the wire, which `Cluster::undrain` turns back into
/// `ClusterError::NotDraining`.
pub(crate) const NOT_DRAINING: &str = "not draining";

pub(crate) fn group_name(id: &NodeId, incarnation: u64) -> String {
    format!("member/{id}/{incarnation}")
}

fn parse_group(name: &str) -> Option<(NodeId, u64)> {
    let mut parts = name.strip_prefix("member/")?.split('/');
    let id = parts.next()?.parse().ok()?;
    let incarnation = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((id, incarnation))
}

#[derive(Debug)]
pub(crate) struct Membership;

pub(crate) struct MembershipArgs {
    pub view: View,
    pub shared: Arc<Shared>,
    pub handler: Arc<dyn ForwardHandler>,
    pub connector: mpsc::UnboundedSender<ConnectorCmd>,
    pub heartbeat_interval: Duration,
    pub max_inflight: usize,
}

pub(crate) struct MembershipState {
    view: View,
    shared: Arc<Shared>,
    handler: Arc<dyn ForwardHandler>,
    connector: mpsc::UnboundedSender<ConnectorCmd>,
    requests: Arc<Semaphore>,
    ticker: Option<JoinHandle<()>>,
    /// Peers whose shard-count mismatch was already logged.
    refused: BTreeSet<NodeId>,
}

impl std::fmt::Debug for MembershipState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipState")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl Actor for Membership {
    type Msg = MemberMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MemberMsg>,
        args: MembershipArgs,
    ) -> Result<MembershipState, ActorProcessingErr> {
        let me = args.view.me();
        pg::join_scoped(
            SCOPE.to_string(),
            group_name(&me.id, me.incarnation),
            vec![myself.get_cell()],
        );
        pg::monitor_scope(SCOPE.to_string(), myself.get_cell());
        let ticker = myself.send_interval(args.heartbeat_interval, || MemberMsg::Tick);
        args.shared.publish_view(&args.view);
        Ok(MembershipState {
            view: args.view,
            shared: args.shared,
            handler: args.handler,
            connector: args.connector,
            requests: Arc::new(Semaphore::new(args.max_inflight)),
            ticker: Some(ticker),
            refused: BTreeSet::new(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<MemberMsg>,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(ticker) = state.ticker.take() {
            ticker.abort();
        }
        pg::demonitor_scope(SCOPE.to_string(), myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<MemberMsg>,
        message: MemberMsg,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match message {
            MemberMsg::Tick => state.tick(now),
            MemberMsg::Frame(bytes) => state.on_frame(&bytes, now),
            MemberMsg::Request(bytes, reply) => state.on_request(&bytes, reply, now),
            MemberMsg::DrainSelf(reply) => {
                state.drain(now, "a local request");
                let _ = reply.send(());
            }
            MemberMsg::UndrainSelf(reply) => {
                let _ = reply.send(state.undrain(now, "a local request"));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<MemberMsg>,
        event: SupervisionEvent,
        state: &mut MembershipState,
    ) -> Result<(), ActorProcessingErr> {
        // A peer's actor joined (a session came up): greet it now rather than at the next tick,
        // so joining takes one round trip instead of up to one heartbeat interval.
        if let SupervisionEvent::ProcessGroupChanged(_) = event {
            let now = Instant::now();
            for id in state.refresh_peers() {
                state.heartbeat_to(&id, now);
            }
        }
        Ok(())
    }
}

impl MembershipState {
    fn tick(&mut self, now: Instant) {
        self.refresh_peers();
        for id in self.view.newly_down(now) {
            tracing::warn!(
                member = %id,
                "cluster member is down: no heartbeat for {:?}",
                self.shared.failure_timeout
            );
            // Its sessions may be half-open (a hung or partitioned process): close them so a
            // restarted incarnation is not refused as a duplicate connection.
            let _ = self.connector.send(ConnectorCmd::DropSessions(id));
        }
        self.view.reap(now);
        self.after_change(now);
        for id in read(&self.shared.peers).keys().cloned().collect::<Vec<_>>() {
            self.heartbeat_to(&id, now);
        }
        let _ = self
            .connector
            .send(ConnectorCmd::Targets(self.view.dial_targets()));
    }

    /// Re-reads the peers' actors from the process groups; returns peers not seen before.
    fn refresh_peers(&mut self) -> Vec<NodeId> {
        let scope = SCOPE.to_string();
        let mut found: BTreeMap<NodeId, (u64, ActorRef<MemberMsg>)> = BTreeMap::new();
        for group in pg::which_scoped_groups(&scope) {
            let Some((id, incarnation)) = parse_group(&group) else {
                continue;
            };
            if id == self.view.me().id {
                continue;
            }
            let Some(cell) = pg::get_scoped_members(&scope, &group)
                .into_iter()
                .find(|cell| !cell.get_id().is_local())
            else {
                continue;
            };
            // A restarted peer may briefly appear under both incarnations; the newer wins.
            if found.get(&id).is_none_or(|(seen, _)| incarnation > *seen) {
                found.insert(id, (incarnation, ActorRef::from(cell)));
            }
        }
        let mut peers = write(&self.shared.peers);
        let new = found
            .keys()
            .filter(|id| !peers.contains_key(*id))
            .cloned()
            .collect();
        *peers = found
            .into_iter()
            .map(|(id, (_, actor))| (id, actor))
            .collect();
        new
    }

    fn heartbeat_to(&self, id: &NodeId, now: Instant) {
        let Some(actor) = read(&self.shared.peers).get(id).cloned() else {
            return;
        };
        let frame = self.view.heartbeat_for(self.view.members().get(id), now);
        let _ = actor.cast(MemberMsg::Frame(frame));
    }

    /// Places a new map if this node coordinates and membership changed, and publishes.
    fn after_change(&mut self, now: Instant) {
        if let Some(map) = self.view.place_if_coordinator(now) {
            let members: Vec<&str> = map.members().iter().map(|m| m.id.as_str()).collect();
            tracing::info!(epoch = map.epoch(), ?members, "placed a new shard map");
            let frame = wire::encode_frame(wire::frame_wire::Body::Map(wire::map_to_wire(&map)));
            for actor in read(&self.shared.peers).values() {
                let _ = actor.cast(MemberMsg::Frame(frame.clone()));
            }
        }
        self.shared.publish_view(&self.view);
    }

    fn on_frame(&mut self, bytes: &[u8], now: Instant) {
        let inbound = match wire::decode_frame(bytes) {
            Ok(inbound) => inbound,
            Err(error) => {
                tracing::warn!(len = bytes.len(), %error, "dropping an undecodable cluster frame");
                return;
            }
        };
        match inbound {
            Inbound::Heartbeat(hb) => {
                let from = hb.node.clone();
                let before = self.view.map().epoch();
                match self.view.on_heartbeat(*hb, now) {
                    HeartbeatOutcome::Refused(mismatch) => {
                        if self.refused.insert(from.clone()) {
                            match mismatch {
                                Mismatch::Shards { theirs } => tracing::warn!(
                                    member = %from,
                                    "refusing a peer that uses {theirs} shards; this node uses {}",
                                    self.view.me().shards
                                ),
                                Mismatch::PeerProtocol { theirs } => tracing::warn!(
                                    member = %from,
                                    "refusing a peer that speaks peer protocol version {theirs}; \
                                     this node speaks {}: upgrade the older node",
                                    self.view.me().peer_protocol
                                ),
                            }
                        }
                        return;
                    }
                    HeartbeatOutcome::Stale => return,
                    HeartbeatOutcome::Accepted { joined, adopted } => {
                        if joined {
                            tracing::info!(member = %from, "cluster member is up");
                            self.heartbeat_to(&from, now);
                        }
                        if adopted {
                            self.log_adopted(before);
                        }
                    }
                }
            }
            Inbound::Map(map) => {
                let before = self.view.map().epoch();
                if self.view.adopt(map) {
                    self.log_adopted(before);
                }
            }
            Inbound::Notice(from, notice) => {
                // No receivers is fine: nobody on this node listens for notices.
                let _ = self.shared.notices.send((from, notice));
                return;
            }
        }
        self.after_change(now);
    }

    fn log_adopted(&self, before: u64) {
        let map = self.view.map();
        tracing::info!(
            epoch = map.epoch(),
            previous = before,
            coordinator = %map.coordinator(),
            "adopted a shard map"
        );
    }

    fn drain(&mut self, now: Instant, requester: &str) {
        if !self.view.draining() {
            tracing::info!("draining at the request of {requester}");
        }
        self.view.set_draining();
        self.after_change(now);
        // Tell everyone now, so the coordinator re-places without waiting for a tick.
        for id in read(&self.shared.peers).keys().cloned().collect::<Vec<_>>() {
            self.heartbeat_to(&id, now);
        }
    }

    /// Returns to placement; false (and nothing changes) when this node was not draining.
    fn undrain(&mut self, now: Instant, requester: &str) -> bool {
        if !self.view.draining() {
            return false;
        }
        tracing::info!("returning to service at the request of {requester}");
        self.view.clear_draining();
        self.after_change(now);
        for id in read(&self.shared.peers).keys().cloned().collect::<Vec<_>>() {
            self.heartbeat_to(&id, now);
        }
        true
    }

    fn on_request(&mut self, bytes: &[u8], reply: RpcReplyPort<Vec<u8>>, now: Instant) {
        let request = match wire::decode_request(bytes, self.shared.max_payload) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(len = bytes.len(), %error, "refusing an undecodable cluster request");
                let _ = reply.send(wire::encode_response(Response::Error(format!(
                    "undecodable request: {error}"
                ))));
                return;
            }
        };
        match request {
            Request::Forward { from, payload } => self.forward(from, payload, reply),
            Request::Drain { from } => {
                self.drain(now, &format!("node {from}"));
                let _ = reply.send(wire::encode_response(Response::Ok(Vec::new())));
            }
            Request::Undrain { from } => {
                let response = if self.undrain(now, &format!("node {from}")) {
                    Response::Ok(Vec::new())
                } else {
                    Response::Error(NOT_DRAINING.to_owned())
                };
                let _ = reply.send(wire::encode_response(response));
            }
            Request::Leave { from, incarnation } => {
                if self.view.on_leave(&from, incarnation, now) {
                    tracing::info!(member = %from, "cluster member left");
                }
                self.after_change(now);
                let _ = reply.send(wire::encode_response(Response::Ok(Vec::new())));
            }
        }
    }

    fn forward(&self, from: NodeId, payload: Vec<u8>, reply: RpcReplyPort<Vec<u8>>) {
        let Ok(permit) = self.requests.clone().try_acquire_owned() else {
            let _ = reply.send(wire::encode_response(Response::Busy));
            return;
        };
        let handler = self.handler.clone();
        let max = self.shared.max_payload;
        tokio::spawn(async move {
            // The handler runs on a task of its own so that a panic in it becomes an error
            // answer instead of a dropped reply port.
            let answer = tokio::spawn(async move { handler.handle(&from, payload).await }).await;
            let response = match answer {
                Ok(answer) if answer.len() <= max => Response::Ok(answer),
                Ok(answer) => Response::Error(format!(
                    "answer of {} bytes exceeds the {max}-byte payload limit",
                    answer.len()
                )),
                Err(error) => Response::Error(format!("handler failed: {error}")),
            };
            let _ = reply.send(wire::encode_response(response));
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_round_trip_and_foreign_groups_are_ignored() {
        let id: NodeId = "node-1".parse().unwrap();
        assert_eq!(parse_group(&group_name(&id, 42)), Some((id, 42)));
        for foreign in [
            "member/a",
            "member/a/b",
            "member/a/1/2",
            "other/a/1",
            "member/a@b/1",
        ] {
            assert_eq!(parse_group(foreign), None, "{foreign}");
        }
    }
}
