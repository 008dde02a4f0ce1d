//! Escalation's decisions on a virtual clock: (strikes, settings, now) →
//! (blocks, effects for the shell).

use std::hash::RandomState;

use super::*;

const S: u64 = 1_000_000_000;

fn small() -> EscalationConfig {
    EscalationConfig {
        enabled: true,
        max_strikes: 2,
        window_s: 60,
        block_s: 300,
    }
}

fn agent(slot: u32) -> Subject {
    Subject::Agent {
        id: format!("bot{slot}"),
        slot,
    }
}

#[test]
fn strikes_within_the_window_cross_and_old_ones_expire() {
    let mut s = Strikes::default();
    let who = Key::Source("10.0.0.9".parse().unwrap());
    assert!(!s.record(who, 0, 3, 10 * S));
    assert!(!s.record(who, 5 * S, 3, 10 * S));
    // The first strike has left the window by now: two in it.
    assert!(!s.record(who, 12 * S, 3, 10 * S));
    assert!(s.record(who, 12 * S, 3, 10 * S));
    // Counting starts again after a block.
    assert!(!s.record(who, 12 * S, 3, 10 * S));
    // Strikes long ago count for nothing.
    assert!(!s.record(who, 100 * S, 3, 10 * S));
    assert!(!s.record(who, 100 * S, 3, 10 * S));
    assert!(s.record(who, 100 * S, 3, 10 * S));
}

/// Found by probing: a full table dropped an arbitrary entry for each
/// new subject, so a flood of made-up claims made Dome forget the
/// strikes of the subject it hid (here an agent one strike from a block).
#[test]
fn a_flood_of_new_subjects_does_not_push_out_a_subject_near_its_block() {
    let mut s = Strikes::default();
    let window = 60 * S;
    let agent = Key::Agent(7);
    let stuffer = Key::Source("10.0.0.9".parse().unwrap());
    for _ in 0..4 {
        assert!(!s.record(agent, 0, 5, window));
        assert!(!s.record(stuffer, 0, 5, window));
    }
    for i in 0..(3 * MAX_TRACKED as u64) {
        assert!(!s.record(Key::Claim(i), 1 + i, 5, window));
        assert!(s.len() <= MAX_TRACKED);
    }
    assert!(s.record(agent, 2 * S, 5, window), "the agent was forgotten");
    assert!(
        s.record(stuffer, 2 * S, 5, window),
        "the source was forgotten"
    );
}

#[test]
fn the_strike_table_stays_bounded_under_a_flood_of_made_up_claims() {
    let (mut e, h) = (EscalationState::default(), RandomState::new());
    for i in 0..(MAX_TRACKED + 5_000) {
        let who = Subject::Claim(format!("agent a{i}"));
        e.strike(Key::of(&who, &h), who, "x", &small(), i as u64, 1000);
    }
    assert!(e.tracked() <= MAX_TRACKED, "{}", e.tracked());
}

/// What each subject's block asks of the shell: an agent's flows are
/// dropped in the kernel for `block_s`; a source's never are (its address
/// is shared behind a NAT); a claim's block is checked on the failure path
/// only, so nothing is published.
#[test]
fn the_block_each_subject_gets_and_what_the_shell_must_do() {
    let h = RandomState::new();
    let ip: IpAddr = "127.0.0.9".parse().unwrap();
    let rows = [
        (agent(7), Some((7, Duration::from_secs(300))), true),
        (Subject::Source(ip), None, true),
        (Subject::Claim("agent a".into()), None, false),
    ];
    for (who, kernel, publish) in rows {
        let mut e = EscalationState::default();
        let key = Key::of(&who, &h);
        assert_eq!(e.strike(key, who.clone(), "why", &small(), 0, 1000), None);
        assert!(!e.in_force(&key, 1000), "one strike blocks no one");
        let got = e.strike(key, who.clone(), "why", &small(), S, 1000);
        assert_eq!(
            got,
            Some(Escalated {
                key,
                kernel,
                publish
            }),
            "{who:?}"
        );
        assert!(e.in_force(&key, 1000) && e.in_force(&key, 1299));
        assert!(!e.in_force(&key, 1300), "{who:?}: ends after block_s");
        assert_eq!(e.view().contains_key(&key), publish, "{who:?}");
        let b = e.block(&key).unwrap();
        assert_eq!(
            (&b.subject, b.reason.as_str(), b.kernel),
            (&who, "why", false)
        );
        e.kernel_applied(key);
        assert!(e.block(&key).unwrap().kernel);
    }
}

