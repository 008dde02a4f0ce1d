//! Argument paths against tool schemas, and redaction wherever an upstream can put data: results, meta, hidden text, questions to the client.

use super::*;

#[test]
fn argument_paths_the_tools_schema_cannot_hold_are_reported() {
    let policy = r#"
[[rule]]
id = "echo-typo"
effect = "allow"
[rule.when]
tool = "echo"
args = [{ path = "/mesage", op = "max_len", max = 10 }]
"#;
    let (_demo, dome, _) = start_with("policy-schema", &[], policy);
    let warnings = dome.stats_json()["policy_warnings"].clone();
    let w = warnings.as_array().unwrap();
    assert_eq!(w.len(), 1, "{warnings}");
    let line = w[0].as_str().unwrap();
    assert!(
        line.contains("echo-typo") && line.contains("/mesage") && line.contains("message"),
        "{line}"
    );
    let log = std::fs::read_to_string(dome.config.with_extension("log")).unwrap();
    assert!(log.contains("/mesage"), "logged at activation");
}

/// An upstream (Python SDK) that puts e-mail addresses everywhere a
/// response can hold them: embedded resources, resource links, object
/// keys, a JSON-RPC error, progress and log messages on the stream, a
/// resource, a prompt, completion values, and structured content nested
/// too deep to read. A rule's redactions reach all of them; what cannot be
/// read is withheld, naming the upstream; base64 image data is left
/// intact. The same calls under a rule without redactions show the
/// addresses, so the upstream really sends them.
#[test]
fn redaction_reaches_every_place_an_upstream_can_put_data() {
    let (_leaky, addr) = start_py_server("leaky_upstream.py", &[]);
    let (dome, _) = start_with_upstream(
        "policy-leaky",
        &format!("[[upstream]]\nname = \"leaky\"\nurl = \"http://{addr}/mcp\"\n"),
        r#"
[[rule]]
id = "leaky-redacted"
effect = "allow"
[rule.when]
agent = "support-bot"
upstream = "leaky"
[rule.obligations]
redact = ["email", "card"]

[[rule]]
id = "leaky-plain"
effect = "allow"
[rule.when]
agent = "sales-bot"
upstream = "leaky"
"#,
    );
    let leaky = Leaky(&dome);
    without_redactions_every_address_arrives(&leaky);
    content_of_every_kind_keys_and_errors_are_redacted(&leaky);
    progress_and_log_messages_on_the_way_are_redacted(&leaky);
    what_cannot_be_read_is_withheld_naming_the_upstream(&leaky);
    resources_prompts_and_completions_are_redacted(&leaky);

    let s = dome.stats_json();
    assert!(s["redactions"]["email"].as_u64().unwrap() >= 13, "{s}");
}

/// The leaky upstream behind Dome: what the steps of
/// [`redaction_reaches_every_place_an_upstream_can_put_data`] send it, each
/// answer's text as the agent of `key` gets it.
struct Leaky<'a>(&'a Dome);

impl Leaky<'_> {
    /// A `method` request (its `Mcp-Name`: `name`) with a progress token
    /// and log level in its `_meta`: the answer's text.
    fn send(&self, key: &str, method: &str, name: &str, params: Value) -> String {
        let mut params = params;
        params["_meta"] = json!({"progressToken": "p",
               "io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientCapabilities": {},
               "io.modelcontextprotocol/logLevel": "info"});
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        let (status, text) = post_text(self.0, key, method, name, &body.to_string());
        assert!(
            status != 0 && status < 500,
            "{method} {name}: {status} {text}"
        );
        text
    }

    fn tool(&self, key: &str, name: &str) -> String {
        self.send(key, "tools/call", name, json!({"name": name}))
    }

    fn read(&self, key: &str) -> String {
        self.send(
            key,
            "resources/read",
            "people://all",
            json!({"uri": "people://all"}),
        )
    }

    fn prompt(&self, key: &str) -> String {
        self.send(
            key,
            "prompts/get",
            "contact",
            json!({"name": "contact", "arguments": {"who": "zed@leak.test"}}),
        )
    }

    fn complete(&self, key: &str) -> String {
        self.send(
            key,
            "completion/complete",
            "contact",
            json!({"ref": {"type": "ref/prompt", "name": "contact"},
                   "argument": {"name": "who", "value": "m"}}),
        )
    }
}

