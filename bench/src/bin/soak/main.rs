//! `cargo xtask soak --minutes N`: Dome in front of the demo upstream under
//! a mixed load for N minutes, at 80% of the most that mix reaches on this
//! machine (measured first, closed loop). The mix (see `load`) covers both
//! protocol eras, allowed, denied and over-budget calls, streamed calls
//! with progress and both ways of cancelling one. Meanwhile the
//! configuration is rewritten every 30 s (Dome reloads it) and the
//! upstream is killed and started again once.
//!
//! Every answer is judged against what its kind of call may get; anything
//! else (a 5xx, a connection error, a malformed answer, an error the
//! upstream's restart does not explain) is an unexpected error. Dome's
//! open files are sampled after the warm-up (the first 20% of the run) and
//! at the end, both times with the load paused and no client connection
//! open. Its memory is sampled every 5 s under load: RSS growth compares
//! the median of the last minute with that of the first minute after the
//! warm-up. (Two single samples with the load paused were compared
//! before; they swung from -7% to +17% between runs of the same code, the
//! allocator returning freed pages about 1 s after the last free, just as
//! the sample was taken. Under the same load the series shows whether
//! memory climbs with calls; the least-squares trend is reported too.) After Dome stops, every
//! answered call's intent (`soak-<n>`, one per call) must be in the audit
//! trail once, with the decision its answer showed, and `dome audit
//! verify` must pass. Writes `target/bench/soak.json`; exits non-zero when
//! a target is missed.
//!
//! `--seconds N` (hidden) runs shorter, for development.

mod load;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use bench::harness::{Kill, free_port, wait_port};
use dome::identity::apikey;
use http_body_util::{BodyExt, Full};
use load::{Ctx, PATTERN};
use serde_json::{Value, json};

/// The share of the measured maximum the soak runs at.
const LOAD_SHARE: f64 = 0.8;
/// The share of the run before the baseline samples.
const WARMUP_SHARE: f64 = 0.2;
const RELOAD_EVERY: Duration = Duration::from_secs(30);
const CALIBRATION_WARMUP: Duration = Duration::from_secs(2);
const CALIBRATION_RUN: Duration = Duration::from_secs(8);
/// Operations in flight in the closed-loop calibration: enough that the
/// streamed calls' waits do not leave the cores idle.
const CALIBRATION_CONCURRENCY: usize = 64;
/// Operations in flight at most during the soak; the pacer waits beyond.
const MAX_IN_FLIGHT: u32 = 512;
/// How long the upstream stays down.
const UPSTREAM_DOWN: Duration = Duration::from_secs(2);
/// After the upstream is back, how long calls may still fail because of
/// the restart (Dome lists it again on the next call that needs it).
const RESTART_GRACE: Duration = Duration::from_secs(5);
/// Load paused and connections closed this long before a sample.
const QUIET: Duration = Duration::from_secs(1);
const RSS_GROWTH_MAX_PCT: f64 = 10.0;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn duration_arg() -> anyhow::Result<Duration> {
    const USAGE: &str = "usage: bench-soak --minutes N (or --seconds N)";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag, n] = args.as_slice() else {
        bail!(USAGE);
    };
    let n: f64 = n.parse().context(USAGE)?;
    let secs = match flag.as_str() {
        "--minutes" => n * 60.0,
        "--seconds" => n,
        _ => bail!(USAGE),
    };
    ensure!(secs >= 10.0, "a soak runs at least 10 s");
    Ok(Duration::from_secs_f64(secs))
}

/// Where everything lives and what the config file says.
#[derive(Clone)]
struct Setup {
    dir: PathBuf,
    config: PathBuf,
    dome: SocketAddr,
    stats: SocketAddr,
    upstream: SocketAddr,
    key_hash: String,
    poor_hash: String,
}

