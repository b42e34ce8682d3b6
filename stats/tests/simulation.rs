//! Seeded simulations of the tests' error rates: each could fail if the statistics were wrong
//! (a one-sided p-value, normal instead of Student's t at small samples, pooled instead of Welch
//! variances, a confidence sequence that is not one).

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bunting_stats::{
    Alpha, LiftKind, MeanStats, ProportionStats, SequentialTuning, sequential_test, welch_t_test,
};
use common::SplitMix64;

const EXPERIMENTS: u64 = 2000;

/// The acceptance band for a count of `events` in `trials` at true rate `rate`: ±3.5 binomial
/// standard deviations (a false failure about once in 2,000 seeds).
fn binomial_band(trials: u64, rate: f64) -> (f64, f64) {
    let mean = trials as f64 * rate;
    let sd = (trials as f64 * rate * (1.0 - rate)).sqrt();
    (mean - 3.5 * sd, mean + 3.5 * sd)
}

fn normal_arm(rng: &mut SplitMix64, n: u64, mean: f64, sd: f64) -> MeanStats {
    MeanStats::from_values((0..n).map(|_| mean + sd * rng.normal())).unwrap()
}

/// A/A tests with small, unequal arms and unequal variances: the case Welch's correction exists
/// for. Twelve users with sd 1 against six with sd 3 gives about 5.6 degrees of freedom, where
/// the normal approximation would reject about twice as often as it should (the second check
/// shows the band is tight enough to tell).
#[test]
fn welch_false_positive_rate_is_alpha_with_unequal_small_arms() {
    let alpha = Alpha::FIVE_PERCENT;
    let mut rng = SplitMix64::new(0x5EED_A11A);
    let mut welch_rejections = 0u64;
    let mut normal_rejections = 0u64;
    for _ in 0..EXPERIMENTS {
        let control = normal_arm(&mut rng, 12, 10.0, 1.0);
        let treatment = normal_arm(&mut rng, 6, 10.0, 3.0);
        let test = welch_t_test(&control, &treatment, LiftKind::Absolute, alpha).unwrap();
        if test.p_value < alpha.get() {
            welch_rejections += 1;
        }
        if test.t_statistic.abs() > 1.959964 {
            normal_rejections += 1;
        }
    }
    let (low, high) = binomial_band(EXPERIMENTS, alpha.get());
    let rate = welch_rejections as f64;
    assert!(
        (low..=high).contains(&rate),
        "Welch rejected {welch_rejections} of {EXPERIMENTS} A/A tests; expected {low:.0}..{high:.0}"
    );
    assert!(
        normal_rejections as f64 > high,
        "the normal approximation rejected {normal_rejections}: the band cannot tell it from t"
    );
}

/// A/A tests of a conversion rate at realistic sizes.
#[test]
fn welch_false_positive_rate_is_alpha_for_conversion_rates() {
    let alpha = Alpha::FIVE_PERCENT;
    let mut rng = SplitMix64::new(0xC0_4E45);
    let mut rejections = 0u64;
    let conversion = |rng: &mut SplitMix64, n: u64| {
        let mut arm = ProportionStats::EMPTY;
        for _ in 0..n {
            arm.add(rng.bernoulli(0.1)).unwrap();
        }
        arm
    };
    for _ in 0..EXPERIMENTS {
        let control = conversion(&mut rng, 400);
        let treatment = conversion(&mut rng, 600);
        let test = welch_t_test(&control, &treatment, LiftKind::Relative, alpha).unwrap();
        if test.p_value < alpha.get() {
            rejections += 1;
        }
    }
    let (low, high) = binomial_band(EXPERIMENTS, alpha.get());
    assert!(
        (low..=high).contains(&(rejections as f64)),
        "rejected {rejections} of {EXPERIMENTS} A/A tests; expected {low:.0}..{high:.0}"
    );
}

/// The test has power: a real lift of half a standard deviation with 100 users per arm is found
/// about 94% of the time (a test that never rejected would pass the A/A checks' lower bound
/// only by failing this one).
#[test]
fn welch_detects_a_real_lift() {
    let alpha = Alpha::FIVE_PERCENT;
    let mut rng = SplitMix64::new(0xB0057);
    let mut rejections = 0u64;
    for _ in 0..EXPERIMENTS / 4 {
        let control = normal_arm(&mut rng, 100, 0.0, 1.0);
        let treatment = normal_arm(&mut rng, 100, 0.5, 1.0);
        let test = welch_t_test(&control, &treatment, LiftKind::Absolute, alpha).unwrap();
        if test.p_value < alpha.get() && test.lift.estimate > 0.0 {
            rejections += 1;
        }
    }
    let (low, high) = binomial_band(EXPERIMENTS / 4, 0.94);
    assert!(
        (low..=high).contains(&(rejections as f64)),
        "found the lift {rejections} times of {}; expected {low:.0}..{high:.0}",
        EXPERIMENTS / 4
    );
}

