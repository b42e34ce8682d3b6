//! Builders the crate's tests share.

use bunting_experiments::{Metric, MetricKind, MetricName};

use crate::model::{BadDirection, Guardrail, RolloutInput, RolloutSpec, StepInput};

pub(crate) fn step(percent: u32, min_duration_secs: u64, min_users: u64) -> StepInput {
    StepInput {
        percent,
        min_duration_secs,
        min_users,
    }
}

pub(crate) fn guardrail(
    name: &str,
    kind: MetricKind,
    bad: BadDirection,
    tolerance: f64,
) -> Guardrail {
    Guardrail {
        metric: Metric {
            name: MetricName::new(name).unwrap(),
            event: name.to_owned(),
            kind,
        },
        bad,
        tolerance,
    }
}

/// 10% → 50% → 100%, 60 s and 100 users each, one conversion guardrail (a drop is bad, 0 tolerated).
pub(crate) fn input() -> RolloutInput {
    RolloutInput {
        id: "checkout-v2".to_owned(),
        flag_set: "default".to_owned(),
        flag_key: "checkout".to_owned(),
        released: "v2".to_owned(),
        baseline: "v1".to_owned(),
        steps: vec![step(10, 60, 100), step(50, 60, 100), step(100, 60, 100)],
        guardrails: vec![guardrail(
            "purchase",
            MetricKind::Conversion,
            BadDirection::Decrease,
            0.0,
        )],
        alpha: 0.05,
    }
}

pub(crate) fn spec() -> RolloutSpec {
    RolloutSpec::new(input()).unwrap()
}
