//! One tick of the rollout controller, and the operations the API shares with it (start, pause,
//! resume, abort). Every rule is `bunting_rollouts`'; this is the I/O around them.
//!
//! Order of writes: the flag first, then the rollout's state. A controller that dies in between
//! leaves the flag one write ahead of the state; the next tick (here or on the node that takes
//! the lease over) decides again from the stored state and writes the same definition again, so
//! the repeated write is harmless and the state catches up.

use std::sync::Arc;

use async_trait::async_trait;
use bunting_experiments::{ArmTotals, ExperimentId, ExperimentTotals};
use bunting_rollouts::{
    Action, FlagCheckError, FlagFacts, GuardrailLook, PauseCause, RolloutError, RolloutId,
    RolloutInput, RolloutSpec, RolloutState, TransitionError, check_against_flag,
    completed_definition, decide, judge_guardrails, step_definition,
};
use bunting_stores::rollouts::{
    RolloutRecord, RolloutStore, RolloutStoreError, ScheduledAction, ScheduledChange,
};
use bunting_stores::{AdminStore, StoreError};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::webhook::{Announcement, Webhook};

/// Where the guardrails' counts come from: the experiment the rollout counts under (started with
/// the rollout, stopped when it ends) and its cluster-wide totals. The node implements it with
/// its experiment store and dispatch; tests script it.
#[async_trait]
pub trait GuardrailCounts: Send + Sync + std::fmt::Debug {
    /// A running experiment on the flag, if any (a rollout is refused on such a flag).
    async fn running_experiment(
        &self,
        flag_set: &str,
        flag_key: &str,
    ) -> Result<Option<ExperimentId>, String>;

    /// Starts counting exposures and the guardrail metrics for `spec`.
    async fn start(&self, spec: &RolloutSpec, principal: &str) -> Result<(), String>;

    /// The counts so far, every node's.
    async fn totals(&self, spec: &RolloutSpec) -> Result<ExperimentTotals, String>;

    /// Stops counting (the rollout ended); results stay readable.
    async fn stop(&self, spec: &RolloutSpec, principal: &str) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Definition(#[from] RolloutError),
    #[error(transparent)]
    Flag(#[from] FlagCheckError),
    #[error(transparent)]
    Rollouts(#[from] RolloutStoreError),
    #[error(transparent)]
    FlagStore(#[from] StoreError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("guardrail counts: {0}")]
    Counts(String),
}

/// What one tick did to one rollout (or one scheduled change), for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    Advanced {
        rollout: RolloutId,
        to_step: usize,
    },
    Completed {
        rollout: RolloutId,
    },
    RolledBack {
        rollout: RolloutId,
        reason: String,
    },
    /// Someone else wrote the flag: the rollout was paused and says so.
    PausedForManualEdit {
        rollout: RolloutId,
        actor: String,
        audit_id: i64,
    },
    Fired {
        schedule: i64,
    },
    /// A due change that could not run (its flag was gone, its rollout refused); it stays fired.
    FireFailed {
        schedule: i64,
        error: String,
    },
}

/// A rollout as `status` shows it: the record, each guardrail's estimate, interval and verdict
/// now, how many users have seen the released variant, and what the next tick would do.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutStatus {
    pub record: RolloutRecord,
    /// Empty once the rollout has ended (its counts are no longer read).
    pub guardrails: Vec<GuardrailLook>,
    pub released_users: u64,
    pub next: Action,
}

/// The controller's dependencies; cheap to clone into the loop.
#[derive(Debug, Clone)]
pub struct Controller {
    flags: Arc<dyn AdminStore>,
    rollouts: Arc<dyn RolloutStore>,
    counts: Arc<dyn GuardrailCounts>,
    webhook: Option<Webhook>,
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

impl Controller {
    pub fn new(
        flags: Arc<dyn AdminStore>,
        rollouts: Arc<dyn RolloutStore>,
        counts: Arc<dyn GuardrailCounts>,
        webhook: Option<Webhook>,
    ) -> Controller {
        Controller {
            flags,
            rollouts,
            counts,
            webhook,
        }
    }

    pub fn rollouts(&self) -> &Arc<dyn RolloutStore> {
        &self.rollouts
    }

