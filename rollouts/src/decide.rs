//! The controller's judgement, as pure functions: the guardrails read from the two arms' totals
//! ([`judge_guardrails`]), then what to do about them now ([`decide`]). No clock, no I/O: the
//! loop in the node reads the state, the totals and the time, and carries out the action.

use bunting_experiments::{ArmTotals, MetricKind, MetricName};
use bunting_stats::{
    ArmStatistic, Interval, LiftKind, MeanStats, ProportionStats, SequentialTuning, sequential_test,
};
use serde::Serialize;

use crate::model::{BadDirection, Guardrail, RolloutSpec};
use crate::state::RolloutState;

/// One guardrail at one look: the released variant's relative lift over the baseline, its
/// always-valid interval, and what that says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailLook {
    pub metric: MetricName,
    pub bad: BadDirection,
    pub tolerance: f64,
    /// Relative lift (0.05 = released 5% higher); `None` without enough data.
    pub estimate: Option<f64>,
    /// `[lower, upper]` of the confidence sequence at the guardrail's level.
    pub interval: Option<(f64, f64)>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "snake_case")]
pub enum Verdict {
    /// The whole interval lies beyond the tolerated regression, in the bad direction.
    Regressed,
    /// The whole interval lies on the good side of the tolerated regression.
    Safe,
    /// The interval straddles the tolerated regression: keep watching.
    Inconclusive,
    /// No estimate yet (too few users, no variance), or counts the statistics refuse; the reason.
    NoEstimate(String),
}

/// Every guardrail of `spec`, judged on the baseline's and the released variant's totals.
pub fn judge_guardrails(
    spec: &RolloutSpec,
    baseline: &ArmTotals,
    released: &ArmTotals,
) -> Vec<GuardrailLook> {
    let alpha = spec.per_guardrail_alpha();
    spec.guardrails
        .iter()
        .map(|g| {
            let c = baseline
                .metrics
                .get(&g.metric.name)
                .copied()
                .unwrap_or_default();
            let t = released
                .metrics
                .get(&g.metric.name)
                .copied()
                .unwrap_or_default();
            let look = match g.metric.kind {
                MetricKind::Conversion => ProportionStats::new(
                    i64::try_from(baseline.exposed).unwrap_or(i64::MAX),
                    i64::try_from(c.converted).unwrap_or(i64::MAX),
                )
                .and_then(|cs| {
                    ProportionStats::new(
                        i64::try_from(released.exposed).unwrap_or(i64::MAX),
                        i64::try_from(t.converted).unwrap_or(i64::MAX),
                    )
                    .map(|ts| interval(&cs, &ts, alpha))
                }),
                MetricKind::Mean => MeanStats::new(
                    i64::try_from(baseline.exposed).unwrap_or(i64::MAX),
                    c.sum,
                    c.sum_squares,
                )
                .and_then(|cs| {
                    MeanStats::new(
                        i64::try_from(released.exposed).unwrap_or(i64::MAX),
                        t.sum,
                        t.sum_squares,
                    )
                    .map(|ts| interval(&cs, &ts, alpha))
                }),
            };
            match look {
                Ok(Ok((estimate, interval))) => GuardrailLook {
                    metric: g.metric.name.clone(),
                    bad: g.bad,
                    tolerance: g.tolerance,
                    estimate: Some(estimate),
                    interval: Some((interval.lower(), interval.upper())),
                    verdict: verdict(g, interval),
                },
                Ok(Err(reason)) => no_estimate(g, reason),
                Err(refused) => no_estimate(g, refused.to_string()),
            }
        })
        .collect()
}

fn interval<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    alpha: bunting_stats::Alpha,
) -> Result<(f64, Interval), String> {
    sequential_test(
        control,
        treatment,
        LiftKind::Relative,
        alpha,
        SequentialTuning::DEFAULT,
    )
    .map(|cs| (cs.lift.estimate, cs.interval))
    .map_err(|reason| reason.to_string())
}

fn no_estimate(g: &Guardrail, reason: String) -> GuardrailLook {
    GuardrailLook {
        metric: g.metric.name.clone(),
        bad: g.bad,
        tolerance: g.tolerance,
        estimate: None,
        interval: None,
        verdict: Verdict::NoEstimate(reason),
    }
}

