//! Authentication, sessions bound to their agent, the identity assertion
//! upstreams receive, and call budgets: the real `dome` binary in front of
//! the demo upstream, over real sockets.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::{Value, json};

const KEY_A: &str = "dome_agent-a_first-agent-key-for-the-tests";
const KEY_B: &str = "dome_agent-b_second-agent-key-for-the-tests";
const KEY_ACME_BOT: &str = "dome_acme-bot_an-agent-key-beside-the-tokens";

/// Dome with tenant `acme` (delegation on), agents A and B, and the demo
/// upstream; A may call `echo` twice in a burst, then once a minute.
fn dome_with_agents(name: &str, demo: std::net::SocketAddr) -> Dome {
    agents_in_front_of(
        name,
        &format!("[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n"),
    )
}

/// The same agents in front of other upstreams (their TOML).
fn agents_in_front_of(name: &str, upstreams: &str) -> Dome {
    start_dome(name, &agents_config(name, upstreams))
}

/// The config text of [`agents_in_front_of`] (before Dome's listeners).
fn agents_config(name: &str, upstreams: &str) -> String {
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.agents-data", std::process::id()));
    format!(
        "{upstreams}\
             [auth]\ndata_dir = \"{}\"\n\
             [[tenant]]\nname = \"acme\"\ndelegation = true\n\
             [[tenant]]\nname = \"strict\"\n\
             [[agent]]\nid = \"agent-a\"\ntenant = \"acme\"\nlabels = [\"support\"]\napi_keys = [\"{}\"]\n\
             tool_budgets = {{ echo = {{ calls_per_s = 0.016, burst = 2 }} }}\n\
             [[agent]]\nid = \"agent-b\"\ntenant = \"strict\"\napi_keys = [\"{}\"]\n",
        data.display(),
        sha(KEY_A),
        sha(KEY_B)
    )
}

fn call(name: &str, args: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": name, "arguments": args,
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {},
                  "dome/intent": "check the caller"}}})
    .to_string()
}

fn post(
    dome: &Dome,
    extra: &[(&str, &str)],
    tool: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, Value) {
    let mut headers = vec![
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", tool),
    ];
    headers.extend_from_slice(extra);
    let (status, h, body) = http(dome.mcp, "POST", "/mcp", &headers, body);
    // A JSON answer, or the last message of an SSE one.
    let message = body
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .next_back()
        .unwrap_or(&body);
    (
        status,
        h,
        serde_json::from_str(message.trim()).unwrap_or(Value::Null),
    )
}

