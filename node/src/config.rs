//! A node's configuration: a TOML file (`bunting serve --config FILE`), every field defaulted so
//! `bunting serve` with no file runs one node on the embedded defaults.

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use bunting_stores::file::BrokenFlags;
use bunting_stores::secret_url::{SecretUrl, redact_urls};
pub use bunting_stores::shared_tier::config::{RedisTierConfig, SharedTierConfig};

/// Where a node's flags come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum FlagSourceConfig {
    /// A watched flagd flag file (the embedded default): edits are served as they are saved.
    File {
        path: PathBuf,
        /// The flag set id the file's flags belong to.
        #[serde(default = "default_set")]
        set: String,
        /// `refuse` (default): a file with a flag that cannot be compiled is refused and the last
        /// good flags keep serving. `serve`: serve it, the broken flag answering `PARSE_ERROR`,
        /// exactly as flagd does.
        #[serde(default)]
        broken_flags: BrokenFlags,
    },
    /// PostgreSQL: flag sets edited through the admin API, changes pushed with LISTEN/NOTIFY.
    Postgres {
        url: SecretUrl,
        /// How often to compare versions with the database, repairing any missed notification.
        #[serde(default = "default_version_check", with = "seconds")]
        version_check: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A PEM file of the CA(s) client certificates must be signed by. Set, every connection to
    /// the gRPC port (and the admin listener) must present one, or its handshake is refused; the
    /// certificate's subject names the caller through `[[auth.certificates]]`. Absent: no client
    /// certificates.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[[auth.certificates]]`: what callers presenting a client certificate with `subject` may do
/// when they send no token (ARCHITECTURE.md, "Security model").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateGrant {
    /// The certificate's full subject DN, attributes in certificate order with `, ` between them:
    /// `CN=deployer`, `CN=deployer, O=Acme`. Compared exactly.
    pub subject: String,
    /// Scopes, as a token's (`flags:write`, `cluster:read`, ...).
    pub scopes: Vec<String>,
    /// The flag sets it may touch; absent: every set.
    #[serde(default)]
    pub flag_sets: Option<Vec<String>>,
}