/// The verdict of an interval on the relative lift against a guardrail's tolerance `t`: with a
/// drop as bad, a regression is an interval wholly below `-t`; with a rise as bad, wholly above
/// `t`. Only one side can roll back, so a neutral release is rolled back by one guardrail with
/// chance at most half its level.
pub fn verdict(g: &Guardrail, interval: Interval) -> Verdict {
    let t = g.tolerance;
    match g.bad {
        BadDirection::Decrease if interval.upper() < -t => Verdict::Regressed,
        BadDirection::Decrease if interval.lower() >= -t => Verdict::Safe,
        BadDirection::Increase if interval.lower() > t => Verdict::Regressed,
        BadDirection::Increase if interval.upper() <= t => Verdict::Safe,
        _ => Verdict::Inconclusive,
    }
}

/// What the controller does at one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Hold {
        why: Hold,
    },
    /// Serve step `to` (the flag write, then the state change).
    Advance {
        to: usize,
    },
    /// Restore the pre-rollout definition: `metric` regressed.
    RollBack {
        metric: MetricName,
        reason: String,
    },
    /// The last step held its time and users: make the released variant the default.
    Complete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "hold", rename_all = "snake_case")]
pub enum Hold {
    /// Paused, or finished: the controller leaves it alone.
    NotRunning,
    /// The step has not been served for its minimum duration yet.
    Duration { remaining_ms: i64 },
    /// Fewer users than the step asks for have seen the released variant.
    Users { seen: u64, needed: u64 },
    /// The stored step is not in the ramp (a hand-edited row): nothing is done until an
    /// operator aborts.
    UnknownStep { step: usize },
}

