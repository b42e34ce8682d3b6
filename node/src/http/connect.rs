//! flagd's evaluation protocol over the Connect protocol (connectrpc.com/docs/protocol), as
//! `@openfeature/flagd-web-provider` speaks it from browsers over HTTP/1.1: `ResolveAll` as a
//! unary JSON call and `EventStream` as a server stream of enveloped JSON messages. Only JSON
//! (browsers' default) is served; a binary (`application/proto`) call is refused with 415.
//!
//! Both go through the same dispatch and the same event streams as the gRPC services, so an
//! answer here is the answer a gRPC provider gets.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use serde_json::{Map, Value, json};
use tokio_stream::StreamExt;

use super::ofrep::{decode, dispatch_problem, read_body, resolution_problem};
use super::problem::Problem;
use super::{Edge, caller};
use crate::service::Evaluator;
use crate::service::flagd_evaluation::listed_by_resolve_all;

/// The label of these calls in the node's metrics.
const SERVICE: &str = "flagd.evaluation.v1.connect";

/// The end-of-stream flag of a Connect streaming envelope.
const END_STREAM: u8 = 0b10;

/// The most a streaming call's request envelope may hold (EventStream's request is empty).
const MAX_STREAM_REQUEST_BYTES: usize = 4096;

/// `POST /flagd.evaluation.v1.Service/ResolveAll` (and v2's), unary, JSON.
pub async fn resolve_all(State(edge): State<Edge>, headers: HeaderMap, body: Body) -> Response {
    match resolve_all_json(&edge, &headers, body).await {
        Ok(answer) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            answer.to_string(),
        )
            .into_response(),
        Err(problem) => unary_error(&problem),
    }
}

async fn resolve_all_json(edge: &Edge, headers: &HeaderMap, body: Body) -> Result<Value, Problem> {
    let set = caller::evaluation(edge, headers, "/flagd.evaluation.v1.Service/ResolveAll")?;
    let bytes = read_body(edge, headers, body, "application/json").await?;
    let request = decode(&bytes, None, false)?;
    let routed = edge
        .dispatch()
        .resolve_all(SERVICE, set, Some(request.context))
        .await
        .map_err(|e| dispatch_problem(None, e))?;
    let all = routed.answer.map_err(|e| resolution_problem(None, &e))?;
    let mut flags = Map::new();
    for (key, resolved) in all.flags {
        if !listed_by_resolve_all(&resolved) {
            continue;
        }
        let mut flag = Map::new();
        flag.insert(
            "reason".to_owned(),
            Value::String(resolved.reason.as_str().to_owned()),
        );
        if let Some(variant) = resolved.variant {
            flag.insert("variant".to_owned(), Value::String(variant));
        }
        // proto3 JSON of `AnyFlag.value`: the oneof arm by its JSON name. Integers travel as
        // doubles, as over gRPC (the oneof has no integer arm).
        let arm = match resolved.value {
            Some(Value::Bool(b)) => Some(("boolValue", Value::Bool(b))),
            Some(Value::String(s)) => Some(("stringValue", Value::String(s))),
            Some(Value::Number(n)) => n.as_f64().map(|f| ("doubleValue", json!(f))),
            Some(Value::Object(m)) => Some(("objectValue", Value::Object(m))),
            _ => None,
        };
        if let Some((name, value)) = arm {
            flag.insert(name.to_owned(), value);
        }
        flag.insert("metadata".to_owned(), Value::Object(resolved.metadata));
        flags.insert(key, Value::Object(flag));
    }
    Ok(json!({"flags": flags, "metadata": all.metadata}))
}

/// `POST /flagd.evaluation.v1.Service/EventStream` (and v2's), server streaming,
/// `application/connect+json`: `provider_ready`, then `configuration_change` and `keep_alive`
/// as the gRPC stream sends them, until the node shuts down.
pub async fn event_stream(State(edge): State<Edge>, headers: HeaderMap, body: Body) -> Response {
    match open_stream(&edge, &headers, body).await {
        Ok(response) => response,
        Err(problem) => stream_error(&problem),
    }
}

async fn open_stream(edge: &Edge, headers: &HeaderMap, body: Body) -> Result<Response, Problem> {
    let set = caller::evaluation(edge, headers, "/flagd.evaluation.v1.Service/EventStream")?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.eq_ignore_ascii_case("application/connect+json") {
        return Err(Problem::UnsupportedMediaType {
            wanted: "application/connect+json".to_owned(),
            found: crate::service::wire_text::bounded(content_type.to_owned()),
        });
    }
    // The request is one envelope holding `{}`; it is read (bounded) and not otherwise used.
    axum::body::to_bytes(body, MAX_STREAM_REQUEST_BYTES)
        .await
        .map_err(|_| Problem::TooLarge {
            limit: MAX_STREAM_REQUEST_BYTES,
        })?;
    let evaluator = Evaluator::new(edge.dispatch().clone(), edge.inner.closing.clone());
    let events = crate::service::events::stream(&evaluator, SERVICE, set, |kind, data| {
        let data = bunting_proto::json::struct_into_json(data).unwrap_or_default();
        envelope(0, &json!({"type": kind, "data": data}))
    })
    .map_err(|status| caller::refusal(&status))?;
    // The stream ends when the node closes it; the end-of-stream envelope then says so.
    let frames = events
        .map(|event| event.unwrap_or_else(|status| end_stream(Some(&caller::refusal(&status)))))
        .chain(tokio_stream::once(end_stream(None)))
        .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
    let mut response = Body::new(http_body_util::StreamBody::new(frames)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/connect+json"),
    );
    Ok(response)
}

/// One Connect envelope: flags, big-endian length, the JSON message.
fn envelope(flags: u8, message: &Value) -> Bytes {
    let text = message.to_string();
    let mut out = BytesMut::with_capacity(5 + text.len());
    out.put_u8(flags);
    out.put_u32(u32::try_from(text.len()).unwrap_or(u32::MAX));
    out.put_slice(text.as_bytes());
    out.freeze()
}

/// The end-of-stream envelope: `{}`, or the error the stream ended with.
fn end_stream(problem: Option<&Problem>) -> Bytes {
    match problem {
        None => envelope(END_STREAM, &json!({})),
        Some(problem) => envelope(END_STREAM, &json!({"error": error_body(problem)})),
    }
}

/// A Connect error: its code (named for gRPC's) and the message.
fn error_body(problem: &Problem) -> Value {
    let code = match problem.status() {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => "invalid_argument",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "permission_denied",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => "resource_exhausted",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal",
    };
    json!({"code": code, "message": crate::service::wire_text::bounded(problem.to_string())})
}

/// A unary call's error: the HTTP status Connect maps the code to, and the error as JSON.
fn unary_error(problem: &Problem) -> Response {
    let status = match problem.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            // Connect's own rule: an unsupported codec is a plain 415 without an error body.
            return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
        }
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::TOO_MANY_REQUESTS,
        other => other,
    };
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        error_body(problem).to_string(),
    )
        .into_response();
    if let Problem::TooBusy {
        retry_after_secs, ..
    } = problem
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    response
}

/// A streaming call refused before it started: HTTP 200 and only the end-of-stream envelope,
/// as Connect streams report errors (a 415 for a codec that is not served).
fn stream_error(problem: &Problem) -> Response {
    if problem.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    let mut response = Body::from(end_stream(Some(problem))).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/connect+json"),
    );
    response
}
