//! The cluster harness: nodes as network namespaces joined by management, storage and data
//! bridges (in a switch namespace), each running `triad-netd`, `triad-storaged` and
//! `triad-hostd` as real processes, with shared storage on an `smp` directory; and the faults
//! a real cluster meets (a node's processes killed, a link cut, a node frozen).
//!
//! Names carry the test's name and pid, so runs never clash; everything (processes, VMMs,
//! namespaces, files) goes on drop, also when the test panics, and a crashed earlier run's
//! namespaces of the same name are replaced.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{binary, Ns, TempDir};

/// The three networks between nodes, each a bridge in the switch namespace and a veth in
/// every node: (device in the node, bridge, subnet prefix).
pub const LINKS: [(&str, &str, &str); 3] = [
    ("mgmt0", "br-mgmt", "10.250.0"),
    ("stor0", "br-stor", "10.251.0"),
    ("data0", "br-data", "10.252.0"),
];

/// The TCP port each node's hostd serves the controller on, on its management address.
pub const HOSTD_PORT: u16 = 7301;

/// The UDP port of each node's peer heartbeats, on its management and storage addresses.
pub const HEARTBEAT_PORT: u16 = 7302;

/// The TCP port of the controller's API.
pub const CONTROLLER_PORT: u16 = 7300;

/// A controller of the cluster: its process, in a namespace on the management network.
#[derive(Debug)]
pub struct Controller {
    pub daemon: Daemon,
    /// `host:port` of its API.
    pub addr: String,
    token_file: PathBuf,
    /// The cluster's CA, which vouches for the API, when the cluster speaks TLS.
    pub ca_file: Option<PathBuf>,
    // Dropped after the daemon.
    pub ns: Ns,
}

impl Controller {
    /// The admin token the cluster's first controller made.
    pub fn token(&self) -> String {
        std::fs::read_to_string(&self.token_file)
            .expect("the controller wrote its admin token")
            .trim()
            .to_owned()
    }
}

/// A daemon of a node: `BINARY --config FILE` in the node's namespace, its output in a log
/// beside the config, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    pub name: &'static str,
    pub socket: PathBuf,
    pub log: PathBuf,
    config: PathBuf,
    /// Arguments after `--config FILE`.
    args: Vec<String>,
    ns: String,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `name` (a workspace binary) with `config` and waits until it serves `socket`.
    pub fn start(name: &'static str, ns: &str, dir: &Path, config: Value) -> Self {
        Self::start_with_args(name, ns, dir, config, &[])
    }

    /// `start`, with `args` after `--config FILE`.
    pub fn start_with_args(
        name: &'static str,
        ns: &str,
        dir: &Path,
        config: Value,
        args: &[&str],
    ) -> Self {
        let socket = PathBuf::from(config["socket"].as_str().expect("a socket in the config"));
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, config.to_string()).unwrap();
        let mut daemon = Self {
            name,
            socket,
            log: dir.join(format!("{name}.log")),
            config: path,
            args: args.iter().map(|a| a.to_string()).collect(),
            ns: ns.to_owned(),
            child: None,
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // `ip netns exec` execs the daemon, so the child is the daemon itself.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(binary(self.name))
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "{} exited before it served: {status}\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not come up\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it printed.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no clean-up on its side.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its config, as written to its file.
    pub fn config(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap()
    }

    /// Kills it and starts it on `config`, as an operator who edits the file and restarts it.
    pub fn reconfigure(&mut self, config: Value) {
        std::fs::write(&self.config, config.to_string()).unwrap();
        self.restart();
    }

    /// Kills it outright and starts it again on the same config and state.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGSTOP: it holds its sockets and answers nothing, like a hung process.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) on our own child; no memory effects.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.thaw();
        self.kill9();
    }
}

/// One node: its namespace, directory and daemons.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub index: usize,
    pub dir: PathBuf,
    pub netd: Daemon,
    pub storaged: Daemon,
    pub hostd: Daemon,
    // Dropped after the daemons: the namespace goes last.
    pub ns: Ns,
}

