//! What a node needs of experiments at run time: the *running* ones, as an immutable
//! [`ExperimentCatalog`] shared by `Arc`, kept current by a follower task (like `feed.rs` does for
//! flag sets) and published on a watch channel.
//!
//! The follower subscribes first, then loads, so no change slips between the two; after that every
//! notice, and a periodic check that repairs a missed one, re-reads the running experiments whole.
//! A re-read is one query over a handful of rows, and reading whole makes every re-read
//! idempotent and self-ordering: the latest read is the truth, there are no versions to compare.
//! An experiment leaves the catalog as soon as a re-read sees it stopped, so nothing counts toward
//! it afterwards.
//!
//! With a shared tier, the catalog is also kept there (`SharedTier::put_running_experiments`):
//! after every read from the store the follower compares it with the tier's and writes it when
//! they differ, so a late write of an older catalog by another node is repaired at the next check.
//! A node that starts while PostgreSQL is unreachable ([`Start::SharedTier`]) starts from the
//! tier's catalog instead of failing, and its periodic check reads the store again, subscribing
//! once it answers; while the store cannot be read, a periodic check takes the tier's catalog if
//! it changed (another node, with PostgreSQL, wrote it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bunting_experiments::{Experiment, ModelError, RunningExperiments, TrafficSplit};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use bunting_stores::experiments::{
    ExperimentFilter, ExperimentStore, ExperimentStoreError, ExperimentSubscription, PageLimit,
    StateKind,
};
use bunting_stores::shared_tier::SharedTier;

/// The running experiments, by id and by the flag they run on: the experiments crate's
/// [`RunningExperiments`], which is what the node's shard actors take
/// (`Node::install_experiments`), so what this feed publishes goes to them as it is.
pub type ExperimentCatalog = RunningExperiments;

/// Reads the running experiments from the store: all of them, from one read.
///
/// Unpaged on purpose ([`PageLimit::Unlimited`], which no request can ask for): the catalog must
/// hold every running experiment, or users of the ones left out would go uncounted, and it must
/// be one consistent cut, which following pages (separate reads) is not: a stop and a start on
/// the same flag between two pages could put two experiments on one flag. It stays small, as at
/// most one experiment runs per flag, and the shards hold all of it anyway.
pub async fn load(store: &dyn ExperimentStore) -> Result<ExperimentCatalog, ExperimentStoreError> {
    let filter = ExperimentFilter {
        state: Some(StateKind::Running),
        limit: PageLimit::Unlimited,
        ..ExperimentFilter::default()
    };
    let page = store.list_experiments(&filter).await?;
    Ok(ExperimentCatalog::new(
        page.experiments.into_iter().map(|r| r.experiment),
    ))
}

/// Where the follower's first catalog comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The store; if it cannot be read the follower does not start (a node that has PostgreSQL
    /// must not run without knowing what is running).
    Store,
    /// The shared tier's catalog, or none (logged) if the tier holds none or cannot be read:
    /// PostgreSQL was unreachable at start-up. The store is read from the first periodic check on.
    SharedTier,
}

/// A running follower: the latest catalog, and the task that keeps it current.
#[derive(Debug)]
pub struct ExperimentFeed {
    pub catalog: watch::Receiver<Arc<ExperimentCatalog>>,
    /// Ends when `closing` flips (or its sender is dropped).
    pub task: JoinHandle<()>,
}

/// Loads the first catalog (from where `start` says) and spawns the follower: it re-reads on every
/// change notice and every `check_every`, publishes a new catalog only when the running
/// experiments changed, and keeps `tier`'s copy current. Fails only if `start` is
/// [`Start::Store`] and the first load fails; a subscription that cannot be made now is retried at
/// each periodic check.
pub async fn follow(
    store: Arc<dyn ExperimentStore>,
    tier: Option<Arc<dyn SharedTier>>,
    start: Start,
    check_every: Duration,
    closing: watch::Receiver<bool>,
) -> Result<ExperimentFeed, ExperimentStoreError> {
    let (subscription, first, loaded) = match start {
        Start::Store => {
            let subscription = match store.subscribe().await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to experiment changes; relying on the periodic check");
                    None
                }
            };
            (subscription, load(store.as_ref()).await?, true)
        }
        // No attempt on the store here: it just failed, and the node's start must not wait on it.
        Start::SharedTier => (None, tier_start(tier.as_deref()).await, false),
    };
    let (publish, catalog) = watch::channel(Arc::new(first));
    let follower = Follower {
        store,
        tier,
        publish,
        loaded,
    };
    let task = tokio::spawn(follower.run(subscription, check_every, closing));
    Ok(ExperimentFeed { catalog, task })
}

