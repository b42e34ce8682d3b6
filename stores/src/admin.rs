//! Where a node's flag sets come from: the admin store (PostgreSQL, the source of truth for sets
//! edited through the admin API) and the embedded default source (a watched flag file).
//!
//! A node serves named flag sets; flagd's `selector` names one, and a request without one gets
//! [`DEFAULT_FLAG_SET`]. A set's `version` is bumped by every change to the set or to any of its
//! flags, so it versions the whole snapshot: a holder of version N that hears of version M > N
//! re-reads, and ignores anything at or below what it holds. Each flag also carries its own version
//! for optimistic concurrency: every write names the version it read, and a stale one is refused.

use std::error::Error as StdError;
use std::fmt;

use async_trait::async_trait;
use bunting_engine::{CompileOptions, Diagnostic, DiagnosticSummary, FlagSet};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// The most audit entries one page returns, whatever the caller asks for (every `AdminStore`
/// caps its pages at this; the Admin API refuses larger requests).
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// The set a request without a selector is served from.
pub const DEFAULT_FLAG_SET: &str = "default";

/// A flag set's own fields, as the admin API writes them: set-level metadata (strings, numbers,
/// booleans) and flagd's `$evaluators` (shared rules that flags reach with `$ref`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagSetFields {
    pub metadata: Map<String, Value>,
    pub evaluators: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagSetRecord {
    pub id: String,
    /// The snapshot version: bumped by every change to the set or any of its flags.
    pub version: i64,
    pub metadata: Map<String, Value>,
    pub evaluators: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagRecord {
    pub flag_set_id: String,
    pub key: String,
    /// The flag as flagd defines it (`state`, `variants`, `defaultVariant`, `targeting`, ...).
    pub definition: Value,
    /// Bumped by every write to this flag; what `expected_version` is checked against.
    pub version: i64,
    /// The flag set's version as of this record: the version the write that returned it produced,
    /// or the set's version at the read.
    pub flag_set_version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A set's live flags from one read, with the set's version at that read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagList {
    pub flag_set_version: i64,
    /// By key.
    pub flags: Vec<FlagRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditAction {
    Create,
    Update,
    Delete,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<AuditAction> {
        match s {
            "create" => Some(AuditAction::Create),
            "update" => Some(AuditAction::Update),
            "delete" => Some(AuditAction::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One write, as the audit log keeps it. For a flag (`flag_key` set) `before`/`after` are its
/// definitions; for the set itself they are `{"metadata", "$evaluators"}`, except that deleting a
/// set records its whole flagd document as `before`, flags included, so nothing is lost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Increasing in commit order among the writes to one set (they hold its lock in turn);
    /// pages are cut by `before_id`.
    pub id: i64,
    pub flag_set_id: String,
    pub flag_key: Option<String>,
    pub action: AuditAction,
    pub actor: String,
    pub at: DateTime<Utc>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// The set's version this write produced.
    pub flag_set_version: i64,
}

/// A whole flag set at one version, as flagd's sync protocol and the node's catalog want it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagSetSnapshot {
    pub id: String,
    pub version: i64,
    /// `{"flags": {...}, "$evaluators": {...}, "metadata": {...}}`.
    pub document: Value,
    /// When this version was written, for propagation-latency metrics.
    pub updated_at: DateTime<Utc>,
}

impl FlagSetSnapshot {
    /// Compiles the document and stamps it with the snapshot's version. Every stored version was
    /// validated on write, so a problem here means the compile options differ from the writer's.
    pub fn compile(&self, options: &CompileOptions) -> Result<FlagSet, StoreError> {
        let flag_set = crate::document::validate(&self.document, options)?;
        Ok(flag_set.with_version(u64::try_from(self.version).unwrap_or(0)))
    }
}

/// What a subscriber hears about changes made by any writer, this process or another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeNotice {
    /// The set now has `version`: re-read its snapshot if you hold an older one.
    Changed {
        flag_set: String,
        version: i64,
        at: DateTime<Utc>,
    },
    /// The set was deleted; `version` is the version of the deletion (sets keep counting if
    /// re-created, so anything older than this about the set is stale).
    Deleted {
        flag_set: String,
        version: i64,
        at: DateTime<Utc>,
    },
    /// Notices may have been missed (the connection was lost and is back): re-read every snapshot
    /// and keep whichever versions are newer than what you hold.
    Resync,
}

/// A live stream of notices (flag changes: [`ChangeNotice`]; experiment changes:
/// `experiments::ExperimentNotice`). Listening is already active when `subscribe` returns, so the
/// way to never miss a change is: subscribe, read the snapshots, then apply notices newer than
/// them. Dropping it stops the listener.
#[derive(Debug)]
pub struct Subscription<N = ChangeNotice> {
    notices: mpsc::Receiver<N>,
}

impl<N> Subscription<N> {
    pub(crate) fn new(notices: mpsc::Receiver<N>) -> Subscription<N> {
        Subscription { notices }
    }

    /// The next notice; `None` once the store has shut the subscription down.
    pub async fn recv(&mut self) -> Option<N> {
        self.notices.recv().await
    }

    /// A notice already waiting, without waiting for one (to coalesce a burst into one re-read).
    pub fn try_recv(&mut self) -> Option<N> {
        self.notices.try_recv().ok()
    }

    /// The next notice of `subscription`, or never when there is none: a `select!` arm for a
    /// follower that runs on its periodic check alone until it can subscribe again.
    pub async fn next(subscription: &mut Option<Subscription<N>>) -> Option<N> {
        match subscription.as_mut() {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        }
    }
}

pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("{what} is at version {actual}, not the expected version {expected}")]
    VersionConflict {
        what: String,
        expected: i64,
        actual: i64,
    },
    /// The flag set this write would produce does not compile cleanly; nothing was written.
    #[error("definition refused: {}", list(problems))]
    Invalid { problems: Vec<Diagnostic> },
    /// The database cannot be reached; the write may be retried.
    #[error("flag store unavailable: {source}")]
    Unavailable { source: BoxError },
    /// The database answered, but not as this store expects (a schema from another version, a
    /// query bug). Not worth retrying.
    #[error("flag store failed: {source}")]
    Internal { source: BoxError },
}

impl StoreError {
    pub(crate) fn invalid(path: &str, message: impl Into<String>) -> StoreError {
        StoreError::Invalid {
            problems: vec![Diagnostic {
                severity: bunting_engine::Severity::Error,
                path: path.to_owned(),
                message: message.into(),
            }],
        }
    }
}

/// One committed write, as the audit log records it and its change notice announces it; every
/// store builds one per write (PostgreSQL writes it inside the write's transaction).
#[derive(Debug)]
pub(crate) struct Change<'a> {
    pub flag_set: &'a str,
    pub flag_key: Option<&'a str>,
    pub action: AuditAction,
    pub actor: &'a str,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub version: i64,
    pub at: DateTime<Utc>,
}

impl Change<'_> {
    /// Whether this write deleted the set itself (a deleted flag is a change to its set).
    pub(crate) fn deletes_set(&self) -> bool {
        self.action == AuditAction::Delete && self.flag_key.is_none()
    }
}

