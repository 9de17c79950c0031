//! Writes and DDL over sharded and broadcast tables: INSERT rows split per
//! sub-table, UPDATE/DELETE routed by key (never changing the key), DDL
//! fanned out to every sub-table, broadcast writes sent to every node.

use sqlparser::ast::{
    AssignmentTarget, Expr, FromTable, ObjectName, ObjectNamePart, ObjectType, OnInsert, SetExpr,
    Spanned, Statement, TableObject,
};

use crate::shard::{IndexSet, Literal, ShardedTable};

use super::keys::{
    column_qualifiers, literal, rename_use, requalify, table_uses, KeyColumn, Naming, TableUse,
};
use super::select::count_sharded;
use super::sequence::{is_zero, Fill, SequenceInsert, TemplateRow};
use super::text::{Edits, Source};
use super::{quoted, refuse, table_ident, Access, Part, Plan, Router, ScatterMerge, ScatterPlan};

pub fn plan_write(router: &Router, src: &Source, stmt: &Statement) -> Option<Plan> {
    let sql = src.sql();
    let index = src;
    match stmt {
        Statement::Insert(ins) => {
            let TableObject::TableName(name) = &ins.table else {
                return None;
            };
            let ident = table_ident(name)?;
            if router.schema.is_broadcast(&ident.value) {
                if count_sharded(router, stmt) > 0 {
                    return Some(refuse(
                        "Filling a broadcast table from a sharded table is not supported",
                    ));
                }
                return Some(everywhere(router, sql, true));
            }
            let Some(table) = router.schema.sharded(&ident.value).cloned() else {
                if count_sharded(router, stmt) > 0 {
                    return Some(refuse(
                        "INSERT ... SELECT from a sharded table into another table is not supported",
                    ));
                }
                return None;
            };
            if name.0.len() > 2 || !matches!(name.0.first(), Some(ObjectNamePart::Identifier(_))) {
                return Some(refuse(
                    "a table name with more than a database and a table part is not supported",
                ));
            }
            if !column_qualifiers(sql, stmt).is_empty() {
                return Some(refuse(format!(
                    "Qualified column names (`{}.col`) in an INSERT into sharded `{}` are not supported; write the bare column names",
                    ident.value, table.name
                )));
            }
            Some(plan_insert(sql, index, ins, ident, &table).unwrap_or_else(refuse))
        }
        Statement::Update(upd) => {
            let uses = match table_uses(router, std::slice::from_ref(&upd.table)) {
                Ok(u) => u,
                Err(what) => return Some(refuse(format!("UPDATE with {what} is not supported"))),
            };
            let sharded: Vec<&TableUse> = uses.iter().filter(|u| u.sharded.is_some()).collect();
            if sharded.is_empty() {
                if count_sharded(router, stmt) > 0 {
                    return Some(refuse(
                        "A subquery over a sharded table is not supported in UPDATE",
                    ));
                }
                if uses.iter().all(|u| u.broadcast) && !uses.is_empty() {
                    return Some(everywhere(router, sql, true));
                }
                return None;
            }
            if sharded.len() > 1 || count_sharded(router, stmt) > 1 || upd.from.is_some() {
                return Some(refuse("UPDATE joining a sharded table with other sharded tables or subqueries over them is not supported"));
            }
            let use_ = sharded[0];
            let table = use_.sharded.clone()?;
            if uses.iter().any(|u| u.sharded.is_none() && !u.broadcast) {
                return Some(refuse(format!(
                    "UPDATE joining sharded `{}` with a table that is not broadcast is not supported",
                    table.name
                )));
            }
            let key = KeyColumn {
                table: &table,
                qualifiers: vec![use_.qualifier().to_string()],
                src,
            };
            for a in &upd.assignments {
                let cols: Vec<&ObjectName> = match &a.target {
                    AssignmentTarget::ColumnName(c) => vec![c],
                    AssignmentTarget::Tuple(cs) => cs.iter().collect(),
                };
                for c in cols {
                    if table_ident(c).is_some_and(|i| i.value.eq_ignore_ascii_case(&table.key)) {
                        return Some(changes_key(&table));
                    }
                }
            }
            let targets = targets_for(&key, upd.selection.as_ref());
            if targets.count() > 1 && (upd.limit.is_some() || !upd.order_by.is_empty()) {
                return Some(refuse(
                    "UPDATE ... ORDER BY/LIMIT that reaches several sub-tables is not supported; add a shard-key condition",
                ));
            }
            Some(per_sub_table(
                index,
                sql,
                use_,
                &table,
                &targets,
                Naming::Alias,
                &column_qualifiers(sql, stmt),
            ))
        }
        Statement::Delete(del) => {
            if !del.tables.is_empty() || del.using.is_some() {
                if count_sharded(router, stmt) > 0 {
                    return Some(refuse(
                        "Multi-table DELETE over a sharded table is not supported",
                    ));
                }
                return None;
            }
            let from = match &del.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
            };
            let uses = match table_uses(router, from) {
                Ok(u) => u,
                Err(what) => return Some(refuse(format!("DELETE with {what} is not supported"))),
            };
            let sharded: Vec<&TableUse> = uses.iter().filter(|u| u.sharded.is_some()).collect();
            if sharded.is_empty() {
                if count_sharded(router, stmt) > 0 {
                    return Some(refuse(
                        "A subquery over a sharded table is not supported in DELETE",
                    ));
                }
                if uses.len() == 1 && uses[0].broadcast {
                    return Some(everywhere(router, sql, true));
                }
                return None;
            }
            if uses.len() > 1 || count_sharded(router, stmt) > 1 {
                return Some(refuse("DELETE joining a sharded table is not supported"));
            }
            let use_ = sharded[0];
            let table = use_.sharded.clone()?;
            let key = KeyColumn {
                table: &table,
                qualifiers: vec![use_.qualifier().to_string()],
                src,
            };
            let targets = targets_for(&key, del.selection.as_ref());
            if targets.count() > 1 && (del.limit.is_some() || !del.order_by.is_empty()) {
                return Some(refuse(
                    "DELETE ... ORDER BY/LIMIT that reaches several sub-tables is not supported; add a shard-key condition",
                ));
            }
            // DELETE takes no alias here: qualified columns get the sub-table name.
            Some(per_sub_table(
                index,
                sql,
                use_,
                &table,
                &targets,
                Naming::SubTable,
                &column_qualifiers(sql, stmt),
            ))
        }
        Statement::CreateTable(ct) => {
            if ct.query.is_some() && count_sharded(router, stmt) > 0 {
                return Some(refuse(
                    "CREATE TABLE ... SELECT over a sharded table is not supported",
                ));
            }
            ddl(router, sql, index, &[&ct.name])
        }
        Statement::AlterTable(at) => ddl(router, sql, index, &[&at.name]),
        Statement::Drop {
            object_type: ObjectType::Table,
            names,
            ..
        } => ddl(router, sql, index, &names.iter().collect::<Vec<_>>()),
        Statement::Truncate(t) => ddl(
            router,
            sql,
            index,
            &t.table_names.iter().map(|n| &n.name).collect::<Vec<_>>(),
        ),
        Statement::CreateIndex(ci) => ddl(router, sql, index, &[&ci.table_name]),
        _ => None,
    }
}

