//! The XDP program's verdicts, run in the real kernel with
//! `BPF_PROG_TEST_RUN` on crafted frames: one case per verdict path.
//! Needs root; `cargo xtask test` runs it with `--features kernel-tests`.
#![cfg(feature = "kernel-tests")]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    thread::sleep,
    time::Duration,
};

use dome::kernel::{
    BudgetSpec, EventKind, Flow, KernelEvent, KernelTier, L4, Prefix, ProgramSettings,
    craft::{self, ACK, Frame, SYN},
};
use dome_common::counter;

const PASS: u32 = 2;
const DROP: u32 = 1;
const PORT: u16 = 8443;
const QUIC_PORT: u16 = 4433;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}
fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}
const DOME4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));

fn unlimited() -> BudgetSpec {
    BudgetSpec::default()
}

fn packets(pps: u64, burst: u64) -> BudgetSpec {
    BudgetSpec {
        packets_per_sec: pps,
        burst_packets: burst,
        ..Default::default()
    }
}

/// A tier whose pre-auth budget per source address is `preauth`, with no
/// aggregate limit per prefix.
fn tier_with(preauth: BudgetSpec, events_per_sec: u32) -> Arc<KernelTier> {
    tier_with_prefix(preauth, unlimited(), events_per_sec)
}

fn tier_with_prefix(
    preauth: BudgetSpec,
    preauth_prefix: BudgetSpec,
    events_per_sec: u32,
) -> Arc<KernelTier> {
    KernelTier::load(&ProgramSettings {
        tcp_ports: vec![PORT],
        udp_ports: vec![QUIC_PORT],
        preauth,
        preauth_prefix,
        events_per_sec,
    })
    .unwrap_or_else(|e| panic!("loading the XDP program: {e}"))
}

fn tier() -> Arc<KernelTier> {
    tier_with(unlimited(), 1000)
}

fn flow_of(f: &Frame) -> Flow {
    Flow {
        proto: f.proto,
        src: f.src,
        src_port: f.src_port,
        dst_port: f.dst_port,
    }
}

fn run(t: &KernelTier, frame: &[u8]) -> u32 {
    t.test_run(frame).expect("BPF_PROG_TEST_RUN")
}

fn count(t: &KernelTier, idx: usize) -> u64 {
    t.counters().unwrap().get(idx)
}

fn events(t: &KernelTier) -> Vec<KernelEvent> {
    let mut ring = t.take_events().expect("event ring");
    dome::kernel::drain_events(&mut ring)
}

#[test]
fn other_port_passes_untouched() {
    let t = tier_with(packets(1, 1), 1000);
    // Even with a pre-auth budget of one packet, other ports never count.
    for _ in 0..5 {
        let f = Frame::tcp(v4(198, 51, 100, 7), 40000, DOME4, 22).build();
        assert_eq!(run(&t, &f), PASS);
    }
    let udp_other = Frame::udp(v4(198, 51, 100, 7), 40000, DOME4, 53).build();
    assert_eq!(run(&t, &udp_other), PASS);
    // A listener port of the other protocol is not a listener.
    let udp_on_tcp_port = Frame::udp(v4(198, 51, 100, 7), 40000, DOME4, PORT).build();
    assert_eq!(run(&t, &udp_on_tcp_port), PASS);
    assert_eq!(count(&t, counter::PASS_OTHER), 7);
    assert_eq!(t.counters().unwrap().passed(), 0);
}

