//! Who is calling: the same tokens, scopes and open settings as the gRPC port, read from
//! `authorization: Bearer <token>` or OFREP's alternative, `X-API-Key: <token>`.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use tonic::Code as GrpcCode;

use super::problem::Problem;
use crate::auth::{Caller, Policy, Scope};
use crate::service::request::check_flag_set;

/// OFREP's API-key header, which some providers send instead of a bearer token.
const API_KEY_HEADER: &str = "x-api-key";

/// The caller of `path`, which needs `scope`, or the refusal. A request may send either header;
/// with both, the `authorization` header is the one read.
pub fn admit(
    policy: &Policy,
    scope: Scope,
    headers: &HeaderMap,
    path: &str,
) -> Result<Caller, Problem> {
    let bearer;
    let header = match headers.get(axum::http::header::AUTHORIZATION) {
        Some(value) => Some(value.as_bytes()),
        None => match headers.get(API_KEY_HEADER) {
            Some(key) => {
                bearer = [b"Bearer ".as_slice(), key.as_bytes()].concat();
                Some(bearer.as_slice())
            }
            None => None,
        },
    };
    policy
        .authorize(scope, header, path)
        .map_err(|status| refusal(&status))
}

/// The set an evaluation request names (flagd's selector; `None` for the node's default),
/// once its caller has scope evaluate on `path` and may touch that set: what every evaluation
/// route and event stream asks first.
pub fn evaluation(
    edge: &super::Edge,
    headers: &HeaderMap,
    path: &str,
) -> Result<Option<Arc<str>>, Problem> {
    evaluation_of(edge, headers, path, None)
}

/// [`evaluation`] for a request that may name its set itself (`named`, an event stream's
/// `flagSet` parameter), before the selector header.
pub fn evaluation_of(
    edge: &super::Edge,
    headers: &HeaderMap,
    path: &str,
    named: Option<Arc<str>>,
) -> Result<Option<Arc<str>>, Problem> {
    let caller = admit(&edge.inner.policy, Scope::Evaluate, headers, path)?;
    let set = named.or_else(|| super::ofrep::selected_set(headers));
    check_set(&caller, set.as_deref().unwrap_or(edge.default_set()))?;
    Ok(set)
}

/// Refuses `caller` on `set` unless it may touch it (403).
pub fn check_set(caller: &Caller, set: &str) -> Result<(), Problem> {
    check_flag_set(caller, set).map_err(|status| refusal(&status))
}

/// A gRPC refusal from the shared checks as the HTTP answer it means.
pub fn refusal(status: &tonic::Status) -> Problem {
    let details = status.message().to_owned();
    match status.code() {
        GrpcCode::Unauthenticated => Problem::Auth {
            status: StatusCode::UNAUTHORIZED,
            details,
        },
        GrpcCode::PermissionDenied => Problem::Auth {
            status: StatusCode::FORBIDDEN,
            details,
        },
        GrpcCode::ResourceExhausted => Problem::TooBusy {
            details,
            retry_after_secs: 1,
        },
        GrpcCode::Unavailable => Problem::Unavailable(details),
        _ => Problem::Internal(details),
    }
}
