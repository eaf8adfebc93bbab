//! EC2-style instance metadata and user-data on 169.254.169.254:80, per network and per host,
//! for the host's own VMs: stock cloud-init works unchanged.
//!
//! Each network with addresses gets a network namespace of netd's own, joined to its bridge by
//! a veth, holding 169.254.169.254 and a route to the network's addresses. VMs reach it on-link
//! (DHCP hands out the route). A request is answered with the document of the port whose
//! address it comes from, and only when the namespace's neighbour entry for that address is the
//! port's MAC: a VM that takes another's address gets nothing. The namespace lives as long as
//! netd holds it (no name, nothing to leak): after a crash, the next start makes it again.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use rtnetlink::packet_route::AddressFamily;
use triad_api::net::{Ipv4Cidr, Mac, Metadata};

use crate::connections::{self, Client, LimitedListener};

/// The address every cloud's metadata service answers on.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// What one VM may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub port: String,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    pub metadata: Metadata,
}

/// The VMs a network's service answers, by address; replaced in place as ports change.
pub type Documents = Arc<Mutex<HashMap<Ipv4Addr, Document>>>;

/// A running service: its namespace, and the tasks serving in it.
#[derive(Debug)]
pub struct Service {
    /// The bridge's end of the veth.
    pub veth: String,
    pub bridge: u32,
    /// The network's addresses and MTU it was made for.
    pub cidr: Ipv4Cidr,
    pub mtu: u32,
    pub documents: Documents,
    /// A connection into the namespace.
    inside: crate::link::Netlink,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ns: File,
}

/// An EIP as the service's namespace carries it: NAT between `public` and `private`, on a veth
/// into the public network's bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EipRoute {
    pub public: Ipv4Addr,
    pub private: Ipv4Addr,
    /// The public network: its bridge, addresses and gateway.
    pub bridge: crate::link::Link,
    pub cidr: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    /// The veth's names (bridge end, namespace end), its owner tag and its fixed MAC.
    pub names: (String, String),
    pub owner: String,
    pub mac: Mac,
}

