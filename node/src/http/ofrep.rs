//! OFREP (open-feature/protocol `service/openapi.yaml`, v0.3.0): one flag, every flag of a set,
//! and the provider configuration. Requests are decoded here and dispatched exactly as flagd's
//! gRPC evaluations are ([`Dispatch`](crate::dispatch::Dispatch)); the flag set is flagd's
//! selector, the `flagd-selector` header.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bunting_engine::{Entry, ResolveError};
use prost_types::Struct;
use serde_json::{Map, Value, json};

use super::Edge;
use super::answer::{self, BulkWriter, FlagAnswer};
use super::caller;
use super::etag;
use super::problem::{Code, Problem};
use crate::auth::Scope;
use crate::dispatch::DispatchError;
use crate::service::request::SELECTOR_HEADER;
use crate::service::wire_text::quoted;

/// The `service` label of OFREP's evaluations in the node's metrics.
const SERVICE: &str = "ofrep";

/// The headers an answer varies by besides its URL and body: a cache must not give one
/// caller's answer (or one set's) to another.
const VARY: &str = "authorization, x-api-key, flagd-selector";

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn evaluate_flag(
    State(edge): State<Edge>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let set = caller::evaluation(&edge, &headers, "POST /ofrep/v1/evaluate/flags/{key}")?;
    let name = set.as_deref().unwrap_or(edge.default_set()).to_owned();
    let request = read_request(&edge, &headers, body, Some(&key)).await?;
    if !request.has_targeting_key && buckets_by_targeting_key(&edge, &name, &key) {
        return Err(Problem::evaluation(
            Some(&key),
            Code::TargetingKeyMissing,
            format!(
                "flag {} splits users by targetingKey, and the context has none",
                quoted(&key)
            ),
        ));
    }
    let routed = edge
        .dispatch()
        .resolve(SERVICE, set, key.clone(), Some(request.context), None)
        .await
        .map_err(|e| dispatch_problem(Some(&key), e))?;
    let resolved = routed.answer;
    if let Some(error) = &resolved.error {
        return Err(resolution_problem(Some(&key), error));
    }
    let mut response = Json(FlagAnswer {
        key: &key,
        resolved: &resolved,
    })
    .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    routed.stamp.apply_headers(headers);
    Ok(response)
}

/// `POST /ofrep/v1/evaluate/flags`: every flag of the set, with a validator (see [`etag`]).
pub async fn evaluate_all(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let set = caller::evaluation(&edge, &headers, "POST /ofrep/v1/evaluate/flags")?;
    let name: Arc<str> = set.clone().unwrap_or_else(|| Arc::from(edge.default_set()));
    let request = read_request(&edge, &headers, body, None).await?;
    let if_none_match = headers.get(header::IF_NONE_MATCH);
    let node = edge.dispatch().node();
    let inputs = node.catalog().get(&name).and_then(|flags| {
        let pure = !flags.reads_clock() && !node.has_experiments_on(&name);
        pure.then(|| {
            let etag = etag::for_inputs(&name, flags, edge.inner.fractional, &request.canonical());
            (flags.version(), etag)
        })
    });
    // The validator first: it is a comparison, where the served-versions check takes a lock.
    if let Some((version, etag)) = &inputs
        && etag::matches(if_none_match, etag)
        && edge.may_skip_evaluation(&name, *version)
    {
        metrics::counter!("bunting_http_not_modified_total", "evaluated" => "no").increment(1);
        return Ok(not_modified(&edge, etag));
    }
    let mut writer = BulkWriter::with_capacity(node.catalog().get(&name).map_or(0, |f| f.len()));
    let routed = edge
        .dispatch()
        .visit_all(SERVICE, set.clone(), Some(request.context), |key, flag| {
            writer.flag(key, flag);
        })
        .await
        .map_err(|e| dispatch_problem(None, e))?;
    let header = routed.answer.map_err(|e| resolution_problem(None, &e))?;
    edge.served(&name, header.version);
    let version = header.version;
    let bytes = writer
        .finish(&header.metadata, &events_uri(set.as_deref()))
        .map_err(|e| Problem::Internal(e.to_string()))?;
    let etag = match inputs {
        Some((local, etag)) if local == version => etag,
        _ => etag::for_body(&bytes),
    };
    if etag::matches(if_none_match, &etag) {
        metrics::counter!("bunting_http_not_modified_total", "evaluated" => "yes").increment(1);
        return Ok(not_modified(&edge, &etag));
    }
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response();
    let headers = response.headers_mut();
    cache_headers(&edge, headers, &etag);
    routed.stamp.apply_headers(headers);
    Ok(response)
}