/// How `fractional` hashes (see `bunting_engine::FractionalMode`). `string`, the default, agrees
/// with the flagd server and the Go, Java, JavaScript and .NET providers; `cbor` with the Python
/// (0.6) and Rust (0.3) in-process providers. Every node of a fleet, and every in-process client
/// syncing from it, must use one mode, or users land in different arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FractionalConfig {
    Cbor,
    #[default]
    String,
    Legacy,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The gRPC port: every service, or only the client-facing ones (evaluation, sync, bulk,
    /// topology, Track) when `admin_addr` is set (flagd's default is 8013).
    pub grpc_addr: SocketAddr,
    /// A listener of its own for administration: Admin, Tokens, ClusterAdmin and the
    /// Experiments API but for Track. Set, those are served there only and refused on
    /// `grpc_addr` (which then serves client traffic only), so the admin port can be firewalled
    /// apart and stays reachable when the public port is flooded. Absent (the default): one port
    /// serves everything. Tokens are still required, and `[tls]` applies to both.
    pub admin_addr: Option<SocketAddr>,
    /// Prometheus scrapes `http://<metrics_addr>/metrics`.
    pub metrics_addr: SocketAddr,
    /// The HTTP edge (`[http]`, `crate::http`): OFREP, event streams, flag-set definitions for
    /// CDNs, health. flagd serves OFREP on 8016 too.
    pub http_addr: SocketAddr,
    /// `[http]`: the HTTP edge's caching, CORS and limits (see [`HttpConfig`]).
    pub http: HttpConfig,
    pub shards: u32,
    /// The flag set a request that names none (flagd's selector) evaluates against.
    pub default_set: String,
    /// Evaluation contexts larger than this (encoded size, bytes) are refused.
    pub max_context_bytes: usize,
    /// Requests admitted at once; more wait. Bounds the work in the actors' unbounded mailboxes.
    pub max_concurrent_requests: usize,
    /// The most evaluations (subjects × flags) one `bunting.v1.Evaluation/EvaluateBulk` call may
    /// ask for; a larger call is refused with INVALID_ARGUMENT. Bounds the work and the response
    /// size one admitted request can cause.
    pub max_bulk_evaluations: usize,
    pub fractional: FractionalConfig,
    pub flags: FlagSourceConfig,
    pub tls: Option<TlsConfig>,
    /// Absent: a single node. Present: this node joins a cluster (see [`ClusterSettings`]).
    pub cluster: Option<ClusterSettings>,
    /// Where a node keeps what must survive a restart without external stores: per-user
    /// experiment state (`users/`, when there is no shared tier) and experiment statistics
    /// (`events/`, when there is no `[scylla]`). Absent: in memory, for as long as the process runs.
    pub data_dir: Option<PathBuf>,
    pub shared_tier: SharedTierConfig,
    /// Experiment statistics in ScyllaDB (a cluster's nodes share them there).
    pub scylla: Option<ScyllaConfig>,
    /// `[connections]`: limits and timeouts for client connections (see [`ConnectionsConfig`]).
    pub connections: ConnectionsConfig,
    /// Worker threads of a tokio runtime of the actor tree's own; 0 (the default) runs the actors
    /// on the server's runtime, which saves every request a hop between runtimes
    /// (`actor_runtime.rs` says when a runtime of their own is worth it).
    pub actor_threads: usize,
    /// `[evaluation]`: what one flag evaluation may cost (see [`EvaluationConfig`]).
    pub evaluation: EvaluationConfig,
    /// `[definitions]`: how large a flag set may be (see [`DefinitionsConfig`]).
    pub definitions: DefinitionsConfig,
    /// Streams (flagd `EventStream` v1/v2 and `SyncFlags`) open at once; more are refused with
    /// RESOURCE_EXHAUSTED. Separate from `max_concurrent_requests`: a stream lives for hours.
    pub max_streams: NonZeroUsize,
    /// A `SyncFlags` subscriber that has not taken the version it was sent for this long
    /// (milliseconds) while a newer one is ready is dropped with UNAVAILABLE (its provider
    /// reconnects and gets the newest version), so no node holds versions for a reader that
    /// does not read.
    pub stream_lag_ms: NonZeroU64,
    /// At shutdown, how long (milliseconds) in-flight requests and streams get to finish before
    /// the remaining connections are closed: a peer that does not read would otherwise hold the
    /// node up for ever.
    pub drain_timeout_ms: NonZeroU64,
    /// `[auth]`: tokens, and which methods callers without one may use (see [`AuthConfig`]).
    pub auth: AuthConfig,
}

/// `[auth]`: who may call what (ARCHITECTURE.md, "Security model"). Admin, experiment writes and
/// reads, tokens and cluster administration always need a token. Evaluation and sync need one too
/// on a PostgreSQL-backed or clustered node unless opened here; a file-backed single node serves
/// them without one (its flags are a local file anyway), unless closed here. Track needs a token
/// unless `open_track = true`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// flagd evaluation (v1, v2), bulk evaluation and the topology without a token: for stock
    /// providers that cannot send an `authorization` header. Default: open only on a file-backed
    /// single node.
    pub open_evaluation: Option<bool>,
    /// flagd sync (every rule of a set) without a token. Not implied by `open_evaluation`.
    /// Default: as `open_evaluation`'s.
    pub open_sync: Option<bool>,
    /// Experiments.Track without a token. Default: closed.
    pub open_track: Option<bool>,
    /// A file-backed node's tokens: a JSON array of hashed entries (`bunting tokens generate
    /// --name ...` prints one). Read at start-up.
    pub tokens_file: Option<PathBuf>,
    /// A file holding the first admin token's secret (`bunting tokens generate`), recorded only
    /// while the token table is empty. The environment variable `BUNTING_BOOTSTRAP_TOKEN` takes
    /// precedence. On a file-backed node it is accepted from memory at every start.
    pub bootstrap_token_file: Option<PathBuf>,
    /// `GET /metrics` only with `authorization: Bearer <token>` of a token with scope
    /// cluster:read (401 without a usable token, 403 without the scope). Default: anonymous.
    pub metrics_token_required: bool,
    /// Writes (flags, experiments, tokens, cluster administration) one token may make per second
    /// on one node, with a burst of as many; more are answered RESOURCE_EXHAUSTED. Default: no
    /// limit.
    pub write_rate_per_second: Option<std::num::NonZeroU32>,
    /// Track calls one token (or all callers without one, together) may make per second on one
    /// node, likewise. Default: no limit.
    pub track_rate_per_second: Option<std::num::NonZeroU32>,
    /// Client certificates' subjects mapped to scopes and flag sets (needs `[tls] client_ca`). A
    /// request with a verified certificate and no token is the mapped subject's principal
    /// (`cert:<subject>` in the audit log); a subject no entry names has no scopes. A token, when
    /// sent, takes precedence.
    pub certificates: Vec<CertificateGrant>,
    /// The bootstrap token given in code (tests, embedding); never read from the file.
    #[serde(skip)]
    pub bootstrap_token: Option<crate::auth::ApiToken>,
}