impl Node {
    /// The node's address on link `link` (an entry of `LINKS`): `10.25x.0.(index + 1)`.
    pub fn addr(&self, link: usize) -> String {
        node_addr(link, self.index)
    }

    /// Where the controller reaches the node's hostd: `10.250.0.N:HOSTD_PORT`.
    pub fn hostd_addr(&self) -> String {
        format!("{}:{HOSTD_PORT}", self.addr(0))
    }

    /// The fingerprint of the certificate hostd serves until it joins, as `triad-hostd token`
    /// prints it.
    pub fn hostd_fingerprint(&self) -> String {
        let out = Command::new(binary("triad-hostd"))
            .arg("token")
            .arg("--config")
            .arg(&self.hostd.config)
            .output()
            .expect("running triad-hostd token");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("fingerprint"))
            .map(|f| f.trim().to_owned())
            .unwrap_or_else(|| panic!("triad-hostd token printed no fingerprint: {out:?}"))
    }

    /// The token hostd made on its first start, which the controller presents.
    pub fn hostd_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("hostd/node-token"))
            .expect("hostd has made its token")
            .trim()
            .to_owned()
    }

    /// Kills every process of the node: its daemons and its VMMs (a power loss).
    pub fn kill_all(&mut self) {
        self.hostd.kill9();
        kill_processes_under(&self.dir);
        self.netd.kill9();
        self.storaged.kill9();
    }

    /// Starts the node's daemons again on their state, as after a reboot.
    pub fn power_on(&mut self) {
        self.netd.restart();
        self.storaged.restart();
        self.hostd.restart();
    }

    /// Cuts the node off link `link` (an index in `LINKS`), or brings it back.
    pub fn set_link(&self, link: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.ns.ip(&["link", "set", LINKS[link].0, state]);
    }

    /// Cuts the node off every link, or brings them all back.
    pub fn set_all_links(&self, up: bool) {
        for link in 0..LINKS.len() {
            self.set_link(link, up);
        }
    }

    /// SIGSTOP (or SIGCONT) every process of the node: a node that hangs.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        for pid in processes_under(&self.dir).into_iter().chain(
            [&self.hostd, &self.netd, &self.storaged]
                .iter()
                .filter_map(|d| d.pid()),
        ) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on a process of this test; no memory effects.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.freeze(false);
        self.hostd.kill9();
        kill_processes_under(&self.dir);
    }
}

/// `n` nodes and the switch between them, with an `smp` pool every node shares.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The shared pool's directory.
    pub shared: PathBuf,
    switch: Ns,
    name: String,
    /// Whether hostd and the controller speak TLS on TCP (else `--insecure-http`).
    pub tls: bool,
    // Last: the files of every node.
    dir: TempDir,
}

impl Cluster {
    /// Nodes `NAME-1` .. `NAME-n`, each with a `local` pool of its own and the `shared` pool,
    /// speaking plain HTTP on TCP (`--insecure-http`), as a lab does.
    pub fn new(name: &str, n: usize) -> Self {
        Self::build(name, n, false)
    }

    /// `new`, with TLS on every TCP link, as installed clusters run: nodes join by the
    /// fingerprints of their certificates (`Node::hostd_fingerprint`).
    pub fn with_tls(name: &str, n: usize) -> Self {
        Self::build(name, n, true)
    }

