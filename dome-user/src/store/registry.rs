//! The agent registry: agents from the config file plus agents registered
//! at run time, which are kept in an embedded database (redb: a pure-Rust,
//! crash-safe B-tree store with serializable write transactions, so
//! concurrent admin writes are safe). Reads on the request path go to an
//! immutable index swapped in after every change (no lock, no disk).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::identity::{
    apikey,
    budget::{Bucket, Rate},
    config::{AgentConfig, AgentKind, TenantConfig},
};

const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
/// Kernel identity slot of every agent (config agents too), stable across restarts.
const SLOTS: TableDefinition<&str, u32> = TableDefinition::new("slots");

/// A registered agent as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentRecord {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub kind: AgentKind,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    pub created_unix_s: u64,
    pub keys: Vec<StoredKey>,
    #[serde(default)]
    pub budget: Option<Rate>,
    #[serde(default)]
    pub tool_budgets: BTreeMap<String, Rate>,
}

/// A key's hash; `expires_unix_s` is set on a rotated-out key (its overlap).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoredKey {
    pub sha256: String,
    pub created_unix_s: u64,
    #[serde(default)]
    pub expires_unix_s: Option<u64>,
}

pub use dome_core::identity::agent::{Agent, AgentBudgets, Index, Source, Tenant};

/// What is wrong with an admin request.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("no agent `{0}`")]
    NotFound(String),
    #[error("agent `{0}` comes from the config file; change it there")]
    FromConfig(String),
    #[error("registry storage: {0}")]
    Storage(String),
}

fn storage<E: std::fmt::Display>(e: E) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

/// A new agent's details (admin API).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    pub tenant: String,
    pub name: String,
    #[serde(default)]
    pub kind: AgentKind,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub budget: Option<Rate>,
    #[serde(default)]
    pub tool_budgets: BTreeMap<String, Rate>,
}

struct ConfigPart {
    tenants: Vec<TenantConfig>,
    agents: Vec<AgentConfig>,
    default_budget: Option<Rate>,
}

pub struct Registry {
    db: Database,
    index: ArcSwap<Index>,
    config: Mutex<ConfigPart>,
    /// One rebuild at a time, so an older snapshot never replaces a newer
    /// index (readers never take it).
    rebuilding: Mutex<()>,
}