/// Where tenants authenticate with API keys only, the challenge says what
/// was wrong (RFC 6750 `error` and `error_description`) and points at no
/// OAuth metadata, of which there is none: told of metadata, clients such
/// as the Inspector start OAuth registration instead of showing "invalid
/// API key".
#[test]
fn callers_without_a_valid_credential_are_challenged() {
    let (_demo, demo) = start_demo(&["--whoami"]);
    let dome = dome_with_agents("authn", demo);
    let body = call("echo", json!({"message": "hi"}));

    let (status, h, v) = post(&dome, &[], "echo", &body);
    assert_eq!(status, 401, "{v}");
    let challenge = header(&h, "www-authenticate").unwrap().to_string();
    assert_eq!(
        challenge, "Bearer",
        "no credential: no error code (RFC 6750 3.1)"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("authentication required"),
        "{v}"
    );

    // No authorization server is configured: no RFC 9728 document.
    let (status, _, _) = http(
        dome.mcp,
        "GET",
        "/.well-known/oauth-protected-resource",
        &[],
        "",
    );
    assert_eq!(status, 404);

    for (bad, error, description) in [
        (
            "Bearer dome_agent-a_not-the-right-key-at-all",
            "invalid_token",
            "invalid API key",
        ),
        (
            "Bearer dome_nobody_first-agent-key-for-the-tests",
            "invalid_token",
            "invalid API key",
        ),
        (
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            "invalid_request",
            "the Authorization header must be `Bearer <credential>`",
        ),
    ] {
        let (status, h, v) = post(&dome, &[("Authorization", bad)], "echo", &body);
        assert_eq!(status, 401, "{bad}");
        let challenge = header(&h, "www-authenticate").unwrap();
        assert_eq!(
            challenge,
            format!("Bearer error=\"{error}\", error_description=\"{description}\""),
            "{bad}"
        );
        assert_eq!(v["error"]["message"], description, "{bad}");
    }
    // A credential in the query string is refused even when it is valid.
    let (status, _, _) = http(
        dome.mcp,
        "POST",
        &format!("/mcp?access_token={KEY_A}"),
        &[
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    assert_eq!(status, 400);
    // However the parameter's name is spelt.
    // However the parameter's name is spelt (the request is otherwise
    // one that is served).
    for q in ["%61ccess_token", "ACCESS%5FTOKEN", "x=1;api_key"] {
        let (status, _, body) = http(
            dome.mcp,
            "POST",
            &format!("/mcp?{q}={KEY_A}"),
            &[
                ("Accept", "application/json, text/event-stream"),
                ("Content-Type", "application/json"),
                ("MCP-Protocol-Version", "2026-07-28"),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "echo"),
                ("Authorization", &format!("Bearer {KEY_A}")),
            ],
            &body,
        );
        assert_eq!(status, 400, "{q}: {body}");
        assert!(body.contains("query string"), "{q}: {body}");
    }
    // Naming the end user needs a tenant that allows delegation.
    let (status, _, _) = post(
        &dome,
        &[
            ("Authorization", &format!("Bearer {KEY_B}")),
            ("Dome-User", "mallory"),
        ],
        "echo",
        &body,
    );
    assert_eq!(status, 403);

    let (status, _, v) = post(
        &dome,
        &[("Authorization", &format!("Bearer {KEY_A}"))],
        "echo",
        &body,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["content"][0]["text"], "hi");
}

#[test]
fn upstreams_get_a_verifiable_assertion_and_never_the_callers_headers() {
    let (_demo, demo) = start_demo(&["--whoami"]);
    let dome = dome_with_agents("assertion", demo);
    let (status, _, v) = post(
        &dome,
        &[
            ("Authorization", &format!("Bearer {KEY_A}")),
            ("Dome-User", "alice@example.com"),
            // Imitations of Dome's own headers.
            ("Dome-Assertion", "forged.by.client"),
            ("Dome-Tenant", "someone-else"),
        ],
        "whoami",
        &call("whoami", json!({})),
    );
    assert_eq!(status, 200, "{v}");
    let seen: Value =
        serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    let got = seen.as_object().unwrap();
    assert!(
        !got.contains_key("authorization"),
        "the caller's key went upstream: {seen}"
    );
    assert!(
        !got.contains_key("dome-tenant") && !got.contains_key("dome-user"),
        "{seen}"
    );
    let token = seen["dome-assertion"].as_str().unwrap();
    assert_ne!(token, "forged.by.client");

    let (status, _, jwks) = http(dome.mcp, "GET", "/.well-known/jwks.json", &[], "");
    assert_eq!(status, 200);
    let set: JwkSet = serde_json::from_str(&jwks).unwrap();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let key = DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["demo"]);
    validation.set_issuer(&["dome"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "agent-a");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["user"], "alice@example.com");
    assert_eq!(claims["intent"], "check the caller");
    assert_eq!(claims["labels"], json!(["support"]));
    assert!(claims["exp"].as_u64().unwrap() <= claims["iat"].as_u64().unwrap() + 60);
}

