//! The federated catalogs: every upstream's tools, prompts, resources and
//! resource templates, in a deterministic order (upstreams in config order,
//! items in each upstream's order), with a route from each public key back
//! to its upstream and original key. Tools and prompts are renamed as each
//! upstream's prefix mode says; resources keep their URIs (an URI is global;
//! on a clash the upstream listed first wins).

use std::{collections::HashMap, sync::Arc};

use serde_json::Value;

use super::{
    protocol,
    upstream::{PrefixMode, Reply, Upstream, first_response},
};

/// What a catalog lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Tools, Kind::Prompts, Kind::Resources, Kind::Templates];

    pub fn index(self) -> usize {
        self as usize
    }
    /// The list method.
    pub fn method(self) -> &'static str {
        match self {
            Kind::Tools => "tools/list",
            Kind::Prompts => "prompts/list",
            Kind::Resources => "resources/list",
            Kind::Templates => "resources/templates/list",
        }
    }
    /// The result field holding the items.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Tools => "tools",
            Kind::Prompts => "prompts",
            Kind::Resources => "resources",
            Kind::Templates => "resourceTemplates",
        }
    }
    /// The item field that identifies it.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Tools | Kind::Prompts => "name",
            Kind::Resources => "uri",
            Kind::Templates => "uriTemplate",
        }
    }
    /// The capability an upstream announces for it.
    pub fn capability(self) -> &'static str {
        match self {
            Kind::Tools => "tools",
            Kind::Prompts => "prompts",
            Kind::Resources | Kind::Templates => "resources",
        }
    }
    fn renamed(self) -> bool {
        matches!(self, Kind::Tools | Kind::Prompts)
    }
    pub fn of_method(method: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.method() == method)
    }
}

/// Where a public key goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub upstream: usize,
    /// The upstream's own name for the item.
    pub original: Arc<str>,
    /// The name Dome shows (the routing key), shared with call records.
    pub public: Arc<str>,
}

/// One snapshot of one kind's catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Items as shown downstream (keys rewritten where renamed).
    pub items: Vec<Value>,
    pub routes: HashMap<String, Route>,
    /// Items of upstreams that failed this listing, as the last listing had
    /// them: not shown, but a request still goes to (and fails naming) the upstream.
    pub unavailable: HashMap<String, Route>,
    /// Content hash: a pagination cursor is only valid for the snapshot it came from.
    pub version: u64,
}

/// Upper bound on pages fetched from one upstream (a loop guard).
const MAX_PAGES: usize = 1000;

