//! Rollouts in the flag store's PostgreSQL database, on its pool (`migrations/0006_rollouts.sql`).
//!
//! A transition is one conditional `UPDATE … WHERE version = $expected` and its history row in
//! one transaction, so of two writers at one version exactly one wins. One active rollout per
//! flag is the partial unique index `rollouts_one_active_per_flag`; a scheduled change is claimed
//! or cancelled by `UPDATE … WHERE state = 'pending'`, so it leaves pending once.

use async_trait::async_trait;
use bunting_rollouts::{RolloutId, RolloutInput, RolloutSpec, RolloutState};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::FromRow;
use sqlx::types::Json;

use super::{
    MAX_ROLLOUT_LIST, RolloutEvent, RolloutRecord, RolloutStore, RolloutStoreError, ScheduleState,
    ScheduledAction, ScheduledChange, spec_from_input,
};
use crate::{PostgresStore, StoreError};

const ONE_ACTIVE_PER_FLAG: &str = "rollouts_one_active_per_flag";

const ROLLOUT_COLUMNS: &str = "spec, pre_rollout, state_value, version, created_at, updated_at";

const SCHEDULE_COLUMNS: &str =
    "id, due_at, action, created_by, created_at, state, settled_at, settled_by";

/// Rollouts on the same pool, connection settings and migrations as the flag store.
#[derive(Debug, Clone)]
pub struct PostgresRolloutStore {
    flags: PostgresStore,
}

impl PostgresRolloutStore {
    pub fn new(flags: &PostgresStore) -> PostgresRolloutStore {
        PostgresRolloutStore {
            flags: flags.clone(),
        }
    }

    async fn db(&self, e: sqlx::Error) -> RolloutStoreError {
        RolloutStoreError::Store(self.flags.db_error(e).await)
    }
}

#[derive(FromRow)]
struct RolloutRow {
    spec: Json<RolloutInput>,
    pre_rollout: Json<Value>,
    state_value: Json<RolloutState>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl RolloutRow {
    fn into_record(self) -> Result<RolloutRecord, RolloutStoreError> {
        Ok(RolloutRecord {
            spec: spec_from_input(self.spec.0)?,
            state: self.state_value.0,
            pre_rollout: self.pre_rollout.0,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(FromRow)]
struct ScheduleRow {
    id: i64,
    due_at: DateTime<Utc>,
    action: Json<ScheduledAction>,
    created_by: String,
    created_at: DateTime<Utc>,
    state: String,
    settled_at: Option<DateTime<Utc>>,
    settled_by: Option<String>,
}

impl ScheduleRow {
    fn into_change(self) -> Result<ScheduledChange, RolloutStoreError> {
        let state = match (self.state.as_str(), self.settled_at) {
            ("pending", None) => ScheduleState::Pending,
            ("fired", Some(at)) => ScheduleState::Fired { at },
            ("cancelled", Some(at)) => ScheduleState::Cancelled {
                at,
                by: self.settled_by.unwrap_or_default(),
            },
            (other, _) => {
                return Err(RolloutStoreError::Store(StoreError::Internal {
                    source: format!("scheduled change {}: unknown state {other:?}", self.id).into(),
                }));
            }
        };
        Ok(ScheduledChange {
            id: self.id,
            due_at: self.due_at,
            action: self.action.0,
            created_by: self.created_by,
            created_at: self.created_at,
            state,
        })
    }
}

fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.constraint() == Some(constraint))
}

#[async_trait]
impl RolloutStore for PostgresRolloutStore {
    async fn create_rollout(
        &self,
        spec: &RolloutSpec,
        pre_rollout: Value,
        state: RolloutState,
        principal: &str,
        reason: &str,
    ) -> Result<RolloutRecord, RolloutStoreError> {
        let attempt = async {
            let mut tx = self.flags.pool().begin().await?;
            let row: Option<RolloutRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO rollouts (id, flag_set_id, flag_key, spec, pre_rollout, state,
                                       state_value, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 1)
                 ON CONFLICT (id) DO NOTHING
                 RETURNING {ROLLOUT_COLUMNS}"
            )))
            .bind(spec.id.as_str())
            .bind(&spec.flag_set)
            .bind(&spec.flag_key)
            .bind(Json(spec.to_input()))
            .bind(Json(&pre_rollout))
            .bind(state.name())
            .bind(Json(&state))
            .fetch_optional(&mut *tx)
            .await?;
            if row.is_some() {
                insert_history(
                    &mut tx,
                    spec.id.as_str(),
                    None,
                    &state,
                    principal,
                    reason,
                    1,
                )
                .await?;
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(row)
        };
        match attempt.await {
            Ok(Some(row)) => row.into_record(),
            Ok(None) => Err(RolloutStoreError::AlreadyExists(spec.id.clone())),
            Err(e) if is_unique_violation(&e, ONE_ACTIVE_PER_FLAG) => {
                let other: Result<(String,), _> = sqlx::query_as(
                    "SELECT id FROM rollouts WHERE flag_set_id = $1 AND flag_key = $2
                       AND state IN ('running', 'paused')",
                )
                .bind(&spec.flag_set)
                .bind(&spec.flag_key)
                .fetch_one(self.flags.pool())
                .await;
                match other.map(|(id,)| RolloutId::new(id)) {
                    Ok(Ok(other)) => Err(RolloutStoreError::FlagBusy {
                        flag_set: spec.flag_set.clone(),
                        flag_key: spec.flag_key.clone(),
                        other,
                    }),
                    Ok(Err(source)) => Err(RolloutStoreError::Corrupt {
                        id: spec.id.to_string(),
                        source,
                    }),
                    // The other rollout ended in between: report the refusal as it happened.
                    Err(_) => Err(self.db(e).await),
                }
            }
            Err(e) => Err(self.db(e).await),
        }
    }

