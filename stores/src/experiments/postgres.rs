//! Experiments in the flag store's PostgreSQL database, on its pool (`migrations/0002_experiments.sql`,
//! `0003_experiment_traffic_split.sql`, `0005_experiment_analysis.sql`).
//!
//! Every write is one transaction that checks before it writes and rolls back on drop, so a refused
//! write leaves nothing behind. A transition locks the experiment's row (`FOR UPDATE`), so of two
//! concurrent starts (or a start and a stop) the second waits for the first, sees its result, and
//! is refused by the model's life-cycle rules. Creating and starting read the flag under a share
//! lock on its set (which every flag write locks for update first), so the variants checked are
//! still the variants when the transaction commits.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bunting_experiments::{
    AnalysisSettings, Experiment, ExperimentId, ExperimentState, Metric, ModelError, TrafficSplit,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::FromRow;
use sqlx::postgres::PgConnection;
use sqlx::types::Json;

use super::{
    ExperimentAction, ExperimentAuditEntry, ExperimentFilter, ExperimentNotice, ExperimentPage,
    ExperimentRecord, ExperimentStore, ExperimentStoreError, ExperimentSubscription, NewExperiment,
    PageLimit,
};
use crate::{PostgresStore, StoreError};

/// The channel every experiment write notifies, with `{"id", "version"}` as payload. Not the flag
/// channel: flag feeds would take an experiment's payload for one they cannot read and resync.
pub const EXPERIMENT_CHANNEL: &str = "bunting_experiment_changes";

/// The unique index that allows one running experiment per flag (the backstop of the check made
/// under the flag's lock).
const ONE_RUNNING_PER_FLAG: &str = "experiments_one_running_per_flag";

const COLUMNS: &str = "id, flag_set_id, flag_key, arms, control, metrics, traffic_split, analysis, \
                       state, started_at, stopped_at, version, created_at, updated_at";

/// Experiments on the same pool, connection settings and migrations as the flag store it is made
/// from.
#[derive(Debug, Clone)]
pub struct PostgresExperimentStore {
    flags: PostgresStore,
}

impl PostgresExperimentStore {
    pub fn new(flags: &PostgresStore) -> PostgresExperimentStore {
        PostgresExperimentStore {
            flags: flags.clone(),
        }
    }

    async fn done<T>(&self, result: Result<T, Failure>) -> Result<T, ExperimentStoreError> {
        match result {
            Ok(value) => Ok(value),
            Err(Failure::Refused(e)) => Err(e),
            Err(Failure::Db(e)) => Err(self.flags.db_error(e).await.into()),
        }
    }

