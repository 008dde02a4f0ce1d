//! Live reload: the config file (and policy files) read again on a change
//! or SIGHUP; what applies live is applied, with a new gateway that
//! requests in flight do not see, and what needs a restart is kept as it
//! was and named on `/stats`.

use super::*;

pub use crate::ops::stats::{ConfigStatus, ReloadOutcome};

/// FNV-1a over the file's bytes: a stable, short version id.
pub fn content_version(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Resolves `p` against the config file's folder.
pub(super) fn beside(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Why a configuration's authority (see [`Authority`]) does not load: its providers'
/// keys, its policy (active or shadow), or the record of the activation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthorityError {
    #[error(transparent)]
    Providers(#[from] crate::store::jwks::JwksError),
    #[error(transparent)]
    Policy(#[from] crate::policy::LoadError),
    #[error(transparent)]
    PolicyStore(#[from] crate::store::policy::PolicyStoreError),
    #[error("shadow policy")]
    Shadow(#[source] crate::policy::LoadError),
}

/// The authority of `config` over an existing registry and signer.
pub(super) fn authority_for(
    config: &Config,
    config_path: &Path,
    current: &Authority,
) -> Result<Arc<Authority>, AuthorityError> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let resource = config
        .auth
        .resource
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}{}", config.server.listen, config.mcp.path));
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let jwt = crate::store::jwks::providers(&config.tenants, &resource, dir)?;
    let policy_dir = beside(config_path, &config.policy.dir);
    let (policy, sources) = crate::policy::load_with_sources(&policy_dir)?;
    if policy.rule_count() == 0 {
        tracing::warn!(dir = %policy_dir.display(), "no policy rules: every tool call is denied");
    }
    let activation = crate::store::policy::Activation {
        version: policy.version.clone(),
        activated_unix_s: crate::clock::unix_s(),
        message: policy.message.clone(),
        rules: policy.rule_count(),
        sources,
    };
    if current.policy_store.record(&activation)? {
        tracing::info!(version = %policy.version, rules = policy.rule_count(), message = %policy.message, "policy activated");
    }
    for (issuer, p) in &jwt.by_issuer {
        // An unchanged URL provider keeps the keys it has; a new one fetches.
        match current.jwt.by_issuer.get(issuer) {
            Some(old)
                if old.config.jwks_url.is_some() && old.config.jwks_url == p.config.jwks_url =>
            {
                p.set_keys(old.keys.load_full());
                p.fetched_unix_s.store(
                    old.fetched_unix_s
                        .load(std::sync::atomic::Ordering::Relaxed),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            _ if p.config.jwks_url.is_some() => {
                let p = p.clone();
                tokio::spawn(async move {
                    crate::store::jwks::refresh(&p, crate::clock::unix_s(), 0).await
                });
            }
            _ => {}
        }
    }
    let shadow = match &config.policy.shadow_dir {
        Some(d) => {
            let p = crate::policy::load(&beside(config_path, d)).map_err(AuthorityError::Shadow)?;
            tracing::info!(version = %p.version, rules = p.rule_count(), "shadow policy judging beside the active one");
            Some(Arc::new(p))
        }
        None => None,
    };
    Ok(Arc::new(Authority {
        shadow,
        policy_store: current.policy_store.clone(),
        policy: Arc::new(policy),
        jwt: Arc::new(jwt),
        registry: current.registry.clone(),
        signer: current.signer.clone(),
        escalation: current.escalation.clone(),
        enforcer: current.enforcer.clone(),
        kernel_budget: config.xdp.default_budget,
        required: config.auth.required,
        resource,
        rule_budgets: current.rule_budgets.clone(),
        audit: {
            // Durability, limits and retention apply live.
            current
                .audit
                .settings
                .store(Arc::new(config.audit.settings()));
            current.audit.clone()
        },
    }))
}

/// Everything a reload swaps or updates.
pub(super) struct Live {
    pub(super) path: PathBuf,
    pub(super) config: Mutex<Config>,
    /// Hash of the file text last looked at (valid or not), so a broken file
    /// is reported once, not every poll.
    pub(super) seen: Mutex<String>,
    /// Version of the policy files last looked at.
    pub(super) seen_policy: Mutex<String>,
    pub(super) gateway: Arc<ArcSwap<Gateway>>,
    pub(super) sessions: Arc<SessionTable>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) tier: Option<Arc<KernelTier>>,
    pub(super) status: Arc<Mutex<ConfigStatus>>,
    pub(super) authority: Mutex<Arc<Authority>>,
    /// The MCP listener's certificate, when it serves TLS.
    pub(super) certificates: Option<Arc<crate::net::Certificates>>,
}

/// Builds upstream clients for `configs`, reusing `current` ones whose
/// settings did not change (their pooled connections and sessions stay).
pub(super) fn upstreams_for(
    configs: &[crate::upstream::UpstreamConfig],
    current: &[Arc<Upstream>],
) -> Result<Vec<Arc<Upstream>>, crate::upstream::UrlError> {
    configs
        .iter()
        .map(|c| match current.iter().find(|u| u.config == *c) {
            Some(u) => Ok(u.clone()),
            None => Upstream::new(c.clone()).map(Arc::new),
        })
        .collect()
}

impl Live {
    /// Loads the listener's certificate again when its files changed (a
    /// renewal) or the config names others. A renewal that does not load
    /// is reported with the file, and the certificate in use stays.
    fn refresh_certificates(&self) {
        let Some(certs) = &self.certificates else {
            return;
        };
        let Some(tls) = self.config.lock().expect("config lock").tls.clone() else {
            return;
        };
        match certs.refresh(&tls) {
            Ok(true) => tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(
                error = %crate::error_chain(&e),
                "the TLS certificate files changed but do not load; the previous certificate stays in use"
            ),
        }
    }

    /// Reads the file again; applies it when it is valid and different.
    pub(super) async fn reload(&self, why: &str) {
        // Certificate files are watched like the config file.
        self.refresh_certificates();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                self.refuse(format!(
                    "{}: cannot read the file: {e}",
                    self.path.display()
                ));
                return;
            }
        };
        let Some(version) = self.changed(why, &text) else {
            return;
        };
        let new = match config::parse(&text, &self.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "configuration refused; the running configuration stays");
                self.refuse(e.to_string());
                return;
            }
        };
        let old = self.config.lock().expect("config lock").clone();
        let (applied, needs_restart) = live_part(&old, &new);
        for field in &needs_restart {
            tracing::warn!(
                field,
                "changed in the file; takes effect at the next restart"
            );
        }
        match self.apply(&applied).await {
            Ok(counts) => {
                *self.config.lock().expect("config lock") = applied;
                self.note_reloaded(&version, needs_restart);
                tracing::info!(%version, why, tools = counts[0], prompts = counts[1], resources = counts[2], "configuration reloaded");
            }
            Err(e) => self.refuse(e),
        }
    }

    /// The file's version when it is to be applied: always on a signal, on
    /// a file change only when it or the policy files differ from what was
    /// last seen.
    fn changed(&self, why: &str, text: &str) -> Option<String> {
        let version = content_version(text);
        // Policy files count as part of the configuration.
        let policy_version = policy_version(&self.config.lock().expect("config lock"), &self.path);
        let policy_changed = *self.seen_policy.lock().expect("seen lock") != policy_version;
        {
            let mut seen = self.seen.lock().expect("seen lock");
            if why == "file change" && *seen == version && !policy_changed {
                return None;
            }
            *seen = version.clone();
            *self.seen_policy.lock().expect("seen lock") = policy_version;
        }
        if self.status.lock().expect("status lock").version == version
            && why == "file change"
            && !policy_changed
        {
            return None;
        }
        Some(version)
    }

    /// Applies the live part of a new configuration: upstreams, the XDP
    /// program's settings, identities and policy, escalation, then a new
    /// gateway (requests in flight keep theirs). Returns the catalogs'
    /// counts.
    async fn apply(&self, applied: &Config) -> Result<[usize; 4], String> {
        let current = self.gateway.load_full();
        let upstreams = upstreams_for(&applied.upstreams, current.upstreams())
            .map_err(|e| crate::error_chain(&e))?;
        if let Some(t) = &self.tier
            && let Err(e) = t.apply_settings(&applied.program_settings())
        {
            tracing::warn!(error = %e, "updating the XDP program's settings failed");
        }
        let current = self.authority.lock().expect("authority lock").clone();
        let authority = {
            current
                .registry
                .set_config(
                    applied.tenants.clone(),
                    applied.agents.clone(),
                    applied.auth.agent_budget,
                    crate::clock::unix_s(),
                )
                .map_err(|e| e.to_string())?;
            authority_for(applied, &self.path, &current).map_err(|e| crate::error_chain(&e))?
        };
        *self.authority.lock().expect("authority lock") = authority.clone();
        let rebudgeted =
            (authority.kernel_budget != current.kernel_budget).then(|| authority.clone());
        // Escalation's limits apply live: strikes from now on count toward them.
        authority.escalation.set_config(applied.escalation.clone());
        let gw = Gateway::new(
            applied.mcp.clone(),
            upstreams,
            self.metrics.clone(),
            self.sessions.clone(),
            Duration::from_millis(applied.server.body_timeout_ms),
            authority,
        );
        // Names a clash gave stay through a reload.
        gw.inherit_names(&self.gateway.load());
        let counts = gw.refresh_all().await;
        // Requests in flight keep the gateway they started on.
        self.gateway.store(gw);
        // After the store: a connection bound through the old gateway until
        // now set its slot to the old budget.
        if let Some(authority) = rebudgeted {
            // A map write per agent (up to 65,536): off the event loop.
            let _ = tokio::task::spawn_blocking(move || rebudget(&authority)).await;
        }
        Ok(counts)
    }

    /// What `/stats` says of the reload that just applied.
    fn note_reloaded(&self, version: &str, needs_restart: Vec<String>) {
        let authority = self.authority.lock().expect("authority lock").clone();
        let mut st = self.status.lock().expect("status lock");
        st.version = version.to_string();
        st.policy_version = authority.policy.version.clone();
        st.policy_rules = authority.policy.rule_count();
        st.loaded_unix_s = unix_now();
        st.reloads += 1;
        st.last_reload = Some(ReloadOutcome {
            ok: true,
            unix_s: unix_now(),
            error: None,
            needs_restart,
        });
    }

    fn refuse(&self, error: String) {
        let mut st = self.status.lock().expect("status lock");
        st.last_reload = Some(ReloadOutcome {
            ok: false,
            unix_s: unix_now(),
            error: Some(error),
            needs_restart: Vec::new(),
        });
    }
}