/// The action at `now` (Unix ms) for a rollout in `state`, given its guardrails' looks and how
/// many users have seen the released variant since the rollout began.
///
/// A regression rolls back whatever the step's clock says: guardrails are watched continuously,
/// which the confidence sequence allows. Otherwise a step is left once it has been served for
/// its minimum duration and seen by its minimum number of users; leaving the last is completing.
pub fn decide(
    spec: &RolloutSpec,
    state: &RolloutState,
    looks: &[GuardrailLook],
    released_users: u64,
    now: i64,
) -> Action {
    let RolloutState::Running {
        step,
        step_started_at,
    } = *state
    else {
        return Action::Hold {
            why: Hold::NotRunning,
        };
    };
    if let Some(look) = looks.iter().find(|l| l.verdict == Verdict::Regressed) {
        let (lower, upper) = look.interval.unwrap_or((f64::NAN, f64::NAN));
        return Action::RollBack {
            metric: look.metric.clone(),
            reason: format!(
                "guardrail {} regressed: relative lift {:.4} with interval [{lower:.4}, \
                 {upper:.4}] lies beyond the tolerated {} of {}",
                look.metric,
                look.estimate.unwrap_or(f64::NAN),
                look.bad.as_str(),
                look.tolerance,
            ),
        };
    }
    let Some(ramp_step) = spec.ramp.get(step) else {
        return Action::Hold {
            why: Hold::UnknownStep { step },
        };
    };
    let min_ms =
        i64::try_from(ramp_step.min_duration_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let elapsed = now.saturating_sub(step_started_at);
    if elapsed < min_ms {
        return Action::Hold {
            why: Hold::Duration {
                remaining_ms: min_ms - elapsed,
            },
        };
    }
    if released_users < ramp_step.min_users {
        return Action::Hold {
            why: Hold::Users {
                seen: released_users,
                needed: ramp_step.min_users,
            },
        };
    }
    if spec.ramp.is_last(step) {
        Action::Complete
    } else {
        Action::Advance { to: step + 1 }
    }
}

#[cfg(test)]
mod tests {
    use bunting_experiments::{MetricKind, MetricTotals};

    use super::*;
    use crate::model::RolloutInput;
    use crate::state::PauseCause;
    use crate::testing::{guardrail, input, spec};

    fn arm(exposed: u64, name: &str, totals: MetricTotals) -> ArmTotals {
        ArmTotals {
            exposed,
            metrics: [(MetricName::new(name).unwrap(), totals)].into(),
        }
    }

    fn conversions(exposed: u64, converted: u64) -> ArmTotals {
        arm(
            exposed,
            "purchase",
            MetricTotals {
                converted,
                ..Default::default()
            },
        )
    }

    fn with_guardrail(bad: BadDirection, tolerance: f64) -> RolloutSpec {
        let mut i: RolloutInput = input();
        i.guardrails = vec![guardrail(
            "purchase",
            MetricKind::Conversion,
            bad,
            tolerance,
        )];
        RolloutSpec::new(i).unwrap()
    }

    #[test]
    fn verdicts_follow_the_interval_and_the_bad_direction() {
        // (bad direction, tolerance, baseline (users, converted), released, verdict)
        let cases = [
            // 10% vs 5% on 20,000 users each: a clear drop.
            (
                BadDirection::Decrease,
                0.0,
                (20_000, 2_000),
                (20_000, 1_000),
                "regressed",
            ),
            (
                BadDirection::Increase,
                0.0,
                (20_000, 2_000),
                (20_000, 1_000),
                "safe",
            ),
            // The same data with 60% tolerated: a halving is within it.
            (
                BadDirection::Decrease,
                0.6,
                (20_000, 2_000),
                (20_000, 1_000),
                "safe",
            ),
            (
                BadDirection::Increase,
                0.0,
                (20_000, 1_000),
                (20_000, 2_000),
                "regressed",
            ),
            // 10% vs 9.8%: no evidence either way.
            (
                BadDirection::Decrease,
                0.0,
                (2_000, 200),
                (2_000, 196),
                "inconclusive",
            ),
            (BadDirection::Decrease, 0.0, (1, 1), (1, 0), "no_estimate"),
            (
                BadDirection::Decrease,
                0.0,
                (100, 0),
                (100, 0),
                "no_estimate",
            ),
            // More conversions than users: counts the statistics refuse are no estimate, not a panic.
            (
                BadDirection::Decrease,
                0.0,
                (10, 20),
                (10, 1),
                "no_estimate",
            ),
        ];
        for (bad, tolerance, (cn, cc), (tn, tc), expected) in cases {
            let spec = with_guardrail(bad, tolerance);
            let looks = judge_guardrails(&spec, &conversions(cn, cc), &conversions(tn, tc));
            let got = serde_json::to_value(&looks[0].verdict).unwrap()["verdict"].clone();
            assert_eq!(
                got, expected,
                "{bad:?} {tolerance} {cn}/{cc} vs {tn}/{tc}: {looks:?}"
            );
            assert_eq!(looks[0].estimate.is_some(), expected != "no_estimate");
        }
    }

    #[test]
    fn a_mean_guardrail_reads_the_sums() {
        let mut i = input();
        i.guardrails = vec![guardrail(
            "latency",
            MetricKind::Mean,
            BadDirection::Increase,
            0.05,
        )];
        let spec = RolloutSpec::new(i).unwrap();
        // Mean 100 (sd 10) against mean 130 (sd 10), 5,000 users each.
        let totals = |mean: f64| {
            let n = 5_000.0;
            MetricTotals {
                converted: 0,
                sum: mean * n,
                sum_squares: n * (mean * mean + 100.0),
            }
        };
        let looks = judge_guardrails(
            &spec,
            &arm(5_000, "latency", totals(100.0)),
            &arm(5_000, "latency", totals(130.0)),
        );
        assert_eq!(looks[0].verdict, Verdict::Regressed);
        assert!((looks[0].estimate.unwrap() - 0.3).abs() < 1e-9);
    }

    fn look(verdict: Verdict) -> GuardrailLook {
        GuardrailLook {
            metric: MetricName::new("purchase").unwrap(),
            bad: BadDirection::Decrease,
            tolerance: 0.0,
            estimate: Some(-0.5),
            interval: Some((-0.7, -0.3)),
            verdict,
        }
    }

    #[test]
    fn decisions() {
        let spec = spec(); // 10 → 50 → 100, 60 s and 100 users each
        let running = |step, started| RolloutState::Running {
            step,
            step_started_at: started,
        };
        let ok = [look(Verdict::Inconclusive)];
        let bad = [look(Verdict::Safe), look(Verdict::Regressed)];
        let none: [GuardrailLook; 0] = [];
        // (state, looks, users who saw the released variant, now, expected)
        type Case<'a> = (&'a str, RolloutState, &'a [GuardrailLook], u64, i64, Action);
        let cases: Vec<Case<'_>> = vec![
            ("too early", running(0, 1_000), &ok, 500, 30_000, Action::Hold { why: Hold::Duration { remaining_ms: 31_000 } }),
            ("too few users", running(0, 0), &ok, 99, 60_000, Action::Hold { why: Hold::Users { seen: 99, needed: 100 } }),
            ("ready", running(0, 0), &ok, 100, 60_000, Action::Advance { to: 1 }),
            ("ready without guardrails", running(1, 0), &none, 100, 60_000, Action::Advance { to: 2 }),
            ("last step ready", running(2, 0), &ok, 100, 60_000, Action::Complete),
            ("last step early", running(2, 0), &ok, 100, 59_999, Action::Hold { why: Hold::Duration { remaining_ms: 1 } }),
            (
                "regression before the step's time",
                running(0, 0),
                &bad,
                1,
                1,
                Action::RollBack {
                    metric: MetricName::new("purchase").unwrap(),
                    reason: "guardrail purchase regressed: relative lift -0.5000 with interval [-0.7000, -0.3000] lies beyond the tolerated decrease of 0".into(),
                },
            ),
            ("paused", RolloutState::Paused { step: 0, paused_at: 0, cause: PauseCause::Requested }, &bad, 100, 60_000, Action::Hold { why: Hold::NotRunning }),
            ("completed", RolloutState::Completed { at: 0 }, &ok, 100, 60_000, Action::Hold { why: Hold::NotRunning }),
            ("a step past the ramp", running(7, 0), &ok, 100, 60_000, Action::Hold { why: Hold::UnknownStep { step: 7 } }),
            ("a clock that went back", running(0, 60_000), &ok, 100, 0, Action::Hold { why: Hold::Duration { remaining_ms: 120_000 } }),
        ];
        for (name, state, looks, users, now, expected) in cases {
            assert_eq!(decide(&spec, &state, looks, users, now), expected, "{name}");
        }
    }
}