/// The last JSON-RPC message of a body, plain JSON or SSE.
fn last(text: &str) -> Value {
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str(d.trim()).ok())
        .unwrap_or_else(|| serde_json::from_str(text).unwrap_or(Value::Null))
}

/// Without redactions every address arrives: the upstream leaks them.
fn without_redactions_every_address_arrives(leaky: &Leaky) {
    for (what, text) in [
        ("embedded", leaky.tool(SALES, "embedded")),
        ("keyed", leaky.tool(SALES, "keyed")),
        ("refuse", leaky.tool(SALES, "refuse")),
        ("chatty", leaky.tool(SALES, "chatty")),
        ("resource", leaky.read(SALES)),
        ("prompt", leaky.prompt(SALES)),
        ("completion", leaky.complete(SALES)),
    ] {
        assert!(text.contains("@leak.test"), "{what} leaks nothing: {text}");
    }
}

/// Content of every kind (base64 image data left intact), object keys
/// (the records stay, under redacted names), a JSON-RPC error's message
/// and data.
fn content_of_every_kind_keys_and_errors_are_redacted(leaky: &Leaky) {
    // Content of every kind.
    let text = leaky.tool(SUPPORT, "embedded");
    assert!(!text.contains("@leak.test"), "{text}");
    let v = last(&text);
    let content = &v["result"]["content"];
    assert_eq!(content[0]["text"], "plain [REDACTED:email]", "{v}");
    assert_eq!(content[1]["resource"]["text"], "embedded [REDACTED:email]");
    assert_eq!(content[1]["resource"]["uri"], "people://ann");
    assert_eq!(content[2]["name"], "[REDACTED:email]");
    assert_eq!(content[2]["type"], "resource_link");
    assert_eq!(
        content[3]["data"], "4111111111111111",
        "base64 image data is not text"
    );
    assert_eq!(content[3]["mimeType"], "image/png");

    // Keys: the records stay, under redacted names.
    let text = leaky.tool(SUPPORT, "keyed");
    assert!(!text.contains("@leak.test"), "{text}");
    let v = last(&text);
    let sc = &v["result"]["structuredContent"];
    let map = sc
        .get("result")
        .unwrap_or(sc)
        .as_object()
        .unwrap_or_else(|| panic!("{v}"));
    let mut values: Vec<i64> = map.values().filter_map(Value::as_i64).collect();
    values.sort();
    assert_eq!(values, [1, 2, 2], "no record lost: {v}");
    assert!(
        map.contains_key("[REDACTED:email]") && map.contains_key("count"),
        "{v}"
    );

    // A JSON-RPC error's message and data.
    let text = leaky.tool(SUPPORT, "refuse");
    assert!(!text.contains("@leak.test"), "{text}");
    let v = last(&text);
    assert_eq!(v["error"]["code"], -32000, "{v}");
    assert_eq!(v["error"]["message"], "no access for [REDACTED:email]");
    assert_eq!(v["error"]["data"]["who"], "[REDACTED:email]");
}

/// Progress and log messages on the way, then the result.
fn progress_and_log_messages_on_the_way_are_redacted(leaky: &Leaky) {
    let text = leaky.tool(SUPPORT, "chatty");
    assert!(!text.contains("@leak.test"), "{text}");
    assert!(
        text.contains("working for [REDACTED:email]"),
        "progress: {text}"
    );
    assert!(text.contains("looked up [REDACTED:email]"), "log: {text}");
    assert_eq!(last(&text)["result"]["content"][0]["text"], "done");
}

/// What cannot be read is withheld, and says which upstream sent it,
/// in a plain answer and on a stream.
fn what_cannot_be_read_is_withheld_naming_the_upstream(leaky: &Leaky) {
    let text = leaky.tool(SUPPORT, "deep");
    assert!(!text.contains("@leak.test"), "{text}");
    let v = last(&text);
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        message.contains("`leaky`") && message.contains("response that cannot be read"),
        "{message}"
    );
    // The same on a stream (a progress message first): the unreadable
    // event is not relayed, and the stream still ends with an answer.
    let text = leaky.tool(SUPPORT, "deep_streamed");
    assert!(!text.contains("@leak.test"), "{text}");
    assert!(text.contains("notifications/progress"), "{text}");
    let v = last(&text);
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(
        message.contains("`leaky` sent 1 message(s) that cannot be read"),
        "{message}"
    );
}

