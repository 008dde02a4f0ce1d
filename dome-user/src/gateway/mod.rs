//! The MCP endpoint agents talk to (`POST/GET/DELETE /mcp`), in both eras:
//! the session era (`initialize`, `Mcp-Session-Id`) and the stateless era
//! (`server/discover`, per-request `_meta`, routing headers). A client's
//! mistake is answered with its JSON-RPC code, never a 500.
//!
//! A request's path, file by file:
//! - `endpoint`: routing, authentication and the connection's kernel
//!   binding, GET and DELETE; `post`: the body, the message's checks, the
//!   era ladder of the headers, batches and `initialize`.
//! - `methods`: what each JSON-RPC method gets, by era: Dome's own answers
//!   (lists, discover, ping, levels) or forwarding.
//! - `forward`: phases of a forwarded call in order — its audit record
//!   opened, the agent's budget (`dome_core::admit::charge`), the policy
//!   decision and the tenant's budget (`admit`), the identity assertion
//!   (vouch), the upstream request; `effects`: what the core returned,
//!   carried out (strikes, the shadow tally, the record's fields).
//! - `relay` (an upstream's event stream to the caller) and `rounds`
//!   (client input across eras, with `input`'s parked calls) carry the
//!   answer back; `respond` shapes it; `redaction` filters it.
//! - `subscriptions`: resource subscriptions and `subscriptions/listen`.
//! - `sessions`: session-era state; `exchange`: what a request carries
//!   through its phases (an explicit `&mut Exchange`, no task-locals);
//!   `rules`: what a caller may send; `catalog`: the federated catalogs,
//!   listed; `config`: `[mcp]`.
//!
//! This file holds the gateway itself, what it answers to (`Authority`), and
//! the federated catalogs it refreshes.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, RwLock},
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderMap},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use dome_core::admit;

use crate::{
    identity::{
        authn::{self, Caller},
        escalation::Subject,
    },
    ops::metrics::{Metrics, RequestRecord},
};

use dome_core::{
    envelope::{self, Envelope, EnvelopeError, Parsed},
    protocol::{self, code},
};

use crate::upstream::{
    Reply, Upstream,
    sse::{self, SseParser},
};

pub mod catalog;
pub mod input;

use catalog::{Catalog, Kind};

mod config;
mod effects;
mod endpoint;
mod exchange;
mod forward;
mod methods;
mod post;
mod redaction;
mod relay;
mod respond;
mod rounds;
mod rules;
mod sessions;
mod subscriptions;

use exchange::*;
use post::accepts;
use redaction::*;
use relay::*;
use respond::*;
use rounds::*;
use rules::*;
use sessions::*;

pub use config::{MAX_JSON_DEPTH_LIMIT, McpConfig};
pub use redaction::{MAX_LOGGED_ARGS_BYTES, Redaction};
pub use rules::{H_INTENT, MAX_NAME_BYTES};
pub use sessions::SessionTable;

pub use crate::net::Body;

// A client keeps one GET or listen stream per session or subscription set;
// a hundred leaves room for a runtime sharing one agent id, and keeps one
// agent's streams (each a task, a channel and a socket) from growing
// without end.

// Sixteen answers of the default max_response_bytes, or thousands of
// ordinary ones, at once.

/// Milliseconds on the monotonic clock: when sessions were last used.
fn mono_ms() -> u64 {
    crate::clock::monotonic_ns() / 1_000_000
}

