//! Authentication of one MCP request: which agent (and end user) it is, or
//! why not. Pure: the index and the time come in as arguments.

use std::sync::Arc;

use http::{HeaderMap, StatusCode, header::HeaderName};

use super::{
    agent::{Agent, Index, Tenant},
    apikey,
    jwt::{JwtError, Verifier},
};

/// Header in which an agent whose tenant allows delegation names the end
/// user it acts for. Like every `dome-*` header, never forwarded upstream.
pub const H_USER: HeaderName = HeaderName::from_static("dome-user");

/// Header in which an agent passes a token the tenant's identity provider
/// issued to the end user: the user is then the token's, verified.
pub const H_USER_TOKEN: HeaderName = HeaderName::from_static("dome-user-token");

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The agent the credential names.
    pub agent: Arc<Agent>,
    /// The agent's tenant.
    pub tenant: Arc<Tenant>,
    /// The end user the agent acts for, when known.
    pub user: Option<String>,
}

/// Why a request is not authenticated: the HTTP status, the OAuth error
/// code for `WWW-Authenticate` (RFC 6750), and a message for the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// The HTTP status to answer with: 400, 401 or 403.
    pub status: StatusCode,
    /// The OAuth error code (`invalid_request`, `invalid_token`,
    /// `insufficient_scope`); `None` when no credential was sent.
    pub error: Option<&'static str>,
    /// What went wrong, for the response body.
    pub message: String,
    /// Counts toward escalation (a presented credential that is wrong, not
    /// a missing one).
    pub bad_credential: bool,
    /// The scopes a token lacked (`insufficient_scope`).
    pub scope: Option<String>,
    /// A trusted issuer whose key set lacked the token's key: worth a refresh.
    pub refresh_issuer: Option<String>,
    /// The identity the credential claimed (bounded and printable; never
    /// the secret), for the log.
    pub claim: Option<String>,
    /// The claim names one this node knows (an agent of the registry, a
    /// trusted issuer): escalation strikes the claim, not the address it
    /// came from. Else the attempt is anonymous.
    pub claim_known: bool,
    /// The credential was a Dome API key: its remedy is the right key, not
    /// an authorization server, so the challenge names no OAuth metadata.
    pub api_key: bool,
}

fn fail(
    status: StatusCode,
    error: Option<&'static str>,
    message: impl Into<String>,
    bad: bool,
) -> Failure {
    Failure {
        status,
        error,
        message: message.into(),
        bad_credential: bad,
        scope: None,
        refresh_issuer: None,
        claim: None,
        claim_known: false,
        api_key: false,
    }
}

impl Failure {
    fn claiming(mut self, claim: Option<String>) -> Failure {
        self.claim_known = claim.is_some();
        self.claim = claim;
        self
    }
}

