//! Where an evaluation runs in a cluster: on this node when it owns the subject's shard,
//! otherwise on the owner, reached over the cluster (ractor_cluster) with the bytes of
//! [`peer`]. Stock flagd clients know nothing of shards, so every node accepts every request and
//! forwards it; shard-aware clients (crate `bunting-client`) send it to the owner directly and
//! learn from the `bunting-epoch` / `bunting-owner` response metadata when their map is stale.
//!
//! Evaluation itself needs only the flag set, which every node holds, so a forward that fails
//! (the owner died, is slow, or refuses) is not an error for the caller: this node evaluates
//! locally and counts the fallback. What must happen on the owner (per-user state, exposures)
//! is the owner's to do; forwarding is how it gets that work.

pub mod peer;

use std::sync::Arc;
use std::time::Duration;

use bunting_cluster::{Cluster, NodeId, ShardMap};
use bunting_engine::EvaluationContext;
use tokio::sync::watch;
use tonic::metadata::{MetadataMap, MetadataValue};

use peer::wire::{Answer, PeerError, Request, Track, Tracked, decode_answer, encode_request};

/// Response metadata naming the serving node's shard map epoch.
pub const EPOCH_HEADER: &str = "bunting-epoch";
/// Response metadata naming the owner of the key's shard, present only when this node is not it.
pub const OWNER_HEADER: &str = "bunting-owner";

/// A clustered node's routing: its membership handle and the shard map it currently follows.
#[derive(Debug, Clone)]
pub struct Routing {
    cluster: Cluster,
    map: watch::Receiver<Arc<ShardMap>>,
    shards: u32,
    forward_timeout: Duration,
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    Remote(NodeId),
}

/// What the answer tells the client about routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    epoch: Option<u64>,
    owner: Option<String>,
}

impl Stamp {
    /// Adds `bunting-epoch` (and `bunting-owner` when this node is not the owner).
    pub fn apply(&self, metadata: &mut MetadataMap) {
        if let Some(epoch) = self.epoch {
            metadata.insert(EPOCH_HEADER, MetadataValue::from(epoch));
        }
        // Node ids are validated ASCII ([A-Za-z0-9._-]), so this parse cannot fail in practice;
        // a header we cannot build is left out rather than failing the answer.
        if let Some(owner) = self.owner.as_deref().and_then(|o| o.parse().ok()) {
            metadata.insert(OWNER_HEADER, owner);
        }
    }

    /// The same two headers on an HTTP answer (the HTTP edge's OFREP).
    pub fn apply_headers(&self, headers: &mut http::HeaderMap) {
        if let Some(epoch) = self.epoch {
            headers.insert(EPOCH_HEADER, http::HeaderValue::from(epoch));
        }
        if let Some(owner) = self
            .owner
            .as_deref()
            .and_then(|o| http::HeaderValue::from_str(o).ok())
        {
            headers.insert(OWNER_HEADER, owner);
        }
    }
}

