//! The federated catalogs' naming, with no I/O: every upstream's tools,
//! prompts, resources and resource templates in a deterministic order
//! (upstreams in config order, items in each upstream's order), with a
//! route from each public key back to its upstream and original key. Tools
//! and prompts are renamed as each upstream's prefix mode says; resources
//! keep their URIs (an URI is global; on a clash the upstream listed first
//! wins). Listing the upstreams is the shell's (`dome-user`'s
//! `gateway::catalog`).

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol;

/// How tool names of an upstream appear downstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    /// Always `upstream.tool`.
    Always,
    /// Never prefixed; on a clash the upstream listed first wins.
    Never,
    /// Prefixed only where two upstreams offer the same name.
    OnConflict,
}

/// What a catalog lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Tools (`tools/list`).
    Tools,
    /// Prompts (`prompts/list`).
    Prompts,
    /// Resources (`resources/list`).
    Resources,
    /// Resource templates (`resources/templates/list`).
    Templates,
}

impl Kind {
    /// Every kind, in the order of [`Kind::index`].
    pub const ALL: [Kind; 4] = [Kind::Tools, Kind::Prompts, Kind::Resources, Kind::Templates];

    /// Its position in [`Kind::ALL`], for what the shell keeps per kind (the
    /// catalogs, their refresh state).
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
    /// The kind whose list method `method` is, if any.
    pub fn of_method(method: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.method() == method)
    }
}

/// Where a public key goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The upstream's index among those the catalog was assembled from
    /// (config order).
    pub upstream: usize,
    /// The upstream's name (a name outlives a reload; an index may not).
    pub label: Arc<str>,
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
    /// Where each public key goes, by public key.
    pub routes: HashMap<String, Route>,
    /// Items of upstreams that failed this listing, as the last listing had
    /// them: not shown, but a request still goes to (and fails naming) the upstream.
    pub unavailable: HashMap<String, Route>,
    /// Content hash: a pagination cursor is only valid for the snapshot it came from.
    pub version: u64,
    /// Items left out, and why (on `/stats`).
    pub conflicts: Vec<Conflict>,
    /// The upstreams that failed this listing (retried with backoff).
    pub failed: Vec<usize>,
}

/// Why an item an upstream listed is not in the catalog, or not under
/// its own name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The upstream that listed the item, by name.
    pub upstream: String,
    /// The item's key as the upstream lists it.
    pub original: String,
    /// The key it would have had (left out), or was given (prefixed).
    pub public: String,
    /// Why, in a few words (`taken by another upstream`, …).
    pub why: &'static str,
}

impl Conflict {
    /// The conflict as `/stats` shows it, naming the catalog (`kind`) it is
    /// in.
    pub fn to_json(&self, kind: Kind) -> Value {
        serde_json::json!({
            "kind": kind.field(), "upstream": self.upstream, "original": self.original,
            "public": self.public, "why": self.why,
        })
    }
}

