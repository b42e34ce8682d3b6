//! The one path every per-user request takes to the actor tree: admission (the [`Gate`]), the
//! owner of the subject's shard ([`Routing`]: here, or forwarded to a peer with local fallback),
//! and the actor tree ([`Node`]): the owning shard's mailbox for an evaluation that records
//! per-user state, the fast path on the request's own task for one that cannot (see
//! `bunting_actors::Lane` and ARCHITECTURE.md). The gRPC services (flagd evaluation v1/v2,
//! `bunting.v1` Evaluation and Experiments) and the peer handler call it, and so will any other
//! front end: they decode their protocol and encode the answer, nothing else. A new per-user
//! operation is one method here plus its peer message, so no entry point can skip admission or
//! routing.
//!
//! A forwarded request is served by the owner's `Dispatch` built with [`Dispatch::new`] (no
//! routing): it is evaluated there, never forwarded again, so two nodes whose maps disagree for a
//! moment cannot bounce a request between them.

mod bulk;
mod error;
mod tally;
mod track;

use std::sync::Arc;
use std::time::Instant;

use bunting_actors::{
    FlagView, Here, Lane, Node, ResolveAllRequest, ResolveRequest, ResolvedFlag, ResolvedSet,
    SetHeader,
};
use bunting_cluster::NodeId;
use bunting_engine::{EvaluationContext, FlagType, ResolveError};
use bunting_experiments::{ExperimentId, ExperimentTotals};
use prost_types::Struct;
use tokio::sync::OwnedSemaphorePermit;

use crate::routing::peer::PeerError;
use crate::routing::peer::wire::{Answer, Request, Resolve, Target};
use crate::routing::{Route, Routing, Stamp};
use crate::service::Admitted;
use crate::service::Gate;
use tally::Tally;

pub use bulk::{BulkAnswer, BulkQuery, SubjectAnswer};
pub use error::DispatchError;
pub use track::TrackFailed;

/// Admission, routing and the actor tree: see the module documentation.
#[derive(Debug, Clone)]
pub struct Dispatch {
    node: Arc<Node>,
    gate: Gate,
    /// `Some` on a clustered node answering clients: subjects owned elsewhere are forwarded.
    routing: Option<Routing>,
    /// The most subjects × flags one bulk call may ask for (the node's `max_bulk_evaluations`).
    max_bulk_evaluations: usize,
}

/// A resolve-all past admission and routing (see [`Dispatch::route_all`]).
enum AllLane {
    /// To be evaluated on the caller's task, which holds its admission and, when a rule of the
    /// set may loop, a turn in the looping lane, until it drops them after evaluating.
    Here {
        here: Here<ResolveAllRequest>,
        held: (Admitted, Option<OwnedSemaphorePermit>),
    },
    /// Answered by a shard or by the owner.
    Answered(Result<ResolvedSet, ResolveError>),
}

/// An answer and what it tells the client about routing (`bunting-epoch`, `bunting-owner`).
#[derive(Debug, Clone)]
pub struct Routed<T> {
    pub answer: T,
    pub stamp: Stamp,
}

impl Dispatch {
    /// A dispatch that evaluates on this node only: a single node's, and the one serving
    /// requests forwarded by peers.
    pub fn new(node: Arc<Node>, gate: Gate, max_bulk_evaluations: usize) -> Dispatch {
        Dispatch {
            node,
            gate,
            routing: None,
            max_bulk_evaluations,
        }
    }

    /// The same dispatch, sending each subject to its shard's owner under `routing`.
    #[must_use]
    pub fn routed(mut self, routing: Option<Routing>) -> Dispatch {
        self.routing = routing;
        self
    }

    /// The actor tree, for what is not a per-user request (streams, the catalog).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The node's admission, for streams (which take a stream slot, not a request slot).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// A turn in the looping lane (see `service::admission`) when the evaluation may loop;
    /// `None` at once when it cannot.
    async fn looping_turn(&self, loops: bool) -> Option<OwnedSemaphorePermit> {
        if loops {
            self.gate.looping_turn().await
        } else {
            None
        }
    }