impl Drop for Service {
    fn drop(&mut self) {
        // The namespace goes with its last reference: this file, the listener and the netlink
        // socket that the tasks hold, and with it the veth.
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn io_error(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// Runs `work` on a thread of its own inside namespace `ns` (other threads are not moved).
fn in_namespace<T: Send + 'static>(
    ns: Option<&File>,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let fd = match ns {
        Some(f) => Some(f.try_clone()?),
        None => None,
    };
    std::thread::spawn(move || {
        match fd {
            Some(f) => {
                // SAFETY: setns on a namespace file this thread owns; it moves only this thread.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            None => {
                // SAFETY: unshare of the network namespace; it moves only this thread.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        work()
    })
    .join()
    .map_err(|_| io_error("namespace thread", "panicked"))?
}

/// How a network's service shows on the host.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The veth's end on the bridge, and its end in the namespace.
    pub veth: &'a str,
    pub peer: &'a str,
    /// The service's MAC: the same across restarts, so that VMs' ARP caches stay right.
    pub mac: Mac,
    /// The veth's alias.
    pub owner: &'a str,
}

/// Starts the service for a network whose bridge is `bridge`, answering `documents`; its veth
/// joins the bridge. Its connections count against `tracker`'s limits, shared by the host.
pub async fn start(
    host: &crate::link::Netlink,
    bridge: &crate::link::Link,
    identity: Identity<'_>,
    cidr: Ipv4Cidr,
    documents: Documents,
    tracker: connections::Tracker,
) -> std::io::Result<Service> {
    let Identity {
        veth,
        peer,
        mac,
        owner,
    } = identity;
    let ns = in_namespace(None, || File::open("/proc/thread-self/ns/net"))?;
    let failed = |what: &str, e: crate::link::NetlinkError| io_error(what, e);
    if let Some(stale) = host.link(veth).await.map_err(|e| failed("looking up", e))? {
        host.delete(&stale)
            .await
            .map_err(|e| failed("deleting", e))?;
    }
    host.create_veth(veth, peer)
        .await
        .map_err(|e| failed("creating the veth", e))?;
    let (Some(outer), Some(inner)) = (
        host.link(veth).await.map_err(|e| failed("looking up", e))?,
        host.link(peer).await.map_err(|e| failed("looking up", e))?,
    ) else {
        return Err(io_error("veth", "vanished right after it was made"));
    };
    host.set_address(&inner, mac)
        .await
        .map_err(|e| failed("setting the MAC", e))?;
    host.move_to(&inner, ns.as_raw_fd())
        .await
        .map_err(|e| failed("moving the veth", e))?;
    host.configure(&outer, Some(bridge.index), Some(bridge.mtu), Some(owner))
        .await
        .map_err(|e| failed("attaching the veth", e))?;

    // Sockets belong to the namespace of the thread that makes them, whatever runs them later.
    let runtime = tokio::runtime::Handle::current();
    let (inside, listener) = in_namespace(Some(&ns), move || {
        let _entered = runtime.enter();
        let inside = crate::link::Netlink::connect()?;
        // Bound before the address exists: the namespace has nothing else on port 80.
        let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 80))?;
        listener.set_nonblocking(true)?;
        Ok((inside, listener))
    })?;
    let inner = inside
        .link(peer)
        .await
        .map_err(|e| failed("looking up", e))?
        .ok_or_else(|| io_error("veth", "not in the namespace"))?;
    let lo = inside
        .link("lo")
        .await
        .map_err(|e| failed("looking up", e))?
        .ok_or_else(|| io_error("lo", "missing"))?;
    inside
        .configure(&lo, None, None, None)
        .await
        .map_err(|e| failed("lo", e))?;
    inside
        .configure(&inner, None, Some(bridge.mtu), None)
        .await
        .map_err(|e| failed("bringing the veth up", e))?;
    inside
        .add_address(inner.index, ADDRESS, 32)
        .await
        .map_err(|e| failed("adding 169.254.169.254", e))?;
    inside
        .add_onlink_route(inner.index, cidr)
        .await
        .map_err(|e| failed("routing the network", e))?;

    let listener = LimitedListener::new(
        tokio::net::TcpListener::from_std(listener)?,
        connections::METADATA,
        tracker,
    );
    let app = Router::new()
        .route("/", get(|| async { "latest\n" }))
        .route("/latest/api/token", put(token))
        .route("/{version}/", get(|| async { "meta-data/\nuser-data\n" }))
        .route("/{version}/user-data", get(user_data))
        .route("/{version}/meta-data", get(index))
        .route("/{version}/meta-data/", get(index))
        .route("/{version}/meta-data/{*key}", get(item))
        .with_state(Lookup {
            documents: documents.clone(),
            netlink: inside.clone(),
            veth: inner.index,
        });
    let server = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<Client>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metadata service stopped: {e}");
        }
    });
    Ok(Service {
        veth: veth.to_owned(),
        bridge: bridge.index,
        cidr,
        mtu: bridge.mtu,
        documents,
        inside,
        tasks: vec![server],
        ns,
    })
}

