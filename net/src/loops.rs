//! Event loops: one single-threaded tokio runtime per core, each serving its
//! own clients start to finish.
//!
//! A proxied statement is mostly kernel work (four socket calls and the
//! wake-ups of the peers), so the proxy's own threads must stay cheap. A
//! work-stealing runtime moves tasks and their sockets between threads and
//! pays for cross-thread wake-ups on every statement; independent loops do
//! not. An acceptor hands each new client to the loop serving the fewest,
//! and a client, its backend connections and their reset all stay on that
//! loop (see [`crate::pool`]: idle connections are taken only by the loop
//! whose reactor they are registered with).

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use crate::transport::Listener;

thread_local! {
    static LOOP: Cell<usize> = const { Cell::new(0) };
}

/// The event loop the calling thread runs (0 unless [`mark_current`] said otherwise).
pub fn current() -> usize {
    LOOP.with(|l| l.get())
}

/// Marks the calling thread as event loop `n`.
pub fn mark_current(n: usize) {
    LOOP.with(|l| l.set(n));
}

/// How many event loops to run: `TESSERA_THREADS`, else one per core.
pub fn configured_count() -> usize {
    std::env::var("TESSERA_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1)
}

/// Clients handed to a loop, with the number it is serving now.
struct Inbox {
    tx: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    clients: Arc<AtomicUsize>,
}

/// Hands accepted clients to the least busy loop.
pub struct Dispatcher {
    inboxes: Vec<Inbox>,
}

impl Dispatcher {
    /// A dispatcher over `n` loops, and the listener each loop serves from.
    pub fn new(n: usize) -> (Self, Vec<HandoffListener>) {
        let mut inboxes = Vec::with_capacity(n);
        let mut listeners = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let clients = Arc::new(AtomicUsize::new(0));
            inboxes.push(Inbox {
                tx,
                clients: clients.clone(),
            });
            listeners.push(HandoffListener { rx, clients });
        }
        (Self { inboxes }, listeners)
    }

    /// Passes a client to the loop with the fewest; the lowest index wins a tie.
    pub fn dispatch(&self, stream: tokio::net::TcpStream, peer: SocketAddr) -> io::Result<()> {
        let Some(inbox) = self
            .inboxes
            .iter()
            .filter(|i| !i.tx.is_closed())
            .min_by_key(|i| i.clients.load(Ordering::Relaxed))
        else {
            return Err(io::Error::other("no event loop is running"));
        };
        stream.set_nodelay(true)?;
        let stream = stream.into_std()?;
        inbox.clients.fetch_add(1, Ordering::Relaxed);
        if inbox.tx.send((stream, peer)).is_err() {
            inbox.clients.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other("the event loop stopped"));
        }
        Ok(())
    }
}

/// One loop's side of the hand-off: accepts the clients given to it.
pub struct HandoffListener {
    rx: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    clients: Arc<AtomicUsize>,
}

impl Listener for HandoffListener {
    type Stream = CountedStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let Some((stream, peer)) = self.rx.recv().await else {
            // The acceptor is gone: nothing more comes; the loop ends on shutdown.
            return std::future::pending().await;
        };
        // Registered with this loop's reactor.
        match tokio::net::TcpStream::from_std(stream) {
            Ok(inner) => Ok((
                CountedStream {
                    clients: self.clients.clone(),
                    inner,
                },
                peer,
            )),
            Err(e) => {
                self.clients.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Err(io::Error::other(
            "a hand-off listener has no address of its own",
        ))
    }
}

/// A client stream that counts itself among its loop's clients until dropped.
pub struct CountedStream {
    clients: Arc<AtomicUsize>,
    inner: tokio::net::TcpStream,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server-side stream; its client end goes into `clients` to stay open.
    async fn accepted(
        listener: &tokio::net::TcpListener,
        clients: &mut Vec<tokio::net::TcpStream>,
    ) -> (tokio::net::TcpStream, SocketAddr) {
        let addr = listener.local_addr().unwrap();
        let (client, server) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        clients.push(client.unwrap());
        server.unwrap()
    }

    #[tokio::test]
    async fn clients_go_to_the_loop_serving_the_fewest() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (dispatcher, mut loops) = Dispatcher::new(2);
        let mut ends = Vec::new();
        let mut held = Vec::new();
        for _ in 0..3 {
            let (s, peer) = accepted(&listener, &mut ends).await;
            dispatcher.dispatch(s, peer).unwrap();
        }
        let counts = |d: &Dispatcher| -> Vec<usize> {
            d.inboxes
                .iter()
                .map(|i| i.clients.load(Ordering::Relaxed))
                .collect()
        };
        assert_eq!(counts(&dispatcher), vec![2, 1]);
        for l in loops.iter_mut() {
            while let Ok(Some(c)) =
                tokio::time::timeout(std::time::Duration::from_millis(50), l.accept())
                    .await
                    .map(|r| r.ok())
            {
                held.push(c);
            }
        }
        assert_eq!(held.len(), 3);
        // A client that leaves no longer counts: the next goes to loop 0 again.
        held.remove(0);
        assert_eq!(counts(&dispatcher), vec![1, 1]);
        let (s, peer) = accepted(&listener, &mut ends).await;
        dispatcher.dispatch(s, peer).unwrap();
        assert_eq!(counts(&dispatcher), vec![2, 1]);
    }

    #[tokio::test]
    async fn a_stopped_loop_gets_no_clients() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (dispatcher, mut loops) = Dispatcher::new(2);
        let mut ends = Vec::new();
        drop(loops.remove(0));
        let (s, peer) = accepted(&listener, &mut ends).await;
        dispatcher.dispatch(s, peer).unwrap();
        let (c, _) = loops[0].accept().await.unwrap();
        assert_eq!(dispatcher.inboxes[1].clients.load(Ordering::Relaxed), 1);
        drop(c);
        assert_eq!(dispatcher.inboxes[1].clients.load(Ordering::Relaxed), 0);
        drop(loops);
        let (s, peer) = accepted(&listener, &mut ends).await;
        assert!(dispatcher.dispatch(s, peer).is_err());
    }
}
