//! `triad-storaged`: turns pools into volumes for VMs.
//!
//! Every pool type sits behind [`Pool`]; the daemon serves them over HTTP on a Unix socket
//! (`server`) with the `triad_api::storage` types. Operations are keyed by the caller's volume id and idempotent:
//! a retried create returns the volume the first one made.

pub mod local;
pub mod server;
pub mod smp;
mod sparse;

use triad_api::storage::{Heartbeat, PoolUsage, Volume, VolumeRequest};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("volume {0} not found")]
    NotFound(String),
    #[error("volume {id} exists already with another {what}")]
    Conflict { id: String, what: &'static str },
    #[error("volume name {name} is taken by volume {by}")]
    NameTaken { name: String, by: String },
    #[error("volume {id}: {size} bytes is smaller than its {current}; volumes only grow")]
    Shrink { id: String, size: u64, current: u64 },
    #[error("{what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// A pool of volumes.
pub trait Pool: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// Creates the volume `req` asks for, or returns it when it exists already as asked.
    fn create(&self, req: &VolumeRequest) -> Result<Volume>;
    fn get(&self, id: &str) -> Result<Volume>;
    fn list(&self) -> Result<Vec<Volume>>;
    /// Deletes the volume; deleting one that is not there is not an error.
    fn delete(&self, id: &str) -> Result<()>;
    /// Grows the volume to `size_bytes` (never shrinks it).
    fn grow(&self, id: &str, size_bytes: u64) -> Result<Volume>;
    fn usage(&self) -> Result<PoolUsage>;
    /// Every node's storage heartbeat on the pool; only shared-mount pools have them.
    fn heartbeats(&self) -> Result<Vec<Heartbeat>> {
        Err(StorageError::Invalid {
            what: "pool",
            value: self.name().to_owned(),
            why: "only shared-mount (smp) pools have storage heartbeats",
        })
    }
}

/// The warning a pool carries (and logs) when more than `POOL_USE_WARNING` of its disks are
/// used.
fn use_warning(pool: &str, total: u64, free: u64) -> Option<String> {
    let used = total.saturating_sub(free) as f64 / total.max(1) as f64;
    (used > triad_api::storage::POOL_USE_WARNING).then(|| {
        let warning = format!(
            "pool {pool}: {:.0}% of its disks are used (warning above {:.0}%)",
            used * 100.0,
            triad_api::storage::POOL_USE_WARNING * 100.0
        );
        tracing::warn!("{warning}");
        warning
    })
}

/// Ids and names: 1 to 64 characters of `A-Za-z0-9-_.`, not starting with a dot.
fn check_name(what: &'static str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StorageError::Invalid {
            what,
            value: value.to_owned(),
            why: "must be 1 to 64 characters of A-Z a-z 0-9 - _ . and not start with a dot",
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pools_warn_past_70_percent_of_their_disks() {
        assert_eq!(super::use_warning("p", 100, 31), None);
        assert_eq!(
            super::use_warning("p", 100, 29).as_deref(),
            Some("pool p: 71% of its disks are used (warning above 70%)")
        );
        assert_eq!(super::use_warning("p", 0, 0), None);
    }
}
