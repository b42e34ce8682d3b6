//! The distributions, behind functions that never hand statrs an argument it would panic on.
//!
//! statrs asserts on some arguments (a quantile outside `[0, 1]`, a `NaN` reaching the incomplete
//! beta function). Every caller here passes checked values, but each wrapper re-checks and answers
//! `None` rather than trusting that, so a mistake upstream becomes [`Unavailable::Overflow`]
//! instead of a panic.
//!
//! [`Unavailable::Overflow`]: crate::Unavailable::Overflow

use statrs::distribution::{ChiSquared, Continuous, ContinuousCDF, Normal, StudentsT};

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn standard_normal() -> Option<Normal> {
    Normal::new(0.0, 1.0).ok()
}

fn students_t(dof: f64) -> Option<StudentsT> {
    // A finite sample never gives infinite freedom (that would be the normal).
    StudentsT::new(0.0, 1.0, finite(dof)?).ok()
}

/// Φ(x).
pub(crate) fn normal_cdf(x: f64) -> Option<f64> {
    if x.is_nan() {
        return None;
    }
    Some(standard_normal()?.cdf(x))
}

/// φ(x).
pub(crate) fn normal_pdf(x: f64) -> Option<f64> {
    Some(standard_normal()?.pdf(finite(x)?))
}

/// The `z >= 0` with `P(Z > z) = tail`, for `tail` in `(0, 0.5]`: 1.959964 for 0.025, 0 for 0.5.
pub(crate) fn normal_critical(tail: f64) -> Option<f64> {
    if !(tail > 0.0 && tail <= 0.5) {
        return None;
    }
    if tail == 0.5 {
        return Some(0.0);
    }
    finite(-standard_normal()?.inverse_cdf(tail))
}

/// From this many degrees of freedom on, Student's t is computed from the normal by its
/// large-freedom expansion instead of statrs's incomplete beta function. statrs's survival
/// function is accurate to about 4·10⁻¹⁰ up to 10⁸ degrees of freedom but drifts beyond (about
/// 3·10⁻⁸ at 10⁹, 5·10⁻⁵ at 10¹²), while the expansion's first neglected term is of order
/// `ν⁻²` (10⁻¹⁴ here). Welch's degrees of freedom are about the users in both arms, so this is
/// reached by experiments with some ten million users.
const LARGE_FREEDOM: f64 = 1e7;

/// The `t >= 0` with `P(T > t) = tail` for Student's t with `dof` degrees of freedom, for `tail`
/// in `(0, 0.5]`.
///
/// Not statrs's quantile: it inverts the incomplete beta function, which loses accuracy as the
/// freedom grows (at 10⁶ degrees of freedom its 97.5% point is off in the fourth decimal, at 10⁷
/// it answers 1.83 instead of 1.96, at 10⁸ it does not return). Its survival function stays
/// accurate, so the quantile is found by Newton's method on it, starting from the normal
/// quantile, which is always below the t quantile. The tail is convex and decreasing for
/// `t > 0`, so from a start below the root every Newton step lands below the root and closer to
/// it: the iteration climbs monotonically and cannot overshoot (2–3 steps at large freedom,
/// about 15 at one degree). At [`LARGE_FREEDOM`] and above, the Cornish–Fisher expansion
/// `t = z + (z³ + z)/(4ν) + (5z⁵ + 16z³ + 3z)/(96ν²)` (Abramowitz & Stegun 26.7.5).
pub(crate) fn t_critical(tail: f64, dof: f64) -> Option<f64> {
    let t = students_t(dof)?;
    let z = normal_critical(tail)?;
    if dof >= LARGE_FREEDOM {
        let z2 = z * z;
        return finite(
            z + z * (z2 + 1.0) / (4.0 * dof)
                + z * (5.0 * z2 * z2 + 16.0 * z2 + 3.0) / (96.0 * dof * dof),
        );
    }
    let mut x = z;
    for _ in 0..200 {
        let density = t.pdf(x);
        if density.is_nan() || density <= 0.0 {
            break;
        }
        let step = (t.sf(x) - tail) / density;
        // Past the root (a negative step) only rounding is left.
        if !step.is_finite() || step <= 4.0 * f64::EPSILON * x {
            break;
        }
        x += step;
    }
    finite(x)
}

/// `P(|T| >= |t|)` for Student's t with `dof` degrees of freedom. At [`LARGE_FREEDOM`] and above,
/// from the normal after the inverse Cornish–Fisher transform `z = t - (t³ + t)/(4ν)`.
pub(crate) fn t_two_sided_p(t: f64, dof: f64) -> Option<f64> {
    Some((2.0 * t_tail(finite(t)?.abs(), dof)?).clamp(0.0, 1.0))
}

