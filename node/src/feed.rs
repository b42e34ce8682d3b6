//! Feeding a node's actor tree from its flag source: the initial catalog, then every change.
//!
//! With a shared tier beside a store, the feed also writes every snapshot it reads from the store
//! to the tier (compare-and-set by version: the first node to write a version wins and announces
//! it), follows the tier's notifications, and applies newer snapshots it finds there. A node that
//! starts while PostgreSQL is unreachable serves the tier's snapshots until the store is back
//! (and its experiment store waits for the same connection: see `experiment_feed`).
//!
//! PostgreSQL is the authority while it answers: a tier notification is only a hint to read the
//! set from the store, and the periodic version check puts the store's version back wherever the
//! node or the tier got ahead of it or differs from it (logged at ERROR: something wrote the tier
//! that the store never had, or the store was restored from a backup). The tier's copies are
//! trusted only while the store is unreachable, and then only with this deployment's seal.
// The wiring: picks the concrete stores the config names (see node/clippy.toml).
#![allow(clippy::disallowed_types)]

mod pending_store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bunting_actors::{Catalog, Node, Update};
use bunting_engine::CompileOptions;
use chrono::Utc;
use tokio::sync::watch;

use bunting_stores::experiments::{ExperimentStore, PostgresExperimentStore};
use bunting_stores::file::{FileSource, FileWatch};
use bunting_stores::secret_url::SecretUrl;
use bunting_stores::shared_tier::{
    ChangeStream, SharedTier, SnapshotWrite, TierChange, TierContent, TierSnapshot,
};
use bunting_stores::{
    AdminStore, ChangeNotice, FlagSetSnapshot, PostgresSettings, PostgresStore, StoreError,
    Subscription,
};

pub use pending_store::{PendingExperimentStore, PendingStore};

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
        tier: Option<Arc<dyn SharedTier>>,
        /// Turned `true` once the node serves what PostgreSQL holds: at once when it answered at
        /// start-up, else at the first version check that reads it (until then the node serves
        /// the shared tier's snapshots, if any). Health reports SERVING only from then on.
        loaded: watch::Sender<bool>,
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

/// How a PostgreSQL node starts: its catalog, the store the feed and the admin API use, and the
/// experiment store on the same database.
#[derive(Debug)]
pub struct StoreStart {
    pub catalog: Catalog,
    pub store: Arc<dyn AdminStore>,
    pub experiments: Arc<dyn ExperimentStore>,
    /// PostgreSQL was unreachable: the catalog is the shared tier's, and both stores are pending
    /// ones that answer `Unavailable` until they connect.
    pub pending: bool,
    /// The connected store itself, for the rollout store and the controller's lease (both need
    /// PostgreSQL proper); `None` when pending: such a node runs no rollout controller until it
    /// restarts, and the cluster's other nodes hold the lease meanwhile.
    pub postgres: Option<PostgresStore>,
}

