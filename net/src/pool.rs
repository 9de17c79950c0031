//! Backend connection pool: a limit per backend, idle expiry, health pings of
//! idle connections, and a `COM_RESET_CONNECTION` before a connection serves
//! another client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tessera_core::backend::{self, BackendError, BackendLogin, BackendMeta};
use tessera_core::config::PoolConfig;
use tessera_core::protocol::{
    format_capabilities, parse_err, parse_ok, FrameReader, OkSummary, Packet, StatusFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, Instant};

use crate::transport::{Connector, Stream};

use tessera_core::protocol::format_capabilities as fmt_caps;
use tessera_core::protocol::{server_capabilities, CapabilityFlags};

/// Why a backend connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to backend {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connecting to backend {addr} timed out after {ms} ms")]
    ConnectTimeout { addr: String, ms: u64 },
    #[error("login to backend {addr} failed: {source}")]
    Login { addr: String, source: BackendError },
    #[error("all {max} connections to backend {addr} are busy; waited {ms} ms")]
    Exhausted { addr: String, max: usize, ms: u64 },
    #[error("backend {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("backend {addr} answered: {source}")]
    Reply { addr: String, source: BackendError },
}

/// A logged-in backend connection.
pub struct BackendConn<S> {
    pub stream: S,
    /// Bytes read from the backend and not yet consumed.
    pub buf: BytesMut,
    pub meta: BackendMeta,
    /// The response-format capabilities it was opened with.
    format: CapabilityFlags,
    /// When a client last gave it back (idle expiry counts from here).
    last_used: Instant,
    /// When the backend last answered (a ping is due after `ping_interval_ms`).
    last_checked: Instant,
    /// The event loop whose reactor the socket is registered with: only
    /// that loop takes it from the idle list, so its reads never cross threads.
    home: usize,
    _permit: OwnedSemaphorePermit,
}

/// Whether an idle connection is unusable: the backend closed or reset it
/// (a restart, `wait_timeout`), or sent bytes nobody asked for. One
/// non-blocking read; a healthy idle connection has nothing to read.
fn hung_up<S: Stream>(stream: &mut S) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    std::pin::Pin::new(stream)
        .poll_read(&mut cx, &mut buf)
        .is_ready()
}