    async fn try_create(
        &self,
        new: &NewExperiment,
        actor: &str,
    ) -> Result<ExperimentRecord, Failure> {
        let mut tx = self.flags.pool().begin().await?;
        let variants = flag_variants(&mut tx, &new.flag_set, &new.flag_key)
            .await?
            .ok_or_else(|| ExperimentStoreError::UnknownFlag {
                flag_set: new.flag_set.clone(),
                flag_key: new.flag_key.clone(),
            })?;
        if variants.len() < 2 {
            return Err(ExperimentStoreError::TooFewVariants {
                flag_set: new.flag_set.clone(),
                flag_key: new.flag_key.clone(),
                variants,
            }
            .into());
        }
        let experiment = Experiment::draft(
            new.id.clone(),
            new.flag_set.clone(),
            new.flag_key.clone(),
            variants,
            new.control.clone(),
            new.metrics.clone(),
        )
        .and_then(|draft| draft.with_split(new.split.clone()))
        .map(|draft| draft.with_analysis(new.analysis))
        .map_err(|e| invalid(&new.metrics, e))?;
        let row: Option<ExperimentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO experiments (id, flag_set_id, flag_key, arms, control, metrics,
                                      traffic_split, analysis, state, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'draft', 1)
             ON CONFLICT (id) DO NOTHING
             RETURNING {COLUMNS}"
        )))
        .bind(experiment.id.as_str())
        .bind(&experiment.flag_set)
        .bind(&experiment.flag_key)
        .bind(experiment.arms.iter().cloned().collect::<Vec<String>>())
        .bind(&experiment.control)
        .bind(Json(&experiment.metrics))
        .bind(match &experiment.split {
            TrafficSplit::Even => None,
            TrafficSplit::Weighted(weights) => Some(Json(weights)),
        })
        .bind(Json(&experiment.analysis))
        .fetch_optional(&mut *tx)
        .await?;
        let record = row
            .ok_or_else(|| ExperimentStoreError::AlreadyExists(new.id.clone()))?
            .into_record()?;
        record_change(&mut tx, &record, ExperimentAction::Create, actor, None).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn try_transition(
        &self,
        id: &ExperimentId,
        transition: Transition,
        actor: &str,
    ) -> Result<ExperimentRecord, Failure> {
        let mut tx = self.flags.pool().begin().await?;
        let row: Option<ExperimentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM experiments WHERE id = $1 FOR UPDATE"
        )))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let before = row
            .ok_or_else(|| ExperimentStoreError::UnknownExperiment(id.clone()))?
            .into_record()?;
        // Read after the lock is held, so a transition that waited for another is stamped after it.
        let (now,): (DateTime<Utc>,) = sqlx::query_as("SELECT clock_timestamp()")
            .fetch_one(&mut *tx)
            .await?;
        let mut experiment = before.experiment.clone();
        let action = match transition {
            Transition::Start => {
                experiment
                    .start(now.timestamp_millis())
                    .map_err(ExperimentStoreError::Transition)?;
                check_startable(&mut tx, &experiment).await?;
                ExperimentAction::Start
            }
            Transition::Stop => {
                experiment
                    .stop(now.timestamp_millis())
                    .map_err(ExperimentStoreError::Transition)?;
                ExperimentAction::Stop
            }
        };
        let (started_at, stopped_at) = match experiment.state {
            ExperimentState::Draft => (None, None),
            ExperimentState::Running { started_at } => (Some(started_at), None),
            ExperimentState::Stopped {
                started_at,
                stopped_at,
            } => (Some(started_at), Some(stopped_at)),
        };
        let row: ExperimentRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE experiments SET state = $2, started_at = $3, stopped_at = $4,
                 version = version + 1, updated_at = $5
             WHERE id = $1
             RETURNING {COLUMNS}"
        )))
        .bind(id.as_str())
        .bind(experiment.state.name())
        .bind(started_at.map(millis).transpose()?)
        .bind(stopped_at.map(millis).transpose()?)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| busy_backstop(e, &experiment))?;
        let record = row.into_record()?;
        record_change(&mut tx, &record, action, actor, Some(&before.experiment)).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn try_get(&self, id: &ExperimentId) -> Result<ExperimentRecord, Failure> {
        let row: Option<ExperimentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM experiments WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(self.flags.pool())
        .await?;
        Ok(row
            .ok_or_else(|| ExperimentStoreError::UnknownExperiment(id.clone()))?
            .into_record()?)
    }

    async fn try_list(&self, filter: &ExperimentFilter) -> Result<ExperimentPage, Failure> {
        let (sql, binds) = list_query(filter);
        let mut query = sqlx::query_as::<_, ExperimentRow>(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Int(n) => query.bind(n),
            };
        }
        let rows = query.fetch_all(self.flags.pool()).await?;
        let (rows, more) = cut_page(rows, filter.limit);
        let experiments = rows
            .into_iter()
            .map(ExperimentRow::into_record)
            .collect::<Result<Vec<_>, _>>()?;
        let next_after = match experiments.last() {
            Some(last) if more => Some(last.experiment.id.clone()),
            _ => None,
        };
        Ok(ExperimentPage {
            experiments,
            next_after,
        })
    }

    async fn try_audit(&self, id: &ExperimentId) -> Result<Vec<ExperimentAuditEntry>, Failure> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, experiment_id, action, actor, occurred_at, before_value, after_value,
                    version
             FROM experiment_audit_log WHERE experiment_id = $1 ORDER BY id DESC",
        )
        .bind(id.as_str())
        .fetch_all(self.flags.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(AuditRow::into_entry)
            .collect::<Result<_, _>>()?)
    }
}

