//! The handle the rest of the node uses: start the actor tree, resolve flags through the owning
//! shard, apply changes, watch the catalog.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bunting_engine::{EvaluationContext, FlagSet, ResolveError};
use ractor::concurrency::{OneshotReceiver, oneshot};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, MessagingErr, RpcReplyPort};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::{Catalog, Update};
use crate::current::Current;
use crate::error::NodeError;
use crate::lane::{Here, Lane, ResolveAllRequest};
use crate::messages::{
    BulkRequest, Precedence, ResolveRequest, ShardMsg, SupervisorMsg, TrackRefused, TrackRequest,
};
use crate::resolved::{self, FlagView, ResolvedFlag, ResolvedSet, SetHeader};
use crate::shard::ShardServices;
use crate::supervisor::{NodeSupervisor, ShardSlots, SupervisorArgs};
use bunting_experiments::{ExperimentId, ExperimentTotals, RunningExperiments};
use bunting_keyspace::shard_of;

/// About half a millisecond of evaluations of ordinary rules: how much of a bulk batch the fast
/// path evaluates before it lets the worker run other tasks.
const BULK_EVALUATIONS_PER_YIELD: usize = 1_000;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Shard actors on this node. Each owns the targeting keys that hash to it.
    pub shards: u32,
    /// The flag set used when a request names none (flagd's requests usually do not).
    pub default_set: String,
    /// How long a caller waits for a shard before giving up.
    pub call_timeout: Duration,
    /// Whether the node starts owning every shard's users: a single node does; a cluster member
    /// owns nothing until the cluster's shard map gives it shards (see `Node::set_owned`), so a
    /// restarted member never counts exposures for shards another member owns.
    pub owns_all_at_start: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            shards: bunting_keyspace::DEFAULT_SHARDS,
            default_set: "default".to_owned(),
            call_timeout: Duration::from_secs(2),
            owns_all_at_start: true,
        }
    }
}

/// A running actor tree. Cheap to share (`Arc<Node>`); all methods take `&self`.
#[derive(Debug)]
pub struct Node {
    supervisor: ActorRef<SupervisorMsg>,
    slots: Arc<ShardSlots>,
    catalog: watch::Receiver<Arc<Catalog>>,
    /// The catalog and running experiments for the fast path (see `lane`).
    current: Arc<Current>,
    config: NodeConfig,
    /// `config.default_set`, shared with every request that names no set.
    default_set: Arc<str>,
    /// Spreads requests without a targeting key (no per-user work) across shards.
    next_keyless: AtomicUsize,
    /// Evaluation requests answered on the fast path (see [`Node::resolved_here`]).
    resolved_here: AtomicU64,
}

impl Node {
    /// A node whose per-user state and statistics stay in memory (tests, embedded defaults).
    pub async fn start(config: NodeConfig, initial: Catalog) -> Result<Node, NodeError> {
        Node::start_with(config, initial, ShardServices::in_memory()).await
    }

