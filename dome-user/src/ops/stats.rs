//! The stats listener: `GET /stats` (JSON), `GET /metrics` (Prometheus
//! text), and `GET /healthz` and `GET /readyz` for load balancers. Latency
//! histograms per phase, tool and upstream; request counts by method, HTTP
//! status and JSON-RPC error; the kernel tier's attach state, counters and
//! events.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};

use crate::kernel::{EventStats, KernelTier, XdpStatus};

/// `[stats]`: the stats listener (`GET /stats`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    #[serde(default = "default_stats_listen")]
    pub listen: SocketAddr,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            listen: default_stats_listen(),
        }
    }
}

fn default_stats_listen() -> SocketAddr {
    "127.0.0.1:9090".parse().expect("literal")
}

/// The configuration Dome runs on and how the last reload went (`/stats`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConfigStatus {
    pub file: std::path::PathBuf,
    /// Content hash of the file in force.
    pub version: String,
    /// Content hash of the policy files in force.
    pub policy_version: String,
    /// Rules in the policy in force.
    pub policy_rules: usize,
    pub loaded_unix_s: u64,
    pub reloads: u64,
    pub last_reload: Option<ReloadOutcome>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub unix_s: u64,
    /// The error (file, line, field) when the new file was refused.
    pub error: Option<String>,
    /// Changes that need a restart and were not applied.
    pub needs_restart: Vec<String>,
}

/// What the gateway tells `/stats` and `/metrics` of itself.
pub trait GatewayFigures: Send + Sync {
    /// Open sessions (`dome_sessions`).
    fn sessions(&self) -> usize;
    /// Fields merged into `/stats`: sessions, catalog conflicts, the shadow
    /// policy's tally, buffered answers.
    fn report(&self) -> serde_json::Value;
}

/// Why Dome should not be sent traffic (`/readyz`'s reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("draining: shutting down")]
    Draining,
    /// Calls would fail closed; the trail's own account of why.
    #[error("the audit trail cannot write: {0}")]
    AuditFailing(String),
}

/// What `/stats` reports.
pub struct StatsState {
    pub started: Instant,
    /// Set once Dome has begun to shut down (`/readyz` answers 503).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    pub metrics: Arc<super::metrics::Metrics>,
    pub xdp_status: XdpStatus,
    pub tier: Option<Arc<KernelTier>>,
    pub events: Arc<EventStats>,
    pub config: Arc<std::sync::Mutex<ConfigStatus>>,
    /// The gateway's own figures, read when `/stats` or `/metrics` is
    /// asked: handed in by whoever wires Dome, so this module needs no
    /// gateway.
    pub gateway: Arc<dyn GatewayFigures>,
    pub registry: Arc<crate::store::registry::Registry>,
    pub escalation: Arc<crate::identity::escalation::Escalation>,
    pub audit: Arc<crate::audit::Trail>,
}

