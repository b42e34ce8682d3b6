//! What a rollout is: a flag, the variant being released and the one it replaces, the ramp of
//! steps the released variant's share climbs, the guardrail metrics that may stop it, and the
//! significance level they are judged at. Everything here is checked when it is built, so a
//! [`RolloutSpec`] in hand is a valid one.

use std::collections::BTreeSet;
use std::fmt;

use bunting_experiments::{Metric, MetricName};
use bunting_stats::Alpha;
use serde::{Deserialize, Serialize};

/// The most ramp steps one rollout has: a ramp is a handful of steps, and the controller reads
/// them all on every tick.
pub const MAX_STEPS: usize = 20;

/// The most guardrails one rollout has (each is one sequential test per tick, and they share the
/// rollout's alpha).
pub const MAX_GUARDRAILS: usize = 10;

/// The longest a step may be held at the least: 90 days, so a typo cannot park a rollout for ever.
pub const MAX_STEP_SECONDS: u64 = 90 * 24 * 3600;

/// Why a rollout definition is refused. Each names the offending input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RolloutError {
    #[error("rollout id {0:?}: must be 1 to 56 characters of A-Z a-z 0-9 . _ -")]
    BadId(String),
    #[error("rollout {0}: it needs at least one ramp step")]
    NoSteps(RolloutId),
    #[error("rollout {rollout}: {count} ramp steps, at most {MAX_STEPS} are allowed")]
    TooManySteps { rollout: RolloutId, count: usize },
    #[error("rollout {rollout}: step {index} is {percent}%; a step must be 1 to 100")]
    PercentOutOfRange {
        rollout: RolloutId,
        index: usize,
        percent: u32,
    },
    #[error(
        "rollout {rollout}: step {index} is {percent}%, not above step {previous_index}'s \
         {previous}%; steps must strictly increase"
    )]
    StepsNotIncreasing {
        rollout: RolloutId,
        index: usize,
        percent: u8,
        previous_index: usize,
        previous: u8,
    },
    #[error("rollout {rollout}: the last step is {percent}%; the ramp must end at 100%")]
    DoesNotEndAt100 { rollout: RolloutId, percent: u8 },
    #[error(
        "rollout {rollout}: step {index} holds for at least {seconds} s, more than the \
         {MAX_STEP_SECONDS} s allowed"
    )]
    StepTooLong {
        rollout: RolloutId,
        index: usize,
        seconds: u64,
    },
    #[error("rollout {rollout}: the released and the baseline variant are both {variant:?}")]
    SameVariant { rollout: RolloutId, variant: String },
    #[error("rollout {rollout}: {count} guardrails, at most {MAX_GUARDRAILS} are allowed")]
    TooManyGuardrails { rollout: RolloutId, count: usize },
    #[error("rollout {rollout}: guardrail {metric} is defined twice")]
    DuplicateGuardrail {
        rollout: RolloutId,
        metric: MetricName,
    },
    #[error("rollout {rollout}: guardrail {metric} has an empty event name")]
    EmptyEvent {
        rollout: RolloutId,
        metric: MetricName,
    },
    #[error(
        "rollout {rollout}: guardrail {metric} tolerates a regression of {tolerance}; it must be \
         a finite fraction from 0 to 1 (0.02 = 2%)"
    )]
    BadTolerance {
        rollout: RolloutId,
        metric: MetricName,
        tolerance: f64,
    },
    #[error("rollout {rollout}: alpha {alpha} must be above 0 and at most 0.5")]
    BadAlpha { rollout: RolloutId, alpha: f64 },
}

/// A rollout's id: 1 to 56 characters of `[A-Za-z0-9._-]`. 56 and not 64 so that the principal
/// `rollout:<id>` and the experiment id the rollout's counts live under (`rollout.<id>`) stay
/// within the 64 characters those allow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RolloutId(String);

impl RolloutId {
    pub const MAX_LEN: usize = 56;

    pub fn new(value: impl Into<String>) -> Result<RolloutId, RolloutError> {
        let value = value.into();
        let ok = (1..=Self::MAX_LEN).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(RolloutId(value))
        } else {
            Err(RolloutError::BadId(value))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The principal the controller's writes are audited under: `rollout:<id>`.
    pub fn principal(&self) -> String {
        format!("rollout:{}", self.0)
    }
}

impl TryFrom<String> for RolloutId {
    type Error = RolloutError;

