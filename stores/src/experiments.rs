//! Where experiments are defined and move through their life: the [`ExperimentStore`] trait the
//! `bunting.v1.Experiments` service and the experiment feed use, its records and errors, and the
//! PostgreSQL implementation ([`PostgresExperimentStore`], in the flag store's database).
//!
//! The model itself (ids, metrics, the draft → running → stopped rules) is `bunting-experiments`;
//! this module stores it. Arms are fixed when an experiment is created (the flag's variant names at
//! that moment) and an experiment's definition, its analysis settings included, never changes
//! afterwards; only its state moves.

mod postgres;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use bunting_experiments::{
    AnalysisSettings, Experiment, ExperimentId, ExperimentState, Metric, ModelError,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

pub use postgres::{EXPERIMENT_CHANNEL, PostgresExperimentStore};

use super::StoreError;

/// What [`ExperimentStore::create_experiment`] is given; the arms come from the stored flag.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExperiment {
    pub id: ExperimentId,
    pub flag_set: String,
    pub flag_key: String,
    /// One of the flag's variant names.
    pub control: String,
    pub metrics: Vec<Metric>,
    /// Arm → weight (see `bunting_experiments::TrafficSplit`); empty for an even split.
    pub split: BTreeMap<String, u32>,
    /// How the results are judged, checked already; fixed from creation on.
    pub analysis: AnalysisSettings,
}

/// An experiment as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentRecord {
    pub experiment: Experiment,
    /// 1 at creation, bumped by each start and stop.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A state without its times, for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    Draft,
    Running,
    Stopped,
}

impl StateKind {
    pub fn of(state: &ExperimentState) -> StateKind {
        match state {
            ExperimentState::Draft => StateKind::Draft,
            ExperimentState::Running { .. } => StateKind::Running,
            ExperimentState::Stopped { .. } => StateKind::Stopped,
        }
    }

    /// The name [`ExperimentState::name`] gives, which is also what the store writes.
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Draft => "draft",
            StateKind::Running => "running",
            StateKind::Stopped => "stopped",
        }
    }
}

/// Experiments per page when a request does not say (experiments.proto,
/// ListExperimentsRequest.limit).
pub const DEFAULT_EXPERIMENT_PAGE: u32 = 100;

/// The most experiments one page holds, whatever the caller asks for.
pub const MAX_EXPERIMENT_PAGE: u32 = 1000;

/// Which experiments [`ExperimentStore::list_experiments`] returns, and how many of them: the
/// filters (`None` matches everything) and the page, in one value so that a list is one call.
/// The default is the first page of [`DEFAULT_EXPERIMENT_PAGE`] experiments, unfiltered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExperimentFilter {
    pub flag_set: Option<String>,
    pub state: Option<StateKind>,
    /// Only experiments whose id sorts after this one (a keyset cursor: the previous page's
    /// [`ExperimentPage::next_after`]); `None` starts from the first.
    pub after: Option<ExperimentId>,
    pub limit: PageLimit,
}

/// How many experiments one [`ExperimentStore::list_experiments`] call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageLimit {
    /// At most this many, with a cursor to the rest. What every API caller gets: a production
    /// store holds thousands of experiments, and one answer must not carry them all.
    AtMost(PageSize),
    /// Every match, from one read. Only for the node's own use where the result is bounded and
    /// must be one consistent cut (the running experiments: at most one per flag, and the feed
    /// needs them all at one instant, see `experiment_feed::load`); never from a request.
    Unlimited,
}

impl Default for PageLimit {
    fn default() -> Self {
        PageLimit::AtMost(PageSize::DEFAULT)
    }
}

