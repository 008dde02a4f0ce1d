//! What a caller hears besides answers: the change notifications a
//! `subscriptions/listen` stream carries, and log messages at the level
//! the caller asked for. No I/O.

use serde_json::{Value, json};

use crate::{envelope::Envelope, protocol};

/// What one `subscriptions/listen` stream carries: the list changes it
/// asked for that some upstream offers, and the resource URIs policy let
/// it watch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListenFilter {
    /// `notifications/tools/list_changed` goes to the stream.
    pub tools: bool,
    /// `notifications/prompts/list_changed` goes to the stream.
    pub prompts: bool,
    /// `notifications/resources/list_changed` goes to the stream.
    pub resources: bool,
    /// The resource URIs whose `notifications/resources/updated` goes to
    /// the stream: those asked for that policy lets the caller read.
    pub uris: std::collections::HashSet<String>,
}

/// Whether `caps` (a server's capabilities) offer any change notification
/// a `subscriptions/listen` stream could carry: a list change or resource
/// updates. Without one there is nothing to listen for.
pub fn offers_changes(caps: &Value) -> bool {
    let offers = |kind: &str, flag: &str| caps[kind][flag] == true;
    offers("tools", "listChanged")
        || offers("prompts", "listChanged")
        || offers("resources", "listChanged")
        || offers("resources", "subscribe")
}

impl ListenFilter {
    /// The list changes a listen request's `notifications` (`asked`) wants
    /// that Dome's capabilities (`caps`) offer; URIs are added as policy
    /// allows each.
    pub fn of_lists(asked: &serde_json::Map<String, Value>, caps: &Value) -> ListenFilter {
        let wants = |key: &str| asked.get(key) == Some(&Value::Bool(true));
        let offers = |kind: &str| caps[kind]["listChanged"] == true;
        ListenFilter {
            tools: wants("toolsListChanged") && offers("tools"),
            prompts: wants("promptsListChanged") && offers("prompts"),
            resources: wants("resourcesListChanged") && offers("resources"),
            uris: Default::default(),
        }
    }

    /// Whether a notification of `method` (about `uri`, for an update)
    /// goes to this stream.
    pub fn admits(&self, method: &str, uri: &str) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools,
            "notifications/prompts/list_changed" => self.prompts,
            "notifications/resources/list_changed" => self.resources,
            "notifications/resources/updated" => self.uris.contains(uri),
            _ => false,
        }
    }

    /// The filter as the acknowledgement names it.
    pub fn to_json(&self) -> Value {
        let mut f = serde_json::Map::new();
        for (on, key) in [
            (self.tools, "toolsListChanged"),
            (self.prompts, "promptsListChanged"),
            (self.resources, "resourcesListChanged"),
        ] {
            if on {
                f.insert(key.into(), true.into());
            }
        }
        if !self.uris.is_empty() {
            let mut uris: Vec<&String> = self.uris.iter().collect();
            uris.sort();
            f.insert("resourceSubscriptions".into(), json!(uris));
        }
        Value::Object(f)
    }
}

/// Whether `message` passes a caller's lowest wanted log level (an index
/// into `LOG_LEVELS`, `None`: all): a caller gets log messages only at the
/// level it asked for, which a session-era upstream does not know of a
/// stateless caller, and no upstream knows of a session.
pub fn admits_log(message: &Value, floor: Option<usize>) -> bool {
    let Some(floor) = floor else { return true };
    message["method"] != "notifications/message"
        || message["params"]["level"]
            .as_str()
            .and_then(protocol::log_level_rank)
            .is_some_and(|l| l >= floor)
}

/// A `logging/setLevel` naming no level MCP has (the caller's mistake:
/// invalid params).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLevel(pub String);

impl std::fmt::Display for UnknownLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown log level `{}`; levels: {}",
            self.0,
            protocol::LOG_LEVELS.join(", ")
        )
    }
}

impl std::error::Error for UnknownLevel {}

/// The level a `logging/setLevel` asks for, as an index into `LOG_LEVELS`.
pub fn set_level_of(e: &Envelope) -> Result<usize, UnknownLevel> {
    let params: Value = e
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    let level = params["level"].as_str().unwrap_or_default();
    protocol::log_level_rank(level).ok_or_else(|| UnknownLevel(level.to_string()))
}

/// The lowest log level a stateless caller asked for in
/// `_meta["io.modelcontextprotocol/logLevel"]`, as an index into
/// `LOG_LEVELS`; past the end when it asked for none (or named no level).
pub fn log_floor(e: &Envelope) -> usize {
    e.meta_entries
        .iter()
        .find(|(k, _)| k == protocol::META_LOG_LEVEL)
        .and_then(|(_, v)| serde_json::from_str::<String>(v).ok())
        .and_then(|l| protocol::log_level_rank(&l))
        .unwrap_or(protocol::LOG_LEVELS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_list_changes_or_resource_updates_are_worth_listening_for() {
        for (caps, offers) in [
            (json!({}), false),
            (json!({"tools": {}, "logging": {}}), false),
            (json!({"tools": {"listChanged": false}}), false),
            (json!({"tools": {"listChanged": true}}), true),
            (json!({"prompts": {"listChanged": true}}), true),
            (json!({"resources": {"listChanged": true}}), true),
            (json!({"resources": {"subscribe": true}}), true),
        ] {
            assert_eq!(offers_changes(&caps), offers, "{caps}");
        }
    }

    #[test]
    fn a_listen_stream_carries_what_was_asked_and_offered() {
        let asked = json!({"toolsListChanged": true, "promptsListChanged": true});
        let caps = json!({"tools": {"listChanged": true}, "prompts": {}});
        let mut f = ListenFilter::of_lists(asked.as_object().unwrap(), &caps);
        assert!(f.tools && !f.prompts && !f.resources);
        f.uris.insert("demo://counter".into());
        assert!(f.admits("notifications/tools/list_changed", ""));
        assert!(!f.admits("notifications/prompts/list_changed", ""));
        assert!(f.admits("notifications/resources/updated", "demo://counter"));
        assert!(!f.admits("notifications/resources/updated", "demo://other"));
        assert!(!f.admits("notifications/message", ""));
        assert_eq!(
            f.to_json(),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["demo://counter"]})
        );
    }

    #[test]
    fn log_messages_pass_at_the_level_asked_for() {
        let msg =
            |level: &str| json!({"method": "notifications/message", "params": {"level": level}});
        let warning = protocol::log_level_rank("warning");
        assert!(admits_log(&msg("error"), warning));
        assert!(!admits_log(&msg("info"), warning));
        assert!(admits_log(&msg("info"), None));
        // Not a log message: always passes.
        assert!(admits_log(
            &json!({"method": "notifications/progress"}),
            warning
        ));
    }
}
