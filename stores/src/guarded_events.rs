//! An event store behind a circuit breaker ([`crate::breaker`]).
//!
//! Every shard flushes its cumulative totals each second, so with 256 shards a ScyllaDB that is
//! down would take 256 calls a second, each waiting out its timeout on a connection pool the
//! shards share. With the breaker open, a flush fails at once (`bunting_event_flush_failures_total`
//! as before) and the shard keeps its totals. Nothing needs to queue: flushes are cumulative and
//! stamped with a growing sequence, so the first flush after recovery carries everything counted
//! meanwhile, and a store that missed some flushes loses nothing.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bunting_experiments::{
    EventStore, EventStoreError, ExperimentId, ExperimentTotals, ShardFlush,
};

use crate::breaker::{Breaker, BreakerSettings, BreakerState, EVENT_STORE};
use crate::secret_url::RedactedUrl;

#[derive(Debug)]
pub struct GuardedEventStore {
    inner: Arc<dyn EventStore>,
    breaker: Breaker,
}

impl GuardedEventStore {
    /// `endpoint` names the store in metrics and errors (its first contact point, say).
    pub fn new(
        inner: Arc<dyn EventStore>,
        settings: BreakerSettings,
        endpoint: RedactedUrl,
    ) -> GuardedEventStore {
        GuardedEventStore {
            inner,
            breaker: Breaker::guarding(EVENT_STORE, settings, endpoint),
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Runs `call` if the breaker admits it. Only an outage counts against the store: a refusal
    /// of the input is an answer, so it proves the store reachable.
    async fn guarded<T, F>(&self, call: impl FnOnce() -> F) -> Result<T, EventStoreError>
    where
        F: Future<Output = Result<T, EventStoreError>>,
    {
        let Some(permit) = self.breaker.admit() else {
            return Err(EventStoreError::Unavailable(format!(
                "{}: circuit breaker open after repeated failures; retried shortly",
                self.breaker.endpoint()
            )));
        };
        let result = call().await;
        match &result {
            Err(e) if e.is_outage() => permit.failed(),
            _ => permit.succeeded(),
        }
        result
    }
}

#[async_trait]
impl EventStore for GuardedEventStore {
    async fn flush(&self, flushes: &[ShardFlush]) -> Result<(), EventStoreError> {
        self.guarded(|| self.inner.flush(flushes)).await
    }

    async fn shard(
        &self,
        experiment: &ExperimentId,
        shard: u32,
    ) -> Result<Option<ShardFlush>, EventStoreError> {
        self.guarded(|| self.inner.shard(experiment, shard)).await
    }

    async fn totals(&self, experiment: &ExperimentId) -> Result<ExperimentTotals, EventStoreError> {
        self.guarded(|| self.inner.totals(experiment)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bunting_experiments::MemoryEventStore;

    use super::*;

    /// A store that fails with the queued errors first, then behaves as memory; counts calls.
    #[derive(Debug, Default)]
    struct Flaky {
        failures: Mutex<Vec<EventStoreError>>,
        calls: AtomicUsize,
        memory: MemoryEventStore,
    }

    #[async_trait]
    impl EventStore for Flaky {
        async fn flush(&self, flushes: &[ShardFlush]) -> Result<(), EventStoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let next = self.failures.lock().unwrap().pop();
            match next {
                Some(e) => Err(e),
                None => self.memory.flush(flushes).await,
            }
        }

        async fn shard(
            &self,
            experiment: &ExperimentId,
            shard: u32,
        ) -> Result<Option<ShardFlush>, EventStoreError> {
            self.memory.shard(experiment, shard).await
        }

        async fn totals(
            &self,
            experiment: &ExperimentId,
        ) -> Result<ExperimentTotals, EventStoreError> {
            self.memory.totals(experiment).await
        }
    }

    fn flush(seq: u64) -> ShardFlush {
        let mut totals = ExperimentTotals::default();
        totals.expose("a");
        ShardFlush {
            experiment: ExperimentId::new("e").unwrap(),
            shard: 0,
            seq,
            totals,
        }
    }

    fn guarded(inner: Arc<Flaky>, open_for: Duration) -> GuardedEventStore {
        GuardedEventStore::new(
            inner,
            BreakerSettings {
                failure_threshold: 2,
                open_for,
            },
            RedactedUrl::new("test-events"),
        )
    }

    #[tokio::test]
    async fn an_outage_opens_the_breaker_and_later_flushes_fail_without_a_call() {
        let inner = Arc::new(Flaky::default());
        *inner.failures.lock().unwrap() = vec![
            EventStoreError::Timeout(Duration::from_secs(2)),
            EventStoreError::Unavailable("down".into()),
        ];
        let store = guarded(inner.clone(), Duration::from_secs(3600));
        assert!(store.flush(&[flush(1)]).await.is_err());
        assert!(store.flush(&[flush(2)]).await.is_err());
        assert_eq!(store.breaker_state(), BreakerState::Open);
        let refused = store.flush(&[flush(3)]).await.unwrap_err();
        assert!(
            refused.to_string().contains("test-events") && refused.is_outage(),
            "{refused}"
        );
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            2,
            "the open breaker spared the store"
        );
    }

    #[tokio::test]
    async fn the_first_flush_after_recovery_carries_everything() {
        let inner = Arc::new(Flaky::default());
        *inner.failures.lock().unwrap() = vec![
            EventStoreError::Unavailable("down".into()),
            EventStoreError::Unavailable("down".into()),
        ];
        let store = guarded(inner.clone(), Duration::from_millis(1));
        assert!(store.flush(&[flush(1)]).await.is_err());
        assert!(store.flush(&[flush(2)]).await.is_err());
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The probe: the store is back, and the cumulative flush holds what the failed ones had.
        store.flush(&[flush(3)]).await.unwrap();
        assert_eq!(store.breaker_state(), BreakerState::Closed);
        let stored = store
            .shard(&ExperimentId::new("e").unwrap(), 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((stored.seq, stored.totals.exposed()), (3, 1));
    }

    #[tokio::test]
    async fn refused_input_does_not_count_as_an_outage() {
        let inner = Arc::new(Flaky::default());
        *inner.failures.lock().unwrap() = vec![
            EventStoreError::Invalid("seq too large".into()),
            EventStoreError::Invalid("seq too large".into()),
            EventStoreError::Invalid("seq too large".into()),
        ];
        let store = guarded(inner.clone(), Duration::from_secs(3600));
        for seq in 1..=3 {
            assert!(store.flush(&[flush(seq)]).await.is_err());
        }
        assert_eq!(store.breaker_state(), BreakerState::Closed);
        store.flush(&[flush(4)]).await.unwrap();
    }
}
