//! EIPs for real: a VM (a namespace behind its port's TAP) on a private network gets a public
//! address on a public network of its own host, reachable from a namespace standing in for the
//! outside world, and its traffic to the world leaves from that address.

mod common;

use common::*;
use serde_json::json;

/// Answers every UDP datagram on port 9999 with the address it came from.
const WHO_AM_I: &str = "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999))
while True:
    d, a = s.recvfrom(2048); s.sendto(a[0].encode(), a)
";

const ASK: &str = "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b'?', (sys.argv[1], 9999)); print(s.recvfrom(2048)[0].decode())
";

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_eip_maps_a_vm_to_the_world_on_its_own_host() {
    let h = Ns::new("eip");
    let world = Ns::new("eip-world");
    h.wire("uplink0", None, &world, "isp0", Some("203.0.113.1/24"));
    let dir = TempDir::new("eip");
    let netd = Netd::start(&h, dir.path());
    netd.ok(
        "PUT",
        "/networks/public",
        Some(
            json!({"name": "public", "l2": {"kind": "novlan", "uplink": "uplink0"},
                    "l3": {"cidr": "203.0.113.0/24", "gateway": "203.0.113.1"}}),
        ),
    );
    netd.ok(
        "PUT",
        "/networks/lan",
        Some(json!({"name": "lan", "l2": {"kind": "novlan"},
                    "l3": {"cidr": "10.80.0.0/24", "gateway": "10.80.0.1"}})),
    );
    let mac = "52:54:00:80:00:0a";
    let port = json!({"network": "lan", "mac": mac, "ip": "10.80.0.10"});
    let tap = netd.ok("PUT", "/ports/vm", Some(port))["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    netd.ok(
        "PUT",
        "/eips/e1",
        Some(json!({"ip": "203.0.113.10", "network": "public", "port": "vm"})),
    );
    let vm = VmEndpoint::behind(&h, &tap, mac, "eipvm");
    let lease = vm.dhcp(dir.path()).expect("a lease");
    assert!(
        lease["staticroutes"].ends_with("0.0.0.0/0 169.254.169.254"),
        "a VM with an EIP routes through its host: {lease:?}"
    );

    // The world reaches the VM at its public address (the VM answers ping itself).
    assert!(ping(&world, "203.0.113.10", 2));

    // The VM's traffic to the world comes from the public address.
    let _server = Killed(
        world
            .exec("python3", &["-c", WHO_AM_I])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = vm
        .exec("python3", &["-c", ASK, "203.0.113.1"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "203.0.113.10",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The metadata service tells the VM its public address.
    let md = vm
        .exec(
            "curl",
            &[
                "-s",
                "-m",
                "5",
                "http://169.254.169.254/latest/meta-data/public-ipv4",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&md.stdout), "203.0.113.10");

    // Nothing on the public side reaches the EIP namespace's own metadata service: not the
    // world (fenced off at the uplink), nor a VM on the public network, sending to it by way of
    // the EIP's MAC.
    let metadata_from = |ns: &Ns| {
        let out = ns
            .exec(
                "curl",
                &[
                    "-s",
                    "-m",
                    "2",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://169.254.169.254/latest/meta-data/",
                ],
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    world.ip(&["route", "add", "169.254.169.254/32", "via", "203.0.113.10"]);
    assert_eq!(metadata_from(&world), "000", "no connection from the world");
    let public_mac = "52:54:00:80:00:20";
    let public_port = json!({"network": "public", "mac": public_mac, "ip": "203.0.113.20"});
    let public_tap = netd.ok("PUT", "/ports/pub", Some(public_port))["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    let neighbour_vm = VmEndpoint::behind(&h, &public_tap, public_mac, "eippub");
    neighbour_vm
        .ns
        .ip(&["addr", "add", "203.0.113.20/24", "dev", "eth0"]);
    neighbour_vm
        .ns
        .ip(&["route", "add", "169.254.169.254/32", "via", "203.0.113.10"]);
    assert_eq!(
        metadata_from(&neighbour_vm.ns),
        "000",
        "no connection from the public network"
    );
    drop(neighbour_vm);
    netd.ok("DELETE", "/ports/pub", None);

    // Bad input: a taken address, a second EIP for the port, an address off the network,
    // a port that does not exist; the port and network stay while the EIP does.
    let bad =
        |body: serde_json::Value, status: u16| netd.error("PUT", "/eips/e2", Some(body), status);
    assert!(bad(
        json!({"ip": "203.0.113.10", "network": "public", "port": "vm"}),
        409
    )
    .contains("e1"));
    assert!(bad(
        json!({"ip": "198.51.100.7", "network": "public", "port": "vm"}),
        400
    )
    .contains("198.51.100.7"));
    assert!(bad(
        json!({"ip": "203.0.113.11", "network": "public", "port": "nope"}),
        422
    )
    .contains("nope"));
    assert!(netd.error("DELETE", "/ports/vm", None, 409).contains("e1"));
    assert!(netd
        .error("DELETE", "/networks/public", None, 409)
        .contains("e1"));

    // A crash of netd: the mapping comes back, and netd announces the address (gratuitous
    // ARP), so the world's stale entry for it is put right without waiting for it to expire.
    let neighbour = || {
        let out = world.ip(&["-j", "neigh", "show", "203.0.113.10", "dev", "isp0"]);
        let entries: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        entries
            .first()
            .and_then(|e| e["lladdr"].as_str())
            .map(str::to_owned)
    };
    let eip_mac = neighbour().expect("the world has resolved the EIP");
    world.ip(&[
        "neigh",
        "replace",
        "203.0.113.10",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "isp0",
        "nud",
        "stale",
    ]);
    // The kernel takes no new address for an entry changed less than a second ago.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let netd = netd.crash_and_restart();
    let start = std::time::Instant::now();
    while neighbour().as_deref() != Some(eip_mac.as_str()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "the world learns the EIP's MAC from netd: {:?}",
            neighbour()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        ping(&world, "203.0.113.10", 2),
        "the EIP is back after a restart"
    );

    // The EIP goes: the public address answers no more.
    netd.ok("DELETE", "/eips/e1", None);
    assert!(
        !ping(&world, "203.0.113.10", 1),
        "a removed EIP is not reachable"
    );
}
