//! Client workloads: each client host runs operations through the proxy
//! and records every one with its invocation, completion and outcome.
//!
//! Operations (see [`OpKind`]): register writes (`REPLACE`, and `INSERT`
//! that must fail once the key exists), list appends, reads on replicas and
//! on primaries, cross-shard range reads, read-modify-write increments in
//! transactions, two-key transactions that may cross nodes, and session
//! variables. Every statement carries its operation's tag in a leading
//! comment, so the servers' trace can be joined with the history.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::{Answer, ClientError, SimClient};
use crate::engine::Tag;
use crate::history::{History, Op, OpKind, Outcome};
use crate::prepared::Param;
use tessera_core::backend;

/// Keys of the sharded register table `kv` (spread over both nodes).
pub const KV_KEYS: i64 = 8;
/// Keys of the sharded list table `lists`.
pub const LIST_KEYS: i64 = 4;
/// Keys of the unsharded `counters` table.
pub const COUNTER_KEYS: i64 = 2;

/// The proxy's users: `app` reads replicas freely, `ryw` reads its writes.
pub const USERS: [&str; 2] = ["app", "ryw"];

/// Errors after which the statement surely did not take effect.
const DEFINITE: [u16; 7] = [1062, 1064, 1205, 1213, 1235, 1146, 1045];

pub struct Workload {
    pub client: usize,
    pub seed: u64,
    pub ops: usize,
    /// Operations stop being issued, and the final checks begin, at this time.
    pub healed_by: Duration,
    pub history: Arc<Mutex<History>>,
}

/// One client connection through the proxy: a session.
struct Conn {
    client: SimClient,
    session: String,
}

struct Runner {
    client: usize,
    user: &'static str,
    sessions: usize,
    conn: Option<Conn>,
    next_op: u64,
    history: Arc<Mutex<History>>,
}

const OP_TIMEOUT: Duration = Duration::from_secs(4);

/// A statement's result, as an operation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StmtResult {
    Ok(Answer),
    /// Surely not applied.
    Failed(String),
    /// Maybe applied; the connection is dropped.
    Broken(String),
}

impl Runner {
    async fn session(&mut self) -> Result<&mut Conn, String> {
        if self.conn.is_none() {
            let c = tokio::time::timeout(
                OP_TIMEOUT,
                // Odd clients speak the classic protocol, with EOF packets.
                SimClient::connect_with(
                    "proxy:3306",
                    self.user,
                    crate::server::PASSWORD,
                    self.client.is_multiple_of(2),
                ),
            )
            .await;
            match c {
                Ok(Ok(client)) => {
                    self.sessions += 1;
                    self.conn = Some(Conn {
                        client,
                        session: format!("c{}.{}", self.client, self.sessions),
                    });
                }
                Ok(Err(e)) => return Err(format!("connect: {e:?}")),
                Err(_) => return Err("connect: timeout".into()),
            }
        }
        Ok(self.conn.as_mut().expect("just connected"))
    }

    /// Sends one statement, tagged; a broken answer drops the connection.
    async fn statement(&mut self, op: u64, sql: &str, params: Option<&[Param]>) -> StmtResult {
        let Some(conn) = self.conn.as_mut() else {
            return StmtResult::Broken("no connection".into());
        };
        let tag = Tag {
            session: conn.session.clone(),
            op,
        };
        let text = tag.apply(sql);
        let r = match params {
            Some(params) => {
                tokio::time::timeout(OP_TIMEOUT, conn.client.prepared(&text, params)).await
            }
            None => tokio::time::timeout(OP_TIMEOUT, conn.client.query(&text)).await,
        };
        let result = match r {
            Ok(r) => classify(r),
            Err(_) => StmtResult::Broken("client timeout".into()),
        };
        if matches!(result, StmtResult::Broken(_)) {
            self.conn = None;
        }
        result
    }

    /// COM_RESET_CONNECTION; a broken answer drops the connection.
    async fn reset(&mut self) -> StmtResult {
        self.command(backend::reset_request()).await
    }

