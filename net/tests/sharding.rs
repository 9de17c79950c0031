//! Sharding through Tessera against real MariaDB: 2 nodes, each a primary
//! and a replica, the playground's example table `stu` split into 8
//! sub-tables. A differential battery compares every answer with the same
//! statement on one plain table directly on MariaDB.

mod common;

use common::{run_text, Outcome};
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder, Value};
use tessera_net::mariadbd;
use tessera_net::playground::{
    self, PlaygroundOptions, Shard, DATABASE, EXAMPLE_BROADCAST_COLUMNS, EXAMPLE_TABLE_COLUMNS,
    PASSWORD, USER,
};
use tessera_net::proxy::{self, RunningProxy};

/// Two shards with a replica each, the proxy, and a reference database
/// `reference` with plain `stu` and `countries` on shard 1's primary.
struct ShardedEnv {
    shards: Vec<Shard>,
    proxy: Option<RunningProxy>,
    _dir: std::path::PathBuf,
}

impl ShardedEnv {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the proxy configuration adjusted by `adjust`.
    async fn start_with(adjust: impl FnOnce(&mut tessera_core::config::Config)) -> Self {
        let dir = mariadbd::scratch_dir("tessera-sharding-test");
        std::fs::create_dir_all(&dir).unwrap();
        let opts = PlaygroundOptions {
            shards: 2,
            replicas: 1,
            port: mariadbd::free_port().unwrap(),
            dir: Some(dir.clone()),
        };
        let (shards, mut config) = playground::start_backends(&opts, &dir).expect("servers start");
        // A port picked before the servers started may be theirs by now.
        config.listen = "127.0.0.1:0".into();
        adjust(&mut config);
        shards[0]
            .primary
            .sql(&format!(
                "CREATE DATABASE reference; CREATE TABLE reference.stu ({EXAMPLE_TABLE_COLUMNS}); \
                 CREATE TABLE reference.countries ({EXAMPLE_BROADCAST_COLUMNS}); \
                 GRANT ALL ON reference.* TO '{USER}'@'%'; GRANT ALL ON reference.* TO '{USER}'@'localhost';"
            ))
            .unwrap();
        let proxy = proxy::start(&config).await.expect("proxy starts");
        ShardedEnv {
            shards,
            proxy: Some(proxy),
            _dir: dir,
        }
    }

    fn proxy_opts(&self) -> Opts {
        let port = self.proxy.as_ref().unwrap().addr.port();
        OptsBuilder::from_opts(common::opts(port, USER, PASSWORD))
            .db_name(Some(DATABASE))
            .into()
    }

    async fn proxy_conn(&self) -> Conn {
        Conn::new(self.proxy_opts()).await.expect("proxy login")
    }

    async fn reference_conn(&self) -> Conn {
        let port = self.shards[0].primary.port;
        let opts =
            OptsBuilder::from_opts(common::opts(port, USER, PASSWORD)).db_name(Some("reference"));
        Conn::new(opts).await.expect("direct login")
    }
}

impl Drop for ShardedEnv {
    fn drop(&mut self) {
        drop(self.proxy.take());
    }
}

/// The test rows: ids spread over every sub-table, NULLs, decimals.
fn rows() -> Vec<String> {
    let names = ["amy", "bob", "cyd", "dee", "eve"];
    let ccs = ["fr", "de", "us"];
    (1..=120)
        .map(|i: i64| {
            let score = if i % 7 == 0 {
                "NULL".to_string()
            } else {
                ((i * 37) % 101).to_string()
            };
            format!(
                "({i}, '{}', {score}, {}.{:02}, '{}')",
                names[(i % 5) as usize],
                (i * 13) % 500,
                (i * 7) % 100,
                ccs[(i % 3) as usize]
            )
        })
        .collect()
}

async fn load(proxy: &mut Conn, reference: &mut Conn) {
    let insert = |rows: &[String]| {
        format!(
            "INSERT INTO stu (id, name, score, amount, cc) VALUES {}",
            rows.join(", ")
        )
    };
    for chunk in rows().chunks(40) {
        proxy
            .query_drop(insert(chunk))
            .await
            .expect("insert through Tessera");
        reference.query_drop(insert(chunk)).await.unwrap();
    }
    let countries = "INSERT INTO countries (code, name) VALUES ('fr', 'France'), ('de', 'Germany'), ('us', 'USA')";
    proxy.query_drop(countries).await.expect("broadcast insert");
    reference.query_drop(countries).await.unwrap();
}

