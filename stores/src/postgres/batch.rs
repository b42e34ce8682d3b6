//! A batch of flag writes to one set as one transaction and one version of the set
//! (`AdminStore::apply_flag_changes`): what `bunting flags push` and a rollback send, so a node
//! never serves a half-applied file.
//!
//! Same shape as a single write: lock (or create) the set's row, check every change against the
//! flags as they are, compile what would be written, and only then write, audit and notify. Any
//! refusal returns before the first write, and the transaction rolls back on drop.

use std::collections::HashMap;

use bunting_engine::CompileOptions;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::types::Json;

use super::{Failure, FlagRow, PostgresStore, SetRow, bump_set, lock_set};
use crate::admin::{Change, check_version, set_name};
use crate::batch;
use crate::document::{self, check_name};
use crate::{AuditAction, BatchOutcome, FlagBatch, FlagChange, FlagSetFields, StoreError};

impl PostgresStore {
    pub(super) async fn try_apply_flag_changes(
        &self,
        flag_set: &str,
        batch: &FlagBatch,
        actor: &str,
    ) -> Result<BatchOutcome, Failure> {
        batch::check_keys(&batch.changes)?;
        let mut tx = self.pool.begin().await?;
        let (set, created) = lock_or_create(
            &mut tx,
            flag_set,
            batch.create_flag_set.as_ref(),
            &self.settings.compile,
        )
        .await?;
        if let Some(expected) = batch.expected_flag_set_version {
            // A set this batch created had no version the caller could have read.
            let actual = if created { 0 } else { set.version };
            check_version(set_name(flag_set), expected, actual)?;
        }
        let current = current_flags(&mut tx, flag_set, &batch.changes).await?;
        batch::check_changes(flag_set, &batch.changes, |key| {
            current.get(key).map(|row| row.version)
        })?;
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM flags WHERE flag_set_id = $1 AND deleted_at IS NULL",
        )
        .bind(flag_set)
        .fetch_one(&mut *tx)
        .await?;
        let max_flags = self.settings.compile.limits.max_flags;
        batch::check_flag_count(flag_set, live, &batch.changes, max_flags)?;
        batch::check_written(
            &set.metadata.0,
            &set.evaluators.0,
            &batch.changes,
            &self.settings.compile,
        )?;

        // One version for the whole batch; a set created here already has its first.
        let (version, at) = if created {
            (set.version, set.updated_at)
        } else {
            bump_set(&mut tx, flag_set).await?
        };
        if created {
            Change {
                flag_set,
                flag_key: None,
                action: AuditAction::Create,
                actor,
                before: None,
                after: Some(document::fields_json(&set.metadata.0, &set.evaluators.0)),
                version,
                at,
            }
            .audit(&mut tx)
            .await?;
        }
        let mut outcome = BatchOutcome {
            flag_set_version: version,
            written: Vec::new(),
            deleted: Vec::new(),
            created_flag_set: created,
        };
        for change in &batch.changes {
            let key = change.key();
            let before = current.get(key).map(|row| row.definition.0.clone());
            let (action, after) = match change {
                FlagChange::Create { definition, .. } | FlagChange::Update { definition, .. } => {
                    let row = write_flag(&mut tx, flag_set, key, definition).await?;
                    let record = row.at(version);
                    let after = record.definition.clone();
                    outcome.written.push(record);
                    let action = match change {
                        FlagChange::Create { .. } => AuditAction::Create,
                        _ => AuditAction::Update,
                    };
                    (action, Some(after))
                }
                FlagChange::Delete { .. } => {
                    delete_flag(&mut tx, flag_set, key).await?;
                    outcome.deleted.push(key.to_owned());
                    (AuditAction::Delete, None)
                }
            };
            Change {
                flag_set,
                flag_key: Some(key),
                action,
                actor,
                before,
                after,
                version,
                at,
            }
            .audit(&mut tx)
            .await?;
        }
        // One notice for the one new version, however many flags it changed.
        notice(flag_set, version, at).notify(&mut tx).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}

