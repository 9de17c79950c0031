//! SELECT over a sharded table: one sub-table when the key pins it, else a
//! fan-out whose shard query carries what the merge needs (hidden sort and
//! group columns, SUM and COUNT for AVG, `LIMIT offset+n`), and refusals for
//! shapes that cannot be merged correctly.

use std::ops::{ControlFlow, Range};

use sqlparser::tokenizer::Token;

use sqlparser::ast::{
    visit_expressions, visit_relations, BinaryOperator, Distinct, DuplicateTreatment, Expr,
    FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, JoinConstraint, JoinOperator,
    LimitClause, ObjectNamePart, OrderByKind, OrderBySort, Query, Select, SelectItem, SetExpr,
    Statement, UnaryOperator, Value,
};

use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use crate::merge::{Agg, CmpOp, Having, MergeSpec, Operand, SortKey};
use crate::shard::{IndexSet, ShardedTable};

use super::keys::{
    column_qualifiers, literal, rename_use, requalify, shard_text, table_uses, KeyColumn, Naming,
    TableUse,
};
use super::text::{is_keyword, Edits, Source, Tokens};
use super::{refuse, table_ident, Access, Part, Plan, Router, ScatterMerge, ScatterPlan};

/// Statements that name a sharded table anywhere (subqueries included).
pub fn count_sharded<V: sqlparser::ast::Visit>(router: &Router, v: &V) -> usize {
    let mut n = 0;
    let _ = visit_relations(v, |name| {
        if table_ident(name).is_some_and(|i| router.schema.sharded(&i.value).is_some()) {
            n += 1;
        }
        ControlFlow::<()>::Continue(())
    });
    n
}

pub fn plan_query(
    router: &Router,
    src: &Source,
    stmt: &Statement,
    q: &Query,
    locking: bool,
) -> Option<Plan> {
    let sql = src.sql();
    let sharded_refs = count_sharded(router, q);
    if sharded_refs == 0 {
        return None;
    }
    let access = if locking { Access::Write } else { Access::Read };
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return Some(refuse(
            "UNION, INTERSECT and EXCEPT over a sharded table are not supported; query each part separately",
        ));
    };
    if q.with.is_some() {
        return Some(refuse(
            "WITH (common table expressions) over a sharded table is not supported",
        ));
    }
    let uses = match table_uses(router, &sel.from) {
        Ok(u) => u,
        Err(what) => {
            return Some(refuse(format!(
                "{what} in a query over a sharded table is not supported"
            )))
        }
    };
    let sharded: Vec<&TableUse> = uses.iter().filter(|u| u.sharded.is_some()).collect();
    if sharded.len() > 1 {
        return Some(refuse(format!(
            "Joins between sharded tables ({}) are not supported; join with broadcast tables or query each table separately",
            sharded
                .iter()
                .map(|u| format!("`{}`", u.ident.value))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if sharded.is_empty() || sharded_refs > 1 {
        return Some(refuse(
            "A subquery over a sharded table is not supported; run it as its own statement",
        ));
    }
    let use_ = sharded[0];
    let table = use_.sharded.as_ref()?.clone();
    let key = KeyColumn {
        table: &table,
        qualifiers: vec![use_.qualifier().to_string()],
        src,
    };
    let n = table.sub_table_count();
    let mut targets = match &sel.selection {
        Some(w) => key.key_set(w).unwrap_or_else(|| IndexSet::full(n)),
        None => IndexSet::full(n),
    };
    if targets.count() == 0 {
        // No sub-table can hold a matching row; any one answers with the right columns.
        targets = IndexSet::single(n, 0);
    }
    let local_only: Vec<&TableUse> = uses
        .iter()
        .filter(|u| u.sharded.is_none() && !u.broadcast)
        .collect();
    let default = router.schema.default_node;
    if let Some(other) = local_only.first() {
        if targets.iter().any(|i| table.sub_tables[i].node != default) {
            return Some(refuse(format!(
                "`{}` is not sharded or broadcast and lives only on the default node, but `{}` rows are on other nodes; declare `{}` a broadcast table",
                other.ident.value, table.name, other.ident.value
            )));
        }
    }
    if targets.count() > 1 && src.is_shape() {
        return None; // a fan-out is planned from the statement's own parse
    }
    let index = src;
    let qualifiers = column_qualifiers(sql, stmt);
    if src.is_shape() && qualifiers.iter().any(|q| q.len() == 2) {
        return None; // labels are kept from the statement's own parse
    }
    let mut common = Edits::default();
    if requalify(&mut common, index, &qualifiers, use_, "", Naming::Alias).is_none() {
        return Some(refuse(
            "a qualified column of a sharded table could not be located for rewriting",
        ));
    }
    if qualifiers.iter().any(|q| q.len() == 2) {
        // Best effort: without it only a column label differs.
        let _ = keep_labels(&mut common, sql, sel, use_);
    }
    if targets.count() == 1 {
        let i = targets.iter().next()?;
        let sub = &table.sub_tables[i];
        let mut edits = common;
        rename_use(&mut edits, index, use_, &sub.name, true)?;
        return Some(Plan::Single {
            node: sub.node,
            access,
            sql: Some(edits.apply(sql)?),
            table_names: vec![(sub.name.clone(), table.name.clone())],
        });
    }
    Some(
        match scatter_select(
            sql, index, common, q, sel, &uses, use_, &table, &key, &targets, access,
        ) {
            Ok(p) => Plan::Scatter(Box::new(p)),
            Err(message) => refuse(message),
        },
    )
}

/// Where a merged column comes from, before the hidden count is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Visible(usize),
    Hidden(usize),
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "group_concat",
    "std",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_arrayagg",
    "json_objectagg",
];

struct Planner<'a> {
    key: &'a KeyColumn<'a>,
    /// The sharded table's reference, for spelling added columns.
    use_: &'a TableUse<'a>,
    /// Projection items: expression, alias, aggregate.
    items: Vec<(Option<&'a Expr>, Option<String>, Option<Agg0>)>,
    wildcard: bool,
    hidden: Vec<String>,
    aggregates: Vec<(Col, Agg0)>,
}

/// An aggregate before column indexes are final.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Agg0 {
    Count,
    Sum,
    Min,
    Max,
    Avg { sum: Col, count: Col },
}

fn function_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Function(f) => match f.name.0.last()? {
            ObjectNamePart::Identifier(i) => Some(i.value.to_ascii_lowercase()),
            _ => None,
        },
        _ => None,
    }
}