/// Waits until reads through Tessera (on replicas) see every row.
async fn wait_for_replicas(proxy: &mut Conn) {
    for _ in 0..200 {
        let n: Option<i64> = proxy.query_first("SELECT COUNT(*) FROM stu").await.unwrap();
        let c: Option<i64> = proxy
            .query_first("SELECT COUNT(*) FROM countries")
            .await
            .unwrap();
        if n == Some(120) && c == Some(3) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("replicas did not catch up");
}

/// Sorts rows when SQL leaves their order open.
fn normalise(mut outcome: Vec<Outcome>, ordered: bool) -> Vec<Outcome> {
    if !ordered {
        for o in outcome.iter_mut() {
            if let Outcome::Rows { rows, .. } = o {
                rows.sort_by_key(|r| format!("{r:?}"));
            }
        }
    }
    outcome
}

const BATTERY: &[(&str, bool)] = &[
    ("SELECT * FROM stu WHERE id = 7", true),
    ("SELECT id, name FROM stu WHERE id IN (1, 2, 3, 50, '77', -5)", false),
    ("SELECT id FROM stu WHERE id BETWEEN 10 AND 20", false),
    ("SELECT id, score FROM stu WHERE id > 100 AND score > 10", false),
    ("SELECT id, name FROM stu WHERE id = 3 OR id = 4 OR name = 'eve'", false),
    ("SELECT id, name FROM stu ORDER BY id LIMIT 5", true),
    ("SELECT id, name FROM stu ORDER BY id DESC LIMIT 5 OFFSET 3", true),
    ("SELECT id FROM stu ORDER BY score DESC, id LIMIT 10", true),
    ("SELECT id, score FROM stu ORDER BY score, id LIMIT 12", true),
    ("SELECT id, name FROM stu ORDER BY 2, 1 LIMIT 3, 7", true),
    ("SELECT `stu`.id FROM stu ORDER BY stu.amount, stu.id LIMIT 4", true),
    ("SELECT id FROM stu ORDER BY amount * 2 DESC, id LIMIT 6", true),
    ("SELECT COUNT(*) FROM stu", true),
    ("SELECT count( * ), COUNT(score), SUM(score), MIN(score), MAX(score), AVG(score) FROM stu", true),
    ("SELECT SUM(amount), AVG(amount), MIN(amount), MAX(amount) FROM stu", true),
    ("SELECT SUM(score) FROM stu WHERE id > 1000", true),
    ("SELECT AVG(score) AS a, COUNT(*) AS n FROM stu WHERE score IS NULL", true),
    ("SELECT name, COUNT(*), SUM(score) FROM stu GROUP BY name", false),
    ("SELECT cc, AVG(score), MAX(amount) FROM stu GROUP BY cc HAVING COUNT(*) > 39", false),
    ("SELECT cc, COUNT(*) AS n FROM stu GROUP BY cc ORDER BY n DESC, cc", true),
    ("SELECT name, cc, SUM(amount) FROM stu GROUP BY name, cc ORDER BY 3 DESC LIMIT 4", true),
    ("SELECT DISTINCT cc FROM stu", false),
    ("SELECT DISTINCT name, cc FROM stu WHERE id < 40", false),
    ("SELECT MAX(name), MIN(cc) FROM stu", true),
    ("SELECT COUNT(DISTINCT id) FROM stu", true),
    ("SELECT stu.id, c.name FROM stu JOIN countries c ON c.code = stu.cc WHERE stu.id IN (3, 4, 5)", false),
    ("SELECT c.name, COUNT(*) FROM stu JOIN countries c ON c.code = stu.cc GROUP BY c.name", false),
    ("SELECT * FROM countries ORDER BY code", true),
    ("SELECT id FROM stu WHERE id = 99999", true),
    ("SELECT s.name, s.id AS k FROM stu s WHERE s.id = 6", true),
    ("SELECT stu.*, countries.name FROM stu JOIN countries ON countries.code = stu.cc WHERE stu.id = 8", true),
    ("SELECT * FROM stu ORDER BY id LIMIT 3", true),
    ("SELECT * FROM stu JOIN countries c ON c.code = stu.cc ORDER BY c.name, stu.id DESC LIMIT 4", true),
    // Schema-qualified names (`{db}`: each side's own database).
    ("SELECT {db}.stu.name, stu.id FROM {db}.stu WHERE {db}.stu.id = 7", true),
    ("SELECT `{db}`.`stu`.* FROM `{db}`.`stu` WHERE id IN (3, 4)", false),
    ("SELECT {db}.stu.id FROM {db}.stu ORDER BY {db}.stu.score DESC, {db}.stu.id LIMIT 5", true),
    ("SELECT AVG({db}.stu.score), COUNT({db}.stu.id) FROM {db}.stu", true),
    ("SELECT {db}.stu.cc, COUNT(*) FROM {db}.stu GROUP BY {db}.stu.cc ORDER BY {db}.stu.cc", true),
];

/// Column metadata beyond what [`run_text`] compares: schema, table and
/// original names. The proxy's schema is `DATABASE` where the reference's is
/// `reference` (expression labels that spell the database included).
async fn names_of(conn: &mut Conn, sql: &str) -> Vec<[String; 5]> {
    let result = conn.query_iter(sql).await.expect(sql);
    let columns = result.columns().map(|c| c.to_vec()).unwrap_or_default();
    drop(result.drop_result().await);
    columns
        .iter()
        .map(|c| {
            let schema = c.schema_str().into_owned();
            [
                if schema == "reference" {
                    DATABASE.to_string()
                } else {
                    schema
                },
                c.table_str().into_owned(),
                c.org_table_str().into_owned(),
                c.name_str().replace("reference.", &format!("{DATABASE}.")),
                c.org_name_str().into_owned(),
            ]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_answers_match_one_plain_table() {
    let env = ShardedEnv::start().await;
    let mut proxy = env.proxy_conn().await;
    let mut reference = env.reference_conn().await;
    load(&mut proxy, &mut reference).await;
    wait_for_replicas(&mut proxy).await;

    // Rows really are spread: every sub-table holds some, none holds all.
    for (node, shard) in env.shards.iter().enumerate() {
        for k in 0..4 {
            let idx = node * 4 + k;
            let out = shard
                .primary
                .sql(&format!("SELECT COUNT(*) FROM {DATABASE}.stu_{idx:04}"))
                .unwrap();
            assert_eq!(out.trim(), "15", "stu_{idx:04} on shard{}", node + 1);
        }
    }

    let mut mismatches = Vec::new();
    for (sql, ordered) in BATTERY {
        let (through, direct) = (
            sql.replace("{db}", DATABASE),
            sql.replace("{db}", "reference"),
        );
        let got = normalise(run_text(&mut proxy, &through).await, *ordered);
        let mut want = normalise(run_text(&mut reference, &direct).await, *ordered);
        // Labels of expressions spell the database as each side was asked.
        for o in want.iter_mut() {
            if let Outcome::Rows { columns, .. } = o {
                for c in columns.iter_mut() {
                    c.0 = c.0.replace("reference.", &format!("{DATABASE}."));
                }
            }
        }
        if got != want {
            mismatches.push(format!("{sql}\n  tessera: {got:?}\n  mariadb: {want:?}"));
            continue;
        }
        if matches!(want.first(), Some(Outcome::Rows { .. })) {
            let got = names_of(&mut proxy, &through).await;
            let want = names_of(&mut reference, &direct).await;
            if got != want {
                mismatches.push(format!(
                    "{sql} (column names)\n  tessera: {got:?}\n  mariadb: {want:?}"
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        BATTERY.len(),
        mismatches.join("\n")
    );
}

async fn error_of(conn: &mut Conn, sql: &str) -> (u16, String) {
    match conn.query_drop(sql).await {
        Err(mysql_async::Error::Server(e)) => (e.code, e.message),
        other => panic!("`{sql}` should fail, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_transactions_and_refusals() {
    let env = ShardedEnv::start().await;
    let mut c = env.proxy_conn().await;

    // A multi-row insert spanning both nodes that fails on one leaves nothing.
    c.query_drop("INSERT INTO stu (id, name) VALUES (1, 'a'), (4, 'd')")
        .await
        .unwrap();
    let (code, _) = error_of(
        &mut c,
        "INSERT INTO stu (id, name) VALUES (2, 'b'), (5, 'e'), (4, 'dup')",
    )
    .await;
    assert_eq!(code, 1062);
    let n: Option<i64> = c
        .query_first("/*master*/ SELECT COUNT(*) FROM stu")
        .await
        .unwrap();
    assert_eq!(n, Some(2), "the failed insert left rows behind");

    // The shard key cannot change; the message says why.
    let (code, msg) = error_of(&mut c, "UPDATE stu SET id = 9 WHERE id = 1").await;
    assert_eq!(code, 1105);
    assert!(msg.contains("shard key"), "{msg}");
    let (code, msg) = error_of(&mut c, "SELECT SUM(score) * 2 FROM stu").await;
    assert_eq!(code, 1235);
    assert!(msg.contains("aggregates"), "{msg}");

    // A transaction stays on one node; a statement for another is refused
    // and the transaction goes on.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE stu SET name = 'tx' WHERE id = 1")
        .await
        .unwrap();
    let (code, msg) = error_of(&mut c, "UPDATE stu SET name = 'tx' WHERE id = 4").await;
    assert_eq!(code, 1105);
    assert!(msg.contains("transaction"), "{msg}");
    c.query_drop("INSERT INTO stu (id, name) VALUES (9, 'same node')")
        .await
        .unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let names: Vec<(i64, String)> = c
        .query("/*master*/ SELECT id, name FROM stu WHERE id IN (1, 4, 9) ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        names,
        vec![(1, "tx".into()), (4, "d".into()), (9, "same node".into())]
    );

    // Schema-qualified tables and columns reach the right sub-tables.
    let q = |s: &str| s.replace("{db}", DATABASE);
    c.query_drop(q(
        "INSERT INTO {db}.stu (id, name) VALUES (20, 'x'), (21, 'y') ON DUPLICATE KEY UPDATE name = VALUES(name)",
    ))
    .await
    .unwrap();
    // Qualified columns in an INSERT are refused, never sent with the logical name.
    let (code, msg) = error_of(
        &mut c,
        &q("INSERT INTO {db}.stu (id, name) VALUES (22, 'z') ON DUPLICATE KEY UPDATE name = {db}.stu.name"),
    )
    .await;
    assert_eq!(code, 1235);
    assert!(msg.contains("Qualified column names"), "{msg}");
    c.query_drop(q(
        "UPDATE {db}.stu SET {db}.stu.name = CONCAT({db}.stu.name, '!') WHERE {db}.stu.id IN (20, 1)",
    ))
    .await
    .unwrap();
    c.query_drop(q("DELETE FROM {db}.stu WHERE {db}.stu.id = 21"))
        .await
        .unwrap();
    let names: Vec<(i64, String)> = c
        .query(q(
            "/*master*/ SELECT {db}.stu.id, name FROM {db}.stu WHERE id IN (1, 20, 21) ORDER BY {db}.stu.id",
        ))
        .await
        .unwrap();
    assert_eq!(names, vec![(1, "tx!".into()), (20, "x!".into())]);
    c.query_drop(q("DELETE FROM {db}.stu WHERE id = 20"))
        .await
        .unwrap();
    c.query_drop("UPDATE stu SET name = 'tx' WHERE id = 1")
        .await
        .unwrap();

    // ROLLBACK undoes the transaction's rows.
    c.query_drop("START TRANSACTION").await.unwrap();
    c.query_drop("DELETE FROM stu WHERE id = 4").await.unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    let n: Option<i64> = c
        .query_first("/*master*/ SELECT COUNT(*) FROM stu WHERE id = 4")
        .await
        .unwrap();
    assert_eq!(n, Some(1));

    // DESCRIBE and SHOW COLUMNS of the logical table answer from a sub-table.
    let cols: Vec<(String, String, String, String, Option<String>, String)> =
        c.query("DESCRIBE stu").await.unwrap();
    assert_eq!(
        cols.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        vec!["id", "name", "score", "amount", "cc"]
    );
    let n: Vec<mysql_async::Row> = c.query("SHOW COLUMNS FROM stu").await.unwrap();
    assert_eq!(n.len(), 5);

    // EXPLAIN shows the plan without running it.
    let plan: Vec<(String, String, String, String)> = c
        .query("TESSERA EXPLAIN SELECT * FROM stu WHERE id IN (1, 4)")
        .await
        .unwrap();
    assert_eq!(plan.len(), 2);
    assert_eq!(plan[0].0, "shard1");
    assert!(plan[1].2.contains("stu_0004"), "{plan:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_writes_to_primaries() {
    let env = ShardedEnv::start().await;
    let mut c = env.proxy_conn().await;
    let replica_port = env.shards[0].replicas[0].port;
    let primary_port = env.shards[0].primary.port;
    let port = |v: Option<Value>| -> u16 {
        match v {
            Some(Value::Int(p)) => p as u16,
            Some(Value::UInt(p)) => p as u16,
            Some(Value::Bytes(b)) => String::from_utf8(b).unwrap().parse().unwrap(),
            other => panic!("{other:?}"),
        }
    };
    for _ in 0..20 {
        let p: Option<Value> = c.query_first("SELECT @@port").await.unwrap();
        assert_eq!(port(p), replica_port);
    }
    let p: Option<Value> = c.query_first("/*master*/ SELECT @@port").await.unwrap();
    assert_eq!(port(p), primary_port);
    let p: Option<Value> = c.query_first("SELECT @@port FOR UPDATE").await.unwrap();
    assert_eq!(port(p), primary_port);
    c.query_drop("BEGIN").await.unwrap();
    let p: Option<Value> = c.query_first("SELECT @@port").await.unwrap();
    assert_eq!(
        port(p),
        primary_port,
        "reads in a transaction use the primary"
    );
    c.query_drop("COMMIT").await.unwrap();
    // Reads of the second node's sub-tables hit its replica.
    let p: Option<Value> = c.query_first("/*shard2*/ SELECT @@port").await.unwrap();
    assert_eq!(port(p), env.shards[1].replicas[0].port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_route_by_their_parameters() {
    let env = ShardedEnv::start().await;
    let mut c = env.proxy_conn().await;

    // One prepared INSERT fills every sub-table, each execute routed by its key.
    let insert = c
        .prep("INSERT INTO stu (id, name, score, amount) VALUES (?, ?, ?, ?)")
        .await
        .unwrap();
    for id in 1..=16i64 {
        let amount = format!("{id}.25");
        c.exec_drop(&insert, (id, format!("n{id}"), id * 10, amount))
            .await
            .unwrap();
    }
    // `stu` fills a missing id from a sequence; a prepared execute cannot wait for one.
    match c
        .exec_drop(&insert, (Value::NULL, "no id", 1, "1.00"))
        .await
    {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1235);
            assert!(e.message.contains("sequence"), "{}", e.message);
        }
        other => panic!("an execute needing a generated id should be refused, got {other:?}"),
    }
    for (node, shard) in env.shards.iter().enumerate() {
        for k in 0..4 {
            let idx = node * 4 + k;
            let out = shard
                .primary
                .sql(&format!(
                    "SELECT GROUP_CONCAT(id ORDER BY id) FROM {DATABASE}.stu_{idx:04}"
                ))
                .unwrap();
            let want = if idx == 0 {
                "8,16".to_string()
            } else {
                format!("{idx},{}", idx + 8)
            };
            assert_eq!(out.trim(), want, "stu_{idx:04}");
        }
    }

    // Point reads in the binary protocol, with the key as an integer and as a string.
    let select = c
        .prep("SELECT id, name, score, amount FROM stu WHERE id = ?")
        .await
        .unwrap();
    for id in 1..=16i64 {
        let row: Option<(i64, String, i32, String)> = c.exec_first(&select, (id,)).await.unwrap();
        assert_eq!(
            row,
            Some((id, format!("n{id}"), id as i32 * 10, format!("{id}.25")))
        );
        let row: Option<(i64, String, i32, String)> =
            c.exec_first(&select, (id.to_string(),)).await.unwrap();
        assert_eq!(row.map(|r| r.0), Some(id));
    }
    let none: Option<(i64, String, i32, String)> = c.exec_first(&select, (99i64,)).await.unwrap();
    assert_eq!(none, None);
    let null: Option<(i64, String, i32, String)> =
        c.exec_first(&select, (Value::NULL,)).await.unwrap();
    assert_eq!(null, None);

    // Updates and deletes by key; changing the key is refused as in text.
    let update = c
        .prep("UPDATE stu SET score = score + ? WHERE id = ?")
        .await
        .unwrap();
    c.exec_drop(&update, (5, 7i64)).await.unwrap();
    assert_eq!(c.affected_rows(), 1);
    let score: Option<i32> = c
        .exec_first("SELECT score FROM stu WHERE id = ?", (7i64,))
        .await
        .unwrap();
    assert_eq!(score, Some(75));
    match c.prep("UPDATE stu SET id = ? WHERE id = ?").await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1105, "{}", e.message),
        other => panic!("changing the shard key should be refused, got {other:?}"),
    }

    // A statement without a key cannot be prepared; an execute that fans out is refused
    // and the statement stays usable.
    match c.prep("SELECT COUNT(*) FROM stu WHERE name = ?").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1235);
            assert!(e.message.contains("shard key"), "{}", e.message);
        }
        other => panic!("a key-less prepared statement should be refused, got {other:?}"),
    }
    let within = c
        .prep("SELECT COUNT(*) FROM stu WHERE id IN (?, ?)")
        .await
        .unwrap();
    let n: Option<i64> = c.exec_first(&within, (3i64, 11i64)).await.unwrap();
    assert_eq!(n, Some(2), "3 and 11 share stu_0003");
    match c.exec_first::<i64, _, _>(&within, (3i64, 4i64)).await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1235, "{}", e.message),
        other => panic!("a fan-out execute should be refused, got {other:?}"),
    }
    let n: Option<i64> = c.exec_first(&within, (1i64, 9i64)).await.unwrap();
    assert_eq!(n, Some(2));

    // Inside a transaction the statement stays on the transaction's node.
    c.query_drop("BEGIN").await.unwrap();
    c.exec_drop(&update, (1, 1i64)).await.unwrap();
    match c.exec_drop(&update, (1, 4i64)).await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1105, "{}", e.message),
        other => panic!("a cross-node execute in a transaction should be refused, got {other:?}"),
    }
    c.exec_drop(&update, (1, 2i64)).await.unwrap();
    c.query_drop("COMMIT").await.unwrap();
    let scores: Vec<i32> = c
        .query("/*master*/ SELECT score FROM stu WHERE id IN (1, 2, 4) ORDER BY id")
        .await
        .unwrap();
    assert_eq!(scores, vec![11, 21, 40]);

    // Closing the statements closes their variants; the connection stays clean.
    c.close(select).await.unwrap();
    c.close(insert).await.unwrap();
    let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}

/// Cross-shard ORDER BY merges while rows arrive: a sorted answer far larger
/// than `max_merge_bytes` goes through, as long as no part has to be held
/// whole beyond it. Sub-tables `stu_0003` and `stu_0007` (the last of each
/// node, read while the merge runs) hold ~100 KB each; the merge may hold
/// 32 KB per part. Shapes that need every row first still stop at the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_merge_goes_past_max_merge_bytes() {
    let env = ShardedEnv::start_with(|c| c.max_merge_bytes = 32 << 10).await;
    let mut proxy = env.proxy_conn().await;
    let mut reference = env.reference_conn().await;
    let mut ids: Vec<i64> = (0..1500).flat_map(|j| [8 * j + 3, 8 * j + 7]).collect();
    // No id 0: `stu` fills 0 from its sequence, as AUTO_INCREMENT would.
    ids.extend([16, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]);
    let rows: Vec<String> = ids
        .iter()
        .map(|i| format!("({i}, 'row {i:06} {}', {})", "x".repeat(48), i % 97))
        .collect();
    for chunk in rows.chunks(500) {
        let sql = format!(
            "INSERT INTO stu (id, name, score) VALUES {}",
            chunk.join(", ")
        );
        proxy
            .query_drop(&sql)
            .await
            .expect("insert through Tessera");
        reference.query_drop(&sql).await.unwrap();
    }
    for _ in 0..200 {
        let n: Option<i64> = proxy.query_first("SELECT COUNT(*) FROM stu").await.unwrap();
        if n == Some(ids.len() as i64) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    for sql in [
        "SELECT id, name FROM stu ORDER BY id LIMIT 2500",
        "SELECT id, name, score FROM stu ORDER BY score DESC, id",
        "SELECT * FROM stu ORDER BY name DESC LIMIT 10 OFFSET 2900",
    ] {
        let got = run_text(&mut proxy, sql).await;
        let want = run_text(&mut reference, sql).await;
        assert!(
            got == want,
            "{sql}\n  tessera: {got:?}\n  mariadb: {want:?}"
        );
    }
    // Without ORDER BY a LIMIT stops the merge early; the connections are
    // left clean for the next statement.
    let some: Vec<i64> = proxy.query("SELECT id FROM stu LIMIT 7").await.unwrap();
    assert_eq!(some.len(), 7);
    let n: Option<i64> = proxy.query_first("SELECT COUNT(*) FROM stu").await.unwrap();
    assert_eq!(n, Some(ids.len() as i64));
    // DISTINCT needs every row before the first goes out: still limited.
    let (code, msg) = error_of(&mut proxy, "SELECT DISTINCT name FROM stu").await;
    assert_eq!(code, 1105);
    assert!(msg.contains("merge limit"), "{msg}");
    let n: Option<i64> = proxy
        .query_first("SELECT COUNT(*) FROM stu WHERE id < 100")
        .await
        .unwrap();
    assert_eq!(n, Some(37));
}
