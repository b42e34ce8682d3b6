//! Which node a request goes to, and keeping the shard map fresh.
//!
//! The map lives in an `ArcSwap`: a request loads the current snapshot without a lock and never
//! waits for a refresh. Refreshes are single-flight (callers queue on one async mutex and skip the
//! fetch if another caller refreshed since they looked) and rate-limited, so a burst of stale
//! answers or failures costs one `GetTopology`, not one per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bunting_proto::bunting::v1::GetTopologyRequest;
use bunting_proto::bunting::v1::topology_client::TopologyClient;
use tonic::transport::Channel;

use crate::config::ClientConfig;
use crate::error::{ClientError, SeedFailure};
use crate::stats::Counters;
use crate::topology::{NodeState, Topology};

/// A node the client talks to. Kept across refreshes while the node keeps its id and address, so
/// its connection and its quarantine survive a new map.
#[derive(Debug)]
pub(crate) struct NodeHandle {
    pub id: String,
    pub addr: String,
    pub channel: Channel,
    /// Milliseconds since the router's clock until which requests avoid this node; 0 when none.
    quarantined_until: AtomicU64,
}

/// One map and the handles of its nodes, in the map's order.
#[derive(Debug)]
pub(crate) struct Routing {
    pub topology: Arc<Topology>,
    pub nodes: Vec<Arc<NodeHandle>>,
}

#[derive(Debug)]
pub(crate) struct Router {
    pub config: ClientConfig,
    pub counters: Counters,
    seeds: Vec<(String, Channel)>,
    current: ArcSwap<Routing>,
    /// Completed refreshes; a caller that saw generation `g` skips its refresh once it moved on.
    generation: AtomicU64,
    /// Held while a refresh runs; holds when the last one started (none yet after connecting, so
    /// the first refresh is never delayed).
    refresh_gate: tokio::sync::Mutex<Option<Instant>>,
    round_robin: AtomicUsize,
    clock: Instant,
}

impl Router {
    /// Asks the seeds for the map, in order, and keeps the first answer.
    pub async fn connect(config: ClientConfig) -> Result<Router, ClientError> {
        if config.seeds.is_empty() {
            return Err(ClientError::NoSeeds);
        }
        let mut seeds = Vec::with_capacity(config.seeds.len());
        for seed in &config.seeds {
            seeds.push((seed.clone(), config.channel(seed)?));
        }
        let mut tried = Vec::new();
        let mut first = None;
        for (seed, channel) in &seeds {
            match fetch(channel.clone(), &config).await {
                Ok(topology) => {
                    first = Some(topology);
                    break;
                }
                Err(error) => tried.push(SeedFailure {
                    seed: seed.clone(),
                    error,
                }),
            }
        }
        let Some(topology) = first else {
            return Err(ClientError::NoSeedAnswered { tried });
        };
        let routing = build_routing(&config, topology, None)?;
        Ok(Router {
            config,
            counters: Counters::default(),
            seeds,
            current: ArcSwap::from_pointee(routing),
            generation: AtomicU64::new(0),
            refresh_gate: tokio::sync::Mutex::new(None),
            round_robin: AtomicUsize::new(0),
            clock: Instant::now(),
        })
    }

