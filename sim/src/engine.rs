//! The simulated database engine: tables of `(k BIGINT PRIMARY KEY, v TEXT)`,
//! transactions with row locks, a GTID counter and a binlog of committed row
//! changes. No I/O here: the turmoil host ([`crate::db`]) and the tier-1
//! driver ([`crate::tier1`]) both run it through [`crate::server`].
//!
//! It is a test double, kept small enough to be obviously correct. Every
//! statement it runs is also written to a [`Trace`] that the checkers read:
//! which host and connection ran a client's statement, inside which
//! transaction, and whose session state the connection carried.
//!
//! The proxy's user is treated as privileged (as proxy users often are), so a
//! replica's `read_only` does not stop a write sent to it by mistake: the
//! checkers must catch that, not the engine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Who sent a statement, read from its leading comment `/* sim S OP */`:
/// the client session (one proxy connection) and the operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    pub session: String,
    pub op: u64,
}

impl Tag {
    pub fn comment(&self) -> String {
        format!("/* sim {} {} */", self.session, self.op)
    }

    /// `sql` tagged: the comment leads it, and stands for every
    /// [`Tag::MARK`] in it (the later statements of a multi-statement query).
    pub fn apply(&self, sql: &str) -> String {
        let c = self.comment();
        format!("{c} {}", sql.replace(Tag::MARK, &c))
    }

    /// Where a statement after the first of a query takes its tag.
    pub const MARK: &'static str = "/*TAG*/";

    fn parse(comment: &str) -> Option<Tag> {
        let mut words = comment.split_whitespace();
        if words.next()? != "sim" {
            return None;
        }
        let session = words.next()?.to_string();
        let op = words.next()?.parse().ok()?;
        Some(Tag { session, op })
    }
}

/// One row change of a commit; `value: None` is a delete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Change {
    pub table: String,
    pub key: i64,
    pub value: Option<String>,
}

/// A committed transaction as the binlog keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Commit {
    /// The server that first committed it (its GTID's server id).
    pub server_id: u32,
    pub seq: u64,
    pub tag: Option<Tag>,
    pub changes: Vec<Change>,
}

impl Commit {
    pub fn gtid(&self) -> String {
        format!("0-{}-{}", self.server_id, self.seq)
    }
}

/// What survives a crash of the host: the data, the binlog, the positions.
#[derive(Debug, Default)]
pub struct Storage {
    pub server_id: u32,
    pub read_only: bool,
    pub tables: BTreeMap<String, BTreeMap<i64, String>>,
    /// Every commit applied here, local or replicated, in order.
    pub binlog: Vec<Commit>,
    /// The last replicated transaction applied (`@@gtid_slave_pos`).
    pub slave_pos: Option<(u32, u64)>,
    next_conn: u32,
}

impl Storage {
    fn last(&self) -> Option<&Commit> {
        self.binlog.last()
    }

    pub fn current_pos(&self) -> String {
        self.last().map(Commit::gtid).unwrap_or_default()
    }

    pub fn slave_pos_text(&self) -> String {
        self.slave_pos
            .map(|(s, n)| format!("0-{s}-{n}"))
            .unwrap_or_default()
    }

    /// Commits after sequence number `seq`, for a replica.
    pub fn binlog_after(&self, seq: u64) -> Vec<Commit> {
        self.binlog
            .iter()
            .filter(|c| c.seq > seq)
            .cloned()
            .collect()
    }

    /// Applies a commit replicated from the primary (log_slave_updates on).
    pub fn apply_replicated(&mut self, commit: Commit) {
        for ch in &commit.changes {
            set_row(&mut self.tables, ch);
        }
        self.slave_pos = Some((commit.server_id, commit.seq));
        self.binlog.push(commit);
    }

    fn commit(&mut self, tag: Option<Tag>, changes: Vec<Change>) -> Commit {
        for ch in &changes {
            set_row(&mut self.tables, ch);
        }
        let seq = self.last().map(|c| c.seq).unwrap_or(0) + 1;
        let c = Commit {
            server_id: self.server_id,
            seq,
            tag,
            changes,
        };
        self.binlog.push(c.clone());
        c
    }
}

