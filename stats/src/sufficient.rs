//! Sufficient statistics of one arm: everything the tests need, in a few numbers that can be
//! accumulated user by user and merged across partitions.

use crate::alpha::Alpha;
use crate::dist;
use crate::error::StatsError;
use crate::interval::Interval;

/// What a metric measures per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Did the user convert: a rate.
    Proportion,
    /// A value per user (revenue, sessions): a mean.
    Mean,
}

mod sealed {
    pub trait Sealed {}
}

/// The per-arm summary the comparisons are written against. Sealed: the tests rely on the
/// conventions of the two implementations (a finite mean, a variance that is finite and never
/// negative).
pub trait ArmStatistic: sealed::Sealed {
    const KIND: MetricKind;

    /// Users in the arm.
    fn users(&self) -> u64;

    /// The rate or the mean; `None` with no users.
    fn mean(&self) -> Option<f64>;

    /// The per-user variance: `p(1 - p)` for a proportion, the sample variance (divided by
    /// `n - 1`) for a mean. `None` when undefined (no users; a mean metric with one user).
    fn variance(&self) -> Option<f64>;

    /// The arm's own interval for its rate or mean, at `1 - alpha`: Wilson's score interval for a
    /// proportion (it stays inside `[0, 1]` and behaves at 0 and n successes), Student's t with
    /// `n - 1` degrees of freedom for a mean. `None` when the arm has too few users for one.
    fn interval(&self, alpha: Alpha) -> Option<Interval>;
}

/// Per-user totals of a mean metric: users, the sum of the per-user values and the sum of their
/// squares.
///
/// Invariants, checked by every constructor: the sums are finite, the sum of squares is not
/// negative, and `sum² <= n · sum_squares` (Cauchy–Schwarz; no set of real values violates it).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MeanStats {
    n: u64,
    sum: f64,
    sum_squares: f64,
}

impl MeanStats {
    /// No users yet.
    pub const EMPTY: MeanStats = MeanStats {
        n: 0,
        sum: 0.0,
        sum_squares: 0.0,
    };

    /// From totals as a query returns them (counts are signed there, so a negative one is
    /// refused here rather than wrapped).
    pub fn new(n: i64, sum: f64, sum_squares: f64) -> Result<Self, StatsError> {
        let n = u64::try_from(n).map_err(|_| StatsError::NegativeCount {
            field: "users",
            value: n,
        })?;
        check_finite("sum", sum)?;
        check_finite("sum of squares", sum_squares)?;
        if sum_squares < 0.0 {
            return Err(StatsError::NegativeSumOfSquares { value: sum_squares });
        }
        let inconsistent = if n == 0 {
            sum != 0.0 || sum_squares != 0.0
        } else {
            // sum² / n <= sum_squares, written so the square cannot overflow, with a relative
            // allowance for rounding in the caller's accumulation.
            (sum / n as f64) * sum > sum_squares * (1.0 + 1e-9)
        };
        if inconsistent {
            return Err(StatsError::InconsistentMoments {
                users: n,
                sum,
                sum_squares,
            });
        }
        Ok(MeanStats {
            n,
            sum,
            sum_squares,
        })
    }

    /// The totals of a list of per-user values.
    pub fn from_values(values: impl IntoIterator<Item = f64>) -> Result<Self, StatsError> {
        let mut stats = MeanStats::EMPTY;
        for value in values {
            stats.add(value)?;
        }
        Ok(stats)
    }

    /// Adds one user's value. On error (a non-finite value, sums that leave the `f64` range) the
    /// totals are unchanged.
    pub fn add(&mut self, value: f64) -> Result<(), StatsError> {
        check_finite("value", value)?;
        let n = self.n.checked_add(1).ok_or(StatsError::CountOverflow {
            left: self.n,
            right: 1,
        })?;
        let sum = check_finite("sum", self.sum + value)?;
        let sum_squares = check_finite("sum of squares", self.sum_squares + value * value)?;
        *self = MeanStats {
            n,
            sum,
            sum_squares,
        };
        Ok(())
    }

