//! Tier 1: the core's [`Session`] state machines driven in-process against
//! the simulated servers ([`crate::server`]), with no tokio and no sockets.
//! A seed picks every interleaving: which bytes move next and in what
//! chunks, when time advances, when replicas catch up, and when a client
//! hangs up or a backend connection breaks. Thousands of seeds a second.
//!
//! Checked at every step: the proxy's answers are whole packets with the
//! right sequence ids, one answer per command and nothing unasked for; a
//! command goes to a backend only after its previous answer was read. At
//! the end: no client is left waiting, and the history passes the same
//! checkers as tier 2 ([`History::check`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_core::backend::{self, BackendLogin, BackendMeta};
use tessera_core::gtid::GtidPos;
use tessera_core::mutants::{self, Mutant};
use tessera_core::protocol::{self, cmd, CapabilityFlags, FrameReader};
use tessera_core::session::{Output, Session, SessionContext};
use tessera_core::topology::{BackendId, Role};

use crate::client::{Answer, AnswerReader, ClientError, PrepareReader};
use crate::engine::{Engine, SharedTrace, Tag};
use crate::history::{Evidence, History, Op, OpKind, Outcome};
use crate::prepared::{self, Param};
use crate::server::{ServerConn, PASSWORD};
use crate::workload::{classify, final_reads, random_op, read_back, Next, Program, USERS};

thread_local! {
    /// The proxy's context, built once a thread (parsing the config and
    /// building the router cost more than a seed).
    static CONTEXT: Arc<SessionContext> = {
        let ctx = tessera_core::testing::context_from_config(&crate::scenario::proxy_config_text());
        let mut ctx = Arc::try_unwrap(ctx).unwrap_or_else(|_| unreachable!("a fresh context"));
        // As in tier 2's config: a silent backend is given up after 1.5 s.
        ctx.backend_read_timeout = Some(Duration::from_millis(1500));
        Arc::new(ctx)
    };
}

/// The outcome of one tier-1 seed.
#[derive(Debug, Clone)]
pub struct Tier1Report {
    pub seed: u64,
    pub steps: u64,
    pub ops: usize,
    pub violations: Vec<String>,
    pub fingerprint: u64,
}

const CLIENTS: usize = 3;
const OPS_PER_CLIENT: usize = 10;
const MAX_STEPS: u64 = 200_000;
/// Virtual time after which a client still waiting has hung.
const DEADLINE: Duration = Duration::from_secs(120);

/// A backend connection: the server's side and the bytes in flight.
struct Link {
    server: ServerConn,
    engine: usize,
    /// The response format it was opened with (its pool key).
    format: CapabilityFlags,
    /// Sent by the session, not yet read by the server.
    to_server: Vec<u8>,
    /// Sent by the server, not yet read by the session.
    to_session: Vec<u8>,
    /// The session's read buffer for this connection.
    session_buf: BytesMut,
}

/// A movement of bytes (or a client's next request) the scheduler may pick.
#[derive(Debug, Clone, Copy)]
enum Move {
    ClientActs,
    ToSession,
    ToClient,
    ToServer,
    FromServer,
}

/// What the client waits for.
enum Awaiting {
    Answer(AnswerReader),
    /// A prepare's answer; then an execute with these values.
    Prepare(PrepareReader, Vec<Param>),
    /// An execute's answer; then a close of the statement.
    Execute(AnswerReader, u32),
}

struct Client {
    index: usize,
    user: &'static str,
    /// The client negotiates `CLIENT_DEPRECATE_EOF` (else classic EOFs).
    deprecate_eof: bool,
    sessions: usize,
    session: Option<Session>,
    login: Option<BackendLogin>,
    frames: FrameReader,
    /// Sent by the session, not yet read by the client.
    to_client: Vec<u8>,
    client_buf: BytesMut,
    /// Sent by the client, not yet read by the session.
    to_session: Vec<u8>,
    session_buf: BytesMut,
    links: BTreeMap<BackendId, Link>,
    /// The operation running: id, program, kind, when it began, and the
    /// reader of the answer awaited (if a statement is out).
    op: Option<(u64, Program, OpKind, Duration, bool)>,
    awaiting: Option<Awaiting>,
    script: VecDeque<(OpKind, bool)>,
    next_op: u64,
}

