//! What an experiment is: a flag whose variants are the arms, a control arm, the metrics that
//! judge it, and where it is in its life (draft → running → stopped, never back).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisSettings;

/// An experiment's id: 1 to 64 characters of `[A-Za-z0-9._-]`, so it is safe in keys, paths and
/// CQL without quoting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExperimentId(String);

/// A metric's name within its experiment; same character rules as [`ExperimentId`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MetricName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{what} {value:?}: must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    BadName { what: &'static str, value: String },
    #[error("experiment {experiment}: control variant {control:?} is not one of the arms {arms:?}")]
    ControlNotAnArm {
        experiment: ExperimentId,
        control: String,
        arms: Vec<String>,
    },
    #[error("experiment {0}: it needs at least two arms (the flag's variants)")]
    TooFewArms(ExperimentId),
    #[error("experiment {0}: it needs at least one metric")]
    NoMetrics(ExperimentId),
    #[error("experiment {experiment}: metric {metric} is defined twice")]
    DuplicateMetric {
        experiment: ExperimentId,
        metric: MetricName,
    },
    #[error("experiment {experiment}: metric {metric} has an empty event name")]
    EmptyEvent {
        experiment: ExperimentId,
        metric: MetricName,
    },
    #[error(
        "experiment {experiment}: the traffic split names {arm:?}, which is not one of the arms \
         {arms:?}"
    )]
    SplitUnknownArm {
        experiment: ExperimentId,
        arm: String,
        arms: Vec<String>,
    },
    #[error("experiment {experiment}: the traffic split gives no weight for arm {arm:?}")]
    SplitMissingArm {
        experiment: ExperimentId,
        arm: String,
    },
    #[error(
        "experiment {experiment}: the traffic split gives the control {control:?} weight 0; \
         the control must receive traffic"
    )]
    SplitStarvesControl {
        experiment: ExperimentId,
        control: String,
    },
    #[error(
        "experiment {0}: the traffic split must give weight to at least one arm besides the \
         control"
    )]
    SplitNothingToCompare(ExperimentId),
    #[error("experiment {experiment} is {state}; it cannot {action}")]
    BadTransition {
        experiment: ExperimentId,
        state: &'static str,
        action: &'static str,
    },
}

fn check_name(what: &'static str, value: String) -> Result<String, ModelError> {
    let ok = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(value)
    } else {
        Err(ModelError::BadName { what, value })
    }
}

macro_rules! name_type {
    ($t:ident, $what:literal) => {
        impl $t {
            pub fn new(value: impl Into<String>) -> Result<$t, ModelError> {
                check_name($what, value.into()).map($t)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $t {
            type Error = ModelError;

            fn try_from(value: String) -> Result<$t, ModelError> {
                $t::new(value)
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $t {
            type Err = ModelError;

            fn from_str(s: &str) -> Result<$t, ModelError> {
                $t::new(s)
            }
        }
    };
}

name_type!(ExperimentId, "experiment id");
name_type!(MetricName, "metric name");

/// How a metric turns a user's events into one number per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Did the user send the event at least once (after exposure)? A proportion per arm.
    Conversion,
    /// The sum of the event's values per user (after exposure); the arm's mean of those sums.
    Mean,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metric {
    pub name: MetricName,
    /// The tracked event (`Track(user, event, value)`) this metric reads.
    pub event: String,
    pub kind: MetricKind,
}

/// Where an experiment is in its life. Times are Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ExperimentState {
    /// Defined, not counting yet: evaluations make no exposures.
    Draft,
    /// Exposures and conversions count.
    Running { started_at: i64 },
    /// Frozen: nothing more counts; results stay readable.
    Stopped { started_at: i64, stopped_at: i64 },
}

impl ExperimentState {
    pub fn name(&self) -> &'static str {
        match self {
            ExperimentState::Draft => "draft",
            ExperimentState::Running { .. } => "running",
            ExperimentState::Stopped { .. } => "stopped",
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, ExperimentState::Running { .. })
    }
}

/// The share of users each arm is meant to receive, as the flag's targeting splits them. It is
/// what the sample-ratio check compares the observed users per arm with: a 90/10 ramp judged
/// against an even split would raise a false alarm on every look.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficSplit {
    /// Every arm alike (the default).
    #[default]
    Even,
    /// A weight per arm, every arm named; an arm with weight 0 is meant to get no users (a
    /// variant of the flag the experiment does not use). Integers, as flagd's `fractional`
    /// weights are, so no weight is NaN, infinite or negative.
    Weighted(BTreeMap<String, u32>),
}

/// An experiment on one flag: each of the flag's variants (as they were when the experiment was
/// defined) is an arm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: ExperimentId,
    pub flag_set: String,
    pub flag_key: String,
    /// The arms: variant names, sorted, no duplicates.
    pub arms: BTreeSet<String>,
    pub control: String,
    pub metrics: Vec<Metric>,
    /// Experiments recorded before splits existed read as even.
    #[serde(default)]
    pub split: TrafficSplit,
    /// How the results are judged; experiments recorded before settings existed read with the
    /// defaults, which are what they were analysed with.
    #[serde(default)]
    pub analysis: AnalysisSettings,
    pub state: ExperimentState,
}

