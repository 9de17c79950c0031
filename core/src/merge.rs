//! Scatter-gather: collects the text result sets of the shards of one
//! statement and merges them into the one result MariaDB would have given
//! for the unsharded table: ORDER BY, LIMIT/OFFSET, COUNT/SUM/MIN/MAX/AVG,
//! GROUP BY, DISTINCT and HAVING, with exact DECIMAL arithmetic and the
//! column metadata of the shards' own answers. ORDER BY and LIMIT without
//! grouping merge while the rows arrive ([`StreamMerge`]); the rest once
//! every shard has answered ([`merge`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mysql_common::collations::{Collation, CollationId};
use mysql_common::constants::{ColumnType, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::Column;
use mysql_common::proto::MyDeserialize;

use crate::protocol::{self, ErrInfo, FrameError, FrameReader};

/// How one merged column is combined across shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agg {
    Count,
    Sum,
    Min,
    Max,
    /// AVG recomputed from hidden SUM and COUNT columns of the same argument.
    Avg {
        sum: usize,
        count: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A HAVING condition evaluated on merged groups.
#[derive(Debug, Clone, PartialEq)]
pub enum Having {
    Cmp(Operand, CmpOp, Operand),
    And(Box<Having>, Box<Having>),
    Or(Box<Having>, Box<Having>),
    Not(Box<Having>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Column(usize),
    Number(String),
    Str(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// Column index in the shard result (visible or hidden).
    pub column: usize,
    pub desc: bool,
}

/// What the router decided about merging a scatter SELECT.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeSpec {
    /// Columns put in front of the shard query's select list for sorting,
    /// grouping, AVG or HAVING; stripped before the client sees the rows.
    pub hidden: usize,
    /// Aggregated columns (shard-result index → how to combine).
    pub aggregates: Vec<(usize, Agg)>,
    /// The query aggregates (GROUP BY or aggregate functions): rows with
    /// equal `group_by` values become one.
    pub grouped: bool,
    pub group_by: Vec<usize>,
    pub having: Option<Having>,
    pub distinct: bool,
    pub order_by: Vec<SortKey>,
    pub offset: u64,
    pub limit: Option<u64>,
    /// Physical → logical table names for the column metadata.
    pub table_names: Vec<(String, String)>,
}

/// Why a merge could not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("shard results differ in shape ({0})")]
    Shape(String),
    #[error("a merged value is out of range: {0}")]
    Overflow(String),
    #[error("the shard results exceed the merge limit of {0} bytes; add a LIMIT or a shard-key condition")]
    TooLarge(usize),
    #[error("malformed shard result: {0}")]
    Malformed(String),
}

/// One shard's complete answer to a text query.
#[derive(Debug, Clone, Default)]
pub struct ShardResult {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// Set when the answer was an OK packet (no result set).
    pub ok: Option<protocol::OkSummary>,
    pub err: Option<ErrInfo>,
    pub warnings: u16,
    pub status: StatusFlags,
    /// Session-state changes the OK reported (e.g. `last_gtid` after a write).
    pub changes: Vec<protocol::StateChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CollectPhase {
    First,
    Columns(u64),
    ColumnsEof,
    Rows,
    Done,
}

/// Reads one shard's answer (the shard query is a single statement). Rows
/// are held until taken: all of them for a buffered merge, a read's worth
/// for a streaming one ([`Collector::take_rows`]).
#[derive(Debug)]
pub struct Collector {
    frames: FrameReader,
    phase: CollectPhase,
    deprecate_eof: bool,
    result: ShardResult,
    /// Payload bytes of the rows held.
    bytes: usize,
    limit: usize,
    /// How many more rows to keep (`None`: all); later rows are read and dropped.
    keep_rows: Option<u64>,
    /// Stop reading once the rows held reach this many bytes (until taken).
    budget: Option<usize>,
}

impl Collector {
    pub fn new(deprecate_eof: bool, limit: usize) -> Self {
        Self {
            frames: FrameReader::new(1 << 30),
            phase: CollectPhase::First,
            deprecate_eof,
            result: ShardResult::default(),
            bytes: 0,
            limit,
            keep_rows: None,
            budget: None,
        }
    }

    /// Reads no further than `bytes` of held rows: [`Collector::feed`] then
    /// returns early, leaving the rest in the buffer, until the rows are taken.
    pub fn with_budget(mut self, bytes: usize) -> Self {
        self.budget = Some(bytes.max(1));
        self
    }

    /// Stopped at its budget (more may be waiting in the buffer).
    pub fn is_full(&self) -> bool {
        self.budget.is_some_and(|b| self.bytes >= b)
    }

    pub fn is_done(&self) -> bool {
        self.phase == CollectPhase::Done
    }

    pub fn take(self) -> ShardResult {
        self.result
    }

    /// Keeps at most `n` more rows; the rest of the answer is read (so the
    /// connection stays in step) and dropped without being accounted.
    pub fn keep_at_most(&mut self, n: u64) {
        self.keep_rows = Some(self.keep_rows.map_or(n, |k| k.min(n)));
    }

    /// The column definitions, once all of them have arrived.
    pub fn columns(&self) -> Option<&[Column]> {
        match self.phase {
            CollectPhase::ColumnsEof | CollectPhase::Rows => Some(&self.result.columns),
            CollectPhase::Done if !self.result.columns.is_empty() => Some(&self.result.columns),
            _ => None,
        }
    }

    /// Hands over the rows held so far; they no longer count against the limit.
    pub fn take_rows(&mut self) -> Vec<Row> {
        self.bytes = 0;
        std::mem::take(&mut self.result.rows)
    }

    /// Consumes what it can of `buf`; `Ok(true)` once the answer is complete.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<bool, MergeError> {
        while self.phase != CollectPhase::Done {
            if self.is_full() {
                return Ok(false);
            }
            let pkt = match self.frames.next_packet(buf) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(false),
                Err(FrameError::TooLarge { max }) => return Err(MergeError::TooLarge(max)),
                Err(e) => return Err(MergeError::Malformed(format!("{e:?}"))),
            };
            let p = &pkt.payload[..];
            match self.phase {
                CollectPhase::First => match p.first() {
                    Some(0x00) => {
                        let ok = protocol::parse_ok(p)
                            .ok_or_else(|| MergeError::Malformed("bad OK packet".into()))?;
                        self.result.warnings = ok.warnings;
                        self.result.status = ok.status;
                        if ok
                            .status
                            .contains(StatusFlags::SERVER_SESSION_STATE_CHANGED)
                        {
                            if let Some((_, block)) = protocol::split_ok_tail(p, &ok) {
                                self.result.changes = protocol::decode_state_changes(block);
                            }
                        }
                        self.result.ok = Some(ok);
                        self.phase = CollectPhase::Done;
                    }
                    Some(0xff) => {
                        self.result.err = protocol::parse_err(p);
                        self.phase = CollectPhase::Done;
                    }
                    // A whole answer that is an EOF packet: MariaDB's reply to
                    // COM_SET_OPTION (a session restore before a shard query).
                    Some(0xfe) if p.len() < 9 => {
                        let ok = protocol::parse_ok(p).unwrap_or(protocol::OkSummary {
                            affected_rows: 0,
                            last_insert_id: 0,
                            status: StatusFlags::from_bits_truncate(u16::from_le_bytes([
                                p.get(3).copied().unwrap_or(0),
                                p.get(4).copied().unwrap_or(0),
                            ])),
                            warnings: u16::from_le_bytes([
                                p.get(1).copied().unwrap_or(0),
                                p.get(2).copied().unwrap_or(0),
                            ]),
                            tail_offset: p.len(),
                        });
                        self.result.warnings = ok.warnings;
                        self.result.status = ok.status;
                        self.result.ok = Some(ok);
                        self.phase = CollectPhase::Done;
                    }
                    Some(0xfb) => {
                        return Err(MergeError::Malformed(
                            "LOAD DATA LOCAL is not possible in a scatter query".into(),
                        ))
                    }
                    _ => {
                        let mut b = p;
                        let n = protocol::read_lenenc_int(&mut b)
                            .ok_or_else(|| MergeError::Malformed("bad column count".into()))?;
                        self.phase = CollectPhase::Columns(n);
                    }
                },
                CollectPhase::Columns(left) => {
                    let col = Column::deserialize((), &mut ParseBuf(p))
                        .map_err(|e| MergeError::Malformed(format!("column definition: {e}")))?;
                    self.result.columns.push(col);
                    self.phase = match (left - 1, self.deprecate_eof) {
                        (0, true) => CollectPhase::Rows,
                        (0, false) => CollectPhase::ColumnsEof,
                        (n, _) => CollectPhase::Columns(n),
                    };
                }
                CollectPhase::ColumnsEof => self.phase = CollectPhase::Rows,
                CollectPhase::Rows => {
                    let is_end = p.first() == Some(&0xfe)
                        && if self.deprecate_eof {
                            p.len() < protocol::MAX_CHUNK
                        } else {
                            p.len() < 9
                        };
                    if is_end {
                        if self.deprecate_eof {
                            if let Some(ok) = protocol::parse_ok(p) {
                                self.result.warnings = ok.warnings;
                                self.result.status = ok.status;
                            }
                        } else if p.len() >= 5 {
                            self.result.warnings = u16::from_le_bytes([p[1], p[2]]);
                            self.result.status =
                                StatusFlags::from_bits_truncate(u16::from_le_bytes([p[3], p[4]]));
                        }
                        self.phase = CollectPhase::Done;
                    } else if p.first() == Some(&0xff) {
                        self.result.err = protocol::parse_err(p);
                        self.phase = CollectPhase::Done;
                    } else if self.keep_rows != Some(0) {
                        self.bytes += p.len();
                        if self.bytes > self.limit {
                            return Err(MergeError::TooLarge(self.limit));
                        }
                        let row = parse_text_row(&pkt.payload, self.result.columns.len())?;
                        self.result.rows.push(row);
                        if let Some(k) = &mut self.keep_rows {
                            *k -= 1;
                        }
                    }
                }
                CollectPhase::Done => {}
            }
        }
        Ok(true)
    }
}

fn parse_text_row(payload: &Bytes, columns: usize) -> Result<Vec<Option<Bytes>>, MergeError> {
    let mut row = Vec::with_capacity(columns);
    let mut at = 0usize;
    for _ in 0..columns {
        if payload.get(at) == Some(&0xfb) {
            row.push(None);
            at += 1;
            continue;
        }
        let mut b = &payload[at..];
        let before = b.len();
        let v = protocol::read_lenenc_str(&mut b)
            .ok_or_else(|| MergeError::Malformed("truncated row".into()))?;
        let start = at + (before - b.len()) - v.len();
        row.push(Some(payload.slice(start..start + v.len())));
        at += before - b.len();
    }
    Ok(row)
}

// ------------------------------------------------------------------ values

/// How values of a column compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Decimal,
    Float,
    Time,
    Bytes,
    /// Case-insensitive text (a `_ci` collation).
    Folded,
}

