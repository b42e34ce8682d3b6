//! The admin store on PostgreSQL.
//!
//! Every write is one transaction: lock the flag set's row (`SELECT ... FOR UPDATE`, so writes to
//! one set are serialised and each sees the last one's result), check the writer's expected
//! version, compile what the write changes (the one flag, for a flag write; the whole set, for a
//! write to the set's evaluators or metadata) and refuse it on any problem, then write the row, bump the set's version, append to the audit log and `pg_notify`, and commit.
//! A refused write returns before anything is written and the transaction rolls back on drop.
//!
//! Queries are plain `sqlx::query`/`query_as` with static SQL, checked at run time by the tests
//! against a real server, not `query!` macros: those need a live database (DATABASE_URL) or a
//! checked-in offline cache at build time, which CI and other developers' machines do not have.

mod batch;
mod listen;
mod node_lock;

pub use node_lock::{NodeIdLock, NodeLockError, lock_key};

use std::time::Duration;

use async_trait::async_trait;
use bunting_engine::CompileOptions;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Connection, FromRow};

use super::admin::{Change, check_version, flag_name, set_name};
use super::document::{self, check_name};
use super::{
    AdminStore, AuditAction, AuditEntry, BatchOutcome, FlagBatch, FlagList, FlagRecord,
    FlagSetFields, FlagSetRecord, FlagSetSnapshot, StoreError, Subscription,
};
use crate::secret_url::RedactedUrl;

/// The channel every write notifies, with `{"flag_set", "version", "at", "deleted"}` as payload.
pub const CHANGE_CHANNEL: &str = "bunting_flag_changes";

