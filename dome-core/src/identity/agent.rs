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
    /// `customer_agent`, the default. Dome treats both kinds alike; the
    /// assertion's `agent_kind` tells upstreams which it is.
    #[default]
    CustomerAgent,
    /// `partner`.
    Partner,
}

/// Where an agent comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An `[[agent]]` of the config file: the admin API cannot change or
    /// remove it, and it wins over a registered agent of the same id.
    Config,
    /// Registered through the admin API and kept in the registry's database.
    Registry,
}

/// An agent as the request path sees it.
#[derive(Debug)]
pub struct Agent {
    /// The agent id: 1 to 40 of `a-z`, `0-9` and `-`, the readable part of
    /// its API keys.
    pub id: String,
    /// The name of its tenant (a key of [`Index::tenants`]).
    pub tenant: String,
    /// A name for people (the id, when the config file gives none).
    pub name: String,
    /// What kind of party it is, as the identity assertion says.
    pub kind: AgentKind,
    /// Labels rules match on (a rule's `labels` needs all it lists); the
    /// assertion carries them too.
    pub labels: Vec<String>,
    /// Its credentials are refused while set (its keys are kept).
    pub disabled: bool,
    /// Where it is defined.
    pub source: Source,
    /// Index of this agent's identity in the kernel tier's maps.
    pub slot: u32,
    /// The SHA-256 of each of its keys, and when a rotated-out key stops
    /// being accepted (unix s). Never a key itself.
    pub keys: Vec<([u8; 32], Option<u64>)>,
    /// Its budget buckets, shared across reloads while its rates stay the
    /// same, so a reload does not refill them.
    pub budgets: Arc<AgentBudgets>,
}

/// An agent's budget buckets: its own and per tool.
#[derive(Debug, Default)]
pub struct AgentBudgets {
    /// The agent's own budget (its `budget`, else the configured default);
    /// `None`: unlimited.
    pub agent: Option<Bucket>,
    /// Budgets per tool (`tool_budgets`), by the tool's public name.
    pub tools: HashMap<String, Bucket>,
}

/// A tenant as the request path sees it.
#[derive(Debug)]
pub struct Tenant {
    /// The tenant's name, as agents and policy rules name it.
    pub name: String,
    /// The agent's credential may name the end user (header `Dome-User`).
    pub delegation: bool,
    /// The budget all its agents share, taken only for allowed calls;
    /// `None`: unlimited. Shared across reloads while its rate stays the
    /// same.
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
    /// Every agent (config file and registry), by id.
    pub agents: HashMap<String, Arc<Agent>>,
    /// Every tenant, by name.
    pub tenants: HashMap<String, Arc<Tenant>>,
}
