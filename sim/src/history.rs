//! The recorded history of client operations, what the servers recorded
//! (binlogs, the statement trace), and the checkers that judge them.
//!
//! The primaries' binlogs give each key's versions in commit order, and each
//! commit carries the tag of the operation that made it. Against that order:
//!
//! - **No acknowledged write is lost**: an operation the client saw succeed
//!   has a commit on a primary; one it saw fail has none.
//! - **Reads see real, fresh-enough values**: a read returns a version that
//!   was committed on the key's primary. A read served by the primary (a
//!   `/*master*/` read, or inside a transaction) is not older than any write
//!   acknowledged before the read began; a replica read may be stale, except
//!   under read-your-writes, where it is not older than the session's own
//!   acknowledged writes.
//! - **One shard a key**: a key's commits are all on one primary.
//! - **No lost updates**: a counter's versions go 1, 2, 3, … (each increment
//!   is a read-modify-write transaction).
//! - **A transaction stays on one connection of one node**: every statement
//!   tagged with a transaction runs on one server connection, inside it.
//! - **No session state leaks through the pool**: no statement runs on a
//!   connection carrying another session's `SET` or open transaction.
//! - **No hang**: every operation issued after the faults healed succeeds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::engine::{Commit, Executed, StmtKind};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `REPLACE` (or, `insert`, a plain `INSERT` that fails once the key
    /// exists) of a unique value into the sharded register table `kv`.
    /// `prepared`: as a prepared statement (prepare, execute, close).
    Write {
        key: i64,
        value: String,
        insert: bool,
        prepared: bool,
    },
    /// Appends a unique element to a list in the sharded table `lists`.
    Append { key: i64, elem: String },
    /// Reads one key of `table`; `primary`: with the `/*master*/` hint.
    Read {
        table: &'static str,
        key: i64,
        primary: bool,
        prepared: bool,
    },
    /// A cross-shard range read of `kv` (merged by the proxy).
    Range { lo: i64, hi: i64, primary: bool },
    /// `BEGIN; SELECT … FOR UPDATE; REPLACE … n+1; COMMIT` on `counters`.
    Increment { key: i64 },
    /// One transaction writing two `kv` keys, which may sit on two nodes
    /// (the proxy must then refuse, and the client rolls back).
    Transfer { keys: [i64; 2], value: String },
    /// `SET @sim_session = …`: session state the pool must not leak.
    SetVar,
    /// COM_RESET_CONNECTION from the client.
    Reset,
    /// Multi-statements on (COM_SET_OPTION), then one query
    /// `BEGIN; INSERT … ON DUPLICATE KEY UPDATE v = v + 1; COMMIT` on `counters`.
    MultiIncrement { key: i64 },
}

impl OpKind {
    fn writes(&self) -> bool {
        matches!(
            self,
            OpKind::Write { .. }
                | OpKind::Append { .. }
                | OpKind::Increment { .. }
                | OpKind::MultiIncrement { .. }
                | OpKind::Transfer { .. }
        )
    }

