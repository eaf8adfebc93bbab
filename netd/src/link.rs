//! The host's interfaces over rtnetlink: bridges, VXLAN devices and their forwarding tables,
//! and the settings netd owns on any link (master, MTU, up, alias).

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan};
use triad_api::net::Mac;

/// A netlink call that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct NetlinkError {
    what: String,
    #[source]
    source: rtnetlink::Error,
}

impl NetlinkError {
    /// The kernel's errno, when it refused the request.
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            rtnetlink::Error::NetlinkError(e) => e.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn context<T>(
    r: std::result::Result<T, rtnetlink::Error>,
    what: impl FnOnce() -> String,
) -> Result<T> {
    r.map_err(|source| NetlinkError {
        what: what(),
        source,
    })
}

/// What netd reads of a VXLAN device, to tell whether it is the one a network wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: u32,
    pub underlay: u32,
    pub local: Ipv4Addr,
    pub port: u16,
}

/// One interface of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    pub master: Option<u32>,
    pub alias: Option<String>,
    pub mac: Option<Mac>,
    pub vxlan: Option<VxlanParams>,
}

impl Link {
    fn from_message(m: LinkMessage) -> Self {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            up: m.header.flags.contains(LinkFlags::Up),
            mtu: 0,
            master: None,
            alias: None,
            mac: None,
            vxlan: None,
        };
        for attr in m.attributes {
            match attr {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                LinkAttribute::Controller(index) => link.master = Some(index),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias),
                LinkAttribute::Address(bytes) => {
                    link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                                let mut p = VxlanParams {
                                    vni: 0,
                                    underlay: 0,
                                    local: Ipv4Addr::UNSPECIFIED,
                                    port: 0,
                                };
                                for a in attrs {
                                    match a {
                                        InfoVxlan::Id(vni) => p.vni = vni,
                                        InfoVxlan::Link(index) => p.underlay = index,
                                        InfoVxlan::Local(ip) => p.local = ip,
                                        InfoVxlan::Port(port) => p.port = port,
                                        _ => {}
                                    }
                                }
                                link.vxlan = Some(p);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// A bridge forwarding entry of a VXLAN device: frames for `mac` go to VTEP `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fdb {
    pub device: u32,
    pub mac: Mac,
    pub dst: Ipv4Addr,
}

/// The all-zero MAC: a VXLAN device floods unknown and broadcast frames to every entry with
/// it (head-end replication).
pub const FLOOD: Mac = Mac([0; 6]);

/// An rtnetlink connection.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace; its I/O runs on the
    /// current tokio runtime.
    pub fn connect() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The connection, for the requests this module does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<()> {
        let message = LinkVeth::new(name, peer).build();
        context(self.handle.link().add(message).execute().await, || {
            format!("creating veth {name}")
        })
    }

    /// Moves `link` into the network namespace open at `ns`.
    pub async fn move_to(&self, link: &Link, ns: std::os::fd::RawFd) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index)
            .setns_by_fd(ns)
            .build();
        context(self.handle.link().set(message).execute().await, || {
            format!("moving {} to another namespace", link.name)
        })
    }

    pub async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let request = self.handle.address().add(index, IpAddr::V4(ip), prefix);
        context(request.execute().await, || format!("adding {ip}/{prefix}"))
    }

    /// The IPv4 addresses on interface `index`, with their prefix lengths.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let messages: Vec<_> = context(stream.try_collect().await, || "listing addresses".into())?;
        Ok(messages
            .into_iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let prefix = m.header.prefix_len;
                m.attributes.into_iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some((ip, prefix)),
                    _ => None,
                })
            })
            .collect())
    }

    pub async fn del_address(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let messages: Vec<_> = context(stream.try_collect().await, || "listing addresses".into())?;
        for m in messages.into_iter().filter(|m| m.header.index == index) {
            let here = m
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(a)) if *a == ip));
            if here {
                context(self.handle.address().del(m).execute().await, || {
                    format!("removing {ip}")
                })?;
            }
        }
        Ok(())
    }

    /// The default route, via `gateway`; one already there is left as it is.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        match self.handle.route().add(route).execute().await {
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            other => context(other, || format!("routing by default via {gateway}")),
        }
    }

    /// A route to `cidr` straight out of interface `index` (no gateway).
    pub async fn add_onlink_route(&self, index: u32, cidr: triad_api::net::Ipv4Cidr) -> Result<()> {
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix)
            .output_interface(index)
            .scope(rtnetlink::packet_route::route::RouteScope::Link)
            .build();
        context(self.handle.route().add(route).execute().await, || {
            format!("routing {cidr}")
        })
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let stream = self.handle.link().get().execute();
        let messages: Vec<LinkMessage> =
            context(stream.try_collect().await, || "listing links".into())?;
        Ok(messages.into_iter().map(Link::from_message).collect())
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(m) => Ok(m.map(Link::from_message)),
            // No such device.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(source) => Err(NetlinkError {
                what: format!("looking up {name}"),
                source,
            }),
        }
    }

    pub async fn create_bridge(&self, name: &str, mtu: u32) -> Result<()> {
        let message = LinkBridge::new(name).mtu(mtu).build();
        context(self.handle.link().add(message).execute().await, || {
            format!("creating bridge {name}")
        })
    }

    pub async fn set_address(&self, link: &Link, mac: Mac) -> Result<()> {
        let message = LinkUnspec::new_with_index(link.index)
            .address(mac.0.to_vec())
            .build();
        context(self.handle.link().set(message).execute().await, || {
            format!("setting the address of {}", link.name)
        })
    }

    pub async fn create_vxlan(&self, name: &str, p: VxlanParams, mtu: u32) -> Result<()> {
        let message = LinkVxlan::new(name, p.vni)
            .dev(p.underlay)
            .local(p.local)
            .port(p.port)
            .learning(false)
            .mtu(mtu)
            .build();
        context(self.handle.link().add(message).execute().await, || {
            format!("creating VXLAN device {name}")
        })
    }

    pub async fn delete(&self, link: &Link) -> Result<()> {
        context(self.handle.link().del(link.index).execute().await, || {
            format!("deleting {}", link.name)
        })
    }

    /// Sets what netd owns on `link`: its master (`Some(0)` detaches it), MTU, alias, and up.
    pub async fn configure(
        &self,
        link: &Link,
        master: Option<u32>,
        mtu: Option<u32>,
        alias: Option<&str>,
    ) -> Result<()> {
        let mut builder = LinkUnspec::new_with_index(link.index).up();
        if let Some(index) = master {
            builder = if index == 0 {
                builder.nocontroller()
            } else {
                builder.controller(index)
            };
        }
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(alias) = alias {
            builder = builder.alias(alias);
        }
        context(
            self.handle.link().set(builder.build()).execute().await,
            || format!("configuring {}", link.name),
        )
    }

    /// The first IPv4 address of interface `index`.
    pub async fn ipv4_of(&self, index: u32) -> Result<Option<Ipv4Addr>> {
        Ok(self.ipv4_addresses(index).await?.first().map(|(ip, _)| *ip))
    }

    /// The bridge forwarding entries with a remote VTEP (VXLAN devices').
    pub async fn fdb(&self) -> Result<Vec<Fdb>> {
        let stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let messages: Vec<NeighbourMessage> = context(stream.try_collect().await, || {
            "listing forwarding entries".into()
        })?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let mut mac = None;
                let mut dst = None;
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::LinkLayerAddress(l) => {
                            mac = <[u8; 6]>::try_from(l.as_slice()).ok().map(Mac);
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            dst = Some(*ip);
                        }
                        // In the bridge family the address comes unparsed.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                            dst = <[u8; 4]>::try_from(bytes.as_slice())
                                .ok()
                                .map(Ipv4Addr::from);
                        }
                        _ => {}
                    }
                }
                Some(Fdb {
                    device: m.header.ifindex,
                    mac: mac?,
                    dst: dst?,
                })
            })
            .collect())
    }

    fn fdb_message(entry: &Fdb) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = entry.device;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(entry.mac.0.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                entry.dst,
            )));
        m
    }

    /// Adds a forwarding entry beside the others for the same MAC (`bridge fdb append`).
    pub async fn fdb_append(&self, entry: &Fdb) -> Result<()> {
        let mut req =
            NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(Self::fdb_message(entry)));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let what = || format!("adding VTEP {} to device {}", entry.dst, entry.device);
        let mut handle = self.handle.clone();
        let mut response = context(handle.request(req), what)?;
        while let Some(message) = futures_util::StreamExt::next(&mut response).await {
            if let NetlinkPayload::Error(err) = message.payload {
                return context(Err(rtnetlink::Error::NetlinkError(err)), what);
            }
        }
        Ok(())
    }

    pub async fn fdb_delete(&self, entry: &Fdb) -> Result<()> {
        let what = || format!("removing VTEP {} from device {}", entry.dst, entry.device);
        context(
            self.handle
                .neighbours()
                .del(Self::fdb_message(entry))
                .execute()
                .await,
            what,
        )
    }
}