/// Connects to PostgreSQL and reads the initial catalog. If PostgreSQL cannot be reached and there
/// is a shared tier, the node starts on the tier's snapshots instead, with a store that keeps
/// retrying the connection (the feed catches up by version once it answers).
pub async fn start_store(
    url: &SecretUrl,
    settings: PostgresSettings,
    tier: Option<&Arc<dyn SharedTier>>,
) -> Result<StoreStart, StoreError> {
    let options = settings.compile;
    let error = match PostgresStore::connect(url.expose(), settings.clone()).await {
        Ok(postgres) => {
            let store: Arc<dyn AdminStore> = Arc::new(postgres.clone());
            match store_catalog(store.as_ref(), &options).await {
                Ok(catalog) => {
                    return Ok(StoreStart {
                        catalog,
                        store,
                        experiments: Arc::new(PostgresExperimentStore::new(&postgres)),
                        pending: false,
                        postgres: Some(postgres),
                    });
                }
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    let (Some(tier), StoreError::Unavailable { .. }) = (tier, &error) else {
        return Err(error);
    };
    tracing::error!(
        error = %error,
        "POSTGRESQL UNREACHABLE AT START-UP: serving the last flag snapshots from the shared tier; \
         retrying PostgreSQL and catching up by version once it is back"
    );
    let catalog = tier_catalog(tier.as_ref(), &options).await;
    tracing::warn!(
        sets = catalog.sets().count(),
        "serving flags from the shared tier"
    );
    let pending = Arc::new(PendingStore::new(url.clone(), settings));
    Ok(StoreStart {
        catalog,
        store: pending.clone(),
        experiments: Arc::new(PendingExperimentStore::new(pending)),
        pending: true,
        postgres: None,
    })
}

/// Every snapshot the tier holds; what cannot be read or compiled is logged and left out.
async fn tier_catalog(tier: &dyn SharedTier, options: &CompileOptions) -> Catalog {
    let mut catalog = Catalog::new();
    let snapshots = match tier.snapshots().await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the shared tier is unreachable too; starting with no flag sets");
            return catalog;
        }
    };
    for snapshot in &snapshots {
        match tier_update(snapshot, options) {
            Ok(update) => {
                if let Some(next) = catalog.apply(&update) {
                    catalog = next;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, set = snapshot.set, version = snapshot.version, "cannot serve a snapshot from the shared tier")
            }
        }
    }
    catalog
}

/// The change a tier snapshot makes: its flags, or the removal its tombstone records.
fn tier_update(snapshot: &TierSnapshot, options: &CompileOptions) -> Result<Update, StoreError> {
    let document = match &snapshot.content {
        TierContent::Flags(json) => json,
        TierContent::Deleted => {
            return Ok(Update::Remove {
                set: snapshot.set.as_str().into(),
                version: snapshot.version,
                // The tier does not keep when the delete committed.
                committed_at: SystemTime::now(),
            });
        }
    };
    let version = i64::try_from(snapshot.version).map_err(|_| StoreError::Internal {
        source: format!(
            "flag set {:?} version {} is out of range",
            snapshot.set, snapshot.version
        )
        .into(),
    })?;
    put(
        &FlagSetSnapshot {
            id: snapshot.set.clone(),
            version,
            document: document.clone(),
            updated_at: Utc::now(),
        },
        options,
    )
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
            tier,
            loaded,
        } => follow_store(store, options, version_check, tier, node, loaded, closing).await,
    }
}

/// Applies one update; the node's supervisor being gone is logged, since the feed has no caller
/// to report to (the node is shutting down or has failed). `false` if it was not handed over.
async fn apply(node: &Node, update: Update) -> bool {
    let (set, version) = (update.set().clone(), update.version());
    match node.apply(update).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e, %set, version, "could not apply a flag change");
            false
        }
    }
}

/// Follows a store: notifications for speed, a periodic full version check for repair (a
/// notification missed while disconnected is caught up by version).
async fn follow_store(
    store: Arc<dyn AdminStore>,
    options: CompileOptions,
    version_check: std::time::Duration,
    tier: Option<Arc<dyn SharedTier>>,
    node: Arc<Node>,
    loaded: watch::Sender<bool>,
    mut closing: watch::Receiver<bool>,
) {
    let tier = tier.as_ref();
    let mut tier_changes = tier.map(|t| t.subscribe());
    if let Some(tier) = tier {
        share_all(store.clone(), tier.clone());
    }
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
        let notice = Subscription::next(&mut subscription);
        tokio::select! {
            notice = notice => match notice {
                Some(ChangeNotice::Changed { flag_set, version, .. }) => {
                    catch_up_set(store.as_ref(), &options, &node, tier, &flag_set, version).await;
                }
                Some(ChangeNotice::Deleted { flag_set, version, at }) => {
                    let version = u64::try_from(version).unwrap_or(0);
                    if let Some(tier) = tier {
                        share(tier.clone(), flag_set.clone(), version, TierContent::Deleted);
                    }
                    let update = Update::Remove {
                        set: flag_set.as_str().into(),
                        version,
                        committed_at: at.into(),
                    };
                    apply(&node, update).await;
                }
                Some(ChangeNotice::Resync) => {
                    catch_up(store.as_ref(), &options, &node, tier).await;
                }
                None => subscription = None,
            },
            change = next_tier_change(&mut tier_changes) => match (change, tier) {
                (Some(TierChange::Changed { set, version }), Some(tier)) => {
                    // The store first: a notification anyone with access to Redis can publish
                    // must not choose what this node serves while the authority answers.
                    if !read_from_store(store.as_ref(), &options, &node, &set).await {
                        follow_tier_set(tier.as_ref(), &options, &node, &set, version).await;
                    }
                }
                (Some(TierChange::Resync), Some(tier)) => {
                    catch_up_from_tier(tier.as_ref(), &options, &node).await;
                }
                _ => tier_changes = None,
            },
            _ = check.tick() => {
                let repaired = catch_up(store.as_ref(), &options, &node, tier).await;
                if repaired && !*loaded.borrow() {
                    tracing::info!("serving PostgreSQL's flag sets");
                    loaded.send_replace(true);
                }
                // The store is down: the tier may have what this node missed meanwhile.
                if let (false, Some(tier)) = (repaired, tier) {
                    catch_up_from_tier(tier.as_ref(), &options, &node).await;
                }
            }
            () = crate::closing::closed(&mut closing) => break,
        }
    }
}