#[test]
fn bound_flow_within_budget_passes_and_over_packet_budget_drops() {
    let t = tier_with(packets(1, 1), 1000);
    let f = Frame::tcp(v4(198, 51, 100, 10), 50000, DOME4, PORT);
    t.reset_identity(7, &packets(10, 5)).unwrap();
    t.bind_flow(&flow_of(&f), 7).unwrap();
    assert_eq!(t.flow_slot(&flow_of(&f)), Some(7));
    let bytes = f.build();
    for i in 0..5 {
        assert_eq!(run(&t, &bytes), PASS, "packet {i} is within the burst");
    }
    assert_eq!(run(&t, &bytes), DROP, "the sixth packet exceeds the burst");
    assert_eq!(count(&t, counter::PASS_BOUND), 5);
    assert_eq!(count(&t, counter::DROP_BUDGET), 1);
    // The pre-auth budget (one packet) was never touched by the bound flow.
    assert_eq!(count(&t, counter::DROP_PREAUTH), 0);
    let ev = events(&t);
    let e = ev
        .iter()
        .find(|e| e.kind == EventKind::BudgetExhausted)
        .expect("budget event");
    assert_eq!(
        (e.slot, e.detail, e.src_port, e.dst_port),
        (7, 1, 50000, PORT)
    );
    assert_eq!(e.src, v4(198, 51, 100, 10));
}

#[test]
fn over_byte_budget_drops() {
    let t = tier();
    // 1 MB/s with a 3000-byte burst: two 1,454-byte frames fit, the third does not.
    let spec = BudgetSpec {
        packets_per_sec: 1000,
        burst_packets: 100,
        bytes_per_sec: 1_000_000,
        burst_bytes: 3000,
    };
    let f = Frame::tcp(v4(198, 51, 100, 11), 50001, DOME4, PORT).payload(1400);
    t.reset_identity(8, &spec).unwrap();
    t.bind_flow(&flow_of(&f), 8).unwrap();
    let bytes = f.build();
    assert_eq!(bytes.len(), 1454);
    assert_eq!(run(&t, &bytes), PASS);
    assert_eq!(run(&t, &bytes), PASS);
    assert_eq!(run(&t, &bytes), DROP);
    // A small frame still fits in what is left of the byte burst, and the
    // refused frame was refunded its packet charge.
    let small = Frame::tcp(v4(198, 51, 100, 11), 50001, DOME4, PORT).build();
    assert_eq!(run(&t, &small), PASS);
    let id = t.identity(8).unwrap();
    let interval = spec.to_kernel().pkt_interval_ns;
    let now = dome::clock::monotonic_ns();
    // Three charged packets: the TAT is at most three intervals ahead.
    assert!(id.state.pkt_tat <= now + 3 * interval, "refund missing");
    let ev = events(&t);
    assert!(
        ev.iter()
            .any(|e| e.kind == EventKind::BudgetExhausted && e.detail == 2 && e.slot == 8),
        "{ev:?}"
    );
}

#[test]
fn refill_after_time_passes_again() {
    let t = tier();
    // 20 packets/s: one every 50 ms; a burst of 2.
    let f = Frame::udp(v4(198, 51, 100, 12), 50002, DOME4, QUIC_PORT);
    t.reset_identity(9, &packets(20, 2)).unwrap();
    t.bind_flow(&flow_of(&f), 9).unwrap();
    let bytes = f.build();
    assert_eq!(run(&t, &bytes), PASS);
    assert_eq!(run(&t, &bytes), PASS);
    assert_eq!(run(&t, &bytes), DROP);
    sleep(Duration::from_millis(120));
    // 120 ms refill two intervals: two more pass, the next is dropped.
    assert_eq!(run(&t, &bytes), PASS);
    assert_eq!(run(&t, &bytes), PASS);
    assert_eq!(run(&t, &bytes), DROP);
}

