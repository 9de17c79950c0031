//! Global sequences for sharded tables: ids for a column Tessera fills,
//! allocated in blocks from `tessera_sequences` on the default node's primary.
//!
//! No I/O here: [`Sequences`] hands out ids from blocks the driver
//! allocated, and the SQL the driver runs is built here. A block is taken
//! with one autocommitted statement that bumps the row and reports the new
//! `next_value` as the insert id, so proxies sharing the backend never get
//! the same ids, and a restarted proxy starts after every block handed out
//! before (the unused rest of a block is lost: ids have gaps, as
//! AUTO_INCREMENT's may).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Mutex;

/// The table holding one row per sequence: `(name, next_value)`.
pub const TABLE: &str = "tessera_sequences";

/// MySQL's ER_NO_SUCH_TABLE: the driver creates the table and tries again.
pub const ER_NO_SUCH_TABLE: u16 = 1146;

/// Ids this proxy holds, per sequence (the logical table's lower-case name).
/// Shared by every session; the lock is held only to move ids out.
#[derive(Debug, Default)]
pub struct Sequences {
    held: Mutex<HashMap<String, VecDeque<Range<i64>>>>,
}

impl Sequences {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves ids, lowest first, into `out` until it holds `want` or none are
    /// left. Ids `accept` turns down are discarded (never handed out).
    /// Returns how many were discarded.
    pub fn draw(
        &self,
        name: &str,
        want: usize,
        accept: impl FnMut(i64) -> bool,
        out: &mut Vec<i64>,
    ) -> u64 {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.get_mut(name) {
            Some(ranges) => draw_from(ranges, want, accept, out),
            None => 0,
        }
    }

    /// Adds a freshly allocated block, then draws as [`draw`](Self::draw)
    /// does, under one lock, so the session that asked for the block is
    /// served from it before anyone else can empty it.
    pub fn add_and_draw(
        &self,
        name: &str,
        block: Range<i64>,
        want: usize,
        accept: impl FnMut(i64) -> bool,
        out: &mut Vec<i64>,
    ) -> u64 {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let ranges = held.entry(name.to_string()).or_default();
        if !block.is_empty() {
            ranges.push_back(block);
        }
        draw_from(ranges, want, accept, out)
    }

    /// Ids held for a sequence (tests, metrics).
    pub fn available(&self, name: &str) -> u64 {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(name)
            .map(|r| r.iter().map(|r| (r.end - r.start) as u64).sum())
            .unwrap_or(0)
    }
}

fn draw_from(
    ranges: &mut VecDeque<Range<i64>>,
    want: usize,
    mut accept: impl FnMut(i64) -> bool,
    out: &mut Vec<i64>,
) -> u64 {
    let mut skipped = 0;
    while out.len() < want {
        let Some(front) = ranges.front_mut() else {
            break;
        };
        let id = front.start;
        front.start += 1;
        if front.is_empty() {
            ranges.pop_front();
        }
        if accept(id) {
            out.push(id);
        } else {
            skipped += 1;
        }
    }
    skipped
}

fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

fn string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Creates the sequence table if it is missing.
pub fn create_table_sql(database: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{TABLE} (name VARCHAR(64) NOT NULL PRIMARY KEY, next_value BIGINT NOT NULL) ENGINE=InnoDB",
        ident(database)
    )
}

/// Takes `count` ids in one autocommitted statement. Both branches set
/// `LAST_INSERT_ID(new next_value)`, which the OK packet reports; the
/// block is then [`block_from`]`(that value, count)`.
pub fn allocate_sql(database: &str, name: &str, count: u64) -> String {
    format!(
        "INSERT INTO {}.{TABLE} (name, next_value) VALUES ({}, LAST_INSERT_ID({})) ON DUPLICATE KEY UPDATE next_value = LAST_INSERT_ID(next_value + {count})",
        ident(database),
        string(name),
        count.saturating_add(1),
    )
}

/// The ids an allocation of `count` gave, from the `next_value` it left
/// (the insert id of its OK packet).
pub fn block_from(next_value: u64, count: u64) -> Option<Range<i64>> {
    let end = i64::try_from(next_value).ok()?;
    let start = end.checked_sub(i64::try_from(count).ok()?)?;
    (count > 0 && start >= 1).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_in_order_across_blocks_and_discards_refused_ids() {
        let s = Sequences::new();
        let mut out = Vec::new();
        assert_eq!(s.draw("stu", 3, |_| true, &mut out), 0);
        assert!(out.is_empty());
        s.add_and_draw("stu", 1..3, 3, |_| true, &mut out);
        assert_eq!(out, vec![1, 2]);
        s.add_and_draw("stu", 11..21, 3, |_| true, &mut out);
        assert_eq!(out, vec![1, 2, 11]);
        let mut even = Vec::new();
        let skipped = s.draw("stu", 3, |id| id % 2 == 0, &mut even);
        assert_eq!(even, vec![12, 14, 16]);
        assert_eq!(skipped, 2);
        assert_eq!(s.available("stu"), 4);
        assert_eq!(s.available("other"), 0);
    }

    #[test]
    fn allocation_sql_and_blocks() {
        let sql = allocate_sql("app", "stu", 1000);
        assert_eq!(
            sql,
            "INSERT INTO `app`.tessera_sequences (name, next_value) VALUES ('stu', LAST_INSERT_ID(1001)) ON DUPLICATE KEY UPDATE next_value = LAST_INSERT_ID(next_value + 1000)"
        );
        assert!(allocate_sql("a`b", "o'k", 1).contains("`a``b`.tessera_sequences"));
        assert!(allocate_sql("a", "o'k", 1).contains("'o''k'"));
        assert_eq!(block_from(1001, 1000), Some(1..1001));
        assert_eq!(block_from(3001, 1000), Some(2001..3001));
        assert_eq!(block_from(0, 1000), None);
        assert_eq!(block_from(5, 0), None);
        assert!(create_table_sql("app")
            .starts_with("CREATE TABLE IF NOT EXISTS `app`.tessera_sequences"));
    }
}
