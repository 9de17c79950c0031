//! The server side of one simulated MySQL connection, sans I/O: bytes in,
//! bytes out, one command at a time. The turmoil host ([`crate::db`]) and the
//! tier-1 driver ([`crate::tier1`]) both run it.
//!
//! It speaks what Tessera sends a backend: the login (native password),
//! COM_QUERY, COM_PING, COM_INIT_DB, COM_RESET_CONNECTION, COM_SET_OPTION,
//! COM_STMT_PREPARE/EXECUTE/CLOSE/RESET (see [`crate::prepared`]) and
//! COM_QUIT; and one statement of its own for replicas,
//! `SIM BINLOG AFTER <seq>`, which returns the primary's later commits (and
//! counts as the replica's acknowledgement for semi-synchronous commits).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{Column, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use tessera_core::auth::PasswordHashes;
use tessera_core::protocol::{
    self, cmd, encode_text_result, eof_payload, err_payload, ok_payload, CapabilityFlags,
    FrameReader, StatusFlags,
};

use crate::engine::{Commit, ConnState, Engine, Reply, SharedTrace, Tag, LOCK_WAIT};
use crate::prepared;

pub const USER: &str = "app";
pub const PASSWORD: &str = "pw";

const NONCE: [u8; 20] = *b"simulated-nonce-1234";

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Login,
    Command,
    Closed,
}

/// What one step produced.
#[derive(Debug, Default)]
pub struct Step {
    pub out: Vec<u8>,
    /// The step committed this binlog position (semi-sync waits for it).
    pub committed: Option<u64>,
}

pub struct ServerConn {
    pub state: ConnState,
    phase: Phase,
    frames: FrameReader,
    inbuf: BytesMut,
    deprecate_eof: bool,
    session_track: bool,
    /// A command waiting for a row lock.
    blocked: Option<Running>,
    /// Several statements in one COM_QUERY are allowed
    /// (`CLIENT_MULTI_STATEMENTS`, or COM_SET_OPTION).
    multi_statements: bool,
    stmts: BTreeMap<u32, Stmt>,
    next_stmt: u32,
}

/// A command's statements still to run, and its answer so far.
struct Running {
    statements: std::collections::VecDeque<String>,
    /// When the statement at the front began waiting (lock wait timeout).
    since: Duration,
    /// Answers in the binary protocol (an execute).
    binary: bool,
    out: Vec<u8>,
    committed: Option<u64>,
}

/// A prepared statement: its text, placeholders, result columns, and the
/// parameter types last bound.
struct Stmt {
    sql: String,
    params: usize,
    columns: Vec<String>,
    types: Vec<u8>,
}

impl ServerConn {
    /// A new connection and its greeting.
    pub fn new(engine: &mut Engine) -> (Self, Vec<u8>) {
        let id = engine.next_conn_id();
        let caps = protocol::server_capabilities();
        let scramble_2 = [&NONCE[8..], &[0u8][..]].concat();
        let hs = HandshakePacket::new(
            10,
            &b"5.5.5-10.11.0-SimDB"[..],
            id,
            NONCE[..8].try_into().expect("8 bytes"),
            Some(&scramble_2[..]),
            caps,
            45,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            Some(&b"mysql_native_password"[..]),
        );
        let mut payload = Vec::new();
        hs.serialize(&mut payload);
        let conn = ServerConn {
            state: ConnState::new(id),
            phase: Phase::Login,
            frames: FrameReader::new(16 << 20),
            inbuf: BytesMut::new(),
            deprecate_eof: false,
            session_track: false,
            blocked: None,
            multi_statements: false,
            stmts: BTreeMap::new(),
            next_stmt: 0,
        };
        (conn, framed(0, &payload))
    }

