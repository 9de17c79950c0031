//! Scenarios: a simulated database, the real proxy adapter and clients on
//! turmoil, with faults drawn from the seed; the history is checked after.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_core::auth::PasswordHashes;
use tessera_core::config::Config;
use tokio::sync::watch;

use crate::client::{Answer, ClientError, SimClient};
use crate::db::{self, SharedStorage};
use crate::history::{History, Op, OpKind, Outcome};
use crate::transport::{TurmoilConnector, TurmoilListener};

/// Which fault the run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// No faults: the baseline.
    Calm,
    /// The proxy loses the database for a while (a silent black hole).
    Partition,
    /// The database host crashes and restarts (committed data survives).
    DbCrash,
    /// The proxy host crashes and restarts.
    ProxyCrash,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Calm,
        Scenario::Partition,
        Scenario::DbCrash,
        Scenario::ProxyCrash,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Calm => "calm",
            Scenario::Partition => "partition",
            Scenario::DbCrash => "db-crash",
            Scenario::ProxyCrash => "proxy-crash",
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

const CLIENTS: usize = 3;
const KEYS_PER_CLIENT: i64 = 3;
const OPS_PER_CLIENT: usize = 40;
/// Every fault has healed by then; clients then verify.
const HEALED_BY: Duration = Duration::from_secs(12);

fn proxy_config() -> Config {
    let h = PasswordHashes::from_password(db::PASSWORD);
    let text = format!(
        r#"
listen = "0.0.0.0:3306"
backend_read_timeout_ms = 1500
[[users]]
name = "{user}"
password_native = "{native}"
[node]
primary = "db:3306"
user = "{user}"
password = "{pw}"
[pool]
max_connections = 8
connect_timeout_ms = 1000
acquire_timeout_ms = 1000
"#,
        user = db::USER,
        native = h.native_string(),
        pw = db::PASSWORD
    );
    Config::from_toml(&text).expect("simulation config")
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

fn classify(kind: &OpKind, r: Result<Answer, ClientError>) -> Outcome {
    match r {
        Ok(Answer::Ok { .. }) => Outcome::Ok(None),
        Ok(Answer::Rows(rows)) => {
            let v = rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|v| v.parse().ok());
            Outcome::Ok(v)
        }
        // Errors the database itself raises: the statement did not happen.
        Err(ClientError::Server { code, message }) if code == 1064 || code == 1045 => {
            Outcome::Fail(format!("{code}: {message}"))
        }
        // The proxy lost the backend or timed out: a write may have happened.
        Err(ClientError::Server { code, message }) => match kind {
            OpKind::Write { .. } => Outcome::Unknown(format!("{code}: {message}")),
            OpKind::Read { .. } => Outcome::Fail(format!("{code}: {message}")),
        },
        Err(ClientError::Io(e)) => Outcome::Unknown(e),
    }
}

async fn workload(client: usize, seed: u64, history: Arc<Mutex<History>>) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x9e37_79b9 * (client as u64 + 1)));
    let keys: Vec<i64> = (0..KEYS_PER_CLIENT)
        .map(|k| client as i64 * 100 + k)
        .collect();
    let mut conn: Option<SimClient> = None;
    let mut next_value = client as i64 * 1_000_000;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let op_timeout = Duration::from_secs(4);
    let run_op = |kind: OpKind, after_heal: bool, conn: &mut Option<SimClient>| {
        let history = history.clone();
        let taken = conn.take();
        async move {
            let invoked = turmoil::elapsed();
            let mut c = match taken {
                Some(c) => c,
                None => match tokio::time::timeout(
                    op_timeout,
                    SimClient::connect("proxy:3306", db::USER, db::PASSWORD),
                )
                .await
                {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        let outcome = match &kind {
                            OpKind::Write { .. } => Outcome::Fail(format!("connect: {e:?}")),
                            OpKind::Read { .. } => Outcome::Fail(format!("connect: {e:?}")),
                        };
                        record(&history, client, kind, invoked, outcome, after_heal);
                        return None;
                    }
                    Err(_) => {
                        record(
                            &history,
                            client,
                            kind,
                            invoked,
                            Outcome::Fail("connect timeout".into()),
                            after_heal,
                        );
                        return None;
                    }
                },
            };
            let sql = match &kind {
                OpKind::Write { key, value } => format!("REPLACE INTO kv VALUES ({key}, {value})"),
                OpKind::Read { key } => format!("SELECT v FROM kv WHERE k = {key}"),
            };
            let r = match tokio::time::timeout(op_timeout, c.query(&sql)).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Io("client timeout".into())),
            };
            let keep = r.is_ok();
            let outcome = classify(&kind, r);
            record(&history, client, kind, invoked, outcome, after_heal);
            keep.then_some(c)
        }
    };
    for _ in 0..OPS_PER_CLIENT {
        let key = keys[rng.gen_range(0..keys.len())];
        let kind = if rng.gen_bool(0.5) {
            next_value += 1;
            OpKind::Write {
                key,
                value: next_value,
            }
        } else {
            OpKind::Read { key }
        };
        conn = run_op(kind, false, &mut conn).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
    }
    // After every fault healed, each key must be readable and hold a value
    // that an acknowledged (or unknown) write put there.
    let now = turmoil::elapsed();
    if now < HEALED_BY {
        tokio::time::sleep(HEALED_BY - now).await;
    }
    for key in keys {
        // A connection left over from a fault may fail once; a fresh one must answer.
        conn = run_op(OpKind::Read { key }, false, &mut conn).await;
        conn = run_op(OpKind::Read { key }, true, &mut conn).await;
    }
    Ok(())
}

fn record(
    history: &Arc<Mutex<History>>,
    client: usize,
    kind: OpKind,
    invoked: Duration,
    outcome: Outcome,
    after_heal: bool,
) {
    let completed = turmoil::elapsed();
    if let Ok(mut h) = history.lock() {
        h.ops.push(Op {
            client,
            kind,
            invoked,
            completed,
            outcome,
            after_heal,
        });
    }
}

/// Runs one seed of a scenario and checks its history.
pub fn run(scenario: Scenario, seed: u64) -> Report {
    let history = Arc::new(Mutex::new(History::default()));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(60))
        .tick_duration(Duration::from_millis(1))
        .build();
    let storage: SharedStorage = Arc::default();
    sim.host("db", move || db::serve(storage.clone()));
    sim.host("proxy", move || proxy_host(seed));
    for c in 0..CLIENTS {
        sim.client(format!("client{c}"), workload(c, seed, history.clone()));
    }
    // The fault window, drawn from the seed; it always ends before HEALED_BY.
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17) ^ 0xfa17);
    let start = Duration::from_millis(rng.gen_range(500..4000));
    let end = start + Duration::from_millis(rng.gen_range(500..5000));
    let mut started = false;
    let mut ended = false;
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
        if !started && t >= start {
            started = true;
            match scenario {
                Scenario::Calm => {}
                Scenario::Partition => sim.partition("proxy", "db"),
                Scenario::DbCrash => sim.crash("db"),
                Scenario::ProxyCrash => sim.crash("proxy"),
            }
        }
        if started && !ended && t >= end {
            ended = true;
            match scenario {
                Scenario::Calm => {}
                Scenario::Partition => sim.repair("proxy", "db"),
                Scenario::DbCrash => sim.bounce("db"),
                Scenario::ProxyCrash => sim.bounce("proxy"),
            }
        }
    }
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    violations.extend(history.check());
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
        fingerprint: history.fingerprint(),
        history,
    }
}