/// A page size within the bounds the API allows: 1 to [`MAX_EXPERIMENT_PAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    pub const DEFAULT: PageSize = PageSize(DEFAULT_EXPERIMENT_PAGE);
    pub const MAX: PageSize = PageSize(MAX_EXPERIMENT_PAGE);

    /// A request's `limit`: 0 means [`PageSize::DEFAULT`]; 1 to [`MAX_EXPERIMENT_PAGE`] is taken
    /// as it is; anything else is refused rather than clamped, so a caller who asked for more than
    /// a page can hold learns it instead of silently getting fewer.
    pub fn from_request(limit: i32) -> Result<PageSize, PageSizeError> {
        match u32::try_from(limit) {
            Ok(0) => Ok(PageSize::DEFAULT),
            Ok(n) if n <= MAX_EXPERIMENT_PAGE => Ok(PageSize(n)),
            _ => Err(PageSizeError { requested: limit }),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A `limit` outside 0 to [`MAX_EXPERIMENT_PAGE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("is {requested}; pass 1 to {MAX_EXPERIMENT_PAGE}, or 0 for {DEFAULT_EXPERIMENT_PAGE}")]
pub struct PageSizeError {
    pub requested: i32,
}

/// One page of [`ExperimentStore::list_experiments`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentPage {
    /// By id.
    pub experiments: Vec<ExperimentRecord>,
    /// The `after` of the next page (the last experiment's id here) when more match; `None` when
    /// this page is the last, and always with [`PageLimit::Unlimited`].
    pub next_after: Option<ExperimentId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentAction {
    Create,
    Start,
    Stop,
}

impl ExperimentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentAction::Create => "create",
            ExperimentAction::Start => "start",
            ExperimentAction::Stop => "stop",
        }
    }

    pub fn parse(s: &str) -> Option<ExperimentAction> {
        match s {
            "create" => Some(ExperimentAction::Create),
            "start" => Some(ExperimentAction::Start),
            "stop" => Some(ExperimentAction::Stop),
            _ => None,
        }
    }
}

/// One write to an experiment, as its audit log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentAuditEntry {
    pub id: i64,
    pub experiment_id: String,
    pub action: ExperimentAction,
    pub actor: String,
    pub at: DateTime<Utc>,
    /// The experiment (as [`Experiment`]'s JSON) before the write; `None` for a create.
    pub before: Option<Value>,
    pub after: Value,
    /// The experiment's version this write produced.
    pub version: i64,
}

/// What a subscriber hears when experiments change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExperimentNotice {
    /// The experiment now has `version`.
    Changed { id: String, version: i64 },
    /// Notices may have been missed (the listener reconnected, or an unreadable payload): re-read.
    Resync,
}

/// A live stream of [`ExperimentNotice`]s, already listening when `subscribe` returns: subscribe,
/// then read, and nothing is missed. Dropping it stops the listener.
pub type ExperimentSubscription = super::Subscription<ExperimentNotice>;

/// Why an experiment write or read was refused. Nothing is written when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentStoreError {
    #[error("flag set {flag_set:?} not found")]
    UnknownFlagSet { flag_set: String },
    #[error("flag {flag_key:?} not found in flag set {flag_set:?}")]
    UnknownFlag { flag_set: String, flag_key: String },
    #[error("experiment {0} not found")]
    UnknownExperiment(ExperimentId),
    #[error("experiment {0} already exists")]
    AlreadyExists(ExperimentId),
    /// The definition is refused: a control that is not one of the flag's variants, no metrics, a
    /// metric name used twice, a blank event. `field` names the part of the request, as the proto
    /// names it: `control_variant`, `metrics`, `metrics[1].name`, `metrics[0].event`.
    #[error("{field}: {source}")]
    Invalid { field: String, source: ModelError },
    #[error(
        "flag {flag_key:?} in flag set {flag_set:?} has {} variant(s) {variants:?}; an experiment \
         needs at least two to compare",
        variants.len()
    )]
    TooFewVariants {
        flag_set: String,
        flag_key: String,
        variants: Vec<String>,
    },
    /// Start twice, stop before start, start after stop.
    #[error(transparent)]
    Transition(ModelError),
    #[error(
        "experiment {experiment}: experiment {running} is already running on flag {flag_key:?} in \
         flag set {flag_set:?}; stop it first"
    )]
    FlagBusy {
        experiment: ExperimentId,
        running: String,
        flag_set: String,
        flag_key: String,
    },
    /// Start found the flag gone, or its variants no longer the experiment's arms.
    #[error(
        "experiment {experiment}: flag {flag_key:?} in flag set {flag_set:?} {now}, but the \
         experiment's arms are {arms:?}; define a new experiment for the flag as it is"
    )]
    FlagChanged {
        experiment: ExperimentId,
        flag_set: String,
        flag_key: String,
        now: String,
        arms: Vec<String>,
    },
    /// The database is unreachable (`Unavailable`) or answered unexpectedly (`Internal`).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Experiments with their life cycle, their audit log and change notices.
///
/// `#[async_trait]` for the same reason as [`super::AdminStore`]: the node holds it as
/// `Arc<dyn ExperimentStore>`.
#[async_trait]
pub trait ExperimentStore: Send + Sync + fmt::Debug {
    /// Defines an experiment in draft on a flag that exists; its arms are the flag's variant names
    /// as stored now.
    async fn create_experiment(
        &self,
        new: NewExperiment,
        actor: &str,
    ) -> Result<ExperimentRecord, ExperimentStoreError>;

    /// Draft → running, if no other experiment runs on the flag and the flag's variants are still
    /// the arms. Of concurrent starts of one experiment exactly one succeeds.
    async fn start_experiment(
        &self,
        id: &ExperimentId,
        actor: &str,
    ) -> Result<ExperimentRecord, ExperimentStoreError>;

    /// Running → stopped.
    async fn stop_experiment(
        &self,
        id: &ExperimentId,
        actor: &str,
    ) -> Result<ExperimentRecord, ExperimentStoreError>;

    async fn get_experiment(
        &self,
        id: &ExperimentId,
    ) -> Result<ExperimentRecord, ExperimentStoreError>;

    /// One page of the experiments the filter matches, by id, from one read. Pages are separate
    /// reads: following `next_after` is not a snapshot of the whole list.
    async fn list_experiments(
        &self,
        filter: &ExperimentFilter,
    ) -> Result<ExperimentPage, ExperimentStoreError>;

    /// The experiment's audit log, newest first; empty for an unknown id.
    async fn experiment_audit(
        &self,
        id: &ExperimentId,
    ) -> Result<Vec<ExperimentAuditEntry>, ExperimentStoreError>;

    /// Starts listening for changes from every writer.
    async fn subscribe(&self) -> Result<ExperimentSubscription, ExperimentStoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_from_requests() {
        assert_eq!(PageSize::from_request(0), Ok(PageSize::DEFAULT));
        assert_eq!(PageSize::DEFAULT.get(), 100);
        assert_eq!(PageSize::from_request(1).map(PageSize::get), Ok(1));
        assert_eq!(PageSize::from_request(1000), Ok(PageSize::MAX));
        for refused in [-1, 1001, i32::MIN, i32::MAX] {
            let error = PageSize::from_request(refused).unwrap_err();
            assert_eq!(error.requested, refused);
            assert_eq!(
                error.to_string(),
                format!("is {refused}; pass 1 to 1000, or 0 for 100")
            );
        }
    }

    #[test]
    fn the_default_filter_is_the_first_default_page() {
        let filter = ExperimentFilter::default();
        assert_eq!(filter.after, None);
        assert_eq!(filter.limit, PageLimit::AtMost(PageSize::DEFAULT));
    }
}
