//! Real clients through Tessera: mysql_async (text, binary, transactions,
//! its pool) and the `mariadb` CLI, compared differentially with MariaDB.

mod common;

use common::*;
use mysql_async::prelude::*;
use mysql_async::Value;

const SCHEMA: &str = "
DROP TABLE IF EXISTS types;
CREATE TABLE types (
  id INT PRIMARY KEY,
  n INT NULL,
  i8 TINYINT, u8 TINYINT UNSIGNED, i64 BIGINT, u64 BIGINT UNSIGNED,
  d DECIMAL(20,6), f DOUBLE,
  dt DATE, dtm DATETIME(6), ts TIMESTAMP NULL, tm TIME, tmn TIME(3),
  b BLOB, j JSON, e ENUM('a','b','c'), s SET('x','y','z'),
  txt VARCHAR(100) CHARACTER SET utf8mb4
);
INSERT INTO types VALUES
 (1, NULL, -128, 255, -9223372036854775808, 18446744073709551615, -12345678901234.123456, 3.14159,
  '2026-11-22', '2026-11-22 10:11:12.123456', '2026-11-22 10:11:12', '838:59:59', '-12:34:56.789',
  x'00ff10', '{\"k\": [1, 2]}', 'b', 'x,z', 'héllo wörld 🦀'),
 (2, 7, 0, 0, 0, 0, 0, 0, '1000-01-01', '1000-01-01 00:00:00', NULL, '-838:59:59', '00:00:00',
  '', 'null', 'a', '', '');
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_battery_matches_mariadb() {
    let env = Env::start("").await;
    let mut proxy = env.proxy_conn().await;
    let mut direct = env.direct_conn().await;
    // Schema through the proxy (multi-statement), checked on both.
    let setup = run_text(&mut proxy, SCHEMA).await;
    assert!(
        setup.iter().all(|o| !matches!(o, Outcome::Error(_))),
        "{setup:?}"
    );
    direct
        .query_drop("CREATE PROCEDURE IF NOT EXISTS two_results() BEGIN SELECT 1 AS a; SELECT 'x' AS b, 2.5 AS c; END")
        .await
        .unwrap();

    let statements = [
        "SELECT * FROM types ORDER BY id",
        "SELECT id, n, d * 2, f / 3, CONCAT(txt, '!') FROM types ORDER BY id",
        "SELECT COUNT(*), SUM(i64), MAX(dtm), MIN(tm) FROM types",
        "SELECT 1; SELECT 2, 'two'; SELECT * FROM types WHERE id = 2",
        "CALL two_results()",
        "INSERT INTO types (id) VALUES (1)",
        "SELECT * FROM no_such_table",
        "SELEC 1",
        "UPDATE types SET n = n + 1 WHERE id = 2",
        "SELECT CAST('abc' AS SIGNED)",
        "SHOW WARNINGS",
        "SELECT @@sql_mode, @@autocommit, DATABASE()",
        "DO 1",
        "SELECT REPEAT('z', 70000) AS big",
    ];
    for sql in statements {
        let p = run_text(&mut proxy, sql).await;
        let d = run_text(&mut direct, sql).await;
        assert_eq!(p, d, "text protocol differs for `{sql}`");
    }
    let prepared: Vec<(&str, Vec<Value>)> = vec![
        ("SELECT * FROM types WHERE id = ?", vec![Value::from(1)]),
        (
            "SELECT * FROM types WHERE id > ? ORDER BY id",
            vec![Value::from(0)],
        ),
        (
            "SELECT ?, ?, ?, ?",
            vec![
                Value::NULL,
                Value::from(-5i64),
                Value::from("s"),
                Value::from(2.5f64),
            ],
        ),
        ("INSERT INTO types (id) VALUES (?)", vec![Value::from(2)]),
        ("SELECT * FROM nope WHERE id = ?", vec![Value::from(1)]),
        (
            "SELECT dtm, tm, tmn, ts, dt FROM types WHERE id = ?",
            vec![Value::from(1)],
        ),
    ];
    for (sql, params) in prepared {
        let p = run_binary(&mut proxy, sql, params.clone()).await;
        let d = run_binary(&mut direct, sql, params).await;
        assert_eq!(p, d, "binary protocol differs for `{sql}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_over_16_mib_in_both_protocols() {
    let env = Env::start("").await;
    let mut proxy = env.proxy_conn().await;
    let mut direct = env.direct_conn().await;
    proxy
        .query_drop("CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)")
        .await
        .unwrap();
    let payload = vec![b'q'; 17 << 20];
    proxy
        .exec_drop("INSERT INTO big VALUES (1, ?)", (payload.clone(),))
        .await
        .unwrap();
    proxy
        .query_drop(format!(
            "INSERT INTO big VALUES (2, REPEAT('r', {}))",
            17 << 20
        ))
        .await
        .unwrap();
    for conn in [&mut proxy, &mut direct] {
        let text: Vec<(i32, Vec<u8>)> = conn
            .query("SELECT id, b FROM big ORDER BY id")
            .await
            .unwrap();
        assert_eq!(text.len(), 2);
        assert_eq!(text[0].1, payload);
        assert_eq!(text[1].1.len(), 17 << 20);
        let bin: Option<Vec<u8>> = conn
            .exec_first("SELECT b FROM big WHERE id = ?", (1,))
            .await
            .unwrap();
        assert_eq!(bin.unwrap(), payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_prepared_statements_and_pool() {
    let env = Env::start("").await;
    let mut c = env.proxy_conn().await;
    c.query_drop("CREATE TABLE acct (id INT PRIMARY KEY, bal INT)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO acct VALUES (1, 100), (2, 0)")
        .await
        .unwrap();
    // Rolled back work disappears, committed work stays.
    c.query_drop("BEGIN").await.unwrap();
    c.exec_drop("UPDATE acct SET bal = bal - ? WHERE id = ?", (10, 1))
        .await
        .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    let mut tx = c.start_transaction(Default::default()).await.unwrap();
    tx.exec_drop("UPDATE acct SET bal = bal - ? WHERE id = ?", (30, 1))
        .await
        .unwrap();
    tx.exec_drop("UPDATE acct SET bal = bal + ? WHERE id = ?", (30, 2))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let bals: Vec<(i32, i32)> = c
        .query("SELECT id, bal FROM acct ORDER BY id")
        .await
        .unwrap();
    assert_eq!(bals, vec![(1, 70), (2, 30)]);
    // Autocommit off keeps a transaction open across statements.
    c.query_drop("SET autocommit = 0").await.unwrap();
    c.query_drop("UPDATE acct SET bal = 0").await.unwrap();
    let mut other = env.proxy_conn().await;
    let seen: Vec<i32> = other
        .query("SELECT bal FROM acct ORDER BY id")
        .await
        .unwrap();
    assert_eq!(
        seen,
        vec![70, 30],
        "uncommitted work is invisible to others"
    );
    c.query_drop("ROLLBACK").await.unwrap();
    c.query_drop("SET autocommit = 1").await.unwrap();
    // The same statement prepared many times, and a statement re-executed without rebinding types.
    let stmt = c.prep("SELECT bal FROM acct WHERE id = ?").await.unwrap();
    for _ in 0..50 {
        let v: Option<i32> = c.exec_first(&stmt, (1,)).await.unwrap();
        assert_eq!(v, Some(70));
    }
    // COM_RESET_CONNECTION and COM_CHANGE_USER.
    c.query_drop("SET @x = 5").await.unwrap();
    c.reset().await.unwrap();
    let x: Option<Option<i32>> = c.query_first("SELECT @x").await.unwrap();
    assert_eq!(x, Some(None));
    c.change_user(
        mysql_async::ChangeUserOpts::default()
            .with_user(Some(USER.into()))
            .with_pass(Some(PASSWORD.into()))
            .with_db_name(Some(DB.into())),
    )
    .await
    .unwrap();
    let db: Option<String> = c.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(db.as_deref(), Some(DB));
    // mysql_async's own pool over Tessera, many tasks at once.
    // Each client holds one backend connection: keep the client pool below
    // the proxy's 16 backend connections (two are taken by `c` and `other`).
    let constraints = mysql_async::PoolConstraints::new(0, 8).unwrap();
    let pool_opts = mysql_async::PoolOpts::default().with_constraints(constraints);
    let pool = mysql_async::Pool::new(
        mysql_async::OptsBuilder::from_opts(env.proxy_opts()).pool_opts(pool_opts),
    );
    let mut tasks = Vec::new();
    for i in 0..20 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.get_conn().await.unwrap();
            let v: Option<i64> = conn.exec_first("SELECT ? + 1", (i,)).await.unwrap();
            assert_eq!(v, Some(i + 1));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    pool.disconnect().await.unwrap();
    drop(other);
}

/// The session state `session_state_follows_the_client` sets up.
async fn assert_state_kept(c: &mut mysql_async::Conn) {
    let row: Option<(String, String, String, String)> = c
        .query_first("SELECT @@character_set_client, @@sql_mode, @@time_zone, DATABASE()")
        .await
        .unwrap();
    let expected = ("latin1", "ANSI_QUOTES", "+03:00", "other");
    let row = row.unwrap();
    assert_eq!((&*row.0, &*row.1, &*row.2, &*row.3), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_follows_the_client() {
    let env = Env::start("").await;
    let mut c = env.proxy_conn().await;
    c.query_drop("SET NAMES latin1").await.unwrap();
    c.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES', time_zone = '+03:00'")
        .await
        .unwrap();
    c.query_drop("CREATE DATABASE IF NOT EXISTS other")
        .await
        .unwrap();
    c.query_drop("USE other").await.unwrap();
    assert_state_kept(&mut c).await;
    // Kill the backend connection under the session: the next statement runs
    // on a new pooled connection with the same state.
    let thread: u32 = c
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    env.primary.sql(&format!("KILL {thread}")).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_state_kept(&mut c).await;
    let new_thread: u32 = c
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(thread, new_thread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_works_through_tessera() {
    let env = Env::start("").await;
    let run = |port: u16, sql: &str, extra: &[&str]| {
        let out = std::process::Command::new("mariadb")
            .args([
                "--no-defaults",
                "-h127.0.0.1",
                &format!("-P{port}"),
                &format!("-u{USER}"),
                &format!("-p{PASSWORD}"),
                DB,
            ])
            .args(extra)
            .args(["-e", sql])
            .output()
            .expect("mariadb CLI runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sql = "CREATE TABLE IF NOT EXISTS cli (id INT PRIMARY KEY, v VARCHAR(20)); \
               REPLACE INTO cli VALUES (1, 'one'), (2, 'two'); \
               SELECT * FROM cli ORDER BY id; SELECT COUNT(*) FROM cli; SHOW TABLES; STATUS;";
    let (code, out, err) = run(env.proxy_port(), sql, &[]);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(out.contains("1\tone") && out.contains("2\ttwo"), "{out}");
    let (_, direct_out, _) = run(env.primary.port, "SELECT * FROM cli ORDER BY id", &[]);
    let (_, proxy_out, _) = run(env.proxy_port(), "SELECT * FROM cli ORDER BY id", &[]);
    assert_eq!(direct_out, proxy_out);
    // Errors carry the server's code and message.
    let (code, _, err) = run(env.proxy_port(), "SELECT * FROM missing", &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("ERROR 1146"), "{err}");
    // LOAD DATA LOCAL INFILE streams the client's file through the proxy.
    let file = env.dir.join("rows.csv");
    let mut csv = String::new();
    for i in 10..1010 {
        csv.push_str(&format!("{i},v{i}\n"));
    }
    std::fs::write(&file, csv).unwrap();
    let load = format!(
        "LOAD DATA LOCAL INFILE '{}' INTO TABLE cli FIELDS TERMINATED BY ','; SELECT COUNT(*) FROM cli",
        file.display()
    );
    let (code, out, err) = run(env.proxy_port(), &load, &["--local-infile=1"]);
    assert_eq!(code, Some(0), "stderr: {err}");
    assert!(out.contains("1002"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_over_unix_socket() {
    let env = Env::start("").await;
    let socket = env.primary.socket_path();
    let cfg = common::config_for(&socket.display().to_string(), "");
    let p = tessera_net::proxy::start(&cfg).await.unwrap();
    let mut c = mysql_async::Conn::new(opts(p.addr.port(), USER, PASSWORD))
        .await
        .unwrap();
    let v: Option<(i32, String)> = c.exec_first("SELECT ?, DATABASE()", (5,)).await.unwrap();
    assert_eq!(v, Some((5, DB.to_string())));
    // A statement far bigger than the socket buffer: the proxy's write to the
    // backend blocks and has to wait for room (the stream starts read-only).
    let big = "x".repeat(6 << 20);
    let sql = format!(
        "SELECT LENGTH('{big}'), MD5('{big}') = MD5(REPEAT('x', {}))",
        big.len()
    );
    let v: Option<(u64, bool)> = c.query_first(sql).await.unwrap();
    assert_eq!(v, Some((big.len() as u64, true)));
    let v: Option<Vec<u8>> = c.query_first("SELECT REPEAT('y', 5000000)").await.unwrap();
    assert_eq!(v.map(|b| b.len()), Some(5_000_000));
    drop(c);
    p.shutdown().await;
}