#[test]
fn unbound_flow_over_preauth_budget_drops_per_source_address() {
    let t = tier_with(packets(1, 3), 1000);
    let a = Frame::tcp(v4(203, 0, 113, 5), 1000, DOME4, PORT)
        .flags(SYN)
        .build();
    for _ in 0..3 {
        assert_eq!(run(&t, &a), PASS);
    }
    assert_eq!(run(&t, &a), DROP);
    // Another port of the same host shares the address's budget.
    let same_host = Frame::tcp(v4(203, 0, 113, 5), 1001, DOME4, PORT).build();
    assert_eq!(run(&t, &same_host), DROP);
    // Another host, in the same /24 or not, has its own.
    let same24 = Frame::tcp(v4(203, 0, 113, 200), 2000, DOME4, PORT).build();
    assert_eq!(run(&t, &same24), PASS);
    let other24 = Frame::tcp(v4(203, 0, 114, 5), 1000, DOME4, PORT).build();
    assert_eq!(run(&t, &other24), PASS);
    assert_eq!(count(&t, counter::PASS_UNBOUND), 5);
    assert_eq!(count(&t, counter::DROP_PREAUTH), 2);
    assert_eq!(count(&t, counter::DROP_PREAUTH_PREFIX), 0);
    // Binding the flow takes it off the pre-auth budget.
    let bound = Frame::tcp(v4(203, 0, 113, 5), 1000, DOME4, PORT);
    t.reset_identity(1, &unlimited()).unwrap();
    t.bind_flow(&flow_of(&bound), 1).unwrap();
    assert_eq!(run(&t, &bound.build()), PASS);
    // And unbinding puts it back.
    t.unbind_flow(&flow_of(&bound)).unwrap();
    assert_eq!(run(&t, &bound.build()), DROP);
    let ev = events(&t);
    assert!(
        ev.iter()
            .any(|e| e.kind == EventKind::NewFlow && e.src_port == 1000)
    );
    assert!(ev.iter().any(|e| e.kind == EventKind::PreauthExhausted));
}

#[test]
fn blocklisted_identity_flow_and_prefix_drop() {
    let t = tier();
    let f = Frame::tcp(v4(198, 51, 100, 20), 40000, DOME4, PORT);
    let flow = flow_of(&f);
    t.reset_identity(3, &unlimited()).unwrap();
    t.bind_flow(&flow, 3).unwrap();
    let bytes = f.build();
    assert_eq!(run(&t, &bytes), PASS);

    t.block_identity(3, None).unwrap();
    assert_eq!(run(&t, &bytes), DROP, "identity block");
    t.unblock_identity(3).unwrap();
    assert_eq!(run(&t, &bytes), PASS);

    t.block_flow(&flow, Some(Duration::from_secs(60))).unwrap();
    assert_eq!(run(&t, &bytes), DROP, "flow block");
    // Another flow of the same identity is untouched.
    let sibling = Frame::tcp(v4(198, 51, 100, 20), 40001, DOME4, PORT);
    t.bind_flow(&flow_of(&sibling), 3).unwrap();
    assert_eq!(run(&t, &sibling.build()), PASS);
    t.unblock_flow(&flow).unwrap();
    assert_eq!(run(&t, &bytes), PASS);

    // An unbound flow can be blocked too.
    let stranger = Frame::udp(v4(192, 0, 2, 9), 999, DOME4, QUIC_PORT);
    t.block_flow(&flow_of(&stranger), None).unwrap();
    assert_eq!(run(&t, &stranger.build()), DROP);

    let net: Prefix = "198.51.100.0/24".parse().unwrap();
    t.block_prefix(&net, Some(Duration::from_secs(60))).unwrap();
    assert_eq!(run(&t, &bytes), DROP, "prefix block beats a bound flow");
    let neighbour = Frame::tcp(v4(198, 51, 100, 99), 1, DOME4, PORT).build();
    assert_eq!(run(&t, &neighbour), DROP);
    let outside = Frame::tcp(v4(198, 51, 101, 1), 1, DOME4, PORT).build();
    assert_eq!(run(&t, &outside), PASS);
    t.unblock_prefix(&net).unwrap();
    assert_eq!(run(&t, &bytes), PASS);

    assert_eq!(count(&t, counter::DROP_BLOCKLIST), 5);
    let details: Vec<u8> = events(&t)
        .iter()
        .filter(|e| e.kind == EventKind::Blocked)
        .map(|e| e.detail)
        .collect();
    assert_eq!(details, vec![1, 2, 2, 3, 3]);
}

