//! A/A and A/B simulations through the real counting and analysis path, in-process: each simulated
//! experiment counts its users with `bunting_experiments::ExperimentTotals` (`expose` at the first
//! exposure, `track` per purchase, as a shard does) and is analysed by
//! `bunting_node::service::experiment_results::results`, the function behind `GetExperimentResults`.
//!
//! Asserted (and printed, with `--nocapture`):
//! - A/A (both arms convert at 10%): Welch's fixed-horizon p-value rejects at alpha = 0.05 at a
//!   rate inside the 99.9% binomial band of `SIMULATIONS` trials at 5%, for the conversion and
//!   the (skewed, mostly-zero) revenue metric; the sequential p-value rejects no more often
//!   (it is conservative at one look); Holm over both metrics (on the sequential decision
//!   p-values) keeps the family-wise rate within the band too; the SRM check almost never fires.
//! - Peeking (the same A/A runs looked at after every tenth of their users): stopping at the first
//!   look where Welch rejects inflates the false-positive rate well past alpha, while stopping at
//!   the first sequential rejection stays within the band. This is why results decide on the
//!   sequential p-value.
//! - A/B (10% against 12%): the difference is detected far more often than alpha.
//!
//! Deterministic: a seeded splitmix64, no dependency. Sized to run in seconds in a debug build.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bunting_experiments::{
    Experiment, ExperimentId, ExperimentTotals, Metric, MetricKind, MetricName, UserExposure,
};
use bunting_node::service::experiment_results::results;
use bunting_proto::bunting::v1 as pb;

/// Simulated experiments per scenario.
const SIMULATIONS: u64 = 2_000;
/// Users per simulated experiment (both arms; each user's arm is a fair coin, as a 50/50 flag).
/// 5,000 is `SequentialTuning::DEFAULT`, the size the sequential analysis is tuned for, and
/// gives 10% vs 12% a fixed-horizon power of about 60% (about 20% sequentially: the price of
/// being allowed to look at any time).
const USERS: u64 = 5_000;
/// Looks per experiment in the peeking scenario (after every `USERS / LOOKS` users).
const LOOKS: u64 = 10;
const ALPHA: f64 = 0.05;
const CONTROL_RATE: f64 = 0.10;

/// splitmix64: tiny, seeded, and good enough for Monte Carlo of this size.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn experiment() -> Experiment {
    let metric = |name: &str, kind| Metric {
        name: MetricName::new(name).unwrap(),
        event: "purchase".into(),
        kind,
    };
    Experiment::draft(
        ExperimentId::new("aa").unwrap(),
        "default",
        "checkout",
        ["control".to_owned(), "treatment".to_owned()],
        "control",
        vec![
            metric("purchased", MetricKind::Conversion),
            metric("revenue", MetricKind::Mean),
        ],
    )
    .unwrap()
}

/// What one analysis said about the absolute lift of each metric.
#[derive(Debug, Clone, Copy)]
struct Look {
    /// Welch's fixed-horizon p-value, per metric.
    fixed: [f64; 2],
    /// The always-valid p-value, per metric.
    sequential: [f64; 2],
    /// The Holm-corrected decision p-value, per metric.
    holm: [f64; 2],
    srm: f64,
}

fn analyse(experiment: &Experiment, totals: &ExperimentTotals) -> Look {
    let r = results(experiment, totals, pb::Experiment::default());
    assert!(r.sequential, "results decide on the sequential analysis");
    let lift = |m: usize| {
        let arms = &r.metrics[m].arms;
        assert_eq!(arms[1].arm, "treatment");
        let lift = arms[1]
            .comparison
            .as_ref()
            .unwrap()
            .absolute
            .clone()
            .unwrap();
        assert!(lift.unavailable.is_empty(), "{}", lift.unavailable);
        lift
    };
    let (a, b) = (lift(0), lift(1));
    Look {
        fixed: [a.p_value, b.p_value],
        sequential: [a.sequential_p_value.unwrap(), b.sequential_p_value.unwrap()],
        holm: [a.holm_p_value.unwrap(), b.holm_p_value.unwrap()],
        srm: r.srm_p_value.unwrap(),
    }
}

