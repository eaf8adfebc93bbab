//! Backups of the controller's state: every key of the store as of one revision (one read
//! transaction of redb, one revision of etcd) and the cluster's CA, whose certificates every
//! node holds. A backup holds secrets (node tokens, the CA's key): its file is mode 0600.
//!
//! `triad-controller backup` takes one through the running controller (`POST /v1/backup`,
//! admin only) and keeps the newest N; `triad-controller restore` puts one into a stopped
//! controller's store, replacing what is there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::keys;
use crate::store::{Store, StoreError, Txn};

/// What a backup file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// The version of Triad that took it.
    pub version: String,
    pub taken_unix_ms: u64,
    /// The store's revision it is as of.
    pub revision: i64,
    /// `redb` or `etcd`.
    pub store: String,
    /// The cluster's CA (certificate and key, PEM), when the controller speaks TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaFiles>,
    /// The key node tokens are sealed with in the store (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_key: Option<String>,
    pub entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaFiles").finish_non_exhaustive()
    }
}

/// One key and its value (the store's values are JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub key: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key {0:?} does not hold UTF-8 text")]
    NotText(String),
    #[error("the backup was taken by Triad {theirs}, newer than this controller's {ours}: restore it with Triad {theirs} or later")]
    Newer { theirs: String, ours: String },
    #[error("{0:?} is not a version (MAJOR.MINOR.PATCH)")]
    Version(String),
    #[error("the store holds a cluster already ({nodes} nodes, {vms} VMs): a restore replaces it; give --force to do so")]
    NotEmpty { nodes: usize, vms: usize },
}

/// Whether a key is taken into backups: a lease's keys (the leader's) belong to a live
/// controller, not to the cluster.
fn kept(kv: &crate::store::Kv) -> bool {
    kv.lease.is_none() && kv.key != keys::LEADER
}

