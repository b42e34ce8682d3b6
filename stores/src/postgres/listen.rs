//! Change notices through PostgreSQL's LISTEN/NOTIFY.
//!
//! Each subscription has its own one-connection pool: the LISTEN connection is held for as long as
//! the subscription lives, and taking it from the store's pool would shrink what writes get.
//!
//! Reconnects: NOTIFY is fire-and-forget, so whatever is sent while the connection is down is lost.
//! When the connection drops, the task gets it back (retrying with backoff, as long as it takes),
//! re-issues LISTEN, and only then emits [`ChangeNotice::Resync`]: a subscriber that re-reads the
//! snapshots at that point has missed nothing, because any later change will be notified. Versions
//! make the re-read idempotent: the subscriber keeps whatever is newer than what it holds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc;

use super::{CHANGE_CHANNEL, PostgresSettings};
use crate::{ChangeNotice, StoreError, Subscription};

/// How many notices may wait for a slow subscriber before the listener stops reading (the
/// connection buffers the rest, so nothing is dropped).
const BUFFER: usize = 256;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

/// What a write sends on [`CHANGE_CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Payload {
    pub flag_set: String,
    pub version: i64,
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// The set itself was deleted (a deleted flag is a change to its set).
    #[serde(default)]
    pub deleted: bool,
}

pub(super) async fn subscribe(
    options: &PgConnectOptions,
    settings: &PostgresSettings,
) -> Result<Subscription, StoreError> {
    let notices = subscribe_channel(
        options,
        settings,
        CHANGE_CHANNEL,
        parse,
        ChangeNotice::Resync,
    )
    .await?;
    Ok(Subscription::new(notices))
}

/// Listens on `channel` until the receiver is dropped: each notification's payload through
/// `parse`, and `resync` after every reconnect. Shared by every kind of change notice (flag sets
/// here, experiments in `store::experiments`) so each gets the same reconnect handling.
pub(super) async fn subscribe_channel<N: Clone + Send + 'static>(
    options: &PgConnectOptions,
    settings: &PostgresSettings,
    channel: &'static str,
    parse: fn(&str) -> N,
    resync: N,
) -> Result<mpsc::Receiver<N>, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options.clone().application_name("bunting-listener"));
    let listener = listen(&pool, channel)
        .await
        .map_err(|e| StoreError::Unavailable { source: e.into() })?;
    let (tx, rx) = mpsc::channel(BUFFER);
    let channel = Channel {
        name: channel,
        parse,
        resync,
    };
    tokio::spawn(run(pool, listener, channel, tx));
    Ok(rx)
}

struct Channel<N> {
    name: &'static str,
    parse: fn(&str) -> N,
    resync: N,
}

async fn listen(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

async fn run<N: Clone>(
    pool: PgPool,
    mut listener: PgListener,
    channel: Channel<N>,
    tx: mpsc::Sender<N>,
) {
    loop {
        let received = tokio::select! {
            () = tx.closed() => break,
            received = listener.try_recv() => received,
        };
        let notice = match received {
            Ok(Some(notification)) => (channel.parse)(notification.payload()),
            // The connection dropped and sqlx has already reconnected and re-issued LISTEN
            // (`eager_reconnect`, on by default): anything sent in between is lost.
            Ok(None) => {
                tracing::warn!(
                    channel = channel.name,
                    "change listener reconnected; subscribers resync"
                );
                channel.resync.clone()
            }
            Err(error) => {
                tracing::warn!(%error, channel = channel.name, "change listener lost its connection; reconnecting");
                drop(listener);
                match reconnect(&pool, channel.name, &tx).await {
                    Some(fresh) => listener = fresh,
                    None => break,
                }
                tracing::info!(
                    channel = channel.name,
                    "change listener reconnected; subscribers resync"
                );
                channel.resync.clone()
            }
        };
        if tx.send(notice).await.is_err() {
            break;
        }
    }
    pool.close().await;
}

/// A new listener, retried with backoff until it is listening; `None` if the subscriber went away
/// meanwhile.
async fn reconnect<N>(pool: &PgPool, channel: &str, tx: &mpsc::Sender<N>) -> Option<PgListener> {
    let mut delay = FIRST_RETRY;
    loop {
        tokio::select! {
            () = tx.closed() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        let attempt = tokio::select! {
            () = tx.closed() => return None,
            attempt = listen(pool, channel) => attempt,
        };
        match attempt {
            Ok(listener) => return Some(listener),
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "change listener cannot reconnect yet");
                delay = (delay * 2).min(LAST_RETRY);
            }
        }
    }
}

/// A payload this store did not write (someone else NOTIFYing the channel, a future format) is no
/// reason to miss a change: the subscriber resyncs.
fn parse(payload: &str) -> ChangeNotice {
    match serde_json::from_str::<Payload>(payload) {
        Ok(p) => {
            let at = p.at.unwrap_or_else(Utc::now);
            if p.deleted {
                ChangeNotice::Deleted {
                    flag_set: p.flag_set,
                    version: p.version,
                    at,
                }
            } else {
                ChangeNotice::Changed {
                    flag_set: p.flag_set,
                    version: p.version,
                    at,
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, payload, "unreadable change notice; subscribers resync");
            ChangeNotice::Resync
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_notices() {
        let changed = parse(r#"{"flag_set":"default","version":3,"at":"2024-01-01T00:00:00Z"}"#);
        assert!(matches!(
            changed,
            ChangeNotice::Changed { ref flag_set, version: 3, .. } if flag_set == "default"
        ));
        let deleted = parse(r#"{"flag_set":"a","version":9,"deleted":true}"#);
        assert!(matches!(deleted, ChangeNotice::Deleted { version: 9, .. }));
        assert_eq!(parse("not json"), ChangeNotice::Resync);
    }
}
