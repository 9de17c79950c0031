//! Replica watchers: a health check that marks a replica down while it
//! cannot be reached, and, when a user reads by GTID (read-your-writes),
//! a poller of the replica's applied GTID position. Both store what they
//! find in the core's topology; routing reads it from there.
//!
//! The position is `@@gtid_slave_pos`: the last transaction per domain the
//! replica's SQL thread has applied, recorded in the same transaction as
//! the replicated rows, so once a GTID shows there its rows are visible to
//! readers. It is also what `MASTER_GTID_WAIT` waits on. `@@gtid_current_pos`
//! would be wrong here: it also takes in transactions written on the
//! replica itself (its own server id in `@@gtid_binlog_pos`), and such a
//! local write with a higher seqno in a domain would make the replica look
//! caught up with primary transactions it has not applied.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::gtid::GtidPos;
use tessera_core::topology::BackendId;
use tokio::time::timeout;

use crate::pool::{query_value, QueryError};
use crate::server::Shared;
use crate::transport::Connector;

/// How often replicas are checked.
pub const HEALTH_INTERVAL_MS: u64 = 2000;

/// How often a replica's GTID position is read while read-your-writes by
/// GTID is on: a read waiting for its session's write goes to the primary
/// until the next poll shows the replica has it.
pub const POSITION_INTERVAL_MS: u64 = 100;

/// Pause before reconnecting after the position poll lost its connection.
const POSITION_RETRY_MS: u64 = 500;

/// The statement that reads a replica's applied position.
pub const POSITION_SQL: &str = "SELECT @@gtid_slave_pos";

/// Marks a replica down while it cannot be reached, so reads skip it.
pub(crate) async fn watch_health<C: Connector>(shared: Arc<Shared<C>>, id: BackendId) {
    let pool = shared.pools[id.0 as usize].clone();
    loop {
        let up = matches!(
            timeout(pool.connect_timeout() * 2, pool.run_once("DO 1")).await,
            Ok(Ok(()))
        );
        if up != shared.topology.is_up(id) {
            tracing::warn!(backend = pool.addr(), up, "replica health changed");
        }
        shared.topology.set_up(id, up);
        tokio::time::sleep(Duration::from_millis(HEALTH_INTERVAL_MS)).await;
    }
}

/// Keeps the replica's applied GTID position in the topology, over one
/// connection of its own. When it cannot be read the position is unknown
/// (`None`), and reads that need it go to the primary.
pub(crate) async fn watch_position<C: Connector>(shared: Arc<Shared<C>>, id: BackendId) {
    let pool = shared.pools[id.0 as usize].clone();
    let topology = &shared.topology;
    let mut conn = None;
    // Warn once per kind of trouble, not ten times a second.
    let mut warned = false;
    loop {
        let mut pause = POSITION_INTERVAL_MS;
        if conn.is_none() {
            match pool.connect_unpooled().await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    topology.set_position(id, None);
                    tracing::debug!(backend = pool.addr(), error = %e, "replica position: cannot connect");
                    tokio::time::sleep(Duration::from_millis(POSITION_RETRY_MS)).await;
                    continue;
                }
            }
        }
        let Some((stream, buf, meta)) = conn.as_mut() else {
            continue;
        };
        let read = timeout(
            pool.connect_timeout(),
            query_value(stream, buf, meta, POSITION_SQL),
        )
        .await;
        match read {
            Ok(Ok(value)) => match GtidPos::parse(value.as_deref().unwrap_or("")) {
                Ok(pos) => {
                    topology.set_position(id, Some(pos));
                    warned = false;
                }
                Err(e) => {
                    topology.set_position(id, None);
                    if !warned {
                        tracing::warn!(backend = pool.addr(), error = %e, "replica position unreadable; reads waiting for their writes skip this replica");
                        warned = true;
                    }
                }
            },
            Ok(Err(QueryError::Server(e))) => {
                // Not MariaDB, or no privilege: the position stays unknown.
                topology.set_position(id, None);
                if !warned {
                    tracing::warn!(backend = pool.addr(), code = e.code, message = %e.message, "cannot read the replica's GTID position ({POSITION_SQL}); reads waiting for their writes skip this replica");
                    warned = true;
                }
                pause = HEALTH_INTERVAL_MS;
            }
            Ok(Err(QueryError::Broken(e))) => {
                topology.set_position(id, None);
                tracing::debug!(backend = pool.addr(), error = %e, "replica position: connection lost");
                conn = None;
                pause = POSITION_RETRY_MS;
            }
            Err(_) => {
                topology.set_position(id, None);
                tracing::debug!(backend = pool.addr(), "replica position: no answer in time");
                conn = None;
                pause = POSITION_RETRY_MS;
            }
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
