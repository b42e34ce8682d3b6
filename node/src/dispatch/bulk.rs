//! Bulk evaluation: many flags for many subjects against one pinned flag-set version, each
//! subject evaluated on the owner of its shard (so its exposures are recorded there).
//!
//! The subjects are grouped by owner under one shard map: the group owned here goes to the local
//! shards (one mailbox message per subject), each other group to its owner in one peer call, all
//! groups at once. A group whose owner does not answer within the forward timeout, refuses, or no
//! longer serves the pinned version is evaluated here instead, the rule single evaluations follow
//! (serving a flag must not wait on a peer); such a group's exposures are then left uncounted,
//! as for a single evaluation that fell back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::{Dispatch, DispatchError, Routed, Tally, wire_context};
use crate::routing::peer::wire::{self, Answer, PeerError, Request};
use crate::routing::{Route, Stamp};
use bunting_actors::ResolvedFlag;
use bunting_cluster::NodeId;
use bunting_engine::{EvaluationContext, FlagSet, Metadata};
use prost_types::Struct;
use tokio::task::JoinSet;

/// A bulk request as every front end states it.
#[derive(Debug, Clone, Default)]
pub struct BulkQuery {
    /// `None`: the node's default set.
    pub set: Option<String>,
    /// Empty: every flag of the set, in key order. Repeats are evaluated once.
    pub keys: Vec<String>,
    /// One context per subject (`None`: an empty context).
    pub subjects: Vec<Option<Struct>>,
}

/// Every subject's results, in request order, from one version of one set.
#[derive(Debug, Clone)]
pub struct BulkAnswer {
    /// The evaluated keys; each subject's flags come in this order.
    pub keys: Arc<[String]>,
    pub subjects: Vec<SubjectAnswer>,
    pub version: u64,
    pub metadata: Metadata,
}

#[derive(Debug, Clone)]
pub struct SubjectAnswer {
    /// Empty when the context had none.
    pub targeting_key: String,
    pub flags: Vec<ResolvedFlag>,
}

/// One owner's share of a batch: the subjects' positions in the request, and their contexts.
struct Group {
    owner: Option<NodeId>,
    positions: Vec<usize>,
    contexts: Vec<EvaluationContext>,
}

/// What every group of a batch shares.
#[derive(Clone)]
struct Pinned {
    set: Arc<str>,
    flags: Arc<FlagSet>,
    keys: Arc<[String]>,
}

impl Dispatch {
    /// A bulk evaluation, admitted (see [`crate::service::Gate::run`]): one request slot for the
    /// whole batch, held until every group has been answered.
    ///
    /// The stamp carries the map's epoch, and `bunting-owner` when every subject has the same
    /// owner and it is another node: what a single evaluation for any of them would say.
    pub async fn bulk(
        &self,
        service: &'static str,
        query: BulkQuery,
    ) -> Result<Routed<BulkAnswer>, DispatchError> {
        let this = self.clone();
        self.gate
            .run(
                service,
                async move { this.bulk_admitted(service, query).await },
            )
            .await
    }

