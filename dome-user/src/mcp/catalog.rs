//! The federated tool catalog: every upstream's tools, named as the
//! upstream's prefix mode says, in a deterministic order (upstreams in config
//! order, tools in each upstream's order), with a route from each public name
//! back to its upstream and original name.

use std::{collections::HashMap, sync::Arc};

use serde_json::Value;

use super::{
    protocol,
    upstream::{PrefixMode, Reply, Upstream, first_response},
};

/// Where a public tool name goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub upstream: usize,
    pub original: String,
}

/// One snapshot of the catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Tools as shown downstream (names rewritten).
    pub tools: Vec<Value>,
    pub routes: HashMap<String, Route>,
    /// Tools of upstreams that failed this listing, as the last listing had
    /// them: not shown, but a call still goes to (and fails naming) the upstream.
    pub unavailable: HashMap<String, Route>,
    /// Content hash: a pagination cursor is only valid for the snapshot it came from.
    pub version: u64,
}

/// Upper bound on pages fetched from one upstream (a loop guard).
const MAX_PAGES: usize = 1000;

/// Lists every page of every upstream's tools, concurrently. An upstream that
/// fails drops out of this snapshot with a log line; the others stay.
pub async fn build(upstreams: &[Arc<Upstream>], previous: &Catalog) -> Catalog {
    let lists = futures_join_all(upstreams).await;
    let failed: Vec<usize> = (0..lists.len()).filter(|i| lists[*i].is_none()).collect();
    let mut cat = assemble(upstreams, lists);
    for (name, route) in previous.routes.iter().chain(previous.unavailable.iter()) {
        if failed.contains(&route.upstream) && !cat.routes.contains_key(name) {
            cat.unavailable.insert(name.clone(), route.clone());
        }
    }
    cat
}

async fn futures_join_all(upstreams: &[Arc<Upstream>]) -> Vec<Option<Vec<Value>>> {
    let mut tasks = Vec::with_capacity(upstreams.len());
    for u in upstreams {
        let u = u.clone();
        tasks.push(tokio::spawn(async move { list_all(&u).await }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for (t, u) in tasks.into_iter().zip(upstreams) {
        match t.await {
            Ok(Ok(tools)) => out.push(Some(tools)),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %u.name(), error = %e, "upstream's tools left out of the list");
                out.push(None);
            }
            Err(_) => out.push(None),
        }
    }
    out
}

async fn list_all(u: &Upstream) -> Result<Vec<Value>, String> {
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => serde_json::json!({"cursor": c}),
            None => serde_json::json!({}),
        };
        let (reply, _) = u
            .request("tools/list", params)
            .await
            .map_err(|e| e.to_string())?;
        let msg = match reply {
            Reply::Json(v) => v,
            Reply::Raw(b) => serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}"))?,
            Reply::Stream(s) => first_response(u.name(), s)
                .await
                .map_err(|e| e.to_string())?,
        };
        if let Some(err) = msg.get("error") {
            return Err(format!("tools/list failed: {err}"));
        }
        let result = &msg["result"];
        if let Some(page) = result["tools"].as_array() {
            tools.extend(page.iter().cloned());
        }
        match result["nextCursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
            _ => return Ok(tools),
        }
    }
    Err(format!("more than {MAX_PAGES} pages of tools"))
}

/// Names and routes the listed tools (pure; `lists[i]` belongs to `upstreams[i]`).
pub fn assemble(upstreams: &[Arc<Upstream>], lists: Vec<Option<Vec<Value>>>) -> Catalog {
    let modes: Vec<(String, PrefixMode)> = upstreams
        .iter()
        .map(|u| (u.name().to_string(), u.config.prefix))
        .collect();
    assemble_named(&modes, lists)
}

/// As [`assemble`], from (name, prefix mode) pairs.
pub fn assemble_named(
    upstreams: &[(String, PrefixMode)],
    lists: Vec<Option<Vec<Value>>>,
) -> Catalog {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for list in lists.iter().flatten() {
        for t in list {
            if let Some(n) = t["name"].as_str() {
                *count.entry(n).or_default() += 1;
            }
        }
    }
    let mut cat = Catalog::default();
    for (i, list) in lists.iter().enumerate() {
        let Some(list) = list else { continue };
        let (uname, mode) = &upstreams[i];
        for t in list {
            let Some(original) = t["name"].as_str() else {
                continue;
            };
            let prefixed = match mode {
                PrefixMode::Always => true,
                PrefixMode::Never => false,
                PrefixMode::OnConflict => count.get(original).copied().unwrap_or(0) > 1,
            };
            let public = if prefixed {
                format!("{uname}.{original}")
            } else {
                original.to_string()
            };
            if !protocol::valid_tool_name(&public) {
                tracing::warn!(upstream = %uname, tool = %public, "tool name outside [A-Za-z0-9_.-]{{1,128}}; left out");
                continue;
            }
            if cat.routes.contains_key(&public) {
                tracing::warn!(upstream = %uname, tool = %public, "tool name already taken by an upstream listed earlier; left out");
                continue;
            }
            let mut shown = t.clone();
            shown["name"] = Value::String(public.clone());
            cat.routes.insert(
                public,
                Route {
                    upstream: i,
                    original: original.to_string(),
                },
            );
            cat.tools.push(shown);
        }
    }
    cat.version = hash(&cat.tools);
    cat
}

fn hash(tools: &[Value]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in tools {
        t.to_string().hash(&mut h);
    }
    h.finish()
}

/// The opaque cursor of page `offset` of catalog `version`.
pub fn cursor(version: u64, offset: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{version:x}:{offset}"))
}

/// Decodes a cursor into (version, offset).
pub fn parse_cursor(c: &str) -> Option<(u64, usize)> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (v, o) = text.split_once(':')?;
    Some((u64::from_str_radix(v, 16).ok()?, o.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tools(names: &[&str]) -> Option<Vec<Value>> {
        Some(
            names
                .iter()
                .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
                .collect(),
        )
    }

    fn names(c: &Catalog) -> Vec<&str> {
        c.tools
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn prefix_modes() {
        let ups = vec![
            ("a".to_string(), PrefixMode::OnConflict),
            ("b".to_string(), PrefixMode::OnConflict),
            ("c".to_string(), PrefixMode::Always),
        ];
        let c = assemble_named(
            &ups,
            vec![tools(&["echo", "x"]), tools(&["echo", "y"]), tools(&["z"])],
        );
        assert_eq!(names(&c), vec!["a.echo", "x", "b.echo", "y", "c.z"]);
        assert_eq!(
            c.routes["b.echo"],
            Route {
                upstream: 1,
                original: "echo".into()
            }
        );
    }

    #[test]
    fn never_prefix_keeps_the_first_and_failed_upstreams_drop_out() {
        let ups = vec![
            ("a".to_string(), PrefixMode::Never),
            ("b".to_string(), PrefixMode::Never),
            ("c".to_string(), PrefixMode::Never),
        ];
        let c = assemble_named(
            &ups,
            vec![tools(&["echo"]), None, tools(&["echo", "bad name"])],
        );
        assert_eq!(names(&c), vec!["echo"]);
        assert_eq!(c.routes["echo"].upstream, 0);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(parse_cursor(&cursor(0xabc, 40)), Some((0xabc, 40)));
        assert_eq!(parse_cursor("not a cursor!"), None);
    }
}
