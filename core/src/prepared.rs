//! Prepared statements over sharded tables: reading an execute's parameter
//! values, so the router can pick the sub-table as it would for the same
//! statement sent as text.
//!
//! The statement is prepared on each sub-table it reaches the first time an
//! execute needs it there (the session keeps those per-sub-table variants);
//! the execute packet itself goes through unchanged but for its statement id.

use mysql_common::constants::{ColumnFlags, ColumnType};
use mysql_common::io::ParseBuf;
use mysql_common::value::{BinValue, Value, ValueDeserializer};

use crate::shard::Literal;

/// Parameter values of a COM_STMT_EXECUTE with `n` parameters, as literals.
/// `remembered` holds the types of an earlier execute, for one that does not
/// send them. Also returns the types this packet sent, if it sent any.
pub fn execute_params<'a>(
    payload: &'a [u8],
    n: usize,
    remembered: Option<&[u8]>,
) -> Result<(Vec<Literal>, Option<&'a [u8]>), String> {
    const SHORT: &str = "Malformed communication packet: COM_STMT_EXECUTE too short";
    if n == 0 {
        return Ok((Vec::new(), None));
    }
    let bitmap_at = 10;
    let bitmap = payload
        .get(bitmap_at..bitmap_at + n.div_ceil(8))
        .ok_or(SHORT)?;
    let mut at = bitmap_at + bitmap.len();
    let bound = *payload.get(at).ok_or(SHORT)?;
    at += 1;
    let sent = if bound == 1 {
        let t = payload.get(at..at + 2 * n).ok_or(SHORT)?;
        at += 2 * n;
        Some(t)
    } else {
        None
    };
    let types = sent
        .or(remembered)
        .ok_or("Malformed communication packet: COM_STMT_EXECUTE without parameter types")?;
    if types.len() != 2 * n {
        return Err("Malformed communication packet: parameter types do not match".into());
    }
    let mut buf = ParseBuf(&payload[at..]);
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            values.push(Literal::Null);
            continue;
        }
        let ty = ColumnType::try_from(types[2 * i]).map_err(|_| {
            format!(
                "Malformed communication packet: unknown parameter type {}",
                types[2 * i]
            )
        })?;
        let flags = if types[2 * i + 1] & 0x80 != 0 {
            ColumnFlags::UNSIGNED_FLAG
        } else {
            ColumnFlags::empty()
        };
        let value: ValueDeserializer<BinValue> = buf.parse((ty, flags)).map_err(|_| {
            format!(
                "Malformed communication packet: parameter {} is cut short",
                i + 1
            )
        })?;
        values.push(literal_of(value.0));
    }
    Ok((values, sent))
}

/// A parameter value the way the same value would be written in SQL text.
fn literal_of(v: Value) -> Literal {
    match v {
        Value::NULL => Literal::Null,
        Value::Int(i) => Literal::Number(i.to_string()),
        Value::UInt(u) => Literal::Number(u.to_string()),
        Value::Float(f) => Literal::Number(f.to_string()),
        Value::Double(d) => Literal::Number(d.to_string()),
        Value::Bytes(b) => Literal::Str(String::from_utf8_lossy(&b).into_owned()),
        Value::Date(y, m, d, h, mi, s, us) => Literal::Str(if us > 0 {
            format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
        } else {
            format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}")
        }),
        Value::Time(neg, days, h, mi, s, us) => {
            let sign = if neg { "-" } else { "" };
            let hours = days * 24 + h as u32;
            Literal::Str(format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An execute of statement 1 with these (type, unsigned, value bytes or NULL) parameters.
    fn execute(params: &[(u8, bool, Option<&[u8]>)], send_types: bool) -> Vec<u8> {
        let n = params.len();
        let mut p = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0];
        let mut bitmap = vec![0u8; n.div_ceil(8)];
        for (i, (_, _, v)) in params.iter().enumerate() {
            if v.is_none() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        p.extend_from_slice(&bitmap);
        p.push(send_types as u8);
        if send_types {
            for (t, unsigned, _) in params {
                p.push(*t);
                p.push(if *unsigned { 0x80 } else { 0 });
            }
        }
        for (_, _, v) in params {
            if let Some(v) = v {
                p.extend_from_slice(v);
            }
        }
        p
    }

    #[test]
    fn integers_strings_nulls_and_dates_become_literals() {
        let date = [7u8, 0xEA, 0x07, 11, 30, 12, 5, 9];
        let p = execute(
            &[
                (
                    ColumnType::MYSQL_TYPE_LONGLONG as u8,
                    false,
                    Some(&(-42i64).to_le_bytes()),
                ),
                (
                    ColumnType::MYSQL_TYPE_VAR_STRING as u8,
                    false,
                    Some(b"\x03abc"),
                ),
                (ColumnType::MYSQL_TYPE_LONG as u8, true, None),
                (ColumnType::MYSQL_TYPE_DATETIME as u8, false, Some(&date)),
            ],
            true,
        );
        let (values, sent) = execute_params(&p, 4, None).unwrap();
        assert_eq!(
            values,
            vec![
                Literal::Number("-42".into()),
                Literal::Str("abc".into()),
                Literal::Null,
                Literal::Str("2026-11-30 12:05:09".into()),
            ]
        );
        assert_eq!(sent.map(|t| t.len()), Some(8));
    }

    #[test]
    fn an_execute_without_types_uses_the_remembered_ones() {
        let p = execute(
            &[(
                ColumnType::MYSQL_TYPE_LONG as u8,
                true,
                Some(&7u32.to_le_bytes()),
            )],
            false,
        );
        assert!(execute_params(&p, 1, None).is_err());
        let types = [ColumnType::MYSQL_TYPE_LONG as u8, 0x80];
        let (values, sent) = execute_params(&p, 1, Some(&types)).unwrap();
        assert_eq!(values, vec![Literal::Number("7".into())]);
        assert!(sent.is_none());
    }

    #[test]
    fn truncated_packets_are_errors_not_panics() {
        let p = execute(
            &[(
                ColumnType::MYSQL_TYPE_LONGLONG as u8,
                false,
                Some(&5i64.to_le_bytes()),
            )],
            true,
        );
        for cut in 0..p.len() {
            assert!(execute_params(&p[..cut], 1, None).is_err(), "cut at {cut}");
        }
        assert!(execute_params(&p, 1, None).is_ok());
    }
}