impl Experiment {
    /// A draft experiment, checked: the control is an arm, there are two arms or more, metric
    /// names are unique and every metric names an event.
    pub fn draft(
        id: ExperimentId,
        flag_set: impl Into<String>,
        flag_key: impl Into<String>,
        arms: impl IntoIterator<Item = String>,
        control: impl Into<String>,
        metrics: Vec<Metric>,
    ) -> Result<Experiment, ModelError> {
        let arms: BTreeSet<String> = arms.into_iter().collect();
        let control = control.into();
        if arms.len() < 2 {
            return Err(ModelError::TooFewArms(id));
        }
        if !arms.contains(&control) {
            return Err(ModelError::ControlNotAnArm {
                experiment: id,
                control,
                arms: arms.into_iter().collect(),
            });
        }
        if metrics.is_empty() {
            return Err(ModelError::NoMetrics(id));
        }
        let mut seen = BTreeSet::new();
        for m in &metrics {
            if !seen.insert(&m.name) {
                return Err(ModelError::DuplicateMetric {
                    experiment: id,
                    metric: m.name.clone(),
                });
            }
            if m.event.trim().is_empty() {
                return Err(ModelError::EmptyEvent {
                    experiment: id,
                    metric: m.name.clone(),
                });
            }
        }
        Ok(Experiment {
            id,
            flag_set: flag_set.into(),
            flag_key: flag_key.into(),
            arms,
            control,
            metrics,
            split: TrafficSplit::Even,
            analysis: AnalysisSettings::default(),
            state: ExperimentState::Draft,
        })
    }

    /// The draft with `analysis` as its analysis settings (checked when they were built).
    pub fn with_analysis(mut self, analysis: AnalysisSettings) -> Experiment {
        self.analysis = analysis;
        self
    }

    /// The draft with `weights` as its traffic split (see [`TrafficSplit`]), checked: one weight
    /// for every arm and no other name, the control weighted, and at least one other arm
    /// weighted. No weights at all means an even split.
    pub fn with_split(mut self, weights: BTreeMap<String, u32>) -> Result<Experiment, ModelError> {
        if weights.is_empty() {
            self.split = TrafficSplit::Even;
            return Ok(self);
        }
        if let Some(arm) = weights.keys().find(|arm| !self.arms.contains(*arm)) {
            return Err(ModelError::SplitUnknownArm {
                experiment: self.id,
                arm: arm.clone(),
                arms: self.arms.into_iter().collect(),
            });
        }
        if let Some(arm) = self.arms.iter().find(|arm| !weights.contains_key(*arm)) {
            return Err(ModelError::SplitMissingArm {
                experiment: self.id.clone(),
                arm: arm.clone(),
            });
        }
        if weights.get(&self.control).copied().unwrap_or(0) == 0 {
            return Err(ModelError::SplitStarvesControl {
                experiment: self.id,
                control: self.control,
            });
        }
        if !weights
            .iter()
            .any(|(arm, &w)| w > 0 && *arm != self.control)
        {
            return Err(ModelError::SplitNothingToCompare(self.id));
        }
        self.split = TrafficSplit::Weighted(weights);
        Ok(self)
    }

    /// Each arm's expected share of the users, in arm order; the shares sum to 1.
    pub fn expected_shares(&self) -> Vec<(&str, f64)> {
        let weight = |arm: &str| match &self.split {
            TrafficSplit::Even => 1.0,
            TrafficSplit::Weighted(weights) => f64::from(weights.get(arm).copied().unwrap_or(0)),
        };
        let total: f64 = self.arms.iter().map(|a| weight(a)).sum();
        self.arms
            .iter()
            .map(|a| {
                let share = if total > 0.0 { weight(a) / total } else { 0.0 };
                (a.as_str(), share)
            })
            .collect()
    }

    /// Draft → running. Starting twice, or after a stop, is refused.
    pub fn start(&mut self, now_ms: i64) -> Result<(), ModelError> {
        match self.state {
            ExperimentState::Draft => {
                self.state = ExperimentState::Running { started_at: now_ms };
                Ok(())
            }
            other => Err(self.bad(other, "start")),
        }
    }

    /// Running → stopped. A stop before a start, or a second stop, is refused.
    pub fn stop(&mut self, now_ms: i64) -> Result<(), ModelError> {
        match self.state {
            ExperimentState::Running { started_at } => {
                self.state = ExperimentState::Stopped {
                    started_at,
                    stopped_at: now_ms,
                };
                Ok(())
            }
            other => Err(self.bad(other, "stop")),
        }
    }

    fn bad(&self, state: ExperimentState, action: &'static str) -> ModelError {
        ModelError::BadTransition {
            experiment: self.id.clone(),
            state: state.name(),
            action,
        }
    }

    /// The metrics that read `event`.
    pub fn metrics_for<'a>(&'a self, event: &'a str) -> impl Iterator<Item = &'a Metric> + 'a {
        self.metrics.iter().filter(move |m| m.event == event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, event: &str, kind: MetricKind) -> Metric {
        Metric {
            name: MetricName::new(name).unwrap(),
            event: event.into(),
            kind,
        }
    }