/// `flag set "id"`, as errors and the audit name a set.
pub(crate) fn set_name(id: &str) -> String {
    format!("flag set {id:?}")
}

/// `flag "key" in flag set "id"`, as errors name a flag.
pub(crate) fn flag_name(flag_set: &str, key: &str) -> String {
    format!("flag {key:?} in flag set {flag_set:?}")
}

/// The optimistic-concurrency check every write makes against what it read.
pub(crate) fn check_version(what: String, expected: i64, actual: i64) -> Result<(), StoreError> {
    if expected == actual {
        Ok(())
    } else {
        Err(StoreError::VersionConflict {
            what,
            expected,
            actual,
        })
    }
}

/// How many of a refused definition's problems an error message, an API error or a log shows
/// before it only counts the rest: a file of 100,000 broken flags once wrote 100,000 WARN lines.
pub const MAX_REPORTED_PROBLEMS: usize = 100;

/// A refused definition's problems on one line: the first [`MAX_REPORTED_PROBLEMS`], then a count.
pub(crate) fn list(problems: &[Diagnostic]) -> String {
    DiagnosticSummary::new(problems, MAX_REPORTED_PROBLEMS)
        .to_string()
        .replace('\n', "; ")
}

/// One write of a batch ([`AdminStore::apply_flag_changes`]). Updates and deletes carry the flag
/// version they were computed from, as single writes do.
#[derive(Debug, Clone, PartialEq)]
pub enum FlagChange {
    Create {
        key: String,
        definition: Value,
    },
    Update {
        key: String,
        definition: Value,
        expected_version: i64,
    },
    Delete {
        key: String,
        expected_version: i64,
    },
}

