//! An immutable, versioned snapshot of compiled flags, and flag resolution against it.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::context::EvaluationContext;
use crate::flag::{Entry, Flag, FlagState, Metadata, Variant};
use crate::resolution::{ErrorCode, Reason, Resolution, ResolveError};
use crate::targeting::{Budget, Meter, Scope};

/// Flag keys are chosen by the flag set's authors, not by requests, so a fast unkeyed hash is safe
/// here: a request can only look keys up, never insert them.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A compiled flag set. Never mutated: an update compiles a new `FlagSet` (callers share it as an
/// `Arc` and swap the `Arc`), so a reader always sees one whole version.
#[derive(Debug, Clone)]
pub struct FlagSet {
    /// Sorted by key, so resolve-all walks memory in order and answers in a stable order.
    entries: Box<[Entry]>,
    index: FastMap<Box<str>, usize>,
    metadata: Metadata,
    version: u64,
    /// The definition in flagd's provider form (flags as a map), for the sync protocol.
    document: Value,
    /// What one evaluation of one of these flags may cost (from `CompileOptions`).
    budget: Budget,
    /// Some flag's targeting loops (see [`Flag::iterates`]): resolving all of them may cost up to
    /// a budget per such flag.
    iterates: bool,
    /// Some flag's targeting reads the clock (see [`Flag::reads_clock`]).
    reads_clock: bool,
    /// A digest of `document` (see [`FlagSet::fingerprint`]).
    fingerprint: u64,
}

/// The type a caller asks for; resolving a flag as another type is `TYPE_MISMATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagType {
    Boolean,
    String,
    Integer,
    Float,
    Object,
}

impl FlagSet {
    pub(crate) fn new(
        mut entries: Vec<Entry>,
        metadata: Metadata,
        document: Value,
        budget: Budget,
    ) -> FlagSet {
        entries.sort_by(|a, b| a.key().cmp(b.key()));
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (Box::from(e.key()), i))
            .collect();
        let iterates = entries
            .iter()
            .any(|e| matches!(e, Entry::Ready(flag) if flag.iterates()));
        let reads_clock = entries
            .iter()
            .any(|e| matches!(e, Entry::Ready(flag) if flag.reads_clock()));
        let fingerprint = fingerprint(&document);
        FlagSet {
            iterates,
            reads_clock,
            fingerprint,
            entries: entries.into(),
            index,
            metadata,
            version: 0,
            document,
            budget,
        }
    }

    /// The same flags, stamped with the version their source assigned.
    pub fn with_version(mut self, version: u64) -> FlagSet {
        self.version = version;
        self
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// What one evaluation of one of these flags may cost.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Whether evaluating `key` may loop: true for a flag whose targeting has a loop, and, with
    /// `None` (every flag, as resolve-all does), for a set that has any such flag. A node gives
    /// these evaluations a lane of their own so they cannot crowd out the cheap ones.
    pub fn iterates(&self, key: Option<&str>) -> bool {
        match key {
            None => self.iterates,
            Some(key) => matches!(self.get(key), Some(Entry::Ready(flag)) if flag.iterates()),
        }
    }

    /// Whether some flag's answer may change with time alone (see [`Flag::reads_clock`]): the
    /// set's answers for a context are then not fixed by its version.
    pub fn reads_clock(&self) -> bool {
        self.reads_clock
    }

    /// A 64-bit digest of the definition, the same in every process of one build: two sets with
    /// one fingerprint have the same flags, whatever versions their sources gave them (a file
    /// node counts versions from 1 at every start, and a restore from PostgreSQL may go back to
    /// a lower version). Caches that key answers by version key them by this too.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.index.get(key).and_then(|&i| self.entries.get(i))
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The definition as flagd's provider schema writes it: what in-process providers expect.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Resolves `key` without asking for a type: the value is whatever the variant holds.
    pub fn resolve<'s>(&'s self, key: &str, ctx: &EvaluationContext) -> Resolution<'s, &'s Value> {
        match self.get(key) {
            Some(entry) => resolve_entry(entry, ctx, self.budget),
            None => Resolution::failed(
                ResolveError::new(
                    ErrorCode::FlagNotFound,
                    format!("flag {} not found", crate::limits::quoted(key)),
                ),
                &self.metadata,
            ),
        }
    }

    pub fn resolve_bool<'s>(&'s self, key: &str, ctx: &EvaluationContext) -> Resolution<'s, bool> {
        self.resolve_typed(key, ctx, FlagType::Boolean, Value::as_bool)
    }

    pub fn resolve_string<'s>(
        &'s self,
        key: &str,
        ctx: &EvaluationContext,
    ) -> Resolution<'s, &'s str> {
        self.resolve_typed(key, ctx, FlagType::String, Value::as_str)
    }

    /// Integer resolution accepts whole numbers only: `2.5` is `TYPE_MISMATCH`, never truncated.
    pub fn resolve_int<'s>(&'s self, key: &str, ctx: &EvaluationContext) -> Resolution<'s, i64> {
        self.resolve_typed(key, ctx, FlagType::Integer, as_whole_number)
    }

    pub fn resolve_float<'s>(&'s self, key: &str, ctx: &EvaluationContext) -> Resolution<'s, f64> {
        self.resolve_typed(key, ctx, FlagType::Float, Value::as_f64)
    }

    pub fn resolve_object<'s>(
        &'s self,
        key: &str,
        ctx: &EvaluationContext,
    ) -> Resolution<'s, &'s Map<String, Value>> {
        self.resolve_typed(key, ctx, FlagType::Object, Value::as_object)
    }

    /// Every flag in key order, resolved for one context. Lazy: nothing is collected.
    pub fn resolve_all<'s>(
        &'s self,
        ctx: &'s EvaluationContext,
    ) -> impl Iterator<Item = (&'s str, Resolution<'s, &'s Value>)> + 's {
        self.entries
            .iter()
            .map(move |entry| (entry.key(), resolve_entry(entry, ctx, self.budget)))
    }

    fn resolve_typed<'s, T>(
        &'s self,
        key: &str,
        ctx: &EvaluationContext,
        wanted: FlagType,
        extract: impl FnOnce(&'s Value) -> Option<T>,
    ) -> Resolution<'s, T> {
        let Resolution {
            value,
            variant,
            reason,
            error,
            metadata,
        } = self.resolve(key, ctx);
        let value = match value.map(|v| (v, extract(v))) {
            None => None,
            Some((_, Some(typed))) => Some(typed),
            Some((raw, None)) => {
                return Resolution::failed(
                    ResolveError::new(
                        ErrorCode::TypeMismatch,
                        format!(
                            "flag {key:?} resolved to {raw}, which is not {}",
                            wanted.article_name()
                        ),
                    ),
                    metadata,
                );
            }
        };
        Resolution {
            value,
            variant,
            reason,
            error,
            metadata,
        }
    }
}

