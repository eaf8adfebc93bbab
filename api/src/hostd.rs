//! `triad-hostd`'s API: the node agent the controller (over TCP) and local tools (over a Unix
//! socket) talk to. VMs are keyed by UUID and made with idempotent ensures; each carries a
//! generation number so that an older copy of a VM can never be started over a newer one.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::net::{Mac, NetState};
use crate::storage::{PoolInfo, VolumeSource};
use crate::vmm::{BootConfig, CacheMode, CephClient, Qos, VmMetrics};

/// `triad-hostd --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostdConfig {
    /// The Unix socket for local tools (`triad-hostd diag`, the CLI).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The TCP address the controller talks to; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The state file, the event log and one directory per VM (its VMM's config, socket,
    /// serial log and output).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// This node's name (the system's host name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default = "default_netd_socket")]
    pub netd_socket: PathBuf,
    #[serde(default = "default_storaged_socket")]
    pub storaged_socket: PathBuf,
    /// The VMM binary (default: `triad-vmm` beside `triad-hostd`, else on PATH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_binary: Option<PathBuf>,
    /// Memory kept for the host itself: VMs get what is left (default 1024).
    #[serde(default = "default_reserved_memory_mib")]
    pub reserved_memory_mib: u64,
    /// A VM's serial log moves to `serial.log.old` past this size (default 16 MiB).
    #[serde(default = "default_serial_max_bytes")]
    pub serial_max_bytes: u64,
    /// The first wait before a NeverStop VM whose VMM exited is started again; each exit
    /// in a row doubles it, up to `restart_backoff_max_ms` (defaults 500 and 30000).
    #[serde(default = "default_restart_backoff_ms")]
    pub restart_backoff_ms: u64,
    #[serde(default = "default_restart_backoff_max_ms")]
    pub restart_backoff_max_ms: u64,
    /// The local addresses peer heartbeats go from and are heard on, `ADDR:PORT`, one per
    /// probe network (management and storage; never the VM data network). Empty: the node
    /// sends and hears none, and its self-fencer never acts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<SocketAddr>,
}

impl HostdConfig {
    /// Where the packages' unit reads it from.
    pub const PATH: &'static str = "/etc/triad/hostd.json";
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/triad/hostd.sock")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/triad/hostd")
}

fn default_netd_socket() -> PathBuf {
    PathBuf::from("/run/triad/netd.sock")
}

fn default_storaged_socket() -> PathBuf {
    PathBuf::from("/run/triad/storaged.sock")
}

fn default_reserved_memory_mib() -> u64 {
    1024
}

fn default_serial_max_bytes() -> u64 {
    16 << 20
}

fn default_restart_backoff_ms() -> u64 {
    500
}

fn default_restart_backoff_max_ms() -> u64 {
    30_000
}

/// What happens when a VM's VMM exits while nobody asked it to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HaLevel {
    /// It stays stopped.
    #[default]
    None,
    /// It is started again on this node (after a back-off), and by the controller elsewhere
    /// when this node dies.
    NeverStop,
}

/// Whether a VM should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    #[default]
    Running,
    Stopped,
}

/// `PUT /vms/{uuid}`: the whole VM as this node must have it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// What operators see, and the VM's host name in DHCP and metadata.
    pub name: String,
    /// Bumped by the controller whenever it moves or changes the VM. An ensure with a lower
    /// generation than the node holds is refused (409); the same generation again must carry
    /// the same spec.
    pub generation: u64,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The kernel (a file on this node) and its command line.
    pub boot: BootConfig,
    /// virtio-blk disks, in the order the guest finds them (at most 24).
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// virtio-net NICs, in the order the guest finds them.
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// Served by the metadata service at `/latest/user-data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub ha: HaLevel,
    /// Whether a new generation should run (default) or be stopped; a repeated ensure of the
    /// same generation leaves the power state as start/stop requests set it.
    #[serde(default)]
    pub power: Power,
}

