//! The open-files limit and the connection caps it allows.
//!
//! Every client connection is a file descriptor, and so is everything the node does for itself:
//! reading the flag file, its database, Redis and ScyllaDB connections, the cluster port,
//! `/metrics`. If clients may take them all, the node's own work fails (issue 9: "flag file
//! unreadable"). So at start the node raises its soft limit to the hard limit where it may, then
//! caps client connections at `soft limit − fd_reserve − the /metrics and admin caps`, or at
//! `max_connections` if that is lower.

use crate::config::ConnectionsConfig;

#[derive(Debug, thiserror::Error)]
pub enum FdLimitError {
    #[error("cannot read the open-files limit (RLIMIT_NOFILE): {0}")]
    Read(#[source] std::io::Error),
    #[error(
        "the open-files limit ({soft}) leaves no descriptors for client connections after connections.fd_reserve ({reserve}) and {metrics} for the /metrics and admin listeners; raise the limit (ulimit -n) or lower fd_reserve"
    )]
    TooLow {
        soft: u64,
        reserve: u64,
        metrics: usize,
    },
}

/// The process's open-files limit after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit now in force; `None` for unlimited.
    pub soft: Option<u64>,
    /// The soft limit before [`raise`], when it raised it.
    pub raised_from: Option<u64>,
}

/// The caps the node enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Client connections on the gRPC port.
    pub grpc: usize,
    /// Client connections on the HTTP edge's port (`[http] max_connections`, or its share of
    /// the open-files limit).
    pub http: usize,
    /// The reason for the gRPC cap: `max_connections` or the open-files limit.
    pub limited_by: &'static str,
}

/// Raises the soft open-files limit to the hard limit, if it is lower and the hard limit is
/// finite. Failing to raise it is not an error (the caps then follow the soft limit); failing to
/// read it is.
pub fn raise() -> Result<OpenFiles, FdLimitError> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return Ok(OpenFiles {
            soft: limit.current,
            raised_from: None,
        });
    };
    if soft >= hard {
        return Ok(OpenFiles {
            soft: Some(soft),
            raised_from: None,
        });
    }
    let mut raised = limit;
    raised.current = Some(hard);
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Ok(OpenFiles {
            soft: Some(hard),
            raised_from: Some(soft),
        }),
        Err(error) => {
            tracing::warn!(%error, soft, hard, "cannot raise the open-files soft limit");
            Ok(OpenFiles {
                soft: Some(soft),
                raised_from: None,
            })
        }
    }
}

/// The gRPC connection cap: `max_connections`, lowered to what the open-files limit leaves after
/// the reserve and the `/metrics` cap.
pub fn caps(
    config: &ConnectionsConfig,
    open_files: OpenFiles,
    metrics: usize,
    http: usize,
) -> Result<Caps, FdLimitError> {
    let Some(soft) = open_files.soft else {
        return Ok(Caps {
            grpc: config.max_connections,
            http,
            limited_by: "max_connections",
        });
    };
    let kept = config.fd_reserve.saturating_add(metrics as u64);
    let room = soft.saturating_sub(kept);
    if room == 0 {
        return Err(FdLimitError::TooLow {
            soft,
            reserve: config.fd_reserve,
            metrics,
        });
    }
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    let wanted = config.max_connections.saturating_add(http);
    Ok(if room < wanted {
        // Not enough for both: each listener gets its share of the room in proportion to what
        // it asked for (at least one), so a flood on one port cannot take the descriptors the
        // other one needs.
        let share = |asked: usize| {
            let share = (asked as u128 * room as u128 / wanted.max(1) as u128) as usize;
            share.clamp(1, asked.max(1))
        };
        Caps {
            grpc: share(config.max_connections),
            http: share(http),
            limited_by: "open-files limit",
        }
    } else {
        Caps {
            grpc: config.max_connections,
            http,
            limited_by: "max_connections",
        }
    })
}

/// [`raise`] then [`caps`], logging the outcome: what `server::bind` runs.
pub fn plan(config: &ConnectionsConfig, metrics: usize, http: usize) -> Result<Caps, FdLimitError> {
    let open_files = raise()?;
    if let Some(from) = open_files.raised_from {
        tracing::info!(
            from,
            to = open_files.soft,
            "raised the open-files soft limit to the hard limit"
        );
    }
    let caps = caps(config, open_files, metrics, http)?;
    tracing::info!(
        grpc = caps.grpc,
        http = caps.http,
        limited_by = caps.limited_by,
        open_files = open_files.soft,
        fd_reserve = config.fd_reserve,
        metrics,
        "client connection cap"
    );
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_connections: usize, fd_reserve: u64) -> ConnectionsConfig {
        ConnectionsConfig {
            max_connections,
            fd_reserve,
            ..ConnectionsConfig::default()
        }
    }

    fn soft(n: u64) -> OpenFiles {
        OpenFiles {
            soft: Some(n),
            raised_from: None,
        }
    }

    #[test]
    fn the_open_files_limit_lowers_the_cap() {
        let caps = caps(&config(10_000, 256), soft(1_024), 16, 0).unwrap();
        assert_eq!(caps.grpc, 1_024 - 256 - 16);
        assert_eq!(caps.limited_by, "open-files limit");
        // With the HTTP edge asking too, the room is shared in proportion, never overdrawn.
        let caps = super::caps(&config(3_000, 256), soft(1_024), 16, 1_000).unwrap();
        assert_eq!((caps.grpc, caps.http), (564, 188));
        assert!(caps.grpc + caps.http <= 1_024 - 256 - 16);
    }

    #[test]
    fn max_connections_rules_when_it_is_lower() {
        let caps = caps(&config(100, 256), soft(1_048_576), 16, 50).unwrap();
        assert_eq!((caps.grpc, caps.http), (100, 50));
        let unlimited = OpenFiles {
            soft: None,
            raised_from: None,
        };
        assert_eq!(
            super::caps(&config(100, 256), unlimited, 16, 0)
                .unwrap()
                .grpc,
            100
        );
    }

    #[test]
    fn a_limit_below_the_reserve_is_refused_naming_it() {
        let error = caps(&config(100, 256), soft(200), 16, 0).unwrap_err();
        assert!(error.to_string().contains("fd_reserve (256)"), "{error}");
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let after = raise().unwrap();
        assert!(after.soft >= before || after.soft.is_none());
    }
}