impl AuthConfig {
    /// What is open, for a node that is (`zero_config`) or is not a file-backed single node.
    pub fn open(&self, zero_config: bool) -> crate::auth::Open {
        let evaluation = self.open_evaluation.unwrap_or(zero_config);
        crate::auth::Open {
            evaluation,
            // Whole rule sets: opened by its own setting, or by the zero-config default only.
            sync: self.open_sync.unwrap_or(zero_config),
            track: self.open_track.unwrap_or(false),
        }
    }
}

/// `[http]`: the HTTP edge (`crate::http`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the HTTP edge at all (on `http_addr`).
    pub enabled: bool,
    /// `Cache-Control: max-age` (seconds) of a bulk OFREP evaluation. Private: the answer is one
    /// caller's. 0: revalidate every time (the ETag makes that cheap).
    pub evaluation_max_age_secs: u32,
    /// `stale-while-revalidate` (seconds) of a bulk evaluation: how long a client may use an
    /// answer past its max-age while it revalidates in the background.
    pub stale_while_revalidate_secs: u32,
    /// `Cache-Control: public, max-age` (seconds) of a flag set's definition (`GET
    /// /v1/flag-sets/{set}`): how stale a CDN's copy may be.
    pub definition_max_age_secs: u32,
    /// Origins (`https://app.example.com`) whose pages may call the edge from a browser (CORS).
    /// `["*"]` allows any page; empty (the default): none.
    pub cors_allowed_origins: Vec<String>,
    /// Connections the HTTP listener keeps open at once; more are closed at accept.
    pub max_connections: usize,
    /// Bytes of one request's head (request line and headers); larger is refused.
    pub max_header_bytes: usize,
    /// SSE and WebSocket change streams open at once on this listener (they also count against
    /// the node's `max_streams`).
    pub max_event_streams: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            evaluation_max_age_secs: 0,
            stale_while_revalidate_secs: 30,
            definition_max_age_secs: 5,
            cors_allowed_origins: Vec::new(),
            max_connections: 4096,
            max_header_bytes: 16 * 1024,
            max_event_streams: 10_000,
        }
    }
}

/// `[evaluation]`: the engine's budget for one evaluation (`bunting_engine::Budget`). A rule
/// that runs past it fails that one evaluation with flagd's GENERAL error, counted in
/// `bunting_evaluation_budget_exceeded_total{flag_set, flag, budget}`; a rule whose constants show
/// it must run past it is refused when the flag set is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Rule nodes evaluated plus elements scanned (a step per 8), per evaluation.
    pub max_steps: NonZeroU64,
    /// Bytes of values built during one evaluation (strings, arrays, objects), added up.
    pub max_built_bytes: NonZeroU64,
    /// Evaluations of rules that loop (`map`, `filter`, `reduce`, `all`, `none`, `some`) running
    /// at once on this node; more wait for a turn, so such rules never take every thread from the
    /// cheap ones. Default: half the CPUs, at least one.
    pub max_looping_evaluations: NonZeroUsize,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        let budget = bunting_engine::Budget::default();
        EvaluationConfig {
            max_steps: NonZeroU64::new(budget.max_steps).unwrap_or(NonZeroU64::MIN),
            max_built_bytes: NonZeroU64::new(budget.max_built_bytes).unwrap_or(NonZeroU64::MIN),
            max_looping_evaluations: default_looping_evaluations(),
        }
    }
}

/// Half the CPUs the process may use, at least one: the other half stays for evaluations that do
/// not loop, the network and the node's own work.
fn default_looping_evaluations() -> NonZeroUsize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    NonZeroUsize::new(cpus / 2).unwrap_or(NonZeroUsize::MIN)
}

