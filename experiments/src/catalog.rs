//! The experiments a node counts right now: every *running* experiment, found by the flag it is
//! on. Immutable and shared by `Arc`, like the flag catalog: a change builds a new one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{Experiment, ExperimentId};

#[derive(Debug, Clone, Default)]
pub struct RunningExperiments {
    /// Set, then flag: two string-keyed levels so the hot path looks up with `&str` and allocates
    /// nothing (every evaluation on a node with running experiments asks).
    by_flag: HashMap<String, HashMap<String, Vec<Arc<Experiment>>>>,
    by_id: HashMap<ExperimentId, Arc<Experiment>>,
}

impl RunningExperiments {
    /// The running ones among `experiments` (drafts and stopped ones are left out).
    pub fn new(experiments: impl IntoIterator<Item = Experiment>) -> RunningExperiments {
        let mut catalog = RunningExperiments::default();
        for e in experiments.into_iter().filter(|e| e.state.is_running()) {
            let e = Arc::new(e);
            catalog
                .by_flag
                .entry(e.flag_set.clone())
                .or_default()
                .entry(e.flag_key.clone())
                .or_default()
                .push(e.clone());
            catalog.by_id.insert(e.id.clone(), e);
        }
        catalog
    }

    /// Running experiments on flag `key` of set `set`.
    pub fn on_flag(&self, set: &str, key: &str) -> &[Arc<Experiment>] {
        self.by_flag
            .get(set)
            .and_then(|flags| flags.get(key))
            .map_or(&[], Vec::as_slice)
    }

    /// Whether any running experiment is on a flag of set `set` (a resolve-all of that set then
    /// carries per-user work).
    pub fn on_set(&self, set: &str) -> bool {
        self.by_flag
            .get(set)
            .is_some_and(|flags| flags.values().any(|on| !on.is_empty()))
    }

    pub fn get(&self, id: &ExperimentId) -> Option<&Arc<Experiment>> {
        self.by_id.get(id)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Experiment>> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Metric, MetricKind, MetricName};

    fn experiment(id: &str, flag: &str) -> Experiment {
        Experiment::draft(
            ExperimentId::new(id).unwrap(),
            "default",
            flag,
            ["a".to_owned(), "b".to_owned()],
            "a",
            vec![Metric {
                name: MetricName::new("m").unwrap(),
                event: "e".into(),
                kind: MetricKind::Conversion,
            }],
        )
        .unwrap()
    }

    #[test]
    fn only_running_experiments_are_found() {
        let mut running = experiment("one", "f");
        running.start(1).unwrap();
        let draft = experiment("two", "f");
        let mut stopped = experiment("three", "g");
        stopped.start(1).unwrap();
        stopped.stop(2).unwrap();
        let catalog = RunningExperiments::new([running, draft, stopped]);
        assert_eq!(catalog.len(), 1);
        assert_eq!(catalog.on_flag("default", "f").len(), 1);
        assert!(catalog.on_flag("default", "g").is_empty());
        assert!(catalog.on_flag("other", "f").is_empty());
        assert!(catalog.get(&ExperimentId::new("one").unwrap()).is_some());
        assert!(catalog.on_set("default"));
        assert!(!catalog.on_set("other"));
        assert!(!RunningExperiments::new([]).on_set("default"));
    }
}
