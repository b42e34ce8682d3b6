//! The lift of treatment over control and its standard error.

use crate::error::{Arm, Unavailable};
use crate::sufficient::ArmStatistic;

/// Which lift: a difference in the metric's own unit, or a fraction of the control's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiftKind {
    /// `mean_t - mean_c`.
    Absolute,
    /// `(mean_t - mean_c) / |mean_c|`.
    Relative,
}

/// A lift and its standard error: both finite, the standard error strictly positive.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LiftMoments {
    pub kind: LiftKind,
    pub estimate: f64,
    pub standard_error: f64,
}

/// The lift of `treatment` over `control` and its standard error.
///
/// Absolute: `Δ = m_t - m_c`, `se² = v_t/n_t + v_c/n_c`.
///
/// Relative, by the delta method for a ratio of independent means (as gbstats does):
/// `Δ = (m_t - m_c) / |m_c|`, `se² = v_t/(n_t m_c²) + v_c m_t²/(n_c m_c⁴)`.
/// The reference divides by `m_c`; dividing by its magnitude gives the same figures whenever the
/// control mean is positive (every rate, most means) and keeps "positive lift = treatment
/// higher" for a metric whose control mean is negative. The variance has only squares of `m_c`,
/// so it is the same either way.
///
/// `v` is each arm's per-user variance in the conventions of [`ArmStatistic::variance`].
pub fn lift<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    kind: LiftKind,
) -> Result<LiftMoments, Unavailable> {
    measure(control, treatment, kind).map(|(moments, _)| moments)
}

/// One arm reduced to what the tests use: at least 2 users, a finite mean, a finite variance
/// that is strictly positive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ArmMoments {
    pub(crate) n: f64,
    pub(crate) mean: f64,
    pub(crate) variance: f64,
}

impl ArmMoments {
    fn of<S: ArmStatistic>(stats: &S, arm: Arm) -> Result<Self, Unavailable> {
        let users = stats.users();
        let not_enough = Unavailable::NotEnoughData { arm, users };
        if users < 2 {
            return Err(not_enough);
        }
        let mean = stats.mean().ok_or(not_enough)?;
        let variance = stats.variance().ok_or(not_enough)?;
        if !mean.is_finite() || !variance.is_finite() || variance < 0.0 {
            return Err(Unavailable::Overflow);
        }
        // An arm whose users all have one value says nothing about its own uncertainty; see
        // `Unavailable::ArmWithoutVariance`.
        if variance == 0.0 {
            return Err(Unavailable::ArmWithoutVariance { arm });
        }
        Ok(ArmMoments {
            n: users as f64,
            mean,
            variance,
        })
    }

    /// The variance of the arm's mean.
    pub(crate) fn variance_of_mean(&self) -> f64 {
        self.variance / self.n
    }
}

/// Control and treatment, both usable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair {
    pub(crate) control: ArmMoments,
    pub(crate) treatment: ArmMoments,
}

/// The lift and the arms it came from (Welch's degrees of freedom need the arms).
pub(crate) fn measure<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    kind: LiftKind,
) -> Result<(LiftMoments, Pair), Unavailable> {
    let pair = Pair {
        control: ArmMoments::of(control, Arm::Control)?,
        treatment: ArmMoments::of(treatment, Arm::Treatment)?,
    };
    let c = pair.control;
    let t = pair.treatment;
    let (estimate, standard_error) = match kind {
        LiftKind::Absolute => (
            t.mean - c.mean,
            (t.variance_of_mean() + c.variance_of_mean()).sqrt(),
        ),
        LiftKind::Relative => {
            if c.mean == 0.0 {
                return Err(Unavailable::ZeroControlMean);
            }
            let scale = c.mean.abs();
            let ratio = t.mean / c.mean;
            (
                (t.mean - c.mean) / scale,
                (t.variance_of_mean() + c.variance_of_mean() * ratio * ratio).sqrt() / scale,
            )
        }
    };
    if !estimate.is_finite() || !standard_error.is_finite() {
        return Err(Unavailable::Overflow);
    }
    if standard_error <= 0.0 {
        return Err(Unavailable::ZeroVariance);
    }
    Ok((
        LiftMoments {
            kind,
            estimate,
            standard_error,
        },
        pair,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sufficient::{MeanStats, ProportionStats};

    fn p(n: i64, successes: i64) -> ProportionStats {
        ProportionStats::new(n, successes).unwrap()
    }

    fn treatment_of_mean() -> MeanStats {
        MeanStats::from_values([1.0, 3.0, 2.0]).unwrap()
    }

    #[test]
    fn degenerate_inputs_are_named_not_nan() {
        use LiftKind::{Absolute, Relative};
        let cases = [
            (
                p(1, 1),
                p(100, 5),
                Absolute,
                Unavailable::NotEnoughData {
                    arm: Arm::Control,
                    users: 1,
                },
            ),
            (
                p(100, 5),
                p(0, 0),
                Relative,
                Unavailable::NotEnoughData {
                    arm: Arm::Treatment,
                    users: 0,
                },
            ),
            (
                p(100, 0),
                p(100, 0),
                Absolute,
                Unavailable::ArmWithoutVariance { arm: Arm::Control },
            ),
            (
                p(100, 100),
                p(50, 50),
                Absolute,
                Unavailable::ArmWithoutVariance { arm: Arm::Control },
            ),
            (
                p(100, 0),
                p(100, 3),
                Relative,
                Unavailable::ArmWithoutVariance { arm: Arm::Control },
            ),
            (
                p(100, 3),
                p(100, 100),
                Relative,
                Unavailable::ArmWithoutVariance {
                    arm: Arm::Treatment,
                },
            ),
        ];
        for (control, treatment, kind, want) in cases {
            assert_eq!(
                lift(&control, &treatment, kind),
                Err(want),
                "{control:?} {treatment:?} {kind:?}"
            );
        }
        let constant = MeanStats::from_values([2.0; 10]).unwrap();
        assert_eq!(
            lift(&constant, &constant, Absolute),
            Err(Unavailable::ArmWithoutVariance { arm: Arm::Control })
        );
        // A mean metric with a zero control mean but spread values has a relative lift problem
        // only.
        let centred = MeanStats::from_values([-1.0, 1.0, -2.0, 2.0]).unwrap();
        assert!(lift(&centred, &treatment_of_mean(), Absolute).is_ok());
        assert_eq!(
            lift(&centred, &treatment_of_mean(), Relative),
            Err(Unavailable::ZeroControlMean)
        );
        let tiny_control = MeanStats::new(2, 1e-310, 1.0).unwrap();
        let treatment = MeanStats::new(2, 10.0, 60.0).unwrap();
        assert_eq!(
            lift(&tiny_control, &treatment, Relative),
            Err(Unavailable::Overflow)
        );
    }
}
