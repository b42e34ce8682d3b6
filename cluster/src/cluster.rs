//! The `Cluster` handle: starting a member, and everything the server asks of the cluster.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{IncomingEncryptionMode, NodeServer, NodeServerMessage};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::connector::{self, ConnectorConfig};
use crate::error::{CallError, ClusterError};
use crate::forward::ForwardHandler;
use crate::listener;
use crate::membership::{Membership, MembershipArgs, NOT_DRAINING};
use crate::node_id::NodeId;
use crate::notice::Notice;
use crate::peer_msg::MemberMsg;
use crate::shard_map::ShardMap;
use crate::shared::{Shared, alive, read};
use crate::status::ClusterStatus;
use crate::view::{SelfInfo, View};
use crate::wire::{self, ENVELOPE_SLACK, MAX_FRAME_BYTES, Request, Response};

/// Notices buffered per subscriber; a subscriber that falls further behind skips (and is told
/// so by `broadcast`'s `Lagged`).
const NOTICE_BUFFER: usize = 1024;
/// Room for ractor_cluster's own envelope around Bunting's bytes in one frame.
const RACTOR_ENVELOPE: usize = 64 * 1024;
/// How long `shutdown` waits for each peer to acknowledge the leave.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long `shutdown` waits for the actors to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The node id of the cluster running in this process. ractor's process groups and actor
/// registry are process-wide, so two members in one process would see each other's actors as
/// local and mix up their peers; `start` refuses a second one instead.
static RUNNING: Mutex<Option<NodeId>> = Mutex::new(None);

#[derive(Debug)]
struct ProcessClaim;

impl ProcessClaim {
    fn take(id: &NodeId) -> Result<ProcessClaim, ClusterError> {
        let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = running.as_ref() {
            return Err(ClusterError::AlreadyRunning(existing.clone()));
        }
        *running = Some(id.clone());
        Ok(ProcessClaim)
    }
}

impl Drop for ProcessClaim {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// A running cluster member. Cheap to clone; every clone is the same member.
///
/// `shutdown` leaves cleanly (peers drop the node at once). Dropping the last clone without it
/// stops the node abruptly: peers notice only when its heartbeats stop.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    cluster_addr: SocketAddr,
    handler: Arc<dyn ForwardHandler>,
    membership: ActorRef<MemberMsg>,
    server: ActorRef<NodeServerMessage>,
    tasks: Vec<JoinHandle<()>>,
    shut_down: AtomicBool,
    claim: Mutex<Option<ProcessClaim>>,
}

