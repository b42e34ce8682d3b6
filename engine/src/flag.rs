//! One compiled flag: its variants, default, targeting rule and metadata.

use std::fmt;

use serde_json::{Map, Value};

use crate::targeting::Expr;

/// Flag and flag-set metadata: string, number and boolean values by key.
pub type Metadata = Map<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlagState {
    Enabled,
    Disabled,
}

/// The one type every variant of a flag shares; flagd's schema forbids mixing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VariantKind {
    Boolean,
    String,
    Number,
    Object,
}

impl VariantKind {
    pub(crate) fn of(v: &Value) -> Option<VariantKind> {
        match v {
            Value::Bool(_) => Some(VariantKind::Boolean),
            Value::String(_) => Some(VariantKind::String),
            Value::Number(_) => Some(VariantKind::Number),
            Value::Object(_) => Some(VariantKind::Object),
            Value::Null | Value::Array(_) => None,
        }
    }
}

impl fmt::Display for VariantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VariantKind::Boolean => "boolean",
            VariantKind::String => "string",
            VariantKind::Number => "number",
            VariantKind::Object => "object",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub(crate) name: Box<str>,
    pub(crate) value: Value,
}

impl Variant {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self) -> &Value {
        &self.value
    }
}

/// A flag ready to evaluate. Built only by the compiler, which guarantees at least one variant,
/// one kind for all of them, and a default (if any) that names one of them.
#[derive(Debug, Clone)]
pub struct Flag {
    pub(crate) key: Box<str>,
    pub(crate) state: FlagState,
    pub(crate) kind: VariantKind,
    pub(crate) variants: Box<[Variant]>,
    pub(crate) default_variant: Option<usize>,
    pub(crate) targeting: Option<Expr>,
    /// `targeting` contains a loop (see [`Flag::iterates`]).
    pub(crate) iterates: bool,
    /// `targeting` reads the clock (see [`Flag::reads_clock`]).
    pub(crate) reads_clock: bool,
    /// `targeting` buckets by the targeting key (see [`Flag::buckets_by_targeting_key`]).
    pub(crate) buckets_by_targeting_key: bool,
    /// The flag-set metadata overlaid with the flag's own.
    pub(crate) metadata: Metadata,
}

impl Flag {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn state(&self) -> FlagState {
        self.state
    }

    pub fn kind(&self) -> VariantKind {
        self.kind
    }

    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    pub fn default_variant(&self) -> Option<&Variant> {
        self.default_variant.and_then(|i| self.variants.get(i))
    }

    pub fn has_targeting(&self) -> bool {
        self.targeting.is_some()
    }

    /// Whether this flag's targeting contains a loop (`map`, `filter`, `reduce`, `all`, `none`,
    /// `some`): an evaluation that may cost up to the whole budget rather than a few steps.
    /// Decided when the flag compiled.
    pub fn iterates(&self) -> bool {
        self.iterates
    }

    /// Whether this flag's answer may change with time alone (its targeting reads
    /// `$flagd.timestamp`): a cache keyed by the set's version and the context must not answer
    /// for it without evaluating.
    pub fn reads_clock(&self) -> bool {
        self.reads_clock
    }

    /// Whether this flag's targeting splits users by their targeting key (a `fractional`
    /// without a bucketing expression): without a key, such a rule cannot place the caller.
    pub fn buckets_by_targeting_key(&self) -> bool {
        self.buckets_by_targeting_key
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub(crate) fn variant(&self, name: &str) -> Option<&Variant> {
        // Flags have a handful of variants: a scan beats hashing.
        self.variants.iter().find(|v| &*v.name == name)
    }
}

/// A flag whose definition could not be compiled. It stays in the set so that evaluating it
/// answers `PARSE_ERROR` with the reason, as flagd does, instead of `FLAG_NOT_FOUND`.
#[derive(Debug, Clone)]
pub struct BrokenFlag {
    pub(crate) key: Box<str>,
    pub(crate) problem: String,
    pub(crate) metadata: Metadata,
}

impl BrokenFlag {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn problem(&self) -> &str {
        &self.problem
    }
}

#[derive(Debug, Clone)]
pub enum Entry {
    Ready(Flag),
    Broken(BrokenFlag),
}

impl Entry {
    pub fn key(&self) -> &str {
        match self {
            Entry::Ready(f) => &f.key,
            Entry::Broken(b) => &b.key,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Entry::Ready(f) => &f.metadata,
            Entry::Broken(b) => &b.metadata,
        }
    }
}
