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

/// Readiness: the flag source's flags are loaded (a node that started while PostgreSQL was
/// unreachable serves the shared tier's copies but is not ready until PostgreSQL answers) and the
/// node is not shutting down. 503 otherwise, saying which.
pub async fn ready(State(edge): State<Edge>) -> Response {
    let closing = *edge.inner.closing.borrow();
    let loaded = *edge.inner.loaded.borrow();
    let sets = edge.dispatch().node().catalog().sets().count();
    let (status, reason) = if closing {
        (StatusCode::SERVICE_UNAVAILABLE, Some("shutting down"))
    } else if !loaded {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("the flag source has not been read yet"),
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
