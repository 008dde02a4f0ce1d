//! `dome agents` and `dome blocks`: the admin API's client (`[admin]` of
//! the config; the token from DOME_ADMIN_TOKEN).

use std::{path::Path, process::ExitCode};

use clap::Subcommand;

use super::print_error;

/// `dome agents …`.
pub fn agents(config: &Path, cmd: AgentsCmd) -> ExitCode {
    match cmd {
        AgentsCmd::List => admin(config, "GET", "/agents", None),
        AgentsCmd::Show { id } => admin(config, "GET", &format!("/agents/{id}"), None),
        AgentsCmd::Register {
            tenant,
            name,
            kind,
            labels,
        } => admin(
            config,
            "POST",
            "/agents",
            Some(
                serde_json::json!({"tenant": tenant, "name": name, "kind": kind, "labels": labels}),
            ),
        ),
        AgentsCmd::Disable { id } => admin(config, "POST", &format!("/agents/{id}/disable"), None),
        AgentsCmd::Enable { id } => admin(config, "POST", &format!("/agents/{id}/enable"), None),
        AgentsCmd::Rotate { id, overlap_s } => admin(
            config,
            "POST",
            &format!("/agents/{id}/rotate"),
            Some(serde_json::json!({"overlap_s": overlap_s})),
        ),
        AgentsCmd::Delete { id } => admin(config, "DELETE", &format!("/agents/{id}"), None),
    }
}

/// `dome blocks …`.
pub fn blocks(config: &Path, cmd: BlocksCmd) -> ExitCode {
    match cmd {
        BlocksCmd::List => admin(config, "GET", "/blocks", None),
        BlocksCmd::Lift { key } => admin(config, "DELETE", &format!("/blocks/{key}"), None),
    }
}

#[derive(Subcommand)]
pub enum AgentsCmd {
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
pub enum BlocksCmd {
    List,
    /// Lift a block by the key `list` shows (`identity/7`, `prefix/10.0.0.9/32`).
    Lift {
        key: String,
    },
}

/// Sends one admin API request and prints the answer.
pub(crate) fn admin(
    config: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> ExitCode {
    let cfg = match crate::config::load(config) {
        Ok(c) => c,
        Err(e) => {
            print_error(&e);
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
    match crate::ops::admin::call(a.listen, &token, method, path, body.as_ref()) {
        Ok((status, text)) => {
            // Agent names, labels and reasons come from callers and admins:
            // JSON keeps its meaning with what a terminal would act on
            // escaped; anything else is escaped as text.
            let pretty = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .map(|p| crate::terminal::json(&p).into_owned())
                .unwrap_or_else(|| crate::terminal::escape_lines(&text).into_owned());
            println!("{pretty}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: HTTP {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            print_error(&format!("admin API at {}: {e}", a.listen));
            ExitCode::FAILURE
        }
    }
}
