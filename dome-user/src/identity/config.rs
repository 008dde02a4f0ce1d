//! The identity sections of `dome.toml`: `[auth]`, `[admin]`,
//! `[assertion]`, `[[tenant]]` and `[[agent]]`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use super::budget::Rate;

/// `[auth]`: who may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Every MCP request must carry a valid credential. Turning this off
    /// (for local experiments and the conformance suite, which cannot send
    /// one) serves anonymous callers with no identity.
    #[serde(default = "yes")]
    pub required: bool,
    /// Where the agent registry is kept; relative to the config file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The MCP endpoint's public URL: the resource (RFC 8707/9728) tokens
    /// are for. Default: `http://<server.listen><mcp.path>`.
    #[serde(default)]
    pub resource: Option<String>,
    /// The budget of an agent that has none of its own.
    #[serde(default)]
    pub agent_budget: Option<Rate>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            required: true,
            data_dir: default_data_dir(),
            resource: None,
            agent_budget: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("dome-data")
}

/// `[admin]`: the admin API's own listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// SHA-256 (hex) of the admin token (`dome hash-key TOKEN` prints it).
    pub token_sha256: String,
}

/// `[assertion]`: the signed identity assertion Dome sends upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// The request header that carries it.
    #[serde(default = "default_header")]
    pub header: String,
    /// Lifetime of one assertion, seconds.
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// Ed25519 private keys (PKCS#8 PEM), relative to the config file. The
    /// first signs; all are published at `/.well-known/jwks.json`, so a key
    /// is rotated by putting the new one first and dropping the old one
    /// once assertions signed with it have expired. None: an ephemeral key
    /// made at start.
    #[serde(default)]
    pub keys: Vec<PathBuf>,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        AssertionConfig {
            header: default_header(),
            ttl_s: default_ttl(),
            keys: Vec::new(),
        }
    }
}

fn default_header() -> String {
    "dome-assertion".into()
}

fn default_ttl() -> u64 {
    60
}

/// `[[tenant]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// Calls of all the tenant's agents together.
    #[serde(default)]
    pub budget: Option<Rate>,
    /// The agent's credential may name the end user it acts for in the
    /// `Dome-User` header.
    #[serde(default)]
    pub delegation: bool,
    /// Bearer tokens (JWT) from the tenant's identity provider.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
}

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
    pub jwks_file: Option<PathBuf>,
    /// ... or a JWKS URL (http or https), fetched at start and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
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

/// What an agent is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    #[default]
    CustomerAgent,
    Partner,
}

/// `[[agent]]`: an agent defined in the config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Lowercase letters, digits and `-`: the readable part of its keys.
    pub id: String,
    pub tenant: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub kind: AgentKind,
    #[serde(default)]
    pub labels: Vec<String>,
    /// SHA-256 (hex) of each valid key (`dome hash-key KEY` prints it).
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub budget: Option<Rate>,
    /// Budgets for single tools (by the name clients call).
    #[serde(default)]
    pub tool_budgets: BTreeMap<String, Rate>,
}
