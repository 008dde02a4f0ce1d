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

pub use dome_core::identity::jwt::JwtConfig;

/// What an agent is.
pub use dome_core::identity::agent::AgentKind;

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
