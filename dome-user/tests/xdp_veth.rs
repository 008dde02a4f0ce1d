//! The XDP program attached in native mode to a veth inside network
//! namespaces this test creates (and always removes): real packets sent from
//! one namespace, counted by the program and by a socket in the other.
//! Traffic never leaves the two namespaces. Needs root.
#![cfg(feature = "kernel-tests")]

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use dome::kernel::{AttachMode, BudgetSpec, Flow, KernelTier, L4, ModeSetting, ProgramSettings};
use dome_common::counter;

const SENDER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const DOME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const LISTEN: u16 = 5555;
const OTHER: u16 = 6666;

/// Two namespaces joined by a veth pair; removed on drop, even on panic.
struct Netns {
    sender: String,
    dome: String,
    dome_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn create() -> Netns {
        let id = std::process::id() % 100_000;
        let n = Netns {
            sender: format!("dome-snd-{id}"),
            dome: format!("dome-rcv-{id}"),
            dome_if: format!("dvr{id}"),
        };
        let snd_if = format!("dvs{id}");
        // Whatever an earlier crashed run left behind goes first.
        let _ = Command::new("ip")
            .args(["netns", "del", &n.sender])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &n.dome]).output();
        ip(&["netns", "add", &n.sender]);
        ip(&["netns", "add", &n.dome]);
        ip(&[
            "link", "add", &snd_if, "type", "veth", "peer", "name", &n.dome_if,
        ]);
        ip(&["link", "set", &snd_if, "netns", &n.sender]);
        ip(&["link", "set", &n.dome_if, "netns", &n.dome]);
        for (ns, dev, addr) in [
            (&n.sender, &snd_if, format!("{SENDER}/30")),
            (&n.dome, &n.dome_if, format!("{DOME}/30")),
        ] {
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.sender])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.dome])
            .output();
    }
}

/// Moves the calling thread into namespace `name`.
fn enter(name: &str) {
    let f = File::open(format!("/var/run/netns/{name}")).expect("netns file");
    // SAFETY: a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Receives datagrams until `quiet` passes with none.
fn drain(sock: &UdpSocket, quiet: Duration) -> usize {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while sock.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

enum Step {
    /// Send `count` datagrams from `src_port` to `dst_port`, then report.
    Send {
        src_port: u16,
        dst_port: u16,
        count: usize,
    },
    Done,
}

#[test]
fn native_xdp_on_veth_meters_real_packets() {
    let ns = Netns::create();
    let (to_sender, sender_rx) = mpsc::channel::<Step>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();

    std::thread::scope(|s| {
        let sender_ns = ns.sender.clone();
        s.spawn(move || {
            enter(&sender_ns);
            let mut socks = std::collections::HashMap::new();
            while let Ok(Step::Send {
                src_port,
                dst_port,
                count,
            }) = sender_rx.recv()
            {
                let sock = socks.entry(src_port).or_insert_with(|| {
                    UdpSocket::bind(SocketAddr::new(IpAddr::V4(SENDER), src_port)).unwrap()
                });
                let to = SocketAddr::new(IpAddr::V4(DOME), dst_port);
                for i in 0..count {
                    sock.send_to(format!("datagram {i}").as_bytes(), to)
                        .unwrap();
                }
                sent_tx.send(()).unwrap();
            }
        });

        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            enter(&ns.dome);
            let tier: Arc<KernelTier> = KernelTier::load(&ProgramSettings {
                tcp_ports: vec![],
                udp_ports: vec![LISTEN],
                preauth: BudgetSpec {
                    packets_per_sec: 1,
                    burst_packets: 5,
                    ..Default::default()
                },
                preauth_prefix: BudgetSpec::default(),
                events_per_sec: 1000,
            })
            .expect("load");
            let mode = tier
                .attach(&ns.dome_if, ModeSetting::Native)
                .expect("native attach on veth");
            assert_eq!(mode, AttachMode::Native);

            let d = DomeSide {
                tier: &tier,
                listener: UdpSocket::bind((DOME, LISTEN)).unwrap(),
                other: UdpSocket::bind((DOME, OTHER)).unwrap(),
                to_sender: &to_sender,
                sent_rx: &sent_rx,
            };
            a_port_xdp_ignores_gets_everything(&d);
            an_unbound_flow_gets_its_sources_preauth_burst(&d);
            a_bound_flow_is_charged_to_its_identity(&d);
            a_blocked_prefix_stops_listener_ports_only_until_unblocked(&d);
            detached_nothing_is_metered(&d);
        }));
        to_sender.send(Step::Done).unwrap();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    drop(ns);
}

/// What the steps of [`native_xdp_on_veth_meters_real_packets`] use, in
/// Dome's namespace: the attached tier, a socket on the listener port XDP
/// meters and one on a port it ignores, and the sender thread's channels.
struct DomeSide<'a> {
    tier: &'a KernelTier,
    listener: UdpSocket,
    other: UdpSocket,
    to_sender: &'a mpsc::Sender<Step>,
    sent_rx: &'a mpsc::Receiver<()>,
}

