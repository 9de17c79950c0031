//! Sharding functions: a shard-key value → a sub-table index → a node
//! (kingshard's two-level mapping), for hash, integer range and date
//! sharding, plus the set arithmetic the router needs for IN lists and ranges.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

/// A literal taken from SQL, before it is coerced to the key's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Literal {
    /// A numeric literal as written (`42`, `-7`, `1.5`).
    Number(String),
    /// A quoted string.
    Str(String),
    Null,
}

/// How keys are compared and hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Int,
    /// Case-insensitive, trailing spaces ignored, as MariaDB's default
    /// collations compare.
    Str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateUnit {
    Year,
    Month,
    Day,
}

#[derive(Debug, Clone)]
pub enum ShardFn {
    Hash(KeyType),
    /// Sub-table `i` holds keys `[i*limit, (i+1)*limit)`.
    Range {
        limit: u64,
    },
    /// Sub-tables named by period; `periods` maps a period number
    /// (`2026`, `202611`, `20261105`) to its sub-table index.
    Date {
        unit: DateUnit,
        periods: BTreeMap<u32, usize>,
    },
}

/// One physical table holding part of a logical one.
#[derive(Debug, Clone)]
pub struct SubTable {
    pub name: String,
    pub node: usize,
}

/// A sharded logical table.
#[derive(Debug, Clone)]
pub struct ShardedTable {
    pub name: String,
    /// Shard-key column, lower case.
    pub key: String,
    pub function: ShardFn,
    pub sub_tables: Vec<SubTable>,
    /// Column filled from the global sequence, lower case.
    pub sequence: Option<String>,
    /// Ids a proxy takes from the sequence at a time.
    pub sequence_block: u64,
}

/// Where a key cannot go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("shard key value {0} of table `{1}` is not held by any sub-table")]
    OutOfRange(String, String),
    #[error("shard key value {0} of table `{1}` cannot be read as a {2}")]
    BadValue(String, String, &'static str),
    #[error("shard key of table `{0}` cannot be NULL")]
    Null(String),
}

impl ShardedTable {
    pub fn sub_table_count(&self) -> usize {
        self.sub_tables.len()
    }

    /// The one sub-table that holds `value`.
    pub fn locate(&self, value: &Literal) -> Result<usize, KeyError> {
        let n = self.sub_tables.len();
        let text = || match value {
            Literal::Number(s) => s.clone(),
            Literal::Str(s) => format!("'{s}'"),
            Literal::Null => "NULL".into(),
        };
        if matches!(value, Literal::Null) {
            return Err(KeyError::Null(self.name.clone()));
        }
        match &self.function {
            ShardFn::Hash(KeyType::Int) => {
                let k = int_value(value)
                    .ok_or_else(|| KeyError::BadValue(text(), self.name.clone(), "integer"))?;
                Ok(k.rem_euclid(n as i128) as usize)
            }
            ShardFn::Hash(KeyType::Str) => {
                let s = match value {
                    Literal::Number(s) | Literal::Str(s) => s,
                    Literal::Null => unreachable!("checked above"),
                };
                Ok((fnv1a(fold_str(s).as_bytes()) % n as u64) as usize)
            }
            ShardFn::Range { limit } => {
                let k = int_value(value)
                    .ok_or_else(|| KeyError::BadValue(text(), self.name.clone(), "integer"))?;
                let idx = if k < 0 {
                    None
                } else {
                    Some(k / *limit as i128)
                };
                match idx {
                    Some(i) if i < n as i128 => Ok(i as usize),
                    _ => Err(KeyError::OutOfRange(text(), self.name.clone())),
                }
            }
            ShardFn::Date { unit, periods } => {
                let p = date_period(value, *unit)
                    .ok_or_else(|| KeyError::BadValue(text(), self.name.clone(), "date"))?;
                periods
                    .get(&p)
                    .copied()
                    .ok_or_else(|| KeyError::OutOfRange(text(), self.name.clone()))
            }
        }
    }

