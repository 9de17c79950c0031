//! Statement routing: which node and role a statement goes to, how it is
//! rewritten for sub-tables, and how a fan-out is merged.
//!
//! The router is pure: it reads SQL text and the routing snapshot and hands
//! back a [`Plan`]; the session carries it out. Statements that touch no
//! sharded or broadcast table are never parsed: a keyword look is enough to
//! split reads from writes, and the client's text goes out untouched.

mod blacklist;
pub mod cache;
mod keys;
mod select;
pub mod sequence;
pub mod text;
mod write;

use std::sync::Arc;

use sqlparser::ast::{ObjectName, ObjectNamePart, ShowCreateObject, Statement};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

pub use blacklist::{fingerprint, Blacklist};
pub use cache::{PlanCache, Shape};
pub use sequence::{Filled, SequenceInsert};
pub use text::Source;

use crate::merge::MergeSpec;
use crate::shard::Literal;
use crate::shard::Schema;
use crate::topology::Topology;

/// Reads may go to a replica; writes need the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// What to do with one statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// One node. `sql` is the rewritten text, `None` to send the client's own.
    Single {
        node: usize,
        access: Access,
        sql: Option<String>,
        /// Sub-tables the rewrite put in place of logical tables (physical,
        /// logical): the column metadata of the answer is renamed back, so
        /// `org_table` names the logical table. Empty when nothing was renamed.
        table_names: Vec<(String, String)>,
    },
    /// A statement bound to the session's connection (`LAST_INSERT_ID()`,
    /// `SHOW WARNINGS`, `SET`, user variables): it runs where the session
    /// ran last, or on the default node's primary.
    Sticky,
    /// Several sub-tables or nodes.
    Scatter(Box<ScatterPlan>),
    /// An INSERT whose sequence column Tessera fills: the session gets ids
    /// and [fills](SequenceInsert::fill) it into a `Single` or `Scatter` plan.
    Sequence(Box<SequenceInsert>),
    Begin,
    Commit,
    Rollback,
    /// `TESSERA EXPLAIN <statement>`: the plan as a result set.
    Explain(String),
    /// Refused with a MySQL error.
    Refuse {
        code: u16,
        message: String,
    },
}

/// How a prepared statement is routed.
#[derive(Debug, Clone)]
pub enum PreparedRoute {
    /// The same plan for every execute (no sharded or broadcast table, or refused).
    Fixed(Plan),
    /// Routed at each execute by its parameter values.
    Bound(Arc<BoundStatement>),
}

/// A prepared statement over sharded tables, parsed once.
#[derive(Debug)]
pub struct BoundStatement {
    /// The text that was parsed (the client's, minus a trailing `LOCK IN SHARE MODE`).
    sql: String,
    stmt: Statement,
    /// Byte offsets of the `?` in `sql`, in parameter order.
    placeholders: Vec<usize>,
    locking: bool,
    primary_hint: bool,
    lock_suffix: Option<&'static str>,
}

impl BoundStatement {
    /// Number of `?` parameters.
    pub fn params(&self) -> usize {
        self.placeholders.len()
    }
}

/// A fan-out: the parts run on their nodes (in order within a node).
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterPlan {
    pub parts: Vec<Part>,
    pub access: Access,
    pub merge: ScatterMerge,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub node: usize,
    pub sql: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScatterMerge {
    /// Result sets merged into one.
    Rows(Box<MergeSpec>),
    /// OK packets summed. `atomic`: each node's parts run in a transaction
    /// committed only when every part on every node succeeded.
    Writes { atomic: bool },
}

/// ER_UNKNOWN_ERROR: what MySQL proxies answer for routing refusals.
pub const ER_ROUTING: u16 = 1105;
/// ER_NOT_SUPPORTED_YET.
pub const ER_NOT_SUPPORTED: u16 = 1235;

pub(crate) fn refuse(message: impl Into<String>) -> Plan {
    Plan::Refuse {
        code: ER_NOT_SUPPORTED,
        message: message.into(),
    }
}

/// Routing hints written in a leading comment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Hints {
    primary: bool,
    node: Option<usize>,
}

