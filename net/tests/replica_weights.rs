//! Reads spread over replicas by weight, against real MariaDB: a primary
//! and two GTID replicas weighted 1 and 3. Every read asks `@@port`, which
//! says where it ran.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::Conn;
use tessera_net::mariadbd::{scratch_dir, MariaDb};
use tessera_net::proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_replica_weights_and_writes_stay_on_the_primary() {
    let dir = scratch_dir("tessera-weights-test");
    let primary = common::primary_with_table(&dir.join("primary"), "id INT PRIMARY KEY");
    let light = MariaDb::start(&dir.join("light"), 2).expect("replica starts");
    let heavy = MariaDb::start(&dir.join("heavy"), 3).expect("replica starts");
    for r in [&light, &heavy] {
        r.replicate_from(&primary).expect("replication starts");
    }

    let mut config = common::config_for(&primary.addr(), "");
    if let Some(node) = config.node.as_mut() {
        node.replicas = vec![format!("{}@1", light.addr()), format!("{}@3", heavy.addr())];
    }
    let proxy = proxy::start(&config).await.expect("proxy starts");
    let mut conn = Conn::new(common::opts(
        proxy.addr.port(),
        common::USER,
        common::PASSWORD,
    ))
    .await
    .expect("connect through tessera");

    // Both replicas are checked healthy within a couple of seconds of start.
    let port_of = |v: Option<u16>| v.expect("one row");
    let started = Instant::now();
    loop {
        let mut seen = BTreeMap::new();
        for _ in 0..8 {
            let p = port_of(conn.query_first("SELECT @@port").await.unwrap());
            *seen.entry(p).or_insert(0) += 1;
        }
        if seen.contains_key(&light.port) && seen.contains_key(&heavy.port) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "reads never reached both replicas: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut counts: BTreeMap<u16, u32> = BTreeMap::new();
    for _ in 0..400 {
        let p = port_of(conn.query_first("SELECT @@port").await.unwrap());
        *counts.entry(p).or_insert(0) += 1;
    }
    let (l, h) = (counts.get(&light.port), counts.get(&heavy.port));
    assert_eq!(counts.get(&primary.port), None, "{counts:?}");
    // The order is a fixed 1:3 cycle: exact up to where the 400 reads began in it.
    assert!(matches!(l, Some(99..=101)), "{counts:?}");
    assert!(matches!(h, Some(299..=301)), "{counts:?}");

    // Writes and locking reads go to the primary.
    conn.query_drop("INSERT INTO t (id) VALUES (1)")
        .await
        .unwrap();
    let p: Option<u16> = conn
        .query_first("SELECT @@port FROM t WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    assert_eq!(p, Some(primary.port));
}
