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
    deprecate_eof: bool,
}

impl SimClient {
    /// Logs in with `CLIENT_DEPRECATE_EOF`.
    pub async fn connect(addr: &str, user: &str, password: &str) -> Result<Self, ClientError> {
        Self::connect_with(addr, user, password, true).await
    }

    /// Logs in, with or without `CLIENT_DEPRECATE_EOF` (classic EOF packets).
    pub async fn connect_with(
        addr: &str,
        user: &str,
        password: &str,
        deprecate_eof: bool,
    ) -> Result<Self, ClientError> {
        let io = |e: std::io::Error| ClientError::Io(e.to_string());
        let mut stream = turmoil::net::TcpStream::connect(addr.to_string())
            .await
            .map_err(io)?;
        let mut buf = BytesMut::new();
        let caps = if deprecate_eof {
            CapabilityFlags::CLIENT_DEPRECATE_EOF
        } else {
            CapabilityFlags::empty()
        };
        let mut login = BackendLogin::new(user, password, caps);
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
                return Ok(Self {
                    stream,
                    buf,
                    deprecate_eof,
                });
            }
        }
    }

    /// Prepares `sql`, executes it with `params`, and closes it.
    pub async fn prepared(
        &mut self,
        sql: &str,
        params: &[crate::prepared::Param],
    ) -> Result<Answer, ClientError> {
        let io = |e: std::io::Error| ClientError::Io(e.to_string());
        let mut p = vec![protocol::cmd::STMT_PREPARE];
        p.extend_from_slice(sql.as_bytes());
        let mut wire = BytesMut::new();
        protocol::write_packet(&mut wire, 0, &p);
        self.stream.write_all(&wire).await.map_err(io)?;
        let mut prepare = PrepareReader::new(self.deprecate_eof);
        let id = loop {
            let p = read_packet(&mut self.stream, &mut self.buf).await?;
            if let Some(r) = prepare.packet(&p) {
                break r?;
            }
        };
        let request = crate::prepared::execute_request(id, params);
        self.stream.write_all(&request).await.map_err(io)?;
        let mut reader = AnswerReader::new(self.deprecate_eof, true);
        let answer = loop {
            let p = read_packet(&mut self.stream, &mut self.buf).await?;
            if let Some(answer) = reader.packet(&p) {
                break answer;
            }
        };
        let close = crate::prepared::close_request(id);
        self.stream.write_all(&close).await.map_err(io)?;
        answer
    }

    /// A one-packet command (COM_QUERY, COM_RESET_CONNECTION, COM_SET_OPTION)
    /// and its answer.
    pub async fn command(&mut self, packet: &[u8]) -> Result<Answer, ClientError> {
        self.stream
            .write_all(packet)
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let mut reader = AnswerReader::new(self.deprecate_eof, false);
        loop {
            let p = read_packet(&mut self.stream, &mut self.buf).await?;
            if let Some(answer) = reader.packet(&p) {
                return answer;
            }
        }
    }

    pub async fn query(&mut self, sql: &str) -> Result<Answer, ClientError> {
        self.command(&backend::query_request(sql)).await
    }
}

/// COM_SET_OPTION turning multi-statements on or off (framed, seq 0).
pub fn set_option_request(on: bool) -> bytes::Bytes {
    let mut p = vec![protocol::cmd::SET_OPTION];
    p.extend_from_slice(&u16::from(!on).to_le_bytes());
    let mut out = BytesMut::new();
    protocol::write_packet(&mut out, 0, &p);
    out.freeze()
}

/// Reads one answer packet by packet, sans I/O (the client of both
/// simulation tiers).
#[derive(Debug, Default)]
pub struct AnswerReader {
    /// Columns announced, and column definitions (with the EOF after them,
    /// in classic mode) still to come.
    columns: Option<(u64, u64)>,
    rows: Vec<Vec<Option<String>>>,
    /// Rows in the binary protocol (the answer to COM_STMT_EXECUTE).
    binary: bool,
    /// The session negotiated `CLIENT_DEPRECATE_EOF`.
    deprecate_eof: bool,
}

impl AnswerReader {
    /// `binary`: the answer to COM_STMT_EXECUTE.
    pub fn new(deprecate_eof: bool, binary: bool) -> Self {
        AnswerReader {
            binary,
            deprecate_eof,
            ..Self::default()
        }
    }