impl FlagChange {
    pub fn key(&self) -> &str {
        match self {
            FlagChange::Create { key, .. }
            | FlagChange::Update { key, .. }
            | FlagChange::Delete { key, .. } => key,
        }
    }
}

/// Writes to one set applied together: one transaction, one new version of the set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagBatch {
    /// In order; each key at most once.
    pub changes: Vec<FlagChange>,
    /// When given, the batch applies only if the set is still at this version.
    pub expected_flag_set_version: Option<i64>,
    /// When given and the set does not exist, it is created with these fields in the same
    /// transaction and version as the flags.
    pub create_flag_set: Option<FlagSetFields>,
}

/// What an applied batch did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchOutcome {
    /// The set's one new version.
    pub flag_set_version: i64,
    /// The flags created or updated, in the batch's order.
    pub written: Vec<FlagRecord>,
    /// The keys deleted, in the batch's order.
    pub deleted: Vec<String>,
    pub created_flag_set: bool,
}

/// The admin API's view of the flag store: CRUD on sets and flags with optimistic concurrency,
/// the audit log, whole-set snapshots and change notices.
///
/// `#[async_trait]` rather than native `async fn`: the node holds its store as
/// `Arc<dyn AdminStore>` (PostgreSQL in production, others in tests), and a trait with native async
/// methods is not dyn-compatible. The boxed future per call is noise next to a database round trip.
#[async_trait]
pub trait AdminStore: Send + Sync + fmt::Debug {
    /// Creates an empty set at version 1, or, if a set of that id was deleted, brings it back at
    /// the version after its deletion.
    async fn create_flag_set(
        &self,
        id: &str,
        fields: FlagSetFields,
        actor: &str,
    ) -> Result<FlagSetRecord, StoreError>;

    /// Replaces the set's metadata and `$evaluators`.
    async fn update_flag_set(
        &self,
        id: &str,
        fields: FlagSetFields,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagSetRecord, StoreError>;

    /// Deletes the set and its flags. Returns the version of the deletion.
    async fn delete_flag_set(
        &self,
        id: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, StoreError>;

    async fn get_flag_set(&self, id: &str) -> Result<FlagSetRecord, StoreError>;

    /// Every live set, by id.
    async fn list_flag_sets(&self) -> Result<Vec<FlagSetRecord>, StoreError>;

    /// Adds a flag. With `expected_flag_set_version`, only if the set is still at that version.
    async fn create_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: Value,
        expected_flag_set_version: Option<i64>,
        actor: &str,
    ) -> Result<FlagRecord, StoreError>;

    async fn update_flag(
        &self,
        flag_set: &str,
        key: &str,
        definition: Value,
        expected_version: i64,
        actor: &str,
    ) -> Result<FlagRecord, StoreError>;

    /// Returns the set's version after the deletion.
    async fn delete_flag(
        &self,
        flag_set: &str,
        key: &str,
        expected_version: i64,
        actor: &str,
    ) -> Result<i64, StoreError>;

    /// Applies `batch` to the set as one write: every change is checked (existence, expected
    /// versions) and every written flag compiled before anything is written; any refusal refuses
    /// the whole batch. The set gets one new version and each changed flag one audit entry at it.
    async fn apply_flag_changes(
        &self,
        flag_set: &str,
        batch: FlagBatch,
        actor: &str,
    ) -> Result<BatchOutcome, StoreError>;

    async fn get_flag(&self, flag_set: &str, key: &str) -> Result<FlagRecord, StoreError>;

    /// The set's live flags, by key, and its version, from one consistent read.
    async fn list_flags(&self, flag_set: &str) -> Result<FlagList, StoreError>;

    /// Newest first; `flag_set` and `flag_key` each narrow it when given. `before_id` pages: pass
    /// the last id of the previous page.
    async fn list_audit(
        &self,
        flag_set: Option<&str>,
        flag_key: Option<&str>,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    async fn snapshot(&self, flag_set: &str) -> Result<FlagSetSnapshot, StoreError>;

    /// Every live set, by id, each read at one consistent point.
    async fn snapshots(&self) -> Result<Vec<FlagSetSnapshot>, StoreError>;

    /// Starts listening for changes from every writer. See [`Subscription`] for the read order
    /// that misses nothing.
    async fn subscribe(&self) -> Result<Subscription, StoreError>;
}