impl EvaluationConfig {
    pub fn budget(&self) -> bunting_engine::Budget {
        bunting_engine::Budget {
            max_steps: self.max_steps.get(),
            max_built_bytes: self.max_built_bytes.get(),
        }
    }
}

/// `[definitions]`: the engine's document limits (`bunting_engine::Limits`), applied to the flag
/// file, the Admin API and `bunting validate` alike. A refusal names the limit and the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefinitionsConfig {
    /// A flag set's JSON text (a flag file, one Admin write's document), in bytes.
    pub max_document_bytes: NonZeroUsize,
    /// Flags in one flag set.
    pub max_flags: NonZeroUsize,
    /// Variants of one flag.
    pub max_variants: NonZeroUsize,
    /// A flag key, in bytes.
    pub max_flag_key_bytes: NonZeroUsize,
    /// A variant name, in bytes.
    pub max_variant_name_bytes: NonZeroUsize,
    /// Named rules in a set's `$evaluators`.
    pub max_evaluators: NonZeroUsize,
}

impl Default for DefinitionsConfig {
    fn default() -> Self {
        let limits = bunting_engine::Limits::default();
        let non_zero = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        DefinitionsConfig {
            max_document_bytes: non_zero(limits.max_document_bytes),
            max_flags: non_zero(limits.max_flags),
            max_variants: non_zero(limits.max_variants),
            max_flag_key_bytes: non_zero(limits.max_flag_key_bytes),
            max_variant_name_bytes: non_zero(limits.max_variant_name_bytes),
            max_evaluators: non_zero(limits.max_evaluators),
        }
    }
}

impl DefinitionsConfig {
    pub fn limits(&self) -> bunting_engine::Limits {
        bunting_engine::Limits {
            max_document_bytes: self.max_document_bytes.get(),
            max_flags: self.max_flags.get(),
            max_variants: self.max_variants.get(),
            max_flag_key_bytes: self.max_flag_key_bytes.get(),
            max_variant_name_bytes: self.max_variant_name_bytes.get(),
            max_evaluators: self.max_evaluators.get(),
        }
    }
}

/// `[connections]`: what one client connection may hold and for how long, so idle or hostile
/// connections cannot exhaust the node's file descriptors (enforced by `crate::edge`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Client connections open at once on the gRPC port; more are accepted and closed at once.
    /// The node lowers it to fit its open-files limit minus `fd_reserve`.
    pub max_connections: usize,
    /// File descriptors kept out of the connection cap for the node's own work: the flag file,
    /// the database, Redis, ScyllaDB, the cluster port, `/metrics`.
    pub fd_reserve: u64,
    /// A new connection must send its first bytes (HTTP/2's preface and first frame header, or
    /// TLS's hello) within this, or it is closed (milliseconds).
    pub header_read_timeout_ms: u64,
    /// A connection with no request or stream open for this long is closed (milliseconds).
    /// Keepalive pings do not count as activity; an open stream (SyncFlags, EventStream) always
    /// does, however quiet it is.
    pub idle_timeout_ms: u64,
    /// The node pings each connection (HTTP/2 PING) this often, and TCP keepalive probes start
    /// after this much silence (milliseconds).
    pub keepalive_interval_ms: u64,
    /// A ping not answered within this closes the connection (milliseconds).
    pub keepalive_timeout_ms: u64,
    /// Streams (requests) one connection may have open at once (HTTP/2 SETTINGS).
    pub max_concurrent_streams_per_connection: u32,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_connections: 10_000,
            fd_reserve: 256,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            max_concurrent_streams_per_connection: 1_024,
        }
    }
}

impl ConnectionsConfig {
    /// The smallest `fd_reserve` accepted: the node's own descriptors (stdio, the runtime's
    /// epoll and eventfds, both listeners, the flag file, a few store connections).
    pub const MIN_FD_RESERVE: u64 = 32;