/// Repeated simulated rollouts, looked at continuously: the share of neutral releases rolled back
/// stays within the nominal alpha, and a real regression is caught.
#[cfg(test)]
mod simulation {
    use bunting_experiments::MetricTotals;

    use super::*;
    use crate::testing::spec;

    /// xorshift64*: deterministic, so the test cannot flake.
    struct Rng(u64);

    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// One rollout of up to 8,000 users per arm, the guardrail looked at every 250: the users
    /// per arm when it was rolled back, if it was.
    fn run(
        rng: &mut Rng,
        spec: &RolloutSpec,
        baseline_rate: f64,
        released_rate: f64,
    ) -> Option<u64> {
        let name = MetricName::new("purchase").unwrap();
        let mut arms = [ArmTotals::default(), ArmTotals::default()];
        for n in 1..=8_000u64 {
            for (arm, rate) in arms.iter_mut().zip([baseline_rate, released_rate]) {
                arm.exposed += 1;
                if rng.unit() < rate {
                    arm.metrics
                        .entry(name.clone())
                        .or_insert_with(MetricTotals::default)
                        .converted += 1;
                }
            }
            if n % 250 == 0 {
                let looks = judge_guardrails(spec, &arms[0], &arms[1]);
                if looks.iter().any(|l| l.verdict == Verdict::Regressed) {
                    return Some(n);
                }
            }
        }
        None
    }

    #[test]
    fn neutral_releases_are_rarely_rolled_back_and_regressions_are_caught() {
        let spec = spec(); // alpha 0.05, one conversion guardrail, a drop is bad
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let runs = 200;
        let false_rollbacks = (0..runs)
            .filter(|_| run(&mut rng, &spec, 0.10, 0.10).is_some())
            .count();
        assert!(
            false_rollbacks as f64 <= 0.05 * runs as f64,
            "{false_rollbacks} of {runs} neutral rollouts rolled back"
        );
        // A 30% relative drop (10% → 7%) is caught in nearly every run.
        let caught = (0..50)
            .filter(|_| run(&mut rng, &spec, 0.10, 0.07).is_some())
            .count();
        eprintln!("false rollbacks {false_rollbacks}/{runs}, regressions caught {caught}/50");
        assert!(caught >= 48, "only {caught} of 50 regressions caught");
    }
}
