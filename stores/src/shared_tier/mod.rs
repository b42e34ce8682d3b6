//! The shared tier: state every node of a deployment can reach, beside the flag store. It holds
//! flag-set snapshots by version (a node that starts while PostgreSQL is down serves the newest
//! snapshot from here) and the catalog of running experiments (which such a node counts exposures
//! for), carries change notifications between nodes, and keeps the per-user state a shard's new
//! owner needs after a move.
//!
//! The tier is optional (`[shared_tier] kind = "none"` by default) and never on the evaluation
//! path: every call sits behind a circuit breaker with a timeout, writes made while it is down wait
//! in a bounded queue and are replayed in order when it answers again, and reads fail fast with
//! [`SharedTierError::Unavailable`] while the breaker is open.

pub mod config;
mod memory;
pub(crate) mod queue;
mod redis_tier;
pub mod seal;
mod user_states;
pub mod wal;

pub use user_states::TierUserStates;

use std::sync::Arc;

use async_trait::async_trait;
use bunting_experiments::Experiment;
use tokio::sync::mpsc;

use crate::secret_url::RedactedUrl;
use config::SharedTierConfig;

pub use crate::breaker::BreakerState;
pub use memory::MemoryTier;
pub use redis_tier::RedisTier;

/// One flag set's snapshot as the tier holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct TierSnapshot {
    pub set: String,
    pub version: u64,
    pub content: TierContent,
}

/// What a flag set is at a snapshot's version.
#[derive(Debug, Clone, PartialEq)]
pub enum TierContent {
    /// The set's flagd document, as the writer stored it.
    Flags(serde_json::Value),
    /// The set was deleted at this version: a tombstone, so a node that starts from the tier (or
    /// follows it while PostgreSQL is down) does not serve a deleted set, and an older snapshot
    /// written late cannot bring it back (the version compare-and-set refuses it).
    Deleted,
}

impl TierSnapshot {
    /// The flagd document, unless the snapshot is a tombstone.
    pub fn flags(&self) -> Option<&serde_json::Value> {
        match &self.content {
            TierContent::Flags(json) => Some(json),
            TierContent::Deleted => None,
        }
    }
}

/// What became of a snapshot write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotWrite {
    /// This version is now the stored one.
    Stored,
    /// The tier already holds `stored`, at least as new; nothing was written. Another node wrote
    /// this version first, or a newer one.
    NotNewer { stored: u64 },
    /// The tier is unreachable; the write waits in the queue.
    Queued,
}

/// What became of any other write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    Queued,
}

/// What a subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierChange {
    /// A node stored `version` of `set`.
    Changed { set: String, version: u64 },
    /// The subscription was (re)established: changes may have been missed while it was down, so
    /// re-read every snapshot and keep what is newer.
    Resync,
}

/// Changes as they are published; the sender reconnects by itself and ends with the tier.
pub type ChangeStream = mpsc::Receiver<TierChange>;

#[derive(Debug, thiserror::Error)]
pub enum SharedTierError {
    /// The breaker is open: the call was refused without touching the network.
    #[error("shared tier {endpoint} unavailable: circuit breaker open")]
    Unavailable { endpoint: RedactedUrl },
    #[error("shared tier {endpoint} did not answer {what} within {timeout:?}")]
    Timeout {
        endpoint: RedactedUrl,
        what: &'static str,
        timeout: std::time::Duration,
    },
    #[error("shared tier {endpoint}, {what}: {source}")]
    Redis {
        endpoint: RedactedUrl,
        what: &'static str,
        source: ::redis::RedisError,
    },
    /// What the tier holds under `key` does not carry this deployment's seal: forged, written by
    /// another deployment sharing the Redis, or written before seals existed. Refused, never
    /// served; PostgreSQL's copy replaces it at the next version check.
    #[error(
        "shared tier key {key:?} is not sealed under deployment {deployment:?}'s signing key \
         (forged, another deployment's, or from before seals); refused"
    )]
    Unverified { key: String, deployment: String },
    /// The tier answered with something no Bunting node writes.
    #[error("shared tier key {key:?} holds corrupt data: {problem}")]
    Corrupt { key: String, problem: String },
    /// A snapshot to be written is not valid JSON; nothing was written.
    #[error("snapshot of flag set {set:?} version {version} is not valid JSON: {source}")]
    InvalidSnapshot {
        set: String,
        version: u64,
        source: serde_json::Error,
    },
    /// Something to be written could not be encoded; nothing was written.
    #[error("cannot encode {what} for the shared tier: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    /// A per-user write could not be made durable while the tier is unreachable (the write-ahead
    /// log is full or its disk failed): it was not queued, so it must not be acknowledged.
    #[error("shared tier unreachable and the write could not be logged: {0}")]
    NotLogged(#[from] wal::WalError),
    #[error("shared tier config: {0}")]
    Config(String),
    /// A user-state write of shard `shard` at epoch `epoch` was refused: a node claimed the shard
    /// at `owner_epoch` since this writer did, so the writer is no longer its owner.
    #[error(
        "user state write to shard {shard} at epoch {epoch} fenced: the shard's owner epoch is {owner_epoch}"
    )]
    Fenced {
        shard: u32,
        epoch: u64,
        owner_epoch: u64,
    },
}