fn sequential_width(n_per_arm: u64) -> (f64, f64) {
    // Two arms of exactly the given size, sd 1 each: sums chosen for mean 0 and variance 1.
    let n = n_per_arm as i64;
    let arm = MeanStats::new(n, 0.0, (n - 1) as f64).unwrap();
    let shifted = MeanStats::new(n, 0.1 * n as f64, (n - 1) as f64 + 0.01 * n as f64).unwrap();
    let alpha = Alpha::FIVE_PERCENT;
    let fixed = welch_t_test(&arm, &shifted, LiftKind::Absolute, alpha).unwrap();
    let sequential = sequential_test(
        &arm,
        &shifted,
        LiftKind::Absolute,
        alpha,
        SequentialTuning::DEFAULT,
    )
    .unwrap();
    (
        fixed.confidence_interval.width(),
        sequential.interval.width(),
    )
}

#[test]
fn confidence_sequence_is_wider_than_the_fixed_interval_and_converges() {
    let sizes = [
        2_u64,
        5,
        10,
        50,
        100,
        500,
        1_000,
        2_500,
        5_000,
        10_000,
        100_000,
        1_000_000,
        100_000_000,
    ];
    let mut previous = f64::INFINITY;
    for n in sizes {
        let (fixed, sequential) = sequential_width(n);
        assert!(sequential > fixed, "n = {n}: {sequential} <= {fixed}");
        assert!(
            sequential < previous,
            "n = {n}: not narrower than at fewer users"
        );
        previous = sequential;
    }
    // Converges to zero, only a log factor slower than 1/√n: at 10⁸ users per arm (sd 1) the
    // sequence is about 0.0012 wide, 2.2 times the fixed interval, not orders of magnitude more.
    let (fixed, sequential) = sequential_width(100_000_000);
    assert!(sequential < 2e-3, "{sequential}");
    assert!(sequential / fixed < 3.0, "{}", sequential / fixed);
    // Tightest relative to the fixed interval near the tuning parameter (5,000 users in all).
    let ratio = |n| {
        let (fixed, sequential) = sequential_width(n);
        sequential / fixed
    };
    assert!(ratio(2_500) < ratio(250));
    assert!(ratio(2_500) < ratio(250_000));
}

/// Coverage under continuous monitoring: 400 experiments with a true lift of 0.1 sd, looked at
/// after every 100 users per arm up to 5,000. The confidence sequence must contain the true lift
/// at every look in at least 95% of experiments; the fixed-horizon interval, looked at the same
/// way, must not (that is the peeking problem the sequence exists for).
#[test]
fn confidence_sequence_covers_at_every_look() {
    const STREAMS: u64 = 400;
    const LOOKS: u64 = 50;
    const USERS_PER_LOOK: u64 = 100;
    let truth = 0.1;
    let alpha = Alpha::FIVE_PERCENT;
    let tuning = SequentialTuning::DEFAULT;
    let mut rng = SplitMix64::new(0x5E9_0E4CE);
    let mut sequence_missed = 0u64;
    let mut fixed_missed = 0u64;
    let mut final_fixed_missed = 0u64;
    for _ in 0..STREAMS {
        let mut control = MeanStats::EMPTY;
        let mut treatment = MeanStats::EMPTY;
        let (mut sequence_miss, mut fixed_miss) = (false, false);
        for look in 0..LOOKS {
            for _ in 0..USERS_PER_LOOK {
                control.add(rng.normal()).unwrap();
                treatment.add(truth + rng.normal()).unwrap();
            }
            let sequence =
                sequential_test(&control, &treatment, LiftKind::Absolute, alpha, tuning).unwrap();
            let fixed = welch_t_test(&control, &treatment, LiftKind::Absolute, alpha).unwrap();
            sequence_miss |= !sequence.interval.contains(truth);
            fixed_miss |= !fixed.confidence_interval.contains(truth);
            if look == LOOKS - 1 && !fixed.confidence_interval.contains(truth) {
                final_fixed_missed += 1;
            }
        }
        sequence_missed += u64::from(sequence_miss);
        fixed_missed += u64::from(fixed_miss);
    }
    let (_, high) = binomial_band(STREAMS, alpha.get());
    assert!(
        (sequence_missed as f64) <= high,
        "the sequence missed the truth at some look in {sequence_missed} of {STREAMS}"
    );
    // Looked at once, the fixed interval is fine; looked at 50 times, it is not.
    let (low, high) = binomial_band(STREAMS, alpha.get());
    assert!((low.max(0.0)..=high).contains(&(final_fixed_missed as f64)));
    assert!(
        fixed_missed as f64 > 3.0 * high,
        "peeking at the fixed interval missed in only {fixed_missed} of {STREAMS}"
    );
}
