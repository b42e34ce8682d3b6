//! Keeps this node connected: dials seeds and known members it has no session with (capped
//! backoff), closes connections that do not authenticate in time, and logs refused ones.
//!
//! ractor_cluster has no reconnect of its own and reports sessions only through
//! `NodeEventSubscription` callbacks; those are forwarded here as [`SessionEvent`]s. The
//! membership actor sends the dial targets it learned (members and gossip) and asks for the
//! sessions of a member that went down to be closed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeServerMessage, NodeSessionMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::node_id::NodeId;
use crate::tls::ClusterTls;

/// First redial delay after a failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often the connector looks for work (due dials, expired handshakes).
const SWEEP: Duration = Duration::from_millis(100);
/// A connect (TCP, and TLS when configured) that takes longer than this counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Peers remembered as already warned about (refused handshakes).
const MAX_WARNED: usize = 1024;
/// Refused handshakes waiting for their verdict, at most.
const MAX_PENDING_REFUSALS: usize = 1024;
/// How long after a handshake closed unauthenticated the connector waits for the peer to get
/// connected anyway before it warns. Two nodes dialling each other at once is normal
/// (ractor_cluster keeps one connection and closes the other before it authenticates, often
/// before the dialler learnt the peer's name); only a peer still not connected after this is
/// worth a warning (a wrong cookie, or not a Bunting node). A refusal is settled as soon as the
/// peer is connected (an unnamed one once the dialled address is known as a member's).
const REFUSAL_GRACE: Duration = Duration::from_secs(5);
/// A peer with nothing listening for this long is warned about; shorter absences (a peer
/// starting a moment after this node) are logged at debug. Other failures warn at once.
const DIAL_WARN_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) enum ConnectorCmd {
    /// Members and gossiped nodes worth dialling (replaces the previous list).
    Targets(Vec<(NodeId, SocketAddr)>),
    /// Close every session with this node.
    DropSessions(NodeId),
}

#[derive(Debug)]
enum SessionEvent {
    Opened(NodeServerSessionInformation),
    Authenticated(NodeServerSessionInformation),
    Disconnected(NodeServerSessionInformation),
    /// The address, the error, and whether the peer is merely not there (yet): nothing
    /// listening, or no answer in time.
    DialFailed(SocketAddr, String, bool),
}

struct Events(mpsc::UnboundedSender<SessionEvent>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Opened(ses));
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Disconnected(ses));
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(SessionEvent::Authenticated(ses));
    }
}

#[derive(Debug)]
pub(crate) struct ConnectorConfig {
    pub me: NodeId,
    pub my_addr: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub handshake_timeout: Duration,
    pub tls: Option<ClusterTls>,
    /// Inbound connections not yet authenticated; the accept loop refuses past its cap.
    pub pending_inbound: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Session {
    actor: ActorRef<NodeSessionMessage>,
    inbound: bool,
    peer_addr: Option<SocketAddr>,
    peer: Option<NodeId>,
    authenticated: bool,
    opened: Instant,
    /// Asked to stop (handshake timeout, peer down); its disconnect event is still to come.
    closing: bool,
}

/// A handshake that closed before authenticating, judged after [`REFUSAL_GRACE`].
#[derive(Debug)]
struct Refusal {
    at: Instant,
    /// The peer's name as it announced it, if it got that far.
    name: String,
    peer: Option<NodeId>,
    addr: String,
    /// The address dialled, for an outbound connection.
    dialled: Option<SocketAddr>,
    inbound: bool,
}

#[derive(Debug)]
struct Dial {
    delay: Duration,
    next_at: Instant,
    in_flight_since: Option<Instant>,
    /// When the current streak of failures began.
    failing_since: Option<Instant>,
    /// Failures are logged once per streak, then quietly retried.
    warned: bool,
}

impl Dial {
    fn new(now: Instant) -> Dial {
        Dial {
            delay: MIN_BACKOFF,
            next_at: now,
            in_flight_since: None,
            failing_since: None,
            warned: false,
        }
    }

    fn failed(&mut self, now: Instant) {
        self.in_flight_since = None;
        self.failing_since.get_or_insert(now);
        self.next_at = now + self.delay;
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }

    fn succeeded(&mut self) {
        self.in_flight_since = None;
        self.failing_since = None;
        self.delay = MIN_BACKOFF;
        self.warned = false;
    }
}

/// ractor_cluster names peers `<node name>@<host>`; Bunting uses the node id as the name.
fn peer_id(ses: &NodeServerSessionInformation) -> Option<NodeId> {
    let name = &ses.peer_name.as_ref()?.name;
    name.split('@').next()?.parse().ok()
}

pub(crate) fn spawn(
    server: ActorRef<NodeServerMessage>,
    config: ConnectorConfig,
    commands: mpsc::UnboundedReceiver<ConnectorCmd>,
) -> JoinHandle<()> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let _ = server.cast(NodeServerMessage::SubscribeToEvents {
        id: "bunting.connector".to_string(),
        subscription: Box::new(Events(events_tx.clone())),
    });
    let connector = Connector {
        server,
        config,
        sessions: HashMap::new(),
        dials: HashMap::new(),
        targets: Vec::new(),
        events_tx,
        warned_refused: HashSet::new(),
        refusals: Vec::new(),
    };
    tokio::spawn(connector.run(commands, events))
}

struct Connector {
    server: ActorRef<NodeServerMessage>,
    config: ConnectorConfig,
    /// Keyed by ractor_cluster's per-session id.
    sessions: HashMap<u64, Session>,
    dials: HashMap<SocketAddr, Dial>,
    targets: Vec<(NodeId, SocketAddr)>,
    events_tx: mpsc::UnboundedSender<SessionEvent>,
    /// Peers whose failed inbound handshakes were already logged.
    warned_refused: HashSet<String>,
    /// Handshakes that closed unauthenticated, not yet judged.
    refusals: Vec<Refusal>,
}