#[test]
fn expired_block_passes_and_is_swept() {
    let t = tier();
    let f = Frame::tcp(v4(198, 51, 100, 30), 40000, DOME4, PORT);
    let flow = flow_of(&f);
    t.reset_identity(4, &unlimited()).unwrap();
    t.bind_flow(&flow, 4).unwrap();
    let bytes = f.build();
    let ttl = Some(Duration::from_millis(80));
    t.block_identity(4, ttl).unwrap();
    t.block_flow(&flow, ttl).unwrap();
    t.block_prefix(&"198.51.100.0/24".parse().unwrap(), ttl)
        .unwrap();
    assert_eq!(run(&t, &bytes), DROP);
    assert_eq!(t.sweep_expired().unwrap(), 0, "nothing expired yet");
    sleep(Duration::from_millis(150));
    assert_eq!(run(&t, &bytes), PASS, "every block expired");
    assert_eq!(
        t.sweep_expired().unwrap(),
        2,
        "the flow and the prefix entry"
    );
    assert_eq!(run(&t, &bytes), PASS);
}

#[test]
fn ipv6_bound_budget_and_preauth_per_address_within_the_64() {
    let t = tier_with_prefix(packets(1, 2), packets(1, 3), 1000);
    let dome6 = v6("2001:db8:d0e::1");
    let f = Frame::tcp(v6("2001:db8:1:2::10"), 443, dome6, PORT);
    t.reset_identity(11, &packets(1, 3)).unwrap();
    t.bind_flow(&flow_of(&f), 11).unwrap();
    let bytes = f.build();
    for _ in 0..3 {
        assert_eq!(run(&t, &bytes), PASS);
    }
    assert_eq!(run(&t, &bytes), DROP);

    let a = Frame::udp(v6("2001:db8:5:6::1"), 1, dome6, QUIC_PORT).build();
    let same64 = Frame::udp(v6("2001:db8:5:6:ffff::2"), 2, dome6, QUIC_PORT).build();
    let other64 = Frame::udp(v6("2001:db8:5:7::1"), 1, dome6, QUIC_PORT).build();
    assert_eq!(run(&t, &a), PASS);
    assert_eq!(run(&t, &same64), PASS);
    assert_eq!(run(&t, &a), PASS, "the address's second packet");
    assert_eq!(run(&t, &a), DROP, "the address spent its burst of two");
    assert_eq!(count(&t, counter::DROP_PREAUTH), 1);
    assert_eq!(
        run(&t, &same64),
        DROP,
        "the address has budget left, the /64 spent its aggregate of three"
    );
    assert_eq!(count(&t, counter::DROP_PREAUTH_PREFIX), 1);
    assert_eq!(run(&t, &other64), PASS);

    t.block_prefix(&"2001:db8:5::/48".parse().unwrap(), None)
        .unwrap();
    assert_eq!(run(&t, &other64), DROP);
    assert_eq!(count(&t, counter::DROP_BLOCKLIST), 1);
}

#[test]
fn vlan_tagged_frames_are_metered() {
    let t = tier();
    let f = Frame::tcp(v4(198, 51, 100, 40), 40000, DOME4, PORT).vlan(42);
    t.reset_identity(5, &packets(1, 2)).unwrap();
    t.bind_flow(&flow_of(&f), 5).unwrap();
    let bytes = f.build();
    assert_eq!(run(&t, &bytes), PASS);
    assert_eq!(run(&t, &bytes), PASS);
    assert_eq!(run(&t, &bytes), DROP);
    let v6f = Frame::udp(v6("2001:db8::7"), 7, v6("2001:db8::1"), 22).vlan(42);
    assert_eq!(run(&t, &v6f.build()), PASS, "other port behind a VLAN tag");
    assert_eq!(count(&t, counter::PASS_BOUND), 2);
    assert_eq!(count(&t, counter::DROP_BUDGET), 1);
}

#[test]
fn ipv4_options_are_skipped_to_reach_the_ports() {
    let t = tier();
    let f = Frame::tcp(v4(198, 51, 100, 50), 40000, DOME4, PORT).ipv4_options(12);
    t.reset_identity(6, &packets(1, 1)).unwrap();
    t.bind_flow(&flow_of(&f), 6).unwrap();
    let bytes = f.build();
    assert_eq!(run(&t, &bytes), PASS);
    assert_eq!(run(&t, &bytes), DROP, "charged to the bound identity");
}

