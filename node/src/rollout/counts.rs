//! The node's [`GuardrailCounts`]: a rollout counts under an experiment of its own,
//! `rollout.<id>`, on its flag (control: the baseline; metrics: the guardrails), so exposures and
//! guardrail events go through the same shard owners and event stores as any experiment's, and
//! its totals are every node's, summed by the dispatch.

use std::sync::Arc;

use async_trait::async_trait;
use bunting_experiments::{AnalysisSettings, ExperimentId, ExperimentTotals};
use bunting_rollouts::RolloutSpec;
use bunting_stores::experiments::{
    ExperimentFilter, ExperimentStore, ExperimentStoreError, NewExperiment, PageLimit, StateKind,
};

use super::controller::GuardrailCounts;
use crate::dispatch::Dispatch;

/// The service name the controller's totals requests are admitted (and counted) under.
const SERVICE: &str = "rollout_controller";

#[derive(Debug, Clone)]
pub struct NodeCounts {
    experiments: Arc<dyn ExperimentStore>,
    dispatch: Dispatch,
}

impl NodeCounts {
    pub fn new(experiments: Arc<dyn ExperimentStore>, dispatch: Dispatch) -> NodeCounts {
        NodeCounts {
            experiments,
            dispatch,
        }
    }
}

/// The experiment a rollout counts under (ids are at most 56 characters, so this fits in 64).
pub fn experiment_id(spec: &RolloutSpec) -> Result<ExperimentId, String> {
    ExperimentId::new(format!("rollout.{}", spec.id)).map_err(|e| e.to_string())
}

#[async_trait]
impl GuardrailCounts for NodeCounts {
    async fn running_experiment(
        &self,
        flag_set: &str,
        flag_key: &str,
    ) -> Result<Option<ExperimentId>, String> {
        // At most one experiment runs per flag, and the running ones are few: one read.
        let page = self
            .experiments
            .list_experiments(&ExperimentFilter {
                flag_set: Some(flag_set.to_owned()),
                state: Some(StateKind::Running),
                after: None,
                limit: PageLimit::Unlimited,
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(page
            .experiments
            .into_iter()
            .find(|r| r.experiment.flag_key == flag_key)
            .map(|r| r.experiment.id))
    }

    async fn start(&self, spec: &RolloutSpec, principal: &str) -> Result<(), String> {
        let id = experiment_id(spec)?;
        let created = self
            .experiments
            .create_experiment(
                NewExperiment {
                    id: id.clone(),
                    flag_set: spec.flag_set.clone(),
                    flag_key: spec.flag_key.clone(),
                    control: spec.baseline.clone(),
                    metrics: spec.guardrails.iter().map(|g| g.metric.clone()).collect(),
                    split: Default::default(),
                    analysis: AnalysisSettings::default(),
                },
                principal,
            )
            .await;
        match created {
            // A retry after a start that failed half way finds its experiment already there.
            Ok(_) | Err(ExperimentStoreError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        self.experiments
            .start_experiment(&id, principal)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn totals(&self, spec: &RolloutSpec) -> Result<ExperimentTotals, String> {
        self.dispatch
            .experiment_totals(SERVICE, experiment_id(spec)?)
            .await
            .map_err(|e| e.to_string())
    }

    async fn stop(&self, spec: &RolloutSpec, principal: &str) -> Result<(), String> {
        self.experiments
            .stop_experiment(&experiment_id(spec)?, principal)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
