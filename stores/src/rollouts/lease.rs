//! The rollout controller's lease: at most one node of a cluster acts at a time.
//!
//! [`PgLease`] holds a PostgreSQL session-level advisory lock (`pg_try_advisory_lock`) on a
//! connection of its own. The lock lives exactly as long as that session: a node that dies takes
//! its connection with it, the server releases the lock, and the next node to try gets it, within
//! one tick. A holder checks its connection before every tick and gives the lease up the moment
//! the check fails, so a node cut off from the database stops acting. Between the server's release
//! and the old holder's next check two nodes can act in one tick; every rollout write is
//! optimistic (flag versions, rollout versions) and every scheduled change is claimed once, so the
//! second writer is refused rather than doubled.

use async_trait::async_trait;
use sqlx::{Connection, PgConnection};

use crate::PostgresStore;

/// The advisory lock's key: "buntroll" in ASCII, so it is recognisable in `pg_locks`.
pub const LEASE_KEY: i64 = 0x6275_6e74_726f_6c6c;

/// Whether this node may act now.
#[async_trait]
pub trait Lease: Send + std::fmt::Debug {
    /// Holds (or keeps holding) the lease; `false` when another node holds it or the database
    /// cannot be reached.
    async fn hold(&mut self) -> bool;
}

/// For a single node on in-memory stores: there is no one else.
#[derive(Debug, Default)]
pub struct SoleLease;

#[async_trait]
impl Lease for SoleLease {
    async fn hold(&mut self) -> bool {
        true
    }
}

#[derive(Debug)]
pub struct PgLease {
    store: PostgresStore,
    key: i64,
    held: Option<PgConnection>,
}

impl PgLease {
    pub fn new(store: &PostgresStore) -> PgLease {
        PgLease::with_key(store, LEASE_KEY)
    }

    /// A lease on another key (tests run leases side by side on one server).
    pub fn with_key(store: &PostgresStore, key: i64) -> PgLease {
        PgLease {
            store: store.clone(),
            key,
            held: None,
        }
    }

    /// Gives the lease up now (the connection closes; the server releases the lock).
    pub async fn release(&mut self) {
        if let Some(conn) = self.held.take() {
            let _ = conn.close().await;
        }
    }
}

#[async_trait]
impl Lease for PgLease {
    async fn hold(&mut self) -> bool {
        if let Some(conn) = self.held.as_mut() {
            if conn.ping().await.is_ok() {
                return true;
            }
            tracing::warn!("rollout controller lease lost: its connection failed");
            self.held = None;
        }
        let mut conn = match self.store.dedicated_connection().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "rollout controller lease: cannot connect");
                return false;
            }
        };
        let got: Result<(bool,), _> = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut conn)
            .await;
        match got {
            Ok((true,)) => {
                tracing::info!("rollout controller lease taken: this node runs the rollouts");
                self.held = Some(conn);
                true
            }
            _ => {
                let _ = conn.close().await;
                false
            }
        }
    }
}
