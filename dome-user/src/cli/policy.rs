//! `dome policy`: check, test and diff policy folders offline; list and
//! roll back activated versions through the admin API.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Subcommand;

use super::{admin::admin, print_error};

/// `dome policy …`.
pub fn policy(config: &Path, cmd: PolicyCmd) -> ExitCode {
    let (dir, test_only) = match cmd {
        PolicyCmd::Check { dir } => (dir, false),
        PolicyCmd::Test { dir } => (dir, true),
        PolicyCmd::Versions => return admin(config, "GET", "/policy/versions", None),
        PolicyCmd::Diff { old, new, requests } => {
            return policy_diff(&old, &new, requests.as_deref());
        }
        PolicyCmd::Rollback { version } => {
            return admin(
                config,
                "POST",
                "/policy/rollback",
                Some(serde_json::json!({"version": version})),
            );
        }
    };
    let dir = match policy_dir(config, dir) {
        Ok(d) => d,
        Err(e) => {
            print_error(&e);
            return ExitCode::from(2);
        }
    };
    let sources = match crate::policy::read_dir(&dir) {
        Ok(s) => s,
        Err(e) => {
            print_error(&crate::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let policy = match crate::policy::compile::compile(&sources) {
        Ok(p) => p,
        Err(e) => {
            print_error(&e);
            return ExitCode::from(2);
        }
    };
    let failures = crate::policy::run_tests(&policy);
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
        eprintln!("FAIL {}", crate::terminal::escape_lines(&f.to_string()));
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(Subcommand)]
pub enum PolicyCmd {
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
    let compile = |d: &std::path::Path| -> Result<_, crate::policy::LoadError> {
        let sources = crate::policy::read_dir(d)?;
        Ok(crate::policy::compile::compile(&sources)?)
    };
    let (a, b) = match (compile(old), compile(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            print_error(&crate::error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let mut reqs: Vec<crate::policy::lang::TestRequest> = a
        .tests
        .iter()
        .chain(&b.tests)
        .map(|t| t.request.clone())
        .collect();
    if let Some(f) = requests {
        match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<Vec<crate::policy::lang::TestRequest>>(&t)
                    .map_err(|e| e.to_string())
            }) {
            Ok(more) => reqs.extend(more),
            Err(e) => {
                print_error(&format!("{}: {e}", f.display()));
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
                crate::terminal::json(&serde_json::to_string(r).unwrap_or_default())
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

pub(crate) fn policy_dir(
    config: &std::path::Path,
    dir: Option<PathBuf>,
) -> Result<PathBuf, crate::config::ConfigError> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let cfg = crate::config::load(config)?;
    Ok(if cfg.policy.dir.is_absolute() {
        cfg.policy.dir
    } else {
        config
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(cfg.policy.dir)
    })
}
