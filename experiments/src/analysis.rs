//! How an experiment's results are judged: its significance level, one- or two-sided tests,
//! sequential testing, frequentist or Bayesian decisions and the Bayesian prior.
//!
//! Chosen when the experiment is defined and stored with it. The settings are a view over the
//! counted aggregates, never part of them: results are computed from the totals under the
//! settings at each read, so no setting changes what is counted. They are fixed at creation like
//! the metrics (there is no call that changes them): an experiment's decision rule is chosen
//! before its data are seen, since choosing it afterwards would be choosing the answer. Every
//! results response names the settings and rule that produced it.

use serde::{Deserialize, Serialize};

/// One or two tails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestSides {
    /// "The lift is not zero" (the default).
    #[default]
    TwoSided,
    /// "Treatment is greater than control": a loss is never significant.
    OneSided,
}

/// Which kind of inference decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// p-values and confidence intervals (the default).
    #[default]
    Frequentist,
    /// The posterior's chance to beat control, credible interval and risk.
    Bayesian,
}

/// A proper Gaussian prior on the relative lift: `N(mean, variance)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prior {
    pub mean: f64,
    pub variance: f64,
}

impl Prior {
    /// GrowthBook's proper prior when one is switched on: mean 0, standard deviation 0.3
    /// (variance 0.09) on the relative lift.
    pub const GROWTHBOOK: Prior = Prior {
        mean: 0.0,
        variance: 0.09,
    };
}

/// The settings, checked: every combination held is one the statistics implement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AnalysisRequest", into = "AnalysisRequest")]
pub struct AnalysisSettings {
    alpha: f64,
    sides: TestSides,
    sequential: Option<f64>,
    engine: Engine,
    prior: Option<Prior>,
}

// Every value is checked finite, so equality is reflexive.
impl Eq for AnalysisSettings {}

/// The default significance level.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// GrowthBook's default sequential tuning: the total users at which the confidence sequence is
/// tightest.
pub const DEFAULT_SEQUENTIAL_TUNING: f64 = 5000.0;

impl Default for AnalysisSettings {
    /// Frequentist, two-sided, alpha 0.05, sequential with tuning 5000: what every experiment was
    /// analysed with before settings existed (results are watched while experiments run, so the
    /// always-valid analysis is the safe default), and GrowthBook's alpha and tuning.
    fn default() -> Self {
        AnalysisSettings {
            alpha: DEFAULT_ALPHA,
            sides: TestSides::TwoSided,
            sequential: Some(DEFAULT_SEQUENTIAL_TUNING),
            engine: Engine::Frequentist,
            prior: None,
        }
    }
}

/// Settings as asked for; unset fields take their defaults. What [`AnalysisSettings::new`]
/// checks, and also the stored JSON form.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AnalysisRequest {
    /// `None`: [`DEFAULT_ALPHA`].
    pub alpha: Option<f64>,
    pub sides: TestSides,
    /// Sequential testing on or off; `None`: on where it applies (a frequentist two-sided
    /// analysis), off otherwise.
    pub sequential: Option<bool>,
    /// `None`: [`DEFAULT_SEQUENTIAL_TUNING`]. Only with sequential testing.
    pub sequential_tuning: Option<f64>,
    pub engine: Engine,
    /// A proper prior; `None`: flat. Only with the Bayesian engine.
    pub prior: Option<Prior>,
}

/// Settings refused, each naming the offending value (and the request field it came from).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum AnalysisError {
    #[error("alpha must be above 0 and at most 0.5, got {value}")]
    Alpha { value: f64 },
    #[error("the sequential tuning must be a positive, finite number of users, got {value}")]
    Tuning { value: f64 },
    #[error("the prior's mean must be finite, got {value}")]
    PriorMean { value: f64 },
    #[error("the prior's variance must be positive and finite, got {value}")]
    PriorVariance { value: f64 },
    #[error("a prior applies to the Bayesian engine only; this analysis is frequentist")]
    PriorWithoutBayesian,
    #[error("sequential testing applies to the frequentist engine only (as in GrowthBook)")]
    SequentialBayesian,
    #[error(
        "sequential testing is two-sided only (gbstats has no one-sided confidence sequence); \
         turn it off for a one-sided test"
    )]
    SequentialOneSided,
    #[error(
        "one-sided tests are frequentist; the Bayesian engine reports the chance to beat control"
    )]
    OneSidedBayesian,
    #[error("a sequential tuning of {value} was given, but sequential testing is off")]
    TuningWithoutSequential { value: f64 },
}

