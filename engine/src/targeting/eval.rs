//! Evaluating a compiled rule against a context. Values borrow from the context and the rule
//! wherever they can (`Cow::Borrowed`), so a comparison of a context field with a constant
//! allocates nothing.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::budget::{Meter, work_size};
use super::coerce::{
    compare, loose_equals, number_value, parse_float, strict_equals, to_js_string, to_number,
    truthy,
};
use super::expr::{Expr, Op, VarPath};

/// What a rule can see while it runs: the caller's context, the data of the current `map` /
/// `filter` / `reduce` element, and the facts flagd injects as `$flagd.*`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) root: &'a Map<String, Value>,
    /// `None` at the top level; inside an iterating operator, the current element.
    pub(crate) data: Option<&'a Value>,
    pub(crate) flag_key: &'a str,
    /// Evaluation time in Unix seconds, fixed by the caller, or read from the clock when needed.
    pub(crate) now: Option<u64>,
    /// This evaluation's budget (see `budget.rs`).
    pub(crate) meter: &'a Meter,
}

impl<'a> Scope<'a> {
    pub(crate) fn targeting_key(&self) -> Option<&'a str> {
        self.root.get("targetingKey").and_then(Value::as_str)
    }

    fn with_data<'b>(&self, data: &'b Value) -> Scope<'b>
    where
        'a: 'b,
    {
        Scope {
            root: self.root,
            data: Some(data),
            flag_key: self.flag_key,
            now: self.now,
            meter: self.meter,
        }
    }

    fn timestamp(&self) -> u64 {
        self.now.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
    }

    fn charge_root(&self) -> bool {
        self.meter.charge_object(0, 0)
            && self
                .root
                .iter()
                .all(|(k, v)| self.meter.charge_entry(k.len()) && self.meter.charge_copy(v))
    }

    fn lookup(&self, segments: &[Box<str>]) -> Option<Cow<'a, Value>> {
        let Some((first, rest)) = segments.split_first() else {
            return Some(match self.data {
                Some(data) => Cow::Borrowed(data),
                // The whole context as a value: a copy, so it is charged like any built value.
                None if self.charge_root() => Cow::Owned(Value::Object(self.root.clone())),
                None => NULL,
            });
        };
        let mut current = match self.data {
            Some(data) => child(data, first)?,
            None => self.root.get(&**first)?,
        };
        for segment in rest {
            current = child(current, segment)?;
        }
        Some(Cow::Borrowed(current))
    }
}

