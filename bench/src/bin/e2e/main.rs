//! `cargo xtask bench e2e`: `tools/call echo` with a ~500-byte argument sent
//! straight to the demo upstream (`--lean`: no SDK, see dome-demo's
//! `lean.rs`) and, in the same run, through Dome to the same upstream. Max-throughput mode (closed loop, fixed connections) gives
//! each side's requests per second; fixed-rate mode (open loop, latency from
//! each request's intended send time, so coordinated omission is corrected)
//! gives the latency Dome adds at a rate both sustain, with direct and Dome
//! interleaved in the same seconds so the host's drift hits both alike.
//!
//! `bench-e2e load ADDR SECONDS` and `bench-e2e latency RATE ADDR...` run
//! one mode against running servers, for profiling by hand.
//!
//! Load generator, Dome and upstream share this machine's cores. XDP is off
//! for this run (it is measured by `bench xdp`).

mod train;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bench::harness::{Kill, Sender, connect, free_port, post, wait_port};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;

const CONNECTIONS: usize = 16;
const WARMUP: Duration = Duration::from_secs(1);
const RUN: Duration = Duration::from_secs(3);
/// Each fixed-rate (latency) round after the warm-up.
const LATENCY_RUN: Duration = Duration::from_secs(5);
/// Closed-loop rounds (each: direct, then every gateway); rps figures are
/// their medians and ratios the medians of the rounds' ratios.
const THROUGHPUT_ROUNDS: usize = 5;
/// Fixed-rate rounds (each: direct and gateway in the same seconds, for
/// every gateway); latency figures are their medians. Five, so two rounds
/// hit by a stall of this shared VM cannot move the median.
const LATENCY_ROUNDS: usize = 5;

/// The load generator's runtime: one thread, so its own cost stays one core's.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn body() -> Bytes {
    let message: String = "x".repeat(500);
    Bytes::from(
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "echo", "arguments": {"message": message},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}})
        .to_string(),
    )
}

/// A stateless-era `tools/call echo`.
fn request(addr: SocketAddr, body: &Bytes, key: Option<&str>) -> Request<Full<Bytes>> {
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "echo"),
    ];
    post(addr, key, &headers, body.clone())
}

async fn call(
    sender: &mut Sender,
    addr: SocketAddr,
    body: &Bytes,
    key: Option<&str>,
) -> anyhow::Result<()> {
    sender.ready().await?;
    let resp = sender.send_request(request(addr, body, key)).await?;
    anyhow::ensure!(resp.status() == 200, "HTTP {}", resp.status());
    let bytes = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        bytes.windows(6).any(|w| w == b"\"xxxxx"),
        "unexpected answer: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(())
}

/// CPU time a process has used so far, µs: (user, system).
fn cpu_us(pid: u32) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let us = |i: usize| f.get(i).copied().unwrap_or(0) * 1_000_000 / hz;
    (us(11), us(12))
}

/// Requests per second, and CPU µs per request of each watched process:
/// in all, and the part spent in the kernel.
struct Throughput {
    rps: f64,
    cpu_us_per_call: Vec<f64>,
    kernel_us_per_call: Vec<f64>,
}

/// Closed loop on every connection for `RUN` after `WARMUP`: requests/s,
/// and the CPU each process in `watch` spent per request meanwhile.
async fn max_throughput(
    addr: SocketAddr,
    watch: &[u32],
    key: Option<&'static str>,
) -> anyhow::Result<Throughput> {
    let body = body();
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Instant::now() + WARMUP + RUN;
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (body, count, measuring) = (body.clone(), count.clone(), measuring.clone());
        let mut sender = connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                call(&mut sender, addr, &body, key).await?;
                if measuring.load(std::sync::atomic::Ordering::Relaxed) {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    let cpu_before: Vec<(u64, u64)> = watch.iter().map(|p| cpu_us(*p)).collect();
    let started = Instant::now();
    for t in tasks {
        t.await??;
    }
    let cpu_after: Vec<(u64, u64)> = watch.iter().map(|p| cpu_us(*p)).collect();
    let calls = count.load(std::sync::atomic::Ordering::Relaxed).max(1) as f64;
    let per_call = |f: fn((u64, u64)) -> u64| -> Vec<f64> {
        cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(b, a)| f(*a).saturating_sub(f(*b)) as f64 / calls)
            .collect()
    };
    Ok(Throughput {
        rps: calls / started.elapsed().as_secs_f64(),
        cpu_us_per_call: per_call(|(u, s)| u + s),
        kernel_us_per_call: per_call(|(_, s)| s),
    })
}