    fn check(&self) -> Result<(), String> {
        let at_least_one = [
            ("max_connections", self.max_connections as u64),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("keepalive_timeout_ms", self.keepalive_timeout_ms),
            (
                "max_concurrent_streams_per_connection",
                u64::from(self.max_concurrent_streams_per_connection),
            ),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err(format!("connections.{key} must be at least 1"));
            }
        }
        if self.fd_reserve < Self::MIN_FD_RESERVE {
            return Err(format!(
                "connections.fd_reserve ({}) must be at least {}: the node needs descriptors of its own",
                self.fd_reserve,
                Self::MIN_FD_RESERVE
            ));
        }
        if self.idle_timeout_ms < self.header_read_timeout_ms {
            return Err(format!(
                "connections.idle_timeout_ms ({}) must be at least header_read_timeout_ms ({})",
                self.idle_timeout_ms, self.header_read_timeout_ms
            ));
        }
        Ok(())
    }
}

/// `[scylla]`: the experiment event store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub known_nodes: Vec<String>,
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// Used only when the keyspace is created.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u16,
    /// Per call, milliseconds.
    #[serde(default = "default_scylla_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failed calls (unreachable or timed out) that open the event store's circuit
    /// breaker; while it is open, flushes fail at once instead of each waiting for `timeout_ms`.
    #[serde(default = "default_scylla_failure_threshold")]
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe call is let through.
    #[serde(default = "default_scylla_open_for_ms")]
    pub open_for_ms: u64,
}

fn default_scylla_failure_threshold() -> u32 {
    3
}

fn default_scylla_open_for_ms() -> u64 {
    2000
}

fn default_keyspace() -> String {
    "bunting".to_owned()
}

fn default_replication_factor() -> u16 {
    3
}

fn default_scylla_timeout_ms() -> u64 {
    2000
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 8013)),
            admin_addr: None,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8016)),
            http: HttpConfig::default(),
            shards: bunting_keyspace::DEFAULT_SHARDS,
            default_set: default_set(),
            max_context_bytes: 64 * 1024,
            max_concurrent_requests: 4096,
            max_bulk_evaluations: 10_000,
            fractional: FractionalConfig::default(),
            flags: FlagSourceConfig::File {
                path: PathBuf::from("cluster-config/flags.json"),
                set: default_set(),
                broken_flags: BrokenFlags::default(),
            },
            tls: None,
            cluster: None,
            data_dir: None,
            scylla: None,
            shared_tier: SharedTierConfig::None,
            connections: ConnectionsConfig::default(),
            actor_threads: 0,
            evaluation: EvaluationConfig::default(),
            definitions: DefinitionsConfig::default(),
            max_streams: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            stream_lag_ms: NonZeroU64::new(10_000).unwrap_or(NonZeroU64::MIN),
            drain_timeout_ms: NonZeroU64::new(10_000).unwrap_or(NonZeroU64::MIN),
            auth: AuthConfig::default(),
        }
    }
}

/// `[cluster]`: membership over ractor_cluster and the shard map (crate `bunting-cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's name in the cluster: unique, stable across restarts.
    pub node_id: String,
    /// The cluster (ractor_cluster) port; peers and seeds connect here.
    pub listen: SocketAddr,
    /// The gRPC address clients are told to dial for this node's shards. Default: `grpc_addr` as
    /// bound (right on loopback; behind NAT or in containers set it explicitly).
    #[serde(default)]
    pub advertise_grpc: Option<String>,
    /// Other nodes' cluster ports. Any one live seed is enough to join; empty for the first node.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// Where the shared cookie comes from: an environment variable (default
    /// `BUNTING_CLUSTER_COOKIE`) or, when `cookie_file` is set, a file (a mounted secret). Never a
    /// literal in this file, so configs can be committed and the secret cannot be.
    #[serde(default = "default_cookie_env")]
    pub cookie_env: String,
    #[serde(default)]
    pub cookie_file: Option<PathBuf>,
    /// The cluster address peers dial, when `listen` is not it (0.0.0.0, NAT, containers).
    #[serde(default)]
    pub advertise_cluster: Option<SocketAddr>,
    /// Mutual TLS on the cluster port: this node's certificate and key, and the CA every member's
    /// certificate is signed by. Absent: clear text (the cookie still authenticates peers).
    #[serde(default)]
    pub tls: Option<ClusterTlsConfig>,
    /// Virtual nodes per member on the consistent-hash ring: more spreads shards more evenly.
    #[serde(default = "default_vnodes")]
    pub vnodes_per_node: u16,
    /// Heartbeats to every peer this often (milliseconds).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// A peer silent this long (milliseconds) is down and its shards move.
    #[serde(default = "default_failure_timeout_ms")]
    pub failure_timeout_ms: u64,
    /// How long an evaluation forwarded to its shard's owner may take (milliseconds) before this
    /// node evaluates it itself.
    #[serde(default = "default_forward_timeout_ms")]
    pub forward_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The name every member's certificate carries (default `bunting-cluster`).
    #[serde(default)]
    pub name: Option<String>,
}

