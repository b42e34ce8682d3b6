//! A rollout checked against the flag it ramps, and the flag definitions the controller writes.
//!
//! "A guardrail on a metric the flag cannot produce" is read here as: a guardrail compares the
//! users served the released variant with those served the baseline, so the flag must have both
//! variants and must be serving (a `DISABLED` flag serves no variant and counts no exposure).
//! The guardrail's event itself is any tracked event, as an experiment metric's is.

use std::collections::BTreeSet;

use bunting_experiments::ExperimentId;
use serde_json::{Map, Value, json};

use crate::model::{RolloutId, RolloutSpec};

/// What a rollout needs to know about its flag and what else holds it, read by the caller from
/// the stores.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagFacts<'a> {
    /// The flag's definition as stored (flagd's `state`, `variants`, `defaultVariant`, ...).
    pub definition: &'a Value,
    /// An unfinished rollout already on the flag, if any.
    pub active_rollout: Option<&'a RolloutId>,
    /// A running experiment on the flag, if any.
    pub running_experiment: Option<&'a ExperimentId>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagCheckError {
    #[error(
        "rollout {rollout}: the {role} variant {variant:?} is not a variant of flag {flag:?} \
         (it has {variants:?}), so the guardrails cannot be measured"
    )]
    UnknownVariant {
        rollout: RolloutId,
        flag: String,
        role: &'static str,
        variant: String,
        variants: Vec<String>,
    },
    #[error("rollout {rollout}: flag {flag:?} is DISABLED and serves no variant to measure")]
    FlagDisabled { rollout: RolloutId, flag: String },
    #[error("rollout {rollout}: flag {flag:?} is already in rollout {other}")]
    FlagInRollout {
        rollout: RolloutId,
        flag: String,
        other: RolloutId,
    },
    #[error("rollout {rollout}: flag {flag:?} is in running experiment {experiment}")]
    FlagInExperiment {
        rollout: RolloutId,
        flag: String,
        experiment: ExperimentId,
    },
}

/// Refuses a rollout its flag cannot carry: see the module's note.
pub fn check_against_flag(spec: &RolloutSpec, facts: &FlagFacts<'_>) -> Result<(), FlagCheckError> {
    let flag = format!("{}/{}", spec.flag_set, spec.flag_key);
    if let Some(other) = facts.active_rollout {
        return Err(FlagCheckError::FlagInRollout {
            rollout: spec.id.clone(),
            flag,
            other: other.clone(),
        });
    }
    if let Some(experiment) = facts.running_experiment {
        return Err(FlagCheckError::FlagInExperiment {
            rollout: spec.id.clone(),
            flag,
            experiment: experiment.clone(),
        });
    }
    if facts.definition.get("state").and_then(Value::as_str) == Some("DISABLED") {
        return Err(FlagCheckError::FlagDisabled {
            rollout: spec.id.clone(),
            flag,
        });
    }
    let variants: BTreeSet<String> = facts
        .definition
        .get("variants")
        .and_then(Value::as_object)
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    for (role, variant) in [("released", &spec.released), ("baseline", &spec.baseline)] {
        if !variants.contains(variant) {
            return Err(FlagCheckError::UnknownVariant {
                rollout: spec.id.clone(),
                flag,
                role,
                variant: variant.clone(),
                variants: variants.into_iter().collect(),
            });
        }
    }
    Ok(())
}

/// The flag as a step at `percent` serves it: the pre-rollout definition with its targeting
/// replaced by a split of the released variant (first, so that a user in the released share at
/// 5% is still in it at 25%: flagd's buckets are assigned in order) and the baseline.
pub fn step_definition(pre_rollout: &Value, spec: &RolloutSpec, percent: u8) -> Value {
    let mut definition = pre_rollout.as_object().cloned().unwrap_or_else(Map::new);
    let rest = 100 - percent.min(100);
    definition.insert(
        "targeting".to_owned(),
        json!({"fractional": [[spec.released, percent], [spec.baseline, rest]]}),
    );
    Value::Object(definition)
}

/// The flag once the rollout has completed: the released variant is the default and the split is
/// gone.
pub fn completed_definition(pre_rollout: &Value, spec: &RolloutSpec) -> Value {
    let mut definition = pre_rollout.as_object().cloned().unwrap_or_else(Map::new);
    definition.insert("defaultVariant".to_owned(), json!(spec.released));
    definition.remove("targeting");
    Value::Object(definition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::spec;

    fn flag() -> Value {
        json!({"state": "ENABLED", "variants": {"v1": 1, "v2": 2}, "defaultVariant": "v1"})
    }

    #[test]
    fn flags_that_cannot_carry_the_rollout_are_refused() {
        let other = RolloutId::new("older").unwrap();
        let experiment = ExperimentId::new("exp-1").unwrap();
        let no_v2 =
            json!({"state": "ENABLED", "variants": {"v1": 1, "v3": 3}, "defaultVariant": "v1"});
        let disabled =
            json!({"state": "DISABLED", "variants": {"v1": 1, "v2": 2}, "defaultVariant": "v1"});
        let not_an_object = json!("v1");
        let good = flag();
        let cases: Vec<(&str, FlagFacts<'_>, Option<&str>)> = vec![
            (
                "fine",
                FlagFacts {
                    definition: &good,
                    active_rollout: None,
                    running_experiment: None,
                },
                None,
            ),
            (
                "in a rollout",
                FlagFacts {
                    definition: &good,
                    active_rollout: Some(&other),
                    running_experiment: None,
                },
                Some("flag \"default/checkout\" is already in rollout older"),
            ),
            (
                "in an experiment",
                FlagFacts {
                    definition: &good,
                    active_rollout: None,
                    running_experiment: Some(&experiment),
                },
                Some("is in running experiment exp-1"),
            ),
            (
                "released variant missing",
                FlagFacts {
                    definition: &no_v2,
                    active_rollout: None,
                    running_experiment: None,
                },
                Some(
                    "the released variant \"v2\" is not a variant of flag \"default/checkout\" (it has [\"v1\", \"v3\"])",
                ),
            ),
            (
                "disabled",
                FlagFacts {
                    definition: &disabled,
                    active_rollout: None,
                    running_experiment: None,
                },
                Some("is DISABLED"),
            ),
            (
                "no variants at all",
                FlagFacts {
                    definition: &not_an_object,
                    active_rollout: None,
                    running_experiment: None,
                },
                Some("it has []"),
            ),
        ];
        for (name, facts, expected) in cases {
            let result = check_against_flag(&spec(), &facts);
            match expected {
                None => assert_eq!(result, Ok(()), "{name}"),
                Some(text) => {
                    let err = result.expect_err(name).to_string();
                    assert!(err.contains(text), "{name}: {err:?} lacks {text:?}");
                }
            }
        }
    }

    #[test]
    fn a_step_splits_released_first_and_keeps_the_rest_of_the_flag() {
        let spec = spec();
        let mut pre = flag();
        pre["targeting"] = json!({"if": [true, "v1"]});
        pre["metadata"] = json!({"team": "payments"});
        let at_25 = step_definition(&pre, &spec, 25);
        assert_eq!(
            at_25["targeting"],
            json!({"fractional": [["v2", 25], ["v1", 75]]})
        );
        assert_eq!(at_25["metadata"], pre["metadata"]);
        assert_eq!(at_25["defaultVariant"], "v1");
        let done = completed_definition(&pre, &spec);
        assert_eq!(done["defaultVariant"], "v2");
        assert!(done.get("targeting").is_none());
        assert_eq!(done["variants"], pre["variants"]);
    }
}