    fn try_from(value: String) -> Result<RolloutId, RolloutError> {
        RolloutId::new(value)
    }
}

impl From<RolloutId> for String {
    fn from(value: RolloutId) -> String {
        value.0
    }
}

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for RolloutId {
    type Err = RolloutError;

    fn from_str(s: &str) -> Result<RolloutId, RolloutError> {
        RolloutId::new(s)
    }
}

/// One step as given, before the ramp is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInput {
    /// The released variant's share of users, in whole percent.
    pub percent: u32,
    /// How long the step is held at the least before the next one.
    pub min_duration_secs: u64,
    /// How many users must have seen the released variant (since the rollout began) before the
    /// next step.
    pub min_users: u64,
}

/// One checked step: `percent` in 1..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RampStep {
    percent: u8,
    pub min_duration_secs: u64,
    pub min_users: u64,
}

impl RampStep {
    pub fn percent(&self) -> u8 {
        self.percent
    }
}

/// The steps, strictly increasing, ending at 100%. Serialized as the plain list; read back
/// through the same checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Ramp(Vec<RampStep>);

impl Ramp {
    pub fn new(rollout: &RolloutId, steps: &[StepInput]) -> Result<Ramp, RolloutError> {
        if steps.is_empty() {
            return Err(RolloutError::NoSteps(rollout.clone()));
        }
        if steps.len() > MAX_STEPS {
            return Err(RolloutError::TooManySteps {
                rollout: rollout.clone(),
                count: steps.len(),
            });
        }
        let mut checked: Vec<RampStep> = Vec::with_capacity(steps.len());
        for (index, step) in steps.iter().enumerate() {
            let percent = match u8::try_from(step.percent) {
                Ok(p @ 1..=100) => p,
                _ => {
                    return Err(RolloutError::PercentOutOfRange {
                        rollout: rollout.clone(),
                        index,
                        percent: step.percent,
                    });
                }
            };
            if let Some(previous) = checked.last()
                && percent <= previous.percent
            {
                return Err(RolloutError::StepsNotIncreasing {
                    rollout: rollout.clone(),
                    index,
                    percent,
                    previous_index: index - 1,
                    previous: previous.percent,
                });
            }
            if step.min_duration_secs > MAX_STEP_SECONDS {
                return Err(RolloutError::StepTooLong {
                    rollout: rollout.clone(),
                    index,
                    seconds: step.min_duration_secs,
                });
            }
            checked.push(RampStep {
                percent,
                min_duration_secs: step.min_duration_secs,
                min_users: step.min_users,
            });
        }
        match checked.last() {
            Some(last) if last.percent == 100 => Ok(Ramp(checked)),
            Some(last) => Err(RolloutError::DoesNotEndAt100 {
                rollout: rollout.clone(),
                percent: last.percent,
            }),
            None => Err(RolloutError::NoSteps(rollout.clone())),
        }
    }

    pub fn steps(&self) -> &[RampStep] {
        &self.0
    }

    pub fn get(&self, index: usize) -> Option<&RampStep> {
        self.0.get(index)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a ramp has at least its 100% step.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_last(&self, index: usize) -> bool {
        index + 1 == self.0.len()
    }
}

/// Which way a guardrail metric moving is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadDirection {
    /// A drop is a regression (sign-ups, revenue per user).
    Decrease,
    /// A rise is a regression (errors, latency, cancellations).
    Increase,
}

impl BadDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            BadDirection::Decrease => "decrease",
            BadDirection::Increase => "increase",
        }
    }
}

/// A metric watched during the rollout: the released variant against the baseline, by relative
/// lift. `tolerance` is the relative regression accepted (0.02: up to 2% worse is not a
/// regression); a rollback needs the always-valid interval to lie wholly beyond it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guardrail {
    pub metric: Metric,
    pub bad: BadDirection,
    pub tolerance: f64,
}

