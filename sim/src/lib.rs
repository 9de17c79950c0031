//! Deterministic simulations of Tessera: the production adapter from
//! `tessera-net` runs on turmoil's simulated network in front of simulated
//! MySQL backends, clients record every operation, faults are injected
//! from a seed, and checkers judge the recorded history.
//!
//! A failing run prints its seed; `TESSERA_SIM_SEED=<seed>` replays it.

pub mod client;
pub mod db;
pub mod history;
pub mod scenario;
pub mod transport;

pub use scenario::{run, Report, Scenario};
