//! `/healthz` and `/readyz` for load balancers and Kubernetes probes. Neither needs a token: a
//! probe carries none, and neither says more than whether the node can serve.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Edge;

/// Liveness: the process accepts and answers requests.
pub async fn live() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Readiness: flags are loaded (the node's catalog holds its default set, or some set on a node
/// that serves several) and the node is not shutting down. 503 otherwise, saying which.
pub async fn ready(State(edge): State<Edge>) -> Response {
    let closing = *edge.inner.closing.borrow();
    let catalog = edge.dispatch().node().catalog();
    let sets = catalog.sets().count();
    let (status, reason) = if closing {
        (StatusCode::SERVICE_UNAVAILABLE, Some("shutting down"))
    } else if sets == 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("no flag set loaded yet"),
        )
    } else {
        (StatusCode::OK, None)
    };
    let body = json!({
        "status": if reason.is_none() { "ready" } else { "unavailable" },
        "reason": reason,
        "flagSets": sets,
    });
    (status, Json(body)).into_response()
}