    /// A node whose shards keep per-user state and statistics in `services`.
    pub async fn start_with(
        config: NodeConfig,
        initial: Catalog,
        services: ShardServices,
    ) -> Result<Node, NodeError> {
        let shards = config.shards.max(1);
        let slots = Arc::new(ShardSlots {
            refs: RwLock::new(Vec::new()),
            depths: (0..shards).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
        });
        let initial = Arc::new(initial);
        let (published, catalog) = watch::channel(initial.clone());
        let current = Arc::new(Current::new(initial.clone()));
        let (supervisor, _join) = Actor::spawn(
            None,
            NodeSupervisor,
            SupervisorArgs {
                catalog: initial,
                default_set: config.default_set.as_str().into(),
                slots: slots.clone(),
                published,
                current: current.clone(),
                services,
                owns_all: config.owns_all_at_start,
            },
        )
        .await?;
        Ok(Node {
            supervisor,
            slots,
            catalog,
            current,
            default_set: config.default_set.as_str().into(),
            config,
            next_keyless: AtomicUsize::new(0),
            resolved_here: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The catalog the node is serving now (a shard may hold the previous one for as long as
    /// the new one waits in its mailbox).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.current.catalog()
    }

    /// Where `request` runs: [`Lane::Here`] when it can record no per-user state (no running
    /// experiment on the flag, or no targeting key), else [`Lane::Shard`]. See `crate::lane`.
    pub fn lane(&self, request: ResolveRequest) -> Lane<ResolveRequest> {
        let set = self.set_name(request.set.as_ref());
        let per_user = request.context.targeting_key().is_some()
            && !self
                .current
                .experiments()
                .on_flag(&set, &request.key)
                .is_empty();
        self.sorted(per_user, set, request)
    }

    /// Where a resolve-all runs: [`Lane::Here`] unless a running experiment is on some flag of
    /// the set and the context has a targeting key.
    pub fn lane_all(&self, request: ResolveAllRequest) -> Lane<ResolveAllRequest> {
        let set = self.set_name(request.set.as_ref());
        let per_user =
            request.context.targeting_key().is_some() && self.current.experiments().on_set(&set);
        self.sorted(per_user, set, request)
    }

    /// Whether a running experiment is on some flag of `set`: its answers for a context then
    /// depend on per-user state and on which experiments run, not on the set's version alone.
    pub fn has_experiments_on(&self, set: &str) -> bool {
        self.current.experiments().on_set(set)
    }

    fn set_name(&self, set: Option<&Arc<str>>) -> Arc<str> {
        set.unwrap_or(&self.default_set).clone()
    }

    fn sorted<Q>(&self, per_user: bool, set: Arc<str>, query: Q) -> Lane<Q> {
        if per_user {
            Lane::Shard(query)
        } else {
            Lane::Here(Here {
                catalog: self.current.catalog(),
                set,
                query,
            })
        }
    }

    /// Resolves a flag without per-user state on the caller's task, against the catalog it was
    /// sorted with: no mailbox, no shard, so no shard's failure or backlog delays it.
    pub fn resolve_here(&self, here: Here<ResolveRequest>) -> ResolvedFlag {
        self.resolved_here.fetch_add(1, Ordering::Relaxed);
        let request = &here.query;
        let answer = match here.flags() {
            Ok(flags) => resolved::resolve(flags, &request.key, request.wanted, &request.context),
            Err(e) => ResolvedFlag::failed(e),
        };
        resolved::count_exceeded(&here.set, [(&request.key, &answer)]);
        answer
    }

    /// Resolves every flag of a set without per-user state on the caller's task.
    pub fn resolve_all_here(
        &self,
        here: Here<ResolveAllRequest>,
    ) -> Result<ResolvedSet, ResolveError> {
        self.resolved_here.fetch_add(1, Ordering::Relaxed);
        let all = resolved::resolve_all(here.flags()?, &here.query.context);
        resolved::count_exceeded(&here.set, all.flags.iter().map(|(k, r)| (k, r)));
        Ok(all)
    }

    /// [`Node::resolve_all_here`] with each flag handed to `visit` as the engine resolves it,
    /// borrowed from the set: for a front end that writes the answers out and keeps nothing.
    pub fn visit_all_here(
        &self,
        here: Here<ResolveAllRequest>,
        visit: impl FnMut(&str, FlagView<'_>),
    ) -> Result<SetHeader, ResolveError> {
        self.resolved_here.fetch_add(1, Ordering::Relaxed);
        Ok(resolved::visit_all(
            &here.set,
            here.flags()?,
            &here.query.context,
            visit,
        ))
    }

    /// How many requests (one flag, or all of a set) this node has answered on the fast path
    /// since it started: tests and operators can see that flags without per-user state skip
    /// the shards.
    pub fn resolved_here(&self) -> u64 {
        self.resolved_here.load(Ordering::Relaxed)
    }

    /// A receiver that wakes on every applied change (for event and sync streams).
    pub fn watch(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalog.clone()
    }

    /// The shard that owns `context`'s targeting key (a keyless request goes to any shard).
    pub fn shard_for(&self, context: &EvaluationContext) -> u32 {
        let shards = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        match context.targeting_key() {
            Some(key) => shard_of(key, shards),
            None => {
                let n = self.next_keyless.fetch_add(1, Ordering::Relaxed);
                u32::try_from(n % self.slots.len()).unwrap_or(0)
            }
        }
    }

    /// Resolves one flag through the owning shard's mailbox.
    pub async fn resolve(&self, request: ResolveRequest) -> Result<ResolvedFlag, NodeError> {
        let shard = self.shard_for(&request.context);
        self.call(shard, |reply| ShardMsg::Resolve(request, reply))
            .await
    }

    /// Resolves every flag of a set for one subject, in key order, with the set's metadata as
    /// the resolving shard held it.
    pub async fn resolve_all(
        &self,
        set: Option<Arc<str>>,
        context: EvaluationContext,
    ) -> Result<Result<ResolvedSet, ResolveError>, NodeError> {
        let shard = self.shard_for(&context);
        self.call(shard, |reply| ShardMsg::ResolveAll {
            set,
            context,
            reply,
        })
        .await
    }

    /// Resolves `keys` of the pinned `flags` for each subject. A subject that can record per-user
    /// state (a running experiment on one of `keys` and a targeting key) goes through its owning
    /// shard's mailbox, one message per subject; every other subject is the fast path, evaluated
    /// on this task (see `crate::lane`). Every message is sent before anything is evaluated here
    /// or awaited, so the shards work in parallel, and the batch shares one deadline. Answers
    /// come back in subject order, one `Vec` per subject in the order of `keys`.
    pub async fn resolve_bulk(
        &self,
        set: Arc<str>,
        flags: Arc<FlagSet>,
        keys: Arc<[String]>,
        contexts: Vec<EvaluationContext>,
    ) -> Result<Vec<Vec<ResolvedFlag>>, NodeError> {
        /// One subject's answer: computed here, or awaited from a shard.
        enum Pending {
            Here(EvaluationContext),
            Shard(u32, OneshotReceiver<Vec<ResolvedFlag>>),
        }
        let deadline = Instant::now() + self.config.call_timeout;
        let per_user_flags = {
            let experiments = self.current.experiments();
            keys.iter()
                .any(|key| !experiments.on_flag(&set, key).is_empty())
        };
        let mut pending = Vec::with_capacity(contexts.len());
        for context in contexts {
            if !(per_user_flags && context.targeting_key().is_some()) {
                pending.push(Pending::Here(context));
                continue;
            }
            let shard = self.shard_for(&context);
            let request = BulkRequest {
                set: set.clone(),
                flags: flags.clone(),
                keys: keys.clone(),
                context,
            };
            let answer = self.send(shard, |reply| ShardMsg::ResolveMany(request, reply))?;
            pending.push(Pending::Shard(shard, answer));
        }
        let mut answers = Vec::with_capacity(pending.len());
        let mut since_yield = 0usize;
        for subject in pending {
            match subject {
                Pending::Here(context) => {
                    self.resolved_here.fetch_add(1, Ordering::Relaxed);
                    let answer: Vec<ResolvedFlag> = keys
                        .iter()
                        .map(|key| resolved::resolve(&flags, key, None, &context))
                        .collect();
                    resolved::count_exceeded(&set, keys.iter().zip(&answer));
                    answers.push(answer);
                    // A large batch evaluated here gives the worker back now and then, as the
                    // shards did by taking one subject per message.
                    since_yield += keys.len();
                    if since_yield >= BULK_EVALUATIONS_PER_YIELD {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Pending::Shard(shard, answer) => {
                    answers.push(self.receive(shard, answer, deadline).await?);
                }
            }
        }
        Ok(answers)
    }

    /// Applies a change and waits until every shard has been sent the new catalog. `Ok(false)`
    /// when the change was not newer than what the node serves.
    pub async fn apply(&self, update: Update) -> Result<bool, NodeError> {
        self.apply_with(update, Precedence::Newer).await
    }

    /// Serves what the flag store (the authority) holds for a set even if it is older than what
    /// the node serves: for a node that got ahead of its store (a shared-tier snapshot the store
    /// never had, or a store restored from a backup). `Ok(false)` if the node already serves
    /// that version.
    pub async fn restore(&self, update: Update) -> Result<bool, NodeError> {
        self.apply_with(update, Precedence::Authority).await
    }

    async fn apply_with(&self, update: Update, precedence: Precedence) -> Result<bool, NodeError> {
        match self
            .supervisor
            .call(
                |reply| SupervisorMsg::Apply(update, precedence, Some(reply)),
                Some(self.config.call_timeout),
            )
            .await
        {
            Ok(CallResult::Success(applied)) => Ok(applied),
            _ => Err(NodeError::SupervisorGone),
        }
    }

    /// Counts a conversion event for `request.user` in its shard (which must be owned here).
    pub async fn track(
        &self,
        request: TrackRequest,
    ) -> Result<Result<Vec<ExperimentId>, TrackRefused>, NodeError> {
        let shard = shard_of(&request.user, self.shard_count());
        self.call(shard, |reply| ShardMsg::Track(request, reply))
            .await
    }

    /// The experiments that count from now on: every request sent after this returns sees them.
    pub async fn install_experiments(
        &self,
        experiments: Arc<RunningExperiments>,
    ) -> Result<(), NodeError> {
        self.tell_supervisor(|reply| SupervisorMsg::Experiments(experiments, Some(reply)))
            .await
    }

    /// Which shards this node owns (index = shard) under the shard map of `epoch`. Shards gaining
    /// ownership claim it at `epoch` (their fencing token for every user-state write) and load
    /// their users' state; shards losing it flush and forget. Requests sent after this returns
    /// are handled after the change.
    pub async fn set_owned(&self, owned: Vec<bool>, epoch: u64) -> Result<(), NodeError> {
        self.tell_supervisor(|reply| SupervisorMsg::Own {
            owned,
            epoch,
            reply: Some(reply),
        })
        .await
    }

    async fn tell_supervisor(
        &self,
        message: impl FnOnce(RpcReplyPort<()>) -> SupervisorMsg,
    ) -> Result<(), NodeError> {
        match self
            .supervisor
            .call(message, Some(self.config.call_timeout))
            .await
        {
            Ok(CallResult::Success(())) => Ok(()),
            _ => Err(NodeError::SupervisorGone),
        }
    }

    /// Has every owned shard write its changed statistics; returns how many experiment flushes
    /// were written, or the first failure.
    pub async fn flush(&self) -> Result<usize, NodeError> {
        let answers = self
            .ask_every_shard(|r| ShardMsg::Flush(Some(r)), "did not answer the flush")
            .await?;
        let mut written = 0;
        for (shard, answer) in answers {
            written += answer.map_err(|reason| NodeError::ShardUnavailable { shard, reason })?;
        }
        Ok(written)
    }

    /// The live statistics of `experiment` summed over the shards this node owns.
    pub async fn experiment_totals(
        &self,
        experiment: &ExperimentId,
    ) -> Result<ExperimentTotals, NodeError> {
        let answers = self
            .ask_every_shard(
                |r| ShardMsg::Totals(experiment.clone(), r),
                "did not report its statistics",
            )
            .await?;
        let mut totals = ExperimentTotals::default();
        for (_, shard_totals) in answers {
            if let Some(t) = shard_totals {
                totals.merge(&t);
            }
        }
        Ok(totals)
    }

    /// Puts the same question in every shard's mailbox, then collects the answers under one
    /// deadline, so the shards work in parallel: asked one after another, 256 shards each busy
    /// with a flush made a results request wait for the sum of their times. Control messages are
    /// not counted in the mailbox-depth gauge (only evaluations are), hence [`Node::post`].
    async fn ask_every_shard<R: Send + 'static>(
        &self,
        message: impl Fn(RpcReplyPort<R>) -> ShardMsg,
        unanswered: &str,
    ) -> Result<Vec<(u32, R)>, NodeError> {
        let deadline = Instant::now() + self.config.call_timeout;
        let mut pending = Vec::with_capacity(self.slots.len());
        for shard in 0..self.shard_count() {
            pending.push((shard, self.post(shard, &message)?));
        }
        let mut answers = Vec::with_capacity(pending.len());
        for (shard, answer) in pending {
            let answer = self
                .receive(shard, answer, deadline)
                .await
                .map_err(|e| match e {
                    NodeError::ShardUnavailable { shard, reason } => NodeError::ShardUnavailable {
                        shard,
                        reason: format!("{unanswered}: {reason}"),
                    },
                    other => other,
                })?;
            answers.push((shard, answer));
        }
        Ok(answers)
    }

    fn shard_count(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    /// Stops the tree (supervisor and shards) and waits for it.
    pub async fn shutdown(&self) {
        // An error here means the supervisor is already gone, which is the goal.
        let _ = self.supervisor.stop_and_wait(None, None).await;
    }

    async fn call<R: Send + 'static>(
        &self,
        shard: u32,
        message: impl FnOnce(RpcReplyPort<R>) -> ShardMsg,
    ) -> Result<R, NodeError> {
        let deadline = Instant::now() + self.config.call_timeout;
        let answer = self.send(shard, message)?;
        self.receive(shard, answer, deadline).await
    }

    /// Puts an evaluation with a reply port in the shard's mailbox, without waiting for the
    /// answer, and counts it in the shard's mailbox depth (the shard uncounts it when handled).
    fn send<R: Send + 'static>(
        &self,
        shard: u32,
        message: impl FnOnce(RpcReplyPort<R>) -> ShardMsg,
    ) -> Result<OneshotReceiver<R>, NodeError> {
        // Counted before the cast: the shard may handle (and uncount) it before `cast` returns.
        let depth = self.slots.depths.get(shard as usize);
        if let Some(depth) = depth {
            depth.fetch_add(1, Ordering::Relaxed);
        }
        let sent = self.post(shard, message);
        if let (Err(_), Some(depth)) = (&sent, depth) {
            depth.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    /// Puts a message with a reply port in the shard's mailbox, without waiting for the answer.
    fn post<R: Send + 'static>(
        &self,
        shard: u32,
        message: impl FnOnce(RpcReplyPort<R>) -> ShardMsg,
    ) -> Result<OneshotReceiver<R>, NodeError> {
        let unavailable = |reason: String| NodeError::ShardUnavailable { shard, reason };
        let actor = self
            .slots
            .get(shard)
            .ok_or_else(|| unavailable("no such shard".to_owned()))?;
        let (reply, answer) = oneshot();
        match actor.cast(message(reply.into())) {
            Ok(()) => Ok(answer),
            Err(MessagingErr::SendErr(_) | MessagingErr::ChannelClosed) => {
                Err(unavailable("the shard is restarting".to_owned()))
            }
            Err(other) => Err(unavailable(other.to_string())),
        }
    }

    /// Waits for the answer to a message [`Node::send`] put in `shard`'s mailbox.
    async fn receive<R>(
        &self,
        shard: u32,
        answer: OneshotReceiver<R>,
        deadline: Instant,
    ) -> Result<R, NodeError> {
        let unavailable = |reason: String| NodeError::ShardUnavailable { shard, reason };
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            // The reply port was dropped unanswered: the shard failed while the message waited.
            Ok(Err(_)) => Err(unavailable(
                "the shard stopped before answering (it is being restarted)".to_owned(),
            )),
            Err(_) => Err(unavailable(format!(
                "no answer within {:?}",
                self.config.call_timeout
            ))),
        }
    }

    #[cfg(test)]
    pub(crate) fn crash_shard(&self, shard: u32) {
        let _ = self.supervisor.cast(SupervisorMsg::CrashShard(shard));
    }
}
