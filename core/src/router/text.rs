//! Rewriting the client's SQL text in place: positions from the parser's
//! spans become byte ranges, and edits are spliced into the original text,
//! so everything Tessera does not mean to change (comments, spacing, the
//! labels MariaDB derives from expression text) stays exactly as written.

use std::ops::Range;

use sqlparser::dialect::MySqlDialect;
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer};

use super::cache::{Shape, ShapeLiteral};
use crate::shard::Literal;

/// Maps parser locations (1-based line and character column) to byte offsets.
#[derive(Debug)]
pub struct LineIndex<'a> {
    sql: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(sql: &'a str) -> Self {
        let mut line_starts = vec![0];
        for (i, b) in sql.bytes().enumerate() {
            if b == b'\n' {
                line_starts.push(i + 1);
            }
        }
        Self { sql, line_starts }
    }

    pub fn offset(&self, loc: Location) -> Option<usize> {
        if loc.line == 0 || loc.column == 0 {
            return None;
        }
        let start = *self.line_starts.get(loc.line as usize - 1)?;
        let line = &self.sql[start..];
        let col = loc.column as usize - 1;
        if line.as_bytes()[..col.min(line.len())].is_ascii() {
            return (col <= line.len()).then_some(start + col);
        }
        let mut chars = line.char_indices();
        match chars.nth(col) {
            Some((b, _)) => Some(start + b),
            None => (line.chars().count() == col).then_some(self.sql.len()),
        }
    }

    pub fn range(&self, span: Span) -> Option<Range<usize>> {
        let a = self.offset(span.start)?;
        let b = self.offset(span.end)?;
        (a <= b).then_some(a..b)
    }
}

/// The statement being planned: the client's text (edits apply to it), and
/// how positions in the parsed tree map onto it.
///
/// The tree is the client's own text parsed, or a cached parse of its shape
/// (literals replaced by `?`, see [`super::cache`]), or a prepared statement
/// whose `?` take the values of an execute. Either way `range`/`offset`
/// answer in bytes of the client's text and `placeholder` gives the value a
/// `?` of the tree stands for.
#[derive(Debug)]
pub struct Source<'a> {
    sql: &'a str,
    index: LineIndex<'a>,
    placeholders: Placeholders<'a>,
}

#[derive(Debug)]
enum Placeholders<'a> {
    None,
    /// The tree is the parse of a shape: each `?` is one of these literals.
    Shape(&'a [ShapeLiteral]),
    /// The tree is the client's text with `?` at these byte offsets, bound to these values.
    Bound {
        at: &'a [usize],
        values: &'a [Literal],
    },
}

impl<'a> Source<'a> {
    /// The tree is the parse of `sql` itself.
    pub fn plain(sql: &'a str) -> Self {
        Self {
            sql,
            index: LineIndex::new(sql),
            placeholders: Placeholders::None,
        }
    }

    /// The tree is the parse of `shape`, the shape of `sql`.
    pub fn shaped(sql: &'a str, shape: &'a Shape) -> Self {
        Self {
            sql,
            index: LineIndex::new(&shape.text),
            placeholders: Placeholders::Shape(&shape.literals),
        }
    }

    /// The tree is the parse of `sql`, whose `?` (at byte offsets `at`) are bound to `values`.
    pub fn bound(sql: &'a str, at: &'a [usize], values: &'a [Literal]) -> Self {
        Self {
            sql,
            index: LineIndex::new(sql),
            placeholders: Placeholders::Bound { at, values },
        }
    }