/// The routing snapshot: topology, schema and blacklist.
#[derive(Debug, Clone)]
pub struct Router {
    pub topology: Arc<Topology>,
    pub schema: Arc<Schema>,
    pub blacklist: Arc<Blacklist>,
    /// Lower-case names of sharded and broadcast tables: a statement that
    /// mentions none of them needs no parse.
    watched: Vec<String>,
    /// Parsed statement shapes, shared by every session.
    pub cache: Arc<PlanCache>,
}

impl Router {
    pub fn new(topology: Arc<Topology>, schema: Arc<Schema>, blacklist: Arc<Blacklist>) -> Self {
        let mut watched: Vec<String> = schema.tables.keys().cloned().collect();
        watched.extend(schema.broadcast.iter().cloned());
        watched.sort();
        Self {
            topology,
            schema,
            blacklist,
            watched,
            cache: Arc::new(PlanCache::default()),
        }
    }

    /// A router for one node and no sharding (tests, simple setups).
    pub fn single(topology: Arc<Topology>) -> Self {
        let schema = Schema {
            default_node: topology.default_node,
            ..Default::default()
        };
        Self::new(topology, Arc::new(schema), Arc::new(Blacklist::default()))
    }

    pub fn default_node(&self) -> usize {
        self.schema.default_node
    }

    /// Plans one COM_QUERY statement.
    pub fn route(&self, sql: &str) -> Plan {
        self.route_with(sql, true)
    }

    /// As [`Router::route`], always parsing the statement as sent: the
    /// reference the plan cache is tested and measured against.
    pub fn route_uncached(&self, sql: &str) -> Plan {
        self.route_with(sql, false)
    }

    fn route_with(&self, sql: &str, use_cache: bool) -> Plan {
        let (hints, body) = self.hints(sql);
        let word = first_word(body);
        if word.eq_ignore_ascii_case("tessera") {
            let rest = body[word.len()..].trim_start();
            let w2 = first_word(rest);
            if w2.eq_ignore_ascii_case("explain") {
                return Plan::Explain(rest[w2.len()..].trim().to_string());
            }
            return refuse(format!(
                "Unknown Tessera statement `{}`; try TESSERA EXPLAIN <statement>",
                body.trim()
            ));
        }
        // `BEGIN; INSERT …; COMMIT` is not a BEGIN: the statements go as one.
        // Most queries have no `;` at all: a fast search spares them the scan.
        let several = body.contains(';') && text::statement_count(body) > 1;
        match word.to_ascii_lowercase().as_str() {
            _ if several => {}
            "begin" => return Plan::Begin,
            "start" if second_word(body).eq_ignore_ascii_case("transaction") => return Plan::Begin,
            "commit" => return Plan::Commit,
            "rollback" if !second_word(body).eq_ignore_ascii_case("to") => return Plan::Rollback,
            _ => {}
        }
        if let Some(why) = self.blacklist.check_text(sql) {
            return Plan::Refuse {
                code: ER_ROUTING,
                message: why,
            };
        }
        // Lower-cased once: the keyword checks and the table-name scan share it.
        let lower = body.to_ascii_lowercase();
        // Any of several statements may write: they go to a primary.
        let access = if several {
            Access::Write
        } else {
            keyword_access(word, &lower)
        };
        let default_node = hints.node.unwrap_or(self.schema.default_node);
        let simple = |access: Access| match access {
            _ if hints.node.is_none() && is_session_bound(word, &lower) => Plan::Sticky,
            Access::Read if hints.primary => Plan::Single {
                node: default_node,
                access: Access::Write,
                sql: None,
                table_names: Vec::new(),
            },
            access => Plan::Single {
                node: default_node,
                access,
                sql: None,
                table_names: Vec::new(),
            },
        };
        if word.eq_ignore_ascii_case("load") {
            if let Some(table) = self.load_data_target(&lower) {
                return refuse(format!(
                    "LOAD DATA into sharded `{table}` is not supported: Tessera cannot split a file by shard key; load it with INSERT statements or into each sub-table directly"
                ));
            }
        }
        let checks_writes = self.blacklist.checks_unfiltered_writes()
            && (word.eq_ignore_ascii_case("update") || word.eq_ignore_ascii_case("delete"));
        if hints.node.is_some() || (!checks_writes && !self.mentions_watched(&lower)) {
            return simple(access);
        }
        let (parse_text, lock_suffix) = split_lock_in_share_mode(sql);
        let locking = lock_suffix.is_some() || access == Access::Write;
        let cached = use_cache
            .then(|| self.plan_from_shape(parse_text, locking))
            .flatten();
        let plan = match cached {
            Some(plan) => plan,
            None => {
                let statements = match Parser::parse_sql(&MySqlDialect {}, parse_text) {
                    Ok(s) => s,
                    // Unparsed statements are still served, where they would go unsharded.
                    Err(_) => return simple(access),
                };
                if statements.len() != 1 {
                    if self.mentions_watched(&lower) {
                        return refuse(
                            "Multi-statement queries over sharded or broadcast tables are not supported; send the statements one by one",
                        );
                    }
                    return simple(access);
                }
                let stmt = &statements[0];
                if let Some(why) = self.blacklist.check_statement(stmt) {
                    return Plan::Refuse {
                        code: ER_ROUTING,
                        message: why,
                    };
                }
                self.plan_statement(&Source::plain(parse_text), stmt, locking)
                    .unwrap_or_else(|| simple(access))
            }
        };
        finish(plan, hints.primary, lock_suffix)
    }

