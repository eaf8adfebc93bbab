//! The embedded backend: one redb file, written by one controller.
//!
//! Tables: `kv` (key → entry: create and mod revisions, lease, value), `log` (revision → the
//! changes it made, the last `HISTORY` revisions, for watches that start in the past),
//! `meta` (the current and the compacted revision), `leases` (id → TTL) and `lease_keys`
//! ((lease, key) → ()). Each transaction is one redb write transaction, committed durably
//! before it answers. Lease deadlines live in memory: when the file is opened again every
//! lease gets its whole TTL anew, as etcd does after a leader change.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    check_txn, ttl_secs, Batch, EventKind, Expect, Kv, LeaseId, Op, Range, Revision, Store,
    StoreError, Txn, Watch, WatchEvent,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lease_keys");

/// How many revisions of history watches can start from.
const HISTORY: i64 = 10_000;
/// How often expired leases are looked for.
const REAP_EVERY: Duration = Duration::from_millis(100);

fn db_error(e: impl Into<::redb::Error>) -> StoreError {
    StoreError::Redb(e.into().to_string())
}

#[derive(Debug)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    /// Serialises writers, so that a revision and its broadcast go out in order.
    write: Mutex<()>,
    history: i64,
    changes: broadcast::Sender<Arc<Batch>>,
    deadlines: Mutex<HashMap<LeaseId, (Instant, Duration)>>,
}

impl RedbStore {
    /// Opens (or makes) the store at `path`; expired leases are reaped on the current tokio
    /// runtime until the store is dropped.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_history(path, HISTORY)
    }

    /// `open`, keeping `history` revisions for watches.
    pub fn open_with_history(path: &Path, history: i64) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        let mut deadlines = HashMap::new();
        {
            txn.open_table(KV).map_err(db_error)?;
            txn.open_table(LOG).map_err(db_error)?;
            txn.open_table(META).map_err(db_error)?;
            txn.open_table(LEASE_KEYS).map_err(db_error)?;
            let leases = txn.open_table(LEASES).map_err(db_error)?;
            let now = Instant::now();
            for row in leases.iter().map_err(db_error)? {
                let (id, ttl) = row.map_err(db_error)?;
                let ttl = Duration::from_secs(u64::try_from(ttl.value()).unwrap_or(1));
                deadlines.insert(id.value(), (now + ttl, ttl));
            }
        }
        txn.commit().map_err(db_error)?;
        let (changes, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            db,
            write: Mutex::new(()),
            history: history.max(1),
            changes,
            deadlines: Mutex::new(deadlines),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                let Some(inner) = weak.upgrade() else { return };
                let reaped = tokio::task::spawn_blocking(move || inner.reap()).await;
                if let Ok(Err(e)) = reaped {
                    tracing::error!("reaping expired leases: {e}");
                }
            }
        });
        Ok(Self { inner })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || call(&inner))
            .await
            .map_err(|e| StoreError::Redb(format!("a store task failed: {e}")))?
    }
}

