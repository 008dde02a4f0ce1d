//! `dome.toml`: the operator's file. Parsed strictly (unknown keys are
//! errors), validated completely, and every error names the file, the line
//! and the field so an operator can fix it without guessing.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::identity::config::{
    AdminConfig, AgentConfig, AssertionConfig, AuthConfig, TenantConfig,
};
use crate::{
    gateway::McpConfig, kernel::ProgramSettings, kernel::XdpSection, net::ServerConfig,
    ops::stats::StatsConfig, upstream::UpstreamConfig,
};

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub stats: StatsConfig,
    #[serde(default)]
    pub xdp: XdpSection,
    /// Serve HTTPS when set.
    #[serde(default)]
    pub tls: Option<crate::net::TlsConfig>,
    #[serde(default)]
    pub mcp: McpConfig,
    /// The MCP servers Dome federates.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub assertion: AssertionConfig,
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    #[serde(default, rename = "agent")]
    pub agents: Vec<AgentConfig>,
    #[serde(default)]
    pub escalation: crate::identity::escalation::EscalationConfig,
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
}

impl Config {
    /// What the XDP program is loaded with.
    pub fn program_settings(&self) -> ProgramSettings {
        ProgramSettings {
            tcp_ports: self
                .xdp
                .tcp_ports
                .clone()
                .unwrap_or_else(|| vec![self.server.listen.port()]),
            udp_ports: self.xdp.udp_ports.clone(),
            preauth: self.xdp.preauth_budget.address(),
            preauth_prefix: self.xdp.preauth_budget.aggregate(),
            events_per_sec: self.xdp.events_per_sec,
        }
    }

    /// `[auth]`, tenants, agents, `[admin]`, `[assertion]` and `[escalation]`.
    fn identity_problems(&self, out: &mut Vec<(String, String)>) {
        use crate::identity::{apikey, budget::Rate};
        let rate = |field: String, r: &Rate, out: &mut Vec<(String, String)>| {
            for (f, why) in r.problems() {
                out.push((format!("{field}.{f}"), why.into()));
            }
        };
        if let Some(r) = &self.auth.agent_budget {
            rate("auth.agent_budget".into(), r, out);
        }
        let mut names = std::collections::HashSet::new();
        // An issuer picks the tenant of its tokens: two tenants sharing one
        // would have one's tokens taken for the other's.
        let mut issuers = std::collections::HashMap::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                out.push((format!("tenant[{i}].name"), "must be set and unique".into()));
            }
            if let Some(r) = &t.budget {
                rate(format!("tenant[{i}].budget"), r, out);
            }
            if let Some(j) = &t.jwt {
                if j.issuer.is_empty() {
                    out.push((format!("tenant[{i}].jwt.issuer"), "must be set".into()));
                } else if let Some(first) = issuers.insert(j.issuer.as_str(), t.name.as_str()) {
                    out.push((
                        format!("tenant[{i}].jwt.issuer"),
                        format!(
                            "`{}` is already the issuer of tenant `{first}`; an issuer picks one tenant",
                            j.issuer
                        ),
                    ));
                }
                if j.jwks_file.is_some() == j.jwks_url.is_some() {
                    out.push((
                        format!("tenant[{i}].jwt"),
                        "needs exactly one of jwks_file and jwks_url".into(),
                    ));
                }
                if let Some(u) = &j.jwks_url
                    && !(u.starts_with("https://") || u.starts_with("http://"))
                {
                    out.push((
                        format!("tenant[{i}].jwt.jwks_url"),
                        "must be an http(s) URL".into(),
                    ));
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, a) in self.agents.iter().enumerate() {
            if !apikey::valid_agent_id(&a.id) || !ids.insert(a.id.as_str()) {
                out.push((
                    format!("agent[{i}].id"),
                    "must be unique, 1 to 40 of a-z, 0-9 and -".into(),
                ));
            }
            if !names.contains(a.tenant.as_str()) {
                out.push((
                    format!("agent[{i}].tenant"),
                    format!("no [[tenant]] named `{}`", a.tenant),
                ));
            }
            for (k, h) in a.api_keys.iter().enumerate() {
                if apikey::from_hex(h).is_none() {
                    out.push((
                        format!("agent[{i}].api_keys[{k}]"),
                        "must be a SHA-256 in hex (`dome hash-key KEY` prints it), never the key itself".into(),
                    ));
                }
            }
            if let Some(r) = &a.budget {
                rate(format!("agent[{i}].budget"), r, out);
            }
            for (tool, r) in &a.tool_budgets {
                rate(format!("agent[{i}].tool_budgets.{tool}"), r, out);
            }
        }
        if let Some(a) = &self.admin
            && apikey::from_hex(&a.token_sha256).is_none()
        {
            out.push((
                "admin.token_sha256".into(),
                "must be a SHA-256 in hex (`dome hash-key TOKEN` prints it)".into(),
            ));
        }
        if hyper::header::HeaderName::from_bytes(self.assertion.header.as_bytes()).is_err() {
            out.push((
                "assertion.header".into(),
                "must be a valid header name".into(),
            ));
        }
        let esc = &self.escalation;
        if esc.max_strikes == 0 || esc.window_s == 0 || esc.block_s == 0 {
            out.push((
                "escalation".into(),
                "max_strikes, window_s and block_s must be at least 1".into(),
            ));
        }
        if self.assertion.ttl_s == 0 {
            out.push(("assertion.ttl_s".into(), "must be at least 1".into()));
        }
    }