#[test]
fn truncated_and_malformed_headers_follow_the_rules() {
    let t = tier();
    let f = Frame::tcp(v4(198, 51, 100, 60), 40000, DOME4, PORT);
    let full = f.build();
    let ip = craft::ip_offset(&f);
    let l4 = craft::l4_offset(&f);

    // A VLAN ethertype with the tag cut off: passes (cannot be for Dome).
    // (The kernel refuses test runs of frames shorter than an Ethernet header.)
    let vlan = Frame::tcp(v4(198, 51, 100, 60), 40000, DOME4, PORT)
        .vlan(3)
        .build();
    assert_eq!(run(&t, &vlan[..16]), PASS);
    // Non-IP (ARP): passes.
    let mut arp = full.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(run(&t, &arp), PASS);
    assert_eq!(count(&t, counter::PASS_OTHER), 2);

    // IPv4 header cut short, IHL below 5, wrong version, total length below header.
    assert_eq!(run(&t, &full[..ip + 12]), DROP);
    let mut bad_ihl = full.clone();
    bad_ihl[ip] = 0x44;
    assert_eq!(run(&t, &bad_ihl), DROP);
    let mut bad_version = full.clone();
    bad_version[ip] = 0x65;
    assert_eq!(run(&t, &bad_version), DROP);
    let mut bad_total = full.clone();
    bad_total[ip + 2..ip + 4].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(run(&t, &bad_total), DROP);
    // TCP header too short to hold its ports.
    assert_eq!(run(&t, &full[..l4 + 2]), DROP);
    // Ports present, listener port, rest of the TCP header missing.
    assert_eq!(run(&t, &full[..l4 + 10]), DROP);
    // Same truncation to another port: not Dome's to judge.
    let other = Frame::tcp(v4(198, 51, 100, 60), 40000, DOME4, 22).build();
    assert_eq!(run(&t, &other[..l4 + 10]), PASS);
    // Data offset below 5.
    let mut bad_doff = full.clone();
    bad_doff[l4 + 12] = 0x40;
    assert_eq!(run(&t, &bad_doff), DROP);
    // IPv6 header cut short.
    let f6 = Frame::tcp(v6("2001:db8::9"), 1, v6("2001:db8::1"), PORT).build();
    assert_eq!(run(&t, &f6[..14 + 30]), DROP);
    // UDP header cut short on the QUIC port.
    let u = Frame::udp(v4(198, 51, 100, 60), 1, DOME4, QUIC_PORT);
    let ub = u.build();
    assert_eq!(run(&t, &ub[..craft::l4_offset(&u) + 6]), DROP);

    assert_eq!(count(&t, counter::DROP_MALFORMED), 9);
    assert_eq!(count(&t, counter::PASS_OTHER), 3);
    assert!(
        events(&t).iter().any(|e| e.kind == EventKind::Malformed),
        "malformed drops are reported"
    );
    // And the intact frame still goes through the normal path.
    assert_eq!(run(&t, &full), PASS);
}

#[test]
fn fragments_pass_by_rule_and_first_fragments_are_metered() {
    let t = tier_with(packets(1, 1), 1000);
    let f = Frame::udp(v4(198, 51, 100, 70), 1, DOME4, QUIC_PORT);
    let ip = craft::ip_offset(&f);
    let mut later = f.build();
    later[ip + 6..ip + 8].copy_from_slice(&(0x2000u16 | 185).to_be_bytes()); // MF, offset 1480
    assert_eq!(run(&t, &later), PASS);
    assert_eq!(run(&t, &later), PASS);
    assert_eq!(count(&t, counter::PASS_FRAGMENT), 2);
    let mut first = f.build();
    first[ip + 6..ip + 8].copy_from_slice(&0x2000u16.to_be_bytes()); // MF, offset 0
    assert_eq!(run(&t, &first), PASS);
    assert_eq!(
        run(&t, &first),
        DROP,
        "the head fragment pays the pre-auth budget"
    );

    // IPv6: a fragment header with a non-zero offset passes; offset 0 is walked.
    let mut later6 = Frame::udp(v6("2001:db8::9"), 1, v6("2001:db8::1"), QUIC_PORT).build();
    let at = 14 + 40;
    let mut ext = vec![17u8, 0, 0x05, 0xc9, 0, 0, 0, 1]; // next UDP, offset 185, MF
    later6[20] = 44;
    later6.splice(at..at, ext.drain(..));
    assert_eq!(run(&t, &later6), PASS);
    assert_eq!(count(&t, counter::PASS_FRAGMENT), 3);
}