/// Names and routes the listed items (`lists[i]` belongs to
/// `upstreams[i]`, given as (name, prefix mode)), keeping the names
/// `previous` gave.
///
/// A name, once given, stays: an item `previous` listed keeps its public
/// key while its upstream lists it, whatever another upstream starts to
/// publish. Before, a second upstream publishing `delete_all` renamed the
/// first one's (under `on_conflict`) to `up.delete_all`, so an exact-name
/// deny rule stopped applying to it; and a URI or `never`-prefixed name
/// moved to whichever upstream was listed first. A newcomer that clashes
/// gets its prefix (or, where there is none, is left out). And no item may
/// take a key in another upstream's namespace (`bank.transfer` listed by
/// any upstream but `bank`): it would receive the calls, arguments and
/// assertions meant for `bank`. What is left out is in `conflicts`.
pub fn assemble_named(
    kind: Kind,
    upstreams: &[(String, PrefixMode)],
    lists: Vec<Option<Vec<Value>>>,
    previous: &Catalog,
) -> Catalog {
    let key = kind.key();
    let count = bare_counts(kind, upstreams, &lists);
    // (upstream, original) → the public key the last snapshot gave it.
    let given: HashMap<(&str, &str), &str> = previous
        .routes
        .values()
        .chain(previous.unavailable.values())
        .map(|r| ((&*r.label, &*r.original), &*r.public))
        .collect();
    let mut cat = Catalog::default();
    // Each item's key, decided in two passes: the keys given before are
    // claimed first, so a newcomer cannot take one.
    let mut names: Vec<Vec<Option<String>>> = lists
        .iter()
        .map(|l| vec![None; l.as_ref().map_or(0, Vec::len)])
        .collect();
    let mut claimed: HashMap<String, usize> = HashMap::new();
    for sticky in [true, false] {
        for (i, list) in lists.iter().enumerate() {
            let Some(list) = list else { continue };
            let (uname, mode) = &upstreams[i];
            for (j, t) in list.iter().enumerate() {
                let Some(original) = t[key].as_str() else {
                    continue;
                };
                if names[i][j].is_some() {
                    continue;
                }
                let Some((public, renamed)) = proposed_name(
                    kind,
                    sticky,
                    given.get(&(uname.as_str(), original)).copied(),
                    (uname, *mode),
                    original,
                    &count,
                    &claimed,
                ) else {
                    continue;
                };
                let why = refusal_of(kind, &public, uname, upstreams, &claimed);
                if let Some(why) = why {
                    if sticky {
                        continue;
                    }
                    cat.conflicts.push(Conflict {
                        upstream: uname.clone(),
                        original: original.to_string(),
                        public,
                        why,
                    });
                    continue;
                }
                if renamed {
                    cat.conflicts.push(Conflict {
                        upstream: uname.clone(),
                        original: original.to_string(),
                        public: public.clone(),
                        why: "prefixed: another upstream lists the same name",
                    });
                }
                claimed.insert(public.clone(), i);
                names[i][j] = Some(public);
            }
        }
    }
    fill(&mut cat, kind, upstreams, &lists, names);
    cat.version = hash(&cat.items);
    cat
}

/// The key an item of `upstream` (its name and mode) listing `original`
/// would take, and whether it is prefixed because of a clash. In the
/// sticky pass only the key the last listing gave it (`given`), where the
/// upstream's mode could give it now; `None`: none this pass.
fn proposed_name(
    kind: Kind,
    sticky: bool,
    given: Option<&str>,
    (uname, mode): (&str, PrefixMode),
    original: &str,
    count: &HashMap<&str, usize>,
    claimed: &HashMap<String, usize>,
) -> Option<(String, bool)> {
    let bare = || original.to_string();
    let prefixed = || format!("{uname}.{original}");
    if sticky {
        return match given {
            Some(p) if p == original && (mode != PrefixMode::Always || !kind.renamed()) => {
                Some((bare(), false))
            }
            Some(p) if kind.renamed() && mode != PrefixMode::Never && p == prefixed() => {
                // Under `on_conflict`, a prefix is a clash's.
                Some((prefixed(), mode == PrefixMode::OnConflict))
            }
            _ => None,
        };
    }
    if !kind.renamed() {
        return Some((bare(), false));
    }
    Some(match mode {
        PrefixMode::Always => (prefixed(), false),
        PrefixMode::Never => (bare(), false),
        PrefixMode::OnConflict
            if count.get(original).copied().unwrap_or(0) > 1 || claimed.contains_key(original) =>
        {
            (prefixed(), true)
        }
        PrefixMode::OnConflict => (bare(), false),
    })
}

/// Why `public` cannot be the key of an item of upstream `own`, if it
/// cannot: not a tool name MCP allows, in another upstream's namespace,
/// or taken already.
fn refusal_of(
    kind: Kind,
    public: &str,
    own: &str,
    upstreams: &[(String, PrefixMode)],
    claimed: &HashMap<String, usize>,
) -> Option<&'static str> {
    let foreign = public
        .split_once('.')
        .is_some_and(|(ns, _)| ns != own && upstreams.iter().any(|(name, _)| name == ns));
    if kind == Kind::Tools && !protocol::valid_tool_name(public) {
        Some("a tool name is 1 to 128 characters of [A-Za-z0-9_.-]")
    } else if kind.renamed() && foreign {
        Some("in another upstream's namespace")
    } else if claimed.contains_key(public) {
        Some("taken by another upstream")
    } else {
        None
    }
}

