//! One Bunting node: its flag source, actor tree, gRPC services and metrics endpoint, started by
//! [`bind`] and run by [`BoundServer::serve`] until a shutdown future completes. The binary and the
//! integration tests use exactly this.
// The wiring: picks the concrete stores the config names (see node/clippy.toml).
#![allow(clippy::disallowed_types)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bunting_actors::{Catalog, Node, NodeConfig, NodeError, ShardServices};
use bunting_cluster::{Cluster, ClusterConfig, ClusterError, ClusterTls, Cookie, NodeId};
use bunting_engine::{CompileOptions, Dialect, FractionalMode};
use bunting_proto::bunting::v1::admin_server::AdminServer;
use bunting_proto::bunting::v1::cluster_admin_server::ClusterAdminServer;
use bunting_proto::bunting::v1::evaluation_server::EvaluationServer;
use bunting_proto::bunting::v1::experiments_server::ExperimentsServer;
use bunting_proto::bunting::v1::rollouts_server::RolloutsServer;
use bunting_proto::bunting::v1::tokens_server::TokensServer;
use bunting_proto::bunting::v1::topology_server::TopologyServer;
use bunting_proto::flagd::evaluation::{v1, v2};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::actor_runtime::ActorRuntime;
use crate::auth::{self, Auth, AuthLayer};
use crate::config::{ClusterSettings, Config, FlagSourceConfig, FractionalConfig};
use crate::dispatch::Dispatch;
use crate::edge::{self, PlaneLayer, Serves};
use crate::experiment_feed;
use crate::feed::{self, Feed};
use crate::metrics_http;
use crate::routing::Routing;
use crate::routing::peer::{MAX_PEER_MESSAGE_BYTES, PeerHandler};
use crate::service::{
    Admin, BulkEvaluation, Evaluator, FlagdSync, FlagdV1, FlagdV2, Gate, Limits, NodeHealth,
    SyncService, TokensService, TopologyService,
};
use crate::service::{ExperimentsService, RolloutsService};
use bunting_experiments::store::EmbeddedStore;
use bunting_stores::breaker::BreakerSettings;
use bunting_stores::experiments::{ExperimentStore, ExperimentStoreError};
use bunting_stores::file::{FileOptions, FileSource, FileSourceError};
use bunting_stores::guarded_events::GuardedEventStore;
use bunting_stores::postgres::{NodeIdLock, NodeLockError, PostgresSettings};
use bunting_stores::rollouts::{Lease, PgLease, PostgresRolloutStore, RolloutStore, SoleLease};
use bunting_stores::scylladb::{ScyllaSettings, ScyllaStore};
use bunting_stores::secret_url::RedactedUrl;
use bunting_stores::shared_tier::{self, SharedTier, SharedTierError};
use bunting_stores::user_state_file::FileUserStates;
use bunting_stores::{AdminStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    FlagFile(#[from] FileSourceError),
    #[error("flag store: {0}")]
    Store(#[from] StoreError),
    /// The running experiments could not be read at start-up from a PostgreSQL that answered.
    #[error("experiment store: {0}")]
    Experiments(#[from] ExperimentStoreError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    SharedTier(#[from] SharedTierError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(String),
    #[error("config: {0}")]
    Config(String),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    FdLimit(#[from] edge::FdLimitError),
    #[error("auth: {0}")]
    Auth(#[from] auth::AuthSetupError),
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Another process runs with this node's cluster id (see `NodeIdLock`).
    #[error(transparent)]
    NodeId(#[from] NodeLockError),
}

/// A node whose sockets are bound and whose actor tree is running, not yet serving.
#[derive(Debug)]
pub struct BoundServer {
    config: Config,
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    /// The admin listener and its address, when `admin_addr` is set.
    admin: Option<(TcpListener, SocketAddr)>,
    metrics: TcpListener,
    metrics_addr: SocketAddr,
    /// The HTTP edge's listener and address, unless `[http] enabled = false`.
    http: Option<(TcpListener, SocketAddr)>,
    node: Arc<Node>,
    feed: Feed,
    /// The admin API's store: the one the feed follows, `None` for a file source.
    store: Option<Arc<dyn AdminStore>>,
    /// `Some` when the node joined a cluster (`[cluster]` in its config).
    routing: Option<Routing>,
    /// The Experiments API's store: on the flag store's database, `None` for a file source.
    experiments: Option<Arc<dyn ExperimentStore>>,
    /// Where the experiment follower starts: the store, or the shared tier when PostgreSQL was
    /// unreachable at start-up.
    experiments_start: experiment_feed::Start,
    /// The rollout store and the controller's lease (see `crate::rollout`); `None` for a file
    /// source or a node that started without PostgreSQL.
    rollouts: Option<RolloutSetup>,
    tier: Option<Arc<dyn shared_tier::SharedTier>>,
    /// The connection caps derived from the open-files limit (`crate::edge`).
    caps: edge::Caps,
    /// Admission, shared by every service and by forwarded peer requests.
    gate: Gate,
    /// Where the actor tree runs (see `actor_runtime.rs`); stopped after the tree.
    actors: ActorRuntime,
    /// Who may call what: the auth layer's policy and the token store it follows.
    auth: Auth,
    /// `true` once the node serves its flag source's flags (see `Feed::Store::loaded`): what
    /// gRPC health reports as SERVING.
    loaded: watch::Receiver<bool>,
    /// This node's cluster id, held on PostgreSQL while the process runs (`None` without a
    /// cluster or without PostgreSQL).
    node_lock: Option<NodeIdLock>,
}

/// How this node compiles flag sets: its `fractional` mode, `[evaluation]` budget and
/// `[definitions]` limits. The file source, the admin store's write check and the feed's snapshot
/// compile all use it, so what one accepts the others serve.
pub fn compile_options(config: &Config) -> CompileOptions {
    CompileOptions {
        dialect: Dialect::Flagd,
        fractional: fractional_mode(config),
        budget: config.evaluation.budget(),
        limits: config.definitions.limits(),
    }
}

/// The node's `fractional` mode (`fractional = "..."`; string by default).
pub fn fractional_mode(config: &Config) -> FractionalMode {
    match config.fractional {
        FractionalConfig::Cbor => FractionalMode::Cbor,
        FractionalConfig::String => FractionalMode::String,
        FractionalConfig::Legacy => FractionalMode::LegacyFloat,
    }
}

/// Stores handed to a node in place of the ones its config names (`[flags]`, `[shared_tier]`):
/// what in-process tests run a node on (`bunting_stores::memory::MemoryAdminStore`,
/// `bunting_stores::shared_tier::MemoryTier`). Everything else comes from the config as usual.
#[derive(Debug, Clone)]
pub struct Stores {
    pub flags: Arc<dyn AdminStore>,
    /// The Experiments API answers UNAVAILABLE without one.
    pub experiments: Option<Arc<dyn ExperimentStore>>,
    /// Rollouts and scheduled changes; with an experiment store too, the node runs the rollout
    /// controller (alone: an in-process node holds its lease unconditionally).
    pub rollouts: Option<Arc<dyn RolloutStore>>,
    pub tier: Option<Arc<dyn SharedTier>>,
}

/// The rollout store and the lease that decides whether this node's controller acts.
#[derive(Debug)]
struct RolloutSetup {
    store: Arc<dyn RolloutStore>,
    lease: Box<dyn Lease>,
}

/// Where the node's catalog, feed and admin stores come from, however they were chosen.
struct Sources {
    catalog: Catalog,
    feed: Feed,
    store: Option<Arc<dyn AdminStore>>,
    loaded: watch::Receiver<bool>,
    experiments: Option<Arc<dyn ExperimentStore>>,
    experiments_start: experiment_feed::Start,
    rollouts: Option<RolloutSetup>,
    tier: Option<Arc<dyn SharedTier>>,
}

/// First, before any store opens a descriptor: the connection caps must fit what is left of the
/// open-files limit.
fn plan_caps(config: &Config) -> Result<edge::fd_limit::Caps, ServerError> {
    let http_connections = if config.http.enabled {
        config.http.max_connections
    } else {
        0
    };
    let admin_cap = config.admin_addr.map_or(0, |_| edge::ADMIN_MAX_CONNECTIONS);
    Ok(edge::fd_limit::plan(
        &config.connections,
        edge::METRICS_MAX_CONNECTIONS + admin_cap,
        http_connections,
    )?)
}

/// Loads the flags, starts the actor tree and binds both ports (port 0 picks a free one).
pub async fn bind(config: Config) -> Result<BoundServer, ServerError> {
    metrics_http::handle();
    let caps = plan_caps(&config)?;
    // First: a second process with a member's id stops before it binds a port or loads a flag.
    let node_lock = node_id_lock(&config).await?;
    // Lazy: an unreachable Redis does not stop the node; a config that cannot work does.
    let tier = shared_tier::connect(&tier_config(&config)).await?;
    let sources = configured_sources(&config, tier).await?;
    finish_bind(config, caps, sources, node_lock).await
}

/// The shared tier's config, its per-user write-ahead log placed in `data_dir` unless the config
/// names one: writes queued during a Redis outage then survive the node being killed.
fn tier_config(config: &Config) -> shared_tier::config::SharedTierConfig {
    let mut tier = config.shared_tier.clone();
    if let (shared_tier::config::SharedTierConfig::Redis(redis), Some(dir)) =
        (&mut tier, &config.data_dir)
        && redis.write_ahead_log.is_none()
    {
        redis.write_ahead_log = Some(dir.join("shared-tier").join("user-writes.log"));
    }
    tier
}

/// How long taking the node id lock waits for PostgreSQL at start-up.
const NODE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes this node's cluster id on PostgreSQL, refusing to start when another process holds it.
/// Only a clustered node whose flags are on PostgreSQL has a database to hold it in; a cluster
/// on flag files relies on the cluster port's duplicate-id log line. A PostgreSQL unreachable at
/// start-up does not stop the node (it serves the shared tier's flags meanwhile): the lock is
/// taken once the database answers, and the node stops if another process got it first.
async fn node_id_lock(config: &Config) -> Result<Option<NodeIdLock>, ServerError> {
    let (Some(cluster), FlagSourceConfig::Postgres { url, .. }) = (&config.cluster, &config.flags)
    else {
        return Ok(None);
    };
    let node_id = NodeId::new(cluster.node_id.clone())
        .map_err(|e| ServerError::Config(format!("cluster.node_id: {e}")))?;
    match NodeIdLock::take(url.expose(), node_id.as_str(), NODE_LOCK_TIMEOUT).await {
        Ok(lock) => Ok(Some(lock)),
        Err(NodeLockError::Store(StoreError::Unavailable { source })) => {
            tracing::warn!(
                node = %node_id,
                error = %source,
                "PostgreSQL is unreachable: starting without this node's id lock; it is taken \
                 once the database answers"
            );
            Ok(Some(NodeIdLock::pending(
                url.expose(),
                node_id.as_str(),
                NODE_LOCK_TIMEOUT,
            )?))
        }
        Err(e) => Err(e.into()),
    }
}

/// [`bind`] on `stores` instead of the flag source and shared tier the config names.
pub async fn bind_with(config: Config, stores: Stores) -> Result<BoundServer, ServerError> {
    metrics_http::handle();
    let caps = plan_caps(&config)?;
    let options = compile_options(&config);
    let catalog = feed::store_catalog(stores.flags.as_ref(), &options).await?;
    let (loaded_tx, loaded) = watch::channel(true);
    let sources = Sources {
        catalog,
        feed: Feed::Store {
            store: stores.flags.clone(),
            options,
            version_check: INJECTED_VERSION_CHECK,
            tier: stores.tier.clone(),
            loaded: loaded_tx,
        },
        store: Some(stores.flags),
        loaded,
        experiments: stores.experiments,
        experiments_start: experiment_feed::Start::Store,
        rollouts: stores.rollouts.map(|store| RolloutSetup {
            store,
            lease: Box::new(SoleLease),
        }),
        tier: stores.tier,
    };
    finish_bind(config, caps, sources, None).await
}

/// How often a node on injected stores re-reads their versions (PostgreSQL's default is 10 s;
/// a memory store's notices are never lost, so this only bounds a test's worst case).
const INJECTED_VERSION_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The flag source and experiment store the config names.
async fn configured_sources(
    config: &Config,
    tier: Option<Arc<dyn SharedTier>>,
) -> Result<Sources, ServerError> {
    let options = compile_options(config);
    let mut experiments: Option<Arc<dyn ExperimentStore>> = None;
    let mut rollouts: Option<RolloutSetup> = None;
    let mut experiments_start = experiment_feed::Start::Store;
    let (catalog, feed, admin_store, loaded) = match &config.flags {
        FlagSourceConfig::File {
            path,
            set,
            broken_flags,
        } => {
            let source = FileSource::open(
                path.clone(),
                FileOptions {
                    compile: options,
                    broken_flags: *broken_flags,
                },
            )?;
            let catalog = feed::file_catalog(&source, set);
            tracing::info!(path = %path.display(), flags = source.current().flag_set.len(), "serving flags from a file");
            (
                catalog,
                Feed::File {
                    set: set.as_str().into(),
                    watch: source.watch(),
                },
                None,
                // The file compiled (or the node would not start): its flags are loaded.
                watch::channel(true).1,
            )
        }
        FlagSourceConfig::Postgres { url, version_check } => {
            let settings = PostgresSettings {
                compile: options,
                ..PostgresSettings::default()
            };
            let start = feed::start_store(url, settings, tier.as_ref()).await?;
            // Without PostgreSQL the experiment store is a pending one (the Experiments API
            // answers UNAVAILABLE until it connects) and the running experiments come from the
            // shared tier meanwhile.
            experiments = Some(start.experiments);
            rollouts = start.postgres.as_ref().map(|postgres| RolloutSetup {
                store: Arc::new(PostgresRolloutStore::new(postgres)),
                lease: Box::new(PgLease::new(postgres)),
            });
            if start.pending {
                experiments_start = experiment_feed::Start::SharedTier;
            }
            let (catalog, store) = (start.catalog, start.store);
            tracing::info!(sets = catalog.sets().count(), "flag sets at start-up");
            // A pending start serves the tier's snapshots (possibly none): not yet the flags
            // PostgreSQL holds, so not yet SERVING.
            let (loaded_tx, loaded) = watch::channel(!start.pending);
            (
                catalog,
                Feed::Store {
                    store: store.clone(),
                    options,
                    version_check: *version_check,
                    tier: tier.clone(),
                    loaded: loaded_tx,
                },
                Some(store),
                loaded,
            )
        }
    };
    Ok(Sources {
        catalog,
        feed,
        store: admin_store,
        loaded,
        experiments,
        experiments_start,
        rollouts,
        tier,
    })
}

/// Everything after the stores: tokens, the actor tree, the listeners, the cluster.
async fn finish_bind(
    config: Config,
    caps: edge::fd_limit::Caps,
    sources: Sources,
    node_lock: Option<NodeIdLock>,
) -> Result<BoundServer, ServerError> {
    let Sources {
        catalog,
        feed,
        store: admin_store,
        loaded,
        experiments,
        experiments_start,
        rollouts,
        tier,
    } = sources;
    // After the flag store: on PostgreSQL, its migrations have created the token table.
    let auth = auth::start(&config).await?;
    let actors = ActorRuntime::start(config.actor_threads)
        .map_err(|e| ServerError::Config(format!("cannot start the actors' runtime: {e}")))?;
    let node_config = NodeConfig {
        shards: config.shards,
        default_set: config.default_set.clone(),
        owns_all_at_start: config.cluster.is_none(),
        ..NodeConfig::default()
    };
    let listen = |addr: SocketAddr| async move {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok::<_, ServerError>((listener, local))
    };
    let (grpc, grpc_addr) = listen(config.grpc_addr).await?;
    let (metrics, metrics_addr) = listen(config.metrics_addr).await?;
    let http = match config.http.enabled {
        true => Some(listen(config.http_addr).await?),
        false => None,
    };
    let admin = match config.admin_addr {
        Some(addr) => Some(listen(addr).await?),
        None => None,
    };
    // Last of what can refuse a start: the ports are bound and the flags loaded, so a node that
    // does not start leaves no data directory behind.
    let services = shard_services(&config, tier.clone()).await?;
    let node = Arc::new(
        actors
            .run(Node::start_with(node_config, catalog, services))
            .await
            .map_err(|e| ServerError::Config(format!("the actor tree failed to start: {e}")))??,
    );
    let gate = Gate::new(Limits {
        max_concurrent_requests: config.max_concurrent_requests,
        max_streams: config.max_streams.get(),
        max_context_bytes: config.max_context_bytes,
        max_looping_evaluations: config.evaluation.max_looping_evaluations.get(),
    });
    let routing = match &config.cluster {
        Some(settings) => Some(
            join_cluster(
                settings,
                &config,
                grpc_addr,
                // Peers' requests are served on this node only (never forwarded again), through
                // the same dispatch, so they pass the same admission.
                PeerHandler::new(Dispatch::new(
                    node.clone(),
                    gate.clone(),
                    config.max_bulk_evaluations,
                )),
            )
            .await?,
        ),
        None => None,
    };
    Ok(BoundServer {
        config,
        grpc,
        grpc_addr,
        admin,
        metrics,
        metrics_addr,
        http,
        node,
        feed,
        store: admin_store,
        routing,
        experiments,
        experiments_start,
        rollouts,
        tier,
        caps,
        gate,
        actors,
        auth,
        loaded,
        node_lock,
    })
}

/// Where the shards keep per-user state and experiment statistics: the shared tier when there is
/// one (a shard's next owner on another node finds its users there), else `data_dir`, else memory.
async fn shard_services(
    config: &Config,
    tier: Option<Arc<dyn shared_tier::SharedTier>>,
) -> Result<ShardServices, ServerError> {
    let mut services = ShardServices::in_memory();
    let events =
        |e: bunting_experiments::EventStoreError| ServerError::Config(format!("event store: {e}"));
    if let Some(scylla) = &config.scylla {
        let mut settings = ScyllaSettings::new(scylla.known_nodes.clone(), scylla.keyspace.clone());
        settings.replication_factor = scylla.replication_factor;
        settings.timeout = Duration::from_millis(scylla.timeout_ms);
        let store = Arc::new(ScyllaStore::connect(&settings).await.map_err(events)?);
        services.events = Arc::new(GuardedEventStore::new(
            store,
            BreakerSettings {
                failure_threshold: scylla.failure_threshold,
                open_for: Duration::from_millis(scylla.open_for_ms),
            },
            RedactedUrl::new(scylla.known_nodes.first().map_or("", String::as_str)),
        ));
    } else if let Some(dir) = &config.data_dir {
        services.events = Arc::new(EmbeddedStore::open(dir.join("events")).map_err(events)?);
    }
    if let Some(tier) = tier {
        services.user_states = Arc::new(shared_tier::TierUserStates(tier));
    } else if let Some(dir) = &config.data_dir {
        services.user_states = Arc::new(
            FileUserStates::open(dir).map_err(|e| ServerError::Config(format!("data_dir: {e}")))?,
        );
    }
    Ok(services)
}

/// Starts membership: the cluster port, the seeds, the forwarded-evaluation handler.
async fn join_cluster(
    settings: &ClusterSettings,
    config: &Config,
    grpc_addr: SocketAddr,
    peers: PeerHandler,
) -> Result<Routing, ServerError> {
    let cookie = match &settings.cookie_file {
        Some(path) => Cookie::from_file(path),
        None => Cookie::from_env(&settings.cookie_env),
    }
    .map_err(|e| ServerError::Config(format!("cluster cookie: {e}")))?;
    let node_id = NodeId::new(settings.node_id.clone())
        .map_err(|e| ServerError::Config(format!("cluster.node_id: {e}")))?;
    let advertise = settings
        .advertise_grpc
        .clone()
        .unwrap_or_else(|| grpc_addr.to_string());
    let mut cluster_config = ClusterConfig::new(node_id, settings.listen, advertise, cookie);
    cluster_config.seeds = settings.seeds.clone();
    cluster_config.shards = config.shards;
    // Checked at join: a node speaking another peer protocol never becomes a member.
    cluster_config.peer_protocol = crate::routing::peer::PEER_PROTOCOL_VERSION;
    cluster_config.vnodes_per_node = settings.vnodes_per_node;
    cluster_config.heartbeat_interval = Duration::from_millis(settings.heartbeat_interval_ms);
    cluster_config.failure_timeout = Duration::from_millis(settings.failure_timeout_ms);
    cluster_config.max_payload_bytes = MAX_PEER_MESSAGE_BYTES;
    cluster_config.advertise_cluster = settings.advertise_cluster;
    if let Some(tls) = &settings.tls {
        cluster_config.tls = Some(
            ClusterTls::from_pem_files(&tls.cert, &tls.key, &tls.ca, tls.name.as_deref())
                .map_err(|e| ServerError::Config(format!("cluster.tls: {e}")))?,
        );
    }
    let cluster = Cluster::start(cluster_config, Arc::new(peers)).await?;
    tracing::info!(node = %cluster.local_id(), cluster = %cluster.cluster_addr(), "joined the cluster");
    Ok(Routing::new(
        cluster,
        config.shards,
        Duration::from_millis(settings.forward_timeout_ms),
    ))
}

impl BoundServer {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The admin listener's address, when `admin_addr` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The HTTP edge's address, unless it is disabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, addr)| *addr)
    }

    /// The cluster handle, when the node joined one.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.routing.as_ref().map(Routing::cluster)
    }

    /// The gRPC address clients are told to dial.
    fn advertised_grpc(&self) -> String {
        self.config
            .cluster
            .as_ref()
            .and_then(|c| c.advertise_grpc.clone())
            .unwrap_or_else(|| self.grpc_addr.to_string())
    }

    /// Serves until `shutdown` completes, then ends the streams, drains in-flight requests and
    /// stops the actor tree.
    pub async fn serve(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        // Losing the node id to another process (see `NodeIdLock`) shuts the node down like a
        // signal does, and `serve` then returns the error.
        let node_lock = self.node_lock.take().map(Arc::new);
        let (lost_tx, mut lost_rx) = tokio::sync::oneshot::channel();
        let shutdown = {
            let node_lock = node_lock.clone();
            async move {
                match node_lock {
                    Some(lock) => tokio::select! {
                        () = shutdown => {}
                        error = lock.lost() => {
                            tracing::error!(%error, "stopping: this node's id is taken");
                            let _ = lost_tx.send(error);
                        }
                    },
                    None => shutdown.await,
                }
            }
        };
        let advertised = self.advertised_grpc();
        let http_addr = self.http_addr();
        let (closing_tx, closing) = watch::channel(false);
        let closing_watch = closing.clone();
        // NOT_SERVING until the flags are loaded, and from the moment shutdown begins.
        let health = NodeHealth::new().await;
        let health_service = health.service(closing.clone());
        let (reflection_v1, reflection_v1alpha) = crate::service::reflection()?;
        let health_task = tokio::spawn(health.clone().follow(self.loaded.clone(), closing.clone()));
        let feed_task = tokio::spawn(feed::run(self.feed, self.node.clone(), closing.clone()));
        let metrics_task = tokio::spawn(metrics_http::serve(
            self.metrics,
            closing.clone(),
            self.config
                .auth
                .metrics_token_required
                .then(|| self.auth.policy.clone()),
        ));
        let tokens_task = self.auth.store.clone().map(|store| {
            tokio::spawn(auth::store::follow(
                store,
                self.auth.policy.registry().clone(),
                self.auth.pending_bootstrap.clone(),
                closing.clone(),
            ))
        });
        let experiments_task = match &self.experiments {
            Some(store) => Some(
                follow_experiments(
                    store.clone(),
                    self.tier.clone(),
                    self.experiments_start,
                    self.node.clone(),
                    closing.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let ownership_task = self.routing.clone().map(|routing| {
            let alone_after = self.config.cluster.as_ref().map_or(Duration::ZERO, |c| {
                Duration::from_millis(c.failure_timeout_ms + c.heartbeat_interval_ms)
            });
            tokio::spawn(crate::routing::follow_ownership(
                routing,
                self.node.clone(),
                alone_after,
            ))
        });
        // The one path from every client-facing service to the actor tree.
        let dispatch = Dispatch::new(
            self.node.clone(),
            self.gate.clone(),
            self.config.max_bulk_evaluations,
        )
        .routed(self.routing.clone());
        // One controller per node: its loop acts while this node holds the lease, and the
        // Rollouts API calls the same operations on it whichever node the caller reached.
        let (rollouts_api, rollout_task) = match (self.rollouts, &self.store, &self.experiments) {
            (Some(setup), Some(flags), Some(experiments)) => {
                let controller = rollout_controller(
                    setup.store,
                    flags.clone(),
                    experiments.clone(),
                    dispatch.clone(),
                );
                let task =
                    spawn_rollout_controller(controller.clone(), setup.lease, closing.clone());
                (Some(controller), Some(task))
            }
            _ => (None, None),
        };
        let drain_timeout = Duration::from_millis(self.config.drain_timeout_ms.get());
        // The HTTP edge: the same dispatch and the same policy as the gRPC services.
        let http_task = self.http.map(|(listener, _)| {
            let edge = crate::http::Edge::new(
                dispatch.clone(),
                self.auth.policy.clone(),
                self.config.http.clone(),
                fractional_mode(&self.config).as_str(),
                closing.clone(),
                self.loaded.clone(),
                crate::http::console::Console {
                    // Only where the admin API shares the client-facing ports (see there).
                    enabled: self.admin.is_none(),
                    compile: compile_options(&self.config),
                    admin: Admin::new(self.store.clone(), &self.config.flags),
                    tokens: TokensService::new(
                        self.auth.store.clone(),
                        self.auth.policy.registry().clone(),
                    ),
                    cluster: TopologyService::new(
                        self.routing.clone(),
                        advertised.clone(),
                        self.config.shards,
                    ),
                    experiments: ExperimentsService::new(
                        self.experiments.clone(),
                        &self.config.flags,
                        dispatch.clone(),
                    ),
                    sessions: crate::http::console::session::Sessions::new(Default::default()),
                },
            );
            tokio::spawn(crate::http::serve(
                listener,
                edge::http_limits(&self.config.connections, &self.caps),
                self.config.http.clone(),
                crate::http::router(edge),
                closing.clone(),
                drain_timeout,
            ))
        });
        let evaluator = Evaluator::new(dispatch.clone(), closing);
        let sync = SyncService::new(
            FlagdSync(evaluator.clone(), fractional_mode(&self.config)),
            Duration::from_millis(self.config.stream_lag_ms.get()),
        )
        .map_err(|e| ServerError::Config(format!("sync context: {}", e.message())))?;
        let topology = TopologyService::new(self.routing.clone(), advertised, self.config.shards);
        let bulk = BulkEvaluation::new(dispatch.clone());
        let admin = Admin::new(self.store.clone(), &self.config.flags);
        let experiments =
            ExperimentsService::new(self.experiments.clone(), &self.config.flags, dispatch);
        let tls = tls_config(&self.config)?;
        let (public_serves, admin_serves) = match &self.admin {
            Some((_, admin)) => (
                Serves::ClientOnly { admin: *admin },
                Some(Serves::AdminOnly {
                    grpc: self.grpc_addr,
                }),
            ),
            None => (Serves::Everything, None),
        };
        // Both listeners get the same stack: stream counting, the plane check, one auth layer
        // (tokens are needed on the admin listener too), the same HTTP/2 and TLS settings.
        let auth_layer = AuthLayer::new(self.auth.policy.clone());
        let server = |serves: Serves| -> Result<_, ServerError> {
            let builder = edge::tune(
                tonic::transport::Server::builder(),
                &self.config.connections,
            )
            .layer(edge::TrackStreamsLayer)
            // Outside auth: a call to the wrong listener is refused before its token is read.
            .layer(PlaneLayer(serves))
            // Every service below is behind it: one place authenticates and authorizes.
            .layer(auth_layer.clone());
            match &tls {
                Some(tls) => builder
                    .tls_config(tls.clone())
                    .map_err(|e| ServerError::Tls(e.to_string())),
                None => Ok(builder),
            }
        };
        tracing::info!(
            grpc = %self.grpc_addr,
            admin = ?self.admin.as_ref().map(|(_, addr)| *addr),
            metrics = %self.metrics_addr,
            http = ?http_addr,
            "node serving"
        );
        let drain = (closing_watch, drain_timeout);
        let admin_server = AdminServer::new(admin);
        let experiments_server = ExperimentsServer::new(experiments);
        let rollouts_server =
            RolloutsServer::new(RolloutsService::new(rollouts_api, &self.config.flags));
        let cluster_admin_server = ClusterAdminServer::new(topology.clone());
        let tokens_server = TokensServer::new(TokensService::new(
            self.auth.store.clone(),
            self.auth.policy.registry().clone(),
        ));
        let mut public = server(public_serves)?
            .add_service(v1::service_server::ServiceServer::new(FlagdV1(
                evaluator.clone(),
            )))
            .add_service(v2::service_server::ServiceServer::new(FlagdV2(
                evaluator.clone(),
            )))
            .add_service(sync)
            .add_service(EvaluationServer::new(bulk))
            // Track is client traffic: Experiments stays here, its other methods refused by
            // the plane layer when there is an admin listener.
            .add_service(experiments_server.clone())
            .add_service(TopologyServer::new(topology))
            .add_service(health_service.clone())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        if admin_serves.is_none() {
            public = public
                .add_service(admin_server.clone())
                .add_service(rollouts_server.clone())
                .add_service(cluster_admin_server.clone())
                .add_service(tokens_server.clone());
        }
        let public = public.serve_with_incoming_shutdown(
            edge::incoming(
                self.grpc,
                edge::grpc_limits(&self.config.connections, &self.caps),
            ),
            async move {
                shutdown.await;
                tracing::info!("shutting down: closing streams, draining requests");
                // Before the streams close: health watchers see NOT_SERVING first.
                health.set(false).await;
                let _ = closing_tx.send(true);
            },
        );
        let admin_served = match (self.admin, admin_serves) {
            (Some((listener, _)), Some(serves)) => {
                let mut closing = drain.0.clone();
                Some(
                    server(serves)?
                        .add_service(admin_server)
                        .add_service(rollouts_server)
                        .add_service(experiments_server)
                        .add_service(cluster_admin_server)
                        .add_service(tokens_server)
                        // Probes of the admin listener see the same health.
                        .add_service(health_service)
                        .serve_with_incoming_shutdown(
                            edge::incoming(listener, edge::admin_limits(&self.config.connections)),
                            async move { crate::closing::closed(&mut closing).await },
                        ),
                )
            }
            _ => None,
        };
        let served = async move {
            let (public, admin) = tokio::join!(public, async move {
                match admin_served {
                    Some(served) => served.await,
                    None => Ok(()),
                }
            });
            public.and(admin)
        };
        let served = crate::closing::bounded_drain(served, drain.0, drain.1)
            .await
            .unwrap_or(Ok(()));
        let _ = feed_task.await;
        let _ = metrics_task.await;
        if let Some(task) = http_task {
            let _ = task.await;
        }
        let _ = health_task.await;
        if let Some(task) = tokens_task {
            let _ = task.await;
        }
        // Leave the cluster before the actors stop, so peers move this node's shards at once
        // instead of waiting out the failure timeout.
        if let Some(routing) = self.routing {
            routing.cluster().clone().shutdown().await;
        }
        if let Some(task) = ownership_task {
            task.abort();
        }
        if let Some(task) = experiments_task {
            let _ = task.await;
        }
        if let Some(task) = rollout_task {
            let _ = task.await;
        }
        // Statistics not yet flushed are written before the actors stop: a graceful shutdown
        // loses no counted event.
        if let Err(e) = self.node.flush().await {
            tracing::warn!(error = %e, "final flush of experiment statistics failed");
        }
        self.node.shutdown().await;
        // The tree has stopped; its runtime goes now rather than whenever `self` is dropped.
        drop(self.actors);
        // Held to the end: the id is free for a successor only once this process is done.
        drop(node_lock);
        if let Ok(error) = lost_rx.try_recv() {
            return Err(error.into());
        }
        served.map_err(ServerError::from)
    }
}

/// The gRPC TLS settings from `[tls]`, for both listeners; `None` without TLS.
fn tls_config(config: &Config) -> Result<Option<tonic::transport::ServerTlsConfig>, ServerError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let cert = std::fs::read(&tls.cert)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.cert.display())))?;
    let key = std::fs::read(&tls.key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.key.display())))?;
    // rustls cannot pick a crypto provider by itself when both its `ring` and `aws-lc-rs`
    // features are on, as they are once ractor_cluster (tokio-rustls with default features)
    // is in the build; tonic's server config asks for the process default, so name it:
    // ring, the provider tonic's `tls-ring` uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut server = tonic::transport::ServerTlsConfig::new();
    if let Some(ca) = &tls.client_ca {
        let pem = std::fs::read(ca)
            .map_err(|e| ServerError::Tls(format!("tls.client_ca {}: {e}", ca.display())))?;
        // Required, not optional: a connection without a certificate from this CA fails its
        // handshake, so every request that reaches the auth layer has a verified one.
        server = server.client_ca_root(tonic::transport::Certificate::from_pem(pem));
    }
    Ok(Some(
        server
            .identity(tonic::transport::Identity::from_pem(cert, key))
            // The whole handshake, not just its first bytes, within the header-read
            // timeout: a client stalling mid-handshake has no stream to be idle from.
            .timeout(Duration::from_millis(
                config.connections.header_read_timeout_ms,
            )),
    ))
}

