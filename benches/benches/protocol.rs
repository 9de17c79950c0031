//! Criterion benchmarks of Tessera's sans-IO core: framing, response
//! scanning and one point-select round trip through a client `Session`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use tessera_core::auth::{AuthMethod, PasswordHashes};
use tessera_core::backend::{BackendMeta, ConnState, ResponseKind, ResponseScanner, Step};
use tessera_core::config::User;
use tessera_core::protocol::{
    cmd, format_capabilities, ok_payload, put_lenenc_int, put_lenenc_str, write_packet, FrameReader,
};
use tessera_core::testing::PRIMARY;
use tessera_core::{Output, Session, SessionContext};

const POINT_SELECT: &str = "SELECT c FROM sbtest1 WHERE id=42";
const MAX_ALLOWED_PACKET: usize = 64 << 20;
use tessera_core::testing::{self, PASSWORD, USER};

/// A `COM_QUERY` packet (sequence id 0) for `sql`.
fn com_query(sql: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(sql.len() + 1);
    payload.push(cmd::QUERY);
    payload.extend_from_slice(sql.as_bytes());
    let mut wire = BytesMut::new();
    write_packet(&mut wire, 0, &payload);
    wire.to_vec()
}

/// The column definition of `sbtest1.c` (CHAR(120), utf8mb4).
fn column_def_c() -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    put_lenenc_str(&mut p, b"def");
    put_lenenc_str(&mut p, b"sbtest");
    put_lenenc_str(&mut p, b"sbtest1");
    put_lenenc_str(&mut p, b"sbtest1");
    put_lenenc_str(&mut p, b"c");
    put_lenenc_str(&mut p, b"c");
    put_lenenc_int(&mut p, 0x0c);
    p.extend_from_slice(&45u16.to_le_bytes()); // utf8mb4_general_ci
    p.extend_from_slice(&480u32.to_le_bytes()); // column length
    p.push(0xfe); // MYSQL_TYPE_STRING
    p.extend_from_slice(&1u16.to_le_bytes()); // NOT_NULL
    p.push(0); // decimals
    p.extend_from_slice(&[0, 0]);
    p
}

