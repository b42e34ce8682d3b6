//! Rollouts in memory: the same contract as PostgreSQL's, one mutex in place of row locks and the
//! unique index. For in-process nodes and tests; nothing outlives the process.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bunting_rollouts::{RolloutId, RolloutSpec, RolloutState};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    MAX_ROLLOUT_LIST, RolloutEvent, RolloutRecord, RolloutStore, RolloutStoreError, ScheduleState,
    ScheduledAction, ScheduledChange,
};

#[derive(Debug, Default)]
pub struct MemoryRolloutStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rollouts: BTreeMap<RolloutId, RolloutRecord>,
    history: Vec<RolloutEvent>,
    scheduled: BTreeMap<i64, ScheduledChange>,
    next_schedule_id: i64,
}

impl MemoryRolloutStore {
    pub fn new() -> MemoryRolloutStore {
        MemoryRolloutStore::default()
    }

    /// A poisoned lock means a panic mid-update elsewhere; every update here is written so that a
    /// panic cannot leave it half done (checks before writes), so the data is still whole.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn event(
    record: &RolloutRecord,
    from: Option<&RolloutState>,
    principal: &str,
    reason: &str,
) -> RolloutEvent {
    RolloutEvent {
        rollout: record.spec.id.clone(),
        from: from.map(|s| s.name().to_owned()),
        to: record.state.clone(),
        principal: principal.to_owned(),
        reason: reason.to_owned(),
        version: record.version,
        at: record.updated_at,
    }
}

#[async_trait]
impl RolloutStore for MemoryRolloutStore {
    async fn create_rollout(
        &self,
        spec: &RolloutSpec,
        pre_rollout: Value,
        state: RolloutState,
        principal: &str,
        reason: &str,
    ) -> Result<RolloutRecord, RolloutStoreError> {
        let mut inner = self.lock();
        if inner.rollouts.contains_key(&spec.id) {
            return Err(RolloutStoreError::AlreadyExists(spec.id.clone()));
        }
        if state.is_active()
            && let Some(other) = inner.rollouts.values().find(|r| {
                r.state.is_active()
                    && r.spec.flag_set == spec.flag_set
                    && r.spec.flag_key == spec.flag_key
            })
        {
            return Err(RolloutStoreError::FlagBusy {
                flag_set: spec.flag_set.clone(),
                flag_key: spec.flag_key.clone(),
                other: other.spec.id.clone(),
            });
        }
        let now = Utc::now();
        let record = RolloutRecord {
            spec: spec.clone(),
            state,
            pre_rollout,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let entry = event(&record, None, principal, reason);
        inner.history.push(entry);
        inner.rollouts.insert(spec.id.clone(), record.clone());
        Ok(record)
    }

    async fn get_rollout(&self, id: &RolloutId) -> Result<RolloutRecord, RolloutStoreError> {
        self.lock()
            .rollouts
            .get(id)
            .cloned()
            .ok_or_else(|| RolloutStoreError::NotFound(id.clone()))
    }

    async fn list_rollouts(
        &self,
        active_only: bool,
    ) -> Result<Vec<RolloutRecord>, RolloutStoreError> {
        Ok(self
            .lock()
            .rollouts
            .values()
            .filter(|r| !active_only || r.state.is_active())
            .take(MAX_ROLLOUT_LIST)
            .cloned()
            .collect())
    }

    async fn transition(
        &self,
        id: &RolloutId,
        expected_version: i64,
        to: RolloutState,
        principal: &str,
        reason: &str,
    ) -> Result<RolloutRecord, RolloutStoreError> {
        let mut inner = self.lock();
        let Some(record) = inner.rollouts.get_mut(id) else {
            return Err(RolloutStoreError::NotFound(id.clone()));
        };
        if record.version != expected_version {
            return Err(RolloutStoreError::VersionConflict {
                rollout: id.clone(),
                expected: expected_version,
                actual: record.version,
            });
        }
        let from = std::mem::replace(&mut record.state, to);
        record.version += 1;
        record.updated_at = Utc::now();
        let record = record.clone();
        inner
            .history
            .push(event(&record, Some(&from), principal, reason));
        Ok(record)
    }

    async fn history(&self, id: &RolloutId) -> Result<Vec<RolloutEvent>, RolloutStoreError> {
        let inner = self.lock();
        if !inner.rollouts.contains_key(id) {
            return Err(RolloutStoreError::NotFound(id.clone()));
        }
        Ok(inner
            .history
            .iter()
            .filter(|e| &e.rollout == id)
            .cloned()
            .collect())
    }

    async fn schedule(
        &self,
        due_at: DateTime<Utc>,
        action: ScheduledAction,
        principal: &str,
    ) -> Result<ScheduledChange, RolloutStoreError> {
        let mut inner = self.lock();
        inner.next_schedule_id += 1;
        let change = ScheduledChange {
            id: inner.next_schedule_id,
            due_at,
            action,
            created_by: principal.to_owned(),
            created_at: Utc::now(),
            state: ScheduleState::Pending,
        };
        inner.scheduled.insert(change.id, change.clone());
        Ok(change)
    }

    async fn list_scheduled(
        &self,
        pending_only: bool,
    ) -> Result<Vec<ScheduledChange>, RolloutStoreError> {
        let mut all: Vec<ScheduledChange> = self
            .lock()
            .scheduled
            .values()
            .filter(|c| !pending_only || c.state == ScheduleState::Pending)
            .cloned()
            .collect();
        all.sort_by_key(|c| (c.due_at, c.id));
        all.truncate(MAX_ROLLOUT_LIST);
        Ok(all)
    }

    async fn cancel_scheduled(
        &self,
        id: i64,
        principal: &str,
    ) -> Result<ScheduledChange, RolloutStoreError> {
        self.settle(
            id,
            ScheduleState::Cancelled {
                at: Utc::now(),
                by: principal.to_owned(),
            },
        )
    }

    async fn claim_scheduled(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<ScheduledChange, RolloutStoreError> {
        self.settle(id, ScheduleState::Fired { at: now })
    }
}

impl MemoryRolloutStore {
    fn settle(&self, id: i64, to: ScheduleState) -> Result<ScheduledChange, RolloutStoreError> {
        let mut inner = self.lock();
        let change = inner
            .scheduled
            .get_mut(&id)
            .ok_or(RolloutStoreError::ScheduleNotFound(id))?;
        if change.state != ScheduleState::Pending {
            return Err(RolloutStoreError::NotPending {
                id,
                state: change.state.name(),
            });
        }
        change.state = to;
        Ok(change.clone())
    }
}