/// Open loop at `rate` requests/s to each of `addrs` for `LATENCY_RUN`:
/// one latency histogram (µs) per address, from each request's intended
/// send time, so a stall is charged to every request it delayed (no
/// coordinated omission). The addresses' sends interleave evenly in the
/// same seconds (direct at t, the gateway at t + interval/2), so the
/// host's drift — large here — hits them alike and their quantiles can be
/// compared. A dedicated thread paces the sends with nanosleep (tokio's
/// timer has 1 ms granularity, which would send in bursts); each
/// address's connection tasks take its sends round-robin.
async fn fixed_rate(addrs: &[SocketAddr], rate: f64) -> anyhow::Result<Vec<Histogram<u64>>> {
    let body = body();
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for &addr in addrs {
        let mut mine = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..CONNECTIONS {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, bool)>();
            mine.push(tx);
            let body = body.clone();
            let mut sender = connect(addr).await?;
            handles.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                while let Some((intended, record)) = rx.recv().await {
                    call(&mut sender, addr, &body, None).await?;
                    if record {
                        hist.record((intended.elapsed().as_micros() as u64).max(1))?;
                    }
                }
                anyhow::Ok(hist)
            }));
        }
        queues.push(mine);
        tasks.push(handles);
    }
    let n = addrs.len();
    let interval = Duration::from_secs_f64(1.0 / rate / n as f64);
    let total = ((WARMUP + LATENCY_RUN).as_secs_f64() * rate) as u64 * n as u64;
    let warm = (WARMUP.as_secs_f64() * rate) as u64 * n as u64;
    let pacer = std::thread::spawn(move || -> anyhow::Result<()> {
        // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
        let start = Instant::now();
        for i in 0..total {
            let intended = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let (target, k) = (i as usize % n, i as usize / n);
            queues[target][k % CONNECTIONS].send((intended, i >= warm))?;
        }
        Ok(())
    });
    let mut out = Vec::new();
    for handles in tasks {
        let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for t in handles {
            all.add(t.await??)?;
        }
        out.push(all);
    }
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("pacer panicked"))??;
    Ok(out)
}

/// How one Dome under test is started.
struct DomeSpec<'a> {
    bin: &'a Path,
    /// The audit trail's `fsync` mode.
    fsync: &'a str,
    /// Names its config file and data directory (several run at once).
    name: &'a str,
    /// SHA-256 (hex) of an agent's API key: with it, calls must carry that
    /// key (authentication on, as in production); without, `auth.required = false`.
    key_hash: Option<&'a str>,
    /// Where an instrumented build writes its profile (`train`).
    profile_dir: Option<&'a Path>,
}

/// The Dome binary the benchmark measures: `BENCH_E2E_DOME=path` runs
/// another build (`cargo xtask bench e2e` passes the PGO build; a build with
/// frame pointers serves for a profile).
fn dome_bin(root: &Path) -> PathBuf {
    std::env::var_os("BENCH_E2E_DOME")
        .map_or_else(|| root.join("target/release/dome"), PathBuf::from)
}