impl FlagType {
    fn article_name(self) -> &'static str {
        match self {
            FlagType::Boolean => "a boolean",
            FlagType::String => "a string",
            FlagType::Integer => "an integer",
            FlagType::Float => "a number",
            FlagType::Object => "an object",
        }
    }
}

fn as_whole_number(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        let f = v.as_f64()?;
        // Whole and inside i64's range: the conversion is exact.
        #[allow(clippy::cast_possible_truncation)]
        (f.fract() == 0.0 && (-9.223_372_036_854_775e18..=9.223_372_036_854_775e18).contains(&f))
            .then_some(f as i64)
    })
}

fn resolve_entry<'s>(
    entry: &'s Entry,
    ctx: &EvaluationContext,
    budget: Budget,
) -> Resolution<'s, &'s Value> {
    match entry {
        Entry::Broken(broken) => Resolution::failed(
            ResolveError::new(
                ErrorCode::ParseError,
                format!(
                    "flag {:?} is invalid: {}",
                    crate::limits::shown(&broken.key),
                    broken.problem
                ),
            ),
            &broken.metadata,
        ),
        Entry::Ready(flag) => resolve_flag(flag, ctx, budget),
    }
}

fn resolve_flag<'s>(
    flag: &'s Flag,
    ctx: &EvaluationContext,
    budget: Budget,
) -> Resolution<'s, &'s Value> {
    let done = |variant: Option<&'s Variant>, reason: Reason| Resolution {
        value: variant.map(|v| &v.value),
        variant: variant.map(|v| &*v.name),
        reason,
        error: None,
        metadata: &flag.metadata,
    };
    if flag.state == FlagState::Disabled {
        return done(None, Reason::Disabled);
    }
    let Some(rule) = &flag.targeting else {
        return match flag.default_variant() {
            Some(v) => done(Some(v), Reason::Static),
            None => done(None, Reason::Default),
        };
    };
    let meter = Meter::new(budget);
    let scope = Scope {
        root: ctx.fields(),
        data: None,
        flag_key: &flag.key,
        now: ctx.now(),
        meter: &meter,
    };
    let chosen = rule.eval(&scope);
    // Whatever an exhausted evaluation answered is meaningless (its nodes turned null midway).
    if let Some(exceeded) = meter.exceeded() {
        return Resolution::failed(
            ResolveError::over_budget(&flag.key, exceeded),
            &flag.metadata,
        );
    }
    let name = match &*chosen {
        Value::Null => return done(flag.default_variant(), Reason::Default),
        Value::String(name) => name.as_str(),
        Value::Bool(true) => "true",
        Value::Bool(false) => "false",
        other => {
            return Resolution::failed(
                ResolveError::new(
                    ErrorCode::General,
                    format!(
                        "targeting of flag {:?} returned {other}, which is not a variant name",
                        flag.key
                    ),
                ),
                &flag.metadata,
            );
        }
    };
    match flag.variant(name) {
        Some(v) => done(Some(v), Reason::TargetingMatch),
        None => Resolution::failed(
            ResolveError::new(
                ErrorCode::General,
                format!(
                    "targeting of flag {:?} chose variant {name:?}, which the flag does not define",
                    flag.key
                ),
            ),
            &flag.metadata,
        ),
    }
}

/// See [`FlagSet::fingerprint`]. std's `DefaultHasher::new()` has fixed keys, so every node of a
/// cluster running one build computes the same digest; the document is hashed as it serializes,
/// without a copy.
fn fingerprint(document: &Value) -> u64 {
    use std::hash::Hasher;
    struct HashWriter(std::hash::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut writer = HashWriter(std::hash::DefaultHasher::new());
    // Serializing a `Value` into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut writer, document);
    writer.0.finish()
}