fn changes_key(table: &ShardedTable) -> Plan {
    Plan::Refuse {
        code: super::ER_ROUTING,
        message: format!(
            "Changing the shard key `{}` of `{}` is not allowed: the row would belong to another sub-table; delete it and insert it again",
            table.key, table.name
        ),
    }
}

fn targets_for(key: &KeyColumn, selection: Option<&Expr>) -> IndexSet {
    let n = key.table.sub_table_count();
    let set = selection
        .and_then(|w| key.key_set(w))
        .unwrap_or_else(|| IndexSet::full(n));
    if set.count() == 0 {
        IndexSet::single(n, 0)
    } else {
        set
    }
}

/// One part per target sub-table; several parts are an atomic fan-out.
fn per_sub_table(
    index: &Source,
    sql: &str,
    use_: &TableUse,
    table: &ShardedTable,
    targets: &IndexSet,
    naming: Naming,
    qualifiers: &[Vec<sqlparser::ast::Ident>],
) -> Plan {
    let mut parts = Vec::new();
    for i in targets.iter() {
        let sub = &table.sub_tables[i];
        let mut edits = Edits::default();
        let alias = naming == Naming::Alias;
        if rename_use(&mut edits, index, use_, &sub.name, alias).is_none() {
            return refuse("the table name could not be located for rewriting");
        }
        if requalify(&mut edits, index, qualifiers, use_, &sub.name, naming).is_none() {
            return refuse("a qualified column could not be located for rewriting");
        }
        match edits.apply(sql) {
            Some(s) => parts.push(Part {
                node: sub.node,
                sql: s,
            }),
            None => return refuse("the statement could not be rewritten"),
        }
    }
    single_or_scatter(parts, true, || renamed(table, targets.iter()))
}

/// Physical → logical names of the sub-tables a single-part plan rewrote to.
fn renamed(table: &ShardedTable, subs: impl Iterator<Item = usize>) -> Vec<(String, String)> {
    subs.map(|i| (table.sub_tables[i].name.clone(), table.name.clone()))
        .collect()
}

