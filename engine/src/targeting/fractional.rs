//! flagd's `fractional` operator: deterministic, weighted assignment of a user to a bucket.

use std::borrow::Cow;

use serde_json::Value;

use super::budget::heap_size_within;
use super::cbor;
use super::eval::Scope;
use super::expr::Expr;
use super::murmur3::{self, Murmur3};

/// How `fractional` turns the bucketing value into a bucket. flagd's evaluators do not all agree
/// (README, "Fractional bucketing across clients"): the flagd server and the Go, Java,
/// JavaScript and .NET in-process providers hash the plain string, the Python (0.6) and Rust
/// (0.3) ones its CBOR encoding. Bunting defaults to the string form, which agrees with the flagd
/// server and most providers; a node selects another so that a fleet of mixed clients agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FractionalMode {
    /// Hash the deterministic CBOR encoding of the bucketing value (default: `[flagKey,
    /// targetingKey]`); bucket = `(hash * totalWeight) >> 32`. flagd's "v3" (its accepted ADR,
    /// not yet in the flagd server).
    Cbor,
    /// Hash the bucketing string (default: flagKey followed by targetingKey); same bucket formula.
    /// What the flagd server computes today ("v2"). The default.
    #[default]
    String,
    /// The legacy float form: `|hash as i32| / i32::MAX * 100` against percentage ranges ("v1").
    LegacyFloat,
}

impl FractionalMode {
    /// The mode's name as a node's config (`fractional = "..."`), the CLI's `--fractional` and
    /// the sync metadata (`bunting.fractional`) spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            FractionalMode::Cbor => "cbor",
            FractionalMode::String => "string",
            FractionalMode::LegacyFloat => "legacy",
        }
    }
}

impl std::fmt::Display for FractionalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The largest total weight flagd allows: the bucket formula needs `hash * total` to fit 64 bits
/// with room to spare, and flagd's schema caps it here.
pub(crate) const MAX_TOTAL_WEIGHT: u64 = i32::MAX as u64;

#[derive(Debug, Clone)]
pub(crate) struct Fractional {
    pub(crate) bucket_by: Option<Expr>,
    pub(crate) buckets: Box<[Bucket]>,
    pub(crate) mode: FractionalMode,
    /// The sum of the weights when none is computed, so evaluation does not add them up again.
    pub(crate) fixed_total: Option<u64>,
}

#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub(crate) variant: Expr,
    pub(crate) weight: Weight,
}

#[derive(Debug, Clone)]
pub(crate) enum Weight {
    Fixed(u64),
    /// A rule yielding the weight (progressive rollouts); negative results count as 0.
    Computed(Expr),
}

impl Fractional {
    /// The rules it evaluates: the bucketing expression, each bucket's variant and computed
    /// weight (see [`Expr::any`]).
    pub(crate) fn children(&self) -> impl Iterator<Item = &Expr> {
        self.bucket_by
            .iter()
            .chain(self.buckets.iter().flat_map(|b| {
                let weight = match &b.weight {
                    Weight::Computed(weight) => Some(weight),
                    Weight::Fixed(_) => None,
                };
                std::iter::once(&b.variant).chain(weight)
            }))
    }

    pub(crate) fn eval<'a>(&'a self, scope: &Scope<'a>) -> Cow<'a, Value> {
        let null = Cow::Owned(Value::Null);
        let Some(hash) = self.hash(scope) else {
            return null;
        };
        // Weights are evaluated only when some are computed; the common case adds nothing here.
        let mut computed: Vec<u64> = Vec::new();
        let total = match self.fixed_total {
            Some(total) => total,
            None => {
                computed = self.buckets.iter().map(|b| b.weight(scope)).collect();
                computed
                    .iter()
                    .fold(0, |total: u64, w| total.saturating_add(*w))
            }
        };
        if total == 0 || total > MAX_TOTAL_WEIGHT {
            return null;
        }
        let weight_of = |i: usize, b: &Bucket| match (&b.weight, computed.get(i)) {
            (Weight::Fixed(w), _) => *w,
            (Weight::Computed(_), Some(w)) => *w,
            (Weight::Computed(_), None) => 0,
        };
        let chosen = match self.mode {
            FractionalMode::Cbor | FractionalMode::String => {
                let bucket = (u64::from(hash) * total) >> 32;
                let mut running = 0;
                self.buckets.iter().enumerate().find(|(i, b)| {
                    running += weight_of(*i, b);
                    bucket < running
                })
            }
            FractionalMode::LegacyFloat => {
                // Reinterpreting the hash as signed is the legacy algorithm's definition.
                #[allow(clippy::cast_possible_wrap)]
                let ratio = f64::from((hash as i32).unsigned_abs()) / f64::from(i32::MAX);
                let bucket = ratio * 100.0;
                let mut range_end = 0.0;
                #[allow(clippy::cast_precision_loss)]
                self.buckets.iter().enumerate().find(|(i, b)| {
                    range_end += 100.0 * weight_of(*i, b) as f64 / total as f64;
                    bucket < range_end
                })
            }
        };
        match chosen {
            Some((_, bucket)) => bucket.variant.eval(scope),
            None => null,
        }
    }

    /// The bucketing hash, or `None` when there is nothing to bucket by (flagd answers null then).
    fn hash(&self, scope: &Scope<'_>) -> Option<u32> {
        let explicit = self.bucket_by.as_ref().map(|e| e.eval(scope));
        // Hashing reads the whole bucketing value.
        if let Some(value) = &explicit
            && !scope.meter.work(hashed_bytes(value))
        {
            return None;
        }
        match self.mode {
            FractionalMode::Cbor => {
                let mut hasher = Murmur3::new(0);
                match explicit.as_deref() {
                    Some(Value::Null) => return None,
                    Some(value) => cbor::write_value(&mut hasher, value),
                    None => {
                        let targeting_key = scope.targeting_key()?;
                        cbor::write_array_head(&mut hasher, 2);
                        cbor::write_text(&mut hasher, scope.flag_key);
                        cbor::write_text(&mut hasher, targeting_key);
                    }
                }
                Some(hasher.finish())
            }
            FractionalMode::String | FractionalMode::LegacyFloat => match explicit.as_deref() {
                Some(Value::String(s)) => Some(murmur3::hash(s.as_bytes())),
                Some(_) => None,
                None => {
                    let targeting_key = scope.targeting_key()?;
                    let mut hasher = Murmur3::new(0);
                    hasher.write(scope.flag_key.as_bytes());
                    hasher.write(targeting_key.as_bytes());
                    Some(hasher.finish())
                }
            },
        }
    }
}

/// The bytes hashing `value` reads: a string's length (the usual case, without a walk), or the
/// size of a whole array or object.
#[inline]
fn hashed_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        _ => heap_size_within(value, u64::MAX)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX),
    }
}

impl Bucket {
    fn weight(&self, scope: &Scope<'_>) -> u64 {
        match &self.weight {
            Weight::Fixed(w) => *w,
            Weight::Computed(expr) => weight_from(&expr.eval(scope)),
        }
    }
}

/// A computed weight: numbers are truncated to integers, negatives and non-numbers count as 0.
fn weight_from(v: &Value) -> u64 {
    match v.as_f64() {
        // Saturating float-to-int conversion is exactly the clamping wanted here.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(f) if f > 0.0 => f as u64,
        _ => 0,
    }
}
