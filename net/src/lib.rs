//! Tessera's production adapters: tokio sockets around the sans-IO core, the
//! backend pool, logs, the MariaDB process harness and the playground.

pub mod capture;
pub mod logs;
pub mod loops;
pub mod mariadbd;
pub mod playground;
pub mod pool;
pub mod proxy;
pub mod quiet_unix;
pub mod replicas;
pub mod server;
pub mod transport;
