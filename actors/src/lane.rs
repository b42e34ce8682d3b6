//! Where one evaluation runs: on the request's own task (the fast path) or in the mailbox of the
//! shard actor that owns the subject.
//!
//! A shard actor is needed only for per-user state: a first exposure to a running experiment is
//! recorded by the shard that owns the user, in mailbox order with that user's other requests.
//! An evaluation that can record none (no running experiment on the flag, or on any flag of the
//! set for a resolve-all, or no targeting key to record it for) is a pure function of the catalog
//! and the context, so [`crate::Node::lane`] answers it [`Lane::Here`]: evaluated against the
//! node's current catalog snapshot without a hop. Everything else is [`Lane::Shard`], as before.
//!
//! A [`Here`] can only be made by the node after that check, so code holding one cannot evaluate
//! a flag with per-user state on the wrong side of the mailbox.

use std::sync::Arc;

use bunting_engine::{EvaluationContext, FlagSet, ResolveError};

use crate::catalog::Catalog;

/// Every flag of a set for one subject.
#[derive(Debug, Clone)]
pub struct ResolveAllRequest {
    /// The flag set; `None` is the node's default set.
    pub set: Option<Arc<str>>,
    pub context: EvaluationContext,
}

/// Where a request runs.
#[derive(Debug)]
pub enum Lane<Q> {
    /// No per-user state: evaluate on the caller's task ([`crate::Node::resolve_here`],
    /// [`crate::Node::resolve_all_here`]).
    Here(Here<Q>),
    /// Per-user state: the owning shard's mailbox ([`crate::Node::resolve`],
    /// [`crate::Node::resolve_all`]).
    Shard(Q),
}

/// A request the node found carries no per-user state, with the catalog snapshot it was sorted
/// against (and is answered from: one version decides both).
#[derive(Debug)]
pub struct Here<Q> {
    pub(crate) catalog: Arc<Catalog>,
    /// The set's name, the default filled in (the budget metric's label).
    pub(crate) set: Arc<str>,
    pub(crate) query: Q,
}

impl<Q> Here<Q> {
    /// The set this request is evaluated against, or the FLAG_NOT_FOUND answer.
    pub(crate) fn flags(&self) -> Result<&Arc<FlagSet>, ResolveError> {
        self.catalog.set_or_not_found(&self.set)
    }

    /// Whether evaluating it may run a looping rule (the caller takes a turn in its looping
    /// lane first). `key` `None`: any flag of the set.
    pub(crate) fn loops_on(&self, key: Option<&str>) -> bool {
        self.flags().is_ok_and(|flags| flags.iterates(key))
    }
}

impl Here<crate::messages::ResolveRequest> {
    /// Whether the flag's rules loop (see the admission gate's looping lane).
    pub fn loops(&self) -> bool {
        self.loops_on(Some(&self.query.key))
    }
}

impl Here<ResolveAllRequest> {
    /// Whether any flag of the set has rules that loop.
    pub fn loops(&self) -> bool {
        self.loops_on(None)
    }
}
