//! Deterministic simulations of Tessera.
//!
//! - **Tier 2** ([`scenario`]): the production adapter from `tessera-net`
//!   runs on turmoil's simulated network in front of simulated MySQL
//!   backends ([`db`], [`server`], [`engine`]) with replication; client hosts
//!   record every operation ([`workload`]); faults are injected from a seed;
//!   checkers judge the recorded history against the servers' binlogs and
//!   statement trace ([`history`]).
//! - **Tier 1** ([`tier1`]): the core's session state machine alone, driven
//!   in-process against the same simulated servers with no tokio, thousands
//!   of seeds a second.
//!
//! A failing run prints its seed; `TESSERA_SIM_SEED=<seed>` replays it.

pub mod client;
pub mod db;
pub mod engine;
pub mod history;
pub mod prepared;
pub mod scenario;
pub mod server;
pub mod tier1;
pub mod transport;
pub mod workload;

pub use scenario::{run, Report, Scenario};