impl<'a> Planner<'a> {
    fn add_hidden(&mut self, text: String) -> Col {
        if let Some(i) = self.hidden.iter().position(|h| *h == text) {
            return Col::Hidden(i);
        }
        self.hidden.push(text);
        Col::Hidden(self.hidden.len() - 1)
    }

    /// Classifies an aggregate call; `Ok(None)` for a plain expression.
    fn aggregate(&mut self, e: &Expr) -> Result<Option<Agg0>, String> {
        let Some(name) = function_name(e) else {
            return self.plain(e).map(|_| None);
        };
        let Expr::Function(f) = e else {
            return Ok(None);
        };
        if f.over.is_some() {
            return Err(format!(
                "Window functions ({}) across shards are not supported",
                name.to_uppercase()
            ));
        }
        if !AGGREGATES.contains(&name.as_str()) {
            return self.plain(e).map(|_| None);
        }
        let upper = name.to_uppercase();
        let FunctionArguments::List(list) = &f.args else {
            return Err(format!("{upper} without arguments cannot be merged"));
        };
        let distinct = list.duplicate_treatment == Some(DuplicateTreatment::Distinct);
        let arg = match list.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] => Some(a),
            [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if name == "count" => None,
            _ => {
                return Err(format!(
                    "{upper} with these arguments cannot be merged across shards"
                ))
            }
        };
        if let Some(a) = arg {
            self.plain(a)?;
        }
        let on_key = arg.is_some_and(|a| self.key.is_key(a));
        if distinct && !on_key && matches!(name.as_str(), "count" | "sum" | "avg") {
            return Err(format!(
                "{upper}(DISTINCT ...) across shards is only supported on the shard key `{}`",
                self.key.table.key
            ));
        }
        Ok(Some(match name.as_str() {
            "count" => Agg0::Count,
            "sum" => Agg0::Sum,
            "min" => Agg0::Min,
            "max" => Agg0::Max,
            "avg" => {
                let a = arg
                    .map(|a| shard_text(self.use_, a))
                    .unwrap_or_else(|| "*".into());
                let d = if distinct { "DISTINCT " } else { "" };
                let sum = self.add_hidden(format!("SUM({d}{a})"));
                let count = self.add_hidden(format!("COUNT({d}{a})"));
                Agg0::Avg { sum, count }
            }
            _ => {
                return Err(format!(
                    "{upper} across shards is not supported; only COUNT, SUM, MIN, MAX and AVG are merged"
                ))
            }
        }))
    }

    /// A non-aggregate expression must not hide aggregates or window functions.
    fn plain(&self, e: &Expr) -> Result<(), String> {
        let mut bad = None;
        let _ = visit_expressions(e, |x| {
            if let Some(name) = function_name(x) {
                if let Expr::Function(f) = x {
                    if f.over.is_some() {
                        bad = Some(format!(
                            "Window functions ({}) across shards are not supported",
                            name.to_uppercase()
                        ));
                        return ControlFlow::Break(());
                    }
                }
                if AGGREGATES.contains(&name.as_str()) {
                    bad = Some(format!(
                        "Expressions over aggregates (`{e}`) across shards are not supported; select the aggregate itself"
                    ));
                    return ControlFlow::Break(());
                }
            }
            if matches!(
                x,
                Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. }
            ) {
                bad = Some("Subqueries in a query over a sharded table are not supported".into());
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        bad.map_or(Ok(()), Err)
    }

    /// The column an ORDER BY / GROUP BY / HAVING expression refers to: a
    /// position, an alias, an equal projection item, or a new hidden column.
    fn resolve(&mut self, e: &Expr, allow_aggregate: bool) -> Result<Col, String> {
        if let Expr::Value(v) = e {
            if let Value::Number(n, _) = &v.value {
                let pos: usize = n
                    .parse()
                    .map_err(|_| format!("`{n}` is not a column position"))?;
                if self.wildcard {
                    return Err("ORDER BY or GROUP BY position with SELECT * across shards is not supported; name the column".into());
                }
                if pos == 0 || pos > self.items.len() {
                    return Err(format!("Unknown column '{pos}' in 'order clause'"));
                }
                return Ok(Col::Visible(pos - 1));
            }
        }
        if let Expr::Identifier(id) = e {
            if let Some(i) = self.items.iter().position(|(_, alias, _)| {
                alias
                    .as_deref()
                    .is_some_and(|a| a.eq_ignore_ascii_case(&id.value))
            }) {
                return Ok(Col::Visible(i));
            }
        }
        if !self.wildcard {
            if let Some(i) = self.items.iter().position(|(x, _, _)| *x == Some(e)) {
                return Ok(Col::Visible(i));
            }
        }
        match self.aggregate(e)? {
            Some(agg) if allow_aggregate => {
                let col = self.add_hidden(shard_text(self.use_, e));
                if !self.aggregates.iter().any(|(c, _)| *c == col) {
                    self.aggregates.push((col, agg));
                }
                Ok(col)
            }
            Some(_) => Err(format!("Aggregate `{e}` is not allowed here")),
            None => Ok(self.add_hidden(shard_text(self.use_, e))),
        }
    }

    fn having(&mut self, e: &Expr) -> Result<Having0, String> {
        let unsupported = || {
            format!("HAVING `{e}` across shards is not supported; use comparisons of aggregates, grouped columns and constants")
        };
        match e {
            Expr::Nested(x) => self.having(x),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Ok(Having0::Not(Box::new(self.having(expr)?))),
            Expr::BinaryOp { left, op, right } => {
                let cmp = match op {
                    BinaryOperator::And => {
                        return Ok(Having0::And(
                            Box::new(self.having(left)?),
                            Box::new(self.having(right)?),
                        ))
                    }
                    BinaryOperator::Or => {
                        return Ok(Having0::Or(
                            Box::new(self.having(left)?),
                            Box::new(self.having(right)?),
                        ))
                    }
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::Ne,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::Le,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::Ge,
                    _ => return Err(unsupported()),
                };
                Ok(Having0::Cmp(self.operand(left)?, cmp, self.operand(right)?))
            }
            _ => Err(unsupported()),
        }
    }

    fn operand(&mut self, e: &Expr) -> Result<Operand0, String> {
        match literal(e, self.key.src) {
            Some(crate::shard::Literal::Number(n)) => Ok(Operand0::Number(n)),
            Some(crate::shard::Literal::Str(s)) => Ok(Operand0::Str(s)),
            Some(crate::shard::Literal::Null) => {
                Err("HAVING with NULL across shards is not supported".into())
            }
            None => Ok(Operand0::Column(self.resolve(e, true)?)),
        }
    }
}

enum Having0 {
    Cmp(Operand0, CmpOp, Operand0),
    And(Box<Having0>, Box<Having0>),
    Or(Box<Having0>, Box<Having0>),
    Not(Box<Having0>),
}

enum Operand0 {
    Column(Col),
    Number(String),
    Str(String),
}

#[allow(clippy::too_many_arguments)]
fn scatter_select(
    sql: &str,
    index: &Source,
    mut common: Edits,
    q: &Query,
    sel: &Select,
    uses: &[TableUse],
    use_: &TableUse,
    table: &ShardedTable,
    key: &KeyColumn,
    targets: &IndexSet,
    access: Access,
) -> Result<ScatterPlan, String> {
    let mut p = Planner {
        key,
        use_,
        items: Vec::new(),
        wildcard: false,
        hidden: Vec::new(),
        aggregates: Vec::new(),
    };
    // Projection.
    let mut item_aggs = Vec::new();
    for item in &sel.projection {
        match item {
            SelectItem::UnnamedExpr(e) => {
                let agg = p.aggregate(e)?;
                item_aggs.push(agg.clone());
                p.items.push((Some(e), None, agg));
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                let agg = p.aggregate(expr)?;
                item_aggs.push(agg.clone());
                p.items.push((Some(expr), Some(alias.value.clone()), agg));
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                p.wildcard = true;
                item_aggs.push(None);
                p.items.push((None, None, None));
            }
            _ => return Err("This select list cannot be merged across shards".into()),
        }
    }
    for (i, agg) in item_aggs.iter().enumerate() {
        if let Some(a) = agg {
            p.aggregates.push((Col::Visible(i), a.clone()));
        }
    }
    // GROUP BY.
    let group_exprs: &[Expr] = match &sel.group_by {
        GroupByExpr::Expressions(exprs, modifiers) => {
            if !modifiers.is_empty() {
                return Err("GROUP BY ... WITH ROLLUP across shards is not supported".into());
            }
            exprs
        }
        GroupByExpr::All(_) => return Err("GROUP BY ALL is not supported".into()),
    };
    let mut group_by = Vec::new();
    for g in group_exprs {
        p.plain(g)?;
        group_by.push(p.resolve(g, false)?);
    }
    let grouped = !group_exprs.is_empty() || !p.aggregates.is_empty();
    if grouped && p.wildcard {
        return Err(
            "SELECT * with aggregates or GROUP BY across shards is not supported; name the columns"
                .into(),
        );
    }
    // HAVING.
    let having = match &sel.having {
        Some(h) => Some(p.having(h)?),
        None => None,
    };
    // ORDER BY.
    let mut order_by = Vec::new();
    if let Some(ob) = &q.order_by {
        let OrderByKind::Expressions(exprs) = &ob.kind else {
            return Err("ORDER BY ALL is not supported".into());
        };
        for o in exprs {
            if o.options.nulls_first.is_some() {
                return Err("NULLS FIRST/LAST is not supported".into());
            }
            let desc = matches!(o.options.sort, Some(OrderBySort::Desc));
            let col = p.resolve(&o.expr, grouped)?;
            order_by.push((col, desc));
        }
    }
    // LIMIT.
    let (offset, limit) = match &q.limit_clause {
        None => (0, None),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err("LIMIT BY is not supported".into());
            }
            let l = match limit {
                Some(e) => Some(number(e)?),
                None => None,
            };
            let o = match offset {
                Some(o) => number(&o.value)?,
                None => 0,
            };
            (o, l)
        }
        Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
            (number(offset)?, Some(number(limit)?))
        }
    };
    if sel
        .distinct
        .as_ref()
        .is_some_and(|d| !matches!(d, Distinct::Distinct | Distinct::All))
    {
        return Err("DISTINCT ON is not supported".into());
    }
    let distinct = matches!(sel.distinct, Some(Distinct::Distinct));
    if sel.into.is_some() {
        return Err("SELECT ... INTO across shards is not supported".into());
    }

    // Shard query text.
    let tokens = Tokens::new(sql).ok_or("the statement could not be tokenised")?;
    if !p.hidden.is_empty() {
        let at = projection_start(&tokens).ok_or("the select list could not be located")?;
        // `SELECT(e)` has no space to keep the hidden columns off the keyword.
        let mut text = if sql[..at].ends_with(char::is_whitespace) {
            String::new()
        } else {
            " ".to_string()
        };
        text.push_str(&p.hidden.join(", "));
        text.push_str(", ");
        common.insert(at, text);
        // MariaDB takes a bare `*` only first in the list: after the hidden
        // columns it must name its tables (`t.*` for each, in FROM order).
        for item in &sel.projection {
            if let SelectItem::Wildcard(w) = item {
                let coalescing = sel.from.iter().flat_map(|f| &f.joins).any(|j| {
                    join_constraint(&j.join_operator).is_some_and(|c| {
                        matches!(c, JoinConstraint::Using(_) | JoinConstraint::Natural)
                    })
                });
                if coalescing {
                    return Err("SELECT * over a join with USING or NATURAL across shards is not supported with this ORDER BY or GROUP BY; name the columns".into());
                }
                let r = index
                    .range(w.wildcard_token.0.span)
                    .ok_or("the select list could not be located")?;
                let tables: Vec<String> = uses
                    .iter()
                    .map(|u| format!("{}.*", super::quoted(u.qualifier(), Some('`'))))
                    .collect();
                common.replace(r, tables.join(", "));
            }
        }
    }
    if sel.having.is_some() {
        let r = tokens
            .clause(
                "having",
                &[
                    "order",
                    "limit",
                    "window",
                    "for",
                    "lock",
                    "into",
                    "procedure",
                ],
            )
            .ok_or("the HAVING clause could not be located")?;
        common.replace(r, "");
    }
    if q.limit_clause.is_some() {
        let r = tokens
            .clause("limit", &["for", "lock", "into", "procedure"])
            .ok_or("the LIMIT clause could not be located")?;
        let pushed = if grouped || distinct {
            String::new()
        } else {
            match limit {
                Some(l) => format!("LIMIT {}", offset.saturating_add(l)),
                None => String::new(),
            }
        };
        common.replace(r, pushed);
    }

    let h = p.hidden.len();
    let abs = |c: Col| match c {
        Col::Hidden(i) => i,
        Col::Visible(i) => h + i,
    };
    let aggregates = p
        .aggregates
        .iter()
        .map(|(c, a)| {
            (
                abs(*c),
                match a {
                    Agg0::Count => Agg::Count,
                    Agg0::Sum => Agg::Sum,
                    Agg0::Min => Agg::Min,
                    Agg0::Max => Agg::Max,
                    Agg0::Avg { sum, count } => Agg::Avg {
                        sum: abs(*sum),
                        count: abs(*count),
                    },
                },
            )
        })
        .collect();
    fn finish_having(h0: Having0, abs: &dyn Fn(Col) -> usize) -> Having {
        let op = |o: Operand0| match o {
            Operand0::Column(c) => Operand::Column(abs(c)),
            Operand0::Number(n) => Operand::Number(n),
            Operand0::Str(s) => Operand::Str(s),
        };
        match h0 {
            Having0::Cmp(a, c, b) => Having::Cmp(op(a), c, op(b)),
            Having0::And(a, b) => Having::And(
                Box::new(finish_having(*a, abs)),
                Box::new(finish_having(*b, abs)),
            ),
            Having0::Or(a, b) => Having::Or(
                Box::new(finish_having(*a, abs)),
                Box::new(finish_having(*b, abs)),
            ),
            Having0::Not(a) => Having::Not(Box::new(finish_having(*a, abs))),
        }
    }
    let spec = MergeSpec {
        hidden: h,
        aggregates,
        grouped,
        group_by: group_by.into_iter().map(abs).collect(),
        having: having.map(|x| finish_having(x, &abs)),
        distinct,
        order_by: order_by
            .into_iter()
            .map(|(c, desc)| SortKey {
                column: abs(c),
                desc,
            })
            .collect(),
        offset,
        limit,
        table_names: targets
            .iter()
            .map(|i| (table.sub_tables[i].name.clone(), table.name.clone()))
            .collect(),
    };
    let mut parts = Vec::new();
    for i in targets.iter() {
        let sub = &table.sub_tables[i];
        let mut edits = common.clone();
        rename_use(&mut edits, index, use_, &sub.name, true)
            .ok_or("the table name could not be located")?;
        parts.push(Part {
            node: sub.node,
            sql: edits
                .apply(sql)
                .ok_or("the statement could not be rewritten")?,
        });
    }
    // The shard query is the client's text with hidden columns spliced in
    // and clauses cut; where sqlparser read the client's text more loosely
    // than MariaDB would, the splice can go wrong. The parts differ only in
    // table names, so one parse tells for all: never send a mangled query.
    if let Some(first) = parts.first() {
        if Parser::parse_sql(&MySqlDialect {}, &first.sql).is_err() {
            return Err("This query could not be rewritten for the sub-tables; simplify it or add a shard-key condition".into());
        }
    }
    Ok(ScatterPlan {
        parts,
        access,
        merge: ScatterMerge::Rows(Box::new(spec)),
    })
}

