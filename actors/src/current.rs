//! What the node serves right now, for the fast path: the catalog and the running experiments as
//! two `Arc` snapshots that a request's task loads without a lock and without a mailbox hop.
//!
//! Only the supervisor writes them, each time *before* it sends the same value to the shards
//! (and before it answers the caller that asked for the change). So a request started after a
//! change returned sees it on either path, and the snapshot is never older than what any shard
//! holds: a shard may still have the previous catalog in its mailbox for a moment, never a newer
//! one.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bunting_experiments::RunningExperiments;

use crate::catalog::Catalog;

#[derive(Debug)]
pub(crate) struct Current {
    catalog: ArcSwap<Catalog>,
    experiments: ArcSwap<RunningExperiments>,
}

impl Current {
    pub(crate) fn new(catalog: Arc<Catalog>) -> Current {
        Current {
            catalog: ArcSwap::new(catalog),
            experiments: ArcSwap::new(Arc::new(RunningExperiments::default())),
        }
    }

    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// A momentary look (no reference count taken): held only while a request is sorted.
    pub(crate) fn experiments(&self) -> arc_swap::Guard<Arc<RunningExperiments>> {
        self.experiments.load()
    }

    /// The supervisor's, before the fan-out of `catalog` to the shards.
    pub(crate) fn install_catalog(&self, catalog: Arc<Catalog>) {
        self.catalog.store(catalog);
    }

    /// The supervisor's, before the fan-out of `experiments` to the shards.
    pub(crate) fn install_experiments(&self, experiments: Arc<RunningExperiments>) {
        self.experiments.store(experiments);
    }
}
