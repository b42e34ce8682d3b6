//! Counts each connection's open streams for its idle rule.
//!
//! The IO wrapper ([`super::connection`]) sees bytes, not streams: it cannot tell a quiet
//! SyncFlags stream (data only on change) from a connection nobody uses, and the keepalive pings
//! it sends make every live peer look busy. So every request passes through this layer, which
//! finds its connection's [`StreamCount`] in the request's extensions (tonic puts the
//! connection's [`EdgeConnectInfo`] there) and holds one count for as long as the request lives:
//! until its response body has been sent in full or dropped (a cancelled call, a reset stream).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;
use tonic::body::Body;
use tower_service::Service;

use super::connection::EdgeConnectInfo;

/// One connection's open streams and when it last had none.
#[derive(Debug)]
pub struct StreamCount {
    open: AtomicUsize,
    /// When the last stream closed (or the connection was accepted), in milliseconds since
    /// `epoch`.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl StreamCount {
    pub fn new() -> Arc<StreamCount> {
        Arc::new(StreamCount {
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Since when the connection has had no stream open; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.open() > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::SeqCst);
        Some(self.epoch + std::time::Duration::from_millis(ms))
    }

    /// Counts one stream until the returned guard is dropped.
    pub fn opened(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        StreamGuard(self.clone())
    }
}

/// One open stream; dropping it closes the stream's count.
#[derive(Debug)]
pub struct StreamGuard(Arc<StreamCount>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let count = &self.0;
        let ms = u64::try_from(count.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // The time first, then the count: whoever sees the count at zero sees this time too.
        count.idle_since_ms.store(ms, Ordering::SeqCst);
        count.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The layer for `tonic::transport::Server::layer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackStreamsLayer;

impl<S> tower_layer::Layer<S> for TrackStreamsLayer {
    type Service = TrackStreams<S>;

    fn layer(&self, inner: S) -> TrackStreams<S> {
        TrackStreams { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TrackStreams<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for TrackStreams<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Counted here, synchronously, as hyper hands the request over: the connection is busy
        // from the moment its request was read, not from when a handler first runs.
        let info = request.extensions().get::<EdgeConnectInfo>().cloned();
        let guard = info.as_ref().map(|info| info.streams().opened());
        if let Some(info) = info {
            // What tonic puts there for a plain TCP listener, so `Request::remote_addr` works.
            request.extensions_mut().insert(info.tcp);
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| Body::new(CountedBody::new(body, guard))),
                None => response,
            })
        })
    }
}

/// A response body that keeps its stream counted until it ends or is dropped: the gRPC
/// server's (above) and the HTTP edge's (`crate::http`).
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    _guard: StreamGuard,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, guard: StreamGuard) -> CountedBody<B> {
        CountedBody {
            inner,
            _guard: guard,
        }
    }
}

impl<B: HttpBody + Unpin> HttpBody for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