    /// The sub-tables that may hold keys in a range; `None` when every
    /// sub-table may (hash over a wide range, unreadable bounds).
    pub fn locate_range(&self, lo: Bound<&Literal>, hi: Bound<&Literal>) -> Option<IndexSet> {
        let n = self.sub_tables.len();
        match &self.function {
            ShardFn::Hash(KeyType::Int) => {
                let (lo, hi) = int_bounds(lo, hi)?;
                if hi < lo {
                    return Some(IndexSet::empty(n));
                }
                // A narrow range is cheaper as its keys than as a fan-out.
                if hi - lo >= n as i128 {
                    return None;
                }
                let mut set = IndexSet::empty(n);
                for k in lo..=hi {
                    set.insert(k.rem_euclid(n as i128) as usize);
                }
                Some(set)
            }
            ShardFn::Hash(KeyType::Str) => None,
            ShardFn::Range { limit } => {
                let (lo, hi) = int_bounds(lo, hi)?;
                let mut set = IndexSet::empty(n);
                if hi < 0 || hi < lo {
                    return Some(set);
                }
                let first = (lo.max(0) / *limit as i128) as usize;
                let last = ((hi / *limit as i128) as usize).min(n.saturating_sub(1));
                for i in first..=last {
                    if i < n {
                        set.insert(i);
                    }
                }
                Some(set)
            }
            ShardFn::Date { unit, periods } => {
                let lo = match lo {
                    Bound::Unbounded => Bound::Unbounded,
                    Bound::Included(v) | Bound::Excluded(v) => {
                        Bound::Included(date_period(v, *unit)?)
                    }
                };
                let hi = match hi {
                    Bound::Unbounded => Bound::Unbounded,
                    Bound::Included(v) | Bound::Excluded(v) => {
                        Bound::Included(date_period(v, *unit)?)
                    }
                };
                if let (Bound::Included(a), Bound::Included(b)) = (lo, hi) {
                    if b < a {
                        return Some(IndexSet::empty(n));
                    }
                }
                let mut set = IndexSet::empty(n);
                for (_, &i) in periods.range((lo, hi)) {
                    set.insert(i);
                }
                Some(set)
            }
        }
    }
}

fn int_bounds(lo: Bound<&Literal>, hi: Bound<&Literal>) -> Option<(i128, i128)> {
    let lo = match lo {
        Bound::Unbounded => i64::MIN as i128,
        Bound::Included(v) => int_value(v)?,
        Bound::Excluded(v) => int_value(v)? + 1,
    };
    let hi = match hi {
        Bound::Unbounded => i64::MAX as i128,
        Bound::Included(v) => int_value(v)?,
        Bound::Excluded(v) => int_value(v)? - 1,
    };
    Some((lo, hi))
}

/// An integer key from a number or a string that holds one (`'-2882'`):
/// MariaDB compares such a string to an integer column by its value.
pub fn int_value(v: &Literal) -> Option<i128> {
    let s = match v {
        Literal::Number(s) | Literal::Str(s) => s.trim(),
        Literal::Null => return None,
    };
    if let Ok(i) = s.parse::<i64>() {
        return Some(i as i128);
    }
    // `5.0` and `5e0` are the integer 5; `5.5` matches no integer key.
    let f: f64 = s.parse().ok()?;
    (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i128)
}

/// The case- and trailing-space-insensitive form MariaDB's default
/// collations compare by.
pub fn fold_str(s: &str) -> String {
    s.trim_end_matches(' ').to_lowercase()
}