fn child<'v>(v: &'v Value, segment: &str) -> Option<&'v Value> {
    match v {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

const NULL: Cow<'static, Value> = Cow::Owned(Value::Null);

fn boolean<'a>(b: bool) -> Cow<'a, Value> {
    Cow::Owned(Value::Bool(b))
}

fn number<'a>(f: f64) -> Cow<'a, Value> {
    Cow::Owned(number_value(f))
}

impl Expr {
    pub(crate) fn eval<'a>(&'a self, s: &Scope<'a>) -> Cow<'a, Value> {
        if !s.meter.step() {
            return NULL;
        }
        match self {
            Expr::Const(v) => Cow::Borrowed(v),
            Expr::Var(var) => eval_var(var, s),
            Expr::VarDynamic(args) => {
                let path = args[0].eval(s);
                let found = match &*path {
                    Value::Null => s.lookup(&[]),
                    Value::String(p) if p.is_empty() => s.lookup(&[]),
                    other => {
                        let text = to_js_string(other);
                        match split_path(&text, s.meter) {
                            Some(segments) => s.lookup(&segments),
                            None => return NULL,
                        }
                    }
                };
                match (found, args.get(1)) {
                    (Some(v), _) => v,
                    (None, Some(default)) => default.eval(s),
                    (None, None) => NULL,
                }
            }
            Expr::FlagKey if s.meter.charge(s.flag_key.len() as u64) => {
                Cow::Owned(Value::String(s.flag_key.to_owned()))
            }
            Expr::FlagKey => NULL,
            Expr::Timestamp => Cow::Owned(Value::from(s.timestamp())),
            Expr::FlagdProperties => {
                if !s
                    .meter
                    .charge_object(2, "flagKey".len() + "timestamp".len() + s.flag_key.len())
                {
                    return NULL;
                }
                let mut props = Map::new();
                props.insert("flagKey".into(), Value::String(s.flag_key.to_owned()));
                props.insert("timestamp".into(), Value::from(s.timestamp()));
                Cow::Owned(Value::Object(props))
            }
            Expr::Array(items) => {
                if !s.meter.charge_slots(items.len()) {
                    return NULL;
                }
                Cow::Owned(Value::Array(
                    items.iter().map(|e| own(e.eval(s), s.meter)).collect(),
                ))
            }
            Expr::Op(op, args) => eval_op(*op, args, s),
            Expr::InList(needle, list) => {
                let needle = needle.eval(s);
                boolean(in_list(&needle, list, s.meter))
            }
            Expr::SemVer(rule) => rule.eval(s).map_or(NULL, boolean),
            Expr::Fractional(f) => f.eval(s),
            Expr::Shared(shared) => shared.eval(s),
        }
    }
}

impl Expr {
    /// The truthiness of this rule, without building its value: what `if` conditions and the
    /// operands of `and`/`or`/`!` need.
    ///
    /// No step of its own: every node handled here evaluates at least one child through `eval`
    /// or `test` (their arities are at least one, and a `sem_ver` with no computed operand was
    /// folded), whose step pays for it, and its own work is linear in its arity. So the nodes
    /// tested are bounded by the steps taken, and the hot path pays one step per leaf only.
    pub(crate) fn test<'a>(&'a self, s: &Scope<'a>) -> bool {
        let arg = |args: &'a [Expr], i: usize| args.get(i).map_or(NULL, |e| e.eval(s));
        match self {
            Expr::Op(op, args) => match op {
                Op::And => args.iter().all(|e| e.test(s)),
                Op::Or => args.iter().any(|e| e.test(s)),
                Op::Not => !args.first().is_some_and(|e| e.test(s)),
                Op::NotNot => args.first().is_some_and(|e| e.test(s)),
                Op::StartsWith | Op::EndsWith => {
                    affix_matches(*op, &arg(args, 0), &arg(args, 1), s.meter).unwrap_or(false)
                }
                Op::Lt | Op::Le | Op::Gt | Op::Ge if args.len() == 2 => {
                    let (a, b) = (arg(args, 0), arg(args, 1));
                    coercible(&a, &b, s.meter) && ordered(*op, &a, &b, s.meter)
                }
                _ => truthy(&self.eval(s)),
            },
            Expr::InList(needle, list) => {
                let needle = needle.eval(s);
                in_list(&needle, list, s.meter)
            }
            Expr::SemVer(rule) => rule.eval(s).unwrap_or(false),
            _ => truthy(&self.eval(s)),
        }
    }
}

/// `<`, `<=`, `>`, `>=` between two values, with JavaScript's comparison rules.
#[inline]
fn ordered(op: Op, a: &Value, b: &Value, meter: &Meter) -> bool {
    // Only two strings compare byte by byte; anything else compares as numbers (an array's
    // string form was paid for by `coercible`).
    let work = match (a, b) {
        (Value::String(x), Value::String(y)) => x.len().min(y.len()),
        _ => 0,
    };
    meter.work(work)
        && compare(a, b).is_some_and(|o| match op {
            Op::Lt => o.is_lt(),
            Op::Le => o.is_le(),
            Op::Gt => o.is_gt(),
            _ => o.is_ge(),
        })
}

/// `starts_with` / `ends_with`; `None` (flagd's null) unless both sides are strings.
fn affix_matches(op: Op, text: &Value, affix: &Value, meter: &Meter) -> Option<bool> {
    match (text, affix) {
        (Value::String(text), Value::String(affix)) => Some(
            meter.work(affix.len().min(text.len()))
                && if op == Op::StartsWith {
                    text.starts_with(affix.as_str())
                } else {
                    text.ends_with(affix.as_str())
                },
        ),
        _ => None,
    }
}

/// `{"in": [x, [constants...]]}`: strict equality against each listed value.
/// Paid for like any scan; a long needle also pays for the bytes each comparison may read.
fn in_list(needle: &Value, list: &[Value], meter: &Meter) -> bool {
    let size = work_size(needle);
    meter.scan(list.len())
        && (size <= 64 || meter.work(size.saturating_mul(list.len())))
        && list.iter().any(|item| strict_equals(needle, item))
}

/// `==` and friends read at most the shorter operand, and only strings, arrays and objects are
/// read beyond their slot.
#[inline]
fn equality_work(a: &Value, b: &Value, meter: &Meter) -> bool {
    let work = match (a, b) {
        (Value::String(x), Value::String(y)) => x.len().min(y.len()),
        (Value::Array(_) | Value::Object(_), Value::Array(_) | Value::Object(_)) => {
            work_size(a).min(work_size(b))
        }
        _ => 0,
    };
    meter.work(work)
}