impl SharedTierError {
    /// Worth retrying later: the tier is (or was) unreachable, as opposed to refusing this call.
    pub fn is_transient(&self) -> bool {
        match self {
            SharedTierError::Unavailable { .. } | SharedTierError::Timeout { .. } => true,
            SharedTierError::Redis { source, .. } => redis_tier::transient(source),
            SharedTierError::Corrupt { .. }
            | SharedTierError::Unverified { .. }
            | SharedTierError::InvalidSnapshot { .. }
            | SharedTierError::Encode { .. }
            | SharedTierError::Fenced { .. }
            | SharedTierError::NotLogged(_)
            | SharedTierError::Config(_) => false,
        }
    }
}

#[async_trait]
pub trait SharedTier: Send + Sync + std::fmt::Debug {
    /// Stores `json` as `set`'s snapshot if `version` is newer than the stored one (atomically:
    /// of two nodes writing one version, the first wins and the second hears `NotNewer`).
    async fn put_snapshot(
        &self,
        set: &str,
        version: u64,
        json: &str,
    ) -> Result<SnapshotWrite, SharedTierError>;

    /// Records that `set` was deleted at `version` (a tombstone, see [`TierContent::Deleted`]),
    /// under the same rule as [`SharedTier::put_snapshot`]: only over an older version.
    async fn delete_snapshot(
        &self,
        set: &str,
        version: u64,
    ) -> Result<SnapshotWrite, SharedTierError>;

    /// Stores `content` as `set`'s snapshot at `version` whatever the tier holds, newer versions
    /// included: PostgreSQL's copy over one the tier should not have (see `feed::audit_tier`).
    /// Never queued: a repair that cannot reach the tier is retried by the next version check.
    async fn replace_snapshot(
        &self,
        set: &str,
        version: u64,
        content: &TierContent,
    ) -> Result<(), SharedTierError>;

    /// `set`'s snapshot; [`SharedTierError::Unverified`] for one without this deployment's seal.
    async fn snapshot(&self, set: &str) -> Result<Option<TierSnapshot>, SharedTierError>;

    /// Every set's snapshot, by set id. A corrupt or unverified snapshot is logged and left out,
    /// so one bad entry does not keep a node from the others.
    async fn snapshots(&self) -> Result<Vec<TierSnapshot>, SharedTierError>;

    /// Tells every subscriber, on every node, that `set` is now at `version`.
    async fn publish_change(
        &self,
        set: &str,
        version: u64,
    ) -> Result<WriteOutcome, SharedTierError>;

    /// Follows the change notifications; reconnects by itself, announcing each (re)connection
    /// with [`TierChange::Resync`].
    fn subscribe(&self) -> ChangeStream;

    /// Claims `shard` for an owner that acquired it under the shard map of `epoch`: the shard's
    /// owner epoch becomes `epoch` (the last claimant wins; see `CLAIM_SHARD` in redis_tier.rs)
    /// and the epoch it replaced is returned. From then on user-state writes at any other epoch
    /// are refused. Not queued: a claim that cannot reach the tier fails, like the load that
    /// follows it.
    async fn claim_user_states(
        &self,
        shard: u32,
        epoch: u64,
    ) -> Result<Option<u64>, SharedTierError>;

    /// Stores one user's state, written by the owner that acquired `shard` at `epoch`:
    /// [`SharedTierError::Fenced`] (nothing written) if another owner has claimed the shard
    /// since (its owner epoch is not `epoch`).
    /// A write queued while the tier is down is checked when it is replayed, and dropped
    /// (counted in `bunting_user_state_fenced_total`) if it is fenced by then.
    async fn put_user_state(
        &self,
        shard: u32,
        epoch: u64,
        user: &str,
        state: &[u8],
    ) -> Result<WriteOutcome, SharedTierError>;

    /// Every user's state in `shard`, by user.
    async fn load_user_states(&self, shard: u32)
    -> Result<Vec<(String, Vec<u8>)>, SharedTierError>;

    /// Deletes one user's state, fenced like [`SharedTier::put_user_state`].
    async fn delete_user_state(
        &self,
        shard: u32,
        epoch: u64,
        user: &str,
    ) -> Result<WriteOutcome, SharedTierError>;

    /// Replaces the catalog of running experiments, written whole: what a node that starts
    /// without PostgreSQL counts exposures for. Nodes write the catalog they read from PostgreSQL;
    /// the last write wins (each writer re-checks it periodically, so a late write of an older
    /// catalog is repaired by the next check of a node that has the newer one).
    async fn put_running_experiments(
        &self,
        experiments: &[Experiment],
    ) -> Result<WriteOutcome, SharedTierError>;

    /// The catalog of running experiments as last written; `None` if no node has written one.
    async fn running_experiments(&self) -> Result<Option<Vec<Experiment>>, SharedTierError>;

    fn breaker_state(&self) -> BreakerState;

    /// Writes waiting for the tier to come back.
    fn queued_writes(&self) -> usize;
}

/// The tier `config` describes, or `None`. Connections are made lazily, so an unreachable Redis
/// does not stop a node from starting; only a config that cannot work is an error.
pub async fn connect(
    config: &SharedTierConfig,
) -> Result<Option<Arc<dyn SharedTier>>, SharedTierError> {
    match config {
        SharedTierConfig::None => Ok(None),
        SharedTierConfig::Redis(redis) => {
            let tier: Arc<dyn SharedTier> = RedisTier::connect(redis)?;
            Ok(Some(tier))
        }
    }
}
