//! Headers: Ethernet (one VLAN tag), IPv4 or IPv6 (four extension headers
//! at most), and the TCP or UDP ports, into the flow a packet belongs to.
//! Verdict rules 1-4 of the program's (see `main.rs`) are decided here.

use core::{mem::size_of, ptr::read_unaligned};

use aya_ebpf::programs::XdpContext;
use dome_common::{FlowKey, PROTO_TCP, PROTO_UDP, counter};

use crate::maps::listening;
use crate::verdict::{Cpu, malformed, pass};

pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const ETH_P_8021Q: u16 = 0x8100;
pub(crate) const ETH_P_8021AD: u16 = 0x88a8;
/// IPv6 extension headers we walk (hop-by-hop, routing, fragment, destination options).
pub(crate) const IPV6_EXT_LIMIT: usize = 4;
/// The v4-mapped IPv6 prefix word `::ffff:`.
pub(crate) const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
pub(crate) const V4_PREFIX_MASK: u32 = u32::from_ne_bytes([0xff, 0xff, 0xff, 0]);

#[inline(always)]
pub(crate) fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; packet data has no
    // alignment guarantee, hence the unaligned read.
    Some(unsafe { read_unaligned((start + off) as *const T) })
}

/// A packet bound for one of Dome's listeners.
pub(crate) struct Packet {
    pub(crate) flow: FlowKey,
    /// The source's aggregate: its /24 (IPv4) or /64 (IPv6).
    pub(crate) prefix: [u32; 4],
    /// The first packet of a flow (TCP SYN, QUIC Initial).
    pub(crate) opening: bool,
    /// The frame's length in bytes.
    pub(crate) len: u64,
}

/// The packet's flow, or `Err` with the verdict (already counted) of a
/// packet that is not for Dome or is malformed.
#[inline(always)]
pub(crate) fn parse(ctx: &XdpContext, c: &mut Cpu) -> Result<Packet, u32> {
    let len = (ctx.data_end() - ctx.data()) as u64;

    let Some(mut ethertype) = load::<u16>(ctx, 12) else {
        return Err(pass(c, counter::PASS_OTHER));
    };
    ethertype = u16::from_be(ethertype);
    let mut off = 14usize;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = load::<u16>(ctx, 16) else {
            return Err(pass(c, counter::PASS_OTHER));
        };
        ethertype = u16::from_be(inner);
        off = 18;
    }

    let addr: [u32; 4];
    let prefix: [u32; 4];
    let proto: u8;
    if ethertype == ETH_P_IP {
        let Some(hdr) = load::<[u8; 20]>(ctx, off) else {
            return Err(malformed(c, len));
        };
        let ihl = (hdr[0] & 0x0f) as usize;
        let total = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
        if hdr[0] >> 4 != 4 || ihl < 5 || total < ihl * 4 {
            return Err(malformed(c, len));
        }
        if u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff != 0 {
            return Err(pass(c, counter::PASS_FRAGMENT));
        }
        proto = hdr[9];
        let saddr = u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
        addr = [0, 0, V4_MAPPED, saddr];
        prefix = [0, 0, V4_MAPPED, saddr & V4_PREFIX_MASK];
        off += ihl * 4;
    } else if ethertype == ETH_P_IPV6 {
        let Some(hdr) = load::<[u32; 10]>(ctx, off) else {
            return Err(malformed(c, len));
        };
        let first = hdr[0].to_ne_bytes();
        if first[0] >> 4 != 6 {
            return Err(malformed(c, len));
        }
        let mut next = hdr[1].to_ne_bytes()[2];
        addr = [hdr[2], hdr[3], hdr[4], hdr[5]];
        prefix = [hdr[2], hdr[3], 0, 0];
        off += 40;
        let mut walked = 0;
        while walked < IPV6_EXT_LIMIT {
            match next {
                0 | 43 | 60 => {
                    let Some(ext) = load::<[u8; 2]>(ctx, off) else {
                        return Err(malformed(c, len));
                    };
                    next = ext[0];
                    off += (ext[1] as usize + 1) * 8;
                }
                44 => {
                    let Some(frag) = load::<[u8; 4]>(ctx, off) else {
                        return Err(malformed(c, len));
                    };
                    if u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0 {
                        return Err(pass(c, counter::PASS_FRAGMENT));
                    }
                    next = frag[0];
                    off += 8;
                }
                _ => break,
            }
            walked += 1;
        }
        if matches!(next, 0 | 43 | 44 | 60) {
            return Err(malformed(c, len));
        }
        proto = next;
    } else {
        return Err(pass(c, counter::PASS_OTHER));
    }

    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(pass(c, counter::PASS_OTHER));
    }
    let Some(ports) = load::<[u8; 4]>(ctx, off) else {
        return Err(malformed(c, len));
    };
    let dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    if !listening(proto, dst_port) {
        return Err(pass(c, counter::PASS_OTHER));
    }
    // Built in one literal: `FlowKey::default()` plus field stores compiles
    // to a byte-at-a-time memset call on BPF.
    let flow = FlowKey {
        addr,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port,
        proto,
        _pad0: 0,
        _pad1: 0,
    };

    // Whether this is the first packet of a flow (TCP SYN, QUIC Initial).
    let opening = if proto == PROTO_TCP {
        let Some(doff_flags) = load::<[u8; 2]>(ctx, off + 12) else {
            return Err(malformed(c, len));
        };
        if doff_flags[0] >> 4 < 5 || load::<[u8; 20]>(ctx, off).is_none() {
            return Err(malformed(c, len));
        }
        doff_flags[1] & 0x12 == 0x02
    } else {
        if load::<[u8; 8]>(ctx, off).is_none() {
            return Err(malformed(c, len));
        }
        match load::<u8>(ctx, off + 8) {
            Some(b) => b & 0xf0 == 0xc0,
            None => false,
        }
    };
    Ok(Packet {
        flow,
        prefix,
        opening,
        len,
    })
}
