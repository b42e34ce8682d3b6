//! The optional rollback announcement: one JSON `POST` per rollback, bounded by a timeout, never
//! retried (the rollback itself is already done, logged and counted; the webhook only tells
//! people). Plain `http://` only: TLS would need a client certificate store this node does not
//! carry; point it at a local relay for anything else.
//!
//! Webhook URLs often carry their secret in the path (Slack's, for one), so neither the URL nor
//! its path ever reaches a log line or an error: only `host:port`.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// The longest one announcement may take, connecting included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("rollout webhook: not a URL")]
    NotAUrl,
    #[error("rollout webhook: scheme {0:?} is not supported; only http")]
    Scheme(String),
    #[error("rollout webhook: the URL has no host")]
    NoHost,
}

/// Where announcements go. `Debug` shows the host and port only.
#[derive(Clone)]
pub struct Webhook {
    host: String,
    port: u16,
    /// Path and query: possibly secret, never logged.
    target: String,
    timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What is posted.
#[derive(Debug, Serialize)]
pub struct Announcement<'a> {
    pub event: &'static str,
    pub rollout: &'a str,
    pub flag_set: &'a str,
    pub flag_key: &'a str,
    pub reason: &'a str,
    pub at: DateTime<Utc>,
}

impl Webhook {
    pub fn parse(raw: &str, timeout: Duration) -> Result<Webhook, WebhookError> {
        let url = url::Url::parse(raw).map_err(|_| WebhookError::NotAUrl)?;
        if url.scheme() != "http" {
            return Err(WebhookError::Scheme(url.scheme().to_owned()));
        }
        let host = url.host_str().ok_or(WebhookError::NoHost)?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(Webhook {
            host,
            port,
            target,
            timeout,
        })
    }

    /// Posts `announcement`; a failure or a timeout is logged (host and port only) and counted.
    pub async fn announce(&self, announcement: &Announcement<'_>) {
        let outcome = tokio::time::timeout(self.timeout, self.post(announcement)).await;
        let failure = match outcome {
            Ok(Ok(status)) if (200..300).contains(&status) => None,
            Ok(Ok(status)) => Some(format!("answered status {status}")),
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("no answer within {:?}", self.timeout)),
        };
        match failure {
            None => {
                metrics::counter!("bunting_rollout_webhook_total", "outcome" => "ok").increment(1)
            }
            Some(why) => {
                metrics::counter!("bunting_rollout_webhook_total", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(host = %self.host, port = self.port, %why,
                    "rollout webhook failed");
            }
        }
    }

    async fn post(&self, announcement: &Announcement<'_>) -> Result<u16, String> {
        let body = serde_json::to_vec(announcement).map_err(|e| e.to_string())?;
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::post(self.target.as_str())
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"));
        driver.abort();
        Ok(response?.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host_are_taken_and_debug_hides_the_path() {
        let hook = Webhook::parse("http://relay:8080/hooks/s3cr3t?k=v", DEFAULT_TIMEOUT).unwrap();
        assert_eq!(hook.target, "/hooks/s3cr3t?k=v");
        let shown = format!("{hook:?}");
        assert!(
            shown.contains("relay") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert_eq!(
            Webhook::parse("https://relay/x", DEFAULT_TIMEOUT).unwrap_err(),
            WebhookError::Scheme("https".into())
        );
        assert_eq!(
            Webhook::parse("nope", DEFAULT_TIMEOUT).unwrap_err(),
            WebhookError::NotAUrl
        );
    }
}
