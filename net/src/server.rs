//! The proxy server: accept loop with the allowlist and connection limit, and
//! one task per client that drives a core [`Session`] over real sockets.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tessera_core::auth::{RsaKey, Sha2Cache};
use tessera_core::backend::BackendError;
use tessera_core::config::{Cidr, Config, ConfigError};
use tessera_core::protocol::{code, err_payload, sql_state_for, write_packet};
use tessera_core::router::Router;
use tessera_core::sequence;
use tessera_core::topology::{BackendId, Role, Topology};
use tessera_core::{Output, Session, SessionContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::capture::{CaptureDir, ConnCapture};
use crate::logs::StatementLogger;
use crate::pool::{BackendConn, Pool, PoolError};
use crate::replicas;
use crate::transport::{Connector, Listener, Stream};

/// Greeting version when the backend cannot be asked at start.
pub const FALLBACK_VERSION: &str = "5.5.5-10.11.0-Tessera";

/// How long a sequence allocation may take when no backend read timeout is set.
const SEQUENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Client bytes buffered while a command runs before reading pauses.
const CLIENT_BUFFER_LIMIT: usize = 1 << 20;

/// How a running session can be reached by KILL from another one.
struct SessionHandle {
    user: String,
    backend_thread: Arc<AtomicU32>,
    kill: Arc<Notify>,
}

/// State shared by all client tasks.
pub struct Shared<C: Connector> {
    pub ctx: Arc<SessionContext>,
    /// The default node's primary pool (KILL, version probe).
    pub pool: Pool<C>,
    /// One pool per backend, indexed by [`BackendId`].
    pub pools: Vec<Pool<C>>,
    pub topology: Arc<Topology>,
    allow: Vec<Cidr>,
    max_clients: usize,
    clients: AtomicUsize,
    next_id: AtomicU32,
    sessions: Mutex<HashMap<u32, SessionHandle>>,
    logger: Option<StatementLogger>,
    client_idle_timeout: Option<Duration>,
    /// Some user reads by GTID: replica positions are polled.
    track_positions: bool,
    /// Source of handshake nonces: OS entropy in production, a seed in simulation.
    rng: Mutex<rand::rngs::StdRng>,
    /// Capture mode (`TESSERA_CAPTURE_DIR`): where connections' bytes go.
    pub capture: Option<Arc<CaptureDir>>,
}

impl<C: Connector> Shared<C> {
    /// Takes `count` ids from the sequence of sharded table `table` on the
    /// default node's primary (creating `tessera_sequences` if it is missing).
    pub async fn allocate_sequence(&self, table: &str, count: u64) -> Result<Range<i64>, String> {
        let db = self
            .ctx
            .router
            .schema
            .sequence_database
            .clone()
            .ok_or("schema.sequence_database is not configured")?;
        let sql = sequence::allocate_sql(&db, table, count);
        let run = async {
            match self.pool.execute(&sql).await {
                Err(PoolError::Reply {
                    source: BackendError::Server(e),
                    ..
                }) if e.code == sequence::ER_NO_SUCH_TABLE => {
                    tracing::info!(database = %db, "creating {}", sequence::TABLE);
                    self.pool.execute(&sequence::create_table_sql(&db)).await?;
                    self.pool.execute(&sql).await
                }
                r => r,
            }
        };
        let limit = self.ctx.backend_read_timeout.unwrap_or(SEQUENCE_TIMEOUT);
        let ok = tokio::time::timeout(limit, run)
            .await
            .map_err(|_| format!("no answer within {} ms", limit.as_millis()))?
            .map_err(|e| e.to_string())?;
        let block = sequence::block_from(ok.last_insert_id, count).ok_or_else(|| {
            format!(
                "the backend reported next_value {} after taking {count} ids",
                ok.last_insert_id
            )
        })?;
        tracing::debug!(table, ?block, "sequence block allocated");
        Ok(block)
    }

    fn nonce(&self) -> [u8; 20] {
        use rand::Rng;
        match self.rng.lock() {
            Ok(mut r) => r.gen(),
            Err(_) => [0x5a; 20],
        }
    }
}

/// Builds everything the server needs from a validated config.
pub async fn build_shared<C: Connector>(
    config: &Config,
    connector: C,
) -> Result<Arc<Shared<C>>, ConfigError> {
    build_shared_seeded(config, connector, None).await
}

/// As [`build_shared`]; `seed` makes handshake nonces reproducible (simulation).
pub async fn build_shared_seeded<C: Connector>(
    config: &Config,
    connector: C,
    seed: Option<u64>,
) -> Result<Arc<Shared<C>>, ConfigError> {
    use rand::SeedableRng;
    let rng = match seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_entropy(),
    };
    let v = config.validate()?;
    let track_positions = v.tracks_replica_positions();
    let pools: Vec<Pool<C>> = v
        .topology
        .backends
        .iter()
        .map(|b| {
            Pool::new(
                connector.clone(),
                &b.addr,
                &b.user,
                &b.password,
                config.pool.clone(),
            )
        })
        .collect();
    let pool = pools[v.topology.primary(v.topology.default_node).0 as usize].clone();
    let server_version = match &config.server_version {
        Some(s) => s.clone(),
        None => match pool.probe_version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "backend not reachable at start; greeting uses {FALLBACK_VERSION}");
                FALLBACK_VERSION.to_string()
            }
        },
    };
    let needs_rsa = v
        .users
        .iter()
        .any(|u| u.method == tessera_core::auth::AuthMethod::CachingSha2);
    let rsa = if needs_rsa {
        let key = tokio::task::spawn_blocking(|| RsaKey::generate(&mut rand::rngs::OsRng))
            .await
            .ok()
            .and_then(|k| k.ok());
        key.map(Arc::new)
    } else {
        None
    };
    let logger = StatementLogger::open(&config.log).map_err(|e| ConfigError {
        key: "log".into(),
        message: e.to_string(),
    })?;
    let ctx = SessionContext {
        users: v
            .users
            .iter()
            .map(|u| (u.name.clone(), u.clone()))
            .collect(),
        sha2_cache: Arc::new(Sha2Cache::default()),
        rsa,
        server_version,
        max_allowed_packet: config.max_allowed_packet,
        record_statements: logger.is_some(),
        backend_read_timeout: (config.backend_read_timeout_ms > 0)
            .then(|| Duration::from_millis(config.backend_read_timeout_ms)),
        router: Arc::new(Router::new(v.topology.clone(), v.schema, v.blacklist)),
        merge_limit: config.max_merge_bytes,
        sequences: Default::default(),
    };
    Ok(Arc::new(Shared {
        ctx: Arc::new(ctx),
        pool,
        pools,
        topology: v.topology,
        allow: v.allow,
        max_clients: config.max_client_connections,
        clients: AtomicUsize::new(0),
        next_id: AtomicU32::new(1),
        sessions: Mutex::new(HashMap::new()),
        logger,
        client_idle_timeout: (config.client_idle_timeout_ms > 0)
            .then(|| Duration::from_millis(config.client_idle_timeout_ms)),
        track_positions,
        rng: Mutex::new(rng),
        capture: CaptureDir::from_env(),
    }))
}

