//! Every method checked against GrowthBook's gbstats 0.8.0, the oracle, on random counts: Welch's
//! two-sided and one-sided tests, the sequential test, and the Bayesian posterior under a flat
//! and a proper Gaussian prior (mean, standard deviation, chance to beat control, credible
//! interval, risk), for conversion and mean metrics, absolute and relative lifts, random alpha
//! and tuning. Degenerate arms (0% or 100% conversion, constant values) are mixed in: gbstats
//! refuses exactly the cases this crate does.
//!
//! gbstats runs in the virtualenv `scripts/python-env` makes (target/pyenv, `gbstats==0.8.0` from
//! tests/python/requirements.txt), or in `$BUNTING_PYTHON`. Without it this test fails: an oracle
//! that is silently skipped checks nothing.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use bunting_stats::{
    Alpha, AnalysisSettings, ArmStatistic, DecisionRule, GaussianPrior, LiftKind, LiftResult,
    MeanStats, MetricComparison, ProportionStats, SequentialTuning, Sides, compare,
};
use common::SplitMix64;
use serde_json::{Value, json};

const CASES: usize = 600;

/// Agreement required: the figures are the same closed forms, evaluated by statrs here and scipy
/// there, so they agree to rounding; 1e-9 relative to the figure's size (absolute below 1).
const TOLERANCE: f64 = 1e-9;

fn python() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("BUNTING_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/pyenv/bin/python"));
    assert!(
        python.exists(),
        "no Python interpreter at {} for the gbstats oracle. Run scripts/python-env (it makes \
         target/pyenv with gbstats 0.8.0), or set BUNTING_PYTHON",
        python.display()
    );
    python
}

/// gbstats' answers to `cases`, one per case.
fn oracle(cases: &[Value]) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/gbstats_oracle.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(cases).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The script reads everything before writing, so writing first cannot deadlock.
    stdin.write_all(&input).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "gbstats oracle failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

enum Arms {
    Proportion(ProportionStats, ProportionStats),
    Mean(MeanStats, MeanStats),
}

struct Case {
    arms: Arms,
    kind: LiftKind,
    alpha: Alpha,
    tuning: SequentialTuning,
    prior: Option<GaussianPrior>,
}

fn random_proportion(rng: &mut SplitMix64) -> ProportionStats {
    let n = rng.int(2, 5000);
    // One arm in ten at 0% or 100%: those must be refused alike.
    let successes = match rng.int(0, 19) {
        0 => 0,
        1 => n,
        _ => rng.int(1, n - 1),
    };
    ProportionStats::new(n as i64, successes as i64).unwrap()
}

fn random_mean(rng: &mut SplitMix64) -> MeanStats {
    let n = rng.int(2, 200);
    // Positive values, as Bunting's per-user sums are. One arm in twenty has one value, an
    // integer: its sums are exact, so gbstats too sees a variance of exactly 0. (With a value
    // like 31.2 the sums keep a rounding residue, which gbstats takes for a variance of about
    // 1e-12 and a p-value of 0; `MeanStats::variance` treats a residue within rounding of the sum
    // of squares as the zero it is.)
    if rng.int(0, 19) == 0 {
        let value = rng.int(1, 50) as f64;
        return MeanStats::from_values((0..n).map(|_| value)).unwrap();
    }
    let centre = rng.range(1.0, 50.0);
    let spread = rng.range(0.1, 20.0);
    MeanStats::from_values((0..n).map(|_| (centre + spread * rng.normal()).abs())).unwrap()
}

fn random_case(rng: &mut SplitMix64, i: usize) -> Case {
    let arms = if i.is_multiple_of(2) {
        Arms::Proportion(random_proportion(rng), random_proportion(rng))
    } else {
        Arms::Mean(random_mean(rng), random_mean(rng))
    };
    Case {
        arms,
        kind: if rng.bernoulli(0.5) {
            LiftKind::Relative
        } else {
            LiftKind::Absolute
        },
        alpha: Alpha::new(rng.range(0.005, 0.3)).unwrap(),
        tuning: SequentialTuning::new(rng.range(100.0, 50_000.0)).unwrap(),
        prior: rng
            .bernoulli(0.5)
            .then(|| GaussianPrior::new(rng.range(-0.3, 0.3), rng.range(0.001, 1.0)).unwrap()),
    }
}

fn arm_json(arm: &Arms, control: bool) -> Value {
    match arm {
        Arms::Proportion(c, t) => {
            let a = if control { c } else { t };
            json!({"n": a.n(), "sum": a.successes()})
        }
        Arms::Mean(c, t) => {
            let a = if control { c } else { t };
            json!({"n": a.n(), "sum": a.sum(), "sum_squares": a.sum_squares()})
        }
    }
}

fn case_json(case: &Case) -> Value {
    json!({
        "control": arm_json(&case.arms, true),
        "treatment": arm_json(&case.arms, false),
        "lift": match case.kind {
            LiftKind::Absolute => "absolute",
            LiftKind::Relative => "relative",
        },
        "alpha": case.alpha.get(),
        "tuning": case.tuning.get(),
        "prior": case.prior.map(|p| json!({"mean": p.mean(), "variance": p.variance()})),
    })
}

