//! Change notifications for clients that cannot hold a gRPC stream: OFREP's server-sent events
//! (ADR-0008, `GET /ofrep/v1/events`) and the same notices over a WebSocket (`GET
//! /ofrep/v1/ws`), telling a static-context provider to re-fetch its bulk evaluation when the
//! flag set changes. Notification only: a notice carries the set's new validator (`etag`, the
//! definition's) and commit time (`lastModified`), never flag values, so the bulk endpoint stays
//! the one place that evaluates and authorizes.
//!
//! Each stream is a task ([`follow`]) watching the node's catalog and writing into a channel of
//! a few notices: a reader that does not read blocks only its own task while the catalog watch
//! coalesces changes, so memory per stream is bounded. Streams take a slot of the node's
//! `max_streams` and of the listener's own `max_event_streams`, and end when the node shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bunting_actors::Catalog;
use bytes::Bytes;
use http_body::Frame;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::problem::Problem;
use super::{Edge, caller, etag};
use crate::service::StreamSlot;

/// A notice this often keeps proxies and load balancers from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What an SSE client waits before reconnecting after the stream ends (the `retry` field).
const RETRY_MS: u32 = 2000;

/// Notices buffered per stream.
const STREAM_BUFFER: usize = 4;

/// The largest message a WebSocket client may send; clients have nothing to say but close and
/// pong, so anything larger ends the connection.
const MAX_CLIENT_MESSAGE: usize = 1024;

#[derive(Debug, Deserialize)]
pub struct Params {
    /// The flag set to follow; the `flagd-selector` header or the node's default otherwise.
    #[serde(rename = "flagSet")]
    flag_set: Option<String>,
}

/// What a stream tells its client.
#[derive(Debug)]
enum Notice {
    /// Re-fetch: `refetchEvaluation` with the set's version (the event id) and its data.
    Refetch {
        version: u64,
        data: Value,
    },
    KeepAlive,
}

/// A stream's two slots, held for as long as its task runs.
type Slots = (OwnedSemaphorePermit, StreamSlot);

/// `GET /ofrep/v1/events[?flagSet=<set>]`: server-sent events.
pub async fn sse(
    State(edge): State<Edge>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (set, slots) = admit(&edge, params, &headers, "GET /ofrep/v1/events", "ofrep_sse")?;
    // A client reconnecting says which version it saw last; anything newer is sent at once.
    let seen: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let notices = follow(&edge, set, seen, slots, "ofrep_sse");
    let opening = format!("retry: {RETRY_MS}\n: following flag set\n\n");
    let frames = tokio_stream::once(Bytes::from(opening))
        .chain(ReceiverStream::new(notices).map(|notice| match notice {
            Notice::Refetch { version, data } => {
                Bytes::from(format!("id: {version}\nevent: message\ndata: {data}\n\n"))
            }
            Notice::KeepAlive => Bytes::from_static(b": keep-alive\n\n"),
        }))
        .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
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

/// `GET /ofrep/v1/ws[?flagSet=<set>]`: the same notices as text messages on a WebSocket, the
/// keep-alive as a ping.
pub async fn websocket(
    State(edge): State<Edge>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Problem> {
    let (set, slots) = admit(&edge, params, &headers, "GET /ofrep/v1/ws", "ofrep_ws")?;
    let mut notices = follow(&edge, set, None, slots, "ofrep_ws");
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |mut socket: WebSocket| async move {
            loop {
                tokio::select! {
                    notice = notices.recv() => {
                        let message = match notice {
                            Some(Notice::Refetch { data, .. }) => Message::Text(data.to_string().into()),
                            Some(Notice::KeepAlive) => Message::Ping(Bytes::new()),
                            None => break,
                        };
                        if socket.send(message).await.is_err() {
                            return;
                        }
                    }
                    // Pongs and pings are answered by the library; a close, an error or an
                    // oversized message ends the stream (and so its task and slots).
                    incoming = socket.recv() => match incoming {
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                        Some(Ok(_)) => {}
                    },
                }
            }
            let _ = socket.send(Message::Close(None)).await;
        }))
}

/// The set a stream follows and its slots, or the refusal.
fn admit(
    edge: &Edge,
    params: Params,
    headers: &HeaderMap,
    path: &str,
    kind: &'static str,
) -> Result<(Arc<str>, Slots), Problem> {
    let named = params.flag_set.filter(|s| !s.is_empty()).map(Arc::from);
    let set = caller::evaluation_of(edge, headers, path, named)?
        .unwrap_or_else(|| Arc::from(edge.default_set()));
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
        .open_stream(kind)
        .map_err(|status| caller::refusal(&status))?;
    Ok((set, (listener_slot, node_slot)))
}

/// Starts the task following `set` for one stream: a notice for each new version (and at once
/// when `seen` is older than the current one), a keep-alive when idle, the end when the node
/// shuts down or the client goes.
fn follow(
    edge: &Edge,
    set: Arc<str>,
    seen: Option<u64>,
    slots: Slots,
    stream: &'static str,
) -> mpsc::Receiver<Notice> {
    let (tx, rx) = mpsc::channel::<Notice>(STREAM_BUFFER);
    let mut catalog = edge.dispatch().node().watch();
    let mut closing = edge.inner.closing.clone();
    tokio::spawn(async move {
        let _slots = slots;
        let first = catalog.borrow_and_update().clone();
        let mut version = first.version_of(&set);
        if let (Some(seen), Some(now)) = (seen, version)
            && now > seen
            && let Some(notice) = refetch(&first, &set)
            && tx.send(notice).await.is_err()
        {
            return;
        }
        let mut keep_alive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            let notice = tokio::select! {
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
                    crate::service::events::record_propagation(stream, &current);
                    match refetch(&current, &set) {
                        Some(notice) => notice,
                        None => continue,
                    }
                }
                _ = keep_alive.tick() => Notice::KeepAlive,
                () = crate::closing::closed(&mut closing) => break,
                () = tx.closed() => break,
            };
            if tx.send(notice).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// The `refetchEvaluation` notice for `set` as `catalog` holds it (a deleted set has none: its
/// providers find out from their re-fetch's 404 when they next evaluate).
fn refetch(catalog: &Catalog, set: &str) -> Option<Notice> {
    let flags = catalog.get(set)?;
    let last_modified = catalog
        .changed_at()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Some(Notice::Refetch {
        version: flags.version(),
        data: serde_json::json!({
            "type": "refetchEvaluation",
            "etag": etag::for_definition(flags),
            "lastModified": last_modified,
        }),
    })
}