    /// Whether evaluating `key` of `set` here (every flag, with `None`) may loop, read from the
    /// node's current catalog; a set this node does not know costs nothing and is answered by
    /// the shard.
    fn loops(&self, set: Option<&Arc<str>>, key: Option<&str>) -> bool {
        let catalog = self.node.catalog();
        let name = set.map_or(self.node.config().default_set.as_str(), |s| &**s);
        catalog.get(name).is_some_and(|flags| flags.iterates(key))
    }

    /// The owner's answer for a subject owned by `owner`, or `None` to evaluate here: a context
    /// the peer protocol cannot carry, or an owner that did not answer well in time (the one
    /// local-fallback rule, `Routing::forward`). `target` is built only when there is an owner
    /// to ask.
    async fn ask_owner<T>(
        &self,
        owner: NodeId,
        context: &EvaluationContext,
        set: Option<&Arc<str>>,
        target: impl FnOnce() -> Target,
        accept: impl FnOnce(Answer) -> Result<T, PeerError>,
    ) -> Option<T> {
        let routing = self.routing.as_ref()?;
        let wire = wire_context(context)?;
        let request = Request::Resolve(Resolve {
            set: set.cloned(),
            context: wire,
            target: target(),
        });
        routing.forward(&owner, request, accept).await.ok()
    }

    /// Where a request for `context` runs (`Some(owner)`: on another node), and what its answer
    /// tells the client.
    fn route(&self, context: &EvaluationContext) -> (Option<NodeId>, Stamp) {
        let Some(routing) = &self.routing else {
            return (None, Stamp::default());
        };
        match routing.route(context) {
            (Route::Remote(owner), stamp) => (Some(owner), stamp),
            (Route::Local, stamp) => (None, stamp),
        }
    }

    /// One resolution for one subject, admitted: typed (flagd's `Resolve<Type>`), or with
    /// `wanted` `None` as whatever the variant holds (OFREP names no type). A resolution error is in the answer
    /// (`ResolvedFlag::error`); `Err` is admission, a malformed request, or the actor tree
    /// failing.
    ///
    /// A flag without per-user state whose subject is owned here (or by nobody: no targeting
    /// key, or a node without routing) is the fast path: evaluated on this task against the
    /// node's current catalog, holding its request slot (and a looping turn, for a rule that
    /// loops) while it does, with no spawned task and no mailbox hop. Everything else, a forward
    /// to the owner or a shard's mailbox, runs on a task of its own that holds the slot until
    /// the work is done ([`Gate::hold`]). Routing comes first on purpose: a subject owned
    /// elsewhere is still forwarded, so answers and owner/epoch stamps stay the owner's.
    pub async fn resolve(
        &self,
        service: &'static str,
        set: Option<Arc<str>>,
        key: String,
        context: Option<Struct>,
        wanted: Option<FlagType>,
    ) -> Result<Routed<ResolvedFlag>, DispatchError> {
        let admitted = self.gate.take(service)?;
        let started = Instant::now();
        if key.is_empty() {
            return Err(DispatchError::EmptyFlagKey);
        }
        let context = self.gate.context(context)?;
        let (owner, stamp) = self.route(&context);
        let request = ResolveRequest {
            set,
            key,
            wanted,
            context,
        };
        let lane = match owner {
            None => self.node.lane(request),
            Some(_) => Lane::Shard(request),
        };
        let resolved = match lane {
            Lane::Here(here) => {
                let _turn = self.looping_turn(here.loops()).await;
                let resolved = self.node.resolve_here(here);
                drop(admitted);
                resolved
            }
            Lane::Shard(request) => {
                let this = self.clone();
                Gate::hold(admitted, async move {
                    this.resolve_away(owner, request, wanted).await
                })
                .await?
            }
        };
        record(service, &resolved, started);
        Ok(Routed {
            answer: resolved,
            stamp,
        })
    }