    fn is_transaction(&self) -> bool {
        matches!(
            self,
            OpKind::Increment { .. } | OpKind::MultiIncrement { .. } | OpKind::Transfer { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Acknowledged, with what reads observed: `(table, key, value)`.
    Ok(Vec<(&'static str, i64, Option<String>)>),
    /// Definitely not applied.
    Fail(String),
    /// May or may not have taken effect (connection lost, timeout).
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Op {
    pub id: u64,
    pub client: usize,
    /// The client's proxy connection (`c<client>.<n>`).
    pub session: String,
    /// The session's user reads its writes (read-your-writes by GTID).
    pub ryw: bool,
    pub kind: OpKind,
    pub invoked: Duration,
    pub completed: Duration,
    pub outcome: Outcome,
    /// Issued after every fault healed: it must succeed.
    pub after_heal: bool,
}

/// What the servers recorded.
#[derive(Debug, Default, Clone)]
pub struct Evidence {
    /// Each primary's binlog, by host.
    pub primaries: BTreeMap<String, Vec<Commit>>,
    pub executed: Vec<Executed>,
}

#[derive(Debug, Default, Clone)]
pub struct History {
    pub ops: Vec<Op>,
}

/// A logical table's name from a sub-table's (`kv_0003` → `kv`).
pub fn logical_table(name: &str) -> &str {
    match name.rsplit_once('_') {
        Some((base, n)) if n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// An acknowledged write: when it completed, its session, and the index of
/// its version among the key's versions.
type Acked<'a> = (Duration, &'a str, usize);

#[derive(Debug, Clone)]
struct Version {
    value: Option<String>,
    op: Option<u64>,
}

impl History {
    /// A fingerprint of the history and the servers' trace, to prove that a
    /// seed replays exactly (SipHash with fixed keys: stable within a build).
    pub fn fingerprint(&self, evidence: &Evidence) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.ops.hash(&mut h);
        evidence.primaries.hash(&mut h);
        evidence.executed.hash(&mut h);
        h.finish()
    }

    /// Every violation, one line each.
    pub fn check(&self, evidence: &Evidence) -> Vec<String> {
        let mut v = Vec::new();
        // Versions of each (logical table, key), and which primaries hold it.
        let mut versions: BTreeMap<(String, i64), Vec<Version>> = BTreeMap::new();
        let mut homes: BTreeMap<(String, i64), BTreeSet<&str>> = BTreeMap::new();
        let mut committed_ops: BTreeSet<u64> = BTreeSet::new();
        for (host, binlog) in &evidence.primaries {
            for c in binlog {
                if let Some(t) = &c.tag {
                    committed_ops.insert(t.op);
                }
                for ch in &c.changes {
                    let k = (logical_table(&ch.table).to_string(), ch.key);
                    homes.entry(k.clone()).or_default().insert(host);
                    versions.entry(k).or_default().push(Version {
                        value: ch.value.clone(),
                        op: c.tag.as_ref().map(|t| t.op),
                    });
                }
            }
        }
        for ((table, key), hosts) in &homes {
            if hosts.len() > 1 {
                v.push(format!(
                    "{table} key {key} was written on several primaries: {hosts:?}"
                ));
            }
        }
        // Counters: each increment adds one, so versions go 1, 2, 3, …
        for ((table, key), vs) in versions.iter().filter(|((t, _), _)| t == "counters") {
            for (i, ver) in vs.iter().enumerate() {
                let want = (i + 1).to_string();
                if ver.value.as_deref() != Some(want.as_str()) {
                    v.push(format!(
                        "lost update: {table} key {key} version {} is {:?} (op {:?}), expected {want}",
                        i + 1,
                        ver.value,
                        ver.op
                    ));
                    break;
                }
            }
        }
        // Where each write op's commit sits among its key's versions.
        let index_of = |table: &str, key: i64, op: u64| -> Option<usize> {
            versions
                .get(&(table.to_string(), key))?
                .iter()
                .rposition(|x| x.op == Some(op))
        };
        for op in &self.ops {
            if op.after_heal && !matches!(op.outcome, Outcome::Ok(_)) {
                v.push(format!("no answer after the faults healed: {op:?}"));
            }
            if !op.kind.writes() {
                continue;
            }
            match &op.outcome {
                Outcome::Ok(_) if !committed_ops.contains(&op.id) => v.push(format!(
                    "acknowledged write lost: no primary committed op {}: {op:?}",
                    op.id
                )),
                Outcome::Fail(why) if committed_ops.contains(&op.id) => v.push(format!(
                    "a write reported as failed ({why}) was committed: {op:?}"
                )),
                _ => {}
            }
        }
        // Acknowledged writes per (table, key).
        let mut acked: BTreeMap<(String, i64), Vec<Acked>> = BTreeMap::new();
        for op in &self.ops {
            if !matches!(op.outcome, Outcome::Ok(_)) {
                continue;
            }
            let touched: Vec<(&str, i64)> = match &op.kind {
                OpKind::Write { key, .. } => vec![("kv", *key)],
                OpKind::Append { key, .. } => vec![("lists", *key)],
                OpKind::Increment { key } | OpKind::MultiIncrement { key } => {
                    vec![("counters", *key)]
                }
                OpKind::Transfer { keys, .. } => keys.iter().map(|k| ("kv", *k)).collect(),
                _ => vec![],
            };
            for (table, key) in touched {
                if let Some(i) = index_of(table, key, op.id) {
                    acked.entry((table.to_string(), key)).or_default().push((
                        op.completed,
                        &op.session,
                        i,
                    ));
                }
            }
        }
        for op in &self.ops {
            let Outcome::Ok(seen) = &op.outcome else {
                continue;
            };
            let primary = match &op.kind {
                OpKind::Read { primary, .. } | OpKind::Range { primary, .. } => *primary,
                OpKind::Increment { .. } => true,
                _ => continue,
            };
            for (table, key, value) in seen {
                let k = (table.to_string(), *key);
                let vs = versions.get(&k).map(Vec::as_slice).unwrap_or(&[]);
                let found: Option<isize> = match value {
                    None => Some(-1),
                    Some(_) => vs
                        .iter()
                        .rposition(|x| x.value == *value)
                        .map(|i| i as isize),
                };
                let Some(i) = found else {
                    v.push(format!(
                        "{table} key {key}: read saw {value:?}, which no primary committed; op {op:?}"
                    ));
                    continue;
                };
                let floor = acked
                    .get(&k)
                    .into_iter()
                    .flatten()
                    .filter(|(done, session, _)| {
                        *done < op.invoked && (primary || (op.ryw && *session == op.session))
                    })
                    .map(|(_, _, idx)| *idx as isize)
                    .max();
                if let Some(floor) = floor.filter(|f| i < *f) {
                    let rule = if primary {
                        "a primary read"
                    } else {
                        "a read-your-writes read"
                    };
                    v.push(format!(
                        "{table} key {key}: stale read: {rule} saw version {} ({value:?}) but version {} ({:?}) was acknowledged before it began; op {op:?}",
                        i + 1,
                        floor + 1,
                        vs[floor as usize].value
                    ));
                }
            }
        }
        // Transactions: one connection, statements inside the transaction.
        let tx_ops: BTreeSet<u64> = self
            .ops
            .iter()
            .filter(|o| o.kind.is_transaction())
            .map(|o| o.id)
            .collect();
        let mut places: BTreeMap<u64, BTreeSet<(&str, u32)>> = BTreeMap::new();
        for e in &evidence.executed {
            if let Some(owner) = &e.owner {
                v.push(format!(
                    "session state leaked through the pool: `{}` of session {} ran on {} connection {} carrying session {owner}'s state",
                    e.sql, e.tag.session, e.host, e.conn
                ));
            }
            if tx_ops.contains(&e.tag.op) {
                places
                    .entry(e.tag.op)
                    .or_default()
                    .insert((e.host.as_str(), e.conn));
                if !e.in_tx && e.kind == StmtKind::Other {
                    v.push(format!(
                        "statement of transaction op {} ran outside it: `{}` on {} connection {}",
                        e.tag.op, e.sql, e.host, e.conn
                    ));
                }
            }
        }
        for (op, at) in places {
            if at.len() > 1 {
                v.push(format!(
                    "transaction op {op} ran on several connections: {at:?}"
                ));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Change, Tag};

    fn op(id: u64, kind: OpKind, outcome: Outcome, invoked: u64, completed: u64) -> Op {
        Op {
            id,
            client: 0,
            session: "c0.1".into(),
            ryw: false,
            kind,
            invoked: Duration::from_millis(invoked),
            completed: Duration::from_millis(completed),
            outcome,
            after_heal: false,
        }
    }

    fn commit(seq: u64, op: u64, table: &str, key: i64, value: &str) -> Commit {
        Commit {
            server_id: 1,
            seq,
            tag: Some(Tag {
                session: "c0.1".into(),
                op,
            }),
            changes: vec![Change {
                table: table.into(),
                key,
                value: Some(value.into()),
            }],
        }
    }

    fn evidence(commits: Vec<Commit>) -> Evidence {
        let mut e = Evidence::default();
        e.primaries.insert("db1".into(), commits);
        e
    }

    fn write(id: u64, value: &str, outcome: Outcome, t: (u64, u64)) -> Op {
        op(
            id,
            OpKind::Write {
                key: 1,
                value: value.into(),
                insert: false,
                prepared: false,
            },
            outcome,
            t.0,
            t.1,
        )
    }

    fn read(id: u64, primary: bool, seen: Option<&str>, t: (u64, u64)) -> Op {
        op(
            id,
            OpKind::Read {
                table: "kv",
                key: 1,
                primary,
                prepared: false,
            },
            Outcome::Ok(vec![("kv", 1, seen.map(String::from))]),
            t.0,
            t.1,
        )
    }

    #[test]
    fn a_stale_primary_read_is_caught_and_a_stale_replica_read_is_allowed() {
        let ev = evidence(vec![
            commit(1, 1, "kv_0001", 1, "a"),
            commit(2, 2, "kv_0001", 1, "b"),
        ]);
        let ops = vec![
            write(1, "a", Outcome::Ok(vec![]), (0, 10)),
            write(2, "b", Outcome::Ok(vec![]), (20, 30)),
            read(3, false, Some("a"), (40, 50)),
        ];
        assert!(History { ops: ops.clone() }.check(&ev).is_empty());
        let mut stale = ops;
        stale.push(read(4, true, Some("a"), (40, 50)));
        assert_eq!(History { ops: stale }.check(&ev).len(), 1);
    }

    #[test]
    fn lost_and_phantom_writes_are_caught() {
        let ev = evidence(vec![commit(1, 1, "kv_0001", 1, "a")]);
        let ops = vec![
            write(1, "a", Outcome::Fail("1062".into()), (0, 10)),
            write(2, "b", Outcome::Ok(vec![]), (20, 30)),
            read(3, false, Some("zzz"), (40, 50)),
        ];
        // op 1 failed yet committed; op 2 acknowledged yet lost; "zzz" never written.
        assert_eq!(History { ops }.check(&ev).len(), 3);
    }

    #[test]
    fn a_concurrent_write_may_or_may_not_be_seen() {
        let ev = evidence(vec![
            commit(1, 1, "kv_0001", 1, "a"),
            commit(2, 2, "kv_0001", 1, "b"),
        ]);
        let ops = vec![
            write(1, "a", Outcome::Ok(vec![]), (0, 10)),
            write(2, "b", Outcome::Ok(vec![]), (20, 60)),
            read(3, true, Some("a"), (40, 50)),
            read(4, true, Some("b"), (40, 50)),
        ];
        assert!(History { ops }.check(&ev).is_empty());
    }

    #[test]
    fn sub_tables_map_to_their_logical_table() {
        assert_eq!(logical_table("kv_0003"), "kv");
        assert_eq!(logical_table("counters"), "counters");
        assert_eq!(logical_table("my_kv"), "my_kv");
    }
}
