//! Who may call, as the request path sees them: agents (with their keys'
//! hashes and budget buckets), tenants, and the index authentication
//! reads. The registry that builds the index (config file and database)
//! is `dome-user`'s.

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};

use super::apikey;
use crate::budget::Bucket;

/// What kind of party an agent is (carried in the identity assertion).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    #[default]
    CustomerAgent,
    Partner,
}

/// Where an agent comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    Registry,
}

/// An agent as the request path sees it.
#[derive(Debug)]
pub struct Agent {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub kind: AgentKind,
    pub labels: Vec<String>,
    pub disabled: bool,
    pub source: Source,
    /// Index of this agent's identity in the kernel tier's maps.
    pub slot: u32,
    /// The SHA-256 of each of its keys, and when a rotated-out key stops
    /// being accepted (unix s). Never a key itself.
    pub keys: Vec<([u8; 32], Option<u64>)>,
    pub budgets: Arc<AgentBudgets>,
}

/// An agent's budget buckets: its own and per tool.
#[derive(Debug, Default)]
pub struct AgentBudgets {
    pub agent: Option<Bucket>,
    pub tools: HashMap<String, Bucket>,
}

#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    /// The agent's credential may name the end user (header `Dome-User`).
    pub delegation: bool,
    pub budget: Option<Arc<Bucket>>,
}

impl Agent {
    /// Whether `key` is one of this agent's live keys at `now_unix_s`.
    pub fn accepts(&self, key: &str, now_unix_s: u64) -> bool {
        let live: Vec<[u8; 32]> = self
            .keys
            .iter()
            .filter(|(_, exp)| exp.is_none_or(|e| now_unix_s < e))
            .map(|(h, _)| *h)
            .collect();
        apikey::matches(key, &live)
    }
}

/// The immutable view the request path reads.
#[derive(Default)]
pub struct Index {
    pub agents: HashMap<String, Arc<Agent>>,
    pub tenants: HashMap<String, Arc<Tenant>>,
}
