//! Per-host, per-network DHCP (RFC 2131) for the host's own VMs only: a MAC that is not one of
//! this host's ports on the network gets no answer, so the hosts of a network never race for a
//! client. Addresses are the controller's (each port's IP), so a lease is a fixed binding.
//!
//! The server listens on the network's bridge with a packet socket (the bridge has no address
//! of its own) and answers in kind: Ethernet straight to the client's MAC, from the DHCP server
//! address that every host of the network shares. It also answers ARP for that address, for its
//! own VMs, so that renewals unicast to it reach this host.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use tokio::io::unix::AsyncFd;
use triad_api::net::{Ipv4Cidr, Mac};

/// A day, as most DHCP servers default.
pub const DEFAULT_LEASE_SECS: u32 = 86_400;

/// One VM the server answers: its port's MAC, address and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub port: String,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
    /// The VM has an EIP: its default route goes through its host's metadata namespace,
    /// which maps it.
    pub eip: bool,
}

/// What a network's DHCP server hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub network: String,
    pub server: Ipv4Addr,
    pub cidr: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub routes: Vec<(Ipv4Cidr, Ipv4Addr)>,
    pub mtu: u32,
    pub lease_secs: u32,
    /// Whether the network has a metadata service (reached on-link at 169.254.169.254).
    pub metadata: bool,
    pub bindings: HashMap<Mac, Binding>,
}

/// Builds the answer to `req` from `scope`, or none: not a request, not one of this host's
/// VMs, or a request meant for another server.
pub fn answer(scope: &Scope, req: &Message) -> Option<Message> {
    if req.opcode() != Opcode::BootRequest || req.hlen() != 6 {
        return None;
    }
    let mac = Mac(<[u8; 6]>::try_from(req.chaddr().get(..6)?).ok()?);
    let binding = scope.bindings.get(&mac)?;
    let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let kind = match req.opts().msg_type()? {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            // Selecting another server's offer: not ours to answer.
            if server_id.is_some_and(|id| id != scope.server) {
                return None;
            }
            let asked = requested.unwrap_or(req.ciaddr());
            if asked == binding.ip {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        MessageType::Inform => MessageType::Ack,
        _ => return None, // release, decline: the binding stays as the controller set it
    };
    let mut reply = Message::default();
    reply
        .set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_giaddr(req.giaddr())
        .set_chaddr(req.chaddr());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(scope.server));
    if kind == MessageType::Nak {
        return Some(reply);
    }
    let inform = req.opts().msg_type() == Some(MessageType::Inform);
    if inform {
        reply.set_ciaddr(req.ciaddr());
    } else {
        reply.set_yiaddr(binding.ip);
    }
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::SubnetMask(Ipv4Addr::from(scope.cidr.mask())));
    opts.insert(DhcpOption::BroadcastAddr(scope.cidr.broadcast()));
    if let Some(gw) = scope.gateway {
        opts.insert(DhcpOption::Router(vec![gw]));
    }
    if !scope.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(scope.dns.clone()));
    }
    if let Ok(mtu) = u16::try_from(scope.mtu) {
        opts.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(name) = &binding.hostname {
        opts.insert(DhcpOption::Hostname(name.clone()));
    }
    let mut routes: Vec<(ipnet::Ipv4Net, Ipv4Addr)> = scope
        .routes
        .iter()
        .filter_map(|(dst, via)| Some((ipnet::Ipv4Net::new(dst.network(), dst.prefix).ok()?, *via)))
        .collect();
    if scope.metadata {
        // On-link (router 0.0.0.0, RFC 3442): the VM asks its own host's service.
        routes.extend(
            ipnet::Ipv4Net::new(crate::metadata::ADDRESS, 32)
                .ok()
                .map(|n| (n, Ipv4Addr::UNSPECIFIED)),
        );
    }
    if !routes.is_empty() {
        // A client given option 121 ignores option 3 (RFC 3442), so the default route is
        // repeated in it.
        let via = if binding.eip && scope.metadata {
            Some(crate::metadata::ADDRESS)
        } else {
            scope.gateway
        };
        if let Some(gw) = via {
            routes.push((ipnet::Ipv4Net::default(), gw));
        }
        opts.insert(DhcpOption::ClasslessStaticRoute(routes));
    }
    if !inform {
        let lease = scope.lease_secs;
        opts.insert(DhcpOption::AddressLeaseTime(lease));
        opts.insert(DhcpOption::Renewal(lease / 2));
        opts.insert(DhcpOption::Rebinding(lease / 8 * 7));
    }
    Some(reply)
}

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// A frame the socket took in, decoded as far as the server needs.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Dhcp {
        src_mac: Mac,
        message: Message,
    },
    /// An ARP request: who has `target`, asked by `sender_mac` (`sender_ip`).
    ArpRequest {
        sender_mac: Mac,
        sender_ip: Ipv4Addr,
        target: Ipv4Addr,
    },
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ipv4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    Some(Ipv4Addr::from(
        <[u8; 4]>::try_from(b.get(at..at + 4)?).ok()?,
    ))
}