fn number(e: &Expr) -> Result<u64, String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse()
                .map_err(|_| format!("LIMIT `{n}` is not a whole number")),
            _ => Err(format!("LIMIT `{e}` across shards must be a number")),
        },
        _ => Err(format!("LIMIT `{e}` across shards must be a number")),
    }
}

/// Token index of the first select-list item: after SELECT and its modifiers.
fn projection_first(tokens: &Tokens) -> Option<usize> {
    const MODIFIERS: &[&str] = &[
        "all",
        "distinct",
        "distinctrow",
        "high_priority",
        "straight_join",
        "sql_small_result",
        "sql_big_result",
        "sql_buffer_result",
        "sql_no_cache",
        "sql_cache",
        "sql_calc_found_rows",
    ];
    let select = tokens.find_keyword("select", 0)?;
    tokens.tokens[select + 1..]
        .iter()
        .position(|(t, _, _)| !MODIFIERS.iter().any(|m| is_keyword(t, m)))
        .map(|i| select + 1 + i)
}

/// Byte offset of the first select-list item.
fn projection_start(tokens: &Tokens) -> Option<usize> {
    projection_first(tokens).map(|i| tokens.tokens[i].1.start)
}

/// Byte ranges of the select-list items, split at top-level commas up to
/// FROM (or INTO).
fn projection_items(tokens: &Tokens) -> Option<Vec<Range<usize>>> {
    let first = projection_first(tokens)?;
    let mut items = Vec::new();
    let mut current: Option<Range<usize>> = None;
    for (t, r, depth) in &tokens.tokens[first..] {
        if *depth == 0 {
            if is_keyword(t, "from") || is_keyword(t, "into") || *t == Token::SemiColon {
                break;
            }
            if *t == Token::Comma {
                items.push(current.take()?);
                continue;
            }
        }
        current = Some(match current {
            Some(c) => c.start..r.end,
            None => r.clone(),
        });
    }
    items.push(current?);
    Some(items)
}

/// MariaDB labels an unaliased expression with its text as written. Where
/// [`requalify`] drops a database part from one (`AVG(db.stu.x)` becomes
/// `AVG(stu.x)`), the shard query gets the original text as its alias, so
/// the column keeps its name. Plain column references are labelled by the
/// column name and need nothing.
fn keep_labels(edits: &mut Edits, sql: &str, sel: &Select, use_: &TableUse) -> Option<()> {
    let tokens = Tokens::new(sql)?;
    let items = projection_items(&tokens)?;
    if items.len() != sel.projection.len() {
        return None;
    }
    for (item, range) in sel.projection.iter().zip(items) {
        let SelectItem::UnnamedExpr(e) = item else {
            continue;
        };
        if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
            || shard_text(use_, e) == e.to_string()
        {
            continue;
        }
        let label = sql.get(range.clone())?;
        // Longer aliases are refused by MariaDB: the label then differs.
        if label.chars().count() <= 256 {
            edits.insert(
                range.end,
                format!(" AS {}", super::quoted(label, Some('`'))),
            );
        }
    }
    Some(())
}

fn join_constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::StraightJoin(c) => Some(c),
        _ => None,
    }
}