impl Service {
    /// Makes the namespace the router of `eips`: a veth into each public network they use,
    /// their public addresses on it, and 1:1 NAT (loaded whole). VMs with an EIP route by
    /// default through this namespace (DHCP says so), so the mapping lives on their own host.
    pub async fn set_eips(
        &self,
        host: &crate::link::Netlink,
        eips: &[EipRoute],
    ) -> std::io::Result<()> {
        let failed = |what: &str, e: crate::link::NetlinkError| io_error(what, e);
        let forwarding = if eips.is_empty() { "0" } else { "1" };
        in_namespace(Some(&self.ns), move || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", forwarding)
        })?;
        // Public veths: made where missing, dropped where no EIP uses them any more.
        let mut wanted: HashMap<String, Vec<&EipRoute>> = HashMap::new();
        for e in eips {
            wanted.entry(e.names.1.clone()).or_default().push(e);
        }
        for link in self
            .inside
            .links()
            .await
            .map_err(|e| failed("listing", e))?
        {
            if link.name.starts_with("tpp") && !wanted.contains_key(&link.name) {
                // Its other end goes with it.
                self.inside
                    .delete(&link)
                    .await
                    .map_err(|e| failed("removing a public veth", e))?;
            }
        }
        let mut snat = Vec::new();
        let mut dnat = Vec::new();
        for (peer, routes) in &wanted {
            let first = routes[0];
            let inner = match self
                .inside
                .link(peer)
                .await
                .map_err(|e| failed("looking up", e))?
            {
                Some(link) => link,
                None => {
                    let veth = &first.names.0;
                    if let Some(stale) =
                        host.link(veth).await.map_err(|e| failed("looking up", e))?
                    {
                        host.delete(&stale)
                            .await
                            .map_err(|e| failed("deleting", e))?;
                    }
                    host.create_veth(veth, peer)
                        .await
                        .map_err(|e| failed("creating the public veth", e))?;
                    let (Some(outer), Some(inner)) = (
                        host.link(veth).await.map_err(|e| failed("looking up", e))?,
                        host.link(peer).await.map_err(|e| failed("looking up", e))?,
                    ) else {
                        return Err(io_error("public veth", "vanished right after it was made"));
                    };
                    host.set_address(&inner, first.mac)
                        .await
                        .map_err(|e| failed("setting the MAC", e))?;
                    host.move_to(&inner, self.ns.as_raw_fd())
                        .await
                        .map_err(|e| failed("moving the public veth", e))?;
                    host.configure(
                        &outer,
                        Some(first.bridge.index),
                        Some(first.bridge.mtu),
                        Some(&first.owner),
                    )
                    .await
                    .map_err(|e| failed("attaching the public veth", e))?;
                    self.inside
                        .link(peer)
                        .await
                        .map_err(|e| failed("looking up", e))?
                        .ok_or_else(|| io_error("public veth", "not in the namespace"))?
                }
            };
            self.inside
                .configure(&inner, None, Some(first.bridge.mtu), None)
                .await
                .map_err(|e| failed("bringing the public veth up", e))?;
            let have = self
                .inside
                .ipv4_addresses(inner.index)
                .await
                .map_err(|e| failed("listing addresses", e))?;
            for r in routes {
                if !have.iter().any(|(ip, _)| *ip == r.public) {
                    self.inside
                        .add_address(inner.index, r.public, r.cidr.prefix)
                        .await
                        .map_err(|e| failed("adding a public address", e))?;
                    // The address may have lived on another host until now: the public
                    // network's routers learn its new home at once, not at their ARP timeout.
                    announce(self.ns.try_clone()?, inner.index, first.mac, r.public);
                }
                snat.push(format!(
                    "\t\tip saddr {} oifname \"{peer}\" snat to {}\n",
                    r.private, r.public
                ));
                dnat.push(format!("\t\tip daddr {} dnat to {}\n", r.public, r.private));
            }
            for (ip, _) in have
                .iter()
                .filter(|(ip, _)| !routes.iter().any(|r| r.public == *ip))
            {
                self.inside
                    .del_address(inner.index, *ip)
                    .await
                    .map_err(|e| failed("removing a public address", e))?;
            }
            if let Some(gw) = first.gateway {
                self.inside
                    .add_default_route(gw)
                    .await
                    .map_err(|e| failed("routing", e))?;
            }
        }
        let mut rules = String::from("table ip triad_eip\ndelete table ip triad_eip\n");
        if !eips.is_empty() {
            rules += "table ip triad_eip {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat;\n";
            rules += &dnat.concat();
            rules += "\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat;\n";
            rules += &snat.concat();
            // The public side reaches the VMs (forwarded, above), never the namespace itself:
            // not its metadata service, whose connections the host's VMs share.
            rules += "\t}\n\tchain input {\n\t\ttype filter hook input priority filter;\n";
            rules += "\t\tiifname \"tpp*\" drop\n";
            rules += "\t}\n}\n";
        }
        let ns = self.ns.try_clone()?;
        in_namespace(Some(&ns), move || {
            use std::io::Write;
            let mut child = std::process::Command::new(crate::nft::NFT.command)
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(rules.as_bytes())?;
            }
            let out = child.wait_with_output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io_error(
                    "nft refused the NAT rules",
                    String::from_utf8_lossy(&out.stderr),
                ))
            }
        })
    }
}

