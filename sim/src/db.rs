//! A simulated MySQL host on turmoil: [`crate::server`] connections over
//! [`crate::engine`], and on a replica a replication task that pulls the
//! primary's binlog over the simulated network and applies it after a lag.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{Answer, SimClient};
use crate::engine::{Commit, SharedEngine, SharedTrace};
use crate::server::{self, ServerConn, PASSWORD, USER};

pub use crate::server::{PASSWORD as DB_PASSWORD, USER as DB_USER};

/// How a host replicates and commits; shared with the fault schedule, which
/// may raise the lag mid-run.
#[derive(Debug, Clone)]
pub struct Replication {
    /// How long after fetching a commit a replica applies it.
    pub lag: Duration,
    /// A primary's commit waits (up to [`SEMI_SYNC_TIMEOUT`]) until a replica
    /// has fetched it, as MariaDB's semi-synchronous replication does.
    pub semi_sync: bool,
}

pub type SharedReplication = Arc<Mutex<Replication>>;

/// After this long without a replica's acknowledgement a semi-sync commit
/// answers anyway (MariaDB falls back to asynchronous replication).
pub const SEMI_SYNC_TIMEOUT: Duration = Duration::from_millis(500);

/// How often a replica asks its primary for new commits.
const FETCH_INTERVAL: Duration = Duration::from_millis(20);

/// Serves MySQL on port 3306 until the host is crashed.
pub async fn serve(
    engine: SharedEngine,
    trace: SharedTrace,
    replication: SharedReplication,
) -> turmoil::Result {
    if let Ok(mut e) = engine.lock() {
        e.restarted();
    }
    let listener = turmoil::net::TcpListener::bind("0.0.0.0:3306").await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (engine, trace, replication) = (engine.clone(), trace.clone(), replication.clone());
        tokio::spawn(async move {
            let _ = connection(stream, engine, trace, replication).await;
        });
    }
}

async fn connection(
    mut stream: turmoil::net::TcpStream,
    engine: SharedEngine,
    trace: SharedTrace,
    replication: SharedReplication,
) -> std::io::Result<()> {
    let (mut conn, greeting) = ServerConn::new(&mut engine.lock().expect("engine"));
    stream.write_all(&greeting).await?;
    let mut buf = vec![0u8; 64 << 10];
    let result = loop {
        // Answer every complete command.
        loop {
            let step = {
                let mut e = engine.lock().expect("engine");
                conn.step(&mut e, &trace, turmoil::elapsed())
            };
            let Some(step) = step else { break };
            let semi_sync = replication.lock().map(|r| r.semi_sync).unwrap_or(false);
            if let (true, Some(seq)) = (semi_sync, step.committed) {
                let waited = tokio::time::timeout(SEMI_SYNC_TIMEOUT, async {
                    while engine.lock().map(|e| e.replica_ack < seq).unwrap_or(false) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
                let _ = waited.await;
            }
            if let Err(e) = stream.write_all(&step.out).await {
                if let Ok(mut en) = engine.lock() {
                    conn.close(&mut en);
                }
                return Err(e);
            }
            if conn.is_closed() {
                break;
            }
        }
        if conn.is_closed() {
            break Ok(());
        }
        if conn.is_blocked() {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        match stream.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => conn.receive(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    if let Ok(mut e) = engine.lock() {
        conn.close(&mut e);
    }
    result
}

/// A replica's replication thread: fetch the primary's commits, apply each
/// once it is `lag` old. It reconnects after the primary is lost; fetched
/// but unapplied commits are kept (a relay log).
pub async fn replicate(primary: String, engine: SharedEngine, replication: SharedReplication) {
    let mut relay: VecDeque<(Duration, Commit)> = VecDeque::new();
    loop {
        let client = tokio::time::timeout(
            Duration::from_secs(1),
            SimClient::connect(&primary, USER, PASSWORD),
        )
        .await;
        let Ok(Ok(mut client)) = client else {
            apply_ready(&engine, &mut relay);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            apply_ready(&engine, &mut relay);
            let after = relay.back().map(|(_, c)| c.seq).unwrap_or_else(|| {
                engine
                    .lock()
                    .ok()
                    .and_then(|e| e.storage.slave_pos.map(|(_, s)| s))
                    .unwrap_or(0)
            });
            let fetched = tokio::time::timeout(
                Duration::from_secs(1),
                client.query(&server::replication_query(after)),
            )
            .await;
            let Ok(Ok(Answer::Rows(rows))) = fetched else {
                break;
            };
            let lag = replication.lock().map(|r| r.lag).unwrap_or_default();
            let ready_at = turmoil::elapsed() + lag;
            for c in server::commits_from_rows(&rows).unwrap_or_default() {
                relay.push_back((ready_at, c));
            }
            apply_ready(&engine, &mut relay);
            tokio::time::sleep(FETCH_INTERVAL).await;
        }
    }
}

fn apply_ready(engine: &SharedEngine, relay: &mut VecDeque<(Duration, Commit)>) {
    let now = turmoil::elapsed();
    let Ok(mut e) = engine.lock() else { return };
    while relay.front().is_some_and(|(at, _)| *at <= now) {
        if let Some((_, c)) = relay.pop_front() {
            e.storage.apply_replicated(c);
        }
    }
}
