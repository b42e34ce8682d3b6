//! OFREP's event stream (ADR-0008): server-sent events telling a static-context provider to
//! re-fetch its bulk evaluation when the flag set changes. Notification only: the event carries
//! the set's new validator (`etag`, the definition's) and commit time (`lastModified`), never
//! flag values, so the bulk endpoint stays the one place that evaluates and authorizes.
//!
//! Each stream is a task watching the node's catalog, writing into a channel of a few events: a
//! reader that does not read blocks only its own task while the catalog watch coalesces
//! changes, so memory per stream is bounded. Streams take a slot of the node's `max_streams`
//! and of the listener's own `max_event_streams`, and end when the node shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bunting_actors::Catalog;
use bytes::Bytes;
use http_body::Frame;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::problem::Problem;
use super::{Edge, caller, etag};
use crate::auth::Scope;

/// A comment line this often keeps proxies and load balancers from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a client waits before reconnecting after the stream ends (the SSE `retry` field).
const RETRY_MS: u32 = 2000;

/// Events buffered per stream.
const STREAM_BUFFER: usize = 4;

#[derive(Debug, Deserialize)]
pub struct Params {
    /// The flag set to follow; the `flagd-selector` header or the node's default otherwise.
    #[serde(rename = "flagSet")]
    flag_set: Option<String>,
}

/// `GET /ofrep/v1/events[?flagSet=<set>]`.
pub async fn sse(
    State(edge): State<Edge>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let caller = caller::admit(
        &edge.inner.policy,
        Scope::Evaluate,
        &headers,
        "GET /ofrep/v1/events",
    )?;
    let set: Arc<str> = params
        .flag_set
        .filter(|s| !s.is_empty())
        .map(Arc::from)
        .or_else(|| super::ofrep::selected_set(&headers))
        .unwrap_or_else(|| Arc::from(edge.default_set()));
    caller::check_set(&caller, &set)?;
    let listener_slot = edge
        .inner
        .event_streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| Problem::TooBusy {
            details: format!(
                "this listener has its limit of {} event streams open",
                edge.config().max_event_streams
            ),
            retry_after_secs: 5,
        })?;
    let node_slot = edge
        .dispatch()
        .gate()
        .open_stream("ofrep_events")
        .map_err(|status| caller::refusal(&status))?;
    // A client reconnecting says which version it saw last; anything newer is sent at once.
    let seen: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let mut catalog = edge.dispatch().node().watch();
    let mut closing = edge.inner.closing.clone();
    tokio::spawn(async move {
        let _slots = (listener_slot, node_slot);
        let first = catalog.borrow_and_update().clone();
        let mut version = first.version_of(&set);
        let mut opening = format!("retry: {RETRY_MS}\n: following flag set\n\n").into_bytes();
        if let (Some(seen), Some(now)) = (seen, version)
            && now > seen
            && let Some(event) = refetch(&first, &set)
        {
            opening.extend_from_slice(&event);
        }
        if tx.send(Bytes::from(opening)).await.is_err() {
            return;
        }
        let mut keep_alive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            let event = tokio::select! {
                changed = catalog.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let current = catalog.borrow_and_update().clone();
                    let now = current.version_of(&set);
                    if now == version {
                        continue;
                    }
                    version = now;
                    crate::service::events::record_propagation("ofrep_sse", &current);
                    match refetch(&current, &set) {
                        Some(event) => Bytes::from(event),
                        None => continue,
                    }
                }
                _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                () = crate::closing::closed(&mut closing) => break,
                () = tx.closed() => break,
            };
            if tx.send(event).await.is_err() {
                break;
            }
        }
    });
    let frames = ReceiverStream::new(rx).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
    let mut response = Body::new(http_body_util::StreamBody::new(frames)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx buffers proxied answers unless told not to; an event stream must not wait.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The `refetchEvaluation` event for `set` as `catalog` holds it (a deleted set has none: its
/// providers find out from their re-fetch's 404 when they next evaluate).
fn refetch(catalog: &Catalog, set: &str) -> Option<Vec<u8>> {
    let flags = catalog.get(set)?;
    let last_modified = catalog
        .changed_at()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let data = serde_json::json!({
        "type": "refetchEvaluation",
        "etag": etag::for_definition(flags),
        "lastModified": last_modified,
    });
    Some(format!("id: {}\nevent: message\ndata: {data}\n\n", flags.version()).into_bytes())
}
