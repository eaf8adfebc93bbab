//! The controller's HTTP API, `/v1`: what the CLI, operators' tools and browsers send and
//! receive. Every request type rejects unknown fields. With the `openapi` feature each type
//! also describes itself for the OpenAPI document the controller serves.
//!
//! Identifiers: nodes, offerings, networks, security groups, images, volumes, affinity groups
//! and tokens are named by the operator (`NAME`: lowercase letters, digits and '-', 1 to 63,
//! starting with a letter); VMs get a UUID and a name.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::hostd::HaLevel;
use crate::net::{Mac, Rule, L3};
use crate::storage::ImageSource;

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// `POST /v1/nodes`: a node joins. The token is the node's (`triad-hostd token` on it): the
/// controller presents it on every call to the node's hostd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeJoin {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// hostd's TCP address, `host:port`.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[^:\s]+:[0-9]{1,5}$"))]
    pub address: String,
    pub token: String,
    /// Where VXLAN tunnels to this node end (its data network address); the management
    /// address's host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub data_address: Option<Ipv4Addr>,
    /// The SHA-256 fingerprint of the certificate hostd serves before it joins (`triad-hostd
    /// token` prints it): the join trusts that certificate alone, then gives the node its
    /// certificate from the cluster's CA. Needed unless the controller runs --insecure-http.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^(sha256:)?[0-9a-fA-F:]{64,95}$")
    )]
    pub fingerprint: Option<String>,
}

/// Whether the scheduler may put new VMs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeEnable {
    #[default]
    Enabled,
    /// Out of service: no new VMs, and operators are told it is off.
    Disabled,
    /// No new VMs; the ones there stay.
    Locked,
    /// Being emptied or emptied for work on it; leaving it goes to Locked.
    Maintenance,
}

/// Whether the controller reaches the node's hostd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    Connected,
    Disconnected,
    /// Joined, not heard from yet.
    #[default]
    Connecting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    #[default]
    Alive,
    Suspect,
    Dead,
}

/// A node as the controller knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Node {
    pub name: String,
    pub address: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub data_address: Ipv4Addr,
    pub enable: NodeEnable,
    /// Entering maintenance: locked while its VMs are moved off or stopped; it becomes
    /// Maintenance when none runs there any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub entering_maintenance: bool,
    pub connection: Connection,
    pub liveness: Liveness,
    /// What its hostd last said, when it has said anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub reserved_memory_mib: u64,
    /// What the VMs placed on it take (placed by this controller, running or not).
    pub allocated_vcpus: u32,
    pub allocated_memory_mib: u64,
    pub vms: usize,
    /// storaged's pools there.
    pub pools: Vec<String>,
    /// netd's networks there.
    pub networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_unix_ms: Option<u64>,
    /// Why it is not Connected, or what a daemon of it reports as wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An instance offering: a VM size by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Offering {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    )]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 254))]
    pub vcpus: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 16, maximum = 16777216))]
    pub memory_mib: u64,
}

/// What happens to a dead node's NeverStop VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HaPolicy {
    /// Restarted elsewhere only with a fencing proof.
    #[default]
    Permissive,
    /// Restarted on the majority's vote alone; the minority's self-fencer kills its copies.
    Force,
}

/// How the scheduler chooses among nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The node with the most room left.
    #[default]
    Spread,
    /// The fullest node that fits.
    Binpack,
}

/// Cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub ha_enabled: bool,
    pub ha_policy: HaPolicy,
    /// Set before a planned stop of the whole cluster: no node fences itself and no VM is
    /// moved, until it is cleared.
    #[serde(default)]
    pub ha_disarmed: bool,
    /// vCPUs placed per host CPU (1.0 to 16.0).
    pub cpu_overcommit: f64,
    /// Memory placed per MiB of host memory less its reserve (1.0 to 4.0).
    pub memory_overcommit: f64,
    /// Memory no VM may use on each node, on top of what each hostd reserves.
    pub reserved_memory_mib: u64,
    pub placement: Placement,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ha_enabled: true,
            ha_policy: HaPolicy::Permissive,
            ha_disarmed: false,
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            reserved_memory_mib: 0,
            placement: Placement::Spread,
        }
    }
}

/// `PATCH /v1/settings`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_policy: Option<HaPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_disarmed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 16))]
    pub cpu_overcommit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 4))]
    pub memory_overcommit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// A network's layer 2, the same on every node; the controller gives each node's netd the