    /// Takes the next packet; the answer once it is complete.
    pub fn packet(&mut self, p: &Packet) -> Option<Result<Answer, ClientError>> {
        let malformed = |what: &str| Some(Err(ClientError::Io(format!("malformed {what}"))));
        let Some((n, defs_left)) = self.columns else {
            return match p.payload.first() {
                Some(0x00) => match protocol::parse_ok(&p.payload) {
                    Some(ok) if more_results(&p.payload) => {
                        let _ = ok;
                        None
                    }
                    Some(ok) => Some(Ok(Answer::Ok {
                        affected: ok.affected_rows,
                    })),
                    None => malformed("OK"),
                },
                // The EOF that answers COM_SET_OPTION.
                Some(0xfe) if p.payload.len() < 9 => Some(Ok(Answer::Ok { affected: 0 })),
                Some(0xff) => Some(Err(server_error(p))),
                _ => {
                    let mut b = &p.payload[..];
                    match protocol::read_lenenc_int(&mut b) {
                        Some(n) if n > 0 => {
                            self.columns = Some((n, n + u64::from(!self.deprecate_eof)));
                            None
                        }
                        _ => malformed("column count"),
                    }
                }
            };
        };
        if defs_left > 0 {
            self.columns = Some((n, defs_left - 1));
            return None;
        }
        match p.payload.first() {
            Some(0xff) => Some(Err(server_error(p))),
            Some(0xfe) if p.payload.len() < if self.deprecate_eof { 0xff_ffff } else { 9 } => {
                let rows = std::mem::take(&mut self.rows);
                if more_results(&p.payload) {
                    // Another result follows; the answer is the last one.
                    self.columns = None;
                    return None;
                }
                Some(Ok(Answer::Rows(rows)))
            }
            _ if self.binary => {
                let Some(row) = crate::prepared::parse_binary_row(&p.payload, n as usize) else {
                    return malformed("binary row");
                };
                self.rows.push(row);
                None
            }
            _ => {
                let mut b = &p.payload[..];
                let mut row = Vec::new();
                for _ in 0..n {
                    if b.first() == Some(&0xfb) {
                        b = &b[1..];
                        row.push(None);
                    } else {
                        let Some(v) = protocol::read_lenenc_str(&mut b) else {
                            return malformed("row");
                        };
                        row.push(Some(String::from_utf8_lossy(v).into_owned()));
                    }
                }
                self.rows.push(row);
                None
            }
        }
    }
}

/// An OK or EOF payload says more results follow.
fn more_results(payload: &[u8]) -> bool {
    let status = if payload.len() < 9 && payload.first() == Some(&0xfe) && payload.len() >= 5 {
        Some(u16::from_le_bytes([payload[3], payload[4]]))
    } else {
        protocol::parse_ok(payload).map(|ok| ok.status.bits())
    };
    status.is_some_and(|s| s & protocol::StatusFlags::SERVER_MORE_RESULTS_EXISTS.bits() != 0)
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

/// Reads the answer to COM_STMT_PREPARE: the statement id once every
/// parameter and column definition (and EOF, in classic mode) has passed.
#[derive(Debug, Default)]
pub struct PrepareReader {
    stmt: Option<(u32, usize)>,
    deprecate_eof: bool,
}

impl PrepareReader {
    pub fn new(deprecate_eof: bool) -> Self {
        PrepareReader {
            stmt: None,
            deprecate_eof,
        }
    }

    pub fn packet(&mut self, p: &Packet) -> Option<Result<u32, ClientError>> {
        match self.stmt {
            None => match p.payload.first() {
                Some(0x00) if p.payload.len() >= 9 => {
                    let b = &p.payload;
                    let id = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
                    let groups = [
                        u16::from_le_bytes([b[5], b[6]]),
                        u16::from_le_bytes([b[7], b[8]]),
                    ];
                    let eofs = if self.deprecate_eof { 0 } else { 1 };
                    let defs: usize = groups
                        .iter()
                        .filter(|n| **n > 0)
                        .map(|n| *n as usize + eofs)
                        .sum();
                    if defs == 0 {
                        return Some(Ok(id));
                    }
                    self.stmt = Some((id, defs));
                    None
                }
                Some(0xff) => Some(Err(server_error(p))),
                _ => Some(Err(ClientError::Io("malformed prepare answer".into()))),
            },
            Some((id, 1)) => Some(Ok(id)),
            Some((id, left)) => {
                self.stmt = Some((id, left - 1));
                None
            }
        }
    }
}