/// Attacker-chosen text made fit for a claim (and a log line): at most
/// `max` characters, control and invisible characters escaped.
fn shown(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max) {
        if c.is_control() || !(c.is_ascii_graphic() || c.is_alphanumeric()) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The claim of an API key that names a registered agent.
fn agent_claim(agent_id: &str) -> String {
    format!("agent {agent_id}")
}

/// Query parameters that would carry a credential: refused (they end up in
/// logs and caches).
const QUERY_CREDENTIALS: [&str; 4] = ["access_token", "api_key", "apikey", "token"];

/// Percent-decodes a query parameter's name (`+` is a space), so that an
/// encoded name cannot slip past [`QUERY_CREDENTIALS`].
fn decoded_name(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a query string carries a credential parameter, however its
/// name is spelt (case, percent-encoding, `&` or `;` separators).
fn credential_in_query(query: &str) -> bool {
    query.split(['&', ';']).any(|kv| {
        let raw = kv.split('=').next().unwrap_or_default();
        // Decoded until it stays the same (`%2561` is `%61` is `a` to a
        // server that decodes twice), a few rounds at most.
        let mut name = decoded_name(raw);
        for _ in 0..3 {
            let again = decoded_name(&name);
            if again == name {
                break;
            }
            name = again;
        }
        // An encoded `=` would make the rest of the pair part of the name,
        // and `access_token[]` is `access_token` to frameworks that read
        // brackets as arrays.
        let name = name.split(['=', '[']).next().unwrap_or_default().trim();
        QUERY_CREDENTIALS
            .iter()
            .any(|c| name.eq_ignore_ascii_case(c))
    })
}

/// Authenticates a request. `Ok(None)`: no credential and none required.
pub fn authenticate(
    headers: &HeaderMap,
    query: Option<&str>,
    index: &Index,
    jwt: &Verifier,
    required: bool,
    now_unix_s: u64,
) -> Result<Option<Caller>, Failure> {
    if let Some(q) = query
        && credential_in_query(q)
    {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            Some("invalid_request"),
            "credentials in the query string are refused; send them in the Authorization header",
            true,
        ));
    }
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    let Some(auth) = auth else {
        return if required {
            Err(fail(
                StatusCode::UNAUTHORIZED,
                None,
                "authentication required: send Authorization: Bearer <API key or token>",
                false,
            ))
        } else {
            Ok(None)
        };
    };
    let token = match auth.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => {
            return Err(fail(
                StatusCode::UNAUTHORIZED,
                Some("invalid_request"),
                "the Authorization header must be `Bearer <credential>`",
                true,
            ));
        }
    };
    let Some(agent_id) = apikey::agent_of(token) else {
        return from_token(token, index, jwt, now_unix_s);
    };
    from_api_key(agent_id, token, headers, index, jwt, now_unix_s).map_err(|mut f| {
        f.api_key = true;
        f
    })
}

/// A Dome API key of the agent `agent_id` names.
fn from_api_key(
    agent_id: &str,
    token: &str,
    headers: &HeaderMap,
    index: &Index,
    jwt: &Verifier,
    now_unix_s: u64,
) -> Result<Option<Caller>, Failure> {
    let invalid = |m: &str| fail(StatusCode::UNAUTHORIZED, Some("invalid_token"), m, true);
    // An unknown agent and a wrong key get the same answer; an unknown
    // agent is an anonymous attempt (its claim names no one here).
    let Some(agent) = index.agents.get(agent_id) else {
        let mut f = invalid("invalid API key");
        f.claim = Some(format!("unknown {}", agent_claim(agent_id)));
        return Err(f);
    };
    let claim = Some(agent_claim(agent_id));
    if !agent.accepts(token, now_unix_s) {
        return Err(invalid("invalid API key").claiming(claim));
    }
    if agent.disabled {
        return Err(invalid("this agent is disabled").claiming(claim));
    }
    let Some(tenant) = index.tenants.get(&agent.tenant) else {
        return Err(invalid("the agent's tenant no longer exists").claiming(claim));
    };
    // A user token the tenant's identity provider signed names the end
    // user best; else the agent may assert it where its tenant allows.
    if let Some(t) = headers.get(H_USER_TOKEN) {
        let bad = |m: String| {
            fail(
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                format!("Dome-User-Token: {m}"),
                true,
            )
        };
        let t = t
            .to_str()
            .map_err(|_| bad("not text".into()).claiming(claim.clone()))?;
        let v = jwt
            .verify_cached(t, now_unix_s)
            .map_err(|e| token_failure(e, "Dome-User-Token: ").claiming(claim.clone()))?;
        if v.tenant != tenant.name {
            return Err(bad("issued for another tenant".into()).claiming(claim));
        }
        return Ok(Some(Caller {
            agent: agent.clone(),
            tenant: tenant.clone(),
            user: v.user,
        }));
    }
    let user = match headers.get(H_USER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(u)) if tenant.delegation && !u.is_empty() && u.len() <= 256 => Some(u.to_string()),
        Some(_) if !tenant.delegation => {
            return Err(fail(
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                format!(
                    "tenant `{}` does not let agents name the end user",
                    tenant.name
                ),
                false,
            )
            .claiming(claim));
        }
        Some(_) => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                "the Dome-User header must be 1 to 256 visible characters",
                false,
            )
            .claiming(claim));
        }
    };
    Ok(Some(Caller {
        agent: agent.clone(),
        tenant: tenant.clone(),
        user,
    }))
}