/// Installs the running experiments in the actor tree now, then on every change until `closing`.
async fn follow_experiments(
    store: Arc<dyn ExperimentStore>,
    tier: Option<Arc<dyn shared_tier::SharedTier>>,
    start: experiment_feed::Start,
    node: Arc<Node>,
    closing: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let feed = experiment_feed::follow(store, tier, start, EXPERIMENT_CHECK, closing).await?;
    let mut catalog = feed.catalog;
    let first = catalog.borrow_and_update().clone();
    node.install_experiments(first).await?;
    Ok(tokio::spawn(async move {
        while catalog.changed().await.is_ok() {
            let next = catalog.borrow_and_update().clone();
            tracing::info!(running = next.len(), "running experiments changed");
            if let Err(e) = node.install_experiments(next).await {
                tracing::warn!(error = %e, "could not install the running experiments");
            }
        }
        let _ = feed.task.await;
    }))
}

/// How often a node re-reads the running experiments besides the change notifications.
const EXPERIMENT_CHECK: Duration = Duration::from_secs(5);

/// Binds and serves: what `bunting serve` runs.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    bind(config).await?.serve(shutdown).await
}

/// The environment variable naming the rollback webhook (`http://host:port/path`). An environment
/// variable, not a config key: such URLs carry their secret in the path, and config files get
/// committed.
pub const ROLLOUT_WEBHOOK_ENV: &str = "BUNTING_ROLLOUT_WEBHOOK";

