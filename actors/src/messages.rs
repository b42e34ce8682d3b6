//! Every message the actor tree passes, in one module: what the node's handle and the
//! supervisor send a shard ([`ShardMsg`] and its requests), what the supervisor is sent
//! ([`SupervisorMsg`]), and the refusals they carry back. The actors import this module, never
//! each other's messages, so `shard`, `owned` and `supervisor` do not depend on one another in
//! a circle.

use std::sync::Arc;

use bunting_engine::{EvaluationContext, FlagSet, FlagType, ResolveError};
use bunting_experiments::{ExperimentId, ExperimentTotals, RunningExperiments, TrackError};
use ractor::RpcReplyPort;

use crate::catalog::{Catalog, Update};
use crate::resolved::{ResolvedFlag, ResolvedSet};
use crate::user_state::UserStateError;

/// A conversion event for one user.
#[derive(Debug, Clone)]
pub struct TrackRequest {
    pub user: String,
    pub event: String,
    pub value: f64,
    /// Only experiments on this flag set; `None`: every set.
    pub flag_set: Option<String>,
}

/// One flag to resolve for one subject.
#[derive(Debug, Clone)]
pub struct ResolveRequest {
    /// The flag set (flagd's selector); `None` is the node's default set.
    pub set: Option<Arc<str>>,
    pub key: String,
    /// The type the caller asked for; `None` returns whatever the variant holds.
    pub wanted: Option<FlagType>,
    pub context: EvaluationContext,
}

/// Several flags for one subject, untyped, against a flag set the caller pinned: bulk
/// evaluation's unit of work, so one mailbox round trip serves one subject.
#[derive(Debug, Clone)]
pub struct BulkRequest {
    /// The pinned set's id (for experiments, which are on a flag of a named set).
    pub set: Arc<str>,
    /// The flag set to evaluate, chosen once by the caller for the whole batch. Shards install a
    /// new catalog one after another, so two shards may briefly hold different versions; evaluating
    /// the pinned set keeps every subject of one batch on one version.
    pub flags: Arc<FlagSet>,
    /// The keys to resolve, in the order the answers come back. Shared by every subject of the
    /// batch, so the list is not copied per subject.
    pub keys: Arc<[String]>,
    pub context: EvaluationContext,
}

pub enum ShardMsg {
    Resolve(ResolveRequest, RpcReplyPort<ResolvedFlag>),
    /// One answer per key of the request, in its order.
    ResolveMany(BulkRequest, RpcReplyPort<Vec<ResolvedFlag>>),
    /// Every flag of a set for one subject, in key order.
    ResolveAll {
        set: Option<Arc<str>>,
        context: EvaluationContext,
        reply: RpcReplyPort<Result<ResolvedSet, ResolveError>>,
    },
    /// The supervisor's fan-out of a new catalog.
    Install(Arc<Catalog>),
    /// The supervisor's fan-out of the running experiments.
    Experiments(Arc<RunningExperiments>),
    /// Take (`Some(epoch)`: claim the shard at that map epoch and load the users' records) or
    /// give up (`None`: flush, then forget them) ownership of this shard's users. The reply
    /// carries the number of users loaded.
    Own(
        Option<u64>,
        Option<RpcReplyPort<Result<usize, UserStateError>>>,
    ),
    /// A conversion event for a user of this shard.
    Track(
        TrackRequest,
        RpcReplyPort<Result<Vec<ExperimentId>, TrackRefused>>,
    ),
    /// Write changed statistics to the event store (periodic, and before shutdown).
    Flush(Option<RpcReplyPort<Result<usize, String>>>),
    /// This shard's live statistics of one experiment (`None` when not owned or none counted).
    Totals(ExperimentId, RpcReplyPort<Option<ExperimentTotals>>),
    /// Fails the actor, so tests can watch the supervisor restart it.
    #[cfg(test)]
    Crash,
}

