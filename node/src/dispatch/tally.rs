//! Evaluation counters for answers of many flags, recorded once per call rather than once per
//! flag: a `ResolveAll` of a hundred flags paid a hundred metric-registry lookups (a hash of the
//! labels and a map probe each) per request, a batch of thousands more.

use std::time::Instant;

use bunting_actors::ResolvedFlag;
use bunting_engine::{ErrorCode, Reason};

/// Every reason and error code, in the order they are recorded: the tally is a pair of arrays
/// indexed by them, so counting a flag is an increment, not a map probe.
const REASONS: [Reason; 5] = [
    Reason::Static,
    Reason::TargetingMatch,
    Reason::Default,
    Reason::Disabled,
    Reason::Error,
];
const CODES: [ErrorCode; 4] = [
    ErrorCode::FlagNotFound,
    ErrorCode::TypeMismatch,
    ErrorCode::ParseError,
    ErrorCode::General,
];

/// Counts per reason and error code.
#[derive(Debug, Default)]
pub(super) struct Tally {
    reasons: [u64; REASONS.len()],
    errors: [u64; CODES.len()],
}

impl Tally {
    /// Counts `resolved`'s reason and its error code (bulk evaluation's counters).
    pub(super) fn count(&mut self, resolved: &ResolvedFlag) {
        self.count_reason(resolved.reason);
        if let Some(error) = &resolved.error {
            self.errors[code_index(error.code)] += 1;
        }
    }

    /// Counts a reason only (resolve-all's counters, which never counted errors per flag: a
    /// failing flag is left out of its answer, as flagd does).
    pub(super) fn count_reason(&mut self, reason: Reason) {
        self.reasons[reason_index(reason)] += 1;
    }

    /// `bunting_evaluation_seconds` since `started`, then the counts.
    pub(super) fn record(self, service: &'static str, started: Instant) {
        metrics::histogram!("bunting_evaluation_seconds", "service" => service)
            .record(started.elapsed().as_secs_f64());
        self.record_counts(service);
    }

    /// `bunting_evaluations_total` per reason and `bunting_evaluation_errors_total` per code.
    pub(super) fn record_counts(self, service: &'static str) {
        for (reason, n) in REASONS.iter().zip(self.reasons).filter(|(_, n)| *n > 0) {
            metrics::counter!("bunting_evaluations_total", "service" => service, "reason" => reason.as_str())
                .increment(n);
        }
        for (code, n) in CODES.iter().zip(self.errors).filter(|(_, n)| *n > 0) {
            metrics::counter!("bunting_evaluation_errors_total", "service" => service, "code" => code.as_str())
                .increment(n);
        }
    }
}

fn reason_index(reason: Reason) -> usize {
    match reason {
        Reason::Static => 0,
        Reason::TargetingMatch => 1,
        Reason::Default => 2,
        Reason::Disabled => 3,
        Reason::Error => 4,
    }
}

fn code_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::FlagNotFound => 0,
        ErrorCode::TypeMismatch => 1,
        ErrorCode::ParseError => 2,
        ErrorCode::General => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index functions and the tables agree, so each count is recorded under its own label.
    #[test]
    fn indexes_name_their_own_table_entries() {
        for (i, reason) in REASONS.iter().enumerate() {
            assert_eq!(reason_index(*reason), i, "{reason:?}");
        }
        for (i, code) in CODES.iter().enumerate() {
            assert_eq!(code_index(*code), i, "{code:?}");
        }
    }
}