impl Inner {
    /// Stops everything at once, without telling peers.
    fn halt(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        self.membership.stop(Some("halt".to_string()));
        for task in &self.tasks {
            task.abort();
        }
        self.server.stop(Some("halt".to_string()));
        self.claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.halt();
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("local", &self.inner.shared.me.id)
            .field("cluster_addr", &self.inner.cluster_addr)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts this node's member: binds `config.listen`, starts ractor_cluster's NodeServer,
    /// the membership actor and the connector, and begins dialling the seeds. Returns once the
    /// port is bound; joining the others happens in the background (watch `shard_map`).
    ///
    /// Must run inside a tokio runtime. One member per process (`ClusterError::AlreadyRunning`).
    pub async fn start(
        config: ClusterConfig,
        handler: Arc<dyn ForwardHandler>,
    ) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let claim = ProcessClaim::take(&config.node_id)?;
        let (tcp, bound) = listener::bind(config.listen).await?;
        let cluster_addr = config.advertise_cluster.unwrap_or(bound);
        let me = SelfInfo {
            id: config.node_id.clone(),
            incarnation: incarnation(),
            grpc_addr: config.advertise_grpc.clone(),
            cluster_addr,
            shards: config.shards,
            peer_protocol: config.peer_protocol,
            vnodes: config.vnodes_per_node,
        };
        let view = match config.seeds.is_empty() {
            true => View::new(me.clone(), config.failure_timeout),
            false => View::new(me.clone(), config.failure_timeout).must_join(),
        };
        let (map, _) = watch::channel(view.map().clone());
        let (notices, _) = broadcast::channel(NOTICE_BUFFER);
        let shared = Arc::new(Shared {
            me,
            failure_timeout: config.failure_timeout,
            max_payload: config.max_payload_bytes,
            peers: Default::default(),
            snapshot: Default::default(),
            map,
            notices,
        });

        // The NodeServer always binds a listener of its own; Bunting accepts on `tcp` instead
        // (see `listener`), so that one goes to an ephemeral loopback port nobody is told of,
        // under the same TLS requirement.
        let frame_limit = MAX_FRAME_BYTES
            .max(config.max_payload_bytes.saturating_add(ENVELOPE_SLACK))
            .saturating_add(RACTOR_ENVELOPE);
        let server = NodeServer::new(
            0,
            config.cookie.secret().to_string(),
            config.node_id.to_string(),
            cluster_addr.ip().to_string(),
            config
                .tls
                .as_ref()
                .map(|tls| IncomingEncryptionMode::Tls(tls.acceptor.clone())),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .with_max_inbound_frame_size(u64::try_from(frame_limit).unwrap_or(u64::MAX));
        let (server, _) =
            Actor::spawn(None, server, ())
                .await
                .map_err(|e| ClusterError::Spawn {
                    what: "node server",
                    message: e.to_string(),
                })?;

        let pending_inbound = Arc::new(AtomicUsize::new(0));
        let (connector_tx, connector_rx) = mpsc::unbounded_channel();
        let connector = connector::spawn(
            server.clone(),
            ConnectorConfig {
                me: config.node_id.clone(),
                my_addr: cluster_addr,
                seeds: config.seeds.clone(),
                handshake_timeout: config.handshake_timeout,
                tls: config.tls.clone(),
                pending_inbound: pending_inbound.clone(),
            },
            connector_rx,
        );
        let membership = Actor::spawn(
            None,
            Membership,
            MembershipArgs {
                view,
                shared: shared.clone(),
                handler: handler.clone(),
                connector: connector_tx,
                heartbeat_interval: config.heartbeat_interval,
                max_inflight: config.max_inflight_requests,
            },
        )
        .await;
        let membership = match membership {
            Ok((membership, _)) => membership,
            Err(e) => {
                connector.abort();
                server.stop(None);
                return Err(ClusterError::Spawn {
                    what: "membership actor",
                    message: e.to_string(),
                });
            }
        };
        let acceptor = tokio::spawn(listener::accept_loop(
            tcp,
            listener::Acceptor {
                server: server.clone(),
                pending: pending_inbound,
                max_pending: config.max_pending_connections,
                tls: config.tls.clone(),
                handshake_timeout: config.handshake_timeout,
            },
        ));
        tracing::info!(
            node = %config.node_id,
            %cluster_addr,
            seeds = ?config.seeds,
            tls = config.tls.is_some(),
            "cluster member started"
        );
        Ok(Cluster {
            inner: Arc::new(Inner {
                shared,
                cluster_addr,
                handler,
                membership,
                server,
                tasks: vec![connector, acceptor],
                shut_down: AtomicBool::new(false),
                claim: Mutex::new(Some(claim)),
            }),
        })
    }

    pub fn local_id(&self) -> &NodeId {
        &self.inner.shared.me.id
    }

    /// The address peers dial to reach this node (the bound port when `listen` had port 0).
    pub fn cluster_addr(&self) -> SocketAddr {
        self.inner.cluster_addr
    }

    /// The current shard map and every later one this node adopts. Starts at epoch 0 with a
    /// map of just this node, or, for a node with seeds (it must be let in first), of no one.
    pub fn shard_map(&self) -> watch::Receiver<Arc<ShardMap>> {
        self.inner.shared.map.subscribe()
    }

    pub fn status(&self) -> ClusterStatus {
        self.inner.shared.status()
    }

    /// Sends `request` to `node`'s `ForwardHandler` and returns its answer. Fails fast, without
    /// waiting for `timeout`, when the node is unknown, down or not connected.
    pub async fn call(
        &self,
        node: &NodeId,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let shared = &self.inner.shared;
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(CallError::ShutDown);
        }
        if request.len() > shared.max_payload {
            return Err(CallError::TooLarge {
                len: request.len(),
                limit: shared.max_payload,
            });
        }
        if *node == shared.me.id {
            return tokio::time::timeout(timeout, self.inner.handler.handle(node, request))
                .await
                .map_err(|_| CallError::Timeout {
                    node: node.clone(),
                    timeout,
                });
        }
        let actor = self.reachable(node)?;
        let bytes = wire::encode_request(Request::Forward {
            from: shared.me.id.clone(),
            payload: request,
        });
        match self.request(node, &actor, bytes, timeout).await? {
            Response::Ok(answer) => Ok(answer),
            Response::Busy => Err(CallError::Busy(node.clone())),
            Response::Error(message) => Err(CallError::Remote {
                node: node.clone(),
                message,
            }),
        }
    }

