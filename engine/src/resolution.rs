//! What a resolution returns: value, variant, reason, error code and metadata, as flagd assigns them.

use std::fmt;

use crate::flag::Metadata;
use crate::targeting::{BudgetExceeded, BudgetKind};

/// Why a flag resolved the way it did. The names are flagd's (and OpenFeature's) wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The flag has no targeting: the default variant.
    Static,
    /// Targeting chose a variant.
    TargetingMatch,
    /// Targeting ran and returned null, so the default variant (or the caller's default) applies.
    Default,
    /// The flag is disabled: the caller's default applies.
    Disabled,
    /// Resolution failed; see the error code. The caller's default applies.
    Error,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }

    /// The inverse of [`Reason::as_str`], for answers that crossed a wire (a forwarded
    /// evaluation comes back from its shard's owner as text).
    pub fn from_wire(text: &str) -> Option<Reason> {
        [
            Reason::Static,
            Reason::TargetingMatch,
            Reason::Default,
            Reason::Disabled,
            Reason::Error,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// flagd's error codes. On the wire they become gRPC status codes (see `flagd-notes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    FlagNotFound,
    TypeMismatch,
    ParseError,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::General => "GENERAL",
        }
    }

    /// The inverse of [`ErrorCode::as_str`].
    pub fn from_wire(text: &str) -> Option<ErrorCode> {
        [
            ErrorCode::FlagNotFound,
            ErrorCode::TypeMismatch,
            ErrorCode::ParseError,
            ErrorCode::General,
        ]
        .into_iter()
        .find(|c| c.as_str() == text)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed resolution: the code flagd would send and a message naming the flag and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ResolveError {
    pub code: ErrorCode,
    pub message: String,
    /// `Some` when the flag's evaluation was stopped by the set's [`Budget`](crate::Budget) (the
    /// code is then `General`): which of its counters ran out, so a node can count these per
    /// flag; the limit is the set's (`FlagSet::budget`) and the message names it. Only the kind,
    /// one byte that fits beside `code`: every resolution carries an `Option<ResolveError>`, and
    /// this keeps it (and so every resolution) the size it was.
    pub exceeded: Option<BudgetKind>,
}

impl ResolveError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ResolveError {
        ResolveError {
            code,
            message: message.into(),
            exceeded: None,
        }
    }

    /// flagd has no code for "too expensive", so a budget stop is GENERAL, like every other
    /// failure of targeting at run time.
    pub(crate) fn over_budget(flag_key: &str, exceeded: BudgetExceeded) -> ResolveError {
        ResolveError {
            code: ErrorCode::General,
            message: format!(
                "flag {:?}: evaluation exceeded its {exceeded}",
                crate::limits::shown(flag_key)
            ),
            exceeded: Some(exceeded.kind),
        }
    }
}

/// The outcome of resolving one flag for one context.
///
/// `value` is `None` whenever the caller's own default applies: the flag is disabled, it has no
/// default variant and targeting did not choose one, or resolution failed (`error` says why).
/// Everything borrows from the flag set, so a resolution allocates nothing unless it fails.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution<'s, V> {
    pub value: Option<V>,
    pub variant: Option<&'s str>,
    pub reason: Reason,
    pub error: Option<ResolveError>,
    /// Flag-set metadata overlaid with the flag's own (the flag's keys win).
    pub metadata: &'s Metadata,
}

impl<'s, V> Resolution<'s, V> {
    pub(crate) fn failed(error: ResolveError, metadata: &'s Metadata) -> Resolution<'s, V> {
        Resolution {
            value: None,
            variant: None,
            reason: Reason::Error,
            error: Some(error),
            metadata,
        }
    }

    /// The resolved value, or `default` when the caller's default applies.
    pub fn value_or(self, default: V) -> V {
        self.value.unwrap_or(default)
    }

    /// The same resolution with its value transformed (typically copied out of the flag set).
    pub fn map_value<W>(self, f: impl FnOnce(V) -> W) -> Resolution<'s, W> {
        Resolution {
            value: self.value.map(f),
            variant: self.variant,
            reason: self.reason,
            error: self.error,
            metadata: self.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_kind_costs_a_resolution_nothing() {
        // `exceeded` fits in the padding beside `code`: resolutions stay as small as before.
        assert_eq!(
            std::mem::size_of::<Option<ResolveError>>(),
            std::mem::size_of::<String>() + 8
        );
    }

    #[test]
    fn wire_names_round_trip() {
        for r in [
            Reason::Static,
            Reason::TargetingMatch,
            Reason::Default,
            Reason::Disabled,
            Reason::Error,
        ] {
            assert_eq!(Reason::from_wire(r.as_str()), Some(r));
        }
        for c in [
            ErrorCode::FlagNotFound,
            ErrorCode::TypeMismatch,
            ErrorCode::ParseError,
            ErrorCode::General,
        ] {
            assert_eq!(ErrorCode::from_wire(c.as_str()), Some(c));
        }
        assert_eq!(Reason::from_wire("static"), None);
        assert_eq!(ErrorCode::from_wire(""), None);
    }
}
