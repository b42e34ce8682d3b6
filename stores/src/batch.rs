//! The rules a batch of flag writes (`AdminStore::apply_flag_changes`) is checked against before
//! anything is written, shared by every store so they refuse the same batches with the same
//! errors: keys well formed and each named once, every change against the flag as it is, the
//! set's flag limit after the batch, and the written flags compiled.

use std::collections::HashSet;

use bunting_engine::CompileOptions;
use serde_json::{Map, Value};

use crate::admin::{check_version, flag_name, set_name};
use crate::document::{self, check_name};
use crate::{FlagChange, StoreError};

/// Every key well formed and named once: two writes to one flag in one version have no order a
/// reader could see.
pub(crate) fn check_keys(changes: &[FlagChange]) -> Result<(), StoreError> {
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

/// Each change against the flag as it is (`version_of` a key: its live version, if any): a create
/// needs no live flag, an update or delete needs one at its expected version. The first refusal,
/// naming its flag, refuses the batch.
pub(crate) fn check_changes(
    flag_set: &str,
    changes: &[FlagChange],
    version_of: impl Fn(&str) -> Option<i64>,
) -> Result<(), StoreError> {
    for change in changes {
        let key = change.key();
        match (change, version_of(key)) {
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
                Some(version),
            ) => check_version(flag_name(flag_set, key), *expected_version, version)?,
            (_, None) => {
                return Err(StoreError::NotFound {
                    what: flag_name(flag_set, key),
                });
            }
        }
    }
    Ok(())
}

/// The one limit a document of the written flags cannot show: how many flags the set holds
/// after the batch, from the `live` count before it.
pub(crate) fn check_flag_count(
    flag_set: &str,
    live: i64,
    changes: &[FlagChange],
    max_flags: usize,
) -> Result<(), StoreError> {
    let delta = changes.iter().fold(0i64, |n, change| match change {
        FlagChange::Create { .. } => n + 1,
        FlagChange::Delete { .. } => n - 1,
        FlagChange::Update { .. } => n,
    });
    let after = live.saturating_add(delta);
    if usize::try_from(after).unwrap_or(0) > max_flags {
        return Err(StoreError::invalid(
            "flags",
            format!(
                "{} would hold {after} flags, more than the limit of flags per set \
                 (definitions.max_flags = {max_flags})",
                set_name(flag_set)
            ),
        ));
    }
    Ok(())
}

/// Compiles the written flags in a document with the set's metadata and `$evaluators`. Only
/// those: flags never refer to each other, so the rest of the set, which compiled when it was
/// written, cannot be broken by the batch.
pub(crate) fn check_written(
    metadata: &Map<String, Value>,
    evaluators: &Map<String, Value>,
    changes: &[FlagChange],
    options: &CompileOptions,
) -> Result<(), StoreError> {
    let written = changes.iter().filter_map(|change| match change {
        FlagChange::Create { key, definition }
        | FlagChange::Update {
            key, definition, ..
        } => Some((key.as_str(), definition)),
        FlagChange::Delete { .. } => None,
    });
    let doc = document::build(metadata, evaluators, written);
    document::validate(&doc, options).map(drop)
}