/// One part runs as a single-node plan (`table_names` gives its renames,
/// for result metadata such as `RETURNING`); more are a fan-out.
pub(crate) fn single_or_scatter(
    mut parts: Vec<Part>,
    atomic: bool,
    table_names: impl FnOnce() -> Vec<(String, String)>,
) -> Plan {
    if parts.len() == 1 {
        let p = parts.remove(0);
        return Plan::Single {
            node: p.node,
            access: Access::Write,
            sql: Some(p.sql),
            table_names: table_names(),
        };
    }
    Plan::Scatter(Box::new(ScatterPlan {
        parts,
        access: Access::Write,
        merge: ScatterMerge::Writes { atomic },
    }))
}

/// The same statement on every node (broadcast tables).
fn everywhere(router: &Router, sql: &str, atomic: bool) -> Plan {
    let parts = (0..router.topology.nodes.len())
        .map(|node| Part {
            node,
            sql: sql.to_string(),
        })
        .collect();
    single_or_scatter(parts, atomic, Vec::new)
}

fn plan_insert(
    sql: &str,
    index: &Source,
    ins: &sqlparser::ast::Insert,
    ident: &sqlparser::ast::Ident,
    table: &ShardedTable,
) -> Result<Plan, String> {
    let template = insert_template(sql, index, ins, ident, table)?;
    if template.wanted(false) > 0 {
        return Ok(Plan::Sequence(Box::new(template)));
    }
    // Nothing to generate: the plan now (the client's rows, split).
    template.fill_table(table, &[], false).map(|f| f.plan)
}

