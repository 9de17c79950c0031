//! Real MariaDB servers for tests and the playground: `mariadbd` processes on
//! free loopback ports, each with its own data directory copied from a
//! template initialised once, binlog and GTID on, replication on request, and
//! torn down by pid.

use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to tell a user who has no MariaDB server installed.
pub const INSTALL_HINT: &str =
    "mariadbd was not found: install MariaDB (Debian/Ubuntu: `apt-get install -y mariadb-server mariadb-client`)";

/// Finds the server binary.
pub fn mariadbd_path() -> Option<PathBuf> {
    let candidates = [
        "/usr/sbin/mariadbd",
        "/usr/sbin/mysqld",
        "/usr/local/bin/mariadbd",
        "/usr/bin/mariadbd",
    ];
    if let Some(p) = candidates.iter().map(PathBuf::from).find(|p| p.exists()) {
        return Some(p);
    }
    find_in_path("mariadbd")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

fn install_db_path() -> Option<PathBuf> {
    [
        "/usr/bin/mariadb-install-db",
        "/usr/bin/mysql_install_db",
        "/usr/local/bin/mariadb-install-db",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .or_else(|| find_in_path("mariadb-install-db"))
}

fn client_path() -> Option<PathBuf> {
    ["/usr/bin/mariadb", "/usr/bin/mysql"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| find_in_path("mariadb"))
}

/// Options every instance runs with (also used to initialise the template,
/// so its InnoDB files fit).
fn common_args() -> Vec<String> {
    [
        "--innodb-log-file-size=16M",
        "--innodb-buffer-pool-size=64M",
        "--innodb-flush-log-at-trx-commit=2",
        "--sync-binlog=0",
        "--skip-name-resolve",
        "--performance-schema=OFF",
        "--max-allowed-packet=1G",
        "--local-infile=1",
        "--max-connections=1000",
        "--secure-file-priv=",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

static TEMPLATE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// An initialised data directory, made once per machine and user.
fn template_dir() -> io::Result<PathBuf> {
    let mut guard = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref() {
        return Ok(p.clone());
    }
    let server =
        mariadbd_path().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, INSTALL_HINT))?;
    let version = Command::new(&server).arg("--version").output()?;
    let tag: u64 = version.stdout.iter().fold(1469598103934665603u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(1099511628211)
    });
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("tessera-mariadb-template-{uid}-{tag:x}"));
    if !dir.join("mysql").exists() {
        let install = install_db_path()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, INSTALL_HINT))?;
        let tmp = std::env::temp_dir().join(format!(
            "tessera-mariadb-template-{uid}-{tag:x}.{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        let mut cmd = Command::new(install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", tmp.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg("--user=root")
            .args(common_args());
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mariadb-install-db failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another process made it first.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    *guard = Some(dir.clone());
    Ok(dir)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `mariadbd`. Dropping it stops the process and, unless
/// `keep_data` is set, removes its data directory.
pub struct MariaDb {
    pub port: u16,
    pub server_id: u32,
    pub dir: PathBuf,
    child: Child,
    pub keep_data: bool,
}

impl MariaDb {
    /// Starts a server with a fresh copy of the template in `dir` (created).
    pub fn start(dir: &Path, server_id: u32) -> io::Result<Self> {
        let server =
            mariadbd_path().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, INSTALL_HINT))?;
        let template = template_dir()?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()?;
        if !status.success() {
            return Err(io::Error::other(
                "copying the template data directory failed",
            ));
        }
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            match spawn_server(&server, dir, &data, port, server_id) {
                Ok(child) => {
                    return Ok(Self {
                        port,
                        server_id,
                        dir: dir.to_path_buf(),
                        child,
                        keep_data: false,
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("mariadbd did not start")))
    }
}

/// Starts `mariadbd` and waits until it accepts connections.
fn spawn_server(
    server: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    server_id: u32,
) -> io::Result<Child> {
    {
        let log = dir.join("error.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--tmpdir={}", dir.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--server-id={server_id}"))
            .arg(format!("--log-bin={}", dir.join("binlog").display()))
            .arg("--binlog-format=ROW")
            .arg("--log-slave-updates")
            .arg("--gtid-strict-mode=1")
            .arg("--user=root")
            .args(common_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it makes the server die with
        // the thread that started it, so a killed test leaves nothing behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = tail
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(io::Error::other(format!(
                    "mariadbd exited with {status} on port {port}:\n{tail}"
                )));
            }
            let ready = std::fs::read_to_string(&log)
                .map(|l| l.contains("ready for connections"))
                .unwrap_or(false);
            if ready {
                return Ok(child);
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(
                    "mariadbd did not become ready within 60 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl MariaDb {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's Unix socket (a backend address Tessera accepts too).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// Runs SQL as root over the server's own socket with the `mariadb` CLI;
    /// returns its tab-separated output.
    pub fn sql(&self, sql: &str) -> io::Result<String> {
        let client =
            client_path().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, INSTALL_HINT))?;
        let out = Command::new(client)
            .arg("--no-defaults")
            .arg("--protocol=socket")
            .arg(format!(
                "--socket={}",
                self.dir.join("mysqld.sock").display()
            ))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "`{sql}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a user with every privilege, reachable over TCP.
    pub fn create_user(&self, user: &str, password: &str) -> io::Result<()> {
        let pw = password.replace('\'', "''");
        self.sql(&format!(
            "CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{pw}'; \
             CREATE USER IF NOT EXISTS '{user}'@'127.0.0.1' IDENTIFIED BY '{pw}'; \
             CREATE USER IF NOT EXISTS '{user}'@'localhost' IDENTIFIED BY '{pw}'; \
             GRANT ALL ON *.* TO '{user}'@'%' WITH GRANT OPTION; \
             GRANT ALL ON *.* TO '{user}'@'127.0.0.1' WITH GRANT OPTION; \
             GRANT ALL ON *.* TO '{user}'@'localhost' WITH GRANT OPTION; FLUSH PRIVILEGES"
        ))
        .map(|_| ())
    }

    /// Waits until this replica has applied everything `primary` has written
    /// so far (users, grants, databases), so a client sent here sees them.
    pub fn wait_caught_up(&self, primary: &MariaDb) -> io::Result<()> {
        let pos = primary.sql("SELECT @@gtid_binlog_pos")?;
        let pos = pos.trim();
        let answer = self.sql(&format!("SELECT MASTER_GTID_WAIT('{pos}', 30)"))?;
        match answer.trim() {
            "0" => Ok(()),
            other => Err(io::Error::other(format!(
                "replica on port {} did not reach the primary's GTID position {pos} within 30 s (MASTER_GTID_WAIT answered {other})",
                self.port
            ))),
        }
    }

    /// Makes this server a read-only replica of `primary`, by GTID.
    pub fn replicate_from(&self, primary: &MariaDb) -> io::Result<()> {
        self.sql(&format!(
            "SET GLOBAL read_only=1; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, \
             MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE",
            primary.port
        ))?;
        let started = Instant::now();
        loop {
            let status = self.sql("SHOW SLAVE STATUS\\G")?;
            let io_ok = status.contains("Slave_IO_Running: Yes")
                || status.lines().any(|l| l.trim() == "Yes");
            if io_ok {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(io::Error::other(format!(
                    "replication did not start:\n{status}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server: SIGTERM, then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child process by pid.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server at once (a crash, for fault tests).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped or killed server again on the same port and data.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let server =
            mariadbd_path().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, INSTALL_HINT))?;
        let data = self.dir.join("data");
        self.child = spawn_server(&server, &self.dir, &data, self.port, self.server_id)?;
        Ok(())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
        if !self.keep_data {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()))
}