/// A text result set with one `c` column and `rows` rows, in the
/// `CLIENT_DEPRECATE_EOF` form (no EOF after the definitions, OK-0xFE at the end).
fn result_set(rows: usize) -> Vec<u8> {
    let mut w = BytesMut::new();
    let mut seq = write_packet(&mut w, 1, &[1]);
    seq = write_packet(&mut w, seq, &column_def_c());
    for i in 0..rows {
        let value = format!(
            "{:011}-{}",
            i * 7919 % 100_000,
            "68487932199-96439406143-93774651418-".repeat(3)
        );
        let mut row = Vec::with_capacity(value.len() + 1);
        put_lenenc_str(&mut row, &value.as_bytes()[..value.len().min(120)]);
        seq = write_packet(&mut w, seq, &row);
    }
    write_packet(
        &mut w,
        seq,
        &ok_payload(0xfe, 0, 0, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 0),
    );
    w.to_vec()
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let big_payload = vec![b'x'; 64 << 10];
    let mut big = BytesMut::new();
    write_packet(&mut big, 0, &big_payload);
    for (name, wire) in [
        ("com_query", com_query(POINT_SELECT)),
        ("64KiB", big.to_vec()),
    ] {
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(name, |b| {
            let mut reader = FrameReader::new(MAX_ALLOWED_PACKET);
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |src| {
                    reader.expect_seq(Some(0));
                    let pkt = reader.next_packet(src).unwrap().unwrap();
                    black_box(pkt)
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let mut query = vec![cmd::QUERY];
    query.extend_from_slice(POINT_SELECT.as_bytes());
    let big = vec![b'x'; 64 << 10];
    for (name, payload) in [("com_query", query), ("64KiB", big)] {
        g.throughput(Throughput::Bytes(payload.len() as u64));
        g.bench_function(name, |b| {
            let mut dst = BytesMut::with_capacity(payload.len() + 64);
            b.iter(|| {
                dst.clear();
                let next = write_packet(&mut dst, 0, black_box(&payload));
                black_box((next, dst.len()))
            });
        });
    }
    g.finish();
}

/// Scans a whole response; returns the bytes consumed.
fn scan(wire: &[u8]) -> usize {
    let mut s = ResponseScanner::new(ResponseKind::Generic, true);
    let mut pos = 0;
    while !s.is_done() {
        match s.step(&wire[pos..]) {
            Step::Pass(n) => pos += n,
            Step::Packet { total, .. } => pos += total,
            Step::NeedMore => break,
        }
    }
    pos
}

fn bench_scan(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan_result_set");
    for rows in [1usize, 100] {
        let wire = result_set(rows);
        assert_eq!(
            scan(&wire),
            wire.len(),
            "scanner must find the end of the result set"
        );
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("{rows}_rows"), |b| {
            b.iter(|| scan(black_box(&wire)))
        });
    }
    g.finish();
}

/// Everything the session has output so far.
fn drain(s: &mut Session) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn client_only(outs: Vec<Output>) -> Vec<Bytes> {
    outs.into_iter()
        .map(|o| match o {
            Output::ToClient(b) => b,
            other => panic!("expected only ToClient, got {other:?}"),
        })
        .collect()
}

/// A logged-in session with a backend attached and restored, plus the
/// wire bytes of the query and of the backend's answer to it.
struct Fixture {
    session: Session,
    now: Instant,
    query: Vec<u8>,
    response: Vec<u8>,
}

fn client_capabilities() -> CapabilityFlags {
    CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_DEPRECATE_EOF
        | CapabilityFlags::CLIENT_SESSION_TRACK
}

fn setup_session() -> Fixture {
    let mut users = BTreeMap::new();
    users.insert(
        USER.to_string(),
        User {
            name: USER.to_string(),
            hashes: PasswordHashes::from_password(PASSWORD),
            method: AuthMethod::Native,
            read_your_writes: Default::default(),
        },
    );
    let ctx = Arc::new(SessionContext {
        users,
        sha2_cache: Default::default(),
        rsa: None,
        server_version: "5.5.5-10.11.0-MariaDB".to_string(),
        max_allowed_packet: MAX_ALLOWED_PACKET,
        record_statements: false,
        backend_read_timeout: None,
        router: tessera_core::testing::single_node_router(),
        merge_limit: 64 << 20,
        sequences: Default::default(),
    });
    let now = Instant::now();
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut session = Session::new(ctx, 7, client, [0x5a; 20], now);

    // Greeting → nonce → HandshakeResponse with a native scramble.
    let greeting = client_only(drain(&mut session));
    assert_eq!(greeting.len(), 1);
    let caps = client_capabilities();
    let mut wire = BytesMut::from(&testing::handshake_response(&greeting[0], caps)[..]);
    session.handle_client_data(now, &mut wire);
    let login = client_only(drain(&mut session));
    assert_eq!(login.len(), 1);
    assert_eq!(login[0][4], 0x00, "login must succeed, got {:?}", login[0]);

    let query = com_query(POINT_SELECT);
    let response = result_set(1);

    // First query: the session asks for a backend and restores its state on it.
    let mut cbuf = BytesMut::from(&query[..]);
    session.handle_client_data(now, &mut cbuf);
    let outs = drain(&mut session);
    assert!(
        matches!(outs.as_slice(), [Output::AcquireBackend(_)]),
        "{outs:?}"
    );
    let charset: BTreeMap<String, String> = [
        ("character_set_client", "utf8mb4"),
        ("character_set_connection", "utf8mb4"),
        ("character_set_results", "utf8mb4"),
        ("collation_connection", "utf8mb4_general_ci"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let meta = BackendMeta {
        thread_id: 1,
        server_version: "10.11.0-MariaDB".to_string(),
        capabilities: (caps & format_capabilities())
            | CapabilityFlags::CLIENT_SESSION_TRACK
            | CapabilityFlags::CLIENT_PROTOCOL_41,
        state: ConnState {
            schema: None,
            vars: charset,
            multi_statements: Some(true),
            tracking: true,
        },
    };
    session.handle_backend_attached(now, PRIMARY, meta);
    let mut ok = BytesMut::new();
    write_packet(
        &mut ok,
        1,
        &ok_payload(0, 0, 0, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 0),
    );
    // Answer restore commands (SET …, COM_SET_OPTION) with OK until the
    // client's query reaches the backend.
    let mut forwarded = false;
    for _ in 0..8 {
        let outs = drain(&mut session);
        let mut to_backend = None;
        for o in outs {
            match o {
                Output::ToBackend(_, b) => to_backend = Some(b),
                other => panic!("unexpected output during restore: {other:?}"),
            }
        }
        let sent = to_backend.expect("session sends something to the backend");
        if sent[..] == query[..] {
            forwarded = true;
            break;
        }
        session.handle_backend_data(now, PRIMARY, &mut ok.clone());
    }
    assert!(forwarded, "the query never reached the backend");
    let mut bbuf = BytesMut::from(&response[..]);
    session.handle_backend_data(now, PRIMARY, &mut bbuf);
    let got: Vec<u8> = client_only(drain(&mut session)).concat();
    assert_eq!(got, response);
    assert!(session.is_idle());
    Fixture {
        session,
        now,
        query,
        response,
    }
}

fn bench_session(c: &mut Criterion) {
    let Fixture {
        mut session,
        now,
        query,
        response,
    } = setup_session();
    let mut cbuf = BytesMut::with_capacity(4096);
    let mut bbuf = BytesMut::with_capacity(4096);

    // One checked round trip with the same buffers the timed loop uses.
    cbuf.extend_from_slice(&query);
    session.handle_client_data(now, &mut cbuf);
    let outs = drain(&mut session);
    assert!(
        matches!(outs.as_slice(), [Output::ToBackend(_, b)] if b[..] == query[..]),
        "{outs:?}"
    );
    bbuf.extend_from_slice(&response);
    session.handle_backend_data(now, PRIMARY, &mut bbuf);
    let got: Vec<u8> = client_only(drain(&mut session)).concat();
    assert_eq!(
        got, response,
        "the client must receive exactly the backend's bytes"
    );

    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    g.bench_function("point_select_round_trip", |b| {
        b.iter(|| {
            cbuf.extend_from_slice(&query);
            session.handle_client_data(now, &mut cbuf);
            while let Some(o) = session.poll_output() {
                debug_assert!(matches!(o, Output::ToBackend(..)));
                black_box(o);
            }
            bbuf.extend_from_slice(&response);
            session.handle_backend_data(now, PRIMARY, &mut bbuf);
            while let Some(o) = session.poll_output() {
                debug_assert!(matches!(o, Output::ToClient(_)));
                black_box(o);
            }
        });
    });
    g.finish();
    assert!(session.is_idle());
}

criterion_group!(
    benches,
    bench_decode,
    bench_encode,
    bench_scan,
    bench_session
);
criterion_main!(benches);
