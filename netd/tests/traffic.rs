//! Real traffic through netd's networks: two hosts (namespaces) joined by an underlay, a VXLAN
//! network between them, VMs on each host's TAPs (namespaces behind a relay, and the test
//! guest under `triad-vmm`), and a flat network whose gateway is outside the host.

mod common;

use std::process::Stdio;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn overlay(peer: &str) -> serde_json::Value {
    json!({
        "name": "overlay",
        "l2": {"kind": "vxlan", "vni": 3030, "underlay": "under0", "peers": [peer]},
        "l3": {"cidr": "10.30.0.0/24", "gateway": "10.30.0.1"},
    })
}

/// Two hosts with the overlay network on each.
fn pair(test: &str) -> TwoHosts {
    let p = two_hosts(test);
    p.d1.ok("PUT", "/networks/overlay", Some(overlay("192.0.2.2")));
    p.d2.ok("PUT", "/networks/overlay", Some(overlay("192.0.2.1")));
    p
}

fn add_port(netd: &Netd, id: &str, network: &str, mac: &str, ip: &str) -> String {
    let port = netd.ok(
        "PUT",
        &format!("/ports/{id}"),
        Some(json!({"network": network, "mac": mac, "ip": ip})),
    );
    port["tap"].as_str().unwrap().to_owned()
}

#[test]
fn vms_on_two_hosts_talk_over_vxlan() {
    let p = pair("vx");
    let tap_a = add_port(&p.d1, "a", "overlay", "52:54:00:30:00:0a", "10.30.0.10");
    let tap_b = add_port(&p.d2, "b", "overlay", "52:54:00:30:00:0b", "10.30.0.11");
    let a = VmEndpoint::behind(&p.h1, &tap_a, "52:54:00:30:00:0a", "vxa");
    let b = VmEndpoint::behind(&p.h2, &tap_b, "52:54:00:30:00:0b", "vxb");
    a.ns.ip(&["addr", "add", "10.30.0.10/24", "dev", "eth0"]);
    b.ns.ip(&["addr", "add", "10.30.0.11/24", "dev", "eth0"]);
    assert!(
        ping(&a.ns, "10.30.0.11", 2),
        "VM a reaches VM b across the underlay"
    );
    assert!(ping(&b.ns, "10.30.0.10", 2), "and back");

    // Without the peer in the flood list, nothing crosses (no multicast, no learning).
    p.d1.ok("PUT", "/networks/overlay", Some(overlay("192.0.2.9")));
    a.ns.ip(&["neigh", "flush", "dev", "eth0"]);
    assert!(
        !ping(&a.ns, "10.30.0.11", 2),
        "a VTEP that is not a peer is not reached"
    );
    p.d1.ok("PUT", "/networks/overlay", Some(overlay("192.0.2.2")));
    assert!(ping(&a.ns, "10.30.0.11", 2));
}

#[test]
fn a_vm_reaches_the_gateway_beyond_the_uplink() {
    let h = Ns::new("gw");
    let outside = Ns::new("gw-out");
    h.wire("uplink0", None, &outside, "lan0", Some("10.40.0.1/24"));
    let dir = TempDir::new("gw");
    let netd = Netd::start(&h, dir.path());
    netd.ok(
        "PUT",
        "/networks/flat",
        Some(json!({
            "name": "flat",
            "l2": {"kind": "novlan", "uplink": "uplink0"},
            "l3": {"cidr": "10.40.0.0/24", "gateway": "10.40.0.1"},
        })),
    );
    let tap = add_port(&netd, "vm", "flat", "52:54:00:40:00:0a", "10.40.0.10");
    let vm = VmEndpoint::behind(&h, &tap, "52:54:00:40:00:0a", "gwvm");
    vm.ns.ip(&["addr", "add", "10.40.0.10/24", "dev", "eth0"]);
    vm.ns.ip(&["route", "add", "default", "via", "10.40.0.1"]);
    assert!(ping(&vm.ns, "10.40.0.1", 2));
}

/// The VMM attaches to the TAP netd made, the test guest leases its address from netd's DHCP,
/// and answers a VM on the other host.
#[test]
fn the_test_guest_on_a_netd_port_answers_across_hosts() {
    let test = "the_test_guest_on_a_netd_port_answers_across_hosts";
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        skip(test, &format!("/dev/kvm cannot be opened ({e})"));
        return;
    }
    let root = workspace_root();
    let guest = root.join("target/testguest/testguest.elf");
    assert!(
        guest.exists(),
        "{} is missing: run scripts/build-testguest",
        guest.display()
    );
    // Built by the same `cargo test --workspace` run.
    let exe = std::env::current_exe().unwrap();
    let vmm = exe.parent().unwrap().parent().unwrap().join("triad-vmm");
    assert!(
        vmm.exists(),
        "{} is missing: build the workspace",
        vmm.display()
    );

    let p = pair("kvm");
    let mac = "52:54:00:30:00:1a";
    let tap = add_port(&p.d1, "guest", "overlay", mac, "10.30.0.20");
    let tap_b = add_port(&p.d2, "b", "overlay", "52:54:00:30:00:1b", "10.30.0.21");
    let b = VmEndpoint::behind(&p.h2, &tap_b, "52:54:00:30:00:1b", "kvmb");
    b.ns.ip(&["addr", "add", "10.30.0.21/24", "dev", "eth0"]);

    let dir = TempDir::new("kvm-guest");
    let serial = dir.path().join("serial.log");
    let config = dir.path().join("vm.json");
    let vm = json!({
        "boot": {"kernel": guest, "cmdline": "triad.net=dhcp"},
        "machine": {"vcpus": 1, "memory_mib": 64},
        "serial": {"mode": "file", "path": serial},
        "nets": [{"id": "eth0", "tap": tap, "mac": mac}],
    });
    std::fs::write(&config, vm.to_string()).unwrap();
    let mut child =
        p.h1.exec(
            vmm.to_str().unwrap(),
            &["--config", config.to_str().unwrap()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(&serial)
        .unwrap_or_default()
        .contains("TRIAD-NET-READY")
    {
        if start.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "the guest did not bring its network up: {}",
                std::fs::read_to_string(&serial).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let serial_out = std::fs::read_to_string(&serial).unwrap();
    assert!(
        serial_out.contains("TRIAD-NET-IP 10.30.0.20/24\n"),
        "the guest leased another address: {serial_out}"
    );
    let reached = ping(&b.ns, "10.30.0.20", 2);
    let _ = child.kill();
    let _ = child.wait();
    assert!(reached, "VM b on host 2 pings the guest on host 1");
    drop(p.d1);
    drop(p.d2);
}
