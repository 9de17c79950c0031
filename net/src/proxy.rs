//! Starting and stopping a whole proxy on tokio's TCP: used by `tessera run`,
//! the playground and the integration tests.

use std::net::SocketAddr;
use std::time::Duration;

use tessera_core::config::{Config, ConfigError};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::loops::{self, Dispatcher};
use crate::server::{build_shared, serve, serve_loop};
use crate::transport::{TcpConnector, TcpListener};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start event loop {n}: {source}")]
    EventLoop { n: usize, source: std::io::Error },
}

/// A running proxy.
pub struct RunningProxy {
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningProxy {
    /// Stops accepting, lets in-flight statements finish (up to the
    /// configured deadline) and waits for the server task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// A handle that triggers the graceful shutdown.
    pub fn shutdown_sender(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Binds the listener and starts serving in a background task, on
/// [`loops::configured_count`] event loops.
pub async fn start(config: &Config) -> Result<RunningProxy, StartError> {
    start_with_loops(config, loops::configured_count()).await
}

/// As [`start`], on `loops` event loops: the calling runtime is loop 0 and
/// each other loop gets a thread with a single-threaded runtime of its own.
pub async fn start_with_loops(config: &Config, loops: usize) -> Result<RunningProxy, StartError> {
    let shared = build_shared(config, TcpConnector).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen.clone(),
        source,
    })?;
    let (tx, rx) = watch::channel(false);
    let drain = Duration::from_millis(config.shutdown_timeout_ms);
    if loops <= 1 {
        let task = tokio::spawn(serve(TcpListener(listener), shared, rx, drain));
        return Ok(RunningProxy {
            addr,
            shutdown: tx,
            task,
        });
    }
    let (dispatcher, mut handoffs) = Dispatcher::new(loops);
    let first = handoffs.remove(0);
    let mut done = Vec::new();
    for (i, handoff) in handoffs.into_iter().enumerate() {
        let n = i + 1;
        let (shared, rx) = (shared.clone(), rx.clone());
        let (finished, finished_rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StartError::EventLoop { n, source })?;
        std::thread::Builder::new()
            .name(format!("tessera-loop-{n}"))
            .spawn(move || {
                loops::mark_current(n);
                runtime.block_on(serve_loop(handoff, shared, rx, drain, false));
                let _ = finished.send(());
            })
            .map_err(|source| StartError::EventLoop { n, source })?;
        done.push(finished_rx);
    }
    let acceptor = tokio::spawn(accept_and_dispatch(listener, dispatcher, rx.clone()));
    let task = tokio::spawn(async move {
        serve_loop(first, shared, rx, drain, true).await;
        let _ = acceptor.await;
        for d in done {
            let _ = d.await;
        }
    });
    Ok(RunningProxy {
        addr,
        shutdown: tx,
        task,
    })
}

/// Accepts clients and hands each to an event loop until shutdown.
async fn accept_and_dispatch(
    listener: tokio::net::TcpListener,
    dispatcher: Dispatcher,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { return; }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = dispatcher.dispatch(stream, peer) {
                        tracing::warn!(%peer, error = %e, "could not hand the client to an event loop");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
