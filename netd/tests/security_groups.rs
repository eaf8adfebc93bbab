//! Security groups and anti-spoofing with real traffic: VMs (namespaces behind their ports'
//! TAPs) on one host, TCP and ICMP between them, rules changed while a connection runs.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Echoes lines on TCP ports 8080 and 9090.
const ECHO_SERVER: &str = "
import socket, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port)); s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
def echo(c):
    with c:
        while True:
            d = c.recv(4096)
            if not d: return
            c.sendall(d)
for p in (8080, 9090): threading.Thread(target=serve, args=(p,), daemon=True).start()
threading.Event().wait()
";

/// Connects, sends a line and waits for its echo: exit 0 when it came back.
const PROBE: &str = "
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.sendall(b'hi\\n'); sys.exit(0 if s.recv(16) == b'hi\\n' else 1)
";

/// One connection kept open, a line echoed every 100 ms; prints ok or fail for each.
const FLOW: &str = "
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.settimeout(0.5)
while True:
    try:
        s.sendall(b'x\\n'); ok = s.recv(16) == b'x\\n'
    except Exception:
        ok = False
    print('ok' if ok else 'fail', flush=True)
    time.sleep(0.1)
";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `vm` gets its line echoed by `ip`:`port`; panics when the probe itself cannot run,
/// so that a missing tool never reads as a dropped connection.
fn reaches(vm: &VmEndpoint, ip: &str, port: u16) -> bool {
    let out = vm
        .exec("python3", &["-c", PROBE, ip, &port.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("exec of"),
        "the probe did not run: {stderr}"
    );
    out.status.success()
}

/// Whether an ICMPv6 message of `kind` that `from` sends to all nodes reaches `to` (frames
/// built and caught with packet sockets, so that no IPv6 set-up is needed).
fn v6_arrives(from: &VmEndpoint, to: &VmEndpoint, kind: u8) -> bool {
    const CATCH: &str = "
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86dd))
s.bind(('eth0', 0)); s.settimeout(0.2)
print('ready', flush=True)
end = time.time() + 2
while time.time() < end:
    try:
        f = s.recv(2048)
    except socket.timeout:
        continue
    if len(f) > 54 and f[20] == 58 and f[54] == int(sys.argv[1]) and f[22:38] == bytes.fromhex('fe800000000000000000000000000bad'):
        print('caught', flush=True); break
";
    const SEND: &str = "
import socket, sys
kind = int(sys.argv[1])
mac = open('/sys/class/net/eth0/address').read().strip()
src = bytes.fromhex('fe800000000000000000000000000bad')
dst = bytes.fromhex('ff020000000000000000000000000001')
body = bytes(4) + bytes.fromhex('fe800000000000000000000000000001')
pseudo = src + dst + (4 + len(body)).to_bytes(4, 'big') + bytes([0, 0, 0, 58])
data = pseudo + bytes([kind, 0, 0, 0]) + body
total = sum(int.from_bytes(data[i:i + 2], 'big') for i in range(0, len(data), 2))
while total >> 16: total = (total & 0xffff) + (total >> 16)
icmp = bytes([kind, 0]) + (~total & 0xffff).to_bytes(2, 'big') + body
ip6 = bytes.fromhex('60000000') + len(icmp).to_bytes(2, 'big') + bytes([58, 255]) + src + dst
frame = bytes.fromhex('333300000001') + bytes.fromhex(mac.replace(':', '')) + bytes.fromhex('86dd') + ip6 + icmp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth0', 0))
for _ in range(3): s.send(frame)
";
    let mut catcher = to
        .exec("python3", &["-c", CATCH, &kind.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(catcher.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let sent = from
        .exec("python3", &["-c", SEND, &kind.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "the frame was not sent");
    let caught = lines.next().is_some_and(|l| l.is_ok_and(|l| l == "caught"));
    let _ = catcher.kill();
    let _ = catcher.wait();
    caught
}

fn rule(direction: &str, protocol: &str, port: Option<u16>) -> serde_json::Value {
    let mut r = json!({"direction": direction, "protocol": protocol});
    if let Some(p) = port {
        r["ports"] = json!({"from": p, "to": p});
    }
    r
}

fn group(rules: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"name": "web", "rules": rules})
}

/// Reads the flow's lines for `wait` and returns how many were ok and failed.
fn flow_results(lines: &std::sync::mpsc::Receiver<String>, wait: Duration) -> (usize, usize) {
    let end = Instant::now() + wait;
    let (mut ok, mut fail) = (0, 0);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(l) if l == "ok" => ok += 1,
            Ok(_) => fail += 1,
            Err(_) => break,
        }
    }
    (ok, fail)
}