/// Announces `ip` at `mac` with gratuitous ARP out of interface `index` of namespace `ns`,
/// as a request and as a reply (some routers heed only one of them), three times a second
/// apart: a port just added to a bridge may not forward yet. Runs on a thread of its own.
fn announce(ns: File, index: u32, mac: Mac, ip: Ipv4Addr) {
    std::thread::spawn(move || {
        // SAFETY: setns on a namespace file this thread owns; it moves only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!("announcing EIP {ip}: entering its namespace: {e}");
            return;
        }
        for round in 0..3 {
            if round > 0 {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            if let Err(e) = send_gratuitous_arp(index, mac, ip) {
                tracing::warn!("announcing EIP {ip}: {e}");
                return;
            }
        }
    });
}

fn send_gratuitous_arp(index: u32, mac: Mac, ip: Ipv4Addr) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    const BROADCAST: [u8; 6] = [0xff; 6];
    let arp = u16::try_from(libc::ETH_P_ARP).unwrap_or(0x0806).to_be();
    // SAFETY: plain socket(2); checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(arp),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(0);
    to.sll_protocol = arp;
    to.sll_ifindex = i32::try_from(index).unwrap_or(0);
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&BROADCAST);
    // The request asks for nobody's MAC; the reply names the sender's own (RFC 5944 4.6).
    for (op, target) in [(1u8, [0u8; 6]), (2, mac.0)] {
        let mut frame = Vec::with_capacity(42);
        frame.extend_from_slice(&BROADCAST);
        frame.extend_from_slice(&mac.0);
        frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, op]);
        frame.extend_from_slice(&mac.0);
        frame.extend_from_slice(&ip.octets());
        frame.extend_from_slice(&target);
        frame.extend_from_slice(&ip.octets());
        // SAFETY: sends `frame` to the address on this frame, both alive for the call.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or(0),
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Lookup {
    documents: Documents,
    netlink: crate::link::Netlink,
    veth: u32,
}

impl Lookup {
    /// The document of the VM at `peer`, if the neighbour entry for that address is its MAC.
    async fn document(&self, peer: SocketAddr) -> Result<Document, Response> {
        let refused = |why: &str| (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
        let std::net::IpAddr::V4(ip) = peer.ip() else {
            return Err(refused("not an IPv4 client"));
        };
        let doc = self
            .documents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned()
            .ok_or_else(|| refused("no VM of this host has this address"))?;
        let seen = self
            .netlink
            .neighbour_mac(self.veth, ip)
            .await
            .map_err(|_| refused("cannot tell who is asking"))?;
        if seen != Some(doc.mac) {
            tracing::warn!(
                "metadata: {ip} asked from {seen:?}, not port {}'s MAC {}",
                doc.port,
                doc.mac
            );
            return Err(refused("this address is not yours"));
        }
        Ok(doc)
    }
}

async fn token() -> &'static str {
    // IMDSv2 clients ask for a session token first; any token is accepted after.
    "triad-metadata-token"
}

async fn user_data(
    State(lookup): State<Lookup>,
    ConnectInfo(Client(peer)): ConnectInfo<Client>,
) -> Response {
    match lookup.document(peer).await {
        Ok(doc) => match doc.metadata.user_data {
            Some(data) => data.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        Err(refused) => refused,
    }
}

/// The keys of `meta-data/` this VM has.
fn keys(doc: &Document) -> Vec<&'static str> {
    let mut keys = vec![
        "hostname",
        "instance-id",
        "local-hostname",
        "local-ipv4",
        "mac",
    ];
    if doc.metadata.public_ipv4.is_some() {
        keys.push("public-ipv4");
    }
    if !doc.metadata.ssh_keys.is_empty() {
        keys.push("public-keys/");
    }
    keys
}

