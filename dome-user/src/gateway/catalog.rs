//! The federated catalogs, listed: every page of every upstream's items,
//! fetched concurrently, then named and routed by `dome_core::catalog`
//! (re-exported here), which holds what a catalog is and how names are
//! given.

use std::sync::Arc;

use serde_json::Value;

pub use dome_core::catalog::*;

use crate::upstream::{Reply, Upstream, first_response};

/// Upper bound on pages fetched from one upstream (a loop guard).
const MAX_PAGES: usize = 1000;

/// Lists every page of every upstream's items of `kind`, concurrently. An
/// upstream that fails drops out of this snapshot with a log line; one that
/// does not offer the kind simply has none.
pub async fn build(kind: Kind, upstreams: &[Arc<Upstream>], previous: &Catalog) -> Catalog {
    let lists = list_everywhere(kind, upstreams).await;
    let failed: Vec<usize> = (0..lists.len()).filter(|i| lists[*i].is_none()).collect();
    let mut cat = assemble(kind, upstreams, lists, previous);
    for (key, route) in previous.routes.iter().chain(previous.unavailable.iter()) {
        if failed.contains(&route.upstream) && !cat.routes.contains_key(key) {
            cat.unavailable.insert(key.clone(), route.clone());
        }
    }
    cat.failed = failed;
    cat
}

async fn list_everywhere(kind: Kind, upstreams: &[Arc<Upstream>]) -> Vec<Option<Vec<Value>>> {
    let mut tasks = Vec::with_capacity(upstreams.len());
    for u in upstreams {
        let u = u.clone();
        tasks.push(tokio::spawn(async move { list_all(kind, &u).await }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for (t, u) in tasks.into_iter().zip(upstreams) {
        match t.await {
            Ok(Ok(items)) => out.push(Some(items)),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %u.name(), error = %e, "upstream's {} left out of the list", kind.field());
                out.push(None);
            }
            Err(_) => out.push(None),
        }
    }
    out
}

async fn list_all(kind: Kind, u: &Upstream) -> Result<Vec<Value>, String> {
    u.connect().await.map_err(|e| e.to_string())?;
    if u.capabilities().get(kind.capability()).is_none() {
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => serde_json::json!({"cursor": c}),
            None => serde_json::json!({}),
        };
        let (reply, _) = u
            .request(kind.method(), params)
            .await
            .map_err(|e| e.to_string())?;
        let msg = match reply {
            Reply::Json(v) => v,
            Reply::Raw(b) => serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}"))?,
            Reply::Stream(s) => first_response(u, s).await.map_err(|e| e.to_string())?,
        };
        if let Some(err) = msg.get("error") {
            return Err(format!("{} failed: {err}", kind.method()));
        }
        let result = &msg["result"];
        if let Some(page) = result[kind.field()].as_array() {
            items.extend(page.iter().cloned());
        }
        match result["nextCursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
            _ => return Ok(items),
        }
    }
    Err(format!("more than {MAX_PAGES} pages of {}", kind.field()))
}

/// Names and routes the listed items (`lists[i]` belongs to
/// `upstreams[i]`), keeping the names `previous` gave: `assemble_named`
/// with each upstream's name and prefix mode.
pub fn assemble(
    kind: Kind,
    upstreams: &[Arc<Upstream>],
    lists: Vec<Option<Vec<Value>>>,
    previous: &Catalog,
) -> Catalog {
    let modes: Vec<(String, PrefixMode)> = upstreams
        .iter()
        .map(|u| (u.name().to_string(), u.config.prefix))
        .collect();
    assemble_named(kind, &modes, lists, previous)
}