    async fn bulk_admitted(
        &self,
        service: &'static str,
        query: BulkQuery,
    ) -> Result<Routed<BulkAnswer>, DispatchError> {
        let started = Instant::now();
        if query.subjects.is_empty() {
            return Err(DispatchError::NoSubjects);
        }
        let set: Arc<str> = match query.set.filter(|s| !s.is_empty()) {
            Some(set) => set.into(),
            None => self.node.config().default_set.as_str().into(),
        };
        // The set is pinned once per call: every result of a batch comes from one version.
        let Some(flags) = self.node.catalog().get(&set).cloned() else {
            return Err(DispatchError::UnknownSet(set));
        };
        let keys: Vec<String> = if query.keys.is_empty() {
            flags.entries().iter().map(|e| e.key().to_owned()).collect()
        } else {
            distinct_keys(query.keys)?
        };
        // Checked before any context is decoded: an oversized batch costs nothing but this.
        self.check_size(query.subjects.len(), keys.len())?;
        let contexts = query
            .subjects
            .into_iter()
            .enumerate()
            .map(|(index, context)| {
                self.gate
                    .context(context)
                    .map_err(|source| DispatchError::SubjectContext { index, source })
            })
            .collect::<Result<Vec<EvaluationContext>, DispatchError>>()?;
        let targeting_keys: Vec<String> = contexts
            .iter()
            .map(|c| c.targeting_key().unwrap_or_default().to_owned())
            .collect();
        let subjects = contexts.len();
        let (routes, stamp) = match &self.routing {
            Some(routing) => routing.route_many(&contexts),
            None => (vec![Route::Local; subjects], Stamp::default()),
        };
        let pinned = Pinned {
            set,
            flags: flags.clone(),
            keys: keys.into(),
        };

        let mut answers: Vec<Option<Vec<ResolvedFlag>>> = vec![None; subjects];
        let mut remote = JoinSet::new();
        let mut local = None;
        for group in groups(routes, contexts) {
            match group.owner.clone() {
                Some(owner) => {
                    let this = self.clone();
                    let pinned = pinned.clone();
                    remote.spawn(async move {
                        let answer = this.bulk_on(&owner, &pinned, group.contexts).await;
                        (group.positions, answer)
                    });
                }
                None => local = Some(group),
            }
        }
        if let Some(group) = local {
            let answer = self.bulk_here(&pinned, group.contexts).await?;
            place(&mut answers, group.positions, answer);
        }
        while let Some(done) = remote.join_next().await {
            let (positions, answer) =
                done.map_err(|e| crate::service::Refused::TaskFailed(e.to_string()))?;
            place(&mut answers, positions, answer?);
        }

        let mut tally = Tally::default();
        let subjects = targeting_keys
            .into_iter()
            .zip(answers)
            .map(|(targeting_key, flags)| {
                let flags = flags.unwrap_or_default();
                flags.iter().for_each(|r| tally.count(r));
                SubjectAnswer {
                    targeting_key,
                    flags,
                }
            })
            .collect();
        tally.record(service, started);
        Ok(Routed {
            answer: BulkAnswer {
                keys: pinned.keys,
                subjects,
                version: flags.version(),
                metadata: flags.metadata().clone(),
            },
            stamp,
        })
    }

    fn check_size(&self, subjects: usize, keys: usize) -> Result<(), DispatchError> {
        let evaluations = subjects.saturating_mul(keys);
        if evaluations > self.max_bulk_evaluations {
            return Err(DispatchError::BatchTooLarge {
                subjects,
                keys,
                evaluations,
                limit: self.max_bulk_evaluations,
            });
        }
        Ok(())
    }

    /// One group on this node's shards.
    async fn bulk_here(
        &self,
        pinned: &Pinned,
        contexts: Vec<EvaluationContext>,
    ) -> Result<Vec<Vec<ResolvedFlag>>, DispatchError> {
        // The batch's own pinned set decides, not the catalog: it is what the shards evaluate.
        let loops = pinned.keys.iter().any(|k| pinned.flags.iterates(Some(k)));
        let _turn = if loops {
            self.gate.looping_turn().await
        } else {
            None
        };
        self.node
            .resolve_bulk(
                pinned.set.clone(),
                pinned.flags.clone(),
                pinned.keys.clone(),
                contexts,
            )
            .await
            .map_err(DispatchError::from)
    }

    /// One group on its owner, or here if the owner does not give a whole answer in time.
    async fn bulk_on(
        &self,
        owner: &NodeId,
        pinned: &Pinned,
        contexts: Vec<EvaluationContext>,
    ) -> Result<Vec<Vec<ResolvedFlag>>, DispatchError> {
        let wired: Option<Vec<Struct>> = contexts.iter().map(wire_context).collect();
        if let (Some(routing), Some(wired)) = (&self.routing, wired) {
            let request = Request::Bulk(wire::Bulk {
                set: pinned.set.clone(),
                version: pinned.flags.version(),
                keys: pinned.keys.to_vec(),
                contexts: wired,
            });
            let (subjects, keys) = (contexts.len(), pinned.keys.len());
            let forwarded = routing
                .forward(owner, request, |answer| match answer {
                    Answer::Bulk(wire::BulkAnswer::Subjects(answers))
                        if answers.len() == subjects
                            && answers.iter().all(|flags| flags.len() == keys) =>
                    {
                        Ok(answers)
                    }
                    Answer::Bulk(wire::BulkAnswer::Subjects(_)) => Err(PeerError::Malformed {
                        field: "bulk.subjects",
                        problem: format!("not {subjects} subjects of {keys} flags each"),
                    }),
                    Answer::Bulk(wire::BulkAnswer::VersionMismatch { serving }) => {
                        Err(PeerError::Refused(format!(
                            "serves version {serving:?} of the set, not the batch's {}",
                            pinned.flags.version()
                        )))
                    }
                    other => Err(other.unexpected("bulk")),
                })
                .await;
            if let Ok(answers) = forwarded {
                return Ok(answers);
            }
        }
        self.bulk_here(pinned, contexts).await
    }