impl StatsState {
    /// Whether Dome should be sent traffic, and if not, why not: it is
    /// draining, or its audit trail cannot write (calls fail closed).
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.draining.load(std::sync::atomic::Ordering::Acquire) {
            return Err(NotReady::Draining);
        }
        match self.audit.failing() {
            Some(why) => Err(NotReady::AuditFailing(why)),
            None => Ok(()),
        }
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let mut xdp = serde_json::to_value(&self.xdp_status).unwrap_or_default();
        let enforcement = match self.xdp_status {
            XdpStatus::Attached { .. } => "kernel and user space",
            _ => "user space only",
        };
        xdp["enforcement"] = enforcement.into();
        if let Some(t) = &self.tier {
            match t.counters() {
                Ok(c) => xdp["counters"] = c.to_json(),
                Err(e) => xdp["counters_error"] = e.to_string().into(),
            }
        }
        xdp["events"] = self.events.to_json();
        let m = self.metrics.snapshot().to_json();
        let mut out = serde_json::json!({
            "dome": {
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_s": self.started.elapsed().as_secs(),
            },
            "config": serde_json::to_value(&*self.config.lock().expect("config status")).unwrap_or_default(),

            "identity": {
                "agents": self.registry.index().agents.len(),
                "tenants": self.registry.index().tenants.len(),
                "escalations": self.escalation.escalations(),
                "blocks": self.escalation.blocks_json()["blocks"].as_array().map_or(0, Vec::len),
            },
            "redactions": crate::policy::redact::totals()
                .into_iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
                .collect::<serde_json::Map<_, _>>(),
            "audit": self.audit.to_json(),
            "latency": m["latency"],
            "requests": m["requests"],
            "xdp": xdp,
        });
        if let (Some(out), serde_json::Value::Object(gw)) =
            (out.as_object_mut(), self.gateway.report())
        {
            out.extend(gw);
        }
        out
    }

    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        self.metrics.snapshot().to_prometheus(&mut out);
        if let Some(t) = &self.tier
            && let Ok(c) = t.counters()
        {
            out.push_str("# TYPE dome_xdp_packets_total counter\n");
            for (name, v) in dome_common::counter::NAMES.iter().zip(c.0.iter()) {
                out.push_str(&format!(
                    "dome_xdp_packets_total{{counter=\"{name}\"}} {v}\n"
                ));
            }
        }
        out.push_str(&format!(
            "# TYPE dome_escalations_total counter\ndome_escalations_total {}\n",
            self.escalation.escalations()
        ));
        let a = &self.audit.counters;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        out.push_str(&format!(
            "# TYPE dome_audit_records_total counter\ndome_audit_records_total {}\n\
             # TYPE dome_audit_dropped_total counter\ndome_audit_dropped_total {}\n\
             # TYPE dome_audit_refused_total counter\ndome_audit_refused_total {}\n\
             # TYPE dome_audit_syncs_total counter\ndome_audit_syncs_total {}\n\
             # TYPE dome_audit_queued gauge\ndome_audit_queued {}\n\
             # TYPE dome_audit_segments_retired_total counter\ndome_audit_segments_retired_total {}\n\
             # TYPE dome_audit_records_retired_total counter\ndome_audit_records_retired_total {}\n\
             # TYPE dome_audit_retired_bytes_total counter\ndome_audit_retired_bytes_total {}\n\
             # TYPE dome_audit_checkpoints_total counter\ndome_audit_checkpoints_total {}\n",
            load(&a.records),
            load(&a.dropped),
            load(&a.refused),
            load(&a.syncs),
            self.audit.queued(),
            load(&a.segments_retired),
            load(&a.records_retired),
            load(&a.bytes_retired),
            load(&a.checkpoints),
        ));
        out.push_str(&format!(
            "# TYPE dome_sessions gauge\ndome_sessions {}\n\
             # TYPE dome_ready gauge\ndome_ready {}\n",
            self.gateway.sessions(),
            self.readiness().is_ok() as u8
        ));
        let attached = matches!(self.xdp_status, XdpStatus::Attached { .. }) as u8;
        out.push_str(&format!(
            "# TYPE dome_xdp_attached gauge\ndome_xdp_attached {attached}\n"
        ));
        out
    }
}

fn respond(state: &StatsState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let json = |status, v: serde_json::Value| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(v.to_string())))
            .expect("static response parts")
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => json(StatusCode::OK, state.snapshot()),
        // Liveness: the process answers.
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        // Readiness, for a load balancer: 503 while draining or when calls
        // would fail closed.
        (&Method::GET, "/readyz") => match state.readiness() {
            Ok(()) => json(StatusCode::OK, serde_json::json!({"ready": true})),
            Err(why) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"ready": false, "reason": why.to_string()}),
            ),
        },
        (&Method::GET, "/metrics") => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(state.prometheus())))
            .expect("static response parts"),
        (_, "/stats") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "use GET"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found; try GET /stats, /metrics, /healthz or /readyz"}),
        ),
    }
}

/// Binds the stats listener; returns the bound address and the serving task.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<StatsState>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::net::serve_http1(addr, "stats", move |req| {
        let resp = respond(&state, &req);
        std::future::ready(resp)
    })
    .await
}
