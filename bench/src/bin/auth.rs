//! `cargo xtask bench auth`: ns per call to authenticate a request and
//! check its budgets, for an API key and for an identity provider's JWT
//! (ES256, key cached). Baselines in the same run: the SHA-256 of the key
//! (the floor of checking a hashed key) and `jsonwebtoken::decode` alone
//! (the floor of verifying the token).

use std::{
    hint::black_box,
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use base64::Engine as _;
use dome::identity::{
    apikey, authn,
    budget::{Bucket, Rate, take_all},
    config::{AgentConfig, AgentKind, JwtConfig, TenantConfig},
    jwt::{Provider, Verifier},
};
use dome::store::registry::Registry;
use hyper::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::json;

const CALLS: usize = 20_000;
const ROUNDS: usize = 15;

/// Median over rounds of ns per call of `f`.
fn ns_per_call(mut f: impl FnMut()) -> f64 {
    for _ in 0..CALLS / 10 {
        f();
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..CALLS {
                f();
            }
            t.elapsed().as_nanos() as f64 / CALLS as f64
        })
        .collect();
    bench::median(&mut rounds)
}

fn main() -> anyhow::Result<()> {
    let key = "dome_bench-bot_a-key-for-the-authentication-benchmark";
    let huge = Rate {
        calls_per_s: 1e12,
        burst: u32::MAX,
    };
    let dir = std::env::temp_dir().join(format!("dome-bench-auth-{}", std::process::id()));
    let jwt_cfg = JwtConfig {
        issuer: "https://idp.bench".into(),
        audience: Some("https://dome.bench/mcp".into()),
        jwks_file: None,
        jwks_url: None,
        refresh_s: 300,
        agent_claim: "client_id".into(),
        user_claim: "sub".into(),
        required_scopes: vec!["mcp:tools".into()],
        leeway_s: 0,
    };
    let reg = Registry::open(
        &dir,
        vec![TenantConfig {
            name: "bench".into(),
            budget: Some(huge),
            delegation: true,
            jwt: Some(jwt_cfg.clone()),
        }],
        vec![AgentConfig {
            id: "bench-bot".into(),
            tenant: "bench".into(),
            name: None,
            kind: AgentKind::CustomerAgent,
            labels: vec![],
            api_keys: vec![apikey::to_hex(&apikey::hash(key))],
            disabled: false,
            budget: Some(huge),
            tool_budgets: [("echo".to_string(), huge)].into_iter().collect(),
        }],
        None,
        0,
    )?;
    let index = reg.index();

    // The identity provider's ES256 key.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("key generation"))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("key"))?;
    let public = pair.public_key().as_ref();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": b64.encode(&public[1..33]), "y": b64.encode(&public[33..65])});
    let mut by_issuer = std::collections::HashMap::new();
    by_issuer.insert(
        jwt_cfg.issuer.clone(),
        Arc::new(Provider::new(
            "bench".into(),
            jwt_cfg,
            "https://dome.bench/mcp".into(),
            serde_json::from_value(json!({"keys": [jwk]}))?,
        )),
    );
    let verifier = Verifier { by_issuer };
    let empty = Verifier::default();
    let now = 1_800_000_000u64;
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &h,
        &json!({"iss": "https://idp.bench", "aud": "https://dome.bench/mcp", "sub": "user",
                "client_id": "bench-bot", "exp": now + 3600, "scope": "mcp:tools"}),
        &EncodingKey::from_ec_der(pkcs8.as_ref()),
    )?;

    let headers = |cred: &str| {
        let mut m = HeaderMap::new();
        m.insert(
            hyper::header::AUTHORIZATION,
            format!("Bearer {cred}").parse().unwrap(),
        );
        m
    };
    let key_headers = headers(key);
    let jwt_headers = headers(&token);
    let clock = AtomicU64::new(0);
    // One call: authenticate, then take from the agent x tool, agent and
    // tenant budgets (as the gateway does).
    let call = |h: &HeaderMap, v: &Verifier| {
        let c = authn::authenticate(h, None, &index, v, true, now)
            .ok()
            .flatten()
            .expect("authenticates");
        let b = &c.agent.budgets;
        let levels: [&Bucket; 3] = [
            &b.tools["echo"],
            b.agent.as_ref().unwrap(),
            c.tenant.budget.as_ref().unwrap(),
        ];
        let t = clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        black_box(take_all(&levels, t).is_ok());
    };
    let api_key_ns = ns_per_call(|| call(&key_headers, &empty));
    let sha_ns = ns_per_call(|| {
        black_box(apikey::hash(black_box(key)));
    });
    // An agent reuses its token: after the first call the verdict comes
    // from the worker's cache of verified tokens.
    let jwt_ns = ns_per_call(|| call(&jwt_headers, &verifier));
    // Every call a new token: the signature is checked each time.
    let jwt_uncached_ns = ns_per_call(|| {
        black_box(verifier.verify(black_box(&token), now).is_ok());
    });
    let decoding =
        DecodingKey::from_ec_components(&b64.encode(&public[1..33]), &b64.encode(&public[33..65]))?;
    let mut plain = Validation::new(Algorithm::ES256);
    plain.set_audience(&["https://dome.bench/mcp"]);
    plain.validate_exp = false;
    let decode_ns = ns_per_call(|| {
        black_box(
            jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &decoding, &plain).is_ok(),
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
    bench::report(
        "auth",
        &json!({
            "api_key_ns": api_key_ns,
            "jwt_ns": jwt_ns,
            "jwt_uncached_ns": jwt_uncached_ns,
            "jwt_uncached_vs_decode": jwt_uncached_ns / decode_ns,
            "baseline_sha256_ns": sha_ns,
            "baseline_jsonwebtoken_decode_ns": decode_ns,
            "api_key_vs_sha256": api_key_ns / sha_ns,
            "targets": {"api_key_ns": 1000, "jwt_ns": 10000},
            "statistic": format!("median of {ROUNDS} rounds of {CALLS} calls; one call = authenticate + three budget checks (jwt_uncached_ns: token verification only, ES256, key cached)"),
        }),
    )?;
    Ok(())
}