/// The catalog a node without PostgreSQL starts with.
async fn tier_start(tier: Option<&dyn SharedTier>) -> ExperimentCatalog {
    let Some(tier) = tier else {
        tracing::warn!(
            "PostgreSQL is unreachable and there is no shared tier: no experiments run on this \
             node until PostgreSQL is back"
        );
        return ExperimentCatalog::default();
    };
    match tier.running_experiments().await {
        Ok(Some(experiments)) => {
            let catalog = checked(experiments);
            tracing::warn!(
                running = catalog.len(),
                "PostgreSQL is unreachable: counting the running experiments the shared tier holds \
                 until it is back"
            );
            catalog
        }
        Ok(None) => {
            tracing::warn!(
                "PostgreSQL is unreachable and the shared tier holds no running experiments: none \
                 run on this node until PostgreSQL is back"
            );
            ExperimentCatalog::default()
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "PostgreSQL and the shared tier are both unreachable: no experiments run on this \
                 node until one of them answers"
            );
            ExperimentCatalog::default()
        }
    }
}

/// The running experiments among `experiments`, as read from the tier. Each is checked as a
/// draft is (arms, control, metrics, split): another process wrote them, and an experiment that
/// breaks the model's rules is logged and left out rather than counted.
fn checked(experiments: Vec<Experiment>) -> ExperimentCatalog {
    ExperimentCatalog::new(experiments.into_iter().filter(|e| match check(e) {
        Ok(()) => true,
        Err(problem) => {
            tracing::error!(experiment = %e.id, %problem, "ignoring an invalid experiment in the shared tier");
            false
        }
    }))
}

fn check(e: &Experiment) -> Result<(), ModelError> {
    let weights = match &e.split {
        TrafficSplit::Even => BTreeMap::new(),
        TrafficSplit::Weighted(weights) => weights.clone(),
    };
    Experiment::draft(
        e.id.clone(),
        e.flag_set.clone(),
        e.flag_key.clone(),
        e.arms.iter().cloned(),
        e.control.clone(),
        e.metrics.clone(),
    )?
    .with_split(weights)?;
    Ok(())
}

struct Follower {
    store: Arc<dyn ExperimentStore>,
    tier: Option<Arc<dyn SharedTier>>,
    publish: watch::Sender<Arc<ExperimentCatalog>>,
    /// Whether the store has been read yet (not, on a node that started from the tier).
    loaded: bool,
}