/// Starts Dome in front of `upstream`.
fn start_dome(
    root: &Path,
    upstream: SocketAddr,
    spec: &DomeSpec,
) -> anyhow::Result<(Kill, SocketAddr)> {
    let DomeSpec { fsync, name, .. } = spec;
    let dome: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let stats: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let config = root.join(format!("target/bench/e2e-dome-{name}.toml"));
    std::fs::create_dir_all(config.parent().unwrap())?;
    // Every call allowed, evaluated on each call like any policy.
    let policies = root.join("target/bench/e2e-policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(
        policies.join("allow-all.toml"),
        "[[rule]]\nid = \"allow-everything\"\neffect = \"allow\"\n",
    )?;
    // `BENCH_E2E_WORKERS=N` pins Dome's worker threads (default: one per CPU).
    let workers = std::env::var("BENCH_E2E_WORKERS")
        .map(|n| format!("workers = {n}\n"))
        .unwrap_or_default();
    let data = root.join(format!("target/bench/e2e-data-{name}"));
    let _ = std::fs::remove_dir_all(&data);
    // Budgets far above what this machine can send, so none refuses a call.
    let identity = match spec.key_hash {
        Some(hash) => format!(
            "required = true\n[[tenant]]\nname = \"bench\"\nbudget = {{ calls_per_s = 1e9, burst = 1000000000 }}\n\
             [[agent]]\nid = \"bench-agent\"\ntenant = \"bench\"\napi_keys = [\"{hash}\"]\n\
             budget = {{ calls_per_s = 1e9, burst = 1000000000 }}\n"
        ),
        None => "required = false\n".into(),
    };
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{dome}\"\n{workers}[stats]\nlisten = \"{stats}\"\n[xdp]\nenabled = false\n\
             [[upstream]]\nname = \"demo\"\nurl = \"http://{upstream}/mcp\"\nprefix = \"never\"\n\
             [policy]\ndir = \"e2e-policies\"\n[audit]\nfsync = \"{fsync}\"\n\
             [auth]\ndata_dir = \"{}\"\n{identity}",
            data.display()
        ),
    )?;
    let mut cmd = Command::new(spec.bin);
    cmd.arg("--config")
        .arg(&config)
        .env("DOME_LOG", "warn")
        .stderr(Stdio::null());
    if let Some(dir) = spec.profile_dir {
        cmd.env("LLVM_PROFILE_FILE", dir.join("dome-%p-%m.profraw"));
    }
    let proc = Kill(
        cmd.spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?,
    );
    wait_port(dome)?;
    Ok((proc, dome))
}

/// A gateway under test: where it listens and its process (for its CPU).
struct Gateway {
    addr: SocketAddr,
    pid: u32,
}

