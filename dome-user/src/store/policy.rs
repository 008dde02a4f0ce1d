//! Every policy version Dome activated, kept with its sources, time and
//! message in the data folder (`policy.redb`), so an operator can list them
//! and roll back to one exactly: rollback writes that version's files back
//! into the policy folder, and the live reload activates them like any
//! change (and refuses them like any change that fails).

use std::path::{Path, PathBuf};

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

/// Why the store or a rollback failed. The store's own failures read
/// `policy store: <redb's words>`; the file ones name the file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    /// A folder or file of the store or the policy folder.
    #[error("{}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Listing the policy folder failed part way.
    #[error(transparent)]
    Listing(std::io::Error),
    /// `policy.redb` does not open.
    #[error("{}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    // redb's errors are boxed: they are large, the path that returns them rare.
    #[error("policy store")]
    Transaction(#[source] Box<redb::TransactionError>),
    #[error("policy store")]
    Table(#[source] Box<redb::TableError>),
    #[error("policy store")]
    Storage(#[source] Box<redb::StorageError>),
    #[error("policy store")]
    Commit(#[source] Box<redb::CommitError>),
    /// An activation's record (JSON) does not encode or decode.
    #[error("policy store")]
    Record(#[from] serde_json::Error),
    #[error("no activated policy version `{0}`")]
    NoSuchVersion(String),
    #[error("no earlier policy version to roll back to")]
    NoEarlier,
    /// A stored source's name names no file.
    #[error("`{0}` has no file name")]
    NoFileName(String),
}

macro_rules! from_redb {
    ($($error:ty => $variant:ident),*) => {$(
        impl From<$error> for PolicyStoreError {
            fn from(e: $error) -> Self {
                PolicyStoreError::$variant(Box::new(e))
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError => Transaction,
    redb::TableError => Table,
    redb::StorageError => Storage,
    redb::CommitError => Commit
);

impl PolicyStoreError {
    fn file(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyStoreError {
        let path = path.to_path_buf();
        move |source| PolicyStoreError::File { path, source }
    }
}

impl PolicyStore {
    pub fn open(dir: &Path) -> Result<PolicyStore, PolicyStoreError> {
        std::fs::create_dir_all(dir).map_err(PolicyStoreError::file(dir))?;
        let path = dir.join("policy.redb");
        let db = Database::create(&path).map_err(|e| PolicyStoreError::Open {
            path,
            source: Box::new(e),
        })?;
        Ok(PolicyStore { db })
    }

    /// Every activation, oldest first.
    pub fn list(&self) -> Result<Vec<Activation>, PolicyStoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(VERSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    /// Records an activation, unless it is the version already active.
    pub fn record(&self, a: &Activation) -> Result<bool, PolicyStoreError> {
        if self.list()?.last().is_some_and(|l| l.version == a.version) {
            return Ok(false);
        }
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(VERSIONS)?;
            let next = t.last()?.map_or(0, |(k, _)| k.value() + 1);
            t.insert(next, serde_json::to_vec(a)?.as_slice())?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// The activation to roll back to: `version`, or the one before the
    /// active one.
    pub fn target(&self, version: Option<&str>) -> Result<Activation, PolicyStoreError> {
        let all = self.list()?;
        match version {
            Some(v) => all
                .into_iter()
                .rev()
                .find(|a| a.version == v)
                .ok_or_else(|| PolicyStoreError::NoSuchVersion(v.to_string())),
            None => {
                let current = all.last().map(|a| a.version.clone());
                all.into_iter()
                    .rev()
                    .find(|a| Some(&a.version) != current.as_ref())
                    .ok_or(PolicyStoreError::NoEarlier)
            }
        }
    }
}

/// Writes `a`'s files into `dir`, replacing the `*.toml` files there.
pub fn restore(dir: &Path, a: &Activation) -> Result<(), PolicyStoreError> {
    std::fs::create_dir_all(dir).map_err(PolicyStoreError::file(dir))?;
    // Write the new files first under temporary names, then swap, so a
    // reload in between never sees a half-restored folder as valid.
    let mut staged = Vec::new();
    for (name, text) in &a.sources {
        let file = Path::new(name)
            .file_name()
            .ok_or_else(|| PolicyStoreError::NoFileName(name.clone()))?;
        let tmp = dir.join(format!(".{}.restore", file.to_string_lossy()));
        std::fs::write(&tmp, text).map_err(PolicyStoreError::file(&tmp))?;
        staged.push((tmp, dir.join(file)));
    }
    let keep: Vec<_> = staged.iter().map(|(_, f)| f.clone()).collect();
    for entry in std::fs::read_dir(dir).map_err(PolicyStoreError::file(dir))? {
        let p = entry.map_err(PolicyStoreError::Listing)?.path();
        if p.extension().is_some_and(|x| x == "toml") && !keep.contains(&p) {
            std::fs::remove_file(&p).map_err(PolicyStoreError::file(&p))?;
        }
    }
    for (tmp, file) in staged {
        std::fs::rename(&tmp, &file).map_err(PolicyStoreError::file(&file))?;
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
        let none = store.target(Some("zzz")).unwrap_err();
        assert_eq!(
            crate::error_chain(&none),
            "no activated policy version `zzz`"
        );
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