fn eval_var<'a>(var: &'a VarPath, s: &Scope<'a>) -> Cow<'a, Value> {
    match s.lookup(&var.segments) {
        Some(v) => v,
        None => match &var.default {
            Some(default) => default.eval(s),
            None => NULL,
        },
    }
}

fn eval_op<'a>(op: Op, args: &'a [Expr], s: &Scope<'a>) -> Cow<'a, Value> {
    let arg = |i: usize| args.get(i).map_or(NULL, |e| e.eval(s));
    match op {
        Op::If => {
            let mut i = 0;
            while i + 1 < args.len() {
                if args[i].test(s) {
                    return args[i + 1].eval(s);
                }
                i += 2;
            }
            arg(i)
        }
        Op::Eq | Op::Ne => {
            let (a, b) = (arg(0), arg(1));
            if !(coercible(&a, &b, s.meter) && equality_work(&a, &b, s.meter)) {
                return NULL;
            }
            boolean(loose_equals(&a, &b) == (op == Op::Eq))
        }
        Op::StrictEq | Op::StrictNe => {
            let (a, b) = (arg(0), arg(1));
            if !equality_work(&a, &b, s.meter) {
                return NULL;
            }
            boolean(strict_equals(&a, &b) == (op == Op::StrictEq))
        }
        Op::Not => boolean(!truthy(&arg(0))),
        Op::NotNot => boolean(truthy(&arg(0))),
        Op::Or | Op::And => {
            let want = op == Op::Or;
            let mut last = NULL;
            for e in args {
                last = e.eval(s);
                if truthy(&last) == want {
                    return last;
                }
            }
            last
        }
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let (a, b) = (arg(0), arg(1));
            if !coercible(&a, &b, s.meter) || !ordered(op, &a, &b, s.meter) {
                return boolean(false);
            }
            // The three-argument "between" form: a < b < c.
            boolean(args.len() < 3 || ordered(op, &b, &arg(2), s.meter))
        }
        Op::In => {
            let (needle, haystack) = (arg(0), arg(1));
            boolean(match &*haystack {
                Value::String(text) => {
                    coercible(&needle, &Value::Null, s.meter)
                        && s.meter.work(text.len())
                        && text.contains(&*to_js_string(&needle))
                }
                // A linear scan, paid for by length, so a loop over `in` a long context array
                // pays for every comparison.
                Value::Array(items) => in_list(&needle, items, s.meter),
                _ => false,
            })
        }
        // flagd answers null, not false, on non-strings, so the default variant applies.
        Op::StartsWith | Op::EndsWith => {
            affix_matches(op, &arg(0), &arg(1), s.meter).map_or(NULL, boolean)
        }
        _ => eval_op_cold(op, args, s),
    }
}