    /// The client's text.
    pub fn sql(&self) -> &'a str {
        self.sql
    }

    /// Whether the tree is a cached shape: only single-target plans are
    /// taken from it (fan-outs copy expression text from the tree).
    pub fn is_shape(&self) -> bool {
        matches!(self.placeholders, Placeholders::Shape(_))
    }

    /// Byte offset in the client's text of a location in the tree.
    pub fn offset(&self, loc: Location) -> Option<usize> {
        let o = self.index.offset(loc)?;
        match self.placeholders {
            Placeholders::Shape(lits) => {
                let k = lits.partition_point(|l| l.at < o);
                Some(match k {
                    0 => o,
                    _ => {
                        let l = &lits[k - 1];
                        l.original.end + (o - (l.at + 1))
                    }
                })
            }
            _ => Some(o),
        }
    }

    pub fn range(&self, span: Span) -> Option<Range<usize>> {
        let a = self.offset(span.start)?;
        let b = self.offset(span.end)?;
        (a <= b).then_some(a..b)
    }

    /// The value of the `?` that starts at `loc` in the tree.
    pub fn placeholder(&self, loc: Location) -> Option<&'a Literal> {
        let o = self.index.offset(loc)?;
        match self.placeholders {
            Placeholders::None => None,
            Placeholders::Shape(lits) => {
                let k = lits.binary_search_by_key(&o, |l| l.at).ok()?;
                Some(&lits[k].value)
            }
            Placeholders::Bound { at, values } => values.get(at.binary_search(&o).ok()?),
        }
    }
}

/// Byte offsets of the `?` placeholders of a statement, in order, as the
/// parser's own tokenizer sees them.
pub fn placeholder_offsets(sql: &str) -> Option<Vec<usize>> {
    let index = LineIndex::new(sql);
    let tokens = Tokenizer::new(&MySqlDialect {}, sql)
        .tokenize_with_location()
        .ok()?;
    tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| index.offset(t.span.start))
        .collect()
}

/// How many statements the text holds (`;`-separated, empty ones not
/// counted), as the parser's tokenizer sees it; 1 if it cannot tokenize it.
pub fn statement_count(sql: &str) -> usize {
    let Ok(tokens) = Tokenizer::new(&MySqlDialect {}, sql).tokenize() else {
        return 1;
    };
    let mut count = 0;
    let mut in_statement = false;
    for t in &tokens {
        match t {
            Token::SemiColon => in_statement = false,
            Token::Whitespace(_) => {}
            _ if !in_statement => {
                in_statement = true;
                count += 1;
            }
            _ => {}
        }
    }
    count.max(1)
}

/// Edits to the original text, applied together.
#[derive(Debug, Default, Clone)]
pub struct Edits {
    edits: Vec<(Range<usize>, String)>,
}

impl Edits {
    pub fn replace(&mut self, range: Range<usize>, text: impl Into<String>) {
        self.edits.push((range, text.into()));
    }

    pub fn insert(&mut self, at: usize, text: impl Into<String>) {
        self.edits.push((at..at, text.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }

    /// The text with every edit applied. An edit inside a range another edit
    /// replaces is dropped (the clause it touched is gone, e.g. a HAVING the
    /// merge evaluates); `None` if two edits overlap only in part.
    pub fn apply(&self, sql: &str) -> Option<String> {
        let mut edits: Vec<&(Range<usize>, String)> = self.edits.iter().collect();
        // At one position: insertions first, then the widest replacement.
        edits.sort_by_key(|(r, _)| (r.start, !r.is_empty(), std::cmp::Reverse(r.end)));
        let mut out = String::with_capacity(sql.len() + 32);
        let mut at = 0;
        let mut replaced = 0..0;
        for (r, text) in edits {
            if r.start < at {
                // Inside the last (non-empty) replacement: gone with it.
                if replaced.is_empty() || r.start < replaced.start || r.end > replaced.end {
                    return None;
                }
                continue;
            }
            if r.end > sql.len() {
                return None;
            }
            out.push_str(sql.get(at..r.start)?);
            out.push_str(text);
            at = r.end;
            if !r.is_empty() {
                replaced = r.clone();
            }
        }
        out.push_str(sql.get(at..)?);
        Some(out)
    }
}

/// The statement's tokens with byte ranges, for finding clause keywords at
/// the top level (outside parentheses).
pub struct Tokens {
    pub tokens: Vec<(Token, Range<usize>, u32)>,
}

impl Tokens {
    pub fn new(sql: &str) -> Option<Self> {
        let index = LineIndex::new(sql);
        let raw: Vec<TokenWithSpan> = Tokenizer::new(&MySqlDialect {}, sql)
            .tokenize_with_location()
            .ok()?;
        let mut depth = 0u32;
        let mut tokens = Vec::with_capacity(raw.len());
        for t in raw {
            if matches!(t.token, Token::Whitespace(_)) {
                continue;
            }
            let range = index.range(t.span)?;
            if t.token == Token::RParen {
                depth = depth.saturating_sub(1);
            }
            let d = depth;
            if t.token == Token::LParen {
                depth += 1;
            }
            tokens.push((t.token, range, d));
        }
        Some(Self { tokens })
    }

    /// Index of the first top-level keyword `kw` at or after token `from`.
    pub fn find_keyword(&self, kw: &str, from: usize) -> Option<usize> {
        self.tokens
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, (t, _, d))| *d == 0 && is_keyword(t, kw))
            .map(|(i, _)| i)
    }

