//! VLAN networks on Open vSwitch with real traffic: two hosts (namespaces), each with its own
//! ovsdb-server and ovs-vswitchd (userspace datapath) started here, joined by a trunk; VMs on
//! two VLANs of the trunk, DHCP, TCP, a security group, a restart and the clean-up.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// ovsdb-server and ovs-vswitchd in one namespace, everything of theirs under `dir`; killed on
/// drop.
struct OvsDaemons {
    children: Vec<Child>,
    dir: PathBuf,
}

impl OvsDaemons {
    /// None when Open vSwitch is not installed (the test then says it skips).
    fn start(ns: &Ns, dir: &Path) -> Option<Self> {
        if !Path::new(SCHEMA).exists() {
            return None;
        }
        let dir = dir.join("ovs");
        // A fresh database, also where an earlier one was.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(
            "ovsdb-tool",
            &["create", dir.join("conf.db").to_str().unwrap(), SCHEMA],
        );
        let mut ovs = Self {
            children: Vec::new(),
            dir,
        };
        let db = ovs.db();
        let server = ovs.spawn(
            ns,
            "ovsdb-server",
            &[
                ovs.path("conf.db").as_str(),
                &format!("--remote=p{db}"),
                &format!("--unixctl={}", ovs.path("ovsdb.ctl")),
                &format!("--log-file={}", ovs.path("ovsdb.log")),
            ],
        );
        ovs.children.push(server);
        ovs.wait_for("db.sock");
        ovs.vsctl(&["--no-wait", "init"]);
        let switch = ovs.spawn(
            ns,
            "ovs-vswitchd",
            &[
                db.as_str(),
                &format!("--unixctl={}", ovs.path("vswitchd.ctl")),
                &format!("--log-file={}", ovs.path("vswitchd.log")),
            ],
        );
        ovs.children.push(switch);
        ovs.wait_for("vswitchd.ctl");
        Some(ovs)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    fn db(&self) -> String {
        format!("unix:{}", self.path("db.sock"))
    }

    fn spawn(&self, ns: &Ns, program: &str, args: &[&str]) -> Child {
        let mut command = ns.exec(program, args);
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR"] {
            command.env(var, &self.dir);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"))
    }

    fn wait_for(&self, name: &str) {
        let start = Instant::now();
        while !self.dir.join(name).exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name} did not appear; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db={}", self.db());
        let mut full = vec![db.as_str(), "--timeout=10"];
        full.extend_from_slice(args);
        run("ovs-vsctl", &full)
    }

    /// `ovs-appctl fdb/show BRIDGE`: the MACs the bridge learned, with their VLANs.
    fn fdb(&self, bridge: &str) -> String {
        run(
            "ovs-appctl",
            &["-t", &self.path("vswitchd.ctl"), "fdb/show", bridge],
        )
    }
}

