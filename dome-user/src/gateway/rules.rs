//! What a caller may send: intents, resource URIs in their plain form,
//! arguments that are objects, ids and names within bounds, and the
//! request policy judges.

use super::*;

/// 404 for a session id Dome does not know (never issued, or ended).
/// A call as policy sees it, for `caller` (anonymous when `None`).
pub(super) fn policy_request<'a>(
    caller: Option<&'a Caller>,
    kind: &'a str,
    tool: &'a str,
    upstream: Option<&'a str>,
    intent: Option<&'a str>,
    args: Option<&'a Value>,
) -> crate::policy::compile::Request<'a> {
    crate::policy::compile::Request {
        tenant: caller.map(|c| c.agent.tenant.as_str()),
        agent: caller.map(|c| c.agent.id.as_str()),
        labels: caller.map_or(&[], |c| c.agent.labels.as_slice()),
        user: caller.and_then(|c| c.user.as_deref()),
        tool,
        kind,
        upstream,
        upstream_tool: None,
        intent,
        args,
    }
}

/// Header in which a caller may state its intent instead of `_meta`.
pub const H_INTENT: header::HeaderName = header::HeaderName::from_static("dome-intent");

/// The caller's stated intent: `params._meta["dome/intent"]`, else the
/// `Dome-Intent` header.
pub(super) fn intent_of(ctx: &RequestCtx, e: &Envelope) -> Option<String> {
    e.dome_meta
        .iter()
        .find(|(k, _)| k == INTENT_META)
        .and_then(|(_, v)| serde_json::from_str::<String>(v).ok())
        .or_else(|| ctx.intent.clone())
        // Blank is no intent: `" "` or a zero-width space met
        // `require_intent`.
        .filter(|i| {
            i.chars()
                .any(|c| !c.is_whitespace() && !crate::terminal::is_unsafe(c))
        })
}

pub use dome_core::rules::*;

#[cfg(test)]
mod uri_tests {
    use super::*;

    #[test]
    pub(super) fn a_blank_intent_is_no_intent() {
        let with = |text: &str| Envelope {
            dome_meta: vec![(INTENT_META.to_string(), text.to_string())],
            ..Default::default()
        };
        for blank in [r#"" ""#, r#""\u200b""#, r#""\t \n""#, r#""""#] {
            assert_eq!(
                intent_of(&RequestCtx::default(), &with(blank)),
                None,
                "{blank}"
            );
        }
        assert_eq!(
            intent_of(&RequestCtx::default(), &with(r#"" refund ""#)).as_deref(),
            Some(" refund ")
        );
    }
}
