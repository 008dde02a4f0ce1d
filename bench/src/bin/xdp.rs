//! `cargo xtask bench xdp`: kernel-timed ns per packet of Dome's XDP program
//! under `BPF_PROG_TEST_RUN`, one figure per verdict path, beside a
//! do-nothing XDP program measured in the same run (the test-run floor).
//! Each figure is the median of several trials of `REPEAT` runs.

use std::net::{IpAddr, Ipv4Addr};

use dome::kernel::{BudgetSpec, Flow, KernelTier, ProgramSettings, craft::Frame};

const REPEAT: u32 = 1_000_000;
const TRIALS: usize = 7;
const PORT: u16 = 8443;
const DOME: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));

fn flow(f: &Frame) -> Flow {
    Flow {
        proto: f.proto,
        src: f.src,
        src_port: f.src_port,
        dst_port: f.dst_port,
    }
}

fn measure(tier: &KernelTier, prog: &str, frame: &[u8], expect: u32) -> anyhow::Result<f64> {
    let mut trials = Vec::with_capacity(TRIALS);
    // One warm-up trial, not counted.
    tier.test_run_repeat(prog, frame, REPEAT / 10)?;
    for _ in 0..TRIALS {
        let (verdict, per_run) = tier.test_run_repeat(prog, frame, REPEAT)?;
        anyhow::ensure!(
            verdict == expect,
            "{prog}: verdict {verdict}, expected {expect}"
        );
        trials.push(per_run.as_nanos() as f64);
    }
    // The kernel reports the mean of one trial in whole ns; take the median trial.
    Ok(bench::median(&mut trials))
}

fn main() -> anyhow::Result<()> {
    let tier = KernelTier::load(&ProgramSettings {
        tcp_ports: vec![PORT],
        udp_ports: vec![],
        preauth: BudgetSpec {
            packets_per_sec: 1_000,
            burst_packets: 100,
            ..Default::default()
        },
        preauth_prefix: BudgetSpec::default(),
        events_per_sec: 1000,
    })?;
    // A bound flow whose budget never runs out during the run but is charged
    // on every packet (both buckets, compare-and-swap included).
    let ample = BudgetSpec {
        packets_per_sec: 1_000_000_000,
        burst_packets: 1_000_000_000,
        bytes_per_sec: 1_000_000_000_000,
        burst_bytes: 1_000_000_000_000,
    };
    let bound = Frame::tcp(
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        40000,
        DOME,
        PORT,
    )
    .payload(64);
    tier.reset_identity(1, &ample)?;
    tier.bind_flow(&flow(&bound), 1)?;

    // A bound flow whose identity is out of budget: every packet drops.
    let starved = Frame::tcp(
        IpAddr::V4(Ipv4Addr::new(198, 51, 101, 1)),
        40000,
        DOME,
        PORT,
    )
    .payload(64);
    tier.reset_identity(
        2,
        &BudgetSpec {
            packets_per_sec: 1,
            burst_packets: 1,
            ..Default::default()
        },
    )?;
    tier.bind_flow(&flow(&starved), 2)?;
    tier.test_run(&starved.build())?;

    let other = Frame::tcp(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 40000, DOME, 22).payload(64);

    let baseline = measure(&tier, dome_common::PROG_BASELINE, &bound.build(), 2)?;
    let pass = measure(&tier, dome_common::PROG_XDP, &bound.build(), 2)?;
    let budget_drop = measure(&tier, dome_common::PROG_XDP, &starved.build(), 1)?;
    let other_port = measure(&tier, dome_common::PROG_XDP, &other.build(), 2)?;

    // A blocked source prefix (the flood case): dropped before any flow
    // lookup. While any prefix block exists every listener packet pays the
    // prefix lookup, so the bound-flow pass is measured again beside it.
    let blocked =
        Frame::tcp(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 40000, DOME, PORT).payload(64);
    tier.block_prefix(&"203.0.113.0/24".parse().map_err(anyhow::Error::msg)?, None)?;
    let block_drop = measure(&tier, dome_common::PROG_XDP, &blocked.build(), 1)?;
    let pass_with_blocks = measure(&tier, dome_common::PROG_XDP, &bound.build(), 2)?;

    bench::report(
        "xdp",
        &serde_json::json!({
            "pass_ns": pass,
            "budget_drop_ns": budget_drop,
            "block_drop_ns": block_drop,
            "other_port_ns": other_port,
            "pass_with_prefix_blocks_ns": pass_with_blocks,
            "baseline_ns": baseline,
            "repeat": REPEAT,
            "trials": TRIALS,
            "statistic": "median of trials; each trial is the kernel's mean ns per run",
            "baseline": "an XDP program that only returns XDP_PASS, same frame, same run",
        }),
    )?;
    Ok(())
}
