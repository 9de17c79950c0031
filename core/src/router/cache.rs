//! The plan cache: statements that differ only in their literal values share
//! one parse.
//!
//! sqlparser needs about 4 µs for a point select, more than the whole routing
//! budget. A hot statement arrives again and again with other literals
//! (`... WHERE id = 17`, `... WHERE id = 4012`), so the router reduces it to
//! its *shape* (every literal replaced by `?`), parses the shape once, and
//! plans later arrivals from the cached tree, reading the literal values and
//! the rewrite positions of the statement at hand through
//! [`super::text::Source`].
//!
//! The scanner that finds literals is deliberately timid: whatever it cannot
//! be sure to lex exactly as sqlparser does (backslash escapes, `#` and `--`
//! comments, double quotes, prefixed strings, exponents, `?`) makes it give
//! up, and the statement is parsed as sent.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use sqlparser::ast::Statement;
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use crate::shard::Literal;

/// A statement reduced to its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// The statement with every literal replaced by `?`: the cache key, and
    /// the text that is parsed.
    pub text: String,
    /// The literals, in text order.
    pub literals: Vec<ShapeLiteral>,
}

/// One literal of a statement and the `?` that stands for it in the shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeLiteral {
    /// Byte offset of the `?` in [`Shape::text`].
    pub at: usize,
    /// Byte range of the literal in the original statement.
    pub original: Range<usize>,
    pub value: Literal,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl Shape {
    /// The shape of `sql`, or `None` when the scanner is not sure it reads
    /// the statement the way the parser would.
    pub fn of(sql: &str) -> Option<Shape> {
        let b = sql.as_bytes();
        let mut text = String::with_capacity(sql.len());
        let mut literals = Vec::new();
        let mut copied = 0; // bytes of `sql` before this are in `text`
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            match c {
                b'\'' => {
                    if i > 0 && (is_word_byte(b[i - 1]) || b[i - 1] == b'\'') {
                        return None; // X'..', N'..', _utf8'..', adjacent strings
                    }
                    let mut j = i + 1;
                    let mut value = String::new();
                    let mut from = j;
                    loop {
                        match *b.get(j)? {
                            b'\\' => return None,
                            b'\'' if b.get(j + 1) == Some(&b'\'') => {
                                value.push_str(&sql[from..=j]);
                                j += 2;
                                from = j;
                            }
                            b'\'' => break,
                            _ => j += 1,
                        }
                    }
                    value.push_str(&sql[from..j]);
                    let end = j + 1;
                    let next = b[end..].iter().find(|n| !n.is_ascii_whitespace());
                    // 'a' 'b' is one literal; 'a'b is not SQL; 'a'. 1.5 does not
                    // parse, but its shape ?. ? may.
                    if b.get(end).is_some_and(|&n| is_word_byte(n))
                        || matches!(next, Some(b'\'' | b'.'))
                        || prev_non_space(b, i) == Some(b'.')
                    {
                        return None;
                    }
                    push_literal(
                        sql,
                        &mut text,
                        &mut literals,
                        &mut copied,
                        i..end,
                        Literal::Str(value),
                    );
                    i = end;
                }
                b'"' | b'#' | b'\\' | b'?' => return None,
                b'-' if b.get(i + 1) == Some(&b'-') => return None,
                b'`' => {
                    let close = sql[i + 1..].find('`')?;
                    i += close + 2;
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    let body_end = sql[i + 2..].find("*/")? + i + 2;
                    if sql[i + 2..body_end].contains("/*") {
                        return None;
                    }
                    i = body_end + 2;
                }
                b'0'..=b'9' => {
                    let prev_word =
                        i > 0 && (is_word_byte(b[i - 1]) || b[i - 1] == b'.' || b[i - 1] == b'@');
                    if prev_word {
                        i += 1;
                        continue;
                    }
                    let mut j = i;
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    if b.get(j) == Some(&b'.') {
                        j += 1;
                        while j < b.len() && b[j].is_ascii_digit() {
                            j += 1;
                        }
                    }
                    if b.get(j).is_some_and(|&n| is_word_byte(n) || n == b'.') {
                        return None; // 1e5, 0x1F, 1abc
                    }
                    // A literal beside a dot (`'a'. 1.5`, `x. 1`) is not one the
                    // scanner can be sure the parser reads as a value.
                    if prev_non_space(b, i) == Some(b'.')
                        || b[j..].iter().find(|n| !n.is_ascii_whitespace()) == Some(&b'.')
                    {
                        return None;
                    }
                    push_literal(
                        sql,
                        &mut text,
                        &mut literals,
                        &mut copied,
                        i..j,
                        Literal::Number(sql[i..j].to_string()),
                    );
                    i = j;
                }
                _ if is_word_byte(c) || c == b'@' => {
                    let mut j = i + 1;
                    while j < b.len() && is_word_byte(b[j]) {
                        j += 1;
                    }
                    if b.get(j) == Some(&b'\'') {
                        return None;
                    }
                    i = j;
                }
                _ => i += 1,
            }
        }
        text.push_str(&sql[copied..]);
        Some(Shape { text, literals })
    }
}