#[derive(Default)]
struct RefreshState {
    running: tokio::sync::Mutex<()>,
    /// Listings completed.
    generation: std::sync::atomic::AtomicU64,
    /// When the last began (`mono_ms`).
    started_ms: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct RetryState {
    running: std::sync::atomic::AtomicBool,
    attempts: std::sync::atomic::AtomicU32,
    next_ms: std::sync::atomic::AtomicU64,
}

/// The gateway: upstreams, the current catalog and the downstream sessions.
pub struct Gateway {
    config: McpConfig,
    upstreams: Vec<Arc<Upstream>>,
    /// One catalog per kind (`Kind::index`).
    catalogs: [arc_swap::ArcSwap<Catalog>; 4],
    /// One listing at a time per kind, and how recent the last is.
    refreshes: [RefreshState; 4],
    /// When failed upstreams are listed again.
    retry: RetryState,
    sessions: Arc<SessionTable>,
    metrics: Arc<Metrics>,
    body_timeout: std::time::Duration,
    authority: Arc<Authority>,
}

/// What the gateway consults and answers to, swapped whole on reload: who
/// may call (registry, tokens, escalation, the kernel tier), what they may
/// call (policy, its shadow, rule budgets), how Dome vouches for them
/// upstream (the signer), and where every call is recorded (the trail).
pub struct Authority {
    pub registry: Arc<crate::store::registry::Registry>,
    pub signer: Arc<crate::identity::assertion::Signer>,
    /// Every request must authenticate.
    pub required: bool,
    /// The MCP endpoint's public URL (RFC 9728 `resource`).
    pub resource: String,
    pub escalation: Arc<crate::identity::escalation::Escalation>,
    /// The kernel tier, when attached: authenticated flows are bound there.
    pub enforcer: Option<Arc<dyn crate::kernel::Enforcer>>,
    /// The packet and byte budget an agent's identity slot gets.
    pub kernel_budget: crate::kernel::BudgetSpec,
    /// Tenants' identity providers, for bearer tokens.
    pub jwt: Arc<crate::identity::jwt::Verifier>,
    /// The policy in force.
    pub policy: Arc<crate::policy::compile::Policy>,
    /// Every activated policy version.
    pub policy_store: Arc<crate::store::policy::PolicyStore>,
    /// A candidate policy judged beside the active one, never enforced.
    pub shadow: Option<Arc<crate::policy::compile::Policy>>,
    /// Where every call's record goes.
    pub audit: Arc<crate::audit::Trail>,
    /// Budgets set by policy rules (their `budget` obligation).
    pub rule_budgets: Arc<crate::identity::budget::RuleBudgets>,
}

/// Shadow decisions that differed from the active policy's, since start.
pub static SHADOW_DISAGREEMENTS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Calls the shadow policy judged, since start.
pub static SHADOW_DECISIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The gateway's figures on `/stats`: open sessions, policy warnings,
/// catalog conflicts, the shadow policy's tally, and the upstream answers
/// held in memory over all calls (`[mcp] max_buffered_response_bytes`).
fn stats_report(sessions: &SessionTable) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "sessions": sessions.len(),
        "policy_warnings": SCHEMA_WARNINGS.lock().expect("schema warnings").clone(),
        "catalog_conflicts": CATALOG_CONFLICTS.lock().expect("catalog conflicts").concat(),
        "shadow_policy": {
            "decisions": SHADOW_DECISIONS.load(Relaxed),
            "disagreements": SHADOW_DISAGREEMENTS.load(Relaxed),
        },
        "buffered_responses": crate::upstream::BUFFERED.to_json(),
    })
}

/// Policy argument paths the tools' input schemas cannot hold (refreshed
/// with the tool catalog; shown on `/stats`).
impl crate::ops::stats::GatewayFigures for SessionTable {
    fn sessions(&self) -> usize {
        self.len()
    }

    fn report(&self) -> Value {
        stats_report(self)
    }
}

pub static SCHEMA_WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Items each kind's catalog left out, and why (`/stats`): a clash, a
/// name in another upstream's namespace, an invalid name.
pub static CATALOG_CONFLICTS: std::sync::Mutex<[Vec<Value>; 4]> =
    std::sync::Mutex::new([Vec::new(), Vec::new(), Vec::new(), Vec::new()]);

impl Authority {
    /// Where the protected-resource metadata is (RFC 9728): the well-known
    /// path at the resource's origin.
    fn metadata_url(&self) -> String {
        let origin = match self.resource.find("://") {
            Some(i) => match self.resource[i + 3..].find('/') {
                Some(j) => &self.resource[..i + 3 + j],
                None => self.resource.as_str(),
            },
            None => self.resource.as_str(),
        };
        format!("{origin}{METADATA_PATH}")
    }
}

const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

pub use dome_core::protocol::INTENT_META;

use crate::audit::Call;

use crate::audit::call::phase as audit_phase;

const JWKS_PATH: &str = "/.well-known/jwks.json";

/// The era a caller speaks on this request: the session era with its
/// negotiated version, or the stateless era.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CallerEra {
    Session(&'static str),
    Stateless,
}

