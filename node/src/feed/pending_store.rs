//! A PostgreSQL store that was unreachable when the node started. The node serves from the shared
//! tier meanwhile; every call through this store (the feed's version check, an admin request)
//! first retries the connection, at most once per [`RETRY_EVERY`], and answers `Unavailable`
//! until it succeeds. From then on it is the store itself, so the feed catches up by version and
//! the admin API works without a restart.
//!
//! [`PendingExperimentStore`] is the experiment store of such a node: it waits for the same
//! connection (one pool, one set of retries for both) and then is the `PostgresExperimentStore`
//! on it, so the experiment feed and the Experiments API also work without a restart.
// The wiring: picks the concrete stores the config names (see node/clippy.toml).
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bunting_experiments::ExperimentId;
use serde_json::Value;
use tokio::sync::Mutex;

use bunting_stores::experiments::{
    ExperimentAuditEntry, ExperimentFilter, ExperimentPage, ExperimentRecord, ExperimentStore,
    ExperimentStoreError, ExperimentSubscription, NewExperiment, PostgresExperimentStore,
};
use bunting_stores::secret_url::SecretUrl;
use bunting_stores::{
    AdminStore, AuditEntry, BatchOutcome, FlagBatch, FlagList, FlagRecord, FlagSetFields,
    FlagSetRecord, FlagSetSnapshot, PostgresSettings, PostgresStore, StoreError, Subscription,
};

/// Connection attempts are this far apart at least, however many calls arrive meanwhile.
const RETRY_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct PendingStore {
    /// `Debug` prints it redacted: the store ends up in `Debug` dumps of the feed.
    url: SecretUrl,
    settings: PostgresSettings,
    store: OnceLock<Arc<PostgresStore>>,
    last_attempt: Mutex<Option<Instant>>,
}

impl PendingStore {
    pub fn new(url: SecretUrl, settings: PostgresSettings) -> PendingStore {
        PendingStore {
            url,
            settings,
            store: OnceLock::new(),
            last_attempt: Mutex::new(None),
        }
    }

    /// The connected store: at once once connected, else after one connection attempt if none
    /// was made in the last [`RETRY_EVERY`]; `Unavailable`, naming PostgreSQL, until one succeeds.
    pub async fn connected(&self) -> Result<Arc<PostgresStore>, StoreError> {
        if let Some(store) = self.store.get() {
            return Ok(store.clone());
        }
        let mut last = self.last_attempt.lock().await;
        if let Some(store) = self.store.get() {
            return Ok(store.clone());
        }
        if last.is_some_and(|at| at.elapsed() < RETRY_EVERY) {
            return Err(StoreError::Unavailable {
                source: "PostgreSQL was unreachable at start-up and is not back yet".into(),
            });
        }
        *last = Some(Instant::now());
        let store = match connect(self.url.expose().to_owned(), self.settings.clone()).await {
            Ok(store) => Arc::new(store),
            // Say which database: callers (the Experiments API among them) report this as it is,
            // and a bare "connection refused" would not tell an operator what is down.
            Err(StoreError::Unavailable { source }) => {
                return Err(StoreError::Unavailable {
                    source: format!(
                        "PostgreSQL was unreachable at start-up and still is: {source}"
                    )
                    .into(),
                });
            }
            Err(e) => return Err(e),
        };
        tracing::warn!("PostgreSQL is reachable again; catching up from it");
        // Only this call, under the lock, sets it.
        let _ = self.store.set(store.clone());
        Ok(store)
    }
}

/// The experiment store of a node whose PostgreSQL was unreachable at start-up: `Unavailable`
/// until the [`PendingStore`] it shares connects, then the PostgreSQL experiment store on that
/// connection's pool.
#[derive(Debug)]
pub struct PendingExperimentStore {
    flags: Arc<PendingStore>,
    store: OnceLock<PostgresExperimentStore>,
}

impl PendingExperimentStore {
    pub fn new(flags: Arc<PendingStore>) -> PendingExperimentStore {
        PendingExperimentStore {
            flags,
            store: OnceLock::new(),
        }
    }

    async fn store(&self) -> Result<&PostgresExperimentStore, StoreError> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let postgres = self.flags.connected().await?;
        Ok(self
            .store
            .get_or_init(|| PostgresExperimentStore::new(&postgres)))
    }
}

/// One connection attempt. `PostgresStore::connect`'s future is not provably `Send` (rustc's
/// higher-ranked check trips on sqlx's migration future: "implementation of `sqlx::Acquire` is
/// not general enough"), so it cannot be awaited inside `async_trait` methods or spawned; it runs
/// on a blocking thread instead, driven by this runtime's handle.
async fn connect(url: String, settings: PostgresSettings) -> Result<PostgresStore, StoreError> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(async move { PostgresStore::connect(&url, settings).await })
    })
    .await
    .map_err(|e| StoreError::Internal {
        source: format!("connecting to PostgreSQL: {e}").into(),
    })?
}

