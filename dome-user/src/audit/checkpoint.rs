//! Signed checkpoints and retirement notes: the frames of the trail that
//! are not call records. No I/O here except loading or creating the key.
//!
//! **Why checkpoints.** The hash chain shows that a frame was changed,
//! removed or reordered only to someone who does not recompute it: an
//! attacker with write access to the folder can rewrite a record, recompute
//! its CRC and every hash after it, or cut the newest records off, and the
//! chain still links. A checkpoint is a frame in the chain that states
//! (node, sequence, head hash, time) and is signed with the node's key. A
//! rewrite before a checkpoint breaks its signature (the head it signed is
//! no longer the chain's); removing a checkpoint breaks the chain, and
//! re-linking breaks the next checkpoint's signature. Each checkpoint
//! promises the next within `every_records` frames, so `verify` names a
//! trail whose newest checkpoints were cut off and the rest rewritten when
//! more frames follow the last one than it promised. Cutting the newest
//! frames back to a checkpoint leaves a shorter, valid trail: only a head
//! anchored outside the host tells that (`dome audit checkpoints` exports
//! them, `dome audit verify --expect-head SEQ:HASH` checks one). Dome
//! writes a checkpoint every `checkpoint_s` seconds or `checkpoint_records`
//! frames, when it starts (signing what it recovered), before it retires
//! segments, and when it shuts down cleanly, so a stopped Dome's trail ends
//! in a signed checkpoint.
//!
//! **Why a dedicated key file.** The assertion keys (`[assertion] keys`)
//! sign what upstreams trust and are rotated on the upstreams' schedule
//! (and are ephemeral when none is configured); the audit key must outlive
//! them, since a checkpoint is checked for as long as the trail is kept. An
//! ephemeral key would prove nothing after a restart. So the audit key is
//! its own Ed25519 key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519`
//! writes it), by default `audit.key` under `[auth] data_dir`, outside the
//! audit folder: tools that archive or ship the trail need no access to it.
//! Dome creates it on first start with mode 0600 and writes its public key
//! beside it (`audit.key.pub`, hex), logs it and shows it on `/stats`; pin
//! it with `verify --pubkey` (an attacker who can replace the key file can
//! re-sign; one who does not know the pinned public key cannot).
//!
//! **Retirement notes.** Retention removes the oldest segments. Before it
//! does, it writes a note into the chain naming what it removes (segments,
//! sequence range, bytes, why, when) and a checkpoint that signs it, and
//! syncs both. `verify` then tells retention (a note accounts for the
//! missing start) from deletion (nothing does).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::frame::Hash;

/// Frame schema of a checkpoint (records use `record::SCHEMA`).
pub const CHECKPOINT: u16 = 0x4301;
/// Frame schema of a retirement note.
pub const RETIRED: u16 = 0x5201;

/// Why a checkpoint or a retirement note is not good: what `verify`
/// reports of one (after the frame it is in).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("the head is not 32 hex bytes")]
    HeadNotHex,
    #[error("the key is not 32 hex bytes")]
    KeyNotHex,
    /// Fingerprints of the key that signed it and of the one expected.
    #[error("it is signed by key {signed_by}, not by the expected key {expected}")]
    WrongKey { signed_by: String, expected: String },
    #[error("the signature is not hex")]
    SignatureNotHex,
    #[error("the signature does not verify")]
    BadSignature,
    /// No key was pinned and the checkpoint names none that parses.
    #[error("it names no valid key")]
    NoValidKey,
    #[error("the checkpoint does not decode")]
    Checkpoint(#[source] serde_json::Error),
    #[error("the retirement note does not decode")]
    Retired(#[source] serde_json::Error),
}

/// Why the node's key (or a public key to check against) is not had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system's random source failed (ring says no more).
    #[error("cannot generate a key")]
    Generate,
    /// Creating the key's folder, or writing the key or its public half.
    #[error("{}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The key file does not read as a PEM private key.
    #[error("{}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: not a PKCS#8 key", .0.display())]
    NotPkcs8(PathBuf),
    #[error("{}: not an Ed25519 key", path.display())]
    NotEd25519 {
        path: PathBuf,
        #[source]
        source: ring::error::KeyRejected,
    },
    /// The key's public half is not 32 bytes.
    #[error("{}: not an Ed25519 key", .0.display())]
    PublicKeyLength(PathBuf),
    /// `--pubkey` is neither hex nor a file that reads. The I/O error is in
    /// the text (in parentheses), so it is not also the source.
    #[error("public key `{given}`: neither 64 hex digits nor a readable file ({error})")]
    PublicKeyUnreadable {
        given: String,
        error: std::io::Error,
    },
    #[error("{0}: does not hold a hex Ed25519 public key")]
    PublicKeyNotHex(String),
}