impl Routing {
    pub fn new(cluster: Cluster, shards: u32, forward_timeout: Duration) -> Routing {
        let map = cluster.shard_map();
        Routing {
            cluster,
            map,
            shards,
            forward_timeout,
        }
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The owner of the context's shard under the current map. No targeting key means no
    /// per-user work, so any node may answer: this one.
    pub fn route(&self, context: &EvaluationContext) -> (Route, Stamp) {
        let map = self.map.borrow();
        let mut stamp = Stamp {
            epoch: Some(map.epoch()),
            owner: None,
        };
        let Some(key) = context.targeting_key() else {
            return (Route::Local, stamp);
        };
        let shard = bunting_keyspace::shard_of(key, self.shards);
        match map.owner(shard) {
            Some(owner) if &owner.id != self.cluster.local_id() => {
                stamp.owner = Some(owner.id.to_string());
                (Route::Remote(owner.id.clone()), stamp)
            }
            _ => (Route::Local, stamp),
        }
    }

    /// Routes a batch under one map: each context's route, and the stamp the batch's answer
    /// carries (the epoch, and the owner only when every subject has the same remote owner, as
    /// a single evaluation for any one of them would say).
    pub fn route_many(&self, contexts: &[EvaluationContext]) -> (Vec<Route>, Stamp) {
        let map = self.map.borrow();
        let routes: Vec<Route> = contexts
            .iter()
            .map(|context| {
                let Some(key) = context.targeting_key() else {
                    return Route::Local;
                };
                match map.owner(bunting_keyspace::shard_of(key, self.shards)) {
                    Some(owner) if &owner.id != self.cluster.local_id() => {
                        Route::Remote(owner.id.clone())
                    }
                    _ => Route::Local,
                }
            })
            .collect();
        let owner = match routes.split_first() {
            Some((Route::Remote(first), rest))
                if rest.iter().all(|r| r == &Route::Remote(first.clone())) =>
            {
                Some(first.to_string())
            }
            _ => None,
        };
        let stamp = Stamp {
            epoch: Some(map.epoch()),
            owner,
        };
        (routes, stamp)
    }

    /// The node owning `user`'s shard under the current map, when it is not this one.
    pub fn remote_owner(&self, user: &str) -> Option<NodeId> {
        let map = self.map.borrow();
        let shard = bunting_keyspace::shard_of(user, self.shards);
        map.owner(shard)
            .filter(|owner| &owner.id != self.cluster.local_id())
            .map(|owner| owner.id.clone())
    }

    /// Sends one request to `peer` and reads its answer; a refusal is an error.
    async fn ask(
        &self,
        peer: &NodeId,
        request: Request,
        timeout: Duration,
    ) -> Result<Answer, ForwardFailed> {
        let bytes = self
            .cluster
            .call(peer, encode_request(request), timeout)
            .await
            .map_err(|e| ForwardFailed::Call(e.to_string()))?;
        match decode_answer(&bytes) {
            Ok(Answer::Refused(why)) => Err(ForwardFailed::Peer(PeerError::Refused(why))),
            Ok(answer) => Ok(answer),
            Err(e) => {
                if let PeerError::Version { .. } = e {
                    // Loud: until both sides are upgraded, nothing is forwarded between them.
                    tracing::warn!(%peer, error = %e, "incompatible peer");
                }
                Err(ForwardFailed::Peer(e))
            }
        }
    }

    /// Hands a tracked event to the owner of the user's shard.
    pub async fn track(&self, owner: &NodeId, track: Track) -> Result<Tracked, ForwardFailed> {
        let answer = self
            .ask(owner, Request::Track(track), self.forward_timeout)
            .await?;
        metrics::counter!("bunting_forwards_total", "outcome" => "track").increment(1);
        match answer {
            Answer::Tracked(tracked) => Ok(tracked),
            other => Err(ForwardFailed::Peer(other.unexpected("track"))),
        }
    }

    /// Every other member's live statistics of `experiment`, merged. A member that does not
    /// answer fails the whole gathering: partial results would be wrong without saying so.
    pub async fn peer_totals(
        &self,
        experiment: &bunting_experiments::ExperimentId,
    ) -> Result<bunting_experiments::ExperimentTotals, (NodeId, ForwardFailed)> {
        let members: Vec<NodeId> = self
            .map
            .borrow()
            .members()
            .iter()
            .map(|m| m.id.clone())
            .filter(|id| id != self.cluster.local_id())
            .collect();
        let mut totals = bunting_experiments::ExperimentTotals::default();
        for member in members {
            let answer = self
                .ask(
                    &member,
                    Request::Totals(experiment.clone()),
                    self.forward_timeout * 4,
                )
                .await
                .map_err(|e| (member.clone(), e))?;
            match answer {
                Answer::Totals(theirs) => totals.merge(&theirs),
                other => {
                    return Err((member, ForwardFailed::Peer(other.unexpected("totals"))));
                }
            }
        }
        Ok(totals)
    }

    /// Asks `owner` to evaluate (`request` is a resolve or a bulk); `accept` takes the answer
    /// apart, refusing one that is not what was asked. `Err` means the caller should evaluate
    /// locally; either way the outcome is counted in `bunting_forwards_total` (an answer `accept`
    /// refuses, such as a bulk's version mismatch, counts as a fallback).
    pub async fn forward<T>(
        &self,
        owner: &NodeId,
        request: Request,
        accept: impl FnOnce(Answer) -> Result<T, PeerError>,
    ) -> Result<T, ForwardFailed> {
        let outcome = match self.ask(owner, request, self.forward_timeout).await {
            Ok(answer) => accept(answer).map_err(ForwardFailed::Peer),
            Err(e) => Err(e),
        };
        let label = if outcome.is_ok() {
            "forwarded"
        } else {
            "fallback"
        };
        metrics::counter!("bunting_forwards_total", "outcome" => label).increment(1);
        if let Err(e) = &outcome {
            tracing::debug!(%owner, error = %e, "forward failed; evaluating locally");
        }
        outcome
    }
}

/// Keeps the node's shard ownership equal to what the shard map gives this node, until the map's
/// sender is gone (the cluster shut down). Shards gained load their users' state; shards lost
/// flush and forget theirs.
///
/// A member without seeds starts with a map of just itself (epoch 0; one with seeds starts with
/// a map of no one, which owns nothing). Acting on it at once would make a member
/// that restarts into a running cluster own every shard until it hears the cluster's map, so an
/// epoch-0 map is acted on only after `alone_after` (the failure detection bound) has passed
/// without a newer one: by then a member with live peers has heard from them, and one without any
/// really is alone and owns everything.
pub async fn follow_ownership(
    routing: Routing,
    node: Arc<bunting_actors::Node>,
    alone_after: Duration,
) {
    let mut map = routing.cluster.shard_map();
    let alone_from = tokio::time::Instant::now() + alone_after;
    loop {
        let (epoch, owned) = {
            let current = map.borrow_and_update();
            let owned: Vec<bool> = (0..routing.shards)
                .map(|shard| {
                    current
                        .owner(shard)
                        .is_some_and(|owner| &owner.id == routing.cluster.local_id())
                })
                .collect();
            (current.epoch(), owned)
        };
        if epoch == 0 && tokio::time::Instant::now() < alone_from {
            tokio::select! {
                changed = map.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(alone_from) => {}
            }
            continue;
        }
        if let Err(e) = node.set_owned(owned, epoch).await {
            tracing::warn!(error = %e, "could not hand the shard map to the actor tree");
        }
        if map.changed().await.is_err() {
            break;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardFailed {
    #[error("cluster call: {0}")]
    Call(String),
    #[error(transparent)]
    Peer(PeerError),
}
