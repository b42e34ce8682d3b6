//! The node's edge: how client connections are accepted, how many may be open, and when one is
//! closed, so that idle or hostile connections cannot starve the node of file descriptors (issue 9:
//! 1,100 idle sockets against a 1,024 open-files limit once stopped RPCs, `/metrics` and the flag
//! file's reload alike).
//!
//! - [`fd_limit`]: at start, raise the open-files soft limit to the hard limit and derive the
//!   connection caps from it, keeping `fd_reserve` descriptors for the node's own work.
//! - [`accept`]: one accept loop per listener, with a cap (a semaphore; a connection past it is
//!   accepted and closed at once, and counted) and a back-off when accepting fails for want of
//!   descriptors, instead of the tight retry loop tonic runs on an accept error.
//! - [`connection`]: the accepted connection's IO wrapper, which holds the cap's slot until the
//!   connection closes and closes a connection that sends nothing within the header-read timeout
//!   or has no stream open for the idle timeout.
//! - [`streams`]: the tower layer that tells each connection how many streams it has open.
//! - [`plane`]: which listener serves which method when there is an admin listener.

pub mod accept;
pub mod connection;
pub mod fd_limit;
pub mod plane;
pub mod streams;

use std::time::Duration;

use crate::config::ConnectionsConfig;

pub use accept::{ListenerLimits, incoming};
pub use connection::{Connection, EdgeConnectInfo};
pub use fd_limit::{Caps, FdLimitError, OpenFiles};
pub use plane::{Plane, PlaneLayer, Serves};
pub use streams::TrackStreamsLayer;

/// Connections refused at accept, by `listener` and `reason` (`at_capacity`).
pub const REFUSED_METRIC: &str = "bunting_connections_refused_total";
/// Connections the node closed, by `listener` and `reason` (`header_timeout`, `idle`).
pub const CLOSED_METRIC: &str = "bunting_connections_closed_total";
/// Connections open now, by `listener`.
pub const OPEN_METRIC: &str = "bunting_connections_open";
/// The effective cap, by `listener`.
pub const LIMIT_METRIC: &str = "bunting_connections_limit";
/// Failed `accept` calls, by `listener` and `kind` (`fd_exhausted`, `other`).
pub const ACCEPT_ERRORS_METRIC: &str = "bunting_accept_errors_total";

/// Connections `/metrics` may have open at once: a scraper or two and an operator's curl. Kept
/// apart from the gRPC cap so a flood on the gRPC port never takes the metrics port down with it.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

/// Connections the admin listener (`admin_addr`) may have open at once: operators, their CLI and
/// CI jobs, never applications. Its own cap, kept out of the gRPC cap's descriptors as the
/// `/metrics` cap is, so a flood on the gRPC port leaves administration reachable.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How long a `/metrics` client has to send its request line.
const METRICS_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The gRPC listener's limits from the config and the caps derived from the open-files limit.
pub fn grpc_limits(config: &ConnectionsConfig, caps: &Caps) -> ListenerLimits {
    ListenerLimits {
        name: "grpc",
        max_connections: caps.grpc,
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        // HTTP/2's client preface is 24 bytes of magic and a SETTINGS frame (a 9-byte header at
        // least); over TLS the ClientHello is longer still. A peer that sends less than this in
        // the header-read timeout is not a client that will ever send a request.
        first_bytes: 33,
        idle_timeout: Some(Duration::from_millis(config.idle_timeout_ms)),
        tcp_keepalive: Some(Duration::from_millis(config.keepalive_interval_ms)),
    }
}

/// The HTTP edge's limits (`crate::http`): its share of the connection caps, the gRPC port's
/// timeouts. An HTTP/1.1 request line is at least 16 bytes (`GET / HTTP/1.1\r\n`).
pub fn http_limits(config: &ConnectionsConfig, caps: &Caps) -> ListenerLimits {
    ListenerLimits {
        name: "http",
        max_connections: caps.http,
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        first_bytes: 16,
        idle_timeout: Some(Duration::from_millis(config.idle_timeout_ms)),
        tcp_keepalive: Some(Duration::from_millis(config.keepalive_interval_ms)),
    }
}

/// The admin listener's limits: the gRPC port's timeouts and keepalive under its own cap.
pub fn admin_limits(config: &ConnectionsConfig) -> ListenerLimits {
    ListenerLimits {
        name: "admin",
        max_connections: ADMIN_MAX_CONNECTIONS,
        ..grpc_limits(
            config,
            &Caps {
                grpc: ADMIN_MAX_CONNECTIONS,
                http: 0,
                limited_by: "admin",
            },
        )
    }
}

/// The `/metrics` listener's limits: its own small cap, a request line within seconds, no idle
/// rule (the endpoint answers one request and closes).
pub fn metrics_limits() -> ListenerLimits {
    ListenerLimits {
        name: "metrics",
        max_connections: METRICS_MAX_CONNECTIONS,
        header_read_timeout: METRICS_HEADER_READ_TIMEOUT,
        first_bytes: 1,
        idle_timeout: None,
        tcp_keepalive: None,
    }
}

/// HTTP/2 settings of the gRPC server from `[connections]`: keepalive pings with their timeout,
/// and the per-connection stream cap. (TCP keepalive is set on each accepted socket by
/// [`accept`]: tonic ignores its own TCP settings when it is given the connections.)
pub fn tune<L>(
    server: tonic::transport::Server<L>,
    config: &ConnectionsConfig,
) -> tonic::transport::Server<L> {
    server
        .http2_keepalive_interval(Some(Duration::from_millis(config.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(config.keepalive_timeout_ms)))
        .max_concurrent_streams(Some(config.max_concurrent_streams_per_connection))
}
