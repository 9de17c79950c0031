//! Tessera's sans-IO core: the MySQL protocol, client sessions, backend
//! logins and response tracking, as state machines that take bytes and time
//! in and hand actions out. No sockets, clocks, threads or async runtime.

pub mod auth;
pub mod backend;
pub mod config;
pub mod gtid;
pub mod merge;
pub mod mutants;
pub mod prepared;
pub mod protocol;
pub mod router;
pub mod scatter;
pub mod sequence;
pub mod session;
pub mod shard;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod topology;

pub use session::{Output, Session, SessionContext, StatementRecord};