    fn build(name: &str, n: usize, tls: bool) -> Self {
        let plain: &[&str] = if tls { &[] } else { &["--insecure-http"] };
        let dir = TempDir::new(name);
        let switch = Ns::new(&format!("{name}-sw"));
        for (_, bridge, _) in LINKS {
            switch.ip(&["link", "add", bridge, "type", "bridge"]);
            switch.ip(&["link", "set", bridge, "up"]);
        }
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let mut nodes = Vec::new();
        for index in 0..n {
            let node_name = format!("{name}-{}", index + 1);
            let ns = Ns::new(&node_name);
            for (link, (dev, bridge, _)) in LINKS.iter().enumerate() {
                let port = format!("n{}-{}", index + 1, &dev[..4]);
                let addr = format!("{}/24", node_addr(link, index));
                ns.wire(dev, Some(&addr), &switch, &port, None);
                switch.ip(&["link", "set", &port, "master", bridge]);
            }
            let node_dir = dir.join(&node_name);
            std::fs::create_dir_all(&node_dir).unwrap();
            let netd = Daemon::start(
                "triad-netd",
                &ns.name,
                &node_dir,
                json!({
                    "socket": node_dir.join("netd.sock"),
                    "state_dir": node_dir.join("netd"),
                    "node": node_name,
                }),
            );
            let storaged = Daemon::start(
                "triad-storaged",
                &ns.name,
                &node_dir,
                json!({
                    "socket": node_dir.join("storaged.sock"),
                    "node": node_name,
                    "staging_dir": node_dir.join("staging"),
                    "heartbeat_ms": 200,
                    "pools": [
                        {"name": "local", "kind": "local", "path": node_dir.join("local")},
                        {"name": "shared", "kind": "smp", "path": shared},
                    ],
                }),
            );
            let hostd = Daemon::start_with_args(
                "triad-hostd",
                &ns.name,
                &node_dir,
                json!({
                    "socket": node_dir.join("hostd.sock"),
                    "listen": format!("{}:{HOSTD_PORT}", node_addr(0, index)),
                    "state_dir": node_dir.join("hostd"),
                    "node": node_name,
                    "netd_socket": node_dir.join("netd.sock"),
                    "storaged_socket": node_dir.join("storaged.sock"),
                    "vmm_binary": binary("triad-vmm"),
                    "reserved_memory_mib": 0,
                    "restart_backoff_ms": 200,
                    "restart_backoff_max_ms": 2000,
                    "probes": [
                        format!("{}:{HEARTBEAT_PORT}", node_addr(0, index)),
                        format!("{}:{HEARTBEAT_PORT}", node_addr(1, index)),
                    ],
                }),
                plain,
            );
            nodes.push(Node {
                name: node_name,
                index,
                dir: node_dir,
                netd,
                storaged,
                hostd,
                ns,
            });
        }
        Self {
            nodes,
            shared,
            switch,
            name: name.to_owned(),
            tls,
            dir,
        }
    }