pub use super::MAX_AUDIT_PAGE;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// How the store compiles a set to validate a write; the node should compile snapshots the same
    /// way.
    pub compile: CompileOptions,
    pub max_connections: u32,
    /// How long a call waits for a connection before it fails with `Unavailable`. Also bounds the
    /// first connection in [`PostgresStore::connect`].
    pub acquire_timeout: Duration,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            compile: CompileOptions::default(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// `Debug` by hand: the connect options hold the password, and sqlx's `Debug` prints it.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    connect_options: PgConnectOptions,
    settings: PostgresSettings,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("host", &self.connect_options.get_host())
            .field("port", &self.connect_options.get_port())
            .field("database", &self.connect_options.get_database())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`) and applies the migrations.
    pub async fn connect(url: &str, settings: PostgresSettings) -> Result<Self, StoreError> {
        let options: PgConnectOptions =
            known_params_only(url)
                .parse()
                .map_err(|e| StoreError::Internal {
                    source: format!("database url {}: {e}", RedactedUrl::new(url)).into(),
                })?;
        Self::connect_with(options, settings).await
    }

    pub async fn connect_with(
        options: PgConnectOptions,
        settings: PostgresSettings,
    ) -> Result<Self, StoreError> {
        // One direct connection first: the pool retries a refused connection until its timeout
        // and then reports only "timed out", while this reports why (refused, unknown host, bad
        // password). The migrations run on it, under sqlx's advisory lock, so nodes starting
        // together apply them once.
        let mut conn = connect_once(&options, settings.acquire_timeout).await?;
        MIGRATOR.run(&mut conn).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e)
            | sqlx::migrate::MigrateError::ExecuteMigration(e, _)
                if is_unavailable(&e) =>
            {
                StoreError::Unavailable { source: e.into() }
            }
            other => StoreError::Internal {
                source: format!("applying migrations: {other}").into(),
            },
        })?;
        // Best effort: the server drops the session either way.
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options.clone());
        Ok(PostgresStore {
            pool,
            connect_options: options,
            settings,
        })
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool, shared with the other stores in the same database (`store::experiments`), so a
    /// node has one set of connections and one place that connects and migrates.
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection of its own, outside the pool: for a session-scoped lock (the rollout
    /// controller's lease) that must live exactly as long as one connection does.
    pub(super) async fn dedicated_connection(&self) -> Result<PgConnection, StoreError> {
        connect_once(&self.connect_options, self.settings.acquire_timeout).await
    }

    /// A database error in the store's terms, as this store's own calls report them.
    pub(super) async fn db_error(&self, error: sqlx::Error) -> StoreError {
        self.fail(Failure::Db(error)).await
    }

    /// Listens on another notification channel with this store's connection settings and
    /// reconnect handling (see `listen.rs`).
    pub(super) async fn subscribe_channel<N: Clone + Send + 'static>(
        &self,
        channel: &'static str,
        parse: fn(&str) -> N,
        resync: N,
    ) -> Result<tokio::sync::mpsc::Receiver<N>, StoreError> {
        listen::subscribe_channel(
            &self.connect_options,
            &self.settings,
            channel,
            parse,
            resync,
        )
        .await
    }

    /// Turns a database error into the store's terms. A pool timeout says nothing of why, so it
    /// is followed by one direct connection attempt whose error, if any, becomes the cause.
    async fn fail(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::Store(e) => e,
            Failure::Db(sqlx::Error::PoolTimedOut) => {
                match connect_once(&self.connect_options, self.settings.acquire_timeout).await {
                    Err(e) => e,
                    Ok(conn) => {
                        let _ = conn.close().await;
                        StoreError::Unavailable {
                            source: "every connection in the pool is busy".into(),
                        }
                    }
                }
            }
            Failure::Db(e) if is_unavailable(&e) => StoreError::Unavailable { source: e.into() },
            Failure::Db(e) => StoreError::Internal { source: e.into() },
        }
    }

    async fn done<T>(&self, result: Result<T, Failure>) -> Result<T, StoreError> {
        match result {
            Ok(value) => Ok(value),
            Err(failure) => Err(self.fail(failure).await),
        }
    }

    async fn try_create_flag_set(
        &self,
        id: &str,
        fields: &FlagSetFields,
        actor: &str,
    ) -> Result<FlagSetRecord, Failure> {
        check_name("id", id)?;
        let doc = document::build(&fields.metadata, &fields.evaluators, []);
        document::validate(&doc, &self.settings.compile)?;
        let mut tx = self.pool.begin().await?;
        // A deleted set's tombstone is brought back one version past its deletion.
        let row: Option<SetRow> = sqlx::query_as(
            "INSERT INTO flag_sets (id, version, metadata, evaluators) VALUES ($1, 1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET
                 version = flag_sets.version + 1, metadata = EXCLUDED.metadata,
                 evaluators = EXCLUDED.evaluators, created_at = now(), updated_at = now(),
                 deleted_at = NULL
             WHERE flag_sets.deleted_at IS NOT NULL
             RETURNING id, version, metadata, evaluators, created_at, updated_at",
        )
        .bind(id)
        .bind(Json(&fields.metadata))
        .bind(Json(&fields.evaluators))
        .fetch_optional(&mut *tx)
        .await?;
        let record = row.ok_or_else(|| StoreError::AlreadyExists { what: set_name(id) })?;
        let record = FlagSetRecord::from(record);
        let change = Change {
            flag_set: id,
            flag_key: None,
            action: AuditAction::Create,
            actor,
            before: None,
            after: Some(document::fields_json(&record.metadata, &record.evaluators)),
            version: record.version,
            at: record.updated_at,
        };
        change.record(&mut tx).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn try_update_flag_set(
        &self,
        id: &str,
        fields: &FlagSetFields,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagSetRecord, Failure> {
        let mut tx = self.pool.begin().await?;
        let set = lock_set(&mut tx, id).await?;
        check_version(set_name(id), expected_version, set.version)?;
        let flags = live_flags(&mut tx, id).await?;
        let doc = document::build(&fields.metadata, &fields.evaluators, flag_pairs(&flags));
        document::validate(&doc, &self.settings.compile)?;
        let row: SetRow = sqlx::query_as(
            "UPDATE flag_sets SET metadata = $2, evaluators = $3, version = version + 1,
                 updated_at = now()
             WHERE id = $1
             RETURNING id, version, metadata, evaluators, created_at, updated_at",
        )
        .bind(id)
        .bind(Json(&fields.metadata))
        .bind(Json(&fields.evaluators))
        .fetch_one(&mut *tx)
        .await?;
        let record = FlagSetRecord::from(row);
        let change = Change {
            flag_set: id,
            flag_key: None,
            action: AuditAction::Update,
            actor,
            before: Some(document::fields_json(&set.metadata.0, &set.evaluators.0)),
            after: Some(document::fields_json(&record.metadata, &record.evaluators)),
            version: record.version,
            at: record.updated_at,
        };
        change.record(&mut tx).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn try_delete_flag_set(
        &self,
        id: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, Failure> {
        let mut tx = self.pool.begin().await?;
        let set = lock_set(&mut tx, id).await?;
        check_version(set_name(id), expected_version, set.version)?;
        let flags = live_flags(&mut tx, id).await?;
        let before = document::build(&set.metadata.0, &set.evaluators.0, flag_pairs(&flags));
        sqlx::query(
            "UPDATE flags SET deleted_at = now(), updated_at = now(), version = version + 1
             WHERE flag_set_id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let (version, at): (i64, DateTime<Utc>) = sqlx::query_as(
            "UPDATE flag_sets SET deleted_at = now(), updated_at = now(), version = version + 1
             WHERE id = $1 RETURNING version, updated_at",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let change = Change {
            flag_set: id,
            flag_key: None,
            action: AuditAction::Delete,
            actor,
            before: Some(before),
            after: None,
            version,
            at,
        };
        change.record(&mut tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn try_create_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: &Value,
        expected_flag_set_version: Option<i64>,
        actor: &str,
    ) -> Result<FlagRecord, Failure> {
        check_name("key", key)?;
        let mut tx = self.pool.begin().await?;
        let set = lock_set(&mut tx, flag_set).await?;
        if let Some(expected) = expected_flag_set_version {
            check_version(set_name(flag_set), expected, set.version)?;
        }
        if live_flag(&mut tx, flag_set, key).await?.is_some() {
            return Err(StoreError::AlreadyExists {
                what: flag_name(flag_set, key),
            }
            .into());
        }
        // The one limit a single flag's document cannot show: how many flags the set holds.
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM flags WHERE flag_set_id = $1 AND deleted_at IS NULL",
        )
        .bind(flag_set)
        .fetch_one(&mut *tx)
        .await?;
        let max_flags = self.settings.compile.limits.max_flags;
        if usize::try_from(live).unwrap_or(usize::MAX) >= max_flags {
            return Err(StoreError::invalid(
                "flags",
                format!(
                    "{} already holds {live} flags, the limit of flags per set (definitions.max_flags = {max_flags})",
                    set_name(flag_set)
                ),
            )
            .into());
        }
        validate_flag(&set, key, definition, &self.settings.compile)?;
        // The lock on the set row keeps this key free of live rows; a tombstone of it is brought
        // back one version past its deletion.
        let row: FlagRow = sqlx::query_as(
            "INSERT INTO flags (flag_set_id, key, definition, version) VALUES ($1, $2, $3, 1)
             ON CONFLICT (flag_set_id, key) DO UPDATE SET
                 definition = EXCLUDED.definition, version = flags.version + 1,
                 created_at = now(), updated_at = now(), deleted_at = NULL
             RETURNING flag_set_id, key, definition, version, created_at, updated_at",
        )
        .bind(flag_set)
        .bind(key)
        .bind(Json(definition))
        .fetch_one(&mut *tx)
        .await?;
        let (version, at) = bump_set(&mut tx, flag_set).await?;
        let record = row.at(version);
        let change = Change {
            flag_set,
            flag_key: Some(key),
            action: AuditAction::Create,
            actor,
            before: None,
            after: Some(record.definition.clone()),
            version,
            at,
        };
        change.record(&mut tx).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn try_update_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: &Value,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagRecord, Failure> {
        let mut tx = self.pool.begin().await?;
        let set = lock_set(&mut tx, flag_set).await?;
        let current = required_flag(&mut tx, flag_set, key).await?;
        check_version(flag_name(flag_set, key), expected_version, current.version)?;
        validate_flag(&set, key, definition, &self.settings.compile)?;
        let row: FlagRow = sqlx::query_as(
            "UPDATE flags SET definition = $3, version = version + 1, updated_at = now()
             WHERE flag_set_id = $1 AND key = $2
             RETURNING flag_set_id, key, definition, version, created_at, updated_at",
        )
        .bind(flag_set)
        .bind(key)
        .bind(Json(definition))
        .fetch_one(&mut *tx)
        .await?;
        let (version, at) = bump_set(&mut tx, flag_set).await?;
        let record = row.at(version);
        let change = Change {
            flag_set,
            flag_key: Some(key),
            action: AuditAction::Update,
            actor,
            before: Some(current.definition.0.clone()),
            after: Some(record.definition.clone()),
            version,
            at,
        };
        change.record(&mut tx).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn try_delete_flag(
        &self,
        flag_set: &str,
        key: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, Failure> {
        let mut tx = self.pool.begin().await?;
        lock_set(&mut tx, flag_set).await?;
        let current = required_flag(&mut tx, flag_set, key).await?;
        check_version(flag_name(flag_set, key), expected_version, current.version)?;
        // Nothing to validate: flags never refer to each other (a `$ref` names one of the set's
        // `$evaluators`), so removing one cannot break the rest, which compiled when written.
        sqlx::query(
            "UPDATE flags SET deleted_at = now(), updated_at = now(), version = version + 1
             WHERE flag_set_id = $1 AND key = $2",
        )
        .bind(flag_set)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        let (version, at) = bump_set(&mut tx, flag_set).await?;
        let change = Change {
            flag_set,
            flag_key: Some(key),
            action: AuditAction::Delete,
            actor,
            before: Some(current.definition.0.clone()),
            after: None,
            version,
            at,
        };
        change.record(&mut tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn try_get_flag_set(&self, id: &str) -> Result<FlagSetRecord, Failure> {
        let row: Option<SetRow> = sqlx::query_as(
            "SELECT id, version, metadata, evaluators, created_at, updated_at
             FROM flag_sets WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or_else(|| StoreError::NotFound { what: set_name(id) })?;
        Ok(row.into())
    }

    async fn try_list_flag_sets(&self) -> Result<Vec<FlagSetRecord>, Failure> {
        let rows: Vec<SetRow> = sqlx::query_as(
            "SELECT id, version, metadata, evaluators, created_at, updated_at
             FROM flag_sets WHERE deleted_at IS NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn try_get_flag(&self, flag_set: &str, key: &str) -> Result<FlagRecord, Failure> {
        let row: Option<FlagAtRow> = sqlx::query_as(
            "SELECT f.flag_set_id, f.key, f.definition, f.version, f.created_at, f.updated_at,
                    s.version AS flag_set_version
             FROM flags f JOIN flag_sets s ON s.id = f.flag_set_id
             WHERE f.flag_set_id = $1 AND f.key = $2 AND f.deleted_at IS NULL
                 AND s.deleted_at IS NULL",
        )
        .bind(flag_set)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        let row = row.ok_or_else(|| StoreError::NotFound {
            what: flag_name(flag_set, key),
        })?;
        Ok(row.flag.at(row.flag_set_version))
    }

    /// One statement, so the flags and the version are from the same moment. The outer join gives
    /// a live set without flags one row of NULLs, which tells it from a missing set.
    async fn try_list_flags(&self, flag_set: &str) -> Result<FlagList, Failure> {
        let rows: Vec<ListRow> = sqlx::query_as(
            "SELECT s.version AS flag_set_version, f.flag_set_id, f.key, f.definition, f.version,
                    f.created_at, f.updated_at
             FROM flag_sets s
             LEFT JOIN flags f ON f.flag_set_id = s.id AND f.deleted_at IS NULL
             WHERE s.id = $1 AND s.deleted_at IS NULL
             ORDER BY f.key",
        )
        .bind(flag_set)
        .fetch_all(&self.pool)
        .await?;
        let flag_set_version = rows
            .first()
            .map(|row| row.flag_set_version)
            .ok_or_else(|| StoreError::NotFound {
                what: set_name(flag_set),
            })?;
        let flags = rows.into_iter().filter_map(ListRow::into_record).collect();
        Ok(FlagList {
            flag_set_version,
            flags,
        })
    }

    async fn try_list_audit(
        &self,
        flag_set: Option<&str>,
        flag_key: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, Failure> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, flag_set_id, flag_key, action, actor, occurred_at, before_value,
                    after_value, flag_set_version
             FROM audit_log
             WHERE ($1::text IS NULL OR flag_set_id = $1) AND ($2::text IS NULL OR flag_key = $2)
                 AND ($3::bigint IS NULL OR id < $3)
             ORDER BY id DESC
             LIMIT $4",
        )
        .bind(flag_set)
        .bind(flag_key)
        .bind(before_id)
        .bind(i64::from(limit.min(MAX_AUDIT_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| AuditEntry::try_from(row).map_err(Failure::Store))
            .collect()
    }

    /// One statement reads every set it returns, so `snapshots()` is a consistent cut across sets.
    async fn try_snapshots(&self, only: Option<&str>) -> Result<Vec<FlagSetSnapshot>, Failure> {
        let rows: Vec<SnapshotRow> = sqlx::query_as(
            "SELECT s.id, s.version, s.metadata, s.evaluators, s.updated_at,
                    COALESCE((SELECT jsonb_object_agg(f.key, f.definition) FROM flags f
                              WHERE f.flag_set_id = s.id AND f.deleted_at IS NULL),
                             '{}'::jsonb) AS flags
             FROM flag_sets s
             WHERE s.deleted_at IS NULL AND ($1::text IS NULL OR s.id = $1)
             ORDER BY s.id",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[async_trait]
impl AdminStore for PostgresStore {
    async fn create_flag_set(
        &self,
        id: &str,
        fields: FlagSetFields,
        actor: &str,
    ) -> Result<FlagSetRecord, StoreError> {
        let result = self.try_create_flag_set(id, &fields, actor).await;
        self.done(result).await
    }

    async fn update_flag_set(
        &self,
        id: &str,
        fields: FlagSetFields,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagSetRecord, StoreError> {
        let result = self
            .try_update_flag_set(id, &fields, expected_version, actor)
            .await;
        self.done(result).await
    }

    async fn delete_flag_set(
        &self,
        id: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let result = self.try_delete_flag_set(id, expected_version, actor).await;
        self.done(result).await
    }

    async fn get_flag_set(&self, id: &str) -> Result<FlagSetRecord, StoreError> {
        let result = self.try_get_flag_set(id).await;
        self.done(result).await
    }

    async fn list_flag_sets(&self) -> Result<Vec<FlagSetRecord>, StoreError> {
        let result = self.try_list_flag_sets().await;
        self.done(result).await
    }

    async fn create_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: Value,
        expected_flag_set_version: Option<i64>,
        actor: &str,
    ) -> Result<FlagRecord, StoreError> {
        let result = self
            .try_create_flag(flag_set, key, &definition, expected_flag_set_version, actor)
            .await;
        self.done(result).await
    }

    async fn update_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: Value,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagRecord, StoreError> {
        let result = self
            .try_update_flag(flag_set, key, &definition, expected_version, actor)
            .await;
        self.done(result).await
    }

    async fn delete_flag(
        &self,
        flag_set: &str,
        key: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let result = self
            .try_delete_flag(flag_set, key, expected_version, actor)
            .await;
        self.done(result).await
    }

    async fn apply_flag_changes(
        &self,
        flag_set: &str,
        batch: FlagBatch,
        actor: &str,
    ) -> Result<BatchOutcome, StoreError> {
        let result = self.try_apply_flag_changes(flag_set, &batch, actor).await;
        self.done(result).await
    }

    async fn get_flag(&self, flag_set: &str, key: &str) -> Result<FlagRecord, StoreError> {
        let result = self.try_get_flag(flag_set, key).await;
        self.done(result).await
    }

    async fn list_flags(&self, flag_set: &str) -> Result<FlagList, StoreError> {
        let result = self.try_list_flags(flag_set).await;
        self.done(result).await
    }

    async fn list_audit(
        &self,
        flag_set: Option<&str>,
        flag_key: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let result = self
            .try_list_audit(flag_set, flag_key, before_id, limit)
            .await;
        self.done(result).await
    }

    async fn snapshot(&self, flag_set: &str) -> Result<FlagSetSnapshot, StoreError> {
        let result = self.try_snapshots(Some(flag_set)).await;
        let mut snapshots = self.done(result).await?;
        snapshots.pop().ok_or_else(|| StoreError::NotFound {
            what: set_name(flag_set),
        })
    }

    async fn snapshots(&self) -> Result<Vec<FlagSetSnapshot>, StoreError> {
        let result = self.try_snapshots(None).await;
        self.done(result).await
    }

    async fn subscribe(&self) -> Result<Subscription, StoreError> {
        listen::subscribe(&self.connect_options, &self.settings).await
    }
}

/// A failed call before it is put in the store's terms (which may take a round trip, see
/// [`PostgresStore::fail`]).
enum Failure {
    Store(StoreError),
    Db(sqlx::Error),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Db(e)
    }
}

/// Query parameters of a connection URL that sqlx reads (`sqlx_postgres::options::parse`).
const SQLX_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// `url` without the query parameters sqlx does not read. sqlx logs an unknown parameter with
/// its value, and libpq's `sslpassword` is one: dropped here, it is logged by name only. A URL
/// that does not parse is returned as it is, for sqlx to refuse (its error does not quote it).
pub fn known_params_only(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    if parsed.query().is_none() {
        return url.to_owned();
    }
    let (known, unknown): (Vec<_>, Vec<_>) = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .partition(|(k, _)| SQLX_PARAMS.contains(&k.as_str()));
    if unknown.is_empty() {
        return url.to_owned();
    }
    for (key, _) in &unknown {
        tracing::warn!(%key, "ignoring a database url parameter PostgreSQL connections do not use");
    }
    if known.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(known);
    }
    parsed.into()
}

async fn connect_once(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, StoreError> {
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        // sqlx's text for a server error ends with the server's source line ("at line 948"),
        // which tells a user nothing; a missing database is the one a first start meets.
        Ok(Err(sqlx::Error::Database(db))) if db.code().as_deref() == Some("3D000") => {
            Err(StoreError::Internal {
                source: format!(
                    "{} on {}:{}: create it (psql -c 'CREATE DATABASE {}') or point the \
                     database url at one that exists",
                    db.message(),
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or("…"),
                )
                .into(),
            })
        }
        Ok(Err(e)) if is_unavailable(&e) => Err(StoreError::Unavailable { source: e.into() }),
        Ok(Err(e)) => Err(StoreError::Internal { source: e.into() }),
        Err(_) => Err(StoreError::Unavailable {
            source: format!("no connection to the database within {timeout:?}").into(),
        }),
    }
}

/// Whether an error means the database cannot be reached (or cannot serve right now), as opposed
/// to a query it refused.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources (too many connections);
            // 57P0x: the server is shutting down or starting up; 25006: a read-only standby.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P0")
                || code == "25006"
        }),
        _ => false,
    }
}

/// Locks the live set's row for the rest of the transaction: every write to a set or its flags
/// takes this lock first, so they apply one at a time and each validates against the last.
async fn lock_set(conn: &mut PgConnection, id: &str) -> Result<SetRow, Failure> {
    let row: Option<SetRow> = sqlx::query_as(
        "SELECT id, version, metadata, evaluators, created_at, updated_at
         FROM flag_sets WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.ok_or_else(|| StoreError::NotFound { what: set_name(id) })?)
}

async fn live_flags(conn: &mut PgConnection, flag_set: &str) -> Result<Vec<FlagRow>, Failure> {
    Ok(sqlx::query_as(
        "SELECT flag_set_id, key, definition, version, created_at, updated_at
         FROM flags WHERE flag_set_id = $1 AND deleted_at IS NULL ORDER BY key",
    )
    .bind(flag_set)
    .fetch_all(&mut *conn)
    .await?)
}

/// One live flag by its key: an index look-up, so a write's cost does not grow with its set.
async fn live_flag(
    conn: &mut PgConnection,
    flag_set: &str,
    key: &str,
) -> Result<Option<FlagRow>, Failure> {
    Ok(sqlx::query_as(
        "SELECT flag_set_id, key, definition, version, created_at, updated_at
         FROM flags WHERE flag_set_id = $1 AND key = $2 AND deleted_at IS NULL",
    )
    .bind(flag_set)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?)
}

async fn required_flag(
    conn: &mut PgConnection,
    flag_set: &str,
    key: &str,
) -> Result<FlagRow, Failure> {
    live_flag(conn, flag_set, key).await?.ok_or_else(|| {
        StoreError::NotFound {
            what: flag_name(flag_set, key),
        }
        .into()
    })
}

/// A single-flag write compiles just that flag, in a document with the set's `metadata` and
/// `$evaluators`: everything a flag's compilation can depend on. Flags never refer to one another,
/// so the rest of the set (which compiled when it was written, under the same lock) cannot be
/// broken by it, and the write costs the same at 10 flags as at 10,000. Writes to the set's own
/// fields still compile the whole set, since every flag may `$ref` its evaluators.
fn validate_flag(
    set: &SetRow,
    key: &str,
    definition: &Value,
    options: &CompileOptions,
) -> Result<(), StoreError> {
    let doc = document::build(&set.metadata.0, &set.evaluators.0, [(key, definition)]);
    document::validate(&doc, options).map(drop)
}

fn flag_pairs(flags: &[FlagRow]) -> impl Iterator<Item = (&str, &Value)> {
    flags.iter().map(|f| (f.key.as_str(), &f.definition.0))
}

async fn bump_set(
    conn: &mut PgConnection,
    flag_set: &str,
) -> Result<(i64, DateTime<Utc>), Failure> {
    Ok(sqlx::query_as(
        "UPDATE flag_sets SET version = version + 1, updated_at = now()
         WHERE id = $1 RETURNING version, updated_at",
    )
    .bind(flag_set)
    .fetch_one(&mut *conn)
    .await?)
}

/// The tail every write shares: its audit row and its notification, inside its transaction (a
/// notification is delivered only when the transaction commits, and never if it rolls back).
impl Change<'_> {
    async fn record(self, conn: &mut PgConnection) -> Result<(), Failure> {
        self.audit(conn).await?;
        self.notify(conn).await
    }

    /// The audit row alone: a batch writes one per flag and notifies once.
    async fn audit(&self, conn: &mut PgConnection) -> Result<(), Failure> {
        sqlx::query(
            "INSERT INTO audit_log (flag_set_id, flag_key, action, actor, occurred_at,
                                    before_value, after_value, flag_set_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(self.flag_set)
        .bind(self.flag_key)
        .bind(self.action.as_str())
        .bind(self.actor)
        .bind(self.at)
        .bind(self.before.as_ref().map(Json))
        .bind(self.after.as_ref().map(Json))
        .bind(self.version)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn notify(&self, conn: &mut PgConnection) -> Result<(), Failure> {
        let payload = listen::Payload {
            flag_set: self.flag_set.to_owned(),
            version: self.version,
            at: Some(self.at),
            deleted: self.deletes_set(),
        };
        let payload = serde_json::to_string(&payload)
            .map_err(|e| StoreError::Internal { source: e.into() })?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGE_CHANNEL)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

#[derive(FromRow)]
struct SetRow {
    id: String,
    version: i64,
    metadata: Json<Map<String, Value>>,
    evaluators: Json<Map<String, Value>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<SetRow> for FlagSetRecord {
    fn from(row: SetRow) -> Self {
        FlagSetRecord {
            id: row.id,
            version: row.version,
            metadata: row.metadata.0,
            evaluators: row.evaluators.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(FromRow)]
struct FlagRow {
    flag_set_id: String,
    key: String,
    definition: Json<Value>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl FlagRow {
    /// The record, stamped with the set's version it was written or read at.
    fn at(self, flag_set_version: i64) -> FlagRecord {
        FlagRecord {
            flag_set_id: self.flag_set_id,
            key: self.key,
            definition: self.definition.0,
            version: self.version,
            flag_set_version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

#[derive(FromRow)]
struct FlagAtRow {
    #[sqlx(flatten)]
    flag: FlagRow,
    flag_set_version: i64,
}

/// A row of the set-with-flags outer join: the flag's columns are NULL for a set without flags.
#[derive(FromRow)]
struct ListRow {
    flag_set_version: i64,
    flag_set_id: Option<String>,
    key: Option<String>,
    definition: Option<Json<Value>>,
    version: Option<i64>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
}

impl ListRow {
    fn into_record(self) -> Option<FlagRecord> {
        Some(FlagRecord {
            flag_set_id: self.flag_set_id?,
            key: self.key?,
            definition: self.definition?.0,
            version: self.version?,
            flag_set_version: self.flag_set_version,
            created_at: self.created_at?,
            updated_at: self.updated_at?,
        })
    }
}

#[derive(FromRow)]
struct AuditRow {
    id: i64,
    flag_set_id: String,
    flag_key: Option<String>,
    action: String,
    actor: String,
    occurred_at: DateTime<Utc>,
    before_value: Option<Json<Value>>,
    after_value: Option<Json<Value>>,
    flag_set_version: i64,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> Result<Self, StoreError> {
        let action = AuditAction::parse(&row.action).ok_or_else(|| StoreError::Internal {
            source: format!("audit entry {} has unknown action {:?}", row.id, row.action).into(),
        })?;
        Ok(AuditEntry {
            id: row.id,
            flag_set_id: row.flag_set_id,
            flag_key: row.flag_key,
            action,
            actor: row.actor,
            at: row.occurred_at,
            before: row.before_value.map(|j| j.0),
            after: row.after_value.map(|j| j.0),
            flag_set_version: row.flag_set_version,
        })
    }
}

#[derive(FromRow)]
struct SnapshotRow {
    id: String,
    version: i64,
    metadata: Json<Map<String, Value>>,
    evaluators: Json<Map<String, Value>>,
    updated_at: DateTime<Utc>,
    flags: Json<Map<String, Value>>,
}

impl From<SnapshotRow> for FlagSetSnapshot {
    fn from(row: SnapshotRow) -> Self {
        let document = document::build(
            &row.metadata.0,
            &row.evaluators.0,
            row.flags.0.iter().map(|(k, v)| (k.as_str(), v)),
        );
        FlagSetSnapshot {
            id: row.id,
            version: row.version,
            document,
            updated_at: row.updated_at,
        }
    }
}

#[cfg(test)]
mod url_tests {
    use super::known_params_only;

    #[test]
    fn parameters_sqlx_would_log_with_their_values_are_dropped() {
        for (url, kept) in [
            ("postgres://u:p@db/x", "postgres://u:p@db/x"),
            (
                "postgres://u@db/x?sslmode=require&sslpassword=s3cr3t",
                "postgres://u@db/x?sslmode=require",
            ),
            ("postgres://u@db/x?sslpassword=s3cr3t", "postgres://u@db/x"),
            (
                "postgres://u:p@db:notaport/x",
                "postgres://u:p@db:notaport/x",
            ),
        ] {
            assert_eq!(known_params_only(url), kept, "{url}");
        }
    }
}