/// Interface names are at most 15 bytes (IFNAMSIZ less the NUL).
pub const MAX_NAME: usize = 15;

/// Turns off transmit checksum offload on interface `name` (`ethtool -K NAME tx off`). Open
/// vSwitch's userspace datapath reads frames with a packet socket and cannot finish a checksum
/// the sender left to the "hardware", so a veth it reads from must send whole ones.
pub fn disable_tx_checksum(name: &str) -> std::io::Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    ethtool_set(name, ETHTOOL_STXCSUM, 0)
}

/// Turns off generic receive offload on interface `name` (`ethtool -K NAME gro off`). Open
/// vSwitch's userspace datapath takes frames up to the MTU from its packet socket and drops
/// the larger ones GRO would merge.
pub fn disable_gro(name: &str) -> std::io::Result<()> {
    const ETHTOOL_SGRO: u32 = 0x2c;
    ethtool_set(name, ETHTOOL_SGRO, 0)
}

/// One `SIOCETHTOOL` "set" command taking a 32-bit value.
fn ethtool_set(name: &str, cmd: u32, data: u32) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    // SAFETY: a plain socket call; the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: `ifreq` is plain old data; all-zero is a valid (empty) value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads `req` and the `EthtoolValue` it points to, both on this stack
    // frame for the whole call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
