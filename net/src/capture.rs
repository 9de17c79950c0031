//! Capture mode: with `TESSERA_CAPTURE_DIR=<dir>` in the environment, every
//! client connection's incoming bytes are appended to files in `<dir>`, as
//! they arrive and unchanged, so real traffic can seed the fuzz corpora
//! (`fuzz/capture_to_corpus.py` turns the files into fuzz inputs).
//!
//! One file per connection and direction:
//! - `<pid>-<n>.client`: what the client sent (handshake response onwards);
//! - `<pid>-<n>.backend<id>`: what backend `<id>` sent to this session while
//!   the session held a connection to it (restore replies and answers to
//!   forwarded commands; the pool's own login, reset and ping exchanges are
//!   not in it).
//!
//! `<pid>` keeps several processes writing to one directory apart; `<n>` counts
//! connections within the process. The variable is read once, when the proxy
//! starts; without it a connection carries a `None` and nothing else happens.
//! Writes are plain blocking appends: capture is a diagnostic mode, not one
//! to run under load that matters.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tessera_core::topology::BackendId;

/// The environment variable that turns capture on.
pub const ENV: &str = "TESSERA_CAPTURE_DIR";

/// Connections captured by this process so far (file names).
static NEXT: AtomicU64 = AtomicU64::new(1);

/// Where captures go.
#[derive(Debug)]
pub struct CaptureDir {
    dir: PathBuf,
}

impl CaptureDir {
    /// Capture into `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<CaptureDir> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(CaptureDir { dir })
    }

    /// From [`ENV`]; `None` when it is unset or empty, or the directory
    /// cannot be created (a warning says so).
    pub fn from_env() -> Option<Arc<CaptureDir>> {
        let dir = std::env::var_os(ENV).filter(|d| !d.is_empty())?;
        match CaptureDir::new(&dir) {
            Ok(c) => {
                tracing::warn!(dir = %c.dir.display(), "capture mode: client and backend bytes are written to files");
                Some(Arc::new(c))
            }
            Err(e) => {
                tracing::warn!(dir = ?dir, error = %e, "capture directory unusable; capture is off");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The capture of a new connection.
    pub fn connection(&self) -> ConnCapture {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        ConnCapture {
            prefix: self.dir.join(format!("{}-{n:06}", std::process::id())),
            client: Sink::Unopened,
            backends: BTreeMap::new(),
        }
    }
}

enum Sink {
    Unopened,
    Open(File),
    /// Opening or writing failed once; said so and stopped.
    Failed,
}

impl Sink {
    fn append(&mut self, path: impl FnOnce() -> PathBuf, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if matches!(self, Sink::Unopened) {
            let p = path();
            *self = match OpenOptions::new().create(true).append(true).open(&p) {
                Ok(f) => Sink::Open(f),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot open capture file");
                    Sink::Failed
                }
            };
        }
        if let Sink::Open(f) = self {
            if let Err(e) = f.write_all(bytes) {
                tracing::warn!(error = %e, "capture write failed; this connection's capture stops");
                *self = Sink::Failed;
            }
        }
    }
}

/// The files of one client connection, opened when their first bytes come.
pub struct ConnCapture {
    prefix: PathBuf,
    client: Sink,
    backends: BTreeMap<BackendId, Sink>,
}

impl ConnCapture {
    /// Path of the client→proxy file.
    pub fn client_path(&self) -> PathBuf {
        self.prefix.with_extension("client")
    }

    /// Path of the backend→proxy file of backend `id`.
    pub fn backend_path(&self, id: BackendId) -> PathBuf {
        self.prefix.with_extension(format!("backend{}", id.0))
    }

    /// Appends bytes the client sent.
    pub fn client(&mut self, bytes: &[u8]) {
        let prefix = &self.prefix;
        self.client
            .append(|| prefix.with_extension("client"), bytes);
    }

    /// Appends bytes backend `id` sent.
    pub fn backend(&mut self, id: BackendId, bytes: &[u8]) {
        let prefix = &self.prefix;
        self.backends
            .entry(id)
            .or_insert(Sink::Unopened)
            .append(|| prefix.with_extension(format!("backend{}", id.0)), bytes);
    }
}
