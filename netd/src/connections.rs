//! Limits on the metadata service's connections. A VM may hold only a few at a time, the
//! service as a whole a few hundred, and a connection that moves no bytes for a while is
//! closed: no VM can starve the host's other VMs of their metadata, by opening connections or
//! by leaving them idle.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections from one address.
    pub per_client: usize,
    /// Open connections in all.
    pub total: usize,
    /// How long a connection may move no bytes either way.
    pub idle: Duration,
}

/// What the metadata service allows: cloud-init opens one connection at a time.
pub const METADATA: Limits = Limits {
    per_client: 8,
    total: 256,
    idle: Duration::from_secs(10),
};

#[derive(Debug, Default)]
struct Open {
    by_client: HashMap<IpAddr, usize>,
    total: usize,
}

/// The open connections of every listener that shares it: one per host, so that the total
/// holds for the host whatever its number of networks. A client is known by its address,
/// which is unique on a host (networks' CIDRs do not overlap).
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<Mutex<Open>>);

/// A TCP listener that turns away connections over its limits (closed at once) and hands out
/// streams that close when idle.
#[derive(Debug)]
pub struct LimitedListener {
    inner: TcpListener,
    limits: Limits,
    open: Arc<Mutex<Open>>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, limits: Limits, tracker: Tracker) -> Self {
        Self {
            inner,
            limits,
            open: tracker.0,
        }
    }

    /// Counts a connection from `ip` in, unless it is over a limit.
    fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.by_client.get(&ip).copied().unwrap_or(0);
        if open.total >= self.limits.total || mine >= self.limits.per_client {
            return None;
        }
        open.total += 1;
        open.by_client.insert(ip, mine + 1);
        Some(Admitted {
            open: self.open.clone(),
            ip,
        })
    }
}

/// One admitted connection's place in the counts, given back on drop.
#[derive(Debug)]
struct Admitted {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.ip);
            }
        }
    }
}

impl Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin, or flood the log.
                    tracing::warn!("metadata: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match self.admit(peer.ip()) {
                Some(admitted) => {
                    let idle = self.limits.idle;
                    let stream = LimitedStream {
                        stream,
                        idle,
                        deadline: Box::pin(tokio::time::sleep(idle)),
                        _admitted: admitted,
                    };
                    return (stream, peer);
                }
                None => tracing::debug!("metadata: turned away a connection from {peer}"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The client's address, for handlers (`ConnectInfo<Client>`).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub SocketAddr);

impl Connected<IncomingStream<'_, LimitedListener>> for Client {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// An admitted connection: fails with `TimedOut` once it has moved no bytes for `idle`. hyper
/// polls the read side while a handler runs, so a handler must answer within `idle` (the
/// metadata handlers answer from memory).
#[derive(Debug)]
pub struct LimitedStream {
    stream: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _admitted: Admitted,
}

impl LimitedStream {
    /// Pushes the deadline back after progress; otherwise reports whether it has passed (and
    /// asks to be woken when it does).
    fn check(&mut self, progressed: bool, cx: &mut Context<'_>) -> io::Result<()> {
        if progressed {
            self.deadline.as_mut().reset(Instant::now() + self.idle);
            return Ok(());
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the connection was idle too long",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.check(buf.filled().len() > before, cx)?;
                Poll::Ready(result)
            }
            Poll::Pending => {
                this.check(false, cx)?;
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.check(n > 0, cx)?;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // A VM that stops reading its answer holds the connection no longer.
                this.check(false, cx)?;
                Poll::Pending
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `limits` on a loopback port, echoing each byte; returns the port.
    async fn echo(limits: Limits) -> u16 {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = inner.local_addr().unwrap().port();
        let mut listener = LimitedListener::new(inner, limits, Tracker::default());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await;
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    while let Ok(1) = stream.read(&mut byte).await {
                        if stream.write_all(&byte).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    /// Whether a connection to `port` is served: a byte sent comes back.
    async fn served(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        stream.write_all(b"x").await.is_ok()
            && matches!(
                tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await,
                Ok(Ok(1))
            )
    }

    #[tokio::test]
    async fn a_client_over_its_limit_is_turned_away_until_one_closes() {
        let port = echo(Limits {
            per_client: 2,
            total: 10,
            idle: Duration::from_secs(30),
        })
        .await;
        let mut first = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut second = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(served(&mut first).await && served(&mut second).await);
        let mut third = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(!served(&mut third).await, "a third is closed at once");
        drop(first);
        // The freed place is counted back once the server has seen the close.
        let start = std::time::Instant::now();
        loop {
            let mut again = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            if served(&mut again).await {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the place came back"
            );
        }
        assert!(served(&mut second).await, "the other stays served");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let port = echo(Limits {
            per_client: 4,
            total: 10,
            idle: Duration::from_millis(300),
        })
        .await;
        let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut busy = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(served(&mut busy).await, "a connection in use stays open");
        }
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the idle one was closed: {closed:?}"
        );
    }
}
