//! Generated shard answers through the cross-shard merge, checked against a
//! naive reference over all the rows at once: ORDER BY with OFFSET/LIMIT,
//! and GROUP BY with COUNT, SUM, MIN and MAX (NULLs included). Each shard
//! answers with what MariaDB would send for its own rows, partial
//! aggregates included.
#![no_main]

use std::collections::BTreeMap;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mysql_common::constants::ColumnType;
use mysql_common::packets::Column;
use tessera_core::merge::{merge, Agg, MergeSpec, ShardResult, SortKey};

/// A raw row: a group key from a small alphabet and a nullable value.
type Raw = (u8, Option<i64>);

fn col(name: &str, ty: ColumnType) -> Column {
    // Binary strings (charset 63) compare byte by byte, as the reference does.
    Column::new(ty)
        .with_name(name.as_bytes())
        .with_character_set(63)
}

fn cell(v: Option<impl ToString>) -> Option<Bytes> {
    v.map(|v| Bytes::from(v.to_string()))
}

/// Reads the input as shards of raw rows plus the query's knobs.
fn decode(data: &[u8]) -> Option<(Vec<Vec<Raw>>, bool, bool, u64, Option<u64>)> {
    let (&head, mut rest) = data.split_first()?;
    let shards = usize::from(head % 4) + 1;
    let grouped = head & 0x04 != 0;
    let desc = head & 0x08 != 0;
    let (&lim, r) = rest.split_first()?;
    rest = r;
    let offset = u64::from(lim & 0x07);
    let limit = (lim & 0x80 != 0).then_some(u64::from((lim >> 3) & 0x0f));
    let mut out = vec![Vec::new(); shards];
    for (i, pair) in rest.chunks_exact(2).take(256).enumerate() {
        let g = b'a' + pair[0] % 5;
        let v = (pair[1] != 0xff).then_some(i64::from(pair[1] as i8));
        out[i % shards].push((g, v));
    }
    Some((out, grouped, desc, offset, limit))
}

fn window<T>(rows: Vec<T>, offset: u64, limit: Option<u64>) -> Vec<T> {
    let it = rows.into_iter().skip(offset as usize);
    match limit {
        Some(l) => it.take(l as usize).collect(),
        None => it.collect(),
    }
}

fn texts(rows: &[Vec<Option<Bytes>>]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|r| {
            r.iter()
                .map(|c| c.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                .collect()
        })
        .collect()
}

#[derive(Default, Clone)]
struct Aggs {
    count: i64,
    sum: Option<i64>,
    min: Option<i64>,
    max: Option<i64>,
}

impl Aggs {
    fn add(&mut self, v: Option<i64>) {
        if let Some(v) = v {
            self.count += 1;
            self.sum = Some(self.sum.unwrap_or(0) + v);
            self.min = Some(self.min.map_or(v, |m| m.min(v)));
            self.max = Some(self.max.map_or(v, |m| m.max(v)));
        }
    }

    fn row(&self, g: u8) -> Vec<Option<Bytes>> {
        vec![
            cell(Some(g as char)),
            cell(Some(self.count)),
            cell(self.sum),
            cell(self.min),
            cell(self.max),
        ]
    }
}

fn grouped_by_key(rows: impl Iterator<Item = Raw>) -> BTreeMap<u8, Aggs> {
    let mut groups: BTreeMap<u8, Aggs> = BTreeMap::new();
    for (g, v) in rows {
        groups.entry(g).or_default().add(v);
    }
    groups
}

fuzz_target!(|data: &[u8]| {
    let Some((shards, grouped, desc, offset, limit)) = decode(data) else {
        return;
    };
    let order_by = vec![SortKey { column: 0, desc }];
    if grouped {
        // SELECT g, COUNT(v), SUM(v), MIN(v), MAX(v) GROUP BY g ORDER BY g.
        let columns = vec![
            col("g", ColumnType::MYSQL_TYPE_VAR_STRING),
            col("COUNT(v)", ColumnType::MYSQL_TYPE_LONGLONG),
            col("SUM(v)", ColumnType::MYSQL_TYPE_NEWDECIMAL),
            col("MIN(v)", ColumnType::MYSQL_TYPE_LONGLONG),
            col("MAX(v)", ColumnType::MYSQL_TYPE_LONGLONG),
        ];
        let results = shards
            .iter()
            .map(|rows| ShardResult {
                columns: columns.clone(),
                rows: grouped_by_key(rows.iter().copied())
                    .iter()
                    .map(|(g, a)| a.row(*g))
                    .collect(),
                ..Default::default()
            })
            .collect();
        let spec = MergeSpec {
            grouped: true,
            group_by: vec![0],
            aggregates: vec![(1, Agg::Count), (2, Agg::Sum), (3, Agg::Min), (4, Agg::Max)],
            order_by,
            offset,
            limit,
            ..Default::default()
        };
        let merged = merge(&spec, results).expect("well-formed shards merge");
        let mut want: Vec<Vec<Option<Bytes>>> = grouped_by_key(shards.concat().into_iter())
            .iter()
            .map(|(g, a)| a.row(*g))
            .collect();
        if desc {
            want.reverse();
        }
        assert_eq!(texts(&merged.rows), texts(&window(want, offset, limit)));
    } else {
        // SELECT g, v ORDER BY g, v (a total order but for identical rows).
        let columns = vec![
            col("g", ColumnType::MYSQL_TYPE_VAR_STRING),
            col("v", ColumnType::MYSQL_TYPE_LONGLONG),
        ];
        let mut order_by = order_by;
        order_by.push(SortKey { column: 1, desc });
        let key = |r: &Raw| (r.0, r.1);
        let results = shards
            .iter()
            .map(|rows| {
                let mut rows = rows.clone();
                rows.sort_by_key(key);
                if desc {
                    rows.reverse();
                }
                ShardResult {
                    columns: columns.clone(),
                    rows: rows
                        .iter()
                        .map(|(g, v)| vec![cell(Some(*g as char)), cell(*v)])
                        .collect(),
                    ..Default::default()
                }
            })
            .collect();
        let spec = MergeSpec {
            order_by,
            offset,
            limit,
            ..Default::default()
        };
        let merged = merge(&spec, results).expect("well-formed shards merge");
        let mut all = shards.concat();
        all.sort_by_key(key);
        if desc {
            all.reverse();
        }
        let want: Vec<Vec<Option<Bytes>>> = window(all, offset, limit)
            .iter()
            .map(|(g, v)| vec![cell(Some(*g as char)), cell(*v)])
            .collect();
        assert_eq!(texts(&merged.rows), texts(&want));
    }
});
