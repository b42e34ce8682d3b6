//! The client side: a tonic interceptor adding `authorization: Bearer <token>` to every call, for
//! the CLI, the load generator and the tests.

use std::fmt;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A channel whose every call carries the token (or none).
pub type AuthChannel = InterceptedService<Channel, Bearer>;

/// The header value to send, if any. `Debug` does not print it.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Bearer(<redacted>)"),
            None => f.write_str("Bearer(none)"),
        }
    }
}

/// The token is not something a header can carry (it is not even a token: no need to say more).
#[derive(Debug, thiserror::Error)]
#[error("the token holds characters an HTTP header cannot carry")]
pub struct BadHeader;

impl Bearer {
    pub fn none() -> Bearer {
        Bearer(None)
    }

    /// `token` as `Bearer <token>`; `None` or an empty string sends no header.
    pub fn new(token: Option<&str>) -> Result<Bearer, BadHeader> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Bearer(None)),
            Some(token) => {
                let mut value: MetadataValue<Ascii> =
                    format!("Bearer {token}").parse().map_err(|_| BadHeader)?;
                // Kept out of HPACK's dynamic table, as HTTP/2 advises for credentials.
                value.set_sensitive(true);
                Ok(Bearer(Some(value)))
            }
        }
    }

    /// The same token for the shard-aware client (`bunting-client`).
    pub fn client_token(&self) -> Option<bunting_client::Token> {
        self.0.clone().map(bunting_client::Token::from_header)
    }

    pub fn wrap(self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, self)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
