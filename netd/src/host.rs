//! The host's networks and ports: what netd was asked for (kept on disk), checked as a whole
//! before anything changes, and carried out on the kernel idempotently, so that the same
//! request again, or a restart at any moment, converges on the same host.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use triad_api::net::{
    Eip, EipSpec, FdbEntry, Lease, LinkState, NetState, Network, NetworkSpec, OvsPort, Port,
    PortSpec, Protocol, Remote, SecurityGroup, SecurityGroupSpec, L2,
};

use crate::link::{Fdb, Link, Netlink, NetlinkError, VxlanParams, FLOOD};
use crate::ovs::Ovs;
use crate::tap;
use crate::Error;
use crate::{dhcp, firewall, metadata};

/// What VXLAN adds to every frame on an IPv4 underlay: outer IPv4, UDP, VXLAN and Ethernet.
pub const VXLAN_OVERHEAD: u32 = 50;
const DEFAULT_MTU: u32 = 1500;

/// What netd was asked for: the state file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    pub networks: BTreeMap<String, NetworkSpec>,
    pub ports: BTreeMap<String, PortSpec>,
    #[serde(default)]
    pub security_groups: BTreeMap<String, SecurityGroupSpec>,
    #[serde(default)]
    pub eips: BTreeMap<String, EipSpec>,
}

/// A short, stable tag for an id that fits an interface name.
fn tag(id: &str) -> String {
    format!("{:08x}", fnv(id))
}

/// FNV-1a: stable across releases, unlike std's hasher.
pub fn fnv(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The metadata service's MAC on a network, fixed like the bridge's.
pub fn service_mac(node: &str, network: &str) -> triad_api::net::Mac {
    bridge_mac(&format!("{node}/metadata"), network)
}

/// The bridge's own MAC, set rather than left to the kernel: a bridge takes on its ports'
/// lowest MAC as they come and go, and DHCP answers and renewals need one that stays. Unique
/// per host and network (locally administered), as the bridges of one network share an L2.
pub fn bridge_mac(node: &str, network: &str) -> triad_api::net::Mac {
    let [a, b, c, d] = fnv(&format!("{node}/{network}")).to_be_bytes();
    let e = fnv(network).to_be_bytes()[3];
    triad_api::net::Mac([0x02, a, b, c, d, e])
}

pub fn bridge_name(network: &str) -> String {
    format!("tbr{}", tag(network))
}

pub fn vxlan_name(network: &str) -> String {
    format!("tvx{}", tag(network))
}

pub fn metadata_veth(network: &str) -> String {
    format!("tmh{}", tag(network))
}

pub fn metadata_peer(network: &str) -> String {
    format!("tmp{}", tag(network))
}

pub fn tap_name(port: &str) -> String {
    format!("ttp{}", tag(port))
}

/// The Open vSwitch bridge whose trunk port is `uplink`, shared by its VLAN networks.
pub fn ovs_bridge_name(uplink: &str) -> String {
    format!("tov{}", tag(uplink))
}

/// A VLAN network's veth end in its Linux bridge.
pub fn vlan_veth(network: &str) -> String {
    format!("tvl{}", tag(network))
}

/// A VLAN network's veth end in the Open vSwitch bridge: the VLAN's access port.
pub fn vlan_peer(network: &str) -> String {
    format!("tvo{}", tag(network))
}

fn uplink_owner(uplink: &str) -> String {
    format!("triad:uplink:{uplink}")
}

fn network_owner(id: &str) -> String {
    format!("triad:network:{id}")
}

fn port_owner(id: &str) -> String {
    format!("triad:port:{id}")
}

/// Keeps the host itself out of a bridge's reach: no ARP answers for the host's addresses
/// and no IPv6 on it (the firewall drops IPv4 to the host from Triad's bridges). VMs talk to
/// DHCP by packet socket and to metadata in its own namespace, so they lose nothing.
fn seal_off(bridge: &str) {
    for (path, value) in [
        (format!("/proc/sys/net/ipv4/conf/{bridge}/arp_ignore"), "8"),
        (
            format!("/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6"),
            "1",
        ),
    ] {
        // A kernel without IPv6 has no such file: nothing to turn off.
        if let Err(e) = std::fs::write(&path, value) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("writing {path}: {e}");
            }
        }
    }
}

