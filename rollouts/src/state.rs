//! Where a rollout is in its life. Times are Unix milliseconds.
//!
//! ```text
//! running(step k) ──advance──▶ running(step k+1) ──…──▶ completed
//!    │  ▲                                      
//!  pause resume        running/paused ──roll back──▶ rolled_back
//!    ▼  │              running/paused ──abort──────▶ aborted
//! paused
//! ```
//! Completed, rolled back and aborted are final.

use serde::{Deserialize, Serialize};

/// Why a rollout is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum PauseCause {
    /// Someone paused it through the API.
    Requested,
    /// Someone other than the rollout wrote the flag: the controller will not overwrite a human's
    /// edit, so it stops until someone resumes (which re-applies the step) or aborts.
    ManualEdit { audit_id: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RolloutState {
    /// Serving step `step` since `step_started_at`.
    Running { step: usize, step_started_at: i64 },
    Paused {
        step: usize,
        paused_at: i64,
        cause: PauseCause,
    },
    /// Every step passed; the released variant is the flag's default.
    Completed { at: i64 },
    /// A guardrail regressed (or an operator asked): the pre-rollout definition was restored.
    RolledBack { step: usize, at: i64 },
    /// Stopped by an operator; the pre-rollout definition was restored.
    Aborted { step: usize, at: i64 },
}

/// A move the rollout's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the rollout is {state}; it cannot {action}")]
pub struct TransitionError {
    pub state: &'static str,
    pub action: &'static str,
}

impl RolloutState {
    pub fn started(now: i64) -> RolloutState {
        RolloutState::Running {
            step: 0,
            step_started_at: now,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            RolloutState::Running { .. } => "running",
            RolloutState::Paused { .. } => "paused",
            RolloutState::Completed { .. } => "completed",
            RolloutState::RolledBack { .. } => "rolled_back",
            RolloutState::Aborted { .. } => "aborted",
        }
    }

    /// Running or paused: the flag is still the rollout's, and no other rollout may take it.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            RolloutState::Running { .. } | RolloutState::Paused { .. }
        )
    }

    /// The step being served or held, while active.
    pub fn step(&self) -> Option<usize> {
        match self {
            RolloutState::Running { step, .. } | RolloutState::Paused { step, .. } => Some(*step),
            _ => None,
        }
    }

    fn refuse(&self, action: &'static str) -> TransitionError {
        TransitionError {
            state: self.name(),
            action,
        }
    }

    pub fn pause(&self, now: i64, cause: PauseCause) -> Result<RolloutState, TransitionError> {
        match self {
            RolloutState::Running { step, .. } => Ok(RolloutState::Paused {
                step: *step,
                paused_at: now,
                cause,
            }),
            _ => Err(self.refuse("pause")),
        }
    }

    /// Back to running at the same step, whose clock starts again: the time spent paused does not
    /// count towards the step's minimum duration.
    pub fn resume(&self, now: i64) -> Result<RolloutState, TransitionError> {
        match self {
            RolloutState::Paused { step, .. } => Ok(RolloutState::Running {
                step: *step,
                step_started_at: now,
            }),
            _ => Err(self.refuse("resume")),
        }
    }

    /// To the next step; the caller checked there is one (the decision function does).
    pub fn advance(&self, now: i64) -> Result<RolloutState, TransitionError> {
        match self {
            RolloutState::Running { step, .. } => Ok(RolloutState::Running {
                step: step + 1,
                step_started_at: now,
            }),
            _ => Err(self.refuse("advance")),
        }
    }

    pub fn complete(&self, now: i64) -> Result<RolloutState, TransitionError> {
        match self {
            RolloutState::Running { .. } => Ok(RolloutState::Completed { at: now }),
            _ => Err(self.refuse("complete")),
        }
    }

    pub fn roll_back(&self, now: i64) -> Result<RolloutState, TransitionError> {
        match self.step() {
            Some(step) => Ok(RolloutState::RolledBack { step, at: now }),
            None => Err(self.refuse("roll back")),
        }
    }

    pub fn abort(&self, now: i64) -> Result<RolloutState, TransitionError> {
        match self.step() {
            Some(step) => Ok(RolloutState::Aborted { step, at: now }),
            None => Err(self.refuse("abort")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_life_cycle() {
        let running = RolloutState::started(0);
        let paused = running.pause(5, PauseCause::Requested).unwrap();
        let finals = [
            RolloutState::Completed { at: 1 },
            RolloutState::RolledBack { step: 0, at: 1 },
            RolloutState::Aborted { step: 0, at: 1 },
        ];
        // (state, action, allowed)
        type Move = fn(&RolloutState) -> Result<RolloutState, TransitionError>;
        let moves: [(&str, Move); 6] = [
            ("pause", |s| s.pause(9, PauseCause::Requested)),
            ("resume", |s| s.resume(9)),
            ("advance", |s| s.advance(9)),
            ("complete", |s| s.complete(9)),
            ("roll back", |s| s.roll_back(9)),
            ("abort", |s| s.abort(9)),
        ];
        let allowed = |state: &RolloutState, action: &str| match state {
            RolloutState::Running { .. } => action != "resume",
            RolloutState::Paused { .. } => matches!(action, "resume" | "roll back" | "abort"),
            _ => false,
        };
        for state in [running.clone(), paused.clone()]
            .iter()
            .chain(finals.iter())
        {
            for (action, apply) in moves {
                let result = apply(state);
                assert_eq!(
                    result.is_ok(),
                    allowed(state, action),
                    "{} {action}",
                    state.name()
                );
                if let Err(e) = result {
                    assert_eq!(
                        e.to_string(),
                        format!("the rollout is {}; it cannot {action}", state.name())
                    );
                }
            }
        }
        assert_eq!(
            running.advance(7).unwrap(),
            RolloutState::Running {
                step: 1,
                step_started_at: 7
            }
        );
        // Resuming restarts the step's clock: time paused does not count.
        assert_eq!(
            paused.resume(50).unwrap(),
            RolloutState::Running {
                step: 0,
                step_started_at: 50
            }
        );
        assert!(paused.is_active() && running.is_active());
        assert!(finals.iter().all(|s| !s.is_active() && s.step().is_none()));
    }
}
