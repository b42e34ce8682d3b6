//! Bunting's per-node actor tree (ractor).
//!
//! ```text
//! NodeSupervisor ── Shard 0 … Shard N-1
//! ```
//!
//! Each shard actor owns the targeting keys that hash to it ([`shard_of`]) and evaluates their
//! flags against the [`Catalog`] it holds by `Arc`. A change goes to the supervisor, which builds
//! the next catalog once, sends it to every shard and publishes it on a watch channel for the
//! streaming APIs. A shard that fails is restarted with the catalog current at that moment.
//! Evaluations that record no per-user state skip the shards: [`Node::lane`] sorts them onto the
//! caller's task, against the node's current catalog snapshot (see `lane`).
//! [`Node`] is the handle the server uses.

mod catalog;
mod current;
mod error;
mod lane;
mod messages;
mod node;
mod owned;
mod resolved;
mod shard;
mod supervisor;
mod user_state;

pub use bunting_keyspace::shard_of;
pub use catalog::{Catalog, Update};
pub use error::NodeError;
pub use lane::{Here, Lane, ResolveAllRequest};
pub use messages::{BulkRequest, ResolveRequest, TrackRefused, TrackRequest};
pub use node::{Node, NodeConfig};
pub use resolved::{FlagView, ResolvedFlag, ResolvedSet, SetHeader};
pub use shard::ShardServices;
pub use user_state::{MemoryUserStates, UserState, UserStateError, UserStateStore};

#[cfg(test)]
mod experiment_tests;
#[cfg(test)]
mod tests;
