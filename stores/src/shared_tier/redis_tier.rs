//! The shared tier on Redis: one server or a Redis Cluster, through one code path. Commands go
//! through a connection that is either a single server's `ConnectionManager` or the cluster
//! client's connection (both `redis::aio::ConnectionLike`); every key that one command or script
//! touches sits under one hash tag, so nothing needs a cross-slot operation.
//!
//! Keys, for prefix `P`:
//! - `{P}:sets`: the index, a set of flag-set ids with a snapshot;
//! - `{P:set:ID}:snapshot`: a hash `version`, `json`, `seal`; an empty `json` is a tombstone (the
//!   set was deleted at `version`; a flagd document is never empty); `seal` is the deployment's
//!   HMAC over the rest (`seal.rs`), without which a reader refuses the snapshot;
//! - `{P:users:SHARD}:state`: a hash user → state bytes, one per key-space shard;
//! - `{P:users:SHARD}:owner`: a string, the shard's owner epoch: the shard map epoch at which
//!   the last node to claim the shard acquired it. A user-state write carries its writer's epoch
//!   and is stored only if that is the owner epoch (a fencing token; same hash tag as the state,
//!   so one script covers both);
//! - `{P:experiments}:running`: a string, `{"seal": …, "experiments": "<JSON list>"}`: the
//!   running experiments (`bunting_experiments::Experiment`) as a JSON text and its seal, written
//!   whole by nodes that read them from PostgreSQL;
//! - channel `P:changes`: `{"set": ID, "version": N}` per stored version. PUBLISH reaches every
//!   node of a Redis Cluster, so the subscriber listens on any one of them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bunting_experiments::Experiment;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_stream::StreamExt;

use super::queue::{Write, WriteQueue};
use super::seal::{Sealed, Sealer};
use super::wal::{UserWrite, WriteAheadLog};
use super::{
    ChangeStream, SharedTier, SharedTierError, SnapshotWrite, TierChange, TierContent,
    TierSnapshot, WriteOutcome,
};
use crate::breaker::{Breaker, BreakerSettings, BreakerState};
use crate::secret_url::{RedactedUrl, SecretUrl};
use crate::shared_tier::config::RedisTierConfig;

/// Stores the snapshot only if its version is newer than the stored one; returns -1 when it
/// stored, else the stored version. One script, so two nodes racing on one version cannot both
/// win. Versions stay far below 2^53, where Lua's numbers are exact.
const SNAPSHOT_CAS: &str = r"
local stored = tonumber(redis.call('HGET', KEYS[1], 'version'))
if stored and stored >= tonumber(ARGV[1]) then
  return stored
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2], 'seal', ARGV[3])
return -1
";

/// Claims a shard: sets its owner epoch (KEYS[1]) to ARGV[1] whatever was stored, and returns the
/// epoch it replaced (-1 if none). The last claimant wins rather than the highest epoch: map
/// epochs start again from zero when a whole cluster restarts, and a highest-wins rule would then
/// refuse every new owner until the new epochs overtook the old ones. A claim from a stale map is
/// undone by the owner it displaced (see the supervisor's `Fenced` handling). Epochs stay far
/// below 2^53, where Lua's numbers are exact.
const CLAIM_SHARD: &str = r"
local stored = tonumber(redis.call('GET', KEYS[1]))
redis.call('SET', KEYS[1], ARGV[1])
if stored then
  return stored
end
return -1
";

/// A fenced user-state write: stores (ARGV[3] = 'put': HSET ARGV[4]) or deletes ('del') user
/// ARGV[2] in the shard's hash (KEYS[2]) only if the writer's epoch ARGV[1] is the shard's owner
/// epoch (KEYS[1]), or no owner has claimed it; returns -1 when it wrote, else the owner epoch
/// that refused it. One script, so a claim cannot slip between the check and the write.
const FENCED_USER_WRITE: &str = r"
local owner = tonumber(redis.call('GET', KEYS[1]))
if owner and owner ~= tonumber(ARGV[1]) then
  return owner
end
if ARGV[3] == 'put' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
else
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return -1
";

/// Notifications a slow subscriber may fall behind by before the subscriber task waits for it.
const CHANGE_BUFFER: usize = 256;

/// Between two attempts to re-establish the notification subscription.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(500);

pub struct RedisTier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("endpoint", &self.inner.endpoint)
            .field("breaker", &self.inner.breaker.state())
            .field("queued_writes", &self.inner.queue.len())
            .finish()
    }
}