impl DomeSide<'_> {
    /// Has the sender send `count` datagrams from `src_port` to `dst_port`;
    /// returns once they are sent.
    fn send(&self, src_port: u16, dst_port: u16, count: usize) {
        self.to_sender
            .send(Step::Send {
                src_port,
                dst_port,
                count,
            })
            .unwrap();
        self.sent_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}

/// Warm up ARP with a port XDP ignores; everything there arrives.
fn a_port_xdp_ignores_gets_everything(d: &DomeSide) {
    let (tier, other) = (d.tier, &d.other);
    d.send(4000, OTHER, 20);
    assert_eq!(drain(other, Duration::from_millis(300)), 20);
    let c = tier.counters().unwrap();
    assert!(c.get(counter::PASS_OTHER) >= 20, "{c:?}");
}

/// Unbound flow: the source address gets its pre-auth burst of five.
fn an_unbound_flow_gets_its_sources_preauth_burst(d: &DomeSide) {
    let (tier, listener) = (d.tier, &d.listener);
    let started = Instant::now();
    d.send(4001, LISTEN, 30);
    let got = drain(listener, Duration::from_millis(300));
    let refill = started.elapsed().as_secs() as usize;
    assert!(
        (5..=5 + refill).contains(&got),
        "received {got} of 30 unbound datagrams"
    );
    let c = tier.counters().unwrap();
    assert_eq!(c.get(counter::PASS_UNBOUND) as usize, got);
    assert_eq!(c.get(counter::DROP_PREAUTH) as usize, 30 - got);
}

/// A bound flow is charged to its identity: a burst of 12.
fn a_bound_flow_is_charged_to_its_identity(d: &DomeSide) {
    let (tier, listener) = (d.tier, &d.listener);
    let flow = Flow {
        proto: L4::Udp,
        src: IpAddr::V4(SENDER),
        src_port: 4002,
        dst_port: LISTEN,
    };
    tier.reset_identity(
        21,
        &BudgetSpec {
            packets_per_sec: 1,
            burst_packets: 12,
            ..Default::default()
        },
    )
    .unwrap();
    tier.bind_flow(&flow, 21).unwrap();
    let started = Instant::now();
    d.send(4002, LISTEN, 40);
    let got = drain(listener, Duration::from_millis(300));
    let refill = started.elapsed().as_secs() as usize;
    assert!(
        (12..=12 + refill).contains(&got),
        "received {got} of 40 bound datagrams"
    );
    let c = tier.counters().unwrap();
    assert_eq!(c.get(counter::PASS_BOUND) as usize, got);
    assert_eq!(c.get(counter::DROP_BUDGET) as usize, 40 - got);
}

/// Blocking the sender's prefix stops everything on listener ports, but
/// not other ports; unblocked, the (now unlimited) identity gets
/// everything.
fn a_blocked_prefix_stops_listener_ports_only_until_unblocked(d: &DomeSide) {
    let (tier, listener, other) = (d.tier, &d.listener, &d.other);
    tier.block_prefix(
        &"198.18.0.0/30".parse().unwrap(),
        Some(Duration::from_secs(30)),
    )
    .unwrap();
    tier.reset_identity(21, &BudgetSpec::default()).unwrap();
    d.send(4002, LISTEN, 10);
    assert_eq!(drain(listener, Duration::from_millis(300)), 0);
    assert_eq!(tier.counters().unwrap().get(counter::DROP_BLOCKLIST), 10);
    // ... but not other ports.
    d.send(4000, OTHER, 5);
    assert_eq!(drain(other, Duration::from_millis(300)), 5);

    // Unblocked, the (now unlimited) identity gets everything.
    tier.unblock_prefix(&"198.18.0.0/30".parse().unwrap())
        .unwrap();
    d.send(4002, LISTEN, 25);
    assert_eq!(drain(listener, Duration::from_millis(300)), 25);
}

/// Detached: nothing is metered any more.
fn detached_nothing_is_metered(d: &DomeSide) {
    let (tier, listener) = (d.tier, &d.listener);
    tier.detach();
    assert!(tier.attachment().is_none());
    let before = tier.counters().unwrap();
    d.send(4001, LISTEN, 10);
    assert_eq!(drain(listener, Duration::from_millis(300)), 10);
    assert_eq!(tier.counters().unwrap(), before);
}