fn default_cookie_env() -> String {
    "BUNTING_CLUSTER_COOKIE".to_owned()
}

fn default_vnodes() -> u16 {
    128
}

fn default_heartbeat_ms() -> u64 {
    250
}

fn default_failure_timeout_ms() -> u64 {
    1000
}

fn default_forward_timeout_ms() -> u64 {
    250
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not toml's own error: its `Display` quotes the offending line, and that line may be
    /// the one holding a database URL with its password. The message is redacted as well.
    #[error("config {path}, line {line}, column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| {
            // 1-based, counted in characters, as editors show them.
            let before = e
                .span()
                .map_or("", |span| text.get(..span.start).unwrap_or(""));
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: redact_urls(e.message()),
            }
        })?;
        config.check().map_err(|problem| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        self.connections.check()?;
        if self.auth.tokens_file.is_some() && !matches!(self.flags, FlagSourceConfig::File { .. }) {
            return Err(
                "auth.tokens_file is for file-backed nodes; a PostgreSQL-backed node keeps its \
                 tokens in the database (bunting tokens create)"
                    .to_owned(),
            );
        }
        if let SharedTierConfig::Redis(redis) = &self.shared_tier {
            redis.check()?;
        }
        if !self.auth.certificates.is_empty()
            && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
        {
            return Err(
                "auth.certificates maps client certificates, which need tls.client_ca (the CA \
                 they are verified against)"
                    .to_owned(),
            );
        }
        if self.shards == 0 {
            return Err("shards must be at least 1".to_owned());
        }
        if self.max_concurrent_requests == 0 {
            return Err("max_concurrent_requests must be at least 1".to_owned());
        }
        if self.max_bulk_evaluations == 0 {
            return Err("max_bulk_evaluations must be at least 1".to_owned());
        }
        let addrs = [
            ("grpc_addr", self.grpc_addr),
            ("metrics_addr", self.metrics_addr),
            ("http_addr", self.http_addr),
        ];
        for (i, (name, addr)) in addrs.iter().enumerate() {
            if let Some((other, _)) = addrs[i + 1..]
                .iter()
                .find(|(_, a)| a == addr && addr.port() != 0)
            {
                return Err(format!("{name} and {other} are both {addr}"));
            }
        }
        // hyper's HTTP/1 read buffer, which bounds the head, cannot be smaller.
        if self.http.max_header_bytes < 8192 {
            return Err("http.max_header_bytes must be at least 8192".to_owned());
        }
        if let Some(origin) = self
            .http
            .cors_allowed_origins
            .iter()
            .find(|o| *o != "*" && http::HeaderValue::from_str(o).is_err())
        {
            return Err(format!(
                "http.cors_allowed_origins: {origin:?} is not a valid origin"
            ));
        }
        if let Some(admin) = self.admin_addr {
            for (name, other) in [
                ("grpc_addr", self.grpc_addr),
                ("metrics_addr", self.metrics_addr),
            ] {
                if admin == other && admin.port() != 0 {
                    return Err(format!("admin_addr and {name} are both {admin}"));
                }
            }
        }
        if self
            .scylla
            .as_ref()
            .is_some_and(|s| s.known_nodes.is_empty())
        {
            return Err("scylla.known_nodes must name at least one node".to_owned());
        }
        if self
            .scylla
            .as_ref()
            .is_some_and(|s| s.failure_threshold == 0)
        {
            return Err("scylla.failure_threshold must be at least 1".to_owned());
        }
        if let Some(cluster) = &self.cluster {
            if cluster.heartbeat_interval_ms == 0 || cluster.vnodes_per_node == 0 {
                return Err(
                    "cluster: heartbeat_interval_ms and vnodes_per_node must be at least 1"
                        .to_owned(),
                );
            }
            if cluster.failure_timeout_ms < 2 * cluster.heartbeat_interval_ms {
                return Err(format!(
                    "cluster: failure_timeout_ms ({}) must be at least twice heartbeat_interval_ms ({}), or one late heartbeat marks a live node down",
                    cluster.failure_timeout_ms, cluster.heartbeat_interval_ms
                ));
            }
        }
        Ok(())
    }
}

