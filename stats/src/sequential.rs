//! Always-valid intervals for experiments that are looked at before they end.
//!
//! A fixed-horizon 95% interval covers the true lift 95% of the time *at one pre-chosen sample
//! size*. Checking the results every day and stopping at the first significant day makes the
//! false-positive rate far larger than alpha. A confidence sequence covers the true lift at every
//! sample size at once, with probability at least `1 - alpha`, so it may be checked any number of
//! times.
//!
//! # Method
//!
//! The asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas,
//! "Time-uniform central limit theory and asymptotic confidence sequences" (Annals of Statistics,
//! 2024; arXiv:2103.06476): the Gaussian-mixture boundary (Robbins' normal mixture, the boundary
//! of the mixture sequential probability ratio test that Optimizely's always-valid p-values use)
//! applied to the estimate's asymptotic normality. GrowthBook's sequential testing uses the same
//! form (eq. 9 of the paper for the interval, eq. 155 for the p-value). With `N` users in the two
//! arms, the lift's estimate `Δ` and standard error `se`, and `σ̂² = N · se²` the per-user
//! variance of the estimate:
//!
//! ```text
//! half-width = σ̂ · sqrt( 2 (N ρ² + 1) / (N² ρ²) · ln( sqrt(N ρ² + 1) / α ) )
//! ```
//!
//! `ρ` is the mixture's spread, chosen so the sequence is tightest when `N` reaches the tuning
//! parameter `n*` (the planned sample size; eq. 161 of the paper):
//!
//! ```text
//! ρ² = ( -2 ln α + ln(1 - 2 ln α) ) / n*
//! ```
//!
//! The always-valid p-value is the smallest level at which the sequence (with `ρ` fixed) excludes
//! zero: `p = min(1, sqrt(N ρ² + 1) · exp( -ρ² N² Δ² / (2 σ̂² (N ρ² + 1)) ))`, so `p <= alpha`
//! exactly when the interval excludes zero.
//!
//! The guarantee is asymptotic (it rests on the central limit theorem, like the t-test); at
//! small `N` the interval is so wide that this does not matter in practice.

use crate::alpha::Alpha;
use crate::error::{StatsError, Unavailable};
use crate::interval::Interval;
use crate::lift::{LiftKind, LiftMoments, measure};
use crate::sufficient::ArmStatistic;

/// The sample size (users in both arms) at which the sequence is tightest. Positive and finite.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct SequentialTuning(f64);

impl SequentialTuning {
    /// GrowthBook's default.
    pub const DEFAULT: SequentialTuning = SequentialTuning(5000.0);

    pub fn new(planned_users: f64) -> Result<Self, StatsError> {
        if planned_users.is_finite() && planned_users > 0.0 {
            Ok(SequentialTuning(planned_users))
        } else {
            Err(StatsError::InvalidTuning {
                value: planned_users,
            })
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for SequentialTuning {
    fn default() -> Self {
        SequentialTuning::DEFAULT
    }
}

/// One look at a confidence sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ConfidenceSequence {
    pub lift: LiftMoments,
    /// Users in both arms at this look.
    pub users: u64,
    /// Covers the true lift at every look, simultaneously, with probability `1 - alpha`.
    pub interval: Interval,
    /// Always valid: `P(p <= a at any look) <= a` under no lift, for every `a`.
    pub p_value: f64,
}

/// The confidence sequence for the lift of `treatment` over `control`, at this look.
pub fn sequential_test<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    kind: LiftKind,
    alpha: Alpha,
    tuning: SequentialTuning,
) -> Result<ConfidenceSequence, Unavailable> {
    let (lift, _) = measure(control, treatment, kind)?;
    let users = control.users().saturating_add(treatment.users());
    confidence_sequence(lift, users, alpha, tuning)
}

/// The confidence sequence for a lift measured on `users` users in total (at least 4: a lift
/// needs 2 per arm).
fn confidence_sequence(
    lift: LiftMoments,
    users: u64,
    alpha: Alpha,
    tuning: SequentialTuning,
) -> Result<ConfidenceSequence, Unavailable> {
    let n = users as f64;
    let ln_alpha = alpha.get().ln();
    let rho2 = (-2.0 * ln_alpha + (1.0 - 2.0 * ln_alpha).ln()) / tuning.get();
    // x = N ρ². With σ̂² = N se², the half-width above simplifies to
    // se · sqrt( 2 (1 + 1/x) (ln(1/α) + ln(1 + x) / 2) ), and the p-value to
    // sqrt(1 + x) · exp( -x z² / (2 (1 + x)) ) with z = Δ / se.
    let x = n * rho2;
    let half_width =
        lift.standard_error * (2.0 * (1.0 + 1.0 / x) * (-ln_alpha + 0.5 * x.ln_1p())).sqrt();
    let z = lift.estimate / lift.standard_error;
    let ln_p = 0.5 * x.ln_1p() - x * z * z / (2.0 * (1.0 + x));
    let p_value = ln_p.min(0.0).exp();
    let interval = Interval::around(lift.estimate, half_width).ok_or(Unavailable::Overflow)?;
    if !p_value.is_finite() {
        return Err(Unavailable::Overflow);
    }
    Ok(ConfidenceSequence {
        lift,
        users,
        interval,
        p_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_must_be_positive_and_finite() {
        for value in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(SequentialTuning::new(value).is_err(), "{value}");
        }
        assert_eq!(SequentialTuning::default().get(), 5000.0);
    }

    #[test]
    fn matches_the_papers_unsimplified_formula() {
        let alpha = Alpha::FIVE_PERCENT;
        let tuning = SequentialTuning::DEFAULT;
        for (estimate, standard_error, users) in [
            (0.3, 0.12, 6868_u64),
            (-0.02, 0.01, 40),
            (1.5, 2.0, 1_000_000),
        ] {
            let lift = LiftMoments {
                kind: LiftKind::Absolute,
                estimate,
                standard_error,
            };
            let got = confidence_sequence(lift, users, alpha, tuning).unwrap();
            let a = alpha.get();
            let n = users as f64;
            let rho2 = (-2.0 * a.ln() + (-2.0 * a.ln() + 1.0).ln()) / tuning.get();
            let s2 = standard_error * standard_error * n;
            let width = s2.sqrt()
                * (2.0 * (n * rho2 + 1.0) * ((n * rho2 + 1.0).sqrt() / a).ln() / (n * n * rho2))
                    .sqrt();
            assert!((got.interval.upper() - (estimate + width)).abs() < 1e-12);
            assert!((got.interval.lower() - (estimate - width)).abs() < 1e-12);
            let st2 = estimate * estimate * n / (standard_error * standard_error);
            let evalue = (rho2 * st2 / (2.0 * (n * rho2 + 1.0))).exp() / (n * rho2 + 1.0).sqrt();
            assert!((got.p_value - (1.0 / evalue).min(1.0)).abs() < 1e-12);
        }
    }
}
