//! Finding shard keys in a statement and the table references to rewrite.

use std::ops::Bound;
use std::sync::Arc;

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, AssignmentTarget, BinaryOperator, Expr, Ident,
    ObjectName, ObjectNamePart, OnInsert, SelectItem, SelectItemQualifiedWildcardKind, SetExpr,
    Statement, TableFactor, TableWithJoins, UnaryOperator, Value,
};

use crate::shard::{IndexSet, Literal, ShardedTable};

use super::text::{Edits, Source};
use super::{quoted, table_ident, Router};

/// A literal value of an expression, when it is one; a `?` takes the value
/// `src` binds it to.
pub fn literal(e: &Expr, src: &Source) -> Option<Literal> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Placeholder(_) => src.placeholder(v.span.start).cloned(),
            Value::Number(n, _) => Some(Literal::Number(n.clone())),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                Some(Literal::Str(s.clone()))
            }
            Value::Boolean(b) => Some(Literal::Number(if *b { "1" } else { "0" }.into())),
            Value::Null => Some(Literal::Null),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr, src)? {
            Literal::Number(n) => Some(Literal::Number(match n.strip_prefix('-') {
                Some(pos) => pos.to_string(),
                None => format!("-{n}"),
            })),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => literal(expr, src),
        Expr::Nested(e) => literal(e, src),
        Expr::TypedString(ts) => match &ts.value.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => {
                Some(Literal::Str(s.clone()))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The names a sharded table is referred to by in column qualifiers.
pub struct KeyColumn<'a> {
    pub table: &'a ShardedTable,
    pub qualifiers: Vec<String>,
    /// Where `?` placeholders get their values.
    pub src: &'a Source<'a>,
}

impl KeyColumn<'_> {
    pub fn is_key(&self, e: &Expr) -> bool {
        match e {
            Expr::Identifier(i) => i.value.eq_ignore_ascii_case(&self.table.key),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let col = &parts[parts.len() - 1];
                let q = &parts[parts.len() - 2];
                col.value.eq_ignore_ascii_case(&self.table.key)
                    && self
                        .qualifiers
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(&q.value))
            }
            Expr::Nested(e) => self.is_key(e),
            _ => false,
        }
    }

    /// Sub-tables that may hold the rows `e` selects; `None` means all.
    pub fn key_set(&self, e: &Expr) -> Option<IndexSet> {
        let n = self.table.sub_table_count();
        let one = |lit: &Literal| -> IndexSet {
            match self.table.locate(lit) {
                Ok(i) => IndexSet::single(n, i),
                // NULL or a key no sub-table holds: no row can match.
                Err(crate::shard::KeyError::Null(_))
                | Err(crate::shard::KeyError::OutOfRange(..)) => IndexSet::empty(n),
                // A value that cannot be read as the key's type: look everywhere.
                Err(crate::shard::KeyError::BadValue(..)) => IndexSet::full(n),
            }
        };
        match e {
            Expr::Nested(inner) => self.key_set(inner),
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And => match (self.key_set(left), self.key_set(right)) {
                    (Some(mut a), Some(b)) => {
                        a.intersect(&b);
                        Some(a)
                    }
                    (Some(a), None) | (None, Some(a)) => Some(a),
                    (None, None) => None,
                },
                BinaryOperator::Or => {
                    let mut a = self.key_set(left)?;
                    a.union(&self.key_set(right)?);
                    Some(a)
                }
                BinaryOperator::Eq | BinaryOperator::Spaceship => {
                    let (k, v) = self.key_and_literal(left, right)?;
                    let _ = k;
                    Some(one(&v))
                }
                BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq => {
                    let (key_left, v) = self.key_and_literal(left, right)?;
                    // Normalise to `key <op> v`.
                    let op = if key_left { op.clone() } else { flip(op) };
                    let (lo, hi) = match op {
                        BinaryOperator::Lt => (Bound::Unbounded, Bound::Excluded(&v)),
                        BinaryOperator::LtEq => (Bound::Unbounded, Bound::Included(&v)),
                        BinaryOperator::Gt => (Bound::Excluded(&v), Bound::Unbounded),
                        _ => (Bound::Included(&v), Bound::Unbounded),
                    };
                    self.table.locate_range(lo, hi)
                }
                _ => None,
            },
            Expr::InList {
                expr,
                list,
                negated: false,
            } if self.is_key(expr) => {
                let mut set = IndexSet::empty(n);
                for item in list {
                    set.union(&one(&literal(item, self.src)?));
                }
                Some(set)
            }
            Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } if self.is_key(expr) => {
                let (lo, hi) = (literal(low, self.src)?, literal(high, self.src)?);
                self.table
                    .locate_range(Bound::Included(&lo), Bound::Included(&hi))
            }
            _ => None,
        }
    }

    /// `key = literal` either way round: (whether the key is on the left, the literal).
    fn key_and_literal(&self, left: &Expr, right: &Expr) -> Option<(bool, Literal)> {
        if self.is_key(left) {
            Some((true, literal(right, self.src)?))
        } else if self.is_key(right) {
            Some((false, literal(left, self.src)?))
        } else {
            None
        }
    }
}