/// Decodes an Ethernet frame holding a DHCP request (UDP to port 67) or an ARP request.
/// Anything else, or anything malformed, is `None`: frames come from VMs and are not trusted.
pub fn parse(frame: &[u8]) -> Option<Incoming> {
    let src_mac = Mac(frame.get(6..12)?.try_into().ok()?);
    match be16(frame, 12)? {
        ETHERTYPE_ARP => {
            let arp = frame.get(ETH_HEADER..ETH_HEADER + 28)?;
            // Ethernet/IPv4 request.
            if be16(arp, 0)? != 1
                || be16(arp, 2)? != ETHERTYPE_IPV4
                || arp[4] != 6
                || arp[5] != 4
                || be16(arp, 6)? != 1
            {
                return None;
            }
            Some(Incoming::ArpRequest {
                sender_mac: Mac(arp[8..14].try_into().ok()?),
                sender_ip: ipv4(arp, 14)?,
                target: ipv4(arp, 24)?,
            })
        }
        ETHERTYPE_IPV4 => {
            let ip = frame.get(ETH_HEADER..)?;
            let header = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(be16(ip, 2)?);
            if ip[0] >> 4 != 4
                || header < 20
                || total < header + 8
                || total > ip.len()
                || ip[9] != 17
            {
                return None;
            }
            // Fragments are not DHCP.
            if be16(ip, 6)? & 0x3fff != 0 {
                return None;
            }
            let udp = &ip[header..total];
            if be16(udp, 2)? != 67 {
                return None;
            }
            let len = usize::from(be16(udp, 4)?);
            let payload = udp.get(8..len.max(8))?;
            let message = Message::decode(&mut Decoder::new(payload)).ok()?;
            Some(Incoming::Dhcp { src_mac, message })
        }
        _ => None,
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded to 16 bits above.
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// The Ethernet frame carrying `reply` from `server` (`server_mac`) to the client: broadcast
/// when the client asked for it or cannot take unicast yet (RFC 2131 §4.1), else straight to
/// its MAC and new address.
pub fn reply_frame(
    reply: &Message,
    server: Ipv4Addr,
    server_mac: Mac,
    client_mac: Mac,
) -> Option<Vec<u8>> {
    let mut payload = Vec::with_capacity(300);
    reply.encode(&mut Encoder::new(&mut payload)).ok()?;
    let nak = reply.opts().msg_type() == Some(MessageType::Nak);
    let (dst_mac, dst_ip) = if nak
        || reply.flags().broadcast()
        || reply.yiaddr().is_unspecified() && reply.ciaddr().is_unspecified()
    {
        (BROADCAST, Ipv4Addr::BROADCAST)
    } else if !reply.ciaddr().is_unspecified() {
        (client_mac.0, reply.ciaddr())
    } else {
        (client_mac.0, reply.yiaddr())
    };
    let udp_len = u16::try_from(8 + payload.len()).ok()?;
    let ip_len = udp_len.checked_add(20)?;
    let mut frame = Vec::with_capacity(ETH_HEADER + usize::from(ip_len));
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&server_mac.0);
    frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&server.octets());
    ip[16..20].copy_from_slice(&dst_ip.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&67u16.to_be_bytes());
    frame.extend_from_slice(&68u16.to_be_bytes());
    frame.extend_from_slice(&udp_len.to_be_bytes());
    // A zero UDP checksum means none (IPv4), which every client takes.
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&payload);
    Some(frame)
}

/// The ARP reply saying `ip` is at `mac`, to the asker.
pub fn arp_reply(mac: Mac, ip: Ipv4Addr, to_mac: Mac, to_ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&to_mac.0);
    frame.extend_from_slice(&mac.0);
    frame.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    frame.extend_from_slice(&mac.0);
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&to_mac.0);
    frame.extend_from_slice(&to_ip.octets());
    frame
}

/// A lease as the server last acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub ip: Ipv4Addr,
    pub at: u64,
    pub expires: u64,
}

