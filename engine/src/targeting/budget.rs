//! The evaluation budget: what one evaluation of one flag may cost, and the meter that enforces it.
//!
//! **Invariant: every evaluation's work is bounded by the set's [`Budget`].** Two counters do it:
//!
//! - *Steps.* Every evaluated rule node is a step (`Expr::eval` takes one before doing anything;
//!   a node that `Expr::test` handles itself is paid for by the children it must evaluate). A
//!   linear scan (`in`, `missing`) takes one per [`SCAN_PER_STEP`] elements beyond the first
//!   few: comparing an element costs a fraction of evaluating a node, and a constant allow-list
//!   of thousands of ids is a real use. Reading a long operand (comparing, searching, hashing or
//!   parsing it) takes one per [`WORK_BYTES_PER_STEP`] bytes, and an array's string form
//!   [`STEPS_PER_COERCED_ELEMENT`] per element. The iterating operators (`map`, `filter`,
//!   `reduce`, `all`, `some`, `none`) evaluate their body once per element, so each iteration
//!   costs at least one step and nested loops cost the product of their lengths. A `$ref` is a
//!   node like any other, so an evaluator shared a thousand times in a tree costs a thousand
//!   times its size: sharing cannot multiply work past the budget either. Between two steps the
//!   remaining work is linear in the node's arity (bounded by the document [`Limits`](crate::Limits)) and in
//!   short operands.
//! - *Built bytes.* Every value an evaluation builds (`cat`, `merge`, `substr`, `map` and
//!   `filter` results, array literals, `reduce`'s accumulator and element records, `missing`,
//!   a computed `var` path, a clone of the whole context) is charged before or as it is built, and
//!   the charges add up over the evaluation, so its total allocation (not only its peak) is
//!   bounded. Values borrowed from the context or the rule cost nothing.
//!
//! Once either counter runs out the meter is *exhausted*: every node answers null at once
//! (its step fails) and loops stop, so the tree unwinds in a few calls without a `Result` threaded
//! through every operator. The resolution then turns the exhaustion into a GENERAL error for that
//! flag only.

use std::cell::Cell;
use std::fmt;

use serde_json::Value;

/// What one evaluation of one flag may cost. Part of [`CompileOptions`](crate::CompileOptions)
/// and carried by the compiled [`FlagSet`](crate::FlagSet), so a node sets it once per set.
///
/// The defaults keep the worst evaluation that fits them at about a millisecond of CPU and a
/// mebibyte of allocation (measured in `engine/benches/eval_budget.rs`, see BENCHMARKS.md), far
/// above what real targeting rules need: a three-condition rule takes about ten steps and builds
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Rule nodes evaluated plus elements scanned, per evaluation.
    pub max_steps: u64,
    /// Bytes of values built during one evaluation, added up over the whole evaluation.
    pub max_built_bytes: u64,
}

impl Budget {
    pub const DEFAULT_MAX_STEPS: u64 = 20_000;
    pub const DEFAULT_MAX_BUILT_BYTES: u64 = 1 << 20;
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_steps: Budget::DEFAULT_MAX_STEPS,
            max_built_bytes: Budget::DEFAULT_MAX_BUILT_BYTES,
        }
    }
}

/// Which counter of the [`Budget`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetKind {
    Steps,
    BuiltBytes,
}

/// An evaluation stopped because it would have cost more than its [`Budget`] allows: which counter
/// ran out, and the limit it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{}", self.describe())]
pub struct BudgetExceeded {
    pub kind: BudgetKind,
    pub limit: u64,
}

impl BudgetExceeded {
    fn describe(&self) -> String {
        match self.kind {
            BudgetKind::Steps => format!("step budget of {}", self.limit),
            BudgetKind::BuiltBytes => format!("size budget of {} bytes", self.limit),
        }
    }
}

impl fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetKind::Steps => "steps",
            BudgetKind::BuiltBytes => "built bytes",
        })
    }
}

/// The two counters of one evaluation. Lives on the stack of the resolution; `Scope` borrows it.
/// `Cell`s, because evaluation shares `&Scope` everywhere and a meter is never shared between
/// threads (one evaluation runs on one thread).
#[derive(Debug)]
pub(crate) struct Meter {
    budget: Budget,
    steps_left: Cell<u64>,
    bytes_left: Cell<u64>,
    /// The first counter that ran out; `Some` exactly when `steps_left` was forced to 0 by it or
    /// ran down to 0 by itself.
    exceeded: Cell<Option<BudgetKind>>,
}

