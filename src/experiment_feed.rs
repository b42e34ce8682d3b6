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

use std::sync::Arc;
use std::time::Duration;

use bunting_experiments::RunningExperiments;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::experiments::{
    ExperimentFilter, ExperimentStore, ExperimentStoreError, ExperimentSubscription, StateKind,
};

/// The running experiments, by id and by the flag they run on: the experiments crate's
/// [`RunningExperiments`], which is what the node's shard actors take
/// (`Node::install_experiments`), so what this feed publishes goes to them as it is.
pub type ExperimentCatalog = RunningExperiments;

/// Reads the running experiments from the store.
pub async fn load(store: &dyn ExperimentStore) -> Result<ExperimentCatalog, ExperimentStoreError> {
    let filter = ExperimentFilter {
        flag_set: None,
        state: Some(StateKind::Running),
    };
    let records = store.list_experiments(&filter).await?;
    Ok(ExperimentCatalog::new(
        records.into_iter().map(|r| r.experiment),
    ))
}

/// A running follower: the latest catalog, and the task that keeps it current.
#[derive(Debug)]
pub struct ExperimentFeed {
    pub catalog: watch::Receiver<Arc<ExperimentCatalog>>,
    /// Ends when `closing` flips (or its sender is dropped).
    pub task: JoinHandle<()>,
}

/// Loads the catalog and spawns the follower: it re-reads on every change notice and every
/// `check_every`, and publishes a new catalog only when the running experiments changed. Fails
/// only if the first load does (a node must not run without knowing what is running); a
/// subscription that cannot be made now is retried at each periodic check.
pub async fn follow(
    store: Arc<dyn ExperimentStore>,
    check_every: Duration,
    closing: watch::Receiver<bool>,
) -> Result<ExperimentFeed, ExperimentStoreError> {
    let subscription = match store.subscribe().await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to experiment changes; relying on the periodic check");
            None
        }
    };
    let first = load(store.as_ref()).await?;
    let (publish, catalog) = watch::channel(Arc::new(first));
    let task = tokio::spawn(run(store, subscription, check_every, publish, closing));
    Ok(ExperimentFeed { catalog, task })
}

async fn run(
    store: Arc<dyn ExperimentStore>,
    mut subscription: Option<ExperimentSubscription>,
    check_every: Duration,
    publish: watch::Sender<Arc<ExperimentCatalog>>,
    mut closing: watch::Receiver<bool>,
) {
    let mut check = tokio::time::interval(check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the catalog was just loaded.
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
                    reload(store.as_ref(), &publish).await;
                }
                None => {
                    tracing::warn!("experiment change listener ended; relying on the periodic check");
                    subscription = None;
                }
            },
            _ = check.tick() => {
                if subscription.is_none() {
                    subscription = store.subscribe().await.ok();
                }
                reload(store.as_ref(), &publish).await;
            }
            () = crate::closing::closed(&mut closing) => break,
        }
    }
}

/// Re-reads and publishes if anything changed; on failure keeps the catalog it has (the next
/// notice or check retries).
async fn reload(store: &dyn ExperimentStore, publish: &watch::Sender<Arc<ExperimentCatalog>>) {
    match load(store).await {
        Ok(next) => {
            publish.send_if_modified(|current| {
                if same(current, &next) {
                    false
                } else {
                    *current = Arc::new(next);
                    true
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not re-read the running experiments; keeping the ones in memory")
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
}