    pub fn current(&self) -> Arc<Routing> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts a refresh in the background unless one is running or recent; `observed` is the
    /// generation the caller routed with. Returns the task so a caller may wait for it; `None`
    /// outside a tokio runtime, where the next request on one will trigger it again.
    pub fn spawn_refresh(self: &Arc<Self>, observed: u64) -> Option<tokio::task::JoinHandle<()>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let router = Arc::clone(self);
        Some(runtime.spawn(async move { router.refresh(observed).await }))
    }

    async fn refresh(&self, observed: u64) {
        let mut last = self.refresh_gate.lock().await;
        if self.generation() != observed {
            return;
        }
        if last.is_some_and(|at| at.elapsed() < self.config.topology_refresh_min_interval) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch_newest().await {
            Some(routing) => {
                tracing::debug!(
                    epoch = routing.topology.epoch,
                    answered_by = %routing.topology.answered_by,
                    "topology refreshed"
                );
                self.current.store(Arc::new(routing));
                self.generation.fetch_add(1, Ordering::AcqRel);
                Counters::bump(&self.counters.topology_refreshes);
            }
            None => {
                tracing::warn!("topology refresh failed: no node or seed answered");
                Counters::bump(&self.counters.refresh_failures);
            }
        }
    }

    /// Asks the serving, non-quarantined nodes of the current map, then the seeds, and takes the
    /// first map at least as new as the current one. A node that lags behind is skipped for the
    /// next; if every answer is older, the newest of them wins, since then the cluster itself
    /// went back (say, a full restart that reset the epoch) and the old map would never be left.
    async fn fetch_newest(&self) -> Option<Routing> {
        let current = self.current();
        let now = self.now_ms();
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let count = current.nodes.len();
        let nodes = (0..count).filter_map(|k| {
            let index = (start + k) % count.max(1);
            let info = current.topology.nodes.get(index)?;
            let handle = current.nodes.get(index)?;
            (info.state.serves() && !handle.is_quarantined(now)).then(|| handle.channel.clone())
        });
        let candidates: Vec<Channel> = nodes
            .chain(self.seeds.iter().map(|(_, channel)| channel.clone()))
            .collect();
        let mut best: Option<Topology> = None;
        for channel in candidates {
            let Ok(topology) = fetch(channel, &self.config).await else {
                continue;
            };
            if topology.epoch >= current.topology.epoch {
                return self.adopt(topology, &current);
            }
            if best.as_ref().is_none_or(|b| topology.epoch > b.epoch) {
                best = Some(topology);
            }
        }
        self.adopt(best?, &current)
    }

    fn adopt(&self, topology: Topology, current: &Routing) -> Option<Routing> {
        match build_routing(&self.config, topology, Some(current)) {
            Ok(routing) => Some(routing),
            Err(error) => {
                tracing::warn!(%error, "topology refused");
                None
            }
        }
    }

    /// The node for the next attempt: the key's owner if it serves, is not quarantined and was
    /// not tried yet; otherwise the next node in round-robin order, preferring untried nodes that
    /// are up and not quarantined, then draining ones, then anything untried, then anything (any
    /// node accepts any request; a non-owner just costs a forward).
    pub fn pick(
        &self,
        routing: &Routing,
        key: Option<&str>,
        tried: &[String],
    ) -> Option<Arc<NodeHandle>> {
        let now = self.now_ms();
        let eligible = |index: usize, tier: u8| -> bool {
            let (Some(info), Some(handle)) =
                (routing.topology.nodes.get(index), routing.nodes.get(index))
            else {
                return false;
            };
            let untried = !tried.contains(&handle.id);
            let healthy = untried && info.state.serves() && !handle.is_quarantined(now);
            match tier {
                // A draining node is about to stop: use it only when nothing better is left.
                0 => healthy && info.state != NodeState::Draining,
                1 => healthy,
                2 => untried && info.state.serves(),
                3 => untried,
                _ => true,
            }
        };
        if let Some(owner) = key.and_then(|k| routing.topology.owner_index(k))
            && eligible(owner, 1)
        {
            return routing.nodes.get(owner).cloned();
        }
        let count = routing.nodes.len();
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        for tier in 0..=4 {
            // The n-th eligible node rather than the first eligible one from position n, so that
            // skipped nodes do not double their neighbour's share.
            let eligible_count = (0..count).filter(|&i| eligible(i, tier)).count();
            if eligible_count > 0 {
                let nth = start % eligible_count;
                let index = (0..count).filter(|&i| eligible(i, tier)).nth(nth)?;
                return routing.nodes.get(index).cloned();
            }
        }
        None
    }

    pub fn quarantine(&self, node: &NodeHandle) {
        let millis = u64::try_from(self.config.node_quarantine.as_millis()).unwrap_or(u64::MAX);
        node.quarantined_until
            .store(self.now_ms().saturating_add(millis), Ordering::Relaxed);
    }

    pub fn release(&self, node: &NodeHandle) {
        // Checked first so the common case (never quarantined) does not write a shared line.
        if node.quarantined_until.load(Ordering::Relaxed) != 0 {
            node.quarantined_until.store(0, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        // Starts at 1 so that 0 can mean "not quarantined".
        u64::try_from(self.clock.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

impl NodeHandle {
    fn is_quarantined(&self, now_ms: u64) -> bool {
        self.quarantined_until.load(Ordering::Relaxed) > now_ms
    }
}

/// Handles for a new map's nodes, reusing the previous map's where id and address agree.
fn build_routing(
    config: &ClientConfig,
    topology: Topology,
    previous: Option<&Routing>,
) -> Result<Routing, ClientError> {
    let mut nodes = Vec::with_capacity(topology.nodes.len());
    for info in &topology.nodes {
        let kept = previous.and_then(|p| {
            p.nodes
                .iter()
                .find(|h| h.id == info.id && h.addr == info.grpc_addr)
        });
        let handle = match kept {
            Some(handle) => Arc::clone(handle),
            None => Arc::new(NodeHandle {
                id: info.id.clone(),
                addr: info.grpc_addr.clone(),
                channel: config.channel(&info.grpc_addr)?,
                quarantined_until: AtomicU64::new(0),
            }),
        };
        nodes.push(handle);
    }
    Ok(Routing {
        topology: Arc::new(topology),
        nodes,
    })
}

/// One `GetTopology` call, bounded by `timeout`; the error is a message for the caller's report.
async fn fetch(channel: Channel, config: &ClientConfig) -> Result<Topology, String> {
    let timeout = config.request_timeout;
    let mut request = tonic::Request::new(GetTopologyRequest {});
    request.set_timeout(timeout);
    config.authorize(&mut request);
    let mut client = TopologyClient::new(channel);
    match tokio::time::timeout(timeout, client.get_topology(request)).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(answer)) => Topology::from_wire(answer.into_inner()).map_err(|e| e.to_string()),
    }
}
