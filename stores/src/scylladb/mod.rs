//! The cluster event store: ScyllaDB through the `scylla` driver.
//!
//! **Retry safety without read-before-write.** A shard's flush is one batch of `INSERT`s, one per
//! arm, all in the experiment's partition and all `USING TIMESTAMP <seq>`. Scylla resolves every
//! cell by last-write-wins on its write timestamp, so the cells of the flush with the largest seq
//! win on every replica whatever order writes, replays and retries arrive in: a replay rewrites
//! the same values at the same timestamp, and a late older flush loses to the newer timestamp.
//! That is also why the statements are marked idempotent (the driver may then retry them on
//! another node) and why there are no counter columns: a counter update is not idempotent, so a
//! flush that timed out after being applied would count twice when retried. (The seq is the
//! owner's `max(last + 1, now in µs)`, which is also what Scylla's own timestamps look like.)
//!
//! A single-partition batch is applied atomically and in isolation on each replica, so it is
//! `UNLOGGED`: the batchlog only buys atomicity across partitions.
//!
//! Writes and reads use the same consistency (QUORUM by default), so a read sees every flush
//! acknowledged before it.

mod rows;
mod schema;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::ExecutionError;
use scylla::response::query_result::QueryResult;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::unprepared::Statement;

pub use schema::Keyspace;

use bunting_experiments::aggregate::ExperimentTotals;
use bunting_experiments::model::ExperimentId;
use bunting_experiments::store::{EventStore, EventStoreError, ShardFlush};
use rows::StoredRow;

/// The longest `connect` may take, whatever the per-call timeout: it opens connections, creates
/// the schema (waiting for the cluster to agree on it) and prepares statements.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ScyllaSettings {
    /// Contact points, `host:port`; the driver discovers the rest of the cluster from them.
    pub known_nodes: Vec<String>,
    pub keyspace: String,
    /// Used only when the keyspace does not exist yet; an existing keyspace is left alone.
    pub replication_factor: u16,
    /// For writes and reads alike.
    pub consistency: Consistency,
    /// Bound on each store call (a flush, a read); past it the call fails with `Timeout`.
    pub timeout: Duration,
}

impl ScyllaSettings {
    /// QUORUM, replication factor 3, 2 s per call.
    pub fn new(known_nodes: Vec<String>, keyspace: impl Into<String>) -> ScyllaSettings {
        ScyllaSettings {
            known_nodes,
            keyspace: keyspace.into(),
            replication_factor: 3,
            consistency: Consistency::Quorum,
            timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug)]
pub struct ScyllaStore {
    session: Arc<Session>,
    timeout: Duration,
    consistency: Consistency,
    insert_arm: PreparedStatement,
    select_experiment: PreparedStatement,
    select_shard: PreparedStatement,
}

impl ScyllaStore {
    /// Connects, creates the keyspace and table if missing, and prepares the statements.
    pub async fn connect(settings: &ScyllaSettings) -> Result<ScyllaStore, EventStoreError> {
        ScyllaStore::connect_with(SessionBuilder::new(), settings).await
    }

    /// [`ScyllaStore::connect`] with a session builder prepared by the caller, for what the
    /// settings do not cover (authentication, TLS, pool sizes, metadata fetching); the settings'
    /// known nodes are added to it.
    pub async fn connect_with(
        builder: SessionBuilder,
        settings: &ScyllaSettings,
    ) -> Result<ScyllaStore, EventStoreError> {
        let keyspace = Keyspace::new(settings.keyspace.clone())?;
        if settings.replication_factor == 0 {
            return Err(EventStoreError::Invalid(
                "replication factor 0 would keep no copy of the data".to_owned(),
            ));
        }
        let setup = async {
            let session = builder
                .known_nodes(&settings.known_nodes)
                .build()
                .await
                .map_err(|e| {
                    EventStoreError::Unavailable(format!(
                        "cannot connect to {:?}: {e}",
                        settings.known_nodes
                    ))
                })?;
            for ddl in schema::schema_statements(&keyspace, settings.replication_factor) {
                // The driver waits for the nodes to agree on the schema after each change
                // (`auto_await_schema_agreement`), so the table exists everywhere before the
                // statements are prepared.
                session
                    .query_unpaged(Statement::new(ddl.as_str()), ())
                    .await
                    .map_err(|e| unavailable(&format!("creating the schema ({ddl})"), e))?;
            }
            ScyllaStore::from_session(Arc::new(session), &keyspace, settings).await
        };
        tokio::time::timeout(SETUP_TIMEOUT.max(settings.timeout), setup)
            .await
            .map_err(|_| EventStoreError::Timeout(SETUP_TIMEOUT.max(settings.timeout)))?
    }

