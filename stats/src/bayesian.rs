//! The Bayesian view: a Gaussian posterior for the lift, under an improper flat prior or a proper
//! Gaussian one, with its credible interval, chance to beat control and risk (expected loss).

use crate::alpha::Alpha;
use crate::dist;
use crate::error::{StatsError, Unavailable};
use crate::interval::Interval;
use crate::lift::{LiftKind, LiftMoments, measure};
use crate::sufficient::ArmStatistic;

/// A proper Gaussian prior on the **relative** lift, as GrowthBook states priors (its
/// `prior_type = "relative"`): `N(mean, variance)`, so `mean 0, variance 0.09` says "lifts beyond
/// ±60% are rare" (GrowthBook's default standard deviation is 0.3). The absolute lift's posterior
/// uses the same prior rescaled by the control's mean (`mean · |m_c|`, `variance · m_c²`), as
/// gbstats' `EffectBayesianABTest` does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianPrior {
    mean: f64,
    variance: f64,
}

impl GaussianPrior {
    /// GrowthBook's default proper prior: mean 0, standard deviation 0.3 (variance 0.09).
    pub const GROWTHBOOK: GaussianPrior = GaussianPrior {
        mean: 0.0,
        variance: 0.09,
    };

    /// Refuses a mean that is not finite and a variance that is not positive and finite (a
    /// variance of 0 would be certainty, and no data could move it).
    pub fn new(mean: f64, variance: f64) -> Result<Self, StatsError> {
        if !mean.is_finite() {
            return Err(StatsError::InvalidPrior {
                field: "mean",
                rule: "finite",
                value: mean,
            });
        }
        if !(variance.is_finite() && variance > 0.0) {
            return Err(StatsError::InvalidPrior {
                field: "variance",
                rule: "positive and finite",
                value: variance,
            });
        }
        Ok(GaussianPrior { mean, variance })
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    pub fn variance(&self) -> f64 {
        self.variance
    }
}

/// The expected loss of each decision under the posterior: how much lift is given up, on average,
/// by shipping that arm if the other is in fact better. gbstats' `get_risk`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Risk {
    /// Of keeping control: `E[max(lift, 0)]`.
    pub control: f64,
    /// Of shipping treatment: `E[max(-lift, 0)]`.
    pub treatment: f64,
}

/// The posterior of the lift: normal.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct GaussianPosterior {
    /// Posterior mean (`estimate`) and standard deviation (`standard_error`). Under a flat prior
    /// these are the lift's estimate and standard error; a proper prior pulls the mean towards
    /// its own and narrows the spread.
    pub lift: LiftMoments,
    /// The central `1 - alpha` credible interval: `mean ± z(1 - alpha/2) · sd`.
    pub credible_interval: Interval,
    /// `P(lift > 0) = Φ(mean / sd)`: the chance that treatment's metric is higher. For a
    /// metric where lower is better, the chance to beat control is one minus this.
    pub chance_to_beat_control: f64,
    pub risk: Risk,
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
    gaussian_posterior_with_prior(control, treatment, kind, alpha, None)
}

/// The posterior under `prior` (`None`: flat). With data `N(Δ, se²)` and prior `N(μ₀, τ²)`
/// (rescaled to the absolute lift when `kind` is absolute), the posterior precision is
/// `1/se² + 1/τ²` and its mean `(Δ/se² + μ₀/τ²) / precision`.
pub fn gaussian_posterior_with_prior<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    kind: LiftKind,
    alpha: Alpha,
    prior: Option<GaussianPrior>,
) -> Result<GaussianPosterior, Unavailable> {
    let (data, pair) = measure(control, treatment, kind)?;
    let lift = match prior {
        None => data,
        Some(prior) => {
            let (prior_mean, prior_variance) = match kind {
                LiftKind::Relative => (prior.mean, prior.variance),
                LiftKind::Absolute => {
                    let scale = pair.control.mean;
                    if scale == 0.0 {
                        return Err(Unavailable::ZeroControlMean);
                    }
                    (prior.mean * scale.abs(), prior.variance * scale * scale)
                }
            };
            let data_variance = data.standard_error * data.standard_error;
            let precision = 1.0 / data_variance + 1.0 / prior_variance;
            let mean = (data.estimate / data_variance + prior_mean / prior_variance) / precision;
            let sd = (1.0 / precision).sqrt();
            if !(mean.is_finite() && sd.is_finite() && sd > 0.0) {
                return Err(Unavailable::Overflow);
            }
            LiftMoments {
                kind,
                estimate: mean,
                standard_error: sd,
            }
        }
    };
    let z = dist::normal_critical(alpha.half()).ok_or(Unavailable::Overflow)?;
    let credible_interval =
        Interval::around(lift.estimate, z * lift.standard_error).ok_or(Unavailable::Overflow)?;
    let standardised = lift.estimate / lift.standard_error;
    let chance_to_beat_control = dist::normal_cdf(standardised).ok_or(Unavailable::Overflow)?;
    let risk = risk(lift, standardised).ok_or(Unavailable::Overflow)?;
    Ok(GaussianPosterior {
        lift,
        credible_interval,
        chance_to_beat_control,
        risk,
    })
}

