//! Authentication of one MCP request: which agent (and end user) it is, or
//! why not. Pure: the index and the time come in as arguments.

use std::sync::Arc;

use hyper::{HeaderMap, StatusCode};

use super::{
    apikey,
    registry::{Agent, Index, Tenant},
};

/// Header in which an agent whose tenant allows delegation names the end
/// user it acts for. Like every `dome-*` header, never forwarded upstream.
pub const H_USER: &str = "dome-user";

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub agent: Arc<Agent>,
    pub tenant: Arc<Tenant>,
    /// The end user the agent acts for, when known.
    pub user: Option<String>,
}

/// Why a request is not authenticated: the HTTP status, the OAuth error
/// code for `WWW-Authenticate` (RFC 6750), and a message for the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: StatusCode,
    pub error: Option<&'static str>,
    pub message: String,
    /// Counts toward escalation (a presented credential that is wrong, not
    /// a missing one).
    pub bad_credential: bool,
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
    }
}

/// Query parameters that would carry a credential: refused (they end up in
/// logs and caches).
const QUERY_CREDENTIALS: [&str; 4] = ["access_token", "api_key", "apikey", "token"];

/// Authenticates a request. `Ok(None)`: no credential and none required.
pub fn authenticate(
    headers: &HeaderMap,
    query: Option<&str>,
    index: &Index,
    required: bool,
    now_unix_s: u64,
) -> Result<Option<Caller>, Failure> {
    if let Some(q) = query
        && q.split('&').any(|kv| {
            let k = kv.split('=').next().unwrap_or_default();
            QUERY_CREDENTIALS.iter().any(|c| k.eq_ignore_ascii_case(c))
        })
    {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            Some("invalid_request"),
            "credentials in the query string are refused; send them in the Authorization header",
            true,
        ));
    }
    let auth = headers
        .get(hyper::header::AUTHORIZATION)
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
    let invalid = |m: &str| fail(StatusCode::UNAUTHORIZED, Some("invalid_token"), m, true);
    let Some(agent_id) = apikey::agent_of(token) else {
        return Err(invalid(
            "not a Dome API key, and no tenant accepts bearer tokens from an identity provider here",
        ));
    };
    // An unknown agent and a wrong key get the same answer.
    let Some(agent) = index.agents.get(agent_id) else {
        return Err(invalid("invalid API key"));
    };
    if !agent.accepts(token, now_unix_s) {
        return Err(invalid("invalid API key"));
    }
    if agent.disabled {
        return Err(invalid("this agent is disabled"));
    }
    let Some(tenant) = index.tenants.get(&agent.tenant) else {
        return Err(invalid("the agent's tenant no longer exists"));
    };
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
            ));
        }
        Some(_) => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                "the Dome-User header must be 1 to 256 visible characters",
                false,
            ));
        }
    };
    Ok(Some(Caller {
        agent: agent.clone(),
        tenant: tenant.clone(),
        user,
    }))
}
