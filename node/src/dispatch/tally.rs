//! Evaluation counters for answers of many flags, recorded once per call rather than once per
//! flag: a `ResolveAll` of a hundred flags paid a hundred metric-registry lookups (a hash of the
//! labels and a map probe each) per request, a batch of thousands more.

use std::collections::BTreeMap;
use std::time::Instant;

use bunting_actors::ResolvedFlag;

/// Counts per reason and error code.
#[derive(Debug, Default)]
pub(super) struct Tally {
    reasons: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
}

impl Tally {
    /// Counts `resolved`'s reason and its error code (bulk evaluation's counters).
    pub(super) fn count(&mut self, resolved: &ResolvedFlag) {
        self.count_reason(resolved);
        if let Some(error) = &resolved.error {
            *self.errors.entry(error.code.as_str()).or_default() += 1;
        }
    }

    /// Counts `resolved`'s reason only (resolve-all's counters, which never counted errors per
    /// flag: a failing flag is left out of its answer, as flagd does).
    pub(super) fn count_reason(&mut self, resolved: &ResolvedFlag) {
        *self.reasons.entry(resolved.reason.as_str()).or_default() += 1;
    }

    /// `bunting_evaluation_seconds` since `started`, then the counts.
    pub(super) fn record(self, service: &'static str, started: Instant) {
        metrics::histogram!("bunting_evaluation_seconds", "service" => service)
            .record(started.elapsed().as_secs_f64());
        self.record_counts(service);
    }

    /// `bunting_evaluations_total` per reason and `bunting_evaluation_errors_total` per code.
    pub(super) fn record_counts(self, service: &'static str) {
        for (reason, n) in self.reasons {
            metrics::counter!("bunting_evaluations_total", "service" => service, "reason" => reason)
                .increment(n);
        }
        for (code, n) in self.errors {
            metrics::counter!("bunting_evaluation_errors_total", "service" => service, "code" => code)
                .increment(n);
        }
    }
}
