//! What the client has done, for tests and for operators watching a rollout or a chaos run.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by every clone of a client.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub topology_refreshes: AtomicU64,
    pub refresh_failures: AtomicU64,
    pub wrong_owner: AtomicU64,
    pub failures: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ClientStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            requests: read(&self.requests),
            retries: read(&self.retries),
            topology_refreshes: read(&self.topology_refreshes),
            refresh_failures: read(&self.refresh_failures),
            wrong_owner: read(&self.wrong_owner),
            failures: read(&self.failures),
        }
    }
}

/// A snapshot of the client's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Calls made (a bulk evaluation counts once per node it went to).
    pub requests: u64,
    /// Attempts beyond the first.
    pub retries: u64,
    /// Topology fetches that succeeded after the initial one.
    pub topology_refreshes: u64,
    /// Topology fetches that found no node to answer.
    pub refresh_failures: u64,
    /// Answers whose `bunting-owner` named another node than the client's map.
    pub wrong_owner: u64,
    /// Calls that returned an error, whatever the cause.
    pub failures: u64,
}

impl fmt::Display for ClientStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests={} retries={} topology_refreshes={} refresh_failures={} wrong_owner={} failures={}",
            self.requests,
            self.retries,
            self.topology_refreshes,
            self.refresh_failures,
            self.wrong_owner,
            self.failures
        )
    }
}