    async fn get_rollout(&self, id: &RolloutId) -> Result<RolloutRecord, RolloutStoreError> {
        let row: Option<RolloutRow> = match sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"
        )))
        .bind(id.as_str())
        .fetch_optional(self.flags.pool())
        .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.db(e).await),
        };
        row.ok_or_else(|| RolloutStoreError::NotFound(id.clone()))?
            .into_record()
    }

    async fn list_rollouts(
        &self,
        active_only: bool,
    ) -> Result<Vec<RolloutRecord>, RolloutStoreError> {
        let rows: Vec<RolloutRow> = match sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts
              WHERE NOT $1 OR state IN ('running', 'paused')
              ORDER BY id LIMIT $2"
        )))
        .bind(active_only)
        .bind(MAX_ROLLOUT_LIST as i64)
        .fetch_all(self.flags.pool())
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.db(e).await),
        };
        rows.into_iter().map(RolloutRow::into_record).collect()
    }

    async fn transition(
        &self,
        id: &RolloutId,
        expected_version: i64,
        to: RolloutState,
        principal: &str,
        reason: &str,
    ) -> Result<RolloutRecord, RolloutStoreError> {
        let attempt = async {
            let mut tx = self.flags.pool().begin().await?;
            let current: Option<(i64, String)> =
                sqlx::query_as("SELECT version, state FROM rollouts WHERE id = $1 FOR UPDATE")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((actual, from)) = current else {
                return Ok(Err(RolloutStoreError::NotFound(id.clone())));
            };
            if actual != expected_version {
                return Ok(Err(RolloutStoreError::VersionConflict {
                    rollout: id.clone(),
                    expected: expected_version,
                    actual,
                }));
            }
            let row: RolloutRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE rollouts SET state = $2, state_value = $3, version = version + 1,
                        updated_at = clock_timestamp()
                  WHERE id = $1
                  RETURNING {ROLLOUT_COLUMNS}"
            )))
            .bind(id.as_str())
            .bind(to.name())
            .bind(Json(&to))
            .fetch_one(&mut *tx)
            .await?;
            insert_history(
                &mut tx,
                id.as_str(),
                Some(&from),
                &to,
                principal,
                reason,
                row.version,
            )
            .await?;
            tx.commit().await?;
            Ok(Ok(row))
        };
        match attempt.await {
            Ok(Ok(row)) => row.into_record(),
            Ok(Err(refused)) => Err(refused),
            Err(e) => Err(self.db(e).await),
        }
    }

    async fn history(&self, id: &RolloutId) -> Result<Vec<RolloutEvent>, RolloutStoreError> {
        self.get_rollout(id).await?;
        let rows: Vec<HistoryRow> = match sqlx::query_as(
            "SELECT from_state, state_value, principal, reason, version, occurred_at
               FROM rollout_history WHERE rollout_id = $1 ORDER BY id LIMIT $2",
        )
        .bind(id.as_str())
        .bind(MAX_ROLLOUT_LIST as i64)
        .fetch_all(self.flags.pool())
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.db(e).await),
        };
        Ok(rows
            .into_iter()
            .map(|r| RolloutEvent {
                rollout: id.clone(),
                from: r.from_state,
                to: r.state_value.0,
                principal: r.principal,
                reason: r.reason,
                version: r.version,
                at: r.occurred_at,
            })
            .collect())
    }

    async fn schedule(
        &self,
        due_at: DateTime<Utc>,
        action: ScheduledAction,
        principal: &str,
    ) -> Result<ScheduledChange, RolloutStoreError> {
        let row: ScheduleRow = match sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO scheduled_changes (due_at, action, created_by) VALUES ($1, $2, $3)
             RETURNING {SCHEDULE_COLUMNS}"
        )))
        .bind(due_at)
        .bind(Json(&action))
        .bind(principal)
        .fetch_one(self.flags.pool())
        .await
        {
            Ok(row) => row,
            Err(e) => return Err(self.db(e).await),
        };
        row.into_change()
    }

    async fn list_scheduled(
        &self,
        pending_only: bool,
    ) -> Result<Vec<ScheduledChange>, RolloutStoreError> {
        let rows: Vec<ScheduleRow> = match sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM scheduled_changes
              WHERE NOT $1 OR state = 'pending'
              ORDER BY due_at, id LIMIT $2"
        )))
        .bind(pending_only)
        .bind(MAX_ROLLOUT_LIST as i64)
        .fetch_all(self.flags.pool())
        .await
        {
            Ok(rows) => rows,
            Err(e) => return Err(self.db(e).await),
        };
        rows.into_iter().map(ScheduleRow::into_change).collect()
    }

    async fn cancel_scheduled(
        &self,
        id: i64,
        principal: &str,
    ) -> Result<ScheduledChange, RolloutStoreError> {
        self.settle(id, "cancelled", Utc::now(), Some(principal))
            .await
    }

    async fn claim_scheduled(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<ScheduledChange, RolloutStoreError> {
        self.settle(id, "fired", now, None).await
    }
}

