//! Where the per-shard statistics are kept: behind [`EventStore`], an embedded file store for a
//! single node (the default); ScyllaDB for a cluster is `bunting-stores`' `scylladb`, so this
//! crate compiles no database driver.
//!
//! **Retry safety.** A shard flushes its *cumulative* totals for an experiment, stamped with a
//! sequence number that only grows (the owner takes `max(last seq + 1, now in µs)`), and a store
//! keeps, per (experiment, shard), the flush with the largest sequence. Replaying a flush, or a
//! delayed older one arriving late, changes nothing, so a flush that timed out can be retried
//! blindly. (Counter columns would make a retried increment count twice.) A shard's new owner
//! after a move loads the stored flush and continues from it.

mod embedded;

pub use embedded::EmbeddedStore;

use async_trait::async_trait;

use crate::aggregate::ExperimentTotals;
use crate::model::ExperimentId;

/// One shard's cumulative totals for one experiment.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardFlush {
    pub experiment: ExperimentId,
    pub shard: u32,
    pub seq: u64,
    pub totals: ExperimentTotals,
}

impl ShardFlush {
    /// Whether a store holding a flush with `stored_seq` for the same (experiment, shard) takes
    /// this one: only a strictly larger seq does, so a replay or a late older flush changes
    /// nothing (the retry-safety rule above; ScyllaDB applies it as `USING TIMESTAMP seq`).
    pub fn supersedes(&self, stored_seq: Option<u64>) -> bool {
        stored_seq.is_none_or(|stored| self.seq > stored)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("event store timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("event store data for experiment {experiment} is corrupt: {problem}")]
    Corrupt {
        experiment: ExperimentId,
        problem: String,
    },
    /// Input the store cannot represent (a keyspace name that is not a CQL name, a seq beyond
    /// what a CQL write timestamp holds); retrying it cannot help.
    #[error("event store cannot take this input: {0}")]
    Invalid(String),
    #[error("event store I/O on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl EventStoreError {
    /// Whether the error says the store could not be reached or did not answer in time (what a
    /// circuit breaker counts), as opposed to a refusal of this input or this data.
    pub fn is_outage(&self) -> bool {
        match self {
            EventStoreError::Unavailable(_)
            | EventStoreError::Timeout(_)
            | EventStoreError::Io { .. } => true,
            EventStoreError::Corrupt { .. } | EventStoreError::Invalid(_) => false,
        }
    }
}

#[async_trait]
pub trait EventStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores each flush unless the store already holds one with a larger or equal `seq` for the
    /// same (experiment, shard). All-or-nothing per flush; idempotent.
    async fn flush(&self, flushes: &[ShardFlush]) -> Result<(), EventStoreError>;

    /// The stored flush of one shard, for the shard's (new) owner.
    async fn shard(
        &self,
        experiment: &ExperimentId,
        shard: u32,
    ) -> Result<Option<ShardFlush>, EventStoreError>;

    /// Every shard's latest flush for `experiment`, merged: the experiment's totals.
    async fn totals(&self, experiment: &ExperimentId) -> Result<ExperimentTotals, EventStoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_strictly_newer_flush_supersedes_the_stored_one() {
        let flush = ShardFlush {
            experiment: ExperimentId::new("e").unwrap(),
            shard: 3,
            seq: 10,
            totals: ExperimentTotals::default(),
        };
        assert!(flush.supersedes(None), "nothing stored yet");
        assert!(flush.supersedes(Some(9)));
        assert!(!flush.supersedes(Some(10)), "a replay changes nothing");
        assert!(
            !flush.supersedes(Some(11)),
            "a late older flush changes nothing"
        );
    }
}
