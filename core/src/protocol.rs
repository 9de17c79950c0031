//! Wire-level helpers: framing (built on `mysql_common`'s chunk decoder and
//! splitter), the packets `mysql_common` cannot encode for a server (OK, ERR,
//! EOF), and small readers for length-encoded values.

use bytes::{Buf, BufMut, Bytes, BytesMut};
pub use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::proto::codec::{packet_to_chunks, ChunkDecoder, ChunkInfo};

/// Largest payload of one wire chunk; bigger packets are split.
pub const MAX_CHUNK: usize = 0xFF_FFFF;

/// Command bytes of the MySQL text protocol that Tessera handles.
pub mod cmd {
    pub const SLEEP: u8 = 0x00;
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const RESET_CONNECTION: u8 = 0x1f;
}

/// MySQL error codes Tessera sends itself.
pub mod code {
    pub const ER_CON_COUNT_ERROR: u16 = 1040;
    pub const ER_HANDSHAKE_ERROR: u16 = 1043;
    pub const ER_ACCESS_DENIED: u16 = 1045;
    pub const ER_UNKNOWN_COM_ERROR: u16 = 1047;
    pub const ER_HOST_NOT_PRIVILEGED: u16 = 1130;
    pub const ER_NO_SUCH_THREAD: u16 = 1094;
    pub const ER_UNKNOWN_ERROR: u16 = 1105;
    pub const ER_NET_PACKET_TOO_LARGE: u16 = 1153;
    pub const ER_NET_PACKETS_OUT_OF_ORDER: u16 = 1156;
    pub const ER_NET_READ_ERROR: u16 = 1158;
    pub const ER_UNKNOWN_STMT_HANDLER: u16 = 1243;
    pub const ER_MALFORMED_PACKET: u16 = 1835;
    pub const ER_CONNECT_TO_BACKEND: u16 = 2013;
    pub const ER_SERVER_SHUTDOWN: u16 = 1053;
    pub const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const ER_QUERY_INTERRUPTED: u16 = 1317;
}

/// A complete logical packet read from the wire.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Sequence id of the packet's first chunk.
    pub seq: u8,
    /// Sequence id of its last chunk (differs only for packets over 16 MiB).
    pub last_seq: u8,
    pub payload: Bytes,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("packet of more than {max} bytes exceeds max_allowed_packet")]
    TooLarge { max: usize },
    #[error("packet sequence id {got} where {expected} was expected")]
    OutOfOrder { expected: u8, got: u8 },
}

/// Reassembles logical packets (joining 16 MiB chunks) and checks sequence ids.
#[derive(Debug)]
pub struct FrameReader {
    chunks: ChunkDecoder,
    payload: BytesMut,
    first_seq: Option<u8>,
    expected_seq: Option<u8>,
    max_allowed_packet: usize,
}

impl FrameReader {
    pub fn new(max_allowed_packet: usize) -> Self {
        Self {
            chunks: ChunkDecoder::default(),
            payload: BytesMut::new(),
            first_seq: None,
            expected_seq: None,
            max_allowed_packet,
        }
    }

    /// The next packet must carry this sequence id (`None`: any id is accepted,
    /// the caller checks it).
    pub fn expect_seq(&mut self, seq: Option<u8>) {
        self.expected_seq = seq;
    }

    /// Whether a partially received packet is buffered.
    pub fn is_mid_packet(&self) -> bool {
        self.first_seq.is_some() || !matches!(self.chunks, ChunkDecoder::Idle)
    }