impl PostgresRolloutStore {
    async fn settle(
        &self,
        id: i64,
        to: &'static str,
        at: DateTime<Utc>,
        by: Option<&str>,
    ) -> Result<ScheduledChange, RolloutStoreError> {
        let settled: Result<Option<ScheduleRow>, sqlx::Error> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE scheduled_changes SET state = $2, settled_at = $3, settled_by = $4
                  WHERE id = $1 AND state = 'pending'
                  RETURNING {SCHEDULE_COLUMNS}"
            )))
            .bind(id)
            .bind(to)
            .bind(at)
            .bind(by)
            .fetch_optional(self.flags.pool())
            .await;
        match settled {
            Ok(Some(row)) => row.into_change(),
            Ok(None) => {
                let state: Result<Option<(String,)>, _> =
                    sqlx::query_as("SELECT state FROM scheduled_changes WHERE id = $1")
                        .bind(id)
                        .fetch_optional(self.flags.pool())
                        .await;
                match state {
                    Ok(None) => Err(RolloutStoreError::ScheduleNotFound(id)),
                    Ok(Some((state,))) => Err(RolloutStoreError::NotPending {
                        id,
                        state: if state == "fired" {
                            "fired"
                        } else {
                            "cancelled"
                        },
                    }),
                    Err(e) => Err(self.db(e).await),
                }
            }
            Err(e) => Err(self.db(e).await),
        }
    }
}

#[derive(FromRow)]
struct HistoryRow {
    from_state: Option<String>,
    state_value: Json<RolloutState>,
    principal: String,
    reason: String,
    version: i64,
    occurred_at: DateTime<Utc>,
}

async fn insert_history(
    tx: &mut sqlx::PgConnection,
    id: &str,
    from: Option<&str>,
    to: &RolloutState,
    principal: &str,
    reason: &str,
    version: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rollout_history (rollout_id, from_state, to_state, state_value, principal,
                                      reason, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(from)
    .bind(to.name())
    .bind(Json(to))
    .bind(principal)
    .bind(reason)
    .bind(version)
    .execute(tx)
    .await?;
    Ok(())
}
