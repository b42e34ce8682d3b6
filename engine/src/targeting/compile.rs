//! Turning targeting JSON into an [`Expr`] tree, once, when a flag set loads: operators looked up,
//! arities checked, `var` paths split, `$ref`s resolved, constant sub-trees folded.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::budget::{Budget, Meter, SCAN_PER_STEP, heap_size_within};
use super::eval::Scope;
use super::expr::{Expr, Op, VarPath};
use super::fractional::{Bucket, Fractional, FractionalMode, MAX_TOTAL_WEIGHT, Weight};
use super::semver::{Operand, OperatorSpec, SemVerOp, SemVerRule, Version};
use crate::diagnostic::{Diagnostics, Path};

/// Rules nested deeper than this are refused: no real rule comes close, and evaluation recurses
/// once per level.
pub(crate) const MAX_RULE_DEPTH: usize = 64;

/// Folding constants evaluates them when the set compiles. Each fold is bounded by the budget like
/// any evaluation, and all the folds of one document together by this many budgets, so a document
/// of thousands of expensive constant rules cannot make compiling it slow either. Past that
/// allowance sub-rules are simply left unfolded: folding is an optimisation, and an unfolded
/// constant is evaluated under the budget like the rest of the rule. Real constant sub-rules take
/// a handful of steps.
pub(crate) const FOLD_BUDGETS_PER_DOCUMENT: u64 = 64;

/// Whether `var` reads the caller's context (top level) or the current element of a
/// `map`/`filter`/`reduce`; `$flagd.*` is only injected into the former.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Element,
}

/// Compiles the rules of one flag set, sharing each `$evaluators` entry between the flags that
/// reference it.
#[derive(Debug)]
pub(crate) struct Compiler<'d> {
    evaluators: Option<&'d Map<String, Value>>,
    /// Compiled evaluators; `None` marks one that failed, so every user of it fails too.
    shared: HashMap<String, Option<Arc<Expr>>>,
    expanding: Vec<String>,
    mode: FractionalMode,
    budget: Budget,
    /// What is left of the document's allowance for folding constants.
    fold_left: Budget,
    /// The product of the lengths of the constant arrays that the iterating operators around the
    /// rule being compiled walk: a lower bound on how many times it runs per evaluation.
    loop_product: u64,
}

impl<'d> Compiler<'d> {
    pub(crate) fn new(
        evaluators: Option<&'d Map<String, Value>>,
        mode: FractionalMode,
        budget: Budget,
    ) -> Self {
        Compiler {
            evaluators,
            shared: HashMap::new(),
            expanding: Vec::new(),
            mode,
            budget,
            fold_left: Budget {
                max_steps: budget.max_steps.saturating_mul(FOLD_BUDGETS_PER_DOCUMENT),
                max_built_bytes: budget
                    .max_built_bytes
                    .saturating_mul(FOLD_BUDGETS_PER_DOCUMENT),
            },
            loop_product: 1,
        }
    }

    /// Compiles every shared evaluator, so problems in ones no flag uses are reported too.
    pub(crate) fn compile_evaluators(&mut self, diags: &mut Diagnostics) {
        let Some(evaluators) = self.evaluators else {
            return;
        };
        for name in evaluators.keys() {
            if !self.shared.contains_key(name) {
                self.shared_evaluator(name, &Path::root("$evaluators"), 0, diags);
            }
        }
    }

    pub(crate) fn compile(&mut self, rule: &Value, path: &Path, diags: &mut Diagnostics) -> Expr {
        self.expr(rule, path, 0, Level::Top, diags)
    }