/// A rollout as defined; checked by [`RolloutSpec::new`]. Against the flag it is checked by
/// [`crate::flag_check::check_against_flag`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutSpec {
    pub id: RolloutId,
    pub flag_set: String,
    pub flag_key: String,
    /// The variant being released.
    pub released: String,
    /// The variant users get when they are not in the released share (and the control of the
    /// guardrails' comparison).
    pub baseline: String,
    pub ramp: Ramp,
    pub guardrails: Vec<Guardrail>,
    /// The family-wise level: each of `g` guardrails is tested at `alpha / g`.
    #[serde(serialize_with = "alpha_value")]
    pub alpha: Alpha,
}

fn alpha_value<S: serde::Serializer>(alpha: &Alpha, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(alpha.get())
}

/// What [`RolloutSpec::new`] is given, and what the stores keep as JSON: the checks run again on
/// every read, so a stored row edited by hand cannot smuggle in a bad ramp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutInput {
    pub id: String,
    pub flag_set: String,
    pub flag_key: String,
    pub released: String,
    pub baseline: String,
    pub steps: Vec<StepInput>,
    pub guardrails: Vec<Guardrail>,
    pub alpha: f64,
}

impl RolloutSpec {
    pub fn new(input: RolloutInput) -> Result<RolloutSpec, RolloutError> {
        let id = RolloutId::new(input.id)?;
        if input.released == input.baseline {
            return Err(RolloutError::SameVariant {
                rollout: id,
                variant: input.released,
            });
        }
        let ramp = Ramp::new(&id, &input.steps)?;
        if input.guardrails.len() > MAX_GUARDRAILS {
            return Err(RolloutError::TooManyGuardrails {
                rollout: id,
                count: input.guardrails.len(),
            });
        }
        let mut seen = BTreeSet::new();
        for g in &input.guardrails {
            if !seen.insert(&g.metric.name) {
                return Err(RolloutError::DuplicateGuardrail {
                    rollout: id,
                    metric: g.metric.name.clone(),
                });
            }
            if g.metric.event.trim().is_empty() {
                return Err(RolloutError::EmptyEvent {
                    rollout: id,
                    metric: g.metric.name.clone(),
                });
            }
            if !(g.tolerance.is_finite() && (0.0..=1.0).contains(&g.tolerance)) {
                return Err(RolloutError::BadTolerance {
                    rollout: id,
                    metric: g.metric.name.clone(),
                    tolerance: g.tolerance,
                });
            }
        }
        let alpha = Alpha::new(input.alpha).map_err(|_| RolloutError::BadAlpha {
            rollout: id.clone(),
            alpha: input.alpha,
        })?;
        Ok(RolloutSpec {
            id,
            flag_set: input.flag_set,
            flag_key: input.flag_key,
            released: input.released,
            baseline: input.baseline,
            ramp,
            guardrails: input.guardrails,
            alpha,
        })
    }

    /// The input this spec was built from (what the stores write).
    pub fn to_input(&self) -> RolloutInput {
        RolloutInput {
            id: self.id.to_string(),
            flag_set: self.flag_set.clone(),
            flag_key: self.flag_key.clone(),
            released: self.released.clone(),
            baseline: self.baseline.clone(),
            steps: self
                .ramp
                .steps()
                .iter()
                .map(|s| StepInput {
                    percent: u32::from(s.percent),
                    min_duration_secs: s.min_duration_secs,
                    min_users: s.min_users,
                })
                .collect(),
            guardrails: self.guardrails.clone(),
            alpha: self.alpha.get(),
        }
    }

    /// Each guardrail's own level: the rollout's alpha split evenly (Bonferroni), so the chance
    /// that a neutral release is rolled back by any guardrail stays within alpha.
    pub fn per_guardrail_alpha(&self) -> Alpha {
        let g = self.guardrails.len().max(1) as f64;
        Alpha::new(self.alpha.get() / g).unwrap_or(self.alpha)
    }
}

#[cfg(test)]
mod tests {
    use bunting_experiments::MetricKind;

    use super::*;
    use crate::testing::{guardrail, input, step};

