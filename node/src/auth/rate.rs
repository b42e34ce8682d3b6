//! Per-token rate limits on writes and Track (`[auth] write_rate_per_second`,
//! `track_rate_per_second`): a token bucket per caller and kind, in memory, checked by the layer
//! after authorization. A caller over its rate is answered RESOURCE_EXHAUSTED and nothing runs.
//! Each node counts for itself: a cluster of N nodes lets a token through up to N times the rate.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Instant;

use tonic::Status;

use super::principal::Caller;
use super::principal::PrincipalId;
use super::scope::Scope;

/// Which budget a method spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Write,
    Track,
}

impl Kind {
    fn of(scope: Scope) -> Option<Kind> {
        match scope {
            Scope::FlagsWrite
            | Scope::ExperimentsWrite
            | Scope::ClusterAdmin
            | Scope::TokensAdmin => Some(Kind::Write),
            Scope::Track => Some(Kind::Track),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The configured rates and every caller's buckets. Callers without a token (an opened Track)
/// share one bucket.
#[derive(Debug, Default)]
pub struct RateLimits {
    write: Option<NonZeroU32>,
    track: Option<NonZeroU32>,
    buckets: Mutex<HashMap<(Option<PrincipalId>, Kind), Bucket>>,
}

impl RateLimits {
    pub fn new(write: Option<NonZeroU32>, track: Option<NonZeroU32>) -> RateLimits {
        RateLimits {
            write,
            track,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one call of `scope` for `caller`, or refuses it.
    pub fn check(&self, scope: Scope, caller: &Caller) -> Result<(), Status> {
        self.check_at(scope, caller, Instant::now())
    }

    fn check_at(&self, scope: Scope, caller: &Caller, now: Instant) -> Result<(), Status> {
        let Some(kind) = Kind::of(scope) else {
            return Ok(());
        };
        let Some(rate) = (match kind {
            Kind::Write => self.write,
            Kind::Track => self.track,
        }) else {
            return Ok(());
        };
        let rate = f64::from(rate.get());
        let id = caller.principal().map(|p| p.id.clone());
        // A poisoned lock only means another request panicked mid-update; the map is still a map.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A burst of one second's worth, refilled continuously.
        let bucket = buckets.entry((id, kind)).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let who = match caller.principal() {
            Some(p) => p.describe(),
            None => "callers without a token".to_owned(),
        };
        let what = match kind {
            Kind::Write => "writes",
            Kind::Track => "Track calls",
        };
        Err(Status::resource_exhausted(format!(
            "{who}: over the limit of {rate} {what} per second; retry later"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::auth::{FlagSets, Principal, Scopes, TokenId};

    fn caller(id: &str) -> Caller {
        Caller::Authenticated(Arc::new(Principal {
            id: crate::auth::PrincipalId::Token(TokenId::parse(id).unwrap()),
            name: "ci".into(),
            scopes: Scopes::all(),
            flag_sets: FlagSets::All,
            expires_at: None,
        }))
    }

    #[test]
    fn buckets_per_token_and_kind_refill_over_time() {
        let limits = RateLimits::new(NonZeroU32::new(2), NonZeroU32::new(3));
        let (a, b) = (caller("00000000000000aa"), caller("00000000000000bb"));
        let t0 = Instant::now();
        let ok = |scope, who: &Caller, at| limits.check_at(scope, who, at).is_ok();
        // Two writes a second for a, then refused; b and a's Track budget are untouched.
        assert!(ok(Scope::FlagsWrite, &a, t0));
        assert!(ok(Scope::ExperimentsWrite, &a, t0));
        assert!(!ok(Scope::FlagsWrite, &a, t0));
        assert!(ok(Scope::FlagsWrite, &b, t0));
        for _ in 0..3 {
            assert!(ok(Scope::Track, &a, t0));
        }
        assert!(!ok(Scope::Track, &a, t0));
        // Reads are never limited.
        for _ in 0..100 {
            assert!(ok(Scope::FlagsRead, &a, t0));
            assert!(ok(Scope::Evaluate, &a, t0));
        }
        // Half a second later one write is back (2 per second), not two.
        let later = t0 + Duration::from_millis(500);
        assert!(ok(Scope::FlagsWrite, &a, later));
        assert!(!ok(Scope::FlagsWrite, &a, later));
        let status = limits.check_at(Scope::FlagsWrite, &a, later).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("00000000000000aa"), "{status:?}");
        // No limits configured: nothing is refused.
        let none = RateLimits::default();
        for _ in 0..100 {
            assert!(none.check_at(Scope::Track, &a, t0).is_ok());
        }
    }
}
