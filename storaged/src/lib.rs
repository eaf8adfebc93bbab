//! `triad-storaged`: turns pools into volumes for VMs.
//!
//! Every pool type sits behind [`Pool`]; the daemon serves them over HTTP on a Unix socket
//! (`server`) with the `triad_api::storage` types. Operations are keyed by the caller's volume id and idempotent:
//! a retried create returns the volume the first one made.

pub mod ceph;
pub mod events;
pub mod images;
pub mod local;
pub mod server;
pub mod smp;
mod sparse;

use images::{ImageRecord, ImageWriter};
use serde::{Deserialize, Serialize};
use triad_api::storage::{
    BlocklistRequest, Heartbeat, Image, PoolUsage, Snapshot, Volume, VolumeClients, VolumeRequest,
    VolumeSource,
};
use triad_api::vmm::Qos;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("volume {0} not found")]
    NotFound(String),
    #[error("volume {id} exists already with another {what}")]
    Conflict { id: String, what: &'static str },
    #[error("{what} name {name} is taken by {what} {by}")]
    NameTaken {
        what: &'static str,
        name: String,
        by: String,
    },
    #[error("volume {id}: {size} bytes is smaller than its {current}; volumes only grow")]
    Shrink { id: String, size: u64, current: u64 },
    #[error("{what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("{0}")]
    Import(String),
    #[error("volume {0} is in use (a VMM has it open)")]
    InUse(String),
    #[error("{0}")]
    Busy(String),
    #[error("snapshot {snapshot} of volume {volume} not found")]
    SnapshotNotFound { volume: String, snapshot: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Ceph(#[from] triad_ceph::Error),
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
    /// The pool's images that are whole (imports under way are not the pool's yet).
    fn images(&self) -> Result<Vec<Image>>;
    fn image_record(&self, id: &str) -> Result<Option<ImageRecord>>;
    fn image(&self, id: &str) -> Result<Image>;
    /// Deletes an image; deleting one that is not there is not an error.
    fn delete_image(&self, id: &str) -> Result<()>;
    /// Where an import writes image `id` of `size` bytes.
    fn image_writer(&self, id: &str, size: u64) -> Result<Box<dyn ImageWriter>>;
    /// Takes snapshot `name` of volume `id`, or returns it when it exists already.
    fn snapshot(&self, id: &str, name: &str) -> Result<Snapshot>;
    fn snapshots(&self, id: &str) -> Result<Vec<Snapshot>>;
    /// Puts the volume's data back as it was at snapshot `name` (not while a VMM has it).
    fn rollback(&self, id: &str, name: &str) -> Result<()>;
    /// Deletes a snapshot; deleting one that is not there is not an error.
    fn delete_snapshot(&self, id: &str, name: &str) -> Result<()>;
    /// Who has the volume open; only Ceph pools can tell.
    fn clients(&self, _id: &str) -> Result<VolumeClients> {
        Err(StorageError::Unsupported(format!(
            "pool {}: only Ceph pools list a volume's clients",
            self.name()
        )))
    }
    /// Fences a Ceph client; only Ceph pools can.
    fn blocklist(&self, _req: &BlocklistRequest) -> Result<()> {
        Err(StorageError::Unsupported(format!(
            "pool {}: only Ceph pools blocklist clients",
            self.name()
        )))
    }
    /// Every node's storage heartbeat on the pool; only shared-mount pools have them.
    fn heartbeats(&self) -> Result<Vec<Heartbeat>> {
        Err(StorageError::Invalid {
            what: "pool",
            value: self.name().to_owned(),
            why: "only shared-mount (smp) pools have storage heartbeats",
        })
    }
}

/// What a pool keeps of a volume besides its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Record {
    id: String,
    name: String,
    size_bytes: u64,
    source: VolumeSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qos: Option<Qos>,
}

impl Record {
    /// Checks a create request and says what it wants kept.
    fn wanted(req: &VolumeRequest) -> Result<Self> {
        check_name("volume id", &req.id)?;
        check_name("volume name", &req.name)?;
        check_size(req.size_bytes)?;
        match &req.source {
            VolumeSource::Blank => {}
            VolumeSource::Volume { id } | VolumeSource::Image { id } => {
                check_name("source id", id)?
            }
            VolumeSource::Snapshot { volume, snapshot } => {
                check_name("source volume id", volume)?;
                check_name("snapshot name", snapshot)?;
            }
        }
        Ok(Self {
            id: req.id.clone(),
            name: req.name.clone(),
            size_bytes: req.size_bytes,
            source: req.source.clone(),
            qos: req.qos,
        })
    }

    /// What a create of `self` finds among the pool's records: `Some` when an earlier try
    /// made this very volume (return it as it is), `None` when nothing is in the way.
    fn existing<'r>(&self, records: &'r [Record]) -> Result<Option<&'r Record>> {
        if let Some(existing) = records.iter().find(|r| r.id == self.id) {
            let what = if existing.name != self.name {
                "name"
            } else if existing.size_bytes != self.size_bytes {
                "size"
            } else if existing.source != self.source {
                "source"
            } else if existing.qos != self.qos {
                "qos"
            } else {
                return Ok(Some(existing));
            };
            return Err(StorageError::Conflict {
                id: self.id.clone(),
                what,
            });
        }
        if let Some(other) = records.iter().find(|r| r.name == self.name) {
            return Err(StorageError::NameTaken {
                what: "volume",
                name: self.name.clone(),
                by: other.id.clone(),
            });
        }
        Ok(None)
    }
}

/// A volume may not be made smaller than what it is made from.
fn check_not_smaller(id: &str, size: u64, source_size: u64) -> Result<()> {
    if size < source_size {
        return Err(StorageError::Shrink {
            id: id.to_owned(),
            size,
            current: source_size,
        });
    }
    Ok(())
}

/// Volume sizes: whole 512-byte sectors (what a disk has), at least one.
fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(512) {
        return Err(StorageError::Invalid {
            what: "size_bytes",
            value: size.to_string(),
            why: "must be a positive multiple of 512",
        });
    }
    Ok(())
}

/// The warning a pool carries when more than `POOL_USE_WARNING` of its disks are
/// used.
fn use_warning(pool: &str, total: u64, free: u64) -> Option<String> {
    let used = total.saturating_sub(free) as f64 / total.max(1) as f64;
    (used > triad_api::storage::POOL_USE_WARNING).then(|| {
        let warning = format!(
            "pool {pool}: {:.0}% of its disks are used (warning above {:.0}%)",
            used * 100.0,
            triad_api::storage::POOL_USE_WARNING * 100.0
        );
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