impl Gateway {
    /// `body_timeout`: how long a request body may take to arrive (408 beyond).
    pub fn new(
        config: McpConfig,
        upstreams: Vec<Arc<Upstream>>,
        metrics: Arc<Metrics>,
        sessions: Arc<SessionTable>,
        body_timeout: std::time::Duration,
        authority: Arc<Authority>,
    ) -> Arc<Self> {
        // Live on reload: the budget is the process's, its limit the config's.
        super::upstream::BUFFERED.set_limit(config.max_buffered_response_bytes);
        for u in &upstreams {
            let table = Arc::downgrade(&sessions);
            let name = u.name().to_string();
            u.set_notification_sink(Arc::new(move |v: &Value| {
                if let Some(t) = table.upgrade() {
                    t.route_upstream_notification(&name, v);
                }
            }));
        }
        Arc::new(Gateway {
            config,
            upstreams,
            metrics,
            catalogs: std::array::from_fn(|_| arc_swap::ArcSwap::from_pointee(Catalog::default())),
            refreshes: Default::default(),
            retry: Default::default(),
            sessions,
            body_timeout,
            authority,
        })
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Lists one kind from every upstream again.
    pub async fn refresh(&self, kind: Kind) -> Arc<Catalog> {
        let state = &self.refreshes[kind.index()];
        let _one_at_a_time = state.running.lock().await;
        self.refresh_locked(kind).await
    }

    async fn refresh_locked(&self, kind: Kind) -> Arc<Catalog> {
        let state = &self.refreshes[kind.index()];
        state
            .started_ms
            .store(mono_ms(), std::sync::atomic::Ordering::Relaxed);
        let previous = self.current(kind);
        let cat = Arc::new(catalog::build(kind, &self.upstreams, &previous).await);
        self.catalogs[kind.index()].store(cat.clone());
        state
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        if kind == Kind::Tools {
            self.check_argument_paths(&cat);
        }
        let conflicts: Vec<Value> = cat.conflicts.iter().map(|c| c.to_json(kind)).collect();
        let mut known = CATALOG_CONFLICTS.lock().expect("catalog conflicts");
        for c in conflicts
            .iter()
            .filter(|c| !known[kind.index()].contains(c))
        {
            tracing::warn!(upstream = %c["upstream"], key = %c["public"], why = %c["why"], "{} left out of the catalog", kind.key());
        }
        known[kind.index()] = conflicts;
        cat
    }

    /// A listing a client's request asks for (`*/list`, a name not in the
    /// catalog): requests that arrive while one is under way take its
    /// result, and one made less than `[mcp] catalog_refresh_ms` ago is
    /// used as it is. Before, every call naming an unknown tool listed
    /// every upstream again (50 calls, 50 `tools/list` to each upstream).
    async fn refresh_for_client(&self, kind: Kind) -> Arc<Catalog> {
        let state = &self.refreshes[kind.index()];
        let seen = state.generation.load(std::sync::atomic::Ordering::Acquire);
        let _one_at_a_time = state.running.lock().await;
        let fresh = mono_ms()
            .saturating_sub(state.started_ms.load(std::sync::atomic::Ordering::Relaxed))
            < self.config.catalog_refresh_ms;
        let done_meanwhile = state.generation.load(std::sync::atomic::Ordering::Acquire) != seen;
        if done_meanwhile
            || (fresh && state.generation.load(std::sync::atomic::Ordering::Relaxed) > 0)
        {
            return self.current(kind);
        }
        self.refresh_locked(kind).await
    }

    /// Takes over the names the gateway this one replaces (a reload) gave,
    /// so a reload does not rename what a clash named: its catalogs become
    /// this one's previous listing, routed by upstream name.
    pub fn inherit_names(&self, old: &Gateway) {
        for kind in Kind::ALL {
            let was = old.current(kind);
            let remap = |r: &catalog::Route| {
                let i = self.upstreams.iter().position(|u| u.name() == &*r.label)?;
                Some(catalog::Route {
                    upstream: i,
                    ..r.clone()
                })
            };
            let mut cat = Catalog::default();
            for (into, from) in [
                (&mut cat.routes, &was.routes),
                (&mut cat.unavailable, &was.unavailable),
            ] {
                into.extend(
                    from.iter()
                        .filter_map(|(k, r)| Some((k.clone(), remap(r)?))),
                );
            }
            self.catalogs[kind.index()].store(Arc::new(cat));
        }
    }

    /// Lists again, with backoff, what upstreams that failed their last
    /// listing have (down at start or reload, they stayed out of the
    /// catalog until their configuration changed). Run every second by
    /// the runtime; the listing runs on its own task.
    pub fn retry_failed(self: &Arc<Self>) {
        let failing = Kind::ALL
            .iter()
            .any(|k| !self.current(*k).failed.is_empty());
        let retry = &self.retry;
        let now = mono_ms();
        if !failing {
            retry
                .attempts
                .store(0, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        if now < retry.next_ms.load(std::sync::atomic::Ordering::Relaxed)
            || retry
                .running
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let gw = self.clone();
        tokio::spawn(async move {
            let mut still = false;
            for kind in Kind::ALL {
                if !gw.current(kind).failed.is_empty() {
                    still |= !gw.refresh(kind).await.failed.is_empty();
                }
            }
            let retry = &gw.retry;
            let attempts = if still {
                retry
                    .attempts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1
            } else {
                retry
                    .attempts
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("every upstream answers its listings again");
                0
            };
            // 1 s, 2 s, 4 s … at most a minute between attempts.
            let wait_ms = 1000u64 << attempts.min(6);
            retry.next_ms.store(
                mono_ms() + wait_ms.min(60_000),
                std::sync::atomic::Ordering::Relaxed,
            );
            retry
                .running
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// Checks the policy's argument paths against the tools' published
    /// `inputSchema`s; logs what is new and keeps the list for `/stats`.
    fn check_argument_paths(&self, tools: &Catalog) {
        let policy = &self.authority.policy;
        let mut found: Vec<String> = tools
            .items
            .iter()
            .flat_map(|t| {
                policy.schema_warnings(t["name"].as_str().unwrap_or_default(), &t["inputSchema"])
            })
            .collect();
        // A rule naming a tool no upstream lists (a typo, or a name a
        // clash changed) applies to nothing, silently.
        for (rule, tool) in policy.named_tools() {
            if !tools.routes.contains_key(tool) && !tools.unavailable.contains_key(tool) {
                found.push(format!(
                    "rule `{rule}` names the tool `{tool}`, which no upstream lists (see catalog_conflicts)"
                ));
            }
        }
        let mut known = SCHEMA_WARNINGS.lock().expect("schema warnings");
        for w in found.iter().filter(|w| !known.contains(w)) {
            tracing::warn!(policy = %policy.version, "{w}");
        }
        *known = found;
    }

    /// Lists every kind again; returns how many items of each.
    pub async fn refresh_all(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for kind in Kind::ALL {
            n[kind.index()] = self.refresh(kind).await.items.len();
        }
        n
    }

    fn current(&self, kind: Kind) -> Arc<Catalog> {
        self.catalogs[kind.index()].load_full()
    }

    /// Where `key` of `kind` goes, listing again once when it is unknown.
    async fn lookup(&self, kind: Kind, key: &str) -> Option<catalog::Route> {
        // An item of an upstream that is down is not listed, but a request
        // for it still goes there, so the caller learns which upstream failed.
        let find = |cat: &Catalog| {
            cat.routes
                .get(key)
                .or_else(|| cat.unavailable.get(key))
                .cloned()
        };
        // The common case borrows the snapshot (no reference count taken).
        if let Some(r) = find(&self.catalogs[kind.index()].load()) {
            return Some(r);
        }
        find(&*self.refresh_for_client(kind).await)
    }

    /// What Dome announces: the union of its upstreams' capabilities, each
    /// flag true only where some upstream's is (change notifications and
    /// resource subscriptions are relayed in both eras).
    fn capabilities(&self) -> Value {
        let mut caps = serde_json::Map::new();
        for u in &self.upstreams {
            let c = u.capabilities();
            for key in ["tools", "prompts", "resources", "completions", "logging"] {
                if c.get(key).is_none() {
                    continue;
                }
                let entry = caps.entry(key).or_insert_with(|| match key {
                    "tools" | "prompts" => json!({"listChanged": false}),
                    "resources" => json!({"listChanged": false, "subscribe": false}),
                    _ => json!({}),
                });
                for flag in ["listChanged", "subscribe"] {
                    if c[key][flag] == true && entry.get(flag).is_some() {
                        entry[flag] = true.into();
                    }
                }
            }
        }
        Value::Object(caps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_from_result_text() {
        use crate::audit::record::Outcome;
        let r = |t: &str| result_outcome(t.as_bytes());
        assert_eq!(
            r(r#"{"result":{"content":[],"isError":true}}"#),
            Some(Outcome::ToolError)
        );
        assert_eq!(
            r(r#"{"result":{"isError": true}}"#),
            Some(Outcome::ToolError)
        );
        assert_eq!(r(r#"{"result":{"isError":false}}"#), None);
        assert_eq!(
            r(r#"{"result":{"resultType":"input_required","inputRequests":{}}}"#),
            Some(Outcome::InputRequired)
        );
        assert_eq!(r(r#"{"result":{"resultType":"complete"}}"#), None);
        // The words inside a string value are not the keys.
        assert_eq!(
            r(r#"{"result":{"content":[{"type":"text","text":"{\"isError\":true}"}]}}"#),
            None
        );
    }

    #[test]
    fn session_ids_are_long_and_distinct() {
        let a = new_session_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_session_id());
    }
}