/// Applies what the store holds for `set` (newer versions only, as for any notification).
/// `false` if the store could not be read, so the caller can fall back to the tier.
async fn read_from_store(
    store: &dyn AdminStore,
    options: &CompileOptions,
    node: &Node,
    set: &str,
) -> bool {
    let update = match store.snapshot(set).await {
        Ok(snapshot) => put(&snapshot, options),
        // The store has no such set: the next version check removes it if this node serves it.
        Err(StoreError::NotFound { .. }) => return true,
        Err(StoreError::Unavailable { .. }) => return false,
        Err(e) => Err(e),
    };
    match update {
        Ok(update) => {
            apply(node, update).await;
        }
        Err(e) => tracing::warn!(error = %e, set, "could not read an announced flag set"),
    }
    true
}

async fn catch_up_set(
    store: &dyn AdminStore,
    options: &CompileOptions,
    node: &Node,
    tier: Option<&Arc<dyn SharedTier>>,
    set: &str,
    version: i64,
) {
    let update = match store.snapshot(set).await {
        Ok(snapshot) => {
            let update = put(&snapshot, options);
            if let (Ok(_), Some(tier)) = (&update, tier) {
                share_snapshot(tier.clone(), snapshot);
            }
            update
        }
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

/// Applies every set whose version moved; sets the store no longer has are removed. `false` if
/// the store could not be read.
async fn catch_up(
    store: &dyn AdminStore,
    options: &CompileOptions,
    node: &Node,
    tier: Option<&Arc<dyn SharedTier>>,
) -> bool {
    let snapshots = match store.snapshots().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "version check failed; serving the flags in memory");
            return false;
        }
    };
    let current = node.catalog();
    for snapshot in &snapshots {
        let Ok(stored) = u64::try_from(snapshot.version) else {
            continue;
        };
        match current.version_of(&snapshot.id) {
            Some(serving) if serving == stored => {}
            Some(serving) if serving > stored => {
                restore_from_store(store, options, node, &snapshot.id, serving).await;
            }
            _ => catch_up_set(store, options, node, tier, &snapshot.id, snapshot.version).await,
        }
    }
    if let Some(tier) = tier {
        audit_tier(tier.as_ref(), &snapshots).await;
    }
    for (set, flags) in current.sets() {
        if !snapshots.iter().any(|s| s.id.as_str() == &**set) {
            // The delete's own version is not at hand here; the next after ours is enough to
            // order it after what this node served, and the tier's compare-and-set keeps any
            // newer version another node already wrote.
            let version = flags.version() + 1;
            if let Some(tier) = tier {
                share(tier.clone(), set.to_string(), version, TierContent::Deleted);
            }
            let update = Update::Remove {
                set: set.clone(),
                version,
                committed_at: SystemTime::now(),
            };
            apply(node, update).await;
        }
    }
    true
}

