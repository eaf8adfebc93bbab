//! The event log (every state change and every refused action, with the reason) and the audit
//! log (every mutating call): numbered records in the store, the last `KEEP` of each kept.

use triad_api::v1::{AuditRecord, Event};

use crate::model::{keys, now_ms, Db, DbError};

/// How many records of each log are kept.
const KEEP: u64 = 10_000;

/// Records an event; a failure to record it is logged, never the caller's failure.
pub async fn emit(db: &Db, resource: &str, kind: &str, message: impl Into<String>) {
    let message = message.into();
    tracing::info!("{resource} {kind}: {message}");
    if let Err(e) = write(db, resource, kind, message).await {
        tracing::warn!("recording an event of {resource}: {e}");
    }
}

async fn write(db: &Db, resource: &str, kind: &str, message: String) -> Result<(), DbError> {
    let seq = db.next_seq("events").await?;
    let event = Event {
        seq,
        unix_ms: now_ms(),
        resource: resource.to_owned(),
        kind: kind.to_owned(),
        message,
    };
    db.put(&keys::seq(keys::EVENTS, seq), &event).await?;
    if seq > KEEP {
        db.delete(&keys::seq(keys::EVENTS, seq - KEEP)).await?;
    }
    Ok(())
}

pub async fn audit(
    db: &Db,
    token: &str,
    method: &str,
    path: &str,
    status: u16,
) -> Result<(), DbError> {
    let seq = db.next_seq("audit").await?;
    let record = AuditRecord {
        seq,
        unix_ms: now_ms(),
        token: token.to_owned(),
        method: method.to_owned(),
        path: path.to_owned(),
        status,
    };
    db.put(&keys::seq(keys::AUDIT, seq), &record).await?;
    if seq > KEEP {
        db.delete(&keys::seq(keys::AUDIT, seq - KEEP)).await?;
    }
    Ok(())
}

/// Records after `after`, oldest first, at most `limit`.
pub async fn after<T: serde::de::DeserializeOwned>(
    db: &Db,
    prefix: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<T>, DbError> {
    // Keys sort by number: read the log and skip what is not wanted.
    let all = db.store.range(prefix).await?;
    let first = keys::seq(prefix, after.saturating_add(1));
    all.kvs
        .iter()
        .filter(|kv| kv.key >= first)
        .take(limit)
        .map(|kv| {
            serde_json::from_slice(&kv.value).map_err(|source| DbError::Decode {
                key: kv.key.clone(),
                source,
            })
        })
        .collect()
}