/// rest (its VXLAN peers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum NetworkL2 {
    /// A bridge on each node, with `uplink` (an interface of every node) enslaved, or none.
    Novlan {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uplink: Option<String>,
    },
    /// VXLAN between every node's data address, leaving by `underlay` (an interface of
    /// every node).
    Vxlan {
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 16777215))]
        vni: u32,
        #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._@-]{1,15}$"))]
        underlay: String,
    },
    /// An 802.1Q VLAN on the trunk `uplink` of every node.
    Vlan {
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 4094))]
        vid: u16,
        #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._@-]{1,15}$"))]
        uplink: String,
    },
}

/// `POST /v1/networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    pub l2: NetworkL2,
    /// Addressing: with it, VMs get their address by DHCP from the ranges (the whole CIDR
    /// less the gateway and the DHCP server when no range is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l3: Option<L3>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 576, maximum = 9000))]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Network {
    pub name: String,
    pub l2: NetworkL2,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l3: Option<L3>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Per node: `ready`, or what its netd said.
    pub nodes: BTreeMap<String, String>,
    /// Addresses taken by VMs.
    pub allocated: usize,
}

/// `POST /v1/security-groups`, and `PUT /v1/security-groups/{name}` (the rules, replaced
/// whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupCreate {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SecurityGroup {
    pub name: String,
    pub rules: Vec<Rule>,
    /// The VMs' addresses in it.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, format = Ipv4))]
    pub members: Vec<Ipv4Addr>,
}