    /// A store on an existing session whose keyspace already has the schema: prepares the
    /// statements and nothing else.
    pub async fn from_session(
        session: Arc<Session>,
        keyspace: &Keyspace,
        settings: &ScyllaSettings,
    ) -> Result<ScyllaStore, EventStoreError> {
        let prepare = |cql: String| {
            let session = Arc::clone(&session);
            async move {
                let mut statement = session.prepare(cql.as_str()).await.map_err(|e| {
                    EventStoreError::Unavailable(format!("cannot prepare {cql}: {e}"))
                })?;
                statement.set_consistency(settings.consistency);
                statement.set_is_idempotent(true);
                statement.set_request_timeout(Some(settings.timeout));
                Ok::<_, EventStoreError>(statement)
            }
        };
        Ok(ScyllaStore {
            insert_arm: prepare(schema::insert_arm(keyspace)).await?,
            select_experiment: prepare(schema::select_experiment(keyspace)).await?,
            select_shard: prepare(schema::select_shard(keyspace)).await?,
            session,
            timeout: settings.timeout,
            consistency: settings.consistency,
        })
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Runs one driver call within the per-call timeout.
    async fn bounded(
        &self,
        what: &str,
        call: impl Future<Output = Result<QueryResult, ExecutionError>>,
    ) -> Result<QueryResult, EventStoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) | Ok(Err(ExecutionError::RequestTimeout(_))) => {
                Err(EventStoreError::Timeout(self.timeout))
            }
            Ok(Err(e)) => Err(unavailable(what, e)),
            Ok(Ok(result)) => Ok(result),
        }
    }

    async fn flush_one(&self, flush: &ShardFlush) -> Result<(), EventStoreError> {
        let rows = rows::insert_rows(flush)?;
        if rows.is_empty() {
            // Nothing to keep: no arms reads back the same as no rows.
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &rows {
            batch.append_statement(self.insert_arm.clone());
        }
        batch.set_consistency(self.consistency);
        batch.set_is_idempotent(true);
        batch.set_request_timeout(Some(self.timeout));
        let what = format!(
            "flush of experiment {} shard {} seq {}",
            flush.experiment, flush.shard, flush.seq
        );
        self.bounded(&what, self.session.batch(&batch, rows))
            .await
            .map(drop)
    }

    async fn read(
        &self,
        experiment: &ExperimentId,
        shard: Option<u32>,
    ) -> Result<BTreeMap<u32, ShardFlush>, EventStoreError> {
        let id = experiment.as_str();
        let result = match shard {
            Some(shard) => {
                let what = format!("read of experiment {experiment} shard {shard}");
                let call = self
                    .session
                    .execute_unpaged(&self.select_shard, (id, i64::from(shard)));
                self.bounded(&what, call).await?
            }
            None => {
                let what = format!("read of experiment {experiment}");
                let call = self.session.execute_unpaged(&self.select_experiment, (id,));
                self.bounded(&what, call).await?
            }
        };
        let corrupt = |problem: String| EventStoreError::Corrupt {
            experiment: experiment.clone(),
            problem,
        };
        let rows = result
            .into_rows_result()
            .map_err(|e| corrupt(format!("the read returned no rows result: {e}")))?;
        let typed = rows
            .rows::<StoredRow>()
            .map_err(|e| corrupt(format!("rows of an unexpected shape: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(format!("a row cannot be read: {e}")))?;
        rows::flushes_from_rows(experiment, typed)
    }
}

fn unavailable(what: &str, e: ExecutionError) -> EventStoreError {
    EventStoreError::Unavailable(format!("{what}: {e}"))
}

#[async_trait]
impl EventStore for ScyllaStore {
    async fn flush(&self, flushes: &[ShardFlush]) -> Result<(), EventStoreError> {
        // Each flush is its own batch (its own partition), sent together; every one is applied
        // whole or not at all, and any failure fails the call so the caller retries all of them,
        // which the timestamps make harmless for those that did land.
        futures::future::try_join_all(flushes.iter().map(|flush| self.flush_one(flush)))
            .await
            .map(drop)
    }

    async fn shard(
        &self,
        experiment: &ExperimentId,
        shard: u32,
    ) -> Result<Option<ShardFlush>, EventStoreError> {
        Ok(self
            .read(experiment, Some(shard))
            .await?
            .into_values()
            .find(|flush| flush.shard == shard))
    }

    async fn totals(&self, experiment: &ExperimentId) -> Result<ExperimentTotals, EventStoreError> {
        let mut totals = ExperimentTotals::default();
        for flush in self.read(experiment, None).await?.values() {
            totals.merge(&flush.totals);
        }
        Ok(totals)
    }
}
