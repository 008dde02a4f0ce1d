//! Argument predicates under hostile spellings: numbers as strings,
//! regexes over every string, paths in every spelling, types they cannot
//! measure. Each fails closed where it cannot judge.

use super::*;

use Effect::{Allow as A, Deny as D};

/// `{"v": x}` nested `n` arrays deep.
fn nested(x: Value, n: usize) -> Value {
    let mut v = x;
    for _ in 0..n {
        v = json!([v]);
    }
    json!({ "v": v })
}

#[test]
fn a_deny_rule_on_a_number_also_denies_the_number_written_as_a_string() {
    let cases = [
        (json!({"v": 5000}), D),
        (json!({"v": "5000"}), D),
        (json!({"v": " 5_000 "}), D),
        (json!({"v": "5e3"}), D),
        (json!({"v": "0x1388"}), D),
        (json!({"v": "+5000"}), D),
        (json!({"v": "05000"}), D),
        (json!({"v": "５０００"}), D),
        (json!({"v": "٥٠٠٠"}), D),
        (json!({"v": 5e3}), D),
        (json!({"v": 5000.0}), D),
        // Rounded up by an upstream that wants an integer.
        (json!({"v": 1000.5}), D),
        (json!({"v": "1000.5"}), D),
        (json!({"v": [5000]}), D),
        (json!({"v": ["5000"]}), D),
        (json!({"v": {"x": 5000}}), D),
        (json!({"v": {"5000": 1}}), D),
        // Not a number at all: cannot be judged, counts against the caller.
        (json!({"v": "abc"}), D),
        (json!({"v": true}), D),
        (json!({"v": null}), D),
        (json!({"v": [1, "x"]}), D),
        // Plainly below the limit.
        (json!({"v": 5}), A),
        (json!({"v": "5"}), A),
        (json!({"v": "-12.50"}), A),
        (json!({"v": 1000.4}), D),
        (json!({"v": 999.5}), A),
        (json!({"v": 1001e-3}), A),
        (json!({"v": [5, "7"]}), A),
        (json!({"v": []}), A),
        (json!({"other": 5000}), A),
    ];
    assert_effects(r#"{ path = "/v", op = "range", min = 1001 }"#, true, &cases);
}

#[test]
fn an_allow_rule_on_a_number_takes_only_a_genuine_number_in_range() {
    let cases = [
        (json!({"v": 5}), A),
        (json!({"v": 5.0}), A),
        (json!({"v": 5.5}), A),
        (json!({"v": 10}), A),
        (json!({"v": 10.5}), D),
        (json!({"v": 0.5}), D),
        (json!({"v": "5"}), D),
        (json!({"v": [5]}), D),
        (json!({"v": {"a": 5}}), D),
        (json!({"v": true}), D),
        (json!({"v": null}), D),
        (json!({}), D),
    ];
    assert_effects(
        r#"{ path = "/v", op = "range", min = 1, max = 10 }"#,
        false,
        &cases,
    );
}

#[test]
fn a_deny_regex_applies_to_every_string_under_its_path() {
    let cases = [
        (json!({"v": "rm -rf /"}), D),
        (json!({"v": ["rm -rf /"]}), D),
        (json!({"v": ["ls", ["rm -rf /"]]}), D),
        (json!({"v": {"a": {"b": "rm -rf /"}}}), D),
        (json!({"v": {"rm -rf /": "x"}}), D),
        (nested(json!("rm -rf /"), 20), D),
        // Too deep to look into: counts against the caller.
        (nested(json!("ls"), 40), D),
        // Not a string: a regex cannot judge it.
        (json!({"v": 5}), D),
        (json!({"v": ["ls", null]}), D),
        (json!({"v": "ls -l"}), A),
        (json!({"v": ["ls", {"a": "cat x"}]}), A),
        (nested(json!("ls"), 20), A),
        (json!({"v": []}), A),
        (json!({"other": "rm -rf /"}), A),
    ];
    assert_effects(
        r#"{ path = "/v", op = "regex", value = "rm\\s+-rf" }"#,
        true,
        &cases,
    );
    let prefix = [
        (json!({"v": ["secret/x"]}), D),
        (json!({"v": "public/x"}), A),
    ];
    assert_effects(
        r#"{ path = "/v", op = "prefix", value = "secret" }"#,
        true,
        &prefix,
    );
}

#[test]
fn an_allow_regex_or_prefix_takes_only_a_string() {
    let cases = [
        (json!({"v": "ping"}), A),
        (json!({"v": "PING"}), D),
        (json!({"v": ["ping"]}), D),
        (json!({"v": {"a": "ping"}}), D),
        (json!({"v": 5}), D),
        (json!({"v": null}), D),
    ];
    assert_effects(
        r#"{ path = "/v", op = "regex", value = "^[a-z]+$" }"#,
        false,
        &cases,
    );
    let cases = [(json!({"v": "ord-1"}), A), (json!({"v": ["ord-1"]}), D)];
    assert_effects(
        r#"{ path = "/v", op = "prefix", value = "ord-" }"#,
        false,
        &cases,
    );
}

#[test]
fn eq_and_in_in_a_deny_rule_compare_every_part_by_its_readings() {
    let cases = [
        (json!({"v": "admin"}), D),
        (json!({"v": ["guest", "admin"]}), D),
        (json!({"v": {"role": "root"}}), D),
        (json!({"v": {"admin": true}}), D),
        // A number or null cannot be compared with names: fail closed.
        (json!({"v": 5}), D),
        (json!({"v": null}), D),
        (json!({"v": "bob"}), A),
        (json!({"v": ["bob", "ann"]}), A),
    ];
    assert_effects(
        r#"{ path = "/v", op = "in", values = ["root", "admin"] }"#,
        true,
        &cases,
    );
    let cases = [
        (json!({"v": 0}), D),
        (json!({"v": 0.4}), D),
        (json!({"v": -0.5}), D),
        (json!({"v": "0"}), D),
        (json!({"v": "00"}), D),
        (json!({"v": [3, 0]}), D),
        (json!({"v": 1}), A),
        (json!({"v": "2"}), A),
        (json!({"v": 1.5}), A),
    ];
    assert_effects(r#"{ path = "/v", op = "eq", value = 0 }"#, true, &cases);
    let cases = [
        (json!({"v": true}), D),
        (json!({"v": "true"}), D),
        (json!({"v": 1}), D),
        (json!({"v": false}), A),
        (json!({"v": [false]}), A),
    ];
    assert_effects(r#"{ path = "/v", op = "eq", value = true }"#, true, &cases);
    // An allow takes only an equal value (numbers by value).
    let cases = [
        (json!({"v": "EUR"}), A),
        (json!({"v": ["EUR"]}), D),
        (json!({"v": "eur"}), D),
        (json!({"v": 7}), A),
        (json!({"v": 7.0}), A),
        (json!({"v": "7"}), D),
    ];
    assert_effects(
        r#"{ path = "/v", op = "in", values = ["EUR", 7] }"#,
        false,
        &cases,
    );
}

#[test]
fn max_len_on_a_type_it_cannot_measure_fails_closed() {
    let deny = [
        (json!({"v": "ab"}), D),
        (json!({"v": [1, 2]}), D),
        (json!({"v": 5}), D),
        (json!({"v": {"a": 1}}), D),
        (json!({"v": "abcd"}), A),
    ];
    assert_effects(r#"{ path = "/v", op = "max_len", max = 3 }"#, true, &deny);
    let allow = [
        (json!({"v": "ab"}), A),
        (json!({"v": [1, 2]}), A),
        (json!({"v": 5}), D),
        (json!({"v": {"a": 1}}), D),
        (json!({"v": "abcd"}), D),
    ];
    assert_effects(r#"{ path = "/v", op = "max_len", max = 3 }"#, false, &allow);
}

#[test]
fn a_deny_path_prefix_sees_through_every_spelling_of_the_path() {
    let under = [
        "/etc",
        "/etc/",
        "/etc/shadow",
        "//etc/shadow",
        "/./etc/x",
        "/tmp/../etc/x",
        "/../../etc/x",
        "/etc/./ssh/../shadow",
        "/tmp/%2e%2e/etc/x",
        "/tmp/%2E%2E%2Fetc/x",
        "%2fetc%2fshadow",
        "/tmp/%252e%252e/etc/x",
        "\\etc\\shadow",
        "/tmp\\..\\etc\\shadow",
        "/tmp/x#/../../etc/shadow",
    ];
    let unjudgeable = [
        "etc/shadow",
        "../etc/shadow",
        "~/x",
        "C:\\etc",
        "file:///etc/shadow",
        "/srv/x\u{0}",
        "/srv/%00x",
        "/srv/%25252525252e",
    ];
    let elsewhere = [
        "/etcetera/x",
        "/tmp/etc/x",
        "/srv/etc",
        "/srv/100%.txt",
        "/tmp/%2e%2e%2fsrv/x",
        "/srv/a\\b",
    ];
    let mut cases = Vec::new();
    for p in under.iter().chain(&unjudgeable) {
        cases.push((json!({ "v": p }), D));
    }
    for p in elsewhere {
        cases.push((json!({ "v": p }), A));
    }
    cases.push((json!({"v": ["/srv/a", "//etc/shadow"]}), D));
    cases.push((json!({"v": {"to": "/tmp/../etc/x"}}), D));
    cases.push((json!({"v": 5}), D));
    cases.push((json!({"v": ["/srv/a", "/srv/b"]}), A));
    assert_effects(
        r#"{ path = "/v", op = "path_prefix", value = "/etc" }"#,
        true,
        &cases,
    );
    // The prefix itself is normalised.
    assert_effects(
        r#"{ path = "/v", op = "path_prefix", value = "//etc/./" }"#,
        true,
        &[
            (json!({"v": "/tmp/../etc/x"}), D),
            (json!({"v": "/etcx"}), A),
        ],
    );
}

#[test]
fn an_allow_path_prefix_needs_every_reading_inside() {
    let cases = [
        (json!({"v": "/srv/reports"}), A),
        (json!({"v": "/srv/reports/q1.pdf"}), A),
        (json!({"v": "/srv//reports/./q1.pdf"}), A),
        (json!({"v": "/srv/reports/a/../q1.pdf"}), A),
        (json!({"v": "/srv/reports/100%25.pdf"}), A),
        (json!({"v": "/srv/reports/../secret"}), D),
        (json!({"v": "/srv/reports/%2e%2e/secret"}), D),
        (json!({"v": "/srv/reports/%252e%252e/secret"}), D),
        (json!({"v": "/srv/reports\\..\\secret"}), D),
        (json!({"v": "/srv/reportsX/a"}), D),
        (json!({"v": "reports/a"}), D),
        (json!({"v": "/srv/reports/a\u{0}"}), D),
        (json!({"v": ["/srv/reports/a"]}), D),
        (json!({"v": 5}), D),
    ];
    assert_effects(
        r#"{ path = "/v", op = "path_prefix", value = "/srv/reports" }"#,
        false,
        &cases,
    );
}

#[test]
fn a_path_prefix_must_be_an_absolute_path() {
    for bad in [r#", value = "etc""#, r#", value = 5"#, ""] {
        let text = format!(
            "[[rule]]\nid = \"a\"\neffect = \"deny\"\n[rule.when]\nargs = [{{ path = \"/p\", op = \"path_prefix\"{bad} }}]\n"
        );
        let e = compile(&[("p.toml".into(), text)]).unwrap_err();
        assert!(e.field.starts_with("rule[0].when.args[0]"), "{e}");
    }
}

#[test]
fn a_bad_argument_condition_is_named_with_its_reason_in_words() {
    // The reasons operators read (typed inside the compiler, text here).
    for (cond, reason) in [
        (
            r#"{ path = "p", op = "present" }"#,
            "`p` is not a JSON pointer (it starts with `/`)",
        ),
        (r#"{ path = "/p", op = "eq" }"#, "`Eq` needs `value`"),
        (
            r#"{ path = "/p", op = "in" }"#,
            "`in` needs a non-empty `values`",
        ),
        (
            r#"{ path = "/p", op = "path_prefix", value = "etc" }"#,
            "`path_prefix` needs an absolute path `value` (starting with `/`)",
        ),
        (
            r#"{ path = "/p", op = "range" }"#,
            "`range` needs `min` and/or `max`, min ≤ max",
        ),
        (
            r#"{ path = "/p", op = "regex", value = "(" }"#,
            "bad regex: regex parse error:",
        ),
    ] {
        let text =
            format!("[[rule]]\nid = \"a\"\neffect = \"deny\"\n[rule.when]\nargs = [{cond}]\n");
        let e = compile(&[("p.toml".into(), text)]).unwrap_err();
        assert_eq!(e.field, "rule[0].when.args[0]", "{e}");
        assert!(e.reason.starts_with(reason), "{cond}: {e}");
    }
}

#[test]
fn plain_decimals_are_the_only_strings_read_as_numbers() {
    use crate::policy::compile::plain_decimal;
    for (s, f) in [
        ("0", 0.0),
        ("-0", 0.0),
        ("5000", 5000.0),
        ("-12.50", -12.5),
        ("0.5", 0.5),
    ] {
        assert_eq!(plain_decimal(s), Some(f), "{s}");
    }
    for s in [
        "", "-", "+5", " 5", "5 ", "5_000", "05", "5.", ".5", "5e3", "0x10", "inf", "NaN", "１",
        "1,000",
    ] {
        assert_eq!(plain_decimal(s), None, "{s:?}");
    }
}

#[test]
fn a_rule_naming_the_upstreams_own_tool_name_holds_whatever_its_public_name() {
    let text = "[[rule]]\nid = \"all\"\neffect = \"allow\"\n\n\
                [[rule]]\nid = \"no-delete\"\neffect = \"deny\"\n\
                [rule.when]\nupstream = \"bank\"\nupstream_tool = \"delete_*\"\n";
    let p = compile(&[("p.toml".into(), text.into())]).unwrap();
    let file: PolicyFile = toml::from_str(text).unwrap();
    let call = |tool, upstream, upstream_tool| Request {
        upstream: Some(upstream),
        upstream_tool,
        ..req(tool, None)
    };
    for (r, want) in [
        (call("delete_all", "bank", Some("delete_all")), Effect::Deny),
        (
            call("bank.delete_all", "bank", Some("delete_all")),
            Effect::Deny,
        ),
        (
            call("bank.delete_all", "shop", Some("delete_all")),
            Effect::Allow,
        ),
        (call("wipe", "bank", Some("delete_rows")), Effect::Deny),
        (call("delete_all", "bank", Some("list")), Effect::Allow),
        // Without the upstream's name, the public one stands for it.
        (call("delete_all", "bank", None), Effect::Deny),
    ] {
        assert_eq!(p.decide(&r).effect(), want, "{r:?}");
        assert_eq!(reference::decide(&file, &r).0, want, "{r:?}");
    }
}