/// Resources, prompts and completions: each with its placeholder.
fn resources_prompts_and_completions_are_redacted(leaky: &Leaky) {
    for (what, text, placeholder) in [
        (
            "resource",
            leaky.read(SUPPORT),
            "[REDACTED:email], [REDACTED:email]",
        ),
        ("prompt", leaky.prompt(SUPPORT), "copy [REDACTED:email]"),
        (
            "completion",
            leaky.complete(SUPPORT),
            "\"[REDACTED:email]\"",
        ),
    ] {
        assert!(!text.contains("@leak.test"), "{what}: {text}");
        assert!(text.contains(placeholder), "{what}: {text}");
    }
}

/// A result's `_meta` is the upstream's data like its content, and an
/// address hidden by a zero-width character or written in fullwidth forms
/// is still an address: both are redacted, hidden characters and all.
#[test]
fn redaction_reaches_meta_and_text_hidden_behind_invisible_characters() {
    let (_leaky, addr) = start_py_server("leaky_upstream.py", &[]);
    let (dome, _) = start_with_upstream(
        "policy-hidden",
        &format!("[[upstream]]\nname = \"leaky\"\nurl = \"http://{addr}/mcp\"\n"),
        r#"
[[rule]]
id = "leaky-redacted"
effect = "allow"
[rule.when]
agent = "support-bot"
upstream = "leaky"
[rule.obligations]
redact = ["email"]

[[rule]]
id = "leaky-plain"
effect = "allow"
[rule.when]
agent = "sales-bot"
upstream = "leaky"
"#,
    );
    let hidden = |key: &str| {
        let (status, v) = post(
            &dome,
            key,
            "tools/call",
            "hidden",
            &call("hidden", json!({}), None),
        );
        assert_eq!(status, 200, "{v}");
        v
    };
    // Unredacted, the upstream really sends them.
    let v = hidden(SALES);
    assert_eq!(v["result"]["_meta"]["owner"], "ned@leak.test", "{v}");
    assert_eq!(
        v["result"]["content"][0]["_meta"]["owner"], "pam@leak.test",
        "{v}"
    );
    assert_eq!(
        v["result"]["content"][0]["text"],
        "zero-width oli\u{200b}@leak\u{200d}.test"
    );
    assert_eq!(
        v["result"]["content"][1]["text"],
        "fullwidth ｑｕｉｎ＠leak.test"
    );

    let v = hidden(SUPPORT);
    let text = v.to_string();
    for left in ["leak.test", "oli", "ｑｕｉｎ", "\u{200b}", "\u{200d}"] {
        assert!(!text.contains(left), "{left:?} left in {text}");
    }
    assert_eq!(
        v["result"]["content"][0]["text"],
        "zero-width [REDACTED:email]"
    );
    assert_eq!(
        v["result"]["content"][1]["text"],
        "fullwidth [REDACTED:email]"
    );
    assert_eq!(
        v["result"]["content"][0]["_meta"]["owner"],
        "[REDACTED:email]"
    );
    assert_eq!(v["result"]["_meta"]["owner"], "[REDACTED:email]");
    assert_eq!(v["result"]["_meta"]["history"][0]["by"], "[REDACTED:email]");
}

/// The upstream's questions to the client are its output too: an
/// elicitation that names someone reaches a client of either era with the
/// address redacted (a stateless client in the `input_required` result, a
/// session-era client as a request on the call's stream, Dome asking on the
/// stateless upstream's behalf), and the call still completes.
#[test]
fn questions_to_the_client_are_redacted_in_both_eras() {
    let (_leaky, addr) = start_py_server("leaky_upstream.py", &[]);
    let policies = policy_dir(
        "policy-ask",
        "[[rule]]\nid = \"redacted\"\neffect = \"allow\"\n[rule.obligations]\nredact = [\"email\"]\n",
    );
    let dome = start_dome(
        "policy-ask",
        &format!(
            "[[upstream]]\nname = \"leaky\"\nurl = \"http://{addr}/mcp\"\nera = \"stateless\"\n\
             [policy]\ndir = \"{}\"\n",
            policies.display()
        ),
    );
    let url = format!("http://{}/mcp", dome.mcp);
    for client in ["2026-07-28", "legacy"] {
        let seen = run_client("client_elicit.py", &[&url, client]);
        assert_eq!(
            seen["asked"],
            json!(["Which colour for [REDACTED:email]?"]),
            "{client} client: {seen}"
        );
        assert_eq!(
            seen["text"], "fence painted teal",
            "{client} client: {seen}"
        );
    }
}