#[test]
fn a_disabled_escalation_counts_nothing_and_blocks_no_one() {
    let mut e = EscalationState::default();
    let off = EscalationConfig {
        enabled: false,
        ..small()
    };
    for t in 0..10 {
        assert_eq!(e.strike(Key::Agent(1), agent(1), "x", &off, t, 1000), None);
    }
    assert_eq!(e.tracked(), 0);
}

#[test]
fn a_block_is_lifted_by_its_name_and_expires() {
    let mut e = EscalationState::default();
    for t in 0..2 {
        e.strike(Key::Agent(7), agent(7), "over budget", &small(), t, 1000);
    }
    let ip: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
    for t in 0..2 {
        e.strike(
            Key::Source(ip.to_canonical()),
            Subject::Source(ip),
            "malformed",
            &small(),
            t,
            1000,
        );
    }
    let view = e.view();
    assert!(blocked_in(&view, None, Some(7), 1000));
    assert!(blocked_in(&view, Some(ip), None, 1000), "mapped address");
    assert!(blocked_in(
        &view,
        Some("10.0.0.9".parse().unwrap()),
        None,
        1000
    ));
    assert!(!blocked_in(&view, None, Some(8), 1000));
    assert!(!blocked_in(&view, None, Some(7), 1300), "expired");
    assert_eq!(e.lift("identity/8"), None);
    let (k, b) = e.lift("identity/7").unwrap();
    assert_eq!((k, b.subject), (Key::Agent(7), agent(7)));
    assert!(!blocked_in(&e.view(), None, Some(7), 1000));
    e.expire(1300);
    assert_eq!(e.blocks().count(), 0, "the source's block ended");
}

/// A flood of blocked made-up claims keeps the block table bounded and
/// pushes out no agent's or source's block.
#[test]
fn claims_cannot_push_agents_and_sources_out_of_the_block_table() {
    let (mut e, h) = (EscalationState::default(), RandomState::new());
    let one = EscalationConfig {
        max_strikes: 1,
        ..small()
    };
    e.strike(Key::Agent(7), agent(7), "x", &one, 0, 1000);
    for i in 0..(MAX_BLOCKS + 100) {
        let who = Subject::Claim(format!("agent a{i}"));
        e.strike(Key::of(&who, &h), who, "x", &one, i as u64, 1000);
        assert!(e.blocks().count() <= MAX_BLOCKS);
    }
    assert!(e.in_force(&Key::Agent(7), 1000));
}

#[test]
fn a_failed_login_is_held_against_its_known_claim_else_its_source() {
    let ip: IpAddr = "127.0.0.9".parse().unwrap();
    let failure = |claim: Option<&str>, known: bool| Failure {
        status: http::StatusCode::UNAUTHORIZED,
        error: Some("invalid_token"),
        message: "invalid API key".into(),
        bad_credential: true,
        scope: None,
        refresh_issuer: None,
        claim: claim.map(str::to_string),
        claim_known: known,
        api_key: true,
    };
    assert_eq!(
        failure_subject(&failure(Some("agent a"), true), ip),
        Subject::Claim("agent a".into())
    );
    assert_eq!(
        failure_subject(&failure(Some("agent nobody"), false), ip),
        Subject::Source(ip),
        "a claim naming no one here is anonymous"
    );
    assert_eq!(
        failure_subject(&failure(None, false), ip),
        Subject::Source(ip)
    );
}
