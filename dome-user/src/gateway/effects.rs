//! What the decision core returned, carried out: admission's effects
//! (a strike, the shadow policy's tally) and the fields the call's audit
//! record learns, and escalation's strikes against a caller or, for an
//! anonymous one, its source address (`identity::escalation` applies the
//! block a strike may bring).

use super::*;

impl Gateway {
    /// Carries out what admission returned: the strike, the shadow
    /// policy's tally, and what the record learns.
    pub(super) fn apply(
        &self,
        ctx: &RequestCtx,
        caller: Option<&Caller>,
        effects: admit::Effects,
        noted: admit::Noted,
        call: &mut Call,
        facts: Option<&admit::Facts<'_>>,
    ) {
        let denied = noted.decision == Some(crate::audit::record::Decision::Deny);
        if let Some(d) = noted.decision {
            call.decision = d;
        }
        if noted.rule.is_some() {
            call.rule = noted.rule;
        }
        if noted.args.is_some() {
            call.args = noted.args;
        }
        if let Some(shadowed) = effects.shadow {
            SHADOW_DECISIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if shadowed.active != shadowed.shadow {
                SHADOW_DISAGREEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    tool = facts.map_or("-", |f| f.name),
                    agent = caller.map_or("-", |c| c.agent.id.as_str()),
                    active = ?shadowed.active,
                    shadow = ?shadowed.shadow,
                    shadow_version = %self.authority.shadow.as_ref().map_or("-", |s| s.version.as_str()),
                    "shadow policy disagrees"
                );
            }
        }
        if let Some(why) = effects.strike {
            if denied {
                tracing::debug!(tool = facts.map_or("-", |f| f.name), rule = ?call.rule, "policy denied a call");
            }
            self.strike(ctx, caller, why);
        }
    }

    /// A strike against whoever sent the request: the calling agent
    /// (`caller`, else the request's own), never the address it shares
    /// with others; an anonymous caller's source address.
    pub(super) fn strike(&self, ctx: &RequestCtx, caller: Option<&Caller>, why: &str) {
        let who = match caller.or(ctx.caller.as_ref()) {
            Some(c) => Subject::Agent {
                id: c.agent.id.clone(),
                slot: c.agent.slot,
            },
            None => match ctx.source {
                Some(ip) => Subject::Source(ip),
                None => return,
            },
        };
        self.authority.escalation.strike(
            who,
            why,
            crate::clock::monotonic_ns(),
            crate::clock::unix_s(),
        );
    }
}