/// FNV-1a: stable across versions and platforms, unlike std's hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The period number of a date literal: `'2026-11-05 10:00'` is 2026,
/// 202611 or 20261105; a number `20261105` reads the same.
pub fn date_period(v: &Literal, unit: DateUnit) -> Option<u32> {
    let s = match v {
        Literal::Number(s) | Literal::Str(s) => s.trim(),
        Literal::Null => return None,
    };
    let (y, m, d) = if s.len() >= 8 && s.as_bytes()[..8].iter().all(u8::is_ascii_digit) {
        (
            s[0..4].parse::<u32>().ok()?,
            s[4..6].parse::<u32>().ok()?,
            s[6..8].parse::<u32>().ok()?,
        )
    } else {
        let date = s.split([' ', 'T']).next()?;
        let mut parts = date.split('-');
        let y = parts.next()?.parse::<u32>().ok()?;
        let m = parts.next()?.parse::<u32>().ok()?;
        let d = parts.next()?.parse::<u32>().ok()?;
        (y, m, d)
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y > 9999 {
        return None;
    }
    Some(match unit {
        DateUnit::Year => y,
        DateUnit::Month => y * 100 + m,
        DateUnit::Day => y * 10000 + m * 100 + d,
    })
}

/// Parses a period as config writes it: `2026`, `2026-11`, `2026-11-05`.
pub fn parse_period(s: &str, unit: DateUnit) -> Option<u32> {
    let parts: Vec<&str> = s.trim().split('-').collect();
    let nums: Option<Vec<u32>> = parts.iter().map(|p| p.parse::<u32>().ok()).collect();
    let nums = nums?;
    match (unit, nums.as_slice()) {
        (DateUnit::Year, [y]) => Some(*y),
        (DateUnit::Month, [y, m]) if (1..=12).contains(m) => Some(y * 100 + m),
        (DateUnit::Day, [y, m, d]) if (1..=12).contains(m) && (1..=days_in(*y, *m)).contains(d) => {
            Some(y * 10000 + m * 100 + d)
        }
        _ => None,
    }
}

fn days_in(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        _ => 28,
    }
}

/// Every period from `a` to `b` inclusive.
pub fn periods_between(a: u32, b: u32, unit: DateUnit) -> Vec<u32> {
    let mut out = Vec::new();
    let mut p = a;
    while p <= b && out.len() < 100_000 {
        out.push(p);
        p = match unit {
            DateUnit::Year => p + 1,
            DateUnit::Month => {
                let (y, m) = (p / 100, p % 100);
                if m == 12 {
                    (y + 1) * 100 + 1
                } else {
                    p + 1
                }
            }
            DateUnit::Day => {
                let (y, m, d) = (p / 10000, p / 100 % 100, p % 100);
                if d < days_in(y, m) {
                    p + 1
                } else if m < 12 {
                    y * 10000 + (m + 1) * 100 + 1
                } else {
                    (y + 1) * 10000 + 101
                }
            }
        };
    }
    out
}

/// A set of sub-table indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSet {
    words: Vec<u64>,
    len: usize,
}

impl IndexSet {
    pub fn empty(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    pub fn full(len: usize) -> Self {
        let mut s = Self::empty(len);
        for i in 0..len {
            s.insert(i);
        }
        s
    }

    pub fn single(len: usize, i: usize) -> Self {
        let mut s = Self::empty(len);
        s.insert(i);
        s
    }

    pub fn insert(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    pub fn union(&mut self, other: &IndexSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    pub fn intersect(&mut self, other: &IndexSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= b;
        }
    }

    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }
}

/// The routing schema: sharded and broadcast tables, and the default node.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Sharded tables by lower-case logical name.
    pub tables: HashMap<String, Arc<ShardedTable>>,
    /// Broadcast tables, lower case.
    pub broadcast: HashSet<String>,
    pub default_node: usize,
    /// Database of `tessera_sequences` on the default node's primary.
    pub sequence_database: Option<String>,
}

impl Schema {
    pub fn sharded(&self, name: &str) -> Option<&Arc<ShardedTable>> {
        if self.tables.is_empty() {
            return None;
        }
        match self.tables.get(name) {
            Some(t) => Some(t),
            None => self.tables.get(&name.to_ascii_lowercase()),
        }
    }