    /// The owner's side of a forwarded bulk group, admitted: evaluated here against the pinned
    /// version if this node serves it, else answered as a mismatch (the asker evaluates locally).
    pub async fn bulk_forwarded(
        &self,
        service: &'static str,
        request: wire::Bulk,
    ) -> Result<wire::BulkAnswer, DispatchError> {
        let this = self.clone();
        self.gate
            .run(service, async move {
                let flags = this.node.catalog().get(&request.set).cloned();
                let flags = match flags {
                    Some(flags) if flags.version() == request.version => flags,
                    other => {
                        return Ok(wire::BulkAnswer::VersionMismatch {
                            serving: other.map(|f| f.version()),
                        });
                    }
                };
                // A peer's batch is bounded like a client's: the asker checked it, but the
                // bytes are a peer's.
                this.check_size(request.contexts.len(), request.keys.len())?;
                let contexts = request
                    .contexts
                    .into_iter()
                    .enumerate()
                    .map(|(index, c)| {
                        this.gate
                            .context(Some(c))
                            .map_err(|source| DispatchError::SubjectContext { index, source })
                    })
                    .collect::<Result<Vec<_>, DispatchError>>()?;
                let pinned = Pinned {
                    set: request.set,
                    flags,
                    keys: request.keys.into(),
                };
                this.bulk_here(&pinned, contexts)
                    .await
                    .map(wire::BulkAnswer::Subjects)
            })
            .await
    }
}

/// The batch split by route, each group's subjects in request order.
fn groups(routes: Vec<Route>, contexts: Vec<EvaluationContext>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (position, (route, context)) in routes.into_iter().zip(contexts).enumerate() {
        let owner = match route {
            Route::Local => None,
            Route::Remote(owner) => Some(owner),
        };
        match groups.iter_mut().find(|g| g.owner == owner) {
            Some(group) => {
                group.positions.push(position);
                group.contexts.push(context);
            }
            None => groups.push(Group {
                owner,
                positions: vec![position],
                contexts: vec![context],
            }),
        }
    }
    groups
}

fn place(
    answers: &mut [Option<Vec<ResolvedFlag>>],
    positions: Vec<usize>,
    group: Vec<Vec<ResolvedFlag>>,
) {
    for (position, flags) in positions.into_iter().zip(group) {
        if let Some(slot) = answers.get_mut(position) {
            *slot = Some(flags);
        }
    }
}