fn kind_of(c: &Column) -> Kind {
    use ColumnType::*;
    match c.column_type() {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG
        | MYSQL_TYPE_INT24 | MYSQL_TYPE_YEAR | MYSQL_TYPE_BIT => Kind::Int,
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => Kind::Decimal,
        MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => Kind::Float,
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => Kind::Time,
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP2 => Kind::Bytes,
        _ => {
            let coll = Collation::from(CollationId::from(c.character_set()));
            if c.character_set() == 63 || coll.collation().ends_with("_bin") {
                Kind::Bytes
            } else {
                Kind::Folded
            }
        }
    }
}

/// An exact decimal: `mant / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dec {
    mant: i128,
    scale: u32,
}

impl Dec {
    pub fn parse(s: &[u8]) -> Option<Dec> {
        let s = std::str::from_utf8(s).ok()?.trim();
        let (neg, digits) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut mant: i128 = 0;
        for c in int.bytes().chain(frac.bytes()) {
            if !c.is_ascii_digit() {
                return None;
            }
            mant = mant.checked_mul(10)?.checked_add(i128::from(c - b'0'))?;
        }
        Some(Dec {
            mant: if neg { -mant } else { mant },
            scale: frac.len() as u32,
        })
    }

    fn rescale(self, scale: u32) -> Option<Dec> {
        if scale >= self.scale {
            Some(Dec {
                mant: self
                    .mant
                    .checked_mul(10i128.checked_pow(scale - self.scale)?)?,
                scale,
            })
        } else {
            let div = 10i128.checked_pow(self.scale - scale)?;
            let q = self.mant / div;
            let r = self.mant % div;
            let round = if r.abs() * 2 >= div { r.signum() } else { 0 };
            Some(Dec {
                mant: q + round,
                scale,
            })
        }
    }

    pub fn checked_add(self, o: Dec) -> Option<Dec> {
        let s = self.scale.max(o.scale);
        let (a, b) = (self.rescale(s)?, o.rescale(s)?);
        Some(Dec {
            mant: a.mant.checked_add(b.mant)?,
            scale: s,
        })
    }

    /// `self / n` rounded half away from zero to `scale` digits.
    pub fn div_int(self, n: i128, scale: u32) -> Option<Dec> {
        if n == 0 {
            return None;
        }
        let wide = self.rescale(scale + 1)?;
        let q = wide.mant / n;
        Dec {
            mant: q,
            scale: scale + 1,
        }
        .rescale(scale)
    }

