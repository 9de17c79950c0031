//! One client connection as a sans-IO state machine: handshake and
//! authentication, then commands forwarded to an attached backend connection
//! whose responses stream back untouched.
//!
//! The driver feeds bytes and events in (`handle_*`) and drains
//! [`Output`]s after every input. Time comes in as `now`; the session never
//! reads a clock and draws no randomness of its own.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use mysql_common::collations::{Collation, CollationId};
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;

use crate::auth::{AuthMethod, RsaKey, Sha2Cache};
use crate::backend::{BackendMeta, Interest, ResponseKind, ResponseScanner, Step};
use crate::config::{ReadYourWrites, User};
use crate::gtid::GtidPos;
use crate::merge;
use crate::mutants::{self, Mutant};
use crate::protocol::{
    self, cmd, code, err_payload, ok_payload, sql_state_for, FrameError, FrameReader, Packet,
};
use crate::router::{
    self, Access, BoundStatement, Plan, PreparedRoute, Router, ScatterMerge, ScatterPlan,
    SequenceInsert,
};
use crate::scatter::{Lane, LaneStep, ScatterRun};
use crate::sequence::Sequences;
use crate::topology::{BackendId, Role};

mod sharded_stmt;
use sharded_stmt::ShardedStmt;

/// Everything sessions share: users, auth material, limits. Immutable; a
/// reload swaps in a new one for new sessions.
#[derive(Debug)]
pub struct SessionContext {
    pub users: BTreeMap<String, User>,
    pub sha2_cache: Arc<Sha2Cache>,
    pub rsa: Option<Arc<RsaKey>>,
    /// Version string for the greeting (the backend's, unless overridden).
    pub server_version: String,
    pub max_allowed_packet: usize,
    /// Emit a [`StatementRecord`] for every statement (SQL or slow log on).
    pub record_statements: bool,
    /// Give up on a backend that does not answer within this long.
    pub backend_read_timeout: Option<Duration>,
    /// Routing: nodes, sharded tables, blacklist.
    pub router: Arc<Router>,
    /// Largest result a scatter query may buffer for merging, in bytes.
    pub merge_limit: usize,
    /// Ids of global sequences this proxy holds, shared by every session.
    pub sequences: Arc<Sequences>,
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Output {
    /// Write these bytes to the client.
    ToClient(Bytes),
    /// Write these bytes to the session's connection to this backend.
    ToBackend(BackendId, Bytes),
    /// Attach a connection to this backend (answer with `backend_attached`
    /// or `backend_unavailable`).
    AcquireBackend(BackendId),
    /// Detach the connection to a backend: back to the pool (reset before
    /// reuse) if `reusable`, else close it.
    ReleaseBackend {
        backend: BackendId,
        meta: BackendMeta,
        reusable: bool,
    },
    /// Bytes of this backend's connection that the session left unread
    /// (while [`Session::wants_backend_data`] said no) are wanted again:
    /// offer them with `handle_backend_data`, and read from it again.
    ResumeBackend(BackendId),
    /// Kill another session's statement or connection (answer with `kill_done`).
    Kill {
        connection_id: u32,
        query_only: bool,
    },
    /// Take `count` ids from the global sequence of sharded table `table`
    /// (lower case) in `tessera_sequences` on the default node's primary, in
    /// autocommit on a connection that is not the session's (answer with
    /// `handle_sequence_block`). See [`crate::sequence`] for the SQL.
    AllocateSequence { table: String, count: u64 },
    /// A statement finished (only with `record_statements`).
    Statement(StatementRecord),
    /// Close the client connection (after writing what came before).
    Close,
}

/// A finished statement, for the SQL log and the slow log.
#[derive(Debug, Clone)]
pub struct StatementRecord {
    pub user: String,
    pub client: IpAddr,
    pub backend_thread: u32,
    pub sql: String,
    pub duration: Duration,
    pub error: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthStage {
    /// Waiting for the client's reply to an auth switch.
    Switched,
    /// caching_sha2: "perform full authentication" sent.
    FullAuth,
    /// caching_sha2: public key sent, waiting for the encrypted password.
    KeySent,
}

#[derive(Debug)]
enum Phase {
    AwaitHandshake,
    Auth {
        stage: AuthStage,
        method: AuthMethod,
    },
    /// Logged in; the value says what, if anything, is in progress.
    Command(Busy),
    Closed,
}

#[derive(Debug)]
enum Busy {
    Idle,
    /// Waiting for the driver to attach a backend.
    Acquiring,
    /// Bringing the backend to the session's state: internal commands whose
    /// answers are swallowed.
    Restoring {
        scanner: ResponseScanner,
        left: VecDeque<Internal>,
        /// What the answer said so far: it may arrive over several reads.
        result: InternalResult,
    },
    /// A client command's response streams back.
    Forwarding {
        scanner: ResponseScanner,
        what: Forwarded,
        /// Sub-tables to report under their logical names in the column
        /// definitions (physical, logical); empty for most statements, whose
        /// responses then pass through untouched.
        table_names: Vec<(String, String)>,
    },
    /// Waiting for the driver to carry out a KILL.
    Killing,
    /// An INSERT waiting for ids from its table's sequence.
    Sequence(Box<SequenceWait>),
    /// A statement fanned out to several sub-tables or nodes.
    Scatter(Box<ScatterRun>),
}

#[derive(Debug, Clone)]
pub(crate) enum Internal {
    Send(Bytes, ResponseKind, InternalPurpose),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InternalPurpose {
    Restore,
    /// The client's deferred BEGIN, sent before its first statement.
    Begin,
    /// Re-preparing a client statement on a new backend connection.
    Reprepare(u32),
}

/// An INSERT whose sequence column needs ids the proxy does not hold yet.
#[derive(Debug)]
struct SequenceWait {
    pkt: Packet,
    seq: Box<SequenceInsert>,
    /// NO_AUTO_VALUE_ON_ZERO: a 0 given stays 0.
    keep_zero: bool,
    want: usize,
    ids: Vec<i64>,
    /// The statement must stay on one node (it runs in a transaction):
    /// ids that would send a row elsewhere are skipped.
    one_node: bool,
    /// That node, once known.
    target: Option<usize>,
    /// Ids skipped so far.
    skipped: u64,
}

/// What a forwarded command needs when its response ends.
#[derive(Debug, Clone)]
enum Forwarded {
    Plain,
    Prepare { sql: Bytes, write: bool },
    InitDb { schema: String },
    SetOption { multi: bool },
    ResetConnection,
}

/// A prepared statement as the client sees it.
#[derive(Debug, Clone)]
struct Prepared {
    sql: Bytes,
    params: u16,
    /// The backend the statement runs on (its node's primary).
    backend: BackendId,
    /// The statement's id on that backend's connection, if prepared there.
    backend_id: Option<u32>,
    /// Parameter types from the last execute that sent them.
    param_types: Option<Bytes>,
    /// Whether the backend statement has seen `param_types`.
    types_sent: bool,
    /// Set for a statement over sharded tables, routed at each execute.
    sharded: Option<Box<ShardedStmt>>,
    /// Whether executing it may write (read-your-writes counts it).
    write: bool,
}

/// What a session last wrote to one node, for read-your-writes.
#[derive(Debug, Clone, Default)]
struct LastWrite {
    /// The GTIDs of its writes there (`last_gtid` from the primary's OK
    /// packets), the latest per replication domain.
    gtid: GtidPos,
    /// The primary reported a `last_gtid` Tessera could not read: no
    /// replica can be shown to have it, so reads stay on the primary.
    gtid_unknown: bool,
    /// When the last write there finished.
    at: Option<Instant>,
}

/// The session state the client set and expects on any backend connection.
#[derive(Debug, Clone, Default)]
struct Wanted {
    schema: Option<String>,
    vars: BTreeMap<String, String>,
    multi_statements: bool,
}

/// Variables that change on their own or cannot be set, so never restored.
const UNRESTORABLE: &[&str] = &[
    "last_gtid",
    "session_track_system_variables",
    "session_track_schema",
    "session_track_state_change",
    "session_track_transaction_info",
    "gtid_seq_no",
    "insert_id",
    "last_insert_id",
    "timestamp",
    "rand_seed1",
    "rand_seed2",
    "identity",
    "warning_count",
    "error_count",
];

/// Connection-scoped client session.
pub struct Session {
    ctx: Arc<SessionContext>,
    connection_id: u32,
    client_addr: IpAddr,
    nonce: [u8; 20],
    phase: Phase,
    frames: FrameReader,
    out: VecDeque<Output>,
    client_caps: CapabilityFlags,
    user: String,
    wanted: Wanted,
    /// Connections held, one per backend the session has used.
    slots: BTreeMap<BackendId, BackendMeta>,
    /// The backend of the command in progress (or about to be).
    active: BackendId,
    /// The backend the last command ran on: its state is the session's.
    last_backend: Option<BackendId>,
    /// The backend holding the open transaction.
    tx_backend: Option<BackendId>,
    /// The transaction's connection broke while the client was between
    /// statements: its next command is refused with this message and the
    /// connection closed, so no statement of the lost transaction runs
    /// outside it and no COMMIT is acknowledged for it.
    tx_lost: Option<String>,
    /// A BEGIN the client sent, held until its first statement picks a node.
    pending_begin: Option<Bytes>,
    /// The client command held while a backend is attached or restored.
    pending: Option<Packet>,
    /// Renamed sub-tables of the pending command (see `Busy::Forwarding`).
    pending_tables: Vec<(String, String)>,
    stmts: BTreeMap<u32, Prepared>,
    next_stmt_id: u32,
    in_transaction: bool,
    /// Deadline for the backend's answer, when a timeout is configured.
    backend_deadline: Option<Instant>,
    started: Instant,
    current_sql: Option<String>,
    last_error: Option<u16>,
    /// Login data held while a COM_CHANGE_USER or full auth completes.
    pending_login: Option<PendingLogin>,
    /// The routing of a statement over sharded tables being prepared.
    prepare_route: Option<Arc<BoundStatement>>,
    /// The logged-in user's read-your-writes mode.
    ryw: ReadYourWrites,
    /// Per node (by index): the session's last write there.
    written: Vec<LastWrite>,
    /// The command being forwarded may write (its end counts as a write).
    fwd_write: bool,
    /// Whether the statement being prepared may write when executed.
    prepare_writes: bool,
    /// The first id a sequence generated for the statement in progress, and
    /// the node of the row that got it.
    generated: Option<(i64, Option<usize>)>,
}

#[derive(Debug, Clone)]
struct PendingLogin {
    user: String,
    schema: Option<String>,
    collation: u16,
    auth_seq: u8,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("connection_id", &self.connection_id)
            .field("phase", &self.phase)
            .finish()
    }
}

fn frame(seq: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 4);
    protocol::write_packet(&mut out, seq, payload);
    out.freeze()
}

impl Session {
    /// Starts a session and queues the server greeting. `nonce` must be 20
    /// random bytes from the driver (no NUL bytes are needed: they are mapped).
    pub fn new(
        ctx: Arc<SessionContext>,
        connection_id: u32,
        client_addr: IpAddr,
        nonce: [u8; 20],
        now: Instant,
    ) -> Self {
        let mut nonce = nonce;
        for b in nonce.iter_mut() {
            // Printable, non-NUL scramble bytes, as MySQL servers send.
            *b = 0x21 + (*b % 0x5e);
        }
        let max = ctx.max_allowed_packet;
        let mut s = Self {
            ctx,
            connection_id,
            client_addr,
            nonce,
            phase: Phase::AwaitHandshake,
            frames: FrameReader::new(max),
            out: VecDeque::new(),
            client_caps: CapabilityFlags::empty(),
            user: String::new(),
            wanted: Wanted::default(),
            slots: BTreeMap::new(),
            active: BackendId(0),
            last_backend: None,
            tx_backend: None,
            tx_lost: None,
            pending_begin: None,
            pending: None,
            pending_tables: Vec::new(),
            stmts: BTreeMap::new(),
            next_stmt_id: 1,
            in_transaction: false,
            backend_deadline: None,
            started: now,
            current_sql: None,
            last_error: None,
            pending_login: None,
            prepare_route: None,
            ryw: ReadYourWrites::Off,
            written: Vec::new(),
            fwd_write: false,
            prepare_writes: true,
            generated: None,
        };
        s.send_greeting();
        s
    }

    /// The capabilities negotiated with the client (the pool matches backend
    /// connections to their response-format subset).
    pub fn client_capabilities(&self) -> CapabilityFlags {
        self.client_caps
    }

    /// The logged-in user (empty before login).
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn connection_id(&self) -> u32 {
        self.connection_id
    }

    /// The backend connection's own id, while one is attached.
    pub fn backend_thread_id(&self) -> Option<u32> {
        self.cur().map(|b| b.thread_id)
    }

    fn cur(&self) -> Option<&BackendMeta> {
        self.slots.get(&self.active)
    }

    fn cur_mut(&mut self) -> Option<&mut BackendMeta> {
        self.slots.get_mut(&self.active)
    }

    fn router(&self) -> &Router {
        &self.ctx.router
    }

    fn default_primary(&self) -> BackendId {
        let r = &self.ctx.router;
        r.topology.primary(r.default_node())
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Logged in and nothing in flight: a shutdown may close it now.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Command(Busy::Idle)) && self.pending.is_none()
    }

    /// Whether the session would read the next client packet now.
    pub fn wants_client_data(&self) -> bool {
        match &self.phase {
            Phase::Command(Busy::Idle) => true,
            Phase::Command(Busy::Forwarding { scanner, .. }) => scanner.in_local_infile(),
            Phase::AwaitHandshake | Phase::Auth { .. } => true,
            _ => false,
        }
    }

    /// Whether the driver should read from this backend's connection now.
    /// No while a streaming merge holds enough of its rows: the bytes wait
    /// in the kernel until [`Output::ResumeBackend`].
    pub fn wants_backend_data(&self, backend: BackendId) -> bool {
        match &self.phase {
            Phase::Command(Busy::Scatter(run)) => !run.paused.contains(&backend),
            _ => true,
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.backend_deadline
    }

    fn send_greeting(&mut self) {
        let caps = protocol::server_capabilities();
        let scramble_2 = [&self.nonce[8..], &[0u8][..]].concat();
        let hs = HandshakePacket::new(
            10,
            self.ctx.server_version.as_bytes(),
            self.connection_id,
            self.nonce[..8].try_into().unwrap_or([0; 8]),
            Some(&scramble_2[..]),
            caps,
            CollationId::UTF8MB4_GENERAL_CI as u8,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            Some(AuthMethod::Native.plugin_name().as_bytes()),
        );
        let mut payload = Vec::with_capacity(128);
        hs.serialize(&mut payload);
        self.out.push_back(Output::ToClient(frame(0, &payload)));
    }

    fn send_err(&mut self, seq: u8, code: u16, message: &str) {
        self.last_error = Some(code);
        let p = err_payload(code, sql_state_for(code), message);
        self.out.push_back(Output::ToClient(frame(seq, &p)));
    }

    fn send_ok(&mut self, seq: u8) {
        let status = self.status_flags();
        self.out.push_back(Output::ToClient(frame(
            seq,
            &ok_payload(0, 0, 0, status, 0),
        )));
    }

    fn status_flags(&self) -> StatusFlags {
        let mut s = StatusFlags::empty();
        let autocommit_off = self
            .wanted
            .vars
            .get("autocommit")
            .is_some_and(|v| v.eq_ignore_ascii_case("off") || v == "0");
        if !autocommit_off {
            s |= StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        }
        if self.in_transaction || self.pending_begin.is_some() {
            s |= StatusFlags::SERVER_STATUS_IN_TRANS;
        }
        s
    }

    fn close_with(&mut self, seq: u8, code: u16, message: &str) {
        self.send_err(seq, code, message);
        self.close();
    }

    fn close(&mut self) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let reusable = matches!(
            self.phase,
            Phase::Command(Busy::Idle | Busy::Acquiring | Busy::Killing | Busy::Sequence(_))
        );
        self.release_backend(reusable);
        self.phase = Phase::Closed;
        self.out.push_back(Output::Close);
    }

