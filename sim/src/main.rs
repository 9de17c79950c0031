//! Simulation campaigns: `cargo run -p tessera-sim --release -- --seeds N
//! --scenario S` runs N seeds (from `TESSERA_SIM_SEED`, or 1) and prints
//! seeds per second, each failure with its replay command, and a summary.

use std::time::Instant;

use tessera_core::mutants::Mutant;
use tessera_sim::scenario::run_with_mutant;
use tessera_sim::Scenario;

fn main() {
    let mut seeds = 100u64;
    let mut scenarios: Vec<Scenario> = Scenario::ALL.to_vec();
    let mut verbose = false;
    let mut tier1 = false;
    let mut mutant: Option<Mutant> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seeds" => seeds = args.next().and_then(|v| v.parse().ok()).unwrap_or(seeds),
            "--verbose" => verbose = true,
            "--tier" => tier1 = args.next().as_deref() == Some("1"),
            "--mutant" => {
                let name = args.next().unwrap_or_default();
                match Mutant::ALL.into_iter().find(|m| format!("{m:?}") == name) {
                    Some(m) => mutant = Some(m),
                    None => {
                        eprintln!("unknown mutant `{name}`: {:?}", Mutant::ALL);
                        std::process::exit(2);
                    }
                }
            }
            "--scenario" => {
                let name = args.next().unwrap_or_default();
                match Scenario::parse(&name) {
                    Some(s) => scenarios = vec![s],
                    None if name == "all" => {}
                    None => {
                        eprintln!("unknown scenario `{name}`: calm, partition, primary-crash, proxy-crash, replica-lag or all");
                        std::process::exit(2);
                    }
                }
            }
            _ => {
                eprintln!("usage: tessera-sim [--seeds N] [--scenario NAME|all] [--tier 1] [--verbose] [--mutant NAME]");
                std::process::exit(2);
            }
        }
    }
    let first: u64 = std::env::var("TESSERA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    if tier1 {
        let started = Instant::now();
        if verbose {
            let reports: Vec<_> = (first..first + seeds.min(200))
                .map(|s| tessera_sim::tier1::run_with_mutant(s, mutant))
                .collect();
            let steps: u64 = reports.iter().map(|r| r.steps).sum();
            let ops: usize = reports.iter().map(|r| r.ops).sum();
            println!(
                "tier 1: {:.0} steps and {:.1} operations a seed",
                steps as f64 / reports.len() as f64,
                ops as f64 / reports.len() as f64
            );
        }
        let failing = tessera_sim::tier1::campaign(first, seeds, mutant);
        let secs = started.elapsed().as_secs_f64();
        for r in &failing {
            println!(
                "FAIL tier 1 seed {}: replay with `TESSERA_SIM_SEED={} cargo run -p tessera-sim --release -- --tier 1 --seeds 1`",
                r.seed, r.seed
            );
            for v in r.violations.iter().take(8) {
                println!("    {v}");
            }
        }
        println!(
            "tier 1: {seeds} seeds, {:.0} seeds/s, {} failing",
            seeds as f64 / secs,
            failing.len()
        );
        std::process::exit(if failing.is_empty() { 0 } else { 1 });
    }
    let mut failures = 0;
    for scenario in scenarios {
        let started = Instant::now();
        let mut ops = 0;
        let mut disturbed = 0;
        for seed in first..first + seeds {
            let report = run_with_mutant(scenario, seed, mutant);
            ops += report.ops;
            disturbed += report.disturbed;
            if std::env::var_os("TESSERA_SIM_PRINT_FINGERPRINT").is_some() {
                println!(
                    "fingerprint {} seed {}: {:016x}",
                    scenario.name(),
                    seed,
                    report.fingerprint
                );
            }
            if verbose {
                let mut why: std::collections::BTreeMap<String, usize> = Default::default();
                for op in &report.history.ops {
                    let text = match &op.outcome {
                        tessera_sim::history::Outcome::Ok(_) => continue,
                        tessera_sim::history::Outcome::Fail(w) => format!("fail {w}"),
                        tessera_sim::history::Outcome::Unknown(w) => format!("unknown {w}"),
                    };
                    *why.entry(text.chars().take(90).collect()).or_default() += 1;
                }
                println!("seed {seed}: faults {:?}", report.faults);
                for (w, n) in why {
                    println!("    {n:4} {w}");
                }
            }
            if !report.violations.is_empty() {
                failures += 1;
                println!(
                    "FAIL {} seed {}: replay with `{}`",
                    scenario.name(),
                    seed,
                    report.replay_command()
                );
                for f in &report.faults {
                    println!("    fault: {f}");
                }
                for v in report.violations.iter().take(8) {
                    println!("    {v}");
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{}: {} seeds, {} operations ({} failed or unknown), {:.1} seeds/s",
            scenario.name(),
            seeds,
            ops,
            disturbed,
            seeds as f64 / secs
        );
    }
    println!("{failures} failing runs");
    if failures > 0 {
        std::process::exit(1);
    }
}
