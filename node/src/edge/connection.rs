//! An accepted connection: the socket, the cap's slot it holds until it closes, and the two rules
//! that close it from under the protocol stack.
//!
//! **Header read.** A connection must deliver its first `first_bytes` bytes (HTTP/2's preface and
//! first frame header; TLS's ClientHello) within `header_read_timeout` of being accepted. A socket
//! that connects and sends nothing (the issue-9 flood) holds its slot for that long and no longer.
//!
//! **Idle.** A connection is idle when it has had no stream open (no request in flight, no
//! SyncFlags or EventStream subscription) for `idle_timeout`, counted from when its last stream
//! ended, or from its acceptance if it never had one. Bytes on the wire do not count: the node's
//! own keepalive PINGs make every live peer answer, so "nothing read" would never hold for a live
//! peer, and a peer that only answers pings would keep its slot for ever. An open stream always
//! counts, however long it stays silent, so subscriptions that send data only on change are never
//! cut. The rule is checked when the connection has nothing to read, and re-armed at most every
//! `idle_timeout`, so an idle connection is closed between `idle_timeout` and twice that after
//! its last stream ended. The close is abrupt (the read fails, hyper drops the connection): a
//! request sent in the instant the node closes fails with a transport error, as it would against
//! any server closing idle connections; bytes already received are always read first.
//!
//! A peer that stops answering altogether is the keepalive's job (`keepalive_timeout_ms`), which
//! hyper enforces with the PINGs it sends.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::streams::StreamCount;
use super::{CLOSED_METRIC, OPEN_METRIC};

/// What tonic puts in each request's extensions for a connection accepted here: the addresses
/// (as tonic's own `TcpConnectInfo`) and the connection's stream count for
/// [`super::TrackStreamsLayer`].
#[derive(Debug, Clone)]
pub struct EdgeConnectInfo {
    pub tcp: TcpConnectInfo,
    streams: Arc<StreamCount>,
}

impl EdgeConnectInfo {
    pub fn streams(&self) -> &Arc<StreamCount> {
        &self.streams
    }

    /// The client's address.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr()
    }
}

/// The rules one connection is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub listener: &'static str,
    pub header_read_timeout: Duration,
    pub first_bytes: usize,
    pub idle_timeout: Option<Duration>,
}

/// A slot under the listener's cap, and the open-connections gauge, for as long as it lives.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Slot {
    pub(crate) fn new(permit: OwnedSemaphorePermit, listener: &'static str) -> Slot {
        metrics::gauge!(OPEN_METRIC, "listener" => listener).increment(1.0);
        Slot {
            _permit: permit,
            listener,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_METRIC, "listener" => self.listener).decrement(1.0);
    }
}

/// Why the node closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    HeaderTimeout,
    Idle,
}

impl Expiry {
    fn label(self) -> &'static str {
        match self {
            Expiry::HeaderTimeout => "header_timeout",
            Expiry::Idle => "idle",
        }
    }
}

/// What the rules say about a connection with nothing to read now.
enum Verdict {
    Close(Expiry),
    /// Judge again at this instant.
    CheckAt(Instant),
    /// Judge again no later than this (a stream is open): the armed timer is kept if it is
    /// still to fire, so a busy connection does not reset its timer on every read.
    CheckBy(Instant),
    Never,
}

/// An accepted connection (see the module documentation). Dropping it closes the socket and frees
/// its slot.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    info: EdgeConnectInfo,
    rules: Rules,
    accepted: Instant,
    /// Bytes read so far, counted up to `rules.first_bytes`.
    seen: usize,
    timer: Pin<Box<Sleep>>,
    _slot: Slot,
}

impl Connection {
    pub(crate) fn new(stream: TcpStream, slot: Slot, rules: Rules) -> Connection {
        let info = EdgeConnectInfo {
            tcp: stream.connect_info(),
            streams: StreamCount::new(),
        };
        let accepted = Instant::now();
        Connection {
            stream,
            info,
            rules,
            accepted,
            seen: 0,
            timer: Box::pin(tokio::time::sleep_until(
                accepted + rules.header_read_timeout,
            )),
            _slot: slot,
        }
    }

    fn verdict(&self, now: Instant) -> Verdict {
        if self.seen < self.rules.first_bytes {
            let deadline = self.accepted + self.rules.header_read_timeout;
            return if now >= deadline {
                Verdict::Close(Expiry::HeaderTimeout)
            } else {
                Verdict::CheckAt(deadline)
            };
        }
        let Some(idle) = self.rules.idle_timeout else {
            return Verdict::Never;
        };
        match self.info.streams.idle_since() {
            Some(since) if now >= since + idle => Verdict::Close(Expiry::Idle),
            Some(since) => Verdict::CheckAt(since + idle),
            // A stream is open: look again in a while (its end does not wake this reader).
            None => Verdict::CheckBy(now + idle),
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = EdgeConnectInfo;

    fn connect_info(&self) -> EdgeConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        // Whatever the peer has sent is read first, so a request that arrived is never lost to a
        // timeout checked in the same instant.
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.seen = this.seen.saturating_add(read);
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        loop {
            match this.verdict(Instant::now()) {
                Verdict::Never => return Poll::Pending,
                Verdict::Close(expiry) => {
                    metrics::counter!(CLOSED_METRIC, "listener" => this.rules.listener, "reason" => expiry.label())
                        .increment(1);
                    tracing::debug!(listener = this.rules.listener, peer = ?this.info.remote_addr(), reason = expiry.label(), "closing a connection");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        match expiry {
                            Expiry::HeaderTimeout => "no request within the header-read timeout",
                            Expiry::Idle => "no stream open within the idle timeout",
                        },
                    )));
                }
                Verdict::CheckBy(at)
                    if this.timer.deadline() > Instant::now() && this.timer.deadline() <= at =>
                {
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Verdict::CheckAt(at) | Verdict::CheckBy(at) => {
                    if this.timer.deadline() != at {
                        this.timer.as_mut().reset(at);
                    }
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The timer fired: judge again with the new time.
                }
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
