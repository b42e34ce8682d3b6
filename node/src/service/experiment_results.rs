//! An experiment's counts turned into `GetExperimentResultsResponse`: per metric and arm the
//! users and the rate or mean, and each treatment against control through `bunting-stats`
//! (Welch, delta-method lifts, the Gaussian posterior, the always-valid confidence sequence, Holm
//! and Benjamini–Hochberg across the experiment's metrics), plus the sample-ratio check.
//!
//! Pure: the caller gathers the totals (every shard owner's live counts) and the experiment.

use std::collections::BTreeMap;

use bunting_experiments::{ArmTotals, Experiment, ExperimentTotals, MetricKind, MetricTotals};
use bunting_proto::bunting::v1 as pb;
use bunting_stats::{
    AnalysisSettings, Correction, Interval, LiftResult, MeanStats, MetricComparison,
    ProportionStats, Unavailable, Verdict, adjust_p_values, compare, sample_ratio_mismatch,
};

/// The experiment's own analysis settings, as the statistics take them (by default sequential:
/// results are watched while experiments run, so decisions rest on always-valid intervals and
/// p-values, and the fixed-horizon ones are reported beside them).
pub fn settings(experiment: &Experiment) -> AnalysisSettings {
    super::analysis_settings::for_stats(&experiment.analysis)
}

/// The arms in the order results list them: control first, then the others (sorted).
fn arm_order(experiment: &Experiment) -> Vec<&str> {
    std::iter::once(experiment.control.as_str())
        .chain(
            experiment
                .arms
                .iter()
                .map(String::as_str)
                .filter(|a| *a != experiment.control),
        )
        .collect()
}

/// The sample-ratio check of the users per arm (`users[i]` in `arms[i]`) against the
/// experiment's traffic split; `None` before anyone is exposed. An arm meant to get no users
/// (weight 0) stays out of the chi-square, and if it got users anyway the split is broken for
/// certain: p = 0.
fn sample_ratio_p_value(experiment: &Experiment, arms: &[&str], users: &[u64]) -> Option<f64> {
    if users.iter().sum::<u64>() == 0 {
        return None;
    }
    let shares: BTreeMap<&str, f64> = experiment.expected_shares().into_iter().collect();
    let (mut observed, mut weights) = (Vec::new(), Vec::new());
    for (arm, &n) in arms.iter().zip(users) {
        match shares.get(arm).copied().unwrap_or(0.0) {
            share if share > 0.0 => {
                observed.push(n);
                weights.push(share);
            }
            _ if n > 0 => return Some(0.0),
            _ => {}
        }
    }
    sample_ratio_mismatch(&observed, &weights)
        .ok()
        .map(|check| check.p_value)
}

