//! Policy: which calls are allowed, for whom, with which arguments and
//! intent, and with which obligations. The language, the compiler, the
//! reference interpreter and redaction are `dome_core::policy` (no I/O);
//! this shell reads policy folders (`read_dir`, `load`), runs their test
//! cases; the versions Dome activated are kept by `store::policy`.

// The decisions are `dome_core`'s (no I/O); here, where they always were.
pub use dome_core::policy::{compile, lang, redact, reference};

use std::path::{Path, PathBuf};

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

/// Why a policy folder does not load. Each says what failed; the I/O
/// error under it is its source (`dome::error_chain` reads
/// `policies: Permission denied (os error 13)`, as before).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The folder cannot be listed.
    #[error("{}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A policy file in it cannot be read.
    #[error("{}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The files do not compile (file, line and field in it).
    #[error(transparent)]
    Compile(#[from] compile::PolicyError),
    /// The policy's own test cases fail: refused like one that does not
    /// compile.
    #[error("{count} policy test(s) fail, first: {first}")]
    TestsFail { count: usize, first: String },
}

/// The policy sources in `dir` (file name, text), in name order. A missing
/// folder has none.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, LoadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LoadError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|source| LoadError::ReadFile {
                    path: p.clone(),
                    source,
                })
        })
        .collect()
}

/// Reads and compiles the policy in `dir`, and runs its test cases: a
/// policy whose tests fail is refused like one that does not compile.
pub fn load(dir: &Path) -> Result<compile::Policy, LoadError> {
    load_with_sources(dir).map(|(p, _)| p)
}

/// As [`load`], also returning the sources it compiled.
pub fn load_with_sources(
    dir: &Path,
) -> Result<(compile::Policy, Vec<(String, String)>), LoadError> {
    let sources = read_dir(dir)?;
    let policy = compile::compile(&sources)?;
    let mut failures = run_tests(&policy);
    if !failures.is_empty() {
        return Err(LoadError::TestsFail {
            count: failures.len(),
            first: failures.swap_remove(0),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_that_does_not_read_is_named_with_the_reason() {
        let file = std::env::temp_dir().join(format!("dome-policy-notdir-{}", std::process::id()));
        std::fs::write(&file, "").unwrap();
        let e = read_dir(&file).unwrap_err();
        let _ = std::fs::remove_file(&file);
        assert!(matches!(e, LoadError::ReadDir { .. }), "{e:?}");
        // What failed, then the I/O error: the text operators read.
        assert_eq!(
            crate::error_chain(&e),
            format!("{}: Not a directory (os error 20)", file.display())
        );
        let missing = read_dir(Path::new("/nonexistent/dome-policies")).unwrap();
        assert!(missing.is_empty(), "a missing folder has no sources");
    }
}
