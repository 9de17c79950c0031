//! MariaDB GTID positions, for read-your-writes: a GTID is
//! `domain-server-seqno`; a position is a comma-separated list of them, at
//! most one per replication domain (`@@gtid_slave_pos`, `@@last_gtid`).
//!
//! Within a domain, sequence numbers only grow (the server id says which
//! server wrote a transaction, not its order), so a replica has applied a
//! transaction `d-s-n` once its position holds domain `d` with a seqno of
//! at least `n`. This is the comparison `MASTER_GTID_WAIT` makes.

use std::collections::BTreeMap;
use std::fmt;

/// A GTID position: per replication domain, the last transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos {
    /// domain → (server id, seqno)
    domains: BTreeMap<u32, (u32, u64)>,
}

/// Why a position did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a GTID position like 0-1-42,1-2-7")]
pub struct GtidParseError(pub String);

impl GtidPos {
    /// Parses `domain-server-seqno[,…]`. Whitespace around entries is
    /// ignored; the empty string is the empty position. When a domain is
    /// listed twice the higher seqno counts.
    pub fn parse(text: &str) -> Result<Self, GtidParseError> {
        let err = || GtidParseError(text.chars().take(200).collect());
        let mut pos = GtidPos::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(pos);
        }
        for entry in text.split(',') {
            let mut parts = entry.trim().split('-');
            let (Some(d), Some(s), Some(n), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(err());
            };
            let number = |p: &str| -> Option<u64> {
                // `u64::from_str` takes a leading `+`; a GTID never has one.
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                p.parse().ok()
            };
            let domain = number(d)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(err)?;
            let server = number(s)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(err)?;
            let seqno = number(n).ok_or_else(err)?;
            pos.add(domain, server, seqno);
        }
        Ok(pos)
    }

    fn add(&mut self, domain: u32, server: u32, seqno: u64) {
        let e = self.domains.entry(domain).or_insert((server, seqno));
        if seqno > e.1 {
            *e = (server, seqno);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The seqno of `domain`, if the position has it.
    pub fn seqno(&self, domain: u32) -> Option<u64> {
        self.domains.get(&domain).map(|(_, n)| *n)
    }

    /// Whether a server at this position has applied everything in
    /// `required`: every domain of `required` is present here with a seqno
    /// at least as high. The empty requirement is always covered.
    pub fn covers(&self, required: &GtidPos) -> bool {
        required
            .domains
            .iter()
            .all(|(d, (_, n))| self.seqno(*d).is_some_and(|have| have >= *n))
    }

    /// Adds `other`: per domain, the later transaction.
    pub fn merge(&mut self, other: &GtidPos) {
        for (d, (s, n)) in &other.domains {
            self.add(*d, *s, *n);
        }
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (d, (s, n))) in self.domains.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}-{s}-{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pos(s: &str) -> GtidPos {
        GtidPos::parse(s).unwrap()
    }

    #[test]
    fn parses_single_and_multi_domain_positions() {
        let p = pos("0-1-42");
        assert_eq!(p.seqno(0), Some(42));
        assert_eq!(p.seqno(1), None);
        let p = pos(" 0-1-42 ,\n1-2-7,10-3-18446744073709551615 ");
        assert_eq!(p.seqno(0), Some(42));
        assert_eq!(p.seqno(1), Some(7));
        assert_eq!(p.seqno(10), Some(u64::MAX));
        assert_eq!(
            p.to_string(),
            "0-1-42,1-2-7,10-3-18446744073709551615",
            "display lists domains in order"
        );
        assert!(pos("").is_empty());
        assert!(pos("  ").is_empty());
        // The same domain twice: the later transaction.
        assert_eq!(pos("0-1-5,0-2-9,0-1-3").seqno(0), Some(9));
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            "x",
            "0-1",
            "0-1-",
            "-1-2",
            "0--2",
            "0-1-2-3",
            "0-1-x",
            "0-1-2,",
            ",0-1-2",
            "0-1-2,,1-1-1",
            "0-1--2",
            "0-1-+2",
            "0-1-2 3",
            "4294967296-1-2",
            "0-4294967296-2",
            "0-1-18446744073709551616",
            "NULL",
        ] {
            assert!(GtidPos::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn covers_compares_seqno_per_domain() {
        let replica = pos("0-1-10,1-2-5");
        assert!(replica.covers(&pos("0-1-10")));
        assert!(replica.covers(&pos("0-1-9")));
        assert!(!replica.covers(&pos("0-1-11")));
        // The server id does not order transactions; the seqno does.
        assert!(replica.covers(&pos("0-7-10")));
        assert!(replica.covers(&pos("0-1-3,1-2-5")));
        assert!(!replica.covers(&pos("0-1-3,1-2-6")), "one domain behind");
        assert!(
            !replica.covers(&pos("2-1-1")),
            "a domain the replica never saw"
        );
        assert!(replica.covers(&GtidPos::default()), "nothing required");
        assert!(!GtidPos::default().covers(&pos("0-1-1")));
    }

    #[test]
    fn merge_keeps_the_latest_per_domain() {
        let mut p = pos("0-1-10");
        p.merge(&pos("0-1-8,1-2-3"));
        assert_eq!(p, pos("0-1-10,1-2-3"));
        p.merge(&pos("1-3-4"));
        assert_eq!(p.to_string(), "0-1-10,1-3-4");
    }

    proptest! {
        #[test]
        fn never_panics_and_round_trips(s in ".{0,40}") {
            if let Ok(p) = GtidPos::parse(&s) {
                prop_assert_eq!(GtidPos::parse(&p.to_string()).unwrap(), p);
            }
        }

        #[test]
        fn covers_matches_a_per_domain_check(
            have in proptest::collection::btree_map(0u32..4, 0u64..20, 0..4),
            want in proptest::collection::btree_map(0u32..4, 0u64..20, 0..4),
        ) {
            let render = |m: &BTreeMap<u32, u64>| {
                m.iter().map(|(d, n)| format!("{d}-1-{n}")).collect::<Vec<_>>().join(",")
            };
            let expected = want.iter().all(|(d, n)| have.get(d).is_some_and(|h| h >= n));
            prop_assert_eq!(pos(&render(&have)).covers(&pos(&render(&want))), expected);
        }
    }
}