    /// Gives back every held connection.
    fn release_backend(&mut self, reusable: bool) {
        let ids: Vec<BackendId> = self.slots.keys().copied().collect();
        for id in ids {
            self.release_slot(id, reusable);
        }
        self.backend_deadline = None;
        self.last_backend = None;
        self.tx_backend = None;
    }

    fn release_slot(&mut self, backend: BackendId, reusable: bool) {
        if let Some(meta) = self.slots.remove(&backend) {
            self.out.push_back(Output::ReleaseBackend {
                backend,
                meta,
                reusable,
            });
        }
        for s in self.stmts.values_mut() {
            if s.backend == backend {
                s.backend_id = None;
                s.types_sent = false;
            }
        }
        if self.last_backend == Some(backend) {
            self.last_backend = None;
        }
    }

    // ---------------------------------------------------------------- input

    /// Bytes arrived from the client. Consumes what it can use now; bytes of
    /// a command sent while another is in flight stay in `buf`.
    pub fn handle_client_data(&mut self, now: Instant, buf: &mut BytesMut) {
        while !matches!(self.phase, Phase::Closed) && self.wants_client_data() && !buf.is_empty() {
            if matches!(self.phase, Phase::Command(Busy::Idle)) && !self.frames.is_mid_packet() {
                self.frames.expect_seq(Some(0));
            }
            let pkt = match self.frames.next_packet(buf) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(FrameError::TooLarge { max }) => {
                    let msg =
                        format!("Got a packet bigger than 'max_allowed_packet' bytes ({max})");
                    self.close_with(1, code::ER_NET_PACKET_TOO_LARGE, &msg);
                    return;
                }
                Err(FrameError::OutOfOrder { expected, got }) => {
                    let msg = format!(
                        "Got packets out of order (sequence id {got}, expected {expected})"
                    );
                    self.close_with(expected, code::ER_NET_PACKETS_OUT_OF_ORDER, &msg);
                    return;
                }
            };
            match &self.phase {
                Phase::AwaitHandshake => self.on_handshake_response(now, pkt),
                Phase::Auth { .. } => self.on_auth_data(now, pkt),
                Phase::Command(Busy::Idle) => self.on_command(now, pkt),
                Phase::Command(Busy::Forwarding { .. }) => self.on_local_infile_data(now, pkt),
                _ => return,
            }
        }
    }

    /// The client went away. Releases the backend (reusable only when no
    /// response was in flight).
    pub fn handle_client_closed(&mut self, _now: Instant) {
        if !matches!(self.phase, Phase::Closed) {
            let reusable = matches!(
                self.phase,
                Phase::Command(Busy::Idle | Busy::Acquiring | Busy::Killing | Busy::Sequence(_))
            );
            self.release_backend(reusable);
            self.phase = Phase::Closed;
        }
    }

    /// The driver attached a backend connection (after `AcquireBackend`).
    pub fn handle_backend_attached(&mut self, now: Instant, backend: BackendId, meta: BackendMeta) {
        if matches!(self.phase, Phase::Closed) || self.slots.contains_key(&backend) {
            self.out.push_back(Output::ReleaseBackend {
                backend,
                meta,
                reusable: true,
            });
            return;
        }
        self.slots.insert(backend, meta);
        if matches!(self.phase, Phase::Command(Busy::Scatter(_))) {
            self.scatter_lane_attached(now, backend);
            return;
        }
        if backend == self.active && matches!(self.phase, Phase::Command(Busy::Acquiring)) {
            self.start_restore(now);
        }
    }

    /// No backend connection could be had (pool exhausted, backend down).
    pub fn handle_backend_unavailable(&mut self, now: Instant, backend: BackendId, reason: &str) {
        if matches!(self.phase, Phase::Command(Busy::Scatter(_))) {
            let msg = format!("Tessera could not get a backend connection: {reason}");
            self.scatter_lane_failed(now, backend, code::ER_CONNECT_TO_BACKEND, msg, false);
            return;
        }
        if !matches!(self.phase, Phase::Command(Busy::Acquiring)) || backend != self.active {
            return;
        }
        let msg = format!("Tessera could not get a backend connection: {reason}");
        let seq = self.pending_reply_seq();
        self.pending = None;
        self.send_err(seq, code::ER_CONNECT_TO_BACKEND, &msg);
        self.finish_login_if_pending(false);
        self.phase = Phase::Command(Busy::Idle);
        self.end_statement_record();
    }

    /// A backend connection broke (closed, reset, timed out).
    pub fn handle_backend_closed(&mut self, now: Instant, backend: BackendId, reason: &str) {
        if !self.slots.contains_key(&backend) {
            return;
        }
        self.release_slot(backend, false);
        let was_in_tx = self.tx_backend == Some(backend);
        if was_in_tx {
            self.tx_backend = None;
            self.in_transaction = false;
        }
        let answering_here = backend == self.active
            && matches!(
                self.phase,
                Phase::Command(Busy::Forwarding { .. } | Busy::Restoring { .. })
            );
        if was_in_tx && !answering_here && !matches!(self.phase, Phase::Command(Busy::Scatter(_))) {
            self.tx_lost = Some(format!(
                "Lost connection to backend while a transaction was open ({reason}); the transaction was rolled back. Reconnect and run it again"
            ));
        }
        if matches!(self.phase, Phase::Command(Busy::Scatter(_))) {
            let tx = if was_in_tx {
                "; the open transaction was rolled back"
            } else {
                ""
            };
            let msg = format!("Lost connection to backend during query ({reason}){tx}");
            self.scatter_lane_failed(now, backend, code::ER_CONNECT_TO_BACKEND, msg, true);
            return;
        }
        if backend != self.active {
            // An idle connection went away: the next statement gets a new one.
            return;
        }
        self.backend_deadline = None;
        match std::mem::replace(&mut self.phase, Phase::Command(Busy::Idle)) {
            Phase::Command(Busy::Forwarding { scanner, .. }) => {
                if !scanner.error_fits() {
                    // Part of a packet, or of the column definitions, went
                    // out: no ERR can follow it, the stream cannot be repaired.
                    self.close();
                    return;
                }
                let seq = scanner.last_seq.wrapping_add(1);
                let tx = if was_in_tx {
                    "; the open transaction was rolled back"
                } else {
                    ""
                };
                let msg = format!("Lost connection to backend during query ({reason}){tx}");
                self.send_err(seq, code::ER_CONNECT_TO_BACKEND, &msg);
                self.end_statement_record();
            }
            Phase::Command(Busy::Restoring { .. }) => {
                let msg =
                    format!("Lost connection to backend while preparing the session ({reason})");
                self.fail_pending(code::ER_CONNECT_TO_BACKEND, &msg);
            }
            Phase::Closed => self.phase = Phase::Closed,
            other => self.phase = other,
        }
    }

    /// Bytes arrived from the connection to `backend`.
    pub fn handle_backend_data(&mut self, now: Instant, backend: BackendId, buf: &mut BytesMut) {
        if matches!(self.phase, Phase::Command(Busy::Scatter(_))) {
            self.scatter_data(now, backend, buf);
            return;
        }
        if backend != self.active {
            // Unsolicited bytes on an idle connection: it cannot be trusted.
            if !buf.is_empty() {
                buf.clear();
                self.release_slot(backend, false);
            }
            return;
        }
        loop {
            let phase = std::mem::replace(&mut self.phase, Phase::Closed);
            match phase {
                Phase::Command(Busy::Forwarding {
                    mut scanner,
                    what,
                    table_names,
                }) => {
                    let done = self.forward_response(now, &mut scanner, &what, &table_names, buf);
                    if done {
                        self.phase = Phase::Command(Busy::Idle);
                        self.backend_deadline = None;
                        self.last_backend = Some(self.active);
                        if std::mem::take(&mut self.fwd_write) {
                            self.note_write(self.active, None, now);
                        }
                        self.on_forward_done(what);
                        self.end_statement_record();
                    } else {
                        self.phase = Phase::Command(Busy::Forwarding {
                            scanner,
                            what,
                            table_names,
                        });
                    }
                    return;
                }
                Phase::Command(Busy::Restoring {
                    mut scanner,
                    left,
                    mut result,
                }) => {
                    self.phase = Phase::Command(Busy::Idle);
                    if !self.swallow_response(&mut scanner, buf, &mut result) {
                        self.phase = Phase::Command(Busy::Restoring {
                            scanner,
                            left,
                            result,
                        });
                        return;
                    }
                    let mut left = left;
                    let purpose = match left.pop_front() {
                        Some(Internal::Send(_, _, purpose)) => purpose,
                        None => InternalPurpose::Restore,
                    };
                    if let Err(e) = self.after_internal(result, purpose) {
                        // Restoring failed: tell the client instead of running its command.
                        self.phase = Phase::Command(Busy::Idle);
                        self.fail_pending(e.0, &e.1);
                        return;
                    }
                    self.continue_internal(now, left);
                    if buf.is_empty() {
                        return;
                    }
                }
                Phase::Closed => {
                    buf.clear();
                    return;
                }
                other => {
                    // Unsolicited bytes while idle: the backend is not trustworthy.
                    self.phase = other;
                    if !buf.is_empty() {
                        buf.clear();
                        self.handle_backend_closed(now, backend, "unexpected data from backend");
                    }
                    return;
                }
            }
        }
    }

    /// The driver carried out a KILL.
    pub fn handle_kill_done(&mut self, _now: Instant, result: Result<(), String>) {
        if !matches!(self.phase, Phase::Command(Busy::Killing)) {
            return;
        }
        self.phase = Phase::Command(Busy::Idle);
        match result {
            Ok(()) => self.send_ok(1),
            Err(msg) => self.send_err(1, code::ER_NO_SUCH_THREAD, &msg),
        }
        self.end_statement_record();
    }

    /// Time passed: gives up on a backend that does not answer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.backend_deadline {
            if now >= deadline {
                self.backend_deadline = None;
                let busy: Vec<BackendId> = match &self.phase {
                    Phase::Command(Busy::Scatter(run)) => run.busy_lanes(),
                    _ => vec![self.active],
                };
                for b in busy {
                    self.handle_backend_closed(now, b, "backend read timeout");
                }
            }
        }
    }

    // ------------------------------------------------------- authentication

    fn on_handshake_response(&mut self, now: Instant, pkt: Packet) {
        let p = &pkt.payload[..];
        let reply_seq = pkt.seq.wrapping_add(1);
        if p.len() < 32 {
            // An SSL request is 32 bytes; anything shorter is not a login.
            let msg = if p.len() == 32 {
                "TLS is not supported by this Tessera listener"
            } else {
                "Bad handshake"
            };
            self.close_with(reply_seq, code::ER_HANDSHAKE_ERROR, msg);
            return;
        }
        let caps =
            CapabilityFlags::from_bits_truncate(u32::from_le_bytes([p[0], p[1], p[2], p[3]]));
        if caps.contains(CapabilityFlags::CLIENT_SSL) {
            self.close_with(reply_seq, code::ER_HANDSHAKE_ERROR, "TLS is not supported by this Tessera listener; connect without TLS (e.g. --ssl=0 / --skip-ssl)");
            return;
        }
        if !caps.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
            self.close_with(
                reply_seq,
                code::ER_HANDSHAKE_ERROR,
                "Tessera needs a client that speaks protocol 4.1",
            );
            return;
        }
        let hr: HandshakeResponse<'_> = match ParseBuf(p).parse(()) {
            Ok(h) => h,
            Err(_) => {
                self.close_with(
                    reply_seq,
                    code::ER_HANDSHAKE_ERROR,
                    "Bad handshake: malformed handshake response",
                );
                return;
            }
        };
        self.client_caps = caps & protocol::server_capabilities();
        let user = String::from_utf8_lossy(hr.user()).into_owned();
        let schema = hr
            .db_name()
            .filter(|d| !d.is_empty())
            .map(|d| String::from_utf8_lossy(d).into_owned());
        let client_plugin = hr.auth_plugin().map(|p| p.as_bytes().to_vec());
        let response = hr.scramble_buf().to_vec();
        let collation = hr.collation() as u16;
        self.pending_login = Some(PendingLogin {
            user: user.clone(),
            schema,
            collation,
            auth_seq: pkt.seq,
        });
        self.begin_auth(now, &user, client_plugin.as_deref(), &response, reply_seq);
    }

    fn access_denied(&self, user: &str, used_password: bool) -> String {
        format!(
            "Access denied for user '{}'@'{}' (using password: {})",
            user,
            self.client_addr,
            if used_password { "YES" } else { "NO" }
        )
    }

    /// Checks the first auth response, switching plugins when the user's
    /// differs from the one the client used.
    fn begin_auth(
        &mut self,
        now: Instant,
        user: &str,
        client_plugin: Option<&[u8]>,
        response: &[u8],
        reply_seq: u8,
    ) {
        let Some(u) = self.ctx.users.get(user).cloned() else {
            let msg = self.access_denied(user, !response.is_empty());
            self.fail_auth(reply_seq, &msg);
            return;
        };
        let method = u.method;
        let same_plugin = client_plugin.and_then(AuthMethod::from_plugin_name) == Some(method)
            || (client_plugin.is_none() && method == AuthMethod::Native);
        if !same_plugin {
            let mut data = self.nonce.to_vec();
            data.push(0);
            let req = AuthSwitchRequest::new(method.plugin_name().as_bytes(), data);
            let mut payload = Vec::new();
            req.serialize(&mut payload);
            self.out
                .push_back(Output::ToClient(frame(reply_seq, &payload)));
            self.phase = Phase::Auth {
                stage: AuthStage::Switched,
                method,
            };
            self.frames.expect_seq(Some(reply_seq.wrapping_add(1)));
            return;
        }
        self.phase = Phase::Auth {
            stage: AuthStage::Switched,
            method,
        };
        self.check_scramble(now, &u, method, response, reply_seq);
    }

    fn check_scramble(
        &mut self,
        now: Instant,
        u: &User,
        method: AuthMethod,
        response: &[u8],
        reply_seq: u8,
    ) {
        match method {
            AuthMethod::Native => {
                if u.hashes.verify_native(&self.nonce, response) {
                    self.auth_succeeded(now, reply_seq);
                } else {
                    let msg = self.access_denied(&u.name, !response.is_empty());
                    self.fail_auth(reply_seq, &msg);
                }
            }
            AuthMethod::CachingSha2 => {
                if u.hashes.is_empty_password() {
                    if response.is_empty() || response == [0] {
                        self.auth_succeeded(now, reply_seq);
                    } else {
                        let msg = self.access_denied(&u.name, true);
                        self.fail_auth(reply_seq, &msg);
                    }
                    return;
                }
                if self.ctx.sha2_cache.contains(&u.name)
                    && u.hashes.verify_sha2_scramble(&self.nonce, response)
                {
                    // fast_auth_success, then OK.
                    self.out
                        .push_back(Output::ToClient(frame(reply_seq, &[0x01, 0x03])));
                    self.auth_succeeded(now, reply_seq.wrapping_add(1));
                } else if response.is_empty() {
                    let msg = self.access_denied(&u.name, false);
                    self.fail_auth(reply_seq, &msg);
                } else {
                    // perform_full_authentication
                    self.out
                        .push_back(Output::ToClient(frame(reply_seq, &[0x01, 0x04])));
                    self.phase = Phase::Auth {
                        stage: AuthStage::FullAuth,
                        method,
                    };
                    self.frames.expect_seq(Some(reply_seq.wrapping_add(1)));
                }
            }
        }
    }

    fn on_auth_data(&mut self, now: Instant, pkt: Packet) {
        let Phase::Auth { stage, method } = self.phase else {
            return;
        };
        let reply_seq = pkt.seq.wrapping_add(1);
        let user_name = self
            .pending_login
            .as_ref()
            .map(|l| l.user.clone())
            .unwrap_or_default();
        let Some(u) = self.ctx.users.get(&user_name).cloned() else {
            let msg = self.access_denied(&user_name, true);
            self.fail_auth(reply_seq, &msg);
            return;
        };
        let data = &pkt.payload[..];
        match stage {
            AuthStage::Switched => self.check_scramble(now, &u, method, data, reply_seq),
            AuthStage::FullAuth | AuthStage::KeySent => {
                if stage == AuthStage::FullAuth && data == [0x02] {
                    match self.ctx.rsa.clone() {
                        Some(key) => {
                            let mut p = vec![0x01];
                            p.extend_from_slice(key.public_pem().as_bytes());
                            self.out.push_back(Output::ToClient(frame(reply_seq, &p)));
                            self.phase = Phase::Auth { stage: AuthStage::KeySent, method };
                            self.frames.expect_seq(Some(reply_seq.wrapping_add(1)));
                        }
                        None => self.fail_auth(
                            reply_seq,
                            "caching_sha2_password full authentication is not available: Tessera has no RSA key",
                        ),
                    }
                    return;
                }
                if stage == AuthStage::FullAuth {
                    // A clear-text password on a plain connection: refuse it.
                    self.fail_auth(
                        reply_seq,
                        "caching_sha2_password full authentication on a connection without TLS needs the RSA public key exchange; let the client request the server's public key (e.g. --get-server-public-key)",
                    );
                    return;
                }
                let ok = self
                    .ctx
                    .rsa
                    .as_ref()
                    .and_then(|k| k.decrypt_password(data, &self.nonce))
                    .is_some_and(|pw| u.hashes.verify_clear(&pw));
                if ok {
                    self.ctx.sha2_cache.insert(&u.name);
                    self.auth_succeeded(now, reply_seq);
                } else {
                    let msg = self.access_denied(&u.name, true);
                    self.fail_auth(reply_seq, &msg);
                }
            }
        }
    }

    fn fail_auth(&mut self, seq: u8, message: &str) {
        // MySQL closes the connection after a failed login or change-user.
        self.close_with(seq, code::ER_ACCESS_DENIED, message);
    }

    fn auth_succeeded(&mut self, now: Instant, reply_seq: u8) {
        let Some(mut login) = self.pending_login.take() else {
            return;
        };
        login.auth_seq = reply_seq;
        self.user = login.user.clone();
        self.ryw = self
            .ctx
            .users
            .get(&self.user)
            .map(|u| u.read_your_writes)
            .unwrap_or_default();
        self.wanted = Wanted {
            schema: login.schema.clone(),
            vars: charset_vars(login.collation),
            multi_statements: self
                .client_caps
                .contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS),
        };
        self.in_transaction = false;
        self.pending_begin = None;
        self.active = self.default_primary();
        self.frames.expect_seq(Some(0));
        if login.schema.is_some() {
            // Check the database exists before saying OK, as MySQL does.
            self.pending_login = Some(login);
            self.phase = Phase::Command(Busy::Idle);
            self.started = now;
            self.acquire_or_restore(now);
        } else {
            self.phase = Phase::Command(Busy::Idle);
            self.send_ok(reply_seq);
        }
    }

    /// After a login that needed a backend (to check the database): say OK or
    /// ERR to the client and drop the connection on failure.
    fn finish_login_if_pending(&mut self, success: bool) {
        let Some(login) = self.pending_login.take() else {
            return;
        };
        if success {
            self.send_ok(login.auth_seq);
        } else {
            // The error was already sent; MySQL closes a failed login.
            self.close();
        }
    }

    // ---------------------------------------------------------- commands

    fn on_command(&mut self, now: Instant, pkt: Packet) {
        self.started = now;
        self.last_error = None;
        self.fwd_write = false;
        self.generated = None;
        self.pending_tables.clear();
        let Some(&command) = pkt.payload.first() else {
            self.send_err(
                1,
                code::ER_MALFORMED_PACKET,
                "Malformed communication packet: empty command",
            );
            return;
        };
        if self.ctx.record_statements {
            self.current_sql = Some(self.describe(&pkt));
        }
        if let Some(msg) = self.tx_lost.take() {
            if command != cmd::QUIT {
                self.close_with(1, code::ER_CONNECT_TO_BACKEND, &msg);
                return;
            }
        }
        match command {
            cmd::QUIT => {
                self.release_backend(true);
                self.phase = Phase::Closed;
                self.out.push_back(Output::Close);
            }
            cmd::PING => {
                self.send_ok(1);
                self.end_statement_record();
            }
            cmd::QUERY => {
                if let Some((id, query_only)) = parse_kill(&pkt.payload[1..]) {
                    self.phase = Phase::Command(Busy::Killing);
                    self.out.push_back(Output::Kill {
                        connection_id: id,
                        query_only,
                    });
                    return;
                }
                self.route_query(now, pkt);
            }
            cmd::PROCESS_KILL => {
                let Some(id) = command_u32(&pkt.payload) else {
                    self.send_err(
                        1,
                        code::ER_MALFORMED_PACKET,
                        "Malformed communication packet: COM_PROCESS_KILL",
                    );
                    return;
                };
                self.phase = Phase::Command(Busy::Killing);
                self.out.push_back(Output::Kill {
                    connection_id: id,
                    query_only: false,
                });
            }
            cmd::CHANGE_USER => self.on_change_user(now, pkt),
            cmd::INIT_DB | cmd::FIELD_LIST | cmd::STATISTICS | cmd::SET_OPTION => {
                self.active = self.sticky_backend();
                self.forward_or_acquire(now, pkt)
            }
            cmd::RESET_CONNECTION => {
                // Only one connection is reset; the others go back to the pool.
                self.active = self.sticky_backend();
                let others: Vec<BackendId> = self
                    .slots
                    .keys()
                    .copied()
                    .filter(|b| *b != self.active)
                    .collect();
                for b in others {
                    self.release_slot(b, true);
                }
                self.pending_begin = None;
                self.forward_or_acquire(now, pkt)
            }
            cmd::STMT_PREPARE => self.route_prepare(now, pkt),
            cmd::STMT_EXECUTE
            | cmd::STMT_SEND_LONG_DATA
            | cmd::STMT_CLOSE
            | cmd::STMT_RESET
            | cmd::STMT_FETCH => {
                let Some(id) = command_u32(&pkt.payload) else {
                    self.send_err(
                        1,
                        code::ER_MALFORMED_PACKET,
                        "Malformed communication packet: statement id missing",
                    );
                    return;
                };
                if !self.stmts.contains_key(&id) {
                    if matches!(command, cmd::STMT_CLOSE | cmd::STMT_SEND_LONG_DATA) {
                        return; // no response is expected, as in MySQL
                    }
                    let name = match command {
                        cmd::STMT_EXECUTE => "mysqld_stmt_execute",
                        cmd::STMT_FETCH => "mysqld_stmt_fetch",
                        _ => "mysqld_stmt_reset",
                    };
                    let msg = format!("Unknown prepared statement handler ({id}) given to {name}");
                    self.send_err(1, code::ER_UNKNOWN_STMT_HANDLER, &msg);
                    self.end_statement_record();
                    return;
                }
                if self.sharded_statement_command(now, &pkt, command, id) {
                    return;
                }
                if command == cmd::STMT_CLOSE {
                    self.close_statement(id);
                    return;
                }
                if let Some(st) = self.stmts.get(&id) {
                    self.active = st.backend;
                    self.fwd_write = command == cmd::STMT_EXECUTE && st.write;
                }
                if let Some(tx) = self.tx_backend {
                    if tx != self.active {
                        let msg = self.cross_node_message(self.active, tx);
                        self.send_err(1, router::ER_ROUTING, &msg);
                        self.end_statement_record();
                        return;
                    }
                }
                self.forward_or_acquire(now, pkt);
            }
            other => {
                let msg = format!("Unknown command {other:#04x}");
                self.send_err(1, code::ER_UNKNOWN_COM_ERROR, &msg);
                self.end_statement_record();
            }
        }
    }

    fn describe(&self, pkt: &Packet) -> String {
        let p = &pkt.payload;
        match p.first() {
            Some(&cmd::QUERY) => String::from_utf8_lossy(&p[1..]).into_owned(),
            Some(&cmd::STMT_EXECUTE) if p.len() >= 5 => {
                let id = command_u32(p).unwrap_or(0);
                match self.stmts.get(&id) {
                    Some(s) => format!("EXECUTE {}", String::from_utf8_lossy(&s.sql)),
                    None => format!("EXECUTE unknown statement {id}"),
                }
            }
            Some(&cmd::STMT_PREPARE) => format!("PREPARE {}", String::from_utf8_lossy(&p[1..])),
            Some(&cmd::INIT_DB) => format!("USE {}", String::from_utf8_lossy(&p[1..])),
            Some(c) => format!("COMMAND {c:#04x}"),
            None => String::new(),
        }
    }

    fn end_statement_record(&mut self) {
        if let Some(sql) = self.current_sql.take() {
            let rec = StatementRecord {
                user: self.user.clone(),
                client: self.client_addr,
                backend_thread: self.cur().map(|b| b.thread_id).unwrap_or(0),
                sql,
                duration: Duration::ZERO,
                error: self.last_error,
            };
            self.out.push_back(Output::Statement(rec));
        }
    }

    /// Fills in durations of statement records; the driver calls it with the
    /// time it drains outputs. Kept apart so the hot path needs no clock.
    pub fn statement_started_at(&self) -> Instant {
        self.started
    }

    fn forward_or_acquire(&mut self, now: Instant, pkt: Packet) {
        self.pending = Some(pkt);
        self.acquire_or_restore(now);
    }

    fn acquire_or_restore(&mut self, now: Instant) {
        if self.slots.contains_key(&self.active) {
            if self.last_backend == Some(self.active) && self.pending_begin.is_none() {
                // The session ran here last: its state is already this connection's.
                self.run_pending(now);
            } else {
                self.start_restore(now);
            }
        } else {
            self.phase = Phase::Command(Busy::Acquiring);
            self.out.push_back(Output::AcquireBackend(self.active));
        }
    }

    /// The seq id for an error that answers the pending command (or login).
    /// Internal commands for the waiting client command (or login) failed:
    /// it gets the error instead of running. With nothing waiting (a
    /// restore after COM_RESET_CONNECTION was answered) the client is told
    /// nothing: it asked for nothing, and an ERR now would be taken as the
    /// answer to its next command.
    fn fail_pending(&mut self, code: u16, message: &str) {
        if self.pending.is_none() && self.pending_login.is_none() {
            return;
        }
        let seq = self.pending_reply_seq();
        self.pending = None;
        self.send_err(seq, code, message);
        self.finish_login_if_pending(false);
        self.end_statement_record();
    }

    fn pending_reply_seq(&self) -> u8 {
        if self.pending.is_some() {
            1
        } else {
            self.pending_login.as_ref().map(|l| l.auth_seq).unwrap_or(1)
        }
    }

    /// Internal commands that bring the active backend to the wanted state.
    fn restore_plan(&self) -> VecDeque<Internal> {
        match self.cur() {
            Some(meta) => self.restore_plan_for(meta),
            None => VecDeque::new(),
        }
    }

    pub(crate) fn restore_plan_for(&self, meta: &BackendMeta) -> VecDeque<Internal> {
        let mut plan = VecDeque::new();
        let st = &meta.state;
        let mut assignments: Vec<String> = Vec::new();
        if !st.tracking {
            assignments.push("session_track_system_variables='*'".into());
            assignments.push("session_track_schema=ON".into());
        }
        for (name, value) in &self.wanted.vars {
            if st.vars.get(name) != Some(value) && !UNRESTORABLE.contains(&name.as_str()) {
                assignments.push(format!(
                    "@@session.`{}`={}",
                    name.replace('`', "``"),
                    sql_value(value)
                ));
            }
        }
        if !assignments.is_empty() {
            let sql = format!("SET {}", assignments.join(", "));
            plan.push_back(Internal::Send(
                crate::backend::query_request(&sql),
                ResponseKind::Generic,
                InternalPurpose::Restore,
            ));
        }
        if st.multi_statements != Some(self.wanted.multi_statements) {
            let opt: u16 = if self.wanted.multi_statements { 0 } else { 1 };
            let mut p = vec![cmd::SET_OPTION];
            p.extend_from_slice(&opt.to_le_bytes());
            plan.push_back(Internal::Send(
                frame(0, &p),
                ResponseKind::Generic,
                InternalPurpose::Restore,
            ));
        }
        if let Some(schema) = &self.wanted.schema {
            if st.schema.as_deref() != Some(schema) {
                let mut p = vec![cmd::INIT_DB];
                p.extend_from_slice(schema.as_bytes());
                plan.push_back(Internal::Send(
                    frame(0, &p),
                    ResponseKind::Generic,
                    InternalPurpose::Restore,
                ));
            }
        }
        plan
    }

    fn start_restore(&mut self, now: Instant) {
        let mut plan = self.restore_plan();
        // A deferred BEGIN goes out before the first statement of the
        // transaction (not before its COMMIT or ROLLBACK, which never get here).
        if let Some(begin) = self.pending_begin.take() {
            if self.pending.is_some() {
                plan.push_back(Internal::Send(
                    begin,
                    ResponseKind::Generic,
                    InternalPurpose::Begin,
                ));
            }
        }
        self.continue_internal(now, plan);
    }

    /// Sends the next internal command, or runs the pending client command
    /// when none is left.
    fn continue_internal(&mut self, now: Instant, left: VecDeque<Internal>) {
        if let Some(Internal::Send(bytes, kind, _)) = left.front().cloned() {
            let deprecate = self.deprecate_eof();
            self.out.push_back(Output::ToBackend(self.active, bytes));
            self.arm_deadline(now);
            self.phase = Phase::Command(Busy::Restoring {
                scanner: ResponseScanner::new(kind, deprecate),
                left,
                result: InternalResult::Ok {
                    changes: Vec::new(),
                },
            });
            return;
        }
        self.phase = Phase::Command(Busy::Idle);
        self.run_pending(now);
    }

    /// Records the outcome of an internal command. `Err` carries an error
    /// for the client.
    fn after_internal(
        &mut self,
        result: InternalResult,
        purpose: InternalPurpose,
    ) -> Result<(), (u16, String)> {
        match (purpose, result) {
            (InternalPurpose::Begin, InternalResult::Ok { .. }) => {
                self.in_transaction = true;
                self.tx_backend = Some(self.active);
                Ok(())
            }
            (InternalPurpose::Restore, InternalResult::Ok { changes }) => {
                self.apply_backend_changes(&changes);
                let wanted = self.wanted.clone();
                if let Some(meta) = self.cur_mut() {
                    sync_state(meta, &wanted);
                }
                Ok(())
            }
            (InternalPurpose::Reprepare(client_id), InternalResult::Prepared { stmt_id }) => {
                if let Some(s) = self.stmts.get_mut(&client_id) {
                    s.backend_id = Some(stmt_id);
                    s.types_sent = false;
                }
                Ok(())
            }
            (_, InternalResult::Err(e)) => Err((e.code, e.message)),
            // Anything but STMT_OK would make the execute re-prepare forever.
            (InternalPurpose::Reprepare(_), InternalResult::Ok { .. }) => Err((
                code::ER_UNKNOWN_ERROR,
                "the backend did not prepare the statement again on a new connection".into(),
            )),
            (_, _) => Ok(()),
        }
    }

    fn deprecate_eof(&self) -> bool {
        self.cur().is_some_and(|b| {
            b.capabilities
                .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
        })
    }

    fn arm_deadline(&mut self, now: Instant) {
        self.backend_deadline = self.ctx.backend_read_timeout.map(|t| now + t);
    }

    /// Sends the pending client command to the attached backend.
    fn run_pending(&mut self, now: Instant) {
        let Some(pkt) = self.pending.take() else {
            if self.pending_login.is_some() {
                self.phase = Phase::Command(Busy::Idle);
                self.finish_login_if_pending(true);
            }
            return;
        };
        let command = pkt.payload[0];
        let deprecate = self.deprecate_eof();
        let (kind, what, bytes) = match command {
            cmd::STMT_PREPARE => (
                ResponseKind::Prepare,
                Forwarded::Prepare {
                    sql: pkt.payload.slice(1..),
                    write: self.prepare_writes,
                },
                raw_frame(&pkt),
            ),
            cmd::INIT_DB => (
                ResponseKind::Generic,
                Forwarded::InitDb {
                    schema: String::from_utf8_lossy(&pkt.payload[1..]).into_owned(),
                },
                raw_frame(&pkt),
            ),
            cmd::SET_OPTION => {
                let multi = pkt
                    .payload
                    .get(1..3)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) == 0)
                    .unwrap_or(true);
                (
                    ResponseKind::Generic,
                    Forwarded::SetOption { multi },
                    raw_frame(&pkt),
                )
            }
            cmd::RESET_CONNECTION => (
                ResponseKind::Generic,
                Forwarded::ResetConnection,
                raw_frame(&pkt),
            ),
            cmd::FIELD_LIST => (ResponseKind::FieldList, Forwarded::Plain, raw_frame(&pkt)),
            cmd::STATISTICS => (ResponseKind::Statistics, Forwarded::Plain, raw_frame(&pkt)),
            cmd::STMT_EXECUTE | cmd::STMT_SEND_LONG_DATA | cmd::STMT_RESET | cmd::STMT_FETCH => {
                let Some(id) = command_u32(&pkt.payload) else {
                    return;
                };
                let Some(st) = self.stmts.get(&id).cloned() else {
                    return;
                };
                let Some(bid) = st.backend_id else {
                    // Prepare it on this backend first, then come back.
                    let mut p = vec![cmd::STMT_PREPARE];
                    p.extend_from_slice(&st.sql);
                    self.pending = Some(pkt);
                    let left = VecDeque::from([Internal::Send(
                        frame(0, &p),
                        ResponseKind::Prepare,
                        InternalPurpose::Reprepare(id),
                    )]);
                    self.continue_internal(now, left);
                    return;
                };
                match command {
                    cmd::STMT_EXECUTE => match self.rewrite_execute(&pkt, id, bid) {
                        Ok(b) => (ResponseKind::Generic, Forwarded::Plain, b),
                        Err(msg) => {
                            self.send_err(1, code::ER_MALFORMED_PACKET, &msg);
                            self.phase = Phase::Command(Busy::Idle);
                            self.end_statement_record();
                            return;
                        }
                    },
                    _ => {
                        let mut p = pkt.payload.to_vec();
                        p[1..5].copy_from_slice(&bid.to_le_bytes());
                        if command == cmd::STMT_SEND_LONG_DATA {
                            // No response.
                            self.out
                                .push_back(Output::ToBackend(self.active, frame(0, &p)));
                            self.phase = Phase::Command(Busy::Idle);
                            return;
                        }
                        let kind = if command == cmd::STMT_FETCH {
                            ResponseKind::Fetch
                        } else {
                            ResponseKind::Generic
                        };
                        (kind, Forwarded::Plain, frame(0, &p))
                    }
                }
            }
            _ => (ResponseKind::Generic, Forwarded::Plain, raw_frame(&pkt)),
        };
        self.out.push_back(Output::ToBackend(self.active, bytes));
        self.arm_deadline(now);
        let table_names = std::mem::take(&mut self.pending_tables);
        let scanner = ResponseScanner::new(kind, deprecate);
        let scanner = if table_names.is_empty() {
            scanner
        } else {
            scanner.with_column_defs()
        };
        self.phase = Phase::Command(Busy::Forwarding {
            scanner,
            what,
            table_names,
        });
    }

    /// Rewrites COM_STMT_EXECUTE for the backend: its statement id, and the
    /// parameter types when the client relies on ones the backend never saw.
    fn rewrite_execute(&mut self, pkt: &Packet, id: u32, bid: u32) -> Result<Bytes, String> {
        let p = &pkt.payload[..];
        let st = self.stmts.get_mut(&id).ok_or("unknown statement")?;
        let n = st.params as usize;
        let mut out = p.to_vec();
        out[1..5].copy_from_slice(&bid.to_le_bytes());
        if n == 0 {
            return Ok(frame(0, &out));
        }
        let bitmap = n.div_ceil(8);
        let flag_at = 10 + bitmap;
        let Some(&bound) = p.get(flag_at) else {
            return Err("Malformed communication packet: COM_STMT_EXECUTE too short".into());
        };
        if bound == 1 {
            let types = p.get(flag_at + 1..flag_at + 1 + 2 * n).ok_or(
                "Malformed communication packet: COM_STMT_EXECUTE parameter types missing",
            )?;
            st.param_types = Some(Bytes::copy_from_slice(types));
            st.types_sent = true;
            return Ok(frame(0, &out));
        }
        if !st.types_sent {
            let Some(types) = st.param_types.clone() else {
                return Err(
                    "Malformed communication packet: COM_STMT_EXECUTE without parameter types"
                        .into(),
                );
            };
            let mut fixed = Vec::with_capacity(out.len() + types.len());
            fixed.extend_from_slice(&out[..flag_at]);
            fixed.push(1);
            fixed.extend_from_slice(&types);
            fixed.extend_from_slice(&out[flag_at + 1..]);
            st.types_sent = true;
            return Ok(frame(0, &fixed));
        }
        Ok(frame(0, &out))
    }

    /// Client data during LOCAL INFILE: forwarded until the empty packet.
    fn on_local_infile_data(&mut self, _now: Instant, pkt: Packet) {
        let Phase::Command(Busy::Forwarding { scanner, .. }) = &mut self.phase else {
            return;
        };
        let empty = pkt.payload.is_empty();
        if empty {
            scanner.local_infile_sent();
        }
        let mut out = BytesMut::with_capacity(pkt.payload.len() + 8);
        protocol::write_packet(&mut out, pkt.seq, &pkt.payload);
        self.out
            .push_back(Output::ToBackend(self.active, out.freeze()));
        self.frames.expect_seq(if empty {
            Some(0)
        } else {
            Some(pkt.last_seq.wrapping_add(1))
        });
    }

    fn on_change_user(&mut self, now: Instant, pkt: Packet) {
        let Some(cu) = parse_change_user(&pkt.payload[1..], self.client_caps) else {
            self.close_with(
                1,
                code::ER_MALFORMED_PACKET,
                "Malformed communication packet: COM_CHANGE_USER",
            );
            return;
        };
        let ChangeUser {
            user,
            schema,
            response,
            collation,
            plugin,
        } = cu;
        // A new user starts from a clean session: the old backend goes back
        // to the pool (reset there), prepared statements are gone.
        self.release_backend(true);
        self.stmts.clear();
        self.in_transaction = false;
        self.pending_begin = None;
        self.pending_login = Some(PendingLogin {
            user: user.clone(),
            schema,
            collation,
            auth_seq: 1,
        });
        self.frames.expect_seq(Some(1));
        self.begin_auth(now, &user, plugin.as_deref(), &response, 1);
    }

    // ------------------------------------------------------------- routing

    /// The backend for statements bound to the session's connection.
    fn sticky_backend(&self) -> BackendId {
        self.tx_backend
            .or(self.last_backend)
            .unwrap_or_else(|| self.default_primary())
    }

    fn autocommit_off(&self) -> bool {
        self.wanted
            .vars
            .get("autocommit")
            .is_some_and(|v| v.eq_ignore_ascii_case("off") || v == "0")
    }

    fn node_name(&self, node: usize) -> String {
        self.router()
            .topology
            .nodes
            .get(node)
            .map(|n| n.name.clone())
            .unwrap_or_default()
    }

    fn cross_node_message(&self, want: BackendId, tx: BackendId) -> String {
        let t = &self.router().topology;
        format!(
            "Statement refused: it reaches node `{}` but the open transaction is on node `{}`, and a Tessera transaction stays on one node. The transaction is still open: commit or roll it back first",
            self.node_name(t.backend(want).node),
            self.node_name(t.backend(tx).node)
        )
    }

    /// The backend a statement for `node` runs on: the transaction's, the
    /// primary for writes (and anything in a transaction), else a read
    /// target (see [`Session::read_backend`]).
    fn pick(&self, node: usize, access: Access, now: Instant) -> Result<BackendId, String> {
        let t = &self.router().topology;
        let tx_backend = self
            .tx_backend
            .filter(|_| !mutants::active(Mutant::TxStatementEscapes));
        if let Some(tx) = tx_backend {
            if t.backend(tx).node != node {
                return Err(self.cross_node_message(t.primary(node), tx));
            }
            return Ok(tx);
        }
        if access == Access::Write && mutants::active(Mutant::WriteToReplica) {
            return Ok(t.read_target(node));
        }
        if access == Access::Write || self.pending_begin.is_some() || self.autocommit_off() {
            return Ok(t.primary(node));
        }
        Ok(self.read_backend(node, now))
    }

    /// Where a read of `node` goes: a replica by weight, unless
    /// read-your-writes holds it back after the session wrote there: in
    /// `gtid` mode only replicas known to have applied the session's writes
    /// (else the primary), in `window` mode the primary until the window
    /// after the last write has passed.
    fn read_backend(&self, node: usize, now: Instant) -> BackendId {
        let t = &self.router().topology;
        let Some(w) = self.written.get(node) else {
            return t.read_target(node);
        };
        if mutants::active(Mutant::ReadYourWritesIgnored) {
            return t.read_target(node);
        }
        match self.ryw {
            ReadYourWrites::Off => t.read_target(node),
            ReadYourWrites::Gtid if w.gtid_unknown => t.primary(node),
            ReadYourWrites::Gtid => t.read_target_covering(node, &w.gtid),
            ReadYourWrites::Window(window) => match w.at {
                Some(at) if now.saturating_duration_since(at) < window => t.primary(node),
                _ => t.read_target(node),
            },
        }
    }

    /// Remembers that the session wrote through `backend`, with the GTID of
    /// the write when the backend reported one. Only a primary's writes
    /// count: a node's writes happen there, and its GTIDs are the ones
    /// replicas apply.
    fn note_write(&mut self, backend: BackendId, gtid: Option<Result<GtidPos, ()>>, now: Instant) {
        if self.ryw == ReadYourWrites::Off {
            return;
        }
        let t = &self.ctx.router.topology;
        let Some(b) = t.backends.get(backend.0 as usize) else {
            return;
        };
        if b.role != Role::Primary {
            return;
        }
        let (node, nodes) = (b.node, t.nodes.len());
        if self.written.len() <= node {
            self.written
                .resize_with(nodes.max(node + 1), LastWrite::default);
        }
        let w = &mut self.written[node];
        match gtid {
            Some(Ok(g)) => w.gtid.merge(&g),
            Some(Err(())) => w.gtid_unknown = true,
            None => {}
        }
        w.at = Some(now);
    }

    /// Notes the `last_gtid` among session-state changes `backend` reported.
    fn note_gtid_changes(
        &mut self,
        backend: BackendId,
        changes: &[protocol::StateChange],
        now: Instant,
    ) {
        if self.ryw == ReadYourWrites::Off {
            return;
        }
        for c in changes {
            if let protocol::StateChange::Variable { name, value } = c {
                if name == "last_gtid" && !value.trim().is_empty() {
                    let gtid = GtidPos::parse(value).map_err(|e| {
                        tracing::warn!(error = %e, "unreadable last_gtid from the primary; this session's reads of the node stay on the primary");
                    });
                    self.note_write(backend, Some(gtid), now);
                }
            }
        }
    }

    fn refuse(&mut self, code: u16, message: &str) {
        self.send_err(1, code, message);
        self.end_statement_record();
    }

    fn route_query(&mut self, now: Instant, pkt: Packet) {
        let plan = match std::str::from_utf8(&pkt.payload[1..]) {
            Ok(sql) => self.ctx.router.route(sql),
            // Not UTF-8: no parse, the default node's primary.
            Err(_) => Plan::Single {
                node: self.router().default_node(),
                access: Access::Write,
                sql: None,
                table_names: Vec::new(),
            },
        };
        self.execute_plan(now, pkt, plan);
    }

    fn execute_plan(&mut self, now: Instant, pkt: Packet, plan: Plan) {
        match plan {
            Plan::Single {
                node,
                access,
                sql,
                table_names,
            } => match self.pick(node, access, now) {
                Ok(b) => {
                    self.active = b;
                    self.fwd_write = access == Access::Write;
                    let pkt = match sql {
                        Some(s) => query_packet(&s),
                        None => pkt,
                    };
                    self.pending_tables = table_names;
                    self.forward_or_acquire(now, pkt);
                }
                Err(msg) => self.refuse(router::ER_ROUTING, &msg),
            },
            Plan::Sticky => {
                self.active = self.sticky_backend();
                // SET, EXECUTE, LOCK and the like may write or commit.
                self.fwd_write = true;
                self.forward_or_acquire(now, pkt);
            }
            Plan::Begin => match self.tx_backend {
                Some(tx) => {
                    // BEGIN in a transaction commits it.
                    self.active = tx;
                    self.fwd_write = true;
                    self.forward_or_acquire(now, pkt);
                }
                None => {
                    // The node is not known until the first statement.
                    self.pending_begin = Some(frame(0, &pkt.payload));
                    self.send_ok(1);
                    self.end_statement_record();
                }
            },
            Plan::Commit | Plan::Rollback => match self.tx_backend {
                Some(tx) => {
                    self.active = tx;
                    // COMMIT publishes the transaction's writes.
                    self.fwd_write = true;
                    self.forward_or_acquire(now, pkt);
                }
                None => {
                    self.pending_begin = None;
                    self.send_ok(1);
                    self.end_statement_record();
                }
            },
            Plan::Explain(inner) => self.explain(&inner),
            Plan::Refuse { code, message } => self.refuse(code, &message),
            Plan::Scatter(plan) => self.start_scatter(now, *plan),
            Plan::Sequence(seq) => self.start_sequence(now, pkt, seq),
        }
    }

    // ------------------------------------------------------------ sequences

    fn keep_zero(&self) -> bool {
        self.wanted
            .vars
            .get("sql_mode")
            .is_some_and(|m| m.to_ascii_uppercase().contains("NO_AUTO_VALUE_ON_ZERO"))
    }

    /// An INSERT that needs generated ids: from the ids the proxy holds, or
    /// after the driver allocated a block.
    fn start_sequence(&mut self, now: Instant, pkt: Packet, seq: Box<SequenceInsert>) {
        let keep_zero = self.keep_zero();
        let want = seq.wanted(keep_zero);
        let one_node =
            self.tx_backend.is_some() || self.pending_begin.is_some() || self.autocommit_off();
        let router = self.ctx.router.clone();
        let target = match self.tx_backend {
            Some(tx) => Some(router.topology.backend(tx).node),
            None if one_node => seq
                .known_nodes(&router.schema, keep_zero)
                .into_iter()
                .next(),
            None => None,
        };
        let wait = SequenceWait {
            pkt,
            seq,
            keep_zero,
            want,
            ids: Vec::with_capacity(want),
            one_node,
            target,
            skipped: 0,
        };
        self.continue_sequence(now, wait, None);
    }

    /// Draws ids (adding `block` first), then runs the statement or asks for
    /// another block.
    fn continue_sequence(
        &mut self,
        now: Instant,
        mut w: SequenceWait,
        block: Option<std::ops::Range<i64>>,
    ) {
        let router = self.ctx.router.clone();
        let schema = &router.schema;
        let seq = &w.seq;
        let one_node = w.one_node;
        let target = &mut w.target;
        let accept = |id: i64| {
            if !one_node {
                return true;
            }
            match (seq.node_of(schema, id), *target) {
                (None, _) => true,
                (Some(n), None) => {
                    *target = Some(n);
                    true
                }
                (Some(n), Some(t)) => n == t,
            }
        };
        let sequences = &self.ctx.sequences;
        w.skipped += match block {
            Some(b) => sequences.add_and_draw(&seq.table, b, w.want, accept, &mut w.ids),
            None => sequences.draw(&seq.table, w.want, accept, &mut w.ids),
        };
        if w.ids.len() >= w.want {
            match w.seq.fill(schema, &w.ids, w.keep_zero) {
                Ok(filled) => {
                    self.generated = filled.first_id.map(|id| (id, filled.first_node));
                    self.execute_plan(now, w.pkt, filled.plan);
                }
                Err(msg) => self.refuse(router::ER_ROUTING, &msg),
            }
            return;
        }
        let block = schema
            .sharded(&w.seq.table)
            .map(|t| t.sequence_block)
            .unwrap_or(crate::config::DEFAULT_SEQUENCE_BLOCK);
        let count = block.max((w.want - w.ids.len()) as u64);
        if w.skipped > 10 * count {
            let node = w.target.map(|n| self.node_name(n)).unwrap_or_default();
            let msg = format!(
                "Tessera found no id from the sequence of `{}` for node `{node}` among the next {} ids: a transaction stays on one node, and the generated `{}` values would send these rows elsewhere. Insert them outside the transaction, or give `{}` explicitly",
                w.seq.table, w.skipped, w.seq.column, w.seq.column
            );
            return self.refuse(router::ER_ROUTING, &msg);
        }
        let table = w.seq.table.clone();
        self.phase = Phase::Command(Busy::Sequence(Box::new(w)));
        self.out
            .push_back(Output::AllocateSequence { table, count });
    }

    /// The driver allocated ids for `table` (after `AllocateSequence`): the
    /// waiting INSERT runs, or gets an error saying why there are no ids. A
    /// block nobody waits for any more is kept for the next INSERT.
    pub fn handle_sequence_block(
        &mut self,
        now: Instant,
        table: &str,
        result: Result<std::ops::Range<i64>, String>,
    ) {
        let waiting =
            matches!(&self.phase, Phase::Command(Busy::Sequence(w)) if w.seq.table == table);
        if !waiting {
            if let Ok(block) = result {
                self.ctx
                    .sequences
                    .add_and_draw(table, block, 0, |_| true, &mut Vec::new());
            }
            return;
        }
        let Phase::Command(Busy::Sequence(w)) =
            std::mem::replace(&mut self.phase, Phase::Command(Busy::Idle))
        else {
            return;
        };
        match result {
            Ok(block) => self.continue_sequence(now, *w, Some(block)),
            Err(reason) => {
                let db = self
                    .router()
                    .schema
                    .sequence_database
                    .clone()
                    .unwrap_or_default();
                let msg = format!(
                    "Tessera could not allocate ids for `{}`.`{}` from {db}.{} on the default node's primary: {reason}",
                    w.seq.table,
                    w.seq.column,
                    crate::sequence::TABLE
                );
                self.refuse(code::ER_UNKNOWN_ERROR, &msg);
            }
        }
    }

    /// Prepared statements run on their node's primary; over sharded tables
    /// they are routed at each execute by their parameter values.
    fn route_prepare(&mut self, now: Instant, pkt: Packet) {
        self.prepare_route = None;
        let route =
            std::str::from_utf8(&pkt.payload[1..]).map(|sql| self.ctx.router.route_prepare(sql));
        // Executing it counts as a write unless it is a plain read.
        self.prepare_writes = !matches!(
            route,
            Ok(PreparedRoute::Fixed(Plan::Single {
                access: Access::Read,
                sql: None,
                ..
            }))
        );
        let node = match route {
            Ok(PreparedRoute::Bound(bound)) => return self.prepare_bound(now, pkt, bound),
            Ok(PreparedRoute::Fixed(Plan::Single { node, sql: None, .. })) => node,
            Ok(PreparedRoute::Fixed(Plan::Refuse { code, message })) => {
                return self.refuse(code, &message)
            }
            Ok(PreparedRoute::Fixed(Plan::Sequence(_))) => {
                return self.refuse(
                    router::ER_NOT_SUPPORTED,
                    "A prepared INSERT that needs ids from a Tessera sequence is not supported; give the id or send the INSERT as text",
                )
            }
            Ok(PreparedRoute::Fixed(Plan::Single { .. } | Plan::Scatter(_))) => {
                return self.refuse(
                    router::ER_NOT_SUPPORTED,
                    "Prepared statements writing to several nodes are not supported; send the statement as text",
                )
            }
            _ => self.router().default_node(),
        };
        let t = self.router().topology.clone();
        self.active = match self.tx_backend {
            Some(tx) if t.backend(tx).node != node => {
                let msg = self.cross_node_message(t.primary(node), tx);
                return self.refuse(router::ER_ROUTING, &msg);
            }
            Some(tx) => tx,
            None => t.primary(node),
        };
        self.forward_or_acquire(now, pkt);
    }

    fn client_deprecate_eof(&self) -> bool {
        self.client_caps
            .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
    }

    /// `TESSERA EXPLAIN <statement>`: the plan, one row per target.
    fn explain(&mut self, inner: &str) {
        let plan = self.ctx.router.route(inner);
        let rows = router::explain_rows(self.router(), &plan);
        let columns: Vec<mysql_common::packets::Column> = ["node", "target", "sql", "merge"]
            .iter()
            .map(|n| {
                mysql_common::packets::Column::new(
                    mysql_common::constants::ColumnType::MYSQL_TYPE_VAR_STRING,
                )
                .with_name(n.as_bytes())
                .with_character_set(CollationId::UTF8MB4_GENERAL_CI as u16)
                .with_column_length(4096)
            })
            .collect();
        let cells: Vec<Vec<Option<&[u8]>>> = rows
            .iter()
            .map(|r| r.iter().map(|c| Some(c.as_bytes())).collect())
            .collect();
        let out = protocol::encode_text_result(
            &columns,
            &cells,
            self.client_deprecate_eof(),
            self.status_flags(),
        );
        self.out.push_back(Output::ToClient(out.freeze()));
        self.end_statement_record();
    }

    // ------------------------------------------------------------- scatter

    fn start_scatter(&mut self, now: Instant, plan: ScatterPlan) {
        let t = self.router().topology.clone();
        let nodes: std::collections::BTreeSet<usize> = plan.parts.iter().map(|p| p.node).collect();
        if let Some(tx) = self.tx_backend {
            if let Some(other) = nodes.iter().find(|n| **n != t.backend(tx).node) {
                let msg = self.cross_node_message(t.primary(*other), tx);
                return self.refuse(router::ER_ROUTING, &msg);
            }
        } else if (self.pending_begin.is_some() || self.autocommit_off()) && nodes.len() > 1 {
            let names: Vec<String> = nodes
                .iter()
                .map(|n| format!("`{}`", self.node_name(*n)))
                .collect();
            let msg = format!(
                "Statement refused: inside a transaction it would reach nodes {}, and a Tessera transaction stays on one node. Add a shard-key condition, or run it outside the transaction",
                names.join(", ")
            );
            return self.refuse(router::ER_ROUTING, &msg);
        }
        let in_tx =
            self.tx_backend.is_some() || self.pending_begin.is_some() || self.autocommit_off();
        let atomic = matches!(plan.merge, ScatterMerge::Writes { atomic: true }) && !in_tx;
        let mut chosen: BTreeMap<usize, BackendId> = BTreeMap::new();
        let mut lanes: BTreeMap<BackendId, Lane> = BTreeMap::new();
        for (i, part) in plan.parts.iter().enumerate() {
            let b = match chosen.get(&part.node) {
                Some(b) => *b,
                None => match self.pick(part.node, plan.access, now) {
                    Ok(b) => {
                        chosen.insert(part.node, b);
                        b
                    }
                    Err(msg) => return self.refuse(router::ER_ROUTING, &msg),
                },
            };
            lanes
                .entry(b)
                .or_insert_with(|| Lane::new(VecDeque::new()))
                .queue
                .push_back(LaneStep::Part(i));
        }
        let begin = self.pending_begin.take();
        for lane in lanes.values_mut() {
            if let Some(b) = &begin {
                lane.queue.push_front(LaneStep::ClientBegin(b.clone()));
            } else if atomic {
                lane.queue.push_front(LaneStep::Begin);
            }
        }
        let ids: Vec<BackendId> = lanes.keys().copied().collect();
        let stream = match &plan.merge {
            ScatterMerge::Rows(spec) if merge::streamable(spec) => Some(merge::StreamMerge::new(
                (**spec).clone(),
                plan.parts.len(),
                self.client_deprecate_eof(),
                self.ctx.merge_limit,
            )),
            _ => None,
        };
        let run = ScatterRun {
            results: (0..plan.parts.len()).map(|_| None).collect(),
            plan,
            lanes,
            atomic,
            failed: None,
            ending: false,
            stream,
            paused: Default::default(),
        };
        self.phase = Phase::Command(Busy::Scatter(Box::new(run)));
        self.arm_deadline(now);
        for id in ids {
            if self.slots.contains_key(&id) {
                self.scatter_lane_attached(now, id);
            } else {
                self.out.push_back(Output::AcquireBackend(id));
            }
        }
    }

    fn take_scatter(&mut self) -> Option<Box<ScatterRun>> {
        match std::mem::replace(&mut self.phase, Phase::Command(Busy::Idle)) {
            Phase::Command(Busy::Scatter(run)) => Some(run),
            other => {
                self.phase = other;
                None
            }
        }
    }

    fn scatter_lane_attached(&mut self, now: Instant, backend: BackendId) {
        let Some(mut run) = self.take_scatter() else {
            return;
        };
        let restore: Vec<Bytes> = match self.slots.get(&backend) {
            Some(meta) => self
                .restore_plan_for(meta)
                .into_iter()
                .map(|Internal::Send(b, _, _)| b)
                .collect(),
            None => Vec::new(),
        };
        if let Some(lane) = run.lanes.get_mut(&backend) {
            for b in restore.into_iter().rev() {
                lane.queue.push_front(LaneStep::Restore(b));
            }
            lane.state = crate::scatter::LaneState::Idle;
        }
        self.scatter_advance(&mut run, backend);
        self.phase = Phase::Command(Busy::Scatter(run));
        self.scatter_maybe_finish(now);
    }

    /// Sends the lane's next step if it is free.
    fn scatter_advance(&mut self, run: &mut ScatterRun, backend: BackendId) {
        use crate::scatter::LaneState;
        let deprecate = self.slots.get(&backend).is_some_and(|b| {
            b.capabilities
                .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
        });
        let Some(lane) = run.lanes.get_mut(&backend) else {
            return;
        };
        if !matches!(lane.state, LaneState::Idle) {
            return;
        }
        let Some(step) = lane.queue.pop_front() else {
            return;
        };
        let bytes = match &step {
            LaneStep::Restore(b) | LaneStep::ClientBegin(b) => b.clone(),
            LaneStep::Begin => {
                lane.began = true;
                crate::backend::query_request("BEGIN")
            }
            LaneStep::Part(i) => crate::backend::query_request(&run.plan.parts[*i].sql),
            LaneStep::End(commit) => {
                crate::backend::query_request(if *commit { "COMMIT" } else { "ROLLBACK" })
            }
        };
        let mut collector = merge::Collector::new(deprecate, self.ctx.merge_limit);
        if let (LaneStep::Part(_), Some(m)) = (&step, &run.stream) {
            // Read in bites the merge takes as they come, never more rows
            // than the merge could send.
            collector = collector.with_budget(m.read_budget());
            if let Some(n) = m.rows_per_part() {
                collector.keep_at_most(n);
            }
        }
        lane.state = LaneState::Running {
            step,
            collector: Box::new(collector),
        };
        self.out.push_back(Output::ToBackend(backend, bytes));
    }

    fn scatter_data(&mut self, now: Instant, backend: BackendId, buf: &mut BytesMut) {
        use crate::scatter::LaneState;
        let Some(mut run) = self.take_scatter() else {
            return;
        };
        if run.paused.contains(&backend) {
            // Left for later: the driver offers it again after ResumeBackend.
            self.phase = Phase::Command(Busy::Scatter(run));
            return;
        }
        let status = self.status_flags();
        loop {
            let Some(lane) = run.lanes.get_mut(&backend) else {
                buf.clear();
                break;
            };
            let LaneState::Running { step, collector } = &mut lane.state else {
                buf.clear();
                break;
            };
            let part = match step {
                LaneStep::Part(i) => Some(*i),
                _ => None,
            };
            let fed = collector.feed(buf);
            let full = collector.is_full();
            // A streaming merge takes the columns and rows as they come.
            let streamed = match (part, run.stream.as_mut(), &fed) {
                (Some(i), Some(m), Ok(_)) if run.failed.is_none() => m.feed(i, collector),
                _ => Ok(()),
            };
            match fed {
                Err(e) => {
                    // The stream is out of step: this connection cannot be reused.
                    buf.clear();
                    lane.state = LaneState::Dead;
                    lane.queue.clear();
                    run.paused.remove(&backend);
                    run.fail(
                        router::ER_ROUTING,
                        format!("Tessera could not merge the shard results: {e}"),
                    );
                    self.release_slot(backend, false);
                    self.scatter_pump(&mut run, status);
                    break;
                }
                Ok(false) => {
                    if let Err(e) = streamed {
                        merge_failed(&mut run, e);
                    }
                    self.scatter_pump(&mut run, status);
                    if run.may_pause(backend) {
                        // Its queue is long enough: read on once the merge took some.
                        run.paused.insert(backend);
                        break;
                    }
                    if !full {
                        break; // needs more bytes
                    }
                }
                Ok(true) => {
                    let LaneState::Running { step, collector } =
                        std::mem::replace(&mut lane.state, LaneState::Idle)
                    else {
                        unreachable!("matched above");
                    };
                    let result = (*collector).take();
                    if let Err(e) = streamed {
                        merge_failed(&mut run, e);
                    }
                    if let Some(err) = &result.err {
                        run.fail(err.code, err.message.clone());
                    } else {
                        if matches!(step, LaneStep::Part(_) | LaneStep::End(true)) {
                            self.note_gtid_changes(backend, &result.changes, now);
                        }
                        match step {
                            LaneStep::Restore(_) => {
                                let wanted = self.wanted.clone();
                                if let Some(meta) = self.slots.get_mut(&backend) {
                                    sync_state(meta, &wanted);
                                }
                            }
                            LaneStep::ClientBegin(_) => {
                                self.tx_backend = Some(backend);
                                self.in_transaction = true;
                            }
                            LaneStep::Part(i) => {
                                if let (Some(m), None) = (run.stream.as_mut(), &run.failed) {
                                    if let Err(e) = m.part_done(i, Some(&result)) {
                                        merge_failed(&mut run, e);
                                    }
                                }
                                run.results[i] = Some(result);
                            }
                            LaneStep::Begin | LaneStep::End(_) => {}
                        }
                    }
                    self.scatter_pump(&mut run, status);
                    self.scatter_advance(&mut run, backend);
                    break;
                }
            }
        }
        self.phase = Phase::Command(Busy::Scatter(run));
        self.arm_deadline(now);
        self.scatter_maybe_finish(now);
    }

    /// Sends the rows a streaming merge can send now; once it needs no more,
    /// stops the parts; resumes paused lanes that may read on.
    fn scatter_pump(&mut self, run: &mut ScatterRun, status: StatusFlags) {
        if run.failed.is_none() {
            if let Some(m) = run.stream.as_mut() {
                let out = m.pump(status);
                if !out.is_empty() {
                    self.out.push_back(Output::ToClient(out.freeze()));
                }
                if m.satisfied() {
                    run.stop_parts();
                }
            }
        }
        for b in run.resumable() {
            self.out.push_back(Output::ResumeBackend(b));
        }
    }

    fn scatter_lane_failed(
        &mut self,
        now: Instant,
        backend: BackendId,
        code: u16,
        msg: String,
        _dead: bool,
    ) {
        let Some(mut run) = self.take_scatter() else {
            return;
        };
        if let Some(lane) = run.lanes.get_mut(&backend) {
            lane.state = crate::scatter::LaneState::Dead;
            lane.queue.clear();
        }
        run.paused.remove(&backend);
        run.fail(code, msg);
        let status = self.status_flags();
        self.scatter_pump(&mut run, status);
        self.phase = Phase::Command(Busy::Scatter(run));
        self.scatter_maybe_finish(now);
    }

    /// When every lane is done: COMMIT or ROLLBACK an atomic fan-out, then
    /// answer the client.
    fn scatter_maybe_finish(&mut self, now: Instant) {
        let Some(mut run) = self.take_scatter() else {
            return;
        };
        if !run.all_settled() {
            self.phase = Phase::Command(Busy::Scatter(run));
            return;
        }
        if run.atomic && !run.ending {
            run.ending = true;
            let commit = run.failed.is_none();
            let ids: Vec<BackendId> = run
                .lanes
                .iter()
                .filter(|(_, l)| l.began && !matches!(l.state, crate::scatter::LaneState::Dead))
                .map(|(b, _)| *b)
                .collect();
            for id in &ids {
                if let Some(lane) = run.lanes.get_mut(id) {
                    lane.queue.push_back(LaneStep::End(commit));
                }
                self.scatter_advance(&mut run, *id);
            }
            if !ids.is_empty() {
                self.phase = Phase::Command(Busy::Scatter(run));
                return;
            }
        }
        self.phase = Phase::Command(Busy::Idle);
        self.backend_deadline = None;
        // Lanes were restored to the session's state, but which one ran last
        // is not one connection: let the next statement compare.
        self.last_backend = None;
        let run = *run;
        if run.plan.access == Access::Write {
            let lanes: Vec<BackendId> = run.lanes.keys().copied().collect();
            for b in lanes {
                self.note_write(b, None, now);
            }
        }
        // After rows went out, an error ends the result set instead.
        let seq = run.stream.as_ref().map_or(1, |m| m.next_seq());
        if let Some((code, message)) = run.failed {
            self.send_err(seq, code, &message);
            self.end_statement_record();
            return;
        }
        if let Some(mut m) = run.stream {
            match m.finish(self.status_flags()) {
                Ok(out) => self.out.push_back(Output::ToClient(out.freeze())),
                Err(e) => {
                    let msg = format!("Tessera could not merge the shard results: {e}");
                    self.send_err(m.next_seq(), router::ER_ROUTING, &msg);
                }
            }
            self.end_statement_record();
            return;
        }
        let results: Vec<merge::ShardResult> = run.results.into_iter().flatten().collect();
        match run.plan.merge {
            ScatterMerge::Rows(spec) => match merge::merge(&spec, results) {
                Ok(m) => {
                    let out = m.encode(self.client_deprecate_eof(), self.status_flags());
                    self.out.push_back(Output::ToClient(out.freeze()));
                }
                Err(e) => {
                    let msg = format!("Tessera could not merge the shard results: {e}");
                    self.send_err(1, router::ER_ROUTING, &msg);
                }
            },
            ScatterMerge::Writes { .. } => {
                let mut affected = 0u64;
                let mut last_id = 0u64;
                let mut warnings = 0u16;
                for r in &results {
                    if let Some(ok) = &r.ok {
                        affected += ok.affected_rows;
                        if last_id == 0 {
                            last_id = ok.last_insert_id;
                        }
                    }
                    warnings = warnings.saturating_add(r.warnings);
                }
                if let Some((first, node)) = self.generated.take() {
                    // The first generated id, as MySQL reports a multi-row
                    // insert; LAST_INSERT_ID() holds it on that row's node,
                    // where the session's connection-bound statements now go.
                    last_id = first as u64;
                    let t = self.router().topology.clone();
                    self.last_backend = node.and_then(|n| {
                        run.lanes
                            .keys()
                            .copied()
                            .find(|b| t.backend(*b).node == n && self.slots.contains_key(b))
                    });
                }
                let status = self.status_flags();
                self.out.push_back(Output::ToClient(frame(
                    1,
                    &protocol::ok_payload(0, affected, last_id, status, warnings),
                )));
            }
        }
        self.end_statement_record();
    }

    // ------------------------------------------------------ response paths

    /// Streams a forwarded response to the client. Returns true at its end.
    fn forward_response(
        &mut self,
        now: Instant,
        scanner: &mut ResponseScanner,
        what: &Forwarded,
        table_names: &[(String, String)],
        buf: &mut BytesMut,
    ) -> bool {
        let strip = !self
            .client_caps
            .contains(CapabilityFlags::CLIENT_SESSION_TRACK);
        let mut pass = 0usize;
        loop {
            if scanner.is_done() || scanner.in_local_infile() {
                break;
            }
            match scanner.step(&buf[pass..]) {
                Step::NeedMore => break,
                Step::Pass(n) => pass += n,
                Step::Packet {
                    total,
                    seq,
                    interest,
                } => {
                    let payload_range = pass + 4..pass + total;
                    match interest {
                        Interest::Ok(_) | Interest::Terminator(_) => {
                            let status = match interest {
                                Interest::Ok(o) => o.status,
                                Interest::Terminator(s) => s,
                                _ => StatusFlags::empty(),
                            };
                            self.in_transaction =
                                status.contains(StatusFlags::SERVER_STATUS_IN_TRANS);
                            self.tx_backend = self.in_transaction.then_some(self.active);
                            if status.contains(StatusFlags::SERVER_SESSION_STATE_CHANGED)
                                && total > 9
                            {
                                let payload = buf[payload_range.clone()].to_vec();
                                self.track_state(&payload, now);
                                if strip {
                                    if let Some(stripped) = protocol::strip_session_state(&payload)
                                    {
                                        self.flush(buf, pass);
                                        buf.advance(total);
                                        pass = 0;
                                        self.out.push_back(Output::ToClient(frame(seq, &stripped)));
                                        continue;
                                    }
                                }
                            }
                            pass += total;
                        }
                        Interest::PrepareOk {
                            stmt_id, params, ..
                        } => {
                            let client_id = self.next_stmt_id;
                            self.next_stmt_id = self.next_stmt_id.wrapping_add(1).max(1);
                            let (sql, write) = match what {
                                Forwarded::Prepare { sql, write } => (sql.clone(), *write),
                                _ => (Bytes::new(), true),
                            };
                            self.stmts.insert(
                                client_id,
                                Prepared {
                                    sql,
                                    params,
                                    backend: self.active,
                                    backend_id: Some(stmt_id),
                                    param_types: None,
                                    types_sent: false,
                                    sharded: self.prepare_route.take().map(ShardedStmt::new),
                                    write,
                                },
                            );
                            let mut payload = buf[payload_range].to_vec();
                            payload[1..5].copy_from_slice(&client_id.to_le_bytes());
                            self.flush(buf, pass);
                            buf.advance(total);
                            pass = 0;
                            self.out.push_back(Output::ToClient(frame(seq, &payload)));
                        }
                        Interest::Err if mutants::active(Mutant::ErrorAsSuccess) => {
                            let ok = ok_payload(0, 0, 0, self.status_flags(), 0);
                            self.flush(buf, pass);
                            buf.advance(total);
                            pass = 0;
                            self.out.push_back(Output::ToClient(frame(seq, &ok)));
                        }
                        Interest::Err => {
                            if let Some(e) = protocol::parse_err(&buf[payload_range]) {
                                self.last_error = Some(e.code);
                            }
                            pass += total;
                        }
                        Interest::ColumnDef => {
                            match merge::rename_column_def(&buf[payload_range], table_names) {
                                Some(renamed) => {
                                    self.flush(buf, pass);
                                    buf.advance(total);
                                    pass = 0;
                                    self.out.push_back(Output::ToClient(frame(seq, &renamed)));
                                }
                                None => pass += total,
                            }
                        }
                        _ => pass += total,
                    }
                }
            }
        }
        self.flush(buf, pass);
        if scanner.in_local_infile() {
            self.frames
                .expect_seq(Some(scanner.last_seq.wrapping_add(1)));
        }
        scanner.is_done()
    }

    fn flush(&mut self, buf: &mut BytesMut, n: usize) {
        if n > 0 {
            self.out
                .push_back(Output::ToClient(buf.split_to(n).freeze()));
        }
    }

    fn track_state(&mut self, ok_payload: &[u8], now: Instant) {
        let Some(ok) = protocol::parse_ok(ok_payload) else {
            return;
        };
        let Some((_, block)) = protocol::split_ok_tail(ok_payload, &ok) else {
            return;
        };
        let changes = protocol::decode_state_changes(block);
        self.apply_backend_changes(&changes);
        self.note_gtid_changes(self.active, &changes, now);
        if let Some(meta) = self.cur_mut() {
            for c in &changes {
                match c {
                    protocol::StateChange::Schema(s) => meta.state.schema = Some(s.clone()),
                    protocol::StateChange::Variable { name, value } => {
                        meta.state.vars.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }

    fn apply_backend_changes(&mut self, changes: &[protocol::StateChange]) {
        for c in changes {
            match c {
                protocol::StateChange::Schema(s) => {
                    self.wanted.schema = Some(s.clone()).filter(|s| !s.is_empty())
                }
                protocol::StateChange::Variable { name, value } => {
                    if !UNRESTORABLE.contains(&name.as_str()) {
                        self.wanted.vars.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }

    fn on_forward_done(&mut self, what: Forwarded) {
        let ok = self.last_error.is_none();
        match what {
            Forwarded::InitDb { schema } if ok => {
                self.wanted.schema = Some(schema.clone());
                if let Some(m) = self.cur_mut() {
                    m.state.schema = Some(schema);
                }
            }
            Forwarded::SetOption { multi } if ok => {
                self.wanted.multi_statements = multi;
                if let Some(m) = self.cur_mut() {
                    m.state.multi_statements = Some(multi);
                }
            }
            Forwarded::ResetConnection if ok => {
                self.stmts.clear();
                self.in_transaction = false;
                let keep_schema = self.wanted.schema.clone();
                let charset: BTreeMap<String, String> = self
                    .wanted
                    .vars
                    .iter()
                    .filter(|(k, _)| k.starts_with("character_set_") || k.starts_with("collation_"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                self.wanted.vars = charset;
                self.wanted.schema = keep_schema;
                self.tx_backend = None;
                if let Some(m) = self.cur_mut() {
                    m.state.after_reset();
                }
                // Tracking and the client's character set come back on the next statement.
                if self.cur().is_some() {
                    let plan = self.restore_plan();
                    if !plan.is_empty() {
                        self.continue_internal(self.started, plan);
                    }
                }
            }
            _ => {}
        }
    }

    /// Reads the answer to an internal command without forwarding it.
    /// Reads an internal command's answer into `result`; `true` once it is
    /// complete. The answer may take several calls (reads) to arrive.
    fn swallow_response(
        &mut self,
        scanner: &mut ResponseScanner,
        buf: &mut BytesMut,
        result: &mut InternalResult,
    ) -> bool {
        loop {
            if scanner.is_done() {
                return true;
            }
            match scanner.step(&buf[..]) {
                Step::NeedMore => return false,
                Step::Pass(n) => buf.advance(n),
                Step::Packet {
                    total, interest, ..
                } => {
                    let payload = buf[4..total].to_vec();
                    buf.advance(total);
                    match interest {
                        Interest::Err => {
                            if let Some(e) = protocol::parse_err(&payload) {
                                *result = InternalResult::Err(e);
                            }
                        }
                        Interest::Ok(ok) => {
                            if let Some((_, block)) = protocol::split_ok_tail(&payload, &ok) {
                                if let InternalResult::Ok { changes } = result {
                                    changes.extend(protocol::decode_state_changes(block));
                                }
                            }
                        }
                        Interest::PrepareOk { stmt_id, .. } => {
                            *result = InternalResult::Prepared { stmt_id }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
enum InternalResult {
    Ok { changes: Vec<protocol::StateChange> },
    Err(protocol::ErrInfo),
    Prepared { stmt_id: u32 },
}

/// A streaming merge could not go on: the client gets the error once every
/// lane has read its answer to the end.
fn merge_failed(run: &mut ScatterRun, e: merge::MergeError) {
    run.fail(
        router::ER_ROUTING,
        format!("Tessera could not merge the shard results: {e}"),
    );
}

/// Marks a connection as holding the session's wanted state.
fn sync_state(meta: &mut BackendMeta, wanted: &Wanted) {
    meta.state.tracking = true;
    meta.state.multi_statements = Some(wanted.multi_statements);
    if wanted.schema.is_some() {
        meta.state.schema = wanted.schema.clone();
    }
    for (k, v) in &wanted.vars {
        meta.state.vars.insert(k.clone(), v.clone());
    }
}

/// A COM_QUERY packet carrying rewritten SQL.
fn query_packet(sql: &str) -> Packet {
    let mut payload = Vec::with_capacity(sql.len() + 1);
    payload.push(cmd::QUERY);
    payload.extend_from_slice(sql.as_bytes());
    Packet {
        seq: 0,
        last_seq: 0,
        payload: Bytes::from(payload),
    }
}

/// The client's command re-framed for the backend (seq 0, split if large).
fn raw_frame(pkt: &Packet) -> Bytes {
    frame(0, &pkt.payload)
}

/// Session variables implied by the handshake collation.
fn charset_vars(collation: u16) -> BTreeMap<String, String> {
    let c = Collation::from(CollationId::from(collation));
    let (charset, coll) = if c.charset().is_empty() {
        ("utf8mb4".to_string(), "utf8mb4_general_ci".to_string())
    } else {
        (c.charset().to_string(), c.collation().to_string())
    };
    let mut m = BTreeMap::new();
    m.insert("character_set_client".into(), charset.clone());
    m.insert("character_set_connection".into(), charset.clone());
    m.insert("character_set_results".into(), charset);
    m.insert("collation_connection".into(), coll);
    m
}

/// A value from session tracking as SQL: numbers bare, the rest quoted.
fn sql_value(v: &str) -> String {
    let numeric = !v.is_empty() && v.parse::<f64>().is_ok() && !v.contains(['e', 'E', 'x', 'X']);
    if numeric {
        v.to_string()
    } else if v.is_empty() {
        "''".to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    }
}

/// Recognises `KILL [CONNECTION|QUERY] <id>`; anything else is not a kill.
pub fn parse_kill(sql: &[u8]) -> Option<(u32, bool)> {
    let s = std::str::from_utf8(sql)
        .ok()?
        .trim()
        .trim_end_matches(';')
        .trim();
    let mut words = s.split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("kill") {
        return None;
    }
    let mut w = words.next()?;
    let mut query_only = false;
    if w.eq_ignore_ascii_case("query") {
        query_only = true;
        w = words.next()?;
    } else if w.eq_ignore_ascii_case("connection") {
        w = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    w.parse().ok().map(|id| (id, query_only))
}

/// The fields of COM_CHANGE_USER (after the command byte).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChangeUser {
    user: String,
    schema: Option<String>,
    response: Vec<u8>,
    collation: u16,
    plugin: Option<Vec<u8>>,
}

fn take_nul_str<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let i = b.iter().position(|&c| c == 0)?;
    let s = &b[..i];
    *b = &b[i + 1..];
    Some(s)
}

fn parse_change_user(mut b: &[u8], caps: CapabilityFlags) -> Option<ChangeUser> {
    let user = String::from_utf8_lossy(take_nul_str(&mut b)?).into_owned();
    let response = if caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
        let n = *b.first()? as usize;
        let r = b.get(1..1 + n)?.to_vec();
        b = &b[1 + n..];
        r
    } else {
        take_nul_str(&mut b)?.to_vec()
    };
    let schema = String::from_utf8_lossy(take_nul_str(&mut b).unwrap_or(&[])).into_owned();
    let mut collation = CollationId::UTF8MB4_GENERAL_CI as u16;
    let mut plugin = None;
    if b.len() >= 2 {
        collation = u16::from_le_bytes([b[0], b[1]]);
        b = &b[2..];
        if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) && !b.is_empty() {
            plugin = take_nul_str(&mut b).map(|p| p.to_vec());
        }
    }
    Some(ChangeUser {
        user,
        schema: Some(schema).filter(|s| !s.is_empty()),
        response,
        collation,
        plugin,
    })
}

/// The 4-byte little-endian id after a command byte (statement or connection id).
fn command_u32(payload: &[u8]) -> Option<u32> {
    payload
        .get(1..5)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod ryw_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, attach_and_restore, client_caps, drain, logged_in};
    use proptest::prelude::*;

    fn framed(seq: u8, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        protocol::write_packet(&mut out, seq, payload);
        out
    }

    /// Feeds `wire` to the backend side in the given chunk sizes.
    fn feed_backend(s: &mut Session, now: Instant, wire: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut client = Vec::new();
        let mut buf = BytesMut::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = cuts
                .get(i)
                .copied()
                .unwrap_or(wire.len())
                .clamp(1, wire.len() - pos);
            i += 1;
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            s.handle_backend_data(now, testing::PRIMARY, &mut buf);
            client.extend(drain(s).to_client);
        }
        client
    }

    #[test]
    fn unknown_command_gets_an_error_not_a_close() {
        let now = Instant::now();
        let mut s = logged_in(now, client_caps(), 1 << 20);
        s.handle_client_data(now, &mut framed(0, &[0xee]));
        let d = drain(&mut s);
        assert_eq!(d.to_client[4], 0xff);
        assert!(!d.closed);
    }

    /// A backend's answer to `SELECT 1` (CLIENT_DEPRECATE_EOF).
    fn select_one_answer() -> BytesMut {
        let col = mysql_common::packets::Column::new(
            mysql_common::constants::ColumnType::MYSQL_TYPE_LONGLONG,
        )
        .with_name(b"1");
        protocol::encode_text_result(
            &[col],
            &[vec![Some(&b"1"[..])]],
            true,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        )
    }

    #[test]
    fn query_round_trip_forwards_the_response_untouched() {
        let now = Instant::now();
        let mut s = logged_in(now, client_caps(), 1 << 20);
        s.handle_client_data(now, &mut framed(0, b"\x03SELECT 1"));
        assert!(drain(&mut s).acquire);
        let sent = attach_and_restore(&mut s, now, client_caps());
        assert_eq!(&sent[4..], b"\x03SELECT 1");
        let wire = select_one_answer();
        let got = feed_backend(&mut s, now, &wire, &[3, 7, 1, 50]);
        assert_eq!(got, wire.to_vec());
        assert!(s.is_idle());
    }

    /// Found by the tier-1 simulation (`TESSERA_SIM_SEED=19866 cargo run -p
    /// tessera-sim --release -- --tier 1 --seeds 1`): after COM_RESET_CONNECTION
    /// the session restores tracking on its own; when the backend died during
    /// that restore the client got an ERR it had not asked for, and took it as
    /// the answer to its next command (every later answer one behind).
    #[test]
    fn a_restore_nobody_waits_for_fails_silently() {
        let now = Instant::now();
        let caps = client_caps();
        let mut s = logged_in(now, caps, 1 << 20);
        s.handle_client_data(now, &mut framed(0, b"\x03SELECT 1"));
        drain(&mut s);
        attach_and_restore(&mut s, now, caps);
        s.handle_backend_data(
            now,
            testing::PRIMARY,
            &mut BytesMut::from(&testing::ok_reply()[..]),
        );
        drain(&mut s);
        s.handle_client_data(now, &mut framed(0, &[cmd::RESET_CONNECTION]));
        let d = drain(&mut s);
        assert_eq!(d.to_backend.get(4), Some(&cmd::RESET_CONNECTION));
        s.handle_backend_data(
            now,
            testing::PRIMARY,
            &mut BytesMut::from(&testing::ok_reply()[..]),
        );
        let d = drain(&mut s);
        assert_eq!(d.to_client.get(4), Some(&0), "the reset is answered");
        assert!(
            !d.to_backend.is_empty(),
            "the session restores tracking after a reset"
        );
        s.handle_backend_closed(now, testing::PRIMARY, "test");
        let d = drain(&mut s);
        assert!(
            d.to_client.is_empty(),
            "nothing unasked for: {:?}",
            d.to_client
        );
        assert!(!d.closed);
    }

    /// Found by the tier-1 simulation (`TESSERA_SIM_SEED=6022 cargo run -p
    /// tessera-sim --release -- --tier 1 --seeds 1`): the backend died after
    /// the column count went out, and the client got an ERR where a column
    /// definition belongs, which it read as a definition and waited for the
    /// rest. Now the connection closes; among rows an ERR is still sent.
    #[test]
    fn a_backend_lost_among_column_definitions_closes_the_client() {
        for (forwarded_rows, expect_err) in [(false, false), (true, true)] {
            let now = Instant::now();
            let mut s = logged_in(now, client_caps(), 1 << 20);
            s.handle_client_data(now, &mut framed(0, b"\x03SELECT 1"));
            drain(&mut s);
            attach_and_restore(&mut s, now, client_caps());
            let wire = select_one_answer();
            // The column count alone, or everything up to the last row.
            let upto = if forwarded_rows { wire.len() - 11 } else { 5 };
            let mut part = BytesMut::from(&wire[..upto]);
            s.handle_backend_data(now, testing::PRIMARY, &mut part);
            drain(&mut s);
            s.handle_backend_closed(now, testing::PRIMARY, "test");
            let d = drain(&mut s);
            assert_eq!(
                d.to_client.get(4) == Some(&0xff),
                expect_err,
                "rows {forwarded_rows}"
            );
            assert_eq!(d.closed, !expect_err, "rows {forwarded_rows}");
        }
    }

    /// Found by the tier-1 simulation (`TESSERA_SIM_SEED=7 cargo run -p
    /// tessera-sim -- --tier 1 --seeds 1`): the transaction's connection
    /// broke while the client was between statements, and the rest of the
    /// transaction ran in autocommit on a new connection, its COMMIT
    /// acknowledged. Now the next command is refused and the connection
    /// closed.
    #[test]
    fn a_transaction_whose_connection_broke_between_statements_is_not_continued() {
        let now = Instant::now();
        let mut s = logged_in(now, client_caps(), 1 << 20);
        s.handle_client_data(now, &mut framed(0, b"\x03BEGIN"));
        drain(&mut s);
        s.handle_client_data(now, &mut framed(0, b"\x03UPDATE t SET v = 1"));
        drain(&mut s);
        let mut sent = attach_and_restore(&mut s, now, client_caps());
        let in_tx = StatusFlags::SERVER_STATUS_AUTOCOMMIT | StatusFlags::SERVER_STATUS_IN_TRANS;
        let ok = || BytesMut::from(&frame(1, &ok_payload(0, 1, 0, in_tx, 0))[..]);
        if sent.ends_with(b"BEGIN") {
            // The BEGIN the session held back goes first.
            s.handle_backend_data(now, testing::PRIMARY, &mut ok());
            sent = drain(&mut s).to_backend;
        }
        assert!(sent.ends_with(b"UPDATE t SET v = 1"));
        s.handle_backend_data(now, testing::PRIMARY, &mut ok());
        let d = drain(&mut s);
        assert_eq!(d.to_client.get(4), Some(&0));
        s.handle_backend_closed(now, testing::PRIMARY, "test");
        assert!(drain(&mut s).to_client.is_empty(), "nothing unasked for");
        s.handle_client_data(now, &mut framed(0, b"\x03COMMIT"));
        let d = drain(&mut s);
        assert!(!d.acquire, "nothing of the lost transaction runs elsewhere");
        assert_eq!(d.to_client.get(4), Some(&0xff));
        assert_eq!(u16::from_le_bytes([d.to_client[5], d.to_client[6]]), 2013);
        assert!(d.closed);
    }

    /// A session whose prepared statement is being re-prepared on a new
    /// connection: it was prepared, the connection died, and the client
    /// executed it. The re-prepare's answer is the test's to give.
    fn reprepare_pending() -> (Session, Instant, CapabilityFlags) {
        let now = Instant::now();
        let caps = client_caps();
        let mut s = logged_in(now, caps, 1 << 20);
        s.handle_client_data(now, &mut framed(0, b"\x16SELECT 1"));
        drain(&mut s);
        attach_and_restore(&mut s, now, caps);
        let mut ok = vec![0u8];
        ok.extend_from_slice(&5u32.to_le_bytes());
        ok.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        s.handle_backend_data(now, testing::PRIMARY, &mut framed(1, &ok));
        let out = drain(&mut s).to_client;
        let id = u32::from_le_bytes([out[5], out[6], out[7], out[8]]);
        // The backend connection dies; the next execute re-prepares on a new one.
        s.handle_backend_closed(now, testing::PRIMARY, "test");
        drain(&mut s);
        let mut exec = vec![cmd::STMT_EXECUTE];
        exec.extend_from_slice(&id.to_le_bytes());
        exec.extend_from_slice(&[0, 1, 0, 0, 0]);
        s.handle_client_data(now, &mut framed(0, &exec));
        assert!(drain(&mut s).acquire);
        let sent = attach_and_restore(&mut s, now, caps);
        assert_eq!(sent.get(4), Some(&cmd::STMT_PREPARE));
        (s, now, caps)
    }

    #[test]
    fn failed_reprepare_answers_the_client_instead_of_looping() {
        let (mut s, now, _) = reprepare_pending();
        // A plain OK is not a STMT_OK: the client gets an error, no retry loop.
        s.handle_backend_data(
            now,
            testing::PRIMARY,
            &mut BytesMut::from(&testing::ok_reply()[..]),
        );
        let d = drain(&mut s);
        assert_eq!(d.to_client.get(4), Some(&0xff));
        assert!(d.to_backend.is_empty());
        assert!(s.is_idle());
    }

    #[test]
    fn a_reprepare_answer_split_across_reads_still_prepares() {
        let (mut s, now, caps) = reprepare_pending();
        // STMT_OK for one column, then its definition (and an EOF without
        // CLIENT_DEPRECATE_EOF), arriving in two reads.
        let mut prep = vec![0u8];
        prep.extend_from_slice(&9u32.to_le_bytes());
        prep.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0]);
        let first = framed(1, &prep);
        let mut rest = framed(
            2,
            b"\x03def\x00\x00\x00\x011\x00\x0c\x3f\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00",
        );
        if !caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF) {
            rest.extend_from_slice(&framed(3, &[0xfe, 0, 0, 2, 0]));
        }
        s.handle_backend_data(now, testing::PRIMARY, &mut first.clone());
        assert!(drain(&mut s).to_client.is_empty());
        s.handle_backend_data(now, testing::PRIMARY, &mut rest);
        let d = drain(&mut s);
        assert!(d.to_client.is_empty(), "{:02x?}", d.to_client);
        assert_eq!(d.to_backend.get(4), Some(&cmd::STMT_EXECUTE));
        assert_eq!(&d.to_backend[5..9], &9u32.to_le_bytes());
    }

    /// A context whose router shards `stu` by a sequence-filled `id` over
    /// `nodes` nodes (4 sub-tables each, one primary per node).
    fn sequence_context(nodes: usize, block: u64) -> Arc<SessionContext> {
        let mut toml = String::from(
            "listen = \"127.0.0.1:3307\"\n[[users]]\nname = \"app\"\npassword_native = \"*14E65567ABDB5135D0CFD9A70B3032C179A49EE7\"\n",
        );
        for n in 0..nodes {
            toml.push_str(&format!(
                "[[nodes]]\nname = \"node{}\"\nprimary = \"127.0.0.1:{}\"\nuser = \"root\"\n",
                n + 1,
                3306 + n
            ));
        }
        toml.push_str(&format!(
            "[schema]\nsequence_database = \"app\"\nsequence_block = {block}\n[[schema.tables]]\nname = \"stu\"\nkey = \"id\"\nfunction = \"hash\"\nlocations = [{}]\nsequence = \"id\"\n",
            vec!["4"; nodes].join(", ")
        ));
        let v = crate::config::Config::from_toml(&toml)
            .unwrap()
            .validate()
            .unwrap();
        let base = testing::context(1 << 20);
        Arc::new(SessionContext {
            users: base.users.clone(),
            sha2_cache: base.sha2_cache.clone(),
            rsa: None,
            server_version: base.server_version.clone(),
            max_allowed_packet: 1 << 20,
            record_statements: false,
            backend_read_timeout: None,
            router: Arc::new(Router::new(v.topology, v.schema, v.blacklist)),
            merge_limit: 1 << 20,
            sequences: Default::default(),
        })
    }

    /// Every output, the allocation requests apart.
    fn outputs(s: &mut Session) -> (Vec<(String, u64)>, testing::Drained) {
        let mut allocs = Vec::new();
        let mut d = testing::Drained::default();
        while let Some(o) = s.poll_output() {
            match o {
                Output::AllocateSequence { table, count } => allocs.push((table, count)),
                Output::ToClient(b) => d.to_client.extend_from_slice(&b),
                Output::ToBackend(_, b) => d.to_backend.extend_from_slice(&b),
                Output::AcquireBackend(_) => d.acquire = true,
                Output::Close => d.closed = true,
                _ => {}
            }
        }
        (allocs, d)
    }

    fn ok_with(status: StatusFlags, last_insert_id: u64) -> BytesMut {
        framed(1, &protocol::ok_payload(0, 1, last_insert_id, status, 0))
    }

    #[test]
    fn inserts_wait_for_a_sequence_block_then_use_it_without_round_trips() {
        let now = Instant::now();
        let caps = client_caps();
        let ctx = sequence_context(1, 3);
        let mut s = testing::logged_in_with(ctx.clone(), now, caps);
        s.handle_client_data(
            now,
            &mut framed(0, b"\x03INSERT INTO stu (name) VALUES ('a')"),
        );
        let (allocs, d) = outputs(&mut s);
        assert_eq!(allocs, vec![("stu".to_string(), 3)]);
        assert!(d.to_backend.is_empty() && !d.acquire);
        assert!(!s.is_idle() && !s.wants_client_data());
        s.handle_sequence_block(now, "stu", Ok(1..4));
        assert!(drain(&mut s).acquire);
        let sent = attach_and_restore(&mut s, now, caps);
        assert_eq!(
            &sent[4..],
            b"\x03INSERT INTO stu_0001 (name, `id`) VALUES ('a', LAST_INSERT_ID(1))"
        );
        s.handle_backend_data(
            now,
            testing::PRIMARY,
            &mut ok_with(StatusFlags::SERVER_STATUS_AUTOCOMMIT, 1),
        );
        assert_eq!(drain(&mut s).to_client.get(4), Some(&0));
        // The next two come from the block held: straight to the backend.
        for (name, id) in [("b", 2), ("c", 3)] {
            let sql = format!("\x03INSERT INTO stu (name) VALUES ('{name}')");
            s.handle_client_data(now, &mut framed(0, sql.as_bytes()));
            let (allocs, d) = outputs(&mut s);
            assert!(allocs.is_empty());
            let want = format!("LAST_INSERT_ID({id}))");
            assert!(
                String::from_utf8_lossy(&d.to_backend).ends_with(&want),
                "{:?}",
                String::from_utf8_lossy(&d.to_backend)
            );
            s.handle_backend_data(
                now,
                testing::PRIMARY,
                &mut ok_with(StatusFlags::SERVER_STATUS_AUTOCOMMIT, id),
            );
            drain(&mut s);
        }
        assert_eq!(ctx.sequences.available("stu"), 0);
        // An explicit id needs no sequence.
        s.handle_client_data(
            now,
            &mut framed(0, b"\x03INSERT INTO stu (id, name) VALUES (40, 'e')"),
        );
        let (allocs, d) = outputs(&mut s);
        assert!(allocs.is_empty());
        assert!(d.to_backend.ends_with(b"VALUES (40, 'e')"));
        s.handle_backend_data(
            now,
            testing::PRIMARY,
            &mut ok_with(StatusFlags::SERVER_STATUS_AUTOCOMMIT, 0),
        );
        drain(&mut s);
        // The block is used up: a failed allocation reaches the client as an error.
        s.handle_client_data(
            now,
            &mut framed(0, b"\x03INSERT INTO stu (name) VALUES ('d')"),
        );
        let (allocs, _) = outputs(&mut s);
        assert_eq!(allocs, vec![("stu".to_string(), 3)]);
        s.handle_sequence_block(now, "stu", Err("backend down".into()));
        let (_, d) = outputs(&mut s);
        assert_eq!(d.to_client.get(4), Some(&0xff));
        let text = String::from_utf8_lossy(&d.to_client);
        assert!(
            text.contains("could not allocate ids") && text.contains("backend down"),
            "{text}"
        );
        assert!(s.is_idle());
        // A block that arrives when nobody waits is kept.
        s.handle_sequence_block(now, "stu", Ok(10..13));
        assert_eq!(ctx.sequences.available("stu"), 3);
    }

    #[test]
    fn in_a_transaction_generated_ids_keep_rows_on_its_node() {
        let now = Instant::now();
        let caps = client_caps();
        let ctx = sequence_context(2, 8);
        let mut s = testing::logged_in_with(ctx.clone(), now, caps);
        let in_tx = StatusFlags::SERVER_STATUS_AUTOCOMMIT | StatusFlags::SERVER_STATUS_IN_TRANS;
        s.handle_client_data(now, &mut framed(0, b"\x03BEGIN"));
        assert_eq!(drain(&mut s).to_client.get(4), Some(&0));
        // The first statement binds the transaction to node1 (id 1 -> stu_0001).
        s.handle_client_data(
            now,
            &mut framed(0, b"\x03INSERT INTO stu (id, name) VALUES (1, 'x')"),
        );
        assert!(drain(&mut s).acquire);
        let begin = attach_and_restore(&mut s, now, caps);
        assert_eq!(&begin[4..], b"\x03BEGIN");
        s.handle_backend_data(now, testing::PRIMARY, &mut ok_with(in_tx, 0));
        assert!(drain(&mut s).to_backend.ends_with(b"VALUES (1, 'x')"));
        s.handle_backend_data(now, testing::PRIMARY, &mut ok_with(in_tx, 0));
        drain(&mut s);
        // Ids 5, 6, 7 would land on node2: skipped; 8 lands on stu_0000.
        s.handle_client_data(
            now,
            &mut framed(0, b"\x03INSERT INTO stu (name) VALUES ('y')"),
        );
        let (allocs, _) = outputs(&mut s);
        assert_eq!(allocs, vec![("stu".to_string(), 8)]);
        s.handle_sequence_block(now, "stu", Ok(5..13));
        let (_, d) = outputs(&mut s);
        let sent = String::from_utf8_lossy(&d.to_backend).into_owned();
        assert!(
            sent.ends_with("INSERT INTO stu_0000 (name, `id`) VALUES ('y', LAST_INSERT_ID(8))"),
            "{sent}"
        );
        assert_eq!(ctx.sequences.available("stu"), 4);
    }

    /// Plays the driver for a sharded session: attaches backends, answers
    /// restore commands with OK, records shard queries, re-offers buffered
    /// bytes on `ResumeBackend`, and reads a backend only when the session
    /// wants its data.
    struct Shards {
        bufs: BTreeMap<BackendId, BytesMut>,
        client: Vec<u8>,
        queries: Vec<(BackendId, String)>,
    }

    impl Shards {
        fn new() -> Self {
            Self {
                bufs: BTreeMap::new(),
                client: Vec::new(),
                queries: Vec::new(),
            }
        }

        fn drive(&mut self, s: &mut Session, now: Instant) {
            while let Some(o) = s.poll_output() {
                match o {
                    Output::AcquireBackend(b) => {
                        s.handle_backend_attached(now, b, testing::backend_meta(client_caps()))
                    }
                    Output::ToBackend(b, bytes) => {
                        let text = String::from_utf8_lossy(&bytes[5..]).into_owned();
                        let restore = matches!(bytes[4], cmd::SET_OPTION | cmd::INIT_DB)
                            || text.starts_with("SET ");
                        if restore {
                            s.handle_backend_data(
                                now,
                                b,
                                &mut BytesMut::from(&testing::ok_reply()[..]),
                            );
                        } else {
                            self.queries.push((b, text));
                        }
                    }
                    Output::ResumeBackend(b) => {
                        let buf = self.bufs.entry(b).or_default();
                        s.handle_backend_data(now, b, buf);
                    }
                    Output::ToClient(bytes) => self.client.extend_from_slice(&bytes),
                    _ => {}
                }
            }
        }

        /// Bytes arrive from backend `b` (read only if the session wants them).
        fn arrive(&mut self, s: &mut Session, now: Instant, b: BackendId, bytes: &[u8]) {
            let buf = self.bufs.entry(b).or_default();
            buf.extend_from_slice(bytes);
            if s.wants_backend_data(b) {
                s.handle_backend_data(now, b, buf);
            }
            self.drive(s, now);
        }
    }

    fn stu_columns(sub: &str) -> Vec<mysql_common::packets::Column> {
        use mysql_common::constants::ColumnType;
        [
            ("id", ColumnType::MYSQL_TYPE_LONGLONG, 63),
            ("name", ColumnType::MYSQL_TYPE_VAR_STRING, 45),
        ]
        .iter()
        .map(|(n, t, cs)| {
            mysql_common::packets::Column::new(*t)
                .with_schema(b"db")
                .with_table(b"stu")
                .with_org_table(sub.as_bytes())
                .with_name(n.as_bytes())
                .with_org_name(n.as_bytes())
                .with_character_set(*cs)
        })
        .collect()
    }

    /// A sub-table's answer: rows `(id, name)` for these ids.
    fn stu_answer(sub: &str, ids: impl Iterator<Item = i64>) -> Vec<u8> {
        let rows: Vec<(String, String)> = ids
            .map(|i| (i.to_string(), format!("name-{i:05}-with-some-padding")))
            .collect();
        let cells: Vec<Vec<Option<&[u8]>>> = rows
            .iter()
            .map(|(a, b)| vec![Some(a.as_bytes()), Some(b.as_bytes())])
            .collect();
        protocol::encode_text_result(
            &stu_columns(sub),
            &cells,
            true,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        )
        .to_vec()
    }

    #[test]
    fn cross_shard_order_by_streams_past_the_merge_limit() {
        let now = Instant::now();
        // Each sub-table answers ~11 KB; the merge may hold 4 KB per part.
        let ctx = testing::sharded_context("1, 1", 4096);
        let mut s = testing::logged_in_with(ctx, now, client_caps());
        let mut net = Shards::new();
        s.handle_client_data(
            now,
            &mut framed(0, b"\x03SELECT id, name FROM stu ORDER BY id LIMIT 150"),
        );
        net.drive(&mut s, now);
        assert_eq!(net.queries.len(), 2, "{:?}", net.queries);
        let (b0, b1) = (BackendId(0), BackendId(1));
        let even = stu_answer("stu_0000", (0..600).step_by(2));
        let odd = stu_answer("stu_0001", (1..600).step_by(2));
        assert!(even.len() > 2 * 4096);
        // Only one part has answered: nothing can go out yet, and its lane
        // pauses instead of queueing the whole answer, however it arrives.
        for chunk in even.chunks(300) {
            net.arrive(&mut s, now, b0, chunk);
        }
        assert!(net.client.is_empty());
        assert!(!s.wants_backend_data(b0), "the lane waits for the merge");
        assert!(
            net.bufs[&b0].len() > even.len() / 2,
            "its bytes wait unread"
        );
        // The other part's rows let both flow.
        for chunk in odd.chunks(500) {
            net.arrive(&mut s, now, b1, chunk);
        }
        let cols: Vec<_> = stu_columns("stu").into_iter().collect();
        let rows: Vec<(String, String)> = (0..150)
            .map(|i: i64| (i.to_string(), format!("name-{i:05}-with-some-padding")))
            .collect();
        let cells: Vec<Vec<Option<&[u8]>>> = rows
            .iter()
            .map(|(a, b)| vec![Some(a.as_bytes()), Some(b.as_bytes())])
            .collect();
        let want = protocol::encode_text_result(
            &cols,
            &cells,
            true,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        );
        assert_eq!(net.client, want.to_vec());
        assert!(s.is_idle());
        assert!(
            net.bufs.values().all(|b| b.is_empty()),
            "answers read to the end"
        );
    }

    #[test]
    fn a_satisfied_limit_stops_parts_not_yet_sent_and_drains_the_rest() {
        let now = Instant::now();
        // stu_0000 and stu_0001 on node1 (run one after the other), stu_0002 on node2.
        let ctx = testing::sharded_context("2, 1", 1 << 20);
        let mut s = testing::logged_in_with(ctx, now, client_caps());
        let mut net = Shards::new();
        s.handle_client_data(now, &mut framed(0, b"\x03SELECT id, name FROM stu LIMIT 3"));
        net.drive(&mut s, now);
        let sent: Vec<&str> = net.queries.iter().map(|(_, q)| q.as_str()).collect();
        assert_eq!(
            sent,
            vec![
                "SELECT id, name FROM stu_0000 AS `stu` LIMIT 3",
                "SELECT id, name FROM stu_0002 AS `stu` LIMIT 3"
            ]
        );
        net.arrive(
            &mut s,
            now,
            BackendId(0),
            &stu_answer("stu_0000", [0, 3, 6].into_iter()),
        );
        // Three rows went out; stu_0001 is never asked, stu_0002's answer is read and dropped.
        net.arrive(
            &mut s,
            now,
            BackendId(1),
            &stu_answer("stu_0002", [2, 5, 8].into_iter()),
        );
        assert_eq!(net.queries.len(), 2, "{:?}", net.queries);
        let cells: Vec<Vec<Option<&[u8]>>> = [0, 3, 6]
            .iter()
            .map(|i| {
                let name = format!("name-{i:05}-with-some-padding");
                vec![Some(i.to_string().into_bytes()), Some(name.into_bytes())]
            })
            .map(|r| {
                r.into_iter()
                    .map(|c| c.map(|v| &*Box::leak(v.into_boxed_slice())))
                    .collect()
            })
            .collect();
        let want = protocol::encode_text_result(
            &stu_columns("stu"),
            &cells,
            true,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
        );
        assert_eq!(net.client, want.to_vec());
        assert!(s.is_idle());
    }

    #[test]
    fn a_shard_error_after_rows_went_out_ends_the_result_set() {
        let now = Instant::now();
        let ctx = testing::sharded_context("1, 1", 1 << 20);
        let mut s = testing::logged_in_with(ctx, now, client_caps());
        let mut net = Shards::new();
        s.handle_client_data(now, &mut framed(0, b"\x03SELECT id, name FROM stu"));
        net.drive(&mut s, now);
        net.arrive(
            &mut s,
            now,
            BackendId(0),
            &stu_answer("stu_0000", [0, 2].into_iter()),
        );
        assert!(!net.client.is_empty(), "rows go out as they arrive");
        let err = framed(
            1,
            &protocol::err_payload(1146, "42S02", "Table 'db.stu_0001' doesn't exist"),
        );
        net.arrive(&mut s, now, BackendId(1), &err);
        assert!(s.is_idle());
        // A well-formed result set that ends in that error, sequence ids in order.
        let mut frames = FrameReader::new(1 << 20);
        frames.expect_seq(Some(1));
        let mut wire = BytesMut::from(&net.client[..]);
        let mut last = None;
        while let Some(p) = frames
            .next_packet(&mut wire)
            .expect("sequence ids in order")
        {
            last = Some(p);
        }
        let last = last.unwrap();
        assert_eq!(
            protocol::parse_err(&last.payload).map(|e| e.code),
            Some(1146)
        );
        let mut scanner = ResponseScanner::new(ResponseKind::Generic, true);
        let mut pos = 0;
        while !scanner.is_done() {
            match scanner.step(&net.client[pos..]) {
                Step::Pass(n) => pos += n,
                Step::Packet { total, .. } => pos += total,
                Step::NeedMore => panic!("truncated"),
            }
        }
        assert_eq!(pos, net.client.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes instead of a handshake response: no panic; the session
        /// either waits for more or answers with ERR and closes.
        #[test]
        fn garbage_handshake_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let now = Instant::now();
            let mut s = Session::new(testing::context(1 << 16), 1, IpAddr::from([127, 0, 0, 1]), [1; 20], now);
            drain(&mut s);
            s.handle_client_data(now, &mut BytesMut::from(&bytes[..]));
            let d = drain(&mut s);
            if !d.to_client.is_empty() {
                prop_assert!(d.to_client[4] == 0xff || d.to_client[4] == 0x00 || d.to_client[4] == 0xfe);
            }
        }

        /// After login, arbitrary client commands and arbitrary backend
        /// replies never panic, and every client-bound output is framed.
        #[test]
        fn arbitrary_commands_and_replies_never_panic(
            commands in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 1..6),
            replies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..60), 1..6),
        ) {
            let now = Instant::now();
            let mut s = logged_in(now, client_caps(), 1 << 16);
            for ((cmd, body), reply) in commands.iter().zip(replies.iter().cycle()) {
                let mut payload = vec![*cmd];
                payload.extend_from_slice(body);
                s.handle_client_data(now, &mut framed(0, &payload));
                let d = drain(&mut s);
                if d.acquire {
                    attach_and_restore(&mut s, now, client_caps());
                }
                s.handle_backend_data(now, testing::PRIMARY, &mut BytesMut::from(&reply[..]));
                let d = drain(&mut s);
                if d.closed || s.is_closed() {
                    break;
                }
            }
        }

        /// Whatever the shards answer to a streaming merge, in whatever
        /// pieces: no panic, and the session ends the statement or waits.
        #[test]
        fn streaming_merge_survives_any_shard_answer(
            sql in prop_oneof![
                Just("SELECT id, name FROM stu ORDER BY id LIMIT 3"),
                Just("SELECT id, name FROM stu"),
                Just("SELECT id FROM stu ORDER BY name DESC"),
            ],
            rows in proptest::collection::vec(0i64..50, 0..30),
            garbage in proptest::collection::vec(any::<u8>(), 0..80),
            cut in 0usize..400,
            chunk in 1usize..200,
            which in 0usize..3,
        ) {
            let now = Instant::now();
            let ctx = testing::sharded_context("1, 1", 512);
            let mut s = testing::logged_in_with(ctx, now, client_caps());
            let mut net = Shards::new();
            s.handle_client_data(now, &mut framed(0, &[&[cmd::QUERY][..], sql.as_bytes()].concat()));
            net.drive(&mut s, now);
            prop_assert_eq!(net.queries.len(), 2);
            // One shard answers well, the other with a damaged answer.
            let good = stu_answer("stu_0000", rows.iter().map(|i| i * 2));
            let mut bad = stu_answer("stu_0001", rows.iter().map(|i| i * 2 + 1));
            match which {
                0 => bad.truncate(cut.min(bad.len())),
                1 => {
                    let at = cut.min(bad.len());
                    bad.splice(at..at, garbage.iter().copied());
                }
                _ => bad = garbage.clone(),
            }
            for (b, wire) in [(BackendId(0), &good), (BackendId(1), &bad)] {
                for piece in wire.chunks(chunk) {
                    net.arrive(&mut s, now, b, piece);
                }
            }
            // What the client got is framed in order; once the statement is
            // over it is one complete response.
            let mut frames = FrameReader::new(1 << 20);
            frames.expect_seq(Some(1));
            let mut wire = BytesMut::from(&net.client[..]);
            while let Some(_p) = frames.next_packet(&mut wire).map_err(|e| TestCaseError::fail(format!("{e}")))? {}
            if s.is_idle() {
                prop_assert!(wire.is_empty());
                let mut scanner = ResponseScanner::new(ResponseKind::Generic, true);
                let mut pos = 0;
                while !scanner.is_done() {
                    match scanner.step(&net.client[pos..]) {
                        Step::Pass(n) => pos += n,
                        Step::Packet { total, .. } => pos += total,
                        Step::NeedMore => break,
                    }
                }
                prop_assert!(scanner.is_done() && pos == net.client.len(), "{:?}", net.client);
            }
        }

        /// A well-formed result set reaches the client byte for byte, however
        /// the backend's bytes are cut into reads.
        #[test]
        fn result_sets_stream_through_unchanged(
            rows in proptest::collection::vec(proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..30)), 2), 0..20),
            cuts in proptest::collection::vec(1usize..40, 0..30),
            deprecate in any::<bool>(),
        ) {
            let now = Instant::now();
            let mut caps = client_caps();
            caps.set(CapabilityFlags::CLIENT_DEPRECATE_EOF, deprecate);
            let mut s = logged_in(now, caps, 1 << 20);
            s.handle_client_data(now, &mut framed(0, b"\x03SELECT a, b FROM t"));
            prop_assert!(drain(&mut s).acquire);
            attach_and_restore(&mut s, now, caps);
            let cols: Vec<_> = ["a", "b"].iter().map(|n| mysql_common::packets::Column::new(mysql_common::constants::ColumnType::MYSQL_TYPE_BLOB).with_name(n.as_bytes())).collect();
            let cells: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| r.iter().map(|c| c.as_deref()).collect()).collect();
            let wire = protocol::encode_text_result(&cols, &cells, deprecate, StatusFlags::SERVER_STATUS_AUTOCOMMIT);
            let got = feed_backend(&mut s, now, &wire, &cuts);
            prop_assert_eq!(got, wire.to_vec());
            prop_assert!(s.is_idle());
        }
    }
}
