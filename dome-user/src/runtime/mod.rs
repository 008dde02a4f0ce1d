//! `dome run`: wires configuration, the kernel tier and the listeners;
//! reloads the configuration on SIGHUP and when the file changes; shuts down
//! cleanly on SIGINT/SIGTERM.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

mod reload;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{self, Config},
    gateway::{Authority, Gateway, SessionTable},
    identity::{assertion::Signer, escalation::Escalation},
    kernel::{self, EventStats, KernelTier, XdpStatus},
    ops::{
        metrics::Metrics,
        stats::{self, StatsState},
    },
    store::registry::Registry,
    upstream::Upstream,
};

/// Starts the kernel tier as configured. Never fails: without XDP, Dome runs
/// with user-space enforcement only and says so.
pub fn start_kernel_tier(config: &Config) -> (Option<Arc<KernelTier>>, XdpStatus) {
    if !config.xdp.enabled {
        tracing::warn!("XDP is disabled in the config: user-space enforcement only");
        return (None, XdpStatus::Disabled);
    }
    let unavailable = |reason: String| {
        tracing::warn!(%reason, "XDP unavailable: running with user-space enforcement only");
        (None, XdpStatus::Unavailable { reason })
    };
    let tier = match KernelTier::load(&config.program_settings()) {
        Ok(t) => t,
        Err(e) => return unavailable(e.to_string()),
    };
    match tier.attach(&config.xdp.interface, config.xdp.mode) {
        Ok(mode) => {
            tracing::info!(interface = %config.xdp.interface, ?mode, "XDP attached");
            let status = XdpStatus::Attached {
                interface: config.xdp.interface.clone(),
                mode,
            };
            (Some(tier), status)
        }
        Err(e) => unavailable(e.to_string()),
    }
}

pub use reload::{ConfigStatus, ReloadOutcome, content_version};
use reload::{Live, authority_for, beside, unix_now, upstreams_for};

/// How often the config file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The config file, read and parsed, and the version of its text.
fn read_config(config_path: &Path) -> anyhow::Result<(Config, String)> {
    let text = std::fs::read_to_string(config_path).map_err(|e| config::ConfigError {
        file: config_path.to_path_buf(),
        line: 0,
        column: 0,
        field: String::new(),
        reason: format!("cannot read the file: {e}"),
    })?;
    let config = config::parse(&text, config_path)?;
    let version = content_version(&text);
    tracing::info!(config = %config_path.display(), %version, "configuration loaded");
    Ok((config, version))
}

/// The kernel tier as `run` starts it.
struct Kernel {
    /// The XDP program, when it loaded: its counters, settings and detach.
    tier: Option<Arc<KernelTier>>,
    /// What the gateway and escalation enforce through: the XDP program,
    /// or the enforcer handed to [`run_with_enforcer`].
    enforcer: Option<Arc<dyn kernel::Enforcer>>,
    status: XdpStatus,
    events: Arc<EventStats>,
    /// Its event reader and the sweeper of expired blocks.
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// The kernel tier, started as configured, with its event reader and the
/// sweeper of expired blocks.
fn start_kernel(config: &Config) -> anyhow::Result<Kernel> {
    let (tier, status) = start_kernel_tier(config);
    let events = Arc::new(EventStats::default());
    let mut background = Vec::new();
    if let Some(t) = &tier {
        if let Some(ring) = t.take_events() {
            background.push(
                kernel::spawn_event_reader(ring, events.clone(), None)
                    .context("reading the XDP event ring")?,
            );
        }
        let sweeper = t.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = sweeper.sweep_expired() {
                    tracing::warn!(error = %e, "sweeping expired XDP blocks failed");
                }
            }
        }));
    }
    Ok(Kernel {
        enforcer: tier.clone().map(|t| t as Arc<dyn kernel::Enforcer>),
        tier,
        status,
        events,
        background,
    })
}

