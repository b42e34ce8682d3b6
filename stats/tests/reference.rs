//! Every figure of `shared/reference/stats-reference.md` (GrowthBook gbstats 0.8.0's published
//! test cases), reproduced through the public API to 4 decimals. One table per section; each row
//! is an input and the figures the reference gives for it.

// Tests report failure by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bunting_stats::{
    Alpha, Interval, LiftKind, MeanStats, ProportionStats, benjamini_hochberg, gaussian_posterior,
    holm_bonferroni, sample_ratio_mismatch, welch_t_test,
};

/// "To 4 decimals": the reference rounds to 5, so a correct value is within 5e-5 of it.
const TOLERANCE: f64 = 5e-5;

fn close(label: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() < TOLERANCE,
        "{label}: got {got:.6}, reference {want}"
    );
}

fn close_interval(label: &str, got: Interval, want: (f64, f64)) {
    close(&format!("{label} lower"), got.lower(), want.0);
    close(&format!("{label} upper"), got.upper(), want.1);
}

/// (sum, sum_squares, n) as the reference writes a mean metric.
fn mean_metric(sum: f64, sum_squares: f64, n: i64) -> MeanStats {
    MeanStats::new(n, sum, sum_squares).unwrap()
}

/// (successes, n) as the reference writes a proportion metric.
fn proportion(successes: i64, n: i64) -> ProportionStats {
    ProportionStats::new(n, successes).unwrap()
}

struct Frequentist {
    kind: LiftKind,
    lift: f64,
    interval: (f64, f64),
    standard_error: f64,
    p_value: f64,
}

#[test]
fn frequentist_welch_t_test() {
    let alpha = Alpha::FIVE_PERCENT;
    let means = (
        mean_metric(1396.87, 52377.9767, 3407),
        mean_metric(2422.7, 134698.29, 3461),
    );
    let mean_rows = [
        Frequentist {
            kind: LiftKind::Relative,
            lift: 0.70732,
            interval: (-0.03526, 1.44989),
            standard_error: 0.37879,
            p_value: 0.06191,
        },
        Frequentist {
            kind: LiftKind::Absolute,
            lift: 0.29,
            interval: (0.04538, 0.53462),
            standard_error: 0.12478,
            p_value: 0.02016,
        },
    ];
    let proportions = (proportion(14, 28), proportion(16, 30));
    let proportion_rows = [Frequentist {
        kind: LiftKind::Relative,
        lift: 0.06667,
        interval: (-0.47767, 0.61101),
        standard_error: 0.2717,
        p_value: 0.80707,
    }];

    let mut checked = 0;
    for row in &mean_rows {
        let got = welch_t_test(&means.0, &means.1, row.kind, alpha).unwrap();
        check_frequentist(&format!("mean {:?}", row.kind), &got, row);
        checked += 1;
    }
    for row in &proportion_rows {
        let got = welch_t_test(&proportions.0, &proportions.1, row.kind, alpha).unwrap();
        check_frequentist(&format!("proportion {:?}", row.kind), &got, row);
        checked += 1;
    }
    assert_eq!(checked, 3);
}

fn check_frequentist(label: &str, got: &bunting_stats::WelchTest, want: &Frequentist) {
    close(&format!("{label} lift"), got.lift.estimate, want.lift);
    close_interval(
        &format!("{label} CI"),
        got.confidence_interval,
        want.interval,
    );
    close(
        &format!("{label} se"),
        got.lift.standard_error,
        want.standard_error,
    );
    close(&format!("{label} p"), got.p_value, want.p_value);
}

#[test]
fn bayesian_gaussian_flat_prior() {
    // (control, treatment, lift, credible interval, sd, chance to beat control)
    let rows = [(
        proportion(49, 100),
        proportion(51, 100),
        0.04082,
        (-0.24779, 0.32943),
        0.14725,
        0.60918,
    )];
    for (control, treatment, lift, interval, sd, chance) in rows {
        let got = gaussian_posterior(
            &control,
            &treatment,
            LiftKind::Relative,
            Alpha::FIVE_PERCENT,
        )
        .unwrap();
        close("lift", got.lift.estimate, lift);
        close_interval("credible interval", got.credible_interval, interval);
        close("sd", got.lift.standard_error, sd);
        close("chance to beat control", got.chance_to_beat_control, chance);
    }
}

#[test]
fn sample_ratio_mismatch_chi_square() {
    let rows: [(&[u64], &[f64], f64); 1] = [(&[1000, 1200], &[0.5, 0.5], 0.000020079)];
    for (observed, weights, p_value) in rows {
        let got = sample_ratio_mismatch(observed, weights).unwrap();
        close("p", got.p_value, p_value);
        // The figure is far below 4 decimals' resolution, so its 5 significant digits too.
        assert!(
            ((got.p_value - p_value) / p_value).abs() < 5e-5,
            "p: got {:e}, reference {p_value:e}",
            got.p_value
        );
        assert_eq!(got.degrees_of_freedom, 1);
    }
}

#[test]
fn multiple_testing_correction() {
    type Adjust = fn(&[f64]) -> Result<Vec<f64>, bunting_stats::StatsError>;
    let rows: [(&str, Adjust, &[f64], &[f64]); 2] = [
        (
            "holm-bonferroni",
            holm_bonferroni,
            &[0.01, 0.04, 0.03, 0.005, 0.55, 0.6],
            &[0.05, 0.12, 0.12, 0.03, 1.0, 1.0],
        ),
        (
            "benjamini-hochberg",
            benjamini_hochberg,
            &[0.898, 0.138, 0.007, 0.964, 0.538, 0.006, 0.138],
            &[0.964, 0.2415, 0.0245, 0.964, 0.7532, 0.0245, 0.2415],
        ),
    ];
    for (name, adjust, raw, want) in rows {
        let got = adjust(raw).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (got, want)) in got.iter().zip(want).enumerate() {
            close(&format!("{name}[{i}]"), *got, *want);
        }
    }
}
