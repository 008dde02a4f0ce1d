//! Bearer tokens (JWT) from a tenant's identity provider. The token's `iss`
//! picks the tenant; its `kid` picks a key from the tenant's JWKS (a file or
//! a URL, cached and refreshed); the algorithm must suit that key's type
//! (so `none`, and HMAC with a public key as the secret, never verify);
//! `iss`, `aud`, `exp` and `nbf` are checked against the time given, not a
//! clock read here. The agent is named by a claim (`client_id` by default)
//! and must be one of the tenant's agents; the end user is the `sub`.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet},
};
use serde_json::Value;

use serde::{Deserialize, Serialize};

/// `[tenant.jwt]`: how Dome checks the tenant's identity provider's tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `iss` the tokens must carry; it also picks the tenant.
    pub issuer: String,
    /// `aud` they must carry (RFC 8707 resource). Default: `auth.resource`.
    #[serde(default)]
    pub audience: Option<String>,
    /// The provider's keys: a JWKS file (relative to the config file)...
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// ... or a JWKS URL (http or https), fetched at start and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often a `jwks_url` key set is fetched again, in seconds (default
    /// 300); a token naming a key the set lacks has it fetched sooner (at
    /// most every 5 s).
    #[serde(default = "default_refresh")]
    pub refresh_s: u64,
    /// Claim naming the agent (an agent id of this tenant).
    #[serde(default = "default_agent_claim")]
    pub agent_claim: String,
    /// Claim naming the end user.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Scopes every token must hold (`scope` or `scp`); else 403 insufficient_scope.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
}

fn default_refresh() -> u64 {
    300
}

fn default_agent_claim() -> String {
    "client_id".into()
}

fn default_user_claim() -> String {
    "sub".into()
}

fn default_leeway() -> u64 {
    30
}

/// One tenant's provider: what its tokens must say, and its keys.
pub struct Provider {
    /// The name of the tenant whose provider this is: a token it verifies
    /// is of this tenant.
    pub tenant: String,
    /// The tenant's `[tenant.jwt]`.
    pub config: JwtConfig,
    /// The `aud` tokens must carry: `config.audience`, else the default
    /// (`auth.resource`).
    pub audience: String,
    /// The provider's current key set, replaced whole by
    /// [`Provider::set_keys`] (a `jwks_url` set is empty until fetched).
    pub keys: ArcSwap<JwkSet>,
    /// When the keys were last fetched (unix s), to rate-limit refreshes.
    pub fetched_unix_s: AtomicU64,
    /// Bumped whenever `keys` changes: tokens verified under older keys
    /// are verified again.
    pub generation: AtomicU64,
}