/// Whether `name` is one netd gives its interfaces (a prefix and a tag of eight hex digits):
/// such an interface without a tag is one netd made and had no time to tag.
pub fn is_ours(name: &str) -> bool {
    const PREFIXES: &[&str] = &["tbr", "tvx", "ttp", "tmh", "tph", "tvl", "tvo"];
    name.len() == 11
        && PREFIXES.iter().any(|p| name.starts_with(p))
        && name[3..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Ids become part of aliases and URLs: kept to a plain alphabet.
pub fn check_id(what: &str, id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "{what} id {id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn bad(message: String) -> Error {
    Error::BadRequest(message)
}

/// The MTU a network's bridge and VMs get.
pub fn mtu_of(spec: &NetworkSpec) -> u32 {
    spec.mtu.unwrap_or(match spec.l2 {
        L2::Vxlan { .. } => DEFAULT_MTU - VXLAN_OVERHEAD,
        L2::Novlan { .. } | L2::Vlan { .. } => DEFAULT_MTU,
    })
}

/// Checks `spec` on its own and against the host's other networks.
pub fn check_network(desired: &Desired, id: &str, spec: &NetworkSpec) -> Result<(), Error> {
    check_id("network", id)?;
    if spec.name.trim().is_empty() {
        return Err(bad(format!("network {id}: the name is empty")));
    }
    if let Some(mtu) = spec.mtu {
        if !(576..=9000).contains(&mtu) {
            return Err(bad(format!(
                "network {id}: MTU {mtu} is outside 576..=9000"
            )));
        }
    }
    let others = || {
        desired
            .networks
            .iter()
            .filter(|(other, _)| other.as_str() != id)
    };
    // An interface that is a VLAN trunk belongs to Open vSwitch, which takes all its traffic:
    // it can be no Linux bridge's port and no VTEP's underlay.
    let trunk_of = |name: &str| {
        others().find_map(|(other, o)| match &o.l2 {
            L2::Vlan { uplink, .. } if uplink == name => Some(other.clone()),
            _ => None,
        })
    };
    match &spec.l2 {
        L2::Novlan { uplink } => {
            if let Some(uplink) = uplink {
                check_ifname(id, "uplink", uplink)?;
                for (other, o) in others() {
                    if matches!(&o.l2, L2::Novlan { uplink: Some(u) } if u == uplink) {
                        return Err(Error::Conflict(format!(
                            "network {id}: uplink {uplink} already carries network {other}"
                        )));
                    }
                }
                if let Some(other) = trunk_of(uplink) {
                    return Err(Error::Conflict(format!(
                        "network {id}: uplink {uplink} is the VLAN trunk of network {other}"
                    )));
                }
            }
        }
        L2::Vlan { vid, uplink } => {
            if !(1..=4094).contains(vid) {
                return Err(bad(format!("network {id}: VLAN {vid} is outside 1..=4094")));
            }
            check_ifname(id, "uplink", uplink)?;
            for (other, o) in others() {
                let clash = match &o.l2 {
                    L2::Vlan { vid: v, uplink: u } if u == uplink && v == vid => {
                        format!("VLAN {vid} on uplink {uplink} is in use by network {other}")
                    }
                    L2::Novlan { uplink: Some(u) } if u == uplink => {
                        format!("uplink {uplink} is the bridge port of network {other}")
                    }
                    L2::Vxlan { underlay, .. } if underlay == uplink => {
                        format!("uplink {uplink} is the VXLAN underlay of network {other}")
                    }
                    _ => continue,
                };
                return Err(Error::Conflict(format!("network {id}: {clash}")));
            }
        }
        L2::Vxlan {
            vni,
            underlay,
            local,
            peers,
            port,
        } => {
            if !(1..=0xff_ffff).contains(vni) {
                return Err(bad(format!(
                    "network {id}: VNI {vni} is outside 1..=16777215"
                )));
            }
            check_ifname(id, "underlay", underlay)?;
            if let Some(other) = trunk_of(underlay) {
                return Err(Error::Conflict(format!(
                    "network {id}: underlay {underlay} is the VLAN trunk of network {other}"
                )));
            }
            if *port == 0 {
                return Err(bad(format!("network {id}: VXLAN port 0")));
            }
            let mut seen = BTreeSet::new();
            for peer in peers {
                if peer.is_unspecified() || peer.is_multicast() || peer.is_broadcast() {
                    return Err(bad(format!("network {id}: {peer} is not a VTEP address")));
                }
                if Some(*peer) == *local {
                    return Err(bad(format!(
                        "network {id}: peer {peer} is this host's own VTEP"
                    )));
                }
                if !seen.insert(peer) {
                    return Err(bad(format!("network {id}: peer {peer} is listed twice")));
                }
            }
            for (other, o) in others() {
                if matches!(&o.l2, L2::Vxlan { vni: v, .. } if v == vni) {
                    return Err(Error::Conflict(format!(
                        "network {id}: VNI {vni} is in use by network {other}"
                    )));
                }
            }
        }
    }
    if let Some(l3) = &spec.l3 {
        let cidr = l3.cidr;
        l3.check().map_err(|m| bad(format!("network {id}: {m}")))?;
        let server = l3.dhcp_server();
        for (other, o) in others() {
            if let Some(ol3) = &o.l3 {
                if ol3.cidr.overlaps(&cidr) {
                    return Err(Error::Conflict(format!(
                        "network {id}: {cidr} overlaps {} of network {other}",
                        ol3.cidr
                    )));
                }
            }
        }
        // A changed network must still hold the addresses its ports have.
        for (port, p) in desired.ports.iter().filter(|(_, p)| p.network == id) {
            if let Some(ip) = p.ip {
                if !cidr.is_host(ip) || Some(ip) == l3.gateway || ip == server {
                    return Err(Error::Conflict(format!(
                        "network {id}: port {port} has {ip}, which {cidr} would not hold"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn check_ifname(id: &str, what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > crate::link::MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
    {
        return Err(bad(format!(
            "network {id}: {what} {name:?} is not an interface name"
        )));
    }
    if is_ours(name) || (name.len() == 11 && name.starts_with("tov")) {
        return Err(bad(format!(
            "network {id}: {what} {name} is one of Triad's own interfaces"
        )));
    }
    Ok(())
}

/// Checks an EIP against its public network, its port and the other EIPs.
pub fn check_eip(desired: &Desired, id: &str, spec: &EipSpec) -> Result<(), Error> {
    check_id("EIP", id)?;
    let ip = spec.ip;
    let Some(public) = desired.networks.get(&spec.network) else {
        return Err(Error::Unprocessable(format!(
            "EIP {id}: there is no network {} on this host",
            spec.network
        )));
    };
    let Some(l3) = &public.l3 else {
        return Err(bad(format!(
            "EIP {id}: network {} has no addresses to take {ip} from",
            spec.network
        )));
    };
    if !l3.cidr.is_host(ip) || Some(ip) == l3.gateway || ip == l3.dhcp_server() {
        return Err(bad(format!(
            "EIP {id}: {ip} is not a free host address of {} ({})",
            spec.network, l3.cidr
        )));
    }
    let Some(port) = desired.ports.get(&spec.port) else {
        return Err(Error::Unprocessable(format!(
            "EIP {id}: there is no port {} on this host",
            spec.port
        )));
    };
    if port.network == spec.network {
        return Err(bad(format!(
            "EIP {id}: port {} is on the public network itself",
            spec.port
        )));
    }
    if port.ip.is_none() {
        return Err(bad(format!(
            "EIP {id}: port {} has no address to map",
            spec.port
        )));
    }
    for (other, e) in desired
        .eips
        .iter()
        .filter(|(other, _)| other.as_str() != id)
    {
        if e.ip == ip {
            return Err(Error::Conflict(format!("EIP {id}: {ip} is EIP {other}'s")));
        }
        if e.port == spec.port {
            return Err(Error::Conflict(format!(
                "EIP {id}: port {} already has EIP {other}",
                spec.port
            )));
        }
    }
    if let Some((other, _)) = desired
        .ports
        .iter()
        .find(|(_, p)| p.network == spec.network && p.ip == Some(ip))
    {
        return Err(Error::Conflict(format!("EIP {id}: {ip} is port {other}'s")));
    }
    Ok(())
}

/// The most rules a group may have.
pub const MAX_RULES: usize = 10_000;

/// Checks a security group on its own and against the groups it names.
pub fn check_group(desired: &Desired, id: &str, spec: &SecurityGroupSpec) -> Result<(), Error> {
    check_id("security group", id)?;
    if spec.name.trim().is_empty() {
        return Err(bad(format!("security group {id}: the name is empty")));
    }
    if spec.rules.len() > MAX_RULES {
        return Err(bad(format!(
            "security group {id}: {} rules, at most {MAX_RULES}",
            spec.rules.len()
        )));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        if let Some(range) = rule.ports {
            if !matches!(rule.protocol, Protocol::Tcp | Protocol::Udp) {
                return Err(bad(format!(
                    "security group {id}: rule {i} has ports, which only TCP and UDP have"
                )));
            }
            if range.from == 0 || range.from > range.to {
                return Err(bad(format!(
                    "security group {id}: rule {i}: ports {}-{} are not a range within 1-65535",
                    range.from, range.to
                )));
            }
        }
        if let Some(Remote::Group(g)) = &rule.remote {
            if g != id && !desired.security_groups.contains_key(g) {
                return Err(Error::Unprocessable(format!(
                    "security group {id}: rule {i} names group {g}, which this host does not have"
                )));
            }
        }
    }
    Ok(())
}

/// Checks `spec` against its network and the host's other ports.
pub fn check_port(desired: &Desired, id: &str, spec: &PortSpec) -> Result<(), Error> {
    check_id("port", id)?;
    for (i, g) in spec.security_groups.iter().enumerate() {
        if !desired.security_groups.contains_key(g) {
            return Err(Error::Unprocessable(format!(
                "port {id}: there is no security group {g} on this host"
            )));
        }
        if spec.security_groups[..i].contains(g) {
            return Err(bad(format!(
                "port {id}: security group {g} is listed twice"
            )));
        }
    }
    let Some(network) = desired.networks.get(&spec.network) else {
        return Err(Error::Unprocessable(format!(
            "port {id}: there is no network {} on this host",
            spec.network
        )));
    };
    if spec.mac.is_multicast() || spec.mac.0 == [0; 6] {
        return Err(bad(format!("port {id}: {} is not a unicast MAC", spec.mac)));
    }
    if let Some(name) = &spec.hostname {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !name.starts_with('-');
        if !ok {
            return Err(bad(format!("port {id}: {name:?} is not a host name")));
        }
    }
    let others = || {
        desired
            .ports
            .iter()
            .filter(|(other, _)| other.as_str() != id)
    };
    for (other, o) in others() {
        if o.mac == spec.mac {
            return Err(Error::Conflict(format!(
                "port {id}: MAC {} is port {other}'s",
                spec.mac
            )));
        }
    }
    match (&network.l3, spec.ip) {
        (Some(l3), Some(ip)) => {
            if !l3.cidr.is_host(ip) {
                return Err(bad(format!(
                    "port {id}: {ip} is not a host address of {}",
                    l3.cidr
                )));
            }
            if Some(ip) == l3.gateway {
                return Err(Error::Conflict(format!("port {id}: {ip} is the gateway's")));
            }
            if ip == l3.dhcp_server() {
                return Err(Error::Conflict(format!(
                    "port {id}: {ip} is the DHCP server's"
                )));
            }
            for (other, o) in others() {
                if o.network == spec.network && o.ip == Some(ip) {
                    return Err(Error::Conflict(format!(
                        "port {id}: {ip} is port {other}'s"
                    )));
                }
            }
        }
        (Some(l3), None) => {
            return Err(bad(format!(
                "port {id}: network {} has addresses ({}), so the port needs an \"ip\"",
                spec.network, l3.cidr
            )))
        }
        (None, Some(ip)) => {
            return Err(bad(format!(
                "port {id}: network {} has no L3, so address {ip} means nothing on it",
                spec.network
            )))
        }
        (None, None) => {}
    }
    Ok(())
}

/// The host: netlink, the state file, and what it holds.
#[derive(Debug)]
pub struct Host {
    node: String,
    netlink: Netlink,
    ovs: Ovs,
    state_file: PathBuf,
    desired: Mutex<Desired>,
    /// A DHCP server per network with addresses, by network id.
    dhcp: std::sync::Mutex<BTreeMap<String, dhcp::Server>>,
    /// A metadata service per network with addresses, by network id.
    metadata: Mutex<BTreeMap<String, metadata::Service>>,
    /// The generation of the loaded firewall rules (conntrack marks of admitted connections).
    generation: std::sync::atomic::AtomicU32,
    /// Something the last reconcile or tidy could not do: `retry_unsettled` tries again.
    unsettled: AtomicBool,
    /// The metadata services' connections, counted for the whole host.
    connections: crate::connections::Tracker,
}

fn system(e: NetlinkError) -> Error {
    Error::System(e.to_string())
}

impl Host {
    /// Loads the state file in `state_dir` (none yet: an empty host) and connects to the
    /// kernel. Call `reconcile` next.
    pub fn open(node: String, state_dir: PathBuf, ovs_db: String) -> Result<Self, Error> {
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| Error::System(format!("creating {}: {e}", state_dir.display())))?;
        let state_file = state_dir.join("desired.json");
        let desired = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::System(format!("reading {}: {e}", state_file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Desired::default(),
            Err(e) => {
                return Err(Error::System(format!(
                    "reading {}: {e}",
                    state_file.display()
                )))
            }
        };
        let netlink =
            Netlink::connect().map_err(|e| Error::System(format!("opening rtnetlink: {e}")))?;
        Ok(Self {
            node,
            netlink,
            ovs: Ovs::new(ovs_db),
            state_file,
            desired: Mutex::new(desired),
            dhcp: std::sync::Mutex::new(BTreeMap::new()),
            metadata: Mutex::new(BTreeMap::new()),
            generation: std::sync::atomic::AtomicU32::new(0),
            unsettled: AtomicBool::new(false),
            connections: crate::connections::Tracker::default(),
        })
    }

    fn save(&self, desired: &Desired) -> Result<(), Error> {
        // Mode 0600: ports carry their VMs' user-data and SSH keys.
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(desired).map_err(std::io::Error::other)?;
            triad_api::secrets::write(&self.state_file, bytes)
        };
        write().map_err(|e| Error::System(format!("writing {}: {e}", self.state_file.display())))
    }

    /// Brings the kernel to what the state file says: every network and port made or
    /// repaired, and every Triad interface nobody asked for removed. Carries on past a failing
    /// network or port (logged) so one bad uplink does not keep the others down.
    pub async fn reconcile(&self) -> Result<(), Error> {
        let desired = self.desired.lock().await;
        let mut settled = true;
        for (id, spec) in &desired.networks {
            if let Err(e) = self.apply_network(id, spec).await {
                tracing::warn!("network {id}: {e}");
                settled = false;
            }
        }
        for (id, spec) in &desired.ports {
            if let Err(e) = self.apply_port(&desired, id, spec).await {
                tracing::warn!("port {id}: {e}");
                settled = false;
            }
        }
        self.unsettled.store(!settled, Ordering::Relaxed);
        let result = async {
            self.remove_strays(&desired).await?;
            self.tidy_ovs(&desired).await;
            self.refresh_services(&desired).await
        }
        .await;
        if result.is_err() {
            self.unsettled.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Reconciles again when the last try left something undone (an uplink that was missing,
    /// Open vSwitch not up yet when netd started): called every few seconds.
    pub async fn retry_unsettled(&self) {
        if self.unsettled.load(Ordering::Relaxed) {
            if let Err(e) = self.reconcile().await {
                tracing::warn!("reconciling the host again: {e}");
            }
        }
    }

    /// `sync_ovs`, with a failure logged: what it leaves is tidied on the next try.
    async fn tidy_ovs(&self, desired: &Desired) {
        if let Err(e) = self.sync_ovs(desired).await {
            tracing::warn!("tidying Open vSwitch: {e}");
            self.unsettled.store(true, Ordering::Relaxed);
        }
    }

    /// Runs DHCP and metadata on every network with addresses, answering its ports as they
    /// are now, and stops the others; fences both services in to this host.
    async fn refresh_services(&self, desired: &Desired) -> Result<(), Error> {
        let mut wanted = BTreeMap::new();
        let mut documents = BTreeMap::new();
        for (id, spec) in &desired.networks {
            let Some(l3) = &spec.l3 else { continue };
            let bindings = desired
                .ports
                .iter()
                .filter(|(_, p)| &p.network == id)
                .filter_map(|(pid, p)| {
                    let binding = dhcp::Binding {
                        port: pid.clone(),
                        ip: p.ip?,
                        hostname: p.hostname.clone(),
                        eip: desired.eips.values().any(|e| &e.port == pid),
                    };
                    Some((p.mac, binding))
                })
                .collect();
            let scope = dhcp::Scope {
                network: id.clone(),
                server: l3.dhcp_server(),
                cidr: l3.cidr,
                gateway: l3.gateway,
                dns: l3.dns.clone(),
                routes: l3.routes.iter().map(|r| (r.destination, r.via)).collect(),
                mtu: mtu_of(spec),
                lease_secs: l3.lease_secs.unwrap_or(dhcp::DEFAULT_LEASE_SECS),
                metadata: true,
                bindings,
            };
            let docs: HashMap<Ipv4Addr, metadata::Document> = desired
                .ports
                .iter()
                .filter(|(_, p)| &p.network == id)
                .filter_map(|(pid, p)| {
                    let mut metadata = p.metadata.clone().unwrap_or_default();
                    if metadata.public_ipv4.is_none() {
                        metadata.public_ipv4 =
                            desired.eips.values().find(|e| &e.port == pid).map(|e| e.ip);
                    }
                    let doc = metadata::Document {
                        port: pid.clone(),
                        mac: p.mac,
                        ip: p.ip?,
                        hostname: p.hostname.clone(),
                        metadata,
                    };
                    Some((doc.ip, doc))
                })
                .collect();
            documents.insert(id.clone(), (l3.cidr, docs));
            // A network whose bridge could not be made has no server until it can.
            if let Some(bridge) = self.netlink.link(&bridge_name(id)).await.map_err(system)? {
                wanted.insert(id.clone(), (bridge, scope));
            }
        }
        self.fence_edges(desired).await?;
        self.apply_firewall(desired).await?;
        // One network's failure does not hold the others back; the first is reported.
        let mut first = self.refresh_metadata(&wanted, documents).await.err();
        if let Err(e) = self.refresh_eips(desired).await {
            first.get_or_insert(e);
        }
        let mut servers = self.dhcp.lock().unwrap_or_else(|p| p.into_inner());
        // A server whose bridge was made again, or changed its MAC, starts afresh.
        servers.retain(|id, server| {
            server.is_running()
                && wanted.get(id).is_some_and(|(bridge, _)| {
                    bridge.index == server.bridge && bridge.mac == Some(server.mac)
                })
        });
        for (id, (bridge, scope)) in wanted {
            match servers.get(&id) {
                Some(server) => *server.scope.lock().unwrap_or_else(|p| p.into_inner()) = scope,
                None => {
                    let mac = bridge.mac.unwrap_or(triad_api::net::Mac([0; 6]));
                    match dhcp::spawn(bridge.index, mac, scope) {
                        Ok(server) => {
                            servers.insert(id, server);
                        }
                        Err(e) => {
                            let e = Error::System(format!("network {id}: starting DHCP: {e}"));
                            tracing::warn!("{e}");
                            first.get_or_insert(e);
                        }
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Starts, updates or stops each network's metadata service.
    async fn refresh_metadata(
        &self,
        bridges: &BTreeMap<String, (Link, dhcp::Scope)>,
        mut documents: BTreeMap<
            String,
            (
                triad_api::net::Ipv4Cidr,
                HashMap<Ipv4Addr, metadata::Document>,
            ),
        >,
    ) -> Result<(), Error> {
        let mut services = self.metadata.lock().await;
        // Made again for a new bridge, or when the network's addresses or MTU changed.
        services.retain(|id, service| {
            bridges.get(id).is_some_and(|(bridge, _)| {
                bridge.index == service.bridge
                    && bridge.mtu == service.mtu
                    && documents.get(id).map(|(cidr, _)| *cidr) == Some(service.cidr)
            })
        });
        let mut first = None;
        for (id, (bridge, _)) in bridges {
            let Some((cidr, docs)) = documents.remove(id) else {
                continue;
            };
            if let Some(service) = services.get(id) {
                *service.documents.lock().unwrap_or_else(|p| p.into_inner()) = docs;
                continue;
            }
            let names = (metadata_veth(id), metadata_peer(id));
            let identity = metadata::Identity {
                veth: &names.0,
                peer: &names.1,
                mac: service_mac(&self.node, id),
                owner: &network_owner(id),
            };
            let service = metadata::start(
                &self.netlink,
                bridge,
                identity,
                cidr,
                std::sync::Arc::new(std::sync::Mutex::new(docs)),
                self.connections.clone(),
            )
            .await;
            match service {
                Ok(service) => {
                    services.insert(id.clone(), service);
                }
                Err(e) => {
                    let e = Error::System(format!("network {id}: starting metadata: {e}"));
                    tracing::warn!("{e}");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Gives each network's metadata namespace the EIPs of its VMs.
    async fn refresh_eips(&self, desired: &Desired) -> Result<(), Error> {
        let services = self.metadata.lock().await;
        let mut first = None;
        for (network, service) in services.iter() {
            let mut routes = Vec::new();
            for (id, e) in &desired.eips {
                let Some(port) = desired.ports.get(&e.port) else {
                    continue;
                };
                let (Some(private), Some(public)) = (port.ip, desired.networks.get(&e.network))
                else {
                    continue;
                };
                if &port.network != network {
                    continue;
                }
                let Some(l3) = &public.l3 else { continue };
                let Some(bridge) = self
                    .netlink
                    .link(&bridge_name(&e.network))
                    .await
                    .map_err(system)?
                else {
                    tracing::warn!("EIP {id}: network {} has no bridge yet", e.network);
                    continue;
                };
                let pair = format!("{network}/{}", e.network);
                routes.push(metadata::EipRoute {
                    public: e.ip,
                    private,
                    bridge,
                    cidr: l3.cidr,
                    gateway: l3.gateway,
                    names: (format!("tph{}", tag(&pair)), format!("tpp{}", tag(&pair))),
                    owner: network_owner(network),
                    mac: bridge_mac(&format!("{}/eip", self.node), &pair),
                });
            }
            if let Err(e) = service.set_eips(&self.netlink, &routes).await {
                let e = Error::System(format!("network {network}: EIPs: {e}"));
                tracing::warn!("{e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// `PUT /eips/{id}`.
    pub async fn ensure_eip(&self, id: &str, spec: EipSpec) -> Result<Eip, Error> {
        let mut desired = self.desired.lock().await;
        check_eip(&desired, id, &spec)?;
        let mut next = desired.clone();
        next.eips.insert(id.to_owned(), spec.clone());
        if let Err(e) = self.refresh_services(&next).await {
            // Back to what was: nothing of a refused EIP stays.
            let _ = self.refresh_services(&desired).await;
            return Err(e);
        }
        self.save(&next)?;
        *desired = next;
        Ok(Eip {
            id: id.to_owned(),
            spec,
        })
    }

    /// `DELETE /eips/{id}`.
    pub async fn delete_eip(&self, id: &str) -> Result<(), Error> {
        let mut desired = self.desired.lock().await;
        if !desired.eips.contains_key(id) {
            return Err(Error::NotFound(format!("no EIP {id} on this host")));
        }
        let mut next = desired.clone();
        next.eips.remove(id);
        self.save(&next)?;
        *desired = next;
        self.refresh_services(&desired).await
    }

    pub async fn eip(&self, id: &str) -> Result<Eip, Error> {
        let desired = self.desired.lock().await;
        desired
            .eips
            .get(id)
            .map(|spec| Eip {
                id: id.to_owned(),
                spec: spec.clone(),
            })
            .ok_or_else(|| Error::NotFound(format!("no EIP {id} on this host")))
    }

    /// Loads the security groups and anti-spoofing of every port.
    async fn apply_firewall(&self, desired: &Desired) -> Result<(), Error> {
        let ports: Vec<firewall::FwPort<'_>> = desired
            .ports
            .iter()
            .map(|(id, p)| firewall::FwPort {
                tap: tap_name(id),
                mac: p.mac,
                ip: p.ip,
                groups: p.security_groups.iter().map(String::as_str).collect(),
            })
            .collect();
        // Never 0: that is the mark of a connection nothing admitted.
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1)
            .max(1);
        let rules = firewall::ruleset(&ports, &desired.security_groups, generation);
        crate::nft::apply(&rules).await
    }

    /// `PUT /security-groups/{id}`: applies at once to the ports in it, running VMs included.
    pub async fn ensure_group(
        &self,
        id: &str,
        spec: SecurityGroupSpec,
    ) -> Result<SecurityGroup, Error> {
        let mut desired = self.desired.lock().await;
        check_group(&desired, id, &spec)?;
        let mut next = desired.clone();
        next.security_groups.insert(id.to_owned(), spec.clone());
        // Loaded before it is saved: rules nft refuses are not kept.
        self.apply_firewall(&next).await?;
        self.save(&next)?;
        *desired = next;
        Ok(SecurityGroup {
            id: id.to_owned(),
            spec,
        })
    }

    /// `DELETE /security-groups/{id}`: refused while a port is in it or a rule names it.
    pub async fn delete_group(&self, id: &str) -> Result<(), Error> {
        let mut desired = self.desired.lock().await;
        if !desired.security_groups.contains_key(id) {
            return Err(Error::NotFound(format!(
                "no security group {id} on this host"
            )));
        }
        if let Some((port, _)) = desired
            .ports
            .iter()
            .find(|(_, p)| p.security_groups.iter().any(|g| g == id))
        {
            return Err(Error::Conflict(format!(
                "security group {id} still has port {port}"
            )));
        }
        if let Some((other, _)) = desired.security_groups.iter().find(|(other, g)| {
            other.as_str() != id
                && g.rules
                    .iter()
                    .any(|r| matches!(&r.remote, Some(Remote::Group(n)) if n == id))
        }) {
            return Err(Error::Conflict(format!(
                "security group {id} is named by a rule of group {other}"
            )));
        }
        let mut next = desired.clone();
        next.security_groups.remove(id);
        self.apply_firewall(&next).await?;
        self.save(&next)?;
        *desired = next;
        Ok(())
    }

    pub async fn group(&self, id: &str) -> Result<SecurityGroup, Error> {
        let desired = self.desired.lock().await;
        desired
            .security_groups
            .get(id)
            .map(|spec| SecurityGroup {
                id: id.to_owned(),
                spec: spec.clone(),
            })
            .ok_or_else(|| Error::NotFound(format!("no security group {id} on this host")))
    }

    /// Keeps each host's DHCP and metadata to itself: requests to them and ARP for the
    /// metadata address never cross an uplink or a VXLAN device, in or out. One nftables table
    /// of the bridge family, replaced whole.
    async fn fence_edges(&self, desired: &Desired) -> Result<(), Error> {
        // Only networks with addresses have Triad's DHCP and metadata; on the others DHCP
        // from elsewhere must pass.
        let mut edges: Vec<String> = Vec::new();
        for (id, spec) in desired.networks.iter().filter(|(_, s)| s.l3.is_some()) {
            match &spec.l2 {
                L2::Novlan { uplink: Some(up) } => edges.push(up.clone()),
                L2::Novlan { uplink: None } => {}
                L2::Vxlan { .. } => edges.push(vxlan_name(id)),
                L2::Vlan { .. } => edges.push(vlan_veth(id)),
            }
        }
        let md = metadata::ADDRESS;
        let mut rules = String::from("table bridge triad\ndelete table bridge triad\n");
        if !edges.is_empty() {
            let set = edges
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ");
            // Forwarded between ports, delivered to the bridge itself (this host's DHCP
            // socket), and sent by it.
            rules += &format!(
                "table bridge triad {{\n\
                 \tchain forward {{\n\
                 \t\ttype filter hook forward priority -200; policy accept;\n\
                 \t\tiifname {{ {set} }} arp daddr ip {md} drop\n\
                 \t\toifname {{ {set} }} arp daddr ip {md} drop\n\
                 \t\tiifname {{ {set} }} ip daddr {md} drop\n\
                 \t\toifname {{ {set} }} ip daddr {md} drop\n\
                 \t\tiifname {{ {set} }} udp dport 67 drop\n\
                 \t\toifname {{ {set} }} udp dport 67 drop\n\
                 \t\toifname {{ {set} }} udp sport 67 drop\n\
                 \t}}\n\
                 \tchain input {{\n\
                 \t\ttype filter hook input priority -200; policy accept;\n\
                 \t\tiifname {{ {set} }} udp dport 67 drop\n\
                 \t\tiifname {{ {set} }} arp daddr ip {md} drop\n\
                 \t}}\n\
                 \tchain output {{\n\
                 \t\ttype filter hook output priority -200; policy accept;\n\
                 \t\toifname {{ {set} }} udp sport 67 drop\n\
                 \t}}\n}}\n"
            );
        }
        crate::nft::apply(&rules).await
    }

    /// Deletes Triad's interfaces that belong to no network or port netd holds (a crash
    /// between making one and saving the state file, or a delete that did not finish).
    async fn remove_strays(&self, desired: &Desired) -> Result<(), Error> {
        let wanted: BTreeSet<String> = desired
            .networks
            .keys()
            .map(|id| network_owner(id))
            .chain(desired.ports.keys().map(|id| port_owner(id)))
            .collect();
        let names: BTreeSet<String> = desired
            .networks
            .keys()
            .flat_map(|id| {
                [
                    bridge_name(id),
                    vxlan_name(id),
                    metadata_veth(id),
                    vlan_veth(id),
                    vlan_peer(id),
                ]
            })
            .chain(desired.ports.keys().map(|id| tap_name(id)))
            .collect();
        for link in self.netlink.links().await.map_err(system)? {
            let stray = match &link.alias {
                Some(owner) => owner.starts_with("triad:") && !wanted.contains(owner),
                // Made, then netd died before it tagged it.
                None => is_ours(&link.name) && !names.contains(&link.name),
            };
            if stray {
                tracing::info!("removing {}: nothing asks for it", link.name);
                self.netlink.delete(&link).await.map_err(system)?;
            }
        }
        Ok(())
    }

    /// `PUT /networks/{id}`.
    pub async fn ensure_network(&self, id: &str, spec: NetworkSpec) -> Result<Network, Error> {
        let mut desired = self.desired.lock().await;
        check_network(&desired, id, &spec)?;
        if let Err(e) = self.apply_network(id, &spec).await {
            // Nothing half-made stays behind: a new network goes, a changed one goes back.
            match desired.networks.get(id) {
                None => {
                    let _ = self.remove_network(id, &spec).await;
                }
                Some(old) => {
                    if let Err(e) = self.apply_network(id, old).await {
                        tracing::warn!("network {id}: restoring it as it was: {e}");
                        self.unsettled.store(true, Ordering::Relaxed);
                    }
                }
            }
            self.tidy_ovs(&desired).await;
            return Err(e);
        }
        let mut next = desired.clone();
        next.networks.insert(id.to_owned(), spec.clone());
        self.save(&next)?;
        *desired = next;
        // A trunk bridge the network's old uplink no longer needs.
        self.tidy_ovs(&desired).await;
        drop(desired);
        // Ports already on it follow a changed MTU.
        let desired = self.desired.lock().await;
        for (pid, p) in desired.ports.iter().filter(|(_, p)| p.network == id) {
            self.apply_port(&desired, pid, p).await?;
        }
        self.refresh_services(&desired).await?;
        Ok(network_view(id, &spec))
    }

    /// `DELETE /networks/{id}`: refused while ports are on it.
    pub async fn delete_network(&self, id: &str) -> Result<(), Error> {
        let mut desired = self.desired.lock().await;
        let Some(spec) = desired.networks.get(id).cloned() else {
            return Err(Error::NotFound(format!("no network {id} on this host")));
        };
        if let Some((port, _)) = desired.ports.iter().find(|(_, p)| p.network == id) {
            return Err(Error::Conflict(format!(
                "network {id} still has port {port}"
            )));
        }
        if let Some((eip, _)) = desired.eips.iter().find(|(_, e)| e.network == id) {
            return Err(Error::Conflict(format!("network {id} still has EIP {eip}")));
        }
        self.remove_network(id, &spec).await?;
        let mut next = desired.clone();
        next.networks.remove(id);
        self.save(&next)?;
        *desired = next;
        self.tidy_ovs(&desired).await;
        self.refresh_services(&desired).await
    }

    /// `PUT /ports/{id}`.
    pub async fn ensure_port(&self, id: &str, spec: PortSpec) -> Result<Port, Error> {
        let mut desired = self.desired.lock().await;
        check_port(&desired, id, &spec)?;
        let existed = desired.ports.contains_key(id);
        if let Err(e) = self.apply_port(&desired, id, &spec).await {
            if !existed {
                let _ = self.remove_port(id).await;
            }
            return Err(e);
        }
        let mut next = desired.clone();
        next.ports.insert(id.to_owned(), spec.clone());
        self.save(&next)?;
        *desired = next;
        self.refresh_services(&desired).await?;
        Ok(port_view(id, spec))
    }

    /// `DELETE /ports/{id}`: the TAP goes with it.
    pub async fn delete_port(&self, id: &str) -> Result<(), Error> {
        let mut desired = self.desired.lock().await;
        if !desired.ports.contains_key(id) {
            return Err(Error::NotFound(format!("no port {id} on this host")));
        }
        if let Some((eip, _)) = desired.eips.iter().find(|(_, e)| e.port == id) {
            return Err(Error::Conflict(format!("port {id} still has EIP {eip}")));
        }
        self.remove_port(id).await?;
        let mut next = desired.clone();
        next.ports.remove(id);
        self.save(&next)?;
        *desired = next;
        self.refresh_services(&desired).await
    }

    pub async fn network(&self, id: &str) -> Result<Network, Error> {
        let desired = self.desired.lock().await;
        desired
            .networks
            .get(id)
            .map(|spec| network_view(id, spec))
            .ok_or_else(|| Error::NotFound(format!("no network {id} on this host")))
    }

    pub async fn port(&self, id: &str) -> Result<Port, Error> {
        let desired = self.desired.lock().await;
        desired
            .ports
            .get(id)
            .map(|spec| port_view(id, spec.clone()))
            .ok_or_else(|| Error::NotFound(format!("no port {id} on this host")))
    }

    /// `GET /state`: the networks and ports, and what the kernel has for them.
    pub async fn state(&self) -> Result<NetState, Error> {
        let desired = self.desired.lock().await;
        let links = self.netlink.links().await.map_err(system)?;
        let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.index, l)).collect();
        let ours: BTreeSet<u32> = links
            .iter()
            .filter(|l| l.alias.as_deref().is_some_and(|a| a.starts_with("triad:")))
            .map(|l| l.index)
            .collect();
        // Triad's interfaces, and whatever is enslaved to Triad's bridges (uplinks).
        let shown: Vec<LinkState> = links
            .iter()
            .filter(|l| ours.contains(&l.index) || l.master.is_some_and(|m| ours.contains(&m)))
            .map(|l| LinkState {
                name: l.name.clone(),
                kind: l.kind.clone().unwrap_or_default(),
                up: l.up,
                mtu: l.mtu,
                master: l
                    .master
                    .and_then(|m| by_index.get(&m))
                    .map(|m| m.name.clone()),
                owner: l.alias.clone().filter(|a| a.starts_with("triad:")),
            })
            .collect();
        let fdb = self
            .netlink
            .fdb()
            .await
            .map_err(system)?
            .into_iter()
            .filter(|e| ours.contains(&e.device))
            .map(|e| FdbEntry {
                device: by_index
                    .get(&e.device)
                    .map(|l| l.name.clone())
                    .unwrap_or_default(),
                mac: e.mac,
                dst: e.dst,
            })
            .collect();
        let mut leases = Vec::new();
        for (network, server) in self.dhcp.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let scope = server.scope.lock().unwrap_or_else(|p| p.into_inner());
            for (mac, acked) in server
                .acked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                let Some(binding) = scope.bindings.get(mac) else {
                    continue;
                };
                leases.push(Lease {
                    network: network.clone(),
                    port: binding.port.clone(),
                    mac: *mac,
                    ip: acked.ip,
                    acked_at: acked.at,
                    expires_at: acked.expires,
                });
            }
        }
        leases.sort_by(|a, b| (&a.network, &a.port).cmp(&(&b.network, &b.port)));
        let firewall = crate::nft::list(&["bridge triad_ports", "inet triad_sg"]).await;
        let vlans = desired
            .networks
            .values()
            .any(|s| matches!(s.l2, L2::Vlan { .. }));
        let ovs = match self.ovs.ports().await {
            Ok(records) => records
                .into_iter()
                .filter_map(|r| {
                    let owner = r.owner.filter(|o| o.starts_with("triad:"))?;
                    Some(OvsPort {
                        bridge: r.bridge,
                        port: r.name,
                        vid: r.vid,
                        owner,
                    })
                })
                .collect(),
            Err(e) => {
                if vlans {
                    tracing::warn!("reading Open vSwitch: {e}");
                }
                Vec::new()
            }
        };
        Ok(NetState {
            ovs,
            leases,
            firewall,
            eips: desired
                .eips
                .iter()
                .map(|(id, spec)| Eip {
                    id: id.clone(),
                    spec: spec.clone(),
                })
                .collect(),
            security_groups: desired
                .security_groups
                .iter()
                .map(|(id, spec)| SecurityGroup {
                    id: id.clone(),
                    spec: spec.clone(),
                })
                .collect(),
            node: self.node.clone(),
            networks: desired
                .networks
                .iter()
                .map(|(id, s)| network_view(id, s))
                .collect(),
            ports: desired
                .ports
                .iter()
                .map(|(id, s)| port_view(id, s.clone()))
                .collect(),
            links: shown,
            fdb,
        })
    }

    /// Finds interface `name`, refusing one that belongs to someone other than `owner`.
    async fn owned(&self, name: &str, owner: &str) -> Result<Option<Link>, Error> {
        let link = self.netlink.link(name).await.map_err(system)?;
        match &link {
            // Made by netd, which died before it could tag it: adopted.
            Some(l) if l.alias.is_none() && is_ours(&l.name) => Ok(link),
            Some(l) if l.alias.as_deref() != Some(owner) => Err(Error::Conflict(format!(
                "interface {name} exists and is not Triad's ({owner}); remove it or rename it"
            ))),
            _ => Ok(link),
        }
    }

    async fn must_exist(&self, network: &str, what: &str, name: &str) -> Result<Link, Error> {
        self.netlink
            .link(name)
            .await
            .map_err(system)?
            .ok_or_else(|| {
                Error::Unprocessable(format!(
                    "network {network}: {what} {name} does not exist on this host"
                ))
            })
    }

    async fn apply_network(&self, id: &str, spec: &NetworkSpec) -> Result<(), Error> {
        let owner = network_owner(id);
        let mtu = mtu_of(spec);
        // Checked before anything is made, so a missing uplink leaves nothing behind.
        let (uplink, vxlan, trunk) = match &spec.l2 {
            L2::Novlan { uplink: None } => (None, None, None),
            L2::Novlan { uplink: Some(name) } => {
                let up = self.must_exist(id, "uplink", name).await?;
                if mtu > up.mtu {
                    return Err(Error::Unprocessable(format!(
                        "network {id}: MTU {mtu} does not fit uplink {name}'s MTU {}",
                        up.mtu
                    )));
                }
                (Some(up), None, None)
            }
            L2::Vlan { vid, uplink } => {
                let up = self.must_exist(id, "uplink", uplink).await?;
                if let Some(master) = up.master {
                    // This network's own bridge (it was novlan on this uplink) lets it go below.
                    let own = self.netlink.link(&bridge_name(id)).await.map_err(system)?;
                    if own.map(|b| b.index) != Some(master) {
                        return Err(Error::Conflict(format!(
                            "network {id}: uplink {uplink} is a Linux bridge's port; a VLAN trunk must be free"
                        )));
                    }
                }
                if mtu > up.mtu {
                    return Err(Error::Unprocessable(format!(
                        "network {id}: MTU {mtu} does not fit uplink {uplink}'s MTU {}",
                        up.mtu
                    )));
                }
                let bridge = ovs_bridge_name(uplink);
                let records = self.ovs.ports().await?;
                if let Some(r) = records
                    .iter()
                    .find(|r| &r.name == uplink && r.bridge != bridge)
                {
                    return Err(Error::Conflict(format!(
                        "network {id}: uplink {uplink} is a port of Open vSwitch bridge {}",
                        r.bridge
                    )));
                }
                (None, None, Some((*vid, up, bridge, records)))
            }
            L2::Vxlan {
                vni,
                underlay,
                local,
                peers,
                port,
            } => {
                let under = self.must_exist(id, "underlay", underlay).await?;
                if mtu + VXLAN_OVERHEAD > under.mtu {
                    return Err(Error::Unprocessable(format!(
                        "network {id}: MTU {mtu} and VXLAN's {VXLAN_OVERHEAD} bytes do not fit underlay {underlay}'s MTU {}",
                        under.mtu
                    )));
                }
                let local = match local {
                    Some(ip) => *ip,
                    None => self
                        .netlink
                        .ipv4_of(under.index)
                        .await
                        .map_err(system)?
                        .ok_or_else(|| {
                            Error::Unprocessable(format!(
                            "network {id}: underlay {underlay} has no IPv4 address to be the VTEP"
                        ))
                        })?,
                };
                let params = VxlanParams {
                    vni: *vni,
                    underlay: under.index,
                    local,
                    port: *port,
                };
                (None, Some((params, peers.clone())), None)
            }
        };
        if let Some(up) = &uplink {
            if let Some(master) = up.master {
                let bridge = self.netlink.link(&bridge_name(id)).await.map_err(system)?;
                if bridge.map(|b| b.index) != Some(master) {
                    return Err(Error::Conflict(format!(
                        "network {id}: uplink {} is already enslaved to another interface",
                        up.name
                    )));
                }
            }
        }
        let bridge_name = bridge_name(id);
        let bridge = match self.owned(&bridge_name, &owner).await? {
            Some(b) => b,
            None => {
                self.netlink
                    .create_bridge(&bridge_name, mtu)
                    .await
                    .map_err(system)?;
                self.link_named(&bridge_name).await?
            }
        };
        self.netlink
            .configure(&bridge, None, Some(mtu), Some(&owner))
            .await
            .map_err(system)?;
        seal_off(&bridge_name);
        let mac = bridge_mac(&self.node, id);
        if bridge.mac != Some(mac) {
            self.netlink
                .set_address(&bridge, mac)
                .await
                .map_err(system)?;
        }
        let mut members = BTreeSet::new();
        if let Some(up) = &uplink {
            self.netlink
                .configure(up, Some(bridge.index), None, None)
                .await
                .map_err(system)?;
            members.insert(up.index);
        }
        let vx_name = vxlan_name(id);
        let existing_vx = self.owned(&vx_name, &owner).await?;
        match vxlan {
            Some((params, peers)) => {
                let vx = match existing_vx {
                    Some(vx) if vx.vxlan == Some(params) => vx,
                    other => {
                        if let Some(old) = other {
                            self.netlink.delete(&old).await.map_err(system)?;
                        }
                        self.netlink
                            .create_vxlan(&vx_name, params, mtu)
                            .await
                            .map_err(system)?;
                        self.link_named(&vx_name).await?
                    }
                };
                self.netlink
                    .configure(&vx, Some(bridge.index), Some(mtu), Some(&owner))
                    .await
                    .map_err(system)?;
                members.insert(vx.index);
                self.sync_peers(vx.index, &peers).await?;
            }
            None => {
                if let Some(old) = existing_vx {
                    self.netlink.delete(&old).await.map_err(system)?;
                }
            }
        }
        match trunk {
            Some((vid, up, ovs_bridge, records)) => {
                let (veth, made) = self.ensure_vlan_veth(id, &owner).await?;
                self.netlink
                    .configure(&veth, Some(bridge.index), Some(mtu), Some(&owner))
                    .await
                    .map_err(system)?;
                members.insert(veth.index);
                let peer = self.link_named(&vlan_peer(id)).await?;
                self.netlink
                    .configure(&peer, None, Some(mtu), Some(&owner))
                    .await
                    .map_err(system)?;
                for name in [&veth.name, &peer.name] {
                    crate::link::disable_tx_checksum(name).map_err(|e| {
                        Error::System(format!("turning off checksum offload on {name}: {e}"))
                    })?;
                }
                self.netlink
                    .configure(&up, None, None, None)
                    .await
                    .map_err(system)?;
                crate::link::disable_gro(&up.name).map_err(|e| {
                    Error::System(format!("turning off GRO on uplink {}: {e}", up.name))
                })?;
                self.ovs
                    .ensure_trunk(&ovs_bridge, &up.name, &uplink_owner(&up.name))
                    .await?;
                // A new veth, or a network moved to another uplink: the access port is made
                // afresh, so that the switch opens the interface as it is now.
                let replace = made
                    || records
                        .iter()
                        .any(|r| r.name == peer.name && r.bridge != ovs_bridge);
                self.ovs
                    .ensure_access(&ovs_bridge, &peer.name, vid, &owner, replace)
                    .await?;
                if let Some(e) = self.ovs.interface_error(&peer.name).await? {
                    return Err(Error::System(format!(
                        "network {id}: Open vSwitch cannot use {}: {e}",
                        peer.name
                    )));
                }
            }
            None => {
                if let Some(old) = self.owned(&vlan_veth(id), &owner).await? {
                    self.netlink.delete(&old).await.map_err(system)?;
                }
            }
        }
        // An uplink this network no longer uses is let go; Triad's own TAPs stay (their ports
        // move them).
        for link in self.netlink.links().await.map_err(system)? {
            let triad = link
                .alias
                .as_deref()
                .is_some_and(|a| a.starts_with("triad:"));
            if link.master == Some(bridge.index) && !members.contains(&link.index) && !triad {
                self.netlink
                    .configure(&link, Some(0), None, None)
                    .await
                    .map_err(system)?;
            }
        }
        Ok(())
    }

    /// The veth pair between VLAN network `id`'s Linux bridge and its Open vSwitch bridge, made
    /// when missing; the end in the Linux bridge is returned, and whether it was made now.
    async fn ensure_vlan_veth(&self, id: &str, owner: &str) -> Result<(Link, bool), Error> {
        let (name, peer) = (vlan_veth(id), vlan_peer(id));
        if let Some(veth) = self.owned(&name, owner).await? {
            if veth.kind.as_deref() == Some("veth") && self.owned(&peer, owner).await?.is_some() {
                return Ok((veth, false));
            }
            self.netlink.delete(&veth).await.map_err(system)?;
        }
        // A lone end left by a crash goes first.
        if let Some(stale) = self.owned(&peer, owner).await? {
            self.netlink.delete(&stale).await.map_err(system)?;
        }
        self.netlink
            .create_veth(&name, &peer)
            .await
            .map_err(system)?;
        Ok((self.link_named(&name).await?, true))
    }

    /// Removes the Open vSwitch ports and bridges Triad made that no VLAN network uses any
    /// more. A host without Open vSwitch has none, unless a VLAN network wants one.
    async fn sync_ovs(&self, desired: &Desired) -> Result<(), Error> {
        let wanted: BTreeMap<String, String> = desired
            .networks
            .iter()
            .filter_map(|(id, s)| match &s.l2 {
                L2::Vlan { uplink, .. } => Some((network_owner(id), ovs_bridge_name(uplink))),
                _ => None,
            })
            .collect();
        let records = match self.ovs.ports().await {
            Ok(records) => records,
            Err(Error::Unprocessable(_)) if wanted.is_empty() => return Ok(()),
            Err(e) => return Err(e),
        };
        for r in &records {
            let Some(owner) = &r.owner else { continue };
            if owner.starts_with("triad:network:") && wanted.get(owner) != Some(&r.bridge) {
                tracing::info!("removing Open vSwitch port {}: nothing asks for it", r.name);
                self.ovs.delete_port(&r.name).await?;
            }
        }
        // Triad's bridges, by their own owner or their trunk port's.
        let owned = self.ovs.owned_bridges().await?;
        let trunks: BTreeSet<&String> = records
            .iter()
            .filter(|r| {
                r.owner
                    .as_deref()
                    .is_some_and(|o| o.starts_with("triad:uplink:"))
            })
            .map(|r| &r.bridge)
            .chain(
                owned
                    .iter()
                    .filter(|(_, o)| o.starts_with("triad:uplink:"))
                    .map(|(b, _)| b),
            )
            .collect();
        for bridge in trunks {
            if !wanted.values().any(|b| b == bridge) {
                tracing::info!("removing Open vSwitch bridge {bridge}: no VLAN network uses it");
                self.ovs.delete_bridge(bridge).await?;
            }
        }
        Ok(())
    }

    /// Makes the VXLAN device's flood list exactly `peers`.
    async fn sync_peers(&self, device: u32, peers: &[Ipv4Addr]) -> Result<(), Error> {
        let have: Vec<Fdb> = self
            .netlink
            .fdb()
            .await
            .map_err(system)?
            .into_iter()
            .filter(|e| e.device == device && e.mac == FLOOD)
            .collect();
        for peer in peers {
            if !have.iter().any(|e| e.dst == *peer) {
                let entry = Fdb {
                    device,
                    mac: FLOOD,
                    dst: *peer,
                };
                self.netlink.fdb_append(&entry).await.map_err(system)?;
            }
        }
        for entry in have.iter().filter(|e| !peers.contains(&e.dst)) {
            self.netlink.fdb_delete(entry).await.map_err(system)?;
        }
        Ok(())
    }

    async fn link_named(&self, name: &str) -> Result<Link, Error> {
        self.netlink
            .link(name)
            .await
            .map_err(system)?
            .ok_or_else(|| Error::System(format!("{name} vanished right after it was made")))
    }

    async fn remove_network(&self, id: &str, spec: &NetworkSpec) -> Result<(), Error> {
        let owner = network_owner(id);
        if let L2::Novlan { uplink: Some(name) } = &spec.l2 {
            let bridge = self.netlink.link(&bridge_name(id)).await.map_err(system)?;
            if let (Some(up), Some(bridge)) =
                (self.netlink.link(name).await.map_err(system)?, bridge)
            {
                if up.master == Some(bridge.index) {
                    self.netlink
                        .configure(&up, Some(0), None, None)
                        .await
                        .map_err(system)?;
                }
            }
        }
        self.metadata.lock().await.remove(id);
        for name in [
            metadata_veth(id),
            vxlan_name(id),
            vlan_veth(id),
            bridge_name(id),
        ] {
            if let Some(link) = self.netlink.link(&name).await.map_err(system)? {
                if link.alias.as_deref() == Some(owner.as_str()) {
                    self.netlink.delete(&link).await.map_err(system)?;
                }
            }
        }
        // Open vSwitch out of reach keeps the record of a port whose veth is gone; the next
        // reconcile removes it.
        if matches!(spec.l2, L2::Vlan { .. }) {
            if let Err(e) = self.ovs.delete_port(&vlan_peer(id)).await {
                tracing::warn!("network {id}: removing its Open vSwitch port: {e}");
            }
        }
        Ok(())
    }

    async fn apply_port(&self, desired: &Desired, id: &str, spec: &PortSpec) -> Result<(), Error> {
        let network = desired.networks.get(&spec.network).ok_or_else(|| {
            Error::Unprocessable(format!("port {id}: no network {}", spec.network))
        })?;
        let bridge = self.link_named(&bridge_name(&spec.network)).await?;
        let owner = port_owner(id);
        let name = tap_name(id);
        let tap = match self.owned(&name, &owner).await? {
            Some(tap) => tap,
            None => {
                tap::create_persistent(&name)
                    .map_err(|e| Error::System(format!("port {id}: creating TAP {name}: {e}")))?;
                self.link_named(&name).await?
            }
        };
        self.netlink
            .configure(
                &tap,
                Some(bridge.index),
                Some(mtu_of(network)),
                Some(&owner),
            )
            .await
            .map_err(system)?;
        Ok(())
    }

    async fn remove_port(&self, id: &str) -> Result<(), Error> {
        let owner = port_owner(id);
        if let Some(link) = self.netlink.link(&tap_name(id)).await.map_err(system)? {
            if link.alias.as_deref() == Some(owner.as_str()) {
                self.netlink.delete(&link).await.map_err(system)?;
            }
        }
        Ok(())
    }
}

fn network_view(id: &str, spec: &NetworkSpec) -> Network {
    Network {
        id: id.to_owned(),
        spec: spec.clone(),
        bridge: bridge_name(id),
        effective_mtu: mtu_of(spec),
    }
}

fn port_view(id: &str, spec: PortSpec) -> Port {
    Port {
        id: id.to_owned(),
        spec,
        tap: tap_name(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_api::net::{IpRange, L3};

    fn novlan(uplink: Option<&str>, cidr: Option<&str>) -> NetworkSpec {
        NetworkSpec {
            name: "n".into(),
            l2: L2::Novlan {
                uplink: uplink.map(str::to_owned),
            },
            mtu: None,
            l3: cidr.map(|c| L3 {
                cidr: c.parse().unwrap(),
                gateway: Some(
                    c.parse::<triad_api::net::Ipv4Cidr>()
                        .unwrap()
                        .network()
                        .to_bits()
                        .wrapping_add(1)
                        .into(),
                ),
                dns: vec![],
                ranges: vec![],
                routes: vec![],
                dhcp_server: None,
                lease_secs: None,
            }),
        }
    }

    fn port(network: &str, mac: &str, ip: Option<&str>) -> PortSpec {
        PortSpec {
            network: network.into(),
            mac: mac.parse().unwrap(),
            ip: ip.map(|i| i.parse().unwrap()),
            hostname: None,
            metadata: None,
            security_groups: vec![],
        }
    }

    #[test]
    fn names_fit_and_are_stable() {
        assert_eq!(bridge_name("a"), bridge_name("a"));
        assert_ne!(bridge_name("a"), bridge_name("b"));
        for name in [bridge_name("x"), vxlan_name("x"), tap_name("x")] {
            assert!(name.len() <= crate::link::MAX_NAME, "{name}");
        }
    }

    #[test]
    fn networks_conflict_by_cidr_vni_and_uplink() {
        let mut d = Desired::default();
        d.networks
            .insert("a".into(), novlan(Some("eth1"), Some("10.0.0.0/24")));
        let clash = check_network(&d, "b", &novlan(None, Some("10.0.0.128/25"))).unwrap_err();
        assert!(
            matches!(&clash, Error::Conflict(m) if m.contains("overlaps")),
            "{clash}"
        );
        let clash = check_network(&d, "b", &novlan(Some("eth1"), None)).unwrap_err();
        assert!(clash.to_string().contains("uplink eth1"), "{clash}");
        // The same network again is no conflict with itself.
        check_network(&d, "a", &novlan(Some("eth1"), Some("10.0.0.0/24"))).unwrap();
        let vx = |vni| NetworkSpec {
            name: "v".into(),
            l2: L2::Vxlan {
                vni,
                underlay: "eth0".into(),
                local: None,
                peers: vec![],
                port: 4789,
            },
            mtu: None,
            l3: None,
        };
        d.networks.insert("v".into(), vx(100));
        assert!(check_network(&d, "w", &vx(100))
            .unwrap_err()
            .to_string()
            .contains("VNI 100"));
        assert!(check_network(&d, "w", &vx(0)).is_err());
        check_network(&d, "w", &vx(101)).unwrap();
    }

    #[test]
    fn impossible_l3_is_refused() {
        let d = Desired::default();
        let mut spec = novlan(None, Some("10.0.0.0/24"));
        spec.l3.as_mut().unwrap().gateway = Some(Ipv4Addr::new(10, 0, 1, 1));
        assert!(check_network(&d, "a", &spec)
            .unwrap_err()
            .to_string()
            .contains("gateway"));
        let mut spec = novlan(None, Some("10.0.0.0/24"));
        spec.l3.as_mut().unwrap().ranges = vec![IpRange {
            start: Ipv4Addr::new(10, 0, 0, 200),
            end: Ipv4Addr::new(10, 0, 0, 100),
        }];
        assert!(check_network(&d, "a", &spec).is_err());
        let mut spec = novlan(None, Some("10.0.0.0/24"));
        spec.l3.as_mut().unwrap().dns = vec![Ipv4Addr::new(1, 1, 1, 1); 3];
        assert!(check_network(&d, "a", &spec).is_err());
        assert!(check_network(&d, "bad id", &novlan(None, None)).is_err());
    }

    #[test]
    fn ports_need_a_free_address_and_mac_on_their_network() {
        let mut d = Desired::default();
        d.networks
            .insert("a".into(), novlan(None, Some("10.0.0.0/24")));
        d.networks.insert("flat".into(), novlan(None, None));
        d.ports.insert(
            "p1".into(),
            port("a", "52:54:00:00:00:01", Some("10.0.0.5")),
        );
        let err = |spec| check_port(&d, "p2", &spec).unwrap_err().to_string();
        assert!(err(port("a", "52:54:00:00:00:01", Some("10.0.0.6"))).contains("MAC"));
        assert!(err(port("a", "52:54:00:00:00:02", Some("10.0.0.5"))).contains("p1"));
        assert!(err(port("a", "52:54:00:00:00:02", Some("10.0.0.1"))).contains("gateway"));
        assert!(err(port("a", "52:54:00:00:00:02", Some("10.0.1.5"))).contains("10.0.0.0/24"));
        assert!(err(port("a", "52:54:00:00:00:02", None)).contains("needs"));
        assert!(err(port("a", "01:54:00:00:00:02", Some("10.0.0.6"))).contains("unicast"));
        assert!(err(port("nope", "52:54:00:00:00:02", None)).contains("no network"));
        assert!(err(port("flat", "52:54:00:00:00:02", Some("10.0.0.6"))).contains("no L3"));
        check_port(&d, "p2", &port("a", "52:54:00:00:00:02", Some("10.0.0.6"))).unwrap();
        check_port(&d, "p2", &port("flat", "52:54:00:00:00:02", None)).unwrap();
        // A network may not shrink under its ports.
        let smaller = novlan(None, Some("10.0.0.0/30"));
        assert!(check_network(&d, "a", &smaller)
            .unwrap_err()
            .to_string()
            .contains("p1"));
    }
}
