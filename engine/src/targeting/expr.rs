//! The compiled form of a targeting rule: a tree whose operators, paths and constants were all
//! resolved when the flag set loaded, so evaluating it never looks at JSON text again.

use std::sync::Arc;

use serde_json::Value;

use super::fractional::Fractional;
use super::semver::SemVerRule;

#[derive(Debug, Clone)]
pub(crate) enum Expr {
    /// A literal, or a sub-tree folded at compile time because it reads nothing from the context.
    Const(Value),
    /// `{"var": "a.b"}` with the path split once, at compile time.
    Var(Box<VarPath>),
    /// `{"var": <rule>}`: the path itself is computed, so it is split at evaluation time.
    VarDynamic(Box<[Expr]>),
    /// `{"var": "$flagd.flagKey"}`, filled in from the flag being evaluated.
    FlagKey,
    /// `{"var": "$flagd.timestamp"}`, Unix seconds when the evaluation ran.
    Timestamp,
    /// `{"var": "$flagd"}`: both properties as one object.
    FlagdProperties,
    /// An array literal with at least one non-constant element.
    Array(Box<[Expr]>),
    Op(Op, Box<[Expr]>),
    /// `{"in": [x, [constants...]]}`: the list is matched with strict equality, so it is kept as
    /// plain values and never re-evaluated.
    InList(Box<Expr>, Box<[Value]>),
    SemVer(Box<SemVerRule>),
    Fractional(Box<Fractional>),
    /// A `$ref` to a shared evaluator, compiled once for every flag that uses it.
    Shared(Arc<Expr>),
}

impl Expr {
    /// Whether `test` holds for this node or any node below it, through a shared `$ref`, a
    /// `sem_ver` operand and a `fractional` bucket too. What a node may learn about a rule
    /// before any evaluation (does it loop, read the clock, bucket by the targeting key) is one
    /// test over this walk, so a new kind of node is walked in one place.
    pub(crate) fn any(&self, test: &dyn Fn(&Expr) -> bool) -> bool {
        if test(self) {
            return true;
        }
        let any = |exprs: &[Expr]| exprs.iter().any(|e| e.any(test));
        match self {
            Expr::Const(_) | Expr::FlagKey | Expr::Timestamp | Expr::FlagdProperties => false,
            Expr::Var(var) => var.default.as_ref().is_some_and(|e| e.any(test)),
            Expr::VarDynamic(args) | Expr::Array(args) | Expr::Op(_, args) => any(args),
            Expr::InList(needle, _) => needle.any(test),
            Expr::SemVer(rule) => rule.children().any(|e| e.any(test)),
            Expr::Fractional(fractional) => fractional.children().any(|e| e.any(test)),
            Expr::Shared(shared) => shared.any(test),
        }
    }

    /// Whether evaluating this rule may loop (`map`, `filter`, `reduce`, `all`, `none`, `some`),
    /// anywhere in it. Such a rule can cost up to the whole evaluation budget, where a rule
    /// without loops costs a few dozen steps; the node keeps the former from crowding out the
    /// latter (`FlagSet::iterates`).
    pub(crate) fn iterates(&self) -> bool {
        self.any(&|e| matches!(e, Expr::Op(op, _) if op.iterates()))
    }

    /// Whether the rule's answer may change with time alone: it reads `$flagd.timestamp` (or
    /// the whole `$flagd` object, or a path computed at evaluation time, which could name it).
    /// Such an answer cannot be cached by the flag set's version and the context alone.
    pub(crate) fn reads_clock(&self) -> bool {
        self.any(&|e| {
            matches!(
                e,
                Expr::Timestamp | Expr::FlagdProperties | Expr::VarDynamic(_)
            )
        })
    }

    /// Whether the rule buckets by the targeting key: a `fractional` without its own bucketing
    /// expression hashes the flag key with the targeting key, and answers null without one.
    pub(crate) fn buckets_by_targeting_key(&self) -> bool {
        self.any(&|e| matches!(e, Expr::Fractional(f) if f.bucket_by.is_none()))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct VarPath {
    /// Empty means the whole current data (`{"var": ""}`).
    pub(crate) segments: Box<[Box<str>]>,
    pub(crate) default: Option<Expr>,
}

/// The JsonLogic operators, flagd's string operators among them. `sem_ver` and `fractional` have
/// nodes of their own because they are compiled into richer shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    If,
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Not,
    NotNot,
    Or,
    And,
    Lt,
    Le,
    Gt,
    Ge,
    Max,
    Min,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Map,
    Filter,
    Reduce,
    All,
    None,
    Some,
    Merge,
    In,
    Cat,
    Substr,
    Missing,
    MissingSome,
    StartsWith,
    EndsWith,
}

impl Op {
    pub(crate) fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "if" | "?:" => Op::If,
            "==" => Op::Eq,
            "===" => Op::StrictEq,
            "!=" => Op::Ne,
            "!==" => Op::StrictNe,
            "!" => Op::Not,
            "!!" => Op::NotNot,
            "or" => Op::Or,
            "and" => Op::And,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "max" => Op::Max,
            "min" => Op::Min,
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "map" => Op::Map,
            "filter" => Op::Filter,
            "reduce" => Op::Reduce,
            "all" => Op::All,
            "none" => Op::None,
            "some" => Op::Some,
            "merge" => Op::Merge,
            "in" => Op::In,
            "cat" => Op::Cat,
            "substr" => Op::Substr,
            "missing" => Op::Missing,
            "missing_some" => Op::MissingSome,
            "starts_with" => Op::StartsWith,
            "ends_with" => Op::EndsWith,
            _ => return None,
        })
    }

    /// How many arguments the operator takes: at least `.0`, at most `.1`.
    pub(crate) fn arity(self) -> (usize, Option<usize>) {
        match self {
            Op::If | Op::Or | Op::And | Op::Add | Op::Mul => (1, None),
            Op::Max | Op::Min | Op::Merge | Op::Cat | Op::Missing => (0, None),
            Op::Eq | Op::StrictEq | Op::Ne | Op::StrictNe | Op::Div | Op::Mod | Op::In => {
                (2, Some(2))
            }
            Op::Map | Op::Filter | Op::All | Op::None | Op::Some | Op::MissingSome => (2, Some(2)),
            Op::StartsWith | Op::EndsWith => (2, Some(2)),
            Op::Not | Op::NotNot => (1, Some(1)),
            Op::Sub => (1, Some(2)),
            Op::Lt | Op::Le | Op::Gt | Op::Ge => (2, Some(3)),
            Op::Reduce | Op::Substr => (2, Some(3)),
        }
    }

    /// Operators whose second argument is evaluated once per array element, against that element.
    pub(crate) fn iterates(self) -> bool {
        matches!(
            self,
            Op::Map | Op::Filter | Op::Reduce | Op::All | Op::None | Op::Some
        )
    }

    /// flagd's own operators answer null (so the default variant applies) instead of failing when
    /// their arguments are wrong; JsonLogic's are rejected when the flag loads.
    pub(crate) fn is_flagd_custom(self) -> bool {
        matches!(self, Op::StartsWith | Op::EndsWith)
    }
}