#[cold]
#[inline(never)]
fn eval_op_cold<'a>(op: Op, args: &'a [Expr], s: &Scope<'a>) -> Cow<'a, Value> {
    let arg = |i: usize| args.get(i).map_or(NULL, |e| e.eval(s));
    match op {
        Op::Max | Op::Min => {
            let mut best: Option<f64> = None;
            for e in args {
                let n = to_number(&e.eval(s));
                if n.is_nan() {
                    return NULL;
                }
                best = Some(match best {
                    None => n,
                    Some(b) if op == Op::Max => b.max(n),
                    Some(b) => b.min(n),
                });
            }
            best.map_or(NULL, number)
        }
        Op::Add => number(args.iter().map(|e| parse_float(&e.eval(s))).sum()),
        Op::Mul => number(args.iter().map(|e| parse_float(&e.eval(s))).product()),
        Op::Sub => match args.len() {
            1 => number(-to_number(&arg(0))),
            _ => number(to_number(&arg(0)) - to_number(&arg(1))),
        },
        Op::Div => number(to_number(&arg(0)) / to_number(&arg(1))),
        Op::Mod => number(to_number(&arg(0)) % to_number(&arg(1))),
        Op::Map | Op::Filter | Op::All | Op::None | Op::Some => {
            let input = arg(0);
            let items: &[Value] = input.as_array().map_or(&[], Vec::as_slice);
            let body = &args[1];
            // Every iteration evaluates the body, so it takes at least one step; once the budget
            // is exhausted the body answers null at once and `live` ends the loop.
            let live = |_: &&Value| !s.meter.is_exhausted();
            let test = |item: &Value| truthy(&body.eval(&s.with_data(item)));
            match op {
                // Both allocate their result once, at the input's length, which is what they were
                // charged (a growing vector would allocate up to twice that).
                Op::Map => {
                    if !s.meter.charge_slots(items.len()) {
                        return NULL;
                    }
                    let mut out = Vec::with_capacity(items.len());
                    for item in items.iter().take_while(live) {
                        out.push(own(body.eval(&s.with_data(item)), s.meter));
                    }
                    Cow::Owned(Value::Array(out))
                }
                Op::Filter => {
                    if !s.meter.charge_slots(items.len()) {
                        return NULL;
                    }
                    let mut out = Vec::with_capacity(items.len());
                    for item in items.iter().take_while(live) {
                        if test(item) && s.meter.charge_copy(item) {
                            out.push(item.clone());
                        }
                    }
                    Cow::Owned(Value::Array(out))
                }
                Op::All => boolean(!items.is_empty() && items.iter().take_while(live).all(test)),
                Op::None => boolean(!items.iter().take_while(live).any(test)),
                _ => boolean(items.iter().take_while(live).any(test)),
            }
        }
        Op::Reduce => {
            let input = arg(0);
            let items: &[Value] = input.as_array().map_or(&[], Vec::as_slice);
            let mut accumulator = own(arg(2), s.meter);
            for item in items {
                // The element record {"current", "accumulator"}: two entries and a copy of the
                // element; the accumulator moves in.
                if !(s
                    .meter
                    .charge_object(2, "current".len() + "accumulator".len())
                    && s.meter.charge_copy(item))
                {
                    return NULL;
                }
                let mut data = Map::new();
                data.insert("current".into(), item.clone());
                data.insert("accumulator".into(), accumulator);
                let data = Value::Object(data);
                accumulator = own(args[1].eval(&s.with_data(&data)), s.meter);
            }
            Cow::Owned(accumulator)
        }
        Op::Merge => {
            let values: Vec<Cow<'_, Value>> = args.iter().map(|e| e.eval(s)).collect();
            let total = values
                .iter()
                .map(|v| v.as_array().map_or(1, Vec::len))
                .fold(0usize, usize::saturating_add);
            // The result's slots up front (allocated once, at their final number), and the
            // arguments' vector; copies of borrowed elements as they are made.
            if !s.meter.charge_slots(total.saturating_add(args.len())) {
                return NULL;
            }
            let mut out = Vec::with_capacity(total);
            for v in values {
                match v {
                    Cow::Owned(Value::Array(items)) => out.extend(items),
                    Cow::Borrowed(Value::Array(items)) => {
                        for item in items {
                            if !s.meter.charge_copy(item) {
                                return NULL;
                            }
                            out.push(item.clone());
                        }
                    }
                    other => out.push(own(other, s.meter)),
                }
            }
            Cow::Owned(Value::Array(out))
        }
        Op::Cat => {
            let values: Vec<Cow<'_, Value>> = args.iter().map(|e| e.eval(s)).collect();
            if !values.iter().all(|v| coercible(v, &Value::Null, s.meter)) {
                return NULL;
            }
            let pieces: Vec<Cow<'_, str>> = values.iter().map(|v| to_js_string(v)).collect();
            let total = pieces
                .iter()
                .map(|p| p.len())
                .fold(0usize, usize::saturating_add);
            // Charged before the string is allocated, and allocated once at its final size:
            // `cat(accumulator, accumulator)` in a `reduce` doubles every round and must stop
            // before it allocates, not after. The two vectors above count as a slot per argument.
            if !(s.meter.charge(total as u64) && s.meter.charge_slots(args.len())) {
                return NULL;
            }
            let mut out = String::with_capacity(total);
            for piece in &pieces {
                out.push_str(piece);
            }
            Cow::Owned(Value::String(out))
        }
        Op::Substr => {
            let source = arg(0);
            if !coercible(&source, &Value::Null, s.meter) {
                return NULL;
            }
            let text = to_js_string(&source);
            // Counting characters reads the whole text.
            if !s.meter.work(text.len()) {
                return NULL;
            }
            #[allow(clippy::cast_precision_loss)]
            let len = text.chars().count() as f64;
            let start = to_number(&arg(1));
            let start = if start.is_nan() { 0.0 } else { start.trunc() };
            let from = if start < 0.0 {
                (len + start).max(0.0)
            } else {
                start.min(len)
            };
            let to = match args.get(2) {
                None => len,
                Some(e) => {
                    let count = to_number(&e.eval(s));
                    let count = if count.is_nan() { 0.0 } else { count.trunc() };
                    // A negative length drops that many characters from the end.
                    if count < 0.0 {
                        (len + count).max(from)
                    } else {
                        (from + count).min(len)
                    }
                }
            };
            // Both bounds are clamped to [0, len] above, so the casts are exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (from, to) = (from as usize, (to as usize).max(from as usize));
            // Character positions to byte offsets, so the slice is copied once and nothing else
            // is allocated.
            let byte = |chars: usize| {
                text.char_indices()
                    .nth(chars)
                    .map_or(text.len(), |(i, _)| i)
            };
            let (start, end) = (byte(from), byte(to));
            if !s.meter.charge((end - start) as u64) {
                return NULL;
            }
            Cow::Owned(Value::String(text[start..end].to_owned()))
        }
        Op::Missing => {
            let first = arg(0);
            let count = first.as_array().map_or(args.len(), Vec::len);
            if !(s.meter.scan(count) && s.meter.charge_slots(count)) {
                return NULL;
            }
            let keys: Vec<Cow<'_, Value>> = match &*first {
                Value::Array(items) => items.iter().map(Cow::Borrowed).collect(),
                _ => args.iter().map(|e| e.eval(s)).collect(),
            };
            Cow::Owned(Value::Array(missing_keys(s, keys.iter().map(|k| &**k))))
        }
        Op::MissingSome => {
            let need = to_number(&arg(0));
            let keys = arg(1);
            let keys: &[Value] = keys.as_array().map_or(&[], Vec::as_slice);
            if !(s.meter.scan(keys.len()) && s.meter.charge_slots(keys.len())) {
                return NULL;
            }
            let missing = missing_keys(s, keys.iter());
            #[allow(clippy::cast_precision_loss)]
            let present = (keys.len() - missing.len()) as f64;
            if present >= need {
                Cow::Owned(Value::Array(Vec::new()))
            } else {
                Cow::Owned(Value::Array(missing))
            }
        }
        _ => NULL,
    }
}

