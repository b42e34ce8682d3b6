//! The gRPC services one node serves on its one port: flagd's evaluation (v1, v2) and sync
//! protocols, and Bunting's own `bunting.v1` Evaluation (bulk), Admin, Experiments, Rollouts, Topology and
//! ClusterAdmin, with gRPC health and reflection beside them.

mod admin;
mod admin_batch;
mod admin_status;
mod admission;
mod analysis_settings;
mod bulk;
pub(crate) mod evaluator;
pub(crate) mod events;
// Public so the A/A simulation (tests/aa_simulation.rs) analyses totals exactly as the RPC does.
pub mod experiment_results;
mod experiments;
pub mod flag_history;
pub(crate) mod flagd_evaluation;
mod flagd_sync;
mod health;
pub(crate) mod request;
mod rollouts;
mod sync_snapshots;
mod sync_stream;
mod tokens;
mod topology;
pub(crate) mod wire_text;

pub use admin::{Admin, DEFAULT_AUDIT_PAGE};
pub use admin_status::{MAX_FLAG_KEY_CHARS, MAX_FLAG_SET_ID_CHARS};
pub use admission::{Admitted, ContextRefused, Gate, Limits, Refused, StreamSlot};
pub use bulk::BulkEvaluation;
pub use evaluator::Evaluator;
pub use events::changed_flags;
pub use experiments::ExperimentsService;
pub use flagd_evaluation::{FlagdV1, FlagdV2};
pub use flagd_sync::FlagdSync;
pub use health::{NodeHealth, SERVICE_NAMES as HEALTH_SERVICE_NAMES, reflection};
pub use request::SELECTOR_HEADER;
pub use rollouts::RolloutsService;
pub use sync_stream::SyncService;
pub use tokens::TokensService;
pub use topology::TopologyService;