#[async_trait]
impl ExperimentStore for PostgresExperimentStore {
    async fn create_experiment(
        &self,
        new: NewExperiment,
        actor: &str,
    ) -> Result<ExperimentRecord, ExperimentStoreError> {
        let result = self.try_create(&new, actor).await;
        self.done(result).await
    }

    async fn start_experiment(
        &self,
        id: &ExperimentId,
        actor: &str,
    ) -> Result<ExperimentRecord, ExperimentStoreError> {
        let result = self.try_transition(id, Transition::Start, actor).await;
        self.done(result).await
    }

    async fn stop_experiment(
        &self,
        id: &ExperimentId,
        actor: &str,
    ) -> Result<ExperimentRecord, ExperimentStoreError> {
        let result = self.try_transition(id, Transition::Stop, actor).await;
        self.done(result).await
    }

    async fn get_experiment(
        &self,
        id: &ExperimentId,
    ) -> Result<ExperimentRecord, ExperimentStoreError> {
        let result = self.try_get(id).await;
        self.done(result).await
    }

    async fn list_experiments(
        &self,
        filter: &ExperimentFilter,
    ) -> Result<ExperimentPage, ExperimentStoreError> {
        let result = self.try_list(filter).await;
        self.done(result).await
    }

    async fn experiment_audit(
        &self,
        id: &ExperimentId,
    ) -> Result<Vec<ExperimentAuditEntry>, ExperimentStoreError> {
        let result = self.try_audit(id).await;
        self.done(result).await
    }

    async fn subscribe(&self) -> Result<ExperimentSubscription, ExperimentStoreError> {
        let notices = self
            .flags
            .subscribe_channel(EXPERIMENT_CHANNEL, parse, ExperimentNotice::Resync)
            .await?;
        Ok(ExperimentSubscription::new(notices))
    }
}

#[derive(Debug, Clone, Copy)]
enum Transition {
    Start,
    Stop,
}

/// A failed call before a database error is put in the store's terms (which may take a round
/// trip: see `PostgresStore::db_error`).
enum Failure {
    Refused(ExperimentStoreError),
    Db(sqlx::Error),
}