/// Why a token from an identity provider was refused, as an answer;
/// `what` prefixes the messages (which header it came in).
fn token_failure(e: JwtError, what: &str) -> Failure {
    match e {
        JwtError::Invalid(m) => fail(
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
            format!("{what}{m}"),
            true,
        ),
        JwtError::UnknownKey { issuer } => {
            let mut f = fail(
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                format!("{what}the token's key is not in its provider's key set"),
                // Likely a key the provider just rotated in: no strike.
                false,
            );
            f.refresh_issuer = Some(issuer);
            f
        }
        JwtError::InsufficientScope { required } => {
            let mut f = fail(
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                format!("{what}the token lacks scopes: needs `{required}`"),
                false,
            );
            f.scope = Some(required);
            f
        }
    }
}

/// A bearer token from a tenant's identity provider: the agent it names
/// must be one of that tenant's; the end user is the token's.
fn from_token(
    token: &str,
    index: &Index,
    jwt: &Verifier,
    now_unix_s: u64,
) -> Result<Option<Caller>, Failure> {
    // Only on failure is the unverified payload read again, for the claim.
    let claim = || token_claim(token, jwt);
    let invalid = |m: String| {
        fail(StatusCode::UNAUTHORIZED, Some("invalid_token"), m, true).claiming(claim())
    };
    let v = jwt
        .verify_cached(token, now_unix_s)
        .map_err(|e| token_failure(e, "").claiming(claim()))?;
    let Some(agent_id) = v.agent.as_deref() else {
        return Err(invalid(
            "the token names no agent (client_id or azp); a user's token goes in Dome-User-Token"
                .into(),
        ));
    };
    let agent = index
        .agents
        .get(agent_id)
        .filter(|a| a.tenant == v.tenant)
        .ok_or_else(|| {
            invalid(format!(
                "`{agent_id}` is not an agent of tenant `{}`",
                v.tenant
            ))
        })?;
    if agent.disabled {
        return Err(invalid("this agent is disabled".into()));
    }
    let tenant = index
        .tenants
        .get(&v.tenant)
        .ok_or_else(|| invalid("the token's tenant no longer exists".into()))?;
    Ok(Some(Caller {
        agent: agent.clone(),
        tenant: tenant.clone(),
        user: v.user,
    }))
}

/// The claim of a bearer token whose issuer is trusted here: the issuer,
/// the agent and the subject it names (unverified, so bounded and
/// escaped). A token that does not decode, or from an issuer not trusted
/// here, claims nobody: an anonymous attempt.
fn token_claim(token: &str, jwt: &Verifier) -> Option<String> {
    let c = super::jwt::unverified_claims(token)?;
    let iss = c["iss"].as_str()?;
    let p = jwt.by_issuer.get(iss)?;
    let field = |name: &str| c[name].as_str().map_or_else(String::new, |v| shown(v, 64));
    let agent = match c[p.config.agent_claim.as_str()].as_str() {
        Some(a) => shown(a, 64),
        None => field("azp"),
    };
    Some(format!(
        "token {} agent={} sub={}",
        shown(iss, 128),
        agent,
        field(&p.config.user_claim)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_query_are_found_however_their_name_is_spelt() {
        for q in [
            "access_token=x",
            "a=1&ACCESS_TOKEN=x",
            "%61ccess_token=x",
            "%61%63%63%65%73%73%5f%74%6f%6b%65%6e=x",
            "api%5Fkey=x",
            "a=1;token=x",
            "token",
            "access_token%3Dx",
            "%2561ccess_token=x",
            "access_token[]=x",
            "access_token%5B0%5D=x",
        ] {
            assert!(credential_in_query(q), "{q}");
        }
        for q in ["", "a=1&b=2", "tokens=1", "%zz=1", "%6", "x=%61ccess_token"] {
            assert!(!credential_in_query(q), "{q}");
        }
    }

    #[test]
    fn claims_shown_are_bounded_and_printable() {
        assert_eq!(shown("acme-bot", 64), "acme-bot");
        assert_eq!(shown("a\nb\u{1b}[2J", 64), "a\\u{a}b\\u{1b}[2J");
        assert_eq!(shown(&"x".repeat(500), 64).len(), 64);
    }
}
