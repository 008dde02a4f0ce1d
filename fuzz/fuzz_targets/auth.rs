//! Credential and JWT parsing (`identity::authn::authenticate`, API keys,
//! `identity::jwt`): any `Authorization`, `Dome-User-Token` and `Dome-User`
//! header values and query string are refused with a reason or accepted as
//! the one agent there is, and a token is accepted only when it is one
//! its issuer's key signed; never a panic.
//!
//! The input's lines are: the Authorization value, the query string, the
//! Dome-User-Token value, the Dome-User value (missing lines: absent).
#![no_main]

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use dome::identity::{
    apikey, authn,
    config::{AgentConfig, AgentKind, JwtConfig, TenantConfig},
    jwt::{Provider, Verifier},
};
use dome::store::registry::{Index, Registry};
use hyper::{HeaderMap, header::HeaderValue};
use libfuzzer_sys::fuzz_target;

/// The agent's API key (the seed corpus presents it).
const KEY: &str = "dome_fuzz-bot_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
/// The identity provider's Ed25519 key: a fixed seed, so the seed
/// corpus (`fuzz/seeds.py`) can sign tokens it accepts.
const IDP_SEED: [u8; 32] = [7; 32];
const ISSUER: &str = "https://idp.fuzz";
const AUDIENCE: &str = "https://dome.fuzz/mcp";
/// The time the tokens are judged at (the seeds are valid from 1000 to 2000).
const NOW: u64 = 1500;

struct World {
    index: Arc<Index>,
    verifier: Verifier,
    _registry: Registry,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let jwt = JwtConfig {
            issuer: ISSUER.into(),
            audience: Some(AUDIENCE.into()),
            jwks_file: None,
            jwks_url: None,
            refresh_s: 300,
            agent_claim: "client_id".into(),
            user_claim: "sub".into(),
            required_scopes: vec!["mcp".into()],
            leeway_s: 30,
        };
        let tenants = vec![TenantConfig {
            name: "acme".into(),
            budget: None,
            delegation: true,
            jwt: Some(jwt.clone()),
        }];
        let agents = vec![AgentConfig {
            id: "fuzz-bot".into(),
            tenant: "acme".into(),
            name: None,
            kind: AgentKind::CustomerAgent,
            labels: vec![],
            api_keys: vec![apikey::to_hex(&apikey::hash(KEY))],
            disabled: false,
            budget: None,
            tool_budgets: Default::default(),
        }];
        let dir = std::env::temp_dir().join(format!("dome-fuzz-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let registry = Registry::open(&dir, tenants, agents, None, NOW).expect("registry");
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&IDP_SEED).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ring::signature::KeyPair::public_key(&pair).as_ref());
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA", "x": x}
        ]});
        let provider = Provider::new(
            "acme".into(),
            jwt,
            AUDIENCE.into(),
            serde_json::from_value(jwks).unwrap(),
        );
        World {
            index: registry.index(),
            verifier: Verifier {
                by_issuer: [(ISSUER.to_string(), Arc::new(provider))].into(),
            },
            _registry: registry,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut lines = data.split(|&b| b == b'\n');
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, v: Option<&[u8]>| {
        if let Some(v) = v.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(name, v);
        }
    };
    let auth = lines.next();
    set("authorization", auth);
    let query = lines.next().map(String::from_utf8_lossy);
    set("dome-user-token", lines.next());
    set("dome-user", lines.next());

    // A token alone, straight to the verifier.
    if let Some(token) = auth.and_then(|a| std::str::from_utf8(a).ok()) {
        let token = token.strip_prefix("Bearer ").unwrap_or(token);
        if let Ok(v) = w.verifier.verify(token, NOW) {
            assert_eq!(v.tenant, "acme");
        }
    }
    match authn::authenticate(&headers, query.as_deref(), &w.index, &w.verifier, true, NOW) {
        Ok(Some(caller)) => {
            assert_eq!(caller.agent.id, "fuzz-bot");
            assert_eq!(caller.tenant.name, "acme");
            if let Some(u) = &caller.user {
                assert!(!u.is_empty());
            }
        }
        Ok(None) => panic!("no credential was accepted though one is required"),
        Err(f) => {
            assert!(!f.message.is_empty());
            assert!(f.status.is_client_error(), "{f:?}");
        }
    }
});
