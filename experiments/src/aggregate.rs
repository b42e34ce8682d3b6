//! Counting: one user's state in one experiment (kept by the shard that owns the user) and the
//! per-arm sufficient statistics a shard accumulates from it.
//!
//! The statistics are exactly what `bunting-stats` needs and nothing per user: for each arm, the
//! users exposed; for each metric, the users converted, and the sum and sum of squares of the
//! per-user totals. A user's total changing from `t` to `t + v` adds `v` to the sum and
//! `v (2t + v)` to the sum of squares, so the aggregate is maintained without revisiting users.
//! Users exposed but never tracked count with a total of 0, as they must for an unbiased mean.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{Experiment, MetricKind, MetricName};

/// One user's record in one experiment: the arm of their first exposure and what they have done
/// since. Created at the first exposure and never changed by later ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserExposure {
    pub arm: String,
    /// Unix milliseconds of the first exposure.
    pub exposed_at: i64,
    /// Mean metrics: the user's running total.
    #[serde(default)]
    pub totals: BTreeMap<MetricName, f64>,
    /// Conversion metrics the user has converted on.
    #[serde(default)]
    pub converted: BTreeSet<MetricName>,
}

impl UserExposure {
    pub fn new(arm: impl Into<String>, exposed_at: i64) -> UserExposure {
        UserExposure {
            arm: arm.into(),
            exposed_at,
            totals: BTreeMap::new(),
            converted: BTreeSet::new(),
        }
    }
}

/// One metric's sufficient statistics in one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricTotals {
    /// Users who converted (conversion metrics).
    pub converted: u64,
    /// Sum of per-user totals (mean metrics).
    pub sum: f64,
    /// Sum of squared per-user totals (mean metrics).
    pub sum_squares: f64,
}

/// One arm's statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmTotals {
    pub exposed: u64,
    #[serde(default)]
    pub metrics: BTreeMap<MetricName, MetricTotals>,
}

/// Every arm of one experiment, as one shard (or, merged, the whole cluster) counted them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentTotals {
    pub arms: BTreeMap<String, ArmTotals>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrackError {
    #[error("event value {0} is not a finite number")]
    NotFinite(f64),
    #[error(
        "event value {0} is negative; a mean metric sums non-negative values (track refunds as their own event)"
    )]
    Negative(f64),
    #[error("event name is empty")]
    EmptyEvent,
}

/// What one tracked event did in one experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// At least one metric of the experiment moved.
    Counted,
    /// The experiment has no metric on this event.
    NotAMetric,
}

/// Checks an event before anything is counted, so a bad event changes nothing anywhere.
pub fn check_event(event: &str, value: f64) -> Result<(), TrackError> {
    if event.trim().is_empty() {
        return Err(TrackError::EmptyEvent);
    }
    if !value.is_finite() {
        return Err(TrackError::NotFinite(value));
    }
    if value < 0.0 {
        return Err(TrackError::Negative(value));
    }
    Ok(())
}

impl ExperimentTotals {
    /// Counts a first exposure to `arm`.
    pub fn expose(&mut self, arm: &str) {
        self.arms.entry(arm.to_owned()).or_default().exposed += 1;
    }

    /// Counts `event` (with `value`, checked by [`check_event`]) for an exposed user: updates the
    /// user's record and this arm's statistics together.
    pub fn track(
        &mut self,
        experiment: &Experiment,
        user: &mut UserExposure,
        event: &str,
        value: f64,
    ) -> Result<Tracked, TrackError> {
        check_event(event, value)?;
        let mut tracked = Tracked::NotAMetric;
        let arm = self.arms.entry(user.arm.clone()).or_default();
        for metric in experiment.metrics_for(event) {
            tracked = Tracked::Counted;
            let totals = arm.metrics.entry(metric.name.clone()).or_default();
            match metric.kind {
                MetricKind::Conversion => {
                    if user.converted.insert(metric.name.clone()) {
                        totals.converted += 1;
                    }
                }
                MetricKind::Mean => {
                    let before = user.totals.entry(metric.name.clone()).or_insert(0.0);
                    totals.sum += value;
                    // (t + v)² − t², written so it does not lose t² to cancellation.
                    totals.sum_squares += value * (2.0 * *before + value);
                    *before += value;
                }
            }
        }
        Ok(tracked)
    }

    /// Counts a user's whole record, as if their exposure and every event were replayed: how a
    /// shard's new owner rebuilds its statistics from the user records in the shared tier.
    pub fn add_user(&mut self, user: &UserExposure) {
        let arm = self.arms.entry(user.arm.clone()).or_default();
        arm.exposed += 1;
        for metric in &user.converted {
            arm.metrics.entry(metric.clone()).or_default().converted += 1;
        }
        for (metric, total) in &user.totals {
            let m = arm.metrics.entry(metric.clone()).or_default();
            m.sum += total;
            m.sum_squares += total * total;
        }
    }

