//! Shared support for integration tests: a real `mariadbd` and a Tessera in
//! front of it, both torn down when the [`Env`] is dropped.
#![allow(dead_code)]

use std::path::PathBuf;

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder};
use tessera_core::auth::PasswordHashes;
use tessera_core::config::Config;
use tessera_net::mariadbd::{scratch_dir, MariaDb};
use tessera_net::proxy::{self, RunningProxy};

pub const USER: &str = "app";
pub const PASSWORD: &str = "app-secret";
pub const DB: &str = "test";

/// A MariaDB primary and a proxy in front of it.
pub struct Env {
    pub proxy: Option<RunningProxy>,
    pub primary: MariaDb,
    pub dir: PathBuf,
    pub config: Config,
}

/// A primary in `dir` with the test user and `CREATE TABLE test.t (<columns>)`,
/// for tests that add replicas of their own.
pub fn primary_with_table(dir: &std::path::Path, columns: &str) -> MariaDb {
    let primary = MariaDb::start(dir, 1).expect("primary starts");
    primary.create_user(USER, PASSWORD).expect("user created");
    primary
        .sql(&format!(
            "CREATE DATABASE IF NOT EXISTS {DB}; CREATE TABLE {DB}.t ({columns})"
        ))
        .expect("table created");
    primary
}

/// A config for a proxy on a free port in front of `backend`.
pub fn config_for(backend: &str, extra: &str) -> Config {
    let h = PasswordHashes::from_password(PASSWORD);
    let text = format!(
        r#"
listen = "127.0.0.1:0"
{extra}
[[users]]
name = "{USER}"
password_native = "{}"
password_sha2 = "{}"

[[users]]
name = "sha2user"
password_native = "{}"
password_sha2 = "{}"
auth_plugin = "caching_sha2_password"

[node]
primary = "{backend}"
user = "{USER}"
password = "{PASSWORD}"

[pool]
max_connections = 16
acquire_timeout_ms = 2000
connect_timeout_ms = 2000
"#,
        h.native_string(),
        h.sha2_string(),
        h.native_string(),
        h.sha2_string()
    );
    Config::from_toml(&text).expect("test config parses")
}

impl Env {
    /// Starts MariaDB and a proxy; `extra` is TOML added at the top level of
    /// the proxy config (before any table).
    pub async fn start(extra: &str) -> Env {
        let dir = scratch_dir("tessera-test");
        let primary = MariaDb::start(&dir.join("primary"), 1).expect("mariadbd starts");
        primary.create_user(USER, PASSWORD).expect("user created");
        primary
            .sql(&format!("CREATE DATABASE IF NOT EXISTS {DB}"))
            .expect("db created");
        let config = config_for(&primary.addr(), extra);
        let proxy = proxy::start(&config).await.expect("proxy starts");
        Env {
            proxy: Some(proxy),
            primary,
            dir,
            config,
        }
    }

    pub fn proxy_port(&self) -> u16 {
        self.proxy.as_ref().expect("proxy running").addr.port()
    }

    pub fn proxy_opts(&self) -> Opts {
        opts(self.proxy_port(), USER, PASSWORD)
    }

    pub fn direct_opts(&self) -> Opts {
        opts(self.primary.port, USER, PASSWORD)
    }

    pub async fn proxy_conn(&self) -> Conn {
        Conn::new(self.proxy_opts())
            .await
            .expect("connect through tessera")
    }

    pub async fn direct_conn(&self) -> Conn {
        Conn::new(self.direct_opts())
            .await
            .expect("connect to mariadb")
    }

    pub async fn stop_proxy(&mut self) {
        if let Some(p) = self.proxy.take() {
            p.shutdown().await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Client options; `prefer_socket` is off, or mysql_async would ask the
/// server for its socket and bypass the proxy.
pub fn opts(port: u16, user: &str, password: &str) -> Opts {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some(DB))
        .prefer_socket(false)
        .into()
}

/// A query's full outcome, for differential comparison.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Rows {
        columns: Vec<(String, String, u32, u16, u16, u8)>,
        rows: Vec<Vec<mysql_async::Value>>,
        warnings: u16,
        affected: u64,
    },
    Error(u16),
}

fn describe_columns(cols: &[mysql_async::Column]) -> Vec<(String, String, u32, u16, u16, u8)> {
    cols.iter()
        .map(|c| {
            (
                c.name_str().into_owned(),
                format!("{:?}", c.column_type()),
                c.column_length(),
                c.character_set(),
                c.flags().bits(),
                c.decimals(),
            )
        })
        .collect()
}

/// Runs text SQL and collects every result set.
pub async fn run_text(conn: &mut Conn, sql: &str) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut result = match conn.query_iter(sql).await {
        Ok(r) => r,
        Err(mysql_async::Error::Server(e)) => return vec![Outcome::Error(e.code)],
        Err(e) => panic!("client error on `{sql}`: {e}"),
    };
    loop {
        let columns = result
            .columns()
            .map(|c| describe_columns(&c))
            .unwrap_or_default();
        let rows: Result<Vec<mysql_async::Row>, _> = result.collect().await;
        match rows {
            Ok(rows) => out.push(Outcome::Rows {
                columns,
                rows: rows.into_iter().map(|r| r.unwrap()).collect(),
                warnings: result.warnings(),
                affected: result.affected_rows(),
            }),
            Err(mysql_async::Error::Server(e)) => {
                out.push(Outcome::Error(e.code));
                break;
            }
            Err(e) => panic!("client error on `{sql}`: {e}"),
        }
        if result.is_empty() {
            break;
        }
    }
    out
}

/// Runs a prepared statement with parameters and collects the result.
pub async fn run_binary(conn: &mut Conn, sql: &str, params: Vec<mysql_async::Value>) -> Outcome {
    let stmt = match conn.prep(sql).await {
        Ok(s) => s,
        Err(mysql_async::Error::Server(e)) => return Outcome::Error(e.code),
        Err(e) => panic!("client error preparing `{sql}`: {e}"),
    };
    let mut result = match conn.exec_iter(&stmt, params).await {
        Ok(r) => r,
        Err(mysql_async::Error::Server(e)) => return Outcome::Error(e.code),
        Err(e) => panic!("client error on `{sql}`: {e}"),
    };
    let columns = result
        .columns()
        .map(|c| describe_columns(&c))
        .unwrap_or_default();
    let rows: Vec<mysql_async::Row> = match result.collect().await {
        Ok(r) => r,
        Err(mysql_async::Error::Server(e)) => return Outcome::Error(e.code),
        Err(e) => panic!("client error on `{sql}`: {e}"),
    };
    let warnings = result.warnings();
    let affected = result.affected_rows();
    drop(result);
    conn.close(stmt).await.ok();
    Outcome::Rows {
        columns,
        rows: rows.into_iter().map(|r| r.unwrap()).collect(),
        warnings,
        affected,
    }
}
