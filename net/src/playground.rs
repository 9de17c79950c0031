//! `tessera playground`: a small local topology of real `mariadbd` servers
//! plus the proxy, for trying Tessera with any MySQL client.

use std::path::PathBuf;

use tessera_core::auth::PasswordHashes;
use tessera_core::config::Config;
use tessera_core::sequence;

use crate::mariadbd::{self, MariaDb};

/// The user, password and database the playground creates.
pub const USER: &str = "tessera";
pub const PASSWORD: &str = "tessera";
pub const DATABASE: &str = "tessera";

/// Options of `tessera playground`.
#[derive(Debug, Clone)]
pub struct PlaygroundOptions {
    pub shards: u32,
    pub replicas: u32,
    pub port: u16,
    pub dir: Option<PathBuf>,
}

/// One started shard: its primary and replicas.
pub struct Shard {
    pub primary: MariaDb,
    pub replicas: Vec<MariaDb>,
}

/// Starts the servers, returns them with the config that points at them.
pub fn start_backends(
    opts: &PlaygroundOptions,
    dir: &std::path::Path,
) -> std::io::Result<(Vec<Shard>, Config)> {
    if mariadbd::mariadbd_path().is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            mariadbd::INSTALL_HINT,
        ));
    }
    let mut shards = Vec::new();
    for s in 1..=opts.shards.max(1) {
        let primary = MariaDb::start(&dir.join(format!("shard{s}-primary")), s * 100 + 1)?;
        primary.create_user(USER, PASSWORD)?;
        primary.sql(&format!("CREATE DATABASE IF NOT EXISTS `{DATABASE}`"))?;
        let mut replicas = Vec::new();
        for r in 1..=opts.replicas {
            let replica =
                MariaDb::start(&dir.join(format!("shard{s}-replica{r}")), s * 100 + 1 + r)?;
            replica.replicate_from(&primary)?;
            replicas.push(replica);
        }
        shards.push(Shard { primary, replicas });
    }
    if shards.len() > 1 {
        create_example_tables(&shards)?;
    }
    for shard in &shards {
        for replica in &shard.replicas {
            replica.wait_caught_up(&shard.primary)?;
        }
    }
    let text = config_text(opts, &shards);
    std::fs::write(dir.join("tessera.toml"), &text)?;
    let config = Config::from_toml(&text).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((shards, config))
}

/// Sub-tables of the example sharded table per node.
pub const EXAMPLE_SUB_TABLES_PER_NODE: usize = 4;

/// The example sharded table's columns (`stu`, sharded by `id`).
pub const EXAMPLE_TABLE_COLUMNS: &str =
    "id BIGINT PRIMARY KEY, name VARCHAR(64), score INT, amount DECIMAL(10,2), cc CHAR(2)";

/// The example broadcast table's columns (`countries`).
pub const EXAMPLE_BROADCAST_COLUMNS: &str = "code CHAR(2) PRIMARY KEY, name VARCHAR(64)";

/// The first id the example table's sequence hands out.
pub const EXAMPLE_FIRST_GENERATED_ID: i64 = 1001;

/// Creates `stu_0000…` on the primaries that hold them, `countries` on
/// every primary (replicas receive them by replication), and the example
/// sequence's row on the default node.
fn create_example_tables(shards: &[Shard]) -> std::io::Result<()> {
    for (node, shard) in shards.iter().enumerate() {
        let mut sql = String::new();
        for k in 0..EXAMPLE_SUB_TABLES_PER_NODE {
            let idx = node * EXAMPLE_SUB_TABLES_PER_NODE + k;
            sql.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS `{DATABASE}`.stu_{idx:04} ({EXAMPLE_TABLE_COLUMNS});"
            ));
        }
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS `{DATABASE}`.countries ({EXAMPLE_BROADCAST_COLUMNS});"
        ));
        if node == 0 {
            // Generated ids start at EXAMPLE_FIRST_GENERATED_ID, clear of
            // the small ids people type by hand.
            sql.push_str(&format!(
                "{}; INSERT IGNORE INTO `{DATABASE}`.{} VALUES ('stu', {EXAMPLE_FIRST_GENERATED_ID});",
                sequence::create_table_sql(DATABASE),
                sequence::TABLE
            ));
        }
        shard.primary.sql(&sql)?;
    }
    Ok(())
}

