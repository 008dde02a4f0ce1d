//! The `dome` binary: its command line, parsed here; what each subcommand
//! does is in `dome::cli`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use dome::cli::{admin, audit, policy};

// mimalloc v2: see dome::allocator for why not v3.
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
    /// Manage agents through the admin API (`[admin]` of the config; the
    /// token comes from the DOME_ADMIN_TOKEN environment variable).
    #[command(subcommand)]
    Agents(admin::AgentsCmd),
    /// List or lift kernel blocks made by escalation (admin API).
    #[command(subcommand)]
    Blocks(admin::BlocksCmd),
    /// Check the policy files or run their test cases.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Query, verify or export the audit trail (read from its folder; safe
    /// while Dome runs).
    #[command(subcommand)]
    Audit(Box<audit::AuditCmd>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DOME_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // One event, one line: caller text in a field cannot forge another.
        .with_writer(|| dome::terminal::LogWriter(std::io::stderr()))
        .init();
    let config = &cli.config;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => dome::cli::run(config),
        Command::CheckConfig => dome::cli::check_config(config),
        Command::HashKey { key } => dome::cli::hash_key(&key),
        Command::Agents(cmd) => admin::agents(config, cmd),
        Command::Blocks(cmd) => admin::blocks(config, cmd),
        Command::Policy(cmd) => policy::policy(config, cmd),
        Command::Audit(cmd) => audit::audit(config, *cmd),
    }
}
