//! The shared tier in memory: one value shared (through `Arc`) by every node of an in-process
//! test cluster stands in for their Redis. Same rules as [`super::RedisTier`]: snapshots only move
//! forward by version, tombstones included; user-state writes are fenced by the shard's owner
//! epoch; subscribers hear a resync first, then every change. [`MemoryTier::set_reachable`]
//! takes it away, so what a node does while its tier is down can be tested without a Redis to
//! stop: every call then fails fast with [`SharedTierError::Unavailable`] and the breaker reads
//! open. (Nothing is queued for replay: the queue is Redis's client's, tested there.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bunting_experiments::Experiment;

use super::{
    BreakerState, ChangeStream, SharedTier, SharedTierError, SnapshotWrite, TierChange,
    TierContent, TierSnapshot, WriteOutcome,
};
use crate::fanout::Fanout;
use crate::secret_url::RedactedUrl;

/// Changes that may wait for one slow subscriber; beyond it the subscriber is sent
/// [`TierChange::Resync`] once there is room again (a reconnect's announcement in Redis terms).
const SUBSCRIBER_BUFFER: usize = 256;

/// A shared tier that keeps everything in memory.
#[derive(Debug)]
pub struct MemoryTier {
    reachable: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    snapshots: BTreeMap<String, (u64, TierContent)>,
    owners: BTreeMap<u32, u64>,
    user_states: BTreeMap<u32, BTreeMap<String, Vec<u8>>>,
    running: Option<Vec<Experiment>>,
    subscribers: Fanout<TierChange>,
}

impl Default for MemoryTier {
    fn default() -> Self {
        MemoryTier::new()
    }
}

impl MemoryTier {
    pub fn new() -> MemoryTier {
        MemoryTier {
            reachable: AtomicBool::new(true),
            state: Mutex::new(State {
                snapshots: BTreeMap::new(),
                owners: BTreeMap::new(),
                user_states: BTreeMap::new(),
                running: None,
                subscribers: Fanout::new(TierChange::Resync),
            }),
        }
    }

    /// Makes the tier unreachable (`false`) or brings it back (`true`). Subscribers hear a
    /// resync when it comes back, as after a Redis reconnect.
    pub fn set_reachable(&self, reachable: bool) {
        let was = self.reachable.swap(reachable, Ordering::SeqCst);
        if reachable && !was {
            self.state().publish(&TierChange::Resync);
        }
    }

    /// Every call's first step: the state, or `Unavailable` while the tier is away.
    fn reach(&self) -> Result<MutexGuard<'_, State>, SharedTierError> {
        if self.reachable.load(Ordering::SeqCst) {
            Ok(self.state())
        } else {
            Err(SharedTierError::Unavailable {
                endpoint: RedactedUrl::new("memory://shared-tier"),
            })
        }
    }

    /// No holder leaves the state half-written (each call checks before it changes anything),
    /// so a panic elsewhere does not make it unusable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_snapshot(
        &self,
        set: &str,
        version: u64,
        content: TierContent,
    ) -> Result<SnapshotWrite, SharedTierError> {
        let mut state = self.reach()?;
        if let Some((stored, _)) = state.snapshots.get(set)
            && *stored >= version
        {
            return Ok(SnapshotWrite::NotNewer { stored: *stored });
        }
        state.snapshots.insert(set.to_owned(), (version, content));
        Ok(SnapshotWrite::Stored)
    }

    /// A user-state write by the owner at `epoch`, refused if another has claimed the shard.
    fn fenced(
        &self,
        shard: u32,
        epoch: u64,
        write: impl FnOnce(&mut BTreeMap<String, Vec<u8>>),
    ) -> Result<WriteOutcome, SharedTierError> {
        let mut state = self.reach()?;
        if let Some(&owner_epoch) = state.owners.get(&shard)
            && owner_epoch != epoch
        {
            return Err(SharedTierError::Fenced {
                shard,
                epoch,
                owner_epoch,
            });
        }
        write(state.user_states.entry(shard).or_default());
        Ok(WriteOutcome::Written)
    }
}