#[test]
fn budgets_refuse_with_retry_after_and_sessions_belong_to_their_agent() {
    let (_demo, demo) = start_demo(&["--whoami"]);
    let dome = dome_with_agents("budgets", demo);
    let auth = format!("Bearer {KEY_A}");
    let body = call("echo", json!({"message": "x"}));
    for _ in 0..2 {
        let (status, _, v) = post(&dome, &[("Authorization", &auth)], "echo", &body);
        assert_eq!(status, 200, "{v}");
    }
    let (status, _, v) = post(&dome, &[("Authorization", &auth)], "echo", &body);
    // 200, as every client tested shows a JSON-RPC error and its data only
    // then; when to retry is in the data and in the message.
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["error"]["code"], -32004, "{v}");
    // One call a minute: the next one passes in about a minute.
    let retry_ms = v["error"]["data"]["retryAfterMs"].as_u64().unwrap();
    assert!((55_000..=62_500).contains(&retry_ms), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("retry in {retry_ms} ms")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent x tool"),
        "{v}"
    );
    // Another tool of the same agent has no such budget.
    let (status, _, _) = post(
        &dome,
        &[("Authorization", &auth)],
        "whoami",
        &call("whoami", json!({})),
    );
    assert_eq!(status, 200);

    // A session opened by agent A is unknown to agent B.
    let accept = ("Accept", "application/json, text/event-stream");
    let ctype = ("Content-Type", "application/json");
    let open_session = |version: &str| {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}})
        .to_string();
        let (status, h, _) = http(
            dome.mcp,
            "POST",
            "/mcp",
            &[accept, ctype, ("Authorization", &auth)],
            &init,
        );
        assert_eq!(status, 200);
        header(&h, "mcp-session-id").unwrap().to_string()
    };
    let sid = open_session("2025-11-25");
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string();
    let with = |key: &str| {
        let auth = format!("Bearer {key}");
        http(
            dome.mcp,
            "POST",
            "/mcp",
            &[
                accept,
                ctype,
                ("Authorization", &auth),
                ("Mcp-Session-Id", &sid),
                ("MCP-Protocol-Version", "2025-11-25"),
            ],
            &list,
        )
        .0
    };
    assert_eq!(with(KEY_A), 200);
    assert_eq!(with(KEY_B), 404);
    // Nor can B open its stream or end it; A's session lives on.
    let as_b = format!("Bearer {KEY_B}");
    let b_headers = [
        ("Accept", "text/event-stream"),
        ("Authorization", as_b.as_str()),
        ("Mcp-Session-Id", sid.as_str()),
    ];
    assert_eq!(http(dome.mcp, "GET", "/mcp", &b_headers, "").0, 404);
    assert_eq!(http(dome.mcp, "DELETE", "/mcp", &b_headers, "").0, 404);
    assert_eq!(with(KEY_A), 200, "B's DELETE left A's session alone");
    let a_headers = [
        ("Authorization", auth.as_str()),
        ("Mcp-Session-Id", sid.as_str()),
    ];
    assert_eq!(http(dome.mcp, "DELETE", "/mcp", &a_headers, "").0, 200);
    assert_eq!(with(KEY_A), 404, "A ended its session");

    // The same for a batch in a 2025-03-26 session.
    let sid = open_session("2025-03-26");
    let batch = format!("[{list}]");
    let batch_as = |key: &str| {
        let auth = format!("Bearer {key}");
        let headers = [
            accept,
            ctype,
            ("Authorization", auth.as_str()),
            ("Mcp-Session-Id", sid.as_str()),
        ];
        http(dome.mcp, "POST", "/mcp", &headers, &batch).0
    };
    assert_eq!(batch_as(KEY_B), 404);
    assert_eq!(batch_as(KEY_A), 200);
}

/// A call parked for a stateless caller's input (a session-era upstream
/// asked mid-call) is resumed only by the agent that began it: another
/// agent presenting its `requestState` finds no such call, and its attempt
/// does not use the call up.
#[test]
fn a_call_waiting_for_input_is_resumed_only_by_its_agent() {
    let (_one, one) = start_sdk_flavor("one");
    let dome = agents_in_front_of(
        "parked",
        &format!("[[upstream]]\nname = \"one\"\nurl = \"http://{one}/mcp\"\nera = \"session\"\n"),
    );
    let paint = |key: &str, retry: Option<(&Value, &Value)>| {
        let mut params = json!({"name": "paint", "arguments": {"thing": "fence"},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}});
        if let Some((state, answers)) = retry {
            params["requestState"] = state.clone();
            params["inputResponses"] = answers.clone();
        }
        let body = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params});
        let auth = format!("Bearer {key}");
        post(
            &dome,
            &[("Authorization", &auth)],
            "paint",
            &body.to_string(),
        )
    };
    let (status, _, v) = paint(KEY_A, None);
    assert_eq!(status, 200, "{v}");
    let asked = &v["result"];
    assert_eq!(asked["resultType"], "input_required", "{v}");
    let state = &asked["requestState"];
    let (key, _) = asked["inputRequests"]
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("one input request");
    let answers = json!({key.as_str(): {"action": "accept", "content": {"color": "teal"}}});

    let (status, _, v) = paint(KEY_B, Some((state, &answers)));
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (400, Some(-32602)),
        "{v}"
    );
    let (status, _, v) = paint(KEY_A, Some((state, &answers)));
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["result"]["content"][0]["text"], "fence painted teal",
        "{v}"
    );
}

