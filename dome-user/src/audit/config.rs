//! `[audit]`: where the trail lives and how hard it holds on to records.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a record counts as written, and so when its call may be answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// The writer syncs as soon as it has written anything; a call is
    /// answered after its record is on disk. Records that arrive during a
    /// sync share the next one (group commit without delay).
    Always,
    /// Group commit: the writer syncs at most once every `commit_ms` (at
    /// once when the last sync is older); a call is answered after its
    /// record is on disk (it waits up to `commit_ms` plus one sync). Under
    /// load, fewer syncs than `always` for some latency.
    #[default]
    Batch,
    /// Records go to the OS as the writer gets to them; calls do not wait.
    /// A crash of Dome can lose what was still in the ring; a crash of the
    /// machine can lose what the OS had not written yet.
    Off,
}

/// What a call does when the ring is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Wait up to `full_wait_ms` for room, then refuse the call (it does
    /// not run: nothing happens unrecorded).
    #[default]
    Fail,
    /// Run the call unrecorded, counting the drop on `/stats`.
    Drop,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The segment folder (relative to the config file); default
    /// `<auth.data_dir>/audit`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// This node's name in records; default the host name.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub fsync: Fsync,
    /// Group commit interval for `fsync = "batch"`.
    #[serde(default = "default_commit_ms")]
    pub commit_ms: u64,
    /// Records the ring holds (calls in flight count against it).
    #[serde(default = "default_ring")]
    pub ring: usize,
    #[serde(default)]
    pub on_full: OnFull,
    #[serde(default = "default_full_wait_ms")]
    pub full_wait_ms: u64,
    /// How long a call waits for its record to be durable before it fails
    /// closed.
    #[serde(default = "default_durable_timeout_ms")]
    pub durable_timeout_ms: u64,
    /// A segment is sealed at this size …
    #[serde(default = "default_segment_mb")]
    pub segment_mb: u64,
    /// … or this age.
    #[serde(default = "default_segment_s")]
    pub segment_s: u64,
    /// Sealed segments older than this are removed (0: kept).
    #[serde(default = "default_retain_days")]
    pub retain_days: u64,
    /// Oldest sealed segments are removed while the trail is larger (0:
    /// no limit).
    #[serde(default)]
    pub retain_mb: u64,
    /// A signed checkpoint at most this many seconds after the first frame
    /// it covers …
    #[serde(default = "default_checkpoint_s")]
    pub checkpoint_s: u64,
    /// … or after this many frames, whichever comes first (see
    /// `checkpoint`).
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_records: u64,
    /// The node's Ed25519 signing key for checkpoints (PKCS#8 PEM,
    /// relative to the config file); made on first start when missing.
    /// Default `audit.key` under `[auth] data_dir`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_commit_ms() -> u64 {
    2
}
fn default_ring() -> usize {
    65_536
}
fn default_full_wait_ms() -> u64 {
    50
}
fn default_durable_timeout_ms() -> u64 {
    5_000
}
fn default_segment_mb() -> u64 {
    64
}
fn default_segment_s() -> u64 {
    3_600
}
fn default_retain_days() -> u64 {
    90
}
fn default_checkpoint_s() -> u64 {
    60
}
fn default_checkpoint_records() -> u64 {
    1_000
}

impl Default for AuditConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// The settings the writer and the request path read live (a reload
/// swaps them; the folder and ring size take a restart).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub fsync: Fsync,
    pub commit: Duration,
    pub on_full: OnFull,
    pub full_wait: Duration,
    pub durable_timeout: Duration,
    pub segment_bytes: u64,
    pub segment_age: Duration,
    pub retain_age: Option<Duration>,
    pub retain_bytes: Option<u64>,
    pub checkpoint_s: u64,
    pub checkpoint_records: u64,
    /// How often an idle writer wakes to look at rotation and retention
    /// (not configurable: tests lengthen it to see what wakes the writer).
    pub idle_look: Duration,
}

impl AuditConfig {
    pub fn settings(&self) -> Settings {
        Settings {
            fsync: self.fsync,
            commit: Duration::from_millis(self.commit_ms.max(1)),
            on_full: self.on_full,
            full_wait: Duration::from_millis(self.full_wait_ms),
            durable_timeout: Duration::from_millis(self.durable_timeout_ms.max(1)),
            segment_bytes: self.segment_mb.max(1) << 20,
            segment_age: Duration::from_secs(self.segment_s.max(1)),
            retain_age: (self.retain_days > 0)
                .then(|| Duration::from_secs(self.retain_days * 86_400)),
            retain_bytes: (self.retain_mb > 0).then_some(self.retain_mb << 20),
            checkpoint_s: self.checkpoint_s.max(1),
            checkpoint_records: self.checkpoint_records.max(1),
            idle_look: Duration::from_millis(200),
        }
    }

    pub fn node_name(&self) -> String {
        if let Some(n) = &self.node {
            return n.clone();
        }
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return "dome".into();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }
}
