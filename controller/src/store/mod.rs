//! The controller's state: a key-value store with etcd's semantics, so that the controller
//! holds nothing it cannot rebuild and several controllers can share one cluster's state.
//!
//! - keys are strings, values bytes (Triad stores JSON);
//! - every change has a cluster-wide **revision**, increasing by one per transaction;
//! - a transaction applies its puts and deletes only when each of its expectations holds
//!   (a key absent, or last changed at a given revision): compare-and-swap on one key or many;
//! - a **watch** delivers every change under a prefix from a revision on, batched per
//!   revision, or says the revision was compacted (the watcher lists again);
//! - a **lease** expires unless kept alive, and deletes the keys put with it.
//!
//! Two backends: an embedded redb file (`RedbStore`, the default for one controller) and etcd
//! (`EtcdStore`, for several). The same suite (`controller/tests/store.rs`) runs on both.

mod etcd;
mod redb;

use std::time::Duration;

use async_trait::async_trait;

pub use self::etcd::EtcdStore;
pub use self::redb::RedbStore;

pub type Revision = i64;
pub type LeaseId = i64;

/// A key with its value and history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that made the key (since it was last absent).
    pub create_revision: Revision,
    /// The revision that last changed it.
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// The keys under a prefix, as of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub kvs: Vec<Kv>,
    pub revision: Revision,
}

/// What a transaction expects of a key before it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Absent,
    /// Present and last changed at this revision.
    ModRevision(Revision),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }
}

/// All of `then`, at one revision, if every expectation in `when` holds; else nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub when: Vec<(String, Expect)>,
    pub then: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn expect(mut self, key: impl Into<String>, expect: Expect) -> Self {
        self.when.push((key.into(), expect));
        self
    }

    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.then.push(Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        });
        self
    }

    pub fn put_with_lease(
        mut self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        self.then.push(Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        });
        self
    }

    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.then.push(Op::Delete { key: key.into() });
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. A delete's `kv` has the key, an empty value and the deleting revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: Kv,
}

/// The changes of one revision under a watch's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

/// A stream of batches, oldest first, none missed: `next` answers an error, never a gap.
#[derive(Debug)]
pub struct Watch {
    rx: tokio::sync::mpsc::Receiver<Result<Batch, StoreError>>,
}

impl Watch {
    fn channel() -> (tokio::sync::mpsc::Sender<Result<Batch, StoreError>>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        (tx, Self { rx })
    }

    /// The next batch; `Compacted` when the history the watch needs is gone, `Closed` when
    /// the store went away. After an error the watch is over.
    pub async fn next(&mut self) -> Result<Batch, StoreError> {
        self.rx.recv().await.unwrap_or(Err(StoreError::Closed))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("revision {0} has been compacted: list again and watch from the listing's revision")]
    Compacted(Revision),
    #[error("lease {0} does not exist (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("the store is closed")]
    Closed,
    #[error("{0}")]
    Invalid(String),
    #[error("redb: {0}")]
    Redb(String),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// The store the controller keeps its state in; see the module doc.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError>;
    /// Every key starting with `prefix`, in key order.
    async fn range(&self, prefix: &str) -> Result<Range, StoreError>;
    /// The new revision, or `None` when an expectation failed (and nothing changed).
    async fn txn(&self, txn: Txn) -> Result<Option<Revision>, StoreError>;
    /// Changes under `prefix` made at `from` and after (`from` 0: those after now).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError>;
    /// A lease that expires `ttl` after its last keep-alive (whole seconds, at least 1).
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Ends a lease now, deleting its keys.
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
}

/// A lease TTL in whole seconds, at least one.
fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)
}

/// The first key after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every key: etcd spells this "\0".
    vec![0]
}

fn check_txn(txn: &Txn) -> Result<(), StoreError> {
    let mut keys = std::collections::BTreeSet::new();
    for op in &txn.then {
        if op.key().is_empty() {
            return Err(StoreError::Invalid(
                "a transaction puts or deletes an empty key".into(),
            ));
        }
        if !keys.insert(op.key()) {
            return Err(StoreError::Invalid(format!(
                "a transaction changes {:?} twice",
                op.key()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a"), b"/b".to_vec());
        assert_eq!(prefix_end("/a\u{ff}"), b"/a\xc3\xc0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
