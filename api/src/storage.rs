//! `triad-storaged`'s resources: pools and the volumes in them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::vmm::{CephClient, DriveConfig, Qos};

/// What a volume is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum VolumeSource {
    /// Zeroes (a sparse, thin volume).
    Blank,
    /// A copy of another volume of the same pool (only its allocated data is copied).
    Volume { id: String },
    /// A VM root disk from an image of the same pool: a copy-on-write clone on Ceph pools, a
    /// sparse copy on file pools.
    Image { id: String },
    /// A copy of a volume's snapshot, independent of it.
    Snapshot { volume: String, snapshot: String },
}

/// `POST /pools/{pool}/volumes`: creates a volume, or returns it when a volume with this `id`
/// and the same request already exists (a retried create).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRequest {
    /// Chosen by the caller (the controller uses a UUID); unique in the pool.
    pub id: String,
    /// Unique in the pool too; what operators see.
    pub name: String,
    pub size_bytes: u64,
    #[serde(default = "blank")]
    pub source: VolumeSource,
    /// Limits the VMM enforces on the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

fn blank() -> VolumeSource {
    VolumeSource::Blank
}

/// A volume as the pool has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub pool: String,
    /// What the guest sees.
    pub size_bytes: u64,
    /// What it takes on the pool's disks (thin provisioning: often far less).
    pub allocated_bytes: u64,
    /// How a VMM opens it: a file path (local and shared-mount pools) or `rbd:POOL/IMAGE`.
    pub path: PathBuf,
    /// For RBD volumes: the cluster, and who to be in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephClient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

impl Volume {
    /// The volume as VM disk `drive_id` (writable, the default cache mode).
    pub fn drive(&self, drive_id: &str) -> DriveConfig {
        DriveConfig {
            id: drive_id.to_owned(),
            path: self.path.clone(),
            read_only: false,
            cache: Default::default(),
            qos: self.qos,
            ceph: self.ceph.clone(),
        }
    }
}

/// `POST /pools/{pool}/volumes/{id}/snapshots`: takes a snapshot (idempotent by name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub name: String,
}

/// A volume's snapshot: its data as it was when taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub name: String,
    /// The volume's size when the snapshot was taken.
    pub size_bytes: u64,
}

/// `GET /pools/{pool}/volumes/{id}/clients` (Ceph pools): who has the volume open, and who
/// holds its exclusive lock. Fencing blocklists these addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeClients {
    pub watchers: Vec<Watcher>,
    /// The addresses of the clients holding its lock (as the watchers give them).
    pub lock_owners: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watcher {
    /// As `POST /pools/{pool}/blocklist` takes it.
    pub addr: String,
    /// Its global id: `client.<id>`.
    pub id: i64,
}

/// `POST /pools/{pool}/blocklist` (Ceph pools): fences a client: every OSD refuses its
/// operations until the entry expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocklistRequest {
    pub addr: String,
    /// Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_seconds: Option<u32>,
}

/// A pool's space: given out to volumes (logical) against what its disks hold (physical).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolUsage {
    /// Sum of the volumes' sizes.
    pub provisioned_bytes: u64,
    /// Sum of what the volumes take.
    pub allocated_bytes: u64,
    /// The filesystem's (or cluster's) size and what is still free on it.
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Set when more than 70% of the pool's disks are used: thin volumes can outgrow what is
    /// left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The share of a pool's physical space above which it warns.
pub const POOL_USE_WARNING: f64 = 0.70;

/// `POST /pools/{pool}/volumes/{id}/grow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowRequest {
    pub size_bytes: u64,
}

/// The kinds of pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// A directory on this node.
    Local,
    /// A POSIX filesystem mounted at the same path on every node (NFS, GlusterFS, CephFS…):
    /// the same files as `local`, plus every node's storage heartbeat.
    Smp,
    /// RBD images in a Ceph pool.
    Ceph,
}

