//! What the results API renders for one metric: control against one treatment arm.

use crate::alpha::Alpha;
use crate::bayesian::{Risk, gaussian_posterior_with_prior};
use crate::correction::Correction;
use crate::decision::{DecisionRule, Sides, Verdict};
use crate::error::Unavailable;
use crate::interval::Interval;
use crate::lift::LiftKind;
use crate::sequential::{ConfidenceSequence, sequential_test};
use crate::sufficient::{ArmStatistic, MetricKind};
use crate::welch::{OneSidedTest, welch_t_test};

/// How an experiment is analysed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AnalysisSettings {
    /// Significance level of every interval and test (default 0.05).
    pub alpha: Alpha,
    /// Which figures the verdict rests on (default: Welch's two-sided fixed-horizon test). The
    /// always-valid sequence is computed only for the sequential rule, the one-sided test only
    /// for the one-sided rule, and the prior shapes the posterior only for the Bayesian rule.
    pub rule: DecisionRule,
}

/// One arm as the results show it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ArmSummary {
    pub users: u64,
    /// The conversion rate or the mean; `None` with no users.
    pub value: Option<f64>,
    /// The arm's own interval for `value` (see [`ArmStatistic::interval`]); `None` with too few
    /// users.
    pub interval: Option<Interval>,
}

/// One lift (absolute or relative) of treatment over control, every figure finite.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LiftResult {
    pub kind: LiftKind,
    /// The rule [`verdict`](Self::verdict) and [`decision_p_value`](Self::decision_p_value)
    /// follow.
    pub rule: DecisionRule,
    pub estimate: f64,
    pub standard_error: f64,
    /// Welch–Satterthwaite.
    pub degrees_of_freedom: f64,
    /// Welch's fixed-horizon two-sided interval.
    pub confidence_interval: Interval,
    /// Welch's two-sided p-value.
    pub p_value: f64,
    /// Welch's one-sided test, when the rule is one-sided.
    pub one_sided: Option<OneSidedTest>,
    /// The always-valid interval and p-value, when the rule is sequential.
    pub sequential: Option<ConfidenceSequence>,
    /// The Gaussian posterior's mean and standard deviation: the estimate and standard error
    /// under a flat prior, shrunk towards the prior's mean under the Bayesian rule's prior.
    pub posterior_mean: f64,
    pub posterior_standard_deviation: f64,
    pub credible_interval: Interval,
    /// `P(lift > 0)` under that posterior.
    pub chance_to_beat_control: f64,
    /// The posterior's expected loss of keeping control and of shipping treatment.
    pub risk: Risk,
    /// What the rule concludes (from the figures above, before any multiple-testing correction).
    pub verdict: Verdict,
    /// [`decision_p_value`](Self::decision_p_value) corrected across the experiment's metrics,
    /// once [`adjust_p_values`] has run; never for the Bayesian rule.
    pub adjusted_p_value: Option<f64>,
}

impl LiftResult {
    /// The p-value decisions rest on: the always-valid one under the sequential rule (the
    /// fixed-horizon one is not valid for an experiment that is watched), the one-sided one under
    /// the one-sided rule, otherwise Welch's two-sided one; `None` under the Bayesian rule, which
    /// decides on the chance to beat control.
    pub fn decision_p_value(&self) -> Option<f64> {
        match self.rule {
            DecisionRule::Sequential(_) => self.sequential.map(|s| s.p_value),
            DecisionRule::FixedHorizon(Sides::OneSided) => self.one_sided.map(|o| o.p_value),
            DecisionRule::FixedHorizon(Sides::Two) => Some(self.p_value),
            DecisionRule::Bayesian(_) => None,
        }
    }

