//! A circuit breaker: after `failure_threshold` failures in a row the tier is *open* and calls are
//! refused without touching the network; after `open_for` one probe is let through (*half-open*),
//! and its outcome closes the breaker or opens it again. A Redis that is down then costs the node
//! nothing per request instead of a timeout per request.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The breaker's state; the number is what `bunting_shared_tier_breaker_state` shows.
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

/// The breaker of one tier. Its metrics carry the tier's `endpoint` label, so two tiers in one
/// process (tests) are told apart.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    endpoint: String,
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
    pub fn new(settings: BreakerSettings, endpoint: String) -> Breaker {
        let breaker = Breaker {
            settings,
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
            metrics::counter!("bunting_shared_tier_calls_total", "endpoint" => self.endpoint.clone())
                .increment(1);
            Some(Permit {
                breaker: self,
                reported: false,
            })
        } else {
            metrics::counter!("bunting_shared_tier_rejections_total", "endpoint" => self.endpoint.clone())
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
            tracing::info!(endpoint = %self.endpoint, "shared tier reachable again; circuit breaker closed");
            self.publish(BreakerState::Closed);
        }
    }

    fn failed(&self) {
        metrics::counter!("bunting_shared_tier_failures_total", "endpoint" => self.endpoint.clone())
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
                    "shared tier failing; circuit breaker open, evaluation continues from memory"
                );
            }
            inner.state = BreakerState::Open;
            inner.opened_at = Instant::now();
            self.publish(BreakerState::Open);
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    fn publish(&self, state: BreakerState) {
        metrics::gauge!("bunting_shared_tier_breaker_state", "endpoint" => self.endpoint.clone())
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
            "test".to_owned(),
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