    /// A VXLAN network on every node, flooding to every other node over the data link.
    pub fn vxlan_spec(&self, name: &str, vni: u32, cidr: &str, gateway: &str) -> Vec<Value> {
        self.nodes
            .iter()
            .map(|me| {
                let peers: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|n| n.index != me.index)
                    .map(|n| n.addr(2))
                    .collect();
                json!({
                    "name": name,
                    "l2": {"kind": "vxlan", "vni": vni, "underlay": LINKS[2].0, "peers": peers},
                    "l3": {"cidr": cidr, "gateway": gateway},
                })
            })
            .collect()
    }

    /// Starts `triad-controller` in a namespace of its own on the management network
    /// (`10.250.0.254:CONTROLLER_PORT`), its state in a redb file, or on `etcd` when given;
    /// `index` tells several controllers of one cluster apart (0, 1, …).
    pub fn start_controller(&self, index: usize, etcd: Option<&str>) -> Controller {
        let ns = Ns::new(&format!("{}-c{index}", self.name));
        let addr = format!("10.250.0.{}", 254 - index);
        let port = format!("c{index}-mgmt");
        ns.wire(
            "mgmt0",
            Some(&format!("{addr}/24")),
            &self.switch,
            &port,
            None,
        );
        self.switch
            .ip(&["link", "set", &port, "master", LINKS[0].1]);
        let dir = self.dir.join(&format!("controller-{index}"));
        std::fs::create_dir_all(&dir).unwrap();
        let store = match etcd {
            Some(endpoint) => json!({"kind": "etcd", "endpoints": [endpoint]}),
            None => json!({"kind": "redb", "path": dir.join("state.redb")}),
        };
        let plain: &[&str] = if self.tls { &[] } else { &["--insecure-http"] };
        let daemon = Daemon::start_with_args(
            "triad-controller",
            &ns.name,
            &dir,
            json!({
                "listen": format!("{addr}:{CONTROLLER_PORT}"),
                "socket": dir.join("controller.sock"),
                "store": store,
                "admin_token_file": self.dir.join("admin-token"),
                "tls_dir": self.dir.join("tls"),
                "cli_config_file": dir.join("admin.json"),
                // Shared, as controllers on one etcd must share it.
                "store_key_file": self.dir.join("store.key"),
            }),
            plain,
        );
        Controller {
            daemon,
            addr: format!("{addr}:{CONTROLLER_PORT}"),
            token_file: self.dir.join("admin-token"),
            ca_file: self.tls.then(|| self.dir.join("tls/ca.pem")),
            ns,
        }
    }

    /// An etcd of the cluster's own, in a namespace on the management network
    /// (`http://10.250.0.250:2379`), for controllers that share their state.
    pub fn start_etcd(&self) -> (crate::Etcd, Ns) {
        let ns = Ns::new(&format!("{}-etcd", self.name));
        ns.wire(
            "mgmt0",
            Some("10.250.0.250/24"),
            &self.switch,
            "etcd-mgmt",
            None,
        );
        self.switch
            .ip(&["link", "set", "etcd-mgmt", "master", LINKS[0].1]);
        ns.ip(&["link", "set", "lo", "up"]);
        let dir = self.dir.join("etcd");
        std::fs::create_dir_all(&dir).unwrap();
        (
            crate::Etcd::start_in(&dir, Some(&ns.name), "10.250.0.250", 2379, 2380),
            ns,
        )
    }

    /// The cluster's directory: every node's, and the shared pool's.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The switch namespace, where every node's links meet.
    pub fn switch(&self) -> &Ns {
        &self.switch
    }

    /// A Ceph cluster in the switch namespace, listening on the storage network (as a real
    /// cluster's would, so a node cut off storage loses it), with pool `POOL` of kind `ceph`
    /// added to every node's storaged. About half a minute.
    pub fn start_ceph(&mut self, pool: &str) -> Ceph {
        let addr = format!("{}.254", LINKS[1].2);
        self.switch
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", LINKS[1].1]);
        let dir = self.dir.path().join("ceph");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.switch.name])
            .arg(crate::workspace_root().join("scripts/dev-ceph"))
            .arg("up")
            .arg(&dir)
            .args(["--owner", &std::process::id().to_string(), "--addr", &addr])
            .stdin(Stdio::null())
            .output()
            .expect("running scripts/dev-ceph");
        assert!(
            out.status.success(),
            "dev-ceph up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ceph = Ceph {
            conf: dir.join("ceph.conf"),
            dir,
        };
        for node in &mut self.nodes {
            let mut config = node.storaged.config();
            config["pools"].as_array_mut().unwrap().push(json!({
                "name": pool, "kind": "ceph", "rbd_pool": "rbd", "ceph": {"conf": ceph.conf},
            }));
            node.storaged.reconfigure(config);
        }
        ceph
    }
}

/// A Ceph cluster of `Cluster::start_ceph`: 1 monitor, 1 manager, 3 OSDs, pool `rbd`. Taken
/// down on drop (and when the test process ends, if it crashed first).
#[derive(Debug)]
pub struct Ceph {
    pub dir: PathBuf,
    pub conf: PathBuf,
}

impl Drop for Ceph {
    fn drop(&mut self) {
        let _ = Command::new(crate::workspace_root().join("scripts/dev-ceph"))
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}

fn node_addr(link: usize, index: usize) -> String {
    format!("{}.{}", LINKS[link].2, index + 1)
}

/// Processes whose command line names a path under `dir`: a node's VMMs.
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILLs every process under `dir` and waits until they are gone.
pub fn kill_processes_under(dir: &Path) {
    crate::kill_until_gone(|| processes_under(dir));
}

/// Busy loops on every core of this machine, twice over, for a while: the nodes of the harness
/// share its CPUs, so this stresses all of them at once.
#[derive(Debug)]
pub struct CpuStress {
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuStress {
    pub fn start(lasting: Duration) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let until = Instant::now() + lasting;
        let threads = (0..cores * 2)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut spins = 0u64;
                    while Instant::now() < until {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                    spins
                })
            })
            .collect();
        Self { threads }
    }

    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Waits until the loops end.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