struct Inner {
    /// The url or the first cluster seed: names the tier in logs, errors and metric labels.
    endpoint: RedactedUrl,
    target: Target,
    /// Where the notification subscriber connects, tried in turn.
    seeds: Vec<SecretUrl>,
    /// Made on first use and dropped after a transport failure, so a Redis that was down at
    /// start-up, or came back elsewhere, is reconnected on the next admitted call.
    conn: Mutex<Option<Conn>>,
    breaker: Breaker,
    queue: WriteQueue,
    /// Where queued per-user writes are made durable; `None`: they live only in `queue`.
    wal: Option<Arc<WriteAheadLog>>,
    /// One drainer at a time, so queued writes are replayed in order.
    draining: Mutex<()>,
    wake_drainer: Arc<Notify>,
    timeout: Duration,
    keys: Keys,
    cas: redis::Script,
    claim: redis::Script,
    fenced_write: redis::Script,
    /// Seals what this node writes and verifies what it reads (`seal.rs`).
    sealer: Sealer,
}

/// The running experiments as stored: their JSON text and its seal.
#[derive(Debug, Serialize, Deserialize)]
struct SealedExperiments {
    seal: String,
    experiments: String,
}

enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Debug)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn index(&self) -> String {
        format!("{{{}}}:sets", self.prefix)
    }

    fn snapshot(&self, set: &str) -> String {
        format!("{{{}:set:{set}}}:snapshot", self.prefix)
    }

    fn users(&self, shard: u32) -> String {
        format!("{{{}:users:{shard}}}:state", self.prefix)
    }

    fn owner(&self, shard: u32) -> String {
        format!("{{{}:users:{shard}}}:owner", self.prefix)
    }

    fn running_experiments(&self) -> String {
        format!("{{{}:experiments}}:running", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:changes", self.prefix)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct ChangeMessage {
    set: String,
    version: u64,
}

/// Whether an error means "unreachable, try again later" rather than "this call is wrong".
pub(super) fn transient(e: &RedisError) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::ResponseError
                | ServerErrorKind::ExecAbort
                | ServerErrorKind::NoScript
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::NoPerm
                | ServerErrorKind::NoSub
                | ServerErrorKind::NotBusy
        ) | ErrorKind::Parse
            | ErrorKind::UnexpectedReturnType
            | ErrorKind::InvalidClientConfig
    )
}

impl RedisTier {
    /// A snapshot or tombstone write, through the queue and the compare-and-set.
    async fn write_snapshot(
        &self,
        set: &str,
        version: u64,
        json: String,
    ) -> Result<SnapshotWrite, SharedTierError> {
        let write = Write::Snapshot {
            set: set.to_owned(),
            version,
            json,
        };
        Ok(match self.inner.write(write).await? {
            Applied::Written => SnapshotWrite::Stored,
            Applied::NotNewer(stored) => SnapshotWrite::NotNewer { stored },
            Applied::Queued => SnapshotWrite::Queued,
        })
    }