impl AnalysisError {
    /// The request field at fault, as experiments.proto's `AnalysisSettings` names it.
    pub fn field(&self) -> &'static str {
        match self {
            AnalysisError::Alpha { .. } => "alpha",
            AnalysisError::Tuning { .. } | AnalysisError::TuningWithoutSequential { .. } => {
                "sequential_tuning"
            }
            AnalysisError::PriorMean { .. } => "prior.mean",
            AnalysisError::PriorVariance { .. } => "prior.variance",
            AnalysisError::PriorWithoutBayesian => "prior",
            AnalysisError::SequentialBayesian | AnalysisError::SequentialOneSided => "sequential",
            AnalysisError::OneSidedBayesian => "sides",
        }
    }
}

impl AnalysisSettings {
    /// Checks `request` and fills in what it leaves unset.
    pub fn new(request: AnalysisRequest) -> Result<AnalysisSettings, AnalysisError> {
        let alpha = request.alpha.unwrap_or(DEFAULT_ALPHA);
        if !(alpha > 0.0 && alpha <= 0.5) {
            return Err(AnalysisError::Alpha { value: alpha });
        }
        let bayesian = request.engine == Engine::Bayesian;
        let one_sided = request.sides == TestSides::OneSided;
        if bayesian && one_sided {
            return Err(AnalysisError::OneSidedBayesian);
        }
        let sequential = match request.sequential {
            Some(true) if bayesian => return Err(AnalysisError::SequentialBayesian),
            Some(true) if one_sided => return Err(AnalysisError::SequentialOneSided),
            Some(on) => on,
            None => !bayesian && !one_sided,
        };
        let sequential = match (sequential, request.sequential_tuning) {
            (true, tuning) => {
                let tuning = tuning.unwrap_or(DEFAULT_SEQUENTIAL_TUNING);
                if !(tuning.is_finite() && tuning > 0.0) {
                    return Err(AnalysisError::Tuning { value: tuning });
                }
                Some(tuning)
            }
            (false, Some(value)) => return Err(AnalysisError::TuningWithoutSequential { value }),
            (false, None) => None,
        };
        if let Some(prior) = request.prior {
            if !bayesian {
                return Err(AnalysisError::PriorWithoutBayesian);
            }
            if !prior.mean.is_finite() {
                return Err(AnalysisError::PriorMean { value: prior.mean });
            }
            if !(prior.variance.is_finite() && prior.variance > 0.0) {
                return Err(AnalysisError::PriorVariance {
                    value: prior.variance,
                });
            }
        }
        Ok(AnalysisSettings {
            alpha,
            sides: request.sides,
            sequential,
            engine: request.engine,
            prior: request.prior,
        })
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    pub fn sides(&self) -> TestSides {
        self.sides
    }

    /// The sequential tuning when sequential testing is on.
    pub fn sequential(&self) -> Option<f64> {
        self.sequential
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The proper prior of a Bayesian analysis; `None` for a flat one (and always when
    /// frequentist).
    pub fn prior(&self) -> Option<Prior> {
        self.prior
    }
}

impl TryFrom<AnalysisRequest> for AnalysisSettings {
    type Error = AnalysisError;

    fn try_from(request: AnalysisRequest) -> Result<Self, AnalysisError> {
        AnalysisSettings::new(request)
    }
}

impl From<AnalysisSettings> for AnalysisRequest {
    /// Every field set, so reading it back gives the same settings whatever the defaults become.
    fn from(settings: AnalysisSettings) -> Self {
        AnalysisRequest {
            alpha: Some(settings.alpha),
            sides: settings.sides,
            sequential: Some(settings.sequential.is_some()),
            sequential_tuning: settings.sequential,
            engine: settings.engine,
            prior: settings.prior,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AnalysisRequest {
        AnalysisRequest::default()
    }

    #[test]
    fn unset_fields_take_the_defaults() {
        let settings = AnalysisSettings::new(request()).unwrap();
        assert_eq!(settings, AnalysisSettings::default());
        assert_eq!(settings.sequential(), Some(5000.0));
        // Sequential testing is on by default only where it applies.
        let bayesian = AnalysisSettings::new(AnalysisRequest {
            engine: Engine::Bayesian,
            ..request()
        })
        .unwrap();
        assert_eq!(bayesian.sequential(), None);
        assert_eq!(bayesian.prior(), None);
        let one_sided = AnalysisSettings::new(AnalysisRequest {
            sides: TestSides::OneSided,
            ..request()
        })
        .unwrap();
        assert_eq!(one_sided.sequential(), None);
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let prior = |mean, variance| Some(Prior { mean, variance });
        let bayesian = AnalysisRequest {
            engine: Engine::Bayesian,
            ..request()
        };
        let cases = [
            (
                AnalysisRequest {
                    alpha: Some(0.0),
                    ..request()
                },
                AnalysisError::Alpha { value: 0.0 },
            ),
            (
                AnalysisRequest {
                    alpha: Some(0.51),
                    ..request()
                },
                AnalysisError::Alpha { value: 0.51 },
            ),
            (
                AnalysisRequest {
                    alpha: Some(-0.05),
                    ..request()
                },
                AnalysisError::Alpha { value: -0.05 },
            ),
            (
                AnalysisRequest {
                    sequential_tuning: Some(0.0),
                    ..request()
                },
                AnalysisError::Tuning { value: 0.0 },
            ),
            (
                AnalysisRequest {
                    sequential_tuning: Some(f64::INFINITY),
                    ..request()
                },
                AnalysisError::Tuning {
                    value: f64::INFINITY,
                },
            ),
            (
                AnalysisRequest {
                    sequential: Some(false),
                    sequential_tuning: Some(100.0),
                    ..request()
                },
                AnalysisError::TuningWithoutSequential { value: 100.0 },
            ),
            (
                AnalysisRequest {
                    sequential: Some(true),
                    ..bayesian
                },
                AnalysisError::SequentialBayesian,
            ),
            (
                AnalysisRequest {
                    sides: TestSides::OneSided,
                    sequential: Some(true),
                    ..request()
                },
                AnalysisError::SequentialOneSided,
            ),
            (
                AnalysisRequest {
                    sides: TestSides::OneSided,
                    ..bayesian
                },
                AnalysisError::OneSidedBayesian,
            ),
            (
                AnalysisRequest {
                    prior: prior(0.0, 0.09),
                    ..request()
                },
                AnalysisError::PriorWithoutBayesian,
            ),
            (
                AnalysisRequest {
                    prior: prior(0.0, 0.0),
                    ..bayesian
                },
                AnalysisError::PriorVariance { value: 0.0 },
            ),
            (
                AnalysisRequest {
                    prior: prior(0.0, -1.0),
                    ..bayesian
                },
                AnalysisError::PriorVariance { value: -1.0 },
            ),
            (
                AnalysisRequest {
                    prior: prior(f64::INFINITY, 1.0),
                    ..bayesian
                },
                AnalysisError::PriorMean {
                    value: f64::INFINITY,
                },
            ),
        ];
        for (request, want) in cases {
            assert_eq!(AnalysisSettings::new(request), Err(want), "{request:?}");
        }
        assert!(
            AnalysisSettings::new(AnalysisRequest {
                alpha: Some(f64::NAN),
                ..request()
            })
            .is_err()
        );
        assert_eq!(
            AnalysisError::PriorVariance { value: 0.0 }.field(),
            "prior.variance"
        );
        assert_eq!(
            AnalysisError::Alpha { value: 0.7 }.to_string(),
            "alpha must be above 0 and at most 0.5, got 0.7"
        );
    }

    #[test]
    fn stored_settings_read_back_the_same_and_are_checked_on_the_way_in() {
        let settings = AnalysisSettings::new(AnalysisRequest {
            alpha: Some(0.1),
            engine: Engine::Bayesian,
            prior: Some(Prior::GROWTHBOOK),
            ..request()
        })
        .unwrap();
        let json = serde_json::to_string(&settings).unwrap();
        assert_eq!(
            serde_json::from_str::<AnalysisSettings>(&json).unwrap(),
            settings
        );
        // Settings stored before a field existed read with its default.
        assert_eq!(
            serde_json::from_str::<AnalysisSettings>("{}").unwrap(),
            AnalysisSettings::default()
        );
        assert!(serde_json::from_str::<AnalysisSettings>(r#"{"alpha": 0.9}"#).is_err());
    }
}