fn set_row(tables: &mut BTreeMap<String, BTreeMap<i64, String>>, ch: &Change) {
    let t = tables.entry(ch.table.clone()).or_default();
    match &ch.value {
        Some(v) => {
            t.insert(ch.key, v.clone());
        }
        None => {
            t.remove(&ch.key);
        }
    }
}

/// What kind of statement a trace record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StmtKind {
    Begin,
    Commit,
    Rollback,
    Other,
}

/// One client statement as a server ran it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Executed {
    pub host: String,
    pub conn: u32,
    pub tag: Tag,
    pub kind: StmtKind,
    /// A transaction was open on the connection when the statement ran.
    pub in_tx: bool,
    /// The session whose state (a `SET`, an open transaction) the
    /// connection carried when the statement ran.
    pub owner: Option<String>,
    /// The statement's text, for reports.
    pub sql: String,
}

/// The observer's log, shared by every host of a run; it survives crashes.
#[derive(Debug, Default)]
pub struct Trace {
    pub executed: Vec<Executed>,
}

pub type SharedTrace = Arc<Mutex<Trace>>;

/// A host's engine: durable storage plus what a crash forgets (row locks).
#[derive(Debug, Default)]
pub struct Engine {
    pub host: String,
    pub storage: Storage,
    locks: BTreeMap<(String, i64), u32>,
    /// The highest binlog position a replica has fetched (semi-sync acks).
    pub replica_ack: u64,
}

pub type SharedEngine = Arc<Mutex<Engine>>;

impl Engine {
    pub fn new(host: &str, server_id: u32, read_only: bool) -> Self {
        Engine {
            host: host.to_string(),
            storage: Storage {
                server_id,
                read_only,
                ..Storage::default()
            },
            ..Engine::default()
        }
    }

    /// After a restart: locks and connections are gone, data stays.
    pub fn restarted(&mut self) {
        self.locks.clear();
    }

    pub fn next_conn_id(&mut self) -> u32 {
        self.storage.next_conn += 1;
        self.storage.next_conn
    }

    fn release_locks(&mut self, conn: u32) {
        self.locks.retain(|_, c| *c != conn);
    }
}

/// One connection's session on the server.
#[derive(Debug, Default)]
pub struct ConnState {
    pub id: u32,
    tx: Option<Tx>,
    /// The session that changed this connection's state (see [`Executed`]).
    owner: Option<String>,
    /// `session_track_system_variables` is on: OKs after commits carry
    /// `last_gtid`.
    pub tracking: bool,
}

#[derive(Debug, Default)]
struct Tx {
    writes: BTreeMap<(String, i64), Option<String>>,
    tag: Option<Tag>,
    owner: Option<String>,
}

impl ConnState {
    pub fn new(id: u32) -> Self {
        ConnState {
            id,
            ..Self::default()
        }
    }

    pub fn in_tx(&self) -> bool {
        self.tx.is_some()
    }

    /// COM_RESET_CONNECTION, or the connection closing: roll back, forget.
    pub fn reset(&mut self, engine: &mut Engine) {
        self.tx = None;
        self.owner = None;
        self.tracking = false;
        engine.release_locks(self.id);
    }
}

/// A statement's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `gtid`: the transaction this statement committed, if any.
    Ok {
        affected: u64,
        gtid: Option<String>,
        seq: Option<u64>,
    },
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<Option<String>>>,
    },
    Err {
        code: u16,
        message: String,
    },
    /// A row lock is held by another connection: run it again later.
    Blocked,
}

fn ok(affected: u64) -> Reply {
    Reply::Ok {
        affected,
        gtid: None,
        seq: None,
    }
}

fn err(code: u16, message: impl Into<String>) -> Reply {
    Reply::Err {
        code,
        message: message.into(),
    }
}

fn syntax(sql: &str) -> Reply {
    err(
        1064,
        format!("You have an error in your SQL syntax near `{sql}` (the simulated server knows a small grammar)"),
    )
}

// ------------------------------------------------------------------ tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A keyword or identifier, lower-cased (backticks removed).
    Word(String),
    Int(i64),
    Str(String),
    Punct(char),
}