impl KeyError {
    fn file(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError {
        let path = path.to_path_buf();
        move |source| KeyError::File { path, source }
    }
}

/// Why a checkpoint was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// At start, over what recovery found.
    Start,
    /// `checkpoint_s` or `checkpoint_records` came due.
    Periodic,
    /// Right after a retirement note, before the segments go.
    Retirement,
    /// At a clean shutdown: the trail ends here.
    Shutdown,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Start => "start",
            Reason::Periodic => "periodic",
            Reason::Retirement => "retirement",
            Reason::Shutdown => "shutdown",
        }
    }

    fn byte(self) -> u8 {
        match self {
            Reason::Start => 1,
            Reason::Periodic => 2,
            Reason::Retirement => 3,
            Reason::Shutdown => 4,
        }
    }
}

/// A checkpoint frame's payload (JSON; a few hundred bytes, rare).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub node: String,
    /// The frame it vouches for: the one right before it.
    pub seq: u64,
    /// Hex SHA-256 of that frame (the chain's head at `seq`).
    pub head: String,
    pub time_us: u64,
    pub reason: Reason,
    /// The next checkpoint follows within this many frames.
    pub every_records: u64,
    /// … or about this many seconds after the first frame it will cover.
    pub every_s: u64,
    /// Hex Ed25519 public key that signed it.
    pub key: String,
    /// Hex Ed25519 signature over [`Checkpoint::message`].
    pub sig: String,
}

impl Checkpoint {
    /// The bytes signed: a domain tag, then every field but the signature,
    /// fixed-width or length-prefixed (no JSON canonicalisation to trust).
    pub fn message(&self) -> Result<Vec<u8>, CheckpointError> {
        let head = decode32(&self.head).ok_or(CheckpointError::HeadNotHex)?;
        let key = decode32(&self.key).ok_or(CheckpointError::KeyNotHex)?;
        let mut m = Vec::with_capacity(160 + self.node.len());
        m.extend_from_slice(b"dome-audit-checkpoint/1\0");
        m.extend_from_slice(&(self.node.len() as u64).to_le_bytes());
        m.extend_from_slice(self.node.as_bytes());
        m.extend_from_slice(&self.seq.to_le_bytes());
        m.extend_from_slice(&head);
        m.extend_from_slice(&self.time_us.to_le_bytes());
        m.push(self.reason.byte());
        m.extend_from_slice(&self.every_records.to_le_bytes());
        m.extend_from_slice(&self.every_s.to_le_bytes());
        m.extend_from_slice(&key);
        Ok(m)
    }

    pub fn public_key(&self) -> Option<[u8; 32]> {
        decode32(&self.key)
    }

    /// Checks the signature against `key` (which must also be the key the
    /// checkpoint names).
    pub fn verify(&self, key: &[u8; 32]) -> Result<(), CheckpointError> {
        if self.public_key().as_ref() != Some(key) {
            return Err(CheckpointError::WrongKey {
                signed_by: fingerprint_hex(&self.key),
                expected: fingerprint(key),
            });
        }
        let sig = hex::decode(&self.sig).map_err(|_| CheckpointError::SignatureNotHex)?;
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&self.message()?, &sig)
            .map_err(|_| CheckpointError::BadSignature)
    }

    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_payload(p: &[u8]) -> Result<Checkpoint, CheckpointError> {
        serde_json::from_slice(p).map_err(CheckpointError::Checkpoint)
    }
}

