//! Bad input and faults: every one gets a clear MySQL error or a clean
//! close, other clients keep working, and no pooled connection goes back dirty.

mod common;

use std::time::Duration;

use common::*;
use mysql_async::prelude::*;
use tessera_net::mariadbd::free_port;
use tessera_net::proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one packet's payload (or None on close).
async fn read_payload(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut h))
        .await
        .ok()?
        .ok()?;
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await.ok()?;
    Some((h[3], p))
}

fn err_code(p: &[u8]) -> Option<u16> {
    (p.first() == Some(&0xff)).then(|| u16::from_le_bytes([p[1], p[2]]))
}

async fn server_code(opts: mysql_async::Opts) -> u16 {
    match mysql_async::Conn::new(opts).await {
        Err(mysql_async::Error::Server(e)) => e.code,
        Err(e) => panic!("expected a server error, got {e}"),
        Ok(_) => panic!("expected a server error, got a connection"),
    }
}

async fn still_works(env: &Env) {
    let mut c = env.proxy_conn().await;
    let v: Option<i32> = c.query_first("SELECT 41 + 1").await.unwrap();
    assert_eq!(v, Some(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_unknown_users_and_garbage() {
    let env = Env::start("max_allowed_packet = 65536").await;
    let port = env.proxy_port();
    assert_eq!(server_code(opts(port, USER, "nope")).await, 1045);
    assert_eq!(server_code(opts(port, "ghost", "x")).await, 1045);
    // caching_sha2 user: full authentication with the RSA exchange, then the fast path.
    for _ in 0..2 {
        let mut c = mysql_async::Conn::new(opts(port, "sha2user", PASSWORD))
            .await
            .unwrap();
        let v: Option<i32> = c.query_first("SELECT 1").await.unwrap();
        assert_eq!(v, Some(1));
    }
    assert_eq!(server_code(opts(port, "sha2user", "bad")).await, 1045);

    // Garbage instead of a handshake response: ERR, then close.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    read_payload(&mut s).await.unwrap();
    s.write_all(&[5, 0, 0, 1, 1, 2, 3, 4, 5]).await.unwrap();
    let (_, p) = read_payload(&mut s).await.unwrap();
    assert_eq!(err_code(&p), Some(1043));
    assert!(
        read_payload(&mut s).await.is_none(),
        "connection closed after the error"
    );

    // After login: unknown command, then wrong sequence id, then oversized packet.
    let mut c = env.proxy_conn().await;
    drop(c.query_drop("SELECT 1").await);
    let raw = raw_login(port).await;
    let mut s = raw;
    s.write_all(&[1, 0, 0, 0, 0xee]).await.unwrap();
    let (_, p) = read_payload(&mut s).await.unwrap();
    assert_eq!(err_code(&p), Some(1047), "unknown command");
    s.write_all(&[
        9, 0, 0, 5, 3, b's', b'e', b'l', b'e', b'c', b't', b' ', b'1',
    ])
    .await
    .unwrap();
    let (_, p) = read_payload(&mut s).await.unwrap();
    assert_eq!(err_code(&p), Some(1156), "packets out of order");
    assert!(read_payload(&mut s).await.is_none());

    let mut s = raw_login(port).await;
    let big = 70_000usize;
    let mut pkt = vec![
        (big & 0xff) as u8,
        ((big >> 8) & 0xff) as u8,
        (big >> 16) as u8,
        0,
        3,
    ];
    pkt.resize(4 + big, b' ');
    s.write_all(&pkt).await.unwrap();
    let (_, p) = read_payload(&mut s).await.unwrap();
    assert_eq!(err_code(&p), Some(1153), "max_allowed_packet");
    still_works(&env).await;
}

/// Logs in with a hand-written handshake response (native password).
async fn raw_login(port: u16) -> TcpStream {
    use mysql_common::auth::plugins::mysql_native_password::scramble_native;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (_, greeting) = read_payload(&mut s).await.unwrap();
    let hs: mysql_common::packets::HandshakePacket<'_> =
        mysql_common::io::ParseBuf(&greeting).parse(()).unwrap();
    let mut nonce = hs.nonce();
    nonce.truncate(20);
    let scramble = scramble_native(&nonce, PASSWORD.as_bytes()).unwrap();
    use mysql_common::constants::CapabilityFlags as F;
    let caps = F::CLIENT_PROTOCOL_41
        | F::CLIENT_SECURE_CONNECTION
        | F::CLIENT_PLUGIN_AUTH
        | F::CLIENT_LONG_PASSWORD;
    let resp = mysql_common::packets::HandshakeResponse::new(
        Some(&scramble[..]),
        (10, 11, 0),
        Some(USER.as_bytes()),
        None::<&[u8]>,
        Some(mysql_common::packets::AuthPlugin::MysqlNativePassword),
        caps,
        None,
        1 << 24,
    );
    let mut payload = Vec::new();
    mysql_common::proto::MySerialize::serialize(&resp, &mut payload);
    let mut pkt = vec![
        (payload.len() & 0xff) as u8,
        (payload.len() >> 8) as u8,
        0,
        1,
    ];
    pkt.extend_from_slice(&payload);
    s.write_all(&pkt).await.unwrap();
    let (_, ok) = read_payload(&mut s).await.unwrap();
    assert_eq!(ok[0], 0, "login OK: {ok:?}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_ip_and_connection_limit() {
    let env = Env::start("allow = [\"10.0.0.0/8\"]").await;
    assert_eq!(server_code(env.proxy_opts()).await, 1130);
    let env2 = Env::start("max_client_connections = 1").await;
    let _first = env2.proxy_conn().await;
    assert_eq!(server_code(env2.proxy_opts()).await, 1040);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_state_leaks_through_the_pool() {
    let env = Env::start("").await;
    // One backend connection only, so the next client gets the same one.
    let mut cfg = common::config_for(&env.primary.addr(), "");
    cfg.pool.max_connections = 1;
    let p = proxy::start(&cfg).await.unwrap();
    let o = opts(p.addr.port(), USER, PASSWORD);
    let mut a = mysql_async::Conn::new(o.clone()).await.unwrap();
    a.query_drop("CREATE TABLE IF NOT EXISTS leak (id INT PRIMARY KEY)")
        .await
        .unwrap();
    let thread_a: u32 = a
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    a.query_drop("SET @secret = 'a', SESSION sql_mode = 'NO_ZERO_DATE', time_zone = '+05:00'")
        .await
        .unwrap();
    a.query_drop("CREATE TEMPORARY TABLE tmp_a (x INT)")
        .await
        .unwrap();
    a.query_drop("BEGIN").await.unwrap();
    a.query_drop("INSERT INTO leak VALUES (1)").await.unwrap();
    drop(a); // disconnect mid-transaction
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = mysql_async::Conn::new(o.clone()).await.unwrap();
    let thread_b: u32 = b
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(thread_a, thread_b, "the pooled connection was reused");
    let secret: Option<Option<String>> = b.query_first("SELECT @secret").await.unwrap();
    assert_eq!(secret, Some(None));
    let tz: Option<String> = b.query_first("SELECT @@time_zone").await.unwrap();
    assert_eq!(tz.as_deref(), Some("SYSTEM"));
    let mode: Option<String> = b.query_first("SELECT @@sql_mode").await.unwrap();
    assert_ne!(mode.as_deref(), Some("NO_ZERO_DATE"));
    assert!(
        b.query_drop("SELECT * FROM tmp_a").await.is_err(),
        "temporary table gone"
    );
    let n: Option<i64> = b.query_first("SELECT COUNT(*) FROM leak").await.unwrap();
    assert_eq!(n, Some(0), "open transaction rolled back");
    drop(b);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_result_set_and_backend_killed_mid_query() {
    let mut env = Env::start("").await;
    let mut c = env.proxy_conn().await;
    c.query_drop("CREATE TABLE many (id INT PRIMARY KEY AUTO_INCREMENT, pad CHAR(200))")
        .await
        .unwrap();
    c.query_drop("INSERT INTO many (pad) SELECT REPEAT('p', 200) FROM seq_1_to_20000")
        .await
        .unwrap();
    // A raw client that asks for a big result and leaves after a few bytes.
    let mut s = raw_login(env.proxy_port()).await;
    let q = b"SELECT * FROM test.many";
    let mut pkt = vec![(q.len() + 1) as u8, 0, 0, 0, 3];
    pkt.extend_from_slice(q);
    s.write_all(&pkt).await.unwrap();
    let mut some = [0u8; 100];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut some))
        .await
        .unwrap()
        .unwrap();
    drop(s);
    still_works(&env).await;

    // The backend dies while a statement runs: a clear error, then recovery.
    let mut victim = env.proxy_conn().await;
    let query = tokio::spawn(async move {
        let r = victim.query_drop("SELECT SLEEP(5)").await;
        (r, victim)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.primary.kill();
    let (r, mut victim) = query.await.unwrap();
    match r {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 2013, "{e}"),
        other => panic!("expected error 2013, got {other:?}"),
    }
    // While the backend is down, statements fail with a clear error.
    match victim.query_drop("SELECT 1").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 2013);
            assert!(e.message.contains("backend"), "{}", e.message);
        }
        other => panic!("expected error 2013, got {other:?}"),
    }
    env.primary.restart().unwrap();
    let v: Option<i32> = victim.query_first("SELECT 7").await.unwrap();
    assert_eq!(v, Some(7));
    still_works(&env).await;
}

/// A backend restart leaves the pool's idle connections closed from the far
/// end: the next client must get a fresh connection, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_closed_by_a_backend_restart_are_not_handed_out() {
    let mut env = Env::start("").await;
    for _ in 0..2 {
        let mut c = env.proxy_conn().await;
        let v: Option<i32> = c.query_first("SELECT 1").await.unwrap();
        assert_eq!(v, Some(1));
        c.disconnect().await.unwrap();
        // The connection is reset and goes back to the idle list.
        tokio::time::sleep(Duration::from_millis(300)).await;
        env.primary.kill();
        env.primary.restart().unwrap();
        still_works(&env).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_at_start() {
    let port = free_port().unwrap();
    let cfg = common::config_for(&format!("127.0.0.1:{port}"), "");
    let p = proxy::start(&cfg)
        .await
        .expect("the proxy starts without its backend");
    let o = opts(p.addr.port(), USER, PASSWORD);
    // Login with a database needs the backend: a clear error.
    assert_eq!(server_code(o.clone()).await, 2013);
    // Without a database the login works and statements fail clearly.
    let mut s = raw_login(p.addr.port()).await;
    s.write_all(&[
        9, 0, 0, 0, 3, b's', b'e', b'l', b'e', b'c', b't', b' ', b'1',
    ])
    .await
    .unwrap();
    let (_, e) = read_payload(&mut s).await.unwrap();
    assert_eq!(err_code(&e), Some(2013));
    assert!(String::from_utf8_lossy(&e).contains("Connection refused"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_uses_tessera_connection_ids() {
    let env = Env::start("").await;
    let mut victim = env.proxy_conn().await;
    let id = victim.id();
    let q = tokio::spawn(async move { victim.query_drop("SELECT SLEEP(20)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut killer = env.proxy_conn().await;
    killer.query_drop(format!("KILL QUERY {id}")).await.unwrap();
    let started = std::time::Instant::now();
    let _ = q.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    match killer.query_drop("KILL 999999").await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1094),
        other => panic!("expected 1094, got {other:?}"),
    }
}
