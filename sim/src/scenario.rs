//! Scenarios: two nodes of simulated MySQL (a primary and a replica each),
//! the real proxy adapter with a sharded schema, and client workloads, on
//! turmoil; faults are drawn from the seed, and the history is checked
//! after the run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_core::auth::PasswordHashes;
use tessera_core::config::Config;
use tessera_core::mutants::{self, Mutant};
use tokio::sync::watch;

use crate::db::{self, Replication, SharedReplication};
use crate::engine::{Engine, SharedEngine, SharedTrace};
use crate::history::{Evidence, History, Outcome};
use crate::server::{PASSWORD, USER};
use crate::transport::{TurmoilConnector, TurmoilListener};
use crate::workload::{Workload, USERS};

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// No faults: the baseline.
    Calm,
    /// Links fail: client↔proxy, proxy↔backend or primary↔replica, both
    /// ways or one way; messages held and released; latency spikes.
    Partition,
    /// A primary crashes and restarts (its committed data survives).
    PrimaryCrash,
    /// The proxy host crashes and restarts.
    ProxyCrash,
    /// Replicas fall behind: the replication lag jumps, and a replication
    /// link fails for a while.
    ReplicaLag,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Calm,
        Scenario::Partition,
        Scenario::PrimaryCrash,
        Scenario::ProxyCrash,
        Scenario::ReplicaLag,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Calm => "calm",
            Scenario::Partition => "partition",
            Scenario::PrimaryCrash => "primary-crash",
            Scenario::ProxyCrash => "proxy-crash",
            Scenario::ReplicaLag => "replica-lag",
        }
    }
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: Scenario,
    pub seed: u64,
    pub ops: usize,
    /// Operations that failed or whose outcome is unknown (faults at work).
    pub disturbed: usize,
    pub violations: Vec<String>,
    pub fingerprint: u64,
    /// The faults, as applied.
    pub faults: Vec<String>,
    pub history: History,
}

impl Report {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "TESSERA_SIM_SEED={} cargo run -p tessera-sim --release -- --seeds 1 --scenario {}",
            self.seed,
            self.scenario.name()
        )
    }
}

const CLIENTS: usize = 4;
const OPS_PER_CLIENT: usize = 40;
/// Every fault has healed by then (they end by 8 s); clients then verify.
const HEALED_BY: Duration = Duration::from_secs(11);

const NODES: [(&str, &str); 2] = [("db1", "db1r"), ("db2", "db2r")];

/// The proxy's configuration in both tiers: two nodes of a primary and a
/// replica, `kv` and `lists` sharded over them, `counters` unsharded.
pub fn proxy_config_text() -> String {
    let h = PasswordHashes::from_password(PASSWORD);
    let users: String = USERS
        .iter()
        .map(|u| {
            let ryw = if *u == "ryw" {
                "read_your_writes = \"gtid\"\n"
            } else {
                ""
            };
            format!(
                "[[users]]\nname = \"{u}\"\npassword_native = \"{}\"\n{ryw}",
                h.native_string()
            )
        })
        .collect();
    let nodes: String = NODES
        .iter()
        .enumerate()
        .map(|(i, (p, r))| {
            format!(
                "[[nodes]]\nname = \"node{}\"\nprimary = \"{p}:3306\"\nreplicas = [\"{r}:3306@1\"]\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
                i + 1
            )
        })
        .collect();
    format!(
        r#"
listen = "0.0.0.0:3306"
backend_read_timeout_ms = 1500
{users}
{nodes}
[schema]
default_node = "node1"
[[schema.tables]]
name = "kv"
key = "k"
function = "hash"
locations = [2, 2]
[[schema.tables]]
name = "lists"
key = "k"
function = "hash"
locations = [2, 2]
[pool]
max_connections = 16
connect_timeout_ms = 1000
acquire_timeout_ms = 1000
"#
    )
}

fn proxy_config() -> Config {
    Config::from_toml(&proxy_config_text()).expect("simulation config")
}