/// The audit trail, opened and signed with the node's checkpoint key:
/// (the trail, the key's public half, the trail's folder).
fn open_audit(
    config: &Config,
    config_path: &Path,
) -> anyhow::Result<(Arc<crate::audit::Trail>, [u8; 32], PathBuf)> {
    let audit_dir = audit_dir(config, config_path);
    let key_path = audit_key_path(config, config_path);
    let (audit_key, made) = crate::audit::checkpoint::NodeKey::load_or_create(&key_path)
        .context("loading the audit checkpoint key")?;
    tracing::info!(
        key = %key_path.display(),
        public_key = %audit_key.public_hex(),
        fingerprint = %audit_key.fingerprint(),
        created = made,
        "audit checkpoints are signed with this key (pin its public key with `dome audit verify --pubkey`)"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(&key_path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(key = %key_path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777), "the audit checkpoint key is readable by others: whoever reads it can sign a rewritten trail (chmod 600)");
        }
    }
    let audit_public = audit_key.public();
    let audit = crate::audit::Trail::open_signed(
        &audit_dir,
        config.audit.ring,
        config.audit.node_name(),
        config.audit.settings(),
        Some(Arc::new(audit_key)),
    )
    .with_context(|| format!("opening the audit trail in {}", audit_dir.display()))?;
    tracing::info!(dir = %audit_dir.display(), fsync = ?config.audit.fsync, head = audit.head().0, "audit trail open");
    Ok((audit, audit_public, audit_dir))
}

/// The admin listener, when `[admin]` asks for one.
async fn serve_admin(
    config: &Config,
    config_path: &Path,
    authority: &Authority,
    audit_dir: &Path,
    audit_public: [u8; 32],
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(admin) = &config.admin else {
        return Ok(None);
    };
    let state = Arc::new(crate::ops::admin::AdminState {
        registry: authority.registry.clone(),
        token_sha256: crate::identity::apikey::from_hex(&admin.token_sha256)
            .context("admin.token_sha256")?,
        escalation: Some(authority.escalation.clone()),
        policy_store: authority.policy_store.clone(),
        policy_dir: beside(config_path, &config.policy.dir),
        audit_dir: audit_dir.to_path_buf(),
        audit_key: Some(audit_public),
        audit_checkpoint_records: config.audit.checkpoint_records.max(1),
    });
    let (admin_addr, admin_task) = crate::ops::admin::serve(admin.listen, state)
        .await
        .with_context(|| format!("binding the admin listener on {}", admin.listen))?;
    tracing::info!(%admin_addr, "admin listener ready: /agents, /blocks");
    Ok(Some(admin_task))
}

/// Serves until SIGINT or SIGTERM: reloads on SIGHUP and on a change of
/// the config file, sweeps expired sessions, and refreshes identity
/// providers' keys on their schedule.
async fn until_signalled(live: &Live) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    // Identity providers' key sets behind URLs, on their refresh schedule.
    let mut keys_tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = keys_tick.tick() => {
                let authority = live.authority.lock().expect("authority lock").clone();
                for p in authority.jwt.by_issuer.values() {
                    let p = p.clone();
                    tokio::spawn(async move {
                        let gap = p.config.refresh_s;
                        crate::store::jwks::refresh(&p, crate::clock::unix_s(), gap).await
                    });
                }
            }
            _ = hup.recv() => live.reload("SIGHUP").await,
            _ = watch.tick() => {
                live.reload("file change").await;
                live.gateway.load_full().sweep_expired();
            }
            _ = term.recv() => { tracing::info!("SIGTERM: draining, then shutting down"); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT: draining, then shutting down"); return Ok(()) }
        }
    }
}

/// Drains (readiness turns false, streams that never end close, the
/// listener stops and open requests finish within the grace period), then
/// stops the background tasks, the upstreams, the kernel tier and the
/// audit trail, in that order.
async fn shut_down(
    live: &Live,
    stop: crate::net::Stop,
    draining: &std::sync::atomic::AtomicBool,
    background: Vec<tokio::task::JoinHandle<()>>,
    tier: Option<Arc<KernelTier>>,
    audit: &crate::audit::Trail,
) {
    draining.store(true, std::sync::atomic::Ordering::Release);
    live.sessions.close_streams();
    let grace_ms = live
        .config
        .lock()
        .expect("config lock")
        .server
        .shutdown_grace_ms;
    let left = stop.drain(Duration::from_millis(grace_ms)).await;
    if left == 0 {
        tracing::info!("every connection finished");
    } else {
        tracing::warn!(
            open = left,
            grace_ms,
            "connections still open at the end of the grace period"
        );
    }
    for task in background {
        task.abort();
    }
    for u in live.gateway.load().upstreams() {
        u.close().await;
    }
    if let Some(t) = tier {
        t.detach();
        tracing::info!("XDP detached");
    }
    // Whatever is still in the ring goes to disk before Dome exits.
    audit.close();
    tracing::info!(head = audit.head().0, "audit trail closed");
}