    /// Adds another shard's counts to these.
    pub fn merge(&mut self, other: &ExperimentTotals) {
        for (name, theirs) in &other.arms {
            let ours = self.arms.entry(name.clone()).or_default();
            ours.exposed += theirs.exposed;
            for (metric, t) in &theirs.metrics {
                let m = ours.metrics.entry(metric.clone()).or_default();
                m.converted += t.converted;
                m.sum += t.sum;
                m.sum_squares += t.sum_squares;
            }
        }
    }

    pub fn exposed(&self) -> u64 {
        self.arms.values().map(|a| a.exposed).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExperimentId, Metric};

    fn experiment() -> Experiment {
        let metric = |name: &str, kind| Metric {
            name: MetricName::new(name).unwrap(),
            event: "purchase".into(),
            kind,
        };
        Experiment::draft(
            ExperimentId::new("e").unwrap(),
            "default",
            "f",
            ["a".to_owned(), "b".to_owned()],
            "a",
            vec![
                metric("bought", MetricKind::Conversion),
                metric("revenue", MetricKind::Mean),
            ],
        )
        .unwrap()
    }

    #[test]
    fn sums_of_squares_are_of_per_user_totals() {
        let e = experiment();
        let mut totals = ExperimentTotals::default();
        let mut ann = UserExposure::new("b", 0);
        let mut bob = UserExposure::new("b", 0);
        totals.expose("b");
        totals.expose("b");
        totals.track(&e, &mut ann, "purchase", 3.0).unwrap();
        totals.track(&e, &mut ann, "purchase", 4.0).unwrap();
        totals.track(&e, &mut bob, "purchase", 5.0).unwrap();
        let revenue = totals.arms["b"].metrics[&MetricName::new("revenue").unwrap()];
        assert_eq!(revenue.sum, 12.0);
        // Per-user totals 7 and 5: 49 + 25, not 9 + 16 + 25.
        assert_eq!(revenue.sum_squares, 74.0);
        let bought = totals.arms["b"].metrics[&MetricName::new("bought").unwrap()];
        assert_eq!(
            bought.converted, 2,
            "a second purchase does not convert twice"
        );
        assert_eq!(totals.arms["b"].exposed, 2);
        assert_eq!(ann.totals[&MetricName::new("revenue").unwrap()], 7.0);
    }

    #[test]
    fn bad_events_change_nothing() {
        let e = experiment();
        let mut totals = ExperimentTotals::default();
        let mut user = UserExposure::new("a", 0);
        totals.expose("a");
        let before = (totals.clone(), user.clone());
        for (event, value) in [
            ("purchase", f64::NAN),
            ("purchase", f64::INFINITY),
            ("purchase", -1.0),
            ("", 1.0),
        ] {
            assert!(
                totals.track(&e, &mut user, event, value).is_err(),
                "{event:?} {value}"
            );
        }
        assert_eq!((totals, user), before);
    }

    #[test]
    fn unrelated_events_are_not_metrics() {
        let e = experiment();
        let mut totals = ExperimentTotals::default();
        let mut user = UserExposure::new("a", 0);
        assert_eq!(
            totals.track(&e, &mut user, "page_view", 1.0),
            Ok(Tracked::NotAMetric)
        );
        assert_eq!(
            totals.track(&e, &mut user, "purchase", 1.0),
            Ok(Tracked::Counted)
        );
    }

    #[test]
    fn replaying_user_records_gives_the_same_totals() {
        let e = experiment();
        let mut live = ExperimentTotals::default();
        let mut users = vec![
            UserExposure::new("a", 0),
            UserExposure::new("b", 0),
            UserExposure::new("b", 0),
        ];
        for u in &users {
            live.expose(&u.arm.clone());
        }
        for (u, value) in users.iter_mut().zip([2.0, 0.5, 4.0]) {
            live.track(&e, u, "purchase", value).unwrap();
        }
        live.track(&e, &mut users[0], "purchase", 1.0).unwrap();
        let mut rebuilt = ExperimentTotals::default();
        for u in &users {
            rebuilt.add_user(u);
        }
        assert_eq!(rebuilt, live);
    }

    #[test]
    fn shards_merge_by_adding() {
        let e = experiment();
        let (mut one, mut two) = (ExperimentTotals::default(), ExperimentTotals::default());
        one.expose("a");
        two.expose("a");
        two.expose("b");
        two.track(&e, &mut UserExposure::new("b", 0), "purchase", 2.0)
            .unwrap();
        one.merge(&two);
        assert_eq!(one.arms["a"].exposed, 2);
        assert_eq!(one.arms["b"].exposed, 1);
        assert_eq!(one.exposed(), 3);
        assert_eq!(
            one.arms["b"].metrics[&MetricName::new("revenue").unwrap()].sum_squares,
            4.0
        );
    }
}
