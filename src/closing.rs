//! The node-wide "we are shutting down" signal that long-lived tasks select on.

use tokio::sync::watch;

/// Completes once `closing` is `true` (or its sender is gone). A plain function so no watch
/// guard lives across an await in the caller's `select!`.
pub async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}
