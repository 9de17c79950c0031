//! Configuration: serde types read from TOML, and validation whose errors name
//! the offending key.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::auth::{AuthMethod, PasswordHashes};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on for clients.
    pub listen: String,
    /// Client networks allowed to connect (CIDR); empty allows every address.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// Largest packet a client may send, in bytes.
    #[serde(default = "default_max_allowed_packet")]
    pub max_allowed_packet: usize,
    /// Version string shown to clients; by default the backend's own.
    #[serde(default)]
    pub server_version: Option<String>,
    /// How long in-flight statements may run after SIGTERM before clients are cut.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Close a client connection that sends nothing for this long (0 = never).
    #[serde(default)]
    pub client_idle_timeout_ms: u64,
    /// A backend that does not answer a statement in this long is given up (0 = never).
    #[serde(default)]
    pub backend_read_timeout_ms: u64,
    pub users: Vec<UserConfig>,
    pub node: NodeConfig,
    #[serde(default)]
    pub pool: PoolConfig,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// `*HEX` SHA1(SHA1(password)), as `tessera hash-password` prints it.
    #[serde(default)]
    pub password_native: String,
    /// HEX SHA256(SHA256(password)), as `tessera hash-password` prints it.
    #[serde(default)]
    pub password_sha2: String,
    /// `mysql_native_password` (default) or `caching_sha2_password`.
    #[serde(default = "default_plugin")]
    pub auth_plugin: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    #[serde(default = "default_node_name")]
    pub name: String,
    /// `host:port` of the primary, or the path of its Unix socket.
    pub primary: String,
    /// `host:port` of each replica (reads go to the primary in this version).
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Credentials Tessera uses to log in to the backends.
    pub user: String,
    #[serde(default)]
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default)]
    pub min_idle: usize,
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
    #[serde(default = "default_ping_interval_ms")]
    pub ping_interval_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            min_idle: 0,
            idle_timeout_ms: default_idle_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
            ping_interval_ms: default_ping_interval_ms(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// File that receives every statement (off when unset).
    #[serde(default)]
    pub sql_log: Option<String>,
    /// File that receives statements slower than `slow_threshold_ms` (off when unset).
    #[serde(default)]
    pub slow_log: Option<String>,
    #[serde(default = "default_slow_threshold_ms")]
    pub slow_threshold_ms: u64,
}

fn default_max_client_connections() -> usize {
    4096
}
fn default_max_allowed_packet() -> usize {
    64 << 20
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}
fn default_plugin() -> String {
    AuthMethod::Native.plugin_name().to_string()
}
fn default_node_name() -> String {
    "node1".to_string()
}
fn default_max_connections() -> usize {
    128
}
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_acquire_timeout_ms() -> u64 {
    5_000
}
fn default_ping_interval_ms() -> u64 {
    30_000
}
fn default_slow_threshold_ms() -> u64 {
    1_000
}

/// A configuration error that names the key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn bad(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// An allowed client network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = s.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// A user as the core needs it: the hashes parsed and the plugin resolved.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub hashes: PasswordHashes,
    pub method: AuthMethod,
}

/// The validated form of [`Config`].
#[derive(Debug, Clone)]
pub struct Validated {
    pub listen: SocketAddr,
    pub allow: Vec<Cidr>,
    pub users: Vec<User>,
    pub primary: String,
}