fn default_set() -> String {
    "default".to_owned()
}

fn default_version_check() -> Duration {
    Duration::from_secs(5)
}

/// Durations in the config file are whole seconds.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_names_the_place_but_not_the_password() {
        let path = std::env::temp_dir().join(format!("bunting-config-{}.toml", std::process::id()));
        for (text, line) in [
            (
                "[flags]\nsource = \"postgres\"\nurl = \"postgres://u:s3cr3t@db/x\" oops\n",
                3,
            ),
            ("shards = \"redis://:s3cr3t@h:1\"\n", 1),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = Config::load(&path).unwrap_err().to_string();
            assert!(!error.contains("s3cr3t"), "{error}");
            assert!(error.contains(&format!("line {line},")), "{error}");
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_empty_file_means_the_embedded_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn reads_a_postgres_node() {
        let c: Config = toml::from_str(
            r#"
            grpc_addr = "0.0.0.0:9000"
            shards = 32
            [flags]
            source = "postgres"
            url = "postgres://db/flags"
            version_check = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.shards, 32);
        assert_eq!(
            c.flags,
            FlagSourceConfig::Postgres {
                url: "postgres://db/flags".into(),
                version_check: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<Config>("grpc_adr = \"x\"").is_err());
        assert!(toml::from_str::<Config>("[flags]\nsource = \"s3\"").is_err());
        let zero: Config = toml::from_str("shards = 0").unwrap();
        assert!(zero.check().is_err());
    }

    #[test]
    fn stream_limits_are_read_and_zero_is_refused() {
        let c: Config = toml::from_str("max_streams = 7\nstream_lag_ms = 250").unwrap();
        assert_eq!((c.max_streams.get(), c.stream_lag_ms.get()), (7, 250));
        assert!(toml::from_str::<Config>("max_streams = 0").is_err());
        assert!(toml::from_str::<Config>("stream_lag_ms = 0").is_err());
        assert!(toml::from_str::<Config>("drain_timeout_ms = 0").is_err());
    }

    #[test]
    fn the_loopback_cluster_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/three-node");
        let mut ids = Vec::new();
        for n in 1..=4 {
            let config = Config::load(&dir.join(format!("node-{n}.toml"))).unwrap();
            let cluster = config.cluster.unwrap();
            assert!(
                !cluster.seeds.contains(&cluster.listen),
                "node-{n} seeds itself"
            );
            ids.push(cluster.node_id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 4, "node ids must be unique: {ids:?}");
    }

    #[test]
    fn reads_a_cluster_section_and_refuses_a_jittery_failure_timeout() {
        let c: Config = toml::from_str(
            r#"
            [cluster]
            node_id = "node-1"
            listen = "127.0.0.1:7101"
            seeds = ["127.0.0.1:7102"]
            "#,
        )
        .unwrap();
        let cluster = c.cluster.as_ref().unwrap();
        assert_eq!(cluster.cookie_env, "BUNTING_CLUSTER_COOKIE");
        assert_eq!(cluster.seeds.len(), 1);
        assert!(c.check().is_ok());
        let tight: Config = toml::from_str(
            "[cluster]\nnode_id = \"n\"\nlisten = \"127.0.0.1:1\"\nheartbeat_interval_ms = 500\nfailure_timeout_ms = 600",
        )
        .unwrap();
        assert!(
            tight
                .check()
                .unwrap_err()
                .contains("failure_timeout_ms (600)")
        );
        assert!(
            toml::from_str::<Config>(
                "[cluster]\nnode_id = \"n\"\nlisten = \"127.0.0.1:1\"\ncookie = \"x\""
            )
            .is_err()
        );
    }

    #[test]
    fn reads_client_certificates_and_refuses_them_without_a_client_ca() {
        let with_ca = r#"
            admin_addr = "127.0.0.1:9013"
            [tls]
            cert = "node.crt"
            key = "node.key"
            client_ca = "clients-ca.pem"
            [[auth.certificates]]
            subject = "CN=deployer"
            scopes = ["flags:write"]
            flag_sets = ["shop"]
            [[auth.certificates]]
            subject = "CN=ops, O=Acme"
            scopes = ["cluster:read"]
            "#;
        let c: Config = toml::from_str(with_ca).unwrap();
        c.check().unwrap();
        assert_eq!(c.admin_addr, Some("127.0.0.1:9013".parse().unwrap()));
        assert_eq!(c.auth.certificates.len(), 2);
        assert_eq!(c.auth.certificates[0].flag_sets, Some(vec!["shop".into()]));
        assert_eq!(c.auth.certificates[1].flag_sets, None);
        let without_ca = with_ca.replace("client_ca = \"clients-ca.pem\"", "");
        let problem = toml::from_str::<Config>(&without_ca)
            .unwrap()
            .check()
            .unwrap_err();
        assert!(problem.contains("tls.client_ca"), "{problem}");
        let clash: Config =
            toml::from_str("admin_addr = \"127.0.0.1:8013\"\ngrpc_addr = \"127.0.0.1:8013\"")
                .unwrap();
        assert!(
            clash
                .check()
                .unwrap_err()
                .contains("admin_addr and grpc_addr")
        );
        assert!(
            toml::from_str::<Config>(
                "[[auth.certificates]]\nsubject = \"CN=a\"\nscope = [\"evaluate\"]"
            )
            .is_err()
        );
    }

    #[test]
    fn the_documented_node_config_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config/node.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }

    #[test]
    fn reads_connection_limits_and_names_the_bad_key() {
        let c: Config = toml::from_str(
            "[connections]\nmax_connections = 500\nheader_read_timeout_ms = 500\nidle_timeout_ms = 2000",
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.connections.max_connections, 500);
        assert_eq!(c.connections.fd_reserve, 256);
        for (bad, key) in [
            ("max_connections = 0", "connections.max_connections"),
            (
                "keepalive_timeout_ms = 0",
                "connections.keepalive_timeout_ms",
            ),
            (
                "max_concurrent_streams_per_connection = 0",
                "connections.max_concurrent_streams_per_connection",
            ),
            ("fd_reserve = 4", "connections.fd_reserve"),
            ("idle_timeout_ms = 100", "connections.idle_timeout_ms"),
        ] {
            let c: Config = toml::from_str(&format!("[connections]\n{bad}")).unwrap();
            let problem = c.check().unwrap_err();
            assert!(problem.contains(key), "{bad}: {problem}");
        }
        assert!(toml::from_str::<Config>("[connections]\nmax_conns = 1").is_err());
    }

    #[test]
    fn reads_a_redis_shared_tier() {
        let c: Config = toml::from_str(
            r#"
            [shared_tier]
            kind = "redis"
            cluster = ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]
            open_for_ms = 500
            "#,
        )
        .unwrap();
        c.check().unwrap();
        let SharedTierConfig::Redis(redis) = &c.shared_tier else {
            panic!("not redis: {:?}", c.shared_tier);
        };
        assert_eq!(redis.cluster.len(), 2);
        assert_eq!(redis.open_for_ms, 500);
        assert_eq!(redis.key_prefix, "bunting");
    }

    #[test]
    fn refuses_bad_shared_tiers() {
        assert!(toml::from_str::<Config>("[shared_tier]\nkind = \"memcached\"").is_err());
        assert!(
            toml::from_str::<Config>(
                "[shared_tier]\nkind = \"redis\"\nurl = \"redis://x\"\nport = 1"
            )
            .is_err()
        );
        for bad in [
            "[shared_tier]\nkind = \"redis\"",
            "[shared_tier]\nkind = \"redis\"\nurl = \"redis://a\"\ncluster = [\"redis://b\"]",
            "[shared_tier]\nkind = \"redis\"\nurl = \"redis://a\"\nwrite_queue = 0",
            "[shared_tier]\nkind = \"redis\"\nurl = \"redis://a\"\nkey_prefix = \"{x}\"",
        ] {
            let c: Config = toml::from_str(bad).unwrap();
            assert!(c.check().is_err(), "{bad}");
        }
    }
}