impl Setup {
    /// Writes the config file, `generation` in a comment and an agent's
    /// name: a change Dome reloads without changing what any call gets.
    /// Written beside and renamed, as an operator's tool should.
    fn write_config(&self, generation: u32) -> anyhow::Result<()> {
        let Setup {
            dome,
            stats,
            upstream,
            key_hash,
            poor_hash,
            ..
        } = self;
        let text = format!(
            r#"# The soak's Dome (written by bench-soak), generation {generation}.
[server]
listen = "{dome}"
max_connections_per_agent = 100000
[stats]
listen = "{stats}"
[xdp]
# Measured by `bench xdp`; here every call should reach user space.
enabled = false
[[upstream]]
name = "demo"
url = "http://{upstream}/mcp"
prefix = "never"
# One agent stands for a fleet of clients here (up to 512 operations in
# flight): per-agent shares are as large as the whole, as for budgets, and
# the whole holds every operation the soak may have in flight, so a pile-up
# (a reload's pause) waits for slots instead of being refused as overload
# (-32004, which one 10-minute run met 19 times at 256 slots).
max_concurrent_requests = {MAX_IN_FLIGHT}
max_requests_per_agent = {MAX_IN_FLIGHT}
[auth]
required = true
data_dir = "data"
[[tenant]]
name = "soak"
budget = {{ calls_per_s = 1e9, burst = 1000000000 }}
[[agent]]
id = "soak-agent"
tenant = "soak"
name = "Soak agent, generation {generation}"
labels = ["support"]
api_keys = ["{key_hash}"]
budget = {{ calls_per_s = 1e9, burst = 1000000000 }}
# Refused most of its calls: the over-budget path.
[[agent]]
id = "soak-poor"
tenant = "soak"
api_keys = ["{poor_hash}"]
budget = {{ calls_per_s = 2.0, burst = 2 }}
[policy]
dir = "policies"
[audit]
fsync = "batch"
# Denied and over-budget calls are strikes; the soak makes hundreds a
# second on purpose and measures those paths, not the block that
# escalation would soon put on the agents (its own tests cover that).
[escalation]
max_strikes = 1000000
window_s = 1
"#
        );
        let tmp = self.config.with_extension("toml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }
}

const POLICY: &str = r#"# The soak's policy: echo, slow and whoami allowed; records for support
# agents, a few at a time and redacted; echo of anything "forbidden" denied.
[[rule]]
id = "soak-basics"
effect = "allow"
[rule.when]
tenant = "soak"
tool = ["echo", "slow", "whoami"]

[[rule]]
id = "soak-records"
effect = "allow"
[rule.when]
tenant = "soak"
labels = ["support"]
tool = "records"
args = [{ path = "/count", op = "range", min = 1, max = 20 }]
[rule.obligations]
redact = ["email", "card"]

[[rule]]
id = "soak-no-forbidden"
effect = "deny"
reason = "forbidden messages are not echoed"
[rule.when]
tool = "echo"
args = [{ path = "/message", op = "regex", value = "forbidden" }]
"#;

/// The demo upstream, on a fixed address so it can be restarted there.
struct Upstream {
    bin: PathBuf,
    addr: SocketAddr,
    proc: Mutex<Option<Kill>>,
}

impl Upstream {
    fn spawn(&self) -> anyhow::Result<()> {
        let child = Command::new(&self.bin)
            .arg(self.addr.to_string())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        *self.proc.lock().expect("upstream") = Some(Kill(child));
        Ok(())
    }

    fn kill(&self) {
        drop(self.proc.lock().expect("upstream").take());
    }
}

/// Resident memory (kB) and open files of a process.
/// Memory growth from the series sampled under load.
struct RssGrowth {
    first_median: u64,
    last_median: u64,
    growth_pct: f64,
    /// Least-squares slope after the warm-up, relative to the mean.
    trend_pct_per_10_min: f64,
}

impl RssGrowth {
    fn of(series: &[[u64; 4]], warm_s: f64, run_s: f64) -> RssGrowth {
        let after: Vec<(f64, f64)> = series
            .iter()
            .map(|r| (r[0] as f64, r[1] as f64))
            .filter(|(t, _)| *t >= warm_s)
            .collect();
        // A minute, or a quarter of what follows the warm-up in short runs.
        let window = 60f64.min((run_s - warm_s) / 4.0);
        let median = |mut v: Vec<u64>| -> u64 {
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let first_median = median(
            after
                .iter()
                .filter(|(t, _)| *t < warm_s + window)
                .map(|(_, r)| *r as u64)
                .collect(),
        );
        let last_median = median(
            after
                .iter()
                .filter(|(t, _)| *t >= run_s - window)
                .map(|(_, r)| *r as u64)
                .collect(),
        );
        let growth_pct =
            (last_median as f64 - first_median as f64) / first_median.max(1) as f64 * 100.0;
        let n = after.len().max(1) as f64;
        let (mt, mr) = (
            after.iter().map(|p| p.0).sum::<f64>() / n,
            after.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let var: f64 = after.iter().map(|(t, _)| (t - mt).powi(2)).sum();
        let cov: f64 = after.iter().map(|(t, r)| (t - mt) * (r - mr)).sum();
        let slope = if var > 0.0 { cov / var } else { 0.0 };
        RssGrowth {
            first_median,
            last_median,
            growth_pct,
            trend_pct_per_10_min: slope * 600.0 / mr.max(1.0) * 100.0,
        }
    }
}

/// RssAnon and RssFile (kB): the heap's pages apart from the binary's
/// (code paths run for the first time fault its pages in).
fn rss_split(pid: u32) -> [u64; 2] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    [field("RssAnon:"), field("RssFile:")]
}

fn footprint(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss, fds)
}

/// What the soak phase saw besides the tally.
struct Phase {
    max_ops_per_s: f64,
    calibration_ops: u64,
    calibration_calls: u64,
    ops: u64,
    loaded_s: f64,
    warm: (u64, usize),
    end: (u64, usize),
    rss_max_kb: u64,
    /// [seconds into the run, VmRSS, RssAnon, RssFile (kB)], every 10 s.
    rss_series: Vec<[u64; 4]>,
    reloads_written: u32,
    restart_at_s: f64,
    /// What Dome holds at each sample.
    held: Value,
    stats: Value,
}

fn run() -> anyhow::Result<bool> {
    let run_for = duration_arg()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/bench/soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies"))?;
    std::fs::write(dir.join("policies/soak.toml"), POLICY)?;
    let (key, hash) = apikey::generate("soak-agent");
    let (poor_key, poor_hash) = apikey::generate("soak-poor");
    let addr = |port| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], port)) };
    let setup = Setup {
        config: dir.join("dome.toml"),
        dir,
        dome: addr(free_port()),
        stats: addr(free_port()),
        upstream: addr(free_port()),
        key_hash: apikey::to_hex(&hash),
        poor_hash: apikey::to_hex(&poor_hash),
    };
    setup.write_config(0)?;
    let upstream = Arc::new(Upstream {
        bin: root.join("target/release/dome-demo-upstream"),
        addr: setup.upstream,
        proc: Mutex::default(),
    });
    upstream.spawn()?;
    wait_port(setup.upstream)?;
    // `SOAK_DOME=path` soaks another build.
    let dome_bin = std::env::var_os("SOAK_DOME")
        .map_or_else(|| root.join("target/release/dome"), PathBuf::from);
    let log = std::fs::File::create(setup.dir.join("dome.log"))?;
    let mut dome = Kill(
        Command::new(&dome_bin)
            .arg("--config")
            .arg(&setup.config)
            .env("DOME_LOG", "warn")
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", dome_bin.display()))?,
    );
    wait_port(setup.dome)?;
    let pid = dome.0.id();
    let ctx = Arc::new(Ctx::new(setup.dome, key, poor_key));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "soak: {:.0} s; Dome pid {pid} on {}, log in {}",
        run_for.as_secs_f64(),
        setup.dome,
        setup.dir.join("dome.log").display()
    );
    let phase = rt.block_on(soak(&ctx, &setup, &upstream, pid, run_for))?;
    drop(rt);

    // Dome stops the way an operator stops it, and must exit cleanly.
    // SAFETY: kill has no memory preconditions; pid is our own live child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = dome.0.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "Dome did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    upstream.kill();

    let tally = std::mem::take(&mut *ctx.tally.lock().expect("tally"));
    let audit = check_trail(&dome_bin, &setup.config, &tally)?;
    let verify = Command::new(&dome_bin)
        .arg("--config")
        .arg(&setup.config)
        .args(["audit", "verify"])
        .output()
        .context("running dome audit verify")?;
    let verify_ok = verify.status.success();

    let warm_s = run_for.as_secs_f64() * WARMUP_SHARE;
    let rss = RssGrowth::of(&phase.rss_series, warm_s, run_for.as_secs_f64());
    let rss_growth_pct = rss.growth_pct;
    let fd_growth = phase.end.1 as i64 - phase.warm.1 as i64;
    let reloads_applied = phase.stats["config"]["reloads"].as_u64().unwrap_or(0);
    let soak_calls = tally.calls - phase.calibration_calls;
    let mut misses = Vec::new();
    if tally.unexpected > 0 {
        misses.push(format!("{} unexpected errors", tally.unexpected));
    }
    if rss_growth_pct >= RSS_GROWTH_MAX_PCT {
        misses.push(format!("RSS grew {rss_growth_pct:.1}% after warm-up"));
    }
    if audit.not_in_audit > 0 {
        misses.push(format!(
            "{} answered calls not in the trail",
            audit.not_in_audit
        ));
    }
    if audit.mismatched > 0 || audit.duplicates > 0 {
        misses.push(format!(
            "{} calls recorded with another outcome than their answer, {} recorded twice",
            audit.mismatched, audit.duplicates
        ));
    }
    if !verify_ok {
        misses.push("dome audit verify failed".into());
    }
    if reloads_applied < u64::from(phase.reloads_written) {
        misses.push(format!(
            "{} config rewrites, {reloads_applied} reloads",
            phase.reloads_written
        ));
    }
    if !exit.success() {
        misses.push(format!("Dome exited with {exit} on SIGTERM"));
    }
    let report = json!({
        "minutes": run_for.as_secs_f64() / 60.0,
        "calls": tally.calls,
        "unexpected_errors": tally.unexpected,
        "rss_growth_pct": (rss_growth_pct * 100.0).round() / 100.0,
        "fd_growth": fd_growth,
        "answered_not_in_audit": audit.not_in_audit,
        "verify_ok": verify_ok,
        "targets_met": misses.is_empty(),
        "missed": misses,
        "rate": {
            "max_ops_per_s": phase.max_ops_per_s.round(),
            "target_ops_per_s": (phase.max_ops_per_s * LOAD_SHARE).round(),
            "achieved_ops_per_s": (phase.ops as f64 / phase.loaded_s).round(),
            "calls_per_s": (soak_calls as f64 / phase.loaded_s).round(),
        },
        "calibration": {"ops": phase.calibration_ops, "calls": phase.calibration_calls,
                        "seconds": (CALIBRATION_WARMUP + CALIBRATION_RUN).as_secs()},
        "other_requests": tally.requests,
        "outcomes": tally.outcomes,
        "unexpected_samples": tally.samples,
        "upstream_restart": {
            "at_s": phase.restart_at_s,
            "down_s": UPSTREAM_DOWN.as_secs_f64(),
            "grace_s": RESTART_GRACE.as_secs_f64(),
            "failures_in_window": tally.restart_window,
        },
        "reloads": {"written": phase.reloads_written, "applied": reloads_applied,
                    "last": phase.stats["config"]["last_reload"]},
        "rss_kb": {"first_minute_median": rss.first_median, "last_minute_median": rss.last_median,
                   "trend_pct_per_10_min": (rss.trend_pct_per_10_min * 100.0).round() / 100.0,
                   "max": phase.rss_max_kb,
                   "quiet": {"after_warmup": phase.warm.0, "end": phase.end.0},
                   "series": phase.rss_series},
        "fds": {"after_warmup": phase.warm.1, "end": phase.end.1},
        "held": phase.held,
        "audit": {
            "records": audit.records,
            "answered": tally.answered.len(),
            "answered_not_in_audit": audit.not_in_audit,
            "recorded_otherwise": audit.mismatched,
            "recorded_twice": audit.duplicates,
            "samples": audit.samples,
            "cancelled": tally.cancelled.len(),
            "cancelled_in_audit": audit.cancelled_found,
            "cancelled_outcomes": audit.cancelled_outcomes,
            "stats": phase.stats["audit"],
            "verify": String::from_utf8_lossy(&verify.stdout).trim().to_string()
                + &String::from_utf8_lossy(&verify.stderr),
        },
        "dome_exit": exit.to_string(),
        "mix": PATTERN.iter().map(|op| format!("{op:?}")).collect::<Vec<_>>(),
        "statistic": "calls: every tools/call sent (calibration included); unexpected_errors: answers no call of its kind may get, connection errors and malformed answers, outside the upstream restart's window (failures_in_window are those inside it); rss_growth_pct: the median of Dome's VmRSS over the last minute against that over the first minute after the warm-up (the first 20% of the run), sampled every 5 s under load (rss_kb.trend_pct_per_10_min: the least-squares trend after the warm-up; rss_kb.quiet: single samples with the load paused); fd_growth: Dome's open files at the end against after the warm-up, with the load paused and no client connection open; answered_not_in_audit: calls that got a JSON-RPC answer whose intent (soak-<n>, one per call) is not in `dome audit export` after Dome stopped; verify_ok: `dome audit verify` exit status",
    });
    bench::report("soak", &report)?;
    if !misses.is_empty() {
        eprintln!("soak: targets missed: {}", misses.join("; "));
    }
    Ok(misses.is_empty())
}

