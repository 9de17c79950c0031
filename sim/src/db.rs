//! A simulated MySQL server: the wire protocol through the core's codec and
//! a tiny engine over one table `kv (k BIGINT PRIMARY KEY, v BIGINT)` with
//! transactions and a GTID counter. A test double, kept obviously correct.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use mysql_common::constants::ColumnType;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{Column, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize;
use tessera_core::auth::PasswordHashes;
use tessera_core::protocol::{
    self, cmd, encode_text_result, eof_payload, err_payload, ok_payload, CapabilityFlags,
    FrameReader, StatusFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const USER: &str = "app";
pub const PASSWORD: &str = "pw";

/// Durable state: survives a crash of the host (it lives outside the host's
/// future), as committed data survives a real server's crash.
#[derive(Debug, Default)]
pub struct Storage {
    pub data: BTreeMap<i64, i64>,
    pub gtid: u64,
    next_conn: u32,
}

pub type SharedStorage = Arc<Mutex<Storage>>;

/// Serves MySQL on port 3306 until the host is crashed.
pub async fn serve(storage: SharedStorage) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind("0.0.0.0:3306").await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let storage = storage.clone();
        tokio::spawn(async move {
            let _ = Connection::new(stream, storage).run().await;
        });
    }
}

struct Connection {
    stream: turmoil::net::TcpStream,
    buf: BytesMut,
    storage: SharedStorage,
    deprecate_eof: bool,
    /// Writes of the open transaction (`None`: autocommit).
    tx: Option<BTreeMap<i64, i64>>,
}