    /// The interval to show beside the verdict: the sequence's, Welch's, or the credible
    /// interval; `None` under the one-sided rule, whose interval
    /// (`[one_sided.lower_bound, ∞)`) has no upper end.
    pub fn decision_interval(&self) -> Option<Interval> {
        match self.rule {
            DecisionRule::Sequential(_) => self.sequential.map(|s| s.interval),
            DecisionRule::FixedHorizon(Sides::OneSided) => None,
            DecisionRule::FixedHorizon(Sides::Two) => Some(self.confidence_interval),
            DecisionRule::Bayesian(_) => Some(self.credible_interval),
        }
    }
}

/// One metric, control against one treatment.
///
/// Degenerate data never produces `NaN`: a lift that cannot be estimated is an `Err` naming why
/// ([`Unavailable`]), and the arm figures that exist (users, a rate of 0/1) are still reported.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct MetricComparison {
    pub kind: MetricKind,
    pub alpha: Alpha,
    pub rule: DecisionRule,
    pub control: ArmSummary,
    pub treatment: ArmSummary,
    pub absolute: Result<LiftResult, Unavailable>,
    pub relative: Result<LiftResult, Unavailable>,
}

impl MetricComparison {
    /// Why a lift is missing ("not enough data", "zero variance", ...), each reason once; empty
    /// when both lifts were estimated.
    pub fn flags(&self) -> Vec<Unavailable> {
        let mut flags = Vec::new();
        for outcome in [&self.absolute, &self.relative] {
            if let Err(reason) = outcome
                && !flags.contains(reason)
            {
                flags.push(*reason);
            }
        }
        flags
    }
}

/// Everything about one metric for control against one treatment: arm summaries, and for both
/// lifts the Welch test, the Gaussian posterior, the figures the rule needs, and the verdict.
pub fn compare<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    settings: AnalysisSettings,
) -> MetricComparison {
    MetricComparison {
        kind: S::KIND,
        alpha: settings.alpha,
        rule: settings.rule,
        control: summarise(control, settings.alpha),
        treatment: summarise(treatment, settings.alpha),
        absolute: lift_result(control, treatment, LiftKind::Absolute, settings),
        relative: lift_result(control, treatment, LiftKind::Relative, settings),
    }
}

/// Corrects the decision p-values of several metrics' comparisons (the same two arms) for
/// multiple testing, absolute and relative lifts separately, and stores the results in
/// [`LiftResult::adjusted_p_value`]. Lifts that could not be estimated, and lifts judged by the
/// Bayesian rule, are not tests and do not count towards the number of tests.
pub fn adjust_p_values(comparisons: &mut [MetricComparison], correction: Correction) {
    for kind in [LiftKind::Absolute, LiftKind::Relative] {
        let mut lifts: Vec<(&mut LiftResult, f64)> = comparisons
            .iter_mut()
            .filter_map(|c| match kind {
                LiftKind::Absolute => c.absolute.as_mut().ok(),
                LiftKind::Relative => c.relative.as_mut().ok(),
            })
            .filter_map(|l| l.decision_p_value().map(|p| (l, p)))
            .collect();
        let raw: Vec<f64> = lifts.iter().map(|(_, p)| *p).collect();
        // Every p-value computed here is in [0, 1], so this cannot fail; if it somehow did, the
        // results stay unadjusted rather than wrong.
        if let Ok(adjusted) = correction.adjust(&raw) {
            for ((lift, _), p) in lifts.iter_mut().zip(adjusted) {
                lift.adjusted_p_value = Some(p);
            }
        }
    }
}

fn summarise<S: ArmStatistic>(arm: &S, alpha: Alpha) -> ArmSummary {
    ArmSummary {
        users: arm.users(),
        value: arm.mean(),
        interval: arm.interval(alpha),
    }
}

