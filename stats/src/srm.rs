//! Sample-ratio mismatch: did the arms get the share of users they were meant to?
//!
//! A mismatch means assignment or exposure logging is broken (a redirect that loses users in one
//! arm, a bot filter that hits one variant), and every other result of the experiment is suspect.

use crate::alpha::Alpha;
use crate::dist;
use crate::error::StatsError;

/// A chi-square goodness-of-fit test of the observed users per arm against the intended weights.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct SampleRatioCheck {
    /// `Σ (observed - expected)² / expected`, with `expected = total · weight / Σ weights`.
    pub statistic: f64,
    /// Arms minus one.
    pub degrees_of_freedom: u64,
    pub p_value: f64,
}

impl SampleRatioCheck {
    /// Whether the p-value is below `threshold`. Tools usually flag at 0.001 rather than 0.05:
    /// the check runs on every experiment every day, and a false alarm discredits a sound one.
    pub fn is_mismatch(&self, threshold: Alpha) -> bool {
        self.p_value < threshold.get()
    }
}

/// The check for `observed` users per arm against `weights` (any positive scale; they are
/// normalised). With no users at all there is no evidence of a mismatch: statistic 0, p-value 1.
pub fn sample_ratio_mismatch(
    observed: &[u64],
    weights: &[f64],
) -> Result<SampleRatioCheck, StatsError> {
    if observed.len() != weights.len() {
        return Err(StatsError::LengthMismatch {
            observed: observed.len(),
            weights: weights.len(),
        });
    }
    if observed.len() < 2 {
        return Err(StatsError::TooFewArms {
            arms: observed.len(),
        });
    }
    if let Some((index, &value)) = weights
        .iter()
        .enumerate()
        .find(|(_, w)| !(w.is_finite() && **w > 0.0))
    {
        return Err(StatsError::InvalidWeight { index, value });
    }
    let degrees_of_freedom = observed.len() as u64 - 1;
    let total: f64 = observed.iter().map(|&o| o as f64).sum();
    let weight_sum: f64 = weights.iter().sum();
    if total == 0.0 {
        return Ok(SampleRatioCheck {
            statistic: 0.0,
            degrees_of_freedom,
            p_value: 1.0,
        });
    }
    let statistic: f64 = observed
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let expected = total * (w / weight_sum);
            let diff = o as f64 - expected;
            diff * diff / expected
        })
        .sum();
    // Weights spanning hundreds of orders of magnitude could still overflow the statistic; an
    // infinite statistic is an unmistakable mismatch.
    let p_value = if statistic.is_finite() {
        dist::chi_squared_sf(statistic, degrees_of_freedom as f64).unwrap_or(0.0)
    } else {
        0.0
    };
    Ok(SampleRatioCheck {
        statistic,
        degrees_of_freedom,
        p_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_malformed_input() {
        assert_eq!(
            sample_ratio_mismatch(&[1, 2], &[1.0]),
            Err(StatsError::LengthMismatch {
                observed: 2,
                weights: 1
            })
        );
        assert_eq!(
            sample_ratio_mismatch(&[5], &[1.0]),
            Err(StatsError::TooFewArms { arms: 1 })
        );
        assert_eq!(
            sample_ratio_mismatch(&[5, 5], &[0.5, 0.0]),
            Err(StatsError::InvalidWeight {
                index: 1,
                value: 0.0
            })
        );
        assert!(matches!(
            sample_ratio_mismatch(&[5, 5], &[f64::NAN, 1.0]),
            Err(StatsError::InvalidWeight { index: 0, .. })
        ));
    }

    #[test]
    fn no_users_is_no_evidence() {
        let check = sample_ratio_mismatch(&[0, 0, 0], &[1.0, 1.0, 2.0]).unwrap();
        assert_eq!((check.statistic, check.p_value), (0.0, 1.0));
        assert_eq!(check.degrees_of_freedom, 2);
    }

    #[test]
    fn weights_are_normalised_and_exact_ratios_pass() {
        let check = sample_ratio_mismatch(&[250, 750], &[1.0, 3.0]).unwrap();
        assert_eq!(check.statistic, 0.0);
        assert_eq!(check.p_value, 1.0);
        assert!(!check.is_mismatch(Alpha::FIVE_PERCENT));
    }
}