    fn expr(
        &mut self,
        v: &Value,
        path: &Path,
        depth: usize,
        level: Level,
        diags: &mut Diagnostics,
    ) -> Expr {
        if depth > MAX_RULE_DEPTH {
            diags.error(
                path,
                format!("rule is nested deeper than {MAX_RULE_DEPTH} levels"),
            );
            return Expr::Const(Value::Null);
        }
        match v {
            Value::Array(items) => {
                let items: Vec<Expr> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.expr(item, &path.index(i), depth + 1, level, diags))
                    .collect();
                match constants(&items) {
                    Some(values) => Expr::Const(Value::Array(values)),
                    None => Expr::Array(items.into()),
                }
            }
            Value::Object(map) => self.operation(map, path, depth, level, diags),
            other => Expr::Const(other.clone()),
        }
    }

    fn operation(
        &mut self,
        map: &Map<String, Value>,
        path: &Path,
        depth: usize,
        level: Level,
        diags: &mut Diagnostics,
    ) -> Expr {
        let mut entries = map.iter();
        let (Some((name, raw)), None) = (entries.next(), entries.next()) else {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            diags.error(
                path,
                format!(
                    "a rule must be an object with exactly one operator, found {} keys [{}]",
                    keys.len(),
                    keys.join(", ")
                ),
            );
            return Expr::Const(Value::Null);
        };
        let args_path = path.key(name);
        let args: &[Value] = match raw {
            Value::Array(items) => items,
            // JsonLogic's unary sugar: {"!": x} means {"!": [x]}.
            single => std::slice::from_ref(single),
        };
        let unary = !raw.is_array();
        let arg_path = |i: usize| {
            if unary {
                args_path.clone()
            } else {
                args_path.index(i)
            }
        };
        match name.as_str() {
            "var" => return self.var(raw, &args_path, depth, level, diags),
            "$ref" => return self.reference(raw, &args_path, depth, diags),
            "sem_ver" => return self.sem_ver(args, &arg_path, depth, level, diags),
            "fractional" => return self.fractional(args, &args_path, depth, level, diags),
            _ => {}
        }
        let Some(op) = Op::from_name(name) else {
            diags.error(path, format!("unknown operator {name:?}"));
            return Expr::Const(Value::Null);
        };
        let (min, max) = op.arity();
        if args.len() < min || max.is_some_and(|max| args.len() > max) {
            let expected = match max {
                Some(max) if max == min => format!("{min}"),
                Some(max) => format!("{min} to {max}"),
                None => format!("at least {min}"),
            };
            let message = format!(
                "{name:?} takes {expected} argument{}, found {}",
                if expected == "1" { "" } else { "s" },
                args.len()
            );
            if op.is_flagd_custom() {
                // flagd evaluates this to null rather than rejecting the flag.
                diags.warning(path, message);
            } else {
                diags.error(path, message);
            }
            return Expr::Const(Value::Null);
        }
        let mut compiled: Vec<Expr> = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            let outer_product = self.loop_product;
            let inner = if op.iterates() && i == 1 {
                self.enter_loop(compiled.first(), path, diags);
                Level::Element
            } else {
                level
            };
            compiled.push(self.expr(a, &arg_path(i), depth + 1, inner, diags));
            self.loop_product = outer_product;
        }
        if op == Op::Reduce {
            self.check_reduce_growth(&compiled, path, diags);
        }
        if op.is_flagd_custom() {
            for (i, a) in compiled.iter().enumerate() {
                if let Expr::Const(c) = a
                    && !c.is_string()
                {
                    diags.warning(
                        &arg_path(i),
                        format!("{name:?} compares strings, found {c}; the rule answers null"),
                    );
                }
            }
        }
        if op == Op::In
            && let [needle, Expr::Const(Value::Array(list))] = compiled.as_slice()
            && !matches!(needle, Expr::Const(_))
        {
            self.check_scan(list.len(), path, diags);
            return Expr::InList(Box::new(needle.clone()), list.clone().into());
        }
        self.fold(Expr::Op(op, compiled.into()), path, diags)
    }

    /// Before compiling the body of an iterating operator: when its input is a constant array the
    /// body runs at least that many times per run of the operator, times the runs of the loops
    /// around it. Past the step budget every evaluation would fail, so the rule is refused now
    /// (once, at the first operator that crosses it).
    fn enter_loop(&mut self, input: Option<&Expr>, path: &Path, diags: &mut Diagnostics) {
        let Some(Expr::Const(Value::Array(items))) = input else {
            return;
        };
        let outer = self.loop_product;
        let needed = outer.saturating_mul(items.len() as u64);
        let max = self.budget.max_steps;
        if needed > max && outer <= max {
            diags.error(
                path,
                format!(
                    "nested iteration over constant arrays needs {needed} steps, over the step budget of {max}"
                ),
            );
        }
        self.loop_product = needed;
    }

    /// `in` a constant list scans it on every run, times the runs of the loops around it.
    fn check_scan(&self, len: usize, path: &Path, diags: &mut Diagnostics) {
        let needed = (len as u64)
            .div_ceil(SCAN_PER_STEP)
            .saturating_mul(self.loop_product);
        let max = self.budget.max_steps;
        if needed > max && self.loop_product <= max {
            diags.error(
                path,
                format!(
                    "scanning a constant list of {len} elements needs {needed} steps, over the step budget of {max}"
                ),
            );
        }
    }

    /// `reduce` over a constant array whose body builds the new accumulator from the old one:
    /// `cat(accumulator, accumulator)` doubles it every element. A lower bound of what the
    /// evaluation builds (see [`growth`]) past the size budget refuses the rule now.
    fn check_reduce_growth(&self, args: &[Expr], path: &Path, diags: &mut Diagnostics) {
        let [Expr::Const(Value::Array(items)), body, rest @ ..] = args else {
            return;
        };
        let max = self.budget.max_built_bytes;
        for kind in [Built::Text, Built::List] {
            let (times, plus) = growth(body, kind);
            let mut size = match (rest.first(), kind) {
                (Some(Expr::Const(Value::String(s))), Built::Text) => s.len() as u64,
                (Some(Expr::Const(v @ Value::Array(_))), Built::List) => {
                    heap_size_within(v, u64::MAX).unwrap_or(u64::MAX)
                }
                _ => 0,
            };
            let mut total: u64 = 0;
            for (n, _) in items.iter().enumerate() {
                size = size.saturating_mul(times).saturating_add(plus);
                total = total.saturating_add(size);
                if total > max {
                    diags.error(
                        path,
                        format!(
                            "\"reduce\" over a constant array of {} elements builds at least {total} bytes by element {}, over the size budget of {max} bytes",
                            items.len(),
                            n + 1
                        ),
                    );
                    return;
                }
            }
        }
    }

    /// Evaluates a node whose arguments are all constants, so the work happens once, at load
    /// time, under the same budget as an evaluation: a constant rule that would exceed it (a
    /// `map` of a `map` of long constant arrays) is refused instead of built.
    fn fold(&mut self, expr: Expr, path: &Path, diags: &mut Diagnostics) -> Expr {
        if !foldable(&expr) || self.fold_left.max_steps == 0 || self.fold_left.max_built_bytes == 0
        {
            return expr;
        }
        let empty = Map::new();
        let this_fold = Budget {
            max_steps: self.budget.max_steps.min(self.fold_left.max_steps),
            max_built_bytes: self
                .budget
                .max_built_bytes
                .min(self.fold_left.max_built_bytes),
        };
        let meter = Meter::new(this_fold);
        let scope = Scope {
            root: &empty,
            data: None,
            flag_key: "",
            now: Some(0),
            meter: &meter,
        };
        let value = expr.eval(&scope).into_owned();
        let (steps, bytes) = meter.used();
        self.fold_left.max_steps = self.fold_left.max_steps.saturating_sub(steps);
        self.fold_left.max_built_bytes = self.fold_left.max_built_bytes.saturating_sub(bytes);
        match meter.exceeded() {
            None => Expr::Const(value),
            // Every evaluation would fail the same way: refused now.
            Some(exceeded) if this_fold == self.budget => {
                diags.error(
                    path,
                    format!("this constant rule exceeds the {exceeded} when evaluated"),
                );
                Expr::Const(Value::Null)
            }
            // Only the document's allowance ran out: left as it is, and no more folding.
            Some(_) => {
                self.fold_left = Budget {
                    max_steps: 0,
                    max_built_bytes: 0,
                };
                expr
            }
        }
    }

    fn var(
        &mut self,
        raw: &Value,
        path: &Path,
        depth: usize,
        level: Level,
        diags: &mut Diagnostics,
    ) -> Expr {
        let (target, default) = match raw {
            Value::Array(items) if items.len() > 2 => {
                diags.error(
                    path,
                    format!(
                        "\"var\" takes a path and an optional default, found {} arguments",
                        items.len()
                    ),
                );
                return Expr::Const(Value::Null);
            }
            Value::Array(items) => (items.first(), items.get(1)),
            other => (Some(other), None),
        };
        let default = default.map(|d| self.expr(d, &path.index(1), depth + 1, level, diags));
        let target_path = if raw.is_array() {
            path.index(0)
        } else {
            path.clone()
        };
        let segments: Box<[Box<str>]> = match target {
            None | Some(Value::Null) => Box::default(),
            Some(Value::String(s)) if s.is_empty() => Box::default(),
            Some(Value::String(s)) => s.split('.').map(Box::from).collect(),
            Some(Value::Number(n)) => Box::new([n.to_string().into()]),
            Some(dynamic @ Value::Object(_)) => {
                let mut parts = vec![self.expr(dynamic, &target_path, depth + 1, level, diags)];
                parts.extend(default);
                return Expr::VarDynamic(parts.into());
            }
            Some(other) => {
                diags.error(
                    &target_path,
                    format!("\"var\" takes a string or number path, found {other}"),
                );
                return Expr::Const(Value::Null);
            }
        };
        if level == Level::Top && segments.first().is_some_and(|s| &**s == "$flagd") {
            return match &segments[1..] {
                [] => Expr::FlagdProperties,
                [p] if &**p == "flagKey" => Expr::FlagKey,
                [p] if &**p == "timestamp" => Expr::Timestamp,
                _ => {
                    diags.warning(
                        &target_path,
                        format!(
                            "flagd injects only $flagd.flagKey and $flagd.timestamp, not {:?}",
                            segments.join(".")
                        ),
                    );
                    default.unwrap_or(Expr::Const(Value::Null))
                }
            };
        }
        Expr::Var(Box::new(VarPath { segments, default }))
    }

    fn reference(
        &mut self,
        raw: &Value,
        path: &Path,
        depth: usize,
        diags: &mut Diagnostics,
    ) -> Expr {
        let Value::String(name) = raw else {
            diags.error(
                path,
                format!("\"$ref\" takes the name of an evaluator, found {raw}"),
            );
            return Expr::Const(Value::Null);
        };
        match self.shared_evaluator(name, path, depth, diags) {
            Some(shared) => Expr::Shared(shared),
            None => Expr::Const(Value::Null),
        }
    }

    fn shared_evaluator(
        &mut self,
        name: &str,
        path: &Path,
        depth: usize,
        diags: &mut Diagnostics,
    ) -> Option<Arc<Expr>> {
        if let Some(done) = self.shared.get(name) {
            if done.is_none() {
                diags.error(path, format!("evaluator {name:?} is invalid"));
            }
            return done.clone();
        }
        if self.expanding.iter().any(|n| n == name) {
            let cycle = format!("{} -> {name}", self.expanding.join(" -> "));
            diags.error(
                path,
                format!("evaluators refer to each other in a cycle: {cycle}"),
            );
            return None;
        }
        let Some(definition) = self.evaluators.and_then(|e| e.get(name)) else {
            diags.error(path, format!("no evaluator named {name:?} in $evaluators"));
            return None;
        };
        let before = diags.len();
        self.expanding.push(name.to_owned());
        // An evaluator is compiled once for all its users, so the loops around the first user do
        // not belong to it.
        let outer_product = std::mem::replace(&mut self.loop_product, 1);
        let expr = self.expr(
            definition,
            &Path::root("$evaluators").key(name),
            depth + 1,
            Level::Top,
            diags,
        );
        self.expanding.pop();
        self.loop_product = outer_product;
        let failed = diags.errors_since(before).next().is_some();
        let shared = (!failed).then(|| Arc::new(expr));
        self.shared.insert(name.to_owned(), shared.clone());
        if failed {
            diags.error(path, format!("evaluator {name:?} is invalid"));
        }
        shared
    }

    fn sem_ver(
        &mut self,
        args: &[Value],
        arg_path: &dyn Fn(usize) -> Path,
        depth: usize,
        level: Level,
        diags: &mut Diagnostics,
    ) -> Expr {
        let [left, op, right] = args else {
            diags.warning(
                &arg_path(0),
                format!(
                    "\"sem_ver\" takes 3 arguments (version, operator, version), found {}; the rule answers null",
                    args.len()
                ),
            );
            return Expr::Const(Value::Null);
        };
        let mut operand = |v: &Value, i: usize, diags: &mut Diagnostics| match self.expr(
            v,
            &arg_path(i),
            depth + 1,
            level,
            diags,
        ) {
            Expr::Const(c) => match Version::from_value(&c) {
                Some(version) => Some(Operand::Fixed(version)),
                None => {
                    diags.warning(
                        &arg_path(i),
                        format!("{c} is not a semantic version; the rule answers null"),
                    );
                    None
                }
            },
            computed => Some(Operand::Computed(computed)),
        };
        let left = operand(left, 0, diags);
        let right = operand(right, 2, diags);
        let op = match self.expr(op, &arg_path(1), depth + 1, level, diags) {
            Expr::Const(c) => match c.as_str().and_then(SemVerOp::parse) {
                Some(op) => Some(OperatorSpec::Fixed(op)),
                None => {
                    diags.warning(
                        &arg_path(1),
                        format!(
                            "{c} is not a sem_ver operator (=, !=, <, <=, >, >=, ~, ^); the rule answers null"
                        ),
                    );
                    None
                }
            },
            computed => Some(OperatorSpec::Computed(computed)),
        };
        match (left, op, right) {
            (Some(left), Some(op), Some(right)) => {
                let rule = SemVerRule { left, op, right };
                let path = arg_path(1);
                self.fold(Expr::SemVer(Box::new(rule)), &path, diags)
            }
            _ => Expr::Const(Value::Null),
        }
    }

    fn fractional(
        &mut self,
        args: &[Value],
        path: &Path,
        depth: usize,
        level: Level,
        diags: &mut Diagnostics,
    ) -> Expr {
        let null = Expr::Const(Value::Null);
        let (bucket_by, buckets) = match args.split_first() {
            Some((first, rest)) if !first.is_array() => {
                if !first.is_object() {
                    diags.warning(
                        &path.index(0),
                        format!("the bucketing value should be a rule such as {{\"var\": \"email\"}}, found the constant {first}"),
                    );
                }
                let e = self.expr(first, &path.index(0), depth + 1, level, diags);
                (Some(e), (rest, 1))
            }
            _ => (None, (args, 0)),
        };
        let (raw_buckets, offset) = buckets;
        if raw_buckets.is_empty() {
            diags.warning(
                path,
                "\"fractional\" needs at least one [variant, weight] bucket; the rule answers null",
            );
            return null;
        }
        let mut compiled = Vec::with_capacity(raw_buckets.len());
        let mut valid = true;
        for (i, raw) in raw_buckets.iter().enumerate() {
            let bucket_path = path.index(i + offset);
            match raw.as_array().map(Vec::as_slice) {
                Some([variant]) => compiled.push(Bucket {
                    variant: self.expr(variant, &bucket_path.index(0), depth + 1, level, diags),
                    weight: Weight::Fixed(1),
                }),
                Some([variant, weight]) => {
                    let variant =
                        self.expr(variant, &bucket_path.index(0), depth + 1, level, diags);
                    let weight = self.weight(weight, &bucket_path.index(1), depth, level, diags);
                    valid &= weight.is_some();
                    compiled.push(Bucket {
                        variant,
                        weight: weight.unwrap_or(Weight::Fixed(0)),
                    });
                }
                _ => {
                    diags.warning(
                        &bucket_path,
                        format!("a fractional bucket is [variant] or [variant, weight], found {raw}; the rule answers null"),
                    );
                    valid = false;
                }
            }
        }
        if !valid {
            return null;
        }
        // Saturating: weights come from the definition, and a sum past u64 is just "too large".
        let fixed_total = compiled.iter().try_fold(0u64, |total, b| match b.weight {
            Weight::Fixed(w) => Some(total.saturating_add(w)),
            Weight::Computed(_) => None,
        });
        if let Some(total) = fixed_total
            && total > MAX_TOTAL_WEIGHT
        {
            diags.warning(
                path,
                format!("the weights add up to {total}, more than the {MAX_TOTAL_WEIGHT} flagd allows; the rule answers null"),
            );
        }
        Expr::Fractional(Box::new(Fractional {
            bucket_by,
            buckets: compiled.into(),
            mode: self.mode,
            fixed_total,
        }))
    }

    fn weight(
        &mut self,
        raw: &Value,
        path: &Path,
        depth: usize,
        level: Level,
        diags: &mut Diagnostics,
    ) -> Option<Weight> {
        match raw {
            Value::Number(n) => {
                if let Some(w) = n.as_u64() {
                    return Some(Weight::Fixed(w));
                }
                let f = n.as_f64().unwrap_or(0.0);
                if f < 0.0 {
                    diags.warning(path, format!("weight {n} is negative and counts as 0"));
                    Some(Weight::Fixed(0))
                } else {
                    diags.warning(
                        path,
                        format!("weight {n} is not an integer and counts as {}", f.trunc()),
                    );
                    // Non-negative and finite: truncation is the documented behaviour.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Some(Weight::Fixed(f as u64))
                }
            }
            Value::Object(_) => Some(Weight::Computed(self.expr(
                raw,
                path,
                depth + 1,
                level,
                diags,
            ))),
            other => {
                diags.warning(
                    path,
                    format!("a weight is a non-negative integer or a rule, found {other}; the rule answers null"),
                );
                None
            }
        }
    }
}

