//! Read-your-writes against real MariaDB: a primary and a GTID replica whose
//! SQL thread is stopped, so the replica cannot see new writes. Every read
//! asks `@@port`, which says where it ran.

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::Conn;
use tessera_core::config::Config;
use tessera_net::mariadbd::{scratch_dir, MariaDb};
use tessera_net::proxy::{self, RunningProxy};

struct Servers {
    primary: MariaDb,
    replica: MariaDb,
    _dir: std::path::PathBuf,
}

impl Servers {
    fn start() -> Servers {
        let dir = scratch_dir("tessera-ryw-test");
        let primary = common::primary_with_table(&dir.join("primary"), "id INT PRIMARY KEY, v INT");
        let replica = MariaDb::start(&dir.join("replica"), 2).expect("replica starts");
        replica
            .replicate_from(&primary)
            .expect("replication starts");
        let s = Servers {
            primary,
            replica,
            _dir: dir,
        };
        s.wait_for_table();
        s
    }

    fn wait_for_table(&self) {
        let started = Instant::now();
        while self
            .replica
            .sql(&format!("SELECT COUNT(*) FROM {}.t", common::DB))
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the table did not reach the replica"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A proxy in front of both with `[routing]` set to `routing`.
    async fn proxy(&self, mode: &str, window_ms: u64) -> RunningProxy {
        let mut config: Config = common::config_for(&self.primary.addr(), "");
        if let Some(node) = config.node.as_mut() {
            node.replicas = vec![self.replica.addr()];
        }
        config.routing.read_your_writes = mode.into();
        config.routing.read_your_writes_window_ms = window_ms;
        proxy::start(&config).await.expect("proxy starts")
    }

    fn stop_sql_thread(&self) {
        self.replica.sql("STOP SLAVE SQL_THREAD").unwrap();
    }

    fn start_sql_thread(&self) {
        self.replica.sql("START SLAVE SQL_THREAD").unwrap();
    }
}

async fn connect(p: &RunningProxy) -> Conn {
    Conn::new(common::opts(p.addr.port(), common::USER, common::PASSWORD))
        .await
        .expect("connect through tessera")
}

/// Row `id`'s value as the read sees it, and the port of the server that
/// answered.
async fn read(conn: &mut Conn, id: i64) -> (Option<i64>, u16) {
    conn.query_first::<(Option<i64>, u16), _>(format!(
        "SELECT (SELECT v FROM t WHERE id = {id}), @@port"
    ))
    .await
    .expect("read")
    .expect("one row")
}

/// Waits until reads through `conn` land on the replica (health and, in
/// gtid mode, the position poller have had a look).
async fn wait_for_replica_reads(conn: &mut Conn, replica_port: u16) {
    let started = Instant::now();
    while read(conn, 0).await.1 != replica_port {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "reads never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtid_mode_reads_see_the_sessions_writes_and_return_to_the_replica() {
    let s = Servers::start();
    let (primary_port, replica_port) = (s.primary.port, s.replica.port);
    let gtid = s.proxy("gtid", 1000).await;
    let off = s.proxy("off", 1000).await;
    let mut with = connect(&gtid).await;
    let mut without = connect(&off).await;
    wait_for_replica_reads(&mut with, replica_port).await;
    wait_for_replica_reads(&mut without, replica_port).await;

    s.stop_sql_thread();

    // Without read-your-writes the read goes to the replica, which cannot
    // have the row: the test can tell where reads go.
    without
        .query_drop("INSERT INTO t (id, v) VALUES (2, 20)")
        .await
        .unwrap();
    assert_eq!(read(&mut without, 2).await, (None, replica_port));

    // With it, the read after the write goes to the primary and sees it.
    with.query_drop("INSERT INTO t (id, v) VALUES (1, 10)")
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(read(&mut with, 1).await, (Some(10), primary_port));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // So does a write in a transaction, once committed.
    with.query_drop("BEGIN").await.unwrap();
    with.query_drop("UPDATE t SET v = 11 WHERE id = 1")
        .await
        .unwrap();
    with.query_drop("COMMIT").await.unwrap();
    assert_eq!(read(&mut with, 1).await, (Some(11), primary_port));
    // A session that did not write reads the replica as usual.
    let mut other = connect(&gtid).await;
    assert_eq!(read(&mut other, 1).await, (None, replica_port));

    s.start_sql_thread();
    // Back to the replica once it has applied the write; never a stale read
    // on the way.
    let started = Instant::now();
    loop {
        let (v, port) = read(&mut with, 1).await;
        assert_eq!(v, Some(11), "a stale read from port {port}");
        if port == replica_port {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "reads did not return to the replica after it caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read(&mut without, 2).await, (Some(20), replica_port));

    drop((with, without, other));
    gtid.shutdown().await;
    off.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_mode_reads_the_primary_for_the_window_after_a_write() {
    let s = Servers::start();
    let (primary_port, replica_port) = (s.primary.port, s.replica.port);
    let window = s.proxy("window", 1500).await;
    let mut conn = connect(&window).await;
    wait_for_replica_reads(&mut conn, replica_port).await;

    s.stop_sql_thread();
    conn.query_drop("INSERT INTO t (id, v) VALUES (1, 10)")
        .await
        .unwrap();
    let written = Instant::now();
    assert_eq!(read(&mut conn, 1).await, (Some(10), primary_port));
    assert!(
        written.elapsed() < Duration::from_millis(1000),
        "the check above must run well inside the window"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // The window has passed: the replica, although it still lacks the row
    // (a window is a guess at the lag, not a check).
    assert_eq!(read(&mut conn, 1).await, (None, replica_port));

    s.start_sql_thread();
    drop(conn);
    window.shutdown().await;
}
