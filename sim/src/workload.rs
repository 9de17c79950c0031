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

enum Step {
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
                SimClient::connect("proxy:3306", self.user, crate::server::PASSWORD),
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
    async fn statement(&mut self, op: u64, sql: &str) -> Step {
        let Some(conn) = self.conn.as_mut() else {
            return Step::Broken("no connection".into());
        };
        let tag = Tag {
            session: conn.session.clone(),
            op,
        };
        let text = format!("{} {sql}", tag.comment());
        let r = tokio::time::timeout(OP_TIMEOUT, conn.client.query(&text)).await;
        match r {
            Ok(Ok(a)) => Step::Ok(a),
            Ok(Err(ClientError::Server { code, message }))
                if DEFINITE.contains(&code) || (code == 1105 && message.contains("refused")) =>
            {
                Step::Failed(format!("{code}: {message}"))
            }
            Ok(Err(ClientError::Server { code, message })) => {
                self.conn = None;
                Step::Broken(format!("{code}: {message}"))
            }
            Ok(Err(ClientError::Io(e))) => {
                self.conn = None;
                Step::Broken(e)
            }
            Err(_) => {
                self.conn = None;
                Step::Broken("client timeout".into())
            }
        }
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
        match kind {
            OpKind::Write { key, value, insert } => {
                let verb = if *insert { "INSERT" } else { "REPLACE" };
                let sql = format!("{verb} INTO kv (k, v) VALUES ({key}, '{value}')");
                write_outcome(self.statement(id, &sql).await)
            }
            OpKind::Append { key, elem } => {
                let sql = format!(
                    "INSERT INTO lists (k, v) VALUES ({key}, '{elem}') ON DUPLICATE KEY UPDATE v = CONCAT(v, ',{elem}')"
                );
                write_outcome(self.statement(id, &sql).await)
            }
            OpKind::Read {
                table,
                key,
                primary,
            } => {
                let hint = if *primary { "/*master*/ " } else { "" };
                let sql = format!("{hint}SELECT v FROM {table} WHERE k = {key}");
                match self.statement(id, &sql).await {
                    Step::Ok(Answer::Rows(rows)) => {
                        let v = rows.first().and_then(|r| r.first().cloned().flatten());
                        Outcome::Ok(vec![(table, *key, v)])
                    }
                    Step::Ok(a) => Outcome::Fail(format!("unexpected answer {a:?}")),
                    Step::Failed(e) | Step::Broken(e) => Outcome::Fail(e),
                }
            }
            OpKind::Range { lo, hi, primary } => {
                let hint = if *primary { "/*master*/ " } else { "" };
                let sql =
                    format!("{hint}SELECT k, v FROM kv WHERE k >= {lo} AND k < {hi} ORDER BY k");
                match self.statement(id, &sql).await {
                    Step::Ok(Answer::Rows(rows)) => {
                        let mut seen: Vec<(&'static str, i64, Option<String>)> =
                            (*lo..*hi).map(|k| ("kv", k, None)).collect();
                        for r in rows {
                            let k: Option<i64> =
                                r.first().cloned().flatten().and_then(|k| k.parse().ok());
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
                    Step::Ok(a) => Outcome::Fail(format!("unexpected answer {a:?}")),
                    Step::Failed(e) | Step::Broken(e) => Outcome::Fail(e),
                }
            }
            OpKind::Increment { key } => {
                let read = format!("SELECT v FROM counters WHERE k = {key} FOR UPDATE");
                self.transaction(
                    id,
                    move |seen| match seen {
                        None => vec![read.clone()],
                        Some(rows) => {
                            let n: i64 = rows
                                .first()
                                .and_then(|r| r.first().cloned().flatten())
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            vec![format!(
                                "REPLACE INTO counters (k, v) VALUES ({key}, {})",
                                n + 1
                            )]
                        }
                    },
                    ("counters", *key),
                )
                .await
            }
            OpKind::Transfer { keys, value } => {
                let stmts: Vec<String> = keys
                    .iter()
                    .map(|k| format!("REPLACE INTO kv (k, v) VALUES ({k}, '{value}')"))
                    .collect();
                self.transaction(
                    id,
                    move |seen| match seen {
                        None => stmts.clone(),
                        Some(_) => vec![],
                    },
                    ("kv", keys[0]),
                )
                .await
            }
            OpKind::SetVar => {
                let sql = format!("SET @sim_session = '{id}'");
                match self.statement(id, &sql).await {
                    Step::Ok(_) => Outcome::Ok(vec![]),
                    Step::Failed(e) => Outcome::Fail(e),
                    Step::Broken(e) => Outcome::Unknown(e),
                }
            }
        }
    }

    /// `BEGIN`, the statements `plan(None)` gives, then (for a read-modify-
    /// write) those `plan(Some(rows of the first))` gives, then `COMMIT`. A
    /// definite error rolls back.
    async fn transaction(
        &mut self,
        id: u64,
        plan: impl Fn(Option<&Vec<Vec<Option<String>>>>) -> Vec<String>,
        observed_key: (&'static str, i64),
    ) -> Outcome {
        let mut seen = Vec::new();
        match self.statement(id, "BEGIN").await {
            Step::Ok(_) => {}
            Step::Failed(e) => return Outcome::Fail(e),
            Step::Broken(e) => return Outcome::Unknown(e),
        }
        let mut first_rows = None;
        let first = plan(None);
        let mut stmts: Vec<String> = first;
        let mut i = 0;
        while i < stmts.len() {
            match self.statement(id, &stmts[i]).await {
                Step::Ok(Answer::Rows(rows)) if first_rows.is_none() => {
                    let v = rows.first().and_then(|r| r.first().cloned().flatten());
                    seen.push((observed_key.0, observed_key.1, v));
                    stmts.extend(plan(Some(&rows)));
                    first_rows = Some(rows);
                }
                Step::Ok(_) => {}
                Step::Failed(e) => {
                    return match self.statement(id, "ROLLBACK").await {
                        Step::Ok(_) => Outcome::Fail(e),
                        _ => Outcome::Unknown(format!("{e}; then the rollback failed")),
                    };
                }
                Step::Broken(e) => return Outcome::Unknown(e),
            }
            i += 1;
        }
        match self.statement(id, "COMMIT").await {
            Step::Ok(_) => Outcome::Ok(seen),
            Step::Failed(e) | Step::Broken(e) => Outcome::Unknown(format!("commit: {e}")),
        }
    }
}

fn write_outcome(step: Step) -> Outcome {
    match step {
        Step::Ok(_) => Outcome::Ok(vec![]),
        Step::Failed(e) => Outcome::Fail(e),
        Step::Broken(e) => Outcome::Unknown(e),
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
            let kind = match rng.gen_range(0..100) {
                0..=19 => OpKind::Write {
                    key: rng.gen_range(0..KV_KEYS),
                    value: unique,
                    insert: false,
                },
                20..=24 => OpKind::Write {
                    key: rng.gen_range(0..KV_KEYS),
                    value: unique,
                    insert: true,
                },
                25..=39 => OpKind::Append {
                    key: rng.gen_range(0..LIST_KEYS),
                    elem: unique,
                },
                40..=54 => OpKind::Read {
                    table: "kv",
                    key: rng.gen_range(0..KV_KEYS),
                    primary: false,
                },
                55..=62 => OpKind::Read {
                    table: "kv",
                    key: rng.gen_range(0..KV_KEYS),
                    primary: true,
                },
                63..=70 => OpKind::Read {
                    table: "lists",
                    key: rng.gen_range(0..LIST_KEYS),
                    primary: rng.gen_bool(0.5),
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
                _ => OpKind::SetVar,
            };
            r.run(kind, false).await;
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
        for key in 0..KV_KEYS {
            r.run(
                OpKind::Read {
                    table: "kv",
                    key,
                    primary: true,
                },
                true,
            )
            .await;
        }
        for key in 0..LIST_KEYS {
            r.run(
                OpKind::Read {
                    table: "lists",
                    key,
                    primary: true,
                },
                true,
            )
            .await;
        }
        Ok(())
    }
}
