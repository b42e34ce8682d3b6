//! The node supervisor: starts the shard actors, fans every catalog change out to all of them,
//! and restarts a shard that fails with the catalog current at that moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use bunting_experiments::RunningExperiments;

use crate::catalog::{Catalog, Update};
use crate::current::Current;
use crate::messages::{Precedence, ShardMsg, SupervisorMsg};
use crate::shard::{Shard, ShardArgs, ShardServices};

/// The shard actors' current references, shared with the [`crate::Node`] handle so that a
/// restarted shard is reachable at once. Index = shard number.
#[derive(Debug)]
pub struct ShardSlots {
    pub(crate) refs: RwLock<Vec<ActorRef<ShardMsg>>>,
    pub(crate) depths: Box<[Arc<AtomicUsize>]>,
}

impl ShardSlots {
    pub(crate) fn get(&self, shard: u32) -> Option<ActorRef<ShardMsg>> {
        let refs = self
            .refs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        refs.get(shard as usize).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.depths.len()
    }
}

#[derive(Debug)]
pub struct NodeSupervisor;

#[derive(Debug)]
pub struct SupervisorArgs {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) default_set: Arc<str>,
    pub(crate) slots: Arc<ShardSlots>,
    pub(crate) published: watch::Sender<Arc<Catalog>>,
    pub(crate) current: Arc<Current>,
    pub(crate) services: ShardServices,
    pub(crate) owns_all: bool,
}

#[derive(Debug)]
pub struct SupervisorState {
    catalog: Arc<Catalog>,
    default_set: Arc<str>,
    slots: Arc<ShardSlots>,
    published: watch::Sender<Arc<Catalog>>,
    /// The fast path's snapshots: written before each fan-out (see `crate::current`).
    current: Arc<Current>,
    services: ShardServices,
    experiments: Arc<RunningExperiments>,
    /// Index = shard; `Some(epoch)`: owned, acquired under the map of that epoch. A single node
    /// owns every shard at epoch 0 from the start; a clustered node is told its share as soon as
    /// it has a shard map.
    owned: Vec<Option<u64>>,
    /// The epoch of the last map handed over with `Own` (0 until then).
    epoch: u64,
}