impl Connector {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<ConnectorCmd>,
        mut events: mpsc::UnboundedReceiver<SessionEvent>,
    ) {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(ConnectorCmd::Targets(targets)) => self.targets = targets,
                    Some(ConnectorCmd::DropSessions(id)) => self.drop_sessions(&id),
                    None => break,
                },
                Some(event) = events.recv() => self.on_event(event, Instant::now()),
                _ = sweep.tick() => {
                    let now = Instant::now();
                    self.expire_handshakes(now);
                    self.judge_refusals(now);
                    self.dial_due(now);
                }
            }
        }
    }

    fn on_event(&mut self, event: SessionEvent, now: Instant) {
        match event {
            SessionEvent::Opened(ses) => {
                let inbound = ses.is_server;
                if inbound {
                    self.config.pending_inbound.fetch_add(1, Ordering::Relaxed);
                }
                self.sessions.insert(
                    ses.node_id,
                    Session {
                        actor: ses.actor,
                        inbound,
                        peer_addr: ses.peer_addr.parse().ok(),
                        peer: None,
                        authenticated: false,
                        opened: now,
                        closing: false,
                    },
                );
            }
            SessionEvent::Authenticated(ses) => {
                let peer = peer_id(&ses);
                if let Some(session) = self.sessions.get_mut(&ses.node_id) {
                    if session.inbound && !session.authenticated {
                        self.config.pending_inbound.fetch_sub(1, Ordering::Relaxed);
                    }
                    session.authenticated = true;
                    session.peer = peer.clone();
                    if let (false, Some(addr)) = (session.inbound, session.peer_addr)
                        && let Some(dial) = self.dials.get_mut(&addr)
                    {
                        dial.succeeded();
                    }
                }
                if let Some(peer) = peer {
                    tracing::debug!(%peer, addr = %ses.peer_addr, "cluster session authenticated");
                    self.warned_refused.remove(peer.as_str());
                }
            }
            SessionEvent::Disconnected(ses) => {
                let Some(session) = self.sessions.remove(&ses.node_id) else {
                    return;
                };
                if session.inbound && !session.authenticated {
                    self.config.pending_inbound.fetch_sub(1, Ordering::Relaxed);
                }
                if !session.inbound
                    && let Some(addr) = session.peer_addr
                    && let Some(dial) = self.dials.get_mut(&addr)
                    && (dial.in_flight_since.is_some() || session.authenticated)
                {
                    dial.failed(now);
                }
                if !session.authenticated {
                    self.log_refused(&ses, &session);
                }
            }
            SessionEvent::DialFailed(addr, error, absent) => {
                if let Some(dial) = self.dials.get_mut(&addr) {
                    dial.failed(now);
                    let failing_for = dial
                        .failing_since
                        .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
                    // A peer not there yet is normal for a few seconds (it starts after this
                    // node); anything else (TLS refused, say) is a misconfiguration: said at once.
                    if !dial.warned && (!absent || failing_for >= DIAL_WARN_AFTER) {
                        tracing::warn!(%addr, %error, "cannot connect to cluster peer for {failing_for:?}; retrying");
                        dial.warned = true;
                    } else if !dial.warned {
                        tracing::debug!(%addr, %error, "cannot connect to cluster peer yet; retrying");
                    }
                }
            }
        }
    }

    /// A session that closed before authenticating: a wrong cookie (either side), a losing
    /// duplicate connection, or something that is not a Bunting node. Logged once per peer.
    fn log_refused(&mut self, ses: &NodeServerSessionInformation, session: &Session) {
        let name = ses
            .peer_name
            .as_ref()
            .map_or_else(|| "unnamed".to_string(), |n| n.name.clone());
        // ractor_cluster ends a session whose peer has our own name ("connection to self"). At
        // an address other than ours that is another process configured with this node's id:
        // both would claim the same shards, each in its half of the cluster.
        if !session.inbound
            && peer_id(ses).as_ref() == Some(&self.config.me)
            && session.peer_addr != Some(self.config.my_addr)
        {
            if self
                .warned_refused
                .insert(format!("twin {}", ses.peer_addr))
            {
                tracing::error!(
                    node = %self.config.me,
                    addr = %ses.peer_addr,
                    "DUPLICATE NODE ID: the cluster peer at this address presents this node's own \
                     id; two processes with one [cluster] node_id split the cluster and both own \
                     the same shards. Give every node a unique node_id (if the address is this \
                     node under another name, drop it from the seeds)"
                );
            }
            return;
        }
        // Judged later (`judge_refusals`): by then a simultaneous dial's other connection has
        // authenticated. Bounded: a flood of refused connections drops verdicts, not memory.
        if self.refusals.len() < MAX_PENDING_REFUSALS {
            self.refusals.push(Refusal {
                at: Instant::now(),
                name,
                peer: peer_id(ses),
                addr: ses.peer_addr.clone(),
                dialled: (!session.inbound).then_some(session.peer_addr).flatten(),
                inbound: session.inbound,
            });
        }
    }

    /// Settles refused handshakes: one whose peer is connected lost a simultaneous dial (debug);
    /// one whose peer is still not connected after [`REFUSAL_GRACE`] is warned about, once per
    /// peer; the rest wait.
    fn judge_refusals(&mut self, now: Instant) {
        for refusal in std::mem::take(&mut self.refusals) {
            // The id behind a dialled address, once known (a seed's, after it answered).
            let peer = refusal.peer.clone().or_else(|| {
                let dialled = refusal.dialled?;
                self.targets
                    .iter()
                    .find(|(_, addr)| *addr == dialled)
                    .map(|(id, _)| id.clone())
            });
            let connected = self.sessions.values().any(|s| {
                s.authenticated
                    && ((peer.is_some() && s.peer == peer)
                        || (!s.inbound
                            && refusal.dialled.is_some()
                            && s.peer_addr == refusal.dialled))
            });
            let direction = if refusal.inbound {
                "inbound"
            } else {
                "outbound"
            };
            if !connected && now.saturating_duration_since(refusal.at) < REFUSAL_GRACE {
                self.refusals.push(refusal);
                continue;
            }
            if connected {
                tracing::debug!(
                    peer = %refusal.name,
                    addr = %refusal.addr,
                    direction,
                    "a cluster connection closed before authenticating while another to the same \
                     peer authenticated (simultaneous dials)"
                );
                continue;
            }
            let key = if refusal.inbound {
                refusal.name.clone()
            } else {
                refusal.addr.clone()
            };
            // Bounded: a stream of connections under ever new names must not grow this forever.
            if self.warned_refused.len() >= MAX_WARNED {
                self.warned_refused.clear();
            }
            if self.warned_refused.insert(key) {
                tracing::warn!(
                    peer = %refusal.name,
                    addr = %refusal.addr,
                    direction,
                    "cluster connection closed before authenticating and the peer is still not \
                     connected: wrong cookie, or not a Bunting node"
                );
            }
        }
    }

    fn drop_sessions(&mut self, id: &NodeId) {
        for session in self.sessions.values_mut() {
            if session.peer.as_ref() == Some(id) && !session.closing {
                session.closing = true;
                session.actor.stop(Some("peer_down".to_string()));
            }
        }
    }

    fn expire_handshakes(&mut self, now: Instant) {
        let timeout = self.config.handshake_timeout;
        for session in self.sessions.values_mut() {
            if !session.authenticated
                && !session.closing
                && now.saturating_duration_since(session.opened) >= timeout
            {
                tracing::warn!(
                    addr = ?session.peer_addr,
                    "closing a cluster connection that did not authenticate within {timeout:?}"
                );
                session.closing = true;
                session.actor.stop(Some("handshake_timeout".to_string()));
            }
        }
        for dial in self.dials.values_mut() {
            if dial.in_flight_since.is_some_and(|since| {
                now.saturating_duration_since(since) >= timeout + CONNECT_TIMEOUT
            }) {
                dial.failed(now);
            }
        }
    }

    fn connected(&self, id: Option<&NodeId>, addr: SocketAddr) -> bool {
        self.sessions.values().any(|s| {
            s.authenticated
                && ((id.is_some() && s.peer.as_ref() == id)
                    || (!s.inbound && s.peer_addr == Some(addr)))
        })
    }

    fn dial_due(&mut self, now: Instant) {
        let mut wanted: Vec<(Option<NodeId>, SocketAddr)> = self
            .targets
            .iter()
            .map(|(id, addr)| (Some(id.clone()), *addr))
            .collect();
        for seed in &self.config.seeds {
            if !self.targets.iter().any(|(_, addr)| addr == seed) {
                wanted.push((None, *seed));
            }
        }
        wanted.retain(|(id, addr)| {
            *addr != self.config.my_addr && id.as_ref() != Some(&self.config.me)
        });
        let live: HashSet<SocketAddr> = wanted.iter().map(|(_, addr)| *addr).collect();
        self.dials.retain(|addr, _| live.contains(addr));
        for (id, addr) in wanted {
            if self.connected(id.as_ref(), addr) {
                if let Some(dial) = self.dials.get_mut(&addr) {
                    dial.succeeded();
                }
                continue;
            }
            let dial = self.dials.entry(addr).or_insert_with(|| Dial::new(now));
            if dial.in_flight_since.is_some() || dial.next_at > now {
                continue;
            }
            dial.in_flight_since = Some(now);
            let server = self.server.clone();
            let events = self.events_tx.clone();
            let tls = self.config.tls.clone();
            tokio::spawn(async move {
                let connect = async {
                    match tls {
                        None => ractor_cluster::client_connect(&server, addr).await,
                        Some(tls) => {
                            ractor_cluster::client_connect_enc(
                                &server,
                                addr,
                                tls.connector,
                                tls.name,
                            )
                            .await
                        }
                    }
                };
                let result = tokio::time::timeout(CONNECT_TIMEOUT, connect).await;
                let (error, absent) = match result {
                    Ok(Ok(())) => return,
                    Ok(Err(ractor_cluster::ClientConnectErr::Socket(error))) => (
                        error.to_string(),
                        matches!(
                            error.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::TimedOut
                        ),
                    ),
                    Ok(Err(error)) => (error.to_string(), false),
                    Err(_) => (format!("connect timed out after {CONNECT_TIMEOUT:?}"), true),
                };
                let _ = events.send(SessionEvent::DialFailed(addr, error, absent));
            });
        }
    }
}
