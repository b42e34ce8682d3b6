//! A shard actor: owns one slice of the targeting-key space and evaluates its users' flags
//! against the catalog it holds. While its node owns the shard (the cluster's shard map says so)
//! it also keeps its users' experiment records and statistics ([`Owned`]): first exposures on
//! evaluation, conversions on `Track`, a periodic flush of the statistics.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bunting_engine::{EvaluationContext, ResolveError};
use bunting_experiments::{EventStore, RunningExperiments};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::catalog::Catalog;
use crate::messages::{ShardMsg, SupervisorMsg, TrackRefused};
use crate::owned::Owned;
use crate::resolved::{self, ResolvedFlag};
use crate::user_state::{UserStateError, UserStateStore};

/// Where shards keep what outlives them: per-user records and the experiment statistics.
#[derive(Debug, Clone)]
pub struct ShardServices {
    pub user_states: Arc<dyn UserStateStore>,
    pub events: Arc<dyn EventStore>,
}

impl ShardServices {
    /// Both in this process's memory: tests, and nodes configured with no stores.
    pub fn in_memory() -> ShardServices {
        ShardServices {
            user_states: Arc::new(crate::user_state::MemoryUserStates::default()),
            events: Arc::new(bunting_experiments::MemoryEventStore::default()),
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
    pub experiments: Arc<RunningExperiments>,
    pub services: ShardServices,
    /// `Some(epoch)`: the shard starts owned, acquired at that map epoch (a restart of an owned
    /// shard reloads its users).
    pub owned: Option<u64>,
    /// Told when a fenced write shows that another node has claimed the shard.
    pub supervisor: ActorRef<SupervisorMsg>,
}

#[derive(Debug)]
pub struct ShardState {
    index: u32,
    catalog: Arc<Catalog>,
    default_set: Arc<str>,
    depth: Arc<AtomicUsize>,
    experiments: Arc<RunningExperiments>,
    services: ShardServices,
    /// `Some` while this node owns the shard's users.
    owned: Option<Owned>,
    supervisor: ActorRef<SupervisorMsg>,
}

impl ShardState {
    fn set(&self, name: Option<&Arc<str>>) -> Result<&bunting_engine::FlagSet, ResolveError> {
        let name = name.unwrap_or(&self.default_set);
        self.catalog.set_or_not_found(name).map(Arc::as_ref)
    }
}

impl ShardState {
    /// Counts the evaluations that ran out of the engine's budget (see
    /// [`resolved::count_exceeded`]).
    fn count_exceeded<'a>(
        &self,
        set: Option<&Arc<str>>,
        resolved: impl IntoIterator<Item = (&'a String, &'a ResolvedFlag)>,
    ) {
        resolved::count_exceeded(set.unwrap_or(&self.default_set), resolved);
    }

    /// Takes (at map epoch `Some(epoch)`) or gives up ownership; returns the number of users
    /// now held.
    async fn own(&mut self, own: Option<u64>) -> Result<usize, UserStateError> {
        match (own, self.owned.as_ref().map(Owned::epoch)) {
            (Some(epoch), held) if held != Some(epoch) => {
                // Held at another epoch (the supervisor re-claims at a newer map after a fence):
                // what is in memory may be stale, so start over from the store.
                self.owned = None;
                let acquired = Owned::acquire(
                    self.index,
                    epoch,
                    self.services.user_states.as_ref(),
                    self.services.events.as_ref(),
                )
                .await;
                let owned = match acquired {
                    Ok(owned) => owned,
                    Err(e) => {
                        self.fenced(epoch, &e, "claim");
                        return Err(e);
                    }
                };
                let users = owned.users();
                self.owned = Some(owned);
                metrics::counter!("bunting_shard_acquisitions_total").increment(1);
                Ok(users)
            }
            (None, Some(_)) => {
                // Flush what changed so the statistics store is current; the next owner rebuilds
                // from the user records either way.
                if let Err(e) = self.flush().await {
                    tracing::warn!(shard = self.index, error = %e, "flush before release failed");
                }
                self.owned = None;
                metrics::counter!("bunting_shard_releases_total").increment(1);
                Ok(0)
            }
            _ => Ok(self.owned.as_ref().map_or(0, Owned::users)),
        }
    }

    /// A write (or the claim) at `epoch` was fenced: another node has claimed this shard, so
    /// this node has lost it even if its own map does not say so yet. Stop acting as the owner
    /// at once, without flushing (the new owner rebuilds the statistics from the records, and
    /// they are its to write now), and tell the supervisor, which claims the shard back only if
    /// its map is at least as new as the claimant's. Any other error is not a loss of the shard
    /// and changes nothing here.
    fn fenced(&mut self, epoch: u64, error: &UserStateError, at: &'static str) {
        let UserStateError::Fenced { owner_epoch, .. } = *error else {
            return;
        };
        self.owned = None;
        metrics::counter!("bunting_user_state_fenced_total", "at" => at).increment(1);
        // Once per loss: the shard no longer owns, so it writes nothing more until re-acquired.
        tracing::warn!(shard = self.index, epoch, error = %error, "shard fenced by another owner; no longer acting as its owner");
        let _ = self.supervisor.cast(SupervisorMsg::Fenced {
            shard: self.index,
            epoch,
            owner_epoch,
        });
    }

    async fn flush(&mut self) -> Result<usize, String> {
        let index = self.index;
        match self.owned.as_mut() {
            Some(owned) => owned
                .flush(index, self.services.events.as_ref())
                .await
                .map_err(|e| {
                    metrics::counter!("bunting_event_flush_failures_total").increment(1);
                    e.to_string()
                }),
            None => Ok(0),
        }
    }

    /// First exposures for the flags just resolved, when this node owns the user and a running
    /// experiment is on the flag. A failure to store the record is logged and counted; the
    /// evaluation is answered regardless (serving flags never waits on experiments). A fenced
    /// write means another node has claimed the shard: this node stops owning it, and the exposure is
    /// not lost but left to that owner, which records it when it next handles the user.
    async fn expose<'a>(
        &mut self,
        set: Option<&Arc<str>>,
        context: &EvaluationContext,
        resolved: impl IntoIterator<Item = (&'a String, &'a ResolvedFlag)>,
    ) {
        if self.experiments.is_empty() {
            return;
        }
        let (Some(owned), Some(user)) = (self.owned.as_mut(), context.targeting_key()) else {
            return;
        };
        let set = set.unwrap_or(&self.default_set);
        let mut fenced = None;
        'flags: for (key, answer) in resolved {
            let Some(variant) = answer.variant.as_deref() else {
                continue;
            };
            if answer.error.is_some() {
                continue;
            }
            for experiment in self.experiments.on_flag(set, key) {
                match owned
                    .expose(
                        self.index,
                        user,
                        experiment,
                        variant,
                        self.services.user_states.as_ref(),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e @ UserStateError::Fenced { .. }) => {
                        fenced = Some((owned.epoch(), e));
                        break 'flags;
                    }
                    Err(e) => {
                        metrics::counter!("bunting_exposures_lost_total").increment(1);
                        tracing::warn!(shard = self.index, experiment = %experiment.id, error = %e, "exposure not recorded");
                    }
                }
            }
        }
        if let Some((epoch, e)) = fenced {
            self.fenced(epoch, &e, "save");
        }
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
        let mut state = ShardState {
            index: args.index,
            catalog: args.catalog,
            default_set: args.default_set,
            depth: args.depth,
            experiments: args.experiments,
            services: args.services,
            owned: None,
            supervisor: args.supervisor,
        };
        if args.owned.is_some() {
            // A shard that cannot load its users still serves evaluations; it retries on the next
            // ownership change. Failing here would make the supervisor restart it in a loop.
            if let Err(e) = state.own(args.owned).await {
                tracing::warn!(shard = state.index, error = %e, "could not load the shard's users");
            }
        }
        Ok(state)
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
                if abandoned(&reply) {
                    return Ok(());
                }
                let answer = match state.set(request.set.as_ref()) {
                    Ok(set) => {
                        resolved::resolve(set, &request.key, request.wanted, &request.context)
                    }
                    Err(e) => ResolvedFlag::failed(e),
                };
                state.count_exceeded(request.set.as_ref(), [(&request.key, &answer)]);
                state
                    .expose(
                        request.set.as_ref(),
                        &request.context,
                        [(&request.key, &answer)],
                    )
                    .await;
                // The caller may have given up (timeout, cancelled RPC); nothing to do then.
                let _ = reply.send(answer);
            }
            ShardMsg::ResolveMany(request, reply) => {
                state.depth.fetch_sub(1, Ordering::Relaxed);
                if abandoned(&reply) {
                    return Ok(());
                }
                let answer: Vec<ResolvedFlag> = request
                    .keys
                    .iter()
                    .map(|key| resolved::resolve(&request.flags, key, None, &request.context))
                    .collect();
                state.count_exceeded(Some(&request.set), request.keys.iter().zip(&answer));
                state
                    .expose(
                        Some(&request.set),
                        &request.context,
                        request.keys.iter().zip(&answer),
                    )
                    .await;
                let _ = reply.send(answer);
            }
            ShardMsg::ResolveAll {
                set,
                context,
                reply,
            } => {
                state.depth.fetch_sub(1, Ordering::Relaxed);
                if abandoned(&reply) {
                    return Ok(());
                }
                let answer = state
                    .set(set.as_ref())
                    .map(|flags| resolved::resolve_all(flags, &context));
                if let Ok(all) = &answer {
                    let resolved: Vec<(&String, &ResolvedFlag)> =
                        all.flags.iter().map(|(k, r)| (k, r)).collect();
                    state.count_exceeded(set.as_ref(), resolved.iter().copied());
                    state.expose(set.as_ref(), &context, resolved).await;
                }
                let _ = reply.send(answer);
            }
            ShardMsg::Install(catalog) => {
                tracing::trace!(shard = state.index, "installed new catalog");
                state.catalog = catalog;
            }
            ShardMsg::Experiments(experiments) => state.experiments = experiments,
            ShardMsg::Own(own, reply) => {
                let loaded = state.own(own).await;
                if let Err(e) = &loaded {
                    tracing::warn!(shard = state.index, error = %e, "could not load the shard's users");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(loaded);
                }
            }
            ShardMsg::Track(request, reply) => {
                state.depth.fetch_sub(1, Ordering::Relaxed);
                let index = state.index;
                let answer = match state.owned.as_mut() {
                    Some(owned) => {
                        let epoch = owned.epoch();
                        let tracked = owned
                            .track(
                                index,
                                &request,
                                &state.experiments,
                                state.services.user_states.as_ref(),
                            )
                            .await;
                        // The client retries a refused Track; the new owner counts it then.
                        if let Err(TrackRefused::Store(e)) = &tracked {
                            state.fenced(epoch, e, "save");
                        }
                        tracked
                    }
                    None => Err(TrackRefused::NotOwner(index)),
                };
                let _ = reply.send(answer);
            }
            ShardMsg::Totals(id, reply) => {
                let totals = state.owned.as_ref().and_then(|o| o.totals(&id).cloned());
                let _ = reply.send(totals);
            }
            ShardMsg::Flush(reply) => {
                let flushed = state.flush().await;
                if let Some(reply) = reply {
                    let _ = reply.send(flushed);
                }
            }
            #[cfg(test)]
            ShardMsg::Crash => return Err("crash requested by a test".into()),
        }
        Ok(())
    }
}

/// Whether the caller of an evaluation has stopped waiting (its call timed out, or the request
/// was cancelled). Its evaluation is skipped: nobody sees the variant, so no exposure is
/// counted, and a backlog left by callers that gave up drains at no cost. Track is never
/// skipped: the event happened whether or not its caller waits for the answer.
fn abandoned<T>(reply: &RpcReplyPort<T>) -> bool {
    let gone = reply.is_closed();
    if gone {
        metrics::counter!("bunting_shard_abandoned_total").increment(1);
    }
    gone
}