/// One simulated experiment: `USERS` users, each exposed once to a fair coin's arm and
/// purchasing (once, a skewed amount) with their arm's rate; analysed after every look.
fn simulate(experiment: &Experiment, treatment_rate: f64, rng: &mut SplitMix64) -> Vec<Look> {
    let mut totals = ExperimentTotals::default();
    let mut looks = Vec::with_capacity(LOOKS as usize);
    for user in 1..=USERS {
        let arm = if rng.next_f64() < 0.5 {
            "control"
        } else {
            "treatment"
        };
        let mut record = UserExposure::new(arm, 0);
        totals.expose(arm);
        let rate = if arm == "treatment" {
            treatment_rate
        } else {
            CONTROL_RATE
        };
        if rng.next_f64() < rate {
            // Exponential with mean 25: revenue is skewed, as it is.
            let value = -25.0 * (1.0 - rng.next_f64()).ln();
            totals
                .track(experiment, &mut record, "purchase", value)
                .unwrap();
        }
        if user % (USERS / LOOKS) == 0 {
            looks.push(analyse(experiment, &totals));
        }
    }
    looks
}

/// The central `level` interval of Binomial(n, p), as rates: the smallest and largest counts
/// with at most (1 - level) / 2 of the probability beyond each. Exact: the pmf by recurrence
/// (0.95^2000 ≈ 1e-45 is still a normal f64).
fn binomial_band(n: u64, p: f64, level: f64) -> (f64, f64) {
    let tail = (1.0 - level) / 2.0;
    let mut pmf = (1.0 - p).powf(n as f64);
    let mut cdf = 0.0;
    let (mut lower, mut upper) = (None, None);
    for k in 0..=n {
        // P(X < k) = cdf before adding pmf(k).
        if lower.is_none() && cdf + pmf > tail {
            lower = Some(k);
        }
        cdf += pmf;
        if upper.is_none() && 1.0 - cdf <= tail {
            upper = Some(k);
        }
        pmf *= (n - k) as f64 / (k + 1) as f64 * p / (1.0 - p);
    }
    (
        lower.unwrap() as f64 / n as f64,
        upper.unwrap() as f64 / n as f64,
    )
}

#[derive(Debug, Default)]
struct Tally {
    fixed: [u64; 2],
    sequential: [u64; 2],
    holm_any: u64,
    srm_alarms: u64,
    peeking_fixed: u64,
    peeking_sequential: u64,
}

impl Tally {
    fn add(&mut self, looks: &[Look]) {
        let last = looks.last().unwrap();
        for m in 0..2 {
            self.fixed[m] += u64::from(last.fixed[m] < ALPHA);
            self.sequential[m] += u64::from(last.sequential[m] < ALPHA);
        }
        self.holm_any += u64::from(last.holm.iter().any(|p| *p < ALPHA));
        self.srm_alarms += u64::from(last.srm < 0.001);
        // Peeking on the conversion metric: stop at the first look that rejects.
        self.peeking_fixed += u64::from(looks.iter().any(|l| l.fixed[0] < ALPHA));
        self.peeking_sequential += u64::from(looks.iter().any(|l| l.sequential[0] < ALPHA));
    }
}

fn run(treatment_rate: f64, seed: u64) -> Tally {
    let experiment = experiment();
    let mut rng = SplitMix64(seed);
    let mut tally = Tally::default();
    for _ in 0..SIMULATIONS {
        tally.add(&simulate(&experiment, treatment_rate, &mut rng));
    }
    tally
}

fn rate(count: u64) -> f64 {
    count as f64 / SIMULATIONS as f64
}

