//! The admin store in memory: the same rules as PostgreSQL's ([`crate::postgres`]), one mutex in
//! place of the set-row lock, and nothing kept past the process. For tests of services and
//! feeds in one process (they run without a database), and for tools that want a scratch store;
//! a node's config never selects it, since a write it acknowledged would die with the process.
//!
//! The contract both stores pass is `tests/admin_store_contract.rs`: versions, tombstones,
//! optimistic concurrency, validation, the audit log and change notices.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bunting_engine::CompileOptions;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::admin::{Change, check_version, flag_name, set_name};
use crate::batch;
use crate::document::{self, check_name};
use crate::fanout::Fanout;
use crate::{
    AdminStore, AuditAction, AuditEntry, BatchOutcome, ChangeNotice, FlagBatch, FlagChange,
    FlagList, FlagRecord, FlagSetFields, FlagSetRecord, FlagSetSnapshot, MAX_AUDIT_PAGE,
    StoreError, Subscription,
};

/// Notices that may wait for one slow subscriber. Beyond it the subscriber misses notices and is
/// sent [`ChangeNotice::Resync`] once there is room again, as PostgreSQL's listener does after a
/// reconnect, so memory stays bounded and nothing is silently lost.
const SUBSCRIBER_BUFFER: usize = 256;

/// An admin store that keeps everything in memory.
#[derive(Debug)]
pub struct MemoryAdminStore {
    compile: CompileOptions,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Every set ever created, deleted ones as tombstones (they keep counting versions).
    sets: BTreeMap<String, Set>,
    /// In commit order; an entry's id is its index plus one.
    audit: Vec<AuditEntry>,
    subscribers: Fanout<ChangeNotice>,
}

#[derive(Debug)]
struct Set {
    version: i64,
    metadata: Map<String, Value>,
    evaluators: Map<String, Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted: bool,
    /// Every flag ever created in the set, deleted ones as tombstones.
    flags: BTreeMap<String, Flag>,
}

#[derive(Debug)]
struct Flag {
    definition: Value,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted: bool,
}

impl MemoryAdminStore {
    /// An empty store that validates writes with `compile`, as a node compiles what it serves.
    pub fn new(compile: CompileOptions) -> MemoryAdminStore {
        MemoryAdminStore {
            compile,
            state: Mutex::new(State {
                sets: BTreeMap::new(),
                audit: Vec::new(),
                subscribers: Fanout::new(ChangeNotice::Resync),
            }),
        }
    }

    /// The state, even after a panic in another holder: every write checks before it changes
    /// anything, so no holder leaves it half-written.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryAdminStore {
    fn default() -> Self {
        MemoryAdminStore::new(CompileOptions::default())
    }
}

