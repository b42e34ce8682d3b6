//! One process per cluster node id: a PostgreSQL session-level advisory lock keyed by the id.
//!
//! A second process started with a member's node id would split the cluster (each half owns
//! the same shards). The cluster port cannot catch it reliably: ractor_cluster refuses a
//! "connection to self", so two processes with one name never meet as peers. Every clustered
//! node on PostgreSQL already talks to one database, which can: the lock is held by a session
//! of its own for the life of the process, so a process that dies (even `kill -9`) releases it
//! when the server notices the closed socket, with no lease to expire and no row to clean up.
//!
//! Advisory locks live per database, like the cluster's flags: two clusters on two databases
//! of one server do not collide.
//!
//! When the session breaks (PostgreSQL restarted, network cut), the lock is gone with it; the
//! keeper reconnects and takes it again. If another process took it meanwhile, [`NodeIdLock::lost`]
//! resolves and the node must stop.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{connect_once, known_params_only};
use crate::StoreError;
use crate::secret_url::RedactedUrl;

/// How often the keeper checks that its session (and so the lock) is alive.
const KEEPALIVE: Duration = Duration::from_secs(2);
/// Pause between attempts to reconnect after the session broke.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NodeLockError {
    /// Another live process holds this node id on this database.
    #[error(
        "node id {node_id:?} is already in use: another running process ({holder}) holds it on \
         this PostgreSQL database; give every node a unique [cluster] node_id, or stop the other \
         process first"
    )]
    Held { node_id: String, holder: String },
    #[error("node id lock: database url {url}: {message}")]
    Url { url: RedactedUrl, message: String },
    #[error("node id lock: {0}")]
    Store(#[from] StoreError),
}

/// Holds the lock for `node_id` while alive; dropping it releases the lock (the session ends).
#[derive(Debug)]
pub struct NodeIdLock {
    node_id: String,
    lost: watch::Receiver<Option<String>>,
    keeper: JoinHandle<()>,
}