    /// Builds the tier and its queue drainer; connects on first use. Needs a tokio runtime.
    /// Reads the signing key (`signing_key_file`, else the variable `signing_key_env` names).
    pub fn connect(config: &RedisTierConfig) -> Result<Arc<RedisTier>, SharedTierError> {
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let (target, seeds) = match (&config.url, config.cluster.as_slice()) {
            (Some(url), []) => {
                let client = redis::Client::open(url.expose())
                    .map_err(|e| SharedTierError::Config(format!("redis url {url}: {e}")))?;
                (Target::Single(client), vec![url.clone()])
            }
            (None, seeds) if !seeds.is_empty() => {
                let client = ClusterClient::builder(seeds.iter().map(SecretUrl::expose))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .build()
                    .map_err(|e| {
                        let seeds: Vec<&RedactedUrl> =
                            seeds.iter().map(SecretUrl::redacted).collect();
                        SharedTierError::Config(format!("redis cluster {seeds:?}: {e}"))
                    })?;
                (Target::Cluster(Box::new(client)), seeds.to_vec())
            }
            _ => {
                return Err(SharedTierError::Config(
                    "redis needs exactly one of url and cluster".to_owned(),
                ));
            }
        };
        let endpoint = seeds
            .first()
            .map_or_else(|| RedactedUrl::new(""), |seed| seed.redacted().clone());
        let sealer = Sealer::new(&signing_key(config)?, config.deployment())
            .map_err(|e| SharedTierError::Config(e.to_string()))?;
        let open_for = Duration::from_millis(config.open_for_ms);
        let queue = WriteQueue::new(config.write_queue, endpoint.clone());
        let wal = match &config.write_ahead_log {
            None => None,
            Some(path) => {
                let (wal, recovered) = WriteAheadLog::open(path, config.write_ahead_log_max_bytes)?;
                if !recovered.writes.is_empty() {
                    tracing::info!(path = %path.display(), writes = recovered.writes.len(), "replaying per-user writes a previous process logged during a Redis outage");
                }
                // Ahead of anything this process writes: they are older. They leave the queue
                // (and the log) only once Redis answered for them.
                for write in recovered.writes {
                    queue.push(write.into(), true);
                }
                Some(Arc::new(wal))
            }
        };
        let inner = Arc::new(Inner {
            breaker: Breaker::new(
                BreakerSettings {
                    failure_threshold: config.failure_threshold.max(1),
                    open_for,
                },
                endpoint.clone(),
            ),
            queue,
            wal,
            endpoint,
            target,
            seeds,
            conn: Mutex::new(None),
            draining: Mutex::new(()),
            wake_drainer: Arc::new(Notify::new()),
            timeout,
            keys: Keys {
                prefix: config.key_prefix.clone(),
            },
            cas: redis::Script::new(SNAPSHOT_CAS),
            claim: redis::Script::new(CLAIM_SHARD),
            fenced_write: redis::Script::new(FENCED_USER_WRITE),
            sealer,
        });
        // The drainer retries about as often as the breaker lets a probe through.
        let every = open_for.clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(drain_forever(
            Arc::downgrade(&inner),
            inner.wake_drainer.clone(),
            every,
        ));
        Ok(Arc::new(RedisTier { inner }))
    }
}

/// The deployment's signing key, from its file or its environment variable. Errors name where
/// the key was looked for, never what was found.
fn signing_key(config: &RedisTierConfig) -> Result<Vec<u8>, SharedTierError> {
    match &config.signing_key_file {
        Some(path) => std::fs::read(path).map_err(|e| {
            SharedTierError::Config(format!(
                "cannot read the signing key file {}: {e}",
                path.display()
            ))
        }),
        None => std::env::var_os(&config.signing_key_env)
            .map(|key| key.into_encoded_bytes())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                SharedTierError::Config(format!(
                    "no signing key: set the environment variable {} (or signing_key_file) to the \
                     deployment's shared tier key, at least 32 bytes, the same on every node",
                    config.signing_key_env
                ))
            }),
    }
}

/// Replays queued writes whenever woken or every `every`, until the tier is dropped.
async fn drain_forever(tier: Weak<Inner>, wake: Arc<Notify>, every: Duration) {
    loop {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(every) => {}
        }
        let Some(inner) = tier.upgrade() else { return };
        inner.drain().await;
    }
}

