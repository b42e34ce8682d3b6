//! Cluster-wide notices: small facts one node tells every other, best effort.

/// A notice `Cluster::publish` casts to every live peer; peers receive it on
/// `Cluster::notices`. Delivery is best effort (a peer that is down or reconnecting misses it),
/// so receivers treat a notice as a hint to check, not as the change itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A flag set changed: `version` is the new version of `set`.
    FlagSetChanged { set: String, version: u64 },
}
