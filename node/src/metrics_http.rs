//! Prometheus metrics: the process-wide recorder and a minimal `/metrics` HTTP endpoint.
//!
//! The endpoint is a few lines of HTTP/1.1 over a tokio listener rather than a web framework: it
//! answers one fixed GET, and Prometheus is its only client.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::auth::{Policy, Scope};
use crate::edge;

/// The value of the request's `authorization` header, if it has one (names are case-blind).
fn authorization(head: &str) -> Option<&str> {
    head.lines()
        .skip(1)
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("authorization")
                .then(|| value.trim())
        })
}

/// How long one scrape may take, request and response: a client that reads the answer slowly
/// must not hold one of the endpoint's few connections for long.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use. `None` if another recorder was installed
/// first (then this node's metrics go there).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(&[
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0,
            ]);
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "Prometheus recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Serves `GET /metrics` until `closing` flips. Connections come through the edge's accept loop
/// with the endpoint's own small cap ([`edge::metrics_limits`]), so a flood on the gRPC port
/// leaves it reachable.
///
/// With `guard` (`[auth] metrics_token_required`), a scrape must send `authorization: Bearer
/// <token>` of a token with scope cluster:read, else it is answered 401 (no usable token) or 403.
pub async fn serve(
    listener: TcpListener,
    mut closing: watch::Receiver<bool>,
    guard: Option<Policy>,
) {
    let mut incoming = edge::incoming(listener, edge::metrics_limits());
    loop {
        let accepted = tokio::select! {
            accepted = incoming.next() => accepted,
            () = crate::closing::closed(&mut closing) => break,
        };
        let Some(Ok(mut socket)) = accepted else {
            break;
        };
        let guard = guard.clone();
        tokio::spawn(tokio::time::timeout(EXCHANGE_TIMEOUT, async move {
            let mut request = [0u8; 1024];
            // One read is enough for a scrape's request line; anything else gets a 404.
            let n = socket.read(&mut request).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..n]);
            let refused = match &guard {
                Some(policy) if head.starts_with("GET /metrics ") => policy
                    .authorize(
                        Scope::ClusterRead,
                        authorization(&head).map(str::as_bytes),
                        "/metrics",
                    )
                    .err(),
                _ => None,
            };
            let (status, body) = if let Some(refused) = refused {
                let status = match refused.code() {
                    tonic::Code::PermissionDenied => "403 Forbidden",
                    _ => "401 Unauthorized",
                };
                (status, format!("{}\n", refused.message()))
            } else if head.starts_with("GET /metrics ") {
                (
                    "200 OK",
                    handle().map(PrometheusHandle::render).unwrap_or_default(),
                )
            } else {
                (
                    "404 Not Found",
                    "not found; metrics are at /metrics\n".to_owned(),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::authorization;

    #[test]
    fn the_authorization_header_is_found_in_a_request_head() {
        let cases = [
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n\r\n",
                Some("Bearer abc"),
            ),
            (
                "GET /metrics HTTP/1.1\r\nauthorization:Bearer abc\r\n\r\n",
                Some("Bearer abc"),
            ),
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", None),
            // Not a header: after the blank line, or the request line itself.
            (
                "GET /metrics HTTP/1.1\r\n\r\nAuthorization: Bearer abc",
                None,
            ),
            ("Authorization: Bearer abc\r\n\r\n", None),
        ];
        for (head, expected) in cases {
            assert_eq!(authorization(head), expected, "{head:?}");
        }
    }
}