    /// The actor of a member that is alive and connected.
    fn reachable(&self, node: &NodeId) -> Result<ActorRef<MemberMsg>, CallError> {
        let shared = &self.inner.shared;
        let snapshot = shared.snapshot();
        let member = snapshot
            .members
            .get(node)
            .ok_or_else(|| CallError::UnknownNode(node.clone()))?;
        if !alive(member.last_heard, Instant::now(), shared.failure_timeout) {
            return Err(CallError::NodeDown(node.clone()));
        }
        read(&shared.peers)
            .get(node)
            .cloned()
            .ok_or_else(|| CallError::NotConnected(node.clone()))
    }

    async fn request(
        &self,
        node: &NodeId,
        actor: &ActorRef<MemberMsg>,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let call = actor.call(|reply| MemberMsg::Request(bytes, reply), Some(timeout));
        let timed_out = || CallError::Timeout {
            node: node.clone(),
            timeout,
        };
        match tokio::time::timeout(timeout, call).await {
            Err(_) | Ok(Ok(CallResult::Timeout)) => Err(timed_out()),
            // The RemoteActor is gone or dropped the reply port: its session closed.
            Ok(Err(_)) | Ok(Ok(CallResult::SenderError)) => {
                Err(CallError::Disconnected(node.clone()))
            }
            Ok(Ok(CallResult::Success(answer))) => {
                wire::decode_response(&answer, self.inner.shared.max_payload).map_err(|e| {
                    CallError::Remote {
                        node: node.clone(),
                        message: format!("undecodable answer: {e}"),
                    }
                })
            }
        }
    }

