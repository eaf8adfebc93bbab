//! `triad-netd`'s resources: networks (L2 and L3) and VM ports, as the controller sends them to
//! each host, and what a host has for diagnostics.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network in CIDR notation, `10.1.0.0/24`. The address is kept as written; `network()`
/// masks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The first address of the network.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The last address of the network (its broadcast address).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// An address a host may hold: inside, and neither the network nor the broadcast address
    /// (a /31 or /32 has no such reserved addresses).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && (self.prefix >= 31 || (ip != self.network() && ip != self.broadcast()))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR like 10.1.0.0/24");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(format!("{s:?}: the prefix length is at most 32"));
        }
        Ok(Self { addr, prefix })
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Ipv4Cidr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema("an IPv4 network, A.B.C.D/NN", "10.0.0.0/24")
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Ipv4Cidr {}

#[cfg(feature = "openapi")]
fn string_schema(
    description: &str,
    example: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .examples([serde_json::json!(example)])
        .into()
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A MAC address, `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address like 52:54:00:12:34:56");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(mac))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Mac {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema("a unicast MAC address", "52:54:00:12:34:56")
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Mac {}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How a network's frames travel between hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "kind")]
pub enum L2 {
    /// A Linux bridge with the host's uplink enslaved (or none: a host-local network).
    Novlan {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uplink: Option<String>,
    },
    /// A Linux bridge with a VXLAN device; every peer VTEP is in the device's forwarding table
    /// (head-end replication), so the underlay needs no multicast.
    Vxlan {
        vni: u32,
        /// The interface the tunnel's packets leave by.
        underlay: String,
        /// This host's VTEP address (the underlay's address when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local: Option<Ipv4Addr>,
        /// The other hosts' VTEP addresses.
        #[serde(default)]
        peers: Vec<Ipv4Addr>,
        #[serde(default = "vxlan_port")]
        port: u16,
    },
    /// An 802.1Q VLAN on a trunk uplink. The kernels Triad runs on may lack 802.1Q devices, so
    /// the tags are Open vSwitch's: the uplink is the trunk port of an OVS bridge (userspace
    /// datapath) and the network's Linux bridge, where its VMs' TAPs are, is that bridge's
    /// access port for `vid`.
    Vlan { vid: u16, uplink: String },
}

fn vxlan_port() -> u16 {
    4789
}

/// A static route handed to VMs by DHCP (option 121).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    pub destination: Ipv4Cidr,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub via: Ipv4Addr,
}

/// A range of addresses the controller allocates from, both ends included.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRange {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub start: Ipv4Addr,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub end: Ipv4Addr,
}

/// A network's addressing: what DHCP tells its VMs.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L3 {
    pub cidr: Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub gateway: Option<Ipv4Addr>,
    /// At most two.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>, format = Ipv4))]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub ranges: Vec<IpRange>,
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
    /// The address each host's DHCP server answers as (the same on every host: each answers
    /// only its own VMs); the network's last host address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub dhcp_server: Option<Ipv4Addr>,
    /// How long a DHCP lease lasts; a day when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u32>,
}

impl L3 {
    /// Checks the addressing on its own (a network's others are its host's business): what
    /// is wrong, when something is.
    pub fn check(&self) -> Result<(), String> {
        let l3 = self;
        let cidr = l3.cidr;
        if cidr.prefix > 30 {
            return Err(format!("{cidr} leaves no room for VMs (at most /30)"));
        }
        if let Some(gw) = l3.gateway {
            if !cidr.is_host(gw) {
                return Err(format!("gateway {gw} is not a host address of {cidr}"));
            }
        }
        if l3.dns.len() > 2 {
            return Err(format!("at most 2 DNS servers, not {}", l3.dns.len()));
        }
        for r in &l3.ranges {
            if !cidr.is_host(r.start)
                || !cidr.is_host(r.end)
                || u32::from(r.start) > u32::from(r.end)
            {
                return Err(format!(
                    "range {}-{} is not an ascending range of host addresses of {cidr}",
                    r.start, r.end
                ));
            }
            if let Some(gw) = l3.gateway {
                if (u32::from(r.start)..=u32::from(r.end)).contains(&u32::from(gw)) {
                    return Err(format!(
                        "range {}-{} holds the gateway {gw}",
                        r.start, r.end
                    ));
                }
            }
        }
        let server = l3.dhcp_server();
        if !cidr.is_host(server) || Some(server) == l3.gateway {
            return Err(format!(
                "DHCP server address {server} is not a free host address of {cidr}"
            ));
        }
        if let Some(r) = l3
            .ranges
            .iter()
            .find(|r| (u32::from(r.start)..=u32::from(r.end)).contains(&u32::from(server)))
        {
            return Err(format!(
            "the DHCP server address {server} lies in range {}-{}; set \"dhcp_server\" outside the ranges",
            r.start, r.end
        ));
        }
        if let Some(lease) = l3.lease_secs {
            if lease < 60 {
                return Err(format!("a lease of {lease} s is under a minute"));
            }
        }
        for route in &l3.routes {
            if !cidr.is_host(route.via) {
                return Err(format!(
                    "route to {} via {} leaves the network {cidr}",
                    route.destination, route.via
                ));
            }
        }
        Ok(())
    }

    /// The address the DHCP server answers as.
    pub fn dhcp_server(&self) -> Ipv4Addr {
        self.dhcp_server
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(self.cidr.broadcast()).wrapping_sub(1)))
    }
}

/// `PUT /networks/{id}`: the network as this host must have it. Idempotent: the same spec again
/// changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// What operators see.
    pub name: String,
    pub l2: L2,
    /// The MTU VMs get (DHCP option 26) and the bridge's; defaults to 1500, less the VXLAN
    /// overhead (50 bytes) on VXLAN networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l3: Option<L3>,
}

/// `PUT /ports/{id}`: a VM's NIC on a network of this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub network: String,
    pub mac: Mac,
    /// The address the controller allocated; required on networks with an L3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The VM's host name (DHCP option 12, metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// What the VM reads from 169.254.169.254 (EC2-style), besides its name, MAC and address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Security groups (ids): with any, the port passes only what their rules allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

/// Which way a security group rule looks: at connections into the VM or out of it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Gre,
    Any,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Accept,
    Drop,
}

/// TCP or UDP ports, both ends included.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

/// The other end of a connection a rule matches.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Remote {
    Cidr(Ipv4Cidr),
    /// The VMs of a security group (its `members`, and this host's ports in it).
    Group(String),
}

/// One rule of a security group. Rules are stateful: the answers of a connection a rule lets
/// through pass too.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub direction: Direction,
    pub protocol: Protocol,
    /// Only for TCP and UDP; every port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// Anywhere when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<Remote>,
    #[serde(default)]
    pub action: Action,
    /// Lower first; the first rule that matches decides. Equal priorities keep their order.
    #[serde(default = "default_priority")]
    pub priority: u16,
}

fn default_priority() -> u16 {
    100
}

/// `PUT /security-groups/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupSpec {
    pub name: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// The addresses of the group's VMs on other hosts, for rules elsewhere that name this
    /// group as their remote (the controller keeps it current).
    #[serde(default)]
    pub members: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    #[serde(flatten)]
    pub spec: SecurityGroupSpec,
}

/// `PUT /eips/{id}`: public address `ip` of network `network` mapped 1:1 to port `port`'s
/// address, on the port's own host (no gateway node). The VM's traffic to the world leaves
/// from the public address; what comes to the public address reaches the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EipSpec {
    pub ip: Ipv4Addr,
    /// The public network (one of this host's, with an uplink and addresses).
    pub network: String,
    pub port: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eip {
    pub id: String,
    #[serde(flatten)]
    pub spec: EipSpec,
}

/// A VM's instance metadata and user-data, served to it alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// `instance-id`; the port's id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// `public-keys/N/openssh-key`.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// `public-ipv4`, when the VM has an EIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ipv4: Option<Ipv4Addr>,
    /// `/latest/user-data`, as given (cloud-config, a script, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

/// A network as this host has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    #[serde(flatten)]
    pub spec: NetworkSpec,
    /// The Linux bridge VM taps are attached to.
    pub bridge: String,
    /// The MTU in force (the spec's, or the default for its kind).
    pub effective_mtu: u32,
}

