//! A circuit breaker: after `failure_threshold` failures in a row the dependency is *open* and
//! calls are refused without touching the network; after `open_for` one probe is let through
//! (*half-open*), and its outcome closes the breaker or opens it again. A dependency that is down
//! then costs the node nothing per call instead of a timeout per call.
//!
//! One breaker guards one dependency: the shared tier (Redis) and the event store each have their
//! own, named by [`Guarded`] in their metrics (`bunting_shared_tier_*`, `bunting_event_store_*`)
//! and log lines.

use crate::secret_url::RedactedUrl;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The breaker's state; the number is what the `*_breaker_state` gauge shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// What a breaker guards: the names of its metrics and what its log lines say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guarded {
    /// In log lines: "shared tier", "event store".
    pub what: &'static str,
    /// `<prefix>_breaker_state`, `_calls_total`, `_rejections_total`, `_failures_total`.
    pub metric_prefix: &'static str,
    /// What the node does while the breaker is open, for the line that says it opened.
    pub while_open: &'static str,
}

/// The Redis shared tier's breaker (stores/src/shared_tier/redis_tier.rs).
pub const SHARED_TIER: Guarded = Guarded {
    what: "shared tier",
    metric_prefix: "bunting_shared_tier",
    while_open: "evaluation continues from memory",
};

/// The experiment event store's breaker (stores/src/guarded_events.rs).
pub const EVENT_STORE: Guarded = Guarded {
    what: "event store",
    metric_prefix: "bunting_event_store",
    while_open: "shards keep their cumulative totals and write them once it answers again",
};

/// The metric names of one [`Guarded`], built once so a call only clones them.
#[derive(Debug)]
struct MetricNames {
    state: String,
    calls: String,
    rejections: String,
    failures: String,
}

impl MetricNames {
    fn of(guarded: &Guarded) -> MetricNames {
        let name = |suffix: &str| format!("{}_{suffix}", guarded.metric_prefix);
        MetricNames {
            state: name("breaker_state"),
            calls: name("calls_total"),
            rejections: name("rejections_total"),
            failures: name("failures_total"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one probe is let through.
    pub open_for: Duration,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Instant,
    /// Half-open admits a single probe; the others are refused until it reports.
    probing: bool,
}

/// The breaker of one dependency. Its metrics carry the dependency's `endpoint` label, so two in
/// one process (tests) are told apart.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    guarded: Guarded,
    names: MetricNames,
    /// Redacted by construction: the label is on `/metrics`, which anyone may scrape.
    endpoint: RedactedUrl,
    inner: Mutex<Inner>,
}

/// Admission for one call: report its outcome with [`Permit::succeeded`] or [`Permit::failed`].
/// A permit dropped unreported (the caller's future was cancelled) frees the half-open probe slot
/// without counting either way, so a cancelled probe cannot wedge the breaker half-open.
#[derive(Debug)]
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    reported: bool,
}

impl Permit<'_> {
    pub fn succeeded(mut self) {
        self.reported = true;
        self.breaker.succeeded();
    }

    pub fn failed(mut self) {
        self.reported = true;
        self.breaker.failed();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.lock().probing = false;
        }
    }
}

impl Breaker {
    /// The shared tier's breaker.
    pub fn new(settings: BreakerSettings, endpoint: RedactedUrl) -> Breaker {
        Breaker::guarding(SHARED_TIER, settings, endpoint)
    }

    pub fn guarding(guarded: Guarded, settings: BreakerSettings, endpoint: RedactedUrl) -> Breaker {
        let breaker = Breaker {
            settings,
            names: MetricNames::of(&guarded),
            guarded,
            endpoint,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: Instant::now(),
                probing: false,
            }),
        };
        breaker.publish(BreakerState::Closed);
        breaker
    }

    /// `None` (counted as a rejection) while open, or while half-open with a probe in flight.
    pub fn admit(&self) -> Option<Permit<'_>> {
        let mut inner = self.lock();
        let admitted = match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open if inner.opened_at.elapsed() >= self.settings.open_for => {
                inner.state = BreakerState::HalfOpen;
                inner.probing = true;
                self.publish(BreakerState::HalfOpen);
                true
            }
            BreakerState::Open => false,
            BreakerState::HalfOpen if !inner.probing => {
                inner.probing = true;
                true
            }
            BreakerState::HalfOpen => false,
        };
        drop(inner);
        if admitted {
            metrics::counter!(self.names.calls.clone(), "endpoint" => self.endpoint.as_str().to_owned())
                .increment(1);
            Some(Permit {
                breaker: self,
                reported: false,
            })
        } else {
            metrics::counter!(self.names.rejections.clone(), "endpoint" => self.endpoint.as_str().to_owned())
                .increment(1);
            None
        }
    }

    fn succeeded(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.probing = false;
        if inner.state != BreakerState::Closed {
            inner.state = BreakerState::Closed;
            tracing::info!(
                endpoint = %self.endpoint,
                "{} reachable again; circuit breaker closed",
                self.guarded.what
            );
            self.publish(BreakerState::Closed);
        }
    }

    fn failed(&self) {
        metrics::counter!(self.names.failures.clone(), "endpoint" => self.endpoint.as_str().to_owned())
            .increment(1);
        let mut inner = self.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        inner.probing = false;
        let open = inner.state == BreakerState::HalfOpen
            || (inner.state == BreakerState::Closed
                && inner.consecutive_failures >= self.settings.failure_threshold);
        if open {
            if inner.state == BreakerState::Closed {
                tracing::warn!(
                    endpoint = %self.endpoint,
                    failures = inner.consecutive_failures,
                    open_for = ?self.settings.open_for,
                    "{} failing; circuit breaker open, {}",
                    self.guarded.what,
                    self.guarded.while_open
                );
            }
            inner.state = BreakerState::Open;
            inner.opened_at = Instant::now();
            self.publish(BreakerState::Open);
        }
    }

    /// What the breaker guards, as its metrics label it.
    pub fn endpoint(&self) -> &RedactedUrl {
        &self.endpoint
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!(self.names.state.clone(), "endpoint" => self.endpoint.as_str().to_owned())
            .set(state.gauge());
    }

    /// A panic elsewhere while holding the lock leaves plain counters behind, still usable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for: Duration) -> Breaker {
        Breaker::new(
            BreakerSettings {
                failure_threshold: 2,
                open_for,
            },
            RedactedUrl::new("test"),
        )
    }

    #[test]
    fn opens_after_the_threshold_and_refuses_while_open() {
        let b = breaker(Duration::from_secs(3600));
        b.admit().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_none());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let b = breaker(Duration::from_secs(3600));
        b.admit().unwrap().failed();
        b.admit().unwrap().succeeded();
        b.admit().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_one_probe_whose_outcome_decides() {
        let b = breaker(Duration::ZERO);
        b.admit().unwrap().failed();
        b.admit().unwrap().failed();
        let probe = b.admit().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit().is_none(), "a second call while the probe is out");
        probe.failed();
        assert_eq!(b.state(), BreakerState::Open);
        let probe = b.admit().unwrap();
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_some());
    }

    #[test]
    fn a_cancelled_probe_frees_the_slot() {
        let b = breaker(Duration::ZERO);
        b.admit().unwrap().failed();
        b.admit().unwrap().failed();
        drop(b.admit().unwrap());
        assert!(b.admit().is_some());
    }
}