    fn experiment() -> Experiment {
        Experiment::draft(
            ExperimentId::new("checkout-button").unwrap(),
            "default",
            "button-colour",
            ["blue".to_owned(), "green".to_owned()],
            "blue",
            vec![
                metric("purchased", "purchase", MetricKind::Conversion),
                metric("revenue", "purchase", MetricKind::Mean),
            ],
        )
        .unwrap()
    }

    #[test]
    fn names_are_checked() {
        assert!(ExperimentId::new("a.b_c-1").is_ok());
        for bad in ["", "has space", "ü", &"x".repeat(65)] {
            assert!(
                matches!(ExperimentId::new(bad), Err(ModelError::BadName { .. })),
                "{bad:?}"
            );
        }
        assert!(serde_json::from_str::<ExperimentId>("\"no/slash\"").is_err());
    }

    #[test]
    fn a_definition_is_checked_whole() {
        let id = || ExperimentId::new("e").unwrap();
        let m = || vec![metric("m", "ev", MetricKind::Conversion)];
        let arms = || ["a".to_owned(), "b".to_owned()];
        assert!(matches!(
            Experiment::draft(id(), "s", "f", arms(), "c", m()),
            Err(ModelError::ControlNotAnArm { .. })
        ));
        assert!(matches!(
            Experiment::draft(id(), "s", "f", ["a".to_owned()], "a", m()),
            Err(ModelError::TooFewArms(_))
        ));
        assert!(matches!(
            Experiment::draft(id(), "s", "f", arms(), "a", vec![]),
            Err(ModelError::NoMetrics(_))
        ));
        let twice = vec![
            metric("m", "x", MetricKind::Mean),
            metric("m", "y", MetricKind::Mean),
        ];
        assert!(matches!(
            Experiment::draft(id(), "s", "f", arms(), "a", twice),
            Err(ModelError::DuplicateMetric { .. })
        ));
        let blank = vec![metric("m", " ", MetricKind::Mean)];
        assert!(matches!(
            Experiment::draft(id(), "s", "f", arms(), "a", blank),
            Err(ModelError::EmptyEvent { .. })
        ));
    }

    #[test]
    fn the_life_cycle_only_moves_forward() {
        let mut e = experiment();
        assert!(matches!(
            e.stop(5),
            Err(ModelError::BadTransition {
                state: "draft",
                action: "stop",
                ..
            })
        ));
        e.start(10).unwrap();
        assert!(e.state.is_running());
        assert!(e.start(11).is_err());
        e.stop(20).unwrap();
        assert_eq!(
            e.state,
            ExperimentState::Stopped {
                started_at: 10,
                stopped_at: 20
            }
        );
        assert!(e.stop(21).is_err() && e.start(22).is_err());
        assert_eq!(e.metrics_for("purchase").count(), 2);
    }

    #[test]
    fn a_traffic_split_is_checked_against_the_arms() {
        let weights = |pairs: &[(&str, u32)]| -> BTreeMap<String, u32> {
            pairs.iter().map(|(a, w)| ((*a).to_owned(), *w)).collect()
        };
        let ramp = experiment()
            .with_split(weights(&[("blue", 90), ("green", 10)]))
            .unwrap();
        assert_eq!(ramp.expected_shares(), vec![("blue", 0.9), ("green", 0.1)]);
        assert_eq!(
            experiment().expected_shares(),
            vec![("blue", 0.5), ("green", 0.5)]
        );
        assert_eq!(
            experiment().with_split(BTreeMap::new()).unwrap().split,
            TrafficSplit::Even
        );
        assert!(matches!(
            experiment().with_split(weights(&[("blue", 1), ("green", 1), ("red", 1)])),
            Err(ModelError::SplitUnknownArm { arm, .. }) if arm == "red"
        ));
        assert!(matches!(
            experiment().with_split(weights(&[("blue", 1)])),
            Err(ModelError::SplitMissingArm { arm, .. }) if arm == "green"
        ));
        assert!(matches!(
            experiment().with_split(weights(&[("blue", 0), ("green", 1)])),
            Err(ModelError::SplitStarvesControl { .. })
        ));
        assert!(matches!(
            experiment().with_split(weights(&[("blue", 5), ("green", 0)])),
            Err(ModelError::SplitNothingToCompare(_))
        ));
    }

    #[test]
    fn an_experiment_recorded_before_splits_reads_as_even() {
        let mut json = serde_json::to_value(experiment()).unwrap();
        json.as_object_mut().unwrap().remove("split");
        let read: Experiment = serde_json::from_value(json).unwrap();
        assert_eq!(read.split, TrafficSplit::Even);
    }

    #[test]
    fn an_experiment_round_trips_through_json() {
        let weighted = experiment()
            .with_split([("blue".to_owned(), 3), ("green".to_owned(), 1)].into())
            .unwrap();
        let json = serde_json::to_string(&weighted).unwrap();
        assert_eq!(serde_json::from_str::<Experiment>(&json).unwrap(), weighted);
        let e = experiment();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Experiment>(&json).unwrap(), e);
    }
}