fn lift_result<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    kind: LiftKind,
    settings: AnalysisSettings,
) -> Result<LiftResult, Unavailable> {
    let alpha = settings.alpha;
    let rule = settings.rule;
    let welch = welch_t_test(control, treatment, kind, alpha)?;
    let posterior = gaussian_posterior_with_prior(control, treatment, kind, alpha, rule.prior())?;
    let sequential = rule
        .sequential()
        .map(|tuning| sequential_test(control, treatment, kind, alpha, tuning))
        .transpose()?;
    let one_sided = match rule {
        DecisionRule::FixedHorizon(Sides::OneSided) => Some(welch.one_sided(alpha)?),
        _ => None,
    };
    let mut result = LiftResult {
        kind,
        rule,
        estimate: welch.lift.estimate,
        standard_error: welch.lift.standard_error,
        degrees_of_freedom: welch.degrees_of_freedom,
        confidence_interval: welch.confidence_interval,
        p_value: welch.p_value,
        one_sided,
        sequential,
        posterior_mean: posterior.lift.estimate,
        posterior_standard_deviation: posterior.lift.standard_error,
        credible_interval: posterior.credible_interval,
        chance_to_beat_control: posterior.chance_to_beat_control,
        risk: posterior.risk,
        verdict: Verdict::Inconclusive,
        adjusted_p_value: None,
    };
    result.verdict = verdict(&result, alpha);
    Ok(result)
}