    pub fn receive(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// The connection is gone: its transaction rolls back, its locks go.
    pub fn close(&mut self, engine: &mut Engine) {
        self.state.reset(engine);
        self.phase = Phase::Closed;
    }

    /// Handles at most one command (or retries a blocked one). `None` when
    /// there is nothing to do until more bytes arrive or time passes.
    pub fn step(
        &mut self,
        engine: &mut Engine,
        trace: &SharedTrace,
        now: Duration,
    ) -> Option<Step> {
        if self.phase == Phase::Closed {
            return None;
        }
        if let Some(running) = self.blocked.take() {
            return self.run(engine, trace, running, now);
        }
        let pkt = match self.frames.next_packet(&mut self.inbuf) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(_) => {
                self.close(engine);
                return Some(Step::default());
            }
        };
        if self.phase == Phase::Login {
            return Some(self.login(engine, &pkt.payload));
        }
        self.frames.expect_seq(Some(0));
        let status = self.status();
        let ok = |seq| framed(seq, &ok_payload(0, 0, 0, status, 0));
        let step = |out| {
            Some(Step {
                out,
                committed: None,
            })
        };
        match pkt.payload.first().copied() {
            Some(cmd::QUIT) | None => {
                self.close(engine);
                Some(Step::default())
            }
            Some(cmd::QUERY) => {
                let sql = String::from_utf8_lossy(&pkt.payload[1..]).into_owned();
                if let Some(after) = replication_request(&sql) {
                    engine.replica_ack = engine.replica_ack.max(after);
                    let rows = engine.storage.binlog_after(after);
                    return step(self.binlog_rows(&rows));
                }
                self.run_statement(engine, trace, sql, now, false)
            }
            Some(cmd::STMT_PREPARE) => {
                let sql = String::from_utf8_lossy(&pkt.payload[1..]).into_owned();
                self.next_stmt += 1;
                let stmt = Stmt {
                    params: prepared::placeholders(&sql).len(),
                    columns: prepared::result_columns(&sql),
                    sql,
                    types: Vec::new(),
                };
                let out = prepared::prepare_ok(
                    self.next_stmt,
                    stmt.params,
                    &stmt.columns,
                    self.deprecate_eof,
                );
                self.stmts.insert(self.next_stmt, stmt);
                step(out)
            }
            Some(cmd::STMT_EXECUTE) => {
                let id = pkt
                    .payload
                    .get(1..5)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let Some(stmt) = id.and_then(|id| self.stmts.get_mut(&id)) else {
                    return step(framed(
                        1,
                        &err_payload(
                            1243,
                            "HY000",
                            "Unknown prepared statement handler given to mysqld_stmt_execute",
                        ),
                    ));
                };
                let sql = prepared::parse_execute(&pkt.payload, stmt.params, &mut stmt.types)
                    .and_then(|params| prepared::substitute(&stmt.sql, &params));
                match sql {
                    Some(sql) => self.run_statement(engine, trace, sql, now, true),
                    None => step(framed(
                        1,
                        &err_payload(1210, "HY000", "Incorrect arguments to mysqld_stmt_execute"),
                    )),
                }
            }
            Some(cmd::STMT_CLOSE) => {
                if let Some(b) = pkt.payload.get(1..5) {
                    self.stmts
                        .remove(&u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
                Some(Step::default())
            }
            Some(cmd::STMT_RESET) => step(ok(1)),
            Some(cmd::RESET_CONNECTION) => {
                self.state.reset(engine);
                self.stmts.clear();
                let status = self.status();
                step(framed(1, &ok_payload(0, 0, 0, status, 0)))
            }
            Some(cmd::PING) | Some(cmd::INIT_DB) => step(ok(1)),
            Some(cmd::SET_OPTION) => {
                if let Some(b) = pkt.payload.get(1..3) {
                    self.multi_statements = u16::from_le_bytes([b[0], b[1]]) == 0;
                }
                let p = if self.deprecate_eof {
                    ok_payload(0xfe, 0, 0, status, 0)
                } else {
                    eof_payload(0, status)
                };
                step(framed(1, &p))
            }
            Some(other) => step(framed(
                1,
                &err_payload(1047, "08S01", &format!("Unknown command {other}")),
            )),
        }
    }

    fn login(&mut self, engine: &mut Engine, payload: &[u8]) -> Step {
        let parsed: Option<HandshakeResponse<'_>> = ParseBuf(payload).parse(()).ok();
        let Some(hr) = parsed else {
            self.close(engine);
            return Step::default();
        };
        let ok = hr.user() == USER.as_bytes()
            && PasswordHashes::from_password(PASSWORD).verify_native(&NONCE, hr.scramble_buf());
        if !ok {
            self.close(engine);
            return Step {
                out: framed(2, &err_payload(1045, "28000", "Access denied")),
                committed: None,
            };
        }
        let caps = hr.capabilities();
        self.deprecate_eof = caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        self.session_track = caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK);
        self.multi_statements = caps.contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS);
        self.phase = Phase::Command;
        Step {
            out: framed(2, &ok_payload(0, 0, 0, self.status(), 0)),
            committed: None,
        }
    }

