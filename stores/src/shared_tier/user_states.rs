//! The shared tier as the shards' per-user state store: in a cluster, a shard's next owner (after
//! a move, a restart or a crash of this node) loads its users from here.
//!
//! While Redis is down the tier queues writes (bounded, in order) and answers `Queued`; the shard
//! counts that as stored. Such a write lives only in this process until the queue drains, so a
//! node killed during a Redis outage can lose the exposures of that window; the
//! `bunting_shared_tier_queued_writes` gauge shows the exposure.
//!
//! Every write carries the writer's shard map epoch and is fenced by the shard's owner epoch
//! (set by [`UserStateStore::claim`] when a node acquires the shard): a stale owner's write,
//! made directly or replayed from the queue after an outage, cannot overwrite the new owner's
//! record. A direct write answers [`UserStateError::Fenced`]; a replayed one is dropped and
//! counted (`bunting_user_state_fenced_total{at="replay"}`).

use std::sync::Arc;

use async_trait::async_trait;
use bunting_actors::{UserStateError, UserStateStore};

use super::{SharedTier, SharedTierError};

#[derive(Debug, Clone)]
pub struct TierUserStates(pub Arc<dyn SharedTier>);

#[async_trait]
impl UserStateStore for TierUserStates {
    async fn claim(&self, shard: u32, epoch: u64) -> Result<(), UserStateError> {
        let replaced = self
            .0
            .claim_user_states(shard, epoch)
            .await
            .map_err(|e| UserStateError::Unavailable(e.to_string()))?;
        if let Some(previous) = replaced.filter(|previous| *previous != epoch) {
            tracing::debug!(shard, epoch, previous, "claimed a shard another owner held");
        }
        Ok(())
    }

    async fn load(&self, shard: u32) -> Result<Vec<(String, Vec<u8>)>, UserStateError> {
        self.0
            .load_user_states(shard)
            .await
            .map_err(|e| UserStateError::Unavailable(e.to_string()))
    }

    async fn save(
        &self,
        shard: u32,
        epoch: u64,
        user: &str,
        state: &[u8],
    ) -> Result<(), UserStateError> {
        match self.0.put_user_state(shard, epoch, user, state).await {
            Ok(_) => Ok(()),
            Err(SharedTierError::Fenced {
                shard,
                epoch,
                owner_epoch,
            }) => Err(UserStateError::Fenced {
                shard,
                epoch,
                owner_epoch,
            }),
            Err(e) => Err(UserStateError::Unavailable(e.to_string())),
        }
    }
}
