//! netd's DHCP for real: busybox's udhcpc in a VM stand-in behind the port's TAP, and the test
//! guest under `triad-vmm`, lease their ports' addresses and options; a host answers only its
//! own VMs, so two hosts of one network never race.

mod common;

use common::*;
use serde_json::json;

fn network(l2: serde_json::Value) -> serde_json::Value {
    json!({
        "name": "lan",
        "l2": l2,
        "mtu": 1400,
        "l3": {
            "cidr": "10.50.0.0/24", "gateway": "10.50.0.1", "dns": ["10.50.0.2", "10.50.0.3"],
            "routes": [{"destination": "192.168.100.0/24", "via": "10.50.0.5"}],
            "lease_secs": 600,
        },
    })
}

#[test]
fn a_vm_leases_its_address_and_options() {
    let h = Ns::new("dhcp");
    let dir = TempDir::new("dhcp");
    let netd = Netd::start(&h, dir.path());
    netd.ok(
        "PUT",
        "/networks/lan",
        Some(network(json!({"kind": "novlan"}))),
    );
    let mac = "52:54:00:50:00:0a";
    let port = json!({"network": "lan", "mac": mac, "ip": "10.50.0.10", "hostname": "web-1"});
    let tap = netd.ok("PUT", "/ports/web", Some(port))["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    let vm = VmEndpoint::behind(&h, &tap, mac, "dhcpvm");

    let lease = vm.dhcp(dir.path()).expect("a lease");
    assert_eq!(lease["ip"], "10.50.0.10");
    assert_eq!(lease["subnet"], "255.255.255.0");
    assert_eq!(lease["router"], "10.50.0.1");
    assert_eq!(lease["dns"], "10.50.0.2 10.50.0.3");
    assert_eq!(lease["mtu"], "1400");
    assert_eq!(lease["hostname"], "web-1");
    assert_eq!(lease["lease"], "600");
    assert_eq!(
        lease["serverid"], "10.50.0.254",
        "the network's last host address"
    );
    assert_eq!(
        lease["staticroutes"],
        "192.168.100.0/24 10.50.0.5 169.254.169.254/32 0.0.0.0 0.0.0.0/0 10.50.0.1"
    );

    let state = netd.ok("GET", "/state", None);
    let leases = state["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["port"], "web");
    assert_eq!(leases[0]["ip"], "10.50.0.10");

    // Renewals are unicast to the server's address: the host answers ARP for it, for its VMs.
    let _ = vm
        .exec("ping", &["-c", "1", "-W", "1", "10.50.0.254"])
        .output();
    let neigh = String::from_utf8(
        vm.exec("ip", &["neigh", "show", "10.50.0.254"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let bridge = h
        .link(state["networks"][0]["bridge"].as_str().unwrap())
        .unwrap();
    assert!(
        neigh.contains(bridge["address"].as_str().unwrap()),
        "{neigh}"
    );

    // A changed address reaches the VM at its next request; a port that goes stops the answers.
    let port = json!({"network": "lan", "mac": mac, "ip": "10.50.0.11", "hostname": "web-1"});
    netd.ok("PUT", "/ports/web", Some(port));
    vm.ns.ip(&["addr", "flush", "dev", "eth0"]);
    assert_eq!(vm.dhcp(dir.path()).expect("a lease")["ip"], "10.50.0.11");
}

#[test]
fn only_the_ports_host_answers() {
    let TwoHosts {
        d1,
        d2,
        h1,
        h2,
        dir1,
        dir2,
    } = two_hosts("dhcp");
    let vx =
        |peer: &str| json!({"kind": "vxlan", "vni": 5050, "underlay": "under0", "peers": [peer]});
    d1.ok("PUT", "/networks/lan", Some(network(vx("192.0.2.2"))));
    d2.ok("PUT", "/networks/lan", Some(network(vx("192.0.2.1"))));

    let port = |mac: &str, ip: &str| json!({"network": "lan", "mac": mac, "ip": ip});
    let tap_a = d1.ok(
        "PUT",
        "/ports/a",
        Some(port("52:54:00:50:01:0a", "10.50.0.20")),
    )["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    let tap_b = d2.ok(
        "PUT",
        "/ports/b",
        Some(port("52:54:00:50:01:0b", "10.50.0.21")),
    )["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = VmEndpoint::behind(&h1, &tap_a, "52:54:00:50:01:0a", "dhcpa");
    let b = VmEndpoint::behind(&h2, &tap_b, "52:54:00:50:01:0b", "dhcpb");
    assert_eq!(a.dhcp(dir1.path()).expect("a's lease")["ip"], "10.50.0.20");
    assert_eq!(b.dhcp(dir2.path()).expect("b's lease")["ip"], "10.50.0.21");
    // Each host acknowledged its own VM only.
    for (netd, port) in [(&d1, "a"), (&d2, "b")] {
        let state = netd.ok("GET", "/state", None);
        let ports: Vec<&str> = state["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["port"].as_str().unwrap())
            .collect();
        assert_eq!(ports, [port]);
    }
    // The two VMs reach each other on their leased addresses.
    assert!(ping(&a.ns, "10.50.0.21", 2));

    // A MAC no host has a port for gets nothing.
    d1.ok("DELETE", "/ports/a", None);
    let tap_c = d1.ok(
        "PUT",
        "/ports/c",
        Some(port("52:54:00:50:01:0c", "10.50.0.22")),
    )["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    let stranger = VmEndpoint::behind(&h1, &tap_c, "52:54:00:50:01:0d", "dhcpx");
    assert!(
        stranger.dhcp(dir1.path()).is_none(),
        "a MAC that is no port's gets no lease"
    );
    drop(stranger);
    // The same TAP with the port's own MAC does get its lease.
    let owner = VmEndpoint::behind(&h1, &tap_c, "52:54:00:50:01:0c", "dhcpc");
    assert_eq!(
        owner.dhcp(dir1.path()).expect("c's lease")["ip"],
        "10.50.0.22"
    );
}
