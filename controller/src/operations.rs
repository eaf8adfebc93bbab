//! Long operations: a call that starts one answers 202 with it, and its reconciler finishes
//! it (succeeded or failed, with the reason). Records under `/triad/operations/`.

use triad_api::v1::{Operation, OperationState};

use crate::model::{keys, now_ms, Db, DbError};

/// A new operation, not yet written: write it in the transaction that starts the work.
pub fn new(kind: &str, target: &str) -> Result<Operation, DbError> {
    let id = format!(
        "op-{}",
        crate::auth::new_secret()
            .map_err(|e| DbError::Store(crate::store::StoreError::Invalid(e.to_string())))?
            .get(..16)
            .unwrap_or_default()
    );
    Ok(Operation {
        id,
        kind: kind.to_owned(),
        target: target.to_owned(),
        state: OperationState::Running,
        message: None,
        created_unix_ms: now_ms(),
        finished_unix_ms: None,
    })
}

pub fn key(id: &str) -> String {
    format!("{}{id}", keys::OPERATIONS)
}

/// `op` ended (if it still ran): succeeded, or failed with `error`.
pub fn end(op: &mut Operation, error: Option<String>) {
    if op.state == OperationState::Running {
        op.state = if error.is_some() {
            OperationState::Failed
        } else {
            OperationState::Succeeded
        };
        op.message = error;
        op.finished_unix_ms = Some(now_ms());
    }
}

/// Ends operation `id` (if it still runs): succeeded, or failed with `error`.
pub async fn finish(db: &Db, id: &str, error: Option<String>) -> Result<(), DbError> {
    db.modify::<Operation, DbError>(&key(id), |op| {
        end(op, error.clone());
        Ok(())
    })
    .await
    .map(drop)
}
