//! The `tessera` command: run the proxy, check a config, start a playground,
//! hash a password for the config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_core::auth::PasswordHashes;
use tessera_core::config::Config;
use tessera_net::playground::{self, PlaygroundOptions};

#[derive(Parser)]
#[command(name = "tessera", version, about = "Tessera, a MySQL sharding proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a TOML config.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and exit.
    CheckConfig { file: PathBuf },
    /// Start local MariaDB servers and the proxy in front of them.
    Playground {
        #[arg(long, default_value_t = 1)]
        shards: u32,
        #[arg(long, default_value_t = 0)]
        replicas: u32,
        /// Proxy port (0 picks a free one).
        #[arg(long, default_value_t = 3307)]
        port: u16,
        /// Directory for data and config (default: a temporary one, removed at exit).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the password hashes to put in a [[users]] entry.
    HashPassword { password: String },
}

fn load(path: &PathBuf) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config = Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    config
        .validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(config)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => load(&file).map(|_| println!("{}: ok", file.display())),
        Command::HashPassword { password } => {
            let h = PasswordHashes::from_password(&password);
            println!("password_native = \"{}\"", h.native_string());
            println!("password_sha2 = \"{}\"", h.sha2_string());
            Ok(())
        }
        Command::Run { config } => load(&config).and_then(|c| {
            runtime().block_on(async move {
                let proxy = tessera_net::proxy::start(&c)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(addr = %proxy.addr, "tessera listening");
                tessera_net::proxy::termination_signal().await;
                tracing::info!("signal received; shutting down");
                proxy.shutdown().await;
                Ok(())
            })
        }),
        Command::Playground {
            shards,
            replicas,
            port,
            dir,
        } => {
            let port = if port == 0 {
                tessera_net::mariadbd::free_port().unwrap_or(3307)
            } else {
                port
            };
            runtime().block_on(playground::run(PlaygroundOptions {
                shards,
                replicas,
                port,
                dir,
            }))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The main runtime: event loop 0. The proxy starts the others on threads
/// of their own (`TESSERA_THREADS`, default one per core; see
/// `tessera_net::loops`).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
