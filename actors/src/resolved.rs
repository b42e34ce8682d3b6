//! Resolutions that outlive the flag set they came from, to cross the mailbox back to the caller.

use bunting_engine::{FlagSet, FlagType, Metadata, Reason, Resolution, ResolveError};
use serde_json::Value;

/// What one flag resolved to, owned. The engine's `Resolution` borrows from the `FlagSet`; the
/// reply leaves the shard actor, so it carries copies.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedFlag {
    pub value: Option<Value>,
    pub variant: Option<String>,
    pub reason: Reason,
    pub error: Option<ResolveError>,
    pub metadata: Metadata,
    /// The version of the flag set that answered.
    pub flag_set_version: u64,
}

/// Every flag of one set for one subject, with the set's metadata and version as the shard that
/// resolved them held it: a caller reading the metadata from its own catalog could pair one
/// version's flags with another version's metadata while a change spreads.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedSet {
    /// In key order.
    pub flags: Vec<(String, ResolvedFlag)>,
    pub metadata: Metadata,
    pub version: u64,
}

/// One flag's answer, borrowed: from the engine as it resolves (the fast path, where nothing is
/// copied) or from a [`ResolvedFlag`].
#[derive(Debug, Clone, Copy)]
pub struct FlagView<'a> {
    pub value: Option<&'a Value>,
    pub variant: Option<&'a str>,
    pub reason: Reason,
    pub error: Option<&'a ResolveError>,
    pub metadata: &'a Metadata,
}

/// What a visited resolve-all tells besides its flags: the set's version and metadata as the
/// evaluation that answered held them (see [`ResolvedSet`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SetHeader {
    pub metadata: Metadata,
    pub version: u64,
}

impl ResolvedFlag {
    pub fn view(&self) -> FlagView<'_> {
        FlagView {
            value: self.value.as_ref(),
            variant: self.variant.as_deref(),
            reason: self.reason,
            error: self.error.as_ref(),
            metadata: &self.metadata,
        }
    }

    pub(crate) fn from_resolution<V: Into<Value>>(
        resolution: Resolution<'_, V>,
        flag_set_version: u64,
    ) -> ResolvedFlag {
        ResolvedFlag {
            value: resolution.value.map(Into::into),
            variant: resolution.variant.map(str::to_owned),
            reason: resolution.reason,
            error: resolution.error,
            metadata: resolution.metadata.clone(),
            flag_set_version,
        }
    }

    pub(crate) fn failed(error: ResolveError) -> ResolvedFlag {
        ResolvedFlag {
            value: None,
            variant: None,
            reason: Reason::Error,
            error: Some(error),
            metadata: Metadata::new(),
            flag_set_version: 0,
        }
    }
}

/// Resolves `key` as `wanted` (or untyped) and copies the answer out of the set.
pub(crate) fn resolve(
    set: &FlagSet,
    key: &str,
    wanted: Option<FlagType>,
    ctx: &bunting_engine::EvaluationContext,
) -> ResolvedFlag {
    let v = set.version();
    match wanted {
        None => ResolvedFlag::from_resolution(set.resolve(key, ctx).map_value(Value::clone), v),
        Some(FlagType::Boolean) => ResolvedFlag::from_resolution(set.resolve_bool(key, ctx), v),
        Some(FlagType::String) => ResolvedFlag::from_resolution(set.resolve_string(key, ctx), v),
        Some(FlagType::Integer) => ResolvedFlag::from_resolution(set.resolve_int(key, ctx), v),
        Some(FlagType::Float) => ResolvedFlag::from_resolution(set.resolve_float(key, ctx), v),
        Some(FlagType::Object) => ResolvedFlag::from_resolution(
            set.resolve_object(key, ctx)
                .map_value(|o| Value::Object(o.clone())),
            v,
        ),
    }
}

/// Every flag of `set` for one subject, in key order, with the set's metadata and version.
pub(crate) fn resolve_all(set: &FlagSet, ctx: &bunting_engine::EvaluationContext) -> ResolvedSet {
    let version = set.version();
    ResolvedSet {
        flags: set
            .resolve_all(ctx)
            .map(|(key, r)| {
                (
                    key.to_owned(),
                    ResolvedFlag::from_resolution(r.map_value(Clone::clone), version),
                )
            })
            .collect(),
        metadata: set.metadata().clone(),
        version,
    }
}

/// Every flag of `set` for one subject, in key order, each handed to `visit` as the engine
/// resolves it: [`resolve_all`] without the copies, for a caller that only writes the answers out.
/// Answers that ran out of budget are counted as in [`count_exceeded`].
pub(crate) fn visit_all(
    name: &str,
    set: &FlagSet,
    ctx: &bunting_engine::EvaluationContext,
    mut visit: impl FnMut(&str, FlagView<'_>),
) -> SetHeader {
    for (key, r) in set.resolve_all(ctx) {
        if let Some(error) = &r.error {
            count_one_exceeded(name, key, error);
        }
        visit(
            key,
            FlagView {
                value: r.value,
                variant: r.variant,
                reason: r.reason,
                error: r.error.as_ref(),
                metadata: r.metadata,
            },
        );
    }
    SetHeader {
        metadata: set.metadata().clone(),
        version: set.version(),
    }
}

/// Counts the evaluations that ran out of the engine's budget, per flag set, flag and budget
/// (`bunting_evaluation_budget_exceeded_total`): the answer is already flagd's GENERAL error,
/// and the metric tells the operator which rule to fix. Keys are bounded by the set's limits.
/// Called wherever an evaluation ran: a shard, or the request's task on the fast path.
pub(crate) fn count_exceeded<'a>(
    set: &str,
    resolved: impl IntoIterator<Item = (&'a String, &'a ResolvedFlag)>,
) {
    for (key, answer) in resolved {
        if let Some(error) = &answer.error {
            count_one_exceeded(set, key, error);
        }
    }
}

fn count_one_exceeded(set: &str, key: &str, error: &ResolveError) {
    if let Some(kind) = error.exceeded {
        let budget = match kind {
            bunting_engine::BudgetKind::Steps => "steps",
            bunting_engine::BudgetKind::BuiltBytes => "built_bytes",
        };
        metrics::counter!(
            "bunting_evaluation_budget_exceeded_total",
            "flag_set" => set.to_owned(),
            "flag" => key.to_owned(),
            "budget" => budget,
        )
        .increment(1);
    }
}