/// The last byte before `i` that is not white space.
fn prev_non_space(b: &[u8], i: usize) -> Option<u8> {
    b[..i]
        .iter()
        .rev()
        .find(|n| !n.is_ascii_whitespace())
        .copied()
}

fn push_literal(
    sql: &str,
    text: &mut String,
    literals: &mut Vec<ShapeLiteral>,
    copied: &mut usize,
    range: Range<usize>,
    value: Literal,
) {
    text.push_str(&sql[*copied..range.start]);
    literals.push(ShapeLiteral {
        at: text.len(),
        original: range.clone(),
        value,
    });
    text.push('?');
    *copied = range.end;
}

/// Most shapes kept; when full the cache starts over (simple, and a working
/// set of hot statements refills it at once).
const CAPACITY: usize = 4096;

/// Parsed shapes, shared by every session. `None` marks a shape that does
/// not parse as exactly one statement: such statements are parsed as sent.
#[derive(Default)]
pub struct PlanCache {
    shapes: Mutex<HashMap<String, Option<Arc<Statement>>>>,
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.shapes.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("PlanCache").field("shapes", &n).finish()
    }
}

impl PlanCache {
    /// The parsed statement of a shape, parsing it on first sight.
    pub fn statement(&self, shape: &str) -> Option<Arc<Statement>> {
        if let Ok(map) = self.shapes.lock() {
            if let Some(hit) = map.get(shape) {
                return hit.clone();
            }
        }
        let parsed = match Parser::parse_sql(&MySqlDialect {}, shape) {
            Ok(mut v) if v.len() == 1 => v.pop().map(Arc::new),
            _ => None,
        };
        if let Ok(mut map) = self.shapes.lock() {
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(shape.to_string(), parsed.clone());
        }
        parsed
    }

    pub fn len(&self) -> usize {
        self.shapes.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> Option<String> {
        Shape::of(sql).map(|s| s.text)
    }

    #[test]
    fn literals_become_placeholders_and_keep_their_places() {
        let sql = "SELECT c FROM sbtest1 WHERE id = 5012 AND name = 'o''k' /*node2*/";
        let s = Shape::of(sql).unwrap();
        assert_eq!(
            s.text,
            "SELECT c FROM sbtest1 WHERE id = ? AND name = ? /*node2*/"
        );
        assert_eq!(s.literals.len(), 2);
        assert_eq!(&sql[s.literals[0].original.clone()], "5012");
        assert_eq!(s.literals[0].value, Literal::Number("5012".into()));
        assert_eq!(&s.text[s.literals[1].at..s.literals[1].at + 1], "?");
        assert_eq!(s.literals[1].value, Literal::Str("o'k".into()));
    }

    #[test]
    fn numbers_inside_names_are_not_literals() {
        assert_eq!(
            shape("SELECT t1.c2, `x 3` FROM stu_0003 AS t1 WHERE @v1 = 1.5").as_deref(),
            Some("SELECT t1.c2, `x 3` FROM stu_0003 AS t1 WHERE @v1 = ?")
        );
        assert_eq!(
            shape("SELECT * FROM t WHERE a = -3 LIMIT 2, 10").as_deref(),
            Some("SELECT * FROM t WHERE a = -? LIMIT ?, ?")
        );
    }

    #[test]
    fn unsure_lexing_gives_up() {
        for sql in [
            "SELECT 'a\\'b'",
            "SELECT \"x\"",
            "SELECT 1 # c",
            "SELECT 1 -- c",
            "SELECT X'0F'",
            "SELECT _utf8mb4'x'",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT ?",
            "SELECT 'a' 'b'",
            "SELECT 'open",
            "SELECT /* a /* b */ 1",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    #[test]
    fn the_cache_parses_a_shape_once() {
        let cache = PlanCache::default();
        let a = cache.statement("SELECT c FROM t WHERE id = ?").unwrap();
        let b = cache.statement("SELECT c FROM t WHERE id = ?").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(cache.statement("SELECT 1; SELECT 2").is_none());
        assert_eq!(cache.len(), 2);
    }
}