    /// Every semantic problem, as (field path, reason).
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.identity_problems(&mut out);
        self.xdp_problems(&mut out);
        self.server_problems(&mut out);
        self.mcp_problems(&mut out);
        self.upstream_problems(&mut out);
        if self.stats.listen == self.server.listen {
            out.push((
                "stats.listen".into(),
                format!("must differ from server.listen ({})", self.server.listen),
            ));
        }
        out
    }

    /// `[xdp]`: the interface, the budgets, the ports.
    fn xdp_problems(&self, out: &mut Vec<(String, String)>) {
        let x = &self.xdp;
        if x.interface.is_empty() || x.interface.len() > 15 || x.interface.contains('/') {
            out.push((
                "xdp.interface".into(),
                "must be an interface name of 1 to 15 characters".into(),
            ));
        }
        if let Err((field, why)) = x.default_budget.validate() {
            out.push((format!("xdp.default_budget.{field}"), why));
        }
        for (field, why) in x.preauth_budget.problems() {
            out.push((format!("xdp.preauth_budget.{field}"), why));
        }
        if let Some(p) = &x.tcp_ports
            && p.contains(&0)
        {
            out.push((
                "xdp.tcp_ports".into(),
                "port 0 is not a listener port".into(),
            ));
        }
        if x.udp_ports.contains(&0) {
            out.push((
                "xdp.udp_ports".into(),
                "port 0 is not a listener port".into(),
            ));
        }
    }

    /// `[tls]` and `[server]`'s limits.
    fn server_problems(&self, out: &mut Vec<(String, String)>) {
        if let Some(tls) = &self.tls
            && let Err(e) = crate::net::check_tls(tls)
        {
            out.push(("tls".into(), crate::error_chain(&e)));
        }
        for (field, n) in [
            ("server.max_connections", self.server.max_connections),
            (
                "server.max_connections_per_ip",
                self.server.max_connections_per_ip,
            ),
            (
                "server.max_connections_per_prefix",
                self.server.max_connections_per_prefix,
            ),
            (
                "server.max_connections_per_agent",
                self.server.max_connections_per_agent,
            ),
        ] {
            if n == 0 {
                out.push((field.into(), "must be at least 1".into()));
            }
        }
        if self.server.max_header_bytes < 1024 {
            out.push((
                "server.max_header_bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        if self.server.header_timeout_ms == 0 || self.server.body_timeout_ms == 0 {
            out.push((
                "server.header_timeout_ms".into(),
                "timeouts must be at least 1 ms".into(),
            ));
        }
    }

    /// `[mcp]`.
    fn mcp_problems(&self, out: &mut Vec<(String, String)>) {
        if !self.mcp.path.starts_with('/') {
            out.push(("mcp.path".into(), "must start with `/`".into()));
        }
        if self.mcp.page_size == 0 {
            out.push(("mcp.page_size".into(), "must be at least 1".into()));
        }
        if !(1..=crate::gateway::MAX_JSON_DEPTH_LIMIT).contains(&self.mcp.max_json_depth) {
            out.push((
                "mcp.max_json_depth".into(),
                format!(
                    "must be between 1 and {}",
                    crate::gateway::MAX_JSON_DEPTH_LIMIT
                ),
            ));
        }
        if self.mcp.max_intent_bytes == 0 {
            out.push(("mcp.max_intent_bytes".into(), "must be at least 1".into()));
        }
        if self.mcp.session_idle_s == 0 {
            out.push(("mcp.session_idle_s".into(), "must be at least 1".into()));
        }
        if self.mcp.max_buffered_response_bytes == 0 {
            out.push((
                "mcp.max_buffered_response_bytes".into(),
                "must be at least 1".into(),
            ));
        }
        if self.mcp.max_streams_per_agent == 0 {
            out.push((
                "mcp.max_streams_per_agent".into(),
                "must be at least 1".into(),
            ));
        }
        if self.mcp.max_sessions_per_agent == 0 {
            out.push((
                "mcp.max_sessions_per_agent".into(),
                "must be at least 1".into(),
            ));
        }
    }

    /// Each `[[upstream]]`: its name (unique), URL and limits.
    fn upstream_problems(&self, out: &mut Vec<(String, String)>) {
        let mut seen = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = |f: &str| format!("upstream[{i}].{f}");
            if u.name.is_empty()
                || u.name.len() > 64
                || !u
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                out.push((
                    at("name"),
                    "must be 1 to 64 characters of [A-Za-z0-9_-]".into(),
                ));
            }
            if !seen.insert(u.name.as_str()) {
                out.push((
                    at("name"),
                    format!("`{}` is used by an earlier upstream", u.name),
                ));
            }
            if let Err(e) = crate::upstream::Upstream::new(u.clone()) {
                out.push((at("url"), crate::error_chain(&e)));
            }
            if u.timeout_ms == 0 {
                out.push((at("timeout_ms"), "must be at least 1".into()));
            }
            if u.max_response_bytes < 1024 {
                out.push((at("max_response_bytes"), "must be at least 1024".into()));
            }
            if u.stream_idle_timeout_ms == Some(0) {
                out.push((at("stream_idle_timeout_ms"), "must be at least 1".into()));
            }
            // An answer the whole budget cannot hold would never pass.
            if u.max_response_bytes > self.mcp.max_buffered_response_bytes {
                out.push((
                    at("max_response_bytes"),
                    format!(
                        "is more than [mcp] max_buffered_response_bytes ({}), which every answer \
                         held at once must fit in",
                        self.mcp.max_buffered_response_bytes
                    ),
                ));
            }
            if u.max_requests_per_agent == Some(0) {
                out.push((at("max_requests_per_agent"), "must be at least 1".into()));
            }
        }
    }
}