impl Drop for NodeIdLock {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// The lock's key: FNV-1a (64 bits) of the id under a prefix of Bunting's own, so other users
/// of advisory locks on the database (sqlx's migration lock among them) do not meet it. Stable
/// across builds and platforms, unlike `std`'s hasher.
pub fn lock_key(node_id: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"bunting.node_id:".iter().chain(node_id.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

enum Attempt {
    Taken(PgConnection),
    Held(String),
}

impl NodeIdLock {
    /// Takes the lock for `node_id` on the database at `url`, waiting at most `timeout` for a
    /// connection. Refused with [`NodeLockError::Held`] when another session holds it. When
    /// PostgreSQL cannot be reached the error is `Store(Unavailable)`: the caller decides
    /// whether to start anyway ([`NodeIdLock::pending`]).
    pub async fn take(
        url: &str,
        node_id: &str,
        timeout: Duration,
    ) -> Result<NodeIdLock, NodeLockError> {
        let options = options(url, node_id)?;
        match attempt(&options, node_id, timeout).await? {
            Attempt::Taken(conn) => Ok(NodeIdLock::keep(options, node_id, Some(conn), timeout)),
            Attempt::Held(holder) => Err(NodeLockError::Held {
                node_id: node_id.to_owned(),
                holder,
            }),
        }
    }

    /// A lock not yet taken (PostgreSQL is unreachable): the keeper takes it once the database
    /// answers, or reports through [`NodeIdLock::lost`] that another process has it.
    pub fn pending(
        url: &str,
        node_id: &str,
        timeout: Duration,
    ) -> Result<NodeIdLock, NodeLockError> {
        let options = options(url, node_id)?;
        Ok(NodeIdLock::keep(options, node_id, None, timeout))
    }

    fn keep(
        options: PgConnectOptions,
        node_id: &str,
        conn: Option<PgConnection>,
        timeout: Duration,
    ) -> NodeIdLock {
        let (lost_tx, lost) = watch::channel(None);
        let keeper = tokio::spawn(keeper(options, node_id.to_owned(), conn, timeout, lost_tx));
        NodeIdLock {
            node_id: node_id.to_owned(),
            lost,
            keeper,
        }
    }

    /// Resolves when the lock was lost to another process (after a broken session): the node
    /// must stop. Never resolves while this process holds the lock or is retrying.
    pub async fn lost(&self) -> NodeLockError {
        let mut lost = self.lost.clone();
        let holder = lost
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|holder| holder.clone());
        // The keeper drops its sender only when aborted (the lock was dropped): never lost.
        let Some(holder) = holder else {
            return std::future::pending().await;
        };
        NodeLockError::Held {
            node_id: self.node_id.clone(),
            holder,
        }
    }
}

fn options(url: &str, node_id: &str) -> Result<PgConnectOptions, NodeLockError> {
    let options: PgConnectOptions =
        known_params_only(url)
            .parse()
            .map_err(|e: sqlx::Error| NodeLockError::Url {
                url: RedactedUrl::new(url),
                message: e.to_string(),
            })?;
    // Shown in pg_stat_activity, and in the refusal the second process prints.
    Ok(options.application_name(&format!("bunting node {node_id}")))
}

async fn attempt(
    options: &PgConnectOptions,
    node_id: &str,
    timeout: Duration,
) -> Result<Attempt, StoreError> {
    let mut conn = connect_once(options, timeout).await?;
    let key = lock_key(node_id);
    let query = async {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if taken {
            return Ok(None);
        }
        Ok::<_, sqlx::Error>(Some(holder(&mut conn, key).await))
    };
    let outcome = tokio::time::timeout(timeout, query).await;
    match outcome {
        Ok(Ok(None)) => Ok(Attempt::Taken(conn)),
        Ok(Ok(Some(holder))) => {
            let _ = conn.close().await;
            Ok(Attempt::Held(holder))
        }
        Ok(Err(e)) => Err(StoreError::Unavailable { source: e.into() }),
        Err(_) => Err(StoreError::Unavailable {
            source: format!("taking the node id lock took longer than {timeout:?}").into(),
        }),
    }
}

/// Who holds the lock, for the refusal: the session's application name, client address and
/// start. Best effort: without the rights to read pg_stat_activity it says so.
async fn holder(conn: &mut PgConnection, key: i64) -> String {
    // A bigint advisory key shows in pg_locks as classid (high 32 bits) and objid (low 32 bits)
    // with objsubid 1.
    let row = sqlx::query(
        "SELECT coalesce(a.application_name, '') AS app,
                coalesce(host(a.client_addr), 'local socket') AS client,
                to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS since
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
            AND l.classid = (($1 >> 32) & 4294967295)::bigint::oid
            AND l.objid = ($1 & 4294967295)::bigint::oid
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          LIMIT 1",
    )
    .bind(key)
    .fetch_optional(conn)
    .await;
    match row {
        Ok(Some(row)) => {
            let app: String = row.try_get("app").unwrap_or_default();
            let client: String = row.try_get("client").unwrap_or_default();
            let since: String = row.try_get("since").unwrap_or_default();
            format!("{app:?} connected from {client} since {since} UTC")
        }
        Ok(None) => "a session that has just let go of it".to_owned(),
        Err(e) => format!("holder unknown: {e}"),
    }
}

async fn keeper(
    options: PgConnectOptions,
    node_id: String,
    mut conn: Option<PgConnection>,
    timeout: Duration,
    lost: watch::Sender<Option<String>>,
) {
    let mut warned = false;
    loop {
        match conn.as_mut() {
            Some(held) => {
                tokio::time::sleep(KEEPALIVE).await;
                let alive = tokio::time::timeout(timeout, held.ping()).await;
                if !matches!(alive, Ok(Ok(()))) {
                    tracing::warn!(
                        node = %node_id,
                        "lost the PostgreSQL session holding this node's id lock; taking it again"
                    );
                    conn = None;
                }
            }
            None => match attempt(&options, &node_id, timeout).await {
                Ok(Attempt::Taken(taken)) => {
                    tracing::info!(node = %node_id, "holding this node's id lock on PostgreSQL");
                    conn = Some(taken);
                    warned = false;
                }
                Ok(Attempt::Held(holder)) => {
                    tracing::error!(
                        node = %node_id,
                        %holder,
                        "DUPLICATE NODE ID: another process holds this node's id on PostgreSQL"
                    );
                    let _ = lost.send(Some(holder));
                    return;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(node = %node_id, error = %e, "cannot take this node's id lock yet; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(RETRY).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_pinned_and_differ_per_id() {
        // Pinned: two builds must compute the same key, or an old and a new process with one id
        // would both get a lock.
        assert_eq!(lock_key("node-1"), lock_key("node-1"));
        assert_ne!(lock_key("node-1"), lock_key("node-2"));
        assert_ne!(lock_key("a"), lock_key("A"));
        assert_eq!(
            lock_key(""),
            i64::from_ne_bytes(0xd04e_f88c_5986_9c7a_u64.to_ne_bytes())
        );
    }
}
