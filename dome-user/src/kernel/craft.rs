//! Builds Ethernet frames for `BPF_PROG_TEST_RUN` (kernel tests and the XDP
//! benchmark). Checksums are left zero: XDP does not look at them.

use std::net::IpAddr;

use super::L4;

/// TCP flag bits.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// One frame to build.
#[derive(Clone, Debug)]
pub struct Frame {
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: L4,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// IPv4 options bytes (a multiple of 4, at most 40).
    pub ipv4_options: usize,
    pub payload: usize,
}

impl Frame {
    pub fn tcp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        Frame {
            vlan: None,
            src,
            dst,
            proto: L4::Tcp,
            src_port,
            dst_port,
            tcp_flags: ACK,
            ipv4_options: 0,
            payload: 0,
        }
    }

    pub fn udp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        Frame {
            proto: L4::Udp,
            tcp_flags: 0,
            ..Frame::tcp(src, src_port, dst, dst_port)
        }
    }

    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    pub fn flags(mut self, f: u8) -> Self {
        self.tcp_flags = f;
        self
    }

    pub fn payload(mut self, n: usize) -> Self {
        self.payload = n;
        self
    }

    pub fn ipv4_options(mut self, n: usize) -> Self {
        self.ipv4_options = n;
        self
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // dst MAC
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // src MAC
        if let Some(id) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
        }
        let l4_len = match self.proto {
            L4::Tcp => 20,
            L4::Udp => 8,
        } + self.payload;
        let proto = match self.proto {
            L4::Tcp => 6u8,
            L4::Udp => 17u8,
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 5 + self.ipv4_options / 4;
                let total = (ihl * 4 + l4_len) as u16;
                f.push(0x40 | ihl as u8);
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0, 1, 0x40, 0]); // id, DF
                f.push(64);
                f.push(proto);
                f.extend_from_slice(&[0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                // NOP options.
                f.extend(std::iter::repeat_n(1u8, self.ipv4_options));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4_len as u16).to_be_bytes());
                f.push(proto);
                f.push(64);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("source and destination must be of one family"),
        }
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        match self.proto {
            L4::Tcp => {
                f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
                f.push(5 << 4);
                f.push(self.tcp_flags);
                f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, csum, urg
            }
            L4::Udp => {
                f.extend_from_slice(&(l4_len as u16).to_be_bytes());
                f.extend_from_slice(&[0, 0]);
            }
        }
        f.extend(std::iter::repeat_n(0x61u8, self.payload));
        f
    }
}

/// Offset of the IP header in a frame built by [`Frame::build`].
pub fn ip_offset(frame: &Frame) -> usize {
    if frame.vlan.is_some() { 18 } else { 14 }
}

/// Offset of the L4 header in a frame built by [`Frame::build`].
pub fn l4_offset(frame: &Frame) -> usize {
    ip_offset(frame)
        + match frame.src {
            IpAddr::V4(_) => 20 + frame.ipv4_options,
            IpAddr::V6(_) => 40,
        }
}