pub fn results(
    experiment: &Experiment,
    totals: &ExperimentTotals,
    proto_experiment: pb::Experiment,
) -> pb::GetExperimentResultsResponse {
    let settings = settings(experiment);
    let arms = arm_order(experiment);
    let empty = ArmTotals::default();
    let arm_totals = |arm: &str| totals.arms.get(arm).unwrap_or(&empty);
    let users: Vec<u64> = arms.iter().map(|a| arm_totals(a).exposed).collect();
    let srm_p_value = sample_ratio_p_value(experiment, &arms, &users);

    // comparisons[t][m]: treatment arm t (index into arms[1..]) against control, metric m.
    let mut comparisons: Vec<Vec<MetricComparison>> = arms
        .iter()
        .skip(1)
        .map(|treatment| {
            experiment
                .metrics
                .iter()
                .map(|metric| {
                    let stat = |arm: &str| metric_totals(arm_totals(arm), &metric.name);
                    let (nc, nt) = (arm_totals(arms[0]).exposed, arm_totals(treatment).exposed);
                    let (control, treatment) = (stat(arms[0]), stat(treatment));
                    match metric.kind {
                        MetricKind::Conversion => compare(
                            &proportion(nc, control),
                            &proportion(nt, treatment),
                            settings,
                        ),
                        MetricKind::Mean => {
                            compare(&mean(nc, control), &mean(nt, treatment), settings)
                        }
                    }
                })
                .collect()
        })
        .collect();
    // Both corrections, across the metrics, per treatment arm.
    let mut holm = comparisons.clone();
    for (h, bh) in holm.iter_mut().zip(comparisons.iter_mut()) {
        adjust_p_values(h, Correction::HolmBonferroni);
        adjust_p_values(bh, Correction::BenjaminiHochberg);
    }

    let metrics = experiment
        .metrics
        .iter()
        .enumerate()
        .map(|(m, metric)| {
            let control_summary = comparisons
                .first()
                .and_then(|c| c.get(m))
                .map(|c| c.control);
            let mut rows = vec![arm_row(
                arms[0],
                arm_totals(arms[0]),
                metric,
                control_summary.map(|s| (s.value, s.interval)),
                None,
            )];
            for (t, arm) in arms.iter().enumerate().skip(1) {
                let c = comparisons.get(t - 1).and_then(|c| c.get(m));
                let h = holm.get(t - 1).and_then(|c| c.get(m));
                rows.push(arm_row(
                    arm,
                    arm_totals(arm),
                    metric,
                    c.map(|c| (c.treatment.value, c.treatment.interval)),
                    c.map(|c| pb::Comparison {
                        absolute: Some(lift(&c.absolute, h.map(|h| &h.absolute))),
                        relative: Some(lift(&c.relative, h.map(|h| &h.relative))),
                    }),
                ));
            }
            pb::MetricResults {
                metric: metric.name.to_string(),
                kind: match metric.kind {
                    MetricKind::Conversion => pb::MetricKind::Conversion,
                    MetricKind::Mean => pb::MetricKind::Mean,
                }
                .into(),
                arms: rows,
            }
        })
        .collect();

    pb::GetExperimentResultsResponse {
        experiment: Some(proto_experiment),
        users: arms
            .iter()
            .zip(&users)
            .map(|(arm, users)| pb::ArmUsers {
                arm: (*arm).to_owned(),
                users: *users,
            })
            .collect(),
        srm_p_value,
        alpha: settings.alpha.get(),
        sequential: settings.rule.sequential().is_some(),
        metrics,
        analysis: Some(super::analysis_settings::to_proto(&experiment.analysis)),
        decision_rule: settings.rule.describe(settings.alpha),
    }
}

fn metric_totals(arm: &ArmTotals, metric: &bunting_experiments::MetricName) -> MetricTotals {
    arm.metrics.get(metric).copied().unwrap_or_default()
}

/// Counts are bounded by users, far below i64::MAX; saturate rather than fail if not.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn proportion(users: u64, totals: MetricTotals) -> ProportionStats {
    ProportionStats::new(count(users), count(totals.converted.min(users)))
        .unwrap_or(ProportionStats::EMPTY)
}

fn mean(users: u64, totals: MetricTotals) -> MeanStats {
    // Sums from finite, non-negative values: `new` refuses only inconsistent input, which would
    // be a bug upstream; show "no data" rather than fail the whole results call.
    MeanStats::new(count(users), totals.sum, totals.sum_squares).unwrap_or_default()
}

fn arm_row(
    arm: &str,
    totals: &ArmTotals,
    metric: &bunting_experiments::Metric,
    summary: Option<(Option<f64>, Option<Interval>)>,
    comparison: Option<pb::Comparison>,
) -> pb::ArmResult {
    let (value, interval) = summary.unwrap_or((None, None));
    pb::ArmResult {
        arm: arm.to_owned(),
        users: totals.exposed,
        converted: match metric.kind {
            MetricKind::Conversion => metric_totals(totals, &metric.name).converted,
            MetricKind::Mean => 0,
        },
        value,
        value_interval: interval.map(interval_pb),
        comparison,
    }
}

fn interval_pb(i: Interval) -> pb::Interval {
    pb::Interval {
        lower: i.lower(),
        upper: i.upper(),
    }
}