/// A running server: its scope (updated in place as ports come and go) and its leases.
#[derive(Debug)]
pub struct Server {
    pub bridge: u32,
    pub mac: Mac,
    pub scope: Arc<Mutex<Scope>>,
    pub acked: Arc<Mutex<HashMap<Mac, Acked>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Whether its task still serves (it ends on a socket error it cannot get past).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Classic BPF: keep ARP, and IPv4 UDP to port 67 that is not a fragment; drop the rest in
/// the kernel, so the VMs' other traffic is never copied to netd.
fn filter() -> [libc::sock_filter; 12] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    [
        op(0x28, 0, 0, 12),     // ldh [12]            ethertype
        op(0x15, 8, 0, 0x0806), // jeq ARP  -> accept
        op(0x15, 0, 8, 0x0800), // jne IPv4 -> drop
        op(0x30, 0, 0, 23),     // ldb [23]            protocol
        op(0x15, 0, 6, 17),     // jne UDP  -> drop
        op(0x28, 0, 0, 20),     // ldh [20]            flags, fragment offset
        op(0x45, 4, 0, 0x1fff), // jset fragment -> drop
        op(0xb1, 0, 0, 14),     // ldxb 4*([14]&0xf)   IP header length
        op(0x48, 0, 0, 16),     // ldh [x+16]          UDP destination port
        op(0x15, 0, 1, 67),     // jne 67 -> drop
        op(0x06, 0, 0, 65535),  // accept
        op(0x06, 0, 0, 0),      // drop
    ]
}

/// The size of a socket argument, as the kernel takes it.
fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0)
}

/// A non-blocking packet socket on interface `index` taking what `filter` keeps.
fn packet_socket(index: u32) -> std::io::Result<OwnedFd> {
    let proto = u16::try_from(libc::ETH_P_ALL).unwrap_or(3).to_be();
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let program = filter();
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).unwrap_or(0),
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: SO_ATTACH_FILTER copies the program, which lives on this frame, into the kernel.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            socklen::<libc::sock_fprog>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(0);
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(index).unwrap_or(0);
    // SAFETY: binds to an address on this frame, with its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            socklen::<libc::sockaddr_ll>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Starts the server for `scope` on bridge `index` (whose MAC is `mac`).
pub fn spawn(index: u32, mac: Mac, scope: Scope) -> std::io::Result<Server> {
    // SAFETY: an OwnedFd's descriptor is open and its own until it is dropped with the AsyncFd.
    let socket =
        unsafe { AsyncFd::register(packet_socket(index)?) }.map_err(|e| e.into_parts().1)?;
    let scope = Arc::new(Mutex::new(scope));
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let task = {
        let (scope, acked) = (scope.clone(), acked.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(socket, mac, &scope, &acked).await {
                tracing::error!("DHCP server on interface {index} stopped: {e}");
            }
        })
    };
    Ok(Server {
        bridge: index,
        mac,
        scope,
        acked,
        task,
    })
}

