//! Tokens of tenants' identity providers, bad logins that never lock out the agents behind an address, and escalation settings on reload.

use super::*;

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
    let acme = Acme {
        aud: format!("http://{}/mcp", dome.mcp),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        dome: &dome,
        k1,
    };
    a_providers_token_names_the_agent_and_its_user_upstream(&acme);
    expired_misaddressed_critical_and_unscoped_tokens_are_refused(&acme);
    an_agent_with_an_api_key_passes_its_users_own_token(&acme);
    a_key_rotated_in_at_the_provider_verifies_after_a_refresh(&acme, &keys);
}

/// Acme's identity provider and the Dome that trusts it, as the steps of
/// [`identity_provider_tokens_authenticate_agents_and_users`] use them.
struct Acme<'a> {
    dome: &'a Dome,
    /// The provider's first signing key.
    k1: jsonwebtoken::EncodingKey,
    /// Dome's MCP URL: the audience of the provider's tokens.
    aud: String,
    /// When the test's tokens are issued (unix s).
    now: u64,
}

impl Acme<'_> {
    /// A token's claims for `acme-bot` and its user `bob@acme.test`.
    fn claims(&self, exp: u64, aud: &str, scope: &str) -> Value {
        json!({"iss": "https://idp.acme.test", "aud": aud, "sub": "bob@acme.test",
               "client_id": "acme-bot", "iat": self.now, "exp": exp, "scope": scope})
    }

    /// A `whoami` call with bearer token `t`.
    fn whoami(&self, t: &str) -> (u16, Vec<(String, String)>, Value) {
        post(
            self.dome,
            &[("Authorization", &format!("Bearer {t}"))],
            "whoami",
            &call("whoami", json!({})),
        )
    }
}

/// `c` signed with key `k`, named `kid` in the header.
fn token(k: &jsonwebtoken::EncodingKey, kid: &str, c: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, c, k).unwrap()
}

/// The claims of an assertion Dome signed, verified with the keys it
/// publishes.
fn assertion_claims(dome: &Dome, assertion: &str) -> Value {
    let (_, _, jwks) = http(dome.mcp, "GET", "/.well-known/jwks.json", &[], "");
    let set: JwkSet = serde_json::from_str(&jwks).unwrap();
    let kid = jsonwebtoken::decode_header(assertion).unwrap().kid.unwrap();
    let mut val = Validation::new(Algorithm::EdDSA);
    val.set_audience(&["demo"]);
    jsonwebtoken::decode::<Value>(
        assertion,
        &DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap(),
        &val,
    )
    .unwrap()
    .claims
}

/// Once the provider's keys are fetched (in the background at start), its
/// token passes: the assertion upstream names the agent and the user, and
/// the token itself does not go upstream.
fn a_providers_token_names_the_agent_and_its_user_upstream(acme: &Acme) {
    let (k1, aud, now) = (&acme.k1, &acme.aud, acme.now);
    // The provider's keys are fetched in the background at start.
    let good = token(k1, "k1", &acme.claims(now + 300, aud, "mcp:tools"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, _, v) = loop {
        let r = acme.whoami(&good);
        if r.0 == 200 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{v}");
    let seen: Value =
        serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    let c = assertion_claims(acme.dome, seen["dome-assertion"].as_str().unwrap());
    assert_eq!(c["sub"], "acme-bot");
    assert_eq!(c["user"], "bob@acme.test");
    assert!(
        seen.get("authorization").is_none(),
        "the token went upstream: {seen}"
    );
}

/// Expired, for another audience, with a critical extension Dome does not
/// understand: 401. Without the required scope: 403, with a challenge that
/// points at the metadata naming the provider.
fn expired_misaddressed_critical_and_unscoped_tokens_are_refused(acme: &Acme) {
    let (k1, aud, now, dome) = (&acme.k1, &acme.aud, acme.now, acme.dome);
    assert_eq!(
        acme.whoami(&token(k1, "k1", &acme.claims(now - 10, aud, "mcp:tools")))
            .0,
        401,
        "expired"
    );
    assert_eq!(
        acme.whoami(&token(
            k1,
            "k1",
            &acme.claims(now + 300, "https://other/mcp", "mcp:tools")
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
            b64.encode(acme.claims(now + 300, aud, "mcp:tools").to_string())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), k1, Algorithm::ES256).unwrap();
        format!("{input}.{sig}")
    };
    let (status, _, v) = acme.whoami(&crit);
    assert_eq!(status, 401, "crit: {v}");
    let (status, h, _) = acme.whoami(&token(k1, "k1", &acme.claims(now + 300, aud, "read")));
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
}

/// An agent with an API key passes its end user's own token: the user
/// is the token's (and a token that does not verify is refused).
fn an_agent_with_an_api_key_passes_its_users_own_token(acme: &Acme) {
    let (k1, aud, now, dome) = (&acme.k1, &acme.aud, acme.now, acme.dome);
    let user_token = token(
        k1,
        "k1",
        &json!({"iss": "https://idp.acme.test", "aud": aud, "sub": "dora@acme.test",
                "exp": now + 300, "scope": "mcp:tools"}),
    );
    let (status, _, v) = post(
        dome,
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
    assert_eq!(
        assertion_claims(dome, seen["dome-assertion"].as_str().unwrap())["user"],
        "dora@acme.test"
    );
    let (status, _, _) = post(
        dome,
        &[
            ("Authorization", &format!("Bearer {KEY_ACME_BOT}")),
            ("Dome-User-Token", "not.a.token"),
        ],
        "whoami",
        &call("whoami", json!({})),
    );
    assert_eq!(status, 401);
}

/// The provider rotates in a new key: the first token signed with it is
/// refused (unknown key) and triggers a refresh; then it verifies.
fn a_key_rotated_in_at_the_provider_verifies_after_a_refresh(
    acme: &Acme,
    keys: &std::sync::Mutex<Value>,
) {
    let (aud, now) = (&acme.aud, acme.now);
    let (k2, jwk2) = idp_key("k2");
    keys.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(jwk2);
    let rotated = token(&k2, "k2", &acme.claims(now + 300, aud, "mcp:tools"));
    assert_eq!(acme.whoami(&rotated).0, 401);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while acme.whoami(&rotated).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated key was never fetched"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A request from a chosen loopback source address: its status.
pub(super) fn status_from(src: &str, dome: &Dome, auth: Option<&str>) -> u16 {
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