/// The version of the policy files `config` names (active and shadow):
/// they count as part of the configuration, so a change to them reloads.
pub(super) fn policy_version(config: &Config, config_path: &Path) -> String {
    let mut sources =
        crate::policy::read_dir(&beside(config_path, &config.policy.dir)).unwrap_or_default();
    if let Some(d) = &config.policy.shadow_dir {
        sources.extend(crate::policy::read_dir(&beside(config_path, d)).unwrap_or_default());
    }
    crate::policy::compile::version(&sources)
}

/// What of `new` applies live, as the running configuration it makes
/// with `old`, and the fields that changed but wait for a restart (their
/// old values are kept).
pub(super) fn live_part(old: &Config, new: &Config) -> (Config, Vec<String>) {
    let mut applied = new.clone();
    let mut needs_restart = Vec::new();
    if new.server.listen != old.server.listen {
        needs_restart.push("server.listen".to_string());
        applied.server.listen = old.server.listen;
    }
    let mut server_rest = new.server.clone();
    server_rest.listen = old.server.listen;
    if server_rest != old.server {
        needs_restart.push("server (limits)".to_string());
        applied.server = old.server.clone();
    }
    // Other certificate files apply live (the next certificate check
    // loads them); TLS on or off changes the listener.
    if new.tls.is_some() != old.tls.is_some() {
        needs_restart.push("tls".to_string());
        applied.tls = old.tls.clone();
    }
    if new.stats.listen != old.stats.listen {
        needs_restart.push("stats.listen".to_string());
        applied.stats.listen = old.stats.listen;
    }
    if (new.xdp.enabled, &new.xdp.interface, new.xdp.mode)
        != (old.xdp.enabled, &old.xdp.interface, old.xdp.mode)
    {
        needs_restart.push("xdp.enabled/interface/mode".to_string());
        applied.xdp.enabled = old.xdp.enabled;
        applied.xdp.interface = old.xdp.interface.clone();
        applied.xdp.mode = old.xdp.mode;
    }
    if new.assertion != old.assertion {
        needs_restart.push("assertion".to_string());
        applied.assertion = old.assertion.clone();
    }
    if new.auth.data_dir != old.auth.data_dir {
        needs_restart.push("auth.data_dir".to_string());
        applied.auth.data_dir = old.auth.data_dir.clone();
    }
    if (
        &new.audit.dir,
        new.audit.ring,
        &new.audit.node,
        &new.audit.key,
    ) != (
        &old.audit.dir,
        old.audit.ring,
        &old.audit.node,
        &old.audit.key,
    ) || new.auth.data_dir != old.auth.data_dir
    {
        needs_restart.push("audit.dir/ring/node/key".to_string());
        applied.audit.dir = old.audit.dir.clone();
        applied.audit.ring = old.audit.ring;
        applied.audit.node = old.audit.node.clone();
        applied.audit.key = old.audit.key.clone();
    }
    if new.policy.dir != old.policy.dir {
        needs_restart.push("policy.dir".to_string());
        applied.policy.dir = old.policy.dir.clone();
    }
    if new.admin != old.admin {
        needs_restart.push("admin".to_string());
        applied.admin = old.admin.clone();
    }
    for field in &needs_restart {
        tracing::warn!(
            field,
            "changed in the file; takes effect at the next restart"
        );
    }
    (applied, needs_restart)
}

