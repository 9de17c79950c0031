//! INSERTs whose sequence column Tessera fills: the statement is cut into a
//! template at routing time (one parse), and filled with ids later, when the
//! session has them, into the usual per-sub-table plan.

use std::collections::{BTreeMap, BTreeSet};

use crate::shard::{int_value, Literal, Schema, ShardedTable};

use super::write::single_or_scatter;
use super::{quoted, Part, Plan};

/// An INSERT (or REPLACE) into a sharded table with a sequence, cut at the
/// places generated values go.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceInsert {
    /// The logical table's lower-case name: also the sequence's name.
    pub table: String,
    /// The column Tessera fills.
    pub column: String,
    /// Whether generated values decide the rows' sub-tables (the sequence
    /// column is the shard key).
    pub routes_by_id: bool,
    /// Text before the table name.
    pub(crate) head: String,
    /// How the client quoted the table name.
    pub(crate) quote: Option<char>,
    /// Text from after the table name to the first row (the sequence column
    /// added to the column list when the client left it out).
    pub(crate) middle: String,
    /// Text after the last row (`ON DUPLICATE KEY UPDATE …`).
    pub(crate) tail: String,
    pub(crate) rows: Vec<TemplateRow>,
}

/// One row: its text around the generated value, and where it goes when
/// that is known without one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TemplateRow {
    pub before: String,
    pub after: String,
    pub sub: Option<usize>,
    pub fill: Fill,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fill {
    /// The client's value stays (`before` holds the whole row).
    Given,
    /// A generated value (column left out, or NULL given).
    Generate,
    /// 0 given: generated, unless the session's sql_mode has
    /// NO_AUTO_VALUE_ON_ZERO, which keeps it (as MySQL does).
    Zero { text: String, value: Literal },
}

/// A filled template: the plan to run, and where the first generated id went.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    pub plan: Plan,
    /// The first generated id (reported to the client as the insert id).
    pub first_id: Option<i64>,
    /// The node whose part holds the row with the first generated id.
    pub first_node: Option<usize>,
}