/// `GET /ofrep/v1/configuration`: what the provider may rely on.
pub async fn configuration(
    State(edge): State<Edge>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    caller::admit(
        &edge.inner.policy,
        Scope::Evaluate,
        &headers,
        "GET /ofrep/v1/configuration",
    )?;
    let body = json!({
        "name": "bunting",
        "capabilities": {
            "cacheInvalidation": {"polling": {"enabled": true, "minPollingIntervalMs": 1000}},
            "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float", "object"]},
        },
    });
    Ok(Json(body).into_response())
}

/// Where this set's change notifications are: relative, so it holds behind any proxy or CDN
/// origin (the provider puts its own OFREP origin in front).
fn events_uri(set: Option<&str>) -> String {
    match set {
        None => "/ofrep/v1/events".to_owned(),
        Some(set) => format!(
            "/ofrep/v1/events?flagSet={}",
            url::form_urlencoded::byte_serialize(set.as_bytes()).collect::<String>()
        ),
    }
}

fn not_modified(edge: &Edge, etag: &str) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    cache_headers(edge, response.headers_mut(), etag);
    response
}

/// Validator and freshness of a bulk answer (and of its 304s, which must repeat them).
fn cache_headers(edge: &Edge, headers: &mut HeaderMap, etag: &str) {
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    let config = edge.config();
    let control = format!(
        "private, max-age={}, stale-while-revalidate={}",
        config.evaluation_max_age_secs, config.stale_while_revalidate_secs
    );
    if let Ok(value) = HeaderValue::from_str(&control) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    headers.insert(header::VARY, HeaderValue::from_static(VARY));
}

/// The set a request names with flagd's selector header (a bare id or `flagSetId=<id>`).
pub fn selected_set(headers: &HeaderMap) -> Option<Arc<str>> {
    let raw = headers.get(SELECTOR_HEADER)?.to_str().ok()?.trim();
    let id = raw.strip_prefix("flagSetId=").unwrap_or(raw).trim();
    (!id.is_empty()).then(|| Arc::from(id))
}

/// An evaluation request body, decoded.
pub(super) struct Request {
    pub(super) context: Struct,
    pub(super) has_targeting_key: bool,
    /// The context as it arrived, for [`Request::canonical`].
    fields: Map<String, Value>,
}

impl Request {
    /// The context as compact JSON with sorted keys: what the bulk validator hashes. Computed
    /// only by the route that needs it, not for every evaluation.
    fn canonical(&self) -> Vec<u8> {
        // Serializing a `Map` into a `Vec` cannot fail.
        serde_json::to_vec(&self.fields).unwrap_or_default()
    }
}

/// Reads and decodes an OFREP body, `{"context": {...}}`.
async fn read_request(
    edge: &Edge,
    headers: &HeaderMap,
    body: Body,
    key: Option<&str>,
) -> Result<Request, Problem> {
    let bytes = read_body(edge, headers, body, "application/json").await?;
    decode(&bytes, key, true)
}

