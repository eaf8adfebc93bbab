//! netd's metadata service for real: VMs (namespaces behind their ports' TAPs) on two hosts of
//! one VXLAN network read their own EC2-style documents from 169.254.169.254, each from its
//! own host, and a VM that takes another's address is refused.

mod common;

use common::*;
use serde_json::json;

fn network(peer: &str) -> serde_json::Value {
    json!({
        "name": "lan",
        "l2": {"kind": "vxlan", "vni": 6060, "underlay": "under0", "peers": [peer]},
        "l3": {"cidr": "10.60.0.0/24", "gateway": "10.60.0.1"},
    })
}

/// GETs `path` from the metadata service as `vm`: (HTTP status, body); status 0 when no
/// answer came.
fn get(vm: &VmEndpoint, path: &str) -> (u16, String) {
    let url = format!("http://169.254.169.254{path}");
    let out = vm
        .exec("curl", &["-s", "-m", "5", "-w", "\n%{http_code}", &url])
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn each_vm_reads_its_own_document_from_its_own_host() {
    let TwoHosts {
        d1,
        d2,
        h1,
        h2,
        dir1,
        dir2,
    } = two_hosts("md");
    d1.ok("PUT", "/networks/lan", Some(network("192.0.2.2")));
    d2.ok("PUT", "/networks/lan", Some(network("192.0.2.1")));

    let user_data = "#cloud-config\npackages: [nginx]\n";
    let a_port = json!({
        "network": "lan", "mac": "52:54:00:60:00:0a", "ip": "10.60.0.10", "hostname": "web-a",
        "metadata": {"instance_id": "i-0a", "ssh_keys": ["ssh-ed25519 AAAAC3Nza a@example"],
                     "user_data": user_data},
    });
    let tap_a = d1.ok("PUT", "/ports/a", Some(a_port))["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_port = json!({"network": "lan", "mac": "52:54:00:60:00:0b", "ip": "10.60.0.11"});
    let tap_b = d2.ok("PUT", "/ports/b", Some(b_port))["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    let c_port = json!({"network": "lan", "mac": "52:54:00:60:00:0c", "ip": "10.60.0.12"});
    let tap_c = d1.ok("PUT", "/ports/c", Some(c_port))["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = VmEndpoint::behind(&h1, &tap_a, "52:54:00:60:00:0a", "mda");
    let b = VmEndpoint::behind(&h2, &tap_b, "52:54:00:60:00:0b", "mdb");
    let c = VmEndpoint::behind(&h1, &tap_c, "52:54:00:60:00:0c", "mdc");
    for (vm, dir) in [(&a, &dir1), (&b, &dir2), (&c, &dir1)] {
        let lease = vm.dhcp(dir.path()).expect("a lease");
        assert!(
            lease["staticroutes"].contains("169.254.169.254/32 0.0.0.0"),
            "DHCP routes the metadata address on-link: {lease:?}"
        );
        vm.ns
            .ip(&["route", "replace", "169.254.169.254/32", "dev", "eth0"]);
    }

    assert_eq!(
        get(&a, "/latest/meta-data/instance-id"),
        (200, "i-0a".into())
    );
    assert_eq!(
        get(&a, "/latest/meta-data/local-ipv4"),
        (200, "10.60.0.10".into())
    );
    assert_eq!(get(&a, "/latest/meta-data/hostname"), (200, "web-a".into()));
    assert_eq!(
        get(&a, "/latest/meta-data/mac"),
        (200, "52:54:00:60:00:0a".into())
    );
    assert_eq!(
        get(&a, "/latest/meta-data/public-keys/0/openssh-key"),
        (200, "ssh-ed25519 AAAAC3Nza a@example\n".into())
    );
    assert_eq!(get(&a, "/latest/user-data"), (200, user_data.into()));
    let (status, index) = get(&a, "/latest/meta-data/");
    assert_eq!(status, 200);
    for key in [
        "instance-id",
        "hostname",
        "local-ipv4",
        "mac",
        "public-keys/",
    ] {
        assert!(
            index.lines().any(|l| l == key),
            "{key} missing from {index:?}"
        );
    }
    // B, on the other host of the same network, is answered by its own host.
    assert_eq!(get(&b, "/latest/meta-data/instance-id"), (200, "b".into()));
    assert_eq!(get(&b, "/latest/user-data").0, 404);

    // A port's changes show at once.
    let a_port = json!({
        "network": "lan", "mac": "52:54:00:60:00:0a", "ip": "10.60.0.10",
        "metadata": {"instance_id": "i-0a2"},
    });
    d1.ok("PUT", "/ports/a", Some(a_port));
    assert_eq!(
        get(&a, "/latest/meta-data/instance-id"),
        (200, "i-0a2".into())
    );
    // A holds as many idle connections as a VM may: its next request is turned away, while
    // C, on the same host, is still served; once A lets go, A is served again.
    let mut holder = a
        .exec(
            "python3",
            &[
                "-c",
                "import socket, sys, time\n\
                 held = [socket.create_connection(('169.254.169.254', 80), timeout=5) for _ in range(8)]\n\
                 print('held', flush=True); time.sleep(60)",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    assert_eq!(
        get(&a, "/latest/meta-data/instance-id").0,
        0,
        "A is over its limit"
    );
    assert_eq!(get(&c, "/latest/meta-data/instance-id"), (200, "c".into()));
    let _ = holder.kill();
    let _ = holder.wait();
    let start = std::time::Instant::now();
    while get(&a, "/latest/meta-data/instance-id") != (200, "i-0a2".into()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "A is served again once its connections close"
        );
    }

    // C takes A's address: it gets nothing of A's. Anti-spoofing drops its packets before
    // they reach the service (no answer); the service's own check of the MAC behind an address
    // would refuse it (403) otherwise.
    c.ns.ip(&["addr", "flush", "dev", "eth0"]);
    c.ns.ip(&["addr", "add", "10.60.0.10/24", "dev", "eth0"]);
    c.ns.ip(&["route", "replace", "169.254.169.254/32", "dev", "eth0"]);
    let (status, body) = get(&c, "/latest/meta-data/instance-id");
    assert_ne!(
        body, "i-0a2",
        "a spoofed address reads another VM's metadata"
    );
    assert!(status == 403 || status == 0, "{status} {body}");

    // A netd killed outright comes back with its service (its namespace died with it).
    let d2 = d2.crash_and_restart();
    assert_eq!(get(&b, "/latest/meta-data/instance-id"), (200, "b".into()));
    d2.ok("DELETE", "/ports/b", None);
    assert_ne!(
        get(&b, "/latest/meta-data/instance-id").0,
        200,
        "a port that goes is not answered"
    );
}