    /// COM_SET_OPTION: multi-statements on.
    async fn multi_on(&mut self) -> StmtResult {
        self.command(crate::client::set_option_request(true)).await
    }

    /// A command other than a query, answered by OK, EOF or ERR.
    async fn command(&mut self, packet: bytes::Bytes) -> StmtResult {
        let Some(conn) = self.conn.as_mut() else {
            return StmtResult::Broken("no connection".into());
        };
        let result = match tokio::time::timeout(OP_TIMEOUT, conn.client.command(&packet)).await {
            Ok(r) => classify(r),
            Err(_) => StmtResult::Broken("client timeout".into()),
        };
        if matches!(result, StmtResult::Broken(_)) {
            self.conn = None;
        }
        result
    }

    /// Runs one operation and records it.
    async fn run(&mut self, kind: OpKind, after_heal: bool) {
        self.next_op += 1;
        let id = self.client as u64 * 1_000_000 + self.next_op;
        let invoked = turmoil::elapsed();
        let outcome = match self.session().await {
            Err(e) => Outcome::Fail(e),
            Ok(_) => self.perform(id, &kind).await,
        };
        let completed = turmoil::elapsed();
        let session = self
            .conn
            .as_ref()
            .map(|c| c.session.clone())
            .unwrap_or_else(|| format!("c{}.{}", self.client, self.sessions));
        if let Ok(mut h) = self.history.lock() {
            h.ops.push(Op {
                id,
                client: self.client,
                session,
                ryw: self.user == "ryw",
                kind,
                invoked,
                completed,
                outcome,
                after_heal,
            });
        }
    }

    async fn perform(&mut self, id: u64, kind: &OpKind) -> Outcome {
        let mut program = Program::new(kind);
        let mut last = None;
        loop {
            match program.next(last.take()) {
                Next::Send(sql) => last = Some(self.statement(id, &sql, None).await),
                Next::Reset => last = Some(self.reset().await),
                Next::MultiOn => last = Some(self.multi_on().await),
                Next::Prepared(sql, params) => {
                    last = Some(self.statement(id, &sql, Some(&params)).await)
                }
                Next::Done(outcome) => return outcome,
            }
        }
    }
}

/// What a program wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Send(String),
    /// Turn multi-statements on (COM_SET_OPTION).
    MultiOn,
    /// Send COM_RESET_CONNECTION.
    Reset,
    /// Prepare the statement, execute it with the values, close it.
    Prepared(String, Vec<Param>),
    Done(Outcome),
}

