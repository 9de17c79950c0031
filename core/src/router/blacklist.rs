//! The SQL blacklist: statements refused by shape before they reach a
//! backend. Shapes compare by fingerprint (keywords and names with literals
//! replaced by `?`), so one pattern covers every literal value.

use sqlparser::ast::Statement;
use sqlparser::dialect::MySqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

#[derive(Debug, Clone, Default)]
pub struct Blacklist {
    unfiltered_writes: bool,
    fingerprints: Vec<(String, String)>,
}

impl Blacklist {
    /// Fingerprints the patterns; an error names the pattern's index.
    pub fn new(unfiltered_writes: bool, patterns: &[String]) -> Result<Self, (usize, String)> {
        let mut fingerprints = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let f = fingerprint(p).ok_or((i, format!("`{p}` is not SQL Tessera can read")))?;
            if f.is_empty() {
                return Err((i, "an empty pattern would refuse nothing".into()));
            }
            fingerprints.push((f, p.clone()));
        }
        Ok(Self {
            unfiltered_writes,
            fingerprints,
        })
    }

    pub fn is_empty(&self) -> bool {
        !self.unfiltered_writes && self.fingerprints.is_empty()
    }

    pub fn checks_unfiltered_writes(&self) -> bool {
        self.unfiltered_writes
    }

    /// Why `sql` is refused, if it is.
    pub fn check_text(&self, sql: &str) -> Option<String> {
        if self.fingerprints.is_empty() {
            return None;
        }
        let f = fingerprint(sql)?;
        self.fingerprints
            .iter()
            .find(|(fp, _)| *fp == f)
            .map(|(_, p)| format!("Statement refused by the Tessera blacklist (pattern `{p}`)"))
    }

    pub fn check_statement(&self, stmt: &Statement) -> Option<String> {
        if !self.unfiltered_writes {
            return None;
        }
        match stmt {
            Statement::Update(u) if u.selection.is_none() => Some(
                "Statement refused by the Tessera blacklist: UPDATE without WHERE would change every row"
                    .into(),
            ),
            Statement::Delete(d) if d.selection.is_none() => Some(
                "Statement refused by the Tessera blacklist: DELETE without WHERE would remove every row"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// The statement's shape: upper-case words, literals as `?`, single spaces,
/// no comments or trailing semicolon.
pub fn fingerprint(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&MySqlDialect {}, sql).tokenize().ok()?;
    let mut out = String::with_capacity(sql.len());
    for t in tokens {
        let piece = match &t {
            Token::Whitespace(_) | Token::SemiColon => continue,
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::HexStringLiteral(_)
            | Token::Placeholder(_) => "?".to_string(),
            Token::Word(w) if w.quote_style.is_none() => w.value.to_uppercase(),
            Token::Word(w) => w.value.clone(),
            other => other.to_string(),
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&piece);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_any_literal_and_spacing() {
        let b = Blacklist::new(false, &["DELETE FROM t WHERE id = 1".into()]).unwrap();
        assert!(b.check_text("delete  from t where id=77;").is_some());
        assert!(b.check_text("delete from t where id=77 or 1").is_none());
        assert!(b.check_text("delete from u where id=7").is_none());
        assert!(Blacklist::new(false, &["".into()]).is_err());
    }
}