/// Every key of `store` as of one revision.
pub async fn take(
    store: &dyn Store,
    store_kind: &str,
    ca: Option<CaFiles>,
    store_key: Option<String>,
) -> Result<Backup, BackupError> {
    let range = store.range("").await?;
    let entries = range
        .kvs
        .iter()
        .filter(|kv| kept(kv))
        .map(|kv| {
            String::from_utf8(kv.value.clone())
                .map(|value| Entry {
                    key: kv.key.clone(),
                    value,
                })
                .map_err(|_| BackupError::NotText(kv.key.clone()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Backup {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        taken_unix_ms: crate::model::now_ms(),
        revision: range.revision,
        store: store_kind.to_owned(),
        ca,
        store_key,
        entries,
    })
}

/// (major, minor) of `MAJOR.MINOR.PATCH`.
fn major_minor(version: &str) -> Result<(u64, u64), BackupError> {
    let mut parts = version.split('.').map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
        _ => Err(BackupError::Version(version.to_owned())),
    }
}

/// Refuses a backup from a newer Triad than `ours` (its records may hold what this one does
/// not know).
pub fn check_version(backup: &Backup, ours: &str) -> Result<(), BackupError> {
    if major_minor(&backup.version)? > major_minor(ours)? {
        return Err(BackupError::Newer {
            theirs: backup.version.clone(),
            ours: ours.to_owned(),
        });
    }
    Ok(())
}

/// Replaces every key of `store` with the backup's: refused, with nothing changed, when the
/// store holds nodes or VMs and `force` is not given.
pub async fn restore(store: &dyn Store, backup: &Backup, force: bool) -> Result<(), BackupError> {
    check_version(backup, env!("CARGO_PKG_VERSION"))?;
    let held = store.range("").await?;
    let count = |prefix: &str| {
        held.kvs
            .iter()
            .filter(|kv| kv.key.starts_with(prefix))
            .count()
    };
    let (nodes, vms) = (count(keys::NODES), count(keys::VMS));
    if (nodes > 0 || vms > 0) && !force {
        return Err(BackupError::NotEmpty { nodes, vms });
    }
    let restored: std::collections::HashSet<&str> =
        backup.entries.iter().map(|e| e.key.as_str()).collect();
    let mut txn = Txn::new();
    for kv in held.kvs.iter().filter(|kv| kept(kv)) {
        if !restored.contains(kv.key.as_str()) {
            txn = txn.delete(kv.key.clone());
        }
    }
    for entry in &backup.entries {
        txn = txn.put(entry.key.clone(), entry.value.clone().into_bytes());
    }
    store.txn(txn).await?;
    Ok(())
}

/// The file a backup taken at `unix_ms` is kept in, in `dir`.
pub fn file_name(dir: &Path, unix_ms: u64) -> PathBuf {
    dir.join(format!("triad-controller-{unix_ms:016}.json"))
}

/// The backup files in `dir`, oldest first.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("triad-controller-") && n.ends_with(".json"))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Removes all but the newest `keep` backups in `dir`; what it removed.
pub fn prune(dir: &Path, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    let all = files(dir)?;
    let old = all.len().saturating_sub(keep);
    let removed: Vec<PathBuf> = all.into_iter().take(old).collect();
    for path in &removed {
        std::fs::remove_file(path)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    fn store(name: &str) -> (RedbStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("triad-backup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        (RedbStore::open(&dir.join("state.redb")).unwrap(), dir)
    }

    #[tokio::test]
    async fn taken_and_restored_into_a_fresh_store() {
        let (from, dir) = store("from");
        from.txn(
            Txn::new()
                .put(format!("{}n1", keys::NODES), b"{\"n\":1}".to_vec())
                .put(format!("{}v1", keys::VMS), b"{\"generation\":7}".to_vec())
                .put(keys::LEADER, b"\"me\"".to_vec()),
        )
        .await
        .unwrap();
        let backup = take(&from, "redb", None, None).await.unwrap();
        assert_eq!(
            backup.entries.len(),
            2,
            "the leader's key is a live controller's"
        );

        let (to, dir2) = store("to");
        to.txn(Txn::new().put("/triad/offerings/x", b"{}".to_vec()))
            .await
            .unwrap();
        restore(&to, &backup, false).await.unwrap();
        let after = to.range("").await.unwrap();
        let keys: Vec<&str> = after.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [format!("{}n1", keys::NODES), format!("{}v1", keys::VMS)]
        );

        // Now it holds a cluster: only --force replaces it.
        assert!(matches!(
            restore(&to, &backup, false).await,
            Err(BackupError::NotEmpty { nodes: 1, vms: 1 })
        ));
        restore(&to, &backup, true).await.unwrap();

        let mut newer = backup.clone();
        newer.version = "99.0.0".into();
        let err = restore(&to, &newer, true).await.unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(dir2).unwrap();
    }

    #[test]
    fn versions_and_pruning() {
        let backup = |v: &str| Backup {
            version: v.into(),
            taken_unix_ms: 0,
            revision: 0,
            store: "redb".into(),
            ca: None,
            store_key: None,
            entries: vec![],
        };
        assert!(check_version(&backup("0.1.9"), "0.1.0").is_ok());
        assert!(check_version(&backup("0.0.3"), "0.1.0").is_ok());
        assert!(check_version(&backup("0.2.0"), "0.1.0").is_err());
        assert!(check_version(&backup("x"), "0.1.0").is_err());

        let dir = std::env::temp_dir().join(format!("triad-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for t in 1..=5 {
            std::fs::write(file_name(&dir, t), "{}").unwrap();
        }
        std::fs::write(dir.join("other.json"), "{}").unwrap();
        let removed = prune(&dir, 3).unwrap();
        assert_eq!(removed, vec![file_name(&dir, 1), file_name(&dir, 2)]);
        assert_eq!(files(&dir).unwrap().len(), 3);
        assert!(dir.join("other.json").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
