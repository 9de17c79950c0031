//! The checkers must bite: every planted bug (`tessera_core::mutants`) is
//! caught within a bounded number of tier-2 seeds. A failure names the
//! mutant that went unnoticed. (Tier 1's own check is in `tier1.rs`.)

use tessera_core::mutants::Mutant;
use tessera_sim::scenario::hunt;
use tessera_sim::Scenario;

/// Seeds a mutant may take to be caught.
const MAX_SEEDS: u64 = 10;

fn caught_in(mutant: Mutant, scenario: Scenario) {
    let first = std::env::var("TESSERA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    match hunt(mutant, scenario, first, MAX_SEEDS) {
        Some((seed, tries)) => println!("{mutant:?}: caught by seed {seed} ({tries} seeds)"),
        None => panic!(
            "{mutant:?} survived {MAX_SEEDS} {} seeds from {first}: the checkers miss it",
            scenario.name()
        ),
    }
}

#[test]
fn pool_skipping_the_reset_is_caught() {
    caught_in(Mutant::PoolSkipsReset, Scenario::Calm);
}

#[test]
fn a_write_sent_to_a_replica_is_caught() {
    caught_in(Mutant::WriteToReplica, Scenario::Calm);
}

#[test]
fn a_transaction_statement_escaping_to_another_node_is_caught() {
    caught_in(Mutant::TxStatementEscapes, Scenario::Calm);
}

#[test]
fn an_error_reported_as_success_is_caught() {
    caught_in(Mutant::ErrorAsSuccess, Scenario::Calm);
}

/// Stale replica reads need replicas that lag.
#[test]
fn reads_ignoring_read_your_writes_are_caught() {
    caught_in(Mutant::ReadYourWritesIgnored, Scenario::ReplicaLag);
}

#[test]
fn the_list_of_mutants_is_covered() {
    assert_eq!(
        Mutant::ALL.len(),
        5,
        "a new mutant needs its own test above"
    );
}