/// Reads one packet (joining 16 MiB chunks) from a stream.
pub async fn read_packet<S: Stream>(stream: &mut S, buf: &mut BytesMut) -> std::io::Result<Packet> {
    let mut frames = FrameReader::new(usize::MAX >> 1);
    loop {
        match frames.next_packet(buf) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Connects and logs in to a backend.
pub async fn connect_and_login<C: Connector>(
    connector: &C,
    addr: &str,
    user: &str,
    password: &str,
    format_caps: CapabilityFlags,
) -> Result<(C::Stream, BytesMut, BackendMeta), PoolError> {
    let mut stream = connector
        .connect(addr)
        .await
        .map_err(|source| PoolError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut login = BackendLogin::new(user, password, format_caps);
    let io_err = |source| PoolError::Io {
        addr: addr.to_string(),
        source,
    };
    loop {
        let pkt = read_packet(&mut stream, &mut buf).await.map_err(io_err)?;
        let reply = login
            .handle_packet(&pkt)
            .map_err(|source| PoolError::Login {
                addr: addr.to_string(),
                source,
            })?;
        if let Some(bytes) = reply {
            stream.write_all(&bytes).await.map_err(io_err)?;
        }
        if let Some(meta) = login.finished() {
            return Ok((stream, buf, meta.clone()));
        }
    }
}

/// Why [`query_value`] failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The connection broke or the answer made no sense: drop it.
    #[error("{0}")]
    Broken(String),
    /// The backend refused the statement; the connection is still good.
    #[error("backend answered with error {}: {}", .0.code, .0.message)]
    Server(tessera_core::protocol::ErrInfo),
}

/// Runs a text query on a connection and returns the first column of its
/// first row (`None`: no row, or NULL).
pub async fn query_value<S: Stream>(
    stream: &mut S,
    buf: &mut BytesMut,
    meta: &BackendMeta,
    sql: &str,
) -> Result<Option<String>, QueryError> {
    let broken = |e: &dyn std::fmt::Display| QueryError::Broken(e.to_string());
    stream
        .write_all(&backend::query_request(sql))
        .await
        .map_err(|e| broken(&e))?;
    let deprecate = meta
        .capabilities
        .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
    let mut collector = tessera_core::merge::Collector::new(deprecate, 1 << 20);
    loop {
        if collector.feed(buf).map_err(|e| broken(&e))? {
            break;
        }
        if stream.read_buf(buf).await.map_err(|e| broken(&e))? == 0 {
            return Err(QueryError::Broken("backend closed the connection".into()));
        }
    }
    if !buf.is_empty() {
        return Err(QueryError::Broken(
            "unexpected data after the answer".into(),
        ));
    }
    let result = collector.take();
    if let Some(e) = result.err {
        return Err(QueryError::Server(e));
    }
    Ok(result
        .rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// Sends a one-packet command (reset, ping) and checks its OK.
async fn round_trip<S: Stream>(
    conn: &mut BackendConn<S>,
    request: &[u8],
    addr: &str,
) -> Result<(), PoolError> {
    let io_err = |source| PoolError::Io {
        addr: addr.to_string(),
        source,
    };
    conn.stream.write_all(request).await.map_err(io_err)?;
    let pkt = read_packet(&mut conn.stream, &mut conn.buf)
        .await
        .map_err(io_err)?;
    backend::simple_reply(&pkt).map_err(|source| PoolError::Reply {
        addr: addr.to_string(),
        source,
    })
}

/// Sends a COM_QUERY and reads its OK (an ERR or a result set is an error).
async fn query_ok<S: Stream>(
    conn: &mut BackendConn<S>,
    sql: &str,
    addr: &str,
) -> Result<OkSummary, PoolError> {
    let io_err = |source| PoolError::Io {
        addr: addr.to_string(),
        source,
    };
    conn.stream
        .write_all(&backend::query_request(sql))
        .await
        .map_err(io_err)?;
    let pkt = read_packet(&mut conn.stream, &mut conn.buf)
        .await
        .map_err(io_err)?;
    let reply = |source| PoolError::Reply {
        addr: addr.to_string(),
        source,
    };
    match pkt.payload.first() {
        Some(0x00) => {
            conn.last_checked = Instant::now();
            parse_ok(&pkt.payload).ok_or_else(|| reply(BackendError::Malformed("OK packet")))
        }
        Some(0xff) => Err(reply(match parse_err(&pkt.payload) {
            Some(e) => BackendError::Server(e),
            None => BackendError::Malformed("error packet"),
        })),
        _ => Err(PoolError::Io {
            addr: addr.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "expected an OK packet, got a result set",
            ),
        }),
    }
}

struct Idle<S> {
    conns: Vec<BackendConn<S>>,
}

/// The pool of connections to one backend.
pub struct Pool<C: Connector> {
    inner: Arc<Inner<C>>,
}

impl<C: Connector> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<C: Connector> {
    addr: String,
    user: String,
    password: String,
    cfg: PoolConfig,
    connector: C,
    permits: Arc<Semaphore>,
    idle: Mutex<Idle<C::Stream>>,
}

impl<C: Connector> Pool<C> {
    pub fn new(connector: C, addr: &str, user: &str, password: &str, cfg: PoolConfig) -> Self {
        let permits = Arc::new(Semaphore::new(cfg.max_connections));
        Self {
            inner: Arc::new(Inner {
                addr: addr.to_string(),
                user: user.to_string(),
                password: password.to_string(),
                cfg,
                connector,
                permits,
                idle: Mutex::new(Idle { conns: Vec::new() }),
            }),
        }
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Number of idle connections (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.inner.idle.lock().map(|i| i.conns.len()).unwrap_or(0)
    }

    /// Connections open now, idle or in use.
    pub fn open_count(&self) -> usize {
        self.inner.cfg.max_connections - self.inner.permits.available_permits()
    }

    /// Takes an idle connection with the client's response format, or opens one.
    pub async fn acquire(
        &self,
        format_caps: CapabilityFlags,
    ) -> Result<BackendConn<C::Stream>, PoolError> {
        let wanted = format_caps & format_capabilities();
        if let Some(c) = self.take_idle(wanted) {
            return Ok(c);
        }
        let permit = match self.inner.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // At the limit: an idle connection of another format makes room.
                let evicted = self.inner.idle.lock().ok().and_then(|mut i| i.conns.pop());
                drop(evicted);
                let wait = Duration::from_millis(self.inner.cfg.acquire_timeout_ms);
                match timeout(wait, self.inner.permits.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        if let Some(c) = self.take_idle(wanted) {
                            return Ok(c);
                        }
                        return Err(PoolError::Exhausted {
                            addr: self.inner.addr.clone(),
                            max: self.inner.cfg.max_connections,
                            ms: self.inner.cfg.acquire_timeout_ms,
                        });
                    }
                }
            }
        };
        self.open(wanted, permit).await
    }

    async fn open(
        &self,
        format_caps: CapabilityFlags,
        permit: OwnedSemaphorePermit,
    ) -> Result<BackendConn<C::Stream>, PoolError> {
        let (stream, buf, meta) = self.connect(format_caps).await?;
        Ok(BackendConn {
            stream,
            buf,
            meta,
            format: format_caps,
            last_used: Instant::now(),
            last_checked: Instant::now(),
            home: crate::loops::current(),
            _permit: permit,
        })
    }

    /// Connects and logs in within `connect_timeout_ms`.
    async fn connect(
        &self,
        format_caps: CapabilityFlags,
    ) -> Result<(C::Stream, BytesMut, BackendMeta), PoolError> {
        let i = &self.inner;
        let ms = i.cfg.connect_timeout_ms;
        let fut = connect_and_login(&i.connector, &i.addr, &i.user, &i.password, format_caps);
        timeout(Duration::from_millis(ms), fut)
            .await
            .map_err(|_| PoolError::ConnectTimeout {
                addr: i.addr.clone(),
                ms,
            })?
    }

    /// An idle connection of this loop with the wanted format, skipping
    /// (and closing) any the backend has hung up on since it went idle.
    fn take_idle(&self, wanted: CapabilityFlags) -> Option<BackendConn<C::Stream>> {
        let mut idle = self.inner.idle.lock().ok()?;
        let here = crate::loops::current();
        loop {
            let pos = idle
                .conns
                .iter()
                .rposition(|c| c.format == wanted && c.home == here)?;
            let mut conn = idle.conns.swap_remove(pos);
            if hung_up(&mut conn.stream) {
                tracing::info!(addr = %self.inner.addr, "idle backend connection was closed by the backend; dropped");
                continue;
            }
            return Some(conn);
        }
    }

    /// Gives a connection back. A reusable one is reset first (in the
    /// background) so nothing of this client's session reaches the next.
    pub fn release(&self, mut conn: BackendConn<C::Stream>, reusable: bool) {
        if !reusable || !conn.buf.is_empty() {
            return; // dropped: closed, permit freed
        }
        if tessera_core::mutants::active(tessera_core::mutants::Mutant::PoolSkipsReset) {
            if let Ok(mut idle) = self.inner.idle.lock() {
                idle.conns.push(conn);
            }
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let addr = pool.inner.addr.clone();
            let reset = backend::reset_request();
            let ms = pool.inner.cfg.connect_timeout_ms.max(1000);
            match timeout(
                Duration::from_millis(ms),
                round_trip(&mut conn, &reset, &addr),
            )
            .await
            {
                // Bytes beyond the reset's reply mean the connection was not
                // between commands: it cannot be trusted with another client.
                Ok(Ok(())) if !conn.buf.is_empty() => {
                    tracing::warn!(%addr, "unexpected bytes after reset; connection closed")
                }
                Ok(Ok(())) => {
                    conn.meta.state.after_reset();
                    conn.last_used = Instant::now();
                    conn.last_checked = conn.last_used;
                    if let Ok(mut idle) = pool.inner.idle.lock() {
                        idle.conns.push(conn);
                    }
                }
                Ok(Err(e)) => tracing::warn!(%addr, error = %e, "reset failed; connection closed"),
                Err(_) => tracing::warn!(%addr, "reset timed out; connection closed"),
            }
        });
    }

    /// Expires idle connections, pings the ones idle for a while, and opens
    /// connections up to `min_idle`. Runs until the pool is dropped.
    ///
    /// Every event loop runs one: each looks after the idle connections it
    /// opened (their sockets belong to its reactor). Loop 0 also keeps
    /// `min_idle` connections open.
    pub async fn maintain(self) {
        let cfg = self.inner.cfg.clone();
        let tick = Duration::from_millis(
            (cfg.ping_interval_ms.min(cfg.idle_timeout_ms) / 2).clamp(100, 5000),
        );
        let here = crate::loops::current();
        let inner = Arc::downgrade(&self.inner);
        drop(self);
        loop {
            tokio::time::sleep(tick).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            Pool { inner }.maintain_once(here, &cfg).await;
        }
    }

    async fn maintain_once(&self, here: usize, cfg: &PoolConfig) {
        let now = Instant::now();
        let (expired, to_ping) = {
            let Ok(mut idle) = self.inner.idle.lock() else {
                return;
            };
            let mut expired = Vec::new();
            let mut to_ping = Vec::new();
            let mut keep = Vec::new();
            let total = idle.conns.len();
            for c in idle.conns.drain(..) {
                let age = now.duration_since(c.last_used);
                if c.home != here {
                    keep.push(c);
                } else if age >= Duration::from_millis(cfg.idle_timeout_ms)
                    && total - expired.len() > cfg.min_idle
                {
                    expired.push(c);
                } else if now.duration_since(c.last_checked)
                    >= Duration::from_millis(cfg.ping_interval_ms)
                {
                    to_ping.push(c);
                } else {
                    keep.push(c);
                }
            }
            idle.conns = keep;
            (expired, to_ping)
        };
        drop(expired);
        for mut c in to_ping {
            let ping = backend::ping_request();
            let addr = self.inner.addr.clone();
            let pinged = timeout(
                Duration::from_millis(cfg.connect_timeout_ms),
                round_trip(&mut c, &ping, &addr),
            )
            .await;
            if matches!(pinged, Ok(Ok(()))) && c.buf.is_empty() {
                c.last_checked = Instant::now();
                if let Ok(mut idle) = self.inner.idle.lock() {
                    idle.conns.push(c);
                }
            } else {
                tracing::info!(%addr, "idle backend connection failed its ping; closed");
            }
        }
        if here != 0 {
            return;
        }
        while self.idle_count() < cfg.min_idle {
            let Ok(permit) = self.inner.permits.clone().try_acquire_owned() else {
                break;
            };
            let caps = fmt_caps() & server_capabilities();
            // Pre-opened connections serve the most common client format.
            match self.open(caps, permit).await {
                Ok(c) => {
                    if let Ok(mut idle) = self.inner.idle.lock() {
                        idle.conns.push(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not open a min_idle connection");
                    break;
                }
            }
        }
    }

    /// Runs one statement on a fresh, unpooled connection (used for KILL).
    pub async fn run_once(&self, sql: &str) -> Result<(), PoolError> {
        let i = &self.inner;
        let (mut stream, mut buf, _) = self.connect(fmt_caps()).await?;
        let io_err = |source| PoolError::Io {
            addr: i.addr.clone(),
            source,
        };
        stream
            .write_all(&backend::query_request(sql))
            .await
            .map_err(io_err)?;
        let pkt = read_packet(&mut stream, &mut buf).await.map_err(io_err)?;
        backend::simple_reply(&pkt).map_err(|source| PoolError::Reply {
            addr: i.addr.clone(),
            source,
        })
    }

    /// Opens a connection of its own, outside the pool's limit (the replica
    /// position poller keeps one).
    pub async fn connect_unpooled(&self) -> Result<(C::Stream, BytesMut, BackendMeta), PoolError> {
        self.connect(fmt_caps()).await
    }

    /// How long connecting may take; also how long Tessera's own statements
    /// to a backend may take.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.cfg.connect_timeout_ms)
    }

    /// Runs one statement that answers with OK on a pooled connection, in
    /// autocommit (a COMMIT follows if the server left a transaction open),
    /// and gives the connection back. Used for sequence allocations, which
    /// must not run on a client's connection.
    pub async fn execute(&self, sql: &str) -> Result<OkSummary, PoolError> {
        let i = &self.inner;
        let mut conn = self.acquire(fmt_caps()).await?;
        let result = async {
            let ok = query_ok(&mut conn, sql, &i.addr).await?;
            if ok.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) {
                query_ok(&mut conn, "COMMIT", &i.addr).await?;
            }
            Ok(ok)
        }
        .await;
        // After an OK or an ERR the connection is between commands; after
        // anything else (I/O error, odd reply) it is closed.
        let reusable = matches!(&result, Ok(_) | Err(PoolError::Reply { .. }));
        self.release(conn, reusable);
        result
    }

    /// Asks the backend for its version string (at startup, for the greeting).
    pub async fn probe_version(&self) -> Result<String, PoolError> {
        let conn = self.acquire(fmt_caps()).await?;
        let v = conn.meta.server_version.clone();
        self.release(conn, true);
        Ok(v)
    }
}