/// How many upstreams want each bare name (an always-prefixed one never
/// does: counting its names renamed another upstream's tool at start, off
/// the rules written for it).
fn bare_counts<'a>(
    kind: Kind,
    upstreams: &[(String, PrefixMode)],
    lists: &'a [Option<Vec<Value>>],
) -> HashMap<&'a str, usize> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (i, list) in lists.iter().enumerate() {
        let Some(list) = list else { continue };
        if kind.renamed() && upstreams[i].1 == PrefixMode::Always {
            continue;
        }
        for t in list {
            if let Some(n) = t[kind.key()].as_str() {
                *count.entry(n).or_default() += 1;
            }
        }
    }
    count
}

/// The catalog's items and routes, each item under the public name it was
/// given (`names[upstream][item]`; `None`: left out).
fn fill(
    cat: &mut Catalog,
    kind: Kind,
    upstreams: &[(String, PrefixMode)],
    lists: &[Option<Vec<Value>>],
    mut names: Vec<Vec<Option<String>>>,
) {
    let key = kind.key();
    let labels: Vec<Arc<str>> = upstreams
        .iter()
        .map(|(n, _)| Arc::from(n.as_str()))
        .collect();
    for (i, list) in lists.iter().enumerate() {
        let Some(list) = list else { continue };
        for (j, t) in list.iter().enumerate() {
            let Some(public) = names[i][j].take() else {
                continue;
            };
            let original = t[key].as_str().unwrap_or_default();
            let mut shown = t.clone();
            shown[key] = Value::String(public.clone());
            let route = Route {
                upstream: i,
                label: labels[i].clone(),
                original: original.into(),
                public: public.as_str().into(),
            };
            cat.routes.insert(public, route);
            cat.items.push(shown);
        }
    }
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
            &Catalog::default(),
        );
        assert_eq!(keys(&c, "name"), vec!["a.echo", "x", "b.echo", "y", "c.z"]);
        assert_eq!(
            c.routes["b.echo"],
            Route {
                upstream: 1,
                label: "b".into(),
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
            &Catalog::default(),
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
            &Catalog::default(),
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
            &Catalog::default(),
        );
        assert_eq!(template_route(&t, "users://admins/7"), Some(1));
        assert_eq!(template_route(&t, "users://42"), Some(0));
        assert_eq!(template_route(&t, "other://x"), None);
    }

    #[test]
    fn a_clash_never_renames_a_tool_already_listed_and_moves_no_name() {
        let ups = vec![
            ("up".to_string(), PrefixMode::OnConflict),
            ("other".to_string(), PrefixMode::OnConflict),
            ("late".to_string(), PrefixMode::Never),
        ];
        let first = assemble_named(
            Kind::Tools,
            &ups,
            vec![
                items("name", &["delete_all"]),
                items("name", &["x"]),
                items("name", &["y"]),
            ],
            &Catalog::default(),
        );
        assert_eq!(keys(&first, "name"), vec!["delete_all", "x", "y"]);
        // `other` starts to publish `delete_all`, and `late` too: the
        // first keeps its name, the newcomer gets its prefix, and `late`
        // (which has none) is left out.
        let second = assemble_named(
            Kind::Tools,
            &ups,
            vec![
                items("name", &["delete_all"]),
                items("name", &["x", "delete_all"]),
                items("name", &["y", "delete_all"]),
            ],
            &first,
        );
        assert_eq!(
            keys(&second, "name"),
            vec!["delete_all", "x", "other.delete_all", "y"]
        );
        assert_eq!(second.routes["delete_all"].upstream, 0);
        assert_eq!(
            second.conflicts,
            vec![
                Conflict {
                    upstream: "other".into(),
                    original: "delete_all".into(),
                    public: "other.delete_all".into(),
                    why: "prefixed: another upstream lists the same name",
                },
                Conflict {
                    upstream: "late".into(),
                    original: "delete_all".into(),
                    public: "delete_all".into(),
                    why: "taken by another upstream",
                }
            ]
        );
        // When the first stops publishing it, the newcomer keeps its
        // prefixed name (a rule on `other.delete_all` still holds).
        let third = assemble_named(
            Kind::Tools,
            &ups,
            vec![
                items("name", &[]),
                items("name", &["x", "delete_all"]),
                items("name", &["y"]),
            ],
            &second,
        );
        assert_eq!(keys(&third, "name"), vec!["x", "other.delete_all", "y"]);
        // Resources: a URI stays with the upstream that had it, whichever
        // is listed first.
        let r1 = assemble_named(
            Kind::Resources,
            &ups,
            vec![items("uri", &[]), items("uri", &["bank://ledger"]), None],
            &Catalog::default(),
        );
        let r2 = assemble_named(
            Kind::Resources,
            &ups,
            vec![
                items("uri", &["bank://ledger"]),
                items("uri", &["bank://ledger"]),
                None,
            ],
            &r1,
        );
        assert_eq!(r2.routes["bank://ledger"].upstream, 1);
    }

    #[test]
    fn an_always_prefixed_upstream_never_renames_another_upstreams_tool() {
        let ups = vec![
            ("demo".to_string(), PrefixMode::OnConflict),
            ("evil".to_string(), PrefixMode::Always),
        ];
        let c = assemble_named(
            Kind::Tools,
            &ups,
            vec![items("name", &["records"]), items("name", &["records"])],
            &Catalog::default(),
        );
        // `deny tool = "records"` keeps applying to demo's.
        assert_eq!(keys(&c, "name"), vec!["records", "evil.records"]);
        assert!(c.conflicts.is_empty(), "{:?}", c.conflicts);
        // A real clash is on /stats, as a rename.
        let ups = vec![
            ("demo".to_string(), PrefixMode::OnConflict),
            ("other".to_string(), PrefixMode::OnConflict),
        ];
        let c = assemble_named(
            Kind::Tools,
            &ups,
            vec![items("name", &["records"]), items("name", &["records"])],
            &Catalog::default(),
        );
        assert_eq!(keys(&c, "name"), vec!["demo.records", "other.records"]);
        let renamed: Vec<&str> = c.conflicts.iter().map(|c| c.public.as_str()).collect();
        assert_eq!(renamed, vec!["demo.records", "other.records"]);
        let again = assemble_named(
            Kind::Tools,
            &ups,
            vec![items("name", &["records"]), items("name", &["records"])],
            &c,
        );
        assert_eq!(
            again.conflicts, c.conflicts,
            "still listed on the next listing"
        );
    }

    #[test]
    fn no_upstream_may_publish_a_name_in_another_upstream_s_namespace() {
        let ups = vec![
            ("evil".to_string(), PrefixMode::Never),
            ("bank".to_string(), PrefixMode::Always),
            ("shop".to_string(), PrefixMode::OnConflict),
        ];
        let c = assemble_named(
            Kind::Tools,
            &ups,
            vec![
                items("name", &["bank.transfer", "evil.own", "bankish.x"]),
                items("name", &["transfer"]),
                items("name", &["bank.refund", "shop.sale"]),
            ],
            &Catalog::default(),
        );
        assert_eq!(
            keys(&c, "name"),
            vec!["evil.own", "bankish.x", "bank.transfer", "shop.sale"]
        );
        assert_eq!(c.routes["bank.transfer"].upstream, 1);
        let why: Vec<(&str, &str)> = c
            .conflicts
            .iter()
            .map(|c| (c.upstream.as_str(), c.public.as_str()))
            .collect();
        assert_eq!(
            why,
            vec![("evil", "bank.transfer"), ("shop", "bank.refund")]
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(parse_cursor(&cursor(0xabc, 40)), Some((0xabc, 40)));
        assert_eq!(parse_cursor("not a cursor!"), None);
    }
}