/// The statements of one operation, sans I/O: it says which statement to
/// send next given the answer to the last, and finally the outcome. Both
/// simulation tiers run operations through it.
#[derive(Debug)]
pub struct Program {
    kind: OpKind,
    /// Statements still to send before COMMIT (transactions) or at all.
    queue: std::collections::VecDeque<String>,
    stage: Stage,
    seen: Vec<(&'static str, i64, Option<String>)>,
    /// A single statement sent as a prepared statement with these values.
    params: Option<Vec<Param>>,
    /// A COM_RESET_CONNECTION instead of a statement.
    reset: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Turning multi-statements on, before the single (multi-statement) query.
    MultiOn,
    /// Single statement: waiting for its answer.
    Single,
    /// Transaction: BEGIN and body statements sent one by one.
    Body,
    Commit,
    /// Rolling back after this definite error.
    Rollback(String),
}

impl Program {
    pub fn new(kind: &OpKind) -> Self {
        let single = |sql: String| Program {
            kind: kind.clone(),
            queue: [sql].into(),
            stage: Stage::Single,
            seen: Vec::new(),
            params: None,
            reset: false,
        };
        let hint = |primary: bool| if primary { "/*master*/ " } else { "" };
        match kind {
            OpKind::Write {
                key,
                value,
                insert,
                prepared,
            } => {
                let verb = if *insert { "INSERT" } else { "REPLACE" };
                if *prepared {
                    let mut p = single(format!("{verb} INTO kv (k, v) VALUES (?, ?)"));
                    p.params = Some(vec![Param::Int(*key), Param::Str(value.clone())]);
                    p
                } else {
                    single(format!("{verb} INTO kv (k, v) VALUES ({key}, '{value}')"))
                }
            }
            OpKind::Append { key, elem } => single(format!(
                "INSERT INTO lists (k, v) VALUES ({key}, '{elem}') ON DUPLICATE KEY UPDATE v = CONCAT(v, ',{elem}')"
            )),
            OpKind::Read {
                table,
                key,
                primary,
                prepared: true,
            } => {
                let mut p = single(format!("{}SELECT v FROM {table} WHERE k = ?", hint(*primary)));
                p.params = Some(vec![Param::Int(*key)]);
                p
            }
            OpKind::Read {
                table,
                key,
                primary,
                prepared: false,
            } => single(format!("{}SELECT v FROM {table} WHERE k = {key}", hint(*primary))),
            OpKind::Range { lo, hi, primary } => single(format!(
                "{}SELECT k, v FROM kv WHERE k >= {lo} AND k < {hi} ORDER BY k",
                hint(*primary)
            )),
            OpKind::SetVar => single("SET @sim_session = 'set'".to_string()),
            OpKind::Reset => {
                let mut p = single(String::new());
                p.reset = true;
                p
            }
            OpKind::MultiIncrement { key } => {
                let mut p = single(format!(
                    "BEGIN; {m} INSERT INTO counters (k, v) VALUES ({key}, 1) ON DUPLICATE KEY UPDATE v = v + 1; {m} COMMIT",
                    m = Tag::MARK
                ));
                p.stage = Stage::MultiOn;
                p
            }
            OpKind::Increment { key } => Program {
                kind: kind.clone(),
                queue: [
                    "BEGIN".to_string(),
                    format!("SELECT v FROM counters WHERE k = {key} FOR UPDATE"),
                ]
                .into(),
                stage: Stage::Body,
                seen: Vec::new(),
                params: None,
                reset: false,
            },
            OpKind::Transfer { keys, value } => Program {
                kind: kind.clone(),
                queue: std::iter::once("BEGIN".to_string())
                    .chain(
                        keys.iter()
                            .map(|k| format!("REPLACE INTO kv (k, v) VALUES ({k}, '{value}')")),
                    )
                    .collect(),
                stage: Stage::Body,
                seen: Vec::new(),
                params: None,
                reset: false,
            },
        }
    }

    /// The next statement, given the answer to the last one (`None` at first).
    pub fn next(&mut self, last: Option<StmtResult>) -> Next {
        let Some(last) = last else {
            if self.stage == Stage::MultiOn {
                return Next::MultiOn;
            }
            let sql = self.queue.pop_front().unwrap_or_default();
            if self.reset {
                return Next::Reset;
            }
            return match self.params.take() {
                Some(params) => Next::Prepared(sql, params),
                None => Next::Send(sql),
            };
        };
        match self.stage.clone() {
            Stage::MultiOn => match last {
                StmtResult::Ok(_) => {
                    self.stage = Stage::Single;
                    Next::Send(self.queue.pop_front().unwrap_or_default())
                }
                StmtResult::Failed(e) | StmtResult::Broken(e) => Next::Done(Outcome::Fail(e)),
            },
            Stage::Single => match (last, &self.kind) {
                // The query stopped at an error, maybe inside its transaction.
                (StmtResult::Failed(e), OpKind::MultiIncrement { .. }) => {
                    self.stage = Stage::Rollback(e);
                    Next::Send("ROLLBACK".into())
                }
                (last, _) => Next::Done(self.single_outcome(last)),
            },
            Stage::Body => match last {
                StmtResult::Ok(answer) => {
                    if let (OpKind::Increment { key }, Answer::Rows(rows)) = (&self.kind, &answer) {
                        let v = rows.first().and_then(|r| r.first().cloned().flatten());
                        let n: i64 = v.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
                        self.seen.push(("counters", *key, v));
                        self.queue.push_back(format!(
                            "REPLACE INTO counters (k, v) VALUES ({key}, {})",
                            n + 1
                        ));
                    }
                    match self.queue.pop_front() {
                        Some(sql) => Next::Send(sql),
                        None => {
                            self.stage = Stage::Commit;
                            Next::Send("COMMIT".into())
                        }
                    }
                }
                StmtResult::Failed(e) => {
                    self.stage = Stage::Rollback(e);
                    Next::Send("ROLLBACK".into())
                }
                StmtResult::Broken(e) => Next::Done(Outcome::Unknown(e)),
            },
            Stage::Commit => Next::Done(match last {
                StmtResult::Ok(_) => Outcome::Ok(std::mem::take(&mut self.seen)),
                StmtResult::Failed(e) | StmtResult::Broken(e) => {
                    Outcome::Unknown(format!("commit: {e}"))
                }
            }),
            Stage::Rollback(why) => Next::Done(match last {
                StmtResult::Ok(_) => Outcome::Fail(why),
                _ => Outcome::Unknown(format!("{why}; then the rollback failed")),
            }),
        }
    }