    fn status(&self) -> StatusFlags {
        let mut s = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        if self.state.in_tx() {
            s |= StatusFlags::SERVER_STATUS_IN_TRANS;
        }
        s
    }

    fn run_statement(
        &mut self,
        engine: &mut Engine,
        trace: &SharedTrace,
        sql: String,
        now: Duration,
        binary: bool,
    ) -> Option<Step> {
        let statements = if binary {
            vec![sql.clone()]
        } else {
            split_statements(&sql)
        };
        if statements.len() > 1 && !self.multi_statements {
            return Some(self.reply(syntax_error(&sql), false));
        }
        let running = Running {
            statements: statements.into(),
            since: now,
            binary,
            out: Vec::new(),
            committed: None,
        };
        self.run(engine, trace, running, now)
    }

    /// Runs the command's statements in order, each answer a result of its
    /// own (all but the last flagged "more results"), stopping at an error.
    fn run(
        &mut self,
        engine: &mut Engine,
        trace: &SharedTrace,
        mut running: Running,
        now: Duration,
    ) -> Option<Step> {
        loop {
            let Some(sql) = running.statements.front().cloned() else {
                return Some(Step {
                    out: running.out,
                    committed: running.committed,
                });
            };
            let reply = match self.state.execute(engine, trace, &sql) {
                Reply::Blocked if now.saturating_sub(running.since) < LOCK_WAIT => {
                    self.blocked = Some(running);
                    return None;
                }
                Reply::Blocked => Reply::Err {
                    code: 1205,
                    message: "Lock wait timeout exceeded; try restarting transaction".into(),
                },
                r => r,
            };
            running.statements.pop_front();
            let failed = matches!(reply, Reply::Err { .. });
            let more = !failed && !running.statements.is_empty();
            let step = self.reply(reply, running.binary);
            running.committed = step.committed.or(running.committed);
            append_result(&mut running.out, &step.out, more);
            if !more {
                return Some(Step {
                    out: running.out,
                    committed: running.committed,
                });
            }
            running.since = now;
        }
    }

    fn reply(&mut self, reply: Reply, binary: bool) -> Step {
        match reply {
            Reply::Ok {
                affected,
                gtid,
                seq,
            } => {
                let mut status = self.status();
                let track = gtid.filter(|_| self.session_track && self.state.tracking);
                if track.is_some() {
                    status |= StatusFlags::SERVER_SESSION_STATE_CHANGED;
                }
                let mut p = ok_payload(0, affected, 0, status, 0);
                if let Some(g) = track {
                    // info (empty), then the state-change block: `last_gtid`.
                    protocol::put_lenenc_str(&mut p, b"");
                    let mut var = Vec::new();
                    protocol::put_lenenc_str(&mut var, b"last_gtid");
                    protocol::put_lenenc_str(&mut var, g.as_bytes());
                    let mut block = vec![0x00];
                    protocol::put_lenenc_str(&mut block, &var);
                    protocol::put_lenenc_str(&mut p, &block);
                }
                Step {
                    out: framed(1, &p),
                    committed: seq,
                }
            }
            Reply::Err { code, message } => Step {
                out: framed(1, &err_payload(code, "HY000", &message)),
                committed: None,
            },
            Reply::Rows { columns, rows } if binary => Step {
                out: prepared::binary_rows(&columns, &rows, self.deprecate_eof, self.status()),
                committed: None,
            },
            Reply::Rows { columns, rows } => Step {
                out: self.rows(&columns, &rows),
                committed: None,
            },
            Reply::Blocked => unreachable!("blocked replies are kept, not sent"),
        }
    }

    fn rows(&self, columns: &[String], rows: &[Vec<Option<String>>]) -> Vec<u8> {
        let cols: Vec<Column> = columns
            .iter()
            .map(|n| Column::new(ColumnType::MYSQL_TYPE_VAR_STRING).with_name(n.as_bytes()))
            .collect();
        let cells: Vec<Vec<Option<&[u8]>>> = rows
            .iter()
            .map(|r| r.iter().map(|c| c.as_deref().map(str::as_bytes)).collect())
            .collect();
        encode_text_result(&cols, &cells, self.deprecate_eof, self.status()).to_vec()
    }