fn flip(op: &BinaryOperator) -> BinaryOperator {
    match op {
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        BinaryOperator::Gt => BinaryOperator::Lt,
        _ => BinaryOperator::LtEq,
    }
}

/// One table reference in a FROM list.
pub struct TableUse<'a> {
    pub ident: &'a Ident,
    /// The database part of `db.table`, when the client wrote one.
    pub schema: Option<&'a Ident>,
    pub alias: Option<&'a Ident>,
    pub sharded: Option<Arc<ShardedTable>>,
    pub broadcast: bool,
}

impl TableUse<'_> {
    /// The name columns are qualified with.
    pub fn qualifier(&self) -> &str {
        self.alias
            .map(|a| a.value.as_str())
            .unwrap_or(&self.ident.value)
    }
}

/// Table references of FROM lists and joins (derived tables excluded;
/// `Err` if one is found, since its contents are not looked at here).
pub fn table_uses<'a>(
    router: &Router,
    from: &'a [TableWithJoins],
) -> Result<Vec<TableUse<'a>>, &'static str> {
    let mut out = Vec::new();
    for twj in from {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            match factor {
                TableFactor::Table { name, alias, .. } => {
                    let Some(ident) = table_ident(name) else {
                        return Err("a computed table name");
                    };
                    let schema = match name.0.as_slice() {
                        [_] => None,
                        [ObjectNamePart::Identifier(db), _] => Some(db),
                        _ => return Err("a table name with more than a database and a table part"),
                    };
                    out.push(TableUse {
                        ident,
                        schema,
                        alias: alias.as_ref().map(|a| &a.name),
                        sharded: router.schema.sharded(&ident.value).cloned(),
                        broadcast: router.schema.is_broadcast(&ident.value),
                    });
                }
                _ => return Err("a derived table or table function"),
            }
        }
    }
    Ok(out)
}

/// Edits that point a table reference at a sub-table. With `alias`, a
/// reference without its own alias gets the logical name as alias, so
/// qualified columns (`stu.id`) and result metadata keep working.
pub fn rename_use(
    edits: &mut Edits,
    index: &Source,
    use_: &TableUse,
    sub_table: &str,
    alias: bool,
) -> Option<()> {
    let range = index.range(use_.ident.span)?;
    let mut text = quoted(sub_table, use_.ident.quote_style);
    if alias && use_.alias.is_none() {
        text.push_str(" AS ");
        text.push_str(&quoted(&use_.ident.value, Some('`')));
    }
    edits.replace(range, text);
    Some(())
}