    /// Adds another partition's totals. On error the totals are unchanged.
    pub fn merge(&mut self, other: &MeanStats) -> Result<(), StatsError> {
        let n = self
            .n
            .checked_add(other.n)
            .ok_or(StatsError::CountOverflow {
                left: self.n,
                right: other.n,
            })?;
        let sum = check_finite("sum", self.sum + other.sum)?;
        let sum_squares = check_finite("sum of squares", self.sum_squares + other.sum_squares)?;
        *self = MeanStats {
            n,
            sum,
            sum_squares,
        };
        Ok(())
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn sum_squares(&self) -> f64 {
        self.sum_squares
    }

    /// `sum / n`; `None` with no users.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// `(sum_squares - n · mean²) / (n - 1)`; `None` below 2 users.
    ///
    /// The subtraction cancels when the values hardly vary; a result within rounding of zero
    /// (`n · ε` relative to the sum of squares) or below it is zero, so identical values have
    /// exactly zero variance rather than a speck of either sign.
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        let mean = self.sum / n;
        let centred = self.sum_squares - n * mean * mean;
        let noise = self.sum_squares * n * f64::EPSILON;
        Some(if centred <= noise {
            0.0
        } else {
            centred / (n - 1.0)
        })
    }
}

impl sealed::Sealed for MeanStats {}

impl ArmStatistic for MeanStats {
    const KIND: MetricKind = MetricKind::Mean;

    fn users(&self) -> u64 {
        self.n
    }

    fn mean(&self) -> Option<f64> {
        MeanStats::mean(self)
    }

    fn variance(&self) -> Option<f64> {
        MeanStats::variance(self)
    }

    fn interval(&self, alpha: Alpha) -> Option<Interval> {
        let mean = self.mean()?;
        let variance = self.variance()?;
        let n = self.n as f64;
        let t = dist::t_critical(alpha.half(), n - 1.0)?;
        Interval::around(mean, t * (variance / n).sqrt())
    }
}

/// Users and conversions of a proportion metric. Invariant: `successes <= n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProportionStats {
    n: u64,
    successes: u64,
}

impl ProportionStats {
    /// No users yet.
    pub const EMPTY: ProportionStats = ProportionStats { n: 0, successes: 0 };

    /// From counts as a query returns them; refuses negative counts and more successes than
    /// users.
    pub fn new(n: i64, successes: i64) -> Result<Self, StatsError> {
        let n = u64::try_from(n).map_err(|_| StatsError::NegativeCount {
            field: "users",
            value: n,
        })?;
        let successes = u64::try_from(successes).map_err(|_| StatsError::NegativeCount {
            field: "successes",
            value: successes,
        })?;
        if successes > n {
            return Err(StatsError::SuccessesExceedUsers {
                successes,
                users: n,
            });
        }
        Ok(ProportionStats { n, successes })
    }

    /// Adds one user, converted or not. On error (the count at `u64::MAX`) nothing changes.
    pub fn add(&mut self, converted: bool) -> Result<(), StatsError> {
        self.merge(&ProportionStats {
            n: 1,
            successes: u64::from(converted),
        })
    }

    /// Adds another partition's counts. On error nothing changes.
    pub fn merge(&mut self, other: &ProportionStats) -> Result<(), StatsError> {
        let n = self
            .n
            .checked_add(other.n)
            .ok_or(StatsError::CountOverflow {
                left: self.n,
                right: other.n,
            })?;
        // successes <= n on both sides, so this cannot overflow once n did not.
        let successes = self.successes.saturating_add(other.successes);
        *self = ProportionStats { n, successes };
        Ok(())
    }

    pub fn n(&self) -> u64 {
        self.n
    }

    pub fn successes(&self) -> u64 {
        self.successes
    }

    /// `successes / n`; `None` with no users.
    pub fn rate(&self) -> Option<f64> {
        (self.n > 0).then(|| self.successes as f64 / self.n as f64)
    }

    /// `p(1 - p)`, with no `n - 1` correction (the reference's convention); `None` with no users.
    pub fn variance(&self) -> Option<f64> {
        self.rate().map(|p| p * (1.0 - p))
    }
}

impl sealed::Sealed for ProportionStats {}

impl ArmStatistic for ProportionStats {
    const KIND: MetricKind = MetricKind::Proportion;