impl From<ExperimentStoreError> for Failure {
    fn from(e: ExperimentStoreError) -> Self {
        Failure::Refused(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Refused(e.into())
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Db(e)
    }
}

fn internal(message: String) -> StoreError {
    StoreError::Internal {
        source: message.into(),
    }
}

/// A value bound to a list query's parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bind<'f> {
    Text(&'f str),
    Int(i64),
}

/// The list query for `filter`, and what to bind to its parameters, in order.
///
/// The SQL names only the conditions the filter has, rather than one statement with
/// `($1 IS NULL OR ...)` for each: PostgreSQL may run a prepared statement (sqlx prepares and
/// caches every one) with a generic plan, and in a generic plan such an OR cannot become an index
/// condition, so every page would scan and sort the whole table.
///
/// Without a flag set, the cursor is `id > $n`: a range scan of the primary key in id order that
/// stops once the page is full. With one, the cursor is the row comparison
/// `(flag_set_id, id) > ($set, $after)`, which only `experiments_by_flag_set` can serve as an
/// index condition: given `flag_set_id = $set` it means `id > $after`, but a plain `id > $after`
/// lets a generic plan (which cannot know how many experiments the set has) pick the primary key
/// and filter on the set, reading past every other set's experiments to fill the page of a small
/// one. The first page of a set uses the cursor `''`, before every id (ids are never empty), for
/// the same reason. The state, one of three fixed names, is written into the SQL rather than
/// bound, so that a filter on `running` can use the partial index
/// `experiments_one_running_per_flag` in a generic plan too.
///
/// The limit is one more than the page, so that the extra row tells whether another page follows
/// ([`cut_page`]) without a second query.
fn list_query(filter: &ExperimentFilter) -> (String, Vec<Bind<'_>>) {
    /// Binds `bind` to the next parameter and returns its placeholder.
    fn param<'f>(binds: &mut Vec<Bind<'f>>, bind: Bind<'f>) -> String {
        binds.push(bind);
        format!("${}", binds.len())
    }
    let mut conditions = Vec::new();
    let mut binds = Vec::new();
    let after = filter.after.as_ref().map(ExperimentId::as_str);
    match (&filter.flag_set, after) {
        (Some(set), after) => {
            let set = param(&mut binds, Bind::Text(set));
            let after = param(&mut binds, Bind::Text(after.unwrap_or("")));
            conditions.push(format!("flag_set_id = {set}"));
            conditions.push(format!("(flag_set_id, id) > ({set}, {after})"));
        }
        (None, Some(after)) => {
            conditions.push(format!("id > {}", param(&mut binds, Bind::Text(after))));
        }
        (None, None) => {}
    }
    if let Some(state) = filter.state {
        conditions.push(format!("state = '{}'", state.as_str()));
    }
    let mut sql = format!("SELECT {COLUMNS} FROM experiments");
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY id");
    if let PageLimit::AtMost(size) = filter.limit {
        let limit = param(&mut binds, Bind::Int(i64::from(size.get()) + 1));
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    (sql, binds)
}

/// The page in `rows` (read with [`list_query`]'s limit of one more), and whether more follow.
fn cut_page<T>(mut rows: Vec<T>, limit: PageLimit) -> (Vec<T>, bool) {
    match limit {
        PageLimit::Unlimited => (rows, false),
        PageLimit::AtMost(size) => {
            let size = usize::try_from(size.get()).unwrap_or(usize::MAX);
            let more = rows.len() > size;
            rows.truncate(size);
            (rows, more)
        }
    }
}

/// The flag's variant names, with its set share-locked until the transaction ends; `Err` with
/// `UnknownFlagSet` when there is no such set, `Ok(None)` when the set has no such flag.
async fn flag_variants(
    conn: &mut PgConnection,
    flag_set: &str,
    flag_key: &str,
) -> Result<Option<Vec<String>>, Failure> {
    let set: Option<(String,)> =
        sqlx::query_as("SELECT id FROM flag_sets WHERE id = $1 AND deleted_at IS NULL FOR SHARE")
            .bind(flag_set)
            .fetch_optional(&mut *conn)
            .await?;
    if set.is_none() {
        return Err(ExperimentStoreError::UnknownFlagSet {
            flag_set: flag_set.to_owned(),
        }
        .into());
    }
    let flag: Option<(Json<Value>,)> = sqlx::query_as(
        "SELECT definition FROM flags WHERE flag_set_id = $1 AND key = $2 AND deleted_at IS NULL",
    )
    .bind(flag_set)
    .bind(flag_key)
    .fetch_optional(&mut *conn)
    .await?;
    // Every stored definition compiled, so `variants` is an object; anything else has none.
    Ok(flag.map(|(definition,)| {
        definition
            .0
            .get("variants")
            .and_then(Value::as_object)
            .map(|variants| variants.keys().cloned().collect())
            .unwrap_or_default()
    }))
}

/// What a start needs beyond the model's rules: the flag still has exactly the experiment's arms,
/// and no other experiment runs on it. Starts on one flag are serialised by locking the flag's row,
/// so the second sees the first's commit.
async fn check_startable(conn: &mut PgConnection, experiment: &Experiment) -> Result<(), Failure> {
    let changed = |now: String| ExperimentStoreError::FlagChanged {
        experiment: experiment.id.clone(),
        flag_set: experiment.flag_set.clone(),
        flag_key: experiment.flag_key.clone(),
        now,
        arms: experiment.arms.iter().cloned().collect(),
    };
    let variants = match flag_variants(conn, &experiment.flag_set, &experiment.flag_key).await {
        Err(Failure::Refused(ExperimentStoreError::UnknownFlagSet { .. })) | Ok(None) => {
            return Err(changed("no longer exists".to_owned()).into());
        }
        Err(e) => return Err(e),
        Ok(Some(variants)) => variants,
    };
    if !variants.iter().eq(experiment.arms.iter()) {
        return Err(changed(format!("now has the variants {variants:?}")).into());
    }
    sqlx::query("SELECT 1 FROM flags WHERE flag_set_id = $1 AND key = $2 FOR UPDATE")
        .bind(&experiment.flag_set)
        .bind(&experiment.flag_key)
        .execute(&mut *conn)
        .await?;
    let running: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM experiments
         WHERE flag_set_id = $1 AND flag_key = $2 AND state = 'running' AND id <> $3
         LIMIT 1",
    )
    .bind(&experiment.flag_set)
    .bind(&experiment.flag_key)
    .bind(experiment.id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    match running {
        Some((running,)) => Err(ExperimentStoreError::FlagBusy {
            experiment: experiment.id.clone(),
            running,
            flag_set: experiment.flag_set.clone(),
            flag_key: experiment.flag_key.clone(),
        }
        .into()),
        None => Ok(()),
    }
}

/// The unique index's refusal, should the locked check ever miss a concurrent start, as the same
/// refusal the check gives.
fn busy_backstop(error: sqlx::Error, experiment: &Experiment) -> Failure {
    let busy = matches!(&error, sqlx::Error::Database(db)
        if db.constraint() == Some(ONE_RUNNING_PER_FLAG));
    if busy {
        ExperimentStoreError::FlagBusy {
            experiment: experiment.id.clone(),
            running: "another experiment".to_owned(),
            flag_set: experiment.flag_set.clone(),
            flag_key: experiment.flag_key.clone(),
        }
        .into()
    } else {
        error.into()
    }
}

/// The model's refusal of a definition, with the request field it is about.
fn invalid(metrics: &[Metric], error: ModelError) -> Failure {
    let position = |name: &bunting_experiments::MetricName, last: bool| {
        let mut at = metrics.iter().enumerate().filter(|(_, m)| &m.name == name);
        let found = if last { at.nth(1) } else { at.next() };
        found.map_or(0, |(i, _)| i)
    };
    let field = match &error {
        ModelError::ControlNotAnArm { .. } => "control_variant".to_owned(),
        ModelError::NoMetrics(_) => "metrics".to_owned(),
        // The second use of the name is the one to fix.
        ModelError::DuplicateMetric { metric, .. } => {
            format!("metrics[{}].name", position(metric, true))
        }
        ModelError::EmptyEvent { metric, .. } => {
            format!("metrics[{}].event", position(metric, false))
        }
        ModelError::SplitUnknownArm { arm, .. } | ModelError::SplitMissingArm { arm, .. } => {
            format!("traffic_split[{arm}]")
        }
        ModelError::SplitStarvesControl { control, .. } => format!("traffic_split[{control}]"),
        ModelError::SplitNothingToCompare(_) => "traffic_split".to_owned(),
        ModelError::BadName { .. }
        | ModelError::TooFewArms(_)
        | ModelError::BadTransition { .. } => "definition".to_owned(),
    };
    ExperimentStoreError::Invalid {
        field,
        source: error,
    }
    .into()
}

fn millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| internal(format!("time {ms} ms out of range")))
}

