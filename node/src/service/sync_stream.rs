//! `flagd.sync.v1.FlagSyncService/SyncFlags`, written by hand below tonic's codec.
//!
//! tonic's codec encodes every message of every stream into that stream's own buffer, so N
//! subscribers of a set cost N copies of its definition per version, held by hyper for as long as
//! a peer's flow-control window stays shut. This service answers the `SyncFlags` path itself: each
//! data frame it hands to hyper is a clone of the version's one shared [`Bytes`] (see
//! `sync_snapshots.rs`), already a complete gRPC message. The service's other methods go to the
//! generated tonic service unchanged.
//!
//! A subscriber is a task and a one-slot channel to its response body. When a newer version is
//! ready and the body has not taken the previous one for `stream_lag_ms`, the subscriber fell
//! behind: the task ends it with UNAVAILABLE (flagd providers reconnect on it and get the newest
//! version), counts it in `bunting_streams_dropped_total{reason="fell_behind"}`, and gives back
//! its stream slot. A reader that never reads again keeps, in hyper, at most the two versions it
//! had taken (shared frames, not copies).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bunting_proto::flagd::sync::v1::SyncFlagsRequest;
use bunting_proto::flagd::sync::v1::flag_sync_service_server::{
    FlagSyncServiceServer, SERVICE_NAME,
};
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower_service::Service;

use super::admission::StreamSlot;
use super::events::record_propagation;
use super::flagd_sync::FlagdSync;
use super::request::selector;
use super::sync_snapshots::{Snapshot, Snapshots};
use bunting_actors::Catalog;

/// The path this service answers itself.
const SYNC_FLAGS_PATH: &str = "/flagd.sync.v1.FlagSyncService/SyncFlags";

/// The label of `SyncFlags` in the stream metrics.
const STREAM: &str = "flagd.sync.v1.SyncFlags";

/// A `SyncFlagsRequest` carries a provider id and a selector; anything near this is not one.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// `FlagSyncService` with `SyncFlags` answered from shared snapshots.
#[derive(Debug, Clone)]
pub struct SyncService {
    generated: FlagSyncServiceServer<FlagdSync>,
    subscriptions: Arc<Subscriptions>,
}

#[derive(Debug)]
struct Subscriptions {
    sync: FlagdSync,
    snapshots: Arc<Snapshots>,
    /// How long a subscriber may leave a version untaken while a newer one waits.
    lag: Duration,
}

impl SyncService {
    /// Fails only if the sync context cannot be a protobuf Struct (it is one string).
    pub fn new(sync: FlagdSync, lag: Duration) -> Result<SyncService, Status> {
        let context = super::evaluator::metadata_struct(&sync.sync_context())?;
        Ok(SyncService {
            generated: FlagSyncServiceServer::new(sync.clone()),
            subscriptions: Arc::new(Subscriptions {
                sync,
                snapshots: Arc::new(Snapshots::with_context(&context)),
                lag,
            }),
        })
    }
}

impl NamedService for SyncService {
    const NAME: &'static str = SERVICE_NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl Service<http::Request<Body>> for SyncService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() == SYNC_FLAGS_PATH {
            let subscriptions = self.subscriptions.clone();
            Box::pin(async move {
                Ok(match subscriptions.subscribe(request).await {
                    Ok(response) => response,
                    Err(status) => status.into_http(),
                })
            })
        } else {
            self.generated.call(request)
        }
    }
}