async fn proxy_host(seed: u64) -> turmoil::Result {
    let config = proxy_config();
    let shared = tessera_net::server::build_shared_seeded(&config, TurmoilConnector, Some(seed))
        .await
        .map_err(|e| e.to_string())?;
    let listener = turmoil::net::TcpListener::bind("0.0.0.0:3306").await?;
    let (_keep, rx) = watch::channel(false);
    tessera_net::server::serve(
        TurmoilListener(listener),
        shared,
        rx,
        Duration::from_secs(1),
    )
    .await;
    Ok(())
}

/// One fault: applied at `start`, healed at `end`.
#[derive(Debug, Clone)]
struct Fault {
    start: Duration,
    end: Duration,
    kind: FaultKind,
}

#[derive(Debug, Clone)]
enum FaultKind {
    Partition(String, String),
    OneWay(String, String),
    Hold(String, String),
    Latency(String, String, Duration),
    Crash(String),
    Lag(Duration),
}

/// The faults of a scenario, drawn from the seed.
fn schedule(scenario: Scenario, rng: &mut StdRng) -> Vec<Fault> {
    let window = |rng: &mut StdRng| {
        let start = Duration::from_millis(rng.gen_range(500..5000));
        let end = start + Duration::from_millis(rng.gen_range(300..3000));
        (start, end)
    };
    let node = |rng: &mut StdRng| NODES[rng.gen_range(0..NODES.len())];
    let mut faults = Vec::new();
    let count = match scenario {
        Scenario::Calm => 0,
        Scenario::Partition => rng.gen_range(1..=3),
        _ => 1,
    };
    for _ in 0..count {
        let (start, end) = window(rng);
        let kind = match scenario {
            Scenario::Calm => unreachable!(),
            Scenario::Partition => {
                let (primary, replica) = node(rng);
                let client = format!("client{}", rng.gen_range(0..CLIENTS));
                let (a, b) = match rng.gen_range(0..4) {
                    0 => (client, "proxy".to_string()),
                    1 => ("proxy".to_string(), primary.to_string()),
                    2 => ("proxy".to_string(), replica.to_string()),
                    _ => (primary.to_string(), replica.to_string()),
                };
                match rng.gen_range(0..5) {
                    0 | 1 => FaultKind::Partition(a, b),
                    2 if rng.gen_bool(0.5) => FaultKind::OneWay(b, a),
                    2 => FaultKind::OneWay(a, b),
                    3 => FaultKind::Hold(a, b),
                    _ => FaultKind::Latency(a, b, Duration::from_millis(rng.gen_range(50..800))),
                }
            }
            Scenario::PrimaryCrash => FaultKind::Crash(node(rng).0.to_string()),
            Scenario::ProxyCrash => FaultKind::Crash("proxy".into()),
            Scenario::ReplicaLag => {
                if rng.gen_bool(0.5) {
                    FaultKind::Lag(Duration::from_millis(rng.gen_range(500..3000)))
                } else {
                    let (p, r) = node(rng);
                    FaultKind::Partition(p.to_string(), r.to_string())
                }
            }
        };
        faults.push(Fault { start, end, kind });
    }
    faults
}

/// Runs one seed of a scenario and checks its history.
pub fn run(scenario: Scenario, seed: u64) -> Report {
    run_with_mutant(scenario, seed, None)
}

/// As [`run`], with a planted bug switched on for the run (see
/// `tessera_core::mutants`).
pub fn run_with_mutant(scenario: Scenario, seed: u64, mutant: Option<Mutant>) -> Report {
    mutants::set(mutant);
    let report = run_inner(scenario, seed);
    mutants::set(None);
    report
}

/// The first seed (from `first`, at most `max_seeds` of them) whose run
/// catches `mutant`, and how many seeds that took.
pub fn hunt(mutant: Mutant, scenario: Scenario, first: u64, max_seeds: u64) -> Option<(u64, u64)> {
    (first..first + max_seeds)
        .find(|seed| {
            !run_with_mutant(scenario, *seed, Some(mutant))
                .violations
                .is_empty()
        })
        .map(|seed| (seed, seed - first + 1))
}