/// A configuration error: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field (`xdp.default_budget.burst_bytes`), or
    /// empty when the file is not valid TOML at all.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "field `{}`: ", self.field)?;
        }
        write!(f, "{}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        reason: format!("cannot read the file: {e}"),
    })?;
    parse(&text, path)
}

/// Parses and validates configuration text; `file` names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let at = |offset: usize, field: String, reason: String| {
        let (line, column) = line_col(text, offset);
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            field,
            reason,
        }
    };
    // Parsed once: the document gives the fields' places and is then
    // deserialized (`toml::from_str` would parse the text a second time).
    let doc = toml_edit::ImDocument::parse(text.to_string()).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let mut reason = e.message().trim().to_string();
        // toml_edit says nothing of some characters (a control character
        // in a comment): name it rather than give an empty reason.
        if reason.is_empty() {
            reason = match text.get(offset..).and_then(|t| t.chars().next()) {
                Some(c) => format!("unexpected character {c:?}"),
                None => "unexpected end of the file".into(),
            };
        }
        at(offset, String::new(), reason)
    })?;
    let fields = field_spans(&doc);

    let config: Config = toml_edit::de::from_document(doc).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let field = innermost(&fields, &span).unwrap_or_default();
        at(span.start, field, e.message().trim().to_string())
    })?;

    if let Some((field, reason)) = config.problems().into_iter().next() {
        let offset = locate(&fields, &field);
        return Err(at(offset, field, reason));
    }
    Ok(config)
}