async fn index(
    State(lookup): State<Lookup>,
    ConnectInfo(Client(peer)): ConnectInfo<Client>,
) -> Response {
    match lookup.document(peer).await {
        Ok(doc) => (keys(&doc).join("\n") + "\n").into_response(),
        Err(refused) => refused,
    }
}

async fn item(
    State(lookup): State<Lookup>,
    ConnectInfo(Client(peer)): ConnectInfo<Client>,
    Path((_version, key)): Path<(String, String)>,
) -> Response {
    let doc = match lookup.document(peer).await {
        Ok(doc) => doc,
        Err(refused) => return refused,
    };
    match value(&doc, key.trim_end_matches('/')) {
        Some(text) => text.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// One metadata value, as EC2 spells its keys.
fn value(doc: &Document, key: &str) -> Option<String> {
    let name = || doc.hostname.clone().unwrap_or_else(|| doc.port.clone());
    Some(match key {
        "instance-id" => doc
            .metadata
            .instance_id
            .clone()
            .unwrap_or_else(|| doc.port.clone()),
        "hostname" | "local-hostname" => name(),
        "local-ipv4" => doc.ip.to_string(),
        "mac" => doc.mac.to_string(),
        "public-ipv4" => doc.metadata.public_ipv4?.to_string(),
        "public-keys" => doc
            .metadata
            .ssh_keys
            .iter()
            .enumerate()
            .map(|(i, _)| format!("{i}=key-{i}\n"))
            .collect(),
        _ => {
            let rest = key.strip_prefix("public-keys/")?;
            let (index, field) = rest.split_once('/').unwrap_or((rest, ""));
            let key = doc.metadata.ssh_keys.get(index.parse::<usize>().ok()?)?;
            match field {
                "" => "openssh-key\n".to_owned(),
                "openssh-key" => format!("{key}\n"),
                _ => return None,
            }
        }
    })
}

impl crate::link::Netlink {
    /// The MAC the neighbour table has for `ip` on interface `index`.
    pub async fn neighbour_mac(
        &self,
        index: u32,
        ip: Ipv4Addr,
    ) -> Result<Option<Mac>, rtnetlink::Error> {
        let entries: Vec<_> = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await?;
        Ok(entries
            .into_iter()
            .filter(|m| m.header.ifindex == index)
            .find_map(|m| {
                let mut mac = None;
                let mut dst = None;
                for a in m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(d),
                        NeighbourAttribute::LinkLayerAddress(l) => {
                            mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(Mac);
                        }
                        _ => {}
                    }
                }
                (dst == Some(ip)).then_some(mac).flatten()
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_ec2_names() {
        let doc = Document {
            port: "p1".into(),
            mac: Mac([0x52, 0x54, 0, 0, 0, 1]),
            ip: Ipv4Addr::new(10, 0, 0, 5),
            hostname: Some("web-1".into()),
            metadata: Metadata {
                instance_id: Some("i-123".into()),
                ssh_keys: vec!["ssh-ed25519 AAAA a@b".into()],
                public_ipv4: None,
                user_data: None,
            },
        };
        assert_eq!(value(&doc, "instance-id").unwrap(), "i-123");
        assert_eq!(value(&doc, "local-hostname").unwrap(), "web-1");
        assert_eq!(value(&doc, "mac").unwrap(), "52:54:00:00:00:01");
        assert_eq!(value(&doc, "public-keys").unwrap(), "0=key-0\n");
        assert_eq!(
            value(&doc, "public-keys/0/openssh-key").unwrap(),
            "ssh-ed25519 AAAA a@b\n"
        );
        assert!(value(&doc, "public-keys/1/openssh-key").is_none());
        assert!(value(&doc, "public-ipv4").is_none());
        assert!(value(&doc, "nonsense").is_none());
        assert!(!keys(&doc).contains(&"public-ipv4"));
    }
}
