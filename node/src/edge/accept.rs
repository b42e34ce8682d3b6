//! One listener's accept loop: a cap on open connections, connections past it refused (accepted
//! and closed at once, so the peer learns at once instead of waiting in the backlog), and a
//! back-off when `accept` fails for want of file descriptors.
//!
//! tonic, given a stream of connections, logs an `Err` item at trace level and asks for the next
//! one at once; on EMFILE the listening socket stays readable, so that is a busy loop that
//! starves the runtime. This loop yields only connections (its error type is uninhabited) and
//! handles accept errors itself.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::connection::{Connection, Rules, Slot};
use super::{ACCEPT_ERRORS_METRIC, LIMIT_METRIC, REFUSED_METRIC};

/// One listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// The listener's name in metrics and logs (`grpc`, `metrics`).
    pub name: &'static str,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// Bytes a connection must send within `header_read_timeout`.
    pub first_bytes: usize,
    /// `None`: connections are never closed for idleness.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive: probes after this much silence. `None`: the system's setting.
    pub tcp_keepalive: Option<Duration>,
}

/// The first pause after `accept` fails for want of descriptors; it doubles while the failures
/// last, up to [`MAX_BACKOFF`]. Descriptors come back as connections close, which takes at least
/// milliseconds; retrying sooner only burns the CPU the node needs to close them.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// How often each kind of trouble is logged at most: a flood must not become a flood of log
/// lines (the counters have every event).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Starts accepting on `listener`: the connections, each holding a slot under the cap until it
/// closes. The loop ends, closing the listening socket, when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    limits: ListenerLimits,
) -> ReceiverStream<Result<Connection, Infallible>> {
    // One waiting connection at most: the server takes each as soon as it is yielded, and the
    // cap, not this channel, bounds how many are open.
    let (tx, rx) = mpsc::channel(1);
    metrics::gauge!(LIMIT_METRIC, "listener" => limits.name).set(limits.max_connections as f64);
    tokio::spawn(accept_loop(listener, limits, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    limits: ListenerLimits,
    tx: mpsc::Sender<Result<Connection, Infallible>>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let rules = Rules {
        listener: limits.name,
        header_read_timeout: limits.header_read_timeout,
        first_bytes: limits.first_bytes,
        idle_timeout: limits.idle_timeout,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut refusal_log = RateLimit::default();
    let mut error_log = RateLimit::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tx.closed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = FIRST_BACKOFF;
                stream
            }
            Err(error) if out_of_descriptors(&error) => {
                metrics::counter!(ACCEPT_ERRORS_METRIC, "listener" => limits.name, "kind" => "fd_exhausted").increment(1);
                if error_log.ready() {
                    tracing::warn!(listener = limits.name, %error, pause = ?backoff, "accept failed: out of file descriptors; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(error) => {
                // A connection that died in the backlog (ECONNABORTED and the like): the
                // listener itself is fine.
                metrics::counter!(ACCEPT_ERRORS_METRIC, "listener" => limits.name, "kind" => "other").increment(1);
                tracing::debug!(listener = limits.name, %error, "accept failed");
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!(REFUSED_METRIC, "listener" => limits.name, "reason" => "at_capacity")
                .increment(1);
            if refusal_log.ready() {
                tracing::warn!(
                    listener = limits.name,
                    cap = limits.max_connections,
                    "refusing connections: the listener is at its cap"
                );
            }
            refuse(stream);
            continue;
        };
        configure(&stream, limits.tcp_keepalive);
        let connection = Connection::new(stream, Slot::new(permit, limits.name), rules);
        if tx.send(Ok(connection)).await.is_err() {
            return;
        }
    }
}

/// EMFILE (this process's limit), ENFILE (the system's), and the kernel out of socket memory.
fn out_of_descriptors(error: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(error),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// Closes a refused connection with a reset: the peer learns at once, and the node keeps no
/// TIME_WAIT state for it.
fn refuse(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// No Nagle (small gRPC frames must leave at once, or a request waits ~40 ms for the peer's
/// delayed ACK), and TCP keepalive so a peer that vanished without a FIN is found even when
/// HTTP/2 pings cannot be sent.
fn configure(stream: &TcpStream, keepalive: Option<Duration>) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    if let Some(after) = keepalive {
        let probes = TcpKeepalive::new().with_time(after).with_interval(after);
        if let Err(error) = SockRef::from(stream).set_tcp_keepalive(&probes) {
            tracing::debug!(%error, "cannot set TCP keepalive");
        }
    }
}

#[derive(Debug, Default)]
struct RateLimit(Option<Instant>);

impl RateLimit {
    fn ready(&mut self) -> bool {
        if self.0.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            self.0 = Some(Instant::now());
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;
    use tonic::transport::server::Connected;

    use super::*;

    /// Bounds how long a broken test can hang; never a speed assertion.
    const PATIENCE: Duration = Duration::from_secs(5);

    fn limits(max_connections: usize) -> ListenerLimits {
        ListenerLimits {
            name: "test",
            max_connections,
            header_read_timeout: Duration::from_millis(200),
            first_bytes: 4,
            idle_timeout: Some(Duration::from_millis(300)),
            tcp_keepalive: Some(Duration::from_secs(30)),
        }
    }

    async fn listen(
        limits: ListenerLimits,
    ) -> (SocketAddr, ReceiverStream<Result<Connection, Infallible>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, incoming(listener, limits))
    }

    async fn next(incoming: &mut ReceiverStream<Result<Connection, Infallible>>) -> Connection {
        let Some(Ok(connection)) = tokio::time::timeout(PATIENCE, incoming.next())
            .await
            .unwrap()
        else {
            panic!("the accept loop ended");
        };
        connection
    }

    /// True once the peer has closed the connection (end of file or reset).
    async fn closed_by_peer(client: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(PATIENCE, client.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn a_connection_past_the_cap_is_closed_at_once_and_its_slot_comes_back() {
        let (addr, mut incoming) = listen(limits(1)).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"PRI ").await.unwrap();
        let held = next(&mut incoming).await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_peer(&mut second).await, "refused at the cap");
        drop(held);
        let _third = TcpStream::connect(addr).await.unwrap();
        let _accepted = next(&mut incoming).await;
        drop(first);
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
        let (addr, mut incoming) = listen(limits(1)).await;
        let started = Instant::now();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut connection = next(&mut incoming).await;
        let mut buf = [0u8; 16];
        let error = connection.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Too few bytes count as none: the rule is about the first `first_bytes`.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        drop(connection);
        let mut connection = next(&mut incoming).await;
        slow.write_all(b"PR").await.unwrap();
        assert_eq!(connection.read(&mut buf).await.unwrap(), 2);
        assert!(connection.read(&mut buf).await.is_err());
    }

    #[tokio::test]
    async fn a_connection_with_no_stream_is_closed_when_idle_but_never_while_a_stream_is_open() {
        let (addr, mut incoming) = listen(limits(2)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut connection = next(&mut incoming).await;
        let streams = connection.connect_info().streams().clone();
        let stream = streams.opened();
        let mut buf = [0u8; 64];
        assert_eq!(connection.read(&mut buf).await.unwrap(), 14);
        // Three idle timeouts with a (silent) stream open: still open, and what the client sends
        // is read.
        let quiet = tokio::time::timeout(Duration::from_millis(900), connection.read(&mut buf));
        assert!(quiet.await.is_err(), "nothing to read, nothing closed");
        client.write_all(b"more").await.unwrap();
        assert_eq!(connection.read(&mut buf).await.unwrap(), 4);
        let ended = Instant::now();
        drop(stream);
        let error = tokio::time::timeout(PATIENCE, connection.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let after = ended.elapsed();
        assert!(after >= Duration::from_millis(300), "{after:?}");
    }

    #[test]
    fn only_descriptor_exhaustion_backs_off() {
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(
            rustix::io::Errno::MFILE.raw_os_error()
        )));
        assert!(out_of_descriptors(&io::Error::from_raw_os_error(
            rustix::io::Errno::NFILE.raw_os_error()
        )));
        assert!(!out_of_descriptors(&io::Error::from_raw_os_error(
            rustix::io::Errno::CONNABORTED.raw_os_error()
        )));
    }
}