impl Provider {
    /// A provider with `keys`; `fetched_unix_s` 0 marks its URL as not
    /// fetched yet.
    pub fn new(tenant: String, config: JwtConfig, audience: String, keys: JwkSet) -> Provider {
        Provider {
            tenant,
            config,
            audience,
            keys: ArcSwap::from_pointee(keys),
            fetched_unix_s: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the key set and bumps `generation`, so tokens verified
    /// under the old keys are verified again.
    pub fn set_keys(&self, keys: Arc<JwkSet>) {
        self.keys.store(keys);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A token this thread verified: agents reuse a token for many calls, and
/// a signature check costs tens of microseconds. Keyed by the token's
/// SHA-256; the time limits are checked again on every use.
struct Cached {
    verified: Verified,
    provider: Arc<Provider>,
    generation: u64,
    exp: u64,
    nbf: Option<u64>,
}

const CACHE_CAP: usize = 4096;

thread_local! {
    static CACHE: std::cell::RefCell<HashMap<[u8; 32], Cached>> =
        std::cell::RefCell::new(HashMap::new());
}

/// A verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The tenant whose provider issued the token.
    pub tenant: String,
    /// The agent the token was issued to (absent in a user's own token).
    pub agent: Option<String>,
    /// The end user the token names (`user_claim`, `sub` by default), if
    /// any.
    pub user: Option<String>,
}

/// Why a token does not verify.
#[derive(Debug, PartialEq, Eq)]
pub enum JwtError {
    /// `invalid_token`, with the reason.
    Invalid(String),
    /// The issuer is trusted but the key id is not in its key set (yet):
    /// worth a key refresh.
    UnknownKey {
        /// The token's `iss`: whose key set to fetch again.
        issuer: String,
    },
    /// Valid, but short of the scopes the tenant requires.
    InsufficientScope {
        /// The scopes the tenant requires, space-separated (the `scope` of
        /// the `WWW-Authenticate` challenge).
        required: String,
    },
}

/// Trusted providers, by issuer.
#[derive(Default)]
pub struct Verifier {
    /// Each trusted provider, by the `iss` its tokens carry.
    pub by_issuer: HashMap<String, Arc<Provider>>,
}

/// The longest agent or user a token may name.
pub const MAX_CLAIM_BYTES: usize = 256;

fn invalid(m: impl Into<String>) -> JwtError {
    JwtError::Invalid(m.into())
}

/// The algorithms a key of this type may verify.
fn algorithms_for(jwk: &jsonwebtoken::jwk::Jwk) -> Vec<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        // Shared secrets have no place in a provider's public key set.
        AlgorithmParameters::OctetKey(_) => vec![],
    };
    // A key that names its algorithm allows only that one.
    match jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok())
    {
        Some(a) if by_type.contains(&a) => vec![a],
        Some(_) => vec![],
        None => by_type,
    }
}