/// Calibration, then the soak proper with its reloads and restart.
async fn soak(
    ctx: &Arc<Ctx>,
    setup: &Setup,
    upstream: &Arc<Upstream>,
    pid: u32,
    run_for: Duration,
) -> anyhow::Result<Phase> {
    // Calibration: closed loop, the most this mix reaches here.
    let next_op = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Instant::now() + CALIBRATION_WARMUP + CALIBRATION_RUN;
    let mut tasks = Vec::new();
    for _ in 0..CALIBRATION_CONCURRENCY {
        let (ctx, next_op, done, measuring) = (
            ctx.clone(),
            next_op.clone(),
            done.clone(),
            measuring.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                let i = next_op.fetch_add(1, Ordering::Relaxed) as usize;
                ctx.run(PATTERN[i % PATTERN.len()]).await;
                if measuring.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(CALIBRATION_WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    for t in tasks {
        t.await?;
    }
    let max_ops_per_s = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    let calibration_ops = next_op.load(Ordering::Relaxed);
    let calibration_calls = ctx.tally.lock().expect("tally").calls;
    ensure!(
        max_ops_per_s > 1.0,
        "calibration: {max_ops_per_s:.1} operations/s"
    );
    let rate = max_ops_per_s * LOAD_SHARE;
    println!("soak: the mix peaks at {max_ops_per_s:.0} operations/s; soaking at {rate:.0}/s");

    let start = Instant::now();
    let end = start + run_for;
    let warm_at = start + run_for.mul_f64(WARMUP_SHARE);
    // Away from the reloads (every 30 s), after the warm-up.
    let half = run_for / 2;
    let mut restart_in = half - Duration::from_secs(half.as_secs() % 30) + Duration::from_secs(15);
    if restart_in + UPSTREAM_DOWN + RESTART_GRACE >= run_for
        || start + restart_in <= warm_at + QUIET * 2
    {
        restart_in = half;
    }

    // The config rewritten every 30 s.
    let reloads = Arc::new(AtomicU64::new(0));
    let reloader = {
        let reloads = reloads.clone();
        let setup = setup.clone();
        tokio::spawn(async move {
            let mut generation = 0;
            loop {
                generation += 1;
                let at = start + RELOAD_EVERY * generation;
                // Not so near the end that Dome has no time to reload.
                if at + Duration::from_secs(2) >= end {
                    return anyhow::Ok(());
                }
                tokio::time::sleep_until(at.into()).await;
                setup.write_config(generation)?;
                reloads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The upstream killed and started again on its address.
    let restarter = {
        let (ctx, upstream) = (ctx.clone(), upstream.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until((start + restart_in).into()).await;
            *ctx.window.lock().expect("window") = Some((Instant::now(), None));
            upstream.kill();
            tokio::time::sleep(UPSTREAM_DOWN).await;
            upstream.spawn()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while tokio::net::TcpStream::connect(upstream.addr).await.is_err() {
                ensure!(
                    Instant::now() < deadline,
                    "the upstream did not listen again"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut w = ctx.window.lock().expect("window");
            if let Some((from, _)) = *w {
                *w = Some((from, Some(Instant::now() + RESTART_GRACE)));
            }
            anyhow::Ok(())
        })
    };
    // Peak memory, sampled as the run goes, and every 10 s for the
    // series (under load: whether RSS climbs with calls or steps up at
    // one event, the restart).
    let rss_max = Arc::new(AtomicU64::new(0));
    let series = Arc::new(std::sync::Mutex::new(Vec::<[u64; 4]>::new()));
    let sampler = {
        let rss_max = rss_max.clone();
        let series = series.clone();
        tokio::spawn(async move {
            for tick in 0u64.. {
                let rss = footprint(pid).0;
                rss_max.fetch_max(rss, Ordering::Relaxed);
                if tick % 5 == 0 {
                    let [anon, file] = rss_split(pid);
                    series.lock().expect("series").push([tick, rss, anon, file]);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // Open loop at `rate`: operations start on schedule, whatever those
    // before them are doing (up to MAX_IN_FLIGHT at once).
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT as usize));
    let mut i = calibration_ops as usize;
    let mut ops = 0u64;
    let mut base = start;
    let mut since_base = 0u64;
    let mut paused = Duration::ZERO;
    let mut warm = None;
    let mut warm_stats = Value::Null;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if warm.is_none() && now >= warm_at {
            let t = Instant::now();
            warm = Some(quiet_sample(ctx, &slots, pid).await?);
            warm_stats = get_stats(setup.stats).await?;
            paused += t.elapsed();
            base = Instant::now();
            since_base = 0;
            continue;
        }
        let intended = base + Duration::from_secs_f64(since_base as f64 / rate);
        if intended > now {
            tokio::time::sleep_until(intended.into()).await;
        }
        let permit = slots.clone().acquire_owned().await?;
        let op = PATTERN[i % PATTERN.len()];
        i += 1;
        ops += 1;
        since_base += 1;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.run(op).await;
            drop(permit);
        });
    }
    let loaded_s = (start.elapsed() - paused).as_secs_f64();
    let end_sample = quiet_sample(ctx, &slots, pid).await?;
    sampler.abort();
    reloader.await??;
    restarter.await??;
    let stats = get_stats(setup.stats).await?;
    Ok(Phase {
        max_ops_per_s,
        calibration_ops,
        calibration_calls,
        ops,
        loaded_s,
        warm: warm.context("the run ended before its warm-up did")?,
        end: end_sample,
        rss_max_kb: rss_max.load(Ordering::Relaxed),
        rss_series: std::mem::take(&mut *series.lock().expect("series")),
        reloads_written: reloads.load(Ordering::Relaxed) as u32,
        restart_at_s: restart_in.as_secs_f64(),
        held: json!({"after_warmup": held(&warm_stats), "end": held(&stats)}),
        stats,
    })
}

/// Waits for every operation in flight, closes the idle connections, lets
/// Dome notice, and samples its memory and open files; then lets the load
/// go on.
async fn quiet_sample(
    ctx: &Ctx,
    slots: &Arc<tokio::sync::Semaphore>,
    pid: u32,
) -> anyhow::Result<(u64, usize)> {
    let all = slots.acquire_many(MAX_IN_FLIGHT).await?;
    ctx.close_idle();
    tokio::time::sleep(QUIET).await;
    let sample = footprint(pid);
    drop(all);
    Ok(sample)
}

/// Dome's open sessions and its audit writer's queue, from `/stats`: what
/// may hold memory when RSS grows.
fn held(stats: &Value) -> Value {
    json!({"sessions": stats["sessions"], "audit_queued": stats["audit"]["queued"]})
}

/// Dome's `/stats`.
async fn get_stats(addr: SocketAddr) -> anyhow::Result<Value> {
    let mut s = bench::harness::connect(addr).await?;
    s.ready().await?;
    let req = hyper::Request::get("/stats")
        .header("host", addr.to_string())
        .body(Full::new(bytes::Bytes::new()))?;
    let resp = s.send_request(req).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

/// The trail against what was answered.
#[derive(Default)]
struct TrailCheck {
    records: u64,
    not_in_audit: u64,
    mismatched: u64,
    duplicates: u64,
    samples: Vec<String>,
    cancelled_found: u64,
    cancelled_outcomes: std::collections::BTreeMap<String, u64>,
}

/// Reads the whole trail with `dome audit export` and finds every
/// answered call's record by its intent: it must be there once, with the
/// JSON-RPC status the caller got (0 for a result).
fn check_trail(dome: &Path, config: &Path, tally: &load::Tally) -> anyhow::Result<TrailCheck> {
    use std::io::BufRead as _;
    let mut child = Command::new(dome)
        .arg("--config")
        .arg(config)
        .args(["audit", "export"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running dome audit export")?;
    let out = child.stdout.take().context("export's output")?;
    // By call number: (status, outcome, decision) and how often recorded.
    let total = tally
        .answered
        .iter()
        .map(|a| a.0)
        .chain(tally.cancelled.iter().copied())
        .max()
        .map_or(0, |n| n as usize + 1);
    let mut seen: Vec<Option<(i64, String, String, u32)>> = vec![None; total];
    let mut check = TrailCheck::default();
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        check.records += 1;
        let r: Value = serde_json::from_str(&line).context("an exported record")?;
        let Some(n) = r["intent"]
            .as_str()
            .and_then(|i| i.strip_prefix("soak-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if n >= total {
            continue;
        }
        let entry = seen[n].get_or_insert_with(|| {
            (
                r["status"].as_i64().unwrap_or(i64::MIN),
                r["outcome"].as_str().unwrap_or_default().to_string(),
                r["decision"].as_str().unwrap_or_default().to_string(),
                0,
            )
        });
        entry.3 += 1;
    }
    let status = child.wait()?;
    ensure!(status.success(), "dome audit export exited with {status}");
    for &(n, code) in &tally.answered {
        match &seen[n as usize] {
            None => {
                check.not_in_audit += 1;
                if check.samples.len() < 10 {
                    check
                        .samples
                        .push(format!("soak-{n} (answered {code}) is not in the trail"));
                }
            }
            Some((status, outcome, decision, times)) => {
                if *times > 1 {
                    check.duplicates += 1;
                }
                if *status != code {
                    check.mismatched += 1;
                    if check.samples.len() < 10 {
                        check.samples.push(format!(
                            "soak-{n} answered {code}, recorded status {status} ({decision}, {outcome})"
                        ));
                    }
                }
            }
        }
    }
    for &n in &tally.cancelled {
        if let Some((_, outcome, _, _)) = &seen[n as usize] {
            check.cancelled_found += 1;
            *check.cancelled_outcomes.entry(outcome.clone()).or_default() += 1;
        }
    }
    Ok(check)
}
