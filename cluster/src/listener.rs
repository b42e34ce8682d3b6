//! The cluster port's accept loop.
//!
//! Bunting binds the cluster port itself and hands each accepted connection to ractor_cluster's
//! `NodeServer`, rather than letting the NodeServer bind it: so the bound address (port 0 in
//! tests) is known, a bind failure is an error naming the address, and connections past the
//! cap of unauthenticated ones are closed before any actor is spawned for them. With TLS, each
//! handshake runs on its own task under the handshake timeout, so a slow or silent client cannot
//! hold up accepting others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor_cluster::{NetworkStream, NodeServerMessage};
use tokio::net::{TcpListener, TcpStream};

use crate::error::ClusterError;
use crate::tls::ClusterTls;

/// How often a kind of refusal is logged at most: a flood of bad connections must not become a
/// flood of log lines.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct RateLimit(std::sync::Mutex<Option<Instant>>);

impl RateLimit {
    fn ready(&self) -> bool {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            return true;
        }
        false
    }
}

/// What the accept loop needs besides the socket.
#[derive(Debug)]
pub(crate) struct Acceptor {
    pub server: ActorRef<NodeServerMessage>,
    /// Inbound sessions not yet authenticated (maintained by the connector).
    pub pending: Arc<AtomicUsize>,
    pub max_pending: usize,
    pub tls: Option<ClusterTls>,
    pub handshake_timeout: Duration,
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ClusterError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ClusterError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ClusterError::Bind { addr, source })?;
    Ok((listener, bound))
}

pub(crate) async fn accept_loop(listener: TcpListener, acceptor: Acceptor) {
    let acceptor = Arc::new(acceptor);
    let handshaking = Arc::new(AtomicUsize::new(0));
    let refusals = Arc::new(RateLimit::default());
    let tls_failures = Arc::new(RateLimit::default());
    loop {
        let (stream, peer_addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "cluster port accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let waiting =
            acceptor.pending.load(Ordering::Relaxed) + handshaking.load(Ordering::Relaxed);
        if waiting >= acceptor.max_pending {
            if refusals.ready() {
                tracing::warn!(
                    %peer_addr,
                    "refusing cluster connections: {} are already waiting to authenticate",
                    acceptor.max_pending
                );
            }
            continue;
        }
        let Ok(local_addr) = stream.local_addr() else {
            continue;
        };
        // Heartbeats and forwarded requests are small and latency-bound.
        let _ = stream.set_nodelay(true);
        let Some(tls) = acceptor.tls.clone() else {
            let raw = NetworkStream::Raw {
                peer_addr,
                local_addr,
                stream,
            };
            if !open(&acceptor.server, raw) {
                return;
            }
            continue;
        };
        handshaking.fetch_add(1, Ordering::Relaxed);
        let (acceptor, handshaking, tls_failures) =
            (acceptor.clone(), handshaking.clone(), tls_failures.clone());
        tokio::spawn(async move {
            let accepted = handshake(&tls, stream, acceptor.handshake_timeout).await;
            handshaking.fetch_sub(1, Ordering::Relaxed);
            match accepted {
                Ok(stream) => {
                    open(
                        &acceptor.server,
                        NetworkStream::TlsServer {
                            peer_addr,
                            local_addr,
                            stream,
                        },
                    );
                }
                Err(error) => {
                    if tls_failures.ready() {
                        tracing::warn!(%peer_addr, %error, "refused a cluster connection: TLS handshake failed");
                    }
                }
            }
        });
    }
}

async fn handshake(
    tls: &ClusterTls,
    stream: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    match tokio::time::timeout(timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no handshake within {timeout:?}")),
    }
}

/// Hands a connection to the NodeServer; false once the NodeServer has stopped (shutdown).
fn open(server: &ActorRef<NodeServerMessage>, stream: NetworkStream) -> bool {
    server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(stream),
            is_server: true,
        })
        .is_ok()
}
