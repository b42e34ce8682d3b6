//! An [`EventStore`] in this process's memory: for tests, and for nodes configured without one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::aggregate::ExperimentTotals;
use crate::model::ExperimentId;
use crate::store::{EventStore, EventStoreError, ShardFlush};

#[derive(Debug, Default)]
pub struct MemoryEventStore {
    flushes: Mutex<BTreeMap<(ExperimentId, u32), ShardFlush>>,
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn flush(&self, flushes: &[ShardFlush]) -> Result<(), EventStoreError> {
        let mut stored = self
            .flushes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for f in flushes {
            let key = (f.experiment.clone(), f.shard);
            if f.supersedes(stored.get(&key).map(|old| old.seq)) {
                stored.insert(key, f.clone());
            }
        }
        Ok(())
    }

    async fn shard(
        &self,
        experiment: &ExperimentId,
        shard: u32,
    ) -> Result<Option<ShardFlush>, EventStoreError> {
        let stored = self
            .flushes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(stored.get(&(experiment.clone(), shard)).cloned())
    }

    async fn totals(&self, experiment: &ExperimentId) -> Result<ExperimentTotals, EventStoreError> {
        let stored = self
            .flushes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut totals = ExperimentTotals::default();
        for f in stored.values().filter(|f| &f.experiment == experiment) {
            totals.merge(&f.totals);
        }
        Ok(totals)
    }
}