impl Config {
    /// Parses TOML; serde's error already names the key and line.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "config".into());
            bad(key, msg)
        })
    }

    /// Checks every value and resolves the parts the proxy uses directly.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let listen = self.listen.parse::<SocketAddr>().map_err(|_| {
            bad(
                "listen",
                format!("`{}` is not an address like 127.0.0.1:3307", self.listen),
            )
        })?;
        let mut allow = Vec::new();
        for (i, a) in self.allow.iter().enumerate() {
            allow.push(Cidr::parse(a).ok_or_else(|| {
                bad(
                    format!("allow[{i}]"),
                    format!("`{a}` is not a network like 10.0.0.0/8"),
                )
            })?);
        }
        if self.max_client_connections == 0 {
            return Err(bad("max_client_connections", "must be at least 1"));
        }
        if self.max_allowed_packet < 1024 || self.max_allowed_packet > 1 << 30 {
            return Err(bad(
                "max_allowed_packet",
                "must be between 1024 and 1073741824 bytes",
            ));
        }
        if self.users.is_empty() {
            return Err(bad("users", "at least one user is needed"));
        }
        let mut users = Vec::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                return Err(bad(format!("users[{i}].name"), "must not be empty"));
            }
            if users.iter().any(|x: &User| x.name == u.name) {
                return Err(bad(
                    format!("users[{i}].name"),
                    format!("user `{}` is listed twice", u.name),
                ));
            }
            let hashes = PasswordHashes::parse(&u.password_native, &u.password_sha2)
                .map_err(|m| bad(format!("users[{i}]"), m))?;
            let method =
                AuthMethod::from_plugin_name(u.auth_plugin.as_bytes()).ok_or_else(|| {
                    bad(
                        format!("users[{i}].auth_plugin"),
                        "must be mysql_native_password or caching_sha2_password",
                    )
                })?;
            if method == AuthMethod::Native && hashes.native.is_none() && hashes.sha2.is_some() {
                return Err(bad(
                    format!("users[{i}].password_native"),
                    "needed for mysql_native_password",
                ));
            }
            if method == AuthMethod::CachingSha2 && hashes.sha2.is_none() && hashes.native.is_some()
            {
                return Err(bad(
                    format!("users[{i}].password_sha2"),
                    "needed for caching_sha2_password",
                ));
            }
            users.push(User {
                name: u.name.clone(),
                hashes,
                method,
            });
        }
        check_host_port("node.primary", &self.node.primary)?;
        for (i, r) in self.node.replicas.iter().enumerate() {
            check_host_port(&format!("node.replicas[{i}]"), r)?;
        }
        if self.node.user.is_empty() {
            return Err(bad("node.user", "must not be empty"));
        }
        let p = &self.pool;
        if p.max_connections == 0 {
            return Err(bad("pool.max_connections", "must be at least 1"));
        }
        if p.min_idle > p.max_connections {
            return Err(bad("pool.min_idle", "must not exceed pool.max_connections"));
        }
        for (key, v) in [
            ("pool.connect_timeout_ms", p.connect_timeout_ms),
            ("pool.acquire_timeout_ms", p.acquire_timeout_ms),
        ] {
            if v == 0 {
                return Err(bad(key, "must be more than 0"));
            }
        }
        Ok(Validated {
            listen,
            allow,
            users,
            primary: self.node.primary.clone(),
        })
    }
}

/// A backend address: `host:port`, or the path of a Unix socket.
fn check_host_port(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.starts_with('/') || v.starts_with("./") {
        return Ok(());
    }
    match v.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(bad(key, format!("`{v}` is not host:port or a socket path"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen = "127.0.0.1:3307"
[[users]]
name = "app"
password_native = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
[node]
primary = "127.0.0.1:3306"
user = "root"
"#;

    #[test]
    fn minimal_config_validates() {
        let c = Config::from_toml(MINIMAL).unwrap();
        let v = c.validate().unwrap();
        assert_eq!(v.users[0].name, "app");
        assert_eq!(c.pool.max_connections, 128);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml(&format!("{MINIMAL}\n[pool]\nmax_conns = 3\n")).unwrap_err();
        assert!(e.message.contains("max_conns"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::from_toml(MINIMAL).unwrap();
        c.pool.max_connections = 0;
        assert_eq!(c.validate().unwrap_err().key, "pool.max_connections");
        let mut c = Config::from_toml(MINIMAL).unwrap();
        c.allow = vec!["10.0.0.0/40".into()];
        assert_eq!(c.validate().unwrap_err().key, "allow[0]");
        let mut c = Config::from_toml(MINIMAL).unwrap();
        c.node.primary = "nohost".into();
        assert_eq!(c.validate().unwrap_err().key, "node.primary");
        let mut c = Config::from_toml(MINIMAL).unwrap();
        c.users[0].password_native = "abc".into();
        assert_eq!(c.validate().unwrap_err().key, "users[0]");
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_none());
    }
}
