//! `triad-storaged`'s resources: pools and the volumes in them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a volume is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum VolumeSource {
    /// Zeroes (a sparse, thin volume).
    Blank,
    /// A copy of another volume of the same pool (only its allocated data is copied).
    Volume { id: String },
}

/// `POST /pools/{pool}/volumes`: creates a volume, or returns it when a volume with this `id`
/// and the same request already exists (a retried create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRequest {
    /// Chosen by the caller (the controller uses a UUID); unique in the pool.
    pub id: String,
    /// Unique in the pool too; what operators see.
    pub name: String,
    pub size_bytes: u64,
    #[serde(default = "blank")]
    pub source: VolumeSource,
}

fn blank() -> VolumeSource {
    VolumeSource::Blank
}

/// A volume as the pool has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub pool: String,
    /// What the guest sees.
    pub size_bytes: u64,
    /// What it takes on the pool's disks (thin provisioning: often far less).
    pub allocated_bytes: u64,
    /// How a VMM opens it: a file path (local and shared-mount pools).
    pub path: PathBuf,
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
}

/// `GET /pools`: each pool with its space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolInfo {
    pub name: String,
    pub kind: PoolKind,
    pub usage: PoolUsage,
}

/// One pool in `triad-storaged`'s config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub kind: PoolKind,
    /// Local pools: the directory holding the volumes.
    pub path: PathBuf,
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
    pub pools: Vec<PoolConfig>,
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