/// Cuts an INSERT into per-row texts with their sub-tables, and the places
/// a sequence's generated values go.
pub(crate) fn insert_template(
    sql: &str,
    index: &Source,
    ins: &sqlparser::ast::Insert,
    ident: &sqlparser::ast::Ident,
    table: &ShardedTable,
) -> Result<SequenceInsert, String> {
    if ins.columns.is_empty() {
        return Err(format!(
            "INSERT into sharded `{}` must list its columns, including the shard key `{}`",
            table.name, table.key
        ));
    }
    let column_at = |name: &str| {
        ins.columns
            .iter()
            .position(|c| table_ident(c).is_some_and(|i| i.value.eq_ignore_ascii_case(name)))
    };
    let seq = table.sequence.as_deref();
    let seq_is_key = seq == Some(table.key.as_str());
    let seq_at = seq.and_then(column_at);
    let key_at = column_at(&table.key);
    if key_at.is_none() && !seq_is_key {
        return Err(format!(
            "INSERT into sharded `{}` must give the shard key `{}`",
            table.name, table.key
        ));
    }
    if let Some(OnInsert::DuplicateKeyUpdate(assignments)) = &ins.on {
        for a in assignments {
            if let AssignmentTarget::ColumnName(c) = &a.target {
                if table_ident(c).is_some_and(|i| i.value.eq_ignore_ascii_case(&table.key)) {
                    return Err(match changes_key(table) {
                        Plan::Refuse { message, .. } => message,
                        _ => String::new(),
                    });
                }
            }
        }
    }
    let Some(source) = &ins.source else {
        return Err("INSERT ... SET into a sharded table is not supported; use VALUES".into());
    };
    let SetExpr::Values(values) = source.body.as_ref() else {
        return Err(match seq {
            Some(col) => format!(
                "INSERT ... SELECT into sharded `{}` is not supported: Tessera fills `{col}` from a sequence only in INSERT ... VALUES",
                table.name
            ),
            None => "INSERT ... SELECT into a sharded table is not supported; use VALUES".into(),
        });
    };
    if values.rows.is_empty() {
        return Err("INSERT without rows".into());
    }
    let locate_key = |v: &Expr| -> Result<usize, String> {
        let lit = literal(v, index).ok_or_else(|| {
            format!(
                "the shard key `{}` of `{}` must be a literal value in INSERT, not `{v}`",
                table.key, table.name
            )
        })?;
        table.locate(&lit).map_err(|e| e.to_string())
    };
    let mut rows = Vec::with_capacity(values.rows.len());
    for row in &values.rows {
        let start = index
            .offset(row.opening_token.0.span.start)
            .ok_or("a row could not be located")?;
        let end = index
            .offset(row.closing_token.0.span.end)
            .ok_or("a row could not be located")?;
        let text = sql.get(start..end).ok_or("bad row range")?;
        let value_of = |at: usize| {
            row.content
                .get(at)
                .ok_or("a row has fewer values than columns")
        };
        // What the sequence column gets, and where in the row text.
        let (fill, cut) = match (seq, seq_at) {
            (None, _) => (Fill::Given, None),
            (Some(_), None) => (Fill::Generate, None),
            (Some(_), Some(at)) => {
                let v = value_of(at)?;
                let lit = match v {
                    Expr::Value(_) => literal(v, index),
                    _ => None,
                };
                match lit {
                    Some(Literal::Null) => (Fill::Generate, Some(v)),
                    Some(l) if is_zero(&l) => (
                        Fill::Zero {
                            text: String::new(),
                            value: l,
                        },
                        Some(v),
                    ),
                    _ => (Fill::Given, None),
                }
            }
        };
        let sub = match key_at {
            Some(at) if !(seq_is_key && fill != Fill::Given) => Some(locate_key(value_of(at)?)?),
            _ => None,
        };
        let (before, after, fill) = match (&fill, cut) {
            (Fill::Given, _) => (text.to_string(), String::new(), fill),
            (_, None) => {
                // The column was left out: the value goes last.
                let close = text.len() - 1;
                (
                    format!("{}, ", &text[..close]),
                    text[close..].to_string(),
                    fill,
                )
            }
            (_, Some(v)) => {
                let r = index
                    .range(v.span())
                    .filter(|r| r.start >= start && r.end <= end)
                    .ok_or("a value could not be located")?;
                let fill = match fill {
                    Fill::Zero { value, .. } => Fill::Zero {
                        text: sql[r.clone()].to_string(),
                        value,
                    },
                    f => f,
                };
                (
                    sql[start..r.start].to_string(),
                    sql[r.end..end].to_string(),
                    fill,
                )
            }
        };
        rows.push(TemplateRow {
            before,
            after,
            sub,
            fill,
        });
    }
    let first = &values.rows[0];
    let last = &values.rows[values.rows.len() - 1];
    let rows_start = index
        .offset(first.opening_token.0.span.start)
        .ok_or("rows could not be located")?;
    let rows_end = index
        .offset(last.closing_token.0.span.end)
        .ok_or("rows could not be located")?;
    let ident_range = index
        .range(ident.span)
        .ok_or("table could not be located")?;
    if ident_range.end > rows_start {
        return Err("unexpected INSERT layout".into());
    }
    let mut middle = sql[ident_range.end..rows_start].to_string();
    if let (Some(col), None) = (seq, seq_at) {
        let last_col = ins
            .columns
            .last()
            .and_then(table_ident)
            .and_then(|i| index.range(i.span))
            .filter(|r| r.start >= ident_range.end && r.end <= rows_start)
            .ok_or("the column list could not be located")?;
        let at = last_col.end - ident_range.end;
        middle.insert_str(at, &format!(", {}", quoted(col, Some('`'))));
    }
    Ok(SequenceInsert {
        table: table.name.to_ascii_lowercase(),
        column: seq.unwrap_or(&table.key).to_string(),
        routes_by_id: seq_is_key,
        head: sql[..ident_range.start].to_string(),
        quote: ident.quote_style,
        middle,
        tail: sql[rows_end..].to_string(),
        rows,
    })
}

/// DDL naming a sharded table runs on each of its sub-tables; on a
/// broadcast table, on every node.
fn ddl(router: &Router, sql: &str, index: &Source, names: &[&ObjectName]) -> Option<Plan> {
    let idents: Vec<_> = names.iter().filter_map(|n| table_ident(n)).collect();
    let sharded: Vec<_> = idents
        .iter()
        .filter(|i| router.schema.sharded(&i.value).is_some())
        .collect();
    let broadcast = idents.iter().any(|i| router.schema.is_broadcast(&i.value));
    if sharded.is_empty() {
        return broadcast.then(|| {
            if idents.len() > 1 {
                refuse("DDL naming a broadcast table together with other tables is not supported")
            } else {
                everywhere(router, sql, false)
            }
        });
    }
    if idents.len() > 1 {
        return Some(refuse(
            "DDL naming a sharded table together with other tables is not supported; one table per statement",
        ));
    }
    let ident = sharded[0];
    let table = router.schema.sharded(&ident.value)?.clone();
    let range = index.range(ident.span)?;
    let parts = table
        .sub_tables
        .iter()
        .map(|sub| {
            let mut e = Edits::default();
            e.replace(range.clone(), quoted(&sub.name, ident.quote_style));
            e.apply(sql).map(|s| Part {
                node: sub.node,
                sql: s,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Plan::Scatter(Box::new(ScatterPlan {
        parts,
        access: Access::Write,
        merge: ScatterMerge::Writes { atomic: false },
    })))
}