    /// Takes the next complete packet out of `src`, if there is one.
    pub fn next_packet(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, FrameError> {
        loop {
            if let (Some(expected), ChunkDecoder::Idle) = (self.expected_seq, self.chunks) {
                if src.len() >= 4 && src[3] != expected {
                    return Err(FrameError::OutOfOrder {
                        expected,
                        got: src[3],
                    });
                }
            }
            let info = match self
                .chunks
                .decode(src, &mut self.payload, self.max_allowed_packet)
            {
                Ok(Some(info)) => info,
                Ok(None) => return Ok(None),
                Err(_) => {
                    return Err(FrameError::TooLarge {
                        max: self.max_allowed_packet,
                    })
                }
            };
            let seq = match info {
                ChunkInfo::Middle(s) | ChunkInfo::Last(s) => s,
            };
            let first = *self.first_seq.get_or_insert(seq);
            if self.expected_seq.is_some() {
                self.expected_seq = Some(seq.wrapping_add(1));
            }
            if let ChunkInfo::Last(_) = info {
                self.first_seq = None;
                return Ok(Some(Packet {
                    seq: first,
                    last_seq: seq,
                    payload: self.payload.split().freeze(),
                }));
            }
        }
    }
}

/// Appends `payload` framed as a packet (split at 16 MiB) and returns the next
/// sequence id.
pub fn write_packet(dst: &mut BytesMut, seq: u8, payload: &[u8]) -> u8 {
    let mut src = payload;
    if payload.is_empty() {
        dst.put_slice(&[0, 0, 0, seq]);
        return seq.wrapping_add(1);
    }
    packet_to_chunks(seq, &mut src, dst)
}

/// Builds an ERR packet payload (protocol 4.1 form with SQL state).
pub fn err_payload(code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(9 + message.len());
    p.push(0xff);
    p.put_u16_le(code);
    p.push(b'#');
    let mut st = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in st.iter_mut().zip(state.bytes()) {
        *d = s;
    }
    p.extend_from_slice(&st);
    p.extend_from_slice(message.as_bytes());
    p
}

/// The SQL state MySQL uses for a given error code (enough for the codes
/// Tessera sends itself).
pub fn sql_state_for(code: u16) -> &'static str {
    match code {
        code::ER_ACCESS_DENIED => "28000",
        code::ER_HANDSHAKE_ERROR | code::ER_HOST_NOT_PRIVILEGED => "08S01",
        code::ER_UNKNOWN_COM_ERROR => "08S01",
        code::ER_NET_PACKET_TOO_LARGE | code::ER_NET_PACKETS_OUT_OF_ORDER => "08S01",
        code::ER_NET_READ_ERROR => "08S01",
        code::ER_CON_COUNT_ERROR => "08004",
        code::ER_CONNECT_TO_BACKEND => "08S01",
        code::ER_SERVER_SHUTDOWN => "08S01",
        code::ER_LOCK_WAIT_TIMEOUT => "HY000",
        code::ER_QUERY_INTERRUPTED => "70100",
        _ => "HY000",
    }
}

/// Builds an OK packet payload. `header` is 0x00, or 0xFE for a result-set
/// terminator under `CLIENT_DEPRECATE_EOF`.
pub fn ok_payload(
    header: u8,
    affected: u64,
    last_insert_id: u64,
    status: StatusFlags,
    warnings: u16,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(16);
    p.push(header);
    put_lenenc_int(&mut p, affected);
    put_lenenc_int(&mut p, last_insert_id);
    p.put_u16_le(status.bits());
    p.put_u16_le(warnings);
    p
}

/// Builds a pre-4.1-style EOF packet payload (used without `CLIENT_DEPRECATE_EOF`).
pub fn eof_payload(warnings: u16, status: StatusFlags) -> Vec<u8> {
    let mut p = Vec::with_capacity(5);
    p.push(0xfe);
    p.put_u16_le(warnings);
    p.put_u16_le(status.bits());
    p
}

pub fn put_lenenc_int(buf: &mut Vec<u8>, v: u64) {
    if v < 251 {
        buf.push(v as u8);
    } else if v < 1 << 16 {
        buf.push(0xfc);
        buf.put_u16_le(v as u16);
    } else if v < 1 << 24 {
        buf.push(0xfd);
        buf.put_uint_le(v, 3);
    } else {
        buf.push(0xfe);
        buf.put_u64_le(v);
    }
}