/// For `X ~ N(μ, σ²)` and `s = μ/σ`: `E[max(X, 0)] = μ Φ(s) + σ φ(s)` and
/// `E[max(-X, 0)] = σ φ(s) - μ Φ(-s)`, the closed forms of gbstats'
/// `P(X > 0) · E[X | X > 0]` and `-P(X < 0) · E[X | X < 0]` (no division by a tail probability
/// that may underflow).
fn risk(lift: LiftMoments, standardised: f64) -> Option<Risk> {
    let (mu, sigma) = (lift.estimate, lift.standard_error);
    let density = sigma * dist::normal_pdf(standardised)?;
    let control = mu * dist::normal_cdf(standardised)? + density;
    let treatment = density - mu * dist::normal_cdf(-standardised)?;
    // Both are expectations of non-negative quantities; rounding may leave a speck below zero.
    (control.is_finite() && treatment.is_finite()).then_some(Risk {
        control: control.max(0.0),
        treatment: treatment.max(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sufficient::ProportionStats;

    #[test]
    fn priors_refuse_what_is_not_a_distribution() {
        assert_eq!(
            GaussianPrior::new(0.0, 0.0),
            Err(StatsError::InvalidPrior {
                field: "variance",
                rule: "positive and finite",
                value: 0.0
            })
        );
        assert!(GaussianPrior::new(0.0, -1.0).is_err());
        assert!(GaussianPrior::new(0.0, f64::INFINITY).is_err());
        assert!(GaussianPrior::new(f64::NAN, 1.0).is_err());
        assert_eq!(GaussianPrior::new(0.0, 0.09), Ok(GaussianPrior::GROWTHBOOK));
    }

    #[test]
    fn a_prior_shrinks_towards_its_mean_and_narrows() {
        let control = ProportionStats::new(200, 20).unwrap();
        let treatment = ProportionStats::new(200, 40).unwrap();
        let alpha = Alpha::FIVE_PERCENT;
        for kind in [LiftKind::Absolute, LiftKind::Relative] {
            let flat = gaussian_posterior(&control, &treatment, kind, alpha).unwrap();
            let tight = GaussianPrior::new(0.0, 0.01).unwrap();
            let shrunk =
                gaussian_posterior_with_prior(&control, &treatment, kind, alpha, Some(tight))
                    .unwrap();
            assert!(shrunk.lift.estimate < flat.lift.estimate, "{kind:?}");
            assert!(shrunk.lift.estimate > 0.0, "{kind:?}");
            assert!(shrunk.lift.standard_error < flat.lift.standard_error);
            assert!(shrunk.credible_interval.width() < flat.credible_interval.width());
            // Risk: shipping the likely winner costs less than keeping control, and
            // E[max(X, 0)] - E[max(-X, 0)] = E[X].
            for posterior in [flat, shrunk] {
                let risk = posterior.risk;
                assert!(risk.treatment < risk.control, "{risk:?}");
                let mean = posterior.lift.estimate;
                assert!((risk.control - risk.treatment - mean).abs() < 1e-12 * mean.abs());
            }
        }
    }
}