fn run_inner(scenario: Scenario, seed: u64) -> Report {
    let history = Arc::new(Mutex::new(History::default()));
    let trace = SharedTrace::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(60))
        .tick_duration(Duration::from_millis(1))
        // Hosts run in a seeded random order each step: more interleavings.
        .enable_random_order()
        .build();
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17) ^ 0xfa17);
    let replication: SharedReplication = Arc::new(Mutex::new(Replication {
        lag: Duration::from_millis(rng.gen_range(0..400)),
        semi_sync: rng.gen_bool(0.3),
    }));
    let base_lag = replication.lock().map(|r| r.lag).unwrap_or_default();
    let mut primaries: Vec<(String, SharedEngine)> = Vec::new();
    let mut server_id = 0;
    for (primary, replica) in NODES {
        server_id += 1;
        let p: SharedEngine = Arc::new(Mutex::new(Engine::new(primary, server_id, false)));
        server_id += 1;
        let r: SharedEngine = Arc::new(Mutex::new(Engine::new(replica, server_id, true)));
        primaries.push((primary.to_string(), p.clone()));
        let (t, rep) = (trace.clone(), replication.clone());
        sim.host(primary, move || {
            db::serve(p.clone(), t.clone(), rep.clone())
        });
        let (t, rep) = (trace.clone(), replication.clone());
        sim.host(replica, move || {
            let (r, t, rep) = (r.clone(), t.clone(), rep.clone());
            async move {
                tokio::spawn(db::replicate(
                    format!("{primary}:3306"),
                    r.clone(),
                    rep.clone(),
                ));
                db::serve(r, t, rep).await
            }
        });
    }
    sim.host("proxy", move || proxy_host(seed));
    for c in 0..CLIENTS {
        let w = Workload {
            client: c,
            seed,
            ops: OPS_PER_CLIENT,
            healed_by: HEALED_BY,
            history: history.clone(),
        };
        sim.client(format!("client{c}"), w.run());
    }
    let faults = schedule(scenario, &mut rng);
    let mut applied = vec![false; faults.len()];
    let mut healed = vec![false; faults.len()];
    let mut violations = Vec::new();
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                violations.push(format!("simulation error: {e}"));
                break;
            }
        }
        let t = sim.elapsed();
        for (i, f) in faults.iter().enumerate() {
            if !applied[i] && t >= f.start {
                applied[i] = true;
                match &f.kind {
                    FaultKind::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
                    FaultKind::OneWay(a, b) => sim.partition_oneway(a.as_str(), b.as_str()),
                    FaultKind::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
                    FaultKind::Latency(a, b, d) => sim.set_link_latency(a.as_str(), b.as_str(), *d),
                    FaultKind::Crash(h) => sim.crash(h.as_str()),
                    FaultKind::Lag(d) => {
                        if let Ok(mut r) = replication.lock() {
                            r.lag = *d;
                        }
                    }
                }
            }
            if applied[i] && !healed[i] && t >= f.end {
                healed[i] = true;
                match &f.kind {
                    FaultKind::Partition(a, b) => sim.repair(a.as_str(), b.as_str()),
                    FaultKind::OneWay(a, b) => sim.repair_oneway(a.as_str(), b.as_str()),
                    FaultKind::Hold(a, b) => sim.release(a.as_str(), b.as_str()),
                    FaultKind::Latency(a, b, _) => {
                        sim.set_link_latency(a.as_str(), b.as_str(), Duration::ZERO)
                    }
                    FaultKind::Crash(h) => sim.bounce(h.as_str()),
                    FaultKind::Lag(_) => {
                        if let Ok(mut r) = replication.lock() {
                            r.lag = base_lag;
                        }
                    }
                }
            }
        }
    }
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    let evidence = Evidence {
        primaries: primaries
            .iter()
            .map(|(h, e)| {
                let binlog = e
                    .lock()
                    .map(|e| e.storage.binlog.clone())
                    .unwrap_or_default();
                (h.clone(), binlog)
            })
            .collect(),
        executed: trace.lock().map(|t| t.executed.clone()).unwrap_or_default(),
    };
    violations.extend(history.check(&evidence));
    Report {
        scenario,
        seed,
        ops: history.ops.len(),
        disturbed: history
            .ops
            .iter()
            .filter(|o| !matches!(o.outcome, Outcome::Ok(_)))
            .count(),
        violations,
        fingerprint: history.fingerprint(&evidence),
        faults: faults.iter().map(|f| format!("{f:?}")).collect(),
        history,
    }
}
