//! Test hosts for netd: network namespaces standing in for hosts, a `triad-netd` process in
//! one, and what the kernel says about them (read with iproute2, not through netd).

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use triad_api::http::{request, Response};

#[allow(unused_imports)] // each test binary uses its own subset
pub use triad_tests::{ping, run, skip, workspace_root, Ns, TempDir};

/// The VTEPs in the flood list of VXLAN device `dev` in namespace `ns`.
pub fn flood_list(ns: &Ns, dev: &str) -> Vec<String> {
    let out = run("bridge", &["-n", &ns.name, "-j", "fdb", "show", "dev", dev]);
    let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut dsts: Vec<String> = entries
        .iter()
        .filter(|e| e["mac"] == "00:00:00:00:00:00")
        .filter_map(|e| e["dst"].as_str().map(str::to_owned))
        .collect();
    dsts.sort();
    dsts
}

/// `triad-netd` running in a namespace, its socket and state under `dir`; killed on drop.
pub struct Netd {
    child: Child,
    pub socket: PathBuf,
    config: PathBuf,
    ns: String,
}

impl Netd {
    pub fn start(ns: &Ns, dir: &Path) -> Self {
        Self::start_with(ns, dir, serde_json::json!({}))
    }

    /// As `start`, with the settings of `extra` added to the configuration.
    pub fn start_with(ns: &Ns, dir: &Path, extra: Value) -> Self {
        let (socket, config) = Self::configure(ns, dir, extra);
        Self::spawn(&ns.name, socket, config, None)
    }

    /// As `start_with`, with only the programs in `path` on netd's `PATH`.
    pub fn start_with_path(ns: &Ns, dir: &Path, extra: Value, path: &Path) -> Self {
        let (socket, config) = Self::configure(ns, dir, extra);
        Self::spawn(&ns.name, socket, config, Some(path))
    }

    /// Runs netd with only the programs in `path` on its `PATH`, for a start that must fail;
    /// what it printed and how it exited.
    pub fn run_with_path(ns: &Ns, dir: &Path, path: &Path) -> std::process::Output {
        let (_, config) = Self::configure(ns, dir, serde_json::json!({}));
        let mut run = Self::command(&ns.name, &config, Some(path));
        let mut child = run
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "netd did not exit; it printed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }

    fn configure(ns: &Ns, dir: &Path, extra: Value) -> (PathBuf, PathBuf) {
        let socket = dir.join("netd.sock");
        let config = dir.join("netd.json");
        let mut json = serde_json::json!({
            "socket": socket,
            "state_dir": dir.join("state"),
            "node": ns.name,
        });
        for (key, value) in extra.as_object().expect("settings as an object") {
            json[key] = value.clone();
        }
        std::fs::write(&config, json.to_string()).unwrap();
        (socket, config)
    }

    fn command(ns: &str, config: &Path, path: Option<&Path>) -> Command {
        let mut run = Command::new("ip");
        run.args(["netns", "exec", ns, "env"]);
        if let Some(path) = path {
            run.arg(format!("PATH={}", path.display()));
        }
        run.args([env!("CARGO_BIN_EXE_triad-netd"), "--config"])
            .arg(config);
        run
    }

    fn spawn(ns: &str, socket: PathBuf, config: PathBuf, path: Option<&Path>) -> Self {
        let _ = std::fs::remove_file(&socket);
        let child = Self::command(ns, &config, path).spawn().unwrap();
        // Killed on drop, also when it does not come up.
        let mut netd = Self {
            child,
            socket,
            config,
            ns: ns.to_owned(),
        };
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&netd.socket).is_err() {
            if let Some(status) = netd.child.try_wait().unwrap() {
                panic!("netd exited before it served: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "netd did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        netd
    }

    /// Kills netd outright (no clean-up on its side) and starts it again on the same state.
    pub fn crash_and_restart(self) -> Self {
        self.crash_and_restart_with(|| {})
    }

    /// As `crash_and_restart`, running `while_down` between the kill and the start.
    pub fn crash_and_restart_with(self, while_down: impl FnOnce()) -> Self {
        let (ns, socket, config) = (self.ns.clone(), self.socket.clone(), self.config.clone());
        drop(self);
        while_down();
        Self::spawn(&ns, socket, config, None)
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let body = body.map(|b| b.to_string());
        request(
            &self.socket,
            method,
            path,
            body.as_deref(),
            Duration::from_secs(30),
        )
        .unwrap()
    }

    /// A call that must succeed; its JSON answer (null for 204).
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&r.body).unwrap()
        }
    }

