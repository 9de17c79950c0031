//! Global sequences through Tessera against real MariaDB: 2 nodes, the
//! playground's `stu` split into 8 sub-tables with `id` filled from the
//! sequence in `tessera.tessera_sequences` on shard 1, in blocks of 10.

mod common;

use std::collections::BTreeSet;

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder};
use tessera_core::config::Config;
use tessera_net::mariadbd;
use tessera_net::playground::{self, PlaygroundOptions, Shard, DATABASE, PASSWORD, USER};
use tessera_net::proxy::{self, RunningProxy};

const BLOCK: u64 = 10;

struct SeqEnv {
    shards: Vec<Shard>,
    config: Config,
    _dir: std::path::PathBuf,
}

impl SeqEnv {
    fn start() -> Self {
        let dir = mariadbd::scratch_dir("tessera-sequence-test");
        std::fs::create_dir_all(&dir).unwrap();
        let opts = PlaygroundOptions {
            shards: 2,
            replicas: 0,
            port: mariadbd::free_port().unwrap(),
            dir: Some(dir.clone()),
        };
        let (shards, mut config) = playground::start_backends(&opts, &dir).expect("servers start");
        config.listen = "127.0.0.1:0".into();
        assert_eq!(config.schema.tables[0].sequence.as_deref(), Some("id"));
        config.schema.sequence_block = Some(BLOCK);
        // The playground starts its sequence at 1001; this test starts from
        // nothing, so the table must be created on first use.
        shards[0]
            .primary
            .sql(&format!("DROP TABLE {DATABASE}.tessera_sequences"))
            .unwrap();
        SeqEnv {
            shards,
            config,
            _dir: dir,
        }
    }

    async fn proxy(&self) -> RunningProxy {
        proxy::start(&self.config).await.expect("proxy starts")
    }

    /// `next_value` of `stu`'s sequence, read directly on shard 1's primary.
    fn next_value(&self) -> Option<i64> {
        let out = self.shards[0]
            .primary
            .sql(&format!(
                "SELECT next_value FROM {DATABASE}.tessera_sequences WHERE name = 'stu'"
            ))
            .ok()?;
        out.trim().parse().ok()
    }

    /// Every id in the sub-tables of shard `node` (0-based), read directly.
    fn ids_on(&self, node: usize) -> Vec<i64> {
        let union: Vec<String> = (0..4)
            .map(|k| format!("SELECT id FROM {DATABASE}.stu_{:04}", node * 4 + k))
            .collect();
        let out = self.shards[node]
            .primary
            .sql(&union.join(" UNION ALL "))
            .unwrap();
        out.lines().map(|l| l.trim().parse().unwrap()).collect()
    }
}

fn opts(proxy: &RunningProxy) -> Opts {
    OptsBuilder::from_opts(common::opts(proxy.addr.port(), USER, PASSWORD))
        .db_name(Some(DATABASE))
        .into()
}