    pub fn to_text(self) -> String {
        let neg = self.mant < 0;
        let digits = self.mant.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let mut out = String::new();
        if neg {
            out.push('-');
        }
        if scale == 0 {
            out.push_str(&digits);
        } else if digits.len() > scale {
            out.push_str(&digits[..digits.len() - scale]);
            out.push('.');
            out.push_str(&digits[digits.len() - scale..]);
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat(scale - digits.len()));
            out.push_str(&digits);
        }
        out
    }

    fn cmp(self, o: Dec) -> Ordering {
        let s = self.scale.max(o.scale);
        match (self.rescale(s), o.rescale(s)) {
            (Some(a), Some(b)) => a.mant.cmp(&b.mant),
            _ => self.to_f64().total_cmp(&o.to_f64()),
        }
    }

    fn to_f64(self) -> f64 {
        self.mant as f64 / 10f64.powi(self.scale as i32)
    }
}

fn time_micros(v: &[u8]) -> Option<i128> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut parts = hms.split(':');
    let h: i128 = parts.next()?.parse().ok()?;
    let m: i128 = parts.next()?.parse().ok()?;
    let sec: i128 = parts.next()?.parse().ok()?;
    let mut us: i128 = 0;
    for (i, c) in frac.bytes().take(6).enumerate() {
        us += i128::from(c.checked_sub(b'0')?) * 10i128.pow(5 - i as u32);
    }
    let t = ((h * 60 + m) * 60 + sec) * 1_000_000 + us;
    Some(if neg { -t } else { t })
}

fn compare_values(kind: Kind, a: Option<&[u8]>, b: Option<&[u8]>) -> Ordering {
    let (a, b) = match (a, b) {
        (None, None) => return Ordering::Equal,
        (None, Some(_)) => return Ordering::Less,
        (Some(_), None) => return Ordering::Greater,
        (Some(a), Some(b)) => (a, b),
    };
    match kind {
        Kind::Int | Kind::Decimal => match (Dec::parse(a), Dec::parse(b)) {
            (Some(x), Some(y)) => x.cmp(y),
            _ => a.cmp(b),
        },
        Kind::Float => {
            let x = std::str::from_utf8(a)
                .ok()
                .and_then(|s| s.parse::<f64>().ok());
            let y = std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<f64>().ok());
            match (x, y) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                _ => a.cmp(b),
            }
        }
        Kind::Time => match (time_micros(a), time_micros(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => a.cmp(b),
        },
        Kind::Bytes => trim_spaces(a).cmp(trim_spaces(b)),
        Kind::Folded => fold(a).cmp(&fold(b)),
    }
}

fn trim_spaces(v: &[u8]) -> &[u8] {
    let end = v.iter().rposition(|&c| c != b' ').map_or(0, |p| p + 1);
    &v[..end]
}

/// The weight string of a `_ci` value, after utf8mb4_general_ci (MariaDB's
/// default): trailing spaces ignored, accents stripped, letters compared by
/// their upper case one character at a time (so `ß` weighs as `S`), and
/// every character beyond the BMP alike.
///
/// The column definition carries the connection's result collation, not the
/// column's own, so other `_ci` collations are compared by these rules too.
fn fold(v: &[u8]) -> String {
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization;
    String::from_utf8_lossy(trim_spaces(v))
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .map(|c| {
            if u32::from(c) > 0xFFFF {
                char::REPLACEMENT_CHARACTER
            } else {
                c.to_uppercase().next().unwrap_or(c)
            }
        })
        .collect()
}

/// A key under which equal values (by the column's collation) group together.
fn group_key(kind: Kind, v: Option<&[u8]>) -> Vec<u8> {
    match v {
        None => vec![0],
        Some(v) => {
            let mut k = vec![1];
            match kind {
                Kind::Folded => k.extend_from_slice(fold(v).as_bytes()),
                Kind::Int | Kind::Decimal => match Dec::parse(v) {
                    Some(d) => k.extend_from_slice(
                        d.rescale(30)
                            .map_or(v.to_vec(), |d| d.mant.to_string().into_bytes())
                            .as_slice(),
                    ),
                    None => k.extend_from_slice(v),
                },
                Kind::Bytes => k.extend_from_slice(trim_spaces(v)),
                _ => k.extend_from_slice(v),
            }
            k
        }
    }
}

// ------------------------------------------------------------------ merging

type Row = Vec<Option<Bytes>>;