    fn users(&self) -> u64 {
        self.n
    }

    fn mean(&self) -> Option<f64> {
        self.rate()
    }

    fn variance(&self) -> Option<f64> {
        ProportionStats::variance(self)
    }

    fn interval(&self, alpha: Alpha) -> Option<Interval> {
        // Wilson score interval.
        let p = self.rate()?;
        let n = self.n as f64;
        let z = dist::normal_critical(alpha.half())?;
        let z2 = z * z;
        let denominator = 1.0 + z2 / n;
        let centre = (p + z2 / (2.0 * n)) / denominator;
        let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        // At 0 (or n) successes the bound is exactly 0 (or 1); the subtraction would leave a
        // rounding speck, and rounding must never push a bound past what a rate can be.
        let lower = if self.successes == 0 {
            0.0
        } else {
            (centre - half).max(0.0)
        };
        let upper = if self.successes == self.n {
            1.0
        } else {
            (centre + half).min(1.0)
        };
        Interval::new(lower, upper)
    }
}

fn check_finite(field: &'static str, value: f64) -> Result<f64, StatsError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(StatsError::NonFinite { field, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_refuse_invalid_totals() {
        let cases: &[(Result<MeanStats, StatsError>, StatsError)] = &[
            (
                MeanStats::new(-1, 0.0, 0.0),
                StatsError::NegativeCount {
                    field: "users",
                    value: -1,
                },
            ),
            (
                MeanStats::new(3, f64::NAN, 1.0),
                StatsError::NonFinite {
                    field: "sum",
                    value: f64::NAN,
                },
            ),
            (
                MeanStats::new(3, 1.0, f64::INFINITY),
                StatsError::NonFinite {
                    field: "sum of squares",
                    value: f64::INFINITY,
                },
            ),
            (
                MeanStats::new(3, 1.0, -2.0),
                StatsError::NegativeSumOfSquares { value: -2.0 },
            ),
            (
                MeanStats::new(2, 10.0, 1.0),
                StatsError::InconsistentMoments {
                    users: 2,
                    sum: 10.0,
                    sum_squares: 1.0,
                },
            ),
            (
                MeanStats::new(0, 0.0, 1.0),
                StatsError::InconsistentMoments {
                    users: 0,
                    sum: 0.0,
                    sum_squares: 1.0,
                },
            ),
        ];
        for (got, want) in cases {
            match (got, want) {
                // NaN != NaN, so compare the message.
                (Err(got), want) => assert_eq!(got.to_string(), want.to_string()),
                (Ok(stats), want) => panic!("accepted {stats:?}, wanted {want}"),
            }
        }

        assert_eq!(
            ProportionStats::new(-3, 0),
            Err(StatsError::NegativeCount {
                field: "users",
                value: -3
            })
        );
        assert_eq!(
            ProportionStats::new(3, -1),
            Err(StatsError::NegativeCount {
                field: "successes",
                value: -1
            })
        );
        assert_eq!(
            ProportionStats::new(3, 4),
            Err(StatsError::SuccessesExceedUsers {
                successes: 4,
                users: 3
            })
        );
        assert_eq!(
            ProportionStats::new(3, 4).map_err(|e| e.to_string()),
            Err("successes (4) exceed users (3)".to_owned())
        );
    }

    #[test]
    fn add_and_merge_agree_with_totals() {
        let values = [3.0, -1.5, 4.0, 0.25, 7.0];
        let all = MeanStats::from_values(values).unwrap();
        assert_eq!(all.n(), 5);
        assert_eq!(all.sum(), values.iter().sum::<f64>());
        assert_eq!(all.sum_squares(), values.iter().map(|v| v * v).sum::<f64>());

        let mut left = MeanStats::from_values(values[..2].iter().copied()).unwrap();
        let right = MeanStats::from_values(values[2..].iter().copied()).unwrap();
        left.merge(&right).unwrap();
        assert_eq!(left.n(), all.n());
        assert!((left.sum() - all.sum()).abs() < 1e-12);
        assert!((left.variance().unwrap() - all.variance().unwrap()).abs() < 1e-12);

        let mut p = ProportionStats::EMPTY;
        for converted in [true, false, true, true] {
            p.add(converted).unwrap();
        }
        p.merge(&ProportionStats::new(6, 1).unwrap()).unwrap();
        assert_eq!(p, ProportionStats::new(10, 4).unwrap());
    }

    #[test]
    fn failed_updates_leave_the_totals_alone() {
        let mut stats = MeanStats::from_values([1.0, 2.0]).unwrap();
        let before = stats;
        assert!(stats.add(f64::NAN).is_err());
        assert!(stats.add(1e200).is_err()); // its square is not finite
        assert_eq!(stats, before);

        let mut full = ProportionStats::new(i64::MAX, 0).unwrap();
        full.merge(&ProportionStats::new(i64::MAX, 0).unwrap())
            .unwrap();
        let before = full;
        assert_eq!(
            full.merge(&ProportionStats::new(2, 0).unwrap()),
            Err(StatsError::CountOverflow {
                left: u64::MAX - 1,
                right: 2
            })
        );
        assert_eq!(full, before);
    }

    #[test]
    fn mean_and_variance_follow_the_reference_conventions() {
        // mean = sum / n, var = (sum_squares - n mean²) / (n - 1)
        let stats = MeanStats::new(4, 10.0, 30.0).unwrap();
        assert_eq!(stats.mean(), Some(2.5));
        assert!((stats.variance().unwrap() - (30.0 - 4.0 * 6.25) / 3.0).abs() < 1e-12);
        // p(1 - p), no n - 1
        let p = ProportionStats::new(28, 14).unwrap();
        assert_eq!(p.rate(), Some(0.5));
        assert_eq!(ProportionStats::variance(&p), Some(0.25));
    }

    #[test]
    fn undefined_moments_are_none_not_nan() {
        assert_eq!(MeanStats::EMPTY.mean(), None);
        assert_eq!(MeanStats::from_values([4.0]).unwrap().variance(), None);
        assert_eq!(ProportionStats::EMPTY.rate(), None);
        assert_eq!(ProportionStats::variance(&ProportionStats::EMPTY), None);
        // Identical values: exactly zero, even where the subtraction leaves rounding behind.
        let same = MeanStats::from_values(std::iter::repeat_n(0.1, 1000)).unwrap();
        assert_eq!(same.variance(), Some(0.0));
    }

    #[test]
    fn arm_intervals() {
        let alpha = Alpha::FIVE_PERCENT;
        // Wilson at 0 and n successes stays inside [0, 1] and is not a point.
        let none = ProportionStats::new(20, 0)
            .unwrap()
            .interval(alpha)
            .unwrap();
        assert_eq!(none.lower(), 0.0);
        assert!((none.upper() - 0.16113).abs() < 5e-5, "{none:?}");
        let all = ProportionStats::new(20, 20)
            .unwrap()
            .interval(alpha)
            .unwrap();
        assert_eq!(all.upper(), 1.0);
        assert!((all.lower() - (1.0 - none.upper())).abs() < 1e-12);
        // Wilson 95% for 14/28: centre (0.5 + z²/56)/(1 + z²/28) = 0.5, half-width 0.17367.
        let half = ProportionStats::new(28, 14)
            .unwrap()
            .interval(alpha)
            .unwrap();
        assert!((half.lower() - 0.32633).abs() < 5e-5, "{half:?}");
        assert!((half.upper() - 0.67367).abs() < 5e-5, "{half:?}");
        // t interval: values 1..=5, mean 3, sd √2.5, t(0.975, 4) = 2.776445.
        let t = MeanStats::from_values([1.0, 2.0, 3.0, 4.0, 5.0])
            .unwrap()
            .interval(alpha)
            .unwrap();
        let half_width = 2.776445 * (2.5f64 / 5.0).sqrt();
        assert!((t.lower() - (3.0 - half_width)).abs() < 1e-5, "{t:?}");
        assert!((t.upper() - (3.0 + half_width)).abs() < 1e-5, "{t:?}");
        assert_eq!(MeanStats::from_values([1.0]).unwrap().interval(alpha), None);
        assert_eq!(ProportionStats::EMPTY.interval(alpha), None);
    }
}