    /// A call that must fail with `status`; its error message.
    pub fn error(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> String {
        let r = self.call(method, path, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        body["error"].as_str().unwrap().to_owned()
    }
}

impl Drop for Netd {
    fn drop(&mut self) {
        // `ip netns exec` execs netd, so this is netd itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A VM stand-in for tests about the network alone: namespace `vm` whose `eth0` (with the
/// port's MAC) is joined to the port's TAP on `host` by a relay thread copying Ethernet frames
/// both ways, as a VMM would. Everything the namespace sends leaves through the TAP, so what
/// netd does to the port (filtering, DHCP, metadata) applies to it.
pub struct VmEndpoint {
    pub ns: Ns,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    relay: Option<std::thread::JoinHandle<()>>,
}

impl VmEndpoint {
    pub fn behind(host: &Ns, tap: &str, mac: &str, name: &str) -> Self {
        let vm = Ns::new(name);
        // Named after the TAP so that two endpoints on one host do not clash.
        let wire = format!("w{}", &tap[3..]);
        host.ip(&[
            "link", "add", &wire, "type", "veth", "peer", "name", "eth0", "netns", &vm.name,
        ]);
        host.ip(&["link", "set", &wire, "up"]);
        vm.ip(&["link", "set", "eth0", "address", mac]);
        vm.ip(&["link", "set", "eth0", "up"]);
        // Whole frames with their checksums, as a guest sends them.
        for (ns, dev) in [(&vm.name, "eth0"), (&host.name, wire.as_str())] {
            run(
                "ip",
                &[
                    "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso",
                    "off", "gro", "off",
                ],
            );
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relay = {
            let (host, tap, stop) = (host.name.clone(), tap.to_owned(), stop.clone());
            std::thread::spawn(move || relay(&host, &tap, &wire, &stop))
        };
        Self {
            ns: vm,
            stop,
            relay: Some(relay),
        }
    }

    /// `program ARGS` in the VM's namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Command {
        self.ns.exec(program, args)
    }

    /// Runs busybox's DHCP client on eth0 (a few quick tries) and, when it gets a lease,
    /// configures the address and the classless routes and returns what the server said, as udhcpc names it (`ip`,
    /// `subnet`, `router`, `dns`, `mtu`, `hostname`, `staticroutes`, `lease`, `serverid`).
    pub fn dhcp(&self, dir: &Path) -> Option<std::collections::BTreeMap<String, String>> {
        let script = dir.join(format!("udhcpc-{}.sh", self.ns.name));
        let out = dir.join(format!("lease-{}.env", self.ns.name));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nenv > {}\nip addr add \"$ip/$subnet\" dev \"$interface\"\n\
                 set -- $staticroutes\n\
                 while [ $# -ge 2 ]; do\n\
                 if [ \"$2\" = 0.0.0.0 ]; then ip route add \"$1\" dev \"$interface\"; \
                 else ip route add \"$1\" via \"$2\" dev \"$interface\"; fi\n\
                 shift 2\ndone\n",
                out.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let status = self
            .exec(
                "busybox",
                &[
                    "udhcpc",
                    "-i",
                    "eth0",
                    "-n",
                    "-q",
                    "-f",
                    "-t",
                    "4",
                    "-T",
                    "1",
                    "-s",
                    script.to_str().unwrap(),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running busybox udhcpc");
        if !status.success() {
            return None;
        }
        let env = std::fs::read_to_string(&out).unwrap();
        Some(
            env.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl Drop for VmEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
    }
}

/// Copies frames between TAP `tap` and veth `wire` (both in namespace `host`) until `stop`.
fn relay(host: &str, tap: &str, wire: &str, stop: &std::sync::atomic::AtomicBool) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    triad_tests::enter_netns(host);
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(tap.bytes()) {
        *dst = src as libc::c_char;
    }
    // Plain frames: no virtio-net header, no packet information.
    req.ifr_ifru.ifru_flags = libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap();
    // SAFETY: TUNSETIFF reads and writes one `ifreq` on this frame.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert!(
        rc >= 0,
        "attaching to {tap}: {}",
        std::io::Error::last_os_error()
    );
    let proto = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        raw >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh descriptor this function owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let index = std::ffi::CString::new(wire).unwrap();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(index.as_ptr()) };
    assert!(ifindex > 0, "no {wire}");
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(ifindex).unwrap();
    // SAFETY: binds to an address that lives on this frame, with its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
        )
    };
    assert_eq!(
        rc,
        0,
        "binding to {wire}: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = vec![0u8; 65536];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: tun.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds on this frame.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if n < 0 {
            break;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            break; // the TAP is gone
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: reads into `buf`, within its length.
            let len = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if len > 0 {
                // SAFETY: sends `len` bytes of `buf`.
                unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), len as usize, 0) };
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            // SAFETY: sockaddr_ll is plain old data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap();
            // SAFETY: receives into `buf` and `from`, within their sizes.
            let len = unsafe {
                libc::recvfrom(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            // Frames this socket itself sent come back as outgoing: not the VM's.
            if len > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                // SAFETY: writes `len` bytes of `buf`.
                unsafe { libc::write(tun.as_raw_fd(), buf.as_ptr().cast(), len as usize) };
            }
        }
    }
}

/// Two hosts with netd each, joined by an underlay: `under0`, 192.0.2.1 on `h1` and 192.0.2.2
/// on `h2`.
pub struct TwoHosts {
    pub d1: Netd,
    pub d2: Netd,
    pub h1: Ns,
    pub h2: Ns,
    pub dir1: TempDir,
    pub dir2: TempDir,
}

pub fn two_hosts(test: &str) -> TwoHosts {
    let h1 = Ns::new(&format!("{test}1"));
    let h2 = Ns::new(&format!("{test}2"));
    h1.wire(
        "under0",
        Some("192.0.2.1/24"),
        &h2,
        "under0",
        Some("192.0.2.2/24"),
    );
    let dir1 = TempDir::new(&format!("{test}1"));
    let dir2 = TempDir::new(&format!("{test}2"));
    TwoHosts {
        d1: Netd::start(&h1, dir1.path()),
        d2: Netd::start(&h2, dir2.path()),
        h1,
        h2,
        dir1,
        dir2,
    }
}