fn analyse(case: &Case, rule: DecisionRule) -> Option<LiftResult> {
    fn run<S: ArmStatistic>(c: &S, t: &S, settings: AnalysisSettings) -> MetricComparison {
        compare(c, t, settings)
    }
    let settings = AnalysisSettings {
        alpha: case.alpha,
        rule,
    };
    let comparison = match &case.arms {
        Arms::Proportion(c, t) => run(c, t, settings),
        Arms::Mean(c, t) => run(c, t, settings),
    };
    match case.kind {
        LiftKind::Absolute => comparison.absolute.ok(),
        LiftKind::Relative => comparison.relative.ok(),
    }
}

struct Checker {
    checked: usize,
    worst: f64,
}

impl Checker {
    fn close(&mut self, label: &str, case: usize, got: f64, want: &Value) {
        let want = want
            .as_f64()
            .unwrap_or_else(|| panic!("{label}: no number in {want}"));
        let error = (got - want).abs() / (1.0 + want.abs());
        assert!(
            error <= TOLERANCE,
            "case {case} {label}: got {got:e}, gbstats {want:e} (error {error:e})"
        );
        self.checked += 1;
        self.worst = self.worst.max(error);
    }
}

#[test]
fn every_method_agrees_with_gbstats_on_random_counts() {
    let mut rng = SplitMix64::new(0x06B5_7A75);
    let cases: Vec<Case> = (0..CASES).map(|i| random_case(&mut rng, i)).collect();
    let answers = oracle(&cases.iter().map(case_json).collect::<Vec<_>>());
    assert_eq!(answers.len(), cases.len());
    let mut check = Checker {
        checked: 0,
        worst: 0.0,
    };
    let mut refused = 0;
    for (i, (case, want)) in cases.iter().zip(&answers).enumerate() {
        let two = analyse(case, DecisionRule::FixedHorizon(Sides::Two));
        // gbstats refuses a case (zero variance in either arm, a zero control mean) exactly when
        // this crate has no estimate for it.
        let refused_by_gbstats = want["two_sided"].get("error").is_some();
        assert_eq!(
            two.is_none(),
            refused_by_gbstats,
            "case {i} {}: ours {two:?}, gbstats {}",
            case_json(case),
            want["two_sided"]
        );
        let Some(two) = two else {
            refused += 1;
            for method in ["one_sided", "sequential", "bayesian"] {
                assert!(want[method].get("error").is_some(), "case {i} {method}");
            }
            continue;
        };
        let w = &want["two_sided"];
        check.close("two-sided p", i, two.p_value, &w["p_value"]);
        check.close(
            "two-sided lower",
            i,
            two.confidence_interval.lower(),
            &w["ci"][0],
        );
        check.close(
            "two-sided upper",
            i,
            two.confidence_interval.upper(),
            &w["ci"][1],
        );

        let one = analyse(case, DecisionRule::FixedHorizon(Sides::OneSided))
            .and_then(|l| l.one_sided)
            .unwrap();
        let w = &want["one_sided"];
        check.close("one-sided p", i, one.p_value, &w["p_value"]);
        check.close("one-sided lower", i, one.lower_bound, &w["ci"][0]);
        assert!(w["ci"][1].is_null(), "gbstats' upper end is infinite");

        let sequential = analyse(case, DecisionRule::Sequential(case.tuning))
            .and_then(|l| l.sequential)
            .unwrap();
        let w = &want["sequential"];
        check.close("sequential p", i, sequential.p_value, &w["p_value"]);
        check.close(
            "sequential lower",
            i,
            sequential.interval.lower(),
            &w["ci"][0],
        );
        check.close(
            "sequential upper",
            i,
            sequential.interval.upper(),
            &w["ci"][1],
        );

        let bayes = analyse(case, DecisionRule::Bayesian(case.prior)).unwrap();
        let w = &want["bayesian"];
        check.close("posterior mean", i, bayes.posterior_mean, &w["mean"]);
        check.close(
            "posterior sd",
            i,
            bayes.posterior_standard_deviation,
            &w["sd"],
        );
        check.close(
            "chance to beat control",
            i,
            bayes.chance_to_beat_control,
            &w["chance_to_win"],
        );
        check.close(
            "credible lower",
            i,
            bayes.credible_interval.lower(),
            &w["ci"][0],
        );
        check.close(
            "credible upper",
            i,
            bayes.credible_interval.upper(),
            &w["ci"][1],
        );
        check.close("risk of control", i, bayes.risk.control, &w["risk"][0]);
        check.close("risk of treatment", i, bayes.risk.treatment, &w["risk"][1]);
    }
    // Enough of each kind of case actually ran.
    assert!((20..=CASES / 3).contains(&refused), "{refused} refused");
    assert!(check.checked >= 15 * (CASES - CASES / 3));
    println!(
        "{} figures of {} cases ({refused} refused by both) agree with gbstats; worst error {:e}",
        check.checked, CASES, check.worst
    );
}