/// One lift; `holm` is the same lift from the Holm-adjusted copy (BH is adjusted in place).
fn lift(
    result: &Result<LiftResult, Unavailable>,
    holm: Option<&Result<LiftResult, Unavailable>>,
) -> pb::Lift {
    match result {
        Err(why) => pb::Lift {
            unavailable: why.to_string(),
            verdict: pb::Verdict::NotEnoughInformation.into(),
            ..pb::Lift::default()
        },
        Ok(l) => pb::Lift {
            unavailable: String::new(),
            estimate: l.estimate,
            standard_error: l.standard_error,
            degrees_of_freedom: l.degrees_of_freedom,
            confidence_interval: Some(interval_pb(l.confidence_interval)),
            p_value: l.p_value,
            sequential_interval: l.sequential.map(|s| interval_pb(s.interval)),
            sequential_p_value: l.sequential.map(|s| s.p_value),
            credible_interval: Some(interval_pb(l.credible_interval)),
            chance_to_beat_control: l.chance_to_beat_control,
            holm_p_value: holm
                .and_then(|h| h.as_ref().ok())
                .and_then(|h| h.adjusted_p_value),
            benjamini_hochberg_p_value: l.adjusted_p_value,
            verdict: match l.verdict {
                Verdict::Higher => pb::Verdict::Higher,
                Verdict::Lower => pb::Verdict::Lower,
                Verdict::Inconclusive => pb::Verdict::Inconclusive,
            }
            .into(),
            one_sided_p_value: l.one_sided.map(|o| o.p_value),
            one_sided_lower_bound: l.one_sided.map(|o| o.lower_bound),
            posterior_mean: l.posterior_mean,
            posterior_standard_deviation: l.posterior_standard_deviation,
            risk_control: l.risk.control,
            risk_treatment: l.risk.treatment,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bunting_experiments::{ExperimentId, Metric, MetricName, UserExposure};

    fn metric(name: &str, kind: MetricKind) -> Metric {
        Metric {
            name: MetricName::new(name).unwrap(),
            event: "purchase".into(),
            kind,
        }
    }

    fn experiment() -> Experiment {
        Experiment::draft(
            ExperimentId::new("e").unwrap(),
            "default",
            "f",
            ["control".to_owned(), "treatment".to_owned()],
            "control",
            vec![
                metric("bought", MetricKind::Conversion),
                metric("revenue", MetricKind::Mean),
            ],
        )
        .unwrap()
    }

    /// 1,000 users per arm, 10% against 15% converting, revenue 10 per conversion.
    fn totals() -> ExperimentTotals {
        let e = experiment();
        let mut totals = ExperimentTotals::default();
        for (arm, converting) in [("control", 100), ("treatment", 150)] {
            for i in 0..1000 {
                let mut user = UserExposure::new(arm, 0);
                totals.expose(arm);
                if i < converting {
                    totals.track(&e, &mut user, "purchase", 10.0).unwrap();
                }
            }
        }
        totals
    }

    #[test]
    fn a_clear_difference_is_detected_on_both_metrics() {
        let r = results(&experiment(), &totals(), pb::Experiment::default());
        assert_eq!(
            r.users.iter().map(|u| u.users).collect::<Vec<_>>(),
            [1000, 1000]
        );
        assert!(r.srm_p_value.unwrap() > 0.99, "even split");
        assert!(r.sequential);
        let bought = &r.metrics[0];
        assert_eq!(bought.arms[0].arm, "control");
        assert_eq!(bought.arms[0].converted, 100);
        assert!((bought.arms[1].value.unwrap() - 0.15).abs() < 1e-12);
        assert!(
            bought.arms[0].comparison.is_none(),
            "control is not compared with itself"
        );
        let abs = bought.arms[1]
            .comparison
            .as_ref()
            .unwrap()
            .absolute
            .as_ref()
            .unwrap();
        assert!(abs.unavailable.is_empty());
        assert!((abs.estimate - 0.05).abs() < 1e-12);
        assert!(abs.p_value < 0.01, "{}", abs.p_value);
        assert!(abs.chance_to_beat_control > 0.99);
        let (holm, bh) = (
            abs.holm_p_value.unwrap(),
            abs.benjamini_hochberg_p_value.unwrap(),
        );
        assert!(
            holm >= bh && bh >= abs.sequential_p_value.unwrap(),
            "{holm} {bh}"
        );
        let revenue = &r.metrics[1];
        assert!((revenue.arms[1].value.unwrap() - 1.5).abs() < 1e-12);
    }

    /// Each experiment is judged under its own settings, and the response says which.
    #[test]
    fn results_follow_and_name_the_experiments_settings() {
        use bunting_experiments::{AnalysisRequest, AnalysisSettings, Engine, Prior, TestSides};
        let with = |request: AnalysisRequest| {
            let e = experiment().with_analysis(AnalysisSettings::new(request).unwrap());
            results(&e, &totals(), pb::Experiment::default())
        };
        let absolute = |r: &pb::GetExperimentResultsResponse| {
            r.metrics[0].arms[1]
                .comparison
                .clone()
                .unwrap()
                .absolute
                .unwrap()
        };

        let default = results(&experiment(), &totals(), pb::Experiment::default());
        assert!(default.sequential);
        assert_eq!(
            default.decision_rule,
            "frequentist, sequential (always valid, tuning 5000), two-sided, alpha 0.05"
        );
        assert_eq!(
            default.analysis.as_ref().unwrap().sequential_tuning,
            Some(5000.0)
        );
        assert_eq!(absolute(&default).verdict, i32::from(pb::Verdict::Higher));

        let one_sided = with(AnalysisRequest {
            alpha: Some(0.01),
            sides: TestSides::OneSided,
            ..AnalysisRequest::default()
        });
        assert!(!one_sided.sequential);
        assert_eq!(one_sided.alpha, 0.01);
        assert!(
            one_sided.decision_rule.contains("one-sided"),
            "{}",
            one_sided.decision_rule
        );
        let lift = absolute(&one_sided);
        assert_eq!(lift.sequential_p_value, None);
        let p = lift.one_sided_p_value.unwrap();
        assert!(
            (p - lift.p_value / 2.0).abs() < 1e-12,
            "half the two-sided p: {p}"
        );
        assert!(lift.one_sided_lower_bound.unwrap() > 0.0);

        let bayesian = with(AnalysisRequest {
            engine: Engine::Bayesian,
            prior: Some(Prior::GROWTHBOOK),
            ..AnalysisRequest::default()
        });
        assert!(!bayesian.sequential);
        assert!(bayesian.decision_rule.contains("Bayesian, Gaussian prior"));
        let lift = absolute(&bayesian);
        assert_eq!(
            lift.holm_p_value, None,
            "Bayesian decisions are not corrected p-values"
        );
        assert_eq!(lift.verdict, i32::from(pb::Verdict::Higher));
        assert!(lift.posterior_mean > 0.0 && lift.posterior_mean < lift.estimate);
        assert!(lift.risk_treatment < lift.risk_control);
    }

    /// `users` exposed per arm, no conversions.
    fn exposed(users: &[(&str, u64)]) -> ExperimentTotals {
        let mut totals = ExperimentTotals::default();
        for (arm, n) in users {
            for _ in 0..*n {
                totals.expose(arm);
            }
        }
        totals
    }

    /// `(users, converting)` per arm, each converting user buying once for 10.
    fn converting(arms: &[(&str, u64, u64)]) -> ExperimentTotals {
        let e = experiment();
        let mut totals = ExperimentTotals::default();
        for &(arm, users, converting) in arms {
            for i in 0..users {
                let mut user = UserExposure::new(arm, 0);
                totals.expose(arm);
                if i < converting {
                    totals.track(&e, &mut user, "purchase", 10.0).unwrap();
                }
            }
        }
        totals
    }

    /// Issue 14's reproductions through the results: an arm at 0% or 100% conversion gets "not
    /// enough information" on both lifts, and no p-value, interval or chance to beat control.
    #[test]
    fn an_arm_without_variance_is_not_enough_information() {
        let cases = [
            ((51, 0), (2386, 46), "control"),
            ((200, 0), (200, 4), "control"),
            ((31, 25), (26, 26), "treatment"),
        ];
        for ((nc, cc), (nt, ct), arm) in cases {
            let totals = converting(&[("control", nc, cc), ("treatment", nt, ct)]);
            let r = results(&experiment(), &totals, pb::Experiment::default());
            // Both metrics: the conversion, and the revenue mean (every buyer spends 10, so an
            // arm where nobody or everybody buys has one value too).
            for metric in &r.metrics {
                let treatment = &metric.arms[1];
                assert_eq!(treatment.users, nt);
                let comparison = treatment.comparison.as_ref().unwrap();
                for lift in [&comparison.absolute, &comparison.relative] {
                    let lift = lift.as_ref().unwrap();
                    assert!(
                        lift.unavailable.starts_with("not enough information")
                            && lift.unavailable.contains(&format!("the {arm} arm")),
                        "{}: {}",
                        metric.metric,
                        lift.unavailable
                    );
                    assert_eq!(lift.p_value, 0.0);
                    assert_eq!(lift.sequential_p_value, None);
                    assert_eq!(lift.holm_p_value, None);
                    assert_eq!(lift.confidence_interval, None);
                    assert_eq!(lift.chance_to_beat_control, 0.0);
                }
            }
        }
    }

    #[test]
    fn the_sample_ratio_check_follows_the_traffic_split() {
        let srm = |e: &Experiment, users: &[(&str, u64)]| {
            results(e, &exposed(users), pb::Experiment::default())
                .srm_p_value
                .unwrap()
        };
        let ramp = experiment()
            .with_split([("control".to_owned(), 9), ("treatment".to_owned(), 1)].into())
            .unwrap();
        let as_planned = [("control", 9_000), ("treatment", 1_000)];
        assert!(srm(&ramp, &as_planned) > 0.99, "a 90/10 ramp at 90/10");
        assert!(
            srm(&experiment(), &as_planned) < 1e-6,
            "the same users against an even split are a mismatch"
        );
        assert!(srm(&ramp, &[("control", 5_000), ("treatment", 5_000)]) < 1e-6);
    }

    #[test]
    fn users_in_an_arm_meant_to_get_none_are_a_certain_mismatch() {
        let three = Experiment::draft(
            ExperimentId::new("e").unwrap(),
            "default",
            "f",
            [
                "control".to_owned(),
                "treatment".to_owned(),
                "unused".to_owned(),
            ],
            "control",
            vec![metric("bought", MetricKind::Conversion)],
        )
        .unwrap()
        .with_split(
            [
                ("control".to_owned(), 1),
                ("treatment".to_owned(), 1),
                ("unused".to_owned(), 0),
            ]
            .into(),
        )
        .unwrap();
        let srm = |users: &[(&str, u64)]| {
            results(&three, &exposed(users), pb::Experiment::default()).srm_p_value
        };
        assert!(srm(&[("control", 500), ("treatment", 500)]).unwrap() > 0.99);
        assert_eq!(
            srm(&[("control", 500), ("treatment", 500), ("unused", 1)]),
            Some(0.0)
        );
    }

    #[test]
    fn an_experiment_without_users_has_no_estimates_and_no_nan() {
        let r = results(
            &experiment(),
            &ExperimentTotals::default(),
            pb::Experiment::default(),
        );
        assert_eq!(r.srm_p_value, None);
        let lift = r.metrics[0].arms[1]
            .comparison
            .as_ref()
            .unwrap()
            .absolute
            .as_ref()
            .unwrap();
        assert!(
            lift.unavailable.contains("not enough data"),
            "{}",
            lift.unavailable
        );
        assert_eq!(r.metrics[0].arms[1].value, None);
    }
}
