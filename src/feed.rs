//! Feeding a node's actor tree from its flag source: the initial catalog, then every change.

use std::sync::Arc;
use std::time::SystemTime;

use bunting_actors::{Catalog, Node, Update};
use bunting_engine::CompileOptions;
use tokio::sync::watch;

use crate::store::file::{FileSource, FileWatch};
use crate::store::{AdminStore, ChangeNotice, FlagSetSnapshot, StoreError};

/// Where the catalog comes from once the node runs.
#[derive(Debug)]
pub enum Feed {
    File {
        set: Arc<str>,
        watch: FileWatch,
    },
    Store {
        store: Arc<dyn AdminStore>,
        options: CompileOptions,
        version_check: std::time::Duration,
    },
}

/// The catalog a file source starts with.
pub fn file_catalog(source: &FileSource, set: &str) -> Catalog {
    let current = source.current();
    let update = Update::Put {
        set: set.into(),
        flags: current.flag_set.clone(),
        committed_at: current.modified,
    };
    Catalog::new().apply(&update).unwrap_or_default()
}

/// The catalog a store starts with: every flag set it holds, each at its version.
pub async fn store_catalog(
    store: &dyn AdminStore,
    options: &CompileOptions,
) -> Result<Catalog, StoreError> {
    let mut catalog = Catalog::new();
    for snapshot in store.snapshots().await? {
        if let Some(next) = catalog.apply(&put(&snapshot, options)?) {
            catalog = next;
        }
    }
    Ok(catalog)
}

fn put(snapshot: &FlagSetSnapshot, options: &CompileOptions) -> Result<Update, StoreError> {
    Ok(Update::Put {
        set: snapshot.id.as_str().into(),
        flags: Arc::new(snapshot.compile(options)?),
        committed_at: snapshot.updated_at.into(),
    })
}

/// Runs until `closing` flips: applies every change the source reports.
pub async fn run(feed: Feed, node: Arc<Node>, mut closing: watch::Receiver<bool>) {
    match feed {
        Feed::File { set, mut watch } => loop {
            tokio::select! {
                changed = watch.changed() => {
                    let Some(current) = changed else { break };
                    let update = Update::Put {
                        set: set.clone(),
                        flags: current.flag_set,
                        committed_at: current.modified,
                    };
                    apply(&node, update).await;
                }
                () = crate::closing::closed(&mut closing) => break,
            }
        },
        Feed::Store {
            store,
            options,
            version_check,
        } => follow_store(store, options, version_check, node, closing).await,
    }
}

/// Applies one update; the node's supervisor being gone is logged, since the feed has no caller
/// to report to (the node is shutting down or has failed).
async fn apply(node: &Node, update: Update) {
    let (set, version) = (update.set().clone(), update.version());
    if let Err(e) = node.apply(update).await {
        tracing::error!(error = %e, %set, version, "could not apply a flag change");
    }
}

/// Follows a store: notifications for speed, a periodic full version check for repair (a
/// notification missed while disconnected is caught up by version).
async fn follow_store(
    store: Arc<dyn AdminStore>,
    options: CompileOptions,
    version_check: std::time::Duration,
    node: Arc<Node>,
    mut closing: watch::Receiver<bool>,
) {
    let mut subscription = None;
    let mut check = tokio::time::interval(version_check);
    loop {
        if subscription.is_none() {
            match store.subscribe().await {
                Ok(s) => subscription = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to flag changes; relying on the version check")
                }
            }
        }
        let notice = async {
            match subscription.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            notice = notice => match notice {
                Some(ChangeNotice::Changed { flag_set, version, .. }) => {
                    catch_up_set(store.as_ref(), &options, &node, &flag_set, version).await;
                }
                Some(ChangeNotice::Deleted { flag_set, version, at }) => {
                    let update = Update::Remove {
                        set: flag_set.as_str().into(),
                        version: u64::try_from(version).unwrap_or(0),
                        committed_at: at.into(),
                    };
                    apply(&node, update).await;
                }
                Some(ChangeNotice::Resync) => catch_up(store.as_ref(), &options, &node).await,
                None => subscription = None,
            },
            _ = check.tick() => catch_up(store.as_ref(), &options, &node).await,
            () = crate::closing::closed(&mut closing) => break,
        }
    }
}

async fn catch_up_set(
    store: &dyn AdminStore,
    options: &CompileOptions,
    node: &Node,
    set: &str,
    version: i64,
) {
    let update = match store.snapshot(set).await {
        Ok(snapshot) => put(&snapshot, options),
        Err(StoreError::NotFound { .. }) => Ok(Update::Remove {
            set: set.into(),
            version: u64::try_from(version).unwrap_or(0),
            committed_at: SystemTime::now(),
        }),
        Err(e) => Err(e),
    };
    match update {
        Ok(update) => {
            apply(node, update).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, set, "could not read a changed flag set; the version check will retry")
        }
    }
}

/// Applies every set whose version moved; sets the store no longer has are removed.
async fn catch_up(store: &dyn AdminStore, options: &CompileOptions, node: &Node) {
    let snapshots = match store.snapshots().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "version check failed; serving the flags in memory");
            return;
        }
    };
    let current = node.catalog();
    for snapshot in &snapshots {
        let newer = current
            .version_of(&snapshot.id)
            .is_none_or(|v| u64::try_from(snapshot.version).is_ok_and(|s| s > v));
        if newer {
            catch_up_set(store, options, node, &snapshot.id, snapshot.version).await;
        }
    }
    for (set, flags) in current.sets() {
        if !snapshots.iter().any(|s| s.id.as_str() == &**set) {
            let update = Update::Remove {
                set: set.clone(),
                version: flags.version() + 1,
                committed_at: SystemTime::now(),
            };
            apply(node, update).await;
        }
    }
}
