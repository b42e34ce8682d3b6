//! The frequentist test: Welch's t-test on the lift.

use crate::alpha::Alpha;
use crate::dist;
use crate::error::Unavailable;
use crate::interval::Interval;
use crate::lift::{LiftKind, LiftMoments, Pair, measure};
use crate::sufficient::ArmStatistic;

/// Welch's unequal-variance t-test of "no lift".
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct WelchTest {
    pub lift: LiftMoments,
    /// Welch–Satterthwaite.
    pub degrees_of_freedom: f64,
    /// `estimate / standard_error`.
    pub t_statistic: f64,
    /// Two-sided.
    pub p_value: f64,
    /// `estimate ± t(1 - alpha/2, dof) · standard_error`.
    pub confidence_interval: Interval,
}

/// Welch's t-test of treatment against control, with the lift's standard error from
/// [`lift`](crate::lift()) and Welch–Satterthwaite degrees of freedom from the arms:
///
/// `dof = (v_t/n_t + v_c/n_c)² / ((v_t/n_t)²/(n_t - 1) + (v_c/n_c)²/(n_c - 1))`
///
/// (the relative lift uses the same degrees of freedom, as gbstats does).
pub fn welch_t_test<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    kind: LiftKind,
    alpha: Alpha,
) -> Result<WelchTest, Unavailable> {
    let (lift, pair) = measure(control, treatment, kind)?;
    let degrees_of_freedom = welch_satterthwaite(&pair)?;
    let t_statistic = lift.estimate / lift.standard_error;
    let p_value =
        dist::t_two_sided_p(t_statistic, degrees_of_freedom).ok_or(Unavailable::Overflow)?;
    let quantile =
        dist::t_critical(alpha.half(), degrees_of_freedom).ok_or(Unavailable::Overflow)?;
    let confidence_interval = Interval::around(lift.estimate, quantile * lift.standard_error)
        .ok_or(Unavailable::Overflow)?;
    Ok(WelchTest {
        lift,
        degrees_of_freedom,
        t_statistic,
        p_value,
        confidence_interval,
    })
}

/// Written with each arm's share of the variance so that no square can overflow; the result lies
/// between `min(n) - 1` and `n_t + n_c - 2`.
fn welch_satterthwaite(pair: &Pair) -> Result<f64, Unavailable> {
    let c = pair.control.variance_of_mean();
    let t = pair.treatment.variance_of_mean();
    let total = c + t;
    if total.is_nan() || total <= 0.0 {
        return Err(Unavailable::ZeroVariance);
    }
    let (c, t) = (c / total, t / total);
    let dof = 1.0 / (c * c / (pair.control.n - 1.0) + t * t / (pair.treatment.n - 1.0));
    if dof.is_finite() && dof > 0.0 {
        Ok(dof)
    } else {
        Err(Unavailable::Overflow)
    }
}

/// Welch's test of "no lift" against "treatment is greater" (gbstats'
/// `OneSidedTreatmentGreaterTTest`), for an experiment that only asks whether the change helps.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct OneSidedTest {
    /// `P(T >= t)`: small only when the lift is positive.
    pub p_value: f64,
    /// The one-sided `1 - alpha` confidence bound: the lift is at least
    /// `estimate - t(1 - alpha, dof) · standard_error` (the interval is unbounded above).
    pub lower_bound: f64,
}

impl WelchTest {
    /// The one-sided form of this test at `alpha`: same statistic and degrees of freedom, all of
    /// `alpha` in the upper tail. `p_value <= alpha` exactly when `lower_bound >= 0`.
    pub fn one_sided(&self, alpha: Alpha) -> Result<OneSidedTest, Unavailable> {
        let p_value = dist::t_upper_p(self.t_statistic, self.degrees_of_freedom)
            .ok_or(Unavailable::Overflow)?;
        let quantile =
            dist::t_critical(alpha.get(), self.degrees_of_freedom).ok_or(Unavailable::Overflow)?;
        let lower_bound = self.lift.estimate - quantile * self.lift.standard_error;
        if !lower_bound.is_finite() {
            return Err(Unavailable::Overflow);
        }
        Ok(OneSidedTest {
            p_value,
            lower_bound,
        })
    }
}