#[async_trait]
impl AdminStore for PendingStore {
    async fn create_flag_set(
        &self,
        id: &str,
        fields: FlagSetFields,
        actor: &str,
    ) -> Result<FlagSetRecord, StoreError> {
        self.connected()
            .await?
            .create_flag_set(id, fields, actor)
            .await
    }

    async fn update_flag_set(
        &self,
        id: &str,
        fields: FlagSetFields,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagSetRecord, StoreError> {
        self.connected()
            .await?
            .update_flag_set(id, fields, expected_version, actor)
            .await
    }

    async fn delete_flag_set(
        &self,
        id: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, StoreError> {
        self.connected()
            .await?
            .delete_flag_set(id, expected_version, actor)
            .await
    }

    async fn apply_flag_changes(
        &self,
        flag_set: &str,
        batch: FlagBatch,
        actor: &str,
    ) -> Result<BatchOutcome, StoreError> {
        self.connected()
            .await?
            .apply_flag_changes(flag_set, batch, actor)
            .await
    }

    async fn get_flag_set(&self, id: &str) -> Result<FlagSetRecord, StoreError> {
        self.connected().await?.get_flag_set(id).await
    }

    async fn list_flag_sets(&self) -> Result<Vec<FlagSetRecord>, StoreError> {
        self.connected().await?.list_flag_sets().await
    }

    async fn create_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: Value,
        expected_flag_set_version: Option<i64>,
        actor: &str,
    ) -> Result<FlagRecord, StoreError> {
        self.connected()
            .await?
            .create_flag(flag_set, key, definition, expected_flag_set_version, actor)
            .await
    }

    async fn update_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: Value,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagRecord, StoreError> {
        self.connected()
            .await?
            .update_flag(flag_set, key, definition, expected_version, actor)
            .await
    }

    async fn delete_flag(
        &self,
        flag_set: &str,
        key: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, StoreError> {
        self.connected()
            .await?
            .delete_flag(flag_set, key, expected_version, actor)
            .await
    }

    async fn get_flag(&self, flag_set: &str, key: &str) -> Result<FlagRecord, StoreError> {
        self.connected().await?.get_flag(flag_set, key).await
    }

    async fn list_flags(&self, flag_set: &str) -> Result<FlagList, StoreError> {
        self.connected().await?.list_flags(flag_set).await
    }

    async fn list_audit(
        &self,
        flag_set: Option<&str>,
        flag_key: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.connected()
            .await?
            .list_audit(flag_set, flag_key, before_id, limit)
            .await
    }

    async fn snapshot(&self, flag_set: &str) -> Result<FlagSetSnapshot, StoreError> {
        self.connected().await?.snapshot(flag_set).await
    }

    async fn snapshots(&self) -> Result<Vec<FlagSetSnapshot>, StoreError> {
        self.connected().await?.snapshots().await
    }

    async fn subscribe(&self) -> Result<Subscription, StoreError> {
        self.connected().await?.subscribe().await
    }
}

#[async_trait]
impl ExperimentStore for PendingExperimentStore {
    async fn create_experiment(
        &self,
        new: NewExperiment,
        actor: &str,
    ) -> Result<ExperimentRecord, ExperimentStoreError> {
        self.store().await?.create_experiment(new, actor).await
    }

    async fn start_experiment(
        &self,
        id: &ExperimentId,
        actor: &str,
    ) -> Result<ExperimentRecord, ExperimentStoreError> {
        self.store().await?.start_experiment(id, actor).await
    }

    async fn stop_experiment(
        &self,
        id: &ExperimentId,
        actor: &str,
    ) -> Result<ExperimentRecord, ExperimentStoreError> {
        self.store().await?.stop_experiment(id, actor).await
    }

    async fn get_experiment(
        &self,
        id: &ExperimentId,
    ) -> Result<ExperimentRecord, ExperimentStoreError> {
        self.store().await?.get_experiment(id).await
    }

    async fn list_experiments(
        &self,
        filter: &ExperimentFilter,
    ) -> Result<ExperimentPage, ExperimentStoreError> {
        self.store().await?.list_experiments(filter).await
    }

    async fn experiment_audit(
        &self,
        id: &ExperimentId,
    ) -> Result<Vec<ExperimentAuditEntry>, ExperimentStoreError> {
        self.store().await?.experiment_audit(id).await
    }

    async fn subscribe(&self) -> Result<ExperimentSubscription, ExperimentStoreError> {
        self.store().await?.subscribe().await
    }
}