/// What a write sends on [`EXPERIMENT_CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    id: String,
    version: i64,
}

/// A payload this store did not write is no reason to miss a change: the subscriber re-reads.
fn parse(payload: &str) -> ExperimentNotice {
    match serde_json::from_str::<Payload>(payload) {
        Ok(p) => ExperimentNotice::Changed {
            id: p.id,
            version: p.version,
        },
        Err(error) => {
            tracing::warn!(%error, payload, "unreadable experiment notice; subscribers re-read");
            ExperimentNotice::Resync
        }
    }
}

/// The audit row and the notification of one write, inside its transaction (the notification is
/// delivered only if it commits).
async fn record_change(
    conn: &mut PgConnection,
    record: &ExperimentRecord,
    action: ExperimentAction,
    actor: &str,
    before: Option<&Experiment>,
) -> Result<(), Failure> {
    let json = |e: &Experiment| serde_json::to_value(e).map_err(|e| internal(e.to_string()));
    let before = before.map(json).transpose()?;
    let after = json(&record.experiment)?;
    sqlx::query(
        "INSERT INTO experiment_audit_log (experiment_id, action, actor, occurred_at,
                                           before_value, after_value, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(record.experiment.id.as_str())
    .bind(action.as_str())
    .bind(actor)
    .bind(record.updated_at)
    .bind(before.map(Json))
    .bind(Json(after))
    .bind(record.version)
    .execute(&mut *conn)
    .await?;
    let payload = Payload {
        id: record.experiment.id.to_string(),
        version: record.version,
    };
    let payload = serde_json::to_string(&payload).map_err(|e| internal(e.to_string()))?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EXPERIMENT_CHANNEL)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[derive(FromRow)]
struct ExperimentRow {
    id: String,
    flag_set_id: String,
    flag_key: String,
    arms: Vec<String>,
    control: String,
    metrics: Json<Vec<Metric>>,
    traffic_split: Option<Json<BTreeMap<String, u32>>>,
    analysis: Option<Json<Value>>,
    state: String,
    started_at: Option<DateTime<Utc>>,
    stopped_at: Option<DateTime<Utc>>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl ExperimentRow {
    /// The record; a row the model would refuse (written by something else) is an internal error.
    fn into_record(self) -> Result<ExperimentRecord, StoreError> {
        let bad = |what: String| internal(format!("experiment row {:?}: {what}", self.id));
        let ms = |t: Option<DateTime<Utc>>, what: &str| {
            t.map(|t| t.timestamp_millis())
                .ok_or_else(|| bad(format!("{} without {what}", self.state)))
        };
        let state = match self.state.as_str() {
            "draft" => ExperimentState::Draft,
            "running" => ExperimentState::Running {
                started_at: ms(self.started_at, "started_at")?,
            },
            "stopped" => ExperimentState::Stopped {
                started_at: ms(self.started_at, "started_at")?,
                stopped_at: ms(self.stopped_at, "stopped_at")?,
            },
            other => return Err(bad(format!("unknown state {other:?}"))),
        };
        let id = ExperimentId::new(self.id.clone()).map_err(|e| bad(e.to_string()))?;
        // NULL: created before settings existed, and analysed with the defaults since.
        let analysis = match self.analysis {
            None => AnalysisSettings::default(),
            Some(Json(value)) => {
                serde_json::from_value(value).map_err(|e| bad(format!("analysis settings: {e}")))?
            }
        };
        let mut experiment = Experiment::draft(
            id,
            self.flag_set_id,
            self.flag_key,
            self.arms,
            self.control,
            self.metrics.0,
        )
        .and_then(|draft| draft.with_split(self.traffic_split.map(|s| s.0).unwrap_or_default()))
        .map(|draft| draft.with_analysis(analysis))
        .map_err(|e| bad(e.to_string()))?;
        experiment.state = state;
        Ok(ExperimentRecord {
            experiment,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(FromRow)]
struct AuditRow {
    id: i64,
    experiment_id: String,
    action: String,
    actor: String,
    occurred_at: DateTime<Utc>,
    before_value: Option<Json<Value>>,
    after_value: Json<Value>,
    version: i64,
}

impl AuditRow {
    fn into_entry(self) -> Result<ExperimentAuditEntry, StoreError> {
        let action = ExperimentAction::parse(&self.action).ok_or_else(|| {
            internal(format!(
                "experiment audit entry {} has unknown action {:?}",
                self.id, self.action
            ))
        })?;
        Ok(ExperimentAuditEntry {
            id: self.id,
            experiment_id: self.experiment_id,
            action,
            actor: self.actor,
            at: self.occurred_at,
            before: self.before_value.map(|j| j.0),
            after: self.after_value.0,
            version: self.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::{PageSize, StateKind};
    use bunting_experiments::{MetricKind, MetricName};

    fn metric(name: &str, event: &str) -> Metric {
        Metric {
            name: MetricName::new(name).unwrap(),
            event: event.into(),
            kind: MetricKind::Conversion,
        }
    }

    fn field_of(failure: Failure) -> String {
        match failure {
            Failure::Refused(ExperimentStoreError::Invalid { field, .. }) => field,
            _ => panic!("not an Invalid refusal"),
        }
    }

    #[test]
    fn model_refusals_name_the_request_field() {
        let metrics = vec![metric("a", "x"), metric("b", "z"), metric("a", "y")];
        let id = || ExperimentId::new("e").unwrap();
        let arms = || ["on".to_owned(), "off".to_owned()];
        let draft = |metrics: Vec<Metric>, control: &str| {
            Experiment::draft(id(), "s", "f", arms(), control, metrics).unwrap_err()
        };
        let duplicate = draft(metrics.clone(), "on");
        assert_eq!(field_of(invalid(&metrics, duplicate)), "metrics[2].name");
        let blank = vec![metric("a", "x"), metric("b", " ")];
        assert_eq!(
            field_of(invalid(&blank, draft(blank.clone(), "on"))),
            "metrics[1].event"
        );
        assert_eq!(
            field_of(invalid(&blank, draft(blank.clone(), "maybe"))),
            "control_variant"
        );
        assert_eq!(field_of(invalid(&[], draft(vec![], "on"))), "metrics");
    }

    #[test]
    fn list_queries_name_only_the_conditions_the_filter_has() {
        let columns = format!("SELECT {COLUMNS} FROM experiments");
        let default = ExperimentFilter::default();
        let (sql, binds) = list_query(&default);
        assert_eq!(sql, format!("{columns} ORDER BY id LIMIT $1"));
        assert_eq!(binds, [Bind::Int(101)]);

        let after = ExperimentId::new("m").unwrap();
        let two = PageLimit::AtMost(PageSize::from_request(2).unwrap());
        let filter = ExperimentFilter {
            flag_set: Some("shop".into()),
            state: Some(StateKind::Stopped),
            after: Some(after.clone()),
            limit: two,
        };
        let (sql, binds) = list_query(&filter);
        assert_eq!(
            sql,
            format!(
                "{columns} WHERE flag_set_id = $1 AND (flag_set_id, id) > ($1, $2) \
                 AND state = 'stopped' ORDER BY id LIMIT $3"
            )
        );
        assert_eq!(binds, [Bind::Text("shop"), Bind::Text("m"), Bind::Int(3)]);

        // A set's first page starts after the empty id, for the same index.
        let first = ExperimentFilter {
            flag_set: Some("shop".into()),
            ..ExperimentFilter::default()
        };
        let (sql, binds) = list_query(&first);
        assert_eq!(
            sql,
            format!(
                "{columns} WHERE flag_set_id = $1 AND (flag_set_id, id) > ($1, $2) \
                 ORDER BY id LIMIT $3"
            )
        );
        assert_eq!(binds, [Bind::Text("shop"), Bind::Text(""), Bind::Int(101)]);

        // Every set: the primary key from the cursor on.
        let every_set = ExperimentFilter {
            after: Some(after),
            limit: two,
            ..ExperimentFilter::default()
        };
        let (sql, binds) = list_query(&every_set);
        assert_eq!(sql, format!("{columns} WHERE id > $1 ORDER BY id LIMIT $2"));
        assert_eq!(binds, [Bind::Text("m"), Bind::Int(3)]);

        // The feed's read: every running experiment, no cursor, no limit.
        let running = ExperimentFilter {
            state: Some(StateKind::Running),
            limit: PageLimit::Unlimited,
            ..ExperimentFilter::default()
        };
        let (sql, binds) = list_query(&running);
        assert_eq!(
            sql,
            format!("{columns} WHERE state = 'running' ORDER BY id")
        );
        assert!(binds.is_empty());
    }

    #[test]
    fn pages_are_cut_at_the_limit_and_say_whether_more_follow() {
        let two = PageLimit::AtMost(PageSize::from_request(2).unwrap());
        assert_eq!(cut_page(vec![1, 2, 3], two), (vec![1, 2], true));
        assert_eq!(cut_page(vec![1, 2], two), (vec![1, 2], false));
        assert_eq!(cut_page(vec![1], two), (vec![1], false));
        assert_eq!(cut_page(Vec::<i32>::new(), two), (vec![], false));
        assert_eq!(
            cut_page(vec![1, 2, 3], PageLimit::Unlimited),
            (vec![1, 2, 3], false)
        );
    }

    #[test]
    fn notices_parse_or_resync() {
        assert_eq!(
            parse(r#"{"id":"e","version":2}"#),
            ExperimentNotice::Changed {
                id: "e".into(),
                version: 2
            }
        );
        assert_eq!(parse("{"), ExperimentNotice::Resync);
    }
}
