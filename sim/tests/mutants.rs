//! The checkers must bite: every planted bug (`tessera_core::mutants`) is
//! caught within a bounded number of seeds. A failure names the mutant that
//! went unnoticed.

use tessera_core::mutants::Mutant;
use tessera_sim::scenario::hunt;
use tessera_sim::Scenario;

/// Seeds a mutant may take to be caught.
const MAX_SEEDS: u64 = 10;

fn caught(mutant: Mutant) {
    caught_in(mutant, Scenario::Calm);
}

fn caught_in(mutant: Mutant, scenario: Scenario) {
    let first = std::env::var("TESSERA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    match hunt(mutant, scenario, first, MAX_SEEDS) {
        Some((seed, tries)) => println!("{mutant:?}: caught by seed {seed} ({tries} seeds)"),
        None => panic!("{mutant:?} survived {MAX_SEEDS} seeds from {first}: the checkers miss it"),
    }
}

#[test]
fn pool_skipping_the_reset_is_caught() {
    caught(Mutant::PoolSkipsReset);
}

#[test]
fn a_write_sent_to_a_replica_is_caught() {
    caught(Mutant::WriteToReplica);
}

#[test]
fn a_transaction_statement_escaping_to_another_node_is_caught() {
    caught(Mutant::TxStatementEscapes);
}

#[test]
fn an_error_reported_as_success_is_caught() {
    caught(Mutant::ErrorAsSuccess);
}

#[test]
fn the_list_of_mutants_is_covered() {
    assert_eq!(
        Mutant::ALL.len(),
        4,
        "a new mutant needs its own test above"
    );
}