#[test]
fn groups_filter_statefully_and_changes_reach_running_flows() {
    let h = Ns::new("sg");
    let dir = TempDir::new("sg");
    let netd = Netd::start(&h, dir.path());
    netd.ok(
        "PUT",
        "/networks/lan",
        Some(json!({"name": "lan", "l2": {"kind": "novlan"}, "l3": {"cidr": "10.70.0.0/24"}})),
    );
    // Two neighbouring port rules: netd matches them as one set of ports.
    let web = vec![
        rule("ingress", "tcp", Some(7070)),
        rule("ingress", "tcp", Some(8080)),
    ];
    netd.ok("PUT", "/security-groups/web", Some(group(web)));
    let vms: Vec<VmEndpoint> = [("a", 10, Some("web")), ("b", 11, None), ("c", 12, None)]
        .into_iter()
        .map(|(name, last, sg)| {
            let mac = format!("52:54:00:70:00:{last:02x}");
            let ip = format!("10.70.0.{last}");
            let mut port = json!({"network": "lan", "mac": mac, "ip": ip});
            if let Some(sg) = sg {
                port["security_groups"] = json!([sg]);
            }
            let tap = netd.ok("PUT", &format!("/ports/{name}"), Some(port))["tap"]
                .as_str()
                .unwrap()
                .to_owned();
            let vm = VmEndpoint::behind(&h, &tap, &mac, &format!("sg{name}"));
            vm.ns
                .ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            vm
        })
        .collect();
    let (a, b, c) = (&vms[0], &vms[1], &vms[2]);
    let firewall = netd.ok("GET", "/state", None)["firewall"].clone();
    assert!(
        firewall
            .as_str()
            .unwrap()
            .contains("ct original proto-dst @rules_in_0_0"),
        "{firewall}"
    );
    let _server = Killed(
        a.exec("python3", &["-c", ECHO_SERVER])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));

    // Only what a group allows comes in; the answers of what it allows go out.
    assert!(reaches(b, "10.70.0.10", 8080), "the allowed port passes");
    assert!(!reaches(b, "10.70.0.10", 9090), "another port is dropped");
    assert!(!ping(&b.ns, "10.70.0.10", 1), "ICMP is dropped");
    assert!(
        !ping(&a.ns, "10.70.0.11", 1),
        "no egress rule: A opens nothing"
    );
    assert!(
        ping(&b.ns, "10.70.0.12", 1),
        "ports without groups are not filtered"
    );

    // A connection runs while the rules change.
    let mut flow = Killed(
        b.exec("python3", &["-c", FLOW, "10.70.0.10", "8080"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = flow.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (ok, fail) = flow_results(&lines, Duration::from_secs(1));
    assert!(
        ok >= 5 && fail == 0,
        "the flow runs: {ok} ok, {fail} failed"
    );

    // A rule added elsewhere keeps the flow, and lets A ping.
    let web = vec![
        rule("ingress", "tcp", Some(8080)),
        rule("egress", "icmp", None),
    ];
    netd.ok("PUT", "/security-groups/web", Some(group(web)));
    let (ok, fail) = flow_results(&lines, Duration::from_secs(1));
    assert!(
        ok >= 5 && fail == 0,
        "an allowed flow survives a change: {ok} ok, {fail} failed"
    );
    assert!(ping(&a.ns, "10.70.0.11", 1), "the new egress rule applies");

    // The rule that allowed the flow goes: the running flow stops at once.
    netd.ok(
        "PUT",
        "/security-groups/web",
        Some(group(vec![rule("egress", "icmp", None)])),
    );
    let _ = flow_results(&lines, Duration::from_millis(300));
    let (ok, fail) = flow_results(&lines, Duration::from_secs(1));
    assert!(
        ok == 0 && fail > 0,
        "a removed rule cuts its flow: {ok} ok, {fail} failed"
    );
    assert!(!reaches(b, "10.70.0.10", 8080));
    drop(flow);

    // A remote group: C is an admin, B is not; a higher-priority drop beats a later accept.
    netd.ok(
        "PUT",
        "/security-groups/admins",
        Some(json!({"name": "admins"})),
    );
    netd.ok(
        "PUT",
        "/ports/c",
        Some(
            json!({"network": "lan", "mac": "52:54:00:70:00:0c", "ip": "10.70.0.12",
                    "security_groups": ["admins"]}),
        ),
    );
    let mut from_admins = rule("ingress", "tcp", Some(9090));
    from_admins["remote"] = json!({"group": "admins"});
    let mut drop_b = rule("ingress", "tcp", Some(8080));
    drop_b["remote"] = json!({"cidr": "10.70.0.11/32"});
    drop_b["action"] = json!("drop");
    drop_b["priority"] = json!(10);
    let rules = vec![from_admins, drop_b, rule("ingress", "tcp", Some(8080))];
    netd.ok("PUT", "/security-groups/web", Some(group(rules)));
    // C's own group has no rules: it opens nothing either, so it gets an egress rule.
    netd.ok(
        "PUT",
        "/security-groups/admins",
        Some(json!({"name": "admins", "rules": [rule("egress", "any", None)]})),
    );
    assert!(reaches(c, "10.70.0.10", 9090), "an admin reaches 9090");
    assert!(!reaches(b, "10.70.0.10", 9090), "B is no admin");
    assert!(reaches(c, "10.70.0.10", 8080), "C passes the later accept");
    assert!(!reaches(b, "10.70.0.10", 8080), "B meets the earlier drop");

    // Rules that differ in port and source load as one set of pairs, and match pair by pair.
    let pair = |port: u16, cidr: &str| {
        let mut r = rule("ingress", "tcp", Some(port));
        r["remote"] = json!({ "cidr": cidr });
        r
    };
    let pairs = vec![pair(8080, "10.70.0.11/32"), pair(9090, "10.70.0.12/32")];
    netd.ok("PUT", "/security-groups/web", Some(group(pairs)));
    let state = netd.ok("GET", "/state", None);
    assert!(
        state["firewall"]
            .as_str()
            .unwrap()
            .contains("ct original proto-dst . ct original ip saddr @rules_in_0_0"),
        "{state}"
    );
    assert!(reaches(b, "10.70.0.10", 8080), "B's pair");
    assert!(!reaches(b, "10.70.0.10", 9090), "C's port, from B");
    assert!(reaches(c, "10.70.0.10", 9090), "C's pair");
    assert!(!reaches(c, "10.70.0.10", 8080), "B's port, from C");

    // Egress ICMP to two addresses: one set of addresses, matched by destination.
    let to = |cidr: &str| {
        let mut r = rule("egress", "icmp", None);
        r["remote"] = json!({ "cidr": cidr });
        r
    };
    let pings = vec![to("10.70.0.11/32"), to("10.70.0.99/32")];
    netd.ok("PUT", "/security-groups/web", Some(group(pings)));
    let firewall = netd.ok("GET", "/state", None)["firewall"].clone();
    assert!(
        firewall
            .as_str()
            .unwrap()
            .contains("meta l4proto icmp ct original ip daddr @rules_out_0_0"),
        "{firewall}"
    );
    assert!(ping(&a.ns, "10.70.0.11", 1), "A pings B, in the set");
    assert!(!ping(&a.ns, "10.70.0.12", 1), "but not C");
    let pairs = vec![pair(8080, "10.70.0.11/32"), pair(9090, "10.70.0.12/32")];
    netd.ok("PUT", "/security-groups/web", Some(group(pairs)));

    // Anti-spoofing: B may send only from its own address and MAC.
    netd.ok(
        "PUT",
        "/ports/c",
        Some(json!({"network": "lan", "mac": "52:54:00:70:00:0c", "ip": "10.70.0.12"})),
    );
    assert!(ping(&b.ns, "10.70.0.12", 1));
    b.ns.ip(&["addr", "flush", "dev", "eth0"]);
    b.ns.ip(&["addr", "add", "10.70.0.99/24", "dev", "eth0"]);
    assert!(!ping(&b.ns, "10.70.0.12", 1), "another address is dropped");
    b.ns.ip(&["addr", "flush", "dev", "eth0"]);
    b.ns.ip(&["addr", "add", "10.70.0.11/24", "dev", "eth0"]);
    b.ns.ip(&["link", "set", "eth0", "address", "52:54:00:70:00:99"]);
    assert!(!ping(&b.ns, "10.70.0.12", 1), "another MAC is dropped");
    b.ns.ip(&["link", "set", "eth0", "address", "52:54:00:70:00:0b"]);
    assert!(
        ping(&b.ns, "10.70.0.12", 1),
        "its own address and MAC pass again"
    );

    // No VM plays an IPv6 router: B's router advertisement never reaches C (no group now), while its
    // neighbour solicitation (neighbour discovery, which IPv6 needs) does.
    assert!(v6_arrives(b, c, 135), "a neighbour solicitation passes");
    assert!(!v6_arrives(b, c, 134), "a router advertisement is dropped");
    assert!(!v6_arrives(b, c, 137), "a redirect is dropped");

    // The rules survive a crash of netd.
    let netd = netd.crash_and_restart();
    assert!(reaches(b, "10.70.0.10", 8080));
    assert!(!reaches(b, "10.70.0.10", 9090));
    assert!(ping(&b.ns, "10.70.0.12", 1));
    let state = netd.ok("GET", "/state", None);
    assert!(
        state["firewall"].as_str().unwrap().contains("chain in_0"),
        "{state}"
    );
}

#[test]
fn impossible_groups_are_refused() {
    let h = Ns::new("sgbad");
    let dir = TempDir::new("sgbad");
    let netd = Netd::start(&h, dir.path());
    let mut icmp_ports = rule("ingress", "icmp", None);
    icmp_ports["ports"] = json!({"from": 1, "to": 2});
    let err = netd.error(
        "PUT",
        "/security-groups/g",
        Some(group(vec![icmp_ports])),
        400,
    );
    assert!(err.contains("only TCP and UDP"), "{err}");
    let mut backwards = rule("ingress", "tcp", None);
    backwards["ports"] = json!({"from": 90, "to": 80});
    let err = netd.error(
        "PUT",
        "/security-groups/g",
        Some(group(vec![backwards])),
        400,
    );
    assert!(err.contains("90-80"), "{err}");
    let mut too_big = rule("ingress", "tcp", None);
    too_big["ports"] = json!({"from": 1, "to": 70000});
    netd.error("PUT", "/security-groups/g", Some(group(vec![too_big])), 400);
    let mut unknown = rule("ingress", "tcp", Some(22));
    unknown["remote"] = json!({"group": "nobody"});
    let err = netd.error("PUT", "/security-groups/g", Some(group(vec![unknown])), 422);
    assert!(err.contains("nobody"), "{err}");
    let bad_proto = json!({"name": "g", "rules": [{"direction": "ingress", "protocol": "sctp"}]});
    netd.error("PUT", "/security-groups/g", Some(bad_proto), 400);
    netd.error("GET", "/security-groups/g", None, 404);

    netd.ok(
        "PUT",
        "/networks/lan",
        Some(json!({"name": "lan", "l2": {"kind": "novlan"}})),
    );
    let port = json!({"network": "lan", "mac": "52:54:00:71:00:01", "security_groups": ["g"]});
    let err = netd.error("PUT", "/ports/p", Some(port.clone()), 422);
    assert!(err.contains("security group g"), "{err}");
    netd.ok("PUT", "/security-groups/g", Some(group(vec![])));
    netd.ok("PUT", "/ports/p", Some(port));
    let err = netd.error("DELETE", "/security-groups/g", None, 409);
    assert!(err.contains("port p"), "{err}");
    netd.ok("DELETE", "/ports/p", None);
    netd.ok("DELETE", "/security-groups/g", None);
}