/// Accepts clients until `shutdown` turns true (or its sender is gone),
/// then lets in-flight statements finish for up to `drain` before cutting
/// the rest.
pub async fn serve<L: Listener, C: Connector>(
    listener: L,
    shared: Arc<Shared<C>>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) where
    L::Stream: Stream,
{
    serve_loop(listener, shared, shutdown, drain, true).await
}

/// [`serve`] for one of several event loops sharing `shared`: each looks
/// after its own pooled connections; only the `first` watches replicas.
pub async fn serve_loop<L: Listener, C: Connector>(
    mut listener: L,
    shared: Arc<Shared<C>>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    first: bool,
) where
    L::Stream: Stream,
{
    let mut tasks = JoinSet::new();
    for p in &shared.pools {
        tokio::spawn(p.clone().maintain());
    }
    // Dropped (so aborted) when serving ends.
    let mut watchers = JoinSet::new();
    for (i, b) in shared.topology.backends.iter().enumerate() {
        if first && b.role == Role::Replica {
            let id = BackendId(i as u16);
            watchers.spawn(replicas::watch_health(shared.clone(), id));
            if shared.track_positions {
                watchers.spawn(replicas::watch_position(shared.clone(), id));
            }
        }
    }
    loop {
        // `biased`: the same branch order every time keeps simulations reproducible.
        tokio::select! {
            biased;
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move { admit(stream, peer, shared, shutdown).await });
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { break; }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(
        clients = tasks.len(),
        "shutting down: waiting for in-flight statements"
    );
    let deadline = tokio::time::sleep(drain);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            next = tasks.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(clients = tasks.len(), "shutdown deadline passed; closing remaining clients");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
}

/// Refuses a client before the handshake with an ERR packet (seq 0).
async fn refuse<S: Stream>(mut stream: S, code: u16, message: &str) {
    let mut out = BytesMut::new();
    write_packet(
        &mut out,
        0,
        &err_payload(code, sql_state_for(code), message),
    );
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

async fn admit<S: Stream, C: Connector>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared<C>>,
    shutdown: watch::Receiver<bool>,
) {
    let ip = peer.ip();
    if !shared.allow.is_empty() && !shared.allow.iter().any(|c| c.contains(ip)) {
        tracing::info!(%peer, "client address not allowed");
        let msg = format!("Host '{ip}' is not allowed to connect to this Tessera server");
        refuse(stream, code::ER_HOST_NOT_PRIVILEGED, &msg).await;
        return;
    }
    let n = shared.clients.fetch_add(1, Ordering::AcqRel);
    let _guard = CountGuard(&shared.clients);
    if n >= shared.max_clients {
        refuse(stream, code::ER_CON_COUNT_ERROR, "Too many connections").await;
        return;
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let handle_thread = Arc::new(AtomicU32::new(0));
    let kill = Arc::new(Notify::new());
    if let Ok(mut s) = shared.sessions.lock() {
        s.insert(
            id,
            SessionHandle {
                user: String::new(),
                backend_thread: handle_thread.clone(),
                kill: kill.clone(),
            },
        );
    }
    let mut driver = ClientDriver {
        shared: shared.clone(),
        client: stream,
        backends: BTreeMap::new(),
        id,
        backend_thread: handle_thread,
        kill,
        shutdown,
        capture: shared.capture.as_ref().map(|c| c.connection()),
    };
    if let Err(e) = driver.run(peer).await {
        tracing::debug!(%peer, id, error = %e, "client connection ended with an error");
    }
    for (id, conn) in std::mem::take(&mut driver.backends) {
        shared.pools[id.0 as usize].release(conn, false);
    }
    if let Ok(mut s) = shared.sessions.lock() {
        s.remove(&id);
    }
}

struct CountGuard<'a>(&'a AtomicUsize);
impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Drives one session: reads client and backend, carries out outputs.
struct ClientDriver<S: Stream, C: Connector> {
    shared: Arc<Shared<C>>,
    client: S,
    /// Connections the session holds, one per backend.
    backends: BTreeMap<BackendId, BackendConn<C::Stream>>,
    id: u32,
    backend_thread: Arc<AtomicU32>,
    kill: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
    /// Capture mode: this connection's files.
    capture: Option<ConnCapture>,
}

enum Event {
    Client(std::io::Result<usize>),
    Backend(BackendId, std::io::Result<usize>),
    Timeout,
    Killed,
    Shutdown,
    ClientIdle,
}

impl<S: Stream, C: Connector> ClientDriver<S, C> {
    async fn run(&mut self, peer: SocketAddr) -> std::io::Result<()> {
        let nonce = self.shared.nonce();
        let mut session = Session::new(self.shared.ctx.clone(), self.id, peer.ip(), nonce, now());
        let mut client_buf = BytesMut::with_capacity(16 * 1024);
        let mut registered_user = false;
        // Made once, not at every turn of the loop: registering with a
        // `Notify` or a `watch` costs a lock each time.
        let kill = self.kill.clone();
        let mut killed = pin!(kill.notified());
        let mut shutdown_requested = pin!(shutdown_requested(self.shutdown.clone()));
        let mut shutdown_seen = false;
        loop {
            self.drain(&mut session).await?;
            if session.is_closed() {
                let _ = self.client.shutdown().await;
                return Ok(());
            }
            if !registered_user && !session.user().is_empty() {
                registered_user = true;
                if let Ok(mut s) = self.shared.sessions.lock() {
                    if let Some(h) = s.get_mut(&self.id) {
                        h.user = session.user().to_string();
                    }
                }
            }
            if !client_buf.is_empty() && session.wants_client_data() {
                let before = client_buf.len();
                session.handle_client_data(now(), &mut client_buf);
                if client_buf.len() != before {
                    continue;
                }
            }
            if *self.shutdown.borrow() && session.is_idle() {
                let _ = self.client.shutdown().await;
                session.handle_client_closed(now());
                self.drain(&mut session).await?;
                return Ok(());
            }
            let deadline = session.poll_timeout().map(Instant::from_std);
            let idle_deadline = self
                .shared
                .client_idle_timeout
                .filter(|_| session.is_idle())
                .map(|t| Instant::now() + t);
            // A packet being received must be read whole; while a command runs, pause
            // reading once a megabyte of the next ones is buffered.
            let read_client = session.wants_client_data() || client_buf.len() < CLIENT_BUFFER_LIMIT;
            let event = {
                let client = &mut self.client;
                // A streaming merge may leave a backend unread until it catches up.
                let wanted = |id: BackendId| session.wants_backend_data(id);
                let has_backend = self.backends.keys().any(|id| wanted(*id));
                let backend_read = read_any(&mut self.backends, wanted);
                tokio::select! {
                    biased;
                    (id, r) = backend_read, if has_backend => Event::Backend(id, r),
                    r = client.read_buf(&mut client_buf), if read_client => Event::Client(r),
                    _ = sleep_until_opt(deadline), if deadline.is_some() => Event::Timeout,
                    _ = sleep_until_opt(idle_deadline), if idle_deadline.is_some() => Event::ClientIdle,
                    _ = &mut killed => Event::Killed,
                    _ = &mut shutdown_requested, if !shutdown_seen => {
                        shutdown_seen = true;
                        Event::Shutdown
                    }
                }
            };
            match event {
                Event::Backend(id, Ok(0)) => {
                    session.handle_backend_closed(now(), id, "backend closed the connection")
                }
                Event::Backend(id, Err(e)) => {
                    session.handle_backend_closed(now(), id, &e.to_string())
                }
                Event::Backend(id, Ok(n)) => {
                    if let Some(conn) = self.backends.get_mut(&id) {
                        if let Some(c) = &mut self.capture {
                            c.backend(id, &conn.buf[conn.buf.len() - n..]);
                        }
                        session.handle_backend_data(now(), id, &mut conn.buf);
                    }
                }
                Event::Client(Ok(0)) | Event::Client(Err(_)) => {
                    session.handle_client_closed(now());
                    self.drain(&mut session).await?;
                    return Ok(());
                }
                Event::Client(Ok(n)) => {
                    if let Some(c) = &mut self.capture {
                        c.client(&client_buf[client_buf.len() - n..]);
                    }
                    session.handle_client_data(now(), &mut client_buf)
                }
                Event::Timeout => session.handle_timeout(now()),
                Event::ClientIdle => {
                    session.handle_client_closed(now());
                    self.drain(&mut session).await?;
                    return Ok(());
                }
                Event::Killed => {
                    let threads: Vec<(BackendId, u32)> = self
                        .backends
                        .iter()
                        .map(|(id, b)| (*id, b.meta.thread_id))
                        .collect();
                    for (id, thread) in threads {
                        let _ = self.shared.pools[id.0 as usize]
                            .run_once(&format!("KILL QUERY {thread}"))
                            .await;
                    }
                    session.handle_client_closed(now());
                    self.drain(&mut session).await?;
                    return Ok(());
                }
                Event::Shutdown => {}
            }
        }
    }

    /// Carries out every queued output of the session.
    async fn drain(&mut self, session: &mut Session) -> std::io::Result<()> {
        let mut client_out: Vec<Bytes> = Vec::new();
        while let Some(out) = session.poll_output() {
            match out {
                Output::ToClient(b) => client_out.push(b),
                Output::ToBackend(id, b) => {
                    self.flush_client(&mut client_out).await?;
                    let failed = match self.backends.get_mut(&id) {
                        Some(conn) => conn.stream.write_all(&b).await.err(),
                        None => None,
                    };
                    if let Some(e) = failed {
                        session.handle_backend_closed(now(), id, &e.to_string());
                    }
                }
                Output::AcquireBackend(id) => {
                    self.flush_client(&mut client_out).await?;
                    let pool = &self.shared.pools[id.0 as usize];
                    match pool.acquire(session.client_capabilities()).await {
                        Ok(conn) => {
                            let meta = conn.meta.clone();
                            self.backends.insert(id, conn);
                            session.handle_backend_attached(now(), id, meta);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "no backend connection");
                            session.handle_backend_unavailable(now(), id, &e.to_string());
                        }
                    }
                    self.backend_thread
                        .store(session.backend_thread_id().unwrap_or(0), Ordering::Relaxed);
                }
                Output::ReleaseBackend {
                    backend,
                    meta,
                    reusable,
                } => {
                    if let Some(mut conn) = self.backends.remove(&backend) {
                        conn.meta = meta;
                        self.shared.pools[backend.0 as usize].release(conn, reusable);
                    }
                    self.backend_thread
                        .store(session.backend_thread_id().unwrap_or(0), Ordering::Relaxed);
                }
                Output::ResumeBackend(id) => {
                    self.flush_client(&mut client_out).await?;
                    if let Some(conn) = self.backends.get_mut(&id) {
                        session.handle_backend_data(now(), id, &mut conn.buf);
                    }
                }
                Output::Kill {
                    connection_id,
                    query_only,
                } => {
                    self.flush_client(&mut client_out).await?;
                    let result = self.kill(session, connection_id, query_only).await;
                    session.handle_kill_done(now(), result);
                }
                Output::AllocateSequence { table, count } => {
                    self.flush_client(&mut client_out).await?;
                    let result = self.shared.allocate_sequence(&table, count).await;
                    if let Err(e) = &result {
                        tracing::warn!(table, error = %e, "sequence allocation failed");
                    }
                    session.handle_sequence_block(now(), &table, result);
                }
                Output::Statement(mut rec) => {
                    if let Some(logger) = &self.shared.logger {
                        rec.duration =
                            now().saturating_duration_since(session.statement_started_at());
                        logger.record(rec);
                    }
                }
                Output::Close => {
                    self.flush_client(&mut client_out).await?;
                }
            }
        }
        self.flush_client(&mut client_out).await
    }

    async fn flush_client(&mut self, out: &mut Vec<Bytes>) -> std::io::Result<()> {
        match out.len() {
            0 => return Ok(()),
            1 => self.client.write_all(&out[0]).await?,
            _ => {
                let total: usize = out.iter().map(|b| b.len()).sum();
                let mut joined = BytesMut::with_capacity(total);
                for b in out.iter() {
                    joined.extend_from_slice(b);
                }
                self.client.write_all(&joined).await?;
            }
        }
        out.clear();
        Ok(())
    }

    async fn kill(
        &mut self,
        session: &Session,
        target: u32,
        query_only: bool,
    ) -> Result<(), String> {
        let unknown = format!("Unknown thread id: {target}");
        let (thread, notify, user) = {
            let sessions = self.shared.sessions.lock().map_err(|_| unknown.clone())?;
            let h = sessions.get(&target).ok_or_else(|| unknown.clone())?;
            (
                h.backend_thread.load(Ordering::Relaxed),
                h.kill.clone(),
                h.user.clone(),
            )
        };
        if user != session.user() {
            return Err(format!("You are not owner of thread {target}"));
        }
        if target == self.id && !query_only {
            self.kill.notify_one();
            return Ok(());
        }
        if query_only {
            if thread != 0 {
                self.shared
                    .pool
                    .run_once(&format!("KILL QUERY {thread}"))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        } else {
            notify.notify_one();
        }
        Ok(())
    }
}

/// Reads from whichever held backend connection has bytes first (in
/// backend order, so simulations stay reproducible).
async fn read_any<S: crate::transport::Stream>(
    conns: &mut BTreeMap<BackendId, BackendConn<S>>,
    wanted: impl Fn(BackendId) -> bool,
) -> (BackendId, std::io::Result<usize>) {
    std::future::poll_fn(|cx| {
        for (id, conn) in conns.iter_mut() {
            if !wanted(*id) {
                continue;
            }
            let read = pin!(conn.stream.read_buf(&mut conn.buf));
            if let Poll::Ready(r) = read.poll(cx) {
                return Poll::Ready((*id, r));
            }
        }
        Poll::Pending
    })
    .await
}

/// Resolves once shutdown has been asked for; never, if it cannot be any more.
async fn shutdown_requested(mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
