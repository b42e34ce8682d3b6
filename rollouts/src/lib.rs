//! Bunting's safe rollouts, without I/O: what a rollout is ([`model`]), where it is in its life
//! ([`state`]), whether its flag can carry it and what the controller writes to the flag
//! ([`flag_check`]), and the controller's decision at one tick ([`decide`]).
//!
//! A rollout's guardrails are experiment metrics, counted by the same exposure pipeline as an
//! experiment's: the two arms are the released variant and the baseline. The stores keep rollouts
//! (`bunting-stores`), the node runs the controller loop; both call into this crate for every
//! rule, so the rules are tested here as tables.

pub mod decide;
pub mod flag_check;
pub mod model;
pub mod state;
#[cfg(test)]
mod testing;

pub use decide::{Action, GuardrailLook, Hold, Verdict, decide, judge_guardrails};
pub use flag_check::{
    FlagCheckError, FlagFacts, check_against_flag, completed_definition, step_definition,
};
pub use model::{
    BadDirection, Guardrail, MAX_GUARDRAILS, MAX_STEPS, Ramp, RampStep, RolloutError, RolloutId,
    RolloutInput, RolloutSpec, StepInput,
};
pub use state::{PauseCause, RolloutState, TransitionError};