/// The official Python SDK client authenticates with an API key in both
/// eras; the upstream gets Dome's assertion for the agent and the end user
/// (and the session, in the session era), and the client without the key
/// is refused.
#[test]
fn python_sdk_client_authenticates_with_an_api_key() {
    let (_demo, demo) = start_demo(&["--whoami"]);
    let dome = dome_with_agents("sdk-auth", demo);
    let url = format!("http://{}/mcp", dome.mcp);
    let (_, _, jwks) = http(dome.mcp, "GET", "/.well-known/jwks.json", &[], "");
    let set: JwkSet = serde_json::from_str(&jwks).unwrap();
    for mode in ["legacy", "2026-07-28"] {
        let seen = run_client("client_auth.py", &[&url, KEY_A, mode]);
        assert_eq!(
            seen["tools"],
            json!(["echo", "records", "slow", "whoami"]),
            "{mode}: {seen}"
        );
        assert!(
            seen["anonymous"].as_str().unwrap().starts_with("refused"),
            "{mode}: {seen}"
        );
        assert!(
            seen["whoami"].get("authorization").is_none(),
            "{mode}: {seen}"
        );
        let token = seen["whoami"]["dome-assertion"].as_str().unwrap();
        let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        let key = DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["demo"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "agent-a", "{mode}");
        assert_eq!(claims["user"], "carol", "{mode}");
        assert_eq!(
            claims["session"].is_string(),
            mode == "legacy",
            "{mode}: {claims}"
        );
    }
}