    /// Byte range of a top-level clause that starts with keyword `kw` and
    /// runs to the next of `enders` (or the end, before a trailing `;`).
    pub fn clause(&self, kw: &str, enders: &[&str]) -> Option<Range<usize>> {
        let start = self.find_keyword(kw, 0)?;
        let mut end_tok = self.tokens.len();
        for (i, (t, _, d)) in self.tokens.iter().enumerate().skip(start + 1) {
            if *d == 0 && (enders.iter().any(|e| is_keyword(t, e)) || *t == Token::SemiColon) {
                end_tok = i;
                break;
            }
        }
        let last = &self.tokens[end_tok - 1];
        Some(self.tokens[start].1.start..last.1.end)
    }
}

pub fn is_keyword(t: &Token, kw: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_map_to_bytes_past_multibyte_text() {
        let sql = "SELECT 'ä' ,\n x FROM t";
        let idx = LineIndex::new(sql);
        assert_eq!(idx.offset(Location::new(1, 1)), Some(0));
        assert_eq!(idx.offset(Location::new(1, 12)), Some(12));
        assert_eq!(idx.offset(Location::new(2, 2)), Some(15));
        let toks = Tokens::new(sql).unwrap();
        let from = toks.find_keyword("from", 0).unwrap();
        assert_eq!(&sql[toks.tokens[from].1.clone()], "FROM");
    }

    #[test]
    fn clauses_end_at_the_next_top_level_keyword() {
        let sql =
            "SELECT a FROM t GROUP BY a HAVING COUNT(*) > (SELECT 1 LIMIT 1) ORDER BY a LIMIT 3;";
        let toks = Tokens::new(sql).unwrap();
        let r = toks.clause("having", &["order", "limit"]).unwrap();
        assert_eq!(&sql[r], "HAVING COUNT(*) > (SELECT 1 LIMIT 1)");
        let r = toks.clause("limit", &["for", "lock"]).unwrap();
        assert_eq!(&sql[r], "LIMIT 3");
        let mut e = Edits::default();
        e.replace(0..6, "select");
        e.insert(sql.len() - 1, " FOR UPDATE");
        assert!(e.apply(sql).unwrap().starts_with("select a"));
    }

    #[test]
    fn edits_inside_a_replaced_range_are_dropped_partial_overlaps_refused() {
        let sql = "SELECT a FROM t HAVING x.y > 1 LIMIT 3";
        let mut e = Edits::default();
        e.replace(16..30, "");
        e.replace(23..25, "");
        e.insert(7, "h, ");
        e.replace(7..8, "b");
        assert_eq!(e.apply(sql).unwrap(), "SELECT h, b FROM t  LIMIT 3");
        let mut e = Edits::default();
        e.replace(16..30, "");
        e.replace(28..34, "");
        assert_eq!(e.apply(sql), None);
    }
}