    /// Casts `notice` to every live peer, best effort: a peer that is down or reconnecting
    /// misses it.
    pub fn publish(&self, notice: Notice) {
        let shared = &self.inner.shared;
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return;
        }
        let frame = wire::encode_notice(&shared.me.id, &notice);
        let snapshot = shared.snapshot();
        let now = Instant::now();
        for (id, actor) in read(&shared.peers).iter() {
            let live = snapshot
                .members
                .get(id)
                .is_some_and(|m| alive(m.last_heard, now, shared.failure_timeout));
            if live {
                let _ = actor.cast(MemberMsg::Frame(frame.clone()));
            }
        }
    }

    /// Notices published by peers, with the publisher's id.
    pub fn notices(&self) -> broadcast::Receiver<(NodeId, Notice)> {
        self.inner.shared.notices.subscribe()
    }

    /// Moves `node`'s shards away: the node (reached over the cluster if it is not this one)
    /// marks itself draining, the coordinator places a map without it, and this returns the
    /// epoch of the first such map this node adopts. The node stays a member until it leaves.
    pub async fn drain(&self, node: &NodeId, timeout: Duration) -> Result<u64, ClusterError> {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(ClusterError::ShutDown);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let shared = &self.inner.shared;
        // Subscribe before asking, so the map that drops the node cannot slip past unseen.
        let mut maps = shared.map.subscribe();
        if *node == shared.me.id {
            match self
                .inner
                .membership
                .call(MemberMsg::DrainSelf, Some(timeout))
                .await
            {
                Ok(CallResult::Success(())) => {}
                _ => return Err(ClusterError::ShutDown),
            }
        } else {
            let request = Request::Drain {
                from: shared.me.id.clone(),
            };
            self.ask(node, request, timeout).await?;
        }
        until_map(&mut maps, deadline, |map| map.member(node).is_none())
            .await
            .map_err(|e| {
                e.unwrap_or_else(|| ClusterError::DrainTimeout {
                    node: node.clone(),
                    timeout,
                })
            })
    }

    /// Returns a draining `node` to service: the node (reached over the cluster if it is not this
    /// one) stops draining, the coordinator places shards on it again, and this returns the epoch
    /// of the first such map this node adopts. Refused with `NotDraining` when the node is not
    /// draining, so a mistyped id cannot pass for success.
    pub async fn undrain(&self, node: &NodeId, timeout: Duration) -> Result<u64, ClusterError> {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(ClusterError::ShutDown);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let shared = &self.inner.shared;
        let mut maps = shared.map.subscribe();
        if *node == shared.me.id {
            match self
                .inner
                .membership
                .call(MemberMsg::UndrainSelf, Some(timeout))
                .await
            {
                Ok(CallResult::Success(true)) => {}
                Ok(CallResult::Success(false)) => {
                    return Err(ClusterError::NotDraining(node.clone()));
                }
                _ => return Err(ClusterError::ShutDown),
            }
        } else {
            let request = Request::Undrain {
                from: shared.me.id.clone(),
            };
            self.ask(node, request, timeout).await?;
        }
        until_map(&mut maps, deadline, |map| map.member(node).is_some())
            .await
            .map_err(|e| {
                e.unwrap_or_else(|| ClusterError::UndrainTimeout {
                    node: node.clone(),
                    timeout,
                })
            })
    }

    /// Asks `node` (not this one) to act on `request` over the cluster port; its refusal to
    /// undrain a node that is not draining comes back as [`ClusterError::NotDraining`].
    async fn ask(
        &self,
        node: &NodeId,
        request: Request,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let unreachable = |error| ClusterError::Unreachable {
            node: node.clone(),
            error,
        };
        let actor = self.reachable(node).map_err(|e| match e {
            CallError::UnknownNode(n) => ClusterError::UnknownNode(n),
            CallError::NodeDown(n) => ClusterError::NodeDown(n),
            other => unreachable(other),
        })?;
        let bytes = wire::encode_request(request);
        match self.request(node, &actor, bytes, timeout).await {
            Ok(Response::Ok(_)) => Ok(()),
            Ok(Response::Error(message)) if message == NOT_DRAINING => {
                Err(ClusterError::NotDraining(node.clone()))
            }
            Ok(Response::Busy) => Err(unreachable(CallError::Busy(node.clone()))),
            Ok(Response::Error(message)) => Err(unreachable(CallError::Remote {
                node: node.clone(),
                message,
            })),
            Err(error) => Err(unreachable(error)),
        }
    }

    /// Leaves the cluster cleanly: stops heartbeating, tells every connected peer this node is
    /// leaving (so they drop it at once instead of waiting for the failure timeout), and stops.
    pub async fn shutdown(self) {
        let inner = &self.inner;
        if inner.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        // Heartbeats stop first, so none can follow the leave and re-add this node.
        let _ = inner
            .membership
            .stop_and_wait(Some("shutdown".to_string()), Some(STOP_TIMEOUT))
            .await;
        let peers: Vec<(NodeId, ActorRef<MemberMsg>)> = read(&inner.shared.peers)
            .iter()
            .map(|(id, actor)| (id.clone(), actor.clone()))
            .collect();
        let mut leaves = tokio::task::JoinSet::new();
        for (id, actor) in peers {
            let bytes = wire::encode_request(Request::Leave {
                from: inner.shared.me.id.clone(),
                incarnation: inner.shared.me.incarnation,
            });
            let this = self.clone();
            leaves.spawn(async move {
                if let Err(error) = this.request(&id, &actor, bytes, LEAVE_TIMEOUT).await {
                    tracing::debug!(peer = %id, %error, "peer did not acknowledge the leave");
                }
            });
        }
        while leaves.join_next().await.is_some() {}
        for task in &inner.tasks {
            task.abort();
        }
        let _ = inner
            .server
            .stop_and_wait(Some("shutdown".to_string()), Some(STOP_TIMEOUT))
            .await;
        inner.halt();
        tracing::info!(node = %inner.shared.me.id, "cluster member left");
    }
}