/// Elements a scan (`in`, `missing`) visits per step.
pub(crate) const SCAN_PER_STEP: u64 = 8;
/// Operand bytes compared, searched, hashed or parsed per step.
pub(crate) const WORK_BYTES_PER_STEP: u64 = 256;
/// Steps per element when an array is turned into its string form (formatting a number costs
/// several node evaluations).
pub(crate) const STEPS_PER_COERCED_ELEMENT: u64 = 4;

/// The bytes a value slot takes inside an array or an object entry (`size_of::<Value>()`), the
/// unit in which containers are charged.
const SLOT: u64 = std::mem::size_of::<Value>() as u64;
/// An object entry: its key's `String`, its value slot, and the tree node around them (roughly).
const ENTRY: u64 = 2 * SLOT;
/// An object's first tree node, allocated whole however few entries it holds (a `BTreeMap` leaf:
/// eleven keys and values).
const OBJECT: u64 = 11 * (24 + SLOT) + 16;

impl Meter {
    pub(crate) fn new(budget: Budget) -> Meter {
        Meter {
            budget,
            steps_left: Cell::new(budget.max_steps),
            bytes_left: Cell::new(budget.max_built_bytes),
            exceeded: Cell::new(None),
        }
    }

    /// Takes one step; `false` once the budget is exhausted (the caller answers null).
    #[inline(always)]
    pub(crate) fn step(&self) -> bool {
        let left = self.steps_left.get();
        if left == 0 {
            self.exhaust(BudgetKind::Steps);
            return false;
        }
        self.steps_left.set(left - 1);
        true
    }

    /// Pays for a linear scan of `n` elements, one step per [`SCAN_PER_STEP`] begun beyond the
    /// first [`SCAN_PER_STEP`]; `false` if that does not fit.
    #[inline]
    pub(crate) fn scan(&self, n: usize) -> bool {
        // A scan no longer than that rides on its node's step (the common short `in` list).
        n as u64 <= SCAN_PER_STEP || self.steps((n as u64).div_ceil(SCAN_PER_STEP))
    }

    /// Pays for work linear in `bytes` (comparing, searching, hashing, parsing an operand), one
    /// step per [`WORK_BYTES_PER_STEP`]; operands shorter than that ride on the node's own step.
    #[inline]
    pub(crate) fn work(&self, bytes: usize) -> bool {
        bytes < WORK_BYTES_PER_STEP as usize || self.steps(bytes as u64 / WORK_BYTES_PER_STEP)
    }

    /// Takes `n` steps at once; `false` (and exhausted) if they do not fit.
    pub(crate) fn steps(&self, n: u64) -> bool {
        let left = self.steps_left.get();
        if n > left {
            self.exhaust(BudgetKind::Steps);
            return false;
        }
        self.steps_left.set(left - n);
        true
    }

    /// Charges `bytes` of built value; `false` (and exhausted) if they do not fit.
    pub(crate) fn charge(&self, bytes: u64) -> bool {
        let left = self.bytes_left.get();
        if bytes > left || self.is_exhausted() {
            self.exhaust(BudgetKind::BuiltBytes);
            return false;
        }
        self.bytes_left.set(left - bytes);
        true
    }

    /// Charges `n` container slots.
    pub(crate) fn charge_slots(&self, n: usize) -> bool {
        self.charge((n as u64).saturating_mul(SLOT))
    }

    /// Charges a copy of `v`. The size walk stops as soon as it passes what is left, so charging a
    /// huge value costs no more than the budget it would have used.
    pub(crate) fn charge_copy(&self, v: &Value) -> bool {
        match heap_size_within(v, self.bytes_left.get()) {
            Some(size) => self.charge(size),
            None => {
                self.exhaust(BudgetKind::BuiltBytes);
                false
            }
        }
    }

    /// Pays for an array's string form (`String([1, 2])` is `"1,2"`): a transient copy as large
    /// as the array, and the formatting of every element.
    pub(crate) fn coerce(&self, v: &Value) -> bool {
        match heap_size_within(v, self.bytes_left.get()) {
            Some(size) => self.charge(size) && self.steps(size / SLOT * STEPS_PER_COERCED_ELEMENT),
            None => {
                self.exhaust(BudgetKind::BuiltBytes);
                false
            }
        }
    }

    /// Charges a new object of `n` entries whose keys take `key_bytes`, beyond its values.
    pub(crate) fn charge_object(&self, n: usize, key_bytes: usize) -> bool {
        self.charge(
            (n as u64)
                .saturating_mul(ENTRY)
                .saturating_add(OBJECT)
                .saturating_add(key_bytes as u64),
        )
    }

