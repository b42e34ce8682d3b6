//! The node-wide "we are shutting down" signal that long-lived tasks select on.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// Completes once `closing` is `true` (or its sender is gone). A plain function so no watch
/// guard lives across an await in the caller's `select!`.
pub async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

/// Runs `serving` (a server that drains its connections once `closing` turns `true`) to its end,
/// but gives up on the drain `limit` after `closing` turned: a peer that stopped reading keeps
/// its HTTP/2 stream open for as long as it likes (the trailers that would end it cannot be
/// sent), and must not keep the node from stopping. `None` when the drain was cut short.
pub async fn bounded_drain<T>(
    serving: impl Future<Output = T>,
    mut closing: watch::Receiver<bool>,
    limit: Duration,
) -> Option<T> {
    tokio::select! {
        done = serving => Some(done),
        () = async {
            closed(&mut closing).await;
            tokio::time::sleep(limit).await;
        } => {
            tracing::warn!(?limit, "connections still open after the drain limit; closing them");
            None
        }
    }
}
