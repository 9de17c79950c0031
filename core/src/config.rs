//! Configuration: serde types read from TOML, and validation whose errors name
//! the offending key.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthMethod, PasswordHashes};
use crate::router::Blacklist;
use crate::shard::{self, DateUnit, KeyType, Schema, ShardFn, ShardedTable, SubTable};
use crate::topology::{Backend, Role, Topology};

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
    /// Most bytes of shard results one scatter query may hold for merging.
    #[serde(default = "default_max_merge_bytes")]
    pub max_merge_bytes: usize,
    pub users: Vec<UserConfig>,
    /// A single node (shorthand for one entry in `nodes`).
    #[serde(default)]
    pub node: Option<NodeConfig>,
    /// The nodes: each a primary and its replicas.
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    /// Where unsharded tables live, and which tables are sharded.
    #[serde(default)]
    pub schema: SchemaConfig,
    /// Statements refused before they reach a backend.
    #[serde(default)]
    pub blacklist: BlacklistConfig,
    /// How reads are routed (read-your-writes).
    #[serde(default)]
    pub routing: RoutingConfig,
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
    /// Overrides `routing.read_your_writes` for this user.
    #[serde(default)]
    pub read_your_writes: Option<String>,
    /// Overrides `routing.read_your_writes_window_ms` for this user.
    #[serde(default)]
    pub read_your_writes_window_ms: Option<u64>,
}

/// `[routing]`: read routing beyond the read/write split.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// After a session writes to a node, where its reads of that node go:
    /// `off` (replicas, as always), `gtid` (only replicas that have applied
    /// the session's last write there, else the primary) or `window` (the
    /// primary for `read_your_writes_window_ms` after the write).
    #[serde(default = "default_read_your_writes")]
    pub read_your_writes: String,
    /// How long reads stay on the primary after a write, in `window` mode.
    #[serde(default = "default_read_your_writes_window_ms")]
    pub read_your_writes_window_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            read_your_writes: default_read_your_writes(),
            read_your_writes_window_ms: default_read_your_writes_window_ms(),
        }
    }
}

fn default_read_your_writes() -> String {
    "off".into()
}
fn default_read_your_writes_window_ms() -> u64 {
    1_000
}

/// Read-your-writes, resolved: what happens to a session's reads of a node
/// after it wrote there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadYourWrites {
    /// Reads go to replicas as usual (they may not see the write yet).
    #[default]
    Off,
    /// Reads go to a replica whose applied GTID position covers the
    /// session's last GTID on that node, else to the primary.
    Gtid,
    /// Reads go to the primary for this long after the write.
    Window(Duration),
}

