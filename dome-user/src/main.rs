//! The `dome` binary: a thin command line over the `dome` library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "dome", version, about = "Dome: the agent-facing MCP gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (for `run`, the default command).
    #[arg(long, short, global = true, default_value = "configs/dome.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run Dome (the default).
    Run,
    /// Validate the configuration file and exit.
    CheckConfig,
    /// Print the SHA-256 (hex) of an API key or admin token, as the config
    /// file stores it.
    HashKey { key: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DOME_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command.unwrap_or(Command::Run) {
        Command::HashKey { key } => {
            println!(
                "{}",
                dome::identity::apikey::to_hex(&dome::identity::apikey::hash(&key))
            );
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match dome::config::load(&cli.config) {
            Ok(_) => {
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(dome::runtime::run(&cli.config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    // A bad config is the operator's to fix: exit 2, like `check-config`.
                    if e.downcast_ref::<dome::config::ConfigError>().is_some() {
                        ExitCode::from(2)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
    }
}
