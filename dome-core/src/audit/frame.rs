//! The on-disk frame: a 64-byte header, then the rkyv payload padded to 16
//! bytes, so every payload starts 16-byte aligned in its segment and can be
//! read in place. No I/O here.
//!
//! Header (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `DAF1` |
//! | 4 | 4 | payload length (unpadded) |
//! | 8 | 8 | sequence number (contiguous across segments) |
//! | 16 | 2 | record schema version |
//! | 18 | 2 | flags (0) |
//! | 20 | 4 | CRC-32 (IEEE) of the header without this field, then the payload |
//! | 24 | 8 | record time, Unix µs (lets a query skip by time without decoding) |
//! | 32 | 32 | SHA-256 of the previous frame (header and payload) |
//!
//! The chain: each frame names the hash of the one before, so a changed,
//! removed or reordered frame breaks the link after it even when its own
//! CRC was recomputed.

use ring::digest;

/// The four bytes every frame starts with; a reader looking for the next
/// good frame after damage looks for them at each [`ALIGN`] boundary.
pub const MAGIC: [u8; 4] = *b"DAF1";
/// The header's size in bytes; the payload follows it.
pub const HEADER: usize = 64;
/// Payloads are padded to a multiple of this many bytes, so each frame,
/// and each payload, starts 16-byte aligned.
pub const ALIGN: usize = 16;
/// Larger payloads are refused (a record is a few hundred bytes; logged
/// arguments are bounded by the request body limit).
pub const MAX_PAYLOAD: usize = 16 << 20;

/// A SHA-256 digest: a frame's hash, and the link to it the next
/// frame's header holds.
pub type Hash = [u8; 32];

/// The fields of a frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes, without the padding; at most
    /// [`MAX_PAYLOAD`].
    pub len: u32,
    /// Sequence number: from 1, contiguous across segments.
    pub seq: u64,
    /// What the payload is: [`super::record::SCHEMA`] for a call record;
    /// `dome-user` gives its checkpoints and retirement notes other values.
    pub schema: u16,
    /// The CRC-32 the header stores ([`crc_of`]); [`read`] checks it.
    pub crc: u32,
    /// Unix microseconds (a record's: its call's arrival), so a query can
    /// skip frames by time without decoding them.
    pub time_us: u64,
    /// The hash of the frame before ([`hash_of`]); all zeros in the
    /// trail's first frame (seq 1).
    pub prev: Hash,
}

/// `len` rounded up to a multiple of [`ALIGN`]: the room a payload of
/// `len` bytes takes after its header.
pub fn padded(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// Appends one frame for `payload` to `out` and returns its hash (the next
/// frame's `prev`).
pub fn append(
    out: &mut Vec<u8>,
    seq: u64,
    schema: u16,
    time_us: u64,
    prev: &Hash,
    payload: &[u8],
) -> Hash {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&time_us.to_le_bytes());
    out.extend_from_slice(prev);
    out.extend_from_slice(payload);
    let crc = crc_of(&out[start..start + HEADER], payload);
    out[start + 20..start + 24].copy_from_slice(&crc.to_le_bytes());
    let hash = hash_of(&out[start..start + HEADER], payload);
    out.resize(start + HEADER + padded(payload.len()), 0);
    hash
}

/// The CRC a frame's header stores. Public so the fuzz target
/// `audit_recover` can seal frames it made up (damage a CRC catches
/// never reaches the record decoder).
pub fn crc_of(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..20]);
    h.update(&header[24..HEADER]);
    h.update(payload);
    h.finalize()
}

/// The frame's hash: SHA-256 over its header and payload.
pub fn hash_of(header: &[u8], payload: &[u8]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(header);
    ctx.update(payload);
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Why the bytes at an offset are not a good frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bad {
    /// Fewer bytes than a frame needs: a write cut short (a torn tail).
    Short,
    /// The bytes do not start with [`MAGIC`]: no frame starts here.
    BadMagic,
    /// The header's payload length, above [`MAX_PAYLOAD`].
    TooLong(u32),
    /// The CRC the header stores is not that of the bytes read: the header
    /// or payload was damaged, or changed without resealing.
    Crc {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the header and payload as read.
        computed: u32,
    },
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Short => write!(f, "the frame is cut short"),
            Bad::BadMagic => write!(f, "no frame starts here (bad magic)"),
            Bad::TooLong(n) => write!(f, "payload length {n} is out of bounds"),
            Bad::Crc { stored, computed } => write!(
                f,
                "CRC mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
        }
    }
}