    /// Checks `input` against its flag, records the rollout (with the flag's definition as it is,
    /// to restore on rollback), starts counting, and writes step 0.
    pub async fn start_rollout(
        &self,
        input: RolloutInput,
        principal: &str,
        now: DateTime<Utc>,
    ) -> Result<RolloutRecord, ControlError> {
        let spec = RolloutSpec::new(input)?;
        let flag = self.flags.get_flag(&spec.flag_set, &spec.flag_key).await?;
        let active = self
            .rollouts
            .list_rollouts(true)
            .await?
            .into_iter()
            .find(|r| r.spec.flag_set == spec.flag_set && r.spec.flag_key == spec.flag_key)
            .map(|r| r.spec.id);
        let experiment = self
            .counts
            .running_experiment(&spec.flag_set, &spec.flag_key)
            .await
            .map_err(ControlError::Counts)?;
        check_against_flag(
            &spec,
            &FlagFacts {
                definition: &flag.definition,
                active_rollout: active.as_ref(),
                running_experiment: experiment.as_ref(),
            },
        )?;
        let record = self
            .rollouts
            .create_rollout(
                &spec,
                flag.definition.clone(),
                RolloutState::started(millis(now)),
                principal,
                "started",
            )
            .await?;
        let first = spec.ramp.steps().first().map_or(100, |s| s.percent());
        let begun = match self.counts.start(&spec, principal).await {
            Ok(()) => {
                self.write_flag(&spec, step_definition(&flag.definition, &spec, first))
                    .await
            }
            Err(e) => Err(ControlError::Counts(e)),
        };
        if let Err(e) = begun {
            // Recorded but not begun: end it, so the flag is free and no tick acts on a rollout
            // that counts nothing. The flag was not written (or the write is what failed).
            let ended = record.state.abort(millis(now)).map_err(ControlError::from);
            if let Ok(to) = ended {
                let reason = format!("could not begin: {e}");
                if let Err(abort) = self
                    .rollouts
                    .transition(&spec.id, record.version, to, principal, &reason)
                    .await
                {
                    tracing::warn!(rollout = %spec.id, error = %abort, "ending a rollout that could not begin failed");
                }
            }
            self.stop_counting(&spec, principal).await;
            return Err(e);
        }
        metrics::counter!("bunting_rollouts_started_total").increment(1);
        tracing::info!(rollout = %spec.id, flag_set = %spec.flag_set, flag = %spec.flag_key,
            principal, percent = first, "rollout started");
        Ok(record)
    }

