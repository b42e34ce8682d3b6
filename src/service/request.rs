//! What every RPC does first: admit the request, read the selector, decode the context within
//! its size limit; and how failures become gRPC statuses.

use std::sync::Arc;

use bunting_actors::NodeError;
use bunting_engine::{ErrorCode, EvaluationContext, ResolveError};
use prost::Message;
use prost_types::Struct;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// flagd's header naming the flag set a request is for.
pub const SELECTOR_HEADER: &str = "flagd-selector";

/// Admission control shared by every service: a cap on requests in flight (ractor mailboxes are
/// unbounded, so the bound lives here, at the edge) and on the size of evaluation contexts.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    limit: usize,
    max_context_bytes: usize,
}

impl Gate {
    pub fn new(max_concurrent_requests: usize, max_context_bytes: usize) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(max_concurrent_requests)),
            limit: max_concurrent_requests,
            max_context_bytes,
        }
    }

    /// A permit for one request, or `RESOURCE_EXHAUSTED` at once when the node is full: shedding
    /// load beats queueing it where nobody can see it.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("bunting_requests_shed_total").increment(1);
            Status::resource_exhausted(format!(
                "node is at its limit of {} requests in flight; retry with backoff",
                self.limit
            ))
        })
    }

    /// Decodes a request's context, refusing it whole if it is over the size limit.
    pub fn context(&self, context: Option<Struct>) -> Result<EvaluationContext, Status> {
        let Some(context) = context else {
            return Ok(EvaluationContext::new());
        };
        let size = context.encoded_len();
        if size > self.max_context_bytes {
            return Err(Status::invalid_argument(format!(
                "evaluation context is {size} bytes, over this node's limit of {} bytes",
                self.max_context_bytes
            )));
        }
        bunting_proto::json::struct_into_json(context)
            .map(EvaluationContext::from_fields)
            .map_err(|e| Status::invalid_argument(format!("evaluation context: {e}")))
    }

    pub fn max_context_bytes(&self) -> usize {
        self.max_context_bytes
    }
}

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
    Status::new(code, error.message.clone())
}

pub fn node_status(error: NodeError) -> Status {
    Status::unavailable(error.to_string())
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

    #[test]
    fn oversized_contexts_are_refused() {
        let gate = Gate::new(1, 16);
        let mut big = Struct::default();
        big.fields.insert(
            "k".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".repeat(100))),
            },
        );
        let err = gate.context(Some(big)).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("over this node's limit of 16 bytes"));
    }

    #[test]
    fn the_gate_sheds_load_past_its_limit() {
        let gate = Gate::new(1, 1024);
        let held = gate.admit().unwrap();
        assert_eq!(gate.admit().unwrap_err().code(), Code::ResourceExhausted);
        drop(held);
        assert!(gate.admit().is_ok());
    }
}
