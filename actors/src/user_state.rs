//! The per-user state a shard keeps for the users it owns, and where that state lives beyond the
//! shard's memory so the shard's next owner (after a move, a restart or a crash) finds it.
//!
//! A user's state is their record in each experiment they were exposed to
//! ([`bunting_experiments::UserExposure`]). The shard writes a record through to its
//! [`UserStateStore`] before it answers the request that changed it, so an acknowledged exposure
//! or conversion survives the node being killed; the shard's statistics are a function of these
//! records and are rebuilt from them when a shard is acquired.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use bunting_experiments::{ExperimentId, UserExposure};

/// One user's records, by experiment.
pub type UserState = BTreeMap<ExperimentId, UserExposure>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserStateError {
    #[error("user state store unavailable: {0}")]
    Unavailable(String),
    #[error("stored state of user {user:?} in shard {shard} is not a user state: {problem}")]
    Corrupt {
        shard: u32,
        user: String,
        problem: String,
    },
    /// The shard's owner epoch in the store is not the writer's: another node has claimed the
    /// shard since this one acquired it, so this writer must not overwrite what that owner
    /// writes. Whether this node takes the shard back is the supervisor's call (it compares its
    /// current map's epoch with `owner_epoch`).
    #[error(
        "shard {shard} is fenced: this node holds it at map epoch {epoch}, the store's owner epoch is {owner_epoch}"
    )]
    Fenced {
        shard: u32,
        epoch: u64,
        owner_epoch: u64,
    },
}

/// Durable per-user state, one collection per shard. Implementations: the shared tier (Redis)
/// in a cluster, a local file log for a single node, memory for tests.
///
/// Epochs are fencing tokens: the shard map epoch at which this node acquired the shard (a
/// single node, the only writer, uses 0). A store shared between nodes keeps a per-shard owner
/// epoch, set by each [`UserStateStore::claim`] (the last claimant wins), and refuses a write at
/// any other epoch with [`UserStateError::Fenced`], so a stale owner (one that has not yet
/// adopted the map that moved the shard away) cannot overwrite the new owner's records. The last
/// claimant rather than the highest epoch wins because epochs start again from zero when a whole
/// cluster restarts. Stores with a single writer (memory, the local file) accept the epoch and
/// ignore it.
#[async_trait]
pub trait UserStateStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims `shard` for a node that acquired it at `epoch`, before it loads the shard's users:
    /// the shard's owner epoch becomes `epoch`, fencing whichever owner held it before.
    async fn claim(&self, shard: u32, epoch: u64) -> Result<(), UserStateError>;

    /// Every user's state in `shard`, as raw bytes (see [`encode`]).
    async fn load(&self, shard: u32) -> Result<Vec<(String, Vec<u8>)>, UserStateError>;

    /// Replaces one user's state, written by the owner that acquired `shard` at `epoch`. `Ok`
    /// means stored, or queued to be stored by a store that buffers writes while its backend is
    /// down; `Fenced` means another node has claimed the shard since and nothing was written.
    async fn save(
        &self,
        shard: u32,
        epoch: u64,
        user: &str,
        state: &[u8],
    ) -> Result<(), UserStateError>;
}

pub fn encode(state: &UserState) -> Vec<u8> {
    // A map of plain data: serializing it cannot fail; an empty object is the safe fallback.
    serde_json::to_vec(state).unwrap_or_else(|_| b"{}".to_vec())
}

pub fn decode(shard: u32, user: &str, bytes: &[u8]) -> Result<UserState, UserStateError> {
    serde_json::from_slice(bytes).map_err(|e| UserStateError::Corrupt {
        shard,
        user: user.to_owned(),
        problem: e.to_string(),
    })
}

/// Per-user state in this process's memory: for tests, and for nodes that were given no store
/// (the state then lasts as long as the process).
#[derive(Debug, Default)]
pub struct MemoryUserStates {
    shards: Mutex<HashMap<u32, BTreeMap<String, Vec<u8>>>>,
}

#[async_trait]
impl UserStateStore for MemoryUserStates {
    async fn claim(&self, _shard: u32, _epoch: u64) -> Result<(), UserStateError> {
        // One process, one writer per shard at a time: nothing to fence.
        Ok(())
    }

    async fn load(&self, shard: u32) -> Result<Vec<(String, Vec<u8>)>, UserStateError> {
        let shards = self
            .shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(shards
            .get(&shard)
            .map(|users| users.iter().map(|(u, s)| (u.clone(), s.clone())).collect())
            .unwrap_or_default())
    }

    async fn save(
        &self,
        shard: u32,
        _epoch: u64,
        user: &str,
        state: &[u8],
    ) -> Result<(), UserStateError> {
        let mut shards = self
            .shards
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shards
            .entry(shard)
            .or_default()
            .insert(user.to_owned(), state.to_vec());
        Ok(())
    }
}