impl SupervisorState {
    async fn spawn_shard(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        index: u32,
    ) -> Result<ActorRef<ShardMsg>, ActorProcessingErr> {
        let depth = self.slots.depths[index as usize].clone();
        // Messages queued for a dead shard died with it; their callers were told.
        depth.store(0, Ordering::Relaxed);
        let (shard, _) = Actor::spawn_linked(
            None,
            Shard,
            ShardArgs {
                index,
                catalog: self.catalog.clone(),
                default_set: self.default_set.clone(),
                depth,
                experiments: self.experiments.clone(),
                services: self.services.clone(),
                owned: self.owned.get(index as usize).copied().flatten(),
                supervisor: myself.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        Ok(shard)
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let state = SupervisorState {
            // A single node is the shards' only writer: a fixed epoch, never fenced.
            owned: vec![args.owns_all.then_some(0); args.slots.len()],
            epoch: 0,
            catalog: args.catalog,
            default_set: args.default_set,
            slots: args.slots,
            published: args.published,
            current: args.current,
            services: args.services,
            experiments: Arc::new(RunningExperiments::default()),
        };
        let count = u32::try_from(state.slots.len()).unwrap_or(u32::MAX);
        let mut refs = Vec::with_capacity(state.slots.len());
        for index in 0..count {
            refs.push(state.spawn_shard(&myself, index).await?);
        }
        *state
            .slots
            .refs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = refs;
        myself.send_interval(Duration::from_secs(1), || SupervisorMsg::Sample);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Apply(update, precedence, reply) => {
                let next = match precedence {
                    Precedence::Newer => state.catalog.apply(&update),
                    Precedence::Authority => state.catalog.restore(&update),
                };
                let applied = match next {
                    Some(next) => {
                        let next = Arc::new(next);
                        state.catalog = next.clone();
                        state.current.install_catalog(next.clone());
                        fan_out(&state.slots, &next);
                        state.published.send_replace(next);
                        metrics::gauge!("bunting_flag_set_version", "flag_set" => update.set().to_string())
                            .set(update.version() as f64);
                        if let Some(age) = update_age(&update) {
                            metrics::histogram!("bunting_change_apply_seconds").record(age);
                        }
                        true
                    }
                    None => {
                        tracing::debug!(set = %update.set(), version = update.version(), ?precedence, "ignored an update that changes nothing");
                        false
                    }
                };
                if let Some(reply) = reply {
                    let _ = reply.send(applied);
                }
            }
            SupervisorMsg::Sample => {
                for (i, depth) in state.slots.depths.iter().enumerate() {
                    metrics::gauge!("bunting_shard_mailbox_depth", "shard" => i.to_string())
                        .set(depth.load(Ordering::Relaxed) as f64);
                }
                metrics::gauge!("bunting_shards_owned")
                    .set(state.owned.iter().filter(|o| o.is_some()).count() as f64);
                if !state.experiments.is_empty() {
                    for_each_shard(&state.slots, |shard| {
                        let _ = shard.cast(ShardMsg::Flush(None));
                    });
                }
            }
            SupervisorMsg::Experiments(experiments, reply) => {
                state.experiments = experiments.clone();
                state.current.install_experiments(experiments.clone());
                for_each_shard(&state.slots, |shard| {
                    let _ = shard.cast(ShardMsg::Experiments(experiments.clone()));
                });
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            SupervisorMsg::Own {
                owned,
                epoch,
                reply,
            } => {
                let refs = state
                    .slots
                    .refs
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                state.owned.resize(refs.len(), None);
                for ((shard, own), held) in refs.iter().zip(&owned).zip(state.owned.iter_mut()) {
                    // A shard kept from one map to the next keeps the epoch it was acquired at:
                    // its records in the store are its own since then.
                    match (*own, *held) {
                        (true, None) => {
                            *held = Some(epoch);
                            let _ = shard.cast(ShardMsg::Own(Some(epoch), None));
                        }
                        (false, Some(_)) => {
                            *held = None;
                            let _ = shard.cast(ShardMsg::Own(None, None));
                        }
                        _ => {}
                    }
                }
                drop(refs);
                state.epoch = epoch;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            SupervisorMsg::Fenced {
                shard,
                epoch,
                owner_epoch,
            } => {
                let Some(held) = state.owned.get_mut(shard as usize) else {
                    return Ok(());
                };
                // Only a report about the acquisition still current counts: a later map may
                // already have released or re-acquired the shard.
                if *held == Some(epoch) {
                    if state.epoch >= owner_epoch {
                        // This node's map gives it the shard and is at least as new as the map
                        // the other claimant acted on: that claim came from a stale map (or an
                        // owner this node's map has since replaced). Claim the shard back at the
                        // current epoch, reloading what the other wrote meanwhile. The stale
                        // claimant, fenced in turn, finds its map older than ours and lets go, so
                        // the two cannot take turns forever.
                        *held = Some(state.epoch);
                        if let Some(shard) = state.slots.get(shard) {
                            let _ = shard.cast(ShardMsg::Own(Some(state.epoch), None));
                        }
                    } else {
                        // A node with a newer map owns it. Released as far as this node is
                        // concerned; a later map that gives the shard to this node acquires it
                        // again at that map's epoch.
                        *held = None;
                    }
                }
            }
            #[cfg(test)]
            SupervisorMsg::CrashShard(i) => {
                if let Some(shard) = state.slots.get(i) {
                    let _ = shard.cast(ShardMsg::Crash);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Only failures are restarted: a shard stops cleanly only when the node shuts down.
        let SupervisionEvent::ActorFailed(cell, error) = event else {
            return Ok(());
        };
        let index = {
            let refs = state
                .slots
                .refs
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            refs.iter().position(|r| r.get_id() == cell.get_id())
        };
        let Some(index) = index.and_then(|i| u32::try_from(i).ok()) else {
            return Ok(());
        };
        tracing::warn!(shard = index, %error, "shard actor failed; restarting it with the current catalog");
        metrics::counter!("bunting_shard_restarts_total").increment(1);
        let shard = state.spawn_shard(&myself, index).await?;
        let mut refs = state
            .slots
            .refs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = refs.get_mut(index as usize) {
            *slot = shard;
        }
        Ok(())
    }
}

fn for_each_shard(slots: &ShardSlots, mut each: impl FnMut(&ActorRef<ShardMsg>)) {
    let refs = slots
        .refs
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for shard in refs.iter() {
        each(shard);
    }
}

fn fan_out(slots: &ShardSlots, catalog: &Arc<Catalog>) {
    let refs = slots
        .refs
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (i, shard) in refs.iter().enumerate() {
        if shard.cast(ShardMsg::Install(catalog.clone())).is_err() {
            // A shard being restarted gets the current catalog when it is spawned.
            tracing::debug!(shard = i, "shard not running during fan-out");
        }
    }
}

fn update_age(update: &Update) -> Option<f64> {
    let committed = match update {
        Update::Put { committed_at, .. } | Update::Remove { committed_at, .. } => *committed_at,
    };
    SystemTime::now()
        .duration_since(committed)
        .ok()
        .map(|d| d.as_secs_f64())
}
