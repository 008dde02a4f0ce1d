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
    /// Manage agents through the admin API (`[admin]` of the config; the
    /// token comes from the DOME_ADMIN_TOKEN environment variable).
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// List or lift kernel blocks made by escalation (admin API).
    #[command(subcommand)]
    Blocks(BlocksCmd),
    /// Check the policy files or run their test cases.
    #[command(subcommand)]
    Policy(PolicyCmd),
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Compile the policy (and run its tests); print its version.
    Check {
        /// The policy folder (default: `[policy] dir` of the config).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the policy's test cases; exit non-zero on any failure.
    Test {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Which decisions change from the policy in OLD to the one in NEW,
    /// over both policies' test requests and any in `--requests` (a JSON
    /// array of test requests).
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long)]
        requests: Option<PathBuf>,
    },
    /// List the activated versions (admin API).
    Versions,
    /// Restore an activated version exactly (default: the one before the
    /// active one) through the admin API; the live reload activates it.
    Rollback { version: Option<String> },
}

fn policy_diff(
    old: &std::path::Path,
    new: &std::path::Path,
    requests: Option<&std::path::Path>,
) -> ExitCode {
    let compile = |d: &std::path::Path| {
        dome::policy::read_dir(d)
            .and_then(|s| dome::policy::compile::compile(&s).map_err(|e| e.to_string()))
    };
    let (a, b) = match (compile(old), compile(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut reqs: Vec<dome::policy::lang::TestRequest> = a
        .tests
        .iter()
        .chain(&b.tests)
        .map(|t| t.request.clone())
        .collect();
    if let Some(f) = requests {
        match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<Vec<dome::policy::lang::TestRequest>>(&t)
                    .map_err(|e| e.to_string())
            }) {
            Ok(more) => reqs.extend(more),
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                return ExitCode::from(2);
            }
        }
    }
    let mut changed = 0;
    for r in &reqs {
        let req = r.as_request();
        let (x, y) = (a.decide(&req), b.decide(&req));
        if x.effect() != y.effect() {
            changed += 1;
            println!(
                "{:?} -> {:?}: {}",
                x.effect(),
                y.effect(),
                serde_json::to_string(r).unwrap_or_default()
            );
        }
    }
    println!(
        "{changed} of {} decisions change ({} -> {})",
        reqs.len(),
        a.version,
        b.version
    );
    ExitCode::SUCCESS
}

fn policy_dir(config: &std::path::Path, dir: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let cfg = dome::config::load(config).map_err(|e| e.to_string())?;
    Ok(if cfg.policy.dir.is_absolute() {
        cfg.policy.dir
    } else {
        config
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(cfg.policy.dir)
    })
}

#[derive(Subcommand)]
enum AgentsCmd {
    List,
    Show {
        id: String,
    },
    /// Register an agent; prints its API key once.
    Register {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// customer_agent or partner.
        #[arg(long, default_value = "customer_agent")]
        kind: String,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    /// A new key; the old ones stay valid for the overlap.
    Rotate {
        id: String,
        #[arg(long, default_value_t = 3600)]
        overlap_s: u64,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
enum BlocksCmd {
    List,
    /// Lift a block by the key `list` shows (`identity/7`, `prefix/10.0.0.9/32`).
    Lift {
        key: String,
    },
}

/// Sends one admin API request and prints the answer.
fn admin(
    config: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> ExitCode {
    let cfg = match dome::config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(a) = cfg.admin else {
        eprintln!(
            "error: {}: no [admin] section, so no admin API to talk to",
            config.display()
        );
        return ExitCode::from(2);
    };
    let Ok(token) = std::env::var("DOME_ADMIN_TOKEN") else {
        eprintln!("error: set DOME_ADMIN_TOKEN to the admin token");
        return ExitCode::from(2);
    };
    match dome::admin::call(a.listen, &token, method, path, body.as_ref()) {
        Ok((status, text)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(text);
            println!("{pretty}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: HTTP {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: admin API at {}: {e}", a.listen);
            ExitCode::FAILURE
        }
    }
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
        Command::Agents(cmd) => {
            let c = &cli.config;
            match cmd {
                AgentsCmd::List => admin(c, "GET", "/agents", None),
                AgentsCmd::Show { id } => admin(c, "GET", &format!("/agents/{id}"), None),
                AgentsCmd::Register {
                    tenant,
                    name,
                    kind,
                    labels,
                } => admin(
                    c,
                    "POST",
                    "/agents",
                    Some(
                        serde_json::json!({"tenant": tenant, "name": name, "kind": kind, "labels": labels}),
                    ),
                ),
                AgentsCmd::Disable { id } => {
                    admin(c, "POST", &format!("/agents/{id}/disable"), None)
                }
                AgentsCmd::Enable { id } => admin(c, "POST", &format!("/agents/{id}/enable"), None),
                AgentsCmd::Rotate { id, overlap_s } => admin(
                    c,
                    "POST",
                    &format!("/agents/{id}/rotate"),
                    Some(serde_json::json!({"overlap_s": overlap_s})),
                ),
                AgentsCmd::Delete { id } => admin(c, "DELETE", &format!("/agents/{id}"), None),
            }
        }
        Command::Blocks(cmd) => match cmd {
            BlocksCmd::List => admin(&cli.config, "GET", "/blocks", None),
            BlocksCmd::Lift { key } => {
                admin(&cli.config, "DELETE", &format!("/blocks/{key}"), None)
            }
        },
        Command::Policy(cmd) => {
            let (dir, test_only) = match cmd {
                PolicyCmd::Check { dir } => (dir, false),
                PolicyCmd::Test { dir } => (dir, true),
                PolicyCmd::Versions => return admin(&cli.config, "GET", "/policy/versions", None),
                PolicyCmd::Diff { old, new, requests } => {
                    return policy_diff(&old, &new, requests.as_deref());
                }
                PolicyCmd::Rollback { version } => {
                    return admin(
                        &cli.config,
                        "POST",
                        "/policy/rollback",
                        Some(serde_json::json!({"version": version})),
                    );
                }
            };
            let dir = match policy_dir(&cli.config, dir) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let sources = match dome::policy::read_dir(&dir) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let policy = match dome::policy::compile::compile(&sources) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let failures = dome::policy::run_tests(&policy);
            if test_only {
                println!("{} test(s), {} failed", policy.tests.len(), failures.len());
            } else {
                println!(
                    "{}: {} rule(s), version {}, {} test(s), {} failed",
                    dir.display(),
                    policy.rule_count(),
                    policy.version,
                    policy.tests.len(),
                    failures.len()
                );
            }
            for f in &failures {
                eprintln!("FAIL {f}");
            }
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::HashKey { key } => {
            println!(
                "{}",
                dome::identity::apikey::to_hex(&dome::identity::apikey::hash(&key))
            );
            ExitCode::SUCCESS
        }
        Command::CheckConfig => match dome::config::load(&cli.config) {
            Ok(_) => {
                // The policy is part of the configuration.
                let dir = match policy_dir(&cli.config, None) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                if let Err(e) = dome::policy::load(&dir) {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
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
