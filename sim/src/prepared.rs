//! Prepared statements in the simulation, both ends: the client's
//! COM_STMT_EXECUTE and the simulated server's handling of it (parameters
//! substituted into the statement's text, rows sent in the binary protocol).
//! Only the types the workloads bind: integers, strings and NULL.

use bytes::BytesMut;
use mysql_common::constants::ColumnType;
use mysql_common::packets::Column;
use mysql_common::proto::MySerialize;
use tessera_core::protocol::{self, cmd, StatusFlags};
use tessera_core::shard::Literal;

/// A bound parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Param {
    Int(i64),
    Str(String),
    Null,
}

/// The `?` placeholders of a statement, by byte offset.
pub fn placeholders(sql: &str) -> Vec<usize> {
    unquoted(sql, b'?')
}

/// Where `byte` stands in `sql` outside quotes and `/* */` comments.
pub fn unquoted(sql: &str, byte: u8) -> Vec<usize> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 1);
            }
            c if c == byte => out.push(i),
            _ => {}
        }
        i += 1;
    }
    out
}

/// The statement with its placeholders replaced by the values as literals.
pub fn substitute(sql: &str, params: &[Param]) -> Option<String> {
    let at = placeholders(sql);
    if at.len() != params.len() {
        return None;
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut last = 0;
    for (pos, p) in at.iter().zip(params) {
        out.push_str(&sql[last..*pos]);
        match p {
            Param::Int(n) => out.push_str(&n.to_string()),
            Param::Str(s) => {
                out.push('\'');
                out.push_str(&s.replace('\\', "\\\\").replace('\'', "''"));
                out.push('\'');
            }
            Param::Null => out.push_str("NULL"),
        }
        last = pos + 1;
    }
    out.push_str(&sql[last..]);
    Some(out)
}

/// A COM_STMT_EXECUTE (framed, seq 0) binding `params` with their types.
pub fn execute_request(stmt_id: u32, params: &[Param]) -> Vec<u8> {
    let mut p = vec![cmd::STMT_EXECUTE];
    p.extend_from_slice(&stmt_id.to_le_bytes());
    p.push(0); // no cursor
    p.extend_from_slice(&1u32.to_le_bytes());
    if !params.is_empty() {
        let mut nulls = vec![0u8; params.len().div_ceil(8)];
        for (i, v) in params.iter().enumerate() {
            if *v == Param::Null {
                nulls[i / 8] |= 1 << (i % 8);
            }
        }
        p.extend_from_slice(&nulls);
        p.push(1); // types follow
        for v in params {
            let t = match v {
                Param::Int(_) => ColumnType::MYSQL_TYPE_LONGLONG,
                Param::Str(_) => ColumnType::MYSQL_TYPE_VAR_STRING,
                Param::Null => ColumnType::MYSQL_TYPE_NULL,
            };
            p.extend_from_slice(&[t as u8, 0]);
        }
        for v in params {
            match v {
                Param::Int(n) => p.extend_from_slice(&n.to_le_bytes()),
                Param::Str(s) => protocol::put_lenenc_str(&mut p, s.as_bytes()),
                Param::Null => {}
            }
        }
    }
    framed(0, &p)
}

/// A COM_STMT_CLOSE (framed, seq 0); it has no answer.
pub fn close_request(stmt_id: u32) -> Vec<u8> {
    let mut p = vec![cmd::STMT_CLOSE];
    p.extend_from_slice(&stmt_id.to_le_bytes());
    framed(0, &p)
}

/// Parses a COM_STMT_EXECUTE's parameters with the proxy's own decoder
/// (`types`: the packed types bound before, updated when the request sends
/// new ones).
pub fn parse_execute(payload: &[u8], count: usize, types: &mut Vec<u8>) -> Option<Vec<Param>> {
    let remembered = (!types.is_empty()).then_some(&types[..]);
    let (values, sent) = tessera_core::prepared::execute_params(payload, count, remembered).ok()?;
    if let Some(sent) = sent {
        *types = sent.to_vec();
    }
    Some(
        values
            .into_iter()
            .map(|v| match v {
                Literal::Number(n) => n.parse().map(Param::Int).unwrap_or(Param::Str(n)),
                Literal::Str(s) => Param::Str(s),
                Literal::Null => Param::Null,
            })
            .collect(),
    )
}

/// The columns a prepared statement returns: the SELECT list over `k` and
/// `v` (`*` is both); nothing for other statements.
pub fn result_columns(sql: &str) -> Vec<String> {
    let lower = sql.to_ascii_lowercase();
    let body = match lower.rfind("*/") {
        Some(e) if lower.trim_start().starts_with("/*") => &lower[e + 2..],
        _ => &lower[..],
    };
    let body = body.trim_start();
    let Some(rest) = body.strip_prefix("select") else {
        return Vec::new();
    };
    let list = rest.split(" from ").next().unwrap_or("");
    list.split(',')
        .flat_map(|c| match c.trim().rsplit('.').next().unwrap_or("") {
            "*" => vec!["k".to_string(), "v".to_string()],
            "k" | "`k`" => vec!["k".to_string()],
            _ => vec!["v".to_string()],
        })
        .collect()
}

fn column(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    Column::new(ColumnType::MYSQL_TYPE_VAR_STRING)
        .with_name(name.as_bytes())
        .serialize(&mut out);
    out
}

/// The answer to COM_STMT_PREPARE: the statement id, then parameter and
/// column definitions.
pub fn prepare_ok(stmt_id: u32, params: usize, columns: &[String], deprecate_eof: bool) -> Vec<u8> {
    let mut p = vec![0u8];
    p.extend_from_slice(&stmt_id.to_le_bytes());
    p.extend_from_slice(&(columns.len() as u16).to_le_bytes());
    p.extend_from_slice(&(params as u16).to_le_bytes());
    p.extend_from_slice(&[0, 0, 0]);
    let mut out = BytesMut::new();
    let mut seq = protocol::write_packet(&mut out, 1, &p);
    let eof = protocol::eof_payload(0, StatusFlags::SERVER_STATUS_AUTOCOMMIT);
    for group in [vec!["?".to_string(); params], columns.to_vec()] {
        if group.is_empty() {
            continue;
        }
        for name in &group {
            seq = protocol::write_packet(&mut out, seq, &column(name));
        }
        if !deprecate_eof {
            seq = protocol::write_packet(&mut out, seq, &eof);
        }
    }
    out.to_vec()
}

/// A binary-protocol result set of text values.
pub fn binary_rows(
    columns: &[String],
    rows: &[Vec<Option<String>>],
    deprecate_eof: bool,
    status: StatusFlags,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut count = Vec::new();
    protocol::put_lenenc_int(&mut count, columns.len() as u64);
    let mut seq = protocol::write_packet(&mut out, 1, &count);
    for c in columns {
        seq = protocol::write_packet(&mut out, seq, &column(c));
    }
    if !deprecate_eof {
        seq = protocol::write_packet(&mut out, seq, &protocol::eof_payload(0, status));
    }
    for r in rows {
        let mut p = vec![0u8];
        let mut nulls = vec![0u8; (columns.len() + 7 + 2) / 8];
        for (i, v) in r.iter().enumerate() {
            if v.is_none() {
                nulls[(i + 2) / 8] |= 1 << ((i + 2) % 8);
            }
        }
        p.extend_from_slice(&nulls);
        for v in r.iter().flatten() {
            protocol::put_lenenc_str(&mut p, v.as_bytes());
        }
        seq = protocol::write_packet(&mut out, seq, &p);
    }
    let end = if deprecate_eof {
        protocol::ok_payload(0xfe, 0, 0, status, 0)
    } else {
        protocol::eof_payload(0, status)
    };
    protocol::write_packet(&mut out, seq, &end);
    out.to_vec()
}

/// Values of a binary-protocol row whose columns are all strings.
pub fn parse_binary_row(payload: &[u8], columns: usize) -> Option<Vec<Option<String>>> {
    let nulls_len = (columns + 7 + 2) / 8;
    let nulls = payload.get(1..1 + nulls_len)?;
    let mut b = &payload[1 + nulls_len..];
    let mut row = Vec::with_capacity(columns);
    for i in 0..columns {
        if nulls[(i + 2) / 8] & (1 << ((i + 2) % 8)) != 0 {
            row.push(None);
        } else {
            let v = protocol::read_lenenc_str(&mut b)?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
        }
    }
    Some(row)
}

fn framed(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    protocol::write_packet(&mut out, seq, payload);
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_skip_quotes_and_comments() {
        let sql = "/* sim c0.1 3 ? */ SELECT v FROM t WHERE k = ? AND v = '?' OR v = ?";
        assert_eq!(placeholders(sql).len(), 2);
        assert_eq!(
            substitute(sql, &[Param::Int(-4), Param::Str("it's".into())]).unwrap(),
            "/* sim c0.1 3 ? */ SELECT v FROM t WHERE k = -4 AND v = '?' OR v = 'it''s'"
        );
    }

    #[test]
    fn execute_parameters_round_trip() {
        let params = vec![Param::Int(-7), Param::Null, Param::Str("a,b".into())];
        let wire = execute_request(9, &params);
        let mut types = Vec::new();
        assert_eq!(parse_execute(&wire[4..], 3, &mut types), Some(params));
    }

    #[test]
    fn binary_rows_parse_back() {
        let cols = vec!["k".to_string(), "v".to_string()];
        let rows = vec![vec![Some("1".to_string()), None]];
        let wire = binary_rows(&cols, &rows, true, StatusFlags::empty());
        // count, two definitions, the row, the end.
        let mut buf = BytesMut::from(&wire[..]);
        let mut frames = protocol::FrameReader::new(1 << 20);
        let packets: Vec<_> =
            std::iter::from_fn(|| frames.next_packet(&mut buf).ok().flatten()).collect();
        assert_eq!(packets.len(), 5);
        assert_eq!(
            parse_binary_row(&packets[3].payload, 2),
            Some(rows[0].clone())
        );
    }
}