/// `P(T >= t)` for Student's t with `dof` degrees of freedom: the one-sided p-value of "treatment
/// is greater". Computed from the upper tail of `|t|` on either side, so a large positive `t`
/// keeps its tiny p-value's relative precision.
pub(crate) fn t_upper_p(t: f64, dof: f64) -> Option<f64> {
    let tail = t_tail(finite(t)?.abs(), dof)?;
    Some(if t >= 0.0 { tail } else { 1.0 - tail }.clamp(0.0, 1.0))
}

/// `P(T >= t)` for `t >= 0`; at [`LARGE_FREEDOM`] and above from the normal after the inverse
/// Cornish–Fisher transform `z = t - (t³ + t)/(4ν)`.
fn t_tail(t: f64, dof: f64) -> Option<f64> {
    let dist = students_t(dof)?;
    Some(if dof >= LARGE_FREEDOM {
        standard_normal()?.sf(t - t * (t * t + 1.0) / (4.0 * dof))
    } else {
        dist.sf(t)
    })
}

/// `P(X >= x)` for a chi-square with `df` degrees of freedom.
pub(crate) fn chi_squared_sf(x: f64, df: f64) -> Option<f64> {
    let x = finite(x).filter(|x| *x >= 0.0)?;
    let dist = ChiSquared::new(finite(df)?).ok()?;
    Some(dist.sf(x).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_arguments_statrs_would_panic_on() {
        assert_eq!(normal_critical(1.5), None);
        assert_eq!(normal_critical(0.5000001), None);
        assert_eq!(normal_critical(0.5), Some(0.0));
        assert_eq!(t_critical(0.5, 7.0), Some(0.0));
        assert_eq!(t_upper_p(f64::NAN, 10.0), None);
        assert_eq!(normal_pdf(f64::INFINITY), None);
        assert_eq!(normal_critical(f64::NAN), None);
        assert_eq!(t_critical(0.025, f64::INFINITY), None);
        assert_eq!(t_critical(0.025, 0.0), None);
        assert_eq!(t_critical(-0.1, 10.0), None);
        assert_eq!(t_two_sided_p(f64::NAN, 10.0), None);
        assert_eq!(chi_squared_sf(-1.0, 1.0), None);
        assert_eq!(chi_squared_sf(f64::NAN, 1.0), None);
        assert_eq!(normal_cdf(f64::NAN), None);
    }

    /// Two-sided 95% and 99% critical values of Student's t, 16 digits from mpmath
    /// (`findroot` on the regularised incomplete beta function), across the range of freedom
    /// Welch's test produces, including where statrs's own quantile fails.
    #[test]
    fn t_critical_values_hold_at_any_freedom() {
        let table = [
            (0.025, 1.0, 12.7062047361747),
            (0.025, 2.5, 3.574654842003683),
            (0.025, 10.0, 2.228138851986275),
            (0.025, 1e3, 1.962339080826408),
            (0.025, 1e6, 1.959966356814107),
            (0.025, 1e7, 1.959964221767205),
            (0.025, 1e9, 1.959963986912325),
            (0.005, 4.0, 4.604094871349993),
            (0.005, 1e7, 2.575829795203749),
        ];
        for (tail, dof, want) in table {
            let got = t_critical(tail, dof).unwrap();
            assert!(
                (got - want).abs() < 1e-8,
                "t_critical({tail}, {dof}) = {got}, want {want}"
            );
        }
        assert!((normal_critical(0.025).unwrap() - 1.959963984540054).abs() < 1e-12);
    }

    /// Two-sided p-values of Student's t, 17 digits from mpmath, on both sides of
    /// `LARGE_FREEDOM`.
    #[test]
    fn t_p_values_hold_at_any_freedom() {
        let table = [
            (1.96, 1e4, 2.0 * 0.02501176011591653),
            (3.0, 1e6, 2.0 * 0.001349931270710899),
            (1.96, 1e7, 2.0 * 0.0249979090126571),
            (0.5, 1e8, 2.0 * 0.308537539276089),
            (1.96, 1e9, 2.0 * 0.0249978952868648),
            (3.0, 1e9, 2.0 * 0.001349898064868958),
        ];
        for (t, dof, want) in table {
            let got = t_two_sided_p(t, dof).unwrap();
            assert!(
                ((got - want) / want).abs() < 1e-8,
                "t_two_sided_p({t}, {dof}) = {got:e}, want {want:e}"
            );
            assert_eq!(t_two_sided_p(-t, dof), Some(got));
        }
    }
}
