//! Deterministic simulations of Tessera (turmoil harness, simulated backends,
//! fault schedules, history checkers). Built in the simulation issue.
