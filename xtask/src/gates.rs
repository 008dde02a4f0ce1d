//! The gates of `cargo xtask test` beside the tests themselves: clippy with
//! `-D warnings`, and cargo-deny's licenses, bans and sources checks
//! (`deny.toml`).
//!
//! cargo-deny is not part of the toolchain, so a fresh machine builds it.
//! That build starts when the test command does, in the background at the
//! lowest CPU priority: it takes only what the tests leave idle (they wait
//! on sockets, subprocesses and links much of the time), and the check runs
//! at the end. Where the pinned cargo-deny is already installed the check
//! runs at the start instead, with the other quick gates.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo_cmd, ensure_component, tools, which};

/// cargo-deny, installed into `.tools/cargo-deny` when missing. This
/// version has no cargo features to leave out: it links no git or HTTP
/// library (advisories, not checked here, are fetched by running git).
const CARGO_DENY_VERSION: &str = "0.20.2";

/// The checks, after `cargo deny` (or the binary).
const DENY_CHECK: [&str; 5] = ["--locked", "check", "licenses", "bans", "sources"];

/// What the clippy gate runs, after `cargo`.
const CLIPPY: [&str; 6] = [
    "clippy",
    "--all-targets",
    "--all-features",
    "--",
    "-D",
    "warnings",
];

/// clippy over every target and feature of the default members; a warning
/// fails it.
pub(crate) fn clippy(root: &Path) -> Result<()> {
    ensure_component("clippy")?;
    let started = Instant::now();
    let status = cargo_cmd(root)
        .args(CLIPPY)
        // The XDP program is built for the bpf target by dome-user's build
        // script, which clippy runs as a build of its own, shared with no
        // other; clippy needs none of it (see `dome-user/build.rs`).
        .env("AYA_BUILD_SKIP", "1")
        .status()
        .context("running cargo clippy")?;
    if !status.success() {
        bail!(
            "clippy: warnings or errors above; `cargo {}` shows them (`cargo clippy --fix --all-targets --all-features` mends some)",
            CLIPPY.join(" ")
        );
    }
    println!(
        "clippy: no warnings ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether `bin` is the pinned cargo-deny.
fn is_pinned(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| {
            String::from_utf8_lossy(&o.stdout).trim() == format!("cargo-deny {CARGO_DENY_VERSION}")
        })
}

/// cargo-deny for the test command: there already, or being installed.
pub(crate) enum Deny {
    /// The pinned binary.
    Ready(PathBuf),
    /// Its install, under way in the background.
    Installing(Install),
}

/// A background `cargo install` of cargo-deny (in a process group of its
/// own, ended with the test command if that fails first).
pub(crate) struct Install {
    child: Child,
    bin: PathBuf,
    log: PathBuf,
    started: Instant,
}

impl Drop for Install {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill has no preconditions; the group is the child's own.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

impl Deny {
    /// The pinned cargo-deny already on PATH or in `.tools/cargo-deny`,
    /// else its install started in the background.
    pub(crate) fn start(root: &Path) -> Result<Deny> {
        if let Some(bin) = which("cargo-deny").filter(|b| is_pinned(b)) {
            return Ok(Deny::Ready(bin));
        }
        let install = tools(root).join("cargo-deny");
        let bin = install.join("bin/cargo-deny");
        if is_pinned(&bin) {
            return Ok(Deny::Ready(bin));
        }
        let log = root.join("target/cargo-deny-install.log");
        std::fs::create_dir_all(root.join("target"))?;
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!(
            "xtask: installing cargo-deny {CARGO_DENY_VERSION} into {} in the background (once; log: {})",
            install.display(),
            log.display()
        );
        let mut cmd = Command::new("nice");
        cmd.args([
            "-n",
            "19",
            "cargo",
            "install",
            "cargo-deny",
            "--locked",
            "--force",
        ])
        .args(["--version", CARGO_DENY_VERSION])
        // The debug profile: about a third of the CPU time of the
        // release profile's fat LTO, and the check takes a second or
        // two either way. No debug info: a quarter of the size.
        .arg("--debug")
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .arg("--root")
        .arg(&install)
        // The outer cargo's toolchain is not cargo-deny's, and a
        // target dir shared with the tests' would make them wait on
        // this build's lock.
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().context("starting cargo install cargo-deny")?;
        Ok(Deny::Installing(Install {
            child,
            bin,
            log,
            started: Instant::now(),
        }))
    }

    /// Checks now if cargo-deny is there; else hands back the install to
    /// be finished later.
    pub(crate) fn check_if_ready(self, root: &Path) -> Result<Option<Install>> {
        match self {
            Deny::Ready(bin) => check(root, &bin).map(|()| None),
            Deny::Installing(install) => Ok(Some(install)),
        }
    }
}

impl Install {
    /// Waits for the install to end, then checks.
    pub(crate) fn finish(mut self, root: &Path) -> Result<()> {
        let waited = Instant::now();
        let status = self
            .child
            .wait()
            .context("waiting for cargo install cargo-deny")?;
        if !status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
            bail!(
                "installing cargo-deny {CARGO_DENY_VERSION} failed ({status}); the log is {}, and `cargo install cargo-deny --locked --version {CARGO_DENY_VERSION} --root .tools/cargo-deny` retries it",
                self.log.display()
            );
        }
        println!(
            "cargo-deny: installed in {:.0} s, in the background ({:.0} s of it waited for here)",
            self.started.elapsed().as_secs_f64(),
            waited.elapsed().as_secs_f64()
        );
        check(root, &self.bin)
    }
}

fn check(root: &Path, bin: &Path) -> Result<()> {
    let started = Instant::now();
    let status = Command::new(bin)
        .args(DENY_CHECK)
        // Each duplicate's whole tree of dependents is pages of text for a
        // warning; the command the failure names shows them.
        .arg("--hide-inclusion-graph")
        .current_dir(root)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!(
            "cargo-deny: the dependency graph breaks deny.toml (above); `{} {}` checks it again. A license that is acceptable goes into deny.toml's allow-list; a source or a wildcard version has to go",
            bin.display(),
            DENY_CHECK.join(" ")
        );
    }
    println!(
        "cargo-deny: licenses, bans and sources pass ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