impl Follower {
    async fn run(
        mut self,
        mut subscription: Option<ExperimentSubscription>,
        check_every: Duration,
        mut closing: watch::Receiver<bool>,
    ) {
        if self.loaded {
            // The first load: the tier gets it whatever it holds, now that the node has started.
            let current = self.publish.borrow().clone();
            self.share(&current, true).await;
        }
        let mut check = tokio::time::interval(check_every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and the catalog was just loaded (or, from the tier, the
        // store just failed).
        check.tick().await;
        loop {
            let notice = ExperimentSubscription::next(&mut subscription);
            tokio::select! {
                notice = notice => match notice {
                    Some(_) => {
                        // A burst of changes (a script starting ten experiments) is one re-read.
                        if let Some(s) = subscription.as_mut() {
                            while s.try_recv().is_some() {}
                        }
                        self.reload(false).await;
                    }
                    None => {
                        tracing::warn!("experiment change listener ended; relying on the periodic check");
                        subscription = None;
                    }
                },
                _ = check.tick() => {
                    if subscription.is_none() {
                        subscription = self.store.subscribe().await.ok();
                    }
                    self.reload(true).await;
                }
                () = crate::closing::closed(&mut closing) => break,
            }
        }
    }

    /// Re-reads and publishes if anything changed, then brings the tier's copy up to date. On
    /// failure keeps the catalog it has (the next notice or check retries), unless a periodic
    /// check finds a different one in the tier.
    async fn reload(&mut self, periodic: bool) {
        match load(self.store.as_ref()).await {
            Ok(next) => {
                let changed = self.publish_if_changed(next);
                if !self.loaded {
                    tracing::warn!("read the running experiments from PostgreSQL again");
                }
                let first = !self.loaded;
                self.loaded = true;
                let current = self.publish.borrow().clone();
                self.share(&current, changed || first).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not re-read the running experiments; keeping the ones in memory");
                if periodic {
                    self.follow_tier().await;
                }
            }
        }
    }

    fn publish_if_changed(&self, next: ExperimentCatalog) -> bool {
        self.publish.send_if_modified(|current| {
            if same(current, &next) {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        })
    }

    /// Writes `catalog` to the tier if the tier holds something else. If the tier cannot be read,
    /// writes anyway when `changed` (the write waits in the tier's queue until it answers), and
    /// otherwise leaves it to the next check. Runs in the follower, not a task of its own, so the
    /// writes of one node reach the tier in order; the tier's timeout and breaker bound it, and
    /// the catalog was published (installed) before. A failure is logged, never fatal.
    async fn share(&self, catalog: &ExperimentCatalog, changed: bool) {
        let Some(tier) = self.tier.as_deref() else {
            return;
        };
        match tier.running_experiments().await {
            Ok(Some(held)) => {
                if same(&ExperimentCatalog::new(held), catalog) {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) if changed => {
                tracing::debug!(error = %e, "cannot read the shared tier's running experiments; writing them anyway");
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot compare the running experiments with the shared tier's");
                return;
            }
        }
        let mut experiments: Vec<Experiment> = catalog.iter().map(|e| (**e).clone()).collect();
        experiments.sort_by(|a, b| a.id.cmp(&b.id));
        match tier.put_running_experiments(&experiments).await {
            Ok(outcome) => {
                tracing::debug!(
                    running = experiments.len(),
                    ?outcome,
                    "running experiments written to the shared tier"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not write the running experiments to the shared tier")
            }
        }
    }

    /// The store cannot be read: takes the tier's catalog if it differs from the one in memory (a
    /// node that can read the store wrote it). A tier that holds none or cannot be read changes
    /// nothing.
    async fn follow_tier(&self) {
        let Some(tier) = self.tier.as_deref() else {
            return;
        };
        match tier.running_experiments().await {
            Ok(Some(held)) => {
                if self.publish_if_changed(checked(held)) {
                    tracing::warn!(
                        "running experiments changed in the shared tier; following them until PostgreSQL answers"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the shared tier's running experiments either")
            }
        }
    }
}

/// Whether two catalogs hold the same experiments (equal definitions and states).
fn same(a: &ExperimentCatalog, b: &ExperimentCatalog) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|e| b.get(&e.id).is_some_and(|other| other == e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bunting_experiments::{
        Experiment, ExperimentId, ExperimentState, Metric, MetricKind, MetricName,
    };

    use super::*;

    fn experiment(id: &str, control: &str, state: ExperimentState) -> Experiment {
        Experiment {
            id: ExperimentId::new(id).unwrap(),
            flag_set: "shop".into(),
            flag_key: id.into(),
            arms: BTreeSet::from(["a".to_owned(), "b".to_owned()]),
            control: control.into(),
            metrics: vec![Metric {
                name: MetricName::new("m").unwrap(),
                event: "buy".into(),
                kind: MetricKind::Conversion,
            }],
            split: Default::default(),
            analysis: Default::default(),
            state,
        }
    }

    #[test]
    fn catalogs_are_the_same_only_with_the_same_experiments() {
        let running = ExperimentState::Running { started_at: 1 };
        let catalog = |experiments: Vec<Experiment>| ExperimentCatalog::new(experiments);
        let one = catalog(vec![experiment("x", "a", running)]);
        assert!(same(&one, &catalog(vec![experiment("x", "a", running)])));
        // A draft is not in a catalog at all.
        assert!(same(
            &one,
            &catalog(vec![
                experiment("x", "a", running),
                experiment("y", "a", ExperimentState::Draft)
            ])
        ));
        assert!(!same(&one, &catalog(vec![])));
        assert!(!same(&one, &catalog(vec![experiment("y", "a", running)])));
        assert!(!same(&one, &catalog(vec![experiment("x", "b", running)])));
        assert!(!same(
            &one,
            &catalog(vec![experiment(
                "x",
                "a",
                ExperimentState::Running { started_at: 2 }
            )])
        ));
    }

    #[test]
    fn experiments_from_the_tier_that_break_the_model_are_left_out() {
        let running = ExperimentState::Running { started_at: 1 };
        let good = experiment("good", "a", running);
        let mut no_such_control = experiment("control", "z", running);
        no_such_control.control = "z".into();
        let mut one_arm = experiment("arms", "a", running);
        one_arm.arms = BTreeSet::from(["a".to_owned()]);
        let mut no_metrics = experiment("metrics", "a", running);
        no_metrics.metrics.clear();
        let mut bad_split = experiment("split", "a", running);
        bad_split.split = TrafficSplit::Weighted(BTreeMap::from([("a".to_owned(), 1)]));
        let mut weighted = experiment("weighted", "a", running);
        weighted.split =
            TrafficSplit::Weighted(BTreeMap::from([("a".to_owned(), 9), ("b".to_owned(), 1)]));
        let stopped = experiment(
            "stopped",
            "a",
            ExperimentState::Stopped {
                started_at: 1,
                stopped_at: 2,
            },
        );
        let catalog = checked(vec![
            good,
            no_such_control,
            one_arm,
            no_metrics,
            bad_split,
            weighted,
            stopped,
        ]);
        let mut ids: Vec<&str> = catalog.iter().map(|e| e.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["good", "weighted"]);
    }
}