/// Lists every page of every upstream's items of `kind`, concurrently. An
/// upstream that fails drops out of this snapshot with a log line; one that
/// does not offer the kind simply has none.
pub async fn build(kind: Kind, upstreams: &[Arc<Upstream>], previous: &Catalog) -> Catalog {
    let lists = list_everywhere(kind, upstreams).await;
    let failed: Vec<usize> = (0..lists.len()).filter(|i| lists[*i].is_none()).collect();
    let mut cat = assemble(kind, upstreams, lists);
    for (key, route) in previous.routes.iter().chain(previous.unavailable.iter()) {
        if failed.contains(&route.upstream) && !cat.routes.contains_key(key) {
            cat.unavailable.insert(key.clone(), route.clone());
        }
    }
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

/// Names and routes the listed items (pure; `lists[i]` belongs to `upstreams[i]`).
pub fn assemble(
    kind: Kind,
    upstreams: &[Arc<Upstream>],
    lists: Vec<Option<Vec<Value>>>,
) -> Catalog {
    let modes: Vec<(String, PrefixMode)> = upstreams
        .iter()
        .map(|u| (u.name().to_string(), u.config.prefix))
        .collect();
    assemble_named(kind, &modes, lists)
}

/// As [`assemble`], from (name, prefix mode) pairs.
pub fn assemble_named(
    kind: Kind,
    upstreams: &[(String, PrefixMode)],
    lists: Vec<Option<Vec<Value>>>,
) -> Catalog {
    let key = kind.key();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for list in lists.iter().flatten() {
        for t in list {
            if let Some(n) = t[key].as_str() {
                *count.entry(n).or_default() += 1;
            }
        }
    }
    let mut cat = Catalog::default();
    for (i, list) in lists.iter().enumerate() {
        let Some(list) = list else { continue };
        let (uname, mode) = &upstreams[i];
        for t in list {
            let Some(original) = t[key].as_str() else {
                continue;
            };
            let prefixed = kind.renamed()
                && match mode {
                    PrefixMode::Always => true,
                    PrefixMode::Never => false,
                    PrefixMode::OnConflict => count.get(original).copied().unwrap_or(0) > 1,
                };
            let public = if prefixed {
                format!("{uname}.{original}")
            } else {
                original.to_string()
            };
            if kind == Kind::Tools && !protocol::valid_tool_name(&public) {
                tracing::warn!(upstream = %uname, tool = %public, "tool name outside [A-Za-z0-9_.-]{{1,128}}; left out");
                continue;
            }
            if cat.routes.contains_key(&public) {
                tracing::warn!(upstream = %uname, key = %public, "{} already taken by an upstream listed earlier; left out", kind.key());
                continue;
            }
            let mut shown = t.clone();
            shown[key] = Value::String(public.clone());
            let route = Route {
                upstream: i,
                original: original.into(),
                public: public.as_str().into(),
            };
            cat.routes.insert(public, route);
            cat.items.push(shown);
        }
    }
    cat.version = hash(&cat.items);
    cat
}

/// The upstream whose template could produce `uri` (the longest literal
/// prefix before the first `{` wins).
pub fn template_route(templates: &Catalog, uri: &str) -> Option<usize> {
    templates
        .routes
        .iter()
        .filter_map(|(t, r)| {
            let literal = t.split('{').next().unwrap_or(t);
            uri.starts_with(literal)
                .then_some((literal.len(), r.upstream))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, u)| u)
}

fn hash(items: &[Value]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in items {
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

    fn items(key: &str, names: &[&str]) -> Option<Vec<Value>> {
        Some(names.iter().map(|n| json!({key: n})).collect())
    }

    fn keys<'a>(c: &'a Catalog, key: &str) -> Vec<&'a str> {
        c.items.iter().map(|t| t[key].as_str().unwrap()).collect()
    }

    #[test]
    fn prefix_modes() {
        let ups = vec![
            ("a".to_string(), PrefixMode::OnConflict),
            ("b".to_string(), PrefixMode::OnConflict),
            ("c".to_string(), PrefixMode::Always),
        ];
        let c = assemble_named(
            Kind::Tools,
            &ups,
            vec![
                items("name", &["echo", "x"]),
                items("name", &["echo", "y"]),
                items("name", &["z"]),
            ],
        );
        assert_eq!(keys(&c, "name"), vec!["a.echo", "x", "b.echo", "y", "c.z"]);
        assert_eq!(
            c.routes["b.echo"],
            Route {
                upstream: 1,
                original: "echo".into(),
                public: "b.echo".into()
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
            Kind::Tools,
            &ups,
            vec![
                items("name", &["echo"]),
                None,
                items("name", &["echo", "bad name"]),
            ],
        );
        assert_eq!(keys(&c, "name"), vec!["echo"]);
        assert_eq!(c.routes["echo"].upstream, 0);
    }

    #[test]
    fn resources_keep_their_uris_and_templates_route_by_prefix() {
        let ups = vec![
            ("a".to_string(), PrefixMode::Always),
            ("b".to_string(), PrefixMode::Always),
        ];
        let c = assemble_named(
            Kind::Resources,
            &ups,
            vec![
                items("uri", &["file:///a.txt"]),
                items("uri", &["file:///a.txt", "mem://b"]),
            ],
        );
        assert_eq!(
            keys(&c, "uri"),
            vec!["file:///a.txt", "mem://b"],
            "first upstream wins a clash"
        );
        assert_eq!(c.routes["mem://b"].upstream, 1);
        let t = assemble_named(
            Kind::Templates,
            &ups,
            vec![
                items("uriTemplate", &["users://{id}"]),
                items("uriTemplate", &["users://admins/{id}"]),
            ],
        );
        assert_eq!(template_route(&t, "users://admins/7"), Some(1));
        assert_eq!(template_route(&t, "users://42"), Some(0));
        assert_eq!(template_route(&t, "other://x"), None);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(parse_cursor(&cursor(0xabc, 40)), Some((0xabc, 40)));
        assert_eq!(parse_cursor("not a cursor!"), None);
    }
}