/// The live set's row, locked; or, when the batch may create it and it does not exist, the row
/// just created (a deleted set's tombstone comes back one version past its deletion).
async fn lock_or_create(
    conn: &mut PgConnection,
    flag_set: &str,
    create: Option<&FlagSetFields>,
    options: &CompileOptions,
) -> Result<(SetRow, bool), Failure> {
    let fields = match (lock_set(conn, flag_set).await, create) {
        (Ok(set), _) => return Ok((set, false)),
        (Err(Failure::Store(StoreError::NotFound { .. })), Some(fields)) => fields,
        (Err(e), _) => return Err(e),
    };
    check_name("id", flag_set)?;
    document::validate(
        &document::build(&fields.metadata, &fields.evaluators, []),
        options,
    )?;
    let row: Option<SetRow> = sqlx::query_as(
        "INSERT INTO flag_sets (id, version, metadata, evaluators) VALUES ($1, 1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET
             version = flag_sets.version + 1, metadata = EXCLUDED.metadata,
             evaluators = EXCLUDED.evaluators, created_at = now(), updated_at = now(),
             deleted_at = NULL
         WHERE flag_sets.deleted_at IS NOT NULL
         RETURNING id, version, metadata, evaluators, created_at, updated_at",
    )
    .bind(flag_set)
    .bind(Json(&fields.metadata))
    .bind(Json(&fields.evaluators))
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok((row, true)),
        // Somebody else created it since the look-up: take its lock like any other write.
        None => Ok((lock_set(conn, flag_set).await?, false)),
    }
}

/// The live flags the batch names, by key: one index look-up for the batch.
async fn current_flags(
    conn: &mut PgConnection,
    flag_set: &str,
    changes: &[FlagChange],
) -> Result<HashMap<String, FlagRow>, Failure> {
    let keys: Vec<&str> = changes.iter().map(FlagChange::key).collect();
    let rows: Vec<FlagRow> = sqlx::query_as(
        "SELECT flag_set_id, key, definition, version, created_at, updated_at
         FROM flags WHERE flag_set_id = $1 AND key = ANY($2) AND deleted_at IS NULL",
    )
    .bind(flag_set)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|row| (row.key.clone(), row)).collect())
}

/// Creates the flag, or brings back its tombstone, or replaces its definition: the checks above
/// already decided which is allowed, so one upsert serves all three.
async fn write_flag(
    conn: &mut PgConnection,
    flag_set: &str,
    key: &str,
    definition: &Value,
) -> Result<FlagRow, Failure> {
    Ok(sqlx::query_as(
        "INSERT INTO flags (flag_set_id, key, definition, version) VALUES ($1, $2, $3, 1)
         ON CONFLICT (flag_set_id, key) DO UPDATE SET
             definition = EXCLUDED.definition, version = flags.version + 1,
             created_at = CASE WHEN flags.deleted_at IS NULL THEN flags.created_at ELSE now() END,
             updated_at = now(), deleted_at = NULL
         RETURNING flag_set_id, key, definition, version, created_at, updated_at",
    )
    .bind(flag_set)
    .bind(key)
    .bind(Json(definition))
    .fetch_one(&mut *conn)
    .await?)
}

async fn delete_flag(conn: &mut PgConnection, flag_set: &str, key: &str) -> Result<(), Failure> {
    sqlx::query(
        "UPDATE flags SET deleted_at = now(), updated_at = now(), version = version + 1
         WHERE flag_set_id = $1 AND key = $2",
    )
    .bind(flag_set)
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The batch's one change notice (the set lives on, so it is never a deletion).
fn notice(flag_set: &str, version: i64, at: DateTime<Utc>) -> Change<'_> {
    Change {
        flag_set,
        flag_key: None,
        action: AuditAction::Update,
        actor: "",
        before: None,
        after: None,
        version,
        at,
    }
}
