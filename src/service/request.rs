//! What every RPC shares besides admission (`admission.rs`): the selector, and how failures
//! become gRPC statuses.

use std::sync::Arc;

use bunting_engine::{ErrorCode, ResolveError};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// flagd's header naming the flag set a request is for.
pub const SELECTOR_HEADER: &str = "flagd-selector";

/// A service's store, or why the node has none (its flags come from a file): every RPC that
/// needs the store is refused with FAILED_PRECONDITION giving that reason.
#[derive(Debug)]
pub struct RequiredStore<S: ?Sized> {
    store: Option<Arc<S>>,
    without: Arc<str>,
}

impl<S: ?Sized> Clone for RequiredStore<S> {
    fn clone(&self) -> Self {
        RequiredStore {
            store: self.store.clone(),
            without: self.without.clone(),
        }
    }
}

impl<S: ?Sized> RequiredStore<S> {
    pub fn new(store: Option<Arc<S>>, without: String) -> RequiredStore<S> {
        RequiredStore {
            store,
            without: without.into(),
        }
    }

    pub fn get(&self) -> Result<&S, Status> {
        self.store
            .as_deref()
            .ok_or_else(|| Status::failed_precondition(&*self.without))
    }
}

/// The flag set a request names: the body's selector if set, else the `Flagd-Selector` header.
/// Both flagd forms are accepted: a bare id, or `flagSetId=<id>`.
pub fn selector(metadata: &MetadataMap, body: &str) -> Option<Arc<str>> {
    let raw = if body.is_empty() {
        metadata.get(SELECTOR_HEADER)?.to_str().ok()?
    } else {
        body
    };
    let raw = raw.trim();
    let id = raw.strip_prefix("flagSetId=").unwrap_or(raw).trim();
    (!id.is_empty()).then(|| Arc::from(id))
}

/// flagd's mapping of resolution errors to gRPC status codes.
pub fn resolution_status(error: &ResolveError) -> Status {
    let code = match error.code {
        ErrorCode::FlagNotFound => Code::NotFound,
        ErrorCode::TypeMismatch => Code::InvalidArgument,
        ErrorCode::ParseError => Code::DataLoss,
        ErrorCode::General => Code::Unknown,
    };
    // The engine's message quotes the flag key whole, and the key is the client's.
    Status::new(code, super::wire_text::bounded(error.message.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_come_from_the_body_or_the_header() {
        let mut headers = MetadataMap::new();
        assert_eq!(selector(&headers, ""), None);
        headers.insert(SELECTOR_HEADER, "flagSetId=shop".parse().unwrap());
        assert_eq!(selector(&headers, "").as_deref(), Some("shop"));
        assert_eq!(selector(&headers, "billing").as_deref(), Some("billing"));
    }
}