/// The node's rollout controller over its stores, with the rollback webhook if one is set.
fn rollout_controller(
    store: Arc<dyn RolloutStore>,
    flags: Arc<dyn AdminStore>,
    experiments: Arc<dyn ExperimentStore>,
    dispatch: Dispatch,
) -> crate::rollout::Controller {
    let webhook = match std::env::var(ROLLOUT_WEBHOOK_ENV) {
        Ok(raw) if !raw.is_empty() => {
            match crate::rollout::webhook::Webhook::parse(
                &raw,
                crate::rollout::webhook::DEFAULT_TIMEOUT,
            ) {
                Ok(hook) => Some(hook),
                Err(e) => {
                    // The error names no part of the URL (it may hold a secret).
                    tracing::error!(error = %e, "{ROLLOUT_WEBHOOK_ENV} refused: rollbacks will not be posted");
                    None
                }
            }
        }
        _ => None,
    };
    crate::rollout::Controller::new(
        flags,
        store,
        Arc::new(crate::rollout::counts::NodeCounts::new(
            experiments,
            dispatch,
        )),
        webhook,
    )
}

/// Runs the rollout controller until `closing`: every node with PostgreSQL runs the loop, and the
/// lease lets one of them act.
fn spawn_rollout_controller(
    controller: crate::rollout::Controller,
    lease: Box<dyn Lease>,
    mut closing: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(crate::rollout::run(
        controller,
        lease,
        crate::rollout::TICK,
        async move {
            let _ = closing.wait_for(|closed| *closed).await;
        },
    ))
}