impl Inner {
    /// Runs `op` on a connection, behind the breaker and within the timeout.
    async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, SharedTierError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(permit) = self.breaker.admit() else {
            return Err(SharedTierError::Unavailable {
                endpoint: self.endpoint.clone(),
            });
        };
        let attempt = tokio::time::timeout(self.timeout, async {
            let conn = self.connection().await?;
            op(conn).await
        })
        .await;
        match attempt {
            Ok(Ok(value)) => {
                permit.succeeded();
                Ok(value)
            }
            Ok(Err(source)) => {
                if transient(&source) {
                    permit.failed();
                    self.forget_connection().await;
                } else {
                    // Redis answered; it refused this call, which says nothing about its health.
                    permit.succeeded();
                }
                Err(SharedTierError::Redis {
                    endpoint: self.endpoint.clone(),
                    what,
                    source,
                })
            }
            Err(_elapsed) => {
                permit.failed();
                self.forget_connection().await;
                Err(SharedTierError::Timeout {
                    endpoint: self.endpoint.clone(),
                    what,
                    timeout: self.timeout,
                })
            }
        }
    }

    async fn connection(&self) -> RedisResult<Conn> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                Conn::Single(ConnectionManager::new_with_config(client.clone(), config).await?)
            }
            Target::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Writes directly while nothing is queued; otherwise (or if the tier is unreachable) queues
    /// behind the writes already waiting, so they reach Redis in the order they were made.
    async fn write(&self, write: Write) -> Result<Applied, SharedTierError> {
        if self.queue.is_empty() {
            match self.apply(&write).await {
                Ok(applied) => return Ok(applied),
                Err(e) if e.is_transient() => {
                    tracing::debug!(error = %e, "shared tier write queued");
                }
                Err(e) => return Err(e),
            }
        }
        // A per-user write is acknowledged to the evaluation as recorded: it goes to the
        // write-ahead log first (fsynced, grouped with concurrent ones), and is refused if it
        // cannot be logged, never queued only in memory.
        let durable = match (&self.wal, UserWrite::try_from(&write)) {
            (Some(wal), Ok(logged)) => {
                let wal = wal.clone();
                tokio::task::spawn_blocking(move || wal.append(&logged))
                    .await
                    .map_err(|e| {
                        SharedTierError::NotLogged(super::wal::WalError::Io {
                            path: std::path::PathBuf::new(),
                            source: std::io::Error::other(e.to_string()),
                        })
                    })??;
                true
            }
            _ => false,
        };
        self.queue.push(write, durable);
        self.wake_drainer.notify_one();
        Ok(Applied::Queued)
    }

    /// Settles the queue's front write `seq`, and its log record if it had one.
    fn settle(&self, seq: u64) {
        if self.queue.done(seq)
            && let Some(wal) = &self.wal
            && let Err(e) = wal.replayed()
        {
            // The record stays in the log and is replayed once more at the next start: a put
            // or delete of the same state twice, harmless.
            tracing::warn!(error = %e, "could not cut the replayed write-ahead log");
        }
    }

    /// Replays the queue now, waiting for a replay under way rather than skipping: a shard
    /// claim runs this first, so writes a previous process logged at its epoch reach Redis
    /// before this process's claim fences them.
    async fn drain_before_claim(&self) {
        let _draining = self.draining.lock().await;
        self.drain_locked().await;
    }

    async fn drain(&self) {
        let Ok(_draining) = self.draining.try_lock() else {
            return;
        };
        self.drain_locked().await;
    }

    async fn drain_locked(&self) {
        let mut fenced = 0u64;
        while let Some((seq, write)) = self.queue.front() {
            match self.apply(&write).await {
                Ok(_) => self.settle(seq),
                Err(e) if e.is_transient() => break,
                Err(e @ SharedTierError::Fenced { .. }) => {
                    // Queued before the outage ended, by an owner that has since lost the shard:
                    // replaying it would overwrite the new owner's record. Dropped, not retried,
                    // and the writes behind it go on.
                    tracing::debug!(error = %e, "dropped a queued user state write fenced by a later claim");
                    metrics::counter!("bunting_user_state_fenced_total", "at" => "replay")
                        .increment(1);
                    fenced += 1;
                    self.settle(seq);
                }
                Err(e) => {
                    tracing::error!(error = %e, ?write, "shared tier refused a queued write; dropped");
                    metrics::counter!("bunting_shared_tier_queue_dropped_total", "endpoint" => self.endpoint.as_str().to_owned())
                        .increment(1);
                    self.settle(seq);
                }
            }
        }
        if fenced > 0 {
            // One line per drain, not per write: an outage can queue thousands of them.
            tracing::warn!(endpoint = %self.endpoint, fenced, "dropped queued user state writes fenced by a later claim of their shards");
        }
    }

    async fn apply(&self, write: &Write) -> Result<Applied, SharedTierError> {
        match write {
            Write::Snapshot { set, version, json } => {
                let (index, key) = (self.keys.index(), self.keys.snapshot(set));
                let cas = &self.cas;
                let seal = self.sealer.seal(Sealed::Snapshot {
                    set,
                    version: *version,
                    json,
                });
                // Index first: an index entry without a snapshot is skipped by readers, while a
                // snapshot missing from the index would be invisible to `snapshots`.
                let stored: i64 = self
                    .call("put_snapshot", |mut conn| async move {
                        redis::cmd("SADD")
                            .arg(&index)
                            .arg(set)
                            .query_async::<()>(&mut conn)
                            .await?;
                        cas.key(&key)
                            .arg(*version)
                            .arg(json)
                            .arg(&seal)
                            .invoke_async(&mut conn)
                            .await
                    })
                    .await?;
                Ok(match u64::try_from(stored) {
                    Ok(stored) => Applied::NotNewer(stored),
                    Err(_) => Applied::Written,
                })
            }
            Write::Publish { set, version } => {
                let message = serde_json::to_string(&ChangeMessage {
                    set: set.clone(),
                    version: *version,
                })
                .unwrap_or_default();
                let channel = self.keys.channel();
                self.call("publish_change", |mut conn| async move {
                    redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(&message)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await?;
                Ok(Applied::Written)
            }
            Write::PutUserState {
                shard,
                epoch,
                user,
                state,
            } => {
                self.fenced_user_write("put_user_state", *shard, *epoch, user, Some(state))
                    .await
            }
            Write::DeleteUserState { shard, epoch, user } => {
                self.fenced_user_write("delete_user_state", *shard, *epoch, user, None)
                    .await
            }
            Write::RunningExperiments { json } => {
                let key = self.keys.running_experiments();
                let sealed = serde_json::to_string(&SealedExperiments {
                    seal: self.sealer.seal(Sealed::RunningExperiments { json }),
                    experiments: json.clone(),
                })
                .map_err(|source| SharedTierError::Encode {
                    what: "the running experiments",
                    source,
                })?;
                self.call("put_running_experiments", |mut conn| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&sealed)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await?;
                Ok(Applied::Written)
            }
        }
    }

    /// Writes (`Some(state)`) or deletes one user's state if `epoch` is not below the shard's
    /// owner epoch; `Fenced` otherwise.
    async fn fenced_user_write(
        &self,
        what: &'static str,
        shard: u32,
        epoch: u64,
        user: &str,
        state: Option<&Vec<u8>>,
    ) -> Result<Applied, SharedTierError> {
        let (owner, key) = (self.keys.owner(shard), self.keys.users(shard));
        let script = &self.fenced_write;
        let refused: i64 = self
            .call(what, |mut conn| async move {
                let mut invocation = script.key(&owner);
                invocation.key(&key).arg(epoch).arg(user);
                match state {
                    Some(state) => invocation.arg("put").arg(state.as_slice()),
                    None => invocation.arg("del"),
                };
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        match u64::try_from(refused) {
            Ok(owner_epoch) => Err(SharedTierError::Fenced {
                shard,
                epoch,
                owner_epoch,
            }),
            Err(_) => Ok(Applied::Written),
        }
    }

    async fn snapshot(&self, set: &str) -> Result<Option<TierSnapshot>, SharedTierError> {
        let key = self.keys.snapshot(set);
        let [version, json, seal]: [Option<Vec<u8>>; 3] = self
            .call("snapshot", |mut conn| {
                let key = key.clone();
                async move {
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg("version")
                        .arg("json")
                        .arg("seal")
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        let corrupt = |problem: String| SharedTierError::Corrupt {
            key: key.clone(),
            problem,
        };
        let (version, json) = match (version, json) {
            (None, None) => return Ok(None),
            (Some(version), Some(json)) => (version, json),
            _ => return Err(corrupt("version or json missing".to_owned())),
        };
        let version = std::str::from_utf8(&version)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                corrupt(format!(
                    "version {:?} is not a number",
                    String::from_utf8_lossy(&version)
                ))
            })?;
        let json = String::from_utf8(json)
            .map_err(|_| corrupt(format!("version {version} is not UTF-8")))?;
        let sealed = Sealed::Snapshot {
            set,
            version,
            json: &json,
        };
        if !seal.is_some_and(|seal| self.sealer.verifies(sealed, &seal)) {
            return Err(SharedTierError::Unverified {
                key,
                deployment: self.sealer.deployment().to_owned(),
            });
        }
        let content = if json.is_empty() {
            TierContent::Deleted
        } else {
            TierContent::Flags(
                serde_json::from_str(&json)
                    .map_err(|e| corrupt(format!("version {version} is not valid JSON: {e}")))?,
            )
        };
        Ok(Some(TierSnapshot {
            set: set.to_owned(),
            version,
            content,
        }))
    }
}

/// What a write did, before it is told apart for the caller.
enum Applied {
    Written,
    NotNewer(u64),
    Queued,
}

impl Applied {
    fn outcome(self) -> WriteOutcome {
        match self {
            Applied::Queued => WriteOutcome::Queued,
            Applied::Written | Applied::NotNewer(_) => WriteOutcome::Written,
        }
    }
}

#[async_trait]
impl SharedTier for RedisTier {
    async fn put_snapshot(
        &self,
        set: &str,
        version: u64,
        json: &str,
    ) -> Result<SnapshotWrite, SharedTierError> {
        if let Err(source) = serde_json::from_str::<serde::de::IgnoredAny>(json) {
            return Err(SharedTierError::InvalidSnapshot {
                set: set.to_owned(),
                version,
                source,
            });
        }
        self.write_snapshot(set, version, json.to_owned()).await
    }

    async fn delete_snapshot(
        &self,
        set: &str,
        version: u64,
    ) -> Result<SnapshotWrite, SharedTierError> {
        // The empty document is the tombstone (see the key list above).
        self.write_snapshot(set, version, String::new()).await
    }

    async fn replace_snapshot(
        &self,
        set: &str,
        version: u64,
        content: &TierContent,
    ) -> Result<(), SharedTierError> {
        let json = match content {
            TierContent::Flags(document) => document.to_string(),
            TierContent::Deleted => String::new(),
        };
        let seal = self.inner.sealer.seal(Sealed::Snapshot {
            set,
            version,
            json: &json,
        });
        let (index, key) = (self.inner.keys.index(), self.inner.keys.snapshot(set));
        // Unconditional, and not queued: the repair runs right after reading the tier, and the
        // next version check repeats it if this call fails.
        self.inner
            .call("replace_snapshot", |mut conn| async move {
                // Two commands, not a pipeline: the keys sit under different hash tags.
                redis::cmd("SADD")
                    .arg(&index)
                    .arg(set)
                    .query_async::<()>(&mut conn)
                    .await?;
                redis::cmd("HSET")
                    .arg(&key)
                    .arg("version")
                    .arg(version)
                    .arg("json")
                    .arg(&json)
                    .arg("seal")
                    .arg(&seal)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    async fn snapshot(&self, set: &str) -> Result<Option<TierSnapshot>, SharedTierError> {
        self.inner.snapshot(set).await
    }

    async fn snapshots(&self) -> Result<Vec<TierSnapshot>, SharedTierError> {
        let index = self.inner.keys.index();
        let mut sets: Vec<String> = self
            .inner
            .call("snapshots", |mut conn| async move {
                redis::cmd("SMEMBERS")
                    .arg(&index)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        sets.sort();
        let mut snapshots = Vec::with_capacity(sets.len());
        for set in sets {
            match self.inner.snapshot(&set).await {
                Ok(Some(snapshot)) => snapshots.push(snapshot),
                Ok(None) => {}
                Err(e @ (SharedTierError::Corrupt { .. } | SharedTierError::Unverified { .. })) => {
                    tracing::error!(error = %e, set, "skipping a snapshot in the shared tier that cannot be trusted");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(snapshots)
    }

    async fn publish_change(
        &self,
        set: &str,
        version: u64,
    ) -> Result<WriteOutcome, SharedTierError> {
        let write = Write::Publish {
            set: set.to_owned(),
            version,
        };
        Ok(self.inner.write(write).await?.outcome())
    }

    fn subscribe(&self) -> ChangeStream {
        let (tx, rx) = mpsc::channel(CHANGE_BUFFER);
        tokio::spawn(follow_changes(
            self.inner.seeds.clone(),
            self.inner.keys.channel(),
            self.inner.timeout,
            tx,
        ));
        rx
    }

    async fn claim_user_states(
        &self,
        shard: u32,
        epoch: u64,
    ) -> Result<Option<u64>, SharedTierError> {
        self.inner.drain_before_claim().await;
        let owner = self.inner.keys.owner(shard);
        let script = &self.inner.claim;
        let replaced: i64 = self
            .inner
            .call("claim_user_states", |mut conn| async move {
                script.key(&owner).arg(epoch).invoke_async(&mut conn).await
            })
            .await?;
        Ok(u64::try_from(replaced).ok())
    }

    async fn put_user_state(
        &self,
        shard: u32,
        epoch: u64,
        user: &str,
        state: &[u8],
    ) -> Result<WriteOutcome, SharedTierError> {
        let write = Write::PutUserState {
            shard,
            epoch,
            user: user.to_owned(),
            state: state.to_vec(),
        };
        Ok(self.inner.write(write).await?.outcome())
    }

    async fn load_user_states(
        &self,
        shard: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, SharedTierError> {
        let key = self.inner.keys.users(shard);
        let states: HashMap<String, Vec<u8>> = self
            .inner
            .call("load_user_states", |mut conn| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await
            })
            .await?;
        let mut states: Vec<_> = states.into_iter().collect();
        states.sort();
        Ok(states)
    }

    async fn delete_user_state(
        &self,
        shard: u32,
        epoch: u64,
        user: &str,
    ) -> Result<WriteOutcome, SharedTierError> {
        let write = Write::DeleteUserState {
            shard,
            epoch,
            user: user.to_owned(),
        };
        Ok(self.inner.write(write).await?.outcome())
    }

    async fn put_running_experiments(
        &self,
        experiments: &[Experiment],
    ) -> Result<WriteOutcome, SharedTierError> {
        let json =
            serde_json::to_string(experiments).map_err(|source| SharedTierError::Encode {
                what: "the running experiments",
                source,
            })?;
        let write = Write::RunningExperiments { json };
        Ok(self.inner.write(write).await?.outcome())
    }

    async fn running_experiments(&self) -> Result<Option<Vec<Experiment>>, SharedTierError> {
        let key = self.inner.keys.running_experiments();
        let json: Option<Vec<u8>> = self
            .inner
            .call("running_experiments", |mut conn| {
                let key = key.clone();
                async move { redis::cmd("GET").arg(&key).query_async(&mut conn).await }
            })
            .await?;
        let Some(stored) = json else {
            return Ok(None);
        };
        let unverified = |key: String| SharedTierError::Unverified {
            key,
            deployment: self.inner.sealer.deployment().to_owned(),
        };
        let Ok(sealed) = serde_json::from_slice::<SealedExperiments>(&stored) else {
            return Err(unverified(key));
        };
        let what = Sealed::RunningExperiments {
            json: &sealed.experiments,
        };
        if !self.inner.sealer.verifies(what, sealed.seal.as_bytes()) {
            return Err(unverified(key));
        }
        serde_json::from_str(&sealed.experiments)
            .map(Some)
            .map_err(|e| SharedTierError::Corrupt {
                key,
                problem: format!("not a JSON list of experiments: {e}"),
            })
    }

    fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    fn queued_writes(&self) -> usize {
        self.inner.queue.len()
    }
}

/// The most bytes of a malformed notification a log line shows.
const MAX_LOGGED_PAYLOAD: usize = 200;

/// The subscriber task: (re)connects to the seeds in turn, announces each connection with
/// `Resync`, forwards every well-formed message, and ends when the receiver is dropped.
async fn follow_changes(
    seeds: Vec<SecretUrl>,
    channel: String,
    timeout: Duration,
    tx: mpsc::Sender<TierChange>,
) {
    let mut attempt = 0usize;
    loop {
        let Some(seed) = seeds.get(attempt % seeds.len().max(1)) else {
            return;
        };
        attempt = attempt.wrapping_add(1);
        match subscribe_once(seed.expose(), &channel, timeout).await {
            Ok(pubsub) => {
                let seed = seed.redacted();
                tracing::info!(%seed, channel, "following shared tier change notifications");
                if tx.send(TierChange::Resync).await.is_err() {
                    return;
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let payload = message.get_payload_bytes();
                            match serde_json::from_slice::<ChangeMessage>(payload) {
                                Ok(ChangeMessage { set, version }) => {
                                    if tx.send(TierChange::Changed { set, version }).await.is_err() {
                                        return;
                                    }
                                }
                                // Anyone who can reach Redis can publish: the payload is shown
                                // only in part, so a huge one cannot flood the log.
                                Err(e) => tracing::warn!(
                                    error = %e,
                                    payload = %String::from_utf8_lossy(&payload[..payload.len().min(MAX_LOGGED_PAYLOAD)]),
                                    bytes = payload.len(),
                                    "ignoring a malformed shared tier change notification"
                                ),
                            }
                        }
                        () = tx.closed() => return,
                    }
                }
                tracing::warn!(
                    %seed,
                    "lost the shared tier change subscription; reconnecting"
                );
            }
            Err(e) => {
                tracing::debug!(error = %e, seed = %seed.redacted(), "cannot subscribe to shared tier changes");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
            () = tx.closed() => return,
        }
    }
}

async fn subscribe_once(
    seed: &str,
    channel: &str,
    timeout: Duration,
) -> Result<redis::aio::PubSub, RedisError> {
    let attempt = async {
        let client = redis::Client::open(seed)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribing timed out",
        ))),
    }
}