enum Reply {
    Ok(u64),
    Rows(Vec<&'static str>, Vec<Vec<Option<String>>>),
    Err(u16, String),
}

impl Connection {
    fn new(stream: turmoil::net::TcpStream, storage: SharedStorage) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            storage,
            deprecate_eof: false,
            tx: None,
        }
    }

    async fn read(&mut self, frames: &mut FrameReader) -> std::io::Result<protocol::Packet> {
        loop {
            if let Ok(Some(p)) = frames.next_packet(&mut self.buf) {
                return Ok(p);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn send(&mut self, seq: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        protocol::write_packet(&mut out, seq, payload);
        self.stream.write_all(&out).await
    }

    fn status(&self) -> StatusFlags {
        let mut s = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        if self.tx.is_some() {
            s |= StatusFlags::SERVER_STATUS_IN_TRANS;
        }
        s
    }

    async fn run(mut self) -> std::io::Result<()> {
        let conn_id = {
            let mut s = self.storage.lock().unwrap();
            s.next_conn += 1;
            s.next_conn
        };
        let nonce = *b"simulated-nonce-1234";
        let caps = protocol::server_capabilities();
        let scramble_2 = [&nonce[8..], &[0u8][..]].concat();
        let hs = HandshakePacket::new(
            10,
            &b"5.5.5-10.11.0-SimDB"[..],
            conn_id,
            nonce[..8].try_into().unwrap(),
            Some(&scramble_2[..]),
            caps,
            45,
            StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            Some(&b"mysql_native_password"[..]),
        );
        let mut payload = Vec::new();
        hs.serialize(&mut payload);
        self.send(0, &payload).await?;
        let mut frames = FrameReader::new(16 << 20);
        let login = self.read(&mut frames).await?;
        let hr: HandshakeResponse<'_> = ParseBuf(&login.payload)
            .parse(())
            .map_err(|_| std::io::Error::other("bad handshake"))?;
        let ok = hr.user() == USER.as_bytes()
            && PasswordHashes::from_password(PASSWORD).verify_native(&nonce, hr.scramble_buf());
        if !ok {
            self.send(2, &err_payload(1045, "28000", "Access denied"))
                .await?;
            return Ok(());
        }
        self.deprecate_eof = hr
            .capabilities()
            .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
        self.send(2, &ok_payload(0, 0, 0, self.status(), 0)).await?;
        loop {
            frames.expect_seq(Some(0));
            let pkt = self.read(&mut frames).await?;
            match pkt.payload.first().copied() {
                Some(cmd::QUIT) | None => return Ok(()),
                Some(cmd::QUERY) => {
                    let sql = String::from_utf8_lossy(&pkt.payload[1..]).into_owned();
                    let reply = self.execute(&sql);
                    self.reply(reply).await?;
                }
                Some(cmd::RESET_CONNECTION) => {
                    self.tx = None;
                    self.send(1, &ok_payload(0, 0, 0, self.status(), 0)).await?;
                }
                Some(cmd::PING) | Some(cmd::INIT_DB) => {
                    self.send(1, &ok_payload(0, 0, 0, self.status(), 0)).await?;
                }
                Some(cmd::SET_OPTION) => {
                    let p = if self.deprecate_eof {
                        ok_payload(0xfe, 0, 0, self.status(), 0)
                    } else {
                        eof_payload(0, self.status())
                    };
                    self.send(1, &p).await?;
                }
                Some(other) => {
                    self.send(
                        1,
                        &err_payload(1047, "08S01", &format!("Unknown command {other}")),
                    )
                    .await?;
                }
            }
        }
    }

    async fn reply(&mut self, reply: Reply) -> std::io::Result<()> {
        match reply {
            Reply::Ok(affected) => {
                self.send(1, &ok_payload(0, affected, 0, self.status(), 0))
                    .await
            }
            Reply::Err(code, msg) => self.send(1, &err_payload(code, "HY000", &msg)).await,
            Reply::Rows(names, rows) => {
                let cols: Vec<Column> = names
                    .iter()
                    .map(|n| Column::new(ColumnType::MYSQL_TYPE_VAR_STRING).with_name(n.as_bytes()))
                    .collect();
                let cells: Vec<Vec<Option<&[u8]>>> = rows
                    .iter()
                    .map(|r| r.iter().map(|c| c.as_deref().map(str::as_bytes)).collect())
                    .collect();
                let wire = encode_text_result(&cols, &cells, self.deprecate_eof, self.status());
                self.stream.write_all(&wire).await
            }
        }
    }

    fn execute(&mut self, sql: &str) -> Reply {
        let s = sql.trim().trim_end_matches(';').to_ascii_lowercase();
        let words: Vec<&str> = s
            .split(|c: char| c.is_whitespace() || "(),=".contains(c))
            .filter(|w| !w.is_empty())
            .collect();
        match words.as_slice() {
            ["set", ..] => Reply::Ok(0),
            ["begin"] | ["start", "transaction"] => {
                self.tx = Some(BTreeMap::new());
                Reply::Ok(0)
            }
            ["commit"] => {
                if let Some(writes) = self.tx.take() {
                    let mut st = self.storage.lock().unwrap();
                    if !writes.is_empty() {
                        st.gtid += 1;
                    }
                    st.data.extend(writes);
                }
                Reply::Ok(0)
            }
            ["rollback"] => {
                self.tx = None;
                Reply::Ok(0)
            }
            ["replace", "into", "kv", "values", k, v] => match (k.parse::<i64>(), v.parse::<i64>())
            {
                (Ok(k), Ok(v)) => {
                    match self.tx.as_mut() {
                        Some(tx) => {
                            tx.insert(k, v);
                        }
                        None => {
                            let mut st = self.storage.lock().unwrap();
                            st.gtid += 1;
                            st.data.insert(k, v);
                        }
                    }
                    Reply::Ok(1)
                }
                _ => Reply::Err(1064, format!("bad values in `{sql}`")),
            },
            ["select", "v", "from", "kv", "where", "k", k] => match k.parse::<i64>() {
                Ok(k) => {
                    let own = self.tx.as_ref().and_then(|t| t.get(&k).copied());
                    let v = own.or_else(|| self.storage.lock().unwrap().data.get(&k).copied());
                    Reply::Rows(
                        vec!["v"],
                        v.map(|v| vec![Some(v.to_string())]).into_iter().collect(),
                    )
                }
                Err(_) => Reply::Err(1064, format!("bad key in `{sql}`")),
            },
            ["select", "@@gtid_current_pos"] => {
                let g = self.storage.lock().unwrap().gtid;
                Reply::Rows(
                    vec!["@@gtid_current_pos"],
                    vec![vec![Some(format!("0-1-{g}"))]],
                )
            }
            ["select", "@@read_only"] => {
                Reply::Rows(vec!["@@read_only"], vec![vec![Some("0".into())]])
            }
            _ => Reply::Err(
                1064,
                format!("You have an error in your SQL syntax near `{sql}`"),
            ),
        }
    }
}