/// An ES256 key for a test identity provider: (signing key, its JWK).
fn idp_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    use base64::Engine as _;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": b64.encode(&public[1..33]), "y": b64.encode(&public[33..65])});
    (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

/// Serves `/jwks.json` from `keys` (which the test may change) on 127.0.0.1.
fn jwks_server(keys: std::sync::Arc<std::sync::Mutex<Value>>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = keys.lock().unwrap().to_string();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Bearer tokens from a tenant's identity provider: verified against its
/// JWKS (fetched from its URL), the agent named by `client_id` and the end
/// user by `sub`; expired, wrong-audience and unscoped tokens are refused
/// (the last with 403 insufficient_scope); a key rotated in at the provider
/// is picked up by a refresh.
#[test]
fn identity_provider_tokens_authenticate_agents_and_users() {
    let (_demo, demo) = start_demo(&["--whoami"]);
    let (k1, jwk1) = idp_key("k1");
    let keys = std::sync::Arc::new(std::sync::Mutex::new(json!({"keys": [jwk1]})));
    let idp = jwks_server(keys.clone());
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jwt-{}.agents-data", std::process::id()));
    let dome = start_dome(
        "jwt",
        &format!(
            "[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n\
             [auth]\ndata_dir = \"{}\"\n\
             [[tenant]]\nname = \"acme\"\n\
             [tenant.jwt]\nissuer = \"https://idp.acme.test\"\njwks_url = \"http://{idp}/jwks.json\"\n\
             required_scopes = [\"mcp:tools\"]\nleeway_s = 0\n\
             [[agent]]\nid = \"acme-bot\"\ntenant = \"acme\"\napi_keys = [\"{}\"]\n",
            data.display(),
            sha(KEY_ACME_BOT)
        ),
    );
    let aud = format!("http://{}/mcp", dome.mcp);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64, aud: &str, scope: &str| {
        json!({"iss": "https://idp.acme.test", "aud": aud, "sub": "bob@acme.test",
               "client_id": "acme-bot", "iat": now, "exp": exp, "scope": scope})
    };
    let token = |k: &jsonwebtoken::EncodingKey, kid: &str, c: &Value| {
        let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, c, k).unwrap()
    };
    let whoami = |t: &str| {
        post(
            &dome,
            &[("Authorization", &format!("Bearer {t}"))],
            "whoami",
            &call("whoami", json!({})),
        )
    };
    // The provider's keys are fetched in the background at start.
    let good = token(&k1, "k1", &claims(now + 300, &aud, "mcp:tools"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, _, v) = loop {
        let r = whoami(&good);
        if r.0 == 200 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{v}");
    let seen: Value =
        serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    let (_, _, jwks) = http(dome.mcp, "GET", "/.well-known/jwks.json", &[], "");
    let set: JwkSet = serde_json::from_str(&jwks).unwrap();
    let assertion = seen["dome-assertion"].as_str().unwrap();
    let kid = jsonwebtoken::decode_header(assertion).unwrap().kid.unwrap();
    let mut val = Validation::new(Algorithm::EdDSA);
    val.set_audience(&["demo"]);
    let c = jsonwebtoken::decode::<Value>(
        assertion,
        &DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap(),
        &val,
    )
    .unwrap()
    .claims;
    assert_eq!(c["sub"], "acme-bot");
    assert_eq!(c["user"], "bob@acme.test");
    assert!(
        seen.get("authorization").is_none(),
        "the token went upstream: {seen}"
    );

    assert_eq!(
        whoami(&token(&k1, "k1", &claims(now - 10, &aud, "mcp:tools"))).0,
        401,
        "expired"
    );
    assert_eq!(
        whoami(&token(
            &k1,
            "k1",
            &claims(now + 300, "https://other/mcp", "mcp:tools")
        ))
        .0,
        401,
        "audience"
    );
    // A critical header extension Dome does not understand (RFC 7515
    // §4.1.11), in a token otherwise valid and properly signed.
    let crit = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(
            json!({"alg": "ES256", "kid": "k1", "crit": ["acme-bound"], "acme-bound": true})
                .to_string(),
        );
        let input = format!(
            "{header}.{}",
            b64.encode(claims(now + 300, &aud, "mcp:tools").to_string())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k1, Algorithm::ES256).unwrap();
        format!("{input}.{sig}")
    };
    let (status, _, v) = whoami(&crit);
    assert_eq!(status, 401, "crit: {v}");
    let (status, h, _) = whoami(&token(&k1, "k1", &claims(now + 300, &aud, "read")));
    assert_eq!(status, 403, "scope");
    let challenge = header(&h, "www-authenticate").unwrap();
    // A tenant trusts an identity provider here: the challenge points at
    // the metadata that names it.
    let metadata_url = format!("http://{}/.well-known/oauth-protected-resource", dome.mcp);
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"mcp:tools\"")
            && challenge.contains(&format!("resource_metadata=\"{metadata_url}\"")),
        "{challenge}"
    );
    let (_, _, doc) = http(
        dome.mcp,
        "GET",
        "/.well-known/oauth-protected-resource",
        &[],
        "",
    );
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(
        doc["authorization_servers"],
        json!(["https://idp.acme.test"])
    );
    assert_eq!(doc["resource"], format!("http://{}/mcp", dome.mcp));

    // An agent with an API key passes its end user's own token: the user
    // is the token's (and a token that does not verify is refused).
    let user_token = token(
        &k1,
        "k1",
        &json!({"iss": "https://idp.acme.test", "aud": aud, "sub": "dora@acme.test",
                "exp": now + 300, "scope": "mcp:tools"}),
    );
    let (status, _, v) = post(
        &dome,
        &[
            ("Authorization", &format!("Bearer {KEY_ACME_BOT}")),
            ("Dome-User-Token", &user_token),
        ],
        "whoami",
        &call("whoami", json!({})),
    );
    assert_eq!(status, 200, "{v}");
    let seen: Value =
        serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!(
        seen.get("dome-user-token").is_none(),
        "the user's token went upstream"
    );
    let claims_of = |t: &str| {
        let kid = jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        jsonwebtoken::decode::<Value>(
            t,
            &DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap(),
            &val,
        )
        .unwrap()
        .claims
    };
    assert_eq!(
        claims_of(seen["dome-assertion"].as_str().unwrap())["user"],
        "dora@acme.test"
    );
    let (status, _, _) = post(
        &dome,
        &[
            ("Authorization", &format!("Bearer {KEY_ACME_BOT}")),
            ("Dome-User-Token", "not.a.token"),
        ],
        "whoami",
        &call("whoami", json!({})),
    );
    assert_eq!(status, 401);

    // The provider rotates in a new key: the first token signed with it is
    // refused (unknown key) and triggers a refresh; then it verifies.
    let (k2, jwk2) = idp_key("k2");
    keys.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(jwk2);
    let rotated = token(&k2, "k2", &claims(now + 300, &aud, "mcp:tools"));
    assert_eq!(whoami(&rotated).0, 401);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while whoami(&rotated).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated key was never fetched"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A request from a chosen loopback source address: its status.
fn status_from(src: &str, dome: &Dome, auth: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect_timeout(&dome.mcp.into(), std::time::Duration::from_secs(2))
        .unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let body = call("echo", json!({"message": "m"}));
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: d\r\nAccept: application/json, text/event-stream\r\n\
         Content-Type: application/json\r\nMCP-Protocol-Version: 2026-07-28\r\nMcp-Method: tools/call\r\n\
         Mcp-Name: echo\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Many agents share an address behind a NAT or a corporate egress: bad
/// logins from it strike the identity they claim (or, when they claim
/// none, count as anonymous attempts from the address) and never lock out
/// the agents behind it that present valid credentials, not even the
/// agent whose id the bad logins used. Each failure is logged, with the
/// source, the reason and the claimed agent but never the key, at a rate
/// a flood cannot raise.
#[test]
fn bad_logins_from_an_address_never_lock_out_the_agents_behind_it() {
    let (_demo, demo) = start_demo(&[]);
    let dome = dome_with_agents("nat", demo);
    let bearer = |k: &str| format!("Bearer {k}");
    let wrong_a = "dome_agent-a_a-guess-at-agent-a-s-secret-key";
    assert_eq!(status_from("127.0.0.1", &dome, Some(&bearer(KEY_A))), 200);
    // The default: 20 strikes in 60 s block for 300 s. Thirty of each kind.
    for _ in 0..30 {
        assert!(matches!(
            status_from("127.0.0.1", &dome, Some(&bearer(wrong_a))),
            401 | 403
        ));
        assert!(matches!(
            status_from("127.0.0.1", &dome, Some("Bearer garbage")),
            401 | 403
        ));
    }
    // The agents behind the address are served: another tenant's agent...
    assert_eq!(status_from("127.0.0.1", &dome, Some(&bearer(KEY_B))), 200);
    // ...and the agent whose id was guessed at, with its real key.
    assert_eq!(status_from("127.0.0.1", &dome, Some(&bearer(KEY_A))), 200);
    // The guesses at agent-a are refused as blocked now, from anywhere...
    assert_eq!(status_from("127.0.0.2", &dome, Some(&bearer(wrong_a))), 403);
    // ...and so are anonymous attempts from that address, but only from it.
    assert_eq!(status_from("127.0.0.1", &dome, Some("Bearer garbage")), 403);
    assert_eq!(status_from("127.0.0.1", &dome, None), 403);
    assert_eq!(status_from("127.0.0.2", &dome, Some("Bearer garbage")), 401);

    let log = std::fs::read_to_string(dome.config.with_extension("log")).unwrap();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .collect();
    assert!(!failed.is_empty(), "failed logins are not logged:\n{log}");
    assert!(
        failed.len() < 60,
        "{} lines for 60 failed logins in a burst: not rate-limited",
        failed.len()
    );
    assert!(
        failed.iter().any(|l| l.contains("127.0.0.1")
            && l.contains("agent agent-a")
            && l.contains("invalid API key")),
        "{failed:?}"
    );
    assert!(
        !log.contains("a-guess-at"),
        "a presented key reached the log"
    );
}

/// `[escalation]` applies on reload, without a restart.
#[test]
fn escalation_settings_apply_on_reload() {
    let (_demo, demo) = start_demo(&[]);
    let upstream = format!("[[upstream]]\nname = \"demo\"\nurl = \"http://{demo}/mcp\"\n");
    let base = agents_config("esc-reload", &upstream);
    let dome = start_dome(
        "esc-reload",
        &format!("{base}[escalation]\nmax_strikes = 1000\n"),
    );
    let reloads = dome.stats_json()["config"]["reloads"].as_u64().unwrap();
    dome.rewrite(&format!("{base}[escalation]\nmax_strikes = 3\n"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dome.stats_json()["config"]["reloads"].as_u64().unwrap() == reloads {
        assert!(std::time::Instant::now() < deadline, "never reloaded");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for _ in 0..3 {
        assert_eq!(status_from("127.0.0.1", &dome, Some("Bearer garbage")), 401);
    }
    assert_eq!(status_from("127.0.0.1", &dome, Some("Bearer garbage")), 403);
}

/// An issuer picks the tenant of its tokens, so two tenants cannot share
/// one: `dome check-config` refuses it, naming the file, line and field.
#[test]
fn two_tenants_with_one_token_issuer_are_refused_by_check_config() {
    let config = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("same-issuer-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[[tenant]]\nname = \"acme\"\n[tenant.jwt]\nissuer = \"https://idp.example\"\n\
         jwks_url = \"https://idp.example/jwks.json\"\n\n\
         [[tenant]]\nname = \"globex\"\n[tenant.jwt]\nissuer = \"https://idp.example\"\n\
         jwks_url = \"https://idp.example/jwks.json\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dome"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:10:", config.display()))
            && err.contains("tenant[1].jwt.issuer")
            && err.contains("tenant `acme`"),
        "{err}"
    );
}