/// One segment a retirement removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredSegment {
    pub file: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub bytes: u64,
}

/// A retirement note's payload: what retention removes, written (and
/// synced, and signed by the checkpoint after it) before it is removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retired {
    pub time_us: u64,
    /// `age` (`retain_days`), `size` (`retain_mb`) or both.
    pub reason: String,
    pub segments: Vec<RetiredSegment>,
    /// Every frame before this one is retired (or was already).
    pub kept_from: u64,
    pub bytes: u64,
}

impl Retired {
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_payload(p: &[u8]) -> Result<Retired, CheckpointError> {
        serde_json::from_slice(p).map_err(CheckpointError::Retired)
    }

    /// The sequence range it removed.
    pub fn range(&self) -> (u64, u64) {
        (
            self.segments
                .first()
                .map_or(self.kept_from, |s| s.first_seq),
            self.kept_from.saturating_sub(1),
        )
    }
}

/// Whether a checkpoint is due: `unsigned` frames written since the last
/// one, the first of them at `unsigned_since_us`. Pure; the clock is
/// `now_us`.
pub fn due(
    unsigned: u64,
    unsigned_since_us: Option<u64>,
    every_records: u64,
    every_s: u64,
    now_us: u64,
) -> bool {
    unsigned > 0
        && (unsigned >= every_records.max(1)
            || unsigned_since_us
                .is_some_and(|t| now_us.saturating_sub(t) >= every_s.max(1) * 1_000_000))
}

fn decode32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// A key's short name: hex of the first 8 bytes of its SHA-256 (as the
/// assertion keys' `kid`).
pub fn fingerprint(key: &[u8; 32]) -> String {
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, key).as_ref()[..8])
}

fn fingerprint_hex(key: &str) -> String {
    decode32(key).map_or_else(|| "(malformed)".into(), |k| fingerprint(&k))
}

/// Parses a public key given as 64 hex digits, or a file holding them.
pub fn parse_public_key(s: &str) -> Result<[u8; 32], KeyError> {
    if let Some(k) = decode32(s.trim()) {
        return Ok(k);
    }
    let text = std::fs::read_to_string(s).map_err(|error| KeyError::PublicKeyUnreadable {
        given: s.to_string(),
        error,
    })?;
    decode32(text.trim()).ok_or_else(|| KeyError::PublicKeyNotHex(s.to_string()))
}

/// The node's signing key.
pub struct NodeKey {
    pair: Ed25519KeyPair,
    public: [u8; 32],
    pub path: PathBuf,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.fingerprint())
    }
}

/// Where a key's public half is published.
pub fn public_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