impl Set {
    fn record(&self, id: &str) -> FlagSetRecord {
        FlagSetRecord {
            id: id.to_owned(),
            version: self.version,
            metadata: self.metadata.clone(),
            evaluators: self.evaluators.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    fn live_flags(&self) -> impl Iterator<Item = (&str, &Flag)> {
        self.flags
            .iter()
            .filter(|(_, flag)| !flag.deleted)
            .map(|(key, flag)| (key.as_str(), flag))
    }

    fn live_flag(&self, flag_set: &str, key: &str) -> Result<&Flag, StoreError> {
        self.flags
            .get(key)
            .filter(|flag| !flag.deleted)
            .ok_or_else(|| StoreError::NotFound {
                what: flag_name(flag_set, key),
            })
    }

    fn document(&self) -> Value {
        document::build(
            &self.metadata,
            &self.evaluators,
            self.live_flags().map(|(key, flag)| (key, &flag.definition)),
        )
    }

    /// A new live flag `key`, or its tombstone brought back one version past its deletion.
    fn create_flag(&mut self, key: &str, definition: Value, at: DateTime<Utc>) -> &mut Flag {
        let version = self
            .flags
            .get(key)
            .map_or(1, |tombstone| tombstone.version + 1);
        let flag = Flag {
            definition,
            version,
            created_at: at,
            updated_at: at,
            deleted: false,
        };
        match self.flags.entry(key.to_owned()) {
            Entry::Occupied(mut entry) => {
                entry.insert(flag);
                entry.into_mut()
            }
            Entry::Vacant(entry) => entry.insert(flag),
        }
    }

    /// A write to the set or one of its flags: the set's next version.
    fn bump(&mut self, at: DateTime<Utc>) -> i64 {
        self.version += 1;
        self.updated_at = at;
        self.version
    }
}

impl Flag {
    /// Deleted: it keeps counting versions, so a re-created flag is newer than any copy of it.
    fn tombstone(&mut self, at: DateTime<Utc>) {
        self.deleted = true;
        self.version += 1;
        self.updated_at = at;
    }

    /// A new definition for a live flag; returns the one it replaced.
    fn replace(&mut self, definition: Value, at: DateTime<Utc>) -> Value {
        self.version += 1;
        self.updated_at = at;
        std::mem::replace(&mut self.definition, definition)
    }

    fn record(&self, flag_set: &str, key: &str, flag_set_version: i64) -> FlagRecord {
        FlagRecord {
            flag_set_id: flag_set.to_owned(),
            key: key.to_owned(),
            definition: self.definition.clone(),
            version: self.version,
            flag_set_version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

impl State {
    fn live_set(&self, id: &str) -> Result<&Set, StoreError> {
        self.sets
            .get(id)
            .filter(|set| !set.deleted)
            .ok_or_else(|| StoreError::NotFound { what: set_name(id) })
    }

    fn live_set_mut(&mut self, id: &str) -> Result<&mut Set, StoreError> {
        self.sets
            .get_mut(id)
            .filter(|set| !set.deleted)
            .ok_or_else(|| StoreError::NotFound { what: set_name(id) })
    }

    /// The audit entry and the notice every write ends with.
    fn committed(&mut self, change: Change<'_>) {
        let notice = self.audit(change);
        self.notify(&notice);
    }

    /// Appends `change` to the audit log; returns the notice it makes.
    fn audit(&mut self, change: Change<'_>) -> ChangeNotice {
        let deletes_set = change.deletes_set();
        let id = i64::try_from(self.audit.len()).unwrap_or(i64::MAX - 1) + 1;
        self.audit.push(AuditEntry {
            id,
            flag_set_id: change.flag_set.to_owned(),
            flag_key: change.flag_key.map(str::to_owned),
            action: change.action,
            actor: change.actor.to_owned(),
            at: change.at,
            before: change.before,
            after: change.after,
            flag_set_version: change.version,
        });
        if deletes_set {
            ChangeNotice::Deleted {
                flag_set: change.flag_set.to_owned(),
                version: change.version,
                at: change.at,
            }
        } else {
            ChangeNotice::Changed {
                flag_set: change.flag_set.to_owned(),
                version: change.version,
                at: change.at,
            }
        }
    }

    /// A new set at version 1, or a deleted one brought back one version past its deletion,
    /// audited; returns its notice for the caller to send once its write is complete.
    fn create_set(
        &mut self,
        id: &str,
        fields: FlagSetFields,
        actor: &str,
        compile: &CompileOptions,
    ) -> Result<(FlagSetRecord, ChangeNotice), StoreError> {
        check_name("id", id)?;
        let doc = document::build(&fields.metadata, &fields.evaluators, []);
        document::validate(&doc, compile)?;
        let at = Utc::now();
        let version = match self.sets.get(id) {
            Some(set) if !set.deleted => {
                return Err(StoreError::AlreadyExists { what: set_name(id) });
            }
            Some(tombstone) => tombstone.version + 1,
            None => 1,
        };
        let flags = self
            .sets
            .remove(id)
            .map(|tombstone| tombstone.flags)
            .unwrap_or_default();
        let set = Set {
            version,
            metadata: fields.metadata,
            evaluators: fields.evaluators,
            created_at: at,
            updated_at: at,
            deleted: false,
            flags,
        };
        let record = set.record(id);
        self.sets.insert(id.to_owned(), set);
        let notice = self.audit(Change {
            flag_set: id,
            flag_key: None,
            action: AuditAction::Create,
            actor,
            before: None,
            after: Some(document::fields_json(&record.metadata, &record.evaluators)),
            version,
            at,
        });
        Ok((record, notice))
    }

    fn notify(&mut self, notice: &ChangeNotice) {
        self.subscribers.send(notice);
    }
}

#[async_trait]
impl AdminStore for MemoryAdminStore {
    async fn create_flag_set(
        &self,
        id: &str,
        fields: FlagSetFields,
        actor: &str,
    ) -> Result<FlagSetRecord, StoreError> {
        let mut state = self.state();
        let (record, notice) = state.create_set(id, fields, actor, &self.compile)?;
        state.notify(&notice);
        Ok(record)
    }

    async fn update_flag_set(
        &self,
        id: &str,
        fields: FlagSetFields,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagSetRecord, StoreError> {
        let mut state = self.state();
        let set = state.live_set_mut(id)?;
        check_version(set_name(id), expected_version, set.version)?;
        let doc = document::build(
            &fields.metadata,
            &fields.evaluators,
            set.live_flags().map(|(key, flag)| (key, &flag.definition)),
        );
        document::validate(&doc, &self.compile)?;
        let before = document::fields_json(&set.metadata, &set.evaluators);
        let at = Utc::now();
        set.metadata = fields.metadata;
        set.evaluators = fields.evaluators;
        let version = set.bump(at);
        let record = set.record(id);
        state.committed(Change {
            flag_set: id,
            flag_key: None,
            action: AuditAction::Update,
            actor,
            before: Some(before),
            after: Some(document::fields_json(&record.metadata, &record.evaluators)),
            version,
            at,
        });
        Ok(record)
    }

    async fn delete_flag_set(
        &self,
        id: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let mut state = self.state();
        let set = state.live_set_mut(id)?;
        check_version(set_name(id), expected_version, set.version)?;
        let before = set.document();
        let at = Utc::now();
        for flag in set.flags.values_mut().filter(|flag| !flag.deleted) {
            flag.tombstone(at);
        }
        set.deleted = true;
        let version = set.bump(at);
        state.committed(Change {
            flag_set: id,
            flag_key: None,
            action: AuditAction::Delete,
            actor,
            before: Some(before),
            after: None,
            version,
            at,
        });
        Ok(version)
    }

    async fn get_flag_set(&self, id: &str) -> Result<FlagSetRecord, StoreError> {
        Ok(self.state().live_set(id)?.record(id))
    }

    async fn list_flag_sets(&self) -> Result<Vec<FlagSetRecord>, StoreError> {
        let state = self.state();
        Ok(state
            .sets
            .iter()
            .filter(|(_, set)| !set.deleted)
            .map(|(id, set)| set.record(id))
            .collect())
    }

    async fn create_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: Value,
        expected_flag_set_version: Option<i64>,
        actor: &str,
    ) -> Result<FlagRecord, StoreError> {
        check_name("key", key)?;
        let mut state = self.state();
        let set = state.live_set_mut(flag_set)?;
        if let Some(expected) = expected_flag_set_version {
            check_version(set_name(flag_set), expected, set.version)?;
        }
        if set.live_flag(flag_set, key).is_ok() {
            return Err(StoreError::AlreadyExists {
                what: flag_name(flag_set, key),
            });
        }
        // The one limit a single flag's document cannot show: how many flags the set holds.
        let live = set.live_flags().count();
        let max_flags = self.compile.limits.max_flags;
        if live >= max_flags {
            return Err(StoreError::invalid(
                "flags",
                format!(
                    "{} already holds {live} flags, the limit of flags per set (definitions.max_flags = {max_flags})",
                    set_name(flag_set)
                ),
            ));
        }
        let doc = document::build(&set.metadata, &set.evaluators, [(key, &definition)]);
        document::validate(&doc, &self.compile)?;
        let at = Utc::now();
        let version = set.bump(at);
        let record = set
            .create_flag(key, definition, at)
            .record(flag_set, key, version);
        state.committed(Change {
            flag_set,
            flag_key: Some(key),
            action: AuditAction::Create,
            actor,
            before: None,
            after: Some(record.definition.clone()),
            version,
            at,
        });
        Ok(record)
    }

    async fn update_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: Value,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagRecord, StoreError> {
        let mut state = self.state();
        let set = state.live_set_mut(flag_set)?;
        let current = set.live_flag(flag_set, key)?.version;
        check_version(flag_name(flag_set, key), expected_version, current)?;
        let doc = document::build(&set.metadata, &set.evaluators, [(key, &definition)]);
        document::validate(&doc, &self.compile)?;
        let at = Utc::now();
        let version = set.bump(at);
        let Some(flag) = set.flags.get_mut(key) else {
            return Err(StoreError::NotFound {
                what: flag_name(flag_set, key),
            });
        };
        let before = flag.replace(definition, at);
        let record = flag.record(flag_set, key, version);
        state.committed(Change {
            flag_set,
            flag_key: Some(key),
            action: AuditAction::Update,
            actor,
            before: Some(before),
            after: Some(record.definition.clone()),
            version,
            at,
        });
        Ok(record)
    }

    async fn delete_flag(
        &self,
        flag_set: &str,
        key: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, StoreError> {
        let mut state = self.state();
        let set = state.live_set_mut(flag_set)?;
        let current = set.live_flag(flag_set, key)?.version;
        check_version(flag_name(flag_set, key), expected_version, current)?;
        // Nothing to validate: flags never refer to each other, so removing one cannot break
        // the rest (as in the PostgreSQL store).
        let at = Utc::now();
        let version = set.bump(at);
        let Some(flag) = set.flags.get_mut(key) else {
            return Err(StoreError::NotFound {
                what: flag_name(flag_set, key),
            });
        };
        flag.tombstone(at);
        let before = flag.definition.clone();
        state.committed(Change {
            flag_set,
            flag_key: Some(key),
            action: AuditAction::Delete,
            actor,
            before: Some(before),
            after: None,
            version,
            at,
        });
        Ok(version)
    }

    async fn apply_flag_changes(
        &self,
        flag_set: &str,
        batch: FlagBatch,
        actor: &str,
    ) -> Result<BatchOutcome, StoreError> {
        batch::check_keys(&batch.changes)?;
        let mut state = self.state();
        let exists = state.live_set(flag_set).is_ok();
        // Every check before the first change, so a refused batch leaves nothing behind: the
        // set's own creation included.
        let (expected_actual, created_fields) = match (exists, batch.create_flag_set) {
            (true, _) => (state.live_set(flag_set)?.version, None),
            (false, Some(fields)) => (0, Some(fields)),
            (false, None) => {
                return Err(StoreError::NotFound {
                    what: set_name(flag_set),
                });
            }
        };
        if let Some(expected) = batch.expected_flag_set_version {
            // A set this batch creates had no version the caller could have read.
            check_version(set_name(flag_set), expected, expected_actual)?;
        }
        let (metadata, evaluators, live) = match (&created_fields, state.live_set(flag_set)) {
            (Some(fields), _) => (fields.metadata.clone(), fields.evaluators.clone(), 0),
            (None, Ok(set)) => {
                batch::check_changes(flag_set, &batch.changes, |key| {
                    set.live_flag(flag_set, key).ok().map(|flag| flag.version)
                })?;
                let live = i64::try_from(set.live_flags().count()).unwrap_or(i64::MAX);
                (set.metadata.clone(), set.evaluators.clone(), live)
            }
            (None, Err(e)) => return Err(e),
        };
        if created_fields.is_some() {
            batch::check_changes(flag_set, &batch.changes, |_| None)?;
            check_name("id", flag_set)?;
            let doc = document::build(&metadata, &evaluators, []);
            document::validate(&doc, &self.compile)?;
        }
        batch::check_flag_count(
            flag_set,
            live,
            &batch.changes,
            self.compile.limits.max_flags,
        )?;
        batch::check_written(&metadata, &evaluators, &batch.changes, &self.compile)?;

        // Checked: now write. One version for the whole batch; a set created here already has
        // its first.
        let created_flag_set = created_fields.is_some();
        if let Some(fields) = created_fields {
            state.create_set(flag_set, fields, actor, &self.compile)?;
        }
        let set = state.live_set_mut(flag_set)?;
        let at = Utc::now();
        let version = if created_flag_set {
            set.version
        } else {
            set.bump(at)
        };
        let mut outcome = BatchOutcome {
            flag_set_version: version,
            written: Vec::new(),
            deleted: Vec::new(),
            created_flag_set,
        };
        let mut changes = Vec::with_capacity(batch.changes.len());
        for change in batch.changes {
            let key = change.key().to_owned();
            let previous = set.flags.get(&key).filter(|flag| !flag.deleted);
            let before = previous.map(|flag| flag.definition.clone());
            let (action, after) = match change {
                FlagChange::Create { definition, .. } | FlagChange::Update { definition, .. } => {
                    let action = if previous.is_some() {
                        AuditAction::Update
                    } else {
                        AuditAction::Create
                    };
                    let flag = match set.flags.get_mut(&key) {
                        Some(flag) if !flag.deleted => {
                            flag.replace(definition, at);
                            flag
                        }
                        _ => set.create_flag(&key, definition, at),
                    };
                    let record = flag.record(flag_set, &key, version);
                    let after = record.definition.clone();
                    outcome.written.push(record);
                    (action, Some(after))
                }
                FlagChange::Delete { .. } => {
                    if let Some(flag) = set.flags.get_mut(&key) {
                        flag.tombstone(at);
                    }
                    outcome.deleted.push(key.clone());
                    (AuditAction::Delete, None)
                }
            };
            changes.push((key, action, before, after));
        }
        for (key, action, before, after) in changes {
            state.audit(Change {
                flag_set,
                flag_key: Some(&key),
                action,
                actor,
                before,
                after,
                version,
                at,
            });
        }
        // One notice for the one new version, however many flags it changed.
        state.notify(&ChangeNotice::Changed {
            flag_set: flag_set.to_owned(),
            version,
            at,
        });
        Ok(outcome)
    }

    async fn get_flag(&self, flag_set: &str, key: &str) -> Result<FlagRecord, StoreError> {
        let state = self.state();
        let set = state.live_set(flag_set).map_err(|_| StoreError::NotFound {
            what: flag_name(flag_set, key),
        })?;
        Ok(set
            .live_flag(flag_set, key)?
            .record(flag_set, key, set.version))
    }

    async fn list_flags(&self, flag_set: &str) -> Result<FlagList, StoreError> {
        let state = self.state();
        let set = state.live_set(flag_set)?;
        Ok(FlagList {
            flag_set_version: set.version,
            flags: set
                .live_flags()
                .map(|(key, flag)| flag.record(flag_set, key, set.version))
                .collect(),
        })
    }

    async fn list_audit(
        &self,
        flag_set: Option<&str>,
        flag_key: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = usize::try_from(limit.min(MAX_AUDIT_PAGE)).unwrap_or(usize::MAX);
        let state = self.state();
        Ok(state
            .audit
            .iter()
            .rev()
            .filter(|entry| flag_set.is_none_or(|set| entry.flag_set_id == set))
            .filter(|entry| flag_key.is_none_or(|key| entry.flag_key.as_deref() == Some(key)))
            .filter(|entry| before_id.is_none_or(|before| entry.id < before))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn snapshot(&self, flag_set: &str) -> Result<FlagSetSnapshot, StoreError> {
        let state = self.state();
        let set = state.live_set(flag_set)?;
        Ok(FlagSetSnapshot {
            id: flag_set.to_owned(),
            version: set.version,
            document: set.document(),
            updated_at: set.updated_at,
        })
    }

    async fn snapshots(&self) -> Result<Vec<FlagSetSnapshot>, StoreError> {
        let state = self.state();
        Ok(state
            .sets
            .iter()
            .filter(|(_, set)| !set.deleted)
            .map(|(id, set)| FlagSetSnapshot {
                id: id.clone(),
                version: set.version,
                document: set.document(),
                updated_at: set.updated_at,
            })
            .collect())
    }

    async fn subscribe(&self) -> Result<Subscription, StoreError> {
        let receiver = self.state().subscribers.subscribe(SUBSCRIBER_BUFFER, false);
        Ok(Subscription::new(receiver))
    }
}