/// The most disks one VM has.
pub const MAX_DISKS: usize = 24;

/// One disk: a storaged volume, made by the ensure when `source` is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Unique in the VM; the guest reads it as the disk's serial.
    pub id: String,
    pub pool: String,
    /// The volume's id in the pool.
    pub volume: String,
    /// What to make the volume from (`{"kind": "image", "id": ...}` for a root disk, `blank`
    /// for a data disk). Absent: the volume exists already, and removing the VM keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<VolumeSource>,
    /// The size to make it (required with `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Keep the volume when the VM is removed, although the ensure made it.
    #[serde(default)]
    pub keep: bool,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub cache: CacheMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

/// One NIC: a netd port (TAP, DHCP reservation, metadata, security groups) on a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// Unique in the VM; with the VM's UUID it names the netd port (`UUID-ID`).
    pub id: String,
    pub network: String,
    pub mac: Mac,
    /// The address DHCP gives the VM (none: the NIC gets no DHCP answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

/// `PUT /vms/{uuid}/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRequest {
    pub action: PowerAction,
    /// For `stop`: how long the VMM may take to power off before it is killed (default
    /// 10000); 0 kills it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Start,
    /// Stops the VM and keeps it stopped (supervision does not start it again).
    Stop,
    /// Resets the machine in the same VMM process.
    Reboot,
}

/// Where a VM is, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Its VMM is being started.
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
    /// Its VMM exited on its own and a restart is due (NeverStop).
    Restarting,
}

/// A VM as this node has it: `GET /vms/{uuid}`, and the answer to an ensure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    pub uuid: String,
    pub spec: VmSpec,
    pub phase: VmPhase,
    /// The VMM's process, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub vmm_socket: PathBuf,
    pub serial_log: PathBuf,
    /// Times supervision started (or tried to start) the VMM again: after it exited on its
    /// own, or when a starting hostd found it gone.
    pub restarts: u32,
    /// How the VMM last ended, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    pub disks: Vec<DiskState>,
    pub nics: Vec<NicState>,
    /// The VMM's counters (per disk and NIC, exits, memory); only from `GET /vms/{uuid}` of
    /// a running VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<VmMetrics>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskState {
    pub id: String,
    pub pool: String,
    pub volume: String,
    /// How the VMM opens it: a file path or `rbd:POOL/IMAGE`.
    pub path: PathBuf,
    /// For RBD volumes: the cluster, and who the VMM is in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph: Option<CephClient>,
    /// Made by an ensure of this VM (and deleted with it unless `keep`).
    pub made_here: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicState {
    pub id: String,
    /// netd's port.
    pub port: String,
    pub tap: String,
}

/// `GET /node`: who this node is and what it can hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub version: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub reserved_memory_mib: u64,
    /// What this node's VMs take.
    pub allocated_vcpus: u32,
    pub allocated_memory_mib: u64,
    pub vms: usize,
    /// storaged's pools, with their space; empty with `storaged_error` set when storaged
    /// does not answer.
    pub pools: Vec<PoolInfo>,
    /// netd's networks, by id.
    pub networks: Vec<String>,
    /// Set when a daemon does not answer: what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storaged_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netd_error: Option<String>,
    /// Where its peers' heartbeats reach it (`HostdConfig::probes`).
    #[serde(default)]
    pub probes: Vec<SocketAddr>,
}

/// `PUT /tls` (on TCP, at the join): the node's certificate from the cluster's CA, its key and
/// the CA. hostd serves it from then on and accepts only the CA's client certificates.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsInstall {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsInstall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsInstall").finish_non_exhaustive()
    }
}

/// `PUT /cluster`: the cluster as the controller sees it. hostd keeps it in its state
/// directory, so that heartbeats and the self-fencer go on while no controller is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// The HMAC-SHA256 key that signs heartbeats: 64 hex digits, the same on every node.
    pub key: String,
    /// Every node of the cluster, this one included.
    pub nodes: Vec<ClusterNode>,
    pub timers: HaTimers,
    /// What the self-fencer does in a minority partition.
    pub fence: FenceMode,
}

