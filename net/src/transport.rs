//! The socket abstraction the adapters are written against, so the same code
//! runs on tokio's TCP in production and on turmoil's in simulation.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use crate::quiet_unix::QuietUnixStream;

/// A byte stream to a client or a backend.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Accepts client connections.
pub trait Listener: Send + 'static {
    type Stream: Stream;
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Opens connections to backends.
pub trait Connector: Clone + Send + Sync + 'static {
    type Stream: Stream;
    fn connect(&self, addr: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Production listener on tokio's TCP.
pub struct TcpListener(pub tokio::net::TcpListener);

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, a) = self.0.accept().await?;
        s.set_nodelay(true)?;
        Ok((s, a))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A connection to a backend: TCP, or a Unix socket when the backend runs on
/// the same host (its address is a path).
pub enum BackendStream {
    Tcp(tokio::net::TcpStream),
    Unix(QuietUnixStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            BackendStream::Tcp($s) => $e,
            BackendStream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Whether a backend address names a Unix socket (a path) rather than host:port.
pub fn is_unix_socket(addr: &str) -> bool {
    addr.starts_with('/') || addr.starts_with("./")
}

/// Production connector: tokio TCP (Nagle off: every packet is a reply
/// someone waits for), or a Unix socket for an address that is a path.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = BackendStream;

    async fn connect(&self, addr: &str) -> io::Result<Self::Stream> {
        if is_unix_socket(addr) {
            let stream = tokio::net::UnixStream::connect(addr).await?.into_std()?;
            return Ok(BackendStream::Unix(QuietUnixStream::new(stream)?));
        }
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(BackendStream::Tcp(s))
    }
}