    #[test]
    fn a_well_formed_rollout_is_accepted_and_round_trips_through_its_input() {
        let spec = RolloutSpec::new(input()).unwrap();
        assert_eq!(spec.ramp.len(), 3);
        assert_eq!(spec.ramp.steps()[1].percent(), 50);
        assert_eq!(spec.id.principal(), "rollout:checkout-v2");
        assert_eq!(RolloutSpec::new(spec.to_input()).unwrap(), spec);
    }

    #[test]
    fn bad_definitions_are_refused_with_the_offending_input() {
        type Edit = fn(&mut RolloutInput);
        let cases: &[(&str, Edit, &str)] = &[
            ("empty id", |i| i.id = String::new(), "rollout id \"\""),
            (
                "id with a slash",
                |i| i.id = "a/b".into(),
                "rollout id \"a/b\"",
            ),
            (
                "57-char id",
                |i| i.id = "x".repeat(57),
                "1 to 56 characters",
            ),
            ("no steps", |i| i.steps.clear(), "at least one ramp step"),
            (
                "too many steps",
                |i| {
                    i.steps = (1..=21)
                        .map(|p| step(p * 4, 0, 0))
                        .chain([step(100, 0, 0)])
                        .collect()
                },
                "22 ramp steps",
            ),
            ("a 0% step", |i| i.steps[0].percent = 0, "step 0 is 0%"),
            (
                "a 101% step",
                |i| i.steps[2].percent = 101,
                "step 2 is 101%",
            ),
            (
                "a step that repeats",
                |i| i.steps[1].percent = 10,
                "step 1 is 10%, not above step 0's 10%",
            ),
            (
                "a step that goes down",
                |i| i.steps = vec![step(25, 0, 0), step(5, 0, 0), step(100, 0, 0)],
                "step 1 is 5%, not above step 0's 25%",
            ),
            (
                "a ramp that stops short",
                |i| i.steps = vec![step(5, 0, 0), step(50, 0, 0)],
                "the last step is 50%",
            ),
            (
                "a step held for a year",
                |i| i.steps[0].min_duration_secs = 365 * 24 * 3600,
                "step 0 holds for at least 31536000 s",
            ),
            (
                "released = baseline",
                |i| i.baseline = "v2".into(),
                "both \"v2\"",
            ),
            (
                "a guardrail twice",
                |i| {
                    let g = i.guardrails[0].clone();
                    i.guardrails.push(g);
                },
                "guardrail purchase is defined twice",
            ),
            (
                "a guardrail without an event",
                |i| i.guardrails[0].metric.event = " ".into(),
                "guardrail purchase has an empty event name",
            ),
            (
                "negative tolerance",
                |i| i.guardrails[0].tolerance = -0.1,
                "tolerates a regression of -0.1",
            ),
            (
                "NaN tolerance",
                |i| i.guardrails[0].tolerance = f64::NAN,
                "tolerates a regression of NaN",
            ),
            (
                "eleven guardrails",
                |i| {
                    i.guardrails = (0..11)
                        .map(|n| {
                            guardrail(
                                &format!("m{n}"),
                                MetricKind::Mean,
                                BadDirection::Increase,
                                0.0,
                            )
                        })
                        .collect()
                },
                "11 guardrails",
            ),
            ("alpha 0", |i| i.alpha = 0.0, "alpha 0 must be"),
            ("alpha 0.9", |i| i.alpha = 0.9, "alpha 0.9 must be"),
        ];
        for (name, edit, expected) in cases {
            let mut i = input();
            edit(&mut i);
            let err = RolloutSpec::new(i).expect_err(name).to_string();
            assert!(err.contains(expected), "{name}: {err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn a_single_100_percent_step_is_a_valid_ramp() {
        let mut i = input();
        i.steps = vec![step(100, 0, 0)];
        assert!(RolloutSpec::new(i).is_ok());
    }

    #[test]
    fn the_alpha_is_split_across_guardrails() {
        let mut i = input();
        i.alpha = 0.1;
        i.guardrails.push(guardrail(
            "latency",
            MetricKind::Mean,
            BadDirection::Increase,
            0.05,
        ));
        let spec = RolloutSpec::new(i).unwrap();
        assert!((spec.per_guardrail_alpha().get() - 0.05).abs() < 1e-12);
    }
}
