//! `dome run`: wires configuration, the kernel tier and the listeners, and
//! shuts down cleanly on SIGINT/SIGTERM.

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{self, Config},
    mcp::{
        gateway::{self, Gateway},
        upstream::Upstream,
    },
    stats::{self, StatsState, metrics::Metrics},
    xdp::{self, EventStats, KernelTier, XdpStatus},
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

/// Runs Dome until SIGINT or SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = config::load(config_path)?;
    tracing::info!(config = %config_path.display(), "configuration loaded");

    let (tier, status) = start_kernel_tier(&config);
    let events = Arc::new(EventStats::default());
    let mut background = Vec::new();
    if let Some(t) = &tier {
        if let Some(ring) = t.take_events() {
            background.push(
                xdp::spawn_event_reader(ring, events.clone(), None)
                    .context("reading the XDP event ring")?,
            );
        }
        let sweeper = t.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = sweeper.sweep_expired() {
                    tracing::warn!(error = %e, "sweeping expired XDP blocks failed");
                }
            }
        }));
    }

    let upstreams = config
        .upstreams
        .iter()
        .map(|u| Upstream::new(u.clone()).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new();
    let gw = Gateway::new(config.mcp.clone(), upstreams, metrics.clone());
    let catalog = gw.refresh_catalog().await;
    tracing::info!(
        upstreams = gw.upstreams().len(),
        tools = catalog.tools.len(),
        "federated tool catalog ready"
    );
    let (mcp_addr, mcp_task) = gateway::serve(config.server.listen, gw.clone())
        .await
        .with_context(|| format!("binding the MCP listener on {}", config.server.listen))?;
    background.push(mcp_task);
    tracing::info!(%mcp_addr, path = %config.mcp.path, "MCP listener ready");

    let state = Arc::new(StatsState {
        started: Instant::now(),
        metrics,
        xdp_status: status,
        tier: tier.clone(),
        events,
    });
    let (stats_addr, stats_task) = stats::serve(config.stats.listen, state)
        .await
        .with_context(|| format!("binding the stats listener on {}", config.stats.listen))?;
    background.push(stats_task);
    tracing::info!(%stats_addr, "stats listener ready: GET /stats");

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    for task in background {
        task.abort();
    }
    for u in gw.upstreams() {
        u.close().await;
    }
    if let Some(t) = tier {
        t.detach();
        tracing::info!("XDP detached");
    }
    Ok(())
}
