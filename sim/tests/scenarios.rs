//! CI's fixed set of simulation seeds per scenario, and the replay check.
//! A failure prints the seed and the command that replays it.

use tessera_sim::{run, Scenario};

const SEEDS_PER_SCENARIO: u64 = 8;

fn first_seed() -> u64 {
    std::env::var("TESSERA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn check(scenario: Scenario) {
    let first = first_seed();
    let mut disturbed = 0;
    for seed in first..first + SEEDS_PER_SCENARIO {
        let report = run(scenario, seed);
        assert!(
            report.violations.is_empty(),
            "{} seed {} failed; replay with `{}`:\n{}",
            scenario.name(),
            seed,
            report.replay_command(),
            report.violations.join("\n")
        );
        disturbed += report.disturbed;
    }
    if scenario != Scenario::Calm {
        assert!(
            disturbed > 0,
            "{}: the faults never touched the workload",
            scenario.name()
        );
    }
}

#[test]
fn calm() {
    check(Scenario::Calm);
}

#[test]
fn partition_between_proxy_and_database() {
    check(Scenario::Partition);
}

#[test]
fn primary_crash_and_restart() {
    check(Scenario::PrimaryCrash);
}

#[test]
fn proxy_crash_and_restart() {
    check(Scenario::ProxyCrash);
}

#[test]
fn replica_lag() {
    check(Scenario::ReplicaLag);
}

/// Replays happen in a fresh process (as `TESSERA_SIM_SEED=<seed>` does):
/// tokio numbers tasks with a process-wide counter, which changes the order
/// in which a crashed host's sockets close, so only a fresh process repeats a
/// crash run exactly.
#[test]
fn the_same_seed_replays_the_same_history() {
    let fingerprint = |scenario: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera-sim"))
            .args(["--seeds", "1", "--scenario", scenario])
            .env("TESSERA_SIM_SEED", "42")
            .env("TESSERA_SIM_PRINT_FINGERPRINT", "1")
            .output()
            .expect("tessera-sim runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("fingerprint"))
            .map(str::to_string)
            .expect("a fingerprint line")
    };
    for scenario in [
        "calm",
        "partition",
        "primary-crash",
        "proxy-crash",
        "replica-lag",
    ] {
        assert_eq!(
            fingerprint(scenario),
            fingerprint(scenario),
            "{scenario} seed 42 is not deterministic"
        );
    }
}
