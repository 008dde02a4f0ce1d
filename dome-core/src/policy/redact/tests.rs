use super::*;
use serde_json::json;

fn all() -> Redactor {
    Redactor::new(&DETECTORS.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

#[test]
fn each_detector_finds_its_kind_and_nothing_else() {
    let r = all();
    let mut c = Counts::default();
    let text = "mail ann@acme.test, card 4111 1111 1111 1111, not a card 4111 1111 1111 1112, \
                ssn 123-45-6789, key sk_live_abcdefghijklmnopqrst, \
                jwt eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl, \
                -----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY----- order 12345";
    let out = r.text(text, false, &mut c);
    for secret in [
        "ann@acme.test",
        "4111 1111 1111 1111",
        "123-45-6789",
        "sk_live_",
        "eyJhbGci",
        "MIIB",
    ] {
        assert!(!out.contains(secret), "{secret} left in: {out}");
    }
    assert!(
        out.contains("4111 1111 1111 1112"),
        "a non-Luhn number stays: {out}"
    );
    assert!(out.contains("order 12345"));
    assert_eq!(c.0, [1, 1, 1, 1, 1, 1, 0], "{out}");
}

#[test]
fn structured_content_keeps_its_shape_and_schema() {
    let r = Redactor::new(&["email".into(), "card".into(), "regex:ACCT-\\d+".into()]).unwrap();
    let mut result = json!({
        "content": [{"type": "text", "text": "[{\"email\":\"bob@x.test\"}]"}, {"type": "image", "data": "bob@x.test"}],
        "structuredContent": {"rows": [{"email": "bob@x.test", "card": "5555555555554444", "n": 7, "note": "ACCT-991"}]},
    });
    let schema = json!({"type": "object", "properties": {"rows": {"type": "array", "items": {
        "type": "object", "properties": {"email": {"type": "string", "format": "email"}, "card": {"type": "string"}}}}}});
    let c = r.result(&mut result, &schema);
    let row = &result["structuredContent"]["rows"][0];
    assert_eq!(row["email"], "redacted@redacted.invalid");
    assert_eq!(row["card"], "[REDACTED:card]");
    assert_eq!(row["n"], 7);
    assert_eq!(row["note"], "[REDACTED]");
    assert!(
        !result["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("bob@")
    );
    assert_eq!(
        result["content"][1]["data"], "bob@x.test",
        "only text content is text"
    );
    assert_eq!(c.total(), 4);
}

#[test]
fn every_kind_of_result_loses_its_data_but_not_its_protocol_fields() {
    let r = Redactor::new(&["email".into(), "card".into(), "jwt".into()]).unwrap();
    let mut result = json!({
        "content": [
            {"type": "resource", "resource": {"uri": "u://a", "mimeType": "text/plain",
                                              "text": "to a@x.test", "blob": "4111111111111111"}},
            {"type": "resource_link", "uri": "u://b", "name": "b@x.test", "description": "for b@x.test"},
            {"type": "audio", "mimeType": "audio/wav", "data": "4111111111111111"},
            {"type": "text", "text": "c@x.test", "_meta": {"k": "d@x.test"}}
        ],
        "messages": [{"role": "user", "content": {"type": "text", "text": "hi e@x.test"}}],
        "completion": {"values": ["f@x.test", "other"], "total": 2},
        "nextCursor": "g@x.test",
        "requestState": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlc2lnbmF0dXJl",
        "_meta": {"trace": "h@x.test"}
    });
    let c = r.result(&mut result, &Value::Null);
    let text = result.to_string();
    for gone in ["a@x", "b@x", "c@x", "e@x", "f@x"] {
        assert!(!text.contains(gone), "{gone} left in {text}");
    }
    for kept in ["g@x", "u://a", "audio/wav"] {
        assert!(text.contains(kept), "{kept} was touched: {text}");
    }
    assert_eq!(result["content"][0]["resource"]["blob"], "4111111111111111");
    assert_eq!(result["content"][2]["data"], "4111111111111111");
    assert_eq!(result["completion"]["values"][1], "other");
    assert!(
        result["requestState"].as_str().unwrap().starts_with("eyJ"),
        "an opaque token the upstream needs back"
    );
    assert_eq!(c.0[0], 8, "{text}");
}

#[test]
fn meta_is_data_too_but_for_the_ids_in_it() {
    let r = Redactor::new(&["email".into(), "card".into()]).unwrap();
    let mut result = json!({
        "content": [{"type": "text", "text": "hi", "_meta": {"owner": "a@x.test"}}],
        "_meta": {"trace": "b@x.test", "nested": [{"who": "c@x.test"}],
                  "progressToken": "d@x.test",
                  "io.modelcontextprotocol/related-task": {"taskId": "4111111111111111"},
                  "e@x.test": "a key is a name"}
    });
    let c = r.result(&mut result, &Value::Null);
    let text = result.to_string();
    for gone in ["a@x", "b@x", "c@x"] {
        assert!(!text.contains(gone), "{gone} left in {text}");
    }
    assert_eq!(result["_meta"]["progressToken"], "d@x.test", "{text}");
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/related-task"]["taskId"],
        "4111111111111111"
    );
    assert_eq!(result["_meta"]["e@x.test"], "a key is a name");
    assert_eq!(c.0[0], 3, "{text}");
    let mut params =
        json!({"message": "m", "_meta": {"who": "f@x.test", "progressToken": "g@x.test"}});
    assert_eq!(r.params(&mut params).0[0], 1);
    assert_eq!(params["_meta"]["who"], "[REDACTED:email]");
    assert_eq!(params["_meta"]["progressToken"], "g@x.test");
}

#[test]
fn secrets_hidden_with_invisible_or_fullwidth_characters_are_found() {
    let r = all();
    let cases = [
        // Zero-width space, soft hyphen, word joiner inside an address.
        (
            "write to ann\u{200b}@acme\u{ad}.te\u{2060}st today",
            "email",
        ),
        // Fullwidth forms throughout.
        ("ａｎｎ＠ａｃｍｅ．ｔｅｓｔ", "email"),
        // A card number in fullwidth digits with a zero-width joiner.
        (
            "card ４１１１ １１１１\u{200d} １１１１ １１１１ ok",
            "card",
        ),
        // A key split by a zero-width non-joiner: no tail may be left.
        ("key sk_live_abcdefgh\u{200c}ijklmnopqrst end", "api_key"),
        // Mathematical bold letters and a combining overlay.
        ("𝐚𝐧𝐧@acme.t\u{336}est", "email"),
    ];
    for (text, kind) in cases {
        let mut c = Counts::default();
        let out = r.text(text, false, &mut c);
        assert_eq!(c.total(), 1, "{text:?} -> {out:?}");
        assert!(
            out.contains(&format!("[REDACTED:{kind}]")),
            "{text:?} -> {out:?}"
        );
        for secret in [
            "ann",
            "ａｎｎ",
            "𝐚𝐧𝐧",
            "４１１１",
            "1111",
            "ijklmnop",
            "abcdefgh",
        ] {
            assert!(!out.contains(secret), "{secret} left in {out:?}");
        }
        assert!(
            !out.contains(['\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{ad}']),
            "the hidden characters go with the secret: {out:?}"
        );
    }
    // Text around is untouched; text without secrets is not rewritten.
    let mut c = Counts::default();
    let out = r.text("ｈｅｌｌｏ ann\u{200b}@acme.test ｗｏｒｌｄ", false, &mut c);
    assert_eq!(out, "ｈｅｌｌｏ [REDACTED:email] ｗｏｒｌｄ");
    assert!(matches!(
        r.text("ｈｅｌｌｏ\u{200b} wörld 1234", false, &mut c),
        Cow::Borrowed(_)
    ));
    // Many hidden secrets in one text: each found, in linear time.
    let many = "ann\u{200b}@acme.test ".repeat(20_000);
    let mut c = Counts::default();
    let out = r.text(&many, false, &mut c);
    assert_eq!(c.0[0], 20_000);
    assert_eq!(out, "[REDACTED:email] ".repeat(20_000));
    // Keys are folded too.
    let mut v = json!({"ａ＠ｘ．ｔｅｓｔ": 1});
    r.value(&mut v, &Value::Null, &mut c);
    assert_eq!(v, json!({"[REDACTED:email]": 1}));
    // An e-mail field keeps a valid address.
    assert_eq!(
        r.text("ａ＠ｘ．ｔｅｓｔ", true, &mut c),
        "redacted@redacted.invalid"
    );
}

#[test]
fn values_nested_too_deep_are_withheld_not_passed_on_unread() {
    let r = Redactor::new(&["email".into()]).unwrap();
    let mut deep = json!("a@x.test");
    for _ in 0..MAX_REDACT_DEPTH + 10 {
        deep = json!([deep]);
    }
    let mut result = json!({"content": deep});
    r.result(&mut result, &Value::Null);
    let text = result.to_string();
    assert!(!text.contains("a@x.test"), "passed on unread");
    assert!(text.contains(TOO_DEEP), "{}", &text[..200.min(text.len())]);
    // Dropping the deep value must not recurse without bound either.
    let mut sc = json!({"structuredContent": {"a": deep.clone()}});
    r.result(&mut sc, &Value::Null);
    assert!(sc.to_string().contains(TOO_DEEP));
}

#[test]
fn keys_are_data_unless_the_schema_names_them() {
    let r = Redactor::new(&["email".into()]).unwrap();
    let mut sc = json!({"byUser": {"a@x.test": 1, "b@x.test": 2, "[REDACTED:email]": 3},
                        "c@x.test": {"format": "kept"}});
    let schema = json!({"properties": {"c@x.test": {"type": "object"}}});
    let mut c = Counts::default();
    r.value(&mut sc, &schema, &mut c);
    let by = sc["byUser"].as_object().unwrap();
    let mut values: Vec<i64> = by.values().filter_map(Value::as_i64).collect();
    values.sort();
    assert_eq!(values, [1, 2, 3], "no value lost: {sc}");
    assert!(!sc["byUser"].to_string().contains("@x.test"), "{sc}");
    assert!(
        by.contains_key("[REDACTED:email] 2") && by.contains_key("[REDACTED:email] 3"),
        "{sc}"
    );
    assert_eq!(sc["c@x.test"]["format"], "kept", "a named property stays");
    assert_eq!(c.0[0], 2);
}

#[test]
fn errors_and_messages_on_the_way_are_redacted() {
    let r = Redactor::new(&["email".into()]).unwrap();
    let mut error =
        json!({"code": -32000, "message": "no a@x.test", "data": {"who": ["b@x.test"]}});
    assert_eq!(r.error(&mut error).0[0], 2);
    assert_eq!(error["message"], "no [REDACTED:email]");
    assert_eq!(error["data"]["who"][0], "[REDACTED:email]");
    assert_eq!(error["code"], -32000);
    let mut params = json!({"progressToken": "c@x.test", "progress": 1, "message": "for d@x.test",
                            "_meta": {"x": "e@x.test"}});
    assert_eq!(r.params(&mut params).0[0], 2);
    assert_eq!(
        params["progressToken"], "c@x.test",
        "ties it to its request"
    );
    assert_eq!(params["message"], "for [REDACTED:email]");
    assert_eq!(params["_meta"]["x"], "[REDACTED:email]");
}

#[test]
fn unknown_detectors_and_bad_regexes_are_refused() {
    let unknown = Redactor::new(&["ssn".into()]).err().unwrap();
    assert_eq!(crate::error_chain(&unknown), "unknown detector `ssn`");
    let bad = Redactor::new(&["regex:(".into()]).err().unwrap();
    // What failed, then the regex compiler's own words.
    let text = crate::error_chain(&bad);
    assert!(
        text.starts_with("bad regex `(`: regex parse error"),
        "{text}"
    );
}