/// Who may call and how Dome vouches for them: the agent registry, the
/// assertion signer, and escalation with the kernel tier it blocks in.
fn open_identity(
    config: &Config,
    config_path: &Path,
    enforcer: Option<Arc<dyn kernel::Enforcer>>,
) -> anyhow::Result<(Arc<Registry>, Arc<Signer>, Arc<Escalation>)> {
    let registry = Arc::new(
        Registry::open(
            &beside(config_path, &config.auth.data_dir),
            config.tenants.clone(),
            config.agents.clone(),
            config.auth.agent_budget,
            crate::clock::unix_s(),
        )
        .context("opening the agent registry")?,
    );
    let key_paths: Vec<PathBuf> = config
        .assertion
        .keys
        .iter()
        .map(|k| beside(config_path, k))
        .collect();
    let signer = Arc::new(
        Signer::new(&key_paths, &config.assertion.header, config.assertion.ttl_s)
            .context("loading the assertion keys")?,
    );
    if key_paths.is_empty() {
        tracing::warn!(
            "[assertion] names no keys: assertions are signed with an ephemeral key that changes at every start"
        );
    }
    if !config.auth.required {
        tracing::warn!(
            "[auth] required = false: callers without a credential are served anonymously"
        );
    }
    let escalation = Arc::new(Escalation::new(config.escalation.clone(), enforcer));
    Ok((registry, signer, escalation))
}

/// The MCP listener, each request handled by the gateway current when it
/// arrived: (its stop handle, the certificates it reloads).
fn serve_mcp(
    config: &Config,
    workers: usize,
    live_gw: &Arc<ArcSwap<Gateway>>,
) -> anyhow::Result<(crate::net::Stop, Option<Arc<crate::net::Certificates>>)> {
    let (tls, certificates) = match &config.tls {
        Some(t) => {
            let (acceptor, certs) = crate::net::tls_acceptor(t)?;
            (Some(acceptor), Some(certs))
        }
        None => (None, None),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let handler_gw = live_gw.clone();
    let (mcp_addr, stop) = crate::net::serve(
        config.server.listen,
        tls,
        config.server.limits(),
        workers,
        move |req, conn| {
            // Each request finishes on the gateway current when it arrived.
            let gw = handler_gw.load_full();
            // Boxed once here, so hyper's layers move a pointer rather
            // than the whole request future.
            Box::pin(gw.handle(req, conn))
        },
    )
    .with_context(|| format!("binding the MCP listener on {}", config.server.listen))?;
    tracing::info!(url = %format!("{scheme}://{mcp_addr}{}", config.mcp.path), workers, "MCP listener ready");
    Ok((stop, certificates))
}

/// The stats listener: `/stats`, `/metrics`, `/healthz`, `/readyz`.
async fn serve_stats(
    config: &Config,
    state: Arc<StatsState>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (stats_addr, stats_task) = stats::serve(config.stats.listen, state)
        .await
        .with_context(|| format!("binding the stats listener on {}", config.stats.listen))?;
    tracing::info!(%stats_addr, "stats listener ready: GET /stats, GET /metrics");
    Ok(stats_task)
}

/// Runs Dome until SIGINT or SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let (config, version) = read_config(config_path)?;
    let kernel = start_kernel(&config)?;
    serve(config_path, config, version, kernel).await
}

/// Runs Dome as [`run`] does, with `enforcer` as its kernel tier in place
/// of the XDP program (whatever `[xdp] enabled` says; its budgets apply):
/// the gateway binds connections' flows and sets agents' budgets in it,
/// escalation blocks agents in it. No packet is metered (`/stats` says XDP
/// is unavailable). For Dome run where XDP cannot load, such as tests
/// without root with a [`kernel::MemoryEnforcer`].
pub async fn run_with_enforcer(
    config_path: &Path,
    enforcer: Arc<dyn kernel::Enforcer>,
) -> anyhow::Result<()> {
    let (config, version) = read_config(config_path)?;
    let kernel = Kernel {
        tier: None,
        enforcer: Some(enforcer),
        status: XdpStatus::Unavailable {
            reason: "run with an enforcer in place of the XDP program".into(),
        },
        events: Arc::new(EventStats::default()),
        background: Vec::new(),
    };
    serve(config_path, config, version, kernel).await
}

