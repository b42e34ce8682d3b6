//! The Bayesian view: a Gaussian posterior for the lift under an improper flat prior.

use crate::alpha::Alpha;
use crate::dist;
use crate::error::Unavailable;
use crate::interval::Interval;
use crate::lift::{LiftKind, LiftMoments, measure};
use crate::sufficient::ArmStatistic;

/// The posterior of the lift: normal, centred on the estimate, with the standard error as its
/// standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct GaussianPosterior {
    /// Posterior mean (`estimate`) and standard deviation (`standard_error`).
    pub lift: LiftMoments,
    /// The central `1 - alpha` credible interval: `estimate ± z(1 - alpha/2) · sd`.
    pub credible_interval: Interval,
    /// `P(lift > 0) = Φ(estimate / sd)`: the chance that treatment's metric is higher. For a
    /// metric where lower is better, the chance to beat control is one minus this.
    pub chance_to_beat_control: f64,
}

/// The lift's likelihood is approximately normal (central limit theorem, delta method for the
/// relative lift); with a flat prior the posterior is that same normal, as in gbstats'
/// `EffectBayesianABTest` with an improper prior.
pub fn gaussian_posterior<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    kind: LiftKind,
    alpha: Alpha,
) -> Result<GaussianPosterior, Unavailable> {
    let (lift, _) = measure(control, treatment, kind)?;
    let z = dist::normal_critical(alpha.half()).ok_or(Unavailable::Overflow)?;
    let credible_interval =
        Interval::around(lift.estimate, z * lift.standard_error).ok_or(Unavailable::Overflow)?;
    let chance_to_beat_control =
        dist::normal_cdf(lift.estimate / lift.standard_error).ok_or(Unavailable::Overflow)?;
    Ok(GaussianPosterior {
        lift,
        credible_interval,
        chance_to_beat_control,
    })
}