/// The keys (JsonLogic `missing`) whose values are absent, null or empty strings.
fn missing_keys<'k>(s: &Scope<'_>, keys: impl Iterator<Item = &'k Value>) -> Vec<Value> {
    keys.filter(|key| {
        let path = to_js_string(key);
        let segments: Vec<Box<str>> = if path.is_empty() {
            Vec::new()
        } else {
            match split_path(&path, s.meter) {
                Some(segments) => segments,
                None => return false,
            }
        };
        match s.lookup(&segments).as_deref() {
            None | Some(Value::Null) => true,
            Some(Value::String(v)) => v.is_empty(),
            Some(_) => false,
        }
    })
    .filter(|key| s.meter.charge_copy(key))
    .cloned()
    .collect()
}

/// A value into an owned one. A borrowed value (from the context or the rule) is copied, and the
/// copy is charged; an owned one was charged when it was built. Exhausted: null.
fn own(v: Cow<'_, Value>, meter: &Meter) -> Value {
    match v {
        Cow::Owned(v) => v,
        Cow::Borrowed(v) if meter.charge_copy(v) => v.clone(),
        Cow::Borrowed(_) => Value::Null,
    }
}

/// A path computed at evaluation time, split at its dots; the segments are charged (their bytes
/// and one boxed slice each). `None` when the budget is exhausted.
fn split_path(text: &str, meter: &Meter) -> Option<Vec<Box<str>>> {
    let segments = text.bytes().filter(|&b| b == b'.').count() + 1;
    meter
        .charge((text.len() as u64).saturating_add((segments as u64).saturating_mul(16)))
        .then(|| text.split('.').map(Box::from).collect())
}

/// Comparing an array with a primitive (`==`, `<`, `in` a string) goes through the array's string
/// form, a transient copy as large as the array: charged, so a loop of such comparisons against a
/// large context array cannot churn memory past the budget. Primitives pass for free.
#[inline]
fn coercible(a: &Value, b: &Value, meter: &Meter) -> bool {
    (!a.is_array() || meter.coerce(a)) && (!b.is_array() || meter.coerce(b))
}