/// The rule's conclusion. A frequentist rule's direction is the estimate's sign once the decision
/// p-value is below alpha (a one-sided test is significant only for a positive lift); the
/// Bayesian rule's is the chance to beat control against `1 - alpha` and `alpha`.
fn verdict(lift: &LiftResult, alpha: Alpha) -> Verdict {
    let a = alpha.get();
    let direction = || {
        if lift.estimate > 0.0 {
            Verdict::Higher
        } else {
            Verdict::Lower
        }
    };
    match lift.rule {
        DecisionRule::Bayesian(_) => {
            if lift.chance_to_beat_control >= 1.0 - a {
                Verdict::Higher
            } else if lift.chance_to_beat_control <= a {
                Verdict::Lower
            } else {
                Verdict::Inconclusive
            }
        }
        _ => match lift.decision_p_value() {
            Some(p) if p < a => direction(),
            _ => Verdict::Inconclusive,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Arm;
    use crate::sequential::SequentialTuning;
    use crate::sufficient::{MeanStats, ProportionStats};

    #[test]
    fn degenerate_arms_are_flagged_and_still_summarised() {
        let settings = AnalysisSettings::default();
        let cases = [
            (
                ProportionStats::new(1, 1).unwrap(),
                ProportionStats::new(40, 4).unwrap(),
                vec![Unavailable::NotEnoughData {
                    arm: Arm::Control,
                    users: 1,
                }],
            ),
            (
                ProportionStats::new(40, 0).unwrap(),
                ProportionStats::new(40, 0).unwrap(),
                vec![Unavailable::ArmWithoutVariance { arm: Arm::Control }],
            ),
            (
                ProportionStats::new(40, 0).unwrap(),
                ProportionStats::new(40, 6).unwrap(),
                vec![Unavailable::ArmWithoutVariance { arm: Arm::Control }],
            ),
            (
                ProportionStats::new(40, 3).unwrap(),
                ProportionStats::new(40, 6).unwrap(),
                vec![],
            ),
        ];
        for (control, treatment, flags) in cases {
            let result = compare(&control, &treatment, settings);
            assert_eq!(result.flags(), flags, "{control:?} {treatment:?}");
            assert_eq!(result.kind, MetricKind::Proportion);
            assert_eq!(result.control.users, control.n());
            assert_eq!(result.control.value, control.rate());
            assert!(result.control.interval.is_some());
        }

        let empty = compare(&MeanStats::EMPTY, &MeanStats::EMPTY, settings);
        assert_eq!(empty.control.value, None);
        assert_eq!(empty.control.interval, None);
        assert_eq!(
            empty.flags(),
            vec![Unavailable::NotEnoughData {
                arm: Arm::Control,
                users: 0
            }]
        );
    }

    /// The reproductions of issue 14: an arm at 0% or 100% used to get a standard error from the
    /// other arm alone, and with it a p-value far below Fisher's exact one. Like gbstats, there is
    /// no estimate at all, only the reason, for both lifts and every analysis.
    #[test]
    fn an_arm_at_zero_or_full_conversion_has_no_estimate() {
        let p = |n, s| ProportionStats::new(n, s).unwrap();
        let cases = [
            // (control, treatment, the arm without variance); the p-value each used to get, and
            // Fisher's exact one, in the comment.
            (p(51, 0), p(2386, 46), Arm::Control), // p = 9.45e-12; Fisher 0.62
            (p(200, 0), p(200, 4), Arm::Control),  // p = 0.045; Fisher 0.12
            (p(31, 25), p(26, 26), Arm::Treatment), // p = 0.011; Fisher 0.027
        ];
        let sequential = AnalysisSettings {
            rule: DecisionRule::Sequential(SequentialTuning::DEFAULT),
            ..AnalysisSettings::default()
        };
        for (control, treatment, arm) in cases {
            let rules = [
                DecisionRule::FixedHorizon(Sides::OneSided),
                DecisionRule::Bayesian(None),
                DecisionRule::Bayesian(Some(crate::GaussianPrior::GROWTHBOOK)),
            ]
            .map(|rule| AnalysisSettings {
                rule,
                ..AnalysisSettings::default()
            });
            for settings in [AnalysisSettings::default(), sequential]
                .into_iter()
                .chain(rules)
            {
                let result = compare(&control, &treatment, settings);
                let why = Unavailable::ArmWithoutVariance { arm };
                assert_eq!(result.absolute, Err(why), "{control:?} {treatment:?}");
                assert_eq!(result.relative, Err(why), "{control:?} {treatment:?}");
                assert_eq!(result.flags(), vec![why]);
                assert!(why.to_string().starts_with("not enough information"));
                // The arms themselves are still described.
                assert_eq!(result.treatment.users, treatment.n());
                assert!(result.control.interval.is_some());
            }
        }
    }

    #[test]
    fn sequential_analysis_decides_on_the_always_valid_figures() {
        let control = ProportionStats::new(3000, 300).unwrap();
        let treatment = ProportionStats::new(3000, 350).unwrap();
        let fixed = compare(&control, &treatment, AnalysisSettings::default());
        let watched = compare(
            &control,
            &treatment,
            AnalysisSettings {
                rule: DecisionRule::Sequential(SequentialTuning::DEFAULT),
                ..AnalysisSettings::default()
            },
        );
        let (fixed, watched) = (fixed.absolute.unwrap(), watched.absolute.unwrap());
        assert_eq!(fixed.decision_p_value(), Some(fixed.p_value));
        assert_eq!(fixed.decision_interval(), Some(fixed.confidence_interval));
        assert_eq!(fixed.sequential, None);
        let sequential = watched.sequential.unwrap();
        assert_eq!(watched.decision_p_value(), Some(sequential.p_value));
        assert_eq!(watched.decision_interval(), Some(sequential.interval));
        assert!(sequential.p_value > watched.p_value);
        assert_eq!(sequential.users, 6000);
    }

    #[test]
    fn adjustment_counts_only_estimated_lifts() {
        let settings = AnalysisSettings::default();
        let p = |n, s| ProportionStats::new(n, s).unwrap();
        let bayesian = AnalysisSettings {
            rule: DecisionRule::Bayesian(None),
            ..settings
        };
        let mut comparisons = [
            compare(&p(1000, 100), &p(1000, 130), settings),
            compare(&p(1000, 100), &p(1000, 104), settings),
            compare(&p(1000, 0), &p(1000, 4), settings), // no lift: control has no variance
            compare(&p(1000, 100), &p(1000, 180), bayesian), // not a test
        ];
        adjust_p_values(&mut comparisons, Correction::HolmBonferroni);
        for kind in [LiftKind::Absolute, LiftKind::Relative] {
            let pick = |c: &MetricComparison| match kind {
                LiftKind::Absolute => c.absolute,
                LiftKind::Relative => c.relative,
            };
            let raw: Vec<f64> = comparisons[..2]
                .iter()
                .map(|c| pick(c).unwrap().p_value)
                .collect();
            let want = crate::holm_bonferroni(&raw).unwrap();
            for (c, want) in comparisons[..2].iter().zip(want) {
                assert_eq!(pick(c).unwrap().adjusted_p_value, Some(want));
            }
            assert_eq!(
                pick(&comparisons[2]),
                Err(Unavailable::ArmWithoutVariance { arm: Arm::Control })
            );
            assert_eq!(pick(&comparisons[3]).unwrap().adjusted_p_value, None);
        }
    }
}

#[cfg(test)]
mod verdicts {
    use super::*;
    use crate::bayesian::GaussianPrior;
    use crate::sequential::SequentialTuning;
    use crate::sufficient::ProportionStats;

    /// Each rule on the same data: what it concludes, and the p-value it rests on.
    #[test]
    fn each_rule_decides_on_its_own_figure() {
        use Verdict::{Higher, Inconclusive, Lower};
        let p = |n, s| ProportionStats::new(n, s).unwrap();
        let alpha = Alpha::FIVE_PERCENT;
        let two = DecisionRule::FixedHorizon(Sides::Two);
        let one = DecisionRule::FixedHorizon(Sides::OneSided);
        let seq = DecisionRule::Sequential(SequentialTuning::DEFAULT);
        let flat = DecisionRule::Bayesian(None);
        let prior = DecisionRule::Bayesian(Some(GaussianPrior::new(0.0, 0.0001).unwrap()));
        // (control, treatment, rule, verdict of the absolute lift)
        let cases = [
            // A clear gain: every rule but a sceptical prior sees it.
            ((2000, 200), (2000, 300), two, Higher),
            ((2000, 200), (2000, 300), one, Higher),
            ((2000, 200), (2000, 300), seq, Higher),
            ((2000, 200), (2000, 300), flat, Higher),
            ((2000, 200), (2000, 300), prior, Inconclusive),
            // A clear loss: one-sided tests cannot call it.
            ((2000, 300), (2000, 200), two, Lower),
            ((2000, 300), (2000, 200), one, Inconclusive),
            ((2000, 300), (2000, 200), flat, Lower),
            // Two-sided p ≈ 0.07, one-sided ≈ 0.035: only the one-sided test calls it.
            ((2000, 200), (2000, 235), two, Inconclusive),
            ((2000, 200), (2000, 235), one, Higher),
            // Significant at a fixed horizon, not yet for a watched experiment.
            ((2000, 200), (2000, 245), two, Higher),
            ((2000, 200), (2000, 245), seq, Inconclusive),
        ];
        for ((nc, sc), (nt, st), rule, want) in cases {
            let settings = AnalysisSettings { alpha, rule };
            let lift = compare(&p(nc, sc), &p(nt, st), settings).absolute.unwrap();
            assert_eq!(lift.verdict, want, "{sc}/{nc} vs {st}/{nt} under {rule:?}");
            let decision = lift.decision_p_value();
            match rule {
                DecisionRule::Bayesian(_) => assert_eq!(decision, None),
                DecisionRule::FixedHorizon(Sides::OneSided) => {
                    let one_sided = lift.one_sided.unwrap();
                    assert_eq!(decision, Some(one_sided.p_value));
                    // The bound is above zero exactly when the test is significant.
                    assert_eq!(one_sided.lower_bound > 0.0, one_sided.p_value < alpha.get());
                }
                DecisionRule::Sequential(_) => {
                    assert_eq!(decision, lift.sequential.map(|s| s.p_value))
                }
                DecisionRule::FixedHorizon(Sides::Two) => assert_eq!(decision, Some(lift.p_value)),
            }
        }
    }
}