/// A stored key: its revisions, lease (0: none) and value.
fn encode_entry(
    create: Revision,
    modified: Revision,
    lease: Option<LeaseId>,
    value: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(&lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_entry(key: &str, raw: &[u8]) -> Result<Kv, StoreError> {
    let int = |at: usize| {
        raw.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
            .ok_or_else(|| StoreError::Redb(format!("the entry of {key:?} is truncated")))
    };
    let lease = int(16)?;
    Ok(Kv {
        key: key.to_owned(),
        create_revision: int(0)?,
        mod_revision: int(8)?,
        lease: (lease != 0).then_some(lease),
        value: raw[24..].to_vec(),
    })
}

/// A revision's changes in the log: per event, its kind, the key's length and bytes, and
/// the entry's length and bytes.
fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.push(u8::from(e.kind == EventKind::Put));
        let entry = encode_entry(
            e.kv.create_revision,
            e.kv.mod_revision,
            e.kv.lease,
            &e.kv.value,
        );
        for part in [e.kv.key.as_bytes(), &entry] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn decode_events(mut raw: &[u8]) -> Result<Vec<WatchEvent>, StoreError> {
    let truncated = || StoreError::Redb("a log record is truncated".into());
    let take = |raw: &mut &[u8]| -> Result<Vec<u8>, StoreError> {
        let len = raw
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(truncated)? as usize;
        let part = raw.get(4..4 + len).ok_or_else(truncated)?.to_vec();
        *raw = &raw[4 + len..];
        Ok(part)
    };
    let mut events = Vec::new();
    while let Some((&kind, rest)) = raw.split_first() {
        raw = rest;
        let key = String::from_utf8(take(&mut raw)?).map_err(|_| truncated())?;
        let entry = take(&mut raw)?;
        events.push(WatchEvent {
            kind: if kind == 1 {
                EventKind::Put
            } else {
                EventKind::Delete
            },
            kv: decode_entry(&key, &entry)?,
        });
    }
    Ok(events)
}

impl Inner {
    fn revision(&self) -> Result<(Revision, Revision), StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let meta = txn.open_table(META).map_err(db_error)?;
        let get = |k: &str| -> Result<i64, StoreError> {
            Ok(meta
                .get(k)
                .map_err(db_error)?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        Ok((get("revision")?, get("compacted")?))
    }

    fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let kv = txn.open_table(KV).map_err(db_error)?;
        let found = kv.get(key).map_err(db_error)?;
        found.map(|raw| decode_entry(key, raw.value())).transpose()
    }

    fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let kv = txn.open_table(KV).map_err(db_error)?;
        let meta = txn.open_table(META).map_err(db_error)?;
        let revision = meta
            .get("revision")
            .map_err(db_error)?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut kvs = Vec::new();
        for row in kv.range(prefix..).map_err(db_error)? {
            let (key, raw) = row.map_err(db_error)?;
            if !key.value().starts_with(prefix) {
                break;
            }
            kvs.push(decode_entry(key.value(), raw.value())?);
        }
        Ok(Range { kvs, revision })
    }

    /// Applies `txn` if its expectations hold: the new revision (the current one when it
    /// changed nothing), or `None`. With `ending`, also ends that lease and deletes its keys,
    /// in the same write, so that no put with the lease can slip in between.
    fn commit(&self, txn: &Txn, ending: Option<LeaseId>) -> Result<Option<Revision>, StoreError> {
        check_txn(txn)?;
        let _writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let write = self.db.begin_write().map_err(db_error)?;
        let (revision, events) = {
            let mut kv = write.open_table(KV).map_err(db_error)?;
            let mut meta = write.open_table(META).map_err(db_error)?;
            let mut log = write.open_table(LOG).map_err(db_error)?;
            let mut lease_keys = write.open_table(LEASE_KEYS).map_err(db_error)?;
            let mut leases = write.open_table(LEASES).map_err(db_error)?;
            let current =
                |kv: &::redb::Table<&str, &[u8]>, key: &str| -> Result<Option<Kv>, StoreError> {
                    kv.get(key)
                        .map_err(db_error)?
                        .map(|raw| decode_entry(key, raw.value()))
                        .transpose()
                };
            for (key, expect) in &txn.when {
                let holds = match (expect, current(&kv, key)?) {
                    (Expect::Absent, None) => true,
                    (Expect::ModRevision(r), Some(kv)) => kv.mod_revision == *r,
                    _ => false,
                };
                if !holds {
                    return Ok(None);
                }
            }
            let mut ops = txn.then.clone();
            if let Some(lease) = ending {
                if leases.remove(lease).map_err(db_error)?.is_none() {
                    return Err(StoreError::LeaseNotFound(lease));
                }
                for row in lease_keys
                    .range((lease, "")..(lease + 1, ""))
                    .map_err(db_error)?
                {
                    let key = row.map_err(db_error)?.0.value().1.to_owned();
                    ops.push(Op::Delete { key });
                }
            }
            for op in &ops {
                if let Op::Put {
                    lease: Some(lease), ..
                } = op
                {
                    if leases.get(*lease).map_err(db_error)?.is_none() {
                        return Err(StoreError::LeaseNotFound(*lease));
                    }
                }
            }
            let now = meta
                .get("revision")
                .map_err(db_error)?
                .map(|v| v.value())
                .unwrap_or(0);
            let revision = now + 1;
            let mut events = Vec::new();
            for op in &ops {
                let old = current(&kv, op.key())?;
                if let Some(Kv {
                    lease: Some(lease), ..
                }) = &old
                {
                    lease_keys.remove((*lease, op.key())).map_err(db_error)?;
                }
                match op {
                    Op::Put { key, value, lease } => {
                        let create = old.map(|o| o.create_revision).unwrap_or(revision);
                        kv.insert(
                            key.as_str(),
                            encode_entry(create, revision, *lease, value).as_slice(),
                        )
                        .map_err(db_error)?;
                        if let Some(lease) = lease {
                            lease_keys
                                .insert((*lease, key.as_str()), ())
                                .map_err(db_error)?;
                        }
                        events.push(WatchEvent {
                            kind: EventKind::Put,
                            kv: Kv {
                                key: key.clone(),
                                value: value.clone(),
                                create_revision: create,
                                mod_revision: revision,
                                lease: *lease,
                            },
                        });
                    }
                    Op::Delete { key } => {
                        if old.is_some() {
                            kv.remove(key.as_str()).map_err(db_error)?;
                            events.push(deleted(key, revision));
                        }
                    }
                }
            }
            if events.is_empty() {
                (now, events)
            } else {
                meta.insert("revision", revision).map_err(db_error)?;
                log.insert(revision, encode_events(&events).as_slice())
                    .map_err(db_error)?;
                let forget = revision - self.history;
                if forget > 0 {
                    log.remove(forget).map_err(db_error)?;
                    meta.insert("compacted", forget).map_err(db_error)?;
                }
                (revision, events)
            }
        };
        write.commit().map_err(db_error)?;
        if let Some(lease) = ending {
            self.deadlines().remove(&lease);
        }
        if !events.is_empty() {
            // Nobody watching is fine: the log has it.
            let _ = self.changes.send(Arc::new(Batch { revision, events }));
        }
        Ok(Some(revision))
    }

    /// The batches after `after` up to now, from the log.
    fn history(&self, prefix: &str, after: Revision) -> Result<Vec<Batch>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let meta = txn.open_table(META).map_err(db_error)?;
        let compacted = meta
            .get("compacted")
            .map_err(db_error)?
            .map(|v| v.value())
            .unwrap_or(0);
        if after < compacted {
            return Err(StoreError::Compacted(after + 1));
        }
        let log = txn.open_table(LOG).map_err(db_error)?;
        let mut out = Vec::new();
        for row in log.range(after + 1..).map_err(db_error)? {
            let (revision, raw) = row.map_err(db_error)?;
            let batch = Batch {
                revision: revision.value(),
                events: decode_events(raw.value())?,
            };
            if let Some(batch) = filtered(&batch, prefix) {
                out.push(batch);
            }
        }
        Ok(out)
    }

    fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let _writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let write = self.db.begin_write().map_err(db_error)?;
        let id = {
            let mut leases = write.open_table(LEASES).map_err(db_error)?;
            let last = leases
                .last()
                .map_err(db_error)?
                .map(|(id, _)| id.value())
                .unwrap_or(0);
            let id = last + 1;
            leases.insert(id, ttl_secs(ttl)).map_err(db_error)?;
            id
        };
        write.commit().map_err(db_error)?;
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        self.deadlines().insert(id, (Instant::now() + ttl, ttl));
        Ok(id)
    }

    fn deadlines(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, (Instant, Duration)>> {
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.deadlines().get_mut(&lease) {
            Some((deadline, ttl)) if *deadline > Instant::now() => {
                *deadline = Instant::now() + *ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    /// Ends `lease` and deletes its keys in one revision.
    fn end_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.commit(&Txn::new(), Some(lease)).map(drop)
    }

    fn reap(&self) -> Result<(), StoreError> {
        let now = Instant::now();
        let expired: Vec<LeaseId> = self
            .deadlines()
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for lease in expired {
            match self.end_lease(lease) {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn deleted(key: &str, revision: Revision) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: Kv {
            key: key.to_owned(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            lease: None,
        },
    }
}

/// The part of `batch` under `prefix`, if any.
fn filtered(batch: &Batch, prefix: &str) -> Option<Batch> {
    let events: Vec<WatchEvent> = batch
        .events
        .iter()
        .filter(|e| e.kv.key.starts_with(prefix))
        .cloned()
        .collect();
    (!events.is_empty()).then_some(Batch {
        revision: batch.revision,
        events,
    })
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |inner| inner.range(&prefix)).await
    }

    async fn txn(&self, txn: Txn) -> Result<Option<Revision>, StoreError> {
        self.blocking(move |inner| inner.commit(&txn, None)).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        // Subscribed before the history is read, so that nothing falls between the two.
        let mut live = self.inner.changes.subscribe();
        let (now, compacted) = self.blocking(|inner| inner.revision()).await?;
        let mut last = if from <= 0 { now } else { from - 1 };
        if last < compacted {
            return Err(StoreError::Compacted(from));
        }
        let prefix = prefix.to_owned();
        let (tx, watch) = Watch::channel();
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut replay = true;
            loop {
                if replay {
                    let Some(store) = inner.upgrade() else { return };
                    let (p, after) = (prefix.clone(), last);
                    let history = tokio::task::spawn_blocking(move || store.history(&p, after))
                        .await
                        .unwrap_or(Err(StoreError::Closed));
                    match history {
                        Ok(batches) => {
                            for batch in batches {
                                last = batch.revision;
                                if tx.send(Ok(batch)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                    replay = false;
                }
                match live.recv().await {
                    Ok(batch) if batch.revision <= last => {}
                    Ok(batch) => {
                        last = batch.revision;
                        if let Some(batch) = filtered(&batch, &prefix) {
                            if tx.send(Ok(batch)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => replay = true,
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(Err(StoreError::Closed)).await;
                        return;
                    }
                }
            }
        });
        Ok(watch)
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.blocking(move |inner| inner.grant(ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease)
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.blocking(move |inner| inner.end_lease(lease)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_log_records_round_trip() {
        let kv = Kv {
            key: "/triad/vms/a".into(),
            value: b"{\"x\":1}".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            lease: Some(4),
        };
        let raw = encode_entry(3, 9, Some(4), &kv.value);
        assert_eq!(decode_entry(&kv.key, &raw).unwrap(), kv);
        let events = vec![
            WatchEvent {
                kind: EventKind::Put,
                kv,
            },
            deleted("/triad/vms/b", 9),
        ];
        assert_eq!(decode_events(&encode_events(&events)).unwrap(), events);
        assert!(decode_events(&encode_events(&events)[..10]).is_err());
    }
}