/// The requested keys without repeats, each at its first position; an empty key is a malformed
/// request.
fn distinct_keys(requested: Vec<String>) -> Result<Vec<String>, DispatchError> {
    let mut seen = HashSet::with_capacity(requested.len());
    let mut keys = Vec::with_capacity(requested.len());
    for (i, key) in requested.into_iter().enumerate() {
        if key.is_empty() {
            return Err(DispatchError::EmptyKey(i));
        }
        if seen.insert(key.clone()) {
            keys.push(key);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Gate, Limits};
    use bunting_actors::{Catalog, Node, NodeConfig, Update};
    use bunting_engine::{CompileOptions, compile};
    use serde_json::json;

    async fn dispatch(version: u64) -> Dispatch {
        let doc = json!({"flags": {
            "colour": {"state": "ENABLED", "variants": {"c": "green"}, "defaultVariant": "c"}
        }});
        let flags = compile(&doc.to_string(), &CompileOptions::default())
            .unwrap()
            .flag_set
            .with_version(version);
        let catalog = Catalog::new()
            .apply(&Update::Put {
                set: "default".into(),
                flags: Arc::new(flags),
                committed_at: std::time::SystemTime::now(),
            })
            .unwrap();
        let config = NodeConfig {
            shards: 4,
            ..NodeConfig::default()
        };
        let node = Arc::new(Node::start(config, catalog).await.unwrap());
        let gate = Gate::new(Limits {
            max_concurrent_requests: 8,
            max_streams: 1,
            max_context_bytes: 1024,
            max_looping_evaluations: 1,
        });
        Dispatch::new(node, gate, 100)
    }

    fn context(user: &str) -> Struct {
        bunting_proto::json::json_to_struct(json!({"targetingKey": user}).as_object().unwrap())
            .unwrap()
    }

    /// The owner evaluates a forwarded group only against the version the asker pinned.
    #[tokio::test]
    async fn a_forwarded_group_is_evaluated_only_at_the_pinned_version() {
        let owner = dispatch(3).await;
        let group = |version| wire::Bulk {
            set: "default".into(),
            version,
            keys: vec!["colour".into(), "nope".into()],
            contexts: vec![context("a"), context("b")],
        };
        let answer = owner.bulk_forwarded("test", group(3)).await.unwrap();
        let wire::BulkAnswer::Subjects(subjects) = answer else {
            panic!("not evaluated: {answer:?}");
        };
        assert_eq!(subjects.len(), 2);
        assert_eq!(subjects[0][0].value, Some(json!("green")));
        assert!(subjects[1][1].error.is_some(), "unknown key answered");
        assert!(matches!(
            owner.bulk_forwarded("test", group(2)).await.unwrap(),
            wire::BulkAnswer::VersionMismatch { serving: Some(3) }
        ));
        let mut elsewhere = group(3);
        elsewhere.set = "other".into();
        assert!(matches!(
            owner.bulk_forwarded("test", elsewhere).await.unwrap(),
            wire::BulkAnswer::VersionMismatch { serving: None }
        ));
        let mut huge = group(3);
        huge.contexts = vec![context("c"); 51];
        let refused = owner.bulk_forwarded("test", huge).await.unwrap_err();
        assert!(
            matches!(
                refused,
                DispatchError::BatchTooLarge {
                    subjects: 51,
                    keys: 2,
                    ..
                }
            ),
            "{refused}"
        );
        owner.node().shutdown().await;
    }

    /// Without routing, a batch is answered here in request order, one version, with the set's
    /// metadata and no routing stamp.
    #[tokio::test]
    async fn a_local_batch_answers_in_request_order() {
        let here = dispatch(5).await;
        let query = BulkQuery {
            set: None,
            keys: vec![],
            subjects: vec![Some(context("x")), None, Some(context("y"))],
        };
        let routed = here.bulk("test", query).await.unwrap();
        assert_eq!(routed.stamp, Stamp::default());
        let keys: Vec<&str> = routed
            .answer
            .subjects
            .iter()
            .map(|s| s.targeting_key.as_str())
            .collect();
        assert_eq!(keys, ["x", "", "y"]);
        assert_eq!(routed.answer.version, 5);
        assert_eq!(&*routed.answer.keys, ["colour".to_owned()]);
        assert!(routed.answer.subjects.iter().all(|s| s.flags.len() == 1));
        here.node().shutdown().await;
    }

    #[test]
    fn repeated_keys_are_kept_once_at_their_first_position() {
        let keys = distinct_keys(vec!["b".into(), "a".into(), "b".into(), "c".into()]).unwrap();
        assert_eq!(keys, ["b", "a", "c"]);
        let empty = distinct_keys(vec!["a".into(), String::new()]).unwrap_err();
        assert!(matches!(empty, DispatchError::EmptyKey(1)), "{empty}");
    }

    #[test]
    fn subjects_are_grouped_by_owner_in_request_order() {
        let a = NodeId::new("a").unwrap();
        let b = NodeId::new("b").unwrap();
        let routes = vec![
            Route::Remote(a.clone()),
            Route::Local,
            Route::Remote(b.clone()),
            Route::Remote(a.clone()),
        ];
        let contexts = (0..4)
            .map(|i| EvaluationContext::new().with_targeting_key(format!("u{i}")))
            .collect();
        let groups = groups(routes, contexts);
        let shape: Vec<(Option<NodeId>, Vec<usize>)> =
            groups.into_iter().map(|g| (g.owner, g.positions)).collect();
        assert_eq!(
            shape,
            vec![(Some(a), vec![0, 3]), (None, vec![1]), (Some(b), vec![2])]
        );
    }
}