    fn binlog_rows(&self, commits: &[Commit]) -> Vec<u8> {
        let columns: Vec<String> = ["server_id", "seq", "session", "op", "tbl", "k", "v"]
            .map(String::from)
            .to_vec();
        let mut rows = Vec::new();
        for c in commits {
            for ch in &c.changes {
                rows.push(vec![
                    Some(c.server_id.to_string()),
                    Some(c.seq.to_string()),
                    c.tag.as_ref().map(|t| t.session.clone()),
                    c.tag.as_ref().map(|t| t.op.to_string()),
                    Some(ch.table.clone()),
                    Some(ch.key.to_string()),
                    ch.value.clone(),
                ]);
            }
        }
        self.rows(&columns, &rows)
    }
}

fn syntax_error(sql: &str) -> Reply {
    Reply::Err {
        code: 1064,
        message: format!("You have an error in your SQL syntax near `{sql}`: several statements need CLIENT_MULTI_STATEMENTS"),
    }
}

/// The statements of a COM_QUERY: split at `;` outside quotes and comments.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    for at in prepared::unquoted(sql, b';') {
        out.push(sql[start..at].trim().to_string());
        start = at + 1;
    }
    out.push(sql[start..].trim().to_string());
    out.retain(|s| !s.is_empty());
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// Appends one result's packets to a multi-result answer: sequence ids go
/// on from the answer's last, and with `more` the result's closing packet
/// says more results follow.
fn append_result(out: &mut Vec<u8>, result: &[u8], more: bool) {
    let mut seq = match last_packet(out) {
        Some(at) => out[at + 3].wrapping_add(1),
        None => 1,
    };
    let start = out.len();
    out.extend_from_slice(result);
    let mut at = start;
    let mut last = start;
    while at + 4 <= out.len() {
        let len = u32::from_le_bytes([out[at], out[at + 1], out[at + 2], 0]) as usize;
        out[at + 3] = seq;
        seq = seq.wrapping_add(1);
        last = at;
        at += 4 + len;
    }
    if more {
        set_more_results(&mut out[last + 4..]);
    }
}

fn last_packet(out: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut last = None;
    while at + 4 <= out.len() {
        last = Some(at);
        at += 4 + u32::from_le_bytes([out[at], out[at + 1], out[at + 2], 0]) as usize;
    }
    last
}

/// Sets SERVER_MORE_RESULTS_EXISTS in an OK or EOF payload.
fn set_more_results(p: &mut [u8]) {
    let more = StatusFlags::SERVER_MORE_RESULTS_EXISTS.bits().to_le_bytes();
    let status_at = match p.first() {
        Some(0xfe) if p.len() < 9 => Some(3),
        Some(0x00 | 0xfe) => {
            let mut b = &p[1..];
            let before = b.len();
            protocol::read_lenenc_int(&mut b)
                .and_then(|_| protocol::read_lenenc_int(&mut b))
                .map(|_| 1 + before - b.len())
        }
        _ => None,
    };
    if let Some(at) = status_at.filter(|at| at + 2 <= p.len()) {
        p[at] |= more[0];
        p[at + 1] |= more[1];
    }
}

fn replication_request(sql: &str) -> Option<u64> {
    sql.strip_prefix("SIM BINLOG AFTER ")?.trim().parse().ok()
}

/// The statement a replica sends to fetch commits after `seq`.
pub fn replication_query(seq: u64) -> String {
    format!("SIM BINLOG AFTER {seq}")
}

/// Commits back from the rows of [`replication_query`]'s answer.
pub fn commits_from_rows(rows: &[Vec<Option<String>>]) -> Option<Vec<Commit>> {
    let mut out: Vec<Commit> = Vec::new();
    for r in rows {
        let num = |i: usize| r.get(i)?.as_deref()?.parse::<u64>().ok();
        let server_id = num(0)? as u32;
        let seq = num(1)?;
        let tag = match (r.get(2)?.clone(), num(3)) {
            (Some(session), Some(op)) => Some(Tag { session, op }),
            _ => None,
        };
        let change = crate::engine::Change {
            table: r.get(4)?.clone()?,
            key: r.get(5)?.as_deref()?.parse().ok()?,
            value: r.get(6)?.clone(),
        };
        match out.last_mut() {
            Some(c) if c.seq == seq && c.server_id == server_id => c.changes.push(change),
            _ => out.push(Commit {
                server_id,
                seq,
                tag,
                changes: vec![change],
            }),
        }
    }
    Some(out)
}

fn framed(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    protocol::write_packet(&mut out, seq, payload);
    out.to_vec()
}
