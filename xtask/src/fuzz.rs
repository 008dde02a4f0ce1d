//! `cargo xtask fuzz`, the fuzz smoke of `cargo xtask test` and
//! `cargo xtask bench fuzz`: cargo-fuzz (libFuzzer) on the targets in
//! `fuzz/`, each started from its committed seeds (`fuzz/corpus/<target>`).
//!
//! What a run finds goes under `target/fuzz`: the grown corpus
//! (`corpus/<target>`, so the committed seeds never change under a run),
//! crash inputs (`artifacts/<target>`) and libFuzzer's output (`logs`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{NIGHTLY, run_status, tools};

/// cargo-fuzz, installed into `.tools/cargo-fuzz` when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// Every target in `fuzz/fuzz_targets`.
pub(crate) const TARGETS: [&str; 7] = [
    "envelope",
    "h1",
    "sse",
    "audit_recover",
    "policy",
    "config",
    "auth",
];

/// What one run of a target did.
pub(crate) struct Outcome {
    pub execs: u64,
    /// Inputs that crashed (or hung, or ran out of memory), written under
    /// `target/fuzz/artifacts/<target>`.
    pub crashes: Vec<PathBuf>,
    /// How long the run took (libFuzzer's start-up and corpus loading
    /// included).
    pub seconds: f64,
}

/// Whether `bin` is the pinned cargo-fuzz.
fn is_pinned(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
}

/// The pinned cargo-fuzz: one already on PATH (`~/.cargo/bin`), else the
/// one in `.tools/cargo-fuzz`, installed there the first time.
fn cargo_fuzz(root: &Path) -> Result<PathBuf> {
    if let Some(bin) = crate::which("cargo-fuzz").filter(|b| is_pinned(b)) {
        return Ok(bin);
    }
    let install = tools(root).join("cargo-fuzz");
    let bin = install.join("bin/cargo-fuzz");
    if is_pinned(&bin) {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (a few minutes, once)",
        install.display()
    );
    run_status(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--force", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(&install)
            // The outer cargo's choice of toolchain is not cargo-fuzz's.
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC"),
    )?;
    Ok(bin)
}

/// cargo-fuzz with the nightly toolchain (sanitizers and coverage flags
/// are nightly-only) and bpf-linker on PATH (dome-user's build script
/// builds the XDP program).
fn command(root: &Path, bin: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("fuzz").current_dir(root);
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(var);
    }
    c.env("RUSTUP_TOOLCHAIN", NIGHTLY);
    c.env("PATH", crate::path_with_tools(root));
    c
}

fn target_dir(root: &Path) -> PathBuf {
    root.join("target/fuzz")
}

/// Where a build of the targets goes: with AddressSanitizer (what `fuzz`
/// and the smoke run), or without (`plain`).
fn build_dir(root: &Path, plain: bool) -> PathBuf {
    target_dir(root).join(if plain { "build-plain" } else { "build" })
}

/// Targets `bench fuzz` runs from a build without AddressSanitizer: safe
/// Rust only (ASan is there for simd-json's unsafe code, which the envelope
/// target reaches), too slow with it to reach [`BENCH_EXECS`]. policy: about
/// 160 executions a second with ASan, about 900 without (every input is a
/// new policy: TOML parsed, regexes compiled).
const BENCH_PLAIN: [&str; 1] = ["policy"];

/// Builds every target (one build serves them all; later runs reuse it).
pub(crate) fn build(root: &Path) -> Result<()> {
    build_with(root, false, &[])
}