    pub async fn pause(
        &self,
        id: &RolloutId,
        principal: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<RolloutRecord, ControlError> {
        let record = self.rollouts.get_rollout(id).await?;
        let to = record.state.pause(millis(now), PauseCause::Requested)?;
        Ok(self
            .rollouts
            .transition(id, record.version, to, principal, reason)
            .await?)
    }

    /// The rollout's status at `now`: the same judgement the next tick makes, without acting.
    pub async fn status(
        &self,
        id: &RolloutId,
        now: DateTime<Utc>,
    ) -> Result<RolloutStatus, ControlError> {
        let record = self.rollouts.get_rollout(id).await?;
        if !record.state.is_active() {
            return Ok(RolloutStatus {
                record,
                guardrails: Vec::new(),
                released_users: 0,
                next: Action::Hold {
                    why: bunting_rollouts::Hold::NotRunning,
                },
            });
        }
        let (looks, released_users) = self.judge(&record.spec).await?;
        let next = decide(
            &record.spec,
            &record.state,
            &looks,
            released_users,
            millis(now),
        );
        Ok(RolloutStatus {
            record,
            guardrails: looks,
            released_users,
            next,
        })
    }

    /// Every guardrail judged on the cluster's counts, and the users who saw the released variant.
    async fn judge(&self, spec: &RolloutSpec) -> Result<(Vec<GuardrailLook>, u64), ControlError> {
        let totals = self
            .counts
            .totals(spec)
            .await
            .map_err(ControlError::Counts)?;
        let empty = ArmTotals::default();
        let baseline = totals.arms.get(&spec.baseline).unwrap_or(&empty);
        let released = totals.arms.get(&spec.released).unwrap_or(&empty);
        Ok((judge_guardrails(spec, baseline, released), released.exposed))
    }

    /// Re-applies the paused step's split (a manual edit is overwritten: resuming is the decision
    /// to do so), then runs again with the step's clock restarted.
    pub async fn resume(
        &self,
        id: &RolloutId,
        principal: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<RolloutRecord, ControlError> {
        let record = self.rollouts.get_rollout(id).await?;
        let to = record.state.resume(millis(now))?;
        let step = record.state.step().unwrap_or(0);
        let percent = record.spec.ramp.get(step).map_or(100, |s| s.percent());
        self.write_flag(
            &record.spec,
            step_definition(&record.pre_rollout, &record.spec, percent),
        )
        .await?;
        Ok(self
            .rollouts
            .transition(id, record.version, to, principal, reason)
            .await?)
    }

    /// Restores the pre-rollout definition and ends the rollout as aborted.
    pub async fn abort(
        &self,
        id: &RolloutId,
        principal: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<RolloutRecord, ControlError> {
        let record = self.rollouts.get_rollout(id).await?;
        let to = record.state.abort(millis(now))?;
        self.write_flag(&record.spec, record.pre_rollout.clone())
            .await?;
        let ended = self
            .rollouts
            .transition(id, record.version, to, principal, reason)
            .await?;
        self.stop_counting(&record.spec, principal).await;
        Ok(ended)
    }

    /// One pass: every active rollout, then every due scheduled change. A failure with one is
    /// logged and leaves the others to run; the next tick tries again from the stored state.
    pub async fn tick(&self, now: DateTime<Utc>) -> Vec<Taken> {
        let mut taken = Vec::new();
        match self.rollouts.list_rollouts(true).await {
            Ok(active) => {
                for record in active {
                    let id = record.spec.id.clone();
                    match self.step_rollout(record, now).await {
                        Ok(Some(t)) => taken.push(t),
                        Ok(None) => {}
                        Err(e) => {
                            metrics::counter!("bunting_rollout_tick_errors_total").increment(1);
                            tracing::warn!(rollout = %id, error = %e, "rollout tick failed");
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing active rollouts failed"),
        }
        match self.rollouts.list_scheduled(true).await {
            Ok(pending) => {
                for change in pending.into_iter().filter(|c| c.due_at <= now) {
                    if let Some(t) = self.fire(change, now).await {
                        taken.push(t);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing scheduled changes failed"),
        }
        taken
    }

    async fn step_rollout(
        &self,
        record: RolloutRecord,
        now: DateTime<Utc>,
    ) -> Result<Option<Taken>, ControlError> {
        let spec = &record.spec;
        let principal = spec.id.principal();
        if !matches!(record.state, RolloutState::Running { .. }) {
            return Ok(None);
        }
        // A write by anyone but this rollout since it began: pause, never overwrite a person.
        let newest = self
            .flags
            .list_audit(Some(&spec.flag_set), Some(&spec.flag_key), None, 1)
            .await?;
        if let Some(entry) = newest.first()
            && entry.actor != principal
            && entry.at >= record.created_at
        {
            let to = record
                .state
                .pause(millis(now), PauseCause::ManualEdit { audit_id: entry.id })?;
            let reason = format!(
                "flag edited by {} (audit entry {}) during the rollout; resume re-applies the \
                 step, abort restores the flag as it was before the rollout",
                entry.actor, entry.id
            );
            self.rollouts
                .transition(&spec.id, record.version, to, &principal, &reason)
                .await?;
            metrics::counter!("bunting_rollout_pauses_total", "cause" => "manual_edit")
                .increment(1);
            tracing::warn!(rollout = %spec.id, actor = %entry.actor, audit_id = entry.id,
                "rollout paused: the flag was edited by hand");
            return Ok(Some(Taken::PausedForManualEdit {
                rollout: spec.id.clone(),
                actor: entry.actor.clone(),
                audit_id: entry.id,
            }));
        }
        let (looks, released_users) = self.judge(spec).await?;
        match decide(spec, &record.state, &looks, released_users, millis(now)) {
            Action::Hold { .. } => Ok(None),
            Action::Advance { to } => {
                let percent = spec.ramp.get(to).map_or(100, |s| s.percent());
                self.write_flag(spec, step_definition(&record.pre_rollout, spec, percent))
                    .await?;
                let state = record.state.advance(millis(now))?;
                let reason = format!("step {} held its time and users; now {percent}%", to - 1);
                self.rollouts
                    .transition(&spec.id, record.version, state, &principal, &reason)
                    .await?;
                metrics::counter!("bunting_rollout_steps_total").increment(1);
                tracing::info!(rollout = %spec.id, step = to, percent, "rollout advanced");
                Ok(Some(Taken::Advanced {
                    rollout: spec.id.clone(),
                    to_step: to,
                }))
            }
            Action::Complete => {
                self.write_flag(spec, completed_definition(&record.pre_rollout, spec))
                    .await?;
                let state = record.state.complete(millis(now))?;
                self.rollouts
                    .transition(
                        &spec.id,
                        record.version,
                        state,
                        &principal,
                        "every step held",
                    )
                    .await?;
                self.stop_counting(spec, &principal).await;
                metrics::counter!("bunting_rollouts_completed_total").increment(1);
                tracing::info!(rollout = %spec.id, "rollout completed");
                Ok(Some(Taken::Completed {
                    rollout: spec.id.clone(),
                }))
            }
            Action::RollBack { reason, .. } => {
                self.write_flag(spec, record.pre_rollout.clone()).await?;
                let state = record.state.roll_back(millis(now))?;
                self.rollouts
                    .transition(&spec.id, record.version, state, &principal, &reason)
                    .await?;
                self.stop_counting(spec, &principal).await;
                metrics::counter!("bunting_rollout_rollbacks_total").increment(1);
                tracing::warn!(rollout = %spec.id, flag_set = %spec.flag_set,
                    flag = %spec.flag_key, %reason, "rollout rolled back");
                if let Some(webhook) = &self.webhook {
                    webhook
                        .announce(&Announcement {
                            event: "rolled_back",
                            rollout: spec.id.as_str(),
                            flag_set: &spec.flag_set,
                            flag_key: &spec.flag_key,
                            reason: &reason,
                            at: now,
                        })
                        .await;
                }
                Ok(Some(Taken::RolledBack {
                    rollout: spec.id.clone(),
                    reason,
                }))
            }
        }
    }

    /// Claims the change (pending → fired: only one controller ever gets it), then runs it.
    async fn fire(&self, change: ScheduledChange, now: DateTime<Utc>) -> Option<Taken> {
        match self.rollouts.claim_scheduled(change.id, now).await {
            Ok(_) => {}
            Err(RolloutStoreError::NotPending { .. }) => return None,
            Err(e) => {
                tracing::warn!(schedule = change.id, error = %e, "claiming a scheduled change failed");
                return None;
            }
        }
        let principal = format!("schedule:{}", change.id);
        let result = match change.action {
            ScheduledAction::FlagChange {
                flag_set,
                flag_key,
                definition,
            } => {
                self.put_flag(&flag_set, &flag_key, definition, &principal)
                    .await
            }
            ScheduledAction::StartRollout { rollout } => self
                .start_rollout(rollout, &change.created_by, now)
                .await
                .map(|_| ()),
        };
        metrics::counter!("bunting_scheduled_changes_fired_total").increment(1);
        match result {
            Ok(()) => {
                tracing::info!(schedule = change.id, "scheduled change fired");
                Some(Taken::Fired {
                    schedule: change.id,
                })
            }
            Err(e) => {
                tracing::warn!(schedule = change.id, error = %e, "scheduled change failed");
                Some(Taken::FireFailed {
                    schedule: change.id,
                    error: e.to_string(),
                })
            }
        }
    }

    /// Writes the rollout's flag as its principal, at the version just read. Always a write, even
    /// of the definition the flag already has: the audit entry is what tells a later tick that
    /// the flag is the rollout's again (after a resume, say, when a person's edit had been undone
    /// by hand to exactly the step's split).
    async fn write_flag(&self, spec: &RolloutSpec, definition: Value) -> Result<(), ControlError> {
        self.put_flag(
            &spec.flag_set,
            &spec.flag_key,
            definition,
            &spec.id.principal(),
        )
        .await
    }

    async fn put_flag(
        &self,
        flag_set: &str,
        flag_key: &str,
        definition: Value,
        principal: &str,
    ) -> Result<(), ControlError> {
        match self.flags.get_flag(flag_set, flag_key).await {
            Ok(current) => {
                self.flags
                    .update_flag(flag_set, flag_key, definition, current.version, principal)
                    .await?;
                Ok(())
            }
            Err(StoreError::NotFound { .. }) => {
                self.flags
                    .create_flag(flag_set, flag_key, definition, None, principal)
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn stop_counting(&self, spec: &RolloutSpec, principal: &str) {
        if let Err(e) = self.counts.stop(spec, principal).await {
            tracing::warn!(rollout = %spec.id, error = %e, "stopping the rollout's counts failed");
        }
    }
}
