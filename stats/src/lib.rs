//! Bunting's experiment statistics: from per-arm sufficient statistics to the figures an
//! experiment's results show.
//!
//! Pure functions: no I/O, no clocks, no randomness, no allocation beyond result vectors. The
//! experiment pipeline accumulates [`MeanStats`] or [`ProportionStats`] per arm and metric and
//! hands them to [`compare`]; the pieces are public too.
//!
//! - [`lift`]: absolute and relative lift, standard errors by the delta method.
//! - [`welch_t_test`]: Welch's t-test, Welch–Satterthwaite degrees of freedom, two-sided p-value,
//!   confidence interval.
//! - [`gaussian_posterior`], [`gaussian_posterior_with_prior`]: the lift's Gaussian posterior
//!   under a flat or a proper Gaussian prior, credible interval, chance to beat control, risk.
//! - [`WelchTest::one_sided`]: the one-sided test of "treatment is greater".
//! - [`DecisionRule`]: which figure an experiment's verdict ([`Verdict`]) rests on.
//! - [`sequential_test`]: an always-valid confidence sequence and p-value (see [`sequential`]).
//! - [`sample_ratio_mismatch`]: chi-square goodness of fit of users per arm to the weights.
//! - [`holm_bonferroni`], [`benjamini_hochberg`], [`adjust_p_values`]: multiple-testing
//!   correction across metrics.
//!
//! Conventions are those of GrowthBook's gbstats, whose published figures the tests reproduce
//! (`shared/reference/stats-reference.md`). Invalid input is a [`StatsError`]; valid input too
//! degenerate for an estimate (fewer than 2 users, an arm without variance, a zero control mean) is an
//! [`Unavailable`] reason, never a `NaN`.
//!
//! ```
//! use bunting_stats::{AnalysisSettings, ProportionStats, compare};
//!
//! let control = ProportionStats::new(28, 14)?;
//! let treatment = ProportionStats::new(30, 16)?;
//! let result = compare(&control, &treatment, AnalysisSettings::default());
//! let relative = result.relative?;
//! assert!((relative.estimate - 0.06667).abs() < 5e-5);
//! assert!((relative.p_value - 0.80707).abs() < 5e-5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod alpha;
mod bayesian;
mod comparison;
mod correction;
mod decision;
mod dist;
mod error;
mod interval;
mod lift;
pub mod sequential;
mod srm;
mod sufficient;
mod welch;

pub use alpha::Alpha;
pub use bayesian::{
    GaussianPosterior, GaussianPrior, Risk, gaussian_posterior, gaussian_posterior_with_prior,
};
pub use comparison::{
    AnalysisSettings, ArmSummary, LiftResult, MetricComparison, adjust_p_values, compare,
};
pub use correction::{Correction, benjamini_hochberg, holm_bonferroni};
pub use decision::{DecisionRule, Sides, Verdict};
pub use error::{Arm, StatsError, Unavailable};
pub use interval::Interval;
pub use lift::{LiftKind, LiftMoments, lift};
pub use sequential::{ConfidenceSequence, SequentialTuning, sequential_test};
pub use srm::{SampleRatioCheck, sample_ratio_mismatch};
pub use sufficient::{ArmStatistic, MeanStats, MetricKind, ProportionStats};
pub use welch::{OneSidedTest, WelchTest, welch_t_test};