/// The body of a request whose content type must be `essence`, within the size limit.
pub(super) async fn read_body(
    edge: &Edge,
    headers: &HeaderMap,
    body: Body,
    essence: &str,
) -> Result<bytes::Bytes, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let sent = content_type.split(';').next().unwrap_or("").trim();
    if !sent.eq_ignore_ascii_case(essence) {
        return Err(Problem::UnsupportedMediaType {
            wanted: essence.to_owned(),
            found: if content_type.is_empty() {
                "none".to_owned()
            } else {
                crate::service::wire_text::bounded(content_type)
            },
        });
    }
    // The context's own limit is checked on its protobuf size by the dispatch; its JSON text may
    // be somewhat longer, so the body gets twice that and a margin, and no more.
    let limit = edge.dispatch().gate().max_context_bytes().saturating_mul(2) + 4096;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Problem::TooLarge { limit })
}

/// Decodes `{"context": {...}}`: a JSON object whose context is an object whose
/// `targetingKey`, if present, is a string. Without `context_required`, an absent context is
/// an empty one (flagd's protocol over Connect may omit an empty message field).
pub(super) fn decode(
    bytes: &[u8],
    key: Option<&str>,
    context_required: bool,
) -> Result<Request, Problem> {
    let invalid = |details: String| Problem::evaluation(key, Code::InvalidContext, details);
    let document: Value = serde_json::from_slice(bytes).map_err(|e| {
        Problem::evaluation(
            key,
            Code::ParseError,
            format!("request body is not JSON: {e}"),
        )
    })?;
    let Value::Object(mut document) = document else {
        return Err(Problem::evaluation(
            key,
            Code::ParseError,
            "request body must be a JSON object: {\"context\": {...}}",
        ));
    };
    let context = match document.remove("context") {
        Some(Value::Object(context)) => context,
        None if !context_required => Map::new(),
        Some(other) => {
            return Err(invalid(format!(
                "context must be an object, found {}",
                kind(&other)
            )));
        }
        None => return Err(invalid("the request has no context".to_owned())),
    };
    let has_targeting_key = match context.get("targetingKey") {
        None => false,
        Some(Value::String(key)) => !key.is_empty(),
        Some(other) => {
            return Err(invalid(format!(
                "targetingKey must be a string, found {}",
                kind(other)
            )));
        }
    };
    let struct_context = bunting_proto::json::json_to_struct(&context)
        .map_err(|e| invalid(format!("context: {e}")))?;
    Ok(Request {
        context: struct_context,
        has_targeting_key,
        fields: context,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether `key` of `set`, as this node holds it, splits users by their targeting key.
fn buckets_by_targeting_key(edge: &Edge, set: &str, key: &str) -> bool {
    let catalog = edge.dispatch().node().catalog();
    matches!(
        catalog.get(set).and_then(|flags| flags.get(key)),
        Some(Entry::Ready(flag)) if flag.buckets_by_targeting_key()
    )
}

pub(super) fn resolution_problem(key: Option<&str>, error: &ResolveError) -> Problem {
    Problem::evaluation(key, answer::code_of(error), error.message.clone())
}

pub(super) fn dispatch_problem(key: Option<&str>, error: DispatchError) -> Problem {
    match error {
        DispatchError::Refused(crate::service::Refused::Full { .. }) => Problem::TooBusy {
            details: error.to_string(),
            retry_after_secs: 1,
        },
        DispatchError::Context(_) => {
            Problem::evaluation(key, Code::InvalidContext, error.to_string())
        }
        DispatchError::UnknownSet(_) => {
            Problem::evaluation(key, Code::FlagNotFound, error.to_string())
        }
        DispatchError::EmptyFlagKey
        | DispatchError::NoSubjects
        | DispatchError::SubjectContext { .. }
        | DispatchError::EmptyKey(_)
        | DispatchError::BatchTooLarge { .. } => {
            Problem::evaluation(key, Code::General, error.to_string())
        }
        DispatchError::Refused(_) | DispatchError::Node(_) | DispatchError::PeerTotals { .. } => {
            Problem::Internal(error.to_string())
        }
    }
}