/// A node as its peers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    pub name: String,
    /// Its probe addresses, in the same network order on every node.
    pub probes: Vec<SocketAddr>,
}

/// The liveness timers, the same on every node and the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaTimers {
    /// How often each node sends each peer a heartbeat on each probe network.
    pub interval_ms: u64,
    /// A peer no heartbeat came from, on any probe network, for this long is unreachable.
    pub suspect_after_ms: u64,
    /// A node that heard less than a majority (itself included) for this long fences itself.
    pub fence_after_ms: u64,
}

impl Default for HaTimers {
    fn default() -> Self {
        Self {
            interval_ms: 200,
            suspect_after_ms: 800,
            fence_after_ms: 600,
        }
    }
}

/// What a node in a minority partition does with its VMs on shared storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceMode {
    /// Nothing: HA is off or disarmed.
    #[default]
    Off,
    /// Keeps them running; the majority restarts them only with a fencing proof.
    Permissive,
    /// Kills them `fence_after_ms` after it lost the majority, before the majority's
    /// deadline to restart them.
    Force,
}

/// `GET /peers`: what this node hears of its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub node: String,
    /// Every other node of the cluster this node knows.
    pub peers: Vec<PeerSeen>,
    /// The nodes it hears, itself included, and the cluster's size.
    pub hears: usize,
    pub of: usize,
    /// How long it has heard less than a majority; absent while it hears one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minority_for_ms: Option<u64>,
    /// What the self-fencer did since the node lost its majority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSeen {
    pub name: String,
    /// A heartbeat came on some probe network within `suspect_after_ms`.
    pub reachable: bool,
    /// Per probe network: how long ago its last heartbeat came (absent: none yet).
    pub heard_ms_ago: Vec<Option<u64>>,
}

/// `GET /events?after=SEQ`: what happened to this node's VMs, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEvent {
    /// Counts up from 1, across restarts of hostd.
    pub seq: u64,
    pub unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    pub kind: HostEventKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostEventKind {
    /// An ensure made the VM (its volumes, ports and, to run it, its VMM).
    VmEnsured,
    /// An ensure failed at a step and what it made was undone.
    EnsureFailed,
    /// An ensure was refused: a lower generation, or a change that cannot be made.
    EnsureRefused,
    VmStarted,
    VmStopped,
    VmRebooted,
    /// The VMM exited without being asked to.
    VmExited,
    /// Supervision started the VMM again.
    VmRestarted,
    /// A restarted hostd found the VM's VMM still running and took it back.
    VmAdopted,
    VmRemoved,
    /// hostd started (after a restart: what it found).
    HostdStarted,
    /// The self-fencer killed the VM: the node heard less than a majority of its cluster.
    VmFenced,
    /// The node lost or regained its majority.
    Quorum,
}

/// `triad-hostd diag`: everything the node's daemons say, gathered from their local sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// Each daemon by name: `ok` or what went wrong reaching it.
    pub daemons: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeInfo>,
    pub vms: Vec<Vm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetState>,
    /// Each pool's volumes, with who holds them (watchers and lock owners, Ceph pools).
    pub volumes: Vec<VolumeDiag>,
    pub events: Vec<HostEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDiag {
    pub pool: String,
    pub id: String,
    pub name: String,
    pub size_bytes: u64,
    /// The VM of this node using it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Clients with it open (Ceph pools).
    #[serde(default)]
    pub watchers: Vec<String>,
    /// Holders of its exclusive lock (Ceph pools).
    #[serde(default)]
    pub lock_owners: Vec<String>,
}

/// `GET /vms/{uuid}/serial?after=BYTE`: the VM's serial console output from byte `after` of
/// the current log on (at most 64 KiB a call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialChunk {
    /// Where the next read starts.
    pub offset: u64,
    pub text: String,
}
