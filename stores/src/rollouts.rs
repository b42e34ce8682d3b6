//! Where rollouts, their history and scheduled changes are kept: the [`RolloutStore`] trait the
//! controller and the rollout API use, its records and errors, and two implementations with one
//! contract (`tests/common/rollout_contract.rs`): [`MemoryRolloutStore`] for in-process nodes and
//! tests, [`PostgresRolloutStore`] (migration `0006_rollouts.sql`) on the flag store's pool.
//!
//! The rules (what a valid rollout is, which transitions are allowed, what to do at a tick) are
//! `bunting-rollouts`; this module stores their results. Two invariants are the store's own:
//! one active (running or paused) rollout per flag, and a scheduled change leaves "pending" once
//! (fired or cancelled), so it fires at most once whichever controller claims it.

mod lease;
mod memory;
mod postgres;

use async_trait::async_trait;
use bunting_rollouts::{RolloutError, RolloutId, RolloutInput, RolloutSpec, RolloutState};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use lease::{LEASE_KEY, Lease, PgLease, SoleLease};
pub use memory::MemoryRolloutStore;
pub use postgres::PostgresRolloutStore;

use crate::StoreError;

/// The most rows one list returns: the controller reads the active rollouts and due changes on
/// every tick, and an API list must stay one bounded answer.
pub const MAX_ROLLOUT_LIST: usize = 1000;

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutRecord {
    pub spec: RolloutSpec,
    pub state: RolloutState,
    /// The flag's definition before the rollout's first write: what roll back and abort restore.
    pub pre_rollout: Value,
    /// 1 at creation, bumped by every transition.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One transition in a rollout's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutEvent {
    pub rollout: RolloutId,
    /// `None` for the creation.
    pub from: Option<String>,
    pub to: RolloutState,
    /// A person's principal, or `rollout:<id>` for the controller.
    pub principal: String,
    pub reason: String,
    /// The rollout's version this transition produced.
    pub version: i64,
    pub at: DateTime<Utc>,
}

/// What a scheduled change does when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduledAction {
    /// Write this definition to the flag (created if it does not exist).
    FlagChange {
        flag_set: String,
        flag_key: String,
        definition: Value,
    },
    /// Start this rollout (checked again, against the flag as it is then).
    StartRollout { rollout: RolloutInput },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ScheduleState {
    Pending,
    /// Claimed by a controller at `at`; never runs again.
    Fired {
        at: DateTime<Utc>,
    },
    Cancelled {
        at: DateTime<Utc>,
        by: String,
    },
}

impl ScheduleState {
    pub fn name(&self) -> &'static str {
        match self {
            ScheduleState::Pending => "pending",
            ScheduleState::Fired { .. } => "fired",
            ScheduleState::Cancelled { .. } => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduledChange {
    pub id: i64,
    pub due_at: DateTime<Utc>,
    pub action: ScheduledAction,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub state: ScheduleState,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutStoreError {
    #[error("rollout {0} not found")]
    NotFound(RolloutId),
    #[error("rollout {0} already exists")]
    AlreadyExists(RolloutId),
    #[error("flag {flag_key:?} in flag set {flag_set:?} is already in active rollout {other}")]
    FlagBusy {
        flag_set: String,
        flag_key: String,
        other: RolloutId,
    },
    #[error("rollout {rollout} is at version {actual}, not the expected version {expected}")]
    VersionConflict {
        rollout: RolloutId,
        expected: i64,
        actual: i64,
    },
    #[error("scheduled change {0} not found")]
    ScheduleNotFound(i64),
    #[error("scheduled change {id} is {state}, not pending")]
    NotPending { id: i64, state: &'static str },
    /// A stored row the rules refuse (edited by hand, or written by a newer version).
    #[error("stored rollout {id:?} is refused: {source}")]
    Corrupt {
        id: String,
        #[source]
        source: RolloutError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Rollouts, their history and scheduled changes.
#[async_trait]
pub trait RolloutStore: Send + Sync + std::fmt::Debug {
    /// Records a new rollout in `state` (normally running at step 0) with its first history entry.
    /// Refused when the id is taken or another rollout on the flag is active.
    async fn create_rollout(
        &self,
        spec: &RolloutSpec,
        pre_rollout: Value,
        state: RolloutState,
        principal: &str,
        reason: &str,
    ) -> Result<RolloutRecord, RolloutStoreError>;

    async fn get_rollout(&self, id: &RolloutId) -> Result<RolloutRecord, RolloutStoreError>;

    /// By id; only running and paused ones with `active_only`. At most [`MAX_ROLLOUT_LIST`].
    async fn list_rollouts(
        &self,
        active_only: bool,
    ) -> Result<Vec<RolloutRecord>, RolloutStoreError>;

    /// Moves the rollout to `to` if it is still at `expected_version` (the caller computed `to`
    /// from that version with the `RolloutState` rules), and records who and why.
    async fn transition(
        &self,
        id: &RolloutId,
        expected_version: i64,
        to: RolloutState,
        principal: &str,
        reason: &str,
    ) -> Result<RolloutRecord, RolloutStoreError>;

    /// Oldest first.
    async fn history(&self, id: &RolloutId) -> Result<Vec<RolloutEvent>, RolloutStoreError>;

    async fn schedule(
        &self,
        due_at: DateTime<Utc>,
        action: ScheduledAction,
        principal: &str,
    ) -> Result<ScheduledChange, RolloutStoreError>;

    /// By due time, then id; only pending ones with `pending_only`. At most [`MAX_ROLLOUT_LIST`].
    async fn list_scheduled(
        &self,
        pending_only: bool,
    ) -> Result<Vec<ScheduledChange>, RolloutStoreError>;

    /// Pending → cancelled; refused once fired or cancelled.
    async fn cancel_scheduled(
        &self,
        id: i64,
        principal: &str,
    ) -> Result<ScheduledChange, RolloutStoreError>;

    /// Pending → fired, atomically: the one caller that gets `Ok` runs the change; every other
    /// (a second controller, a retry) gets [`RolloutStoreError::NotPending`].
    async fn claim_scheduled(
        &self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<ScheduledChange, RolloutStoreError>;
}

/// A stored definition, checked again.
pub(crate) fn spec_from_input(input: RolloutInput) -> Result<RolloutSpec, RolloutStoreError> {
    let id = input.id.clone();
    RolloutSpec::new(input).map_err(|source| RolloutStoreError::Corrupt { id, source })
}
