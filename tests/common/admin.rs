//! Flags set up through the Admin API, as an operator would: one call for the set, one per flag.

use super::Channel;
use bunting_proto::bunting::v1 as pb;
use bunting_proto::bunting::v1::admin_client::AdminClient;
use bunting_proto::bunting::v1::experiments_client::ExperimentsClient;
use serde_json::Value;

/// Creates flag set `set` holding `flags` (key, flagd definition), each write as `actor`.
pub async fn create_set_with_flags(
    admin: &mut AdminClient<Channel>,
    set: &str,
    flags: &[(&str, Value)],
    actor: &str,
) {
    admin
        .create_flag_set(pb::CreateFlagSetRequest {
            id: set.into(),
            actor: actor.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("creating flag set {set}: {e}"));
    for (key, definition) in flags {
        admin
            .create_flag(pb::CreateFlagRequest {
                flag_set_id: set.into(),
                key: (*key).into(),
                definition: definition.to_string(),
                expected_flag_set_version: 0,
                actor: actor.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("creating flag {set}/{key}: {e}"));
    }
}

/// The A/B test the cluster tests run: flag `flag` of set `default`, `control` (blue) and
/// `treatment` (green) split 50/50 by targeting key, created through `admin_url`; experiment
/// `experiment` on it with `metrics`, created and started through `experiments_url`, whose
/// traffic split is the flag's (the sample-ratio check is made against it). Every write as `actor`.
pub async fn start_ab_experiment(
    admin_url: String,
    experiments_url: String,
    flag: &str,
    experiment: &str,
    metrics: Vec<pb::Metric>,
    actor: &str,
) {
    let mut admin = super::connect_with(AdminClient::new, admin_url)
        .await
        .unwrap();
    let definition = serde_json::json!({
        "state": "ENABLED",
        "variants": {"control": "blue", "treatment": "green"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["control", 50], ["treatment", 50]]}
    });
    create_set_with_flags(&mut admin, "default", &[(flag, definition)], actor).await;
    let mut experiments = super::connect_with(ExperimentsClient::new, experiments_url)
        .await
        .unwrap();
    experiments
        .create_experiment(pb::CreateExperimentRequest {
            id: experiment.into(),
            flag_set_id: "default".into(),
            flag_key: flag.into(),
            control_variant: "control".into(),
            metrics,
            traffic_split: [("control".to_owned(), 50), ("treatment".to_owned(), 50)].into(),
            analysis: None,
            actor: actor.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("creating experiment {experiment}: {e}"));
    experiments
        .start_experiment(pb::StartExperimentRequest {
            id: experiment.into(),
            actor: actor.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("starting experiment {experiment}: {e}"));
}

/// A conversion metric named `name`, counting `event`.
pub fn conversion(name: &str, event: &str) -> pb::Metric {
    pb::Metric {
        name: name.into(),
        event: event.into(),
        kind: pb::MetricKind::Conversion.into(),
    }
}