fn constants(items: &[Expr]) -> Option<Vec<Value>> {
    items
        .iter()
        .map(|e| match e {
            Expr::Const(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// Whether a node's arguments are all constants, so it can be evaluated once, at load time.
fn foldable(expr: &Expr) -> bool {
    match expr {
        // `missing` reads the context even when its arguments are constant key names.
        Expr::Op(Op::Missing | Op::MissingSome, _) => false,
        Expr::Op(_, args) => args.iter().all(|a| matches!(a, Expr::Const(_))),
        Expr::SemVer(rule) => {
            matches!(rule.left, Operand::Fixed(_))
                && matches!(rule.op, OperatorSpec::Fixed(_))
                && matches!(rule.right, Operand::Fixed(_))
        }
        _ => false,
    }
}

/// What a `reduce` body builds from its accumulator: text (`cat`) or a list (`merge`, arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Built {
    Text,
    List,
}

/// A lower bound on how a `reduce` body grows the accumulator, as `(times, plus)`: the new one is
/// at least `times` copies of the old one plus `plus` bytes. Only what is certain counts: a
/// branch (`if`, `and`, `or`) counts its smallest outcome, an operator it does not know counts
/// nothing, and inside a nested iterating operator `accumulator` is another element's, so it
/// counts nothing either. The runtime meter charges at least this much, so a rule refused on this
/// bound would fail every evaluation.
fn growth(e: &Expr, kind: Built) -> (u64, u64) {
    let sum = |args: &[Expr], piece: &dyn Fn(&Expr) -> (u64, u64)| {
        args.iter()
            .map(piece)
            .fold((0u64, 0u64), |(t, p), (t2, p2)| {
                (t.saturating_add(t2), p.saturating_add(p2))
            })
    };
    let slot = std::mem::size_of::<Value>() as u64;
    match e {
        Expr::Var(var) if var.segments.len() == 1 && &*var.segments[0] == "accumulator" => (1, 0),
        Expr::Op(Op::If, args) => {
            let outcomes = args
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 1 || *i + 1 == args.len());
            least(outcomes.map(|(_, a)| growth(a, kind)))
        }
        Expr::Op(Op::And | Op::Or, args) => least(args.iter().map(|a| growth(a, kind))),
        Expr::Op(Op::Cat, args) if kind == Built::Text => sum(args, &|a| match a {
            Expr::Const(Value::String(s)) => (0, s.len() as u64),
            other => growth(other, kind),
        }),
        Expr::Op(Op::Merge, args) if kind == Built::List => sum(args, &|a| match a {
            Expr::Const(Value::Array(items)) => (0, (items.len() as u64).saturating_mul(slot)),
            Expr::Const(_) => (0, slot),
            Expr::Array(items) => sum(items, &|item| {
                let (t, p) = growth(item, kind);
                (t, p.saturating_add(slot))
            }),
            other => growth(other, kind),
        }),
        Expr::Array(items) if kind == Built::List => sum(items, &|item| {
            let (t, p) = growth(item, kind);
            (t, p.saturating_add(slot))
        }),
        _ => (0, 0),
    }
}

/// The component-wise minimum of several growth bounds (none: no growth).
fn least(bounds: impl Iterator<Item = (u64, u64)>) -> (u64, u64) {
    bounds
        .reduce(|(t, p), (t2, p2)| (t.min(t2), p.min(p2)))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Folds stop once the document's allowance is spent, and what is left unfolded is still the
    /// rule it was.
    #[test]
    fn folding_stops_at_the_documents_allowance() {
        let budget = Budget {
            max_steps: 1_000,
            max_built_bytes: 1 << 20,
        };
        let mut compiler = Compiler::new(None, FractionalMode::Cbor, budget);
        let items: Vec<Value> = (0..400).map(Value::from).collect();
        let rule = json!({"map": [items, 1]});
        let mut diags = Diagnostics::default();
        let folded: Vec<bool> = (0..200)
            .map(|_| {
                let expr = compiler.compile(&rule, &Path::root("rule"), &mut diags);
                matches!(expr, Expr::Const(_))
            })
            .collect();
        assert!(diags.0.is_empty(), "{:?}", diags.0);
        let count = folded.iter().filter(|f| **f).count();
        // 64 budgets of 1,000 steps, about 400 steps a fold (a step per element).
        assert!((150..=165).contains(&count), "{count} folded");
        assert!(folded[..count].iter().all(|f| *f) && !folded[count..].iter().any(|f| *f));
        // An unfolded one evaluates to the same value, under the budget.
        let expr = compiler.compile(&rule, &Path::root("rule"), &mut diags);
        let meter = Meter::new(budget);
        let empty = Map::new();
        let scope = Scope {
            root: &empty,
            data: None,
            flag_key: "",
            now: None,
            meter: &meter,
        };
        assert!(!matches!(expr, Expr::Const(_)));
        assert_eq!(expr.eval(&scope).into_owned(), json!(vec![1; 400]));
        assert_eq!(meter.exceeded(), None);
    }
}
