//! Helpers that drive a [`Session`] without sockets: a context with one
//! user, a client login, and a backend that answers the restore commands.
//! Used by unit tests, property tests, benches and fuzz targets.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use mysql_common::auth::plugins::mysql_native_password::scramble_native;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;

use crate::auth::{AuthMethod, PasswordHashes, Sha2Cache};
use crate::backend::{BackendMeta, ConnState};
use crate::config::User;
use crate::protocol::{self, CapabilityFlags, StatusFlags};
use crate::router::Router;
use crate::session::{Output, Session, SessionContext};
use crate::topology::{Backend, BackendId, Role, Topology};

pub const USER: &str = "app";
pub const PASSWORD: &str = "pw";

/// A context with the user `app`/`pw` (native password).
pub fn context(max_allowed_packet: usize) -> Arc<SessionContext> {
    let mut users = BTreeMap::new();
    users.insert(
        USER.to_string(),
        User {
            name: USER.into(),
            hashes: PasswordHashes::from_password(PASSWORD),
            method: AuthMethod::Native,
            read_your_writes: Default::default(),
        },
    );
    Arc::new(SessionContext {
        users,
        sha2_cache: Arc::new(Sha2Cache::default()),
        rsa: None,
        server_version: "5.5.5-10.11.0-MariaDB".into(),
        max_allowed_packet,
        record_statements: false,
        backend_read_timeout: None,
        router: single_node_router(),
        merge_limit: 64 << 20,
        sequences: Default::default(),
    })
}

/// A context whose router shards `stu` (key `id`, hash) over two nodes with
/// these `locations` (sub-tables per node), each node a lone primary
/// (`BackendId(0)` and `BackendId(1)`), and this merge limit.
pub fn sharded_context(locations: &str, merge_limit: usize) -> Arc<SessionContext> {
    let toml = format!(
        r#"
listen = "127.0.0.1:3307"
[[users]]
name = "app"
password_native = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
[[nodes]]
name = "node1"
primary = "127.0.0.1:3306"
user = "root"
[[nodes]]
name = "node2"
primary = "127.0.0.1:3316"
user = "root"
[[schema.tables]]
name = "stu"
key = "id"
function = "hash"
locations = [{locations}]
"#
    );
    let v = crate::config::Config::from_toml(&toml)
        .and_then(|c| c.validate())
        .expect("test schema is valid");
    let ctx = context(64 << 20);
    let mut ctx = Arc::try_unwrap(ctx).unwrap_or_else(|_| unreachable!("fresh context"));
    ctx.router = Arc::new(Router::new(v.topology, v.schema, v.blacklist));
    ctx.merge_limit = merge_limit;
    Arc::new(ctx)
}

/// The backend a single-node context routes everything to.
pub const PRIMARY: BackendId = BackendId(0);

/// A router for one node with one primary and no sharding.
pub fn single_node_router() -> Arc<Router> {
    let primary = Backend {
        addr: "127.0.0.1:3306".into(),
        node: 0,
        role: Role::Primary,
        weight: 0,
        user: "root".into(),
        password: String::new(),
    };
    let topology = Topology::new(vec![("node1".into(), primary, vec![], false)], 0);
    Arc::new(Router::single(Arc::new(topology)))
}

/// Client capabilities of a typical modern client.
pub fn client_caps() -> CapabilityFlags {
    CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_DEPRECATE_EOF
        | CapabilityFlags::CLIENT_SESSION_TRACK
}

/// Everything the session wants sent, split by destination.
#[derive(Debug, Default)]
pub struct Drained {
    pub to_client: Vec<u8>,
    pub to_backend: Vec<u8>,
    pub acquire: bool,
    pub closed: bool,
}

pub fn drain(session: &mut Session) -> Drained {
    let mut d = Drained::default();
    while let Some(o) = session.poll_output() {
        match o {
            Output::ToClient(b) => d.to_client.extend_from_slice(&b),
            Output::ToBackend(_, b) => d.to_backend.extend_from_slice(&b),
            Output::AcquireBackend(_) => d.acquire = true,
            Output::Close => d.closed = true,
            _ => {}
        }
    }
    d
}

/// The handshake response a client would send to `greeting` (framed, seq 1).
pub fn handshake_response(greeting: &[u8], caps: CapabilityFlags) -> Vec<u8> {
    let hs: HandshakePacket<'_> = ParseBuf(&greeting[4..]).parse(()).expect("greeting parses");
    let mut nonce = hs.nonce();
    nonce.truncate(20);
    let scramble = scramble_native(&nonce, PASSWORD.as_bytes()).expect("non-empty password");
    let resp = HandshakeResponse::new(
        Some(&scramble[..]),
        (10, 11, 0),
        Some(USER.as_bytes()),
        None::<&[u8]>,
        Some(AuthPlugin::MysqlNativePassword),
        caps,
        None,
        1 << 24,
    );
    let mut payload = Vec::new();
    resp.serialize(&mut payload);
    let mut out = BytesMut::new();
    protocol::write_packet(&mut out, 1, &payload);
    out.to_vec()
}