/// `GET /pools`: each pool with its space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolInfo {
    pub name: String,
    pub kind: PoolKind,
    /// Absent when the pool cannot be reached (`error` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<PoolUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One pool in `triad-storaged`'s config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub kind: PoolKind,
    /// Local and shared-mount pools: the directory holding the volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Ceph pools: the RADOS pool (default: the pool's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd_pool: Option<String>,
    /// Ceph pools: the cluster and the client storaged and the VMMs are in it (defaults:
    /// /etc/ceph/ceph.conf, admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephClient>,
}

/// `triad-storaged --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoragedConfig {
    /// Where the HTTP API listens.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// This node's name in storage heartbeats (default: the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How often this node writes its heartbeat on shared-mount pools (default 1000).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Where image downloads wait to be converted (default /var/lib/triad/storaged/staging).
    #[serde(default = "default_staging_dir")]
    pub staging_dir: PathBuf,
    /// How long an image download may wait for the server, to connect and for each read
    /// (default 30000).
    #[serde(default = "default_download_timeout_ms")]
    pub download_timeout_ms: u64,
    /// How often pools' space is looked at for warning events (default 30000).
    #[serde(default = "default_usage_check_ms")]
    pub usage_check_ms: u64,
    /// The pools (default: `local`, a local pool in /var/lib/triad/pools/local).
    #[serde(default = "default_pools")]
    pub pools: Vec<PoolConfig>,
}

impl StoragedConfig {
    /// Where the packages' unit reads it from.
    pub const PATH: &'static str = "/etc/triad/storaged.json";
}

/// A node without a config has one local pool, `local`.
fn default_pools() -> Vec<PoolConfig> {
    vec![PoolConfig {
        name: "local".into(),
        kind: PoolKind::Local,
        path: Some(PathBuf::from("/var/lib/triad/pools/local")),
        rbd_pool: None,
        ceph: None,
    }]
}

fn default_download_timeout_ms() -> u64 {
    30_000
}

fn default_usage_check_ms() -> u64 {
    30_000
}

fn default_staging_dir() -> PathBuf {
    PathBuf::from("/var/lib/triad/storaged/staging")
}

fn default_heartbeat_ms() -> u64 {
    1000
}

/// `GET /pools/{pool}/heartbeats`: one node's storage heartbeat on a shared-mount pool. A node
/// whose `beat` stops advancing has stopped writing to the pool (dead, or cut off from it);
/// hostd's fencing reads this before restarting its VMs elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub node: String,
    /// Counts up with every write, across restarts of the node's storaged.
    pub beat: u64,
    /// When it was written, by the writer's clock (Unix milliseconds).
    pub written_unix_ms: u64,
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/triad/storaged.sock")
}

/// Where an image's data comes from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum ImageSource {
    /// A file on the node storaged runs on.
    File {
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        path: PathBuf,
    },
    /// An http or https URL, streamed.
    Url { url: String },
}

/// `POST /pools/{pool}/images`: imports an image (raw, or qcow2 converted to raw) in the
/// background; the answer, and `GET /pools/{pool}/images/{id}`, report its progress. A
/// retried request with the same id and fields returns the same image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    pub id: String,
    pub name: String,
    pub source: ImageSource,
    /// The source's SHA-256 (hex); the import fails and keeps nothing when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    Importing,
    Ready,
    /// The import stopped (`error` says why) and left nothing behind; post it again to retry.
    Failed,
}

/// An image in a pool: what VM root volumes are made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub pool: String,
    pub state: ImageState,
    pub source: ImageSource,
    /// The source's format, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// The disk it holds (0 until known).
    pub size_bytes: u64,
    /// What it takes in the pool.
    pub allocated_bytes: u64,
    /// The source's SHA-256, once read whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Import progress: source bytes read, of how many (when known).
    pub done_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /events?after=SEQ`: what happened on the node's pools, oldest first (the daemon keeps
/// the last 1000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Counts up from 1 with every event since the daemon started.
    pub seq: u64,
    pub unix_ms: u64,
    pub kind: EventKind,
    pub pool: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// More than 70% of the pool's disks are used.
    PoolWarning,
    /// Back under the threshold.
    PoolOk,
    /// The pool cannot be reached (a Ceph cluster down).
    PoolUnreachable,
    ImageReady,
    ImageFailed,
    ClientBlocklisted,
}
