//! A node's cluster settings.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cookie::Cookie;
use crate::error::ClusterError;
use crate::node_id::NodeId;
use crate::tls::ClusterTls;
use crate::wire::{MAX_ADDR_LEN, MAX_SHARDS};

/// How a node joins and takes part in the cluster. [`ClusterConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// Where this node listens for cluster peers. Port 0 picks a free port
    /// (`Cluster::cluster_addr` reports it).
    pub listen: SocketAddr,
    /// The address peers should dial to reach `listen`, gossiped to the members. Defaults to the
    /// bound listen address; required when `listen` is an unspecified address (0.0.0.0, ::).
    pub advertise_cluster: Option<SocketAddr>,
    /// The "host:port" clients use to reach this node's gRPC port; it goes into the shard map.
    pub advertise_grpc: String,
    /// Other nodes' cluster addresses. Empty for the first node. A node dials every seed and
    /// every member it learns of and keeps redialling those it is not connected to.
    pub seeds: Vec<SocketAddr>,
    pub cookie: Cookie,
    /// Mutual TLS on the cluster port; `None` sends cluster traffic in clear text (the cookie
    /// still authenticates). Every member of a cluster must agree.
    pub tls: Option<ClusterTls>,
    /// The cluster-wide shard count; heartbeats and maps from a peer with another count are
    /// refused.
    pub shards: u32,
    /// The version of what the application carries in `Cluster::call` (its peer protocol).
    /// Heartbeats from a peer of another version are refused, like another shard count: the
    /// peer never becomes a member, so no map places shards on it and nothing is forwarded to it.
    pub peer_protocol: u32,
    /// Points each member puts on the hash ring.
    pub vnodes_per_node: u16,
    /// How often a node sends every peer a heartbeat.
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long is Down. A dead node is detected within
    /// `failure_timeout + heartbeat_interval` of its last heartbeat.
    pub failure_timeout: Duration,
    /// Largest request `Cluster::call` sends and largest answer a handler may give. Every node
    /// of a cluster should use the same value: a frame larger than a receiver's limit closes the
    /// connection.
    pub max_payload_bytes: usize,
    /// Requests from peers a node handles at once; more are answered `CallError::Busy`.
    pub max_inflight_requests: usize,
    /// A connection that has not authenticated within this time is closed, so idle or stalled
    /// connections cannot pile up.
    pub handshake_timeout: Duration,
    /// Connections not yet authenticated allowed at once; more are closed on accept.
    pub max_pending_connections: usize,
}

impl ClusterConfig {
    pub const DEFAULT_VNODES: u16 = 128;
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(250);
    pub const DEFAULT_FAILURE_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_MAX_PAYLOAD: usize = 4 << 20;
    pub const DEFAULT_MAX_INFLIGHT: usize = 1024;
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_MAX_PENDING: usize = 64;

    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        advertise_grpc: impl Into<String>,
        cookie: Cookie,
    ) -> ClusterConfig {
        ClusterConfig {
            node_id,
            listen,
            advertise_cluster: None,
            advertise_grpc: advertise_grpc.into(),
            seeds: Vec::new(),
            cookie,
            tls: None,
            shards: bunting_keyspace::DEFAULT_SHARDS,
            peer_protocol: 0,
            vnodes_per_node: Self::DEFAULT_VNODES,
            heartbeat_interval: Self::DEFAULT_HEARTBEAT,
            failure_timeout: Self::DEFAULT_FAILURE_TIMEOUT,
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD,
            max_inflight_requests: Self::DEFAULT_MAX_INFLIGHT,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_connections: Self::DEFAULT_MAX_PENDING,
        }
    }

    /// The bound of failure detection: a node that stops is Down on every peer within this
    /// time of its last heartbeat.
    pub fn detection_bound(&self) -> Duration {
        self.failure_timeout.saturating_add(self.heartbeat_interval)
    }

    pub(crate) fn validate(&self) -> Result<(), ClusterError> {
        let bad = |message: String| Err(ClusterError::Config(message));
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return bad(format!(
                "shards = {} is outside 1..={MAX_SHARDS}",
                self.shards
            ));
        }
        if self.vnodes_per_node == 0 {
            return bad("vnodes_per_node = 0; every member needs at least one ring point".into());
        }
        if self.heartbeat_interval < Duration::from_millis(10) {
            return bad(format!(
                "heartbeat_interval = {:?} is below 10ms",
                self.heartbeat_interval
            ));
        }
        if self.failure_timeout < self.heartbeat_interval.saturating_mul(2) {
            return bad(format!(
                "failure_timeout = {:?} is less than two heartbeat intervals ({:?}); one late \
                 heartbeat would mark a live peer down",
                self.failure_timeout, self.heartbeat_interval
            ));
        }
        if self.advertise_grpc.is_empty() || self.advertise_grpc.len() > MAX_ADDR_LEN {
            return bad(format!(
                "advertise_grpc {:?} must be 1..={MAX_ADDR_LEN} bytes",
                self.advertise_grpc
            ));
        }
        if self.listen.ip().is_unspecified() && self.advertise_cluster.is_none() {
            return bad(format!(
                "listen = {} is an unspecified address; set advertise_cluster to the address \
                 peers should dial",
                self.listen
            ));
        }
        if let Some(addr) = self.advertise_cluster
            && (addr.ip().is_unspecified() || addr.port() == 0)
        {
            return bad(format!("advertise_cluster = {addr} cannot be dialled"));
        }
        if self.max_payload_bytes == 0 || self.max_inflight_requests == 0 {
            return bad("max_payload_bytes and max_inflight_requests must be positive".into());
        }
        if self.max_pending_connections == 0 || self.handshake_timeout.is_zero() {
            return bad("max_pending_connections and handshake_timeout must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        ClusterConfig::new(
            "a".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:8013",
            Cookie::new("c").unwrap(),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = config();
        c.validate().unwrap();
        assert_eq!((c.shards, c.vnodes_per_node), (256, 128));
        assert_eq!(c.detection_bound(), Duration::from_millis(1250));
    }

    #[test]
    fn refuses_settings_that_cannot_work() {
        let cases: Vec<(ClusterConfig, &str)> = vec![
            (
                ClusterConfig {
                    shards: 0,
                    ..config()
                },
                "shards = 0",
            ),
            (
                ClusterConfig {
                    shards: MAX_SHARDS + 1,
                    ..config()
                },
                "shards",
            ),
            (
                ClusterConfig {
                    vnodes_per_node: 0,
                    ..config()
                },
                "vnodes_per_node",
            ),
            (
                ClusterConfig {
                    failure_timeout: Duration::from_millis(400),
                    ..config()
                },
                "two heartbeat",
            ),
            (
                ClusterConfig {
                    advertise_grpc: String::new(),
                    ..config()
                },
                "advertise_grpc",
            ),
            (
                ClusterConfig {
                    listen: "0.0.0.0:7000".parse().unwrap(),
                    ..config()
                },
                "advertise_cluster",
            ),
            (
                ClusterConfig {
                    advertise_cluster: Some("0.0.0.0:7000".parse().unwrap()),
                    ..config()
                },
                "cannot be dialled",
            ),
        ];
        for (c, expected) in cases {
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