/// Sets every agent's slot in the kernel tier to the budget now in force.
/// The gateway sets a slot's budget when it binds a connection, so without
/// this an agent on a connection it keeps open would stay on the old one.
fn rebudget(authority: &Authority) {
    let Some(tier) = &authority.enforcer else {
        return;
    };
    let index = authority.registry.index();
    let mut failed = 0;
    for agent in index.agents.values() {
        if let Err(e) = tier.set_budget(agent.slot, &authority.kernel_budget) {
            if failed == 0 {
                tracing::warn!(agent = %agent.id, error = %e, "setting an agent's kernel budget failed");
            }
            failed += 1;
        }
    }
    if failed > 1 {
        tracing::warn!(failed, "setting agents' kernel budgets failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_a_restart_keeps_its_old_value_and_the_rest_applies() {
        let path = Path::new("/etc/dome/dome.toml");
        let old = config::parse("", path).expect("the defaults parse");
        let new = config::parse(
            "[server]\nlisten = \"127.0.0.1:9999\"\n[mcp]\npage_size = 7\n[admin]\nlisten = \"127.0.0.1:9998\"\ntoken_sha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"\n",
            path,
        )
        .expect("the new file parses");
        let (applied, needs_restart) = live_part(&old, &new);
        assert_eq!(needs_restart, ["server.listen", "admin"]);
        assert_eq!(applied.server.listen, old.server.listen);
        assert_eq!(applied.admin, old.admin);
        assert_eq!(applied.mcp.page_size, 7, "[mcp] applies live");
        let (same, none) = live_part(&old, &old);
        assert!(none.is_empty());
        assert_eq!(same.server, old.server);
    }
}
