//! API keys, made: a new key's secret is 32 random bytes from the OS. What
//! a key looks like, its hash and its constant-time check are
//! `dome_core::identity::apikey`, re-exported here.

use base64::Engine as _;

pub use dome_core::identity::apikey::*;

/// A new key for `agent_id`: (the key, shown once; its hash, stored).
pub fn generate(agent_id: &str) -> (String, [u8; 32]) {
    let secret: [u8; 32] = rand::random();
    let key = format!(
        "{PREFIX}{agent_id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let h = hash(&key);
    (key, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_agent_and_match_only_their_hash() {
        let (key, h) = generate("acme-bot");
        assert_eq!(agent_of(&key), Some("acme-bot"));
        assert!(matches(&key, &[h]));
        let (other, h2) = generate("acme-bot");
        assert_ne!(key, other);
        assert!(!matches(&key, &[h2]));
        assert!(matches(&key, &[h2, h]));
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
    }
}