/// Merges the shards' answers into rows for the client. Errors from a shard
/// are returned first, as the client would have seen them.
pub fn merge(spec: &MergeSpec, results: Vec<ShardResult>) -> Result<Merged, MergeError> {
    let mut columns: Option<Vec<Column>> = None;
    let mut rows: Vec<Row> = Vec::new();
    let mut warnings: u32 = 0;
    for r in results {
        warnings += u32::from(r.warnings);
        if r.ok.is_some() {
            return Err(MergeError::Shape(
                "a shard answered with OK, not rows".into(),
            ));
        }
        match &columns {
            None => columns = Some(r.columns),
            Some(c) if c.len() != r.columns.len() => {
                return Err(MergeError::Shape(format!(
                    "{} columns against {}",
                    c.len(),
                    r.columns.len()
                )))
            }
            Some(_) => {}
        }
        rows.extend(r.rows);
    }
    let columns = columns.unwrap_or_default();
    let total = columns.len();
    if spec.hidden > total {
        return Err(MergeError::Shape(
            "fewer columns than the plan needs".into(),
        ));
    }
    let kinds: Vec<Kind> = columns.iter().map(kind_of).collect();

    if spec.grouped {
        rows = group(spec, &columns, &kinds, rows)?;
    }
    if spec.distinct {
        let mut seen = std::collections::HashSet::new();
        rows.retain(|r| {
            let key: Vec<Vec<u8>> = (spec.hidden..total)
                .map(|i| group_key(kinds[i], r[i].as_deref()))
                .collect();
            seen.insert(key)
        });
    }
    if !spec.order_by.is_empty() {
        rows.sort_by(|a, b| {
            for k in &spec.order_by {
                let o = compare_values(
                    kinds[k.column],
                    a[k.column].as_deref(),
                    b[k.column].as_deref(),
                );
                let o = if k.desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
    let offset = (spec.offset as usize).min(rows.len());
    rows.drain(..offset);
    if let Some(limit) = spec.limit {
        rows.truncate(limit as usize);
    }
    for r in rows.iter_mut() {
        r.drain(..spec.hidden);
    }
    let mut columns = columns;
    columns.drain(..spec.hidden);
    let columns = columns
        .into_iter()
        .map(|c| rename_tables(c, &spec.table_names))
        .collect();
    Ok(Merged {
        columns,
        rows,
        warnings: warnings.min(u32::from(u16::MAX)) as u16,
    })
}

/// The logical name of a sub-table, if `table` is one of the plan's
/// renamed sub-tables (`names`: physical, logical). The one rule for column
/// metadata, used for merged results and for single-shard results streamed
/// through.
pub fn logical_table<'n>(names: &'n [(String, String)], table: &[u8]) -> Option<&'n [u8]> {
    names
        .iter()
        .find(|(phys, _)| phys.as_bytes() == table)
        .map(|(_, logical)| logical.as_bytes())
}

fn rename_tables(c: Column, names: &[(String, String)]) -> Column {
    let table = logical_table(names, c.table_ref());
    let org_table = logical_table(names, c.org_table_ref());
    let mut c = c;
    if let Some(t) = table {
        c = c.with_table(t);
    }
    if let Some(t) = org_table {
        c = c.with_org_table(t);
    }
    c
}

/// A column definition packet from a shard with sub-table names replaced by
/// the logical ones, as [`merge`] does for merged results; `None` when it
/// names none of them (forward it unchanged).
pub fn rename_column_def(payload: &[u8], names: &[(String, String)]) -> Option<Vec<u8>> {
    protocol::rename_column_tables(payload, |t| logical_table(names, t))
}

fn group(
    spec: &MergeSpec,
    columns: &[Column],
    kinds: &[Kind],
    rows: Vec<Row>,
) -> Result<Vec<Row>, MergeError> {
    let agg_of: BTreeMap<usize, &Agg> = spec.aggregates.iter().map(|(i, a)| (*i, a)).collect();
    let mut groups: BTreeMap<Vec<Vec<u8>>, Row> = BTreeMap::new();
    for row in rows {
        let key: Vec<Vec<u8>> = spec
            .group_by
            .iter()
            .map(|&i| group_key(kinds[i], row[i].as_deref()))
            .collect();
        match groups.get_mut(&key) {
            None => {
                groups.insert(key, row);
            }
            Some(acc) => {
                for (&i, agg) in &agg_of {
                    acc[i] = combine(agg, kinds[i], acc[i].take(), row[i].clone())?;
                }
                // AVG inputs are hidden SUM and COUNT columns: combine them too.
                for agg in agg_of.values() {
                    if let Agg::Avg { sum, count } = agg {
                        if !agg_of.contains_key(sum) {
                            acc[*sum] = combine(
                                &Agg::Sum,
                                kinds[*sum],
                                acc[*sum].take(),
                                row[*sum].clone(),
                            )?;
                        }
                        if !agg_of.contains_key(count) {
                            acc[*count] = combine(
                                &Agg::Count,
                                kinds[*count],
                                acc[*count].take(),
                                row[*count].clone(),
                            )?;
                        }
                    }
                }
            }
        }
    }
    let mut out: Vec<Row> = groups.into_values().collect();
    // An aggregate without GROUP BY over no rows at all still answers one
    // row; every shard sent one, so `out` has it unless there were no shards.
    for row in out.iter_mut() {
        for (&i, agg) in &agg_of {
            if let Agg::Avg { sum, count } = agg {
                row[i] = average(&columns[i], row[*sum].as_deref(), row[*count].as_deref())?;
            }
        }
    }
    if let Some(h) = &spec.having {
        out.retain(|r| eval_having(h, r, kinds) == Some(true));
    }
    Ok(out)
}

fn combine(
    agg: &Agg,
    kind: Kind,
    acc: Option<Bytes>,
    v: Option<Bytes>,
) -> Result<Option<Bytes>, MergeError> {
    Ok(match agg {
        Agg::Count | Agg::Sum => match (acc, v) {
            (None, x) | (x, None) => x,
            (Some(a), Some(b)) => {
                if kind == Kind::Float {
                    let x: f64 = parse_f64(&a);
                    let y: f64 = parse_f64(&b);
                    Some(Bytes::from(format_double(x + y)))
                } else {
                    let (x, y) = (
                        Dec::parse(&a).ok_or_else(|| MergeError::Malformed("bad number".into()))?,
                        Dec::parse(&b).ok_or_else(|| MergeError::Malformed("bad number".into()))?,
                    );
                    let s = x
                        .checked_add(y)
                        .ok_or_else(|| MergeError::Overflow("SUM exceeds 38 digits".into()))?;
                    Some(Bytes::from(s.to_text()))
                }
            }
        },
        Agg::Min | Agg::Max => match (acc, v) {
            (None, x) | (x, None) => x,
            (Some(a), Some(b)) => {
                let o = compare_values(kind, Some(&a), Some(&b));
                let take_b = if *agg == Agg::Min {
                    o == Ordering::Greater
                } else {
                    o == Ordering::Less
                };
                Some(if take_b { b } else { a })
            }
        },
        // Recomputed once the group is complete.
        Agg::Avg { .. } => acc,
    })
}

fn parse_f64(b: &[u8]) -> f64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0)
}

/// A double as MariaDB prints it (shortest round-trip form, `%g` exponents).
fn format_double(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-4..1e15).contains(&a) {
        let s = format!("{v:e}");
        return match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e{e}"),
            _ => s,
        };
    }
    format!("{v}")
}

fn average(
    col: &Column,
    sum: Option<&[u8]>,
    count: Option<&[u8]>,
) -> Result<Option<Bytes>, MergeError> {
    let (Some(sum), Some(count)) = (sum, count) else {
        return Ok(None);
    };
    let n = Dec::parse(count).map(|d| d.mant).unwrap_or(0);
    if n == 0 {
        return Ok(None);
    }
    if kind_of(col) == Kind::Float {
        return Ok(Some(Bytes::from(format_double(parse_f64(sum) / n as f64))));
    }
    let s = Dec::parse(sum).ok_or_else(|| MergeError::Malformed("bad SUM".into()))?;
    let avg = s
        .div_int(n, u32::from(col.decimals()))
        .ok_or_else(|| MergeError::Overflow("AVG".into()))?;
    Ok(Some(Bytes::from(avg.to_text())))
}

fn eval_having(h: &Having, row: &Row, kinds: &[Kind]) -> Option<bool> {
    match h {
        Having::And(a, b) => Some(eval_having(a, row, kinds)? && eval_having(b, row, kinds)?),
        Having::Or(a, b) => {
            let (x, y) = (eval_having(a, row, kinds), eval_having(b, row, kinds));
            match (x, y) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }
        }
        Having::Not(a) => eval_having(a, row, kinds).map(|v| !v),
        Having::Cmp(l, op, r) => {
            let value = |o: &Operand| -> Option<(Vec<u8>, Kind)> {
                match o {
                    Operand::Column(i) => Some((row.get(*i)?.as_ref()?.to_vec(), kinds[*i])),
                    Operand::Number(n) => Some((n.as_bytes().to_vec(), Kind::Decimal)),
                    Operand::Str(s) => Some((s.as_bytes().to_vec(), Kind::Folded)),
                }
            };
            let (a, ka) = value(l)?;
            let (b, kb) = value(r)?;
            let numeric = |k: Kind| matches!(k, Kind::Int | Kind::Decimal | Kind::Float);
            let o = if numeric(ka) && numeric(kb) {
                match (Dec::parse(&a), Dec::parse(&b)) {
                    (Some(x), Some(y)) => x.cmp(y),
                    _ => parse_f64(&a).total_cmp(&parse_f64(&b)),
                }
            } else {
                let k = if ka == Kind::Bytes || kb == Kind::Bytes {
                    Kind::Bytes
                } else {
                    Kind::Folded
                };
                compare_values(k, Some(&a), Some(&b))
            };
            Some(match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            })
        }
    }
}