async fn insert_one(c: &mut Conn, name: &str) -> u64 {
    c.query_drop(format!("INSERT INTO stu (name) VALUES ('{name}')"))
        .await
        .expect("insert without id");
    c.last_insert_id().expect("an insert id is reported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_come_from_a_global_sequence_in_blocks() {
    let env = SeqEnv::start();
    let proxy = env.proxy().await;
    let mut c = Conn::new(opts(&proxy)).await.expect("proxy login");
    assert_eq!(
        env.next_value(),
        None,
        "the sequence table is created on first use"
    );

    // One session, one insert at a time: ids 1, 2, 3, … with one allocation
    // per block of 10, seen in next_value on the default node's primary.
    let mut ids = Vec::new();
    for i in 1..=25u64 {
        let id = insert_one(&mut c, &format!("r{i}")).await;
        ids.push(id);
        let blocks = i.div_ceil(BLOCK);
        assert_eq!(
            env.next_value(),
            Some((1 + blocks * BLOCK) as i64),
            "after {i} inserts"
        );
    }
    assert_eq!(ids, (1..=25).collect::<Vec<u64>>());
    let last: Option<u64> = c.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert_eq!(last, Some(25));

    // A multi-row insert: 5 ids left in the block, then a new block; the
    // client sees the first generated id, as MySQL reports it.
    let rows: Vec<String> = (1..=12).map(|i| format!("('m{i}')")).collect();
    c.query_drop(format!("INSERT INTO stu (name) VALUES {}", rows.join(", ")))
        .await
        .unwrap();
    assert_eq!(c.affected_rows(), 12);
    assert_eq!(c.last_insert_id(), Some(26));
    let last: Option<u64> = c.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    assert_eq!(last, Some(26), "LAST_INSERT_ID() after a multi-node insert");
    assert_eq!(env.next_value(), Some(41));
    let m: Vec<(i64, String)> = c
        .query("SELECT id, name FROM stu WHERE name LIKE 'm%' ORDER BY id")
        .await
        .unwrap();
    let want: Vec<(i64, String)> = (1..=12).map(|i| (25 + i, format!("m{i}"))).collect();
    assert_eq!(m, want);

    // An explicit id is kept; NULL and 0 get generated ones.
    c.query_drop("INSERT INTO stu (id, name) VALUES (1000, 'explicit')")
        .await
        .unwrap();
    c.query_drop("INSERT INTO stu (id, name) VALUES (NULL, 'null'), (0, 'zero')")
        .await
        .unwrap();
    assert_eq!(c.last_insert_id(), Some(38));
    let named: Vec<(String, i64)> = c
        .query("SELECT name, id FROM stu WHERE name IN ('explicit', 'null', 'zero') ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        named,
        vec![
            ("null".into(), 38),
            ("zero".into(), 39),
            ("explicit".into(), 1000)
        ]
    );
    assert!(
        env.ids_on(0).contains(&1000),
        "1000 lives in stu_0000 on shard1"
    );

    // EXPLAIN shows the plan without taking ids.
    let plan: Vec<(String, String, String, String)> = c
        .query("TESSERA EXPLAIN INSERT INTO stu (name) VALUES ('x')")
        .await
        .unwrap();
    assert_eq!(plan.len(), 1);
    assert!(plan[0].2.contains("<next stu.id>"), "{plan:?}");
    assert_eq!(env.next_value(), Some(41));

    // INSERT ... SELECT cannot be filled: refused by name.
    match c
        .query_drop("INSERT INTO stu (name) SELECT name FROM countries")
        .await
    {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1235);
            assert!(e.message.contains("sequence"), "{}", e.message);
        }
        other => panic!("INSERT ... SELECT should be refused, got {other:?}"),
    }

    // In a transaction every row stays on the transaction's node: ids that
    // would land elsewhere are skipped.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("INSERT INTO stu (id, name) VALUES (1001, 'tx')")
        .await
        .unwrap();
    let mut tx_ids = Vec::new();
    for i in 0..6 {
        tx_ids.push(insert_one(&mut c, &format!("tx{i}")).await);
    }
    c.query_drop("INSERT INTO stu (name) VALUES ('tx6'), ('tx7')")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let on_shard1: BTreeSet<i64> = env.ids_on(0).into_iter().collect();
    for id in &tx_ids {
        assert!(
            on_shard1.contains(&(*id as i64)),
            "{id} left the transaction's node"
        );
    }
    let n: Option<i64> = c
        .query_first("SELECT COUNT(*) FROM stu WHERE name LIKE 'tx%'")
        .await
        .unwrap();
    assert_eq!(n, Some(9));

    // Rows are spread over both nodes, and no id is used twice.
    let (a, b) = (env.ids_on(0), env.ids_on(1));
    assert!(!a.is_empty() && !b.is_empty(), "{a:?} / {b:?}");
    let before_restart: BTreeSet<i64> = a.iter().chain(&b).copied().collect();
    assert_eq!(before_restart.len(), a.len() + b.len());
    let high = env.next_value().unwrap();
    drop(c);
    proxy.shutdown().await;

    // A restarted proxy, and a second one beside it, share the sequence:
    // new ids start after every block handed out before, and never collide.
    let p1 = env.proxy().await;
    let p2 = env.proxy().await;
    let mut c1 = Conn::new(opts(&p1)).await.unwrap();
    let mut c2 = Conn::new(opts(&p2)).await.unwrap();
    let mut fresh = BTreeSet::new();
    for i in 0..15 {
        let a = insert_one(&mut c1, &format!("p1-{i}")).await as i64;
        let b = insert_one(&mut c2, &format!("p2-{i}")).await as i64;
        assert!(a >= high && b >= high, "{a}, {b} reuse ids below {high}");
        assert!(
            fresh.insert(a) && fresh.insert(b),
            "{a} or {b} handed out twice"
        );
    }
    let (a, b) = (env.ids_on(0), env.ids_on(1));
    let all: BTreeSet<i64> = a.iter().chain(&b).copied().collect();
    assert_eq!(all.len(), a.len() + b.len(), "an id is stored twice");
    assert_eq!(all.len(), before_restart.len() + 30);
    // Each proxy took blocks of its own: 30 ids, at least 4 blocks.
    assert!(env.next_value().unwrap() >= high + 4 * BLOCK as i64);
    drop((c1, c2));
    p1.shutdown().await;
    p2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_allocation_is_a_clear_error() {
    let mut env = SeqEnv::start();
    env.config.schema.sequence_database = Some("no_such_db".into());
    let proxy = env.proxy().await;
    let mut c = Conn::new(opts(&proxy)).await.unwrap();
    match c.query_drop("INSERT INTO stu (name) VALUES ('x')").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1105);
            assert!(
                e.message.contains("could not allocate ids") && e.message.contains("no_such_db"),
                "{}",
                e.message
            );
        }
        other => panic!("the insert should fail, got {other:?}"),
    }
    // The session goes on; explicit ids need no sequence.
    c.query_drop("INSERT INTO stu (id, name) VALUES (5, 'ok')")
        .await
        .unwrap();
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM stu").await.unwrap();
    assert_eq!(n, Some(1));
    drop(c);
    proxy.shutdown().await;
}