/// The node serves `set` at `serving`, ahead of the store's listing. Read again first: a change
/// committed after the listing was read may have reached the node by notification. If the node is
/// still ahead, it serves something the authority never had; it goes back to the store's version.
async fn restore_from_store(
    store: &dyn AdminStore,
    options: &CompileOptions,
    node: &Node,
    set: &str,
    serving: u64,
) {
    let snapshot = match store.snapshot(set).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            tracing::warn!(error = %e, set, "could not re-read a flag set; the version check will retry");
            return;
        }
    };
    let Ok(stored) = u64::try_from(snapshot.version) else {
        return;
    };
    if stored >= serving {
        return;
    }
    tracing::error!(
        set,
        serving,
        postgres = stored,
        "this node serves a version of a flag set that PostgreSQL does not have (a shared tier \
         snapshot PostgreSQL never held, or PostgreSQL restored from a backup); serving \
         PostgreSQL's version again"
    );
    match put(&snapshot, options) {
        Ok(update) => {
            if let Err(e) = node.restore(update).await {
                tracing::error!(error = %e, set, "could not restore a flag set to PostgreSQL's version");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, set, "PostgreSQL's version of a flag set does not compile")
        }
    }
}

/// Compares the tier with the store's listing and replaces what the tier should not hold: a
/// snapshot ahead of the store, one at the store's version with other content, one without this
/// deployment's seal, or flags of a set the store does not have. Each is logged at ERROR (set,
/// both versions). A tier behind the store is left to the ordinary compare-and-set writes.
async fn audit_tier(tier: &dyn SharedTier, snapshots: &[FlagSetSnapshot]) {
    // One read of every snapshot the tier can vouch for; a set missing from it is read on its own
    // below, to tell "not there" from "there but corrupt or unsealed".
    let Ok(held) = tier.snapshots().await else {
        return;
    };
    let mut held: HashMap<String, TierSnapshot> =
        held.into_iter().map(|h| (h.set.clone(), h)).collect();
    for snapshot in snapshots {
        let Ok(stored) = u64::try_from(snapshot.version) else {
            continue;
        };
        let held = match held.remove(&snapshot.id) {
            Some(held) => held,
            None => match tier.snapshot(&snapshot.id).await {
                Ok(Some(held)) => held,
                // Never shared (the tier was away when this set was written, or at start-up):
                // as far behind as a snapshot can be.
                Ok(None) => TierSnapshot {
                    set: snapshot.id.clone(),
                    version: 0,
                    content: TierContent::Deleted,
                },
                Err(e) if e.is_transient() => return,
                Err(e) => {
                    tracing::error!(error = %e, set = snapshot.id, postgres = stored, "the shared tier holds a snapshot that cannot be trusted; replacing it with PostgreSQL's");
                    replace(
                        tier,
                        &snapshot.id,
                        stored,
                        TierContent::Flags(snapshot.document.clone()),
                    )
                    .await;
                    continue;
                }
            },
        };
        let same = held.version == stored && held.flags() == Some(&snapshot.document);
        if same {
            continue;
        }
        if held.version < stored {
            // Behind: a write this node or another queued while the tier was away and never
            // replayed (the queue is bounded, and dies with its node). Brought forward under the
            // tier's compare-and-set, so a newer version written meanwhile wins.
            match tier
                .put_snapshot(&snapshot.id, stored, &snapshot.document.to_string())
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_transient() => return,
                Err(e) => {
                    tracing::warn!(error = %e, set = snapshot.id, "cannot bring the shared tier's snapshot forward");
                }
            }
            continue;
        }
        tracing::error!(
            set = snapshot.id,
            tier = held.version,
            postgres = stored,
            "the shared tier holds a snapshot ahead of or different from PostgreSQL's; replacing it with PostgreSQL's"
        );
        replace(
            tier,
            &snapshot.id,
            stored,
            TierContent::Flags(snapshot.document.clone()),
        )
        .await;
    }
    // What is left are sets PostgreSQL does not have.
    for held in held.into_values() {
        if held.flags().is_some() {
            tracing::error!(
                set = held.set,
                tier = held.version,
                "the shared tier holds flags of a set PostgreSQL does not have; replacing them with a tombstone"
            );
            replace(tier, &held.set, held.version, TierContent::Deleted).await;
        }
    }
}