/// The merged answer, ready to encode.
#[derive(Debug, Clone)]
pub struct Merged {
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    pub warnings: u16,
}

impl Merged {
    /// The result set as the client receives it (sequence ids from 1).
    pub fn encode(&self, deprecate_eof: bool, status: StatusFlags) -> BytesMut {
        let mut out = BytesMut::new();
        let mut seq =
            protocol::encode_result_header(&mut out, &self.columns, deprecate_eof, status);
        for r in &self.rows {
            seq = protocol::encode_text_row(&mut out, seq, r.iter().map(|c| c.as_deref()));
        }
        protocol::encode_result_end(&mut out, seq, deprecate_eof, self.warnings, status);
        out
    }
}

/// Whether a scatter SELECT can be merged while its rows arrive: ORDER BY
/// (or no order at all) with OFFSET/LIMIT, and nothing that needs every
/// row first (GROUP BY, aggregates, HAVING, DISTINCT).
pub fn streamable(spec: &MergeSpec) -> bool {
    !spec.grouped && !spec.distinct && spec.having.is_none() && spec.aggregates.is_empty()
}

/// A k-way merge of the shards' sorted row streams, emitting each row as
/// soon as it is known to come next: when every part has a row queued or
/// has finished (parts not sent yet count as empty), the smallest head (a heap over the parts'
/// heads, ties to the lower part, as the buffered sort orders them) is the
/// next row. Without ORDER BY, rows go out as they arrive. OFFSET rows are
/// dropped, and once LIMIT rows have gone out the merge is satisfied: the
/// caller stops the parts not yet sent and drops the rest of the running
/// ones. Memory is what the parts hold queued, bounded per part by
/// `part_limit` bytes; a part never keeps more than `offset + limit` rows.
#[derive(Debug)]
pub struct StreamMerge {
    spec: MergeSpec,
    deprecate_eof: bool,
    part_limit: usize,
    parts: Vec<PartQueue>,
    /// The shard result's columns (hidden ones included), from the first
    /// part that sent them.
    columns: Option<Vec<Column>>,
    order: Arc<[(usize, Kind, bool)]>,
    heads: BinaryHeap<Head>,
    /// Parts neither finished nor holding a row: an ordered merge waits.
    waiting: usize,
    skipped: u64,
    sent: u64,
    /// The next sequence id, once the result set's header went out.
    seq: Option<u8>,
    warnings: u32,
    /// Queue size at which a part's reading may pause (see [`StreamMerge::wants_pause`]).
    pause_at: usize,
}

#[derive(Debug, Default)]
struct PartQueue {
    rows: VecDeque<(Row, usize)>,
    bytes: usize,
    received: u64,
    has_columns: bool,
    done: bool,
}

/// A part's first queued row, keyed by its sort columns.
#[derive(Debug)]
struct Head {
    keys: Vec<Option<Bytes>>,
    part: usize,
    order: Arc<[(usize, Kind, bool)]>,
}

