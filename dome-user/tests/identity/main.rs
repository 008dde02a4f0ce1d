//! Authentication, sessions bound to their agent, the identity assertion
//! upstreams receive, and call budgets: the real `dome` binary in front of
//! the demo upstream, over real sockets.

#[path = "../common/mod.rs"]
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

mod providers;
