//! A shard actor: owns one slice of the targeting-key space and evaluates its users' flags
//! against the catalog it holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bunting_engine::{ErrorCode, EvaluationContext, FlagSet, FlagType, ResolveError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::catalog::Catalog;
use crate::resolved::{self, ResolvedFlag};

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
        reply: RpcReplyPort<Result<Vec<(String, ResolvedFlag)>, ResolveError>>,
    },
    /// The supervisor's fan-out of a new catalog.
    Install(Arc<Catalog>),
    /// Fails the actor, so tests can watch the supervisor restart it.
    #[cfg(test)]
    Crash,
}

impl std::fmt::Debug for ShardMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardMsg::Resolve(r, _) => write!(f, "Resolve({:?})", r.key),
            ShardMsg::ResolveMany(r, _) => write!(f, "ResolveMany({} keys)", r.keys.len()),
            ShardMsg::ResolveAll { set, .. } => write!(f, "ResolveAll({set:?})"),
            ShardMsg::Install(c) => write!(f, "Install({:?})", c.changed_at()),
            #[cfg(test)]
            ShardMsg::Crash => f.write_str("Crash"),
        }
    }
}

#[derive(Debug)]
pub struct Shard;

#[derive(Debug)]
pub struct ShardArgs {
    pub index: u32,
    pub catalog: Arc<Catalog>,
    pub default_set: Arc<str>,
    /// Messages sent but not yet handled; the node increments it, the shard decrements it.
    pub depth: Arc<AtomicUsize>,
}

#[derive(Debug)]
pub struct ShardState {
    index: u32,
    catalog: Arc<Catalog>,
    default_set: Arc<str>,
    depth: Arc<AtomicUsize>,
}

impl ShardState {
    fn set(&self, name: Option<&Arc<str>>) -> Result<&bunting_engine::FlagSet, ResolveError> {
        let name = name.unwrap_or(&self.default_set);
        self.catalog
            .get(name)
            .map(Arc::as_ref)
            .ok_or_else(|| ResolveError {
                code: ErrorCode::FlagNotFound,
                message: format!("flag set {name:?} not found"),
            })
    }
}

impl Actor for Shard {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(ShardState {
            index: args.index,
            catalog: args.catalog,
            default_set: args.default_set,
            depth: args.depth,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Resolve(request, reply) => {
                state.depth.fetch_sub(1, Ordering::Relaxed);
                let answer = match state.set(request.set.as_ref()) {
                    Ok(set) => {
                        resolved::resolve(set, &request.key, request.wanted, &request.context)
                    }
                    Err(e) => ResolvedFlag::failed(e),
                };
                // The caller may have given up (timeout, cancelled RPC); nothing to do then.
                let _ = reply.send(answer);
            }
            ShardMsg::ResolveMany(request, reply) => {
                state.depth.fetch_sub(1, Ordering::Relaxed);
                let answer = request
                    .keys
                    .iter()
                    .map(|key| resolved::resolve(&request.flags, key, None, &request.context))
                    .collect();
                let _ = reply.send(answer);
            }
            ShardMsg::ResolveAll {
                set,
                context,
                reply,
            } => {
                state.depth.fetch_sub(1, Ordering::Relaxed);
                let answer = state.set(set.as_ref()).map(|set| {
                    set.resolve_all(&context)
                        .map(|(key, r)| {
                            (
                                key.to_owned(),
                                ResolvedFlag::from_resolution(
                                    r.map_value(Clone::clone),
                                    set.version(),
                                ),
                            )
                        })
                        .collect()
                });
                let _ = reply.send(answer);
            }
            ShardMsg::Install(catalog) => {
                tracing::trace!(shard = state.index, "installed new catalog");
                state.catalog = catalog;
            }
            #[cfg(test)]
            ShardMsg::Crash => return Err("crash requested by a test".into()),
        }
        Ok(())
    }
}