/// A port as this host has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    #[serde(flatten)]
    pub spec: PortSpec,
    /// The TAP the VMM opens (`NetConfig::tap`).
    pub tap: String,
}

/// One interface of the host, as `GET /state` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkState {
    pub name: String,
    /// `bridge`, `vxlan`, `tun`, ...
    pub kind: String,
    pub up: bool,
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// What Triad tagged it with (`triad:network:ID`, `triad:port:ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// A VXLAN forwarding entry: frames for `mac` go to `dst`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbEntry {
    pub device: String,
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

/// `GET /state`: what the host has, read back from the kernel (not what netd was asked for),
/// for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    pub node: String,
    pub networks: Vec<Network>,
    pub ports: Vec<Port>,
    /// Triad's interfaces on the host, and the uplinks they use.
    pub links: Vec<LinkState>,
    pub fdb: Vec<FdbEntry>,
    /// Addresses this host's DHCP servers have handed out.
    pub leases: Vec<Lease>,
    pub security_groups: Vec<SecurityGroup>,
    pub eips: Vec<Eip>,
    /// The packet filter as loaded (`nft list` of Triad's tables).
    pub firewall: String,
    /// Triad's Open vSwitch ports (VLAN networks' trunks and access ports).
    #[serde(default)]
    pub ovs: Vec<OvsPort>,
}

