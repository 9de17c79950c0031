//! Routing and merging costs: parse + route + rewrite of the statement
//! shapes the hot path sees, and merge throughput over 4 shards.
//!
//! `cargo bench -p tessera-benches --bench router`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mysql_common::constants::ColumnType;
use mysql_common::packets::Column;
use tessera_core::config::Config;
use tessera_core::merge::{self, Agg, MergeSpec, ShardResult, SortKey};
use tessera_core::router::Router;

const CONFIG: &str = r#"
listen = "127.0.0.1:3307"
[[users]]
name = "app"
password_native = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
[[nodes]]
name = "node1"
primary = "127.0.0.1:3306"
replicas = ["127.0.0.1:3308"]
user = "root"
[[nodes]]
name = "node2"
primary = "127.0.0.1:3316"
user = "root"
[[schema.tables]]
name = "sbtest1"
key = "id"
function = "hash"
locations = [4, 4]
"#;

fn router() -> Router {
    let v = Config::from_toml(CONFIG).unwrap().validate().unwrap();
    Router::new(v.topology, v.schema, v.blacklist)
}

fn routing(c: &mut Criterion) {
    let r = router();
    let mut g = c.benchmark_group("route");
    for (name, sql) in [
        (
            "unsharded_point_select",
            "SELECT c FROM other WHERE id=5012",
        ),
        (
            "sharded_point_select",
            "SELECT c FROM sbtest1 WHERE id=5012",
        ),
        (
            "sharded_in_list",
            "SELECT c FROM sbtest1 WHERE id IN (1, 17, 33, 40, 5012)",
        ),
        (
            "sharded_scatter_order_limit",
            "SELECT id, c FROM sbtest1 WHERE k > 10 ORDER BY c LIMIT 10",
        ),
        (
            "sharded_insert_3_rows",
            "INSERT INTO sbtest1 (id, k, c) VALUES (1, 2, 'a'), (2, 3, 'b'), (3, 4, 'c')",
        ),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(r.route(black_box(sql)))));
    }
    // The hot path as sysbench drives it: one shape, a different key each time,
    // through the plan cache and, for comparison, parsed every time.
    let texts: Vec<String> = (0..1024)
        .map(|i| format!("SELECT c FROM sbtest1 WHERE id={}", i * 7919 % 10000))
        .collect();
    let mut i = 0;
    g.bench_function("sharded_point_select_varying_key", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            black_box(r.route(black_box(&texts[i])))
        })
    });
    g.bench_function("sharded_point_select_varying_key_uncached", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            black_box(r.route_uncached(black_box(&texts[i])))
        })
    });
    g.finish();
}

fn col(name: &str, ty: ColumnType) -> Column {
    Column::new(ty)
        .with_name(name.as_bytes())
        .with_character_set(if ty == ColumnType::MYSQL_TYPE_VAR_STRING {
            45
        } else {
            63
        })
}

fn shards(rows_per_shard: usize) -> Vec<ShardResult> {
    let columns = vec![
        col("grp", ColumnType::MYSQL_TYPE_VAR_STRING),
        col("v", ColumnType::MYSQL_TYPE_LONGLONG),
    ];
    (0..4)
        .map(|s| ShardResult {
            columns: columns.clone(),
            rows: (0..rows_per_shard)
                .map(|i| {
                    vec![
                        Some(Bytes::from(format!("g{}", (i * 7 + s) % 50))),
                        Some(Bytes::from(((i * 31 + s * 17) % 10007).to_string())),
                    ]
                })
                .collect(),
            ..Default::default()
        })
        .collect()
}

fn merging(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge_4_shards");
    let input = shards(1000);
    g.throughput(Throughput::Elements(4000));
    let order = MergeSpec {
        order_by: vec![SortKey {
            column: 1,
            desc: false,
        }],
        limit: Some(100),
        ..Default::default()
    };
    g.bench_function("order_by_limit_4000_rows", |b| {
        b.iter(|| black_box(merge::merge(&order, input.clone()).unwrap()))
    });
    let group = MergeSpec {
        grouped: true,
        group_by: vec![0],
        aggregates: vec![(1, Agg::Sum)],
        ..Default::default()
    };
    g.bench_function("group_by_sum_4000_rows", |b| {
        b.iter(|| black_box(merge::merge(&group, input.clone()).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, routing, merging);
criterion_main!(benches);