#[test]
fn ipv6_extension_headers_are_walked_and_bounded() {
    let t = tier();
    let dome6 = v6("2001:db8::1");
    let f = Frame::tcp(v6("2001:db8::77"), 5000, dome6, PORT);
    t.reset_identity(12, &packets(1, 1)).unwrap();
    t.bind_flow(&flow_of(&f), 12).unwrap();
    // Hop-by-hop (8 bytes) then TCP.
    let mut hbh = f.build();
    hbh[20] = 0;
    hbh.splice(54..54, [6u8, 0, 1, 4, 0, 0, 0, 0]);
    assert_eq!(run(&t, &hbh), PASS);
    assert_eq!(
        run(&t, &hbh),
        DROP,
        "found the bound flow behind the option header"
    );
    // Five destination-options headers: over the walk limit, dropped.
    let mut long = f.build();
    long[20] = 60;
    let mut chain = Vec::new();
    for i in 0..5 {
        chain.extend_from_slice(&[if i == 4 { 6 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    long.splice(54..54, chain);
    assert_eq!(run(&t, &long), DROP);
    assert_eq!(count(&t, counter::DROP_MALFORMED), 1);
}

#[test]
fn events_are_sampled_per_cpu() {
    let t = tier_with(packets(1, 1), 5);
    let f = Frame::tcp(v4(203, 0, 113, 50), 7, DOME4, PORT)
        .flags(SYN | ACK)
        .build();
    assert_eq!(run(&t, &f), PASS);
    for _ in 0..20 {
        assert_eq!(run(&t, &f), DROP);
    }
    let c = t.counters().unwrap();
    // Test runs may land on either CPU; each CPU may send five a second.
    let sent = c.get(counter::EVENTS_SENT);
    assert!((5..=10).contains(&sent), "sent {sent}");
    assert_eq!(sent + c.get(counter::EVENTS_SUPPRESSED), 20);
    assert_eq!(events(&t).len() as u64, sent);
}

#[test]
fn slot_out_of_range_is_refused() {
    let t = tier();
    let f = Frame::tcp(v4(198, 51, 100, 1), 1, DOME4, PORT);
    assert!(t.bind_flow(&flow_of(&f), dome_common::MAX_SLOTS).is_err());
    assert!(t.set_budget(dome_common::MAX_SLOTS, &unlimited()).is_err());
    let _ = L4::Tcp;
}

/// Packets of one identity on both CPUs at once: the compare-and-swap
/// buckets must admit exactly the burst, no more (a lost update would let
/// extra packets through), no less.
#[test]
fn one_identity_on_two_cpus_gets_exactly_its_burst() {
    let t = tier();
    let f = Frame::tcp(v4(198, 51, 100, 80), 40000, DOME4, PORT);
    // One packet a second: nothing refills while the test runs.
    t.reset_identity(13, &packets(1, 2000)).unwrap();
    t.bind_flow(&flow_of(&f), 13).unwrap();
    let bytes = f.build();
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let per_thread = 4000 / cpus + 500;
    let passed: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cpus)
            .map(|cpu| {
                let (t, bytes) = (&t, &bytes);
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    (0..per_thread).filter(|_| run(t, bytes) == PASS).count() as u64
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(passed, 2000);
    assert_eq!(count(&t, counter::PASS_BOUND), 2000);
    assert_eq!(
        count(&t, counter::DROP_BUDGET),
        (cpus * per_thread) as u64 - 2000
    );
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within its bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// After a refusal, the flow drops on a shortcut without recharging; a
/// budget change by user space must end the shortcut at once.
#[test]
fn budget_change_ends_the_drop_shortcut() {
    let t = tier();
    let f = Frame::tcp(v4(198, 51, 100, 90), 40000, DOME4, PORT);
    t.reset_identity(14, &packets(1, 1)).unwrap();
    t.bind_flow(&flow_of(&f), 14).unwrap();
    let bytes = f.build();
    assert_eq!(run(&t, &bytes), PASS);
    for _ in 0..3 {
        assert_eq!(run(&t, &bytes), DROP);
    }
    // Only the first refusal is reported; the rest took the shortcut.
    let exhausted = events(&t)
        .iter()
        .filter(|e| e.kind == EventKind::BudgetExhausted)
        .count();
    assert_eq!(exhausted, 1);
    t.set_budget(14, &unlimited()).unwrap();
    assert_eq!(
        run(&t, &bytes),
        PASS,
        "the raised budget applies immediately"
    );
}

/// A SYN flood from one host must not lock its neighbours out: each address
/// spends its own pre-auth budget, and only the /24 as a whole is bounded by
/// the (larger) aggregate.
#[test]
fn a_flooding_host_does_not_exhaust_its_neighbours_until_the_prefix_aggregate_is_reached() {
    let t = tier_with_prefix(packets(1, 3), packets(1, 8), 1000);
    let syn = |host: u8, port: u16| {
        Frame::tcp(v4(203, 0, 113, host), port, DOME4, PORT)
            .flags(SYN)
            .build()
    };
    // Host A floods from fresh ports: its own burst of three, then nothing.
    let passed_a = (0..50)
        .filter(|i| run(&t, &syn(5, 10_000 + i)) == PASS)
        .count();
    assert_eq!(passed_a, 3);
    assert_eq!(count(&t, counter::DROP_PREAUTH), 47);
    // Host B of the same /24 still connects: A's refused SYNs cost the
    // aggregate nothing.
    for i in 0..3 {
        assert_eq!(run(&t, &syn(77, 20_000 + i)), PASS, "host B's SYN {i}");
    }
    // Host C takes the /24 to its aggregate of eight (3 + 3 + 2) ...
    assert_eq!(run(&t, &syn(78, 30_000)), PASS);
    assert_eq!(run(&t, &syn(78, 30_001)), PASS);
    // ... and from then on the /24 as a whole is refused, though C and the
    // fresh host D have budget of their own left.
    assert_eq!(run(&t, &syn(78, 30_002)), DROP);
    assert_eq!(run(&t, &syn(79, 40_000)), DROP);
    assert_eq!(count(&t, counter::DROP_PREAUTH_PREFIX), 2);
    assert_eq!(count(&t, counter::DROP_PREAUTH), 47);
    // Another /24 is untouched.
    let elsewhere = Frame::tcp(v4(203, 0, 114, 5), 1, DOME4, PORT)
        .flags(SYN)
        .build();
    assert_eq!(run(&t, &elsewhere), PASS);
    assert_eq!(count(&t, counter::PASS_UNBOUND), 3 + 3 + 2 + 1);
    let ev = events(&t);
    assert!(
        ev.iter()
            .any(|e| e.kind == EventKind::PreauthExhausted && e.detail == 1),
        "an address's exhaustion is reported: {ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e.kind == EventKind::PreauthExhausted && e.detail == 0x11),
        "the aggregate's exhaustion is reported as such: {ev:?}"
    );
}

/// Opening a new connection per request must not let an agent spend more
/// than its identity's budget: what each connection sent before it was bound
/// (handshake and request) is charged to the identity at bind time, even
/// when the connection closes without sending another packet.
#[test]
fn an_agent_opening_a_connection_per_request_pays_its_identity_for_every_request() {
    let t = tier();
    // 10 kB/s with a 6,000-byte burst; packets unlimited. A byte costs
    // 100 µs, so the test's own run time refills next to nothing.
    let spec = BudgetSpec {
        bytes_per_sec: 10_000,
        burst_bytes: 6_000,
        ..Default::default()
    };
    t.reset_identity(15, &spec).unwrap();
    let src = v4(198, 51, 100, 110);
    let start = dome::clock::monotonic_ns();
    let mut sent = 0u64;
    for conn in 0..5u16 {
        let port = 41_000 + conn;
        let syn = Frame::tcp(src, port, DOME4, PORT).flags(SYN).build();
        let request = Frame::tcp(src, port, DOME4, PORT).payload(1400).build();
        assert_eq!(run(&t, &syn), PASS);
        assert_eq!(run(&t, &request), PASS);
        sent += (syn.len() + request.len()) as u64;
        let flow = flow_of(&Frame::tcp(src, port, DOME4, PORT));
        assert_eq!(
            t.prebind_use(&flow),
            (2, (syn.len() + request.len()) as u64)
        );
        // Dome authenticates the request, binds the flow, answers, and the
        // client closes: no packet of this connection is ever seen bound.
        t.bind_flow(&flow, 15).unwrap();
        assert_eq!(t.prebind_use(&flow), (0, 0), "taken at bind time");
        t.unbind_flow(&flow).unwrap();
    }
    assert_eq!(sent, 5 * (54 + 1454));
    // Every pre-bind byte was charged, exactly once: 100 µs a byte, plus the
    // nanosecond each frame's cost is rounded up by.
    let per_byte = spec.to_kernel().byte_ns_per_kib / 1024;
    assert_eq!(per_byte, 100_000);
    let owed = sent * per_byte + 10;
    let tat = t.identity(15).unwrap().state.byte_tat;
    // The coarse clock lags a tick (4 ms at HZ=250), more after the CPUs
    // idled without ticks (7 ms seen): 50 ms is still a third of one
    // connection's charge.
    assert!(
        tat >= start + owed - 50_000_000 && tat <= dome::clock::monotonic_ns() + owed,
        "byte TAT {tat}, start {start}, owed {owed} ns"
    );
    // So the identity is over its 6,000-byte burst: the next connection's
    // first bound packet is refused, where without the charge the identity
    // would still have its whole burst.
    let next = Frame::tcp(src, 41_100, DOME4, PORT).payload(1400);
    t.bind_flow(&flow_of(&next), 15).unwrap();
    assert_eq!(run(&t, &next.build()), DROP);
    assert_eq!(count(&t, counter::DROP_BUDGET), 1);

    // Packets after the unbind (the connection's tail) start no count, so a
    // later binding of the same 4-tuple is not charged again.
    let closed = Frame::tcp(src, 41_000, DOME4, PORT);
    assert_eq!(run(&t, &closed.build()), PASS);
    assert_eq!(t.prebind_use(&flow_of(&closed)), (0, 0));
    t.reset_identity(15, &spec).unwrap();
    t.bind_flow(&flow_of(&closed), 15).unwrap();
    assert_eq!(t.identity(15).unwrap().state, Default::default());
}

/// A new connection's count starts at its SYN: leftovers of an earlier
/// connection on the same 4-tuple that was never bound are not charged to
/// the identity the new one binds to. UDP flows count from a QUIC Initial.
#[test]
fn a_syn_starts_a_flows_pre_bind_count_afresh() {
    let t = tier();
    let src = v4(198, 51, 100, 111);
    let f = Frame::tcp(src, 42_000, DOME4, PORT);
    let syn = f.clone().flags(SYN).build();
    assert_eq!(run(&t, &syn), PASS);
    assert_eq!(run(&t, &f.clone().payload(500).build()), PASS);
    assert_eq!(t.prebind_use(&flow_of(&f)), (2, 54 + 554));
    assert_eq!(run(&t, &syn), PASS);
    assert_eq!(t.prebind_use(&flow_of(&f)), (1, 54));

    let q = Frame::udp(src, 42_001, DOME4, QUIC_PORT).payload(1200);
    let mut initial = q.build();
    let l4 = craft::l4_offset(&q);
    initial[l4 + 8] = 0xc3; // long header, Initial
    assert_eq!(run(&t, &q.build()), PASS);
    assert_eq!(t.prebind_use(&flow_of(&q)), (0, 0), "no Initial yet");
    assert_eq!(run(&t, &initial), PASS);
    assert_eq!(run(&t, &initial), PASS);
    assert_eq!(run(&t, &q.build()), PASS);
    let len = initial.len() as u64;
    assert_eq!(t.prebind_use(&flow_of(&q)), (3, 3 * len));
}