    /// Plans a COM_STMT_PREPARE. A statement over sharded or broadcast tables
    /// is parsed once here and routed at each execute with its parameter
    /// values ([`Router::route_bound`]); anything else gets its plan now.
    pub fn route_prepare(&self, sql: &str) -> PreparedRoute {
        let plan = self.route_uncached(sql);
        let lower = sql.to_ascii_lowercase();
        let touches_sharded = matches!(
            plan,
            Plan::Single { sql: Some(_), .. } | Plan::Scatter(_) | Plan::Refuse { .. }
        ) && self.mentions_watched(&lower);
        if !touches_sharded {
            return PreparedRoute::Fixed(plan);
        }
        let (hints, body) = self.hints(sql);
        let (parse_text, lock_suffix) = split_lock_in_share_mode(sql);
        let parsed = Parser::parse_sql(&MySqlDialect {}, parse_text).ok();
        let offsets = text::placeholder_offsets(parse_text);
        let (Some(mut statements), Some(placeholders)) = (parsed, offsets) else {
            return PreparedRoute::Fixed(refuse(
                "This prepared statement over a sharded table could not be read; send it as text",
            ));
        };
        if statements.len() != 1 {
            return PreparedRoute::Fixed(refuse(
                "A prepared statement over a sharded table must be exactly one statement",
            ));
        }
        let access = keyword_access(first_word(body), &lower);
        PreparedRoute::Bound(Arc::new(BoundStatement {
            sql: parse_text.to_string(),
            stmt: statements.remove(0),
            placeholders,
            locking: lock_suffix.is_some() || access == Access::Write,
            primary_hint: hints.primary,
            lock_suffix,
        }))
    }

    /// A plan to prepare the statement by before any values are known: the
    /// one for NULL parameters, else for zeros (a range table may not hold
    /// NULL), else for ones (a sequence fills NULL and 0 keys); the last
    /// refusal when none can be planned.
    pub fn route_representative(&self, b: &BoundStatement) -> Plan {
        let mut plan = Plan::Sticky;
        for value in [
            Literal::Null,
            Literal::Number("0".into()),
            Literal::Number("1".into()),
        ] {
            plan = self.route_bound(b, &vec![value; b.params()]);
            if !matches!(plan, Plan::Refuse { .. } | Plan::Sequence(_)) {
                break;
            }
        }
        plan
    }

    /// Plans one execute of a prepared statement from its parameter values.
    pub fn route_bound(&self, b: &BoundStatement, values: &[Literal]) -> Plan {
        let src = Source::bound(&b.sql, &b.placeholders, values);
        let plan = self
            .plan_statement(&src, &b.stmt, b.locking)
            .unwrap_or_else(|| refuse("This prepared statement no longer touches a sharded table"));
        finish(plan, b.primary_hint, b.lock_suffix)
    }