/// `POST /v1/images`: imported into a pool of the nodes, in the background.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ImageCreate {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    pub pool: String,
    /// A file (on every node that imports it) or an http(s) URL.
    pub source: ImageSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The kernel VMs of this image boot (a file on every node), and its command line.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^/"))]
    pub kernel: String,
    #[serde(default)]
    pub cmdline: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    Importing,
    Ready,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Image {
    pub name: String,
    pub pool: String,
    pub source: ImageSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub kernel: String,
    pub cmdline: String,
    pub state: ImageState,
    pub size_bytes: u64,
    /// Source bytes read so far, of how many (when known).
    pub done_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/eips`: a public address of `network` mapped 1:1 to a VM's NIC, on whichever node
/// the VM runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EipCreate {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    /// The public network (with addressing) the address is taken from.
    pub network: String,
    /// Taken from the network's ranges when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub ip: Option<Ipv4Addr>,
    /// The VM's id (or its name, when only one VM has it).
    pub vm: String,
    /// The NIC (default `eth0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Eip {
    pub name: String,
    pub network: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub ip: Ipv4Addr,
    /// The VM's id.
    pub vm: String,
    pub nic: String,
    /// The node that holds it now, when its VM runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// `POST /v1/affinity-groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AffinityGroupCreate {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    pub rule: AffinityRule,
    /// Hard: a VM that cannot keep it is not placed. Soft: kept when it can be.
    #[serde(default)]
    pub strength: Strength,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum AffinityRule {
    /// The group's VMs on one node.
    VmAffinity,
    /// The group's VMs each on a node of its own.
    VmAntiAffinity,
    /// The group's VMs on these nodes.
    NodeAffinity { nodes: Vec<String> },
    /// The group's VMs not on these nodes.
    NodeAntiAffinity { nodes: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strength {
    #[default]
    Hard,
    Soft,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AffinityGroup {
    pub name: String,
    pub rule: AffinityRule,
    pub strength: Strength,
    /// Its VMs' UUIDs.
    pub vms: Vec<String>,
}

/// One NIC of `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NicCreate {
    pub network: String,
    /// Allocated from the network's ranges when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub ip: Option<Ipv4Addr>,
    /// Made up (52:54:00:…) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub mac: Option<Mac>,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VmCreate {
    /// A host name: letters, digits and '-', 1 to 63.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
    )]
    pub name: String,
    /// The size (default `1C2G`); `vcpus` and `memory_mib` override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offering: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 254))]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 16, maximum = 16777216))]
    pub memory_mib: Option<u64>,
    /// The image the root disk is cloned from (in the image's pool).
    pub image: String,
    /// The root disk's size (default: the image's, at least 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_size_bytes: Option<u64>,
    #[serde(default)]
    pub nics: Vec<NicCreate>,
    /// Data volumes to attach (`POST /v1/volumes` made them).
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub ha: HaLevel,
    #[serde(default)]
    pub affinity_groups: Vec<String>,
    /// Appended to the image's kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Start it once made (default true).
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

/// Where a VM is in its life (`../shared/DESIGN.md` §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Not placed: no node fits it yet (`triad vm why` says why).
    Pending,
    Scheduling,
    Starting,
    Running,
    Stopping,
    Stopped,
    Paused,
    Migrating,
    /// Its node is suspect: what it does is not known.
    Unknown,
    /// HA is restarting it elsewhere.
    Recovering,
    Destroying,
    Destroyed,
    /// Its node refused to make it; `reason` says why. Start it again to retry.
    Failed,
}

/// Whether a VM should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    #[default]
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct VmNic {
    /// `eth0`, `eth1`, … in order.
    pub id: String,
    pub network: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub mac: Mac,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub ip: Option<Ipv4Addr>,
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct VmDisk {
    /// `root`, or the data volume's name.
    pub id: String,
    pub pool: String,
    /// The volume's id in its pool.
    pub volume: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub state: VmState,
    /// Where it is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Bumped whenever the controller moves it: the node holding a lower one may not run it.
    pub generation: u64,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub image: String,
    pub nics: Vec<VmNic>,
    pub disks: Vec<VmDisk>,
    pub ha: HaLevel,
    pub power: PowerState,
    /// A stop that NeverStop must not undo.
    pub no_restart: bool,
    pub affinity_groups: Vec<String>,
    /// Why it is in its state, when that needs saying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_unix_ms: u64,
}

/// `POST /v1/vms/{id}/stop`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VmStop {
    /// Kill it at once instead of asking the guest to power off.
    #[serde(default)]
    pub force: bool,
    /// A NeverStop VM stays stopped (it is never restarted by HA until started).
    #[serde(default)]
    pub no_restart: bool,
}

/// `PUT /v1/vms/{id}/ha`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VmHa {
    pub ha: HaLevel,
}

/// Why a VM is where it is, or pending: every node, with what kept it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PlacementReport {
    pub vm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    pub nodes: Vec<NodeVerdict>,
    pub unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct NodeVerdict {
    pub node: String,
    /// The filter that rejected it, or none when it fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The weigher's score, for nodes that fit (higher wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// `POST /v1/volumes`: a data volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    pub pool: String,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1048576_f64, maximum = 1125899906842624_f64)
    )]
    pub size_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Volume {
    pub name: String,
    pub pool: String,
    pub size_bytes: u64,
    /// The volume's id in its pool.
    pub volume: String,
    /// The VM it is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

/// `POST /v1/volumes/{name}/attach`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeAttach {
    pub vm: String,
}

/// `POST /v1/volumes/{name}/grow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VolumeGrow {
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1048576_f64, maximum = 1125899906842624_f64)
    )]
    pub size_bytes: u64,
}

/// `POST /v1/volumes/{name}/snapshots`, and `…/snapshots/{snapshot}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    pub name: String,
}

/// What happened: every state change and every refused action, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Event {
    /// Increases with every event.
    pub seq: u64,
    pub unix_ms: u64,
    /// `vm/UUID`, `node/NAME`, `network/NAME`, …
    pub resource: String,
    pub kind: String,
    pub message: String,
}

/// A mutating call, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AuditRecord {
    pub seq: u64,
    pub unix_ms: u64,
    /// The token's name.
    pub token: String,
    pub method: String,
    pub path: String,
    pub status: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything, changes nothing.
    ReadOnly,
    Admin,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub name: String,
    pub role: Role,
}

/// A token as listed (the secret itself is shown once, when made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Token {
    pub name: String,
    pub role: Role,
    pub created_unix_ms: u64,
    /// Only in the answer to `POST /v1/tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
}

/// A long operation (202 Accepted answers name one): poll it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Operation {
    pub id: String,
    /// `vm.create`, `vm.start`, `image.import`, …
    pub kind: String,
    /// `vm/UUID`, `image/NAME`, …
    pub target: String,
    pub state: OperationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
}

/// The answer to a call that started a long operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Accepted<T> {
    pub operation: Operation,
    pub resource: T,
}
