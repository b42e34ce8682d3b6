//! The client's settings, and how an address becomes a lazily connected channel.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::ClientError;

/// How to reach the cluster and how hard to try.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Nodes to ask for the topology at start (and when every known node fails): `host:port` or a
    /// URL (`http://host:port`, `https://host:port`).
    pub seeds: Vec<String>,
    /// The whole budget of one call, retries and backoff included.
    pub request_timeout: Duration,
    /// Attempts per call, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles with each further retry.
    pub retry_backoff: Duration,
    /// Two topology refreshes are at least this far apart, however many answers ask for one.
    pub topology_refresh_min_interval: Duration,
    /// How long a TCP (and TLS) connect may take. Short, so that a dead node is noticed in time to
    /// retry elsewhere within `request_timeout`.
    pub connect_timeout: Duration,
    /// After a node fails, requests avoid it for this long (the owner's shards go to other
    /// nodes, which accept any request) unless it is the only one left.
    pub node_quarantine: Duration,
    /// TLS for every connection; addresses without a scheme then use `https`.
    pub tls: Option<ClientTlsConfig>,
    /// The API token every call carries as `authorization: Bearer <token>` (topology included),
    /// for nodes whose evaluation is not open.
    pub token: Option<Token>,
}

/// An API token as the header value it is sent as. `Debug` does not print it.
#[derive(Clone)]
pub struct Token(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// A token that an HTTP header cannot carry (no more is said: it is a secret).
#[derive(Debug, thiserror::Error)]
#[error("the token holds characters an HTTP header cannot carry")]
pub struct InvalidToken;

impl Token {
    pub fn new(token: &str) -> Result<Token, InvalidToken> {
        let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| InvalidToken)?;
        value.set_sensitive(true);
        Ok(Token(value))
    }

    /// From a whole header value, `Bearer <token>`, already made.
    pub fn from_header(mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>) -> Token {
        value.set_sensitive(true);
        Token(value)
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            seeds: Vec::new(),
            request_timeout: Duration::from_secs(2),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(20),
            topology_refresh_min_interval: Duration::from_millis(250),
            connect_timeout: Duration::from_millis(250),
            node_quarantine: Duration::from_secs(1),
            tls: None,
            token: None,
        }
    }
}

impl ClientConfig {
    /// The defaults, with these seeds.
    pub fn new<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            seeds: seeds.into_iter().map(Into::into).collect(),
            ..ClientConfig::default()
        }
    }

    /// Adds the token, if any, to `request`.
    pub(crate) fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.0.clone());
        }
    }

    /// A channel to `address` that connects on first use (so a node that is down costs nothing
    /// until a request needs it) and reconnects by itself after a failure.
    pub(crate) fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        let uri = if address.contains("://") {
            address.to_owned()
        } else if self.tls.is_some() {
            format!("https://{address}")
        } else {
            format!("http://{address}")
        };
        let invalid = |e: tonic::transport::Error| ClientError::InvalidAddress {
            address: address.to_owned(),
            reason: e.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(invalid)?
            .connect_timeout(self.connect_timeout)
            // Requests are small; waiting for the delayed ACK costs 40 ms each.
            .tcp_nodelay(true)
            // A node that vanishes without closing its connections (power loss, partition) is
            // found by the pings instead of by the first request's deadline.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(2));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(invalid)?;
        }
        Ok(endpoint.connect_lazy())
    }
}
