//! Policy: which calls are allowed, for whom, with which arguments and
//! intent, and with which obligations. The language, the compiler, the
//! reference interpreter and redaction are `dome_core::policy` (no I/O);
//! this shell reads policy folders (`read_dir`, `load`), runs their test
//! cases; the versions Dome activated are kept by `store::policy`.

// The decisions are `dome_core`'s (no I/O); here, where they always were.
pub use dome_core::policy::{compile, lang, redact, reference};

use std::path::Path;

/// `[policy]`: where the policy files are.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A folder of `*.toml` policy files, read in name order; relative to
    /// the config file. Without any rule every tool call is denied.
    #[serde(default = "default_dir")]
    pub dir: std::path::PathBuf,
    /// A candidate policy folder evaluated beside the active one on live
    /// traffic without enforcing: disagreements are counted and logged.
    #[serde(default)]
    pub shadow_dir: Option<std::path::PathBuf>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: default_dir(),
            shadow_dir: None,
        }
    }
}

fn default_dir() -> std::path::PathBuf {
    "policies".into()
}

/// The policy sources in `dir` (file name, text), in name order. A missing
/// folder has none.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect()
}

/// Reads and compiles the policy in `dir`, and runs its test cases: a
/// policy whose tests fail is refused like one that does not compile.
pub fn load(dir: &Path) -> Result<compile::Policy, String> {
    load_with_sources(dir).map(|(p, _)| p)
}

/// As [`load`], also returning the sources it compiled.
pub fn load_with_sources(dir: &Path) -> Result<(compile::Policy, Vec<(String, String)>), String> {
    let sources = read_dir(dir)?;
    let policy = compile::compile(&sources).map_err(|e| e.to_string())?;
    let failures = run_tests(&policy);
    if let Some(f) = failures.first() {
        return Err(format!(
            "{} policy test(s) fail, first: {f}",
            failures.len()
        ));
    }
    Ok((policy, sources))
}

/// Runs the policy's test cases; returns a line per failure.
pub fn run_tests(policy: &compile::Policy) -> Vec<String> {
    let mut failures = Vec::new();
    for t in &policy.tests {
        let d = policy.decide(&t.request.as_request());
        if d.effect() != t.expect {
            failures.push(format!("`{}`: expected {:?}, got {d:?}", t.name, t.expect));
        }
    }
    failures
}