/// The qualifiers of column references in a statement: `[stu]` of `stu.id`,
/// `[db, stu]` of `db.stu.id`, and those of `stu.*`, SET targets, INSERT
/// column lists and ON DUPLICATE KEY UPDATE targets. Only the top-level
/// SELECT's select list is looked at for wildcards (subqueries over sharded
/// tables are refused before this matters).
///
/// `sql` is the statement's text: without a `.` there is no qualifier to
/// look for, and the walk over the statement is skipped.
pub fn column_qualifiers(sql: &str, stmt: &Statement) -> Vec<Vec<Ident>> {
    let mut out = Vec::new();
    if !sql.contains('.') {
        return out;
    }
    fn name(out: &mut Vec<Vec<Ident>>, n: &ObjectName, column: bool) {
        let parts: Vec<Ident> =
            n.0.iter()
                .filter_map(|p| match p {
                    ObjectNamePart::Identifier(i) => Some(i.clone()),
                    _ => None,
                })
                .collect();
        // A column name keeps its last part; a wildcard prefix is all qualifier.
        let keep = usize::from(column);
        if parts.len() > keep {
            out.push(parts[..parts.len() - keep].to_vec());
        }
    }
    let targets = |a: &[sqlparser::ast::Assignment]| -> Vec<ObjectName> {
        a.iter()
            .flat_map(|a| match &a.target {
                AssignmentTarget::ColumnName(c) => vec![c.clone()],
                AssignmentTarget::Tuple(cs) => cs.clone(),
            })
            .collect()
    };
    match stmt {
        Statement::Query(q) => {
            if let SetExpr::Select(sel) = q.body.as_ref() {
                for item in &sel.projection {
                    if let SelectItem::QualifiedWildcard(
                        SelectItemQualifiedWildcardKind::ObjectName(n),
                        _,
                    ) = item
                    {
                        name(&mut out, n, false);
                    }
                }
            }
        }
        Statement::Update(u) => {
            for t in targets(&u.assignments) {
                name(&mut out, &t, true);
            }
        }
        Statement::Insert(ins) => {
            for c in &ins.columns {
                name(&mut out, c, true);
            }
            if let Some(OnInsert::DuplicateKeyUpdate(a)) = &ins.on {
                for t in targets(a) {
                    name(&mut out, &t, true);
                }
            }
        }
        _ => {}
    }
    let _ = visit_expressions(stmt, |e| {
        match e {
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                out.push(parts[..parts.len() - 1].to_vec());
            }
            Expr::QualifiedWildcard(n, _) => name(&mut out, n, false),
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// How the rewritten statement refers to a sharded table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// By an alias: the client's own, or the logical name added by
    /// [`rename_use`] (SELECT, UPDATE). `stu.id` keeps working; `db.stu.id`
    /// loses its database part, since an aliased table is only known by
    /// its alias.
    Alias,
    /// By the sub-table's own name (DELETE, INSERT take no alias):
    /// `stu.id` and `db.stu.id` get the sub-table in place of `stu`.
    SubTable,
}

impl TableUse<'_> {
    /// Whether a qualifier names this table (not its alias): `[stu]` or
    /// `[db, stu]` with the database the FROM clause gave, if it gave one.
    fn names_table(&self, qualifier: &[Ident]) -> bool {
        match qualifier {
            [t] => t.value.eq_ignore_ascii_case(&self.ident.value),
            [db, t] => {
                t.value.eq_ignore_ascii_case(&self.ident.value)
                    && self.schema.is_none_or(|s| s.value == db.value)
            }
            _ => false,
        }
    }
}

/// Edits that make column qualifiers naming the logical table valid in the
/// rewritten statement (see [`Naming`]). A qualifier with a client alias in
/// force is left alone: it is as wrong (or right) as it was.
pub fn requalify(
    edits: &mut Edits,
    index: &Source,
    qualifiers: &[Vec<Ident>],
    use_: &TableUse,
    sub_table: &str,
    naming: Naming,
) -> Option<()> {
    if use_.alias.is_some() {
        return Some(());
    }
    for q in qualifiers {
        if !use_.names_table(q) {
            continue;
        }
        let t = q.last()?;
        match (naming, q.as_slice()) {
            (Naming::Alias, [db, t]) => {
                let start = index.offset(db.span.start)?;
                let end = index.offset(t.span.start)?;
                edits.replace(start..end, "");
            }
            (Naming::Alias, _) => {}
            (Naming::SubTable, _) => {
                edits.replace(index.range(t.span)?, quoted(sub_table, t.quote_style));
            }
        }
    }
    Some(())
}

/// An expression as the shard query spells it, for text Tessera adds
/// (hidden sort and group columns): `db.stu.col` becomes `stu.col`, as
/// [`requalify`] does in the client's text under [`Naming::Alias`].
pub fn shard_text(use_: &TableUse, e: &Expr) -> String {
    if use_.alias.is_some() {
        return e.to_string();
    }
    let mut e = e.clone();
    let _ = visit_expressions_mut(&mut e, |x| {
        if let Expr::CompoundIdentifier(parts) = x {
            if parts.len() == 3 && use_.names_table(&parts[..2]) {
                parts.remove(0);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    e.to_string()
}