    /// A resolution that does not stay on the request's task: forwarded to `owner` (when
    /// `Some`), else, or when the owner did not answer, here: on the owning shard's mailbox, or
    /// on the fast path when a fallback's flag has no per-user state.
    async fn resolve_away(
        &self,
        owner: Option<NodeId>,
        request: ResolveRequest,
        wanted: Option<FlagType>,
    ) -> Result<ResolvedFlag, DispatchError> {
        let request = match owner {
            None => request,
            Some(owner) => {
                let forwarded = self
                    .ask_owner(
                        owner,
                        &request.context,
                        request.set.as_ref(),
                        || Target::Flag {
                            key: request.key.clone(),
                            wanted,
                        },
                        |answer| match answer {
                            Answer::Flag(resolved) => Ok(resolved),
                            other => Err(other.unexpected("one-flag")),
                        },
                    )
                    .await;
                if let Some(resolved) = forwarded {
                    return Ok(resolved);
                }
                match self.node.lane(request) {
                    Lane::Here(here) => {
                        let _turn = self.looping_turn(here.loops()).await;
                        return Ok(self.node.resolve_here(here));
                    }
                    Lane::Shard(request) => request,
                }
            }
        };
        let _turn = self
            .looping_turn(self.loops(request.set.as_ref(), Some(&request.key)))
            .await;
        Ok(self.node.resolve(request).await?)
    }

    /// Every flag of a set for one subject, with the set's metadata as the resolving shard
    /// (here or on the owner) held it, admitted. The fast path as for [`Dispatch::resolve`]:
    /// on this task when no flag of the set has a running experiment.
    pub async fn resolve_all(
        &self,
        service: &'static str,
        set: Option<Arc<str>>,
        context: Option<Struct>,
    ) -> Result<Routed<Result<ResolvedSet, ResolveError>>, DispatchError> {
        let started = Instant::now();
        let (lane, stamp) = self.route_all(service, set, context).await?;
        let answer = match lane {
            AllLane::Here { here, held } => {
                let answer = self.node.resolve_all_here(here);
                drop(held);
                answer
            }
            AllLane::Answered(answer) => answer,
        };
        metrics::histogram!("bunting_evaluation_seconds", "service" => service)
            .record(started.elapsed().as_secs_f64());
        if let Ok(all) = &answer {
            // One counter update per reason, not per flag: a resolve-all is a hundred flags.
            let mut tally = Tally::default();
            all.flags
                .iter()
                .for_each(|(_, r)| tally.count_reason(r.reason));
            tally.record_counts(service);
        }
        Ok(Routed { answer, stamp })
    }

    /// [`Dispatch::resolve_all`] for a front end that writes each flag out and keeps nothing:
    /// on the fast path each flag is handed to `visit` as the engine resolves it, borrowed from
    /// the set (a bulk answer of a few hundred flags spent a tenth of its time copying them into
    /// a [`ResolvedSet`] and dropping it); an answer from a shard or a peer is visited as it came.
    pub async fn visit_all(
        &self,
        service: &'static str,
        set: Option<Arc<str>>,
        context: Option<Struct>,
        mut visit: impl FnMut(&str, FlagView<'_>),
    ) -> Result<Routed<Result<SetHeader, ResolveError>>, DispatchError> {
        let started = Instant::now();
        let (lane, stamp) = self.route_all(service, set, context).await?;
        let mut tally = Tally::default();
        let mut counted = |key: &str, flag: FlagView<'_>| {
            tally.count_reason(flag.reason);
            visit(key, flag);
        };
        let answer = match lane {
            AllLane::Here { here, held } => {
                let answer = self.node.visit_all_here(here, &mut counted);
                drop(held);
                answer
            }
            AllLane::Answered(answer) => answer.map(|all| {
                all.flags.iter().for_each(|(key, r)| counted(key, r.view()));
                SetHeader {
                    metadata: all.metadata,
                    version: all.version,
                }
            }),
        };
        metrics::histogram!("bunting_evaluation_seconds", "service" => service)
            .record(started.elapsed().as_secs_f64());
        if answer.is_ok() {
            tally.record_counts(service);
        }
        Ok(Routed { answer, stamp })
    }