/// Tokens of a statement, and the tag from its first `/* sim … */` comment.
fn tokenize(sql: &str) -> Option<(Vec<Tok>, Option<Tag>)> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut toks = Vec::new();
    let mut tag = None;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_ascii_whitespace() || c == ';' {
            i += 1;
        } else if sql[i..].starts_with("/*") {
            let end = sql[i + 2..].find("*/")? + i + 2;
            if tag.is_none() {
                tag = Tag::parse(&sql[i + 2..end]);
            }
            i = end + 2;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                let ch = *b.get(i)? as char;
                if ch == '\'' && b.get(i + 1) == Some(&b'\'') {
                    s.push('\'');
                    i += 2;
                } else if ch == '\'' {
                    i += 1;
                    break;
                } else if ch == '\\' {
                    s.push(*b.get(i + 1)? as char);
                    i += 2;
                } else {
                    s.push(ch);
                    i += 1;
                }
            }
            toks.push(Tok::Str(s));
        } else if c == '`' {
            let end = sql[i + 1..].find('`')? + i + 1;
            toks.push(Tok::Word(sql[i + 1..end].to_ascii_lowercase()));
            i = end + 1;
        } else if c.is_ascii_digit()
            || (c == '-' && b.get(i + 1).is_some_and(u8::is_ascii_digit) && !after_value(&toks))
        {
            let start = i;
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            toks.push(Tok::Int(sql[start..i].parse().ok()?));
        } else if c.is_ascii_alphabetic() || c == '_' || c == '@' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_@.$".contains(&b[i])) {
                i += 1;
            }
            toks.push(Tok::Word(sql[start..i].to_ascii_lowercase()));
        } else {
            toks.push(Tok::Punct(c));
            i += 1;
        }
    }
    // `t.col` and `db.t` name the last part; `… AS alias` is dropped.
    let mut out: Vec<Tok> = Vec::with_capacity(toks.len());
    let mut it = toks.into_iter().peekable();
    while let Some(t) = it.next() {
        if t == Tok::Punct('.') && matches!(out.last(), Some(Tok::Word(_))) {
            if let Some(Tok::Word(w)) = it.next() {
                out.pop();
                out.push(Tok::Word(w));
                continue;
            }
            return None;
        }
        if t == Tok::Word("as".into()) {
            it.next();
            continue;
        }
        out.push(t);
    }
    Some((out, tag))
}

fn after_value(toks: &[Tok]) -> bool {
    matches!(
        toks.last(),
        Some(Tok::Int(_) | Tok::Str(_) | Tok::Word(_) | Tok::Punct(')'))
    )
}

/// A cursor over tokens with the few matchers the grammar needs.
struct Cur<'a> {
    t: &'a [Tok],
    i: usize,
}

