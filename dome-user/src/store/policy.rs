//! Every policy version Dome activated, kept with its sources, time and
//! message in the data folder (`policy.redb`), so an operator can list them
//! and roll back to one exactly: rollback writes that version's files back
//! into the policy folder, and the live reload activates them like any
//! change (and refuses them like any change that fails).

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Activations in order: sequence number → record (JSON).
const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("policy_versions");

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub version: String,
    pub activated_unix_s: u64,
    /// The `message` of the policy files, joined.
    pub message: String,
    pub rules: usize,
    /// The files as they were (name, text).
    pub sources: Vec<(String, String)>,
}

pub struct PolicyStore {
    db: Database,
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("policy store: {e}")
}

impl PolicyStore {
    pub fn open(dir: &Path) -> Result<PolicyStore, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("policy.redb");
        let db = Database::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(PolicyStore { db })
    }

    /// Every activation, oldest first.
    pub fn list(&self) -> Result<Vec<Activation>, String> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = match tx.open_table(VERSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    /// Records an activation, unless it is the version already active.
    pub fn record(&self, a: &Activation) -> Result<bool, String> {
        if self.list()?.last().is_some_and(|l| l.version == a.version) {
            return Ok(false);
        }
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(VERSIONS).map_err(err)?;
            let next = t.last().map_err(err)?.map_or(0, |(k, _)| k.value() + 1);
            t.insert(next, serde_json::to_vec(a).map_err(err)?.as_slice())
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(true)
    }

    /// The activation to roll back to: `version`, or the one before the
    /// active one.
    pub fn target(&self, version: Option<&str>) -> Result<Activation, String> {
        let all = self.list()?;
        match version {
            Some(v) => all
                .into_iter()
                .rev()
                .find(|a| a.version == v)
                .ok_or_else(|| format!("no activated policy version `{v}`")),
            None => {
                let current = all.last().map(|a| a.version.clone());
                all.into_iter()
                    .rev()
                    .find(|a| Some(&a.version) != current.as_ref())
                    .ok_or_else(|| "no earlier policy version to roll back to".to_string())
            }
        }
    }
}

/// Writes `a`'s files into `dir`, replacing the `*.toml` files there.
pub fn restore(dir: &Path, a: &Activation) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Write the new files first under temporary names, then swap, so a
    // reload in between never sees a half-restored folder as valid.
    let mut staged = Vec::new();
    for (name, text) in &a.sources {
        let file = Path::new(name)
            .file_name()
            .ok_or_else(|| format!("`{name}` has no file name"))?;
        let tmp = dir.join(format!(".{}.restore", file.to_string_lossy()));
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        staged.push((tmp, dir.join(file)));
    }
    let keep: Vec<_> = staged.iter().map(|(_, f)| f.clone()).collect();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let p = entry.map_err(|e| e.to_string())?.path();
        if p.extension().is_some_and(|x| x == "toml") && !keep.contains(&p) {
            std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    for (tmp, file) in staged {
        std::fs::rename(&tmp, &file).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(v: &str, text: &str) -> Activation {
        Activation {
            version: v.into(),
            activated_unix_s: 1,
            message: String::new(),
            rules: 1,
            sources: vec![("p/main.toml".into(), text.into())],
        }
    }

    #[test]
    fn versions_are_kept_and_restored_exactly() {
        let dir = std::env::temp_dir().join(format!("dome-policy-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = PolicyStore::open(&dir.join("data")).unwrap();
        assert!(store.record(&act("a", "A")).unwrap());
        assert!(
            !store.record(&act("a", "A")).unwrap(),
            "same version twice in a row"
        );
        assert!(store.record(&act("b", "B")).unwrap());
        assert_eq!(store.list().unwrap().len(), 2);
        assert_eq!(store.target(None).unwrap().version, "a");
        assert!(store.target(Some("zzz")).is_err());
        let pdir = dir.join("policies");
        std::fs::create_dir_all(&pdir).unwrap();
        std::fs::write(pdir.join("extra.toml"), "x").unwrap();
        restore(&pdir, &store.target(Some("a")).unwrap()).unwrap();
        assert_eq!(
            std::fs::read_to_string(pdir.join("main.toml")).unwrap(),
            "A"
        );
        assert!(
            !pdir.join("extra.toml").exists(),
            "files of other versions go"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