impl Subscriptions {
    /// Admits the stream, reads its request, and starts its task; or the status it is refused
    /// with, as a trailers-only response.
    async fn subscribe(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, Status> {
        let evaluator = &self.sync.0;
        let (parts, body) = request.into_parts();
        // Read before the slot is taken: a client that never sends its request holds nothing.
        let message = read_request(body).await?;
        let slot = evaluator.gate().open_stream(STREAM)?;
        let metadata = MetadataMap::from_headers(parts.headers);
        let set = self.sync.set_name(selector(&metadata, &message.selector));
        evaluator.authorize_set(&parts.extensions, Some(&set))?;
        let mut catalog = evaluator.node().watch();
        let current = catalog.borrow_and_update().clone();
        let Some(flags) = current.get(&set) else {
            return Err(super::flagd_sync::unknown_set(&set));
        };
        let first = self
            .snapshots
            .get(&set, Some(flags))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let (frames, taken) = mpsc::channel(1);
        let (end, ended) = oneshot::channel();
        // The channel is empty: the first version always fits.
        let _ = frames.try_send(first.frame);
        let subscriber = Subscriber {
            set,
            sent: first.version,
            catalog,
            closing: evaluator.closing.clone(),
            frames,
            end,
            lag: self.lag,
            _slot: slot,
        };
        tokio::spawn(subscriber.follow(self.snapshots.clone()));
        let mut response = http::Response::new(Body::new(SubscriberBody {
            taken,
            ended,
            finished: false,
        }));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok(response)
    }
}

/// One subscriber's task: sends each new version of its set, and ends the stream when the
/// subscriber falls behind, the node shuts down, or the peer goes away.
#[derive(Debug)]
struct Subscriber {
    set: Arc<str>,
    /// The version last handed to the body (`None`: the set's deletion).
    sent: Option<u64>,
    catalog: watch::Receiver<Arc<Catalog>>,
    closing: watch::Receiver<bool>,
    frames: mpsc::Sender<Bytes>,
    end: oneshot::Sender<Status>,
    lag: Duration,
    /// Given back when the task ends.
    _slot: StreamSlot,
}

impl Subscriber {
    async fn follow(mut self, snapshots: Arc<Snapshots>) {
        // A newer version waiting for the body to take the previous one, and since when the
        // body has been that far behind.
        let mut pending: Option<Snapshot> = None;
        let mut behind_since: Option<Instant> = None;
        let status = loop {
            let deadline = behind_since.map(|since| since + self.lag);
            let fell_behind = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
            tokio::select! {
                changed = self.catalog.changed() => {
                    if changed.is_err() {
                        break Status::unavailable("the node is stopping; reconnect");
                    }
                    let current = self.catalog.borrow_and_update().clone();
                    let newest = pending.as_ref().map_or(self.sent, |p| p.version);
                    if current.version_of(&self.set) == newest {
                        continue;
                    }
                    match snapshots.get(&self.set, current.get(&self.set)).await {
                        Ok(snapshot) => {
                            record_propagation("sync", &current);
                            pending = Some(snapshot);
                            behind_since.get_or_insert_with(Instant::now);
                        }
                        Err(e) => break Status::internal(e.to_string()),
                    }
                }
                reserved = self.frames.reserve(), if pending.is_some() => {
                    // The body is gone (the peer reset the stream or left): nobody to tell.
                    let Ok(slot) = reserved else { return };
                    if let Some(snapshot) = pending.take() {
                        self.sent = snapshot.version;
                        slot.send(snapshot.frame);
                    }
                    behind_since = None;
                }
                () = fell_behind, if deadline.is_some() => {
                    metrics::counter!(
                        "bunting_streams_dropped_total", "stream" => STREAM, "reason" => "fell_behind"
                    )
                    .increment(1);
                    break Status::unavailable(format!(
                        "this subscriber fell behind: it had not taken version {} of flag set {} \
                         {} ms after a newer version was ready; reconnect for the newest",
                        self.sent.map_or_else(|| "(deleted)".to_owned(), |v| v.to_string()),
                        super::wire_text::quoted(&self.set),
                        self.lag.as_millis()
                    ));
                }
                () = crate::closing::closed(&mut self.closing) => break Status::new(Code::Ok, ""),
                () = self.frames.closed() => return,
            }
        };
        let _ = self.end.send(status);
    }
}

/// The response body: data frames as the task hands them over, then the trailers it ends with.
#[derive(Debug)]
struct SubscriberBody {
    taken: mpsc::Receiver<Bytes>,
    ended: oneshot::Receiver<Status>,
    finished: bool,
}

impl HttpBody for SubscriberBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        // The end preempts frames still queued: a subscriber that fell behind gets its status,
        // not the version it was too slow for.
        if let Poll::Ready(ended) = std::future::Future::poll(Pin::new(&mut self.ended), cx) {
            self.finished = true;
            let status = ended.unwrap_or_else(|_| Status::unavailable("the sync stream ended"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
        }
        match self.taken.poll_recv(cx) {
            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(Frame::data(frame)))),
            // The task sends its status before it drops the sender, so `ended` is ready on the
            // next poll; wake for it.
            Poll::Ready(None) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

/// `status` as gRPC trailers.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message that cannot be a header value gets here: send the code alone.
        trailers.insert(
            Status::GRPC_STATUS,
            http::HeaderValue::from(i32::from(status.code())),
        );
    }
    trailers
}

/// The first message of a `SyncFlags` request body (one is all the method takes).
async fn read_request(mut body: Body) -> Result<SyncFlagsRequest, Status> {
    let mut buffer = BytesMut::new();
    loop {
        if let Some(message) = complete_message(&buffer)? {
            return SyncFlagsRequest::decode(message).map_err(|e| {
                Status::invalid_argument(format!("undecodable SyncFlagsRequest: {e}"))
            });
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(mut data) = frame.into_data() {
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        buffer.extend_from_slice(chunk);
                        let n = chunk.len();
                        data.advance(n);
                    }
                }
            }
            Some(Err(e)) => {
                return Err(Status::new(
                    Code::Cancelled,
                    format!("reading the SyncFlags request: {e}"),
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "the SyncFlags request ended before its message",
                ));
            }
        }
    }
}

/// The message in `buffer` once its whole gRPC frame is there.
fn complete_message(buffer: &[u8]) -> Result<Option<&[u8]>, Status> {
    let Some((&compressed, rest)) = buffer.split_first() else {
        return Ok(None);
    };
    let Some(len) = rest.get(..4) else {
        return Ok(None);
    };
    if compressed != 0 {
        return Err(Status::unimplemented(
            "compressed SyncFlags requests are not supported; send it uncompressed",
        ));
    }
    let Ok(len) = <[u8; 4]>::try_from(len) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_REQUEST_BYTES {
        return Err(Status::invalid_argument(format!(
            "a SyncFlags request of {len} bytes is over the {MAX_REQUEST_BYTES}-byte limit"
        )));
    }
    Ok(rest.get(4..4 + len))
}