    pub fn is_broadcast(&self, name: &str) -> bool {
        !self.broadcast.is_empty() && self.broadcast.contains(&name.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn hash_table(locations: &[usize], key_type: KeyType) -> ShardedTable {
        let mut sub_tables = Vec::new();
        for (node, &n) in locations.iter().enumerate() {
            for _ in 0..n {
                let i = sub_tables.len();
                sub_tables.push(SubTable {
                    name: format!("stu_{i:04}"),
                    node,
                });
            }
        }
        ShardedTable {
            name: "stu".into(),
            key: "id".into(),
            function: ShardFn::Hash(key_type),
            sub_tables,
            sequence: None,
            sequence_block: 1000,
        }
    }

    fn num(i: i64) -> Literal {
        Literal::Number(i.to_string())
    }

    #[test]
    fn integer_strings_land_where_their_numbers_do() {
        let t = hash_table(&[4, 4], KeyType::Int);
        assert_eq!(
            t.locate(&Literal::Str("-2882".into())).unwrap(),
            t.locate(&num(-2882)).unwrap()
        );
        assert_eq!(
            t.locate(&num(-2882)).unwrap(),
            (-2882i64).rem_euclid(8) as usize
        );
        assert_eq!(t.locate(&Literal::Number("5.0".into())).unwrap(), 5);
        assert!(t.locate(&Literal::Str("abc".into())).is_err());
        assert!(t.locate(&Literal::Null).is_err());
    }

    #[test]
    fn string_keys_fold_case_and_trailing_spaces() {
        let t = hash_table(&[4, 4], KeyType::Str);
        let a = t.locate(&Literal::Str("Bob".into())).unwrap();
        assert_eq!(a, t.locate(&Literal::Str("bob  ".into())).unwrap());
    }

    #[test]
    fn range_and_date_functions() {
        let mut t = hash_table(&[2, 2], KeyType::Int);
        t.function = ShardFn::Range { limit: 100 };
        assert_eq!(t.locate(&num(0)).unwrap(), 0);
        assert_eq!(t.locate(&num(399)).unwrap(), 3);
        assert!(t.locate(&num(400)).is_err());
        assert!(t.locate(&num(-1)).is_err());
        let set = t
            .locate_range(Bound::Included(&num(150)), Bound::Excluded(&num(300)))
            .unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 2]);

        let periods: BTreeMap<u32, usize> = periods_between(202601, 202612, DateUnit::Month)
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p, i))
            .collect();
        assert_eq!(periods.len(), 12);
        let mut t = hash_table(&[6, 6], KeyType::Int);
        t.function = ShardFn::Date {
            unit: DateUnit::Month,
            periods,
        };
        assert_eq!(
            t.locate(&Literal::Str("2026-11-05 10:00:00".into()))
                .unwrap(),
            10
        );
        assert_eq!(t.locate(&Literal::Number("20260105".into())).unwrap(), 0);
        let set = t
            .locate_range(
                Bound::Included(&Literal::Str("2026-03-01".into())),
                Bound::Included(&Literal::Str("2026-05-31".into())),
            )
            .unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(periods_between(20261230, 20270102, DateUnit::Day).len(), 4);
        assert_eq!(periods_between(20240227, 20240301, DateUnit::Day).len(), 4);
    }

    proptest! {
        #[test]
        fn every_key_maps_to_exactly_one_sub_table(k in any::<i64>(), a in 1usize..9, b in 0usize..9) {
            let t = hash_table(&[a, b], KeyType::Int);
            let i = t.locate(&num(k)).unwrap();
            prop_assert!(i < a + b);
            prop_assert_eq!(i, t.locate(&Literal::Str(k.to_string())).unwrap());
        }

        #[test]
        fn a_range_reaches_every_sub_table_holding_its_keys(lo in -50i64..50, width in 0i64..20) {
            let t = hash_table(&[4, 4], KeyType::Int);
            let hi = lo + width;
            let set = t.locate_range(Bound::Included(&num(lo)), Bound::Included(&num(hi)));
            for k in lo..=hi {
                let i = t.locate(&num(k)).unwrap();
                prop_assert!(set.as_ref().is_none_or(|s| s.contains(i)));
            }
            if let Some(s) = set {
                let exact: HashSet<usize> = (lo..=hi).map(|k| t.locate(&num(k)).unwrap()).collect();
                prop_assert_eq!(s.count(), exact.len());
            }
        }
    }
}
