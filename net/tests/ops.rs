//! Operations: graceful shutdown, the SQL and slow logs, pool limits and
//! expiry, `check-config`, the playground, and Tessera chained behind
//! Tessera (the backend side of caching_sha2 and auth switch).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use mysql_async::prelude::*;
use tessera_net::proxy;

fn processlist_count(env: &Env, user: &str) -> usize {
    env.primary
        .sql(&format!(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE user = '{user}'"
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_statements_finish() {
    let mut env = Env::start("shutdown_timeout_ms = 5000").await;
    let mut busy = env.proxy_conn().await;
    let idle = env.proxy_conn().await;
    let running = tokio::spawn(async move {
        let v: Option<i64> = busy.query_first("SELECT SLEEP(1) + 5").await.unwrap();
        v
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let port = env.proxy_port();
    let started = Instant::now();
    env.stop_proxy().await;
    assert_eq!(
        running.await.unwrap(),
        Some(5),
        "the in-flight statement finished"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        mysql_async::Conn::new(opts(port, USER, PASSWORD))
            .await
            .is_err(),
        "no longer accepting"
    );
    drop(idle);
}

/// With several event loops, clients are spread over them, and a shutdown
/// lets the statements in flight on every loop finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_loop_serves_and_drains_on_shutdown() {
    let mut env = Env::start("").await;
    env.stop_proxy().await;
    let cfg = common::config_for(&env.primary.addr(), "shutdown_timeout_ms = 5000");
    let p = proxy::start_with_loops(&cfg, 3).await.unwrap();
    let o = opts(p.addr.port(), USER, PASSWORD);
    let mut running = Vec::new();
    for n in 0..3i64 {
        // One client per loop: the acceptor picks the loop serving the fewest.
        let mut c = mysql_async::Conn::new(o.clone()).await.unwrap();
        running.push(tokio::spawn(async move {
            let v: Option<i64> = c
                .query_first(format!("SELECT SLEEP(1) + {n}"))
                .await
                .unwrap();
            v
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    p.shutdown().await;
    for (n, r) in running.into_iter().enumerate() {
        assert_eq!(r.await.unwrap(), Some(n as i64), "statement {n} finished");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        mysql_async::Conn::new(o).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_log_and_slow_log() {
    let dir = tessera_net::mariadbd::scratch_dir("tessera-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let sql_log = dir.join("sql.log");
    let slow_log = dir.join("slow.log");
    let extra = format!(
        "[log]\nsql_log = \"{}\"\nslow_log = \"{}\"\nslow_threshold_ms = 300\n",
        sql_log.display(),
        slow_log.display()
    );
    let env = Env::start("").await;
    // `[log]` is a table: append it after the rest of the config.
    let mut cfg = common::config_for(&env.primary.addr(), "");
    let log_cfg: toml::Value = toml::from_str(&extra).unwrap();
    cfg.log = log_cfg["log"].clone().try_into().unwrap();
    let p = proxy::start(&cfg).await.unwrap();
    let mut c = mysql_async::Conn::new(opts(p.addr.port(), USER, PASSWORD))
        .await
        .unwrap();
    c.query_drop("SELECT 'fast one'").await.unwrap();
    c.query_drop("SELECT SLEEP(0.5), 'slow one'").await.unwrap();
    let _ = c.query_drop("SELECT * FROM missing_table").await;
    drop(c);
    p.shutdown().await;
    let mut sql = String::new();
    let mut slow = String::new();
    wait_for(
        || {
            sql = std::fs::read_to_string(&sql_log).unwrap_or_default();
            slow = std::fs::read_to_string(&slow_log).unwrap_or_default();
            sql.contains("missing_table") && slow.contains("slow one")
        },
        "log lines",
    )
    .await;
    assert!(
        sql.contains("fast one") && sql.contains("slow one"),
        "{sql}"
    );
    assert!(
        sql.lines()
            .any(|l| l.contains("missing_table") && l.contains("\t1146\t")),
        "{sql}"
    );
    assert!(sql.contains(&format!("\t{USER}\t127.0.0.1\t")), "{sql}");
    assert!(!slow.contains("fast one"), "{slow}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_limit_wait_timeout_expiry_and_min_idle() {
    let mut env = Env::start("").await;
    // Only this test's proxies may hold backend connections of `USER`.
    env.stop_proxy().await;
    let mut cfg = common::config_for(&env.primary.addr(), "");
    cfg.pool.max_connections = 1;
    cfg.pool.acquire_timeout_ms = 300;
    cfg.pool.idle_timeout_ms = 400;
    cfg.pool.ping_interval_ms = 200;
    let p = proxy::start(&cfg).await.unwrap();
    let o = opts(p.addr.port(), USER, PASSWORD);
    let mut a = mysql_async::Conn::new(o.clone()).await.unwrap();
    a.query_drop("SELECT 1").await.unwrap();
    // The only backend connection is taken: the next client waits, then gets a clear error.
    let started = Instant::now();
    match mysql_async::Conn::new(o.clone()).await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 2013);
            assert!(e.message.contains("busy"), "{}", e.message);
        }
        other => panic!("expected a pool timeout, got {:?}", other.map(|_| ())),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(a);
    // Released, reset, idle; then expired after idle_timeout_ms.
    wait_for(|| processlist_count(&env, USER) == 0, "idle expiry").await;
    p.shutdown().await;

    let mut cfg = common::config_for(&env.primary.addr(), "");
    cfg.pool.min_idle = 2;
    cfg.pool.ping_interval_ms = 200;
    let p = proxy::start(&cfg).await.unwrap();
    wait_for(
        || processlist_count(&env, USER) >= 2,
        "min_idle connections",
    )
    .await;
    // A pooled connection killed behind the pool's back is found by the ping and replaced.
    let ids = env
        .primary
        .sql(&format!(
            "SELECT id FROM information_schema.processlist WHERE user = '{USER}'"
        ))
        .unwrap();
    let first = ids.lines().next().unwrap().trim().to_string();
    env.primary.sql(&format!("KILL {first}")).unwrap();
    wait_for(
        || {
            let now = env
                .primary
                .sql(&format!(
                    "SELECT id FROM information_schema.processlist WHERE user = '{USER}'"
                ))
                .unwrap();
            now.lines().count() >= 2 && !now.lines().any(|l| l.trim() == first)
        },
        "ping to replace a dead idle connection",
    )
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_tessera_exercises_backend_auth_switch_and_sha2() {
    let env = Env::start("").await;
    // Tessera B in front of MariaDB; its user `sha2user` uses caching_sha2.
    let b = env.proxy.as_ref().unwrap().addr;
    // Tessera A uses B as its backend, logging in as `sha2user`: B's greeting
    // offers native, switches A to caching_sha2, and asks for full
    // authentication (RSA) the first time, the fast path afterwards.
    let mut cfg = common::config_for(&b.to_string(), "");
    cfg.node.as_mut().expect("one node").user = "sha2user".into();
    let a = proxy::start(&cfg).await.unwrap();
    for _ in 0..2 {
        let mut c = mysql_async::Conn::new(opts(a.addr.port(), USER, PASSWORD))
            .await
            .unwrap();
        let v: Option<(i32, String)> = c.query_first("SELECT 3, DATABASE()").await.unwrap();
        assert_eq!(v, Some((3, DB.to_string())));
        // The greeting carries the real server's version through both proxies.
        let direct = env.direct_conn().await;
        assert_eq!(c.server_version(), direct.server_version());
        c.disconnect().await.unwrap();
    }
    a.shutdown().await;
}

fn tessera_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tessera_net::mariadbd::scratch_dir("tessera-check");
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    let cfg = common::config_for("127.0.0.1:3306", "");
    std::fs::write(&good, toml::to_string(&cfg).unwrap()).unwrap();
    let out = Command::new(tessera_bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.join("bad.toml");
    let mut cfg = cfg;
    cfg.pool.max_connections = 0;
    std::fs::write(&bad, toml::to_string(&cfg).unwrap()).unwrap();
    let out = Command::new(tessera_bin())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool.max_connections"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_starts_serves_and_stops_cleanly() {
    let dir = tessera_net::mariadbd::scratch_dir("tessera-pg-test");
    let mut child = Command::new(tessera_bin())
        .args(["playground", "--replicas", "1", "--port", "0", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("playground prints ready:");
        lines.push(line.clone());
        if let Some(rest) = line.split("ready: ").nth(1) {
            break rest.trim().to_string();
        }
    };
    assert!(lines
        .iter()
        .any(|l| l.contains("backend:") && l.contains("primary") && l.contains("127.0.0.1:")));
    let replica = lines
        .iter()
        .find(|l| l.contains("backend:") && l.contains("replica"))
        .expect("a replica line")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let opts = mysql_async::Opts::from_url(&format!("{url}?prefer_socket=false")).unwrap();
    let mut c = mysql_async::Conn::new(opts).await.unwrap();
    c.query_drop("CREATE TABLE pg (id INT PRIMARY KEY)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO pg VALUES (1), (2)")
        .await
        .unwrap();
    // The replica follows the primary by GTID.
    let port: u16 = replica.rsplit(':').next().unwrap().parse().unwrap();
    let mut r = mysql_async::Conn::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some("tessera"))
            .pass(Some("tessera"))
            .prefer_socket(false),
    )
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let n: Option<i64> = r
            .query_first("SELECT COUNT(*) FROM tessera.pg")
            .await
            .unwrap_or(None);
        if n == Some(2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(r);
    drop(c);
    // SIGTERM stops the proxy and every server it started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let leftover = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(
        leftover.stdout.is_empty(),
        "servers left running: {}",
        String::from_utf8_lossy(&leftover.stdout)
    );
    let _ = std::fs::remove_dir_all(dir);
}