/// Every gateway's figures against the direct baseline, all measured in the
/// same rounds: each throughput round runs direct, then every gateway in
/// turn, so the host's drift over seconds (large here) hits all of them
/// alike and their per-round ratios — to direct and to each other — can be
/// trusted. Latency at a fixed rate each gateway and direct both sustain,
/// direct interleaved with the gateway in the same seconds (`paired`).
async fn compare(
    upstream: SocketAddr,
    up_pid: u32,
    gateways: &[Gateway],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let me = std::process::id();
    let mut direct = Vec::new();
    let mut through: Vec<Vec<Throughput>> = gateways.iter().map(|_| Vec::new()).collect();
    for _ in 0..THROUGHPUT_ROUNDS {
        direct.push(max_throughput(upstream, &[me, up_pid], None).await?);
        for (g, runs) in gateways.iter().zip(&mut through) {
            runs.push(max_throughput(g.addr, &[me, up_pid, g.pid], None).await?);
        }
    }
    let med_of = |runs: &[Throughput], f: &dyn Fn(&Throughput) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        bench::median(&mut v)
    };
    let direct_rps = med_of(&direct, &|t| t.rps);
    // Latency in paired rounds: direct and the gateway at the same rate in
    // the same seconds (see `fixed_rate`), each at a tenth of the slower
    // side's maximum, so together they put about a fifth of it on the
    // machine. The top-level gateway is also measured at twice that rate.
    let rates: Vec<f64> = through
        .iter()
        .map(|runs| (direct_rps.min(med_of(runs, &|t| t.rps)) * 0.1).max(100.0))
        .collect();
    let mut latency: Vec<Vec<Paired>> = gateways.iter().map(|_| Vec::new()).collect();
    let mut heavier = Vec::new();
    for _ in 0..LATENCY_ROUNDS {
        for ((g, rate), rounds) in gateways.iter().zip(&rates).zip(&mut latency) {
            rounds.push(paired(upstream, g.addr, *rate).await?);
        }
        if let (Some(g), Some(rate)) = (gateways.first(), rates.first()) {
            heavier.push(paired(upstream, g.addr, 2.0 * rate).await?);
        }
    }
    let mut out = Vec::new();
    for ((runs, rate), rounds) in through.iter().zip(&rates).zip(&latency) {
        let dome_rps = med_of(runs, &|t| t.rps);
        let rps = |r: &[Throughput]| r.iter().map(|t| t.rps).collect::<Vec<_>>();
        let ratio = median_of_ratios(&rps(runs), &rps(&direct));
        let cpu = |f: fn(&Throughput) -> &[f64]| {
            let at = |runs: &[Throughput], i: usize| med_of(runs, &|t| f(t)[i]);
            serde_json::json!({
                "direct": {"loadgen": at(&direct, 0), "upstream": at(&direct, 1)},
                "through_dome": {"loadgen": at(runs, 0), "upstream": at(runs, 1),
                                 "dome": at(runs, 2)},
            })
        };
        let mut entry = serde_json::json!({
            "direct_rps": direct_rps,
            "dome_rps": dome_rps,
            "dome_vs_direct": ratio,
            "throughput_rounds": direct.iter().zip(runs)
                .map(|(d, t)| serde_json::json!({"direct_rps": d.rps, "dome_rps": t.rps}))
                .collect::<Vec<_>>(),
            "cpu_us_per_call": cpu(|t| &t.cpu_us_per_call),
            "kernel_us_per_call": cpu(|t| &t.kernel_us_per_call),
        });
        if let Some(m) = entry.as_object_mut() {
            m.extend(latency_summary(rounds, *rate));
            if out.is_empty() {
                let at_double = latency_summary(&heavier, 2.0 * rate);
                m.insert("latency_at_double_rate".into(), at_double.into());
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// One paired latency round: (direct, gateway) histograms.
type Paired = (Histogram<u64>, Histogram<u64>);

/// Direct and `gateway` at `rate` each, interleaved in the same seconds.
async fn paired(upstream: SocketAddr, gateway: SocketAddr, rate: f64) -> anyhow::Result<Paired> {
    let mut h = fixed_rate(&[upstream, gateway], rate).await?.into_iter();
    let (Some(d), Some(t)) = (h.next(), h.next()) else {
        anyhow::bail!("a latency histogram is missing");
    };
    Ok((d, t))
}

/// Latency fields of a report from paired rounds: each side's quantiles
/// (median over the rounds) and what the gateway adds (median over the
/// rounds of the gateway's quantile minus direct's in the same round).
fn latency_summary(rounds: &[Paired], rate: f64) -> serde_json::Map<String, serde_json::Value> {
    let med = |f: &dyn Fn(&Paired) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        bench::median(&mut v)
    };
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64;
    let per_round: Vec<serde_json::Value> = rounds
        .iter()
        .map(|(d, t)| {
            serde_json::json!({
                "direct_p50_us": d.value_at_quantile(0.5), "direct_p99_us": d.value_at_quantile(0.99),
                "dome_p50_us": t.value_at_quantile(0.5), "dome_p99_us": t.value_at_quantile(0.99),
                "added_p99_us": q(t, 0.99) - q(d, 0.99),
            })
        })
        .collect();
    let serde_json::Value::Object(summary) = serde_json::json!({
        "fixed_rate_rps": rate,
        "direct_p50_us": med(&|(d, _)| q(d, 0.5)),
        "direct_p99_us": med(&|(d, _)| q(d, 0.99)),
        "dome_p50_us": med(&|(_, t)| q(t, 0.5)),
        "dome_p99_us": med(&|(_, t)| q(t, 0.99)),
        "added_p50_us": med(&|(d, t)| q(t, 0.5) - q(d, 0.5)),
        "added_p99_us": med(&|(d, t)| q(t, 0.99) - q(d, 0.99)),
        "latency_rounds": per_round,
    }) else {
        unreachable!("a JSON object literal");
    };
    summary
}

/// The median over rounds of `a[i] / b[i]` (the same rounds).
fn median_of_ratios(a: &[f64], b: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    bench::median(&mut ratios)
}

/// A gateway's rps in each throughput round, from its report.
fn round_rps(report: &serde_json::Value) -> Vec<f64> {
    report["throughput_rounds"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["dome_rps"].as_f64()).collect())
        .unwrap_or_default()
}

/// A baseline relay's figures (rounds kept: a noisy round shows), with its
/// CPU under the name `proxy` and what it is.
fn baseline_summary(mut v: serde_json::Value, what: &str) -> serde_json::Value {
    if let Some(m) = v.as_object_mut() {
        for key in ["cpu_us_per_call", "kernel_us_per_call"] {
            if let Some(c) = m[key]["through_dome"].as_object_mut()
                && let Some(x) = c.remove("dome")
            {
                c.insert("proxy".into(), x);
            }
        }
        m.insert("what".into(), what.into());
    }
    v
}

/// The demo upstream; `lean`: its `--lean` mode, which the throughput
/// runs measure against (rmcp, which serves everything else, costs twice
/// the CPU per call: the figures are in dome-demo's `lean.rs`).
fn start_upstream(root: &Path, lean: bool) -> anyhow::Result<(Kill, SocketAddr)> {
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let up = Kill(
        Command::new(root.join("target/release/dome-demo-upstream"))
            .arg(upstream.to_string())
            .args(lean.then_some("--lean"))
            .stderr(Stdio::null())
            .spawn()
            .context("starting target/release/dome-demo-upstream")?,
    );
    wait_port(upstream)?;
    Ok((up, upstream))
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some("train") => {
            let [_, bin, dir] = args.as_slice() else {
                anyhow::bail!("usage: bench-e2e train INSTRUMENTED_DOME PROFILE_DIR");
            };
            return train::run(&root, bin, Some(dir));
        }
        Some("check") => {
            let [_, bin] = args.as_slice() else {
                anyhow::bail!("usage: bench-e2e check DOME");
            };
            return train::run(&root, bin, None);
        }
        Some("load") => {
            // A closed loop against one address, for profiling by hand.
            let [_, addr, secs] = args.as_slice() else {
                anyhow::bail!("usage: bench-e2e load ADDR SECONDS");
            };
            let addr: SocketAddr = addr.to_string_lossy().parse()?;
            let secs: u64 = secs.to_string_lossy().parse()?;
            let rt = runtime()?;
            for _ in 0..secs.div_ceil(RUN.as_secs() + WARMUP.as_secs()) {
                let t = rt.block_on(max_throughput(addr, &[], None))?;
                println!("{:.0} rps", t.rps);
            }
            return Ok(());
        }
        Some("latency") => {
            const USAGE: &str = "usage: bench-e2e latency RATE ADDR...";
            let [_, rate, rest @ ..] = args.as_slice() else {
                anyhow::bail!(USAGE);
            };
            let rate: f64 = rate.to_string_lossy().parse().context(USAGE)?;
            anyhow::ensure!(rate > 0.0 && !rest.is_empty(), USAGE);
            let addrs: Vec<SocketAddr> = rest
                .iter()
                .map(|a| a.to_string_lossy().parse())
                .collect::<Result<_, _>>()?;
            let rt = runtime()?;
            let h = rt.block_on(fixed_rate(&addrs, rate))?;
            for (a, h) in addrs.iter().zip(&h) {
                println!(
                    "{a} p50 {} p90 {} p99 {} p999 {} max {}",
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.9),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999),
                    h.max()
                );
            }
            return Ok(());
        }
        _ => {}
    }
    let (up, upstream) = start_upstream(&root, true)?;
    let rt = runtime()?;
    let bin = dome_bin(&root);
    let spec = |fsync, name| DomeSpec {
        bin: &bin,
        fsync,
        name,
        key_hash: None,
        profile_dir: None,
    };
    // The gateway's own cost: every call still recorded, the answer not
    // held for the disk (`fsync = "off"`).
    let (dome_off, off_addr) = start_dome(&root, upstream, &spec("off", "off"))?;
    // The same relay with none of Dome's work, on Dome's transport stack:
    // what any gateway built this way can reach on this machine.
    let floor_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let floor_proc = Kill(
        Command::new(root.join("target/release/bench-floor-proxy"))
            .arg(floor_addr.to_string())
            .arg(format!("http://{upstream}/mcp"))
            .spawn()?,
    );
    wait_port(floor_addr)?;
    // Less still: bytes copied between a client's connection and one
    // upstream connection of its own, with no HTTP at all. What any
    // user-space gateway can reach on this machine.
    let relay_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let relay_proc = Kill(
        Command::new(root.join("target/release/bench-tcp-relay"))
            .arg(relay_addr.to_string())
            .arg(upstream.to_string())
            .spawn()?,
    );
    wait_port(relay_addr)?;
    let mut gateways = vec![
        Gateway {
            addr: off_addr,
            pid: dome_off.0.id(),
        },
        Gateway {
            addr: floor_addr,
            pid: floor_proc.0.id(),
        },
        Gateway {
            addr: relay_addr,
            pid: relay_proc.0.id(),
        },
    ];
    // `BENCH_E2E_DOME_PLAIN=path`: also a build without profile-guided
    // optimisation, in the same rounds (what the PGO build gains).
    let plain_bin = std::env::var_os("BENCH_E2E_DOME_PLAIN").map(PathBuf::from);
    let mut plain_proc = None;
    if let Some(plain) = &plain_bin {
        let (proc, addr) = start_dome(
            &root,
            upstream,
            &DomeSpec {
                bin: plain,
                ..spec("off", "plain")
            },
        )?;
        gateways.push(Gateway {
            addr,
            pid: proc.0.id(),
        });
        plain_proc = Some(proc);
    }
    // `BENCH_E2E_QUICK=1`: the gateway's own cost and the floors only, for
    // experiments; written to e2e-quick.json so the full report stays as it was.
    let quick = std::env::var_os("BENCH_E2E_QUICK").is_some();
    let mut durable_procs = Vec::new();
    if !quick {
        // The default: every call answered once its record is on disk
        // (group commit, at most one sync every 2 ms); then `always`: a
        // sync as soon as anything is written (records arriving meanwhile
        // share the next sync).
        for fsync in ["batch", "always"] {
            let (proc, addr) = start_dome(&root, upstream, &spec(fsync, fsync))?;
            gateways.push(Gateway {
                addr,
                pid: proc.0.id(),
            });
            durable_procs.push(proc);
        }
    }
    let results = rt.block_on(compare(upstream, up.0.id(), &gateways))?;
    drop((
        dome_off,
        floor_proc,
        relay_proc,
        plain_proc,
        durable_procs,
        up,
    ));
    let mut results = results.into_iter();
    let (Some(mut report), Some(floor), Some(relay)) =
        (results.next(), results.next(), results.next())
    else {
        anyhow::bail!("a gateway's figures are missing");
    };
    // Dome's throughput over each floor's, round by round.
    report["dome_vs_floor"] = median_of_ratios(&round_rps(&report), &round_rps(&floor)).into();
    report["dome_vs_tcp_relay"] = median_of_ratios(&round_rps(&report), &round_rps(&relay)).into();
    report["upstream"] = "dome-demo-upstream --lean (plain JSON, no MCP SDK)".into();
    report["build"] = std::env::var("BENCH_E2E_BUILD")
        .unwrap_or_else(|_| bin.display().to_string())
        .into();
    if plain_bin.is_some() {
        let Some(mut plain) = results.next() else {
            anyhow::bail!("the plain build's figures are missing");
        };
        plain["dome_vs_floor"] = median_of_ratios(&round_rps(&plain), &round_rps(&floor)).into();
        // Round by round, so the host's drift cancels.
        report["vs_plain_build"] = median_of_ratios(&round_rps(&report), &round_rps(&plain)).into();
        report["plain_build"] = plain;
    }
    report["floor_proxy"] = baseline_summary(
        floor,
        "Dome's transport stack (thread per core, hyper auto server, per-lane keep-alive pool speaking HTTP/1.1 inline (dome::upstream::h1), mimalloc) relaying body and MCP headers with none of Dome's work; its dome_* fields are the proxy's",
    );
    report["tcp_relay"] = baseline_summary(
        relay,
        "bytes copied both ways between each client connection and an upstream connection of its own (tokio copy_bidirectional on Dome's thread-per-core skeleton), no HTTP: the least work any user-space gateway does per call; its dome_* fields are the relay's",
    );
    if quick {
        bench::report("e2e-quick", &report)?;
        return Ok(());
    }
    let (Some(durable), Some(always)) = (results.next(), results.next()) else {
        anyhow::bail!("a durable gateway's figures are missing");
    };
    report["audit_fsync"] = "off".into();
    report["with_durable_audit"] = durable;
    report["with_durable_audit"]["audit_fsync"] = "batch (commit_ms = 2, the default)".into();
    report["with_fsync_always"] = always;
    report["with_fsync_always"]["audit_fsync"] = "always".into();
    report["connections"] = CONNECTIONS.into();
    report["run_s"] = RUN.as_secs().into();
    report["latency_run_s"] = LATENCY_RUN.as_secs().into();
    report["rounds"] =
        serde_json::json!({"throughput": THROUGHPUT_ROUNDS, "latency": LATENCY_ROUNDS});
    report["request"] =
        "tools/call echo, 500-byte argument, stateless era, HTTP/1.1 keep-alive".into();
    report["statistic"] = "rps over each run after 1 s warm-up, median of the rounds (each round runs direct, then every gateway: Dome with fsync off, the floor proxy, the TCP relay, the plain build when given, Dome with batch, Dome with always; dome_vs_direct, dome_vs_floor, dome_vs_tcp_relay and vs_plain_build: medians of the rounds' ratios); latency quantiles at the fixed rate, measured from intended send times (no coordinated omission), in paired rounds: direct and the gateway interleaved in the same seconds, each at fixed_rate_rps (a tenth of the slower side's maximum, so together about a fifth); quantiles are medians of the rounds, added_* the medians of the rounds' differences (gateway minus direct in the same round); latency_at_double_rate: the same for the top-level gateway with each side at twice the rate; top level with the audit trail's fsync off (records written, answers not held for the disk), with_durable_audit with the default fsync = batch, with_fsync_always with fsync = always; cpu_us_per_call: CPU µs per call of each process, kernel_us_per_call the part of it spent in the kernel; floor_proxy is Dome's transport stack relaying with none of Dome's work; tcp_relay copies bytes between connections with no HTTP at all; plain_build is the same code built without profile-guided optimisation".into();
    bench::report("e2e", &report)?;
    Ok(())
}