    /// Charges one more entry of an object already charged.
    pub(crate) fn charge_entry(&self, key_bytes: usize) -> bool {
        self.charge(ENTRY.saturating_add(key_bytes as u64))
    }

    pub(crate) fn is_exhausted(&self) -> bool {
        self.steps_left.get() == 0 && self.exceeded.get().is_some()
    }

    /// Marks the budget exhausted: from now on every step fails, so the evaluation unwinds.
    fn exhaust(&self, kind: BudgetKind) {
        self.steps_left.set(0);
        if self.exceeded.get().is_none() {
            self.exceeded.set(Some(kind));
        }
    }

    /// Steps and bytes spent so far.
    pub(crate) fn used(&self) -> (u64, u64) {
        (
            self.budget.max_steps - self.steps_left.get(),
            self.budget.max_built_bytes - self.bytes_left.get(),
        )
    }

    /// Which counter ran out, if one did.
    pub(crate) fn exceeded(&self) -> Option<BudgetExceeded> {
        self.exceeded.get().map(|kind| BudgetExceeded {
            kind,
            limit: match kind {
                BudgetKind::Steps => self.budget.max_steps,
                BudgetKind::BuiltBytes => self.budget.max_built_bytes,
            },
        })
    }
}

/// A cheap measure of the work comparing `v` costs: a string's bytes, a container's slots (its
/// top level only; deeper levels ride on the slots).
#[inline]
pub(crate) fn work_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.len() * SLOT as usize,
        Value::Object(map) => map.len() * ENTRY as usize,
        _ => 0,
    }
}

/// The heap bytes a deep copy of `v` takes (strings' bytes, container slots, object entries), or
/// `None` as soon as it is known to pass `cap`. Scalars live in their slot and cost nothing.
pub(crate) fn heap_size_within(v: &Value, cap: u64) -> Option<u64> {
    fn walk(v: &Value, cap: u64, total: &mut u64) -> bool {
        let add = |total: &mut u64, n: u64| {
            *total = total.saturating_add(n);
            *total <= cap
        };
        match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => true,
            Value::String(s) => add(total, s.len() as u64),
            Value::Array(items) => {
                add(total, (items.len() as u64).saturating_mul(SLOT))
                    && items.iter().all(|item| walk(item, cap, total))
            }
            Value::Object(map) => {
                add(
                    total,
                    (map.len() as u64)
                        .saturating_mul(ENTRY)
                        .saturating_add(OBJECT),
                ) && map
                    .iter()
                    .all(|(k, item)| add(total, k.len() as u64) && walk(item, cap, total))
            }
        }
    }
    let mut total = 0;
    walk(v, cap, &mut total).then_some(total)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn steps_run_out_and_stay_out() {
        let meter = Meter::new(Budget {
            max_steps: 2,
            max_built_bytes: 100,
        });
        assert!(meter.step() && meter.step());
        assert!(!meter.is_exhausted());
        assert!(!meter.step());
        assert!(meter.is_exhausted());
        assert!(!meter.charge(1), "an exhausted meter charges nothing more");
        assert_eq!(
            meter.exceeded(),
            Some(BudgetExceeded {
                kind: BudgetKind::Steps,
                limit: 2
            })
        );
    }

    #[test]
    fn bytes_run_out_and_stop_the_steps() {
        let meter = Meter::new(Budget {
            max_steps: 100,
            max_built_bytes: 10,
        });
        assert!(meter.charge(10));
        assert!(!meter.charge(1));
        assert!(!meter.step(), "once the bytes are out every step fails");
        assert_eq!(
            meter.exceeded().map(|e| e.to_string()),
            Some("size budget of 10 bytes".to_owned())
        );
    }

    #[test]
    fn sizes_count_strings_slots_and_entries_and_stop_at_the_cap() {
        assert_eq!(heap_size_within(&json!(1), 0), Some(0));
        assert_eq!(heap_size_within(&json!("abc"), 10), Some(3));
        assert_eq!(
            heap_size_within(&json!(["ab", 1]), 1000),
            Some(2 * SLOT + 2)
        );
        assert_eq!(
            heap_size_within(&json!({"k": "vv"}), 1000),
            Some(OBJECT + ENTRY + 1 + 2)
        );
        assert_eq!(heap_size_within(&json!(["ab", 1]), 2 * SLOT), None);
    }
}