/// Builds `targets` (all when empty), without AddressSanitizer if `plain`.
fn build_with(root: &Path, plain: bool, targets: &[&str]) -> Result<()> {
    crate::setup(root)?;
    let bin = cargo_fuzz(root)?;
    let started = Instant::now();
    // cargo fuzz builds the target it is given, else all of them.
    let each: Vec<Option<&str>> = if targets.is_empty() {
        vec![None]
    } else {
        targets.iter().map(|t| Some(*t)).collect()
    };
    for t in each {
        let mut c = command(root, &bin);
        c.arg("build");
        if plain {
            c.args(["--sanitizer", "none"]);
        }
        c.arg("--target-dir").arg(build_dir(root, plain)).args(t);
        run_status(&mut c).context("building the fuzz targets")?;
    }
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `target` for `seconds` from its seeds (after [`build`]).
/// `seed`: libFuzzer's random seed; a fixed one makes a run try the same
/// inputs in the same order each time (the smoke in `cargo xtask test`,
/// so a test run never fails on an input no earlier run tried).
/// `runs`: stop after that many executions, if sooner than `seconds`.
pub(crate) fn run(
    root: &Path,
    target: &str,
    seconds: u64,
    seed: Option<u64>,
    runs: Option<u64>,
) -> Result<Outcome> {
    run_from(root, target, seconds, seed, runs, false)
}

/// As [`run`], from the build without AddressSanitizer if `plain`.
fn run_from(
    root: &Path,
    target: &str,
    seconds: u64,
    seed: Option<u64>,
    runs: Option<u64>,
    plain: bool,
) -> Result<Outcome> {
    if !TARGETS.contains(&target) {
        bail!(
            "unknown fuzz target `{target}`; available: {}",
            TARGETS.join(", ")
        );
    }
    let bin = cargo_fuzz(root)?;
    let dir = target_dir(root);
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    let logs = dir.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d)?;
    }
    let before = files(&artifacts)?;
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)?;
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s{} (log: {})",
        runs.map(|r| format!(" or {r} executions, whichever comes first"))
            .unwrap_or_default(),
        log_path.display()
    );
    let started = Instant::now();
    let mut c = command(root, &bin);
    c.arg("run");
    if plain {
        c.args(["--sanitizer", "none"]);
    }
    let status = c
        .arg("--target-dir")
        .arg(build_dir(root, plain))
        .arg(target)
        // New inputs go to the first folder; the seeds are only read.
        .arg(&corpus)
        .arg(root.join("fuzz/corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(seed.map(|s| format!("-seed={s}")))
        .args(runs.map(|r| format!("-runs={r}")))
        .arg("-print_final_stats=1")
        // A hang is a finding too.
        .arg("-timeout=10")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(log.try_clone()?)
        .status()
        .context("running cargo fuzz")?;
    let text = std::fs::read_to_string(&log_path)?;
    let execs = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let crashes: Vec<PathBuf> = files(&artifacts)?
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if !status.success() && crashes.is_empty() {
        bail!(
            "cargo fuzz run {target} failed ({status}) without a crash input; see {}",
            log_path.display()
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "xtask: {target}: {execs} executions in {seconds:.0} s, {} crash(es)",
        crashes.len()
    );
    for c in &crashes {
        eprintln!(
            "xtask: {target} crashed on {}; reproduce with `{} fuzz run {target} {}`",
            c.display(),
            bin.display(),
            c.display()
        );
    }
    Ok(Outcome {
        execs,
        crashes,
        seconds,
    })
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_file() {
            out.push(p);
        }
    }
    Ok(out)
}

/// Runs each of `targets` for `seconds`; fails naming every target that
/// crashed.
pub(crate) fn run_all(
    root: &Path,
    targets: &[&str],
    seconds: u64,
    seed: Option<u64>,
) -> Result<Vec<(String, Outcome)>> {
    build(root)?;
    let mut out = Vec::new();
    for t in targets {
        out.push((t.to_string(), run(root, t, seconds, seed, None)?));
    }
    let crashed: Vec<&str> = out
        .iter()
        .filter(|(_, o)| !o.crashes.is_empty())
        .map(|(t, _)| t.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}", crashed.join(", "));
    }
    Ok(out)
}

/// What `bench fuzz` asks of each target: this many executions.
const BENCH_EXECS: u64 = 1_000_000;

/// The most `bench fuzz` gives a target to reach [`BENCH_EXECS`]: about
/// twice what it takes on a 2-core machine shared with builds (seconds to
/// 1,000,000 in such a run: h1 47, auth 104, envelope 117, audit_recover
/// 148, config 213 (twice that at busier times), sse 566), so a busy
/// machine still gets there. policy runs without ASan ([`BENCH_PLAIN`]):
/// about 900 a second alone, so 1,000,000 in some 19 minutes.
fn bench_seconds(target: &str) -> u64 {
    match target {
        "policy" => 2400,
        "sse" => 1200,
        "config" => 900,
        "envelope" | "audit_recover" | "auth" => 300,
        _ => 180,
    }
}

/// `cargo xtask bench fuzz`: every target until [`BENCH_EXECS`]
/// executions or [`bench_seconds`]; writes `target/bench/fuzz.json` as
/// `{target: {execs, crashes, seconds}}`; fails when a target crashed or
/// fell short of the executions.
pub(crate) fn bench(root: &Path) -> Result<()> {
    build(root)?;
    build_with(root, true, &BENCH_PLAIN)?;
    let mut json = String::from("{");
    let (mut crashed, mut short) = (Vec::new(), Vec::new());
    for (i, t) in TARGETS.iter().enumerate() {
        let plain = BENCH_PLAIN.contains(t);
        let o = run_from(root, t, bench_seconds(t), None, Some(BENCH_EXECS), plain)?;
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            "\"{t}\":{{\"execs\":{},\"crashes\":{},\"seconds\":{:.0}}}",
            o.execs,
            o.crashes.len(),
            o.seconds
        ));
        if !o.crashes.is_empty() {
            crashed.push(*t);
        }
        if o.execs < BENCH_EXECS {
            short.push(format!("{t} ({})", o.execs));
        }
    }
    json.push('}');
    let path = root.join("target/bench/fuzz.json");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, &json)?;
    println!("{json}");
    println!("wrote {}", path.display());
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}", crashed.join(", "));
    }
    if !short.is_empty() {
        bail!(
            "fuzz targets short of {BENCH_EXECS} executions: {}",
            short.join(", ")
        );
    }
    Ok(())
}