impl NodeKey {
    /// Loads the PKCS#8 PEM Ed25519 key at `path`, or creates one there
    /// (mode 0600, never over an existing file) when there is none. Writes
    /// the public key beside it. Returns the key and whether it was made.
    pub fn load_or_create(path: &Path) -> Result<(NodeKey, bool), KeyError> {
        use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
        let created = if path.exists() {
            false
        } else {
            let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| KeyError::Generate)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(KeyError::file(dir))?;
            }
            let mut f = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(KeyError::file(path))?
            };
            f.write_all(pem(der.as_ref()).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(KeyError::file(path))?;
            true
        };
        let der = match PrivateKeyDer::from_pem_file(path) {
            Ok(PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
            Ok(_) => return Err(KeyError::NotPkcs8(path.to_path_buf())),
            Err(source) => {
                return Err(KeyError::Pem {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|source| {
            KeyError::NotEd25519 {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::PublicKeyLength(path.to_path_buf()))?;
        let key = NodeKey {
            pair,
            public,
            path: path.to_path_buf(),
        };
        let pub_path = public_path(path);
        let want = format!("{}\n", key.public_hex());
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(want.as_str()) {
            std::fs::write(&pub_path, want).map_err(KeyError::file(&pub_path))?;
        }
        Ok((key, created))
    }

    /// A fresh key in memory (tests).
    pub fn generate() -> NodeKey {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("key generation");
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).expect("a key just made");
        let public = pair.public_key().as_ref().try_into().expect("32 bytes");
        NodeKey {
            pair,
            public,
            path: PathBuf::new(),
        }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.public)
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }

    /// A signed checkpoint over (`seq`, `head`) at `now_us`.
    #[allow(clippy::too_many_arguments)]
    pub fn checkpoint(
        &self,
        node: &str,
        seq: u64,
        head: &Hash,
        now_us: u64,
        reason: Reason,
        every_records: u64,
        every_s: u64,
    ) -> Checkpoint {
        let mut cp = Checkpoint {
            node: node.to_string(),
            seq,
            head: hex::encode(head),
            time_us: now_us,
            reason,
            every_records,
            every_s,
            key: self.public_hex(),
            sig: String::new(),
        };
        let msg = cp.message().expect("fields this function wrote");
        cp.sig = hex::encode(self.pair.sign(&msg));
        cp
    }
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_key_and_no_other_nor_once_changed() {
        let k = NodeKey::generate();
        let cp = k.checkpoint("edge-1", 41, &[7; 32], 1_000, Reason::Periodic, 1000, 60);
        assert!(cp.verify(&k.public()).is_ok());
        let back = Checkpoint::from_payload(&cp.to_payload()).unwrap();
        assert_eq!(back, cp);
        let other = NodeKey::generate();
        let wrong = cp.verify(&other.public()).unwrap_err();
        assert!(matches!(wrong, CheckpointError::WrongKey { .. }), "{wrong}");
        assert!(wrong.to_string().contains("not by"));
        let changes: [fn(&mut Checkpoint); 6] = [
            |c: &mut Checkpoint| c.seq += 1,
            |c: &mut Checkpoint| c.head = hex::encode([8; 32]),
            |c: &mut Checkpoint| c.time_us += 1,
            |c: &mut Checkpoint| c.node.push('x'),
            |c: &mut Checkpoint| c.every_records = 1_000_000,
            |c: &mut Checkpoint| c.reason = Reason::Shutdown,
        ];
        for change in changes {
            let mut c = cp.clone();
            change(&mut c);
            assert_eq!(
                c.verify(&k.public()).unwrap_err().to_string(),
                "the signature does not verify"
            );
        }
        // A forger who puts their own key in signs something that does
        // not verify against the pinned one.
        let forged = other.checkpoint("edge-1", 41, &[7; 32], 1_000, Reason::Periodic, 1000, 60);
        assert!(forged.verify(&k.public()).is_err());
    }

    #[test]
    fn a_public_key_that_does_not_read_says_why_once() {
        let e = parse_public_key("/nonexistent/dome.pub").unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            "public key `/nonexistent/dome.pub`: neither 64 hex digits nor a readable file \
             (No such file or directory (os error 2))"
        );
    }

    #[test]
    fn a_checkpoint_comes_due_by_count_or_by_time_and_never_over_nothing() {
        let s = 1_000_000;
        assert!(!due(0, None, 10, 60, 100 * s));
        assert!(!due(0, Some(0), 10, 60, 100 * s));
        assert!(!due(9, Some(50 * s), 10, 60, 100 * s));
        assert!(due(10, Some(50 * s), 10, 60, 100 * s));
        assert!(due(1, Some(40 * s), 10, 60, 100 * s));
        assert!(!due(1, Some(41 * s), 10, 60, 100 * s));
        // A clock that went back is no reason to panic.
        assert!(!due(1, Some(200 * s), 10, 60, 100 * s));
    }

    #[test]
    fn the_key_file_is_made_once_private_and_its_public_half_published() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("dome-audit-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let path = d.join("audit.key");
        let (k, made) = NodeKey::load_or_create(&path).unwrap();
        assert!(made);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            parse_public_key(public_path(&path).to_str().unwrap()).unwrap(),
            k.public()
        );
        let (again, made) = NodeKey::load_or_create(&path).unwrap();
        assert!(!made);
        assert_eq!(again.public(), k.public());
        assert_eq!(parse_public_key(&k.public_hex()).unwrap(), k.public());
        let _ = std::fs::remove_dir_all(&d);
    }
}