impl Client {
    fn name(&self) -> String {
        format!("c{}.{}", self.index, self.sessions)
    }
}

struct World {
    rng: StdRng,
    ctx: Arc<SessionContext>,
    base: Instant,
    now: Duration,
    engines: Vec<Engine>,
    /// Engine index of each backend id, and each replica's primary engine.
    engine_of: Vec<usize>,
    replica_of: BTreeMap<usize, usize>,
    /// Idle connections by backend, with the response format (see
    /// `protocol::format_capabilities`) each was opened with: as in
    /// `tessera-net`'s pool, a session only gets one in its own format.
    pool: BTreeMap<BackendId, Vec<(ServerConn, BackendMeta, CapabilityFlags)>>,
    trace: SharedTrace,
    clients: Vec<Client>,
    history: History,
    violations: Vec<String>,
    next_conn_id: u32,
    faults: bool,
    /// `TESSERA_SIM_TRACE=1`: print every event (for replaying a failure).
    verbose: bool,
}

/// Runs one seed.
pub fn run(seed: u64) -> Tier1Report {
    run_with_mutant(seed, None)
}

/// Runs one seed with a planted bug switched on.
pub fn run_with_mutant(seed: u64, mutant: Option<Mutant>) -> Tier1Report {
    mutants::set(mutant);
    let mut report = World::new(seed).run();
    mutants::set(None);
    report.seed = seed;
    report
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let ctx = CONTEXT.with(Arc::clone);
        let topology = ctx.router.topology.clone();
        // The context is the thread's, its router's plan cache warm (plans
        // equal fresh parses; only speed depends on it); what a seed changes
        // in the topology starts afresh.
        for id in 0..topology.backends.len() {
            topology.set_up(BackendId(id as u16), true);
            topology.set_position(BackendId(id as u16), None);
        }
        let mut engines = Vec::new();
        let mut engine_of = Vec::new();
        let mut replica_of = BTreeMap::new();
        for (i, b) in topology.backends.iter().enumerate() {
            let host = b.addr.split(':').next().unwrap_or_default();
            engines.push(Engine::new(host, i as u32 + 1, b.role != Role::Primary));
            engine_of.push(i);
        }
        for node in &topology.nodes {
            for r in &node.replicas {
                replica_of.insert(r.0 as usize, node.primary.0 as usize);
            }
        }
        let faults = rng.gen_bool(0.5);
        let clients = (0..CLIENTS)
            .map(|index| {
                let mut script = VecDeque::new();
                let ryw = USERS[index % USERS.len()] == "ryw";
                for n in 0..OPS_PER_CLIENT {
                    let op = random_op(&mut rng, format!("{index}-{n}"));
                    let read = read_back(&op).filter(|_| ryw && rng.gen_bool(0.5));
                    script.push_back((op, false));
                    if let Some(read) = read {
                        script.push_back((read, false));
                    }
                }
                Client {
                    index,
                    user: USERS[index % USERS.len()],
                    deprecate_eof: rng.gen_bool(0.5),
                    sessions: 0,
                    session: None,
                    login: None,
                    frames: FrameReader::new(64 << 20),
                    to_client: Vec::new(),
                    client_buf: BytesMut::new(),
                    to_session: Vec::new(),
                    session_buf: BytesMut::new(),
                    links: BTreeMap::new(),
                    op: None,
                    awaiting: None,
                    script,
                    next_op: 0,
                }
            })
            .collect();
        World {
            rng,
            ctx,
            base: Instant::now(),
            now: Duration::ZERO,
            engines,
            engine_of,
            replica_of,
            pool: BTreeMap::new(),
            trace: SharedTrace::default(),
            clients,
            history: History::default(),
            violations: Vec::new(),
            next_conn_id: 0,
            faults,
            verbose: std::env::var_os("TESSERA_SIM_TRACE").is_some(),
        }
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("[{:?}] {}", self.now, what());
        }
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn run(mut self) -> Tier1Report {
        let mut steps = 0u64;
        let mut healed = false;
        loop {
            steps += 1;
            if steps > MAX_STEPS || self.now > DEADLINE {
                for c in &self.clients {
                    if let Some((id, _, kind, ..)) = &c.op {
                        self.violations.push(format!(
                            "hang: client {} op {id} ({kind:?}) got no answer by {:?}",
                            c.index, self.now
                        ));
                    }
                }
                break;
            }
            if !healed
                && self
                    .clients
                    .iter()
                    .all(|c| c.script.is_empty() && c.op.is_none())
            {
                // Faults stop; every client checks its keys on the primaries.
                healed = true;
                self.faults = false;
                for c in &mut self.clients {
                    // Every kv key in one merged read, and the lists by one client.
                    for kind in final_reads(c.index == 0) {
                        c.script.push_back((kind, true));
                    }
                }
                // Fresh sessions for the final reads.
                for i in 0..self.clients.len() {
                    self.hang_up(i);
                }
            }
            if healed
                && self
                    .clients
                    .iter()
                    .all(|c| c.script.is_empty() && c.op.is_none())
            {
                break;
            }
            self.step();
        }
        let seed_steps = steps;
        // Hang up everyone, so the last connections go back to the pool.
        for i in 0..self.clients.len() {
            self.hang_up(i);
        }
        let evidence = Evidence {
            primaries: self
                .ctx
                .router
                .topology
                .nodes
                .iter()
                .map(|n| {
                    let e = &self.engines[self.engine_of[n.primary.0 as usize]];
                    (e.host.clone(), e.storage.binlog.clone())
                })
                .collect(),
            executed: self
                .trace
                .lock()
                .map(|t| t.executed.clone())
                .unwrap_or_default(),
        };
        let mut violations = std::mem::take(&mut self.violations);
        violations.extend(self.history.check(&evidence));
        Tier1Report {
            seed: 0,
            steps: seed_steps,
            ops: self.history.ops.len(),
            violations,
            fingerprint: self.history.fingerprint(&evidence),
        }
    }

    /// One event, chosen by the seed among those possible now.
    fn step(&mut self) {
        // Now and then the world moves on its own: time, replication, faults.
        match self.rng.gen_range(0..100) {
            0..=5 => return self.advance_time(),
            6..=7 => return self.replicate(),
            8 if self.faults && self.rng.gen_bool(0.25) => {
                let i = self.rng.gen_range(0..self.clients.len());
                return self.fault(i);
            }
            _ => {}
        }
        // Else one of the byte movements that can happen now.
        let mut moves: Vec<(usize, Move)> = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            let wants_client = c.session.as_ref().is_some_and(|s| s.wants_client_data());
            let idle = c.login.is_none() && c.awaiting.is_none();
            if c.session.is_none()
                || (idle && (c.op.is_some() || !c.script.is_empty()))
                || c.session.as_ref().is_some_and(|s| s.is_closed())
            {
                moves.push((i, Move::ClientActs));
            }
            if !c.to_session.is_empty() && wants_client {
                moves.push((i, Move::ToSession));
            }
            if !c.to_client.is_empty() {
                moves.push((i, Move::ToClient));
            }
            if c.links
                .values()
                .any(|l| !l.to_server.is_empty() || l.server.is_blocked())
            {
                moves.push((i, Move::ToServer));
            }
            let from_server = c.links.iter().any(|(id, l)| {
                !l.to_session.is_empty()
                    && c.session
                        .as_ref()
                        .is_some_and(|s| s.wants_backend_data(*id))
            });
            if from_server {
                moves.push((i, Move::FromServer));
            }
        }
        if moves.is_empty() {
            // Everyone waits: on a timer, a lock, or a replica.
            return self.advance_time();
        }
        let (i, m) = moves[self.rng.gen_range(0..moves.len())];
        match m {
            Move::ClientActs => self.client_acts(i),
            Move::ToSession => self.deliver_to_session(i),
            Move::ToClient => self.deliver_to_client(i),
            Move::ToServer => self.deliver_to_server(i),
            Move::FromServer => self.deliver_from_server(i),
        }
    }

    /// The client connects, or sends its operation's next statement.
    fn client_acts(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.session.is_none() {
            self.connect(i);
            return;
        }
        if c.session.as_ref().is_some_and(|s| s.is_closed()) && c.to_client.is_empty() {
            // The proxy closed the connection and everything it sent was read.
            self.hang_up(i);
            return;
        }
        if c.login.is_some() || c.awaiting.is_some() {
            return;
        }
        if c.op.is_none() {
            if c.script.is_empty() {
                return;
            }
            // Now and then a client hangs up between operations, so its
            // backend connections go back to the pool for others.
            if self.rng.gen_bool(0.1) {
                self.hang_up(i);
                return;
            }
            let c = &mut self.clients[i];
            let Some((kind, after_heal)) = c.script.pop_front() else {
                return;
            };
            c.next_op += 1;
            let id = c.index as u64 * 1_000_000 + c.next_op;
            let program = Program::new(&kind);
            c.op = Some((id, program, kind, self.now, after_heal));
            self.advance_program(i, None);
        }
    }

    fn connect(&mut self, i: usize) {
        self.next_conn_id += 1;
        let nonce: [u8; 20] = self.rng.gen();
        let now = self.instant();
        let c = &mut self.clients[i];
        c.sessions += 1;
        c.session = Some(Session::new(
            self.ctx.clone(),
            self.next_conn_id,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            nonce,
            now,
        ));
        let caps = if c.deprecate_eof {
            CapabilityFlags::CLIENT_DEPRECATE_EOF
        } else {
            CapabilityFlags::empty()
        };
        c.login = Some(BackendLogin::new(c.user, PASSWORD, caps));
        c.frames = FrameReader::new(64 << 20);
        c.to_client.clear();
        c.client_buf.clear();
        c.to_session.clear();
        c.session_buf.clear();
        c.awaiting = None;
        self.drain(i);
    }

    /// Feeds the program the last answer; sends what it wants next.
    fn advance_program(&mut self, i: usize, last: Option<Result<Answer, ClientError>>) {
        let c = &mut self.clients[i];
        let Some((id, program, ..)) = c.op.as_mut() else {
            return;
        };
        let id = *id;
        match program.next(last.map(classify)) {
            Next::Send(sql) => {
                let tag = Tag {
                    session: c.name(),
                    op: id,
                };
                let text = tag.apply(&sql);
                if self.verbose {
                    eprintln!("[{:?}] client {i} sends {text}", self.now);
                }
                let c = &mut self.clients[i];
                c.to_session
                    .extend_from_slice(&backend::query_request(&text));
                c.awaiting = Some(Awaiting::Answer(AnswerReader::new(c.deprecate_eof, false)));
            }
            Next::MultiOn => {
                let c = &mut self.clients[i];
                c.to_session
                    .extend_from_slice(&crate::client::set_option_request(true));
                c.awaiting = Some(Awaiting::Answer(AnswerReader::new(c.deprecate_eof, false)));
            }
            Next::Reset => {
                self.log(|| format!("client {i} resets its connection"));
                let c = &mut self.clients[i];
                c.to_session.extend_from_slice(&backend::reset_request());
                c.awaiting = Some(Awaiting::Answer(AnswerReader::new(c.deprecate_eof, false)));
            }
            Next::Prepared(sql, params) => {
                let tag = Tag {
                    session: c.name(),
                    op: id,
                };
                let text = tag.apply(&sql);
                self.log(|| format!("client {i} prepares {text} with {params:?}"));
                let c = &mut self.clients[i];
                let mut p = vec![cmd::STMT_PREPARE];
                p.extend_from_slice(text.as_bytes());
                let mut wire = BytesMut::new();
                protocol::write_packet(&mut wire, 0, &p);
                c.to_session.extend_from_slice(&wire);
                c.awaiting = Some(Awaiting::Prepare(
                    PrepareReader::new(c.deprecate_eof),
                    params,
                ));
            }
            Next::Done(outcome) => self.finish(i, outcome),
        }
    }

    fn finish(&mut self, i: usize, outcome: Outcome) {
        let now = self.now;
        let c = &mut self.clients[i];
        c.awaiting = None;
        let Some((id, _, kind, invoked, after_heal)) = c.op.take() else {
            return;
        };
        let session = c.name();
        self.history.ops.push(Op {
            id,
            client: c.index,
            session,
            ryw: c.user == "ryw",
            kind,
            invoked,
            completed: now,
            outcome,
            after_heal,
        });
    }

    /// The client's connection is gone: the running operation's outcome is
    /// unknown (writes) or failed (reads).
    fn hang_up(&mut self, i: usize) {
        self.log(|| format!("client {i} hangs up"));
        let now = self.instant();
        if let Some(mut s) = self.clients[i].session.take() {
            s.handle_client_closed(now);
            self.clients[i].session = Some(s);
            self.drain(i);
            self.clients[i].session = None;
        }
        let c = &mut self.clients[i];
        // Whatever the session still held is closed (the driver's sockets drop).
        let links = std::mem::take(&mut c.links);
        for (_, mut l) in links {
            l.server.close(&mut self.engines[l.engine]);
        }
        c.login = None;
        // The socket is gone, and what was in flight with it.
        c.to_client.clear();
        c.client_buf.clear();
        c.to_session.clear();
        c.session_buf.clear();
        if c.op.is_some() {
            self.finish(i, Outcome::Unknown("client hung up".into()));
        }
    }

    fn fault(&mut self, i: usize) {
        self.log(|| format!("fault at client {i}"));
        if self.rng.gen_bool(0.5) {
            self.hang_up(i);
            return;
        }
        // A backend connection of this client breaks.
        let ids: Vec<BackendId> = self.clients[i].links.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[self.rng.gen_range(0..ids.len())];
        if let Some(mut l) = self.clients[i].links.remove(&id) {
            l.server.close(&mut self.engines[l.engine]);
        }
        let now = self.instant();
        if let Some(s) = self.clients[i].session.as_mut() {
            s.handle_backend_closed(now, id, "tier1: connection lost");
        }
        self.drain(i);
    }

    fn deliver_to_session(&mut self, i: usize) {
        let n = chunk(&mut self.rng, self.clients[i].to_session.len());
        let now = self.instant();
        let c = &mut self.clients[i];
        let Some(s) = c.session.as_mut() else { return };
        if n == 0 || !s.wants_client_data() {
            return;
        }
        c.session_buf.extend_from_slice(&c.to_session[..n]);
        c.to_session.drain(..n);
        s.handle_client_data(now, &mut c.session_buf);
        self.drain(i);
    }

    fn deliver_to_client(&mut self, i: usize) {
        let n = chunk(&mut self.rng, self.clients[i].to_client.len());
        if n == 0 {
            return;
        }
        let c = &mut self.clients[i];
        c.client_buf.extend_from_slice(&c.to_client[..n]);
        c.to_client.drain(..n);
        loop {
            let c = &mut self.clients[i];
            let pkt = match c.frames.next_packet(&mut c.client_buf) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    let msg = format!("client {i}: bad packet from the proxy: {e:?}");
                    self.violations.push(msg);
                    self.hang_up(i);
                    return;
                }
            };
            if let Some(login) = c.login.as_mut() {
                if pkt.payload.first() == Some(&0xff) {
                    // Refused at login (e.g. too many connections): try again later.
                    self.hang_up(i);
                    return;
                }
                match login.handle_packet(&pkt) {
                    Ok(reply) => {
                        if let Some(b) = reply {
                            c.to_session.extend_from_slice(&b);
                        }
                        if login.finished().is_some() {
                            c.login = None;
                        }
                    }
                    Err(e) => {
                        self.violations
                            .push(format!("client {i}: login failed: {e}"));
                        self.hang_up(i);
                        return;
                    }
                }
                continue;
            }
            let Some(awaiting) = c.awaiting.as_mut() else {
                self.log(|| {
                    format!(
                        "VIOLATION client {i} unsolicited {:?}",
                        &pkt.payload[..pkt.payload.len().min(20)]
                    )
                });
                self.violations.push(format!(
                    "client {i}: the proxy sent a packet nobody asked for: {:?}",
                    &pkt.payload[..pkt.payload.len().min(32)]
                ));
                self.hang_up(i);
                return;
            };
            let answer = match awaiting {
                Awaiting::Answer(reader) => reader.packet(&pkt),
                Awaiting::Prepare(reader, params) => match reader.packet(&pkt) {
                    None => None,
                    Some(Err(e)) => Some(Err(e)),
                    Some(Ok(id)) => {
                        let request = prepared::execute_request(id, params);
                        c.to_session.extend_from_slice(&request);
                        c.awaiting = Some(Awaiting::Execute(
                            AnswerReader::new(c.deprecate_eof, true),
                            id,
                        ));
                        c.frames.expect_seq(None);
                        continue;
                    }
                },
                Awaiting::Execute(reader, id) => {
                    let answer = reader.packet(&pkt);
                    if answer.is_some() {
                        let close = prepared::close_request(*id);
                        c.to_session.extend_from_slice(&close);
                    }
                    answer
                }
            };
            if let Some(answer) = answer {
                self.log(|| format!("client {i} answer {answer:?}"));
                let c = &mut self.clients[i];
                c.awaiting = None;
                c.frames.expect_seq(None);
                self.advance_program(i, Some(answer));
            }
        }
    }

    fn deliver_to_server(&mut self, i: usize) {
        let ids: Vec<BackendId> = self.clients[i]
            .links
            .iter()
            .filter(|(_, l)| !l.to_server.is_empty())
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return self.run_servers(i);
        }
        let id = ids[self.rng.gen_range(0..ids.len())];
        let n = {
            let len = self.clients[i].links[&id].to_server.len();
            chunk(&mut self.rng, len)
        };
        if let Some(l) = self.clients[i].links.get_mut(&id) {
            let bytes: Vec<u8> = l.to_server.drain(..n).collect();
            l.server.receive(&bytes);
        }
        self.run_servers(i);
    }

    /// Lets every server connection of the client answer what it can.
    fn run_servers(&mut self, i: usize) {
        let now = self.now;
        for l in self.clients[i].links.values_mut() {
            let engine = &mut self.engines[l.engine];
            while let Some(step) = l.server.step(engine, &self.trace, now) {
                l.to_session.extend_from_slice(&step.out);
            }
        }
    }

    fn deliver_from_server(&mut self, i: usize) {
        let c = &self.clients[i];
        let Some(s) = c.session.as_ref() else { return };
        let ids: Vec<BackendId> = c
            .links
            .iter()
            .filter(|(id, l)| !l.to_session.is_empty() && s.wants_backend_data(**id))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[self.rng.gen_range(0..ids.len())];
        let len = self.clients[i].links[&id].to_session.len();
        let n = chunk(&mut self.rng, len);
        let now = self.instant();
        let c = &mut self.clients[i];
        if let (Some(s), Some(l)) = (c.session.as_mut(), c.links.get_mut(&id)) {
            if self.verbose {
                eprintln!(
                    "[{:?}] {id:?} -> session {i}: {:?}",
                    self.now,
                    &l.to_session[..n.min(60)]
                );
            }
            l.session_buf.extend_from_slice(&l.to_session[..n]);
            l.to_session.drain(..n);
            s.handle_backend_data(now, id, &mut l.session_buf);
        }
        self.drain(i);
    }

    fn advance_time(&mut self) {
        // Slow, bursty time while faults run (backend read timeouts fire);
        // a quick network once they have healed.
        let most = if self.faults { 200 } else { 5 };
        self.now += Duration::from_millis(self.rng.gen_range(1..most));
        let now = self.instant();
        for i in 0..self.clients.len() {
            self.run_servers(i);
            let due = self.clients[i]
                .session
                .as_ref()
                .and_then(|s| s.poll_timeout())
                .is_some_and(|t| t <= now);
            if due {
                if let Some(s) = self.clients[i].session.as_mut() {
                    s.handle_timeout(now);
                }
                self.drain(i);
            }
        }
    }

    /// Replicas apply some of their primary's new commits; the proxy's
    /// view of their positions follows (as its position poller would).
    fn replicate(&mut self) {
        let pairs: Vec<(usize, usize)> = self.replica_of.iter().map(|(r, p)| (*r, *p)).collect();
        for (r, p) in pairs {
            let applied = self.engines[r]
                .storage
                .slave_pos
                .map(|(_, s)| s)
                .unwrap_or(0);
            let mut pending = self.engines[p].storage.binlog_after(applied);
            let take = self.rng.gen_range(0..=pending.len());
            for c in pending.drain(..take) {
                self.engines[r].storage.apply_replicated(c);
            }
            let pos = GtidPos::parse(&self.engines[r].storage.slave_pos_text()).ok();
            self.ctx
                .router
                .topology
                .set_position(BackendId(r as u16), pos);
        }
    }

    /// Carries out the session's outputs, as the net adapter does.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.clients[i]
                .session
                .as_mut()
                .and_then(|s| s.poll_output())
            else {
                return;
            };
            match out {
                Output::ToClient(b) => {
                    self.log(|| format!("session {i} -> client {:?}", &b[..b.len().min(400)]));
                    self.clients[i].to_client.extend_from_slice(&b)
                }
                Output::ToBackend(id, b) => {
                    let Some(l) = self.clients[i].links.get_mut(&id) else {
                        self.violations.push(format!(
                            "client {i}: the session wrote to {id:?} it does not hold"
                        ));
                        continue;
                    };
                    if !l.to_session.is_empty() || !l.session_buf.is_empty() {
                        self.violations.push(format!(
                            "client {i}: a command went to {id:?} before the previous answer was read"
                        ));
                    }
                    l.to_server.extend_from_slice(&b);
                    let text = String::from_utf8_lossy(&b[4..b.len().min(90)]).into_owned();
                    self.log(|| format!("session {i} -> {id:?}: {text}"));
                }
                Output::AcquireBackend(id) => self.acquire(i, id),
                Output::ReleaseBackend {
                    backend,
                    meta,
                    reusable,
                } => self.release(i, backend, meta, reusable),
                Output::ResumeBackend(_) | Output::Statement(_) | Output::Close => {}
                Output::Kill { .. } => {
                    let now = self.instant();
                    if let Some(s) = self.clients[i].session.as_mut() {
                        s.handle_kill_done(now, Err("KILL is not simulated in tier 1".into()));
                    }
                }
                Output::AllocateSequence { table, .. } => {
                    let now = self.instant();
                    if let Some(s) = self.clients[i].session.as_mut() {
                        s.handle_sequence_block(now, &table, Err("no sequences in tier 1".into()));
                    }
                }
            }
        }
    }

    /// An idle pooled connection, or a new one logged in.
    fn acquire(&mut self, i: usize, id: BackendId) {
        let engine = self.engine_of[id.0 as usize];
        let caps = self.clients[i]
            .session
            .as_ref()
            .map(|s| s.client_capabilities())
            .unwrap_or_else(CapabilityFlags::empty)
            & protocol::format_capabilities();
        let idle = self.pool.get_mut(&id).and_then(|conns| {
            let at = conns.iter().rposition(|(_, _, format)| *format == caps)?;
            Some(conns.swap_remove(at))
        });
        let (server, meta) = match idle {
            Some((server, meta, _)) => (server, meta),
            None => {
                let (mut server, greeting) = ServerConn::new(&mut self.engines[engine]);
                let b = &self.ctx.router.topology.backends[id.0 as usize];
                let mut login = BackendLogin::new(&b.user, &b.password, caps);
                let mut wire = BytesMut::from(&greeting[..]);
                let mut frames = FrameReader::new(64 << 20);
                loop {
                    match frames.next_packet(&mut wire) {
                        Ok(Some(p)) => match login.handle_packet(&p) {
                            Ok(Some(reply)) => {
                                server.receive(&reply);
                                while let Some(step) =
                                    server.step(&mut self.engines[engine], &self.trace, self.now)
                                {
                                    wire.extend_from_slice(&step.out);
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                self.violations.push(format!("backend login failed: {e}"));
                                return;
                            }
                        },
                        _ => break,
                    }
                    if login.finished().is_some() {
                        break;
                    }
                }
                let Some(meta) = login.finished().cloned() else {
                    self.violations.push("backend login did not finish".into());
                    return;
                };
                (server, meta)
            }
        };
        self.clients[i].links.insert(
            id,
            Link {
                server,
                engine,
                format: caps,
                to_server: Vec::new(),
                to_session: Vec::new(),
                session_buf: BytesMut::new(),
            },
        );
        let now = self.instant();
        if let Some(s) = self.clients[i].session.as_mut() {
            s.handle_backend_attached(now, id, meta);
        }
    }

    /// Back to the pool after a reset, as `tessera-net`'s pool does; a
    /// connection with bytes in flight or an unusable one is closed.
    fn release(&mut self, i: usize, id: BackendId, mut meta: BackendMeta, reusable: bool) {
        let Some(mut l) = self.clients[i].links.remove(&id) else {
            return;
        };
        let engine = &mut self.engines[l.engine];
        let clean = l.to_server.is_empty()
            && l.to_session.is_empty()
            && l.session_buf.is_empty()
            && !l.server.is_blocked();
        if !reusable || !clean {
            l.server.close(engine);
            return;
        }
        if !mutants::active(Mutant::PoolSkipsReset) {
            l.server.receive(&backend::reset_request());
            let answered = l.server.step(engine, &self.trace, self.now);
            if answered.is_none_or(|s| s.out.get(4) != Some(&0)) {
                l.server.close(engine);
                return;
            }
            meta.state.after_reset();
        }
        self.pool
            .entry(id)
            .or_default()
            .push((l.server, meta, l.format));
    }
}

/// How many of `len` bytes move in one delivery: all, or a random cut.
fn chunk(rng: &mut StdRng, len: usize) -> usize {
    if len <= 1 || rng.gen_bool(0.6) {
        len
    } else {
        rng.gen_range(1..len)
    }
}

/// Runs `seeds` seeds from `first` on every core (each seed is independent
/// and deterministic); the failing ones with their violations, by seed.
pub fn campaign(first: u64, seeds: u64, mutant: Option<Mutant>) -> Vec<Tier1Report> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1)
        .min(seeds.max(1));
    let mut failing: Vec<Tier1Report> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (first + t..first + seeds)
                        .step_by(threads as usize)
                        .map(|seed| run_with_mutant(seed, mutant))
                        .filter(|r| !r.violations.is_empty())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    failing.sort_by_key(|r| r.seed);
    failing
}
