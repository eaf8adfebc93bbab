//! The `triad-vmm` configuration file and its control API (HTTP/JSON on a Unix socket).
//!
//! The same `VmConfig` is the `--config` file, the body of `PUT /vm/config`, and what hostd
//! will send when it starts a VM.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A whole VM: what to boot, on what machine, where its serial console goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub boot: BootConfig,
    pub machine: MachineConfig,
    #[serde(default)]
    pub serial: SerialConfig,
    /// virtio-blk disks, in the order the guest finds them.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// virtio-net NICs, each on a TAP device.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device fed from the host's kernel random source; on unless set false.
    #[serde(default = "enabled")]
    pub rng: bool,
}

fn enabled() -> bool {
    true
}

/// One virtio-blk disk backed by a raw image file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Unique within the VM; the guest reads it as the disk's serial (GET_ID, 20 bytes).
    pub id: String,
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub cache: CacheMode,
    /// Token-bucket limits on operations and bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    /// For a `path` of `rbd:POOL/IMAGE`: the cluster and the VMM's identity in it (defaults
    /// when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephClient>,
}

/// Who the VMM is to a Ceph cluster, for drives on RBD images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CephClient {
    /// The cluster's ceph.conf: its monitors and the keyring.
    #[serde(default = "default_ceph_conf")]
    pub conf: PathBuf,
    /// The cephx user, without its `client.` prefix.
    #[serde(default = "default_ceph_client")]
    pub client: String,
}

impl Default for CephClient {
    fn default() -> Self {
        Self {
            conf: default_ceph_conf(),
            client: default_ceph_client(),
        }
    }
}

fn default_ceph_conf() -> PathBuf {
    PathBuf::from("/etc/ceph/ceph.conf")
}

fn default_ceph_client() -> String {
    "admin".into()
}

/// I/O limits of one device: token buckets refilled continuously at these rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qos {
    /// Operations per second (disks only); absent or 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    /// Bytes per second; absent or 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Seconds of the rate a device may spend at once after being idle (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
}

/// `PATCH /drives/{id}` and `PATCH /nets/{id}`: change a running device's limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// The new limits; `null` removes them. Required: a PATCH without it is refused.
    pub qos: Option<Qos>,
}

/// One virtio-net NIC on a TAP device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Unique within the VM.
    pub id: String,
    /// The TAP interface; netd normally creates it, and the VMM creates it when it is absent.
    pub tap: String,
    /// `52:54:00:12:34:56`; when absent a stable locally administered MAC is derived from `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Limit on bytes per second, each way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

/// How disk writes meet the host page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// O_DIRECT: no host caching; FLUSH makes writes durable.
    #[default]
    None,
    /// O_DSYNC: every write is durable when it completes.
    Writethrough,
    /// Host page cache; FLUSH (fdatasync) makes writes durable.
    Writeback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// A PVH ELF (with the Xen PVH note), an ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// Where the guest's 8250 UART (COM1, port 0x3f8) writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    pub mode: SerialMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// With mode "file": past this many bytes the log moves to `<path>.old` and a new one
    /// starts (default 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

impl Default for SerialConfig {
    fn default() -> Self {
        Self {
            mode: SerialMode::Stdout,
            path: None,
            max_bytes: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialMode {
    File,
    Stdout,
    Off,
}

/// The VM's lifecycle as the VMM process sees it.
///
/// ```text
///  NotConfigured --PUT /vm/config--> Configured --start--> Running <--pause/resume--> Paused
///                                                             |  reboot: Running again   |
///                                                             +--shutdown/guest exit-----+--> Stopped
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    NotConfigured,
    Configured,
    Running,
    Paused,
    Stopped,
}

/// `GET /vm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Responses accept fields they do not know, so an older client can read a newer VMM.
pub struct VmInfo {
    pub state: VmState,
    pub config: Option<VmConfig>,
    /// Milliseconds since the current boot started; absent before the first start.
    pub uptime_ms: Option<u64>,
    /// How many times the guest was started (1 + reboots).
    pub boots: u32,
}

/// `PUT /vm/actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmActionRequest {
    pub action: VmAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmAction {
    Start,
    Pause,
    Resume,
    /// Power the VM off now; the VMM process then exits with status 0.
    Shutdown,
    /// Reset the machine and boot the same config again, in the same process.
    Reboot,
}

/// `GET /vm/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
// Responses accept fields they do not know, so an older client can read a newer VMM.
pub struct VmMetrics {
    /// KVM exits by reason, summed over vCPUs and boots.
    pub exits: BTreeMap<String, u64>,
    /// CPU time each vCPU thread of the current boot has used, in nanoseconds.
    pub vcpu_time_ns: Vec<u64>,
    /// Resident set size of the VMM process (guest memory included), in KiB.
    pub rss_kib: u64,
    /// Peak resident set size of the VMM process, in KiB.
    pub peak_rss_kib: u64,
    /// Per drive id: reads, read_bytes, writes, write_bytes, flushes, discards, errors,
    /// throttled (times QoS held a request back), for the current boot.
    #[serde(default)]
    pub drives: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per NIC id: rx/tx packets, bytes and drops, and throttled, for the current boot.
    #[serde(default)]
    pub nets: BTreeMap<String, BTreeMap<String, u64>>,
}
