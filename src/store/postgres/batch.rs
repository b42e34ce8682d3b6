//! A batch of flag writes to one set as one transaction and one version of the set
//! (`AdminStore::apply_flag_changes`): what `bunting flags push` and a rollback send, so a node
//! never serves a half-applied file.
//!
//! Same shape as a single write: lock (or create) the set's row, check every change against the
//! flags as they are, compile what would be written, and only then write, audit and notify. Any
//! refusal returns before the first write, and the transaction rolls back on drop.

use std::collections::{HashMap, HashSet};

use bunting_engine::CompileOptions;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::types::Json;

use super::{
    Change, Failure, FlagRow, PostgresStore, SetRow, bump_set, check_version, flag_name, lock_set,
    set_name,
};
use crate::store::document::{self, check_name};
use crate::store::{AuditAction, BatchOutcome, FlagBatch, FlagChange, FlagSetFields, StoreError};

impl PostgresStore {
    pub(super) async fn try_apply_flag_changes(
        &self,
        flag_set: &str,
        batch: &FlagBatch,
        actor: &str,
    ) -> Result<BatchOutcome, Failure> {
        check_keys(&batch.changes)?;
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
        check_changes(flag_set, &batch.changes, &current)?;
        self.check_flag_count(&mut tx, flag_set, &batch.changes)
            .await?;
        // Only the written flags are compiled, in a document with the set's metadata and
        // `$evaluators` (see `validate_flag`): flags never refer to each other, so the rest of the
        // set, which compiled when it was written, cannot be broken by the batch.
        let written = batch.changes.iter().filter_map(|change| match change {
            FlagChange::Create { key, definition }
            | FlagChange::Update {
                key, definition, ..
            } => Some((key.as_str(), definition)),
            FlagChange::Delete { .. } => None,
        });
        let doc = document::build(&set.metadata.0, &set.evaluators.0, written);
        document::validate(&doc, &self.settings.compile)?;

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

    /// The one limit a document of the written flags cannot show: how many flags the set holds
    /// after the batch.
    async fn check_flag_count(
        &self,
        conn: &mut PgConnection,
        flag_set: &str,
        changes: &[FlagChange],
    ) -> Result<(), Failure> {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM flags WHERE flag_set_id = $1 AND deleted_at IS NULL",
        )
        .bind(flag_set)
        .fetch_one(&mut *conn)
        .await?;
        let delta = changes.iter().fold(0i64, |n, change| match change {
            FlagChange::Create { .. } => n + 1,
            FlagChange::Delete { .. } => n - 1,
            FlagChange::Update { .. } => n,
        });
        let after = live.saturating_add(delta);
        let max_flags = self.settings.compile.limits.max_flags;
        if usize::try_from(after).unwrap_or(0) > max_flags {
            return Err(StoreError::invalid(
                "flags",
                format!(
                    "{} would hold {after} flags, more than the limit of flags per set \
                     (definitions.max_flags = {max_flags})",
                    set_name(flag_set)
                ),
            )
            .into());
        }
        Ok(())
    }
}

/// Every key well formed and named once: two writes to one flag in one version have no order a
/// reader could see.
fn check_keys(changes: &[FlagChange]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Err(StoreError::invalid("changes", "must not be empty"));
    }
    let mut seen = HashSet::new();
    for (i, change) in changes.iter().enumerate() {
        let path = format!("changes[{i}].key");
        check_name(&path, change.key())?;
        if !seen.insert(change.key()) {
            return Err(StoreError::invalid(
                &path,
                format!("names flag {:?} a second time in one batch", change.key()),
            ));
        }
    }
    Ok(())
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

/// Each change against the flag as it is: a create needs no live flag, an update or delete needs
/// one at its expected version. The first refusal, naming its flag, refuses the batch.
fn check_changes(
    flag_set: &str,
    changes: &[FlagChange],
    current: &HashMap<String, FlagRow>,
) -> Result<(), StoreError> {
    for change in changes {
        let key = change.key();
        match (change, current.get(key)) {
            (FlagChange::Create { .. }, Some(_)) => {
                return Err(StoreError::AlreadyExists {
                    what: flag_name(flag_set, key),
                });
            }
            (FlagChange::Create { .. }, None) => {}
            (
                FlagChange::Update {
                    expected_version, ..
                }
                | FlagChange::Delete {
                    expected_version, ..
                },
                Some(row),
            ) => check_version(flag_name(flag_set, key), *expected_version, row.version)?,
            (_, None) => {
                return Err(StoreError::NotFound {
                    what: flag_name(flag_set, key),
                });
            }
        }
    }
    Ok(())
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
