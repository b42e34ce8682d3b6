//! The HTTP listener: connections come through the edge's accept loop (its cap, header-read
//! and idle timeouts, counted like the gRPC port's), and hyper serves HTTP/1.1 and HTTP/2 on
//! each with bounded heads: a request head over `max_header_bytes` is refused, one that takes
//! longer than the header-read timeout to arrive is dropped (slow-loris clients), and HTTP/2
//! connections get a stream cap.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;
use tower::ServiceExt;

use crate::config::HttpConfig;
use crate::edge::streams::CountedBody;
use crate::edge::{self, ListenerLimits};

/// Serves `router` on `listener` until `closing` flips, then gives open requests and event
/// streams up to `drain` to finish (event streams end on `closing` themselves).
pub async fn serve(
    listener: TcpListener,
    limits: ListenerLimits,
    config: HttpConfig,
    router: Router,
    mut closing: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut incoming = edge::incoming(listener, limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper refuses a head that does not fit its read buffer (431); it needs at least 8 KiB.
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(20)));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = incoming.next() => accepted,
            () = crate::closing::closed(&mut closing) => break,
        };
        let Some(Ok(connection)) = accepted else {
            break;
        };
        let info = connection.connect_info();
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            // Counted from the moment the head was read until the answer's body is sent or
            // dropped: the connection's idle rule sees a long event stream as busy.
            let guard = info.streams().opened();
            request.extensions_mut().insert(info.clone());
            let router = router.clone();
            async move {
                let response = match router.oneshot(request.map(Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Body::new(CountedBody::new(body, guard))))
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(connection), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    drop(incoming);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("http: connections still open after the drain timeout are closed");
    }
}
