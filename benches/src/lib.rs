//! Benchmarks for Tessera. The code lives in `benches/`:
//!
//! - `benches/protocol.rs`: criterion benchmarks of the sans-IO core
//!   (framing, response scanning, a point-select round trip through a
//!   `Session`); run with `cargo bench -p tessera-benches`.
//! - `sysbench.sh`: sysbench straight at MariaDB versus through Tessera.
