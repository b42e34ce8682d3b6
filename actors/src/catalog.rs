//! The flag sets a node serves, as one immutable value that every shard shares by `Arc`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use bunting_engine::{ErrorCode, FlagSet, ResolveError};

/// Every flag set a node serves, by id. Immutable: an update produces a new `Catalog`, so a shard
/// evaluating against one never sees half of a change.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    sets: BTreeMap<Arc<str>, Arc<FlagSet>>,
    /// The last version each set had, kept after removal so a late, older update cannot bring a
    /// deleted set back.
    versions: BTreeMap<Arc<str>, u64>,
    /// When the newest change was committed at its source, for propagation-latency metrics.
    changed_at: Option<SystemTime>,
}

/// A change to one flag set, as a source (file, PostgreSQL, a peer) reports it.
#[derive(Debug, Clone)]
pub enum Update {
    /// The set's new compiled flags; its `FlagSet::version` orders updates.
    Put {
        set: Arc<str>,
        flags: Arc<FlagSet>,
        committed_at: SystemTime,
    },
    /// The set was deleted at `version`.
    Remove {
        set: Arc<str>,
        version: u64,
        committed_at: SystemTime,
    },
}

impl Update {
    pub fn set(&self) -> &Arc<str> {
        match self {
            Update::Put { set, .. } | Update::Remove { set, .. } => set,
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            Update::Put { flags, .. } => flags.version(),
            Update::Remove { version, .. } => *version,
        }
    }

    fn committed_at(&self) -> SystemTime {
        match self {
            Update::Put { committed_at, .. } | Update::Remove { committed_at, .. } => *committed_at,
        }
    }
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog::default()
    }

    pub fn get(&self, set: &str) -> Option<&Arc<FlagSet>> {
        self.sets.get(set)
    }

    /// Set `name`, or the FLAG_NOT_FOUND answer an evaluation against a set this catalog does
    /// not hold gets (the same from a shard and from the fast path).
    pub(crate) fn set_or_not_found(&self, name: &str) -> Result<&Arc<FlagSet>, ResolveError> {
        self.sets.get(name).ok_or_else(|| ResolveError {
            code: ErrorCode::FlagNotFound,
            message: format!("flag set {name:?} not found"),
            exceeded: None,
        })
    }

    pub fn sets(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<FlagSet>)> {
        self.sets.iter()
    }

    /// The version this catalog holds for `set` (also after the set was removed).
    pub fn version_of(&self, set: &str) -> Option<u64> {
        self.versions.get(set).copied()
    }

    pub fn changed_at(&self) -> Option<SystemTime> {
        self.changed_at
    }

    /// The catalog with `update` applied, or `None` if the update is not newer than what this
    /// catalog already holds for that set. Versions only move forward: a node never serves a
    /// set older than one it has served.
    pub fn apply(&self, update: &Update) -> Option<Catalog> {
        if self
            .versions
            .get(update.set())
            .is_some_and(|&current| update.version() <= current)
        {
            return None;
        }
        Some(self.applied(update))
    }

    /// The catalog with `update` applied whenever its version differs from the one held, older
    /// included: what the flag store (the authority) says a set is, when this catalog got ahead
    /// of it (a snapshot from the shared tier that the store never had, or a store restored from
    /// a backup). `None` when the catalog already holds that version.
    pub fn restore(&self, update: &Update) -> Option<Catalog> {
        if self.versions.get(update.set()) == Some(&update.version()) {
            return None;
        }
        Some(self.applied(update))
    }

    fn applied(&self, update: &Update) -> Catalog {
        let set = update.set();
        let mut next = self.clone();
        next.versions.insert(set.clone(), update.version());
        match update {
            Update::Put { flags, .. } => {
                next.sets.insert(set.clone(), flags.clone());
            }
            Update::Remove { .. } => {
                next.sets.remove(set);
            }
        }
        next.changed_at = Some(update.committed_at());
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bunting_engine::{CompileOptions, compile};

    fn flags(version: u64) -> Arc<FlagSet> {
        let doc = r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}}}"#;
        Arc::new(
            compile(doc, &CompileOptions::default())
                .unwrap()
                .flag_set
                .with_version(version),
        )
    }

    fn put(version: u64) -> Update {
        Update::Put {
            set: "default".into(),
            flags: flags(version),
            committed_at: SystemTime::now(),
        }
    }

    #[test]
    fn versions_only_move_forward() {
        let c = Catalog::new().apply(&put(2)).unwrap();
        assert!(c.apply(&put(2)).is_none(), "same version is a no-op");
        assert!(c.apply(&put(1)).is_none(), "older version is refused");
        let c = c.apply(&put(3)).unwrap();
        assert_eq!(c.get("default").map(|s| s.version()), Some(3));
    }

    #[test]
    fn a_removed_set_stays_removed_against_older_puts() {
        let c = Catalog::new().apply(&put(2)).unwrap();
        let removed = Update::Remove {
            set: "default".into(),
            version: 3,
            committed_at: SystemTime::now(),
        };
        let c = c.apply(&removed).unwrap();
        assert!(c.get("default").is_none());
        assert!(c.apply(&put(2)).is_none());
        assert!(c.apply(&put(4)).is_some());
    }

    #[test]
    fn restore_moves_a_set_back_to_the_authority_s_version() {
        let ahead = Catalog::new().apply(&put(999)).unwrap();
        assert!(ahead.apply(&put(2)).is_none(), "apply never goes back");
        let restored = ahead.restore(&put(2)).unwrap();
        assert_eq!(restored.version_of("default"), Some(2));
        assert_eq!(restored.get("default").unwrap().version(), 2);
        assert!(
            restored.restore(&put(2)).is_none(),
            "same version is a no-op"
        );
        // Once restored, ordinary updates move forward from the authority's version again.
        assert!(restored.apply(&put(3)).is_some());
    }
}