    /// Admission and routing of a resolve-all: evaluated by a shard or the owner (answered), or
    /// left to the caller to evaluate on its own task, holding admission and its looping turn.
    async fn route_all(
        &self,
        service: &'static str,
        set: Option<Arc<str>>,
        context: Option<Struct>,
    ) -> Result<(AllLane, Stamp), DispatchError> {
        let admitted = self.gate.take(service)?;
        let context = self.gate.context(context)?;
        let (owner, stamp) = self.route(&context);
        let request = ResolveAllRequest { set, context };
        let lane = match owner {
            None => self.node.lane_all(request),
            Some(_) => Lane::Shard(request),
        };
        let lane = match lane {
            Lane::Here(here) => {
                let turn = self.looping_turn(here.loops()).await;
                AllLane::Here {
                    here,
                    held: (admitted, turn),
                }
            }
            Lane::Shard(request) => {
                let this = self.clone();
                AllLane::Answered(
                    Gate::hold(admitted, async move {
                        this.resolve_all_away(owner, request).await
                    })
                    .await?,
                )
            }
        };
        Ok((lane, stamp))
    }

    /// A resolve-all forwarded to `owner`, or evaluated here (see [`Dispatch::resolve_away`]).
    async fn resolve_all_away(
        &self,
        owner: Option<NodeId>,
        request: ResolveAllRequest,
    ) -> Result<Result<ResolvedSet, ResolveError>, DispatchError> {
        let request = match owner {
            None => request,
            Some(owner) => {
                let forwarded = self
                    .ask_owner(
                        owner,
                        &request.context,
                        request.set.as_ref(),
                        || Target::All,
                        |answer| match answer {
                            Answer::All(all) => Ok(all),
                            other => Err(other.unexpected("all-flags")),
                        },
                    )
                    .await;
                if let Some(answer) = forwarded {
                    return Ok(answer);
                }
                match self.node.lane_all(request) {
                    Lane::Here(here) => {
                        let _turn = self.looping_turn(here.loops()).await;
                        return Ok(self.node.resolve_all_here(here));
                    }
                    Lane::Shard(request) => request,
                }
            }
        };
        let _turn = self
            .looping_turn(self.loops(request.set.as_ref(), None))
            .await;
        Ok(self.node.resolve_all(request.set, request.context).await?)
    }

    /// The live statistics of `experiment`: this node's shards, and on a clustered node every
    /// other member's, admitted (see [`Gate::run`]).
    pub async fn experiment_totals(
        &self,
        service: &'static str,
        experiment: ExperimentId,
    ) -> Result<ExperimentTotals, DispatchError> {
        let this = self.clone();
        self.gate
            .run(service, async move {
                let mut totals = this.node.experiment_totals(&experiment).await?;
                if let Some(routing) = &this.routing {
                    let theirs = routing
                        .peer_totals(&experiment)
                        .await
                        .map_err(|(node, error)| DispatchError::PeerTotals { node, error })?;
                    totals.merge(&theirs);
                }
                Ok(totals)
            })
            .await
    }
}

/// The context as the peer protocol carries it. The engine's contexts are JSON objects that came
/// from a Struct (or from a peer's), so this fails only past the Struct conversion's depth
/// limit; such a request is then evaluated here, as when the owner is unreachable.
fn wire_context(context: &EvaluationContext) -> Option<Struct> {
    bunting_proto::json::json_to_struct(context.fields()).ok()
}

fn record(service: &'static str, resolved: &ResolvedFlag, started: Instant) {
    metrics::histogram!("bunting_evaluation_seconds", "service" => service)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("bunting_evaluations_total", "service" => service, "reason" => resolved.reason.as_str())
        .increment(1);
    if let Some(error) = &resolved.error {
        metrics::counter!("bunting_evaluation_errors_total", "service" => service, "code" => error.code.as_str())
            .increment(1);
    }
}

#[cfg(test)]
mod tests;