/// A context from a config file's text (users, nodes, schema and
/// routing), as the proxy builds it. Give `app` the password [`PASSWORD`]
/// (see [`password_native`]) to log in with [`logged_in_with`].
pub fn context_from_config(text: &str) -> Arc<SessionContext> {
    let v = crate::config::Config::from_toml(text)
        .expect("config parses")
        .validate()
        .expect("config validates");
    Arc::new(SessionContext {
        users: v
            .users
            .iter()
            .map(|u| (u.name.clone(), u.clone()))
            .collect(),
        sha2_cache: Arc::new(Sha2Cache::default()),
        rsa: None,
        server_version: "5.5.5-10.11.0-MariaDB".into(),
        max_allowed_packet: 1 << 20,
        record_statements: false,
        backend_read_timeout: None,
        router: Arc::new(Router::new(v.topology, v.schema, v.blacklist)),
        merge_limit: 64 << 20,
        sequences: Default::default(),
    })
}

/// [`PASSWORD`]'s `password_native` hash, for configs.
pub fn password_native() -> String {
    PasswordHashes::from_password(PASSWORD).native_string()
}

/// A session that has logged in `app` (no database).
pub fn logged_in(now: Instant, caps: CapabilityFlags, max_allowed_packet: usize) -> Session {
    logged_in_with(context(max_allowed_packet), now, caps)
}

/// A session of `ctx` (which must know the user `app`) that has logged in.
pub fn logged_in_with(ctx: Arc<SessionContext>, now: Instant, caps: CapabilityFlags) -> Session {
    let mut s = Session::new(ctx, 1, IpAddr::V4(Ipv4Addr::LOCALHOST), [7; 20], now);
    let greeting = drain(&mut s).to_client;
    let mut buf = BytesMut::from(&handshake_response(&greeting, caps)[..]);
    s.handle_client_data(now, &mut buf);
    let d = drain(&mut s);
    assert_eq!(d.to_client.get(4), Some(&0), "login OK");
    s
}

/// The meta of a backend connection whose session already matches what a
/// fresh client session wants, so attaching sends no restore commands
/// except those `answer_restore` handles.
pub fn backend_meta(caps: CapabilityFlags) -> BackendMeta {
    BackendMeta {
        thread_id: 42,
        server_version: "5.5.5-10.11.0-MariaDB".into(),
        capabilities: (caps & protocol::format_capabilities())
            | CapabilityFlags::CLIENT_SESSION_TRACK
            | CapabilityFlags::CLIENT_PROTOCOL_41,
        state: ConnState::default(),
    }
}

/// An OK packet (seq 1) after a write, reporting through session tracking
/// that `last_gtid` is now `gtid`, as MariaDB does after a commit.
pub fn ok_with_last_gtid(gtid: &str) -> Vec<u8> {
    let mut p = protocol::ok_payload(
        0,
        1,
        0,
        StatusFlags::SERVER_STATUS_AUTOCOMMIT | StatusFlags::SERVER_SESSION_STATE_CHANGED,
        0,
    );
    protocol::put_lenenc_str(&mut p, b"");
    let mut var = Vec::new();
    protocol::put_lenenc_str(&mut var, b"last_gtid");
    protocol::put_lenenc_str(&mut var, gtid.as_bytes());
    let mut block = vec![0x00];
    protocol::put_lenenc_str(&mut block, &var);
    protocol::put_lenenc_str(&mut p, &block);
    let mut out = BytesMut::new();
    protocol::write_packet(&mut out, 1, &p);
    out.to_vec()
}

/// An OK packet (seq 1) as a backend answers a command.
pub fn ok_reply() -> Vec<u8> {
    let mut out = BytesMut::new();
    protocol::write_packet(
        &mut out,
        1,
        &protocol::ok_payload(0, 0, 0, StatusFlags::SERVER_STATUS_AUTOCOMMIT, 0),
    );
    out.to_vec()
}

/// Attaches a backend after `AcquireBackend` and answers every restore
/// command with OK until the client's own command reaches the backend.
/// Returns the bytes of that command.
pub fn attach_and_restore(s: &mut Session, now: Instant, caps: CapabilityFlags) -> Vec<u8> {
    s.handle_backend_attached(now, PRIMARY, backend_meta(caps));
    for _ in 0..8 {
        let d = drain(s);
        if d.to_backend.is_empty() {
            return Vec::new();
        }
        // Restore commands are SET (COM_QUERY starting with "SET "),
        // COM_SET_OPTION or COM_INIT_DB; anything else is the client's.
        let cmd = d.to_backend.get(4).copied();
        let is_restore = matches!(cmd, Some(0x1b) | Some(0x02))
            || (cmd == Some(0x03) && d.to_backend[5..].starts_with(b"SET session_track"));
        if !is_restore {
            return d.to_backend;
        }
        let mut reply = BytesMut::from(&ok_reply()[..]);
        s.handle_backend_data(now, PRIMARY, &mut reply);
    }
    Vec::new()
}