impl<'a> Cur<'a> {
    fn word(&mut self, w: &str) -> bool {
        if matches!(self.t.get(self.i), Some(Tok::Word(x)) if x == w) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn words(&mut self, ws: &[&str]) -> bool {
        let save = self.i;
        if ws.iter().all(|w| self.word(w)) {
            true
        } else {
            self.i = save;
            false
        }
    }
    fn punct(&mut self, p: char) -> bool {
        if self.t.get(self.i) == Some(&Tok::Punct(p)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> Option<String> {
        match self.t.get(self.i) {
            Some(Tok::Word(w)) => {
                self.i += 1;
                // `db.table`: the table.
                Some(w.rsplit('.').next().unwrap_or(w).to_string())
            }
            _ => None,
        }
    }
    fn int(&mut self) -> Option<i64> {
        match self.t.get(self.i) {
            Some(Tok::Int(n)) => {
                self.i += 1;
                Some(*n)
            }
            _ => None,
        }
    }
    /// A literal value: integer or string, as text.
    fn value(&mut self) -> Option<String> {
        match self.t.get(self.i) {
            Some(Tok::Int(n)) => {
                self.i += 1;
                Some(n.to_string())
            }
            Some(Tok::Str(s)) => {
                self.i += 1;
                Some(s.clone())
            }
            _ => None,
        }
    }
    fn done(&self) -> bool {
        self.i == self.t.len()
    }
}

/// What a write does to a row given its current value.
enum Assign {
    Set(String),
    Append(String),
    Add(i64),
}

impl Assign {
    fn apply(&self, old: Option<&str>) -> String {
        match self {
            Assign::Set(v) => v.clone(),
            Assign::Append(x) => format!("{}{x}", old.unwrap_or("")),
            Assign::Add(n) => {
                (old.and_then(|o| o.parse::<i64>().ok()).unwrap_or(0) + n).to_string()
            }
        }
    }
}

/// `v = X`, `v = CONCAT(v, X)` or `v = v + N`.
fn assignment(c: &mut Cur) -> Option<Assign> {
    if !(c.word("v") && c.punct('=')) {
        return None;
    }
    if c.word("concat") {
        if !(c.punct('(') && c.word("v") && c.punct(',')) {
            return None;
        }
        let mut s = String::new();
        loop {
            s.push_str(&c.value()?);
            if c.punct(')') {
                return Some(Assign::Append(s));
            }
            if !c.punct(',') {
                return None;
            }
        }
    }
    if c.word("v") {
        if c.punct('+') {
            return Some(Assign::Add(c.int()?));
        }
        return None;
    }
    Some(Assign::Set(c.value()?))
}

/// `WHERE k = N`.
fn where_key(c: &mut Cur) -> Option<i64> {
    (c.word("where") && c.word("k") && c.punct('=')).then_some(())?;
    c.int()
}

/// The columns of a SELECT list over `k` and `v`.
fn select_list(c: &mut Cur) -> Option<Vec<String>> {
    if c.punct('*') {
        return Some(vec!["k".into(), "v".into()]);
    }
    let mut cols = Vec::new();
    loop {
        let w = c.ident()?;
        if w != "k" && w != "v" {
            return None;
        }
        cols.push(w);
        if !c.punct(',') {
            return Some(cols);
        }
    }
}

/// A key range from `WHERE k = N`, `WHERE k >= A AND k < B`,
/// `WHERE k BETWEEN A AND B`, or no WHERE.
fn key_range(c: &mut Cur) -> Option<(i64, i64)> {
    if !c.word("where") {
        return Some((i64::MIN, i64::MAX));
    }
    if !c.word("k") {
        return None;
    }
    if c.punct('=') {
        let k = c.int()?;
        return Some((k, k));
    }
    if c.word("between") {
        let lo = c.int()?;
        c.word("and").then_some(())?;
        let hi = c.int()?;
        return Some((lo, hi));
    }
    (c.punct('>') && c.punct('=')).then_some(())?;
    let lo = c.int()?;
    (c.word("and") && c.word("k") && c.punct('<')).then_some(())?;
    let hi = c.int()?;
    Some((lo, hi - 1))
}

impl ConnState {
    /// Runs one statement of the COM_QUERY text `sql`.
    pub fn execute(&mut self, engine: &mut Engine, trace: &SharedTrace, sql: &str) -> Reply {
        let Some((toks, tag)) = tokenize(sql) else {
            return syntax(sql);
        };
        let kind = match toks.first() {
            Some(Tok::Word(w)) if w == "begin" => StmtKind::Begin,
            Some(Tok::Word(w)) if w == "start" => StmtKind::Begin,
            Some(Tok::Word(w)) if w == "commit" => StmtKind::Commit,
            Some(Tok::Word(w)) if w == "rollback" => StmtKind::Rollback,
            _ => StmtKind::Other,
        };
        // What the connection carried when the statement arrived.
        let owner_before = self
            .owner
            .clone()
            .or_else(|| self.tx.as_ref().and_then(|t| t.owner.clone()));
        let in_tx_before = self.tx.is_some();
        let reply = self.run(engine, &toks, tag.as_ref(), sql);
        if self.tx.is_none() {
            // An autocommit statement's row locks end with it, error or not.
            engine.release_locks(self.id);
        }
        if let (Some(tag), false) = (tag, reply == Reply::Blocked) {
            // A statement of the owning session itself is fine.
            let owner = owner_before.filter(|o| *o != tag.session);
            if let Ok(mut t) = trace.lock() {
                t.executed.push(Executed {
                    host: engine.host.clone(),
                    conn: self.id,
                    tag,
                    kind,
                    in_tx: in_tx_before || kind == StmtKind::Begin,
                    owner,
                    sql: sql.to_string(),
                });
            }
        }
        reply
    }

    fn run(&mut self, engine: &mut Engine, toks: &[Tok], tag: Option<&Tag>, sql: &str) -> Reply {
        let mut c = Cur { t: toks, i: 0 };
        if c.word("begin") || c.words(&["start", "transaction"]) {
            let implicit = self.commit(engine);
            self.tx = Some(Tx {
                tag: tag.cloned(),
                owner: tag.map(|t| t.session.clone()),
                ..Tx::default()
            });
            return implicit;
        }
        if c.word("commit") {
            return self.commit(engine);
        }
        if c.word("rollback") {
            self.tx = None;
            engine.release_locks(self.id);
            return ok(0);
        }
        if c.word("set") {
            if toks
                .iter()
                .any(|t| matches!(t, Tok::Word(w) if w.contains("session_track")))
            {
                self.tracking = true;
            }
            if let Some(tag) = tag {
                self.owner = Some(tag.session.clone());
            }
            return ok(0);
        }
        if c.word("do") {
            return ok(0);
        }
        if c.word("select") {
            return self.select(engine, &mut c, sql);
        }
        let write = if c.words(&["insert", "into"]) {
            self.insert(engine, &mut c, tag, false)
        } else if c.words(&["replace", "into"]) {
            self.insert(engine, &mut c, tag, true)
        } else if c.word("update") {
            self.update(engine, &mut c, tag)
        } else if c.words(&["delete", "from"]) {
            self.delete(engine, &mut c, tag)
        } else {
            None
        };
        write.unwrap_or_else(|| syntax(sql))
    }

    fn select(&mut self, engine: &mut Engine, c: &mut Cur, sql: &str) -> Reply {
        let one = |name: &str, v: String| Reply::Rows {
            columns: vec![name.to_string()],
            rows: vec![vec![Some(v)]],
        };
        if let Some(Tok::Word(w)) = c.t.get(c.i) {
            let st = &engine.storage;
            let value = match w.as_str() {
                "@@gtid_current_pos" | "@@gtid_binlog_pos" | "@@global.gtid_current_pos" => {
                    Some(st.current_pos())
                }
                "@@gtid_slave_pos" | "@@global.gtid_slave_pos" => Some(st.slave_pos_text()),
                "@@read_only" | "@@global.read_only" => Some((st.read_only as u8).to_string()),
                "@@server_id" => Some(st.server_id.to_string()),
                _ => None,
            };
            if let Some(v) = value {
                return one(w, v);
            }
        }
        if let Some(n) = c.int() {
            return one(&n.to_string(), n.to_string());
        }
        let Some(columns) = select_list(c) else {
            return syntax(sql);
        };
        let Some(table) = c.word("from").then(|| c.ident()).flatten() else {
            return syntax(sql);
        };
        let Some((lo, hi)) = key_range(c) else {
            return syntax(sql);
        };
        c.words(&["order", "by", "k"]);
        let for_update = c.words(&["for", "update"]) || c.words(&["lock", "in", "share", "mode"]);
        if !c.done() {
            return syntax(sql);
        }
        if for_update && lo == hi && !self.lock(engine, &table, lo) {
            return Reply::Blocked;
        }
        let mut view: BTreeMap<i64, String> = engine
            .storage
            .tables
            .get(&table)
            .map(|t| t.range(lo..=hi).map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default();
        if let Some(tx) = &self.tx {
            for ((t, k), v) in &tx.writes {
                if *t == table && (lo..=hi).contains(k) {
                    match v {
                        Some(v) => view.insert(*k, v.clone()),
                        None => view.remove(k),
                    };
                }
            }
        }
        let rows = view
            .into_iter()
            .map(|(k, v)| {
                columns
                    .iter()
                    .map(|col| Some(if col == "k" { k.to_string() } else { v.clone() }))
                    .collect()
            })
            .collect();
        Reply::Rows { columns, rows }
    }

    /// `INSERT|REPLACE INTO t [(k, v)] VALUES (N, X) [ON DUPLICATE KEY UPDATE v = …]`.
    fn insert(
        &mut self,
        engine: &mut Engine,
        c: &mut Cur,
        tag: Option<&Tag>,
        replace: bool,
    ) -> Option<Reply> {
        let table = c.ident()?;
        if c.punct('(') {
            (c.word("k") && c.punct(',') && c.word("v") && c.punct(')')).then_some(())?;
        }
        (c.word("values") && c.punct('(')).then_some(())?;
        let key = c.int()?;
        c.punct(',').then_some(())?;
        let value = c.value()?;
        c.punct(')').then_some(())?;
        let on_dup = if c.words(&["on", "duplicate", "key", "update"]) {
            Some(assignment(c)?)
        } else {
            None
        };
        c.done().then_some(())?;
        if !self.lock(engine, &table, key) {
            return Some(Reply::Blocked);
        }
        let old = self.read(engine, &table, key);
        let new = match (&old, on_dup, replace) {
            (None, _, _) | (Some(_), _, true) => value,
            (Some(o), Some(a), false) => a.apply(Some(o)),
            (Some(_), None, false) => {
                return Some(err(
                    1062,
                    format!("Duplicate entry '{key}' for key 'PRIMARY'"),
                ))
            }
        };
        Some(self.write(engine, tag, &table, key, Some(new)))
    }

    fn update(&mut self, engine: &mut Engine, c: &mut Cur, tag: Option<&Tag>) -> Option<Reply> {
        let table = c.ident()?;
        c.word("set").then_some(())?;
        let a = assignment(c)?;
        let key = where_key(c)?;
        c.done().then_some(())?;
        Some(self.change_existing(engine, tag, &table, key, |old| Some(a.apply(Some(old)))))
    }

    fn delete(&mut self, engine: &mut Engine, c: &mut Cur, tag: Option<&Tag>) -> Option<Reply> {
        let table = c.ident()?;
        let key = where_key(c)?;
        c.done().then_some(())?;
        Some(self.change_existing(engine, tag, &table, key, |_| None))
    }

    /// UPDATE and DELETE by key: lock the row, then replace it with `new(old)`
    /// (`None` deletes it); no row, nothing changed.
    fn change_existing(
        &mut self,
        engine: &mut Engine,
        tag: Option<&Tag>,
        table: &str,
        key: i64,
        new: impl FnOnce(&str) -> Option<String>,
    ) -> Reply {
        if !self.lock(engine, table, key) {
            return Reply::Blocked;
        }
        match self.read(engine, table, key) {
            None => ok(0),
            Some(old) => {
                let value = new(&old);
                self.write(engine, tag, table, key, value)
            }
        }
    }

    /// Takes the row lock; `false` while another connection holds it.
    fn lock(&mut self, engine: &mut Engine, table: &str, key: i64) -> bool {
        let holder = *engine
            .locks
            .entry((table.to_string(), key))
            .or_insert(self.id);
        holder == self.id
    }

    fn read(&self, engine: &Engine, table: &str, key: i64) -> Option<String> {
        if let Some(v) = self
            .tx
            .as_ref()
            .and_then(|t| t.writes.get(&(table.to_string(), key)))
        {
            return v.clone();
        }
        engine.storage.tables.get(table)?.get(&key).cloned()
    }

    fn write(
        &mut self,
        engine: &mut Engine,
        tag: Option<&Tag>,
        table: &str,
        key: i64,
        value: Option<String>,
    ) -> Reply {
        match &mut self.tx {
            Some(tx) => {
                tx.writes.insert((table.to_string(), key), value);
                ok(1)
            }
            None => {
                let change = Change {
                    table: table.to_string(),
                    key,
                    value,
                };
                let commit = engine.storage.commit(tag.cloned(), vec![change]);
                engine.release_locks(self.id);
                Reply::Ok {
                    affected: 1,
                    gtid: Some(commit.gtid()),
                    seq: Some(commit.seq),
                }
            }
        }
    }

    fn commit(&mut self, engine: &mut Engine) -> Reply {
        let Some(tx) = self.tx.take() else {
            return ok(0);
        };
        engine.release_locks(self.id);
        if tx.writes.is_empty() {
            return ok(0);
        }
        let changes = tx
            .writes
            .into_iter()
            .map(|((table, key), value)| Change { table, key, value })
            .collect();
        let commit = engine.storage.commit(tx.tag, changes);
        Reply::Ok {
            affected: 0,
            gtid: Some(commit.gtid()),
            seq: Some(commit.seq),
        }
    }
}

/// How long a statement waits for a row lock before error 1205.
pub const LOCK_WAIT: Duration = Duration::from_millis(1000);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(e: &mut Engine, c: &mut ConnState, sql: &str) -> Reply {
        c.execute(e, &SharedTrace::default(), sql)
    }

    fn rows(r: Reply) -> Vec<Vec<Option<String>>> {
        match r {
            Reply::Rows { rows, .. } => rows,
            other => panic!("not rows: {other:?}"),
        }
    }

    #[test]
    fn writes_reads_and_the_binlog() {
        let mut e = Engine::new("db", 1, false);
        let mut c = ConnState::new(1);
        assert!(matches!(
            run(
                &mut e,
                &mut c,
                "/* sim c0.1 7 */ INSERT INTO `kv_0001` (k, v) VALUES (5, 'a')"
            ),
            Reply::Ok { affected: 1, .. }
        ));
        assert!(matches!(
            run(&mut e, &mut c, "INSERT INTO kv_0001 VALUES (5, 'b')"),
            Reply::Err { code: 1062, .. }
        ));
        run(
            &mut e,
            &mut c,
            "UPDATE kv_0001 SET v = CONCAT(v, ',', 'x') WHERE k = 5",
        );
        assert_eq!(
            rows(run(&mut e, &mut c, "SELECT v FROM kv_0001 WHERE k = 5")),
            vec![vec![Some("a,x".to_string())]]
        );
        run(
            &mut e,
            &mut c,
            "INSERT INTO n VALUES (-3, 1) ON DUPLICATE KEY UPDATE v = v + 1",
        );
        run(
            &mut e,
            &mut c,
            "INSERT INTO n VALUES (-3, 1) ON DUPLICATE KEY UPDATE v = v + 1",
        );
        assert_eq!(
            rows(run(
                &mut e,
                &mut c,
                "SELECT k, v FROM n WHERE k >= -5 AND k < 0 ORDER BY k"
            )),
            vec![vec![Some("-3".to_string()), Some("2".to_string())]]
        );
        assert_eq!(e.storage.binlog.len(), 4);
        assert_eq!(e.storage.binlog[0].tag.as_ref().map(|t| t.op), Some(7));
        assert_eq!(e.storage.current_pos(), "0-1-4");
    }

    #[test]
    fn transactions_lock_rows_and_commit_atomically() {
        let mut e = Engine::new("db", 1, false);
        let (mut a, mut b) = (ConnState::new(1), ConnState::new(2));
        run(&mut e, &mut a, "BEGIN");
        run(&mut e, &mut a, "SELECT v FROM c WHERE k = 1 FOR UPDATE");
        run(&mut e, &mut a, "REPLACE INTO c VALUES (1, 1)");
        assert_eq!(
            run(&mut e, &mut b, "SELECT v FROM c WHERE k = 1 FOR UPDATE"),
            Reply::Blocked
        );
        assert!(rows(run(&mut e, &mut b, "SELECT v FROM c WHERE k = 1")).is_empty());
        assert!(matches!(
            run(&mut e, &mut a, "COMMIT"),
            Reply::Ok { seq: Some(1), .. }
        ));
        assert_eq!(
            rows(run(
                &mut e,
                &mut b,
                "SELECT v FROM c WHERE k = 1 FOR UPDATE"
            )),
            vec![vec![Some("1".to_string())]]
        );
        a.reset(&mut e);
        b.reset(&mut e);
        run(&mut e, &mut a, "BEGIN");
        run(&mut e, &mut a, "REPLACE INTO c VALUES (2, 1)");
        run(&mut e, &mut a, "ROLLBACK");
        assert_eq!(e.storage.binlog.len(), 1);
    }

    #[test]
    fn the_trace_names_the_owner_of_a_dirty_connection() {
        let mut e = Engine::new("db", 1, false);
        let trace = SharedTrace::default();
        let mut c = ConnState::new(1);
        c.execute(&mut e, &trace, "/* sim c0.1 1 */ SET @x = 1");
        c.execute(
            &mut e,
            &trace,
            "/* sim c0.1 2 */ SELECT v FROM t WHERE k = 1",
        );
        c.execute(
            &mut e,
            &trace,
            "/* sim c1.1 3 */ SELECT v FROM t WHERE k = 1",
        );
        c.reset(&mut e);
        c.execute(
            &mut e,
            &trace,
            "/* sim c1.1 4 */ SELECT v FROM t WHERE k = 1",
        );
        let owners: Vec<_> = trace
            .lock()
            .unwrap()
            .executed
            .iter()
            .map(|x| x.owner.clone())
            .collect();
        assert_eq!(owners, vec![None, None, Some("c0.1".to_string()), None]);
    }
}