// ractor's `cluster` feature (on for the whole workspace: the cluster crate needs it) drops the
// blanket `Message` impl; this message never leaves the node, so the default (local-only) impl.
impl ractor::Message for ShardMsg {}

impl std::fmt::Debug for ShardMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardMsg::Resolve(r, _) => write!(f, "Resolve({:?})", r.key),
            ShardMsg::ResolveMany(r, _) => write!(f, "ResolveMany({} keys)", r.keys.len()),
            ShardMsg::ResolveAll { set, .. } => write!(f, "ResolveAll({set:?})"),
            ShardMsg::Install(c) => write!(f, "Install({:?})", c.changed_at()),
            ShardMsg::Experiments(e) => write!(f, "Experiments({} running)", e.len()),
            ShardMsg::Own(own, _) => write!(f, "Own({own:?})"),
            ShardMsg::Track(t, _) => write!(f, "Track({:?})", t.event),
            ShardMsg::Flush(_) => f.write_str("Flush"),
            ShardMsg::Totals(id, _) => write!(f, "Totals({id})"),
            #[cfg(test)]
            ShardMsg::Crash => f.write_str("Crash"),
        }
    }
}

/// Why a tracked event was not counted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrackRefused {
    #[error(transparent)]
    BadEvent(#[from] TrackError),
    #[error("shard {0} is not owned by this node")]
    NotOwner(u32),
    #[error("could not store the user's state: {0}")]
    Store(#[from] UserStateError),
}

/// Which updates a catalog takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precedence {
    /// Only a newer version than the one held (every source's ordinary change).
    Newer,
    /// Any other version, older included: the flag store's word, when the node got ahead of it
    /// (see `Catalog::restore`).
    Authority,
}

pub enum SupervisorMsg {
    /// Apply a change under `Precedence`; the reply (if asked for) says whether it changed
    /// what the node serves.
    Apply(Update, Precedence, Option<RpcReplyPort<bool>>),
    /// Periodic: publish mailbox depths as metrics, and have owned shards flush their statistics.
    Sample,
    /// Install the running experiments on every shard (and on shards restarted later).
    Experiments(Arc<RunningExperiments>, Option<RpcReplyPort<()>>),
    /// Which shards this node owns (index = shard) under the shard map of `epoch`; shards whose
    /// ownership changed are told (a shard gained is acquired at `epoch`, its fencing token). The
    /// reply comes once every shard concerned has the message in its mailbox, so anything the
    /// caller sends a shard afterwards is handled after it.
    Own {
        owned: Vec<bool>,
        epoch: u64,
        reply: Option<RpcReplyPort<()>>,
    },
    /// From a shard: a write it made as the owner acquired at `epoch` was fenced (another node
    /// claimed the shard, at `owner_epoch`), and it has stopped acting as the owner.
    Fenced {
        shard: u32,
        epoch: u64,
        owner_epoch: u64,
    },
    #[cfg(test)]
    CrashShard(u32),
}

// ractor's `cluster` feature (on for the whole workspace: the cluster crate needs it) drops the
// blanket `Message` impl; this message never leaves the node, so the default (local-only) impl.
impl ractor::Message for SupervisorMsg {}

impl std::fmt::Debug for SupervisorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorMsg::Apply(u, p, _) => {
                write!(f, "Apply({} v{}, {p:?})", u.set(), u.version())
            }
            SupervisorMsg::Sample => f.write_str("Sample"),
            SupervisorMsg::Experiments(e, _) => write!(f, "Experiments({} running)", e.len()),
            SupervisorMsg::Own { owned, epoch, .. } => write!(
                f,
                "Own({} shards at epoch {epoch})",
                owned.iter().filter(|o| **o).count()
            ),
            SupervisorMsg::Fenced {
                shard,
                epoch,
                owner_epoch,
            } => write!(
                f,
                "Fenced(shard {shard} at epoch {epoch} by epoch {owner_epoch})"
            ),
            #[cfg(test)]
            SupervisorMsg::CrashShard(i) => write!(f, "CrashShard({i})"),
        }
    }
}