#[test]
fn the_false_positive_rate_is_alpha_and_a_real_difference_is_found() {
    // The two scenarios are independent: one thread each (the machine has two cores).
    let aa = std::thread::spawn(|| run(CONTROL_RATE, 0x5eed_0001));
    let ab = run(0.12, 0x5eed_0002);
    let aa = aa.join().unwrap();
    let (lower, upper) = binomial_band(SIMULATIONS, ALPHA, 0.999);
    println!(
        "A/A, {SIMULATIONS} experiments of {USERS} users at {:.0}%: 99.9% band for a 5% rate \
         {:.2}%..{:.2}%",
        CONTROL_RATE * 100.0,
        lower * 100.0,
        upper * 100.0
    );
    println!(
        "  Welch rejects: purchased {:.2}%, revenue {:.2}%; sequential rejects: purchased \
         {:.2}%, revenue {:.2}%; Holm, either metric: {:.2}%; SRM p < 0.001: {:.2}%",
        rate(aa.fixed[0]) * 100.0,
        rate(aa.fixed[1]) * 100.0,
        rate(aa.sequential[0]) * 100.0,
        rate(aa.sequential[1]) * 100.0,
        rate(aa.holm_any) * 100.0,
        rate(aa.srm_alarms) * 100.0,
    );
    println!(
        "  peeking at {LOOKS} looks (purchased): Welch ever rejects {:.2}%, sequential ever \
         rejects {:.2}%",
        rate(aa.peeking_fixed) * 100.0,
        rate(aa.peeking_sequential) * 100.0,
    );
    println!(
        "A/B, 10% vs 12%: Welch detects {:.2}%, sequential detects {:.2}% (revenue: {:.2}%, \
         {:.2}%)",
        rate(ab.fixed[0]) * 100.0,
        rate(ab.sequential[0]) * 100.0,
        rate(ab.fixed[1]) * 100.0,
        rate(ab.sequential[1]) * 100.0,
    );

    let in_band = |r: f64| (lower..=upper).contains(&r);
    for (metric, count) in ["purchased", "revenue"].iter().zip(aa.fixed) {
        assert!(
            in_band(rate(count)),
            "A/A {metric}: Welch's false-positive rate {} is outside {lower}..{upper}",
            rate(count)
        );
    }
    for (metric, count) in ["purchased", "revenue"].iter().zip(aa.sequential) {
        assert!(
            rate(count) <= upper,
            "A/A {metric}: the sequential false-positive rate {} exceeds {upper}",
            rate(count)
        );
    }
    // Holm bounds the family-wise rate of the decision (sequential) p-values by alpha.
    assert!(
        rate(aa.holm_any) <= upper,
        "Holm family-wise {}",
        rate(aa.holm_any)
    );
    // A fair coin: P(SRM p < 0.001) = 0.1%, i.e. about 2 of 2,000.
    assert!(aa.srm_alarms <= 10, "SRM fired {} times", aa.srm_alarms);
    assert!(
        rate(aa.peeking_fixed) > 2.0 * upper,
        "peeking with Welch should inflate false positives: {}",
        rate(aa.peeking_fixed)
    );
    assert!(
        rate(aa.peeking_sequential) <= upper,
        "the sequential p-value must stay valid under peeking: {}",
        rate(aa.peeking_sequential)
    );
    assert!(
        rate(ab.fixed[0]) > 0.5 && rate(ab.sequential[0]) > 10.0 * rate(aa.sequential[0]).max(0.01),
        "10% vs 12% over {USERS} users: power {} (sequential {})",
        rate(ab.fixed[0]),
        rate(ab.sequential[0])
    );
    assert!(rate(ab.fixed[0]) > 5.0 * rate(aa.fixed[0]));
}

#[test]
fn the_binomial_band_is_right() {
    // Binomial(2000, 0.05): mean 100, sd 9.75; the 99.9% band is about 100 ± 3.29 sd.
    let (lower, upper) = binomial_band(2000, 0.05, 0.999);
    assert!((0.033..=0.036).contains(&lower), "{lower}");
    assert!((0.065..=0.067).contains(&upper), "{upper}");
}