    fn single_outcome(&self, last: StmtResult) -> Outcome {
        let reads = matches!(self.kind, OpKind::Read { .. } | OpKind::Range { .. });
        match (last, &self.kind) {
            (StmtResult::Ok(Answer::Rows(rows)), OpKind::Read { table, key, .. }) => {
                let v = rows.first().and_then(|r| r.first().cloned().flatten());
                Outcome::Ok(vec![(table, *key, v)])
            }
            (StmtResult::Ok(Answer::Rows(rows)), OpKind::Range { lo, hi, .. }) => {
                let mut seen: Vec<(&'static str, i64, Option<String>)> =
                    (*lo..*hi).map(|k| ("kv", k, None)).collect();
                for r in rows {
                    let k: Option<i64> = r.first().cloned().flatten().and_then(|k| k.parse().ok());
                    match k.and_then(|k| seen.iter_mut().find(|s| s.1 == k)) {
                        Some(slot) => slot.2 = r.get(1).cloned().flatten(),
                        None => {
                            return Outcome::Fail(format!(
                                "range read returned a row outside it: {r:?}"
                            ))
                        }
                    }
                }
                Outcome::Ok(seen)
            }
            (StmtResult::Ok(a), _) if reads => Outcome::Fail(format!("unexpected answer {a:?}")),
            (StmtResult::Ok(_), _) => Outcome::Ok(vec![]),
            (StmtResult::Failed(e), _) => Outcome::Fail(e),
            (StmtResult::Broken(e), _) if reads => Outcome::Fail(e),
            (StmtResult::Broken(e), _) => Outcome::Unknown(e),
        }
    }
}

/// A replica read of what `kind` wrote: read-your-writes sessions do that
/// right after a write now and then, where replica lag shows.
pub fn read_back(kind: &OpKind) -> Option<OpKind> {
    let (table, key) = match kind {
        OpKind::Write { key, .. } => ("kv", *key),
        OpKind::Append { key, .. } => ("lists", *key),
        _ => return None,
    };
    Some(OpKind::Read {
        table,
        key,
        primary: false,
        prepared: false,
    })
}

/// The reads every client makes once the faults healed, on the primaries:
/// every `kv` key in one merged read, and (`lists`) every list.
pub fn final_reads(lists: bool) -> Vec<OpKind> {
    let mut reads = vec![OpKind::Range {
        lo: 0,
        hi: KV_KEYS,
        primary: true,
    }];
    if lists {
        reads.extend((0..LIST_KEYS).map(|key| OpKind::Read {
            table: "lists",
            key,
            primary: true,
            prepared: false,
        }));
    }
    reads
}

/// One operation of the workload mix; `unique` makes its written value
/// unique in the run.
pub fn random_op(rng: &mut StdRng, unique: String) -> OpKind {
    match rng.gen_range(0..100) {
        0..=19 => OpKind::Write {
            key: rng.gen_range(0..KV_KEYS),
            value: unique,
            insert: false,
            prepared: rng.gen_bool(0.3),
        },
        20..=24 => OpKind::Write {
            key: rng.gen_range(0..KV_KEYS),
            value: unique,
            insert: true,
            prepared: rng.gen_bool(0.3),
        },
        25..=39 => OpKind::Append {
            key: rng.gen_range(0..LIST_KEYS),
            elem: unique,
        },
        40..=54 => OpKind::Read {
            table: "kv",
            key: rng.gen_range(0..KV_KEYS),
            primary: false,
            prepared: rng.gen_bool(0.3),
        },
        55..=62 => OpKind::Read {
            table: "kv",
            key: rng.gen_range(0..KV_KEYS),
            primary: true,
            prepared: rng.gen_bool(0.3),
        },
        63..=70 => OpKind::Read {
            table: "lists",
            key: rng.gen_range(0..LIST_KEYS),
            primary: rng.gen_bool(0.5),
            prepared: false,
        },
        71..=75 => OpKind::Range {
            lo: 0,
            hi: KV_KEYS,
            primary: rng.gen_bool(0.5),
        },
        76..=87 => OpKind::Increment {
            key: rng.gen_range(0..COUNTER_KEYS),
        },
        88..=93 => OpKind::Transfer {
            keys: [rng.gen_range(0..KV_KEYS), rng.gen_range(0..KV_KEYS)],
            value: format!("t{unique}"),
        },
        94..=95 => OpKind::SetVar,
        96..=97 => OpKind::MultiIncrement {
            key: rng.gen_range(0..COUNTER_KEYS),
        },
        _ => OpKind::Reset,
    }
}

/// Sorts a statement's result: definite errors (nothing happened) from
/// broken answers (anything may have happened).
pub fn classify(r: Result<Answer, ClientError>) -> StmtResult {
    match r {
        Ok(a) => StmtResult::Ok(a),
        Err(ClientError::Server { code, message })
            if DEFINITE.contains(&code) || (code == 1105 && message.contains("refused")) =>
        {
            StmtResult::Failed(format!("{code}: {message}"))
        }
        Err(ClientError::Server { code, message }) => {
            StmtResult::Broken(format!("{code}: {message}"))
        }
        Err(ClientError::Io(e)) => StmtResult::Broken(e),
    }
}

impl Workload {
    /// The client host's body.
    pub async fn run(self) -> turmoil::Result {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (0x9e37_79b9 * (self.client as u64 + 1)));
        let mut r = Runner {
            client: self.client,
            user: USERS[self.client % USERS.len()],
            sessions: 0,
            conn: None,
            next_op: 0,
            history: self.history.clone(),
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut values = 0u64;
        for _ in 0..self.ops {
            if turmoil::elapsed() >= self.healed_by {
                break;
            }
            values += 1;
            let unique = format!("{}-{values}", self.client);
            let kind = random_op(&mut rng, unique);
            let read_back = read_back(&kind).filter(|_| r.user == "ryw" && rng.gen_bool(0.5));
            r.run(kind, false).await;
            if let Some(read) = read_back {
                r.run(read, false).await;
            }
            // Now and then a client hangs up, so its backend connection goes
            // back to the pool for another session.
            if rng.gen_bool(0.1) {
                r.conn = None;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
        }
        // After every fault healed: a fresh session must answer, and see
        // every acknowledged write (primary reads).
        let now = turmoil::elapsed();
        if now < self.healed_by {
            tokio::time::sleep(self.healed_by - now).await;
        }
        r.conn = None;
        for kind in final_reads(true) {
            r.run(kind, true).await;
        }
        Ok(())
    }
}