pub fn put_lenenc_str(buf: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(buf, s.len() as u64);
    buf.extend_from_slice(s);
}

/// Reads a length-encoded integer, advancing `buf`. `None` if truncated or
/// if the first byte is not a valid prefix.
pub fn read_lenenc_int(buf: &mut &[u8]) -> Option<u64> {
    let first = *buf.first()?;
    let (len, v) = match first {
        0..=250 => (1, first as u64),
        0xfc if buf.len() >= 3 => (3, u16::from_le_bytes([buf[1], buf[2]]) as u64),
        0xfd if buf.len() >= 4 => (4, u32::from_le_bytes([buf[1], buf[2], buf[3], 0]) as u64),
        0xfe if buf.len() >= 9 => (9, (&buf[1..9]).get_u64_le()),
        _ => return None,
    };
    buf.advance(len);
    Some(v)
}

/// Reads a length-encoded string, advancing `buf`.
pub fn read_lenenc_str<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = read_lenenc_int(buf)? as usize;
    if buf.len() < len {
        return None;
    }
    let (s, rest) = buf.split_at(len);
    *buf = rest;
    Some(s)
}

/// The fixed fields of an OK packet (header 0x00 or 0xFE) that routing and
/// state tracking need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OkSummary {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: StatusFlags,
    pub warnings: u16,
    /// Offset in the payload just after the warnings field.
    pub tail_offset: usize,
}

/// Parses the fixed part of an OK packet payload (header byte included).
pub fn parse_ok(payload: &[u8]) -> Option<OkSummary> {
    let mut b = payload.get(1..)?;
    let affected_rows = read_lenenc_int(&mut b)?;
    let last_insert_id = read_lenenc_int(&mut b)?;
    if b.len() < 4 {
        return None;
    }
    let status = StatusFlags::from_bits_truncate(u16::from_le_bytes([b[0], b[1]]));
    let warnings = u16::from_le_bytes([b[2], b[3]]);
    Some(OkSummary {
        affected_rows,
        last_insert_id,
        status,
        warnings,
        tail_offset: payload.len() - b.len() + 4,
    })
}

/// Status flags of a terminator packet: a 5-byte EOF or an OK with header 0xFE.
pub fn terminator_status(payload: &[u8]) -> Option<StatusFlags> {
    if payload.first() != Some(&0xfe) {
        return None;
    }
    if payload.len() == 5 {
        Some(StatusFlags::from_bits_truncate(u16::from_le_bytes([
            payload[3], payload[4],
        ])))
    } else {
        parse_ok(payload).map(|ok| ok.status)
    }
}

/// The parts of an OK packet's tail when the server sent session tracking
/// data: the info message and the raw session-state block.
pub fn split_ok_tail<'a>(payload: &'a [u8], ok: &OkSummary) -> Option<(&'a [u8], &'a [u8])> {
    let mut tail = payload.get(ok.tail_offset..)?;
    if tail.is_empty() {
        return Some((&[], &[]));
    }
    let info = read_lenenc_str(&mut tail)?;
    let state = if ok
        .status
        .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED)
    {
        read_lenenc_str(&mut tail)?
    } else {
        &[]
    };
    Some((info, state))
}

/// Re-encodes an OK packet for a client that did not ask for
/// `CLIENT_SESSION_TRACK`: drops the session-state block and its flag.
pub fn strip_session_state(payload: &[u8]) -> Option<Vec<u8>> {
    let ok = parse_ok(payload)?;
    let (info, _) = split_ok_tail(payload, &ok)?;
    let mut status = ok.status;
    status.remove(StatusFlags::SERVER_SESSION_STATE_CHANGED);
    let mut p = ok_payload(
        payload[0],
        ok.affected_rows,
        ok.last_insert_id,
        status,
        ok.warnings,
    );
    if !info.is_empty() {
        put_lenenc_str(&mut p, info);
    }
    Some(p)
}