/// Serves `config` (read from `config_path`, at `version`) over `kernel`
/// until SIGINT or SIGTERM, then shuts down.
async fn serve(
    config_path: &Path,
    config: Config,
    version: String,
    kernel: Kernel,
) -> anyhow::Result<()> {
    let Kernel {
        tier,
        enforcer,
        status,
        events,
        mut background,
    } = kernel;
    // Before any upstream client exists: each keeps one pool per lane.
    let workers = crate::net::workers::configure(config.server.workers);
    let upstreams = upstreams_for(&config.upstreams, &[])?;
    let metrics = Metrics::new();
    let sessions = SessionTable::new();
    let (registry, signer, escalation) = open_identity(&config, config_path, enforcer.clone())?;
    let (audit, audit_public, audit_dir) = open_audit(&config, config_path)?;
    let authority = authority_for(
        &config,
        config_path,
        &Authority {
            shadow: None,
            policy_store: Arc::new(crate::store::policy::PolicyStore::open(&beside(
                config_path,
                &config.auth.data_dir,
            ))?),
            policy: Default::default(),
            jwt: Default::default(),
            registry: registry.clone(),
            signer,
            required: false,
            resource: String::new(),
            escalation: escalation.clone(),
            enforcer,
            kernel_budget: config.xdp.default_budget,
            audit: audit.clone(),
            rule_budgets: Default::default(),
        },
    )
    .context("loading the policy and the identity providers' keys")?;
    if let Some(task) =
        serve_admin(&config, config_path, &authority, &audit_dir, audit_public).await?
    {
        background.push(task);
    }
    let gw = Gateway::new(
        config.mcp.clone(),
        upstreams,
        metrics.clone(),
        sessions.clone(),
        Duration::from_millis(config.server.body_timeout_ms),
        authority.clone(),
    );
    let counts = gw.refresh_all().await;
    tracing::info!(
        upstreams = gw.upstreams().len(),
        tools = counts[0],
        prompts = counts[1],
        resources = counts[2],
        templates = counts[3],
        "federated catalogs ready"
    );
    let live_gw = Arc::new(ArcSwap::new(gw));
    let (stop, certificates) = serve_mcp(&config, workers, &live_gw)?;

    let config_status = Arc::new(Mutex::new(ConfigStatus {
        policy_version: authority.policy.version.clone(),
        policy_rules: authority.policy.rule_count(),
        file: config_path.to_path_buf(),
        version: version.clone(),
        loaded_unix_s: unix_now(),
        reloads: 0,
        last_reload: None,
    }));
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = Arc::new(StatsState {
        started: Instant::now(),
        draining: draining.clone(),
        metrics: metrics.clone(),
        xdp_status: status,
        tier: tier.clone(),
        events,
        config: config_status.clone(),
        gateway: sessions.clone(),
        registry: registry.clone(),
        escalation: escalation.clone(),
        audit: audit.clone(),
    });
    background.push(serve_stats(&config, state).await?);

    let policy_seen = reload::policy_version(&config, config_path);
    let live = Arc::new(Live {
        path: config_path.to_path_buf(),
        config: Mutex::new(config),
        seen: Mutex::new(version),
        seen_policy: Mutex::new(policy_seen),
        gateway: live_gw.clone(),
        sessions,
        metrics,
        tier: tier.clone(),
        status: config_status,
        authority: Mutex::new(authority),
        certificates,
    });
    until_signalled(&live).await?;
    shut_down(&live, stop, &draining, background, tier, &audit).await;
    Ok(())
}

/// The audit checkpoint key: `[audit] key`, else `audit.key` under
/// `[auth] data_dir` (outside the audit folder; see `audit::checkpoint`).
pub fn audit_key_path(config: &Config, config_path: &Path) -> PathBuf {
    match &config.audit.key {
        Some(k) => beside(config_path, k),
        None => beside(config_path, &config.auth.data_dir).join("audit.key"),
    }
}

/// The audit folder: `[audit] dir`, else `audit` under `[auth] data_dir`
/// (both relative to the config file).
pub fn audit_dir(config: &Config, config_path: &Path) -> PathBuf {
    match &config.audit.dir {
        Some(d) => beside(config_path, d),
        None => beside(config_path, &config.auth.data_dir).join("audit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_stable_and_content_bound() {
        assert_eq!(content_version(""), "cbf29ce484222325");
        assert_ne!(content_version("a"), content_version("b"));
        assert_eq!(content_version("same"), content_version("same"));
    }
}
