//! What the results API renders for one metric: control against one treatment arm.

use crate::alpha::Alpha;
use crate::bayesian::gaussian_posterior;
use crate::correction::Correction;
use crate::error::Unavailable;
use crate::interval::Interval;
use crate::lift::LiftKind;
use crate::sequential::{ConfidenceSequence, SequentialTuning, sequential_test};
use crate::sufficient::{ArmStatistic, MetricKind};
use crate::welch::welch_t_test;

/// How an experiment is analysed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AnalysisSettings {
    /// Significance level of every interval and test (default 0.05).
    pub alpha: Alpha,
    /// `Some`: also compute always-valid intervals and p-values (for experiments whose results
    /// are watched while they run), and decide on them. `None`: fixed-horizon only.
    pub sequential: Option<SequentialTuning>,
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
    pub estimate: f64,
    pub standard_error: f64,
    /// Welch–Satterthwaite.
    pub degrees_of_freedom: f64,
    /// Welch's fixed-horizon interval.
    pub confidence_interval: Interval,
    /// Welch's two-sided p-value.
    pub p_value: f64,
    /// The always-valid interval and p-value, when the analysis is sequential.
    pub sequential: Option<ConfidenceSequence>,
    /// Gaussian posterior under a flat prior.
    pub credible_interval: Interval,
    /// `P(lift > 0)` under that posterior.
    pub chance_to_beat_control: f64,
    /// [`decision_p_value`](Self::decision_p_value) corrected across the experiment's metrics,
    /// once [`adjust_p_values`] has run.
    pub adjusted_p_value: Option<f64>,
}

impl LiftResult {
    /// The p-value decisions rest on: the always-valid one in a sequential analysis (the
    /// fixed-horizon one is not valid for an experiment that is watched), otherwise Welch's.
    pub fn decision_p_value(&self) -> f64 {
        self.sequential.map_or(self.p_value, |s| s.p_value)
    }

    /// The interval to show beside [`decision_p_value`](Self::decision_p_value).
    pub fn decision_interval(&self) -> Interval {
        self.sequential
            .map_or(self.confidence_interval, |s| s.interval)
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
/// lifts the Welch test, the Gaussian posterior and, when configured, the confidence sequence.
pub fn compare<S: ArmStatistic>(
    control: &S,
    treatment: &S,
    settings: AnalysisSettings,
) -> MetricComparison {
    MetricComparison {
        kind: S::KIND,
        alpha: settings.alpha,
        control: summarise(control, settings.alpha),
        treatment: summarise(treatment, settings.alpha),
        absolute: lift_result(control, treatment, LiftKind::Absolute, settings),
        relative: lift_result(control, treatment, LiftKind::Relative, settings),
    }
}

/// Corrects the decision p-values of several metrics' comparisons (the same two arms) for
/// multiple testing, absolute and relative lifts separately, and stores the results in
/// [`LiftResult::adjusted_p_value`]. Lifts that could not be estimated are not tests and do not
/// count towards the number of tests.
pub fn adjust_p_values(comparisons: &mut [MetricComparison], correction: Correction) {
    for kind in [LiftKind::Absolute, LiftKind::Relative] {
        let mut lifts: Vec<&mut LiftResult> = comparisons
            .iter_mut()
            .filter_map(|c| match kind {
                LiftKind::Absolute => c.absolute.as_mut().ok(),
                LiftKind::Relative => c.relative.as_mut().ok(),
            })
            .collect();
        let raw: Vec<f64> = lifts.iter().map(|l| l.decision_p_value()).collect();
        // Every p-value computed here is in [0, 1], so this cannot fail; if it somehow did, the
        // results stay unadjusted rather than wrong.
        if let Ok(adjusted) = correction.adjust(&raw) {
            for (lift, p) in lifts.iter_mut().zip(adjusted) {
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
    let welch = welch_t_test(control, treatment, kind, settings.alpha)?;
    let posterior = gaussian_posterior(control, treatment, kind, settings.alpha)?;
    let sequential = settings
        .sequential
        .map(|tuning| sequential_test(control, treatment, kind, settings.alpha, tuning))
        .transpose()?;
    Ok(LiftResult {
        kind,
        estimate: welch.lift.estimate,
        standard_error: welch.lift.standard_error,
        degrees_of_freedom: welch.degrees_of_freedom,
        confidence_interval: welch.confidence_interval,
        p_value: welch.p_value,
        sequential,
        credible_interval: posterior.credible_interval,
        chance_to_beat_control: posterior.chance_to_beat_control,
        adjusted_p_value: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Arm;
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
            // (control, treatment, the arm without variance, the p-value it used to get)
            (p(51, 0), p(2386, 46), Arm::Control, 9.45e-12),
            (p(200, 0), p(200, 4), Arm::Control, 0.045),
            (p(31, 25), p(26, 26), Arm::Treatment, 0.011),
        ];
        let sequential = AnalysisSettings {
            sequential: Some(SequentialTuning::DEFAULT),
            ..AnalysisSettings::default()
        };
        for (control, treatment, arm, _old_p) in cases {
            for settings in [AnalysisSettings::default(), sequential] {
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
                sequential: Some(SequentialTuning::DEFAULT),
                ..AnalysisSettings::default()
            },
        );
        let (fixed, watched) = (fixed.absolute.unwrap(), watched.absolute.unwrap());
        assert_eq!(fixed.decision_p_value(), fixed.p_value);
        assert_eq!(fixed.decision_interval(), fixed.confidence_interval);
        let sequential = watched.sequential.unwrap();
        assert_eq!(watched.decision_p_value(), sequential.p_value);
        assert_eq!(watched.decision_interval(), sequential.interval);
        assert!(sequential.p_value > watched.p_value);
        assert_eq!(sequential.users, 6000);
    }

    #[test]
    fn adjustment_counts_only_estimated_lifts() {
        let settings = AnalysisSettings::default();
        let p = |n, s| ProportionStats::new(n, s).unwrap();
        let mut comparisons = [
            compare(&p(1000, 100), &p(1000, 130), settings),
            compare(&p(1000, 100), &p(1000, 104), settings),
            compare(&p(1000, 0), &p(1000, 4), settings), // no lift: control has no variance
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
        }
    }
}
