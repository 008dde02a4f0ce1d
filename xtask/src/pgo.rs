//! Profile-guided optimisation of the `dome` binary.
//!
//! An instrumented build runs the training workload (`bench-e2e train`:
//! both protocol eras, with and without API keys, the audit trail with and
//! without fsync), `llvm-profdata` merges the profiles it writes, and the
//! optimised build reads them. On this 2-core VM that takes about a fifth
//! off Dome's CPU per call (`bench e2e`'s `plain_build` beside it), mostly
//! from code layout: Dome's path is long, and it runs on caches the load
//! generator and the upstream refill between calls.
//!
//! The merged profile is cached under `target/pgo`, named by a hash of
//! everything that shapes the binary (sources, lock file, compiler), so the
//! training runs again only when one of them changes. Each build has its
//! own target directory, so switching between them rebuilds nothing.

use std::{
    hash::Hasher,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{cargo_cmd, output, run_status};

pub(crate) const DIR: &str = "target/pgo";

/// The PGO build of `dome`, built (and trained, when its profile is stale)
/// as needed; `None` with a warning when `llvm-profdata` cannot be had.
/// Expects the plain release build in place (the trainer and the demo
/// upstream come from it).
pub(crate) fn dome(root: &Path) -> Result<Option<PathBuf>> {
    // `rustc -vV`: names the host, and is part of the profile's key.
    let rustc = output(Command::new("rustc").arg("-vV"))?;
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .context("rustc -vV names no host")?
        .to_owned();
    let Some(profdata) = llvm_profdata(&host)? else {
        eprintln!(
            "xtask: warning: no llvm-profdata (rustup component llvm-tools); building dome without PGO"
        );
        return Ok(None);
    };
    let dir = root.join(DIR);
    let key = source_key(root, &rustc)?;
    let merged = dir.join(format!("dome-{key:016x}.profdata"));
    if !merged.is_file() {
        train(root, &dir, &host, &profdata, &merged)?;
    }
    eprintln!("xtask: building dome with the profile {}", merged.display());
    // Relocations kept in the binary, so BOLT can lay its code out again.
    build(
        root,
        &dir.join("use"),
        &host,
        &format!(
            "-Cprofile-use={} -Cllvm-args=-pgo-warn-missing-function=false -Clink-arg=-Wl,--emit-relocs",
            merged.display()
        ),
    )?;
    Ok(Some(dir.join("use").join(&host).join("release/dome")))
}

/// Runs the training workload (`bench-e2e train`) on an instrumented
/// `dome`; its profiles land in `raw`.
pub(crate) fn run_training(root: &Path, instrumented: &Path, raw: &Path) -> Result<()> {
    run_status(
        Command::new(root.join("target/release/bench-e2e"))
            .arg("train")
            .arg(instrumented)
            .arg(raw),
    )
}

/// Instrumented build, training run, merge into `merged` (older profiles removed).
fn train(root: &Path, dir: &Path, host: &str, profdata: &Path, merged: &Path) -> Result<()> {
    eprintln!(
        "xtask: training dome for PGO (an instrumented build and a short run, once per source change)"
    );
    let raw = dir.join("raw");
    let _ = std::fs::remove_dir_all(&raw);
    std::fs::create_dir_all(&raw)?;
    build(
        root,
        &dir.join("gen"),
        host,
        &format!("-Cprofile-generate={}", raw.display()),
    )?;
    run_training(root, &dir.join("gen").join(host).join("release/dome"), &raw)?;
    let profiles = files_with_extension(&raw, "profraw")?;
    for old in files_with_extension(dir, "profdata")? {
        std::fs::remove_file(&old)?;
    }
    run_status(
        Command::new(profdata)
            .args(["merge", "-o"])
            .arg(merged)
            .args(&profiles),
    )
}

/// `dome` alone with `rustflags`, for the host given explicitly so the
/// flags reach only the target's code (not build scripts or proc macros;
/// the XDP program's build sets its own).
fn build(root: &Path, target_dir: &Path, host: &str, rustflags: &str) -> Result<()> {
    run_status(
        cargo_cmd(root)
            .args(["build", "--release", "-p", "dome-user", "--bin", "dome"])
            .args(["--target", host, "--target-dir"])
            .arg(target_dir)
            .env("RUSTFLAGS", rustflags),
    )
}

/// The toolchain's own `llvm-profdata` (the `llvm-tools` component, whose
/// LLVM is rustc's), added with rustup when missing.
fn llvm_profdata(host: &str) -> Result<Option<PathBuf>> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let path = PathBuf::from(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !path.is_file() {
        eprintln!("xtask: adding the llvm-tools component (llvm-profdata, for the PGO build)");
        let added = Command::new("rustup")
            .args(["component", "add", "llvm-tools"])
            .status();
        if !added.is_ok_and(|s| s.success()) {
            return Ok(None);
        }
    }
    Ok(path.is_file().then_some(path))
}

/// FNV-1a over the compiler's version and every file that shapes `dome` or
/// its training, in a fixed order (stable across runs and Rust releases,
/// unlike std's hasher).
fn source_key(root: &Path, rustc: &str) -> Result<u64> {
    let mut files = Vec::new();
    for dir in ["dome-user/src", "dome-common/src"] {
        walk(&root.join(dir), &mut files)?;
    }
    files.sort();
    for f in [
        "Cargo.lock",
        "Cargo.toml",
        "dome-user/Cargo.toml",
        "dome-user/build.rs",
        "dome-common/Cargo.toml",
        "bench/src/bin/e2e/main.rs",
        "bench/src/bin/e2e/train.rs",
    ] {
        files.push(root.join(f));
    }
    let mut h = Fnv1a::default();
    h.write(rustc.as_bytes());
    for f in &files {
        h.write(
            f.strip_prefix(root)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.write(&std::fs::read(f).with_context(|| format!("reading {}", f.display()))?);
    }
    Ok(h.finish())
}

/// The files in `dir` (not below) whose extension is `ext`.
pub(crate) fn files_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

pub(crate) struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv1a::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }
}
