//! The recorded history of client operations, its fingerprint, and the
//! checkers that judge it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpKind {
    Write { key: i64, value: i64 },
    Read { key: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Acknowledged; a read carries the value it saw.
    Ok(Option<i64>),
    /// Definitely not applied (the database refused it).
    Fail(String),
    /// May or may not have taken effect (connection lost, timeout).
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Op {
    pub client: usize,
    pub kind: OpKind,
    pub invoked: Duration,
    pub completed: Duration,
    pub outcome: Outcome,
    /// Issued after every fault healed: it must succeed.
    pub after_heal: bool,
}

#[derive(Debug, Default, Clone)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    /// A fingerprint of the whole history (FNV-1a over its debug form), to
    /// prove that a seed replays exactly.
    pub fn fingerprint(&self) -> u64 {
        format!("{:?}", self.ops)
            .bytes()
            .fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100000001b3)
            })
    }

    /// Checks the history of single-writer registers (each key is written by
    /// one client only). Returns one line per violation.
    ///
    /// - A read returns a value that could be there: the last acknowledged
    ///   write to the key (or nothing if none), or any write whose outcome is
    ///   unknown (it may land at any time).
    /// - Acknowledged writes are not lost: the same rule applied to the final
    ///   reads made after every fault healed.
    /// - Every operation issued after the faults healed gets an answer.
    pub fn check(&self) -> Vec<String> {
        let mut violations = Vec::new();
        let mut by_key: BTreeMap<i64, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            let key = match op.kind {
                OpKind::Write { key, .. } | OpKind::Read { key } => key,
            };
            by_key.entry(key).or_default().push(op);
            if op.after_heal && !matches!(op.outcome, Outcome::Ok(_)) {
                violations.push(format!("no answer after faults healed: {op:?}"));
            }
        }
        for (key, ops) in by_key {
            let mut acked: Option<i64> = None;
            let mut unknown: BTreeSet<i64> = BTreeSet::new();
            for op in ops {
                match (&op.kind, &op.outcome) {
                    (OpKind::Write { value, .. }, Outcome::Ok(_)) => acked = Some(*value),
                    (OpKind::Write { value, .. }, Outcome::Unknown(_)) => {
                        unknown.insert(*value);
                    }
                    (OpKind::Read { .. }, Outcome::Ok(seen)) => {
                        let possible = *seen == acked || seen.is_some_and(|v| unknown.contains(&v));
                        if !possible {
                            violations.push(format!(
                                "key {key}: read saw {seen:?}, but the last acknowledged write was {acked:?} \
                                 (unknown writes: {unknown:?}); op {op:?}"
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, outcome: Outcome) -> Op {
        Op {
            client: 0,
            kind,
            invoked: Duration::ZERO,
            completed: Duration::ZERO,
            outcome,
            after_heal: false,
        }
    }

    #[test]
    fn lost_acknowledged_write_is_caught() {
        let h = History {
            ops: vec![
                op(OpKind::Write { key: 1, value: 10 }, Outcome::Ok(None)),
                op(OpKind::Write { key: 1, value: 11 }, Outcome::Ok(None)),
                op(OpKind::Read { key: 1 }, Outcome::Ok(Some(10))),
            ],
        };
        assert_eq!(h.check().len(), 1);
    }

    #[test]
    fn unknown_write_may_land_late() {
        let h = History {
            ops: vec![
                op(
                    OpKind::Write { key: 1, value: 10 },
                    Outcome::Unknown("timeout".into()),
                ),
                op(OpKind::Write { key: 1, value: 11 }, Outcome::Ok(None)),
                op(OpKind::Read { key: 1 }, Outcome::Ok(Some(10))),
            ],
        };
        assert!(h.check().is_empty());
    }

    #[test]
    fn value_never_written_is_caught() {
        let h = History {
            ops: vec![op(OpKind::Read { key: 1 }, Outcome::Ok(Some(99)))],
        };
        assert_eq!(h.check().len(), 1);
    }
}
