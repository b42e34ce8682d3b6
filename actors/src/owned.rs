//! What a shard holds only while it owns its users: their experiment records and the per-arm
//! statistics built from them.
//!
//! Invariant: the statistics are exactly the sum of the records ([`ExperimentTotals::add_user`]),
//! and a record changes in memory only after the [`UserStateStore`] accepted it. So a shard's
//! next owner, rebuilding from the store, arrives at the same statistics, and nothing this shard
//! acknowledged is lost when its node dies.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use bunting_experiments::{
    EventStore, EventStoreError, Experiment, ExperimentId, ExperimentTotals, RunningExperiments,
    ShardFlush, Tracked, UserExposure,
};

use crate::messages::{TrackRefused, TrackRequest};
use crate::user_state::{self, UserState, UserStateError, UserStateStore};

#[derive(Debug, Default)]
pub struct Owned {
    users: HashMap<String, UserState>,
    totals: BTreeMap<ExperimentId, ExperimentTotals>,
    /// Experiments whose totals changed since the last flush.
    dirty: BTreeSet<ExperimentId>,
    /// The last flush's sequence number; the next one is larger (see [`Owned::next_seq`]).
    seq: u64,
    /// The shard map epoch at which this node acquired the shard: the fencing token every write
    /// of a user's record carries (see [`UserStateStore`]).
    epoch: u64,
}

impl Owned {
    /// Takes ownership of `shard` at map epoch `epoch`: claims it in the store (so a stale
    /// owner's later writes are refused), then loads its users' records and rebuilds the
    /// statistics. Claiming first means no write of an older owner lands after the load. A record
    /// that cannot be decoded is skipped and counted (one bad value must not make a shard
    /// unownable).
    pub async fn acquire(
        shard: u32,
        epoch: u64,
        store: &dyn UserStateStore,
        events: &dyn EventStore,
    ) -> Result<Owned, UserStateError> {
        store.claim(shard, epoch).await?;
        let mut owned = Owned {
            epoch,
            ..Owned::default()
        };
        for (user, bytes) in store.load(shard).await? {
            match user_state::decode(shard, &user, &bytes) {
                Ok(state) => {
                    for (experiment, record) in &state {
                        owned
                            .totals
                            .entry(experiment.clone())
                            .or_default()
                            .add_user(record);
                    }
                    owned.users.insert(user, state);
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "skipping an undecodable user state");
                    metrics::counter!("bunting_user_state_corrupt_total").increment(1);
                }
            }
        }
        // Continue above every sequence number already stored for this shard, whatever this
        // node's clock says, so the first flush of the rebuilt totals is not taken for a stale one.
        for experiment in owned.totals.keys() {
            if let Ok(Some(stored)) = events.shard(experiment, shard).await {
                owned.seq = owned.seq.max(stored.seq);
            }
        }
        owned.dirty = owned.totals.keys().cloned().collect();
        Ok(owned)
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// The map epoch the shard was acquired at.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Counts `user`'s first exposure to `experiment` (arm `variant`). Later exposures, and
    /// variants that are not arms of the experiment (the flag changed mid-run), count nothing.
    /// Returns whether this was a first exposure.
    pub async fn expose(
        &mut self,
        shard: u32,
        user: &str,
        experiment: &Experiment,
        variant: &str,
        store: &dyn UserStateStore,
    ) -> Result<bool, UserStateError> {
        if self
            .users
            .get(user)
            .is_some_and(|s| s.contains_key(&experiment.id))
        {
            return Ok(false);
        }
        if !experiment.arms.contains(variant) {
            metrics::counter!("bunting_exposures_outside_arms_total").increment(1);
            return Ok(false);
        }
        let mut next = self.users.get(user).cloned().unwrap_or_default();
        next.insert(
            experiment.id.clone(),
            UserExposure::new(variant, now_millis()),
        );
        store
            .save(shard, self.epoch, user, &user_state::encode(&next))
            .await?;
        self.users.insert(user.to_owned(), next);
        self.totals
            .entry(experiment.id.clone())
            .or_default()
            .expose(variant);
        self.dirty.insert(experiment.id.clone());
        metrics::counter!("bunting_exposures_total").increment(1);
        Ok(true)
    }

    /// Counts `event` for `user` toward every running experiment the user was exposed to.
    /// Returns the experiments it counted toward (none for a user never exposed: a conversion
    /// only counts after the exposure it is attributed to).
    pub async fn track(
        &mut self,
        shard: u32,
        request: &TrackRequest,
        running: &RunningExperiments,
        store: &dyn UserStateStore,
    ) -> Result<Vec<ExperimentId>, TrackRefused> {
        let TrackRequest {
            user,
            event,
            value,
            flag_set,
        } = request;
        let (user, value, flag_set) = (user.as_str(), *value, flag_set.as_deref());
        bunting_experiments::aggregate::check_event(event, value)?;
        let Some(current) = self.users.get(user) else {
            return Ok(Vec::new());
        };
        // Work on copies; memory changes only once the store has the new record.
        let mut next = current.clone();
        let mut totals = BTreeMap::new();
        let mut counted = Vec::new();
        for (id, record) in &mut next {
            let Some(experiment) = running.get(id) else {
                continue;
            };
            if flag_set.is_some_and(|set| set != experiment.flag_set) {
                continue;
            }
            let mut t = self.totals.get(id).cloned().unwrap_or_default();
            if t.track(experiment, record, event, value)? == Tracked::Counted {
                counted.push(id.clone());
                totals.insert(id.clone(), t);
            }
        }
        if counted.is_empty() {
            return Ok(counted);
        }
        store
            .save(shard, self.epoch, user, &user_state::encode(&next))
            .await?;
        self.users.insert(user.to_owned(), next);
        for (id, t) in totals {
            self.totals.insert(id.clone(), t);
            self.dirty.insert(id);
        }
        Ok(counted)
    }

    /// Writes the totals of every experiment that changed since the last flush. Safe to retry:
    /// the store keeps the flush with the largest sequence number per shard.
    pub async fn flush(
        &mut self,
        shard: u32,
        events: &dyn EventStore,
    ) -> Result<usize, EventStoreError> {
        if self.dirty.is_empty() {
            return Ok(0);
        }
        let seq = self.next_seq();
        let flushes: Vec<ShardFlush> = self
            .dirty
            .iter()
            .filter_map(|id| {
                self.totals.get(id).map(|totals| ShardFlush {
                    experiment: id.clone(),
                    shard,
                    seq,
                    totals: totals.clone(),
                })
            })
            .collect();
        events.flush(&flushes).await?;
        self.seq = seq;
        self.dirty.clear();
        Ok(flushes.len())
    }

    /// The live statistics of one experiment (flushed or not).
    pub fn totals(&self, experiment: &ExperimentId) -> Option<&ExperimentTotals> {
        self.totals.get(experiment)
    }

    /// Larger than every sequence number used or seen for this shard, and close to the clock in
    /// microseconds so a restarted owner without history still moves forward.
    fn next_seq(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        now.max(self.seq.saturating_add(1))
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