    /// A single-target plan from the cached parse of the statement's shape;
    /// `None` when the statement has to be parsed as sent (no shape, a
    /// fan-out, a refusal, anything but one target).
    fn plan_from_shape(&self, sql: &str, locking: bool) -> Option<Plan> {
        let shape = Shape::of(sql)?;
        let stmt = self.cache.statement(&shape.text)?;
        if self.blacklist.check_statement(&stmt).is_some() {
            return None;
        }
        match self.plan_statement(&Source::shaped(sql, &shape), &stmt, locking)? {
            plan @ Plan::Single { .. } => Some(plan),
            _ => None,
        }
    }

    /// Plans a parsed statement over sharded or broadcast tables; `None`
    /// when it touches none of them.
    fn plan_statement(&self, src: &Source, stmt: &Statement, locking: bool) -> Option<Plan> {
        match stmt {
            Statement::Query(q) => select::plan_query(self, src, stmt, q, locking),
            Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::CreateTable(_)
            | Statement::AlterTable(_)
            | Statement::Drop { .. }
            | Statement::Truncate(_)
            | Statement::CreateIndex(_) => write::plan_write(self, src, stmt),
            Statement::ExplainTable { .. }
            | Statement::ShowCreate { .. }
            | Statement::ShowColumns { .. } => self.plan_describe(src, stmt),
            _ => None,
        }
    }

    /// `DESCRIBE`, `SHOW COLUMNS` and `SHOW CREATE TABLE` of a sharded
    /// table answer from its first sub-table: every sub-table has its columns.
    fn plan_describe(&self, src: &Source, stmt: &Statement) -> Option<Plan> {
        let name = match stmt {
            Statement::ExplainTable { table_name, .. } => table_name,
            Statement::ShowCreate {
                obj_type: ShowCreateObject::Table,
                obj_name,
            } => obj_name,
            Statement::ShowColumns { show_options, .. } => {
                show_options.show_in.as_ref()?.parent_name.as_ref()?
            }
            _ => return None,
        };
        let ident = table_ident(name)?;
        let sub = self.schema.sharded(&ident.value)?.sub_tables.first()?;
        let mut edits = text::Edits::default();
        edits.replace(src.range(ident.span)?, quoted(&sub.name, ident.quote_style));
        Some(Plan::Single {
            node: sub.node,
            access: Access::Read,
            sql: Some(edits.apply(src.sql())?),
            table_names: Vec::new(),
        })
    }

    /// The sharded table a `LOAD DATA … INTO TABLE t` fills, if it is one
    /// (sqlparser cannot parse LOAD DATA). `lower`: the statement in lower case.
    fn load_data_target(&self, lower: &str) -> Option<String> {
        let rest = &lower[lower.find("into table")? + "into table".len()..];
        let name = rest.split_whitespace().next()?;
        let table = name.rsplit('.').next()?.trim_matches('`');
        self.schema.sharded(table).map(|t| t.name.clone())
    }

    /// `lower`: the statement in lower case.
    fn mentions_watched(&self, lower: &str) -> bool {
        if self.watched.is_empty() {
            return false;
        }
        self.watched.iter().any(|w| lower.contains(w.as_str()))
    }

    /// Hints in comments before the statement or right after its first word:
    /// `/*master*/`, `/*+ master */`, `/*node2*/`.
    fn hints<'a>(&self, sql: &'a str) -> (Hints, &'a str) {
        let mut hints = Hints::default();
        let mut rest = sql.trim_start();
        let read_comment = |text: &str, hints: &mut Hints| {
            let t = text.trim().trim_start_matches('+').trim();
            if t.eq_ignore_ascii_case("master") || t.eq_ignore_ascii_case("primary") {
                hints.primary = true;
            } else if let Some(n) = self.topology.node_index(t) {
                hints.node = Some(n);
            }
        };
        while let Some(after) = rest.strip_prefix("/*") {
            if after.starts_with('!') {
                break;
            }
            let Some(end) = after.find("*/") else { break };
            read_comment(&after[..end], &mut hints);
            rest = after[end + 2..].trim_start();
        }
        let word = first_word(rest);
        let after_word = rest[word.len()..].trim_start();
        if let Some(after) = after_word.strip_prefix("/*") {
            if !after.starts_with('!') {
                if let Some(end) = after.find("*/") {
                    read_comment(&after[..end], &mut hints);
                }
            }
        }
        (hints, rest)
    }
}

