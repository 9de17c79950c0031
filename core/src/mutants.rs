//! Deliberately planted bugs ("mutants") that prove the simulation's
//! checkers bite: each sits behind a switch in the code it breaks, and
//! `tessera-sim` requires every one to be caught within a bounded number of
//! seeds.
//!
//! The switches exist only with the `mutants` cargo feature (the simulation
//! turns it on); without it [`active`] is a constant `false` and the
//! compiler removes the planted branches. With it, a switch is per thread:
//! a turmoil simulation runs every host on the calling thread, so one test's
//! mutant never reaches another test running in parallel.

/// A planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutant {
    /// The pool hands a connection to the next client without resetting it.
    PoolSkipsReset,
    /// The router sends a write outside a transaction to a replica.
    WriteToReplica,
    /// A statement inside a transaction is routed as if no transaction were
    /// open: one reaching another node goes there instead of being refused.
    TxStatementEscapes,
    /// A backend's error answer to a query reaches the client as an OK.
    ErrorAsSuccess,
    /// Reads ignore read-your-writes and go to any replica.
    ReadYourWritesIgnored,
}

impl Mutant {
    pub const ALL: [Mutant; 5] = [
        Mutant::PoolSkipsReset,
        Mutant::WriteToReplica,
        Mutant::TxStatementEscapes,
        Mutant::ErrorAsSuccess,
        Mutant::ReadYourWritesIgnored,
    ];
}

#[cfg(feature = "mutants")]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutant>> = const { std::cell::Cell::new(None) };
}

/// Turns a mutant on (or all off, with `None`) for this thread.
#[cfg(feature = "mutants")]
pub fn set(mutant: Option<Mutant>) {
    ACTIVE.with(|a| a.set(mutant));
}

/// Whether `mutant` is planted on this thread.
#[inline(always)]
pub fn active(mutant: Mutant) -> bool {
    #[cfg(feature = "mutants")]
    {
        ACTIVE.with(|a| a.get() == Some(mutant))
    }
    #[cfg(not(feature = "mutants"))]
    {
        let _ = mutant;
        false
    }
}