impl State {
    fn publish(&mut self, change: &TierChange) {
        self.subscribers.send(change);
    }
}

#[async_trait]
impl SharedTier for MemoryTier {
    async fn put_snapshot(
        &self,
        set: &str,
        version: u64,
        json: &str,
    ) -> Result<SnapshotWrite, SharedTierError> {
        let document =
            serde_json::from_str(json).map_err(|source| SharedTierError::InvalidSnapshot {
                set: set.to_owned(),
                version,
                source,
            })?;
        self.write_snapshot(set, version, TierContent::Flags(document))
    }

    async fn delete_snapshot(
        &self,
        set: &str,
        version: u64,
    ) -> Result<SnapshotWrite, SharedTierError> {
        self.write_snapshot(set, version, TierContent::Deleted)
    }

    async fn replace_snapshot(
        &self,
        set: &str,
        version: u64,
        content: &TierContent,
    ) -> Result<(), SharedTierError> {
        self.reach()?
            .snapshots
            .insert(set.to_owned(), (version, content.clone()));
        Ok(())
    }

    async fn snapshot(&self, set: &str) -> Result<Option<TierSnapshot>, SharedTierError> {
        Ok(self
            .reach()?
            .snapshots
            .get(set)
            .map(|(version, content)| TierSnapshot {
                set: set.to_owned(),
                version: *version,
                content: content.clone(),
            }))
    }

    async fn snapshots(&self) -> Result<Vec<TierSnapshot>, SharedTierError> {
        Ok(self
            .reach()?
            .snapshots
            .iter()
            .map(|(set, (version, content))| TierSnapshot {
                set: set.clone(),
                version: *version,
                content: content.clone(),
            })
            .collect())
    }

    async fn publish_change(
        &self,
        set: &str,
        version: u64,
    ) -> Result<WriteOutcome, SharedTierError> {
        self.reach()?.publish(&TierChange::Changed {
            set: set.to_owned(),
            version,
        });
        Ok(WriteOutcome::Written)
    }

    fn subscribe(&self) -> ChangeStream {
        // Like a Redis subscription once it is established: a resync first, so the subscriber
        // reads what it may have missed before it subscribed.
        self.state().subscribers.subscribe(SUBSCRIBER_BUFFER, true)
    }

    async fn claim_user_states(
        &self,
        shard: u32,
        epoch: u64,
    ) -> Result<Option<u64>, SharedTierError> {
        Ok(self.reach()?.owners.insert(shard, epoch))
    }

    async fn put_user_state(
        &self,
        shard: u32,
        epoch: u64,
        user: &str,
        state: &[u8],
    ) -> Result<WriteOutcome, SharedTierError> {
        self.fenced(shard, epoch, |users| {
            users.insert(user.to_owned(), state.to_vec());
        })
    }

    async fn load_user_states(
        &self,
        shard: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, SharedTierError> {
        Ok(self
            .reach()?
            .user_states
            .get(&shard)
            .map(|users| {
                users
                    .iter()
                    .map(|(user, state)| (user.clone(), state.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn delete_user_state(
        &self,
        shard: u32,
        epoch: u64,
        user: &str,
    ) -> Result<WriteOutcome, SharedTierError> {
        self.fenced(shard, epoch, |users| {
            users.remove(user);
        })
    }

    async fn put_running_experiments(
        &self,
        experiments: &[Experiment],
    ) -> Result<WriteOutcome, SharedTierError> {
        self.reach()?.running = Some(experiments.to_vec());
        Ok(WriteOutcome::Written)
    }

    async fn running_experiments(&self) -> Result<Option<Vec<Experiment>>, SharedTierError> {
        Ok(self.reach()?.running.clone())
    }

    fn breaker_state(&self) -> BreakerState {
        if self.reachable.load(Ordering::SeqCst) {
            BreakerState::Closed
        } else {
            BreakerState::Open
        }
    }

    fn queued_writes(&self) -> usize {
        0
    }
}