/// This run's incarnation: microseconds since the Unix epoch, so a restarted node (same id)
/// is recognisably newer as long as the clock does not step back past the previous start.
fn incarnation() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Waits until the map this node adopts satisfies `done`, and returns its epoch. `Err(None)` at
/// `deadline` (the caller names what timed out), `Err(Some(ShutDown))` if the cluster stops.
async fn until_map(
    maps: &mut watch::Receiver<Arc<ShardMap>>,
    deadline: tokio::time::Instant,
    done: impl Fn(&ShardMap) -> bool,
) -> Result<u64, Option<ClusterError>> {
    loop {
        {
            let map = maps.borrow_and_update();
            if done(&map) {
                return Ok(map.epoch());
            }
        }
        match tokio::time::timeout_at(deadline, maps.changed()).await {
            Err(_) => return Err(None),
            Ok(Err(_)) => return Err(Some(ClusterError::ShutDown)),
            Ok(Ok(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! A member in this process (the integration tests run members as child processes). One
    //! test only: the process hosts one member at a time.

    use super::*;
    use crate::cookie::Cookie;
    use crate::status::MemberState;

    struct Echo;

    #[async_trait::async_trait]
    impl ForwardHandler for Echo {
        async fn handle(&self, from: &NodeId, request: Vec<u8>) -> Vec<u8> {
            [from.as_str().as_bytes(), b":", &request].concat()
        }
    }

    fn id(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn config(name: &str, listen: SocketAddr) -> ClusterConfig {
        let mut config = ClusterConfig::new(
            id(name),
            listen,
            format!("{name}.grpc:8013"),
            Cookie::new("unit-test").unwrap(),
        );
        config.max_payload_bytes = 100;
        config
    }

    fn any_port() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_member_its_port_and_one_member_per_process() {
        // A port in use: the error names it, and the process is free for the next attempt.
        let taken = std::net::TcpListener::bind(any_port()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Cluster::start(config("a", addr), Arc::new(Echo))
            .await
            .unwrap_err();
        assert!(matches!(err, ClusterError::Bind { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");

        let a = Cluster::start(config("a", any_port()), Arc::new(Echo))
            .await
            .unwrap();
        assert_ne!(a.cluster_addr().port(), 0, "reports the bound port");
        let second = Cluster::start(config("b", any_port()), Arc::new(Echo)).await;
        assert!(matches!(second, Err(ClusterError::AlreadyRunning(ref n)) if *n == id("a")));

        // Alone: a map of itself at epoch 0, owning every shard.
        let map = a.shard_map().borrow().clone();
        assert_eq!((map.epoch(), map.owned_by(&id("a"))), (0, 256));
        let status = a.status();
        assert_eq!((status.epoch, &status.coordinator), (0, &id("a")));
        assert_eq!(status.members.len(), 1);
        let me = &status.members[0];
        assert!(me.is_local && me.state == MemberState::Up && me.since_heartbeat.is_none());

        // Calls to itself go straight to its handler; checks come before any network.
        let second = Duration::from_secs(1);
        assert_eq!(
            a.call(&id("a"), b"x".to_vec(), second).await.unwrap(),
            b"a:x"
        );
        assert_eq!(
            a.call(&id("z"), b"x".to_vec(), second).await,
            Err(CallError::UnknownNode(id("z")))
        );
        assert_eq!(
            a.call(&id("a"), vec![0; 101], second).await,
            Err(CallError::TooLarge {
                len: 101,
                limit: 100
            })
        );
        assert!(matches!(
            a.drain(&id("z"), second).await,
            Err(ClusterError::UnknownNode(n)) if n == id("z")
        ));

        // Draining the only member leaves a map that owns nothing.
        let epoch = a.drain(&id("a"), Duration::from_secs(5)).await.unwrap();
        let map = a.shard_map().borrow().clone();
        assert!(epoch >= 1 && map.epoch() == epoch && map.owners().next().is_none());
        assert_eq!(a.status().members[0].state, MemberState::Draining);

        // Undrain puts it back in a later map that owns every shard; a second undrain is refused.
        let back = a.undrain(&id("a"), Duration::from_secs(5)).await.unwrap();
        let map = a.shard_map().borrow().clone();
        assert!(back > epoch && map.epoch() == back && map.owned_by(&id("a")) == 256);
        assert_eq!(a.status().members[0].state, MemberState::Up);
        assert!(matches!(
            a.undrain(&id("a"), second).await,
            Err(ClusterError::NotDraining(n)) if n == id("a")
        ));

        let other_handle = a.clone();
        a.shutdown().await;
        assert_eq!(
            other_handle.call(&id("a"), vec![], second).await,
            Err(CallError::ShutDown)
        );

        // The process is free again after a shutdown, and after a plain drop (an abrupt stop).
        let b = Cluster::start(config("b", any_port()), Arc::new(Echo))
            .await
            .unwrap();
        drop(b);
        let c = Cluster::start(config("c", any_port()), Arc::new(Echo))
            .await
            .unwrap();
        c.shutdown().await;
    }
}