/// One frame read from a buffer: its header, its payload and where the
/// next frame starts.
pub struct Frame<'b> {
    /// The header, decoded.
    pub header: Header,
    /// The header's [`HEADER`] bytes as stored (its hash covers them).
    pub raw_header: &'b [u8],
    /// The payload, without its padding.
    pub payload: &'b [u8],
    /// Offset in the buffer where the next frame would start (past the
    /// padding).
    pub next: usize,
}

impl Frame<'_> {
    /// The frame's hash ([`hash_of`]): what the next frame's `prev` must be.
    pub fn hash(&self) -> Hash {
        hash_of(self.raw_header, self.payload)
    }
}

/// Reads the frame at `at`, checking its magic, length and CRC.
pub fn read(buf: &[u8], at: usize) -> Result<Frame<'_>, Bad> {
    let raw = buf.get(at..at + HEADER).ok_or(Bad::Short)?;
    if raw[..4] != MAGIC {
        return Err(Bad::BadMagic);
    }
    let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
    let len = u32_at(4);
    if len as usize > MAX_PAYLOAD {
        return Err(Bad::TooLong(len));
    }
    let body = at + HEADER;
    let next = body + padded(len as usize);
    if buf.len() < next {
        return Err(Bad::Short);
    }
    let payload = &buf[body..body + len as usize];
    let stored = u32_at(20);
    let computed = crc_of(raw, payload);
    if stored != computed {
        return Err(Bad::Crc { stored, computed });
    }
    let mut prev = [0; 32];
    prev.copy_from_slice(&raw[32..64]);
    Ok(Frame {
        header: Header {
            len,
            seq: u64_at(8),
            schema: u16::from_le_bytes([raw[16], raw[17]]),
            crc: stored,
            time_us: u64_at(24),
            prev,
        },
        raw_header: raw,
        payload,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_aligned_and_chained() {
        let mut buf = Vec::new();
        let h1 = append(&mut buf, 1, 1, 10, &[0; 32], b"hello");
        let h2 = append(&mut buf, 2, 1, 20, &h1, b"a longer payload of 23b");
        assert_eq!(buf.len(), HEADER + 16 + HEADER + 32);
        let f1 = read(&buf, 0).unwrap();
        assert_eq!(f1.payload, b"hello");
        assert_eq!((f1.header.seq, f1.header.time_us), (1, 10));
        assert_eq!(f1.hash(), h1);
        assert_eq!(f1.next % ALIGN, 0);
        let f2 = read(&buf, f1.next).unwrap();
        assert_eq!(f2.header.prev, h1);
        assert_eq!(f2.hash(), h2);
        assert_eq!(f2.next, buf.len());
    }

    #[test]
    fn damage_is_named() {
        let mut buf = Vec::new();
        append(&mut buf, 7, 1, 0, &[0; 32], b"payload");
        assert_eq!(read(&buf[..40], 0).err(), Some(Bad::Short));
        assert_eq!(read(&buf[..HEADER + 3], 0).err(), Some(Bad::Short));
        let mut flipped = buf.clone();
        flipped[HEADER + 2] ^= 1;
        assert!(matches!(read(&flipped, 0), Err(Bad::Crc { .. })));
        let mut seq = buf.clone();
        seq[8] = 8;
        assert!(matches!(read(&seq, 0), Err(Bad::Crc { .. })));
        let mut magic = buf.clone();
        magic[0] = b'X';
        assert_eq!(read(&magic, 0).err(), Some(Bad::BadMagic));
        let mut long = buf;
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read(&long, 0).err(), Some(Bad::TooLong(u32::MAX)));
    }
}
