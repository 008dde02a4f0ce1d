//! The identity assertion: a short-lived JWT (EdDSA, Ed25519) Dome signs per
//! call, naming tenant, agent, end user, session, intent, call id and the
//! upstream it is for. Upstreams verify it with the keys Dome publishes at
//! `/.well-known/jwks.json`; the caller's own token never leaves Dome.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What one assertion says.
#[derive(Debug, Serialize)]
pub struct Claims<'a> {
    pub iss: &'a str,
    /// The upstream the call goes to.
    pub aud: &'a str,
    /// The agent.
    pub sub: &'a str,
    pub tenant: &'a str,
    pub agent_kind: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub labels: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<&'a str>,
    /// The policy version that allowed the call.
    pub policy: &'a str,
    /// The call id (also in Dome's audit trail).
    pub jti: &'a str,
    pub iat: u64,
    pub exp: u64,
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    public: Vec<u8>,
}

/// Why the assertion keys do not load, or an assertion was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The key file does not read as a PEM private key.
    #[error("{}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: not a PKCS#8 key", .0.display())]
    NotPkcs8(PathBuf),
    /// No key configured, and the system's random source failed.
    #[error("cannot generate a key")]
    Generate,
    /// `key`: the file, or `(ephemeral)`.
    #[error("{key}: not an Ed25519 key")]
    NotEd25519 {
        key: String,
        #[source]
        source: ring::error::KeyRejected,
    },
    /// `[assertion] header` is not a header name.
    #[error("assertion.header")]
    Header(#[source] hyper::header::InvalidHeaderName),
    #[error(transparent)]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs assertions with the first key; publishes all.
pub struct Signer {
    keys: Vec<SigningKey>,
    pub ttl_s: u64,
    pub header: hyper::header::HeaderName,
    jwks: String,
}

impl Signer {
    /// Loads `paths` (PKCS#8 PEM Ed25519 keys); with none, makes an
    /// ephemeral key (assertions then verify only until Dome restarts).
    pub fn new(
        paths: &[impl AsRef<Path>],
        header: &str,
        ttl_s: u64,
    ) -> Result<Signer, SignerError> {
        let mut ders = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let der = match PrivateKeyDer::from_pem_file(p) {
                Ok(PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
                Ok(_) => return Err(SignerError::NotPkcs8(p.to_path_buf())),
                Err(source) => {
                    return Err(SignerError::KeyFile {
                        path: p.to_path_buf(),
                        source,
                    });
                }
            };
            ders.push((p.display().to_string(), der));
        }
        if ders.is_empty() {
            // ring's error says nothing more than that it failed.
            let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| SignerError::Generate)?;
            ders.push(("(ephemeral)".into(), der.as_ref().to_vec()));
        }
        let mut keys = Vec::new();
        for (name, der) in ders {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .map_err(|source| SignerError::NotEd25519 { key: name, source })?;
            let public = pair.public_key().as_ref().to_vec();
            let kid = hex::encode(&Sha256::digest(&public)[..8]);
            keys.push(SigningKey {
                kid,
                encoding: EncodingKey::from_ed_der(&der),
                public,
            });
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwks = serde_json::json!({"keys": keys.iter().map(|k| serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "kid": k.kid, "x": b64.encode(&k.public),
        })).collect::<Vec<_>>()})
        .to_string();
        Ok(Signer {
            keys,
            ttl_s,
            header: hyper::header::HeaderName::from_bytes(header.as_bytes())
                .map_err(SignerError::Header)?,
            jwks,
        })
    }

    /// The JWKS document (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    pub fn sign(&self, claims: &Claims<'_>) -> Result<String, SignerError> {
        let key = &self.keys[0];
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};

    #[test]
    fn assertions_verify_against_the_published_keys() {
        let s = Signer::new(&[] as &[&Path], "dome-assertion", 60).unwrap();
        let claims = Claims {
            iss: "dome",
            aud: "billing",
            sub: "acme-bot",
            tenant: "acme",
            agent_kind: "customer_agent",
            labels: &[],
            user: Some("alice"),
            session: None,
            intent: Some("refund"),
            policy: "0123456789abcdef",
            jti: "c1",
            iat: 1_700_000_000,
            exp: 4_000_000_000,
        };
        let token = s.sign(&claims).unwrap();
        let set: JwkSet = serde_json::from_str(s.jwks()).unwrap();
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        let jwk = set.find(&kid).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["billing"]);
        v.set_issuer(&["dome"]);
        let got = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &v,
        )
        .unwrap();
        assert_eq!(got.claims["user"], "alice");
        assert_eq!(got.claims["intent"], "refund");
        // Another Dome's key does not verify it.
        let other = Signer::new(&[] as &[&Path], "dome-assertion", 60).unwrap();
        let set2: JwkSet = serde_json::from_str(other.jwks()).unwrap();
        let wrong = DecodingKey::from_jwk(&set2.keys[0]).unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &wrong, &v).is_err());
    }
}