// The TOML diagnostics (line and column, the field a span falls in) are
// shared with the policy compiler, in `dome_core::diag`.
pub(crate) use dome_core::diag::{field_spans, innermost, line_col, locate};

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text, Path::new("dome.toml")).unwrap_err()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.xdp.interface, "lo");
        assert_eq!(c.program_settings().tcp_ports, vec![8080]);
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/dome.toml");
        let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.xdp.enabled);
    }

    #[test]
    fn a_control_character_in_a_comment_is_named_not_left_unexplained() {
        // Found by `cargo xtask fuzz config`: toml_edit's message is empty.
        let e = err("[server]\n# an admin \x1foken\n");
        assert_eq!((e.line, e.column), (2, 12));
        assert_eq!(e.reason, "unexpected character '\\u{1f}'");
    }

    #[test]
    fn syntax_error_names_line() {
        let e = err("[xdp]\ninterface = \"eth0\"\nmode = \n");
        assert_eq!((e.line, e.field.as_str()), (3, ""));
        assert!(e.to_string().starts_with("dome.toml:3:"), "{e}");
    }

    #[test]
    fn unknown_key_names_line_and_field() {
        let e = err("[xdp]\ninterface = \"eth0\"\nintrface = \"eth1\"\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("intrface"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = err(
            "[xdp]\n\n[xdp.default_budget]\npackets_per_sec = \"fast\"\nburst_packets = 1\nbytes_per_sec = 0\nburst_bytes = 0\n",
        );
        assert_eq!(e.line, 4, "{e}");
        assert_eq!(e.field, "xdp.default_budget.packets_per_sec", "{e}");
    }

    #[test]
    fn bad_mode_names_the_field() {
        let e = err("[xdp]\nmode = \"turbo\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "xdp.mode"), "{e}");
    }

    #[test]
    fn semantic_error_names_line_and_field() {
        let e = err(
            "[xdp]\n[xdp.preauth_budget]\npackets_per_sec = 10\nburst_packets = 0\nbytes_per_sec = 0\nburst_bytes = 0\n",
        );
        assert_eq!(e.field, "xdp.preauth_budget.burst_packets");
        assert_eq!(e.line, 4, "{e}");
        let e = err(
            "[xdp.preauth_budget]\npackets_per_sec = 10\nburst_packets = 5\nbytes_per_sec = 0\nburst_bytes = 0\n[xdp.preauth_budget.prefix]\npackets_per_sec = 0\nburst_packets = 0\nbytes_per_sec = 100\nburst_bytes = 10\n",
        );
        assert_eq!(e.field, "xdp.preauth_budget.prefix.burst_bytes");
        assert_eq!(e.line, 10, "{e}");
        let e = err("[server]\nlisten = \"127.0.0.1:1\"\n[stats]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!((e.field.as_str(), e.line), ("stats.listen", 4));
        let e = err("[mcp]\npage_size = 5\nsession_idle_s = 0\n");
        assert_eq!((e.field.as_str(), e.line), ("mcp.session_idle_s", 3));
        let e = err("[mcp]\nmax_sessions_per_agent = 0\n");
        assert_eq!(
            (e.field.as_str(), e.line),
            ("mcp.max_sessions_per_agent", 2)
        );
    }

    #[test]
    fn two_tenants_with_one_issuer_are_refused_naming_the_second() {
        let e = err(
            "[[tenant]]\nname = \"a\"\n[tenant.jwt]\nissuer = \"https://idp\"\njwks_url = \"https://idp/k\"\n\
             [[tenant]]\nname = \"b\"\n[tenant.jwt]\nissuer = \"https://idp\"\njwks_url = \"https://idp/k\"\n",
        );
        assert_eq!(
            (e.field.as_str(), e.line),
            ("tenant[1].jwt.issuer", 9),
            "{e}"
        );
        assert!(e.reason.contains("tenant `a`"), "{e}");
    }

    #[test]
    fn resource_limits_of_zero_are_refused_naming_the_key() {
        for (text, field) in [
            (
                "[server]\nmax_connections_per_agent = 0\n",
                "server.max_connections_per_agent",
            ),
            (
                "[mcp]\nmax_streams_per_agent = 0\n",
                "mcp.max_streams_per_agent",
            ),
            (
                "[mcp]\nmax_buffered_response_bytes = 0\n",
                "mcp.max_buffered_response_bytes",
            ),
            (
                "[[upstream]]\nmax_requests_per_agent = 0\nname = \"u\"\nurl = \"http://127.0.0.1:1/mcp\"\n",
                "upstream[0].max_requests_per_agent",
            ),
            (
                "[[upstream]]\nstream_idle_timeout_ms = 0\nname = \"u\"\nurl = \"http://127.0.0.1:1/mcp\"\n",
                "upstream[0].stream_idle_timeout_ms",
            ),
        ] {
            let e = err(text);
            assert_eq!((e.field.as_str(), e.line), (field, 2), "{e}");
        }
    }

    #[test]
    fn an_upstream_answer_larger_than_the_whole_buffer_budget_is_refused() {
        let e = err("[mcp]\nmax_buffered_response_bytes = 100000\n\
             [[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/mcp\"\nmax_response_bytes = 200000\n");
        assert_eq!(
            (e.field.as_str(), e.line),
            ("upstream[0].max_response_bytes", 6),
            "{e}"
        );
        assert!(e.reason.contains("max_buffered_response_bytes"), "{e}");
    }

    #[test]
    fn missing_file_is_reported() {
        let e = load(Path::new("/nonexistent/dome.toml")).unwrap_err();
        assert!(e.reason.contains("cannot read"), "{e}");
    }
}
