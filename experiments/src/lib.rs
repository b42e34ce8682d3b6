//! Bunting's experiments: the model ([`model`], with its [`analysis`] settings), what a shard counts ([`aggregate`]), and where the
//! counts are kept ([`store`]). The statistics over the counts are `bunting-stats`.
//!
//! No gRPC and no actors here: the node's shard actors own [`aggregate::UserExposure`] records
//! for their users and one [`aggregate::ExperimentTotals`] per experiment, and flush the totals
//! through an [`store::EventStore`].

pub mod aggregate;
pub mod analysis;
pub mod catalog;
mod memory_store;
pub mod model;
pub mod store;

pub use aggregate::{ArmTotals, ExperimentTotals, MetricTotals, TrackError, Tracked, UserExposure};
pub use analysis::{AnalysisError, AnalysisRequest, AnalysisSettings, Engine, Prior, TestSides};
pub use catalog::RunningExperiments;
pub use memory_store::MemoryEventStore;
pub use model::{
    Experiment, ExperimentId, ExperimentState, Metric, MetricKind, MetricName, ModelError,
    TrafficSplit,
};
pub use store::{EventStore, EventStoreError, ShardFlush};