impl Drop for OvsDaemons {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A host with Open vSwitch and netd, joined to the other host's trunk.
struct VlanHost {
    netd: Netd,
    ovs: OvsDaemons,
    dir: TempDir,
    ns: Ns,
}

fn vlan_host(name: &str) -> Option<VlanHost> {
    let ns = Ns::new(name);
    let dir = TempDir::new(name);
    let ovs = OvsDaemons::start(&ns, dir.path())?;
    let netd = Netd::start_with(&ns, dir.path(), json!({"ovs_db": ovs.db()}));
    Some(VlanHost { netd, ovs, dir, ns })
}

fn vlan(vid: u16, cidr: &str) -> serde_json::Value {
    json!({
        "name": format!("vlan{vid}"),
        "l2": {"kind": "vlan", "vid": vid, "uplink": "trunk0"},
        "l3": {"cidr": cidr},
    })
}

fn add_port(netd: &Netd, id: &str, network: &str, mac: &str, ip: &str) -> String {
    netd.ok(
        "PUT",
        &format!("/ports/{id}"),
        Some(json!({"network": network, "mac": mac, "ip": ip})),
    )["tap"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Sends 4 MiB over one TCP connection from `from` to `to`:`port` and returns how many bytes
/// the receiver got.
fn tcp_bytes(from: &VmEndpoint, to: &VmEndpoint, ip: &str, port: u16) -> usize {
    const RECEIVE: &str = "
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(1); s.settimeout(10)
print('listening', flush=True)
c, _ = s.accept(); c.settimeout(10); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    n += len(d)
print(n, flush=True)
";
    const SEND: &str = "
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b'x' * (4 << 20)); s.close()
";
    let mut receiver = to
        .exec("python3", &["-c", RECEIVE, &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(receiver.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "listening", "the receiver did not start");
    let sent = from
        .exec("python3", &["-c", SEND, ip, &port.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert!(sent.success(), "the sender failed");
    line.trim().parse().unwrap_or(0)
}

#[test]
fn vms_on_a_vlan_meet_across_hosts_and_vlans_stay_apart() {
    let (Some(h1), Some(h2)) = (vlan_host("vlan1"), vlan_host("vlan2")) else {
        skip(
            "vms_on_a_vlan_meet_across_hosts_and_vlans_stay_apart",
            "Open vSwitch is not installed (scripts/test installs openvswitch-switch)",
        );
        return;
    };
    h1.ns.wire("trunk0", None, &h2.ns, "trunk0", None);
    // As on a real NIC: GRO merges frames past the MTU, which OVS's userspace datapath drops.
    for h in [&h1, &h2] {
        run(
            "ip",
            &[
                "netns", "exec", &h.ns.name, "ethtool", "-K", "trunk0", "gro", "on",
            ],
        );
    }
    for h in [&h1, &h2] {
        h.netd
            .ok("PUT", "/networks/blue", Some(vlan(100, "10.61.0.0/24")));
        h.netd
            .ok("PUT", "/networks/red", Some(vlan(200, "10.62.0.0/24")));
    }
    let (mac_a, mac_b) = ("52:54:00:61:00:0a", "52:54:00:61:00:0b");
    let (mac_c, mac_d) = ("52:54:00:62:00:0c", "52:54:00:62:00:0d");
    let vm = |h: &VlanHost, id: &str, network: &str, mac: &str, ip: &str| {
        let tap = add_port(&h.netd, id, network, mac, ip);
        VmEndpoint::behind(&h.ns, &tap, mac, &format!("vl{id}"))
    };
    let a = vm(&h1, "a", "blue", mac_a, "10.61.0.10");
    let b = vm(&h2, "b", "blue", mac_b, "10.61.0.11");
    let c = vm(&h1, "c", "red", mac_c, "10.62.0.12");
    let d = vm(&h2, "d", "red", mac_d, "10.62.0.13");
    // Each VM leases its address from its own host's DHCP on its VLAN.
    for (vm, dir, ip) in [
        (&a, h1.dir.path(), "10.61.0.10"),
        (&b, h2.dir.path(), "10.61.0.11"),
        (&c, h1.dir.path(), "10.62.0.12"),
        (&d, h2.dir.path(), "10.62.0.13"),
    ] {
        assert_eq!(vm.dhcp(dir).expect("a lease on the VLAN")["ip"], ip);
    }
    assert!(ping(&a.ns, "10.61.0.11", 3), "a reaches b on VLAN 100");
    assert!(ping(&c.ns, "10.62.0.13", 3), "c reaches d on VLAN 200");
    assert_eq!(
        tcp_bytes(&a, &b, "10.61.0.11", 5001),
        4 << 20,
        "TCP crosses the userspace datapath whole"
    );
    let features = run(
        "ip",
        &["netns", "exec", &h1.ns.name, "ethtool", "-k", "trunk0"],
    );
    assert!(
        features.contains("generic-receive-offload: off"),
        "netd turned GRO off on the trunk: {features}"
    );

    // A VLAN changed on one host only: the VMs no longer meet; changed back, they do.
    h1.netd
        .ok("PUT", "/networks/blue", Some(vlan(101, "10.61.0.0/24")));
    assert!(!ping(&a.ns, "10.61.0.11", 2), "VLAN 101 does not reach 100");
    h1.netd
        .ok("PUT", "/networks/blue", Some(vlan(100, "10.61.0.0/24")));
    assert!(ping(&a.ns, "10.61.0.11", 3), "back on VLAN 100");

    // The trunk carries tagged frames: host 1's switch learned b's MAC on VLAN 100 and d's on
    // VLAN 200, both from the trunk.
    let bridge = h1.netd.ok("GET", "/state", None)["ovs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == "trunk0")
        .expect("the trunk in the state")["bridge"]
        .as_str()
        .unwrap()
        .to_owned();
    let fdb = h1.ovs.fdb(&bridge);
    let learned = |mac: &str, vid: &str| {
        fdb.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&vid) && f.get(2) == Some(&mac)
        })
    };
    assert!(learned(mac_b, "100"), "b on VLAN 100: {fdb}");
    assert!(learned(mac_d, "200"), "d on VLAN 200: {fdb}");
    assert!(!learned(mac_b, "200") && !learned(mac_d, "100"), "{fdb}");

    // Security groups work on VLAN networks as on any other.
    h2.netd.ok(
        "PUT",
        "/security-groups/ssh",
        Some(json!({"name": "ssh", "rules": [
            {"direction": "ingress", "protocol": "tcp", "ports": {"from": 22, "to": 22}}
        ]})),
    );
    h2.netd.ok(
        "PUT",
        "/ports/b",
        Some(json!({"network": "blue", "mac": mac_b, "ip": "10.61.0.11",
                    "security_groups": ["ssh"]})),
    );
    assert!(!ping(&a.ns, "10.61.0.11", 2), "ICMP to b is dropped");
    assert!(
        ping(&c.ns, "10.62.0.13", 2),
        "d, with no group, still answers"
    );

    // A crash while blue's veth vanishes (its switch port stays, on an interface that is
    // gone) and red's switch port vanishes (its veth stays): netd puts both back.
    let state = h1.netd.ok("GET", "/state", None);
    let access = |network: &str| {
        let port = state["ovs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["owner"] == format!("triad:network:{network}"))
            .expect("an access port")
            .clone();
        (
            port["port"].as_str().unwrap().to_owned(),
            port["vid"].clone(),
        )
    };
    let (port, vid) = access("blue");
    assert_eq!(vid, 100);
    let (red_port, red_vid) = access("red");
    assert_eq!(red_vid, 200);
    let h1_netd = h1.netd.crash_and_restart_with(|| {
        h1.ns.ip(&["link", "del", &port]);
        h1.ovs.vsctl(&["del-port", &red_port]);
    });
    assert!(
        ping(&c.ns, "10.62.0.13", 3),
        "red is back after the restart"
    );
    let b_ip = "10.61.0.11";
    h2.netd.ok(
        "PUT",
        "/ports/b",
        Some(json!({"network": "blue", "mac": mac_b, "ip": b_ip})),
    );
    assert!(ping(&a.ns, b_ip, 3), "blue's access port is back");

    // Gone with the networks: the access ports, then the bridge, releasing the trunk.
    for id in ["a", "c"] {
        h1_netd.ok("DELETE", &format!("/ports/{id}"), None);
    }
    h1_netd.ok("DELETE", "/networks/blue", None);
    assert!(
        !h1.ovs.vsctl(&["list-ports", &bridge]).contains(&port),
        "blue's access port is gone"
    );
    assert!(
        h1.ovs.vsctl(&["list-br"]).contains(&bridge),
        "red still uses it"
    );
    h1_netd.ok("DELETE", "/networks/red", None);
    assert_eq!(h1.ovs.vsctl(&["list-br"]).trim(), "", "no bridge left");
    assert!(h1_netd.ok("GET", "/state", None)["ovs"]
        .as_array()
        .unwrap()
        .is_empty());
    drop(h1_netd);
}

#[test]
fn vlan_requests_that_cannot_work_are_refused_and_leave_nothing() {
    // No Open vSwitch at all: a clear refusal.
    let bare = Ns::new("vlanbare");
    bare.ip(&[
        "link", "add", "trunk0", "type", "veth", "peer", "name", "peer0",
    ]);
    let dir = TempDir::new("vlanbare");
    let netd = Netd::start_with(
        &bare,
        dir.path(),
        json!({"ovs_db": format!("unix:{}/none.sock", dir.path().display())}),
    );
    let e = netd.error(
        "PUT",
        "/networks/blue",
        Some(vlan(100, "10.63.0.0/24")),
        422,
    );
    assert!(e.contains("Open vSwitch"), "{e}");
    drop(netd);
    // Open vSwitch not installed: netd starts (only VLAN networks need it), and says which
    // program and package a VLAN network needs.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let nft = triad_netd::nft::NFT.find().expect("nft is installed");
    std::os::unix::fs::symlink(nft, bin.join("nft")).unwrap();
    let netd = Netd::start_with_path(&bare, dir.path(), json!({}), &bin);
    let e = netd.error(
        "PUT",
        "/networks/blue",
        Some(vlan(100, "10.63.0.0/24")),
        422,
    );
    assert!(
        e.contains("ovs-vsctl is not installed") && e.contains("openvswitch-switch"),
        "{e}"
    );
    let left = |ns: &Ns| {
        ns.links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .filter(|n| n.starts_with('t') && n != "trunk0")
            .collect::<Vec<_>>()
    };
    assert_eq!(left(&bare), Vec::<String>::new());
    assert!(netd.ok("GET", "/state", None)["networks"]
        .as_array()
        .unwrap()
        .is_empty());

    let Some(h) = vlan_host("vlanbad") else {
        skip(
            "vlan_requests_that_cannot_work_are_refused_and_leave_nothing",
            "Open vSwitch is not installed (scripts/test installs openvswitch-switch)",
        );
        return;
    };
    for (dev, peer) in [("trunk0", "peer0"), ("eth9", "peer9"), ("eth8", "peer8")] {
        h.ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
    }
    for (vid, status) in [(0, 400), (4095, 400)] {
        let e = h.netd.error(
            "PUT",
            "/networks/x",
            Some(vlan(vid, "10.63.0.0/24")),
            status,
        );
        assert!(e.contains("1..=4094"), "{e}");
    }
    let mut missing = vlan(100, "10.63.0.0/24");
    missing["l2"]["uplink"] = json!("nothere0");
    let e = h.netd.error("PUT", "/networks/x", Some(missing), 422);
    assert!(e.contains("nothere0"), "{e}");
    let mut jumbo = vlan(100, "10.63.0.0/24");
    jumbo["mtu"] = json!(9000);
    let e = h.netd.error("PUT", "/networks/x", Some(jumbo), 422);
    assert!(e.contains("MTU 9000 does not fit uplink trunk0"), "{e}");
    let mut ours = vlan(100, "10.63.0.0/24");
    ours["l2"]["uplink"] = json!("tbr0123abcd");
    let e = h.netd.error("PUT", "/networks/x", Some(ours), 400);
    assert!(e.contains("Triad's own"), "{e}");

    h.netd
        .ok("PUT", "/networks/blue", Some(vlan(100, "10.63.0.0/24")));
    let e = h
        .netd
        .error("PUT", "/networks/x", Some(vlan(100, "10.64.0.0/24")), 409);
    assert!(e.contains("VLAN 100 on uplink trunk0"), "{e}");
    let e = h.netd.error(
        "PUT",
        "/networks/x",
        Some(json!({"name": "x", "l2": {"kind": "novlan", "uplink": "trunk0"}})),
        409,
    );
    assert!(e.contains("VLAN trunk of network blue"), "{e}");
    let e = h.netd.error(
        "PUT",
        "/networks/x",
        Some(json!({"name": "x", "l2": {"kind": "vxlan", "vni": 7, "underlay": "trunk0"}})),
        409,
    );
    assert!(e.contains("VLAN trunk of network blue"), "{e}");

    // An interface another Open vSwitch bridge has is not taken from it.
    h.ovs.vsctl(&[
        "add-br",
        "foreign",
        "--",
        "set",
        "Bridge",
        "foreign",
        "datapath_type=netdev",
        "--",
        "add-port",
        "foreign",
        "eth9",
    ]);
    let mut taken = vlan(300, "10.65.0.0/24");
    taken["l2"]["uplink"] = json!("eth9");
    let e = h.netd.error("PUT", "/networks/x", Some(taken), 409);
    assert!(e.contains("Open vSwitch bridge foreign"), "{e}");
    let bridges = h.ovs.vsctl(&["list-br"]);
    assert_eq!(bridges.lines().count(), 2, "blue's and foreign: {bridges}");
    assert_eq!(h.ovs.vsctl(&["list-ports", "foreign"]).trim(), "eth9");
    let ids: Vec<String> = h.netd.ok("GET", "/state", None)["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["blue"]);
    // Of the refused networks, no interface stayed: one bridge and one veth pair, blue's.
    let names: Vec<String> =
        h.ns.links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect();
    for prefix in ["tbr", "tvl", "tvo"] {
        let made: Vec<&String> = names.iter().filter(|n| n.starts_with(prefix)).collect();
        assert_eq!(made.len(), 1, "{prefix}: {made:?}");
    }

    // blue changes kind and uplink; each time the host holds just what blue is now.
    let up = |name: &str| {
        let mut spec = vlan(100, "10.63.0.0/24");
        spec["l2"]["uplink"] = json!(name);
        spec
    };
    let master = |dev: &str| {
        h.ns.link(dev).unwrap()["master"]
            .as_str()
            .map(str::to_owned)
    };
    h.netd.ok("PUT", "/networks/blue", Some(up("eth8")));
    let bridges = h.ovs.vsctl(&["list-br"]);
    assert_eq!(bridges.lines().count(), 2, "eth8's and foreign: {bridges}");
    let trunk = bridges
        .lines()
        .find(|b| *b != "foreign")
        .unwrap()
        .to_owned();
    assert_eq!(h.ovs.vsctl(&["port-to-br", "eth8"]).trim(), trunk);
    let flat = json!({"name": "blue", "l2": {"kind": "novlan", "uplink": "eth8"},
                      "l3": {"cidr": "10.63.0.0/24"}});
    h.netd.ok("PUT", "/networks/blue", Some(flat));
    assert_eq!(h.ovs.vsctl(&["list-br"]).trim(), "foreign");
    assert!(master("eth8").is_some_and(|m| m.starts_with("tbr")));
    assert!(!h.ns.links().iter().any(|l| l["ifname"]
        .as_str()
        .is_some_and(|n| n.starts_with("tvl") || n.starts_with("tvo"))));
    // Back to a VLAN on the uplink its own bridge held.
    h.netd.ok("PUT", "/networks/blue", Some(up("eth8")));
    assert_eq!(master("eth8"), None, "the trunk left the Linux bridge");
    assert_eq!(h.ovs.vsctl(&["port-to-br", "eth8"]).trim(), trunk);

    // Open vSwitch down while netd starts: blue comes back once it is up again.
    let VlanHost { netd, ovs, dir, ns } = h;
    drop(ovs);
    let netd = netd.crash_and_restart();
    assert!(netd.ok("GET", "/state", None)["ovs"]
        .as_array()
        .unwrap()
        .is_empty());
    let _ovs = OvsDaemons::start(&ns, dir.path()).unwrap();
    let start = Instant::now();
    loop {
        let state = netd.ok("GET", "/state", None);
        let ports: Vec<&str> = state["ovs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["port"].as_str())
            .collect();
        if ports.contains(&"eth8") && ports.iter().any(|p| p.starts_with("tvo")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "blue is not back: {state}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
