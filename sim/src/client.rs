//! A minimal MySQL client on turmoil sockets, built from the core's login
//! state machine and framing (the workloads' side of the simulation).

use bytes::BytesMut;
use tessera_core::backend::{self, BackendLogin};
use tessera_core::protocol::{self, CapabilityFlags, FrameReader, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a statement returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok { affected: u64 },
    Rows(Vec<Vec<Option<String>>>),
}

/// Why a statement failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The server (or the proxy) answered with an error packet.
    Server { code: u16, message: String },
    /// The connection broke or the answer was malformed.
    Io(String),
}

pub struct SimClient {
    stream: turmoil::net::TcpStream,
    buf: BytesMut,
}

impl SimClient {
    pub async fn connect(addr: &str, user: &str, password: &str) -> Result<Self, ClientError> {
        let io = |e: std::io::Error| ClientError::Io(e.to_string());
        let mut stream = turmoil::net::TcpStream::connect(addr.to_string())
            .await
            .map_err(io)?;
        let mut buf = BytesMut::new();
        let mut login = BackendLogin::new(user, password, CapabilityFlags::CLIENT_DEPRECATE_EOF);
        loop {
            let pkt = read_packet(&mut stream, &mut buf).await?;
            if pkt.payload.first() == Some(&0xff) {
                let e = protocol::parse_err(&pkt.payload).unwrap_or(protocol::ErrInfo {
                    code: 0,
                    state: String::new(),
                    message: "malformed error".into(),
                });
                return Err(ClientError::Server {
                    code: e.code,
                    message: e.message,
                });
            }
            let reply = login
                .handle_packet(&pkt)
                .map_err(|e| ClientError::Io(e.to_string()))?;
            if let Some(bytes) = reply {
                stream.write_all(&bytes).await.map_err(io)?;
            }
            if login.finished().is_some() {
                return Ok(Self { stream, buf });
            }
        }
    }

    pub async fn query(&mut self, sql: &str) -> Result<Answer, ClientError> {
        self.stream
            .write_all(&backend::query_request(sql))
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let first = read_packet(&mut self.stream, &mut self.buf).await?;
        match first.payload.first() {
            Some(0x00) => {
                let ok =
                    protocol::parse_ok(&first.payload).ok_or(ClientError::Io("bad OK".into()))?;
                Ok(Answer::Ok {
                    affected: ok.affected_rows,
                })
            }
            Some(0xff) => Err(server_error(&first)),
            _ => {
                let mut b = &first.payload[..];
                let n = protocol::read_lenenc_int(&mut b)
                    .ok_or(ClientError::Io("bad column count".into()))?;
                for _ in 0..n {
                    read_packet(&mut self.stream, &mut self.buf).await?;
                }
                let mut rows = Vec::new();
                loop {
                    let p = read_packet(&mut self.stream, &mut self.buf).await?;
                    match p.payload.first() {
                        Some(0xff) => return Err(server_error(&p)),
                        Some(0xfe) if p.payload.len() < 0xff_ffff => return Ok(Answer::Rows(rows)),
                        _ => {
                            let mut b = &p.payload[..];
                            let mut row = Vec::new();
                            for _ in 0..n {
                                if b.first() == Some(&0xfb) {
                                    b = &b[1..];
                                    row.push(None);
                                } else {
                                    let v = protocol::read_lenenc_str(&mut b)
                                        .ok_or(ClientError::Io("bad row".into()))?;
                                    row.push(Some(String::from_utf8_lossy(v).into_owned()));
                                }
                            }
                            rows.push(row);
                        }
                    }
                }
            }
        }
    }
}

fn server_error(p: &Packet) -> ClientError {
    match protocol::parse_err(&p.payload) {
        Some(e) => ClientError::Server {
            code: e.code,
            message: e.message,
        },
        None => ClientError::Io("malformed error packet".into()),
    }
}

async fn read_packet(
    stream: &mut turmoil::net::TcpStream,
    buf: &mut BytesMut,
) -> Result<Packet, ClientError> {
    let mut frames = FrameReader::new(64 << 20);
    loop {
        match frames.next_packet(buf) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(ClientError::Io(e.to_string())),
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err(ClientError::Io("connection closed".into())),
            Ok(_) => {}
            Err(e) => return Err(ClientError::Io(e.to_string())),
        }
    }
}
