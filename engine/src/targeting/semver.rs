//! flagd's `sem_ver` operator and the lenient version syntax it accepts: a leading `v`, partial
//! versions (`1`, `1.2`), numbers from the context (`1.2`), build metadata (ignored).

use std::cmp::Ordering;

use serde_json::Value;

use super::coerce::to_js_string;
use super::eval::Scope;
use super::expr::Expr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SemVerOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Same major and minor.
    Tilde,
    /// Same major.
    Caret,
}

impl SemVerOp {
    pub(crate) fn parse(s: &str) -> Option<SemVerOp> {
        Some(match s {
            "=" => SemVerOp::Eq,
            "!=" => SemVerOp::Ne,
            "<" => SemVerOp::Lt,
            "<=" => SemVerOp::Le,
            ">" => SemVerOp::Gt,
            ">=" => SemVerOp::Ge,
            "~" => SemVerOp::Tilde,
            "^" => SemVerOp::Caret,
            _ => return None,
        })
    }

    fn holds(self, a: &Version, b: &Version) -> bool {
        match self {
            SemVerOp::Eq => a.cmp(b) == Ordering::Equal,
            SemVerOp::Ne => a.cmp(b) != Ordering::Equal,
            SemVerOp::Lt => a.cmp(b) == Ordering::Less,
            SemVerOp::Le => a.cmp(b) != Ordering::Greater,
            SemVerOp::Gt => a.cmp(b) == Ordering::Greater,
            SemVerOp::Ge => a.cmp(b) != Ordering::Less,
            SemVerOp::Tilde => a.major == b.major && a.minor == b.minor,
            SemVerOp::Caret => a.major == b.major,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Box<[PreId]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PreId {
    Numeric(u64),
    Alpha(Box<str>),
}

impl Ord for PreId {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PreId::Numeric(a), PreId::Numeric(b)) => a.cmp(b),
            (PreId::Numeric(_), PreId::Alpha(_)) => Ordering::Less,
            (PreId::Alpha(_), PreId::Numeric(_)) => Ordering::Greater,
            (PreId::Alpha(a), PreId::Alpha(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for PreId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                // A release ranks above any of its pre-releases.
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Version {
    pub(crate) fn parse(text: &str) -> Option<Version> {
        let bytes = text.as_bytes();
        let mut i = usize::from(matches!(bytes.first(), Some(b'v' | b'V')));
        let mut numbers = [0u64; 3];
        let mut count = 0;
        loop {
            let start = i;
            let mut n: u64 = 0;
            while let Some(&b) = bytes.get(i) {
                if !b.is_ascii_digit() {
                    break;
                }
                n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                i += 1;
            }
            if i == start || count == 3 {
                return None;
            }
            numbers[count] = n;
            count += 1;
            match bytes.get(i) {
                Some(b'.') => i += 1,
                _ => break,
            }
        }
        let rest = &text[i..];
        if rest.is_empty() {
            return Some(Version {
                major: numbers[0],
                minor: numbers[1],
                patch: numbers[2],
                pre: Box::default(),
            });
        }
        Self::parse_tail(numbers, rest)
    }

    fn parse_tail(numbers: [u64; 3], text: &str) -> Option<Version> {
        let text = match text.split_once('+') {
            Some((version, build)) => {
                if build.is_empty() || !build.split('.').all(is_identifier) {
                    return None;
                }
                version
            }
            None => text,
        };
        let pre = match text.strip_prefix('-') {
            None if text.is_empty() => None,
            None => return None,
            Some(pre) => Some(pre),
        };
        let pre = match pre {
            None => Box::default(),
            Some(pre) => pre
                .split('.')
                .map(|id| {
                    if !is_identifier(id) {
                        None
                    } else if id.bytes().all(|b| b.is_ascii_digit()) {
                        id.parse().ok().map(PreId::Numeric)
                    } else {
                        Some(PreId::Alpha(id.into()))
                    }
                })
                .collect::<Option<Box<[PreId]>>>()?,
        };
        Some(Version {
            major: numbers[0],
            minor: numbers[1],
            patch: numbers[2],
            pre,
        })
    }

    /// A version from a context value: strings as written, numbers as their decimal form (`1.2`).
    pub(crate) fn from_value(v: &Value) -> Option<Version> {
        match v {
            Value::String(s) => Version::parse(s),
            Value::Number(_) => Version::parse(&to_js_string(v)),
            _ => None,
        }
    }
}

fn is_identifier(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// One side of a comparison: parsed when the flag loads if it is a constant.
#[derive(Debug, Clone)]
pub(crate) enum Operand {
    Fixed(Version),
    Computed(Expr),
}

#[derive(Debug, Clone)]
pub(crate) enum OperatorSpec {
    Fixed(SemVerOp),
    Computed(Expr),
}

#[derive(Debug, Clone)]
pub(crate) struct SemVerRule {
    pub(crate) left: Operand,
    pub(crate) op: OperatorSpec,
    pub(crate) right: Operand,
}

impl SemVerRule {
    /// The rules computing its operands and operator (see [`Expr::any`]).
    pub(crate) fn children(&self) -> impl Iterator<Item = &Expr> {
        fn operand(o: &Operand) -> Option<&Expr> {
            match o {
                Operand::Computed(e) => Some(e),
                Operand::Fixed(_) => None,
            }
        }
        let op = match &self.op {
            OperatorSpec::Computed(e) => Some(e),
            OperatorSpec::Fixed(_) => None,
        };
        [operand(&self.left), op, operand(&self.right)]
            .into_iter()
            .flatten()
    }

    /// True or false, or `None` (JsonLogic null) when a version or the operator is invalid.
    pub(crate) fn eval(&self, scope: &Scope<'_>) -> Option<bool> {
        let op = match &self.op {
            OperatorSpec::Fixed(op) => *op,
            OperatorSpec::Computed(e) => SemVerOp::parse(e.eval(scope).as_str()?)?,
        };
        let left = operand(&self.left, scope)?;
        let right = operand(&self.right, scope)?;
        Some(op.holds(&left, &right))
    }
}

fn operand<'r>(o: &'r Operand, scope: &Scope<'_>) -> Option<std::borrow::Cow<'r, Version>> {
    match o {
        Operand::Fixed(v) => Some(std::borrow::Cow::Borrowed(v)),
        Operand::Computed(e) => {
            let value = e.eval(scope);
            // Parsing reads the whole version text.
            if !scope.meter.work(super::budget::work_size(&value)) {
                return None;
            }
            Version::from_value(&value).map(std::borrow::Cow::Owned)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        match Version::parse(s) {
            Some(v) => v,
            None => panic!("{s} should parse"),
        }
    }

    #[test]
    fn orders_by_semver_precedence() {
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "2.0.0",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn accepts_flagd_leniencies_and_rejects_garbage() {
        assert_eq!(v("v1.2.3"), v("1.2.3"));
        assert_eq!(v("V1"), v("1.0.0"));
        assert_eq!(v("1.2"), v("1.2.0"));
        assert_eq!(v("1.0.0+build.5"), v("1.0.0"));
        for bad in [
            "",
            "2.0.0.0",
            "not-a-version",
            "1..2",
            "1.0.0-",
            "1.0.0+",
            "1.x",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad:?} should not parse");
        }
    }
}