impl Head {
    fn cmp_keys(&self, other: &Self) -> Ordering {
        for (i, (_, kind, desc)) in self.order.iter().enumerate() {
            let o = compare_values(*kind, self.keys[i].as_deref(), other.keys[i].as_deref());
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        self.part.cmp(&other.part)
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    /// Reversed: `BinaryHeap` pops its greatest, the merge wants the smallest.
    fn cmp(&self, other: &Self) -> Ordering {
        other.cmp_keys(self)
    }
}

fn row_size(r: &Row) -> usize {
    r.iter()
        .map(|c| c.as_ref().map_or(1, |b| b.len() + 1))
        .sum()
}

impl StreamMerge {
    /// A merge of `parts` row streams for a client with `deprecate_eof`.
    pub fn new(spec: MergeSpec, parts: usize, deprecate_eof: bool, part_limit: usize) -> Self {
        Self {
            spec,
            deprecate_eof,
            part_limit,
            parts: (0..parts).map(|_| PartQueue::default()).collect(),
            columns: None,
            order: Arc::from(Vec::new()),
            heads: BinaryHeap::new(),
            waiting: parts,
            skipped: 0,
            sent: 0,
            seq: None,
            warnings: 0,
            pause_at: (part_limit / 2).clamp(1, 1 << 20),
        }
    }

    /// Bytes a part's collector should read at a time (see [`Collector::with_budget`]).
    pub fn read_budget(&self) -> usize {
        (self.part_limit / 4).clamp(1, 256 << 10)
    }

    /// `part` holds enough queued rows that reading more of it can wait
    /// until the merge has sent some. Only safe for a part whose lane has
    /// no other part behind it: a merge waiting on a part queued behind a
    /// paused one would never resume.
    pub fn wants_pause(&self, part: usize) -> bool {
        !self.satisfied() && self.parts[part].bytes >= self.pause_at
    }

    /// A paused `part` has drained enough to read on.
    pub fn may_resume(&self, part: usize) -> bool {
        self.satisfied() || self.parts[part].bytes <= self.pause_at / 2
    }

    fn ordered(&self) -> bool {
        !self.spec.order_by.is_empty()
    }

    /// Most rows one part can contribute: the first `offset + limit`.
    pub fn rows_per_part(&self) -> Option<u64> {
        self.spec.limit.map(|l| l.saturating_add(self.spec.offset))
    }

    /// LIMIT rows have gone out (or will, from what is queued): nothing more
    /// is needed from any part.
    pub fn satisfied(&self) -> bool {
        self.columns.is_some() && self.spec.limit.is_some_and(|l| self.sent >= l)
    }

    /// The result set's header went out: an error now follows rows.
    pub fn started(&self) -> bool {
        self.seq.is_some()
    }

    /// The sequence id the next packet to the client takes.
    pub fn next_seq(&self) -> u8 {
        self.seq.unwrap_or(1)
    }

    /// Takes what `collector` gathered for `part`: its columns (once) and its rows.
    pub fn feed(&mut self, part: usize, collector: &mut Collector) -> Result<(), MergeError> {
        if !self.parts[part].has_columns {
            let Some(cols) = collector.columns() else {
                return Ok(());
            };
            self.parts[part].has_columns = true;
            match &self.columns {
                None => {
                    if self.spec.hidden > cols.len()
                        || self.spec.order_by.iter().any(|k| k.column >= cols.len())
                    {
                        return Err(MergeError::Shape(
                            "fewer columns than the plan needs".into(),
                        ));
                    }
                    self.order = self
                        .spec
                        .order_by
                        .iter()
                        .map(|k| (k.column, kind_of(&cols[k.column]), k.desc))
                        .collect();
                    self.columns = Some(cols.to_vec());
                }
                Some(c) if c.len() != cols.len() => {
                    return Err(MergeError::Shape(format!(
                        "{} columns against {}",
                        c.len(),
                        cols.len()
                    )))
                }
                Some(_) => {}
            }
        }
        let rows = collector.take_rows();
        let cap = self.rows_per_part().unwrap_or(u64::MAX);
        let was_empty = self.parts[part].rows.is_empty();
        for row in rows {
            let q = &mut self.parts[part];
            if q.received >= cap {
                // Behind `offset + limit` rows of its own part: never sent.
                collector.keep_at_most(0);
                break;
            }
            q.received += 1;
            let size = row_size(&row);
            q.bytes += size;
            if q.bytes > self.part_limit {
                return Err(MergeError::TooLarge(self.part_limit));
            }
            q.rows.push_back((row, size));
        }
        if was_empty && !self.parts[part].rows.is_empty() && self.ordered() {
            if !self.parts[part].done {
                self.waiting -= 1;
            }
            self.push_head(part);
        }
        Ok(())
    }

    fn push_head(&mut self, part: usize) {
        if let Some((row, _)) = self.parts[part].rows.front() {
            let keys = self.order.iter().map(|(c, _, _)| row[*c].clone()).collect();
            self.heads.push(Head {
                keys,
                part,
                order: self.order.clone(),
            });
        }
    }

    /// `part` answered completely (or will not run): its end packet's
    /// warnings count. A part that answered OK instead of rows is an error.
    pub fn part_done(
        &mut self,
        part: usize,
        result: Option<&ShardResult>,
    ) -> Result<(), MergeError> {
        if let Some(r) = result {
            if r.ok.is_some() {
                return Err(MergeError::Shape(
                    "a shard answered with OK, not rows".into(),
                ));
            }
            self.warnings += u32::from(r.warnings);
        }
        let q = &mut self.parts[part];
        if !q.done {
            q.done = true;
            if q.rows.is_empty() {
                self.waiting -= 1;
            }
        }
        Ok(())
    }

    /// The next row to go out, if it is known yet.
    fn next_row(&mut self) -> Option<Row> {
        let part = if self.ordered() {
            if self.waiting > 0 {
                return None;
            }
            self.heads.pop()?.part
        } else {
            self.parts.iter().position(|q| !q.rows.is_empty())?
        };
        let ordered = self.ordered();
        let q = &mut self.parts[part];
        let (row, size) = q.rows.pop_front()?;
        q.bytes -= size;
        if ordered {
            if q.rows.is_empty() {
                if !q.done {
                    self.waiting += 1;
                }
            } else {
                self.push_head(part);
            }
        }
        Some(row)
    }

    fn header(&mut self, out: &mut BytesMut, status: StatusFlags) -> u8 {
        if let Some(seq) = self.seq {
            return seq;
        }
        let columns: Vec<Column> = self.columns.as_deref().unwrap_or_default()[self.spec.hidden..]
            .iter()
            .map(|c| rename_tables(c.clone(), &self.spec.table_names))
            .collect();
        let seq = protocol::encode_result_header(out, &columns, self.deprecate_eof, status);
        self.seq = Some(seq);
        seq
    }

    /// Encodes every row that can go out now (the result set's header before
    /// the first); empty when none can.
    pub fn pump(&mut self, status: StatusFlags) -> BytesMut {
        let mut out = BytesMut::new();
        if self.columns.is_none() {
            return out;
        }
        while self.spec.limit.is_none_or(|l| self.sent < l) {
            let Some(row) = self.next_row() else {
                break;
            };
            if self.skipped < self.spec.offset {
                self.skipped += 1;
                continue;
            }
            let seq = self.header(&mut out, status);
            let cells = row[self.spec.hidden..].iter().map(|c| c.as_deref());
            self.seq = Some(protocol::encode_text_row(&mut out, seq, cells));
            self.sent += 1;
        }
        out
    }

    /// Every part has finished: the remaining rows and the terminator.
    pub fn finish(&mut self, status: StatusFlags) -> Result<BytesMut, MergeError> {
        if self.columns.is_none() {
            return Err(MergeError::Shape("no shard answered with rows".into()));
        }
        let mut out = self.pump(status);
        let seq = self.header(&mut out, status);
        let warnings = self.warnings.min(u32::from(u16::MAX)) as u16;
        protocol::encode_result_end(&mut out, seq, self.deprecate_eof, warnings, status);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn col(name: &str, ty: ColumnType, charset: u16, decimals: u8) -> Column {
        Column::new(ty)
            .with_name(name.as_bytes())
            .with_org_name(name.as_bytes())
            .with_table(b"stu_0001")
            .with_org_table(b"stu_0001")
            .with_character_set(charset)
            .with_decimals(decimals)
    }

    fn shard(columns: &[Column], rows: &[&[Option<&str>]]) -> ShardResult {
        ShardResult {
            columns: columns.to_vec(),
            rows: rows
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|c| c.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                        .collect()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn texts(m: &Merged) -> Vec<Vec<Option<String>>> {
        m.rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|c| c.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect()
            })
            .collect()
    }

    /// Each pair as MariaDB 10.11 compares it under utf8mb4_general_ci
    /// (checked with `SELECT a = b COLLATE utf8mb4_general_ci`).
    #[test]
    fn case_insensitive_text_weighs_as_general_ci() {
        use std::cmp::Ordering::*;
        for (a, b, want) in [
            ("café", "CAFE", Equal),
            ("Straße", "STRASE", Equal),
            ("ǅ", "Ǆ", Equal),
            ("ı", "I", Equal),
            ("😀", "😁", Equal),
            ("abc  ", "ABC", Equal),
            ("a", "_", Less),
            ("é", "f", Less),
        ] {
            assert_eq!(
                fold(a.as_bytes()).cmp(&fold(b.as_bytes())),
                want,
                "{a} vs {b}"
            );
        }
        for (a, b) in [("Ø", "O"), ("æ", "AE"), ("Ł", "L")] {
            assert_ne!(fold(a.as_bytes()), fold(b.as_bytes()), "{a} vs {b}");
        }
    }

    #[test]
    fn decimals_are_exact() {
        let a = Dec::parse(b"0.10").unwrap();
        let b = Dec::parse(b"-0.3").unwrap();
        assert_eq!(a.checked_add(b).unwrap().to_text(), "-0.20");
        assert_eq!(
            Dec::parse(b"7").unwrap().div_int(3, 4).unwrap().to_text(),
            "2.3333"
        );
        assert_eq!(
            Dec::parse(b"-5").unwrap().div_int(3, 4).unwrap().to_text(),
            "-1.6667"
        );
        assert_eq!(
            Dec::parse(b"2.5").unwrap().div_int(1, 0).unwrap().to_text(),
            "3"
        );
    }

    #[test]
    fn order_by_numbers_not_text_and_limit_after_merge() {
        let cols = [col("id", ColumnType::MYSQL_TYPE_LONG, 63, 0)];
        let spec = MergeSpec {
            order_by: vec![SortKey {
                column: 0,
                desc: false,
            }],
            offset: 1,
            limit: Some(2),
            ..Default::default()
        };
        let m = merge(
            &spec,
            vec![
                shard(&cols, &[&[Some("10")], &[Some("2")]]),
                shard(&cols, &[&[Some("9")], &[None]]),
            ],
        )
        .unwrap();
        assert_eq!(
            texts(&m),
            vec![vec![Some("2".into())], vec![Some("9".into())]]
        );
        assert_eq!(m.columns[0].table_str(), "stu_0001");
    }

    #[test]
    fn grouped_sums_counts_averages_and_having() {
        // SELECT name, COUNT(*), SUM(score), AVG(score) ... GROUP BY name HAVING COUNT(*) > 1
        // shard columns: hidden sum, hidden count, name, count, sum, avg
        let cols = [
            col("h1", ColumnType::MYSQL_TYPE_NEWDECIMAL, 63, 0),
            col("h2", ColumnType::MYSQL_TYPE_LONGLONG, 63, 0),
            col("name", ColumnType::MYSQL_TYPE_VAR_STRING, 45, 0),
            col("COUNT(*)", ColumnType::MYSQL_TYPE_LONGLONG, 63, 0),
            col("SUM(score)", ColumnType::MYSQL_TYPE_NEWDECIMAL, 63, 0),
            col("AVG(score)", ColumnType::MYSQL_TYPE_NEWDECIMAL, 63, 4),
        ];
        let spec = MergeSpec {
            hidden: 2,
            aggregates: vec![
                (3, Agg::Count),
                (4, Agg::Sum),
                (5, Agg::Avg { sum: 0, count: 1 }),
            ],
            grouped: true,
            group_by: vec![2],
            having: Some(Having::Cmp(
                Operand::Column(3),
                CmpOp::Gt,
                Operand::Number("1".into()),
            )),
            table_names: vec![("stu_0001".into(), "stu".into())],
            ..Default::default()
        };
        let m = merge(
            &spec,
            vec![
                shard(
                    &cols,
                    &[
                        &[
                            Some("3"),
                            Some("1"),
                            Some("Bob"),
                            Some("1"),
                            Some("3"),
                            Some("3.0000"),
                        ],
                        &[
                            Some("1"),
                            Some("1"),
                            Some("amy"),
                            Some("1"),
                            Some("1"),
                            Some("1.0000"),
                        ],
                    ],
                ),
                shard(
                    &cols,
                    &[
                        &[
                            Some("4"),
                            Some("2"),
                            Some("bob"),
                            Some("2"),
                            Some("4"),
                            Some("2.0000"),
                        ],
                        &[None, Some("0"), Some("Zed"), Some("1"), None, None],
                    ],
                ),
            ],
        )
        .unwrap();
        assert_eq!(
            texts(&m),
            vec![vec![
                Some("Bob".into()),
                Some("3".into()),
                Some("7".into()),
                Some("2.3333".into())
            ]]
        );
        assert_eq!(m.columns.len(), 4);
        assert_eq!(m.columns[0].table_str(), "stu");
    }

    proptest! {
        #[test]
        fn merged_order_limit_matches_a_naive_sort(
            shards in proptest::collection::vec(proptest::collection::vec(-50i64..50, 0..8), 1..5),
            offset in 0u64..5, limit in 0u64..10, desc in any::<bool>(),
        ) {
            let cols = [col("v", ColumnType::MYSQL_TYPE_LONGLONG, 63, 0)];
            let results: Vec<ShardResult> = shards.iter().map(|vals| {
                let texts: Vec<String> = vals.iter().map(|v| v.to_string()).collect();
                let rows: Vec<Vec<Option<&str>>> = texts.iter().map(|t| vec![Some(t.as_str())]).collect();
                let refs: Vec<&[Option<&str>]> = rows.iter().map(|r| r.as_slice()).collect();
                shard(&cols, &refs)
            }).collect();
            let spec = MergeSpec {
                order_by: vec![SortKey { column: 0, desc }],
                offset, limit: Some(limit), ..Default::default()
            };
            let m = merge(&spec, results).unwrap();
            let mut all: Vec<i64> = shards.concat();
            all.sort();
            if desc { all.reverse(); }
            let want: Vec<i64> = all.into_iter().skip(offset as usize).take(limit as usize).collect();
            let got: Vec<i64> = m.rows.iter().map(|r| std::str::from_utf8(r[0].as_ref().unwrap()).unwrap().parse().unwrap()).collect();
            prop_assert_eq!(got, want);
        }

        /// The streaming merge sends the very bytes the buffered merge would,
        /// however the shards' answers are cut and interleaved, and stops
        /// parts once LIMIT is reached.
        #[test]
        fn streaming_merge_equals_the_buffered_merge(
            shards in proptest::collection::vec(
                proptest::collection::vec((proptest::option::of(-20i64..20), -3i64..3), 0..12), 1..6),
            offset in 0u64..6,
            limit in proptest::option::of(0u64..15),
            desc in any::<bool>(),
            two_keys in any::<bool>(),
            deprecate in any::<bool>(),
            schedule in proptest::collection::vec((0usize..6, 1usize..200), 0..400),
            budget in 1usize..300,
        ) {
            // Shard columns: hidden sort key `k`, then the visible `v` and `w`.
            let cols = [
                col("k", ColumnType::MYSQL_TYPE_LONGLONG, 63, 0),
                col("v", ColumnType::MYSQL_TYPE_LONGLONG, 63, 0),
                col("w", ColumnType::MYSQL_TYPE_LONGLONG, 63, 0),
            ];
            let mut order_by = vec![SortKey { column: 0, desc }];
            if two_keys {
                order_by.push(SortKey { column: 2, desc: !desc });
            }
            let spec = MergeSpec {
                hidden: 1,
                order_by: order_by.clone(),
                offset,
                limit,
                table_names: vec![("stu_0001".into(), "stu".into())],
                ..Default::default()
            };
            // Each shard answers sorted, as its ORDER BY makes it.
            let mut texts: Vec<Vec<[Option<String>; 3]>> = Vec::new();
            for (n, rows) in shards.iter().enumerate() {
                let mut rows: Vec<[Option<String>; 3]> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, (k, w))| [k.map(|k| k.to_string()), Some(format!("{n}.{i}")), Some(w.to_string())])
                    .collect();
                rows.sort_by(|a, b| {
                    for key in &order_by {
                        let o = compare_values(Kind::Int, a[key.column].as_deref().map(str::as_bytes), b[key.column].as_deref().map(str::as_bytes));
                        let o = if key.desc { o.reverse() } else { o };
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                    Ordering::Equal
                });
                texts.push(rows);
            }
            let status = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
            let wires: Vec<Vec<u8>> = texts.iter().map(|rows| {
                let cells: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| r.iter().map(|c| c.as_deref().map(str::as_bytes)).collect()).collect();
                protocol::encode_text_result(&cols, &cells, deprecate, status).to_vec()
            }).collect();
            let want = {
                let results: Vec<ShardResult> = texts.iter().map(|rows| {
                    let rows: Vec<Vec<Option<&str>>> = rows.iter().map(|r| r.iter().map(|c| c.as_deref()).collect()).collect();
                    let refs: Vec<&[Option<&str>]> = rows.iter().map(|r| r.as_slice()).collect();
                    shard(&cols, &refs)
                }).collect();
                merge(&spec, results).unwrap().encode(deprecate, status).to_vec()
            };

            let k = shards.len();
            let mut m = StreamMerge::new(spec.clone(), k, deprecate, 1 << 20);
            let mut collectors: Vec<Option<Collector>> = (0..k).map(|_| {
                let mut c = Collector::new(deprecate, 1 << 20).with_budget(budget);
                if let Some(n) = m.rows_per_part() {
                    c.keep_at_most(n);
                }
                Some(c)
            }).collect();
            let mut fed = vec![0usize; k];
            let mut bufs: Vec<BytesMut> = (0..k).map(|_| BytesMut::new()).collect();
            let mut stopped = vec![false; k];
            let mut out = Vec::new();
            // Feeds part `p` up to `upto` bytes of its wire, as the session does.
            let mut step = |p: usize, n: usize, m: &mut StreamMerge, collectors: &mut Vec<Option<Collector>>, fed: &mut Vec<usize>, stopped: &mut Vec<bool>, out: &mut Vec<u8>| {
                if stopped[p] || collectors[p].is_none() {
                    return;
                }
                let end = (fed[p] + n).min(wires[p].len());
                bufs[p].extend_from_slice(&wires[p][fed[p]..end]);
                fed[p] = end;
                loop {
                    let c = collectors[p].as_mut().unwrap();
                    let done = c.feed(&mut bufs[p]).unwrap();
                    let full = c.is_full();
                    m.feed(p, c).unwrap();
                    if done {
                        let r = collectors[p].take().unwrap().take();
                        m.part_done(p, Some(&r)).unwrap();
                    }
                    out.extend_from_slice(&m.pump(status));
                    if m.satisfied() {
                        for q in 0..k {
                            if fed[q] == 0 && !stopped[q] {
                                // Never sent: dropped.
                                stopped[q] = true;
                                collectors[q] = None;
                                m.part_done(q, None).unwrap();
                            } else if let Some(c) = collectors[q].as_mut() {
                                c.keep_at_most(0);
                                c.take_rows();
                            }
                        }
                    }
                    if done || !full {
                        break;
                    }
                }
            };
            for (p, n) in &schedule {
                if *p < k {
                    step(*p, *n, &mut m, &mut collectors, &mut fed, &mut stopped, &mut out);
                }
            }
            for p in 0..k {
                while collectors[p].is_some() {
                    step(p, 64, &mut m, &mut collectors, &mut fed, &mut stopped, &mut out);
                }
            }
            out.extend_from_slice(&m.finish(status).unwrap());
            prop_assert_eq!(out, want);
        }
    }

    #[test]
    fn streaming_merge_keeps_a_part_under_its_limit_and_reports_too_large() {
        let cols = [col("v", ColumnType::MYSQL_TYPE_LONGLONG, 63, 0)];
        let spec = MergeSpec {
            order_by: vec![SortKey {
                column: 0,
                desc: false,
            }],
            ..Default::default()
        };
        let rows: Vec<Vec<Option<&[u8]>>> =
            (0..100).map(|_| vec![Some(&b"12345678"[..])]).collect();
        let wire = protocol::encode_text_result(&cols, &rows, true, StatusFlags::empty());
        let mut m = StreamMerge::new(spec, 2, true, 200);
        let mut c = Collector::new(true, 200).with_budget(m.read_budget());
        let mut buf = BytesMut::from(&wire[..]);
        // Part 1 has not answered: part 0's rows queue up to the limit.
        let mut err = None;
        for _ in 0..100 {
            let done = c.feed(&mut buf).unwrap();
            if let Err(e) = m.feed(0, &mut c) {
                err = Some(e);
                break;
            }
            assert!(
                m.pump(StatusFlags::empty()).is_empty(),
                "part 1's head is unknown"
            );
            if m.wants_pause(0) {
                // A paused part reads no further; the session waits for part 1.
                assert!(!m.may_resume(0));
                break;
            }
            assert!(!done);
        }
        assert_eq!(err, None, "paused before the limit");
        // Part 1 answers with nothing: everything flows and part 0 may read on.
        let empty = protocol::encode_text_result(&cols, &[], true, StatusFlags::empty());
        let mut c1 = Collector::new(true, 200);
        assert!(c1.feed(&mut BytesMut::from(&empty[..])).unwrap());
        m.feed(1, &mut c1).unwrap();
        m.part_done(1, Some(&c1.take())).unwrap();
        assert!(!m.pump(StatusFlags::empty()).is_empty());
        assert!(m.may_resume(0));
        // Without pausing, a part that outgrows the limit is an error.
        let mut m = StreamMerge::new(
            MergeSpec {
                order_by: vec![SortKey {
                    column: 0,
                    desc: false,
                }],
                ..Default::default()
            },
            2,
            true,
            200,
        );
        let mut c = Collector::new(true, 1 << 20);
        let mut buf = BytesMut::from(&wire[..]);
        assert!(c.feed(&mut buf).unwrap());
        assert_eq!(m.feed(0, &mut c), Err(MergeError::TooLarge(200)));
    }

    /// Found by the simulation (any calm seed, e.g. `TESSERA_SIM_SEED=1
    /// cargo run -p tessera-sim -- --seeds 1 --scenario calm`): a shard
    /// connection restored with COM_SET_OPTION before a scatter query answers
    /// with an EOF packet, which the collector took for a broken result set.
    #[test]
    fn an_eof_packet_answer_is_a_complete_reply() {
        for deprecate_eof in [false, true] {
            let mut wire = BytesMut::new();
            let status = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
            let payload = if deprecate_eof {
                protocol::ok_payload(0xfe, 0, 0, status, 0)
            } else {
                protocol::eof_payload(0, status)
            };
            protocol::write_packet(&mut wire, 1, &payload);
            let mut c = Collector::new(deprecate_eof, 1 << 20);
            assert_eq!(c.feed(&mut wire), Ok(true), "deprecate_eof {deprecate_eof}");
            assert!(wire.is_empty());
        }
    }
}
