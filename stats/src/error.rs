//! Errors for input the statistics refuse, and the reasons a valid input still yields no estimate.

use std::fmt;

use thiserror::Error;

/// Input the statistics refuse. Each variant names the offending value.
///
/// These are errors in the caller's data (a negative count from a broken query, a `NaN` sum), not
/// experiments that merely have too little data: those are [`Unavailable`].
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StatsError {
    #[error("{field} must not be negative, got {value}")]
    NegativeCount { field: &'static str, value: i64 },
    #[error("successes ({successes}) exceed users ({users})")]
    SuccessesExceedUsers { successes: u64, users: u64 },
    #[error("{field} must be finite, got {value}")]
    NonFinite { field: &'static str, value: f64 },
    #[error("sum of squares must not be negative, got {value}")]
    NegativeSumOfSquares { value: f64 },
    #[error(
        "sum {sum} and sum of squares {sum_squares} cannot both hold for {users} users \
         (sum squared must not exceed users times sum of squares)"
    )]
    InconsistentMoments {
        users: u64,
        sum: f64,
        sum_squares: f64,
    },
    #[error("user count overflows: {left} + {right}")]
    CountOverflow { left: u64, right: u64 },
    #[error("alpha must be above 0 and at most 0.5, got {value}")]
    InvalidAlpha { value: f64 },
    #[error("the prior's {field} must be {rule}, got {value}")]
    InvalidPrior {
        field: &'static str,
        rule: &'static str,
        value: f64,
    },
    #[error("sequential tuning parameter must be positive and finite, got {value}")]
    InvalidTuning { value: f64 },
    #[error("p-value at index {index} must be in [0, 1], got {value}")]
    InvalidPValue { index: usize, value: f64 },
    #[error("weight at index {index} must be positive and finite, got {value}")]
    InvalidWeight { index: usize, value: f64 },
    #[error("{observed} observed arm counts but {weights} expected weights")]
    LengthMismatch { observed: usize, weights: usize },
    #[error("a sample-ratio check needs at least 2 arms, got {arms}")]
    TooFewArms { arms: usize },
}

/// One arm of a two-arm comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arm {
    Control,
    Treatment,
}

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arm::Control => "control",
            Arm::Treatment => "treatment",
        })
    }
}

/// Why a comparison of two valid arms has no estimate. This is the documented answer for
/// degenerate data; no statistic in this crate is ever `NaN` or infinite.
///
/// - `NotEnoughData`: an arm has fewer than 2 users. The sample variance needs `n - 1 > 0`, and so
///   do Welch's degrees of freedom.
/// - `ArmWithoutVariance`: every user of one arm has the same value (a conversion rate of 0% or
///   100%, a mean metric whose users all have one value). The lift's standard error would rest on
///   the other arm alone and understate the uncertainty wildly (control 0/51 against treatment
///   46/2386 would give p ≈ 1e-11 where Fisher's exact test gives 0.62), so there is no estimate:
///   gbstats 0.8.0 refuses the same cases (`ZERO_NEGATIVE_VARIANCE`, when either arm's variance is
///   not positive).
/// - `ZeroVariance`: the lift's standard error is zero although each arm varies (only by
///   underflow). A t statistic would divide by zero.
/// - `ZeroControlMean`: the relative lift divides by the control's mean. The absolute lift of
///   the same comparison is unaffected.
/// - `Overflow`: the inputs are finite but so large that an intermediate quantity is not (a
///   variance near `f64::MAX`, a control mean near zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum Unavailable {
    #[error(
        "not enough data: the {arm} arm has {users} user{}, at least 2 are needed",
        plural_s(.users)
    )]
    NotEnoughData { arm: Arm, users: u64 },
    #[error(
        "not enough information: every user in the {arm} arm has the same value (a rate of 0% or \
         100%, or a constant mean), so the uncertainty of the lift cannot be estimated"
    )]
    ArmWithoutVariance { arm: Arm },
    #[error("zero variance: the standard error of the lift is zero")]
    ZeroVariance,
    #[error("relative lift undefined: the control mean is zero")]
    ZeroControlMean,
    #[error("values out of floating-point range")]
    Overflow,
}

/// "1 user", "0 users": `NotEnoughData` is mostly read with 0 or 1 (the README tour shows it).
fn plural_s(n: &u64) -> &'static str {
    if *n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_enough_data_counts_users_in_words() {
        let message = |users| {
            Unavailable::NotEnoughData {
                arm: Arm::Control,
                users,
            }
            .to_string()
        };
        assert_eq!(
            message(1),
            "not enough data: the control arm has 1 user, at least 2 are needed"
        );
        assert!(message(0).contains("has 0 users,"), "{}", message(0));
    }
}
