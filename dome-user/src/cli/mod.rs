//! The bodies of the `dome` command line's subcommands; `main.rs` keeps
//! the argument parsing and the dispatch.

use std::{path::Path, process::ExitCode};

pub mod admin;
pub mod audit;
pub mod policy;

/// An error for the operator's terminal: messages can quote config,
/// policy or caller text, so control characters are escaped.
pub fn print_error(e: &dyn std::fmt::Display) {
    eprintln!("error: {}", crate::terminal::escape_lines(&e.to_string()));
}

/// `dome run`: Dome itself, until it is told to stop.
pub fn run(config: &Path) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(crate::runtime::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&format!("{e:#}"));
            // A bad config is the operator's to fix: exit 2, like `check-config`.
            if e.downcast_ref::<crate::config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `dome check-config`: the config file and the policy it names.
pub fn check_config(config: &Path) -> ExitCode {
    match crate::config::load(config) {
        Ok(_) => {
            // The policy is part of the configuration.
            let dir = match policy::policy_dir(config, None) {
                Ok(d) => d,
                Err(e) => {
                    print_error(&e);
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = crate::policy::load(&dir) {
                print_error(&crate::error_chain(&e));
                return ExitCode::from(2);
            }
            println!("{}: ok", config.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_error(&e);
            ExitCode::from(2)
        }
    }
}

/// `dome hash-key`: the SHA-256 (hex) of a key, as the config stores it.
pub fn hash_key(key: &str) -> ExitCode {
    println!(
        "{}",
        crate::identity::apikey::to_hex(&crate::identity::apikey::hash(key))
    );
    ExitCode::SUCCESS
}