impl ReadYourWrites {
    /// Resolves a mode name; `key` names the setting in errors.
    fn resolve(
        mode: &str,
        window_ms: u64,
        key: &str,
        window_key: &str,
    ) -> Result<Self, ConfigError> {
        match mode {
            "off" => Ok(Self::Off),
            "gtid" => Ok(Self::Gtid),
            "window" if window_ms == 0 => Err(bad(
                window_key,
                "must be more than 0 when read_your_writes = \"window\"",
            )),
            "window" => Ok(Self::Window(Duration::from_millis(window_ms))),
            other => Err(bad(key, format!("`{other}` is not off, gtid or window"))),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    #[serde(default = "default_node_name")]
    pub name: String,
    /// `host:port` of the primary, or the path of its Unix socket.
    pub primary: String,
    /// `host:port[@weight]` (or a socket path) of each replica; reads are
    /// spread over them by weight.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Whether the primary takes reads too (with weight 1) when replicas exist.
    #[serde(default)]
    pub primary_reads: bool,
    /// Credentials Tessera uses to log in to the backends.
    pub user: String,
    #[serde(default)]
    pub password: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// Node of unsharded tables and of statements the router cannot place;
    /// the first node when unset.
    #[serde(default)]
    pub default_node: Option<String>,
    /// Reference tables with a full copy on every node: joins with sharded
    /// tables stay local, writes go to every node.
    #[serde(default)]
    pub broadcast: Vec<String>,
    #[serde(default)]
    pub tables: Vec<ShardedTableConfig>,
    /// Database holding `tessera_sequences` on the default node's primary
    /// (needed when a table has a `sequence`).
    #[serde(default)]
    pub sequence_database: Option<String>,
    /// Ids a proxy takes from a sequence at a time (default 1000).
    #[serde(default)]
    pub sequence_block: Option<u64>,
}

/// A logical table split into sub-tables spread over nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTableConfig {
    /// Logical name the application uses.
    pub name: String,
    /// Shard-key column.
    pub key: String,
    /// `hash`, `range`, `year`, `month` or `day`.
    pub function: String,
    /// `int` (default) or `string`: how hash keys are read, so `'42'` and
    /// `42` land on the same sub-table of an integer key.
    #[serde(default = "default_key_type")]
    pub key_type: String,
    /// Nodes holding sub-tables, in order; every node when empty.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Sub-tables per node (hash and range), e.g. `[4, 4]`.
    #[serde(default)]
    pub locations: Vec<usize>,
    /// Keys per sub-table (range): sub-table `i` holds `[i*limit, (i+1)*limit)`.
    #[serde(default)]
    pub table_row_limit: Option<u64>,
    /// Periods per node (year/month/day), e.g. `["2026-01..2026-06", "2026-07..2026-12"]`.
    #[serde(default)]
    pub date_ranges: Vec<String>,
    /// Column Tessera fills from a global sequence when an INSERT leaves it
    /// out (or gives NULL or 0), as AUTO_INCREMENT would.
    #[serde(default)]
    pub sequence: Option<String>,
    /// Ids taken from this table's sequence at a time (default: `schema.sequence_block`).
    #[serde(default)]
    pub sequence_block: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlacklistConfig {
    /// Refuse UPDATE and DELETE without a WHERE clause.
    #[serde(default)]
    pub unfiltered_writes: bool,
    /// Statements refused by shape: literals are ignored when matching, so
    /// `DELETE FROM t WHERE id = 1` also refuses `delete from t where id=7`.
    #[serde(default)]
    pub patterns: Vec<String>,
}

/// Ids taken from a sequence at a time unless configured.
pub const DEFAULT_SEQUENCE_BLOCK: u64 = 1000;
/// The largest block size accepted.
pub const MAX_SEQUENCE_BLOCK: u64 = 1_000_000_000;

fn default_key_type() -> String {
    "int".into()
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

fn default_max_merge_bytes() -> usize {
    256 << 20
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
    /// This user's read-your-writes mode (its own or `[routing]`'s).
    pub read_your_writes: ReadYourWrites,
}

/// The validated form of [`Config`].
#[derive(Debug, Clone)]
pub struct Validated {
    pub listen: SocketAddr,
    pub allow: Vec<Cidr>,
    pub users: Vec<User>,
    pub topology: Arc<Topology>,
    pub schema: Arc<Schema>,
    pub blacklist: Arc<Blacklist>,
    /// `[routing] read_your_writes`, the default of users without their own.
    pub read_your_writes: ReadYourWrites,
}

impl Validated {
    /// Whether any user reads by GTID, so replica positions must be polled.
    pub fn tracks_replica_positions(&self) -> bool {
        self.users
            .iter()
            .any(|u| u.read_your_writes == ReadYourWrites::Gtid)
    }
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
        let routing = &self.routing;
        let read_your_writes = ReadYourWrites::resolve(
            &routing.read_your_writes,
            routing.read_your_writes_window_ms,
            "routing.read_your_writes",
            "routing.read_your_writes_window_ms",
        )?;
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
            let window_key = match u.read_your_writes_window_ms {
                Some(_) => format!("users[{i}].read_your_writes_window_ms"),
                None => "routing.read_your_writes_window_ms".to_string(),
            };
            let user_ryw = match (&u.read_your_writes, u.read_your_writes_window_ms) {
                (None, None) => read_your_writes,
                (mode, window) => ReadYourWrites::resolve(
                    mode.as_deref().unwrap_or(&routing.read_your_writes),
                    window.unwrap_or(routing.read_your_writes_window_ms),
                    &match mode {
                        Some(_) => format!("users[{i}].read_your_writes"),
                        None => "routing.read_your_writes".to_string(),
                    },
                    &window_key,
                )?,
            };
            users.push(User {
                name: u.name.clone(),
                hashes,
                method,
                read_your_writes: user_ryw,
            });
        }
        let topology = Arc::new(self.validate_nodes()?);
        let schema = Arc::new(self.validate_schema(&topology)?);
        let blacklist = Arc::new(
            Blacklist::new(self.blacklist.unfiltered_writes, &self.blacklist.patterns)
                .map_err(|(i, m)| bad(format!("blacklist.patterns[{i}]"), m))?,
        );
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
            topology,
            schema,
            blacklist,
            read_your_writes,
        })
    }

    /// The configured nodes, whichever form (`[node]` or `[[nodes]]`) was used.
    pub fn node_list(&self) -> Vec<NodeConfig> {
        self.node.iter().chain(&self.nodes).cloned().collect()
    }

    fn validate_nodes(&self) -> Result<Topology, ConfigError> {
        if self.node.is_some() && !self.nodes.is_empty() {
            return Err(bad("node", "use either [node] or [[nodes]], not both"));
        }
        let (list, prefix): (Vec<&NodeConfig>, &str) = match &self.node {
            Some(n) => (vec![n], "node"),
            None => (self.nodes.iter().collect(), "nodes"),
        };
        if list.is_empty() {
            return Err(bad("nodes", "at least one node is needed"));
        }
        let mut names = HashSet::new();
        let mut nodes = Vec::new();
        for (i, n) in list.iter().enumerate() {
            let key = |k: &str| {
                if prefix == "node" {
                    format!("node.{k}")
                } else {
                    format!("nodes[{i}].{k}")
                }
            };
            if n.name.is_empty() {
                return Err(bad(key("name"), "must not be empty"));
            }
            if !names.insert(n.name.to_ascii_lowercase()) {
                return Err(bad(
                    key("name"),
                    format!("node `{}` is listed twice", n.name),
                ));
            }
            check_host_port(&key("primary"), &n.primary)?;
            if n.user.is_empty() {
                return Err(bad(key("user"), "must not be empty"));
            }
            let backend = |addr: &str, weight: u32| Backend {
                addr: addr.to_string(),
                node: i,
                role: Role::Replica,
                weight,
                user: n.user.clone(),
                password: n.password.clone(),
            };
            let mut replicas = Vec::new();
            for (j, r) in n.replicas.iter().enumerate() {
                let k = key(&format!("replicas[{j}]"));
                let (addr, weight) = match r.rsplit_once('@') {
                    Some((a, w)) => (
                        a,
                        w.parse::<u32>().map_err(|_| {
                            bad(&k, format!("weight `{w}` is not a whole number like @2"))
                        })?,
                    ),
                    None => (r.as_str(), 1),
                };
                check_host_port(&k, addr)?;
                replicas.push(backend(addr, weight));
            }
            nodes.push((
                n.name.clone(),
                backend(&n.primary, 0),
                replicas,
                n.primary_reads,
            ));
        }
        let default_node = match &self.schema.default_node {
            None => 0,
            Some(name) => nodes
                .iter()
                .position(|(n, ..)| n.eq_ignore_ascii_case(name))
                .ok_or_else(|| bad("schema.default_node", format!("no node is named `{name}`")))?,
        };
        Ok(Topology::new(nodes, default_node))
    }

    fn validate_schema(&self, topology: &Topology) -> Result<Schema, ConfigError> {
        let mut tables = HashMap::new();
        let check_block = |key: String, b: u64| {
            if b == 0 || b > MAX_SEQUENCE_BLOCK {
                Err(bad(
                    key,
                    format!("must be between 1 and {MAX_SEQUENCE_BLOCK}"),
                ))
            } else {
                Ok(b)
            }
        };
        let default_block = match self.schema.sequence_block {
            Some(b) => check_block("schema.sequence_block".into(), b)?,
            None => DEFAULT_SEQUENCE_BLOCK,
        };
        if let Some(db) = &self.schema.sequence_database {
            if db.is_empty() || db.len() > 64 || db.contains(['`', '\0']) {
                return Err(bad(
                    "schema.sequence_database",
                    "must be a database name of 1 to 64 characters without backticks",
                ));
            }
        }
        for (i, t) in self.schema.tables.iter().enumerate() {
            let key = |k: &str| format!("schema.tables[{i}].{k}");
            if t.name.is_empty() {
                return Err(bad(key("name"), "must not be empty"));
            }
            if t.key.is_empty() {
                return Err(bad(key("key"), "must name the shard-key column"));
            }
            let lname = t.name.to_ascii_lowercase();
            if tables.contains_key(&lname) {
                return Err(bad(
                    key("name"),
                    format!("table `{}` is listed twice", t.name),
                ));
            }
            if self
                .schema
                .broadcast
                .iter()
                .any(|b| b.eq_ignore_ascii_case(&t.name))
            {
                return Err(bad(
                    key("name"),
                    format!("`{}` is also a broadcast table", t.name),
                ));
            }
            let nodes: Vec<usize> = if t.nodes.is_empty() {
                (0..topology.nodes.len()).collect()
            } else {
                let mut v = Vec::new();
                for (j, n) in t.nodes.iter().enumerate() {
                    let idx = topology.node_index(n).ok_or_else(|| {
                        bad(
                            key(&format!("nodes[{j}]")),
                            format!("no node is named `{n}`"),
                        )
                    })?;
                    if v.contains(&idx) {
                        return Err(bad(key(&format!("nodes[{j}]")), "node listed twice"));
                    }
                    v.push(idx);
                }
                v
            };
            let date_unit = match t.function.as_str() {
                "year" => Some(DateUnit::Year),
                "month" => Some(DateUnit::Month),
                "day" => Some(DateUnit::Day),
                "hash" | "range" => None,
                other => {
                    return Err(bad(
                        key("function"),
                        format!("`{other}` is not hash, range, year, month or day"),
                    ))
                }
            };
            let mut sub_tables = Vec::new();
            let function = if let Some(unit) = date_unit {
                if t.date_ranges.len() != nodes.len() {
                    return Err(bad(
                        key("date_ranges"),
                        format!("needs one period range per node ({} nodes)", nodes.len()),
                    ));
                }
                let mut periods = BTreeMap::new();
                let mut last_end: Option<u32> = None;
                for (j, r) in t.date_ranges.iter().enumerate() {
                    let k = key(&format!("date_ranges[{j}]"));
                    let example = match unit {
                        DateUnit::Year => "2025..2026",
                        DateUnit::Month => "2026-01..2026-06",
                        DateUnit::Day => "2026-11-01..2026-11-30",
                    };
                    let (a, b) = r
                        .split_once("..")
                        .and_then(|(a, b)| {
                            Some((shard::parse_period(a, unit)?, shard::parse_period(b, unit)?))
                        })
                        .ok_or_else(|| bad(&k, format!("`{r}` is not a range like {example}")))?;
                    if b < a {
                        return Err(bad(&k, format!("`{r}` ends before it starts")));
                    }
                    let ps = shard::periods_between(a, b, unit);
                    if let Some(end) = last_end {
                        let next = shard::periods_between(end, u32::MAX, unit);
                        if a <= end {
                            return Err(bad(&k, format!("`{r}` overlaps the range before it")));
                        }
                        if next.get(1) != Some(&a) {
                            return Err(bad(
                                &k,
                                format!("`{r}` leaves a gap after the range before it"),
                            ));
                        }
                    }
                    last_end = ps.last().copied();
                    for p in ps {
                        periods.insert(p, sub_tables.len());
                        sub_tables.push(SubTable {
                            name: format!("{}_{p}", t.name),
                            node: nodes[j],
                        });
                    }
                }
                ShardFn::Date { unit, periods }
            } else {
                if t.locations.len() != nodes.len() {
                    return Err(bad(
                        key("locations"),
                        format!("needs one sub-table count per node ({} nodes)", nodes.len()),
                    ));
                }
                if t.locations.iter().sum::<usize>() == 0 {
                    return Err(bad(key("locations"), "needs at least one sub-table"));
                }
                for (j, &count) in t.locations.iter().enumerate() {
                    for _ in 0..count {
                        let idx = sub_tables.len();
                        sub_tables.push(SubTable {
                            name: format!("{}_{idx:04}", t.name),
                            node: nodes[j],
                        });
                    }
                }
                if t.function == "range" {
                    let limit = t.table_row_limit.filter(|l| *l > 0).ok_or_else(|| {
                        bad(
                            key("table_row_limit"),
                            "range sharding needs a limit above 0",
                        )
                    })?;
                    ShardFn::Range { limit }
                } else {
                    let kt = match t.key_type.as_str() {
                        "int" => KeyType::Int,
                        "string" => KeyType::Str,
                        other => {
                            return Err(bad(
                                key("key_type"),
                                format!("`{other}` is not int or string"),
                            ))
                        }
                    };
                    ShardFn::Hash(kt)
                }
            };
            let sequence = match &t.sequence {
                None => None,
                Some(col) => {
                    if col.is_empty() || col.contains('`') {
                        return Err(bad(
                            key("sequence"),
                            "must name the column Tessera fills (without backticks)",
                        ));
                    }
                    if col.eq_ignore_ascii_case(&t.key) && date_unit.is_some() {
                        return Err(bad(
                            key("sequence"),
                            format!(
                                "the shard key `{}` is a date ({} sharding) and cannot be filled from a sequence",
                                t.key, t.function
                            ),
                        ));
                    }
                    if self.schema.sequence_database.is_none() {
                        return Err(bad(
                            "schema.sequence_database",
                            format!(
                                "needed because schema.tables[{i}] has a sequence: the database on the default node that holds tessera_sequences"
                            ),
                        ));
                    }
                    if t.name.len() > 64 {
                        return Err(bad(
                            key("name"),
                            "a table with a sequence needs a name of at most 64 characters",
                        ));
                    }
                    Some(col.to_ascii_lowercase())
                }
            };
            let sequence_block = match t.sequence_block {
                Some(_) if sequence.is_none() => {
                    return Err(bad(
                        key("sequence_block"),
                        "set only together with `sequence`",
                    ))
                }
                Some(b) => check_block(key("sequence_block"), b)?,
                None => default_block,
            };
            tables.insert(
                lname,
                Arc::new(ShardedTable {
                    name: t.name.clone(),
                    key: t.key.to_ascii_lowercase(),
                    function,
                    sub_tables,
                    sequence,
                    sequence_block,
                }),
            );
        }
        Ok(Schema {
            tables,
            broadcast: self
                .schema
                .broadcast
                .iter()
                .map(|b| b.to_ascii_lowercase())
                .collect(),
            default_node: topology.default_node,
            sequence_database: self.schema.sequence_database.clone(),
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
        c.node.as_mut().unwrap().primary = "nohost".into();
        assert_eq!(c.validate().unwrap_err().key, "node.primary");
        let mut c = Config::from_toml(MINIMAL).unwrap();
        c.users[0].password_native = "abc".into();
        assert_eq!(c.validate().unwrap_err().key, "users[0]");
    }

    const SHARDED: &str = r#"
listen = "127.0.0.1:3307"
[[users]]
name = "app"
password_native = "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"
[[nodes]]
name = "node1"
primary = "127.0.0.1:3306"
replicas = ["127.0.0.1:3308@2", "127.0.0.1:3309@3"]
user = "root"
[[nodes]]
name = "node2"
primary = "127.0.0.1:3316"
user = "root"
[schema]
default_node = "node1"
broadcast = ["countries"]
[[schema.tables]]
name = "stu"
key = "id"
function = "hash"
locations = [4, 4]
[[schema.tables]]
name = "log"
key = "ts"
function = "month"
date_ranges = ["2026-01..2026-06", "2026-07..2026-12"]
"#;

    #[test]
    fn sharded_config_validates() {
        let v = Config::from_toml(SHARDED).unwrap().validate().unwrap();
        assert_eq!(v.topology.nodes.len(), 2);
        assert_eq!(v.topology.backends.len(), 4);
        let stu = v.schema.sharded("stu").unwrap();
        assert_eq!(stu.sub_tables[4].name, "stu_0004");
        assert_eq!(stu.sub_tables[4].node, 1);
        let log = v.schema.sharded("LOG").unwrap();
        assert_eq!(log.sub_tables.len(), 12);
        assert_eq!(log.sub_tables[6].name, "log_202607");
        assert!(v.schema.is_broadcast("Countries"));
    }

    #[test]
    fn sharding_mistakes_name_their_key() {
        let check = |from: &str, to: &str, key: &str| {
            let c = Config::from_toml(&SHARDED.replace(from, to)).unwrap();
            assert_eq!(c.validate().unwrap_err().key, key, "{from} -> {to}");
        };
        check(
            "locations = [4, 4]",
            "locations = [4]",
            "schema.tables[0].locations",
        );
        check("\"hash\"", "\"modulo\"", "schema.tables[0].function");
        check(
            "2026-07..2026-12",
            "2026-06..2026-12",
            "schema.tables[1].date_ranges[1]",
        );
        check(
            "2026-07..2026-12",
            "2026-08..2026-12",
            "schema.tables[1].date_ranges[1]",
        );
        check("3309@3", "3309@x", "nodes[0].replicas[1]");
        check(
            "default_node = \"node1\"",
            "default_node = \"node9\"",
            "schema.default_node",
        );
    }

    #[test]
    fn read_your_writes_is_off_by_default_and_overridable_per_user() {
        let v = Config::from_toml(MINIMAL).unwrap().validate().unwrap();
        assert_eq!(v.read_your_writes, ReadYourWrites::Off);
        assert_eq!(v.users[0].read_your_writes, ReadYourWrites::Off);
        assert!(!v.tracks_replica_positions());

        let text = MINIMAL.replace(
            "[[users]]",
            "[routing]\nread_your_writes = \"window\"\nread_your_writes_window_ms = 250\n[[users]]",
        );
        let text = format!(
            "{text}\n[[users]]\nname = \"reporting\"\npassword_native = \"*14E65567ABDB5135D0CFD9A70B3032C179A49EE7\"\nread_your_writes = \"gtid\"\n\
             [[users]]\nname = \"batch\"\npassword_native = \"*14E65567ABDB5135D0CFD9A70B3032C179A49EE7\"\nread_your_writes_window_ms = 5000\n\
             [[users]]\nname = \"legacy\"\npassword_native = \"*14E65567ABDB5135D0CFD9A70B3032C179A49EE7\"\nread_your_writes = \"off\"\n"
        );
        let v = Config::from_toml(&text).unwrap().validate().unwrap();
        let ms = |n| ReadYourWrites::Window(Duration::from_millis(n));
        assert_eq!(v.read_your_writes, ms(250));
        let modes: Vec<_> = v.users.iter().map(|u| u.read_your_writes).collect();
        assert_eq!(
            modes,
            vec![ms(250), ReadYourWrites::Gtid, ms(5000), ReadYourWrites::Off]
        );
        assert!(v.tracks_replica_positions());
    }

    #[test]
    fn read_your_writes_mistakes_name_their_key() {
        let check = |routing: &str, user: &str, key: &str| {
            let text = MINIMAL
                .replace("[[users]]", &format!("[routing]\n{routing}\n[[users]]"))
                .replace("[node]", &format!("{user}\n[node]"));
            let c = Config::from_toml(&text).unwrap();
            assert_eq!(c.validate().unwrap_err().key, key, "{routing} / {user}");
        };
        check(
            "read_your_writes = \"always\"",
            "",
            "routing.read_your_writes",
        );
        check(
            "read_your_writes = \"window\"\nread_your_writes_window_ms = 0",
            "",
            "routing.read_your_writes_window_ms",
        );
        check(
            "",
            "read_your_writes = \"GTID\"",
            "users[0].read_your_writes",
        );
        check(
            "read_your_writes_window_ms = 0",
            "read_your_writes = \"window\"",
            "routing.read_your_writes_window_ms",
        );
        check(
            "read_your_writes = \"window\"",
            "read_your_writes_window_ms = 0",
            "users[0].read_your_writes_window_ms",
        );
        // A global window of 0 is fine while nobody uses window mode.
        let text = MINIMAL.replace(
            "[[users]]",
            "[routing]\nread_your_writes = \"gtid\"\nread_your_writes_window_ms = 0\n[[users]]",
        );
        assert!(Config::from_toml(&text).unwrap().validate().is_ok());
        let e = Config::from_toml(&MINIMAL.replace(
            "[[users]]",
            "[routing]\nread_your_write = \"gtid\"\n[[users]]",
        ))
        .unwrap_err();
        assert!(e.message.contains("read_your_write"), "{e}");
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