async fn replace(tier: &dyn SharedTier, set: &str, version: u64, content: TierContent) {
    if let Err(e) = tier.replace_snapshot(set, version, &content).await {
        tracing::warn!(error = %e, set, version, "could not repair a shared tier snapshot; the next version check retries");
    }
}

/// The next notification from the tier, or never if there is no subscription.
async fn next_tier_change(changes: &mut Option<ChangeStream>) -> Option<TierChange> {
    match changes.as_mut() {
        Some(changes) => changes.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes a snapshot read from the store to the tier and, if this node stored it first,
/// announces it. In a task of its own: the tier's timeout and breaker bound it, and the feed
/// never waits on Redis. While the tier is down both writes wait in its queue, in this order.
fn share_snapshot(tier: Arc<dyn SharedTier>, snapshot: FlagSetSnapshot) {
    let Ok(version) = u64::try_from(snapshot.version) else {
        return;
    };
    share(
        tier,
        snapshot.id,
        version,
        TierContent::Flags(snapshot.document),
    );
}

/// Writes `set` at `version` to the tier (its flags, or the tombstone of its deletion) and, if
/// this node stored it first, announces it, so nodes following the tier apply it too. In a task
/// of its own (see [`share_snapshot`]).
fn share(tier: Arc<dyn SharedTier>, set: String, version: u64, content: TierContent) {
    tokio::spawn(async move {
        let (written, what) = match &content {
            TierContent::Flags(document) => (
                tier.put_snapshot(&set, version, &document.to_string())
                    .await,
                "flag snapshot",
            ),
            TierContent::Deleted => (
                tier.delete_snapshot(&set, version).await,
                "flag set deletion",
            ),
        };
        match written {
            Ok(SnapshotWrite::NotNewer { .. }) => {}
            Ok(SnapshotWrite::Stored | SnapshotWrite::Queued) => {
                if let Err(e) = tier.publish_change(&set, version).await {
                    tracing::warn!(error = %e, set, version, "could not announce a {what} on the shared tier");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, set, version, "could not write a {what} to the shared tier")
            }
        }
    });
}

/// Shares every snapshot the store holds: the versions this node started on.
fn share_all(store: Arc<dyn AdminStore>, tier: Arc<dyn SharedTier>) {
    tokio::spawn(async move {
        match store.snapshots().await {
            Ok(snapshots) => {
                for snapshot in snapshots {
                    share_snapshot(tier.clone(), snapshot);
                }
            }
            Err(e) => tracing::debug!(error = %e, "no snapshots to share with the shared tier"),
        }
    });
}

/// A node announced `version` of `set` on the tier: read it there if it is newer than this node's.
async fn follow_tier_set(
    tier: &dyn SharedTier,
    options: &CompileOptions,
    node: &Node,
    set: &str,
    version: u64,
) {
    if node.catalog().version_of(set).is_some_and(|v| v >= version) {
        return;
    }
    match tier.snapshot(set).await {
        Ok(Some(snapshot)) => apply_from_tier(&snapshot, options, node).await,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, set, version, "could not read an announced snapshot from the shared tier")
        }
    }
}

/// Applies every tier snapshot newer than what the node serves, tombstones included: a set is
/// removed only where the tier records its deletion, never for being absent.
async fn catch_up_from_tier(tier: &dyn SharedTier, options: &CompileOptions, node: &Node) {
    let snapshots = match tier.snapshots().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the shared tier's snapshots");
            return;
        }
    };
    let current = node.catalog();
    for snapshot in &snapshots {
        if current
            .version_of(&snapshot.set)
            .is_none_or(|v| snapshot.version > v)
        {
            apply_from_tier(snapshot, options, node).await;
        }
    }
}

async fn apply_from_tier(snapshot: &TierSnapshot, options: &CompileOptions, node: &Node) {
    match tier_update(snapshot, options) {
        Ok(update) => {
            apply(node, update).await;
        }
        Err(e) => tracing::error!(
            error = %e,
            set = snapshot.set,
            version = snapshot.version,
            "cannot serve a snapshot from the shared tier"
        ),
    }
}