/// A port of an Open vSwitch bridge that Triad made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OvsPort {
    pub bridge: String,
    pub port: String,
    /// The VLAN of an access port; none on a trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vid: Option<u16>,
    /// What Triad made it for (`triad:network:ID` or `triad:uplink:NAME`).
    pub owner: String,
}

/// An address a VM took from this host's DHCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub network: String,
    pub port: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// When the last ACK went out, in seconds since the Unix epoch.
    pub acked_at: u64,
    /// When the lease runs out unless renewed, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// `triad-netd --config FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetdConfig {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Where netd keeps what it was asked for, to reconcile the host after a restart.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The host's name (the system's host name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Open vSwitch's database (`ovs-vsctl --db`), for VLAN networks.
    #[serde(default = "default_ovs_db")]
    pub ovs_db: String,
}

impl NetdConfig {
    /// Where the packages' unit reads it from.
    pub const PATH: &'static str = "/etc/triad/netd.json";
}

fn default_ovs_db() -> String {
    "unix:/run/openvswitch/db.sock".to_owned()
}

fn default_socket() -> PathBuf {
    PathBuf::from("/run/triad/netd.sock")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/triad/netd")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_compare() {
        let net: Ipv4Cidr = "10.1.0.7/24".parse().unwrap();
        assert_eq!(net.network(), Ipv4Addr::new(10, 1, 0, 0));
        assert_eq!(net.broadcast(), Ipv4Addr::new(10, 1, 0, 255));
        assert!(net.is_host(Ipv4Addr::new(10, 1, 0, 1)));
        assert!(!net.is_host(Ipv4Addr::new(10, 1, 0, 255)));
        assert!(!net.contains(Ipv4Addr::new(10, 1, 1, 1)));
        assert!(net.overlaps(&"10.0.0.0/8".parse().unwrap()));
        assert!(!net.overlaps(&"10.1.1.0/24".parse().unwrap()));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(192, 0, 2, 1)));
        for bad in ["10.1.0.0", "10.1.0.0/33", "10.1.0/24", "x/8"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn macs_parse_and_print() {
        let mac: Mac = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert!(!mac.is_multicast());
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_network_with_an_mtu_round_trips() {
        let spec: NetworkSpec =
            serde_json::from_str(r#"{"name":"n","l2":{"kind":"novlan"},"mtu":1400}"#).unwrap();
        let net = Network {
            id: "n".into(),
            spec,
            bridge: "br".into(),
            effective_mtu: 1400,
        };
        let text = serde_json::to_string(&net).unwrap();
        assert_eq!(serde_json::from_str::<Network>(&text).unwrap(), net);
    }

    #[test]
    fn specs_reject_unknown_fields() {
        let ok = r#"{"name":"n","l2":{"kind":"vxlan","vni":7,"underlay":"eth0"}}"#;
        let spec: NetworkSpec = serde_json::from_str(ok).unwrap();
        assert!(matches!(spec.l2, L2::Vxlan { port: 4789, .. }));
        let typo = r#"{"name":"n","l2":{"kind":"novlan"},"mut":1400}"#;
        let err = serde_json::from_str::<NetworkSpec>(typo).unwrap_err();
        assert!(err.to_string().contains("mut"), "{err}");
    }
}