fn first_word(s: &str) -> &str {
    let s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

fn second_word(s: &str) -> &str {
    let w = first_word(s);
    let start = s.find(w).map(|i| i + w.len()).unwrap_or(0);
    first_word(&s[start..])
}

/// Read or write from the statement's first word: SELECT-like statements
/// read unless they lock rows.
/// `lower`: the statement in lower case.
fn keyword_access(word: &str, lower: &str) -> Access {
    let w = word.to_ascii_lowercase();
    match w.as_str() {
        "select" | "with" | "values" | "table" => {
            if lower.contains(" for update")
                || lower.contains(" for share")
                || lower.contains("lock in share mode")
                || lower.contains(" into ")
            {
                Access::Write
            } else {
                Access::Read
            }
        }
        _ => Access::Write,
    }
}

/// Statements whose answer depends on the connection they run on.
/// `lower`: the statement in lower case.
fn is_session_bound(word: &str, lower: &str) -> bool {
    let w = word.to_ascii_lowercase();
    match w.as_str() {
        "show" | "set" | "use" | "do" | "prepare" | "execute" | "deallocate" | "savepoint"
        | "release" | "rollback" | "lock" | "unlock" | "xa" | "help" => true,
        "select" | "with" | "values" => {
            const BOUND: &[&str] = &[
                "last_insert_id",
                "found_rows",
                "row_count",
                "get_lock",
                "release_lock",
                "is_used_lock",
                "is_free_lock",
                "connection_id",
                "@@warning_count",
                "@@error_count",
                "@@identity",
                "@@last_insert_id",
            ];
            BOUND.iter().any(|b| lower.contains(b)) || has_user_variable(lower)
        }
        _ => false,
    }
}

/// `@name` (not `@@system`), outside quotes as far as a quick scan can tell.
fn has_user_variable(s: &str) -> bool {
    let b = s.as_bytes();
    let mut quote: Option<u8> = None;
    for i in 0..b.len() {
        let c = b[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' || c == b'`' => quote = Some(c),
            None if c == b'@' => {
                let prev_at = i > 0 && b[i - 1] == b'@';
                let next_at = b.get(i + 1) == Some(&b'@');
                if !prev_at && !next_at {
                    return true;
                }
            }
            None => {}
        }
    }
    false
}

/// sqlparser reads `FOR UPDATE` but not MySQL's `LOCK IN SHARE MODE`: parse
/// without it and put it back on the rewritten text.
fn split_lock_in_share_mode(sql: &str) -> (&str, Option<&'static str>) {
    let t = sql.trim_end().trim_end_matches(';').trim_end();
    let lower_tail = t
        .get(t.len().saturating_sub(18)..)
        .map(|s| s.to_ascii_lowercase());
    if lower_tail.as_deref() == Some("lock in share mode") {
        (&t[..t.len() - 18], Some("LOCK IN SHARE MODE"))
    } else {
        (sql, None)
    }
}

/// Applies what the parse did not see: a `/*master*/` hint and a stripped
/// `LOCK IN SHARE MODE`.
fn finish(plan: Plan, primary_hint: bool, lock_suffix: Option<&'static str>) -> Plan {
    let plan = match (plan, primary_hint) {
        (
            Plan::Single {
                node,
                access: Access::Read,
                sql,
                table_names,
            },
            true,
        ) => Plan::Single {
            node,
            access: Access::Write,
            sql,
            table_names,
        },
        (Plan::Scatter(mut s), true) => {
            s.access = Access::Write;
            Plan::Scatter(s)
        }
        (p, _) => p,
    };
    match (plan, lock_suffix) {
        (
            Plan::Single {
                node,
                sql: Some(s),
                table_names,
                ..
            },
            Some(suffix),
        ) => Plan::Single {
            node,
            access: Access::Write,
            sql: Some(format!("{s}{suffix}")),
            table_names,
        },
        (Plan::Scatter(mut s), Some(suffix)) => {
            for p in &mut s.parts {
                p.sql.push_str(suffix);
            }
            s.access = Access::Write;
            Plan::Scatter(s)
        }
        (p, _) => p,
    }
}

/// The table part of a possibly qualified name.
pub(crate) fn table_ident(name: &ObjectName) -> Option<&sqlparser::ast::Ident> {
    match name.0.last()? {
        ObjectNamePart::Identifier(i) => Some(i),
        _ => None,
    }
}

/// A sub-table name written the way the client wrote the logical one.
pub(crate) fn quoted(name: &str, quote: Option<char>) -> String {
    match quote {
        Some(_) => format!("`{}`", name.replace('`', "``")),
        None => name.to_string(),
    }
}

/// Renders a plan for `TESSERA EXPLAIN`: one row per target.
pub fn explain_rows(router: &Router, plan: &Plan) -> Vec<[String; 4]> {
    let node_name = |n: usize| {
        router
            .topology
            .nodes
            .get(n)
            .map(|x| x.name.clone())
            .unwrap_or_default()
    };
    let role = |a: Access| match a {
        Access::Read => "read (replica by weight)".to_string(),
        Access::Write => "primary".to_string(),
    };
    match plan {
        Plan::Single {
            node, access, sql, ..
        } => vec![[
            node_name(*node),
            role(*access),
            sql.clone().unwrap_or_else(|| "(statement as sent)".into()),
            "none".into(),
        ]],
        Plan::Sticky => vec![[
            "(session)".into(),
            "connection the session used last".into(),
            "(statement as sent)".into(),
            "none".into(),
        ]],
        Plan::Scatter(s) => {
            let merge = match &s.merge {
                ScatterMerge::Rows(m) => describe_merge(m),
                ScatterMerge::Writes { atomic: true } => {
                    "sum affected rows; commit on every node only if all parts succeed".into()
                }
                ScatterMerge::Writes { atomic: false } => "sum affected rows".into(),
            };
            s.parts
                .iter()
                .map(|p| {
                    [
                        node_name(p.node),
                        role(s.access),
                        p.sql.clone(),
                        merge.clone(),
                    ]
                })
                .collect()
        }
        Plan::Begin | Plan::Commit | Plan::Rollback => vec![[
            "(transaction node)".into(),
            "primary".into(),
            "(statement as sent)".into(),
            "transaction control".into(),
        ]],
        Plan::Sequence(seq) => seq.explain(&router.schema, node_name),
        Plan::Explain(_) => vec![],
        Plan::Refuse { code, message } => vec![[
            "(none)".into(),
            "refused".into(),
            format!("ERROR {code}: {message}"),
            "none".into(),
        ]],
    }
}

fn describe_merge(m: &MergeSpec) -> String {
    let mut steps = Vec::new();
    if m.grouped {
        steps.push(format!(
            "group by columns {:?} combining {:?}",
            m.group_by, m.aggregates
        ));
    }
    if m.having.is_some() {
        steps.push("HAVING on merged groups".into());
    }
    if m.distinct {
        steps.push("distinct".into());
    }
    let streamed = crate::merge::streamable(m);
    if !m.order_by.is_empty() {
        steps.push(format!(
            "{} by {}",
            if streamed {
                "k-way merge of the sorted parts, as rows arrive,"
            } else {
                "sort"
            },
            m.order_by
                .iter()
                .map(|k| format!("#{}{}", k.column + 1, if k.desc { " desc" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if m.offset > 0 || m.limit.is_some() {
        steps.push(format!("offset {} limit {:?}", m.offset, m.limit));
    }
    if m.hidden > 0 {
        steps.push(format!("drop {} hidden columns", m.hidden));
    }
    if steps.is_empty() {
        "concatenate as rows arrive".into()
    } else if streamed && m.order_by.is_empty() {
        format!("concatenate as rows arrive; {}", steps.join("; "))
    } else {
        steps.join("; ")
    }
}

#[cfg(test)]
pub(crate) mod tests;