/// The proxy's config for the started servers. The proxy runs beside its
/// backends, so it reaches primaries over their Unix sockets.
pub fn config_text(opts: &PlaygroundOptions, shards: &[Shard]) -> String {
    let hashes = PasswordHashes::from_password(PASSWORD);
    let mut text = format!(
        r#"# Written by `tessera playground`.
listen = "127.0.0.1:{port}"
allow = ["127.0.0.0/8", "::1/128"]

[[users]]
name = "{USER}"
password_native = "{native}"
password_sha2 = "{sha2}"

[pool]
max_connections = 256
"#,
        port = opts.port,
        native = hashes.native_string(),
        sha2 = hashes.sha2_string(),
    );
    for (i, shard) in shards.iter().enumerate() {
        let replicas: Vec<String> = shard
            .replicas
            .iter()
            .map(|r| format!("\"{}\"", r.addr()))
            .collect();
        text.push_str(&format!(
            r#"
[[nodes]]
name = "shard{n}"
primary = "{primary}"
replicas = [{replicas}]
user = "{USER}"
password = "{PASSWORD}"
"#,
            n = i + 1,
            primary = shard.primary.socket_path().display(),
            replicas = replicas.join(", "),
        ));
    }
    if shards.len() > 1 {
        let locations = vec![EXAMPLE_SUB_TABLES_PER_NODE.to_string(); shards.len()].join(", ");
        text.push_str(&format!(
            r#"
# The example: `stu` is split by `id` into stu_0000… ({per} per node);
# `countries` has a full copy on every node. An INSERT into `stu` that
# leaves out `id` gets one from a global sequence (`{DATABASE}.tessera_sequences`
# on shard1, starting at {EXAMPLE_FIRST_GENERATED_ID}).
[schema]
default_node = "shard1"
broadcast = ["countries"]
sequence_database = "{DATABASE}"

[[schema.tables]]
name = "stu"
key = "id"
function = "hash"
locations = [{locations}]
sequence = "id"
"#,
            per = EXAMPLE_SUB_TABLES_PER_NODE,
        ));
    }
    text
}

/// Runs the playground until SIGINT/SIGTERM.
pub async fn run(opts: PlaygroundOptions) -> Result<(), String> {
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| mariadbd::scratch_dir("tessera-playground"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    eprintln!("starting MariaDB servers in {} ...", dir.display());
    let (shards, config) = start_backends(&opts, &dir).map_err(|e| e.to_string())?;
    if opts.shards > 1 {
        eprintln!("example: `stu` (id, name, score, amount, cc) is sharded by id over every shard; `countries` (code, name) is a broadcast table");
        eprintln!("try: INSERT INTO stu (id, name) VALUES (1,'a'),(2,'b'),(3,'c'); SELECT COUNT(*) FROM stu; TESSERA EXPLAIN SELECT * FROM stu WHERE id = 2;");
        eprintln!("     INSERT INTO stu (name) VALUES ('d'),('e'); SELECT LAST_INSERT_ID();  -- ids from the global sequence");
    }
    let proxy = crate::proxy::start(&config)
        .await
        .map_err(|e| e.to_string())?;
    let port = proxy.addr.port();
    for (i, s) in shards.iter().enumerate() {
        println!("backend: shard{} primary {}", i + 1, s.primary.addr());
        for r in &s.replicas {
            println!("backend: shard{} replica {}", i + 1, r.addr());
        }
    }
    println!("config: {}", dir.join("tessera.toml").display());
    println!("connect: mariadb -h127.0.0.1 -P{port} -u{USER} -p{PASSWORD} {DATABASE}");
    println!("ready: mysql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}");
    crate::proxy::termination_signal().await;
    eprintln!("stopping ...");
    proxy.shutdown().await;
    drop(shards);
    if opts.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