impl SequenceInsert {
    fn sharded<'a>(&self, schema: &'a Schema) -> Result<&'a ShardedTable, String> {
        schema
            .sharded(&self.table)
            .map(|t| t.as_ref())
            .ok_or_else(|| format!("sharded table `{}` is no longer configured", self.table))
    }

    /// How many ids the statement needs.
    pub fn wanted(&self, keep_zero: bool) -> usize {
        self.rows
            .iter()
            .filter(|r| match r.fill {
                Fill::Generate => true,
                Fill::Zero { .. } => !keep_zero,
                Fill::Given => false,
            })
            .count()
    }

    /// The nodes of rows whose sub-table does not depend on a generated id.
    pub fn known_nodes(&self, schema: &Schema, keep_zero: bool) -> BTreeSet<usize> {
        let Ok(table) = self.sharded(schema) else {
            return BTreeSet::new();
        };
        self.rows
            .iter()
            .filter_map(|r| match (&r.fill, r.sub) {
                (Fill::Zero { value, .. }, None) if keep_zero => table.locate(value).ok(),
                (_, sub) => sub,
            })
            .map(|i| table.sub_tables[i].node)
            .collect()
    }

    /// The node a row with generated id `id` goes to (`None` when ids do not
    /// route, or the id fits no sub-table).
    pub fn node_of(&self, schema: &Schema, id: i64) -> Option<usize> {
        if !self.routes_by_id {
            return None;
        }
        let table = self.sharded(schema).ok()?;
        let i = table.locate(&Literal::Number(id.to_string())).ok()?;
        Some(table.sub_tables[i].node)
    }

    /// The row texts grouped by sub-table (`None`: decided by a generated
    /// id not given), with the sub-table of the first generated row.
    #[allow(clippy::type_complexity)]
    fn build(
        &self,
        table: &ShardedTable,
        keep_zero: bool,
        mut value: impl FnMut(usize) -> (String, Option<i64>),
    ) -> Result<(BTreeMap<Option<usize>, Vec<String>>, Option<Option<usize>>), String> {
        let mut groups: BTreeMap<Option<usize>, Vec<String>> = BTreeMap::new();
        let mut first_sub = None;
        let mut k = 0;
        for row in &self.rows {
            let generate = match &row.fill {
                Fill::Given => false,
                Fill::Generate => true,
                Fill::Zero { .. } => !keep_zero,
            };
            let (text, sub) = if generate {
                let (v, id) = value(k);
                k += 1;
                let sub = match (row.sub, id) {
                    (Some(s), _) => Some(s),
                    (None, Some(id)) => Some(
                        table
                            .locate(&Literal::Number(id.to_string()))
                            .map_err(|e| e.to_string())?,
                    ),
                    (None, None) => None,
                };
                if first_sub.is_none() {
                    first_sub = Some(sub);
                }
                (format!("{}{v}{}", row.before, row.after), sub)
            } else {
                match &row.fill {
                    Fill::Zero { text, value } => {
                        let sub = match row.sub {
                            Some(s) => s,
                            None => table.locate(value).map_err(|e| e.to_string())?,
                        };
                        (format!("{}{text}{}", row.before, row.after), Some(sub))
                    }
                    _ => (
                        row.before.clone(),
                        Some(row.sub.ok_or("a row's sub-table is unknown")?),
                    ),
                }
            };
            groups.entry(sub).or_default().push(text);
        }
        Ok((groups, first_sub))
    }

    fn statement(&self, table_name: &str, rows: &[String]) -> String {
        let mut s = String::with_capacity(
            self.head.len() + self.middle.len() + self.tail.len() + rows.len() * 32,
        );
        s.push_str(&self.head);
        s.push_str(&quoted(table_name, self.quote));
        s.push_str(&self.middle);
        s.push_str(&rows.join(", "));
        s.push_str(&self.tail);
        s
    }

    /// The plan with `ids` (as many as [`wanted`](Self::wanted), in row
    /// order) in place. The first generated value is written
    /// `LAST_INSERT_ID(id)`, so the backend reports it as the insert id and
    /// `SELECT LAST_INSERT_ID()` on that connection returns it.
    pub fn fill(&self, schema: &Schema, ids: &[i64], keep_zero: bool) -> Result<Filled, String> {
        self.fill_table(self.sharded(schema)?, ids, keep_zero)
    }

    pub(crate) fn fill_table(
        &self,
        table: &ShardedTable,
        ids: &[i64],
        keep_zero: bool,
    ) -> Result<Filled, String> {
        if ids.len() != self.wanted(keep_zero) {
            return Err(format!(
                "{} ids for {} generated values",
                ids.len(),
                self.wanted(keep_zero)
            ));
        }
        let (groups, first_sub) = self.build(table, keep_zero, |k| {
            let id = ids[k];
            let text = if k == 0 {
                format!("LAST_INSERT_ID({id})")
            } else {
                id.to_string()
            };
            (text, Some(id))
        })?;
        let mut parts = Vec::new();
        let mut renamed = Vec::new();
        for (sub, rows) in groups {
            let sub = &table.sub_tables[sub.ok_or("a row's sub-table is unknown")?];
            renamed.push((sub.name.clone(), table.name.clone()));
            parts.push(Part {
                node: sub.node,
                sql: self.statement(&sub.name, &rows),
            });
        }
        Ok(Filled {
            plan: single_or_scatter(parts, true, || renamed),
            first_id: ids.first().copied(),
            first_node: first_sub.flatten().map(|s| table.sub_tables[s].node),
        })
    }

    /// `TESSERA EXPLAIN` rows: nothing is allocated; generated values show
    /// as `<next stu.id>`, and rows routed by them as one target.
    pub fn explain(
        &self,
        schema: &Schema,
        node_name: impl Fn(usize) -> String,
    ) -> Vec<[String; 4]> {
        let Ok(table) = self.sharded(schema) else {
            return vec![];
        };
        let placeholder = format!("<next {}.{}>", self.table, self.column);
        let merge = format!(
            "{} from sequence '{}' in {}.{} (blocks of {}); several sub-tables: commit on every node only if all parts succeed",
            self.column,
            self.table,
            schema.sequence_database.as_deref().unwrap_or("?"),
            crate::sequence::TABLE,
            table.sequence_block,
        );
        let built = self.build(table, false, |_| (placeholder.clone(), None));
        let (groups, _) = match built {
            Ok(g) => g,
            Err(e) => {
                return vec![[
                    "(none)".into(),
                    "refused".into(),
                    format!("ERROR 1105: {e}"),
                    "none".into(),
                ]]
            }
        };
        groups
            .into_iter()
            .map(|(sub, rows)| match sub {
                Some(i) => {
                    let sub = &table.sub_tables[i];
                    [
                        node_name(sub.node),
                        "primary".into(),
                        self.statement(&sub.name, &rows),
                        merge.clone(),
                    ]
                }
                None => [
                    "(each row's generated id)".into(),
                    "primary".into(),
                    self.statement(&format!("{}_<sub-table>", table.name), &rows),
                    merge.clone(),
                ],
            })
            .collect()
    }
}

/// Whether a literal is 0, the value AUTO_INCREMENT replaces.
pub(crate) fn is_zero(lit: &Literal) -> bool {
    matches!(lit, Literal::Number(_)) && int_value(lit) == Some(0)
}
