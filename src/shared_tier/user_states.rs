//! The shared tier as the shards' per-user state store: in a cluster, a shard's next owner (after
//! a move, a restart or a crash of this node) loads its users from here.
//!
//! While Redis is down the tier queues writes (bounded, in order) and answers `Queued`; the shard
//! counts that as stored. Such a write lives only in this process until the queue drains, so a
//! node killed during a Redis outage can lose the exposures of that window; the
//! `bunting_shared_tier_queued_writes` gauge shows the exposure.

use std::sync::Arc;

use async_trait::async_trait;
use bunting_actors::{UserStateError, UserStateStore};

use super::SharedTier;

#[derive(Debug, Clone)]
pub struct TierUserStates(pub Arc<dyn SharedTier>);

#[async_trait]
impl UserStateStore for TierUserStates {
    async fn load(&self, shard: u32) -> Result<Vec<(String, Vec<u8>)>, UserStateError> {
        self.0
            .load_user_states(shard)
            .await
            .map_err(|e| UserStateError::Unavailable(e.to_string()))
    }

    async fn save(&self, shard: u32, user: &str, state: &[u8]) -> Result<(), UserStateError> {
        self.0
            // No shard claims an epoch yet (they all write at 0), so nothing is fenced.
            .put_user_state(shard, 0, user, state)
            .await
            .map(|_| ())
            .map_err(|e| UserStateError::Unavailable(e.to_string()))
    }
}
