//! API keys: `dome_<agent id>_<secret>`. The agent id is the readable
//! prefix that finds the agent; the secret is 32 random bytes (base64url).
//! Only the SHA-256 of the whole key is stored (a key has 256 bits of
//! entropy, so a fast hash is enough: nothing to brute-force), and hashes
//! are compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every Dome API key starts with, before the agent id.
pub const PREFIX: &str = "dome_";

/// Agent ids: what may sit between `dome_` and the secret.
pub fn valid_agent_id(id: &str) -> bool {
    (1..=40).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The SHA-256 of a whole key: what is stored and compared, never the
/// key itself.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The agent id a presented key names, if it has the shape of a key.
pub fn agent_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    // Ids have no `_`; the secret (base64url) may.
    let (id, secret) = rest.split_once('_')?;
    (valid_agent_id(id) && secret.len() >= 16).then_some(id)
}

/// Whether `key` hashes to one of `hashes`; every candidate is compared in
/// full, in constant time.
pub fn matches(key: &str, hashes: &[[u8; 32]]) -> bool {
    let h = hash(key);
    let mut ok = subtle::Choice::from(0);
    for candidate in hashes {
        ok |= h.ct_eq(candidate);
    }
    ok.into()
}

/// A key hash in lowercase hex, as `dome hash-key` prints it for the
/// config file's `api_keys` and the registry stores it.
pub fn to_hex(h: &[u8; 32]) -> String {
    hex::encode(h)
}

/// A key hash from its hex form; `None` unless `s` is 64 hex digits.
pub fn from_hex(s: &str) -> Option<[u8; 32]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_keys_name_no_agent() {
        for k in [
            "",
            "dome_",
            "dome_x",
            "dome__secretsecretsecret",
            "key_abc_secretsecretsecret",
            "dome_UP_secretsecretsecretsecret",
        ] {
            assert_eq!(agent_of(k), None, "{k}");
        }
    }
}