impl Registry {
    /// Opens (or creates) the registry in `dir` and indexes it with the
    /// config file's tenants and agents.
    pub fn open(
        dir: &Path,
        tenants: Vec<TenantConfig>,
        agents: Vec<AgentConfig>,
        default_budget: Option<Rate>,
        now_unix_s: u64,
    ) -> Result<Registry, RegistryError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RegistryError::Storage(format!("{}: {e}", dir.display())))?;
        let path = dir.join("registry.redb");
        let db = Database::create(&path)
            .map_err(|e| RegistryError::Storage(format!("{}: {e}", path.display())))?;
        let reg = Registry {
            db,
            index: ArcSwap::from_pointee(Index::default()),
            config: Mutex::new(ConfigPart {
                tenants,
                agents,
                default_budget,
            }),
            rebuilding: Mutex::new(()),
        };
        reg.rebuild(now_unix_s)?;
        Ok(reg)
    }

    pub fn index(&self) -> Arc<Index> {
        self.index.load_full()
    }

    /// New config-file tenants and agents (a reload).
    pub fn set_config(
        &self,
        tenants: Vec<TenantConfig>,
        agents: Vec<AgentConfig>,
        default_budget: Option<Rate>,
        now_unix_s: u64,
    ) -> Result<(), RegistryError> {
        *self.config.lock().expect("config lock") = ConfigPart {
            tenants,
            agents,
            default_budget,
        };
        self.rebuild(now_unix_s)
    }

    pub fn records(&self) -> Result<Vec<AgentRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let table = match tx.open_table(AGENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            out.push(serde_json::from_slice(v.value()).map_err(storage)?);
        }
        Ok(out)
    }

    pub fn record(&self, id: &str) -> Result<AgentRecord, RegistryError> {
        self.records()?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| RegistryError::NotFound(id.into()))
    }

    /// Registers an agent; returns its record and its first API key (the
    /// only time the key is shown).
    pub fn register(
        &self,
        new: NewAgent,
        now_unix_s: u64,
    ) -> Result<(AgentRecord, String), RegistryError> {
        if !self.index().tenants.contains_key(&new.tenant) {
            return Err(RegistryError::Invalid(format!(
                "no tenant `{}` (tenants come from the config file)",
                new.tenant
            )));
        }
        if new.name.trim().is_empty() {
            return Err(RegistryError::Invalid("name must not be empty".into()));
        }
        // The rates the config file would accept, no others.
        let rates = new.budget.iter().map(|r| ("budget".to_string(), r)).chain(
            new.tool_budgets
                .iter()
                .map(|(t, r)| (format!("tool_budgets.{t}"), r)),
        );
        for (field, rate) in rates {
            if let Some((f, why)) = rate.problems().first() {
                return Err(RegistryError::Invalid(format!("{field}.{f} {why}")));
            }
        }
        let id = format!("a{}", hex::encode(rand::random::<[u8; 6]>()));
        let (key, hash) = apikey::generate(&id);
        let record = AgentRecord {
            id: id.clone(),
            tenant: new.tenant,
            name: new.name,
            kind: new.kind,
            labels: new.labels,
            disabled: false,
            created_unix_s: now_unix_s,
            keys: vec![StoredKey {
                sha256: apikey::to_hex(&hash),
                created_unix_s: now_unix_s,
                expires_unix_s: None,
            }],
            budget: new.budget,
            tool_budgets: new.tool_budgets,
        };
        self.write(|agents| {
            agents
                .insert(
                    id.as_str(),
                    serde_json::to_vec(&record).map_err(storage)?.as_slice(),
                )
                .map_err(storage)?;
            Ok(())
        })?;
        self.rebuild(now_unix_s)?;
        Ok((record, key))
    }

    /// Changes a registered agent with `f` in one write transaction.
    fn update(
        &self,
        id: &str,
        now_unix_s: u64,
        f: impl FnOnce(&mut AgentRecord),
    ) -> Result<AgentRecord, RegistryError> {
        if self.is_config_agent(id) {
            return Err(RegistryError::FromConfig(id.into()));
        }
        let mut out = None;
        self.write(|agents| {
            let mut rec: AgentRecord = match agents.get(id).map_err(storage)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
                None => return Err(RegistryError::NotFound(id.into())),
            };
            f(&mut rec);
            agents
                .insert(id, serde_json::to_vec(&rec).map_err(storage)?.as_slice())
                .map_err(storage)?;
            out = Some(rec);
            Ok(())
        })?;
        self.rebuild(now_unix_s)?;
        Ok(out.expect("set in the transaction"))
    }

    pub fn set_disabled(
        &self,
        id: &str,
        disabled: bool,
        now_unix_s: u64,
    ) -> Result<AgentRecord, RegistryError> {
        self.update(id, now_unix_s, |r| r.disabled = disabled)
    }

    /// A new key; the current ones stay valid for `overlap_s` more seconds.
    pub fn rotate(
        &self,
        id: &str,
        overlap_s: u64,
        now_unix_s: u64,
    ) -> Result<(AgentRecord, String), RegistryError> {
        let (key, hash) = apikey::generate(id);
        let rec = self.update(id, now_unix_s, |r| {
            r.keys
                .retain(|k| k.expires_unix_s.is_none_or(|e| now_unix_s < e));
            for k in &mut r.keys {
                // Saturating: an overlap past the end of time keeps them for good.
                let until = now_unix_s.saturating_add(overlap_s);
                k.expires_unix_s = Some(k.expires_unix_s.map_or(until, |e| e.min(until)));
            }
            r.keys.push(StoredKey {
                sha256: apikey::to_hex(&hash),
                created_unix_s: now_unix_s,
                expires_unix_s: None,
            });
        })?;
        Ok((rec, key))
    }

    pub fn delete(&self, id: &str, now_unix_s: u64) -> Result<(), RegistryError> {
        if self.is_config_agent(id) {
            return Err(RegistryError::FromConfig(id.into()));
        }
        self.write(|agents| match agents.remove(id).map_err(storage)? {
            Some(_) => Ok(()),
            None => Err(RegistryError::NotFound(id.into())),
        })?;
        self.rebuild(now_unix_s)
    }

    fn is_config_agent(&self, id: &str) -> bool {
        self.config
            .lock()
            .expect("config lock")
            .agents
            .iter()
            .any(|a| a.id == id)
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut agents = tx.open_table(AGENTS).map_err(storage)?;
            f(&mut agents)?;
        }
        tx.commit().map_err(storage)
    }

    /// Rebuilds the index from the config part and the stored agents,
    /// assigning each agent a kernel slot once (kept in the database) and
    /// carrying budget state over for agents whose budgets did not change.
    fn rebuild(&self, now_unix_s: u64) -> Result<(), RegistryError> {
        let _ = now_unix_s;
        let _one = self.rebuilding.lock().expect("rebuild lock");
        let records = self.records()?;
        let cfg = self.config.lock().expect("config lock");
        let old = self.index();
        let mut ids: Vec<String> = cfg.agents.iter().map(|a| a.id.clone()).collect();
        ids.extend(records.iter().map(|r| r.id.clone()));
        let slots = self.slots_for(&ids)?;

        let mut tenants = HashMap::new();
        for t in &cfg.tenants {
            let budget = match old.tenants.get(&t.name) {
                Some(o) if o.budget.as_ref().map(|b| b.rate()) == t.budget => o.budget.clone(),
                _ => t.budget.map(|r| Arc::new(Bucket::new(r))),
            };
            tenants.insert(
                t.name.clone(),
                Arc::new(Tenant {
                    name: t.name.clone(),
                    delegation: t.delegation,
                    budget,
                }),
            );
        }
        let budgets_for = |id: &str, own: Option<Rate>, tools: &BTreeMap<String, Rate>| {
            let rate = own.or(cfg.default_budget);
            if let Some(o) = old.agents.get(id) {
                let same_agent = o.budgets.agent.as_ref().map(Bucket::rate) == rate;
                let same_tools = o.budgets.tools.len() == tools.len()
                    && tools
                        .iter()
                        .all(|(k, r)| o.budgets.tools.get(k).map(Bucket::rate) == Some(*r));
                if same_agent && same_tools {
                    return o.budgets.clone();
                }
            }
            Arc::new(AgentBudgets {
                agent: rate.map(Bucket::new),
                tools: tools
                    .iter()
                    .map(|(k, r)| (k.clone(), Bucket::new(*r)))
                    .collect(),
            })
        };
        let mut agents = HashMap::new();
        for a in &cfg.agents {
            let keys = a
                .api_keys
                .iter()
                .filter_map(|h| apikey::from_hex(h))
                .map(|h| (h, None))
                .collect();
            agents.insert(
                a.id.clone(),
                Arc::new(Agent {
                    id: a.id.clone(),
                    tenant: a.tenant.clone(),
                    name: a.name.clone().unwrap_or_else(|| a.id.clone()),
                    kind: a.kind,
                    labels: a.labels.clone(),
                    disabled: a.disabled,
                    source: Source::Config,
                    slot: slots[&a.id],
                    keys,
                    budgets: budgets_for(&a.id, a.budget, &a.tool_budgets),
                }),
            );
        }
        for r in records {
            if agents.contains_key(&r.id) {
                continue; // the config file's agent of that id wins
            }
            let keys = r
                .keys
                .iter()
                .filter_map(|k| apikey::from_hex(&k.sha256).map(|h| (h, k.expires_unix_s)))
                .collect();
            agents.insert(
                r.id.clone(),
                Arc::new(Agent {
                    slot: slots[&r.id],
                    budgets: budgets_for(&r.id, r.budget, &r.tool_budgets),
                    id: r.id,
                    tenant: r.tenant,
                    name: r.name,
                    kind: r.kind,
                    labels: r.labels,
                    disabled: r.disabled,
                    source: Source::Registry,
                    keys,
                }),
            );
        }
        self.index.store(Arc::new(Index { agents, tenants }));
        Ok(())
    }

    /// Each id's kernel slot, allocating the lowest free one for new ids.
    fn slots_for(&self, ids: &[String]) -> Result<HashMap<String, u32>, RegistryError> {
        let tx = self.db.begin_write().map_err(storage)?;
        let mut out = HashMap::new();
        {
            let mut table = tx.open_table(SLOTS).map_err(storage)?;
            let mut used = std::collections::HashSet::new();
            for row in table.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                used.insert(v.value());
                out.insert(k.value().to_string(), v.value());
            }
            // Slot 0 means "no identity" to the kernel tier.
            let mut next = 1u32;
            for id in ids {
                if out.contains_key(id) {
                    continue;
                }
                while used.contains(&next) {
                    next += 1;
                }
                if next >= dome_common::MAX_SLOTS {
                    return Err(RegistryError::Invalid("no identity slot left".into()));
                }
                table.insert(id.as_str(), next).map_err(storage)?;
                used.insert(next);
                out.insert(id.clone(), next);
            }
        }
        tx.commit().map_err(storage)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants() -> Vec<TenantConfig> {
        vec![TenantConfig {
            name: "acme".into(),
            budget: None,
            delegation: false,
            jwt: None,
        }]
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dome-registry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn new_agent() -> NewAgent {
        NewAgent {
            tenant: "acme".into(),
            name: "support bot".into(),
            kind: AgentKind::CustomerAgent,
            labels: vec!["support".into()],
            budget: None,
            tool_budgets: BTreeMap::new(),
        }
    }

    #[test]
    fn registration_survives_a_reopen_and_rotation_overlaps() {
        let d = dir("lifecycle");
        let (id, key, slot) = {
            let reg = Registry::open(&d, tenants(), vec![], None, 1000).unwrap();
            let (rec, key) = reg.register(new_agent(), 1000).unwrap();
            assert_eq!(apikey::agent_of(&key), Some(rec.id.as_str()));
            let slot = reg.index().agents[&rec.id].slot;
            assert!(slot >= 1);
            (rec.id, key, slot)
        };
        let reg = Registry::open(&d, tenants(), vec![], None, 2000).unwrap();
        let agent = reg.index().agents[&id].clone();
        assert_eq!(agent.slot, slot, "slots are stable across restarts");
        assert!(agent.accepts(&key, 2000));
        // Rotation: the old key lives through the overlap, then not.
        let (_, new_key) = reg.rotate(&id, 60, 2000).unwrap();
        let agent = reg.index().agents[&id].clone();
        assert!(agent.accepts(&new_key, 2001));
        assert!(agent.accepts(&key, 2059));
        assert!(!agent.accepts(&key, 2060));
        reg.set_disabled(&id, true, 2001).unwrap();
        assert!(reg.index().agents[&id].disabled);
        // An overlap past the end of time keeps the old keys for good
        // (it overflowed before: a panic, and a 500 from the admin API).
        let (_, newest) = reg.rotate(&id, u64::MAX, 2001).unwrap();
        let agent = reg.index().agents[&id].clone();
        assert!(agent.accepts(&new_key, u64::MAX - 1));
        assert!(agent.accepts(&newest, u64::MAX - 1));
        reg.delete(&id, 2002).unwrap();
        assert!(!reg.index().agents.contains_key(&id));
        assert!(matches!(
            reg.delete(&id, 2003),
            Err(RegistryError::NotFound(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unknown_tenants_and_config_agents_are_refused() {
        let d = dir("refusals");
        let cfg_agent = AgentConfig {
            id: "cfg-bot".into(),
            tenant: "acme".into(),
            name: None,
            kind: AgentKind::Partner,
            labels: vec![],
            api_keys: vec![],
            disabled: false,
            budget: None,
            tool_budgets: BTreeMap::new(),
        };
        let reg = Registry::open(&d, tenants(), vec![cfg_agent], None, 0).unwrap();
        let mut bad = new_agent();
        bad.tenant = "nobody".into();
        assert!(matches!(
            reg.register(bad, 0),
            Err(RegistryError::Invalid(_))
        ));
        // Rates the config file would refuse are refused here too.
        for (budget, tool, why) in [
            (Some((-5.0, 1)), None, "budget.calls_per_s must be above 0"),
            (Some((1.0, 0)), None, "budget.burst must be at least 1"),
            (
                None,
                Some((0.0, 3)),
                "tool_budgets.echo.calls_per_s must be above 0",
            ),
        ] {
            let rate = |(calls_per_s, burst): (f64, u32)| Rate { calls_per_s, burst };
            let mut bad = new_agent();
            bad.budget = budget.map(rate);
            bad.tool_budgets
                .extend(tool.map(|t| ("echo".to_string(), rate(t))));
            match reg.register(bad, 0) {
                Err(RegistryError::Invalid(m)) => assert_eq!(m, why),
                other => panic!("{why}: {other:?}"),
            }
        }
        assert!(matches!(
            reg.set_disabled("cfg-bot", true, 0),
            Err(RegistryError::FromConfig(_))
        ));
        assert_eq!(reg.index().agents["cfg-bot"].source, Source::Config);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn concurrent_registrations_all_land() {
        let d = dir("concurrent");
        let reg = Arc::new(Registry::open(&d, tenants(), vec![], None, 0).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let reg = reg.clone();
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        reg.register(new_agent(), 0).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let index = reg.index();
        assert_eq!(index.agents.len(), 20);
        let slots: std::collections::HashSet<u32> = index.agents.values().map(|a| a.slot).collect();
        assert_eq!(slots.len(), 20, "every agent has its own slot");
        let _ = std::fs::remove_dir_all(&d);
    }
}
