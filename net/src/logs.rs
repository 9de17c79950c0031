//! The SQL log and the slow log: statement records written to files by a
//! background task, so the client path never waits on the disk.

use std::io::Write;

use tessera_core::config::LogConfig;
use tessera_core::StatementRecord;
use tokio::sync::mpsc;

/// Sends statement records to the log writer.
#[derive(Clone)]
pub struct StatementLogger {
    tx: mpsc::UnboundedSender<StatementRecord>,
}

impl StatementLogger {
    /// Opens the configured files; `None` when both logs are off.
    pub fn open(cfg: &LogConfig) -> std::io::Result<Option<Self>> {
        if cfg.sql_log.is_none() && cfg.slow_log.is_none() {
            return Ok(None);
        }
        let open = |p: &Option<String>| -> std::io::Result<Option<std::fs::File>> {
            p.as_ref()
                .map(|p| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                })
                .transpose()
        };
        let mut sql = open(&cfg.sql_log)?.map(std::io::LineWriter::new);
        let mut slow = open(&cfg.slow_log)?.map(std::io::LineWriter::new);
        let threshold = std::time::Duration::from_millis(cfg.slow_threshold_ms);
        let (tx, mut rx) = mpsc::unbounded_channel::<StatementRecord>();
        std::thread::Builder::new()
            .name("tessera-log".into())
            .spawn(move || {
                while let Some(r) = rx.blocking_recv() {
                    let line = format_record(&r);
                    if let Some(f) = sql.as_mut() {
                        let _ = f.write_all(line.as_bytes());
                    }
                    if r.duration >= threshold {
                        if let Some(f) = slow.as_mut() {
                            let _ = f.write_all(line.as_bytes());
                        }
                    }
                }
            })?;
        Ok(Some(Self { tx }))
    }

    pub fn record(&self, r: StatementRecord) {
        let _ = self.tx.send(r);
    }
}

/// One tab-separated line: time, user, client, backend connection id,
/// duration in microseconds, error code (0 = ok), statement.
fn format_record(r: &StatementRecord) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let sql: String = r
        .sql
        .chars()
        .map(|c| if c == '\n' || c == '\t' { ' ' } else { c })
        .collect();
    format!(
        "{ts:.6}\t{}\t{}\tbackend#{}\t{}us\t{}\t{}\n",
        r.user,
        r.client,
        r.backend_thread,
        r.duration.as_micros(),
        r.error.unwrap_or(0),
        sql
    )
}