fn payload(token: &str) -> Result<Value, JwtError> {
    let part = token
        .split('.')
        .nth(1)
        .ok_or_else(|| invalid("not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| invalid("not a JWT"))?;
    serde_json::from_slice(&bytes).map_err(|_| invalid("not a JWT"))
}

/// The payload of a token, not verified: for naming what a failing token
/// claimed, never for trusting it.
pub fn unverified_claims(token: &str) -> Option<Value> {
    payload(token).ok().filter(Value::is_object)
}

/// Refuses a token whose header lists critical extensions (`crit`, RFC 7515
/// §4.1.11): Dome understands none, and a token that depends on one must
/// not be taken at the face value of its other claims.
fn refuse_critical_extensions(token: &str) -> Result<(), JwtError> {
    let part = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| invalid("not a JWT"))?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not a JWT"))?;
    if header.get("crit").is_some() {
        return Err(invalid(
            "the token's header lists critical extensions (crit) that Dome does not understand",
        ));
    }
    Ok(())
}

fn scopes(claims: &Value) -> Vec<String> {
    match (&claims["scope"], &claims["scp"]) {
        (Value::String(s), _) => s.split_whitespace().map(str::to_string).collect(),
        (_, Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        (_, Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

impl Verifier {
    /// As [`Verifier::verify`], answering from this thread's cache of
    /// verified tokens when the token, its provider and its provider's keys
    /// are the same as when it was verified (and it is still in time).
    pub fn verify_cached(&self, token: &str, now_unix_s: u64) -> Result<Verified, JwtError> {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let hit = CACHE.with(|c| {
            let c = c.borrow();
            let e = c.get(&digest)?;
            let current = self.by_issuer.get(&e.provider.config.issuer)?;
            let fresh = Arc::ptr_eq(current, &e.provider)
                && e.generation == e.provider.generation.load(Ordering::Acquire);
            let leeway = e.provider.config.leeway_s;
            let in_time = now_unix_s < e.exp.saturating_add(leeway)
                && e.nbf
                    .is_none_or(|nbf| now_unix_s.saturating_add(leeway) >= nbf);
            (fresh && in_time).then(|| e.verified.clone())
        });
        if let Some(v) = hit {
            return Ok(v);
        }
        let (verified, provider, generation, exp, nbf) = self.verify_full(token, now_unix_s)?;
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= CACHE_CAP {
                c.clear();
            }
            c.insert(
                digest,
                Cached {
                    verified: verified.clone(),
                    provider,
                    generation,
                    exp,
                    nbf,
                },
            );
        });
        Ok(verified)
    }

    /// Verifies `token` at `now_unix_s`.
    pub fn verify(&self, token: &str, now_unix_s: u64) -> Result<Verified, JwtError> {
        self.verify_full(token, now_unix_s).map(|r| r.0)
    }

    #[allow(clippy::type_complexity)]
    fn verify_full(
        &self,
        token: &str,
        now_unix_s: u64,
    ) -> Result<(Verified, Arc<Provider>, u64, u64, Option<u64>), JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("not a JWT, or its algorithm is not accepted"))?;
        refuse_critical_extensions(token)?;
        let unverified = payload(token)?;
        let issuer = unverified["iss"]
            .as_str()
            .ok_or_else(|| invalid("the token has no issuer"))?;
        let p = self
            .by_issuer
            .get(issuer)
            .ok_or_else(|| invalid("the token's issuer is not trusted here"))?;
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("the token names no key (kid)"))?;
        let generation = p.generation.load(Ordering::Acquire);
        let keys = p.keys.load();
        let Some(jwk) = keys.find(kid) else {
            return Err(JwtError::UnknownKey {
                issuer: issuer.to_string(),
            });
        };
        let allowed = algorithms_for(jwk);
        if !allowed.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} does not suit the provider's key",
                header.alg
            )));
        }
        let key =
            DecodingKey::from_jwk(jwk).map_err(|_| invalid("the provider's key is unusable"))?;
        let mut v = Validation::new(header.alg);
        v.algorithms = allowed;
        v.set_issuer(&[&p.config.issuer]);
        v.set_audience(&[&p.audience]);
        // Time is checked below against the time given, not read here.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims = ["exp", "iss", "aud"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
            .map_err(|e| invalid(format!("the token does not verify: {e}")))?
            .claims;
        let leeway = p.config.leeway_s;
        let exp = claims["exp"]
            .as_u64()
            .ok_or_else(|| invalid("exp is not a number"))?;
        if now_unix_s >= exp.saturating_add(leeway) {
            return Err(invalid("the token has expired"));
        }
        let nbf = match claims.get("nbf") {
            Some(n) => Some(n.as_u64().ok_or_else(|| invalid("nbf is not a number"))?),
            None => None,
        };
        if let Some(nbf) = nbf
            && now_unix_s.saturating_add(leeway) < nbf
        {
            return Err(invalid("the token is not valid yet"));
        }
        let have = scopes(&claims);
        let missing: Vec<&String> = p
            .config
            .required_scopes
            .iter()
            .filter(|s| !have.contains(s))
            .collect();
        if !missing.is_empty() {
            return Err(JwtError::InsufficientScope {
                required: p.config.required_scopes.join(" "),
            });
        }
        let agent = claims[p.config.agent_claim.as_str()]
            .as_str()
            .or_else(|| claims["azp"].as_str())
            .map(str::to_string);
        let user = claims[p.config.user_claim.as_str()]
            .as_str()
            .map(str::to_string);
        // Both go into every audit record and assertion, as the
        // `Dome-User` header does, which has the same cap.
        if [&agent, &user]
            .iter()
            .any(|c| c.as_ref().is_some_and(|c| c.len() > MAX_CLAIM_BYTES))
        {
            return Err(invalid(format!(
                "the agent or user claim is longer than {MAX_CLAIM_BYTES} bytes"
            )));
        }
        Ok((
            Verified {
                tenant: p.tenant.clone(),
                agent,
                user,
            },
            p.clone(),
            generation,
            exp,
            nbf,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    /// An ES256 key: (encoding key, its JWK).
    fn key(kid: &str) -> (EncodingKey, Value) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let public = pair.public_key().as_ref();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64.encode(&public[1..33]), "y": b64.encode(&public[33..65])});
        (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn verifier(jwks: Value, scopes: &[&str]) -> Verifier {
        let config = JwtConfig {
            issuer: "https://idp.example".into(),
            audience: Some("https://dome.example/mcp".into()),
            jwks_file: None,
            jwks_url: None,
            refresh_s: 300,
            agent_claim: "client_id".into(),
            user_claim: "sub".into(),
            required_scopes: scopes.iter().map(|s| s.to_string()).collect(),
            leeway_s: 0,
        };
        let mut by_issuer = HashMap::new();
        let audience = config.audience.clone().unwrap();
        by_issuer.insert(
            config.issuer.clone(),
            Arc::new(Provider::new(
                "acme".into(),
                config,
                audience,
                serde_json::from_value(jwks).unwrap(),
            )),
        );
        Verifier { by_issuer }
    }

    fn claims() -> Value {
        json!({"iss": "https://idp.example", "aud": "https://dome.example/mcp", "sub": "alice",
               "client_id": "acme-bot", "exp": 2000, "nbf": 1000, "scope": "mcp:tools other"})
    }

    fn sign(k: &EncodingKey, kid: &str, c: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, c, k).unwrap()
    }

    #[test]
    fn cached_tokens_still_expire_and_follow_key_changes() {
        let (k, jwk) = key("k1");
        let v = verifier(json!({"keys": [jwk]}), &[]);
        let t = sign(&k, "k1", &claims());
        assert!(v.verify_cached(&t, 1500).is_ok());
        assert!(v.verify_cached(&t, 1600).is_ok(), "from the cache");
        assert!(
            v.verify_cached(&t, 2000).is_err(),
            "expired even when cached"
        );
        assert!(
            v.verify_cached(&t, 999).is_err(),
            "not yet valid even when cached"
        );
        // The provider drops the key: the cached verdict goes with it.
        let p = v.by_issuer["https://idp.example"].clone();
        p.set_keys(Arc::new(
            serde_json::from_value(json!({"keys": []})).unwrap(),
        ));
        assert!(v.verify_cached(&t, 1500).is_err());
    }

    #[test]
    fn every_check_bites() {
        let (k, jwk) = key("k1");
        let v = verifier(json!({"keys": [jwk]}), &["mcp:tools"]);
        let ok = sign(&k, "k1", &claims());
        assert_eq!(
            v.verify(&ok, 1500),
            Ok(Verified {
                tenant: "acme".into(),
                agent: Some("acme-bot".into()),
                user: Some("alice".into())
            })
        );
        let bad = |t: &str, now: u64| matches!(v.verify(t, now), Err(JwtError::Invalid(_)));
        assert!(bad(&ok, 2000), "expired");
        assert!(bad(&ok, 999), "not yet valid");
        let mut c = claims();
        c["aud"] = "https://elsewhere".into();
        assert!(bad(&sign(&k, "k1", &c), 1500), "wrong audience");
        let mut c = claims();
        c["iss"] = "https://evil.example".into();
        assert!(bad(&sign(&k, "k1", &c), 1500), "untrusted issuer");
        let (other, _) = key("k1");
        assert!(bad(&sign(&other, "k1", &claims()), 1500), "bad signature");
        assert_eq!(
            v.verify(&sign(&k, "k9", &claims()), 1500),
            Err(JwtError::UnknownKey {
                issuer: "https://idp.example".into()
            })
        );
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","kid":"k1"}"#),
            b64.encode(claims().to_string())
        );
        assert!(bad(&none, 1500), "alg none");
        // HS256 keyed with the public key's bytes (algorithm confusion).
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"x")).unwrap();
        assert!(bad(&hs, 1500), "HMAC confusion");
        // A critical extension Dome does not understand (RFC 7515 §4.1.11),
        // in a token otherwise valid and properly signed.
        let header = b64.encode(br#"{"alg":"ES256","kid":"k1","crit":["exp-ext"],"exp-ext":1}"#);
        let signing_input = format!("{header}.{}", b64.encode(claims().to_string()));
        let sig =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &k, Algorithm::ES256).unwrap();
        let crit = format!("{signing_input}.{sig}");
        assert!(bad(&crit, 1500), "unknown crit");
        let mut c = claims();
        c["scope"] = "other".into();
        assert!(matches!(
            v.verify(&sign(&k, "k1", &c), 1500),
            Err(JwtError::InsufficientScope { .. })
        ));
    }
}