async fn serve(
    socket: AsyncFd<OwnedFd>,
    mac: Mac,
    scope: &Mutex<Scope>,
    acked: &Mutex<HashMap<Mac, Acked>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    loop {
        let mut guard = socket.readable().await?;
        let got = guard.try_io(|fd| {
            // SAFETY: sockaddr_ll is plain old data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = socklen::<libc::sockaddr_ll>();
            // SAFETY: receives into `buf` and `from`, within their sizes.
            let n = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok((usize::try_from(n).unwrap_or(0), from.sll_pkttype))
            }
        });
        let (n, kind) = match got {
            Ok(Ok(got)) => got,
            // The bridge went down and up, or the socket overflowed: carry on.
            Ok(Err(e))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETDOWN | libc::EINTR | libc::ENOBUFS | libc::EAGAIN)
                ) =>
            {
                continue
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        };
        // What the bridge itself sends (these answers) comes back as outgoing.
        if kind == libc::PACKET_OUTGOING {
            continue;
        }
        let Some(incoming) = parse(&buf[..n]) else {
            continue;
        };
        let out = {
            let scope = scope.lock().unwrap_or_else(|p| p.into_inner());
            match incoming {
                // A request for another MAC than the sender's is not answered: a reply goes to
                // the sender, so it would hand one VM's lease to another.
                Incoming::Dhcp { src_mac, message }
                    if message.hlen() != 6 || message.chaddr().get(..6) != Some(&src_mac.0[..]) =>
                {
                    None
                }
                Incoming::Dhcp { src_mac, message } => answer(&scope, &message).and_then(|reply| {
                    if reply.opts().msg_type() == Some(MessageType::Ack)
                        && !reply.yiaddr().is_unspecified()
                    {
                        let at = now();
                        acked.lock().unwrap_or_else(|p| p.into_inner()).insert(
                            src_mac,
                            Acked {
                                ip: reply.yiaddr(),
                                at,
                                expires: at + u64::from(scope.lease_secs),
                            },
                        );
                    }
                    reply_frame(&reply, scope.server, mac, src_mac)
                }),
                Incoming::ArpRequest {
                    sender_mac,
                    sender_ip,
                    target,
                } => (target == scope.server && scope.bindings.contains_key(&sender_mac))
                    .then(|| arp_reply(mac, scope.server, sender_mac, sender_ip)),
            }
        };
        if let Some(frame) = out {
            // SAFETY: sends `frame` on the bound socket.
            let rc = unsafe {
                libc::send(
                    socket.get_ref().as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                )
            };
            if rc < 0 {
                tracing::warn!("DHCP: sending: {}", std::io::Error::last_os_error());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);

    fn scope() -> Scope {
        let mut bindings = HashMap::new();
        bindings.insert(
            VM,
            Binding {
                port: "p1".into(),
                ip: Ipv4Addr::new(10, 0, 0, 10),
                hostname: Some("web-1".into()),
                eip: false,
            },
        );
        Scope {
            network: "n".into(),
            server: Ipv4Addr::new(10, 0, 0, 254),
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
            routes: vec![(
                "192.168.0.0/16".parse().unwrap(),
                Ipv4Addr::new(10, 0, 0, 3),
            )],
            mtu: 1450,
            lease_secs: 3600,
            metadata: true,
            bindings,
        }
    }

    fn request(kind: MessageType, mac: Mac, opts: &[DhcpOption]) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_xid(0x1234)
            .set_chaddr(&mac.0);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o.clone());
        }
        m
    }

    #[test]
    fn offers_and_acks_the_ports_address_with_its_options() {
        let s = scope();
        let offer = answer(&s, &request(MessageType::Discover, VM, &[])).unwrap();
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(offer.xid(), 0x1234);
        let o = offer.opts();
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1450))
        );
        assert_eq!(
            o.get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("web-1".into()))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        let Some(DhcpOption::ClasslessStaticRoute(routes)) =
            o.get(OptionCode::ClasslessStaticRoute)
        else {
            panic!("no option 121");
        };
        assert_eq!(
            routes.len(),
            3,
            "the static route, the metadata service and the default route: {routes:?}"
        );
        let req = request(
            MessageType::Request,
            VM,
            &[
                DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 10)),
                DhcpOption::ServerIdentifier(s.server),
            ],
        );
        assert_eq!(
            answer(&s, &req).unwrap().opts().msg_type(),
            Some(MessageType::Ack)
        );
    }

    #[test]
    fn strangers_and_other_servers_get_nothing_and_wrong_addresses_a_nak() {
        let s = scope();
        let stranger = Mac([0x52, 0x54, 0, 0, 0, 9]);
        assert!(answer(&s, &request(MessageType::Discover, stranger, &[])).is_none());
        let elsewhere = request(
            MessageType::Request,
            VM,
            &[DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 253))],
        );
        assert!(answer(&s, &elsewhere).is_none());
        let wrong = request(
            MessageType::Request,
            VM,
            &[DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 99))],
        );
        let nak = answer(&s, &wrong).unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert!(nak.yiaddr().is_unspecified());
        assert!(answer(&s, &request(MessageType::Release, VM, &[])).is_none());
    }

    #[test]
    fn frames_round_trip_and_garbage_is_ignored() {
        let s = scope();
        let discover = request(MessageType::Discover, VM, &[]);
        // A client's DISCOVER, as a frame: reuse the reply builder with the ports swapped.
        let mut frame = reply_frame(&discover, Ipv4Addr::UNSPECIFIED, VM, Mac(BROADCAST)).unwrap();
        let udp = ETH_HEADER + 20;
        frame[udp..udp + 2].copy_from_slice(&68u16.to_be_bytes());
        frame[udp + 2..udp + 4].copy_from_slice(&67u16.to_be_bytes());
        let Some(Incoming::Dhcp { src_mac, message }) = parse(&frame) else {
            panic!("not parsed");
        };
        assert_eq!(src_mac, VM);
        let offer = answer(&s, &message).unwrap();
        let out = reply_frame(&offer, s.server, Mac([2, 0, 0, 0, 0, 1]), VM).unwrap();
        assert_eq!(&out[..6], &VM.0, "unicast to the client");
        assert_eq!(
            checksum(&out[ETH_HEADER..ETH_HEADER + 20]),
            0,
            "a valid IP header checksum"
        );
        // Every truncation of a valid frame is rejected without a panic.
        for len in 0..frame.len() {
            let _ = parse(&frame[..len]);
        }
        let arp = arp_reply(VM, Ipv4Addr::new(10, 0, 0, 10), Mac(BROADCAST), s.server);
        let mut request = arp.clone();
        request[ETH_HEADER + 7] = 1;
        assert!(
            matches!(parse(&request), Some(Incoming::ArpRequest { target, .. }) if target == s.server)
        );
        assert!(parse(&arp).is_none(), "replies are not requests");
    }
}
