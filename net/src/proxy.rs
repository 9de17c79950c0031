//! Starting and stopping a whole proxy on tokio's TCP: used by `tessera run`,
//! the playground and the integration tests.

use std::net::SocketAddr;
use std::time::Duration;

use tessera_core::config::{Config, ConfigError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::{build_shared, serve};
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

/// Binds the listener and starts serving in a background task.
pub async fn start(config: &Config) -> Result<RunningProxy, StartError> {
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
    let task = tokio::spawn(serve(TcpListener(listener), shared, rx, drain));
    Ok(RunningProxy {
        addr,
        shutdown: tx,
        task,
    })
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