/// One system variable or schema change reported by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    Variable { name: String, value: String },
    Schema(String),
}

/// Decodes the session-state block of an OK packet (system variables and
/// schema; other kinds are ignored).
pub fn decode_state_changes(mut block: &[u8]) -> Vec<StateChange> {
    let mut out = Vec::new();
    while let Some(&kind) = block.first() {
        block = &block[1..];
        let Some(mut data) = read_lenenc_str(&mut block) else {
            break;
        };
        match kind {
            0x00 => {
                while !data.is_empty() {
                    let (Some(name), Some(value)) =
                        (read_lenenc_str(&mut data), read_lenenc_str(&mut data))
                    else {
                        break;
                    };
                    out.push(StateChange::Variable {
                        name: String::from_utf8_lossy(name).to_ascii_lowercase(),
                        value: String::from_utf8_lossy(value).into_owned(),
                    });
                }
            }
            0x01 => {
                if let Some(schema) = read_lenenc_str(&mut data) {
                    out.push(StateChange::Schema(
                        String::from_utf8_lossy(schema).into_owned(),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// A decoded ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrInfo {
    pub code: u16,
    pub state: String,
    pub message: String,
}

pub fn parse_err(payload: &[u8]) -> Option<ErrInfo> {
    if payload.first() != Some(&0xff) || payload.len() < 3 {
        return None;
    }
    let code = u16::from_le_bytes([payload[1], payload[2]]);
    let rest = &payload[3..];
    let (state, msg) = if rest.first() == Some(&b'#') && rest.len() >= 6 {
        (
            String::from_utf8_lossy(&rest[1..6]).into_owned(),
            &rest[6..],
        )
    } else {
        ("HY000".to_string(), rest)
    };
    Some(ErrInfo {
        code,
        state,
        message: String::from_utf8_lossy(msg).into_owned(),
    })
}

/// Capabilities Tessera offers to clients.
pub fn server_capabilities() -> CapabilityFlags {
    CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_FOUND_ROWS
        | CapabilityFlags::CLIENT_LONG_FLAG
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB
        | CapabilityFlags::CLIENT_ODBC
        | CapabilityFlags::CLIENT_LOCAL_FILES
        | CapabilityFlags::CLIENT_IGNORE_SPACE
        | CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_INTERACTIVE
        | CapabilityFlags::CLIENT_IGNORE_SIGPIPE
        | CapabilityFlags::CLIENT_TRANSACTIONS
        | CapabilityFlags::CLIENT_RESERVED
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_MULTI_STATEMENTS
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_CONNECT_ATTRS
        | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CapabilityFlags::CLIENT_SESSION_TRACK
        | CapabilityFlags::CLIENT_DEPRECATE_EOF
}

/// Capabilities whose presence changes the bytes of a response: a backend
/// connection must have the same ones as the client it serves, so responses
/// can be forwarded untouched.
pub fn format_capabilities() -> CapabilityFlags {
    CapabilityFlags::CLIENT_DEPRECATE_EOF
        | CapabilityFlags::CLIENT_FOUND_ROWS
        | CapabilityFlags::CLIENT_LOCAL_FILES
        | CapabilityFlags::CLIENT_MULTI_RESULTS
        | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
        | CapabilityFlags::CLIENT_LONG_FLAG
}

/// Encodes a column definition (protocol 4.1).
///
/// `mysql_common`'s `Column` serializer writes `column_length` before
/// `character_set`, the reverse of the protocol (its deserializer is right);
/// this is the one place that corrects it, by swapping the two fields in the
/// fixed-length tail it writes. `column_definition_round_trips` guards it.
pub fn encode_column(column: &mysql_common::packets::Column) -> Vec<u8> {
    use mysql_common::proto::MySerialize;
    let mut buf = Vec::with_capacity(64);
    column.serialize(&mut buf);
    // Tail: 0x0c, length(4), charset(2), type, flags(2), decimals, filler(2).
    let tail = buf.len() - 13;
    let length: [u8; 4] = buf[tail + 1..tail + 5].try_into().unwrap_or_default();
    let charset: [u8; 2] = buf[tail + 5..tail + 7].try_into().unwrap_or_default();
    buf[tail + 1..tail + 3].copy_from_slice(&charset);
    buf[tail + 3..tail + 7].copy_from_slice(&length);
    buf
}

/// Rewrites the `table` and `org_table` names of a column definition payload
/// (protocol 4.1) that `rename` maps to other names, keeping every other byte
/// as the server sent it. `None` when no name changes, or when the payload
/// is not a column definition.
pub fn rename_column_tables<'n>(
    payload: &[u8],
    rename: impl Fn(&[u8]) -> Option<&'n [u8]>,
) -> Option<Vec<u8>> {
    let mut b = payload;
    read_lenenc_str(&mut b)?; // catalog
    read_lenenc_str(&mut b)?; // schema
    let names_at = payload.len() - b.len();
    let table = read_lenenc_str(&mut b)?;
    let org_table = read_lenenc_str(&mut b)?;
    let rest_at = payload.len() - b.len();
    let (new_table, new_org) = (rename(table), rename(org_table));
    if new_table.is_none() && new_org.is_none() {
        return None;
    }
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&payload[..names_at]);
    put_lenenc_str(&mut out, new_table.unwrap_or(table));
    put_lenenc_str(&mut out, new_org.unwrap_or(org_table));
    out.extend_from_slice(&payload[rest_at..]);
    Some(out)
}

/// Encodes a whole text-protocol result set (column count, definitions,
/// rows, terminator) starting at sequence id 1; `None` cells are NULL.
pub fn encode_text_result(
    columns: &[mysql_common::packets::Column],
    rows: &[Vec<Option<&[u8]>>],
    deprecate_eof: bool,
    status: StatusFlags,
) -> BytesMut {
    let mut out = BytesMut::new();
    let mut seq = encode_result_header(&mut out, columns, deprecate_eof, status);
    for row in rows {
        seq = encode_text_row(&mut out, seq, row.iter().copied());
    }
    encode_result_end(&mut out, seq, deprecate_eof, 0, status);
    out
}

/// The start of a text result set: column count, definitions and (without
/// `CLIENT_DEPRECATE_EOF`) the EOF after them, from sequence id 1. Returns
/// the next sequence id.
pub fn encode_result_header(
    out: &mut BytesMut,
    columns: &[mysql_common::packets::Column],
    deprecate_eof: bool,
    status: StatusFlags,
) -> u8 {
    let mut count = Vec::new();
    put_lenenc_int(&mut count, columns.len() as u64);
    let mut seq = write_packet(out, 1, &count);
    for c in columns {
        seq = write_packet(out, seq, &encode_column(c));
    }
    if !deprecate_eof {
        seq = write_packet(out, seq, &eof_payload(0, status));
    }
    seq
}

/// One text-protocol row; `None` cells are NULL. Returns the next sequence id.
pub fn encode_text_row<'a>(
    out: &mut BytesMut,
    seq: u8,
    cells: impl IntoIterator<Item = Option<&'a [u8]>>,
) -> u8 {
    let mut p = Vec::new();
    for cell in cells {
        match cell {
            Some(v) => put_lenenc_str(&mut p, v),
            None => p.push(0xfb),
        }
    }
    write_packet(out, seq, &p)
}

/// The terminator of a result set: EOF, or OK with header 0xFE under
/// `CLIENT_DEPRECATE_EOF`.
pub fn encode_result_end(
    out: &mut BytesMut,
    seq: u8,
    deprecate_eof: bool,
    warnings: u16,
    status: StatusFlags,
) {
    if deprecate_eof {
        write_packet(out, seq, &ok_payload(0xfe, 0, 0, status, warnings));
    } else {
        write_packet(out, seq, &eof_payload(warnings, status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_reader_joins_split_packets() {
        let big = vec![7u8; MAX_CHUNK + 10];
        let mut wire = BytesMut::new();
        let next = write_packet(&mut wire, 0, &big);
        assert_eq!(next, 2);
        let mut r = FrameReader::new(64 << 20);
        r.expect_seq(Some(0));
        let p = r.next_packet(&mut wire).unwrap().unwrap();
        assert_eq!(p.payload.len(), big.len());
        assert_eq!((p.seq, p.last_seq), (0, 1));
    }

    #[test]
    fn frame_reader_joins_exact_multiple_of_chunk() {
        let big = vec![1u8; MAX_CHUNK];
        let mut wire = BytesMut::new();
        write_packet(&mut wire, 0, &big);
        assert_eq!(
            wire.len(),
            MAX_CHUNK + 8,
            "an empty trailing chunk ends the packet"
        );
        let mut r = FrameReader::new(64 << 20);
        let p = r.next_packet(&mut wire).unwrap().unwrap();
        assert_eq!(p.payload.len(), MAX_CHUNK);
    }

    #[test]
    fn frame_reader_rejects_wrong_sequence() {
        let mut wire = BytesMut::new();
        write_packet(&mut wire, 3, b"\x03select 1");
        let mut r = FrameReader::new(1024);
        r.expect_seq(Some(0));
        assert_eq!(
            r.next_packet(&mut wire).unwrap_err(),
            FrameError::OutOfOrder {
                expected: 0,
                got: 3
            }
        );
    }

    #[test]
    fn frame_reader_enforces_max_allowed_packet() {
        let mut wire = BytesMut::new();
        write_packet(&mut wire, 0, &[0u8; 2000]);
        let mut r = FrameReader::new(1024);
        assert!(matches!(
            r.next_packet(&mut wire),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn ok_round_trip_and_strip() {
        let mut p = ok_payload(
            0,
            3,
            7,
            StatusFlags::SERVER_SESSION_STATE_CHANGED | StatusFlags::SERVER_STATUS_AUTOCOMMIT,
            1,
        );
        put_lenenc_str(&mut p, b"Rows matched: 3");
        let mut block = vec![0x01];
        put_lenenc_str(&mut block, &[4, b't', b'e', b's', b't']);
        put_lenenc_str(&mut p, &block);
        let ok = parse_ok(&p).unwrap();
        assert_eq!(
            (ok.affected_rows, ok.last_insert_id, ok.warnings),
            (3, 7, 1)
        );
        let (info, state) = split_ok_tail(&p, &ok).unwrap();
        assert_eq!(info, b"Rows matched: 3");
        assert_eq!(
            decode_state_changes(state),
            vec![StateChange::Schema("test".into())]
        );
        let stripped = strip_session_state(&p).unwrap();
        let ok2 = parse_ok(&stripped).unwrap();
        assert!(!ok2
            .status
            .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED));
        let mut tail = &stripped[ok2.tail_offset..];
        assert_eq!(read_lenenc_str(&mut tail).unwrap(), b"Rows matched: 3");
        assert!(tail.is_empty());
    }

    #[test]
    fn err_packet_parses_back() {
        let p = err_payload(1045, "28000", "Access denied");
        let e = parse_err(&p).unwrap();
        assert_eq!(
            (e.code, e.state.as_str(), e.message.as_str()),
            (1045, "28000", "Access denied")
        );
    }

    fn sample_column() -> mysql_common::packets::Column {
        use mysql_common::constants::{ColumnFlags, ColumnType};
        mysql_common::packets::Column::new(ColumnType::MYSQL_TYPE_VAR_STRING)
            .with_schema(b"db")
            .with_table(b"t")
            .with_org_table(b"t")
            .with_name(b"name")
            .with_org_name(b"name")
            .with_character_set(45)
            .with_column_length(400)
            .with_flags(ColumnFlags::NOT_NULL_FLAG)
            .with_decimals(0)
    }

    #[test]
    fn mysql_common_column_serializer_swaps_length_and_charset() {
        use mysql_common::proto::MySerialize;
        let col = sample_column();
        let mut raw = Vec::new();
        col.serialize(&mut raw);
        let back: mysql_common::packets::Column =
            mysql_common::io::ParseBuf(&raw).parse(()).unwrap();
        // The upstream bug this module works around: if this starts failing,
        // mysql_common was fixed and `encode_column` must stop swapping.
        assert_ne!(
            (back.character_set(), back.column_length()),
            (col.character_set(), col.column_length())
        );
    }

    #[test]
    fn column_definition_round_trips() {
        let col = sample_column();
        let bytes = encode_column(&col);
        let back: mysql_common::packets::Column =
            mysql_common::io::ParseBuf(&bytes).parse(()).unwrap();
        assert_eq!(back.character_set(), 45);
        assert_eq!(back.column_length(), 400);
        assert_eq!(back.column_type(), col.column_type());
        assert_eq!(back.flags(), col.flags());
        assert_eq!(back.name_ref(), b"name");
        assert_eq!(back.schema_ref(), b"db");
    }

    #[test]
    fn renaming_column_tables_keeps_the_other_bytes() {
        let col = sample_column()
            .with_table(b"s")
            .with_org_table(b"stu_0003")
            .with_schema(b"tessera");
        let bytes = encode_column(&col);
        let rename = |t: &[u8]| (t == b"stu_0003").then_some(&b"stu"[..]);
        let renamed = rename_column_tables(&bytes, rename).unwrap();
        let back: mysql_common::packets::Column =
            mysql_common::io::ParseBuf(&renamed).parse(()).unwrap();
        assert_eq!(back.table_ref(), b"s");
        assert_eq!(back.org_table_ref(), b"stu");
        assert_eq!(
            encode_column(&col.clone().with_org_table(b"stu")),
            renamed,
            "only org_table changed"
        );
        // Nothing to rename, or not a column definition: left alone.
        let plain = encode_column(&sample_column());
        assert_eq!(rename_column_tables(&plain, rename), None);
        assert_eq!(rename_column_tables(&[0xfc, 1], rename), None);
        // A trailing default value (COM_FIELD_LIST) is kept.
        let mut with_default = bytes.clone();
        with_default.extend_from_slice(&[3, b'a', b'b', b'c']);
        let r = rename_column_tables(&with_default, rename).unwrap();
        assert!(r.ends_with(&[3, b'a', b'b', b'c']));
        assert_eq!(r.len(), with_default.len() - 5);
    }

    #[test]
    fn text_result_set_is_complete_for_the_scanner() {
        for deprecate in [false, true] {
            let rows = vec![vec![Some(&b"a"[..])], vec![None]];
            let wire =
                encode_text_result(&[sample_column()], &rows, deprecate, StatusFlags::empty());
            let mut s = crate::backend::ResponseScanner::new(
                crate::backend::ResponseKind::Generic,
                deprecate,
            );
            let mut pos = 0;
            while !s.is_done() {
                match s.step(&wire[pos..]) {
                    crate::backend::Step::Pass(n) => pos += n,
                    crate::backend::Step::Packet { total, .. } => pos += total,
                    crate::backend::Step::NeedMore => panic!("truncated result"),
                }
            }
            assert_eq!(pos, wire.len());
        }
    }

    #[test]
    fn lenenc_truncated_is_none() {
        let mut b: &[u8] = &[0xfc, 1];
        assert_eq!(read_lenenc_int(&mut b), None);
        let mut b: &[u8] = &[0xff];
        assert_eq!(read_lenenc_int(&mut b), None);
    }
}
