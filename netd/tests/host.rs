//! `triad-netd` as a process in a network namespace standing in for a host: networks and
//! ports made and removed on the real kernel, a crash reconciled, and bad requests refused
//! with nothing left behind. What the host has is read with iproute2, not through netd.

mod common;

use common::*;
use serde_json::json;

fn flat(uplink: &str) -> serde_json::Value {
    json!({
        "name": "flat",
        "l2": {"kind": "novlan", "uplink": uplink},
        "l3": {"cidr": "10.20.0.0/24", "gateway": "10.20.0.1", "dns": ["10.20.0.1"],
               "ranges": [{"start": "10.20.0.10", "end": "10.20.0.200"}]},
    })
}

fn overlay(peers: &[&str]) -> serde_json::Value {
    json!({
        "name": "overlay",
        "l2": {"kind": "vxlan", "vni": 4242, "underlay": "under0", "peers": peers},
    })
}

fn port(network: &str, mac: &str, ip: Option<&str>) -> serde_json::Value {
    let mut p = json!({"network": network, "mac": mac});
    if let Some(ip) = ip {
        p["ip"] = json!(ip);
    }
    p
}

/// A host with an uplink (a veth to a "switch" namespace) and an underlay with an address.
fn host(test: &str) -> (Ns, Ns) {
    let host = Ns::new(test);
    let switch = Ns::new(&format!("{test}-sw"));
    host.wire("uplink0", None, &switch, "sw0", None);
    host.wire("under0", Some("192.0.2.1/24"), &switch, "sw1", None);
    (host, switch)
}

fn master(ns: &Ns, link: &str) -> Option<String> {
    ns.link(link)
        .and_then(|l| l["master"].as_str().map(str::to_owned))
}

#[test]
fn networks_and_ports_are_made_and_removed() {
    let (h, _sw) = host("make");
    let dir = TempDir::new("make");
    let netd = Netd::start(&h, dir.path());

    let net = netd.ok("PUT", "/networks/flat", Some(flat("uplink0")));
    let bridge = net["bridge"].as_str().unwrap().to_owned();
    assert_eq!(net["effective_mtu"], 1500);
    let br = h.link(&bridge).expect("the bridge exists");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert!(br["flags"].as_array().unwrap().contains(&json!("UP")));
    assert_eq!(master(&h, "uplink0").as_deref(), Some(bridge.as_str()));

    let vx = netd.ok(
        "PUT",
        "/networks/overlay",
        Some(overlay(&["192.0.2.2", "192.0.2.3"])),
    );
    let vx_bridge = vx["bridge"].as_str().unwrap().to_owned();
    assert_eq!(
        vx["effective_mtu"], 1450,
        "VXLAN's 50 bytes come off the default MTU"
    );
    let dev = h
        .links()
        .into_iter()
        .find(|l| l["linkinfo"]["info_kind"] == "vxlan")
        .expect("a VXLAN device");
    let dev_name = dev["ifname"].as_str().unwrap().to_owned();
    let data = &dev["linkinfo"]["info_data"];
    assert_eq!(data["id"], 4242);
    assert_eq!(
        data["local"], "192.0.2.1",
        "the underlay's address is the VTEP"
    );
    assert_eq!(data["learning"], false);
    assert_eq!(dev["master"], vx_bridge.as_str());
    assert_eq!(flood_list(&h, &dev_name), ["192.0.2.2", "192.0.2.3"]);

    let p = netd.ok(
        "PUT",
        "/ports/vm1",
        Some(port("flat", "52:54:00:00:20:01", Some("10.20.0.10"))),
    );
    let tap = p["tap"].as_str().unwrap().to_owned();
    let t = h.link(&tap).expect("the TAP exists");
    assert_eq!(t["linkinfo"]["info_kind"], "tun");
    assert_eq!(t["linkinfo"]["info_data"]["type"], "tap");
    assert_eq!(t["master"], bridge.as_str());
    assert_eq!(t["mtu"], 1500);
    let p2 = netd.ok(
        "PUT",
        "/ports/vm2",
        Some(port("overlay", "52:54:00:00:20:02", None)),
    );
    let tap2 = p2["tap"].as_str().unwrap().to_owned();
    assert_eq!(master(&h, &tap2).as_deref(), Some(vx_bridge.as_str()));
    assert_eq!(h.link(&tap2).unwrap()["mtu"], 1450);

    // The same requests again change nothing.
    let indexes = |h: &Ns| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = h
            .links()
            .iter()
            .map(|l| {
                (
                    l["ifname"].as_str().unwrap().to_owned(),
                    l["ifindex"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = indexes(&h);
    netd.ok(
        "PUT",
        "/networks/overlay",
        Some(overlay(&["192.0.2.2", "192.0.2.3"])),
    );
    netd.ok(
        "PUT",
        "/ports/vm1",
        Some(port("flat", "52:54:00:00:20:01", Some("10.20.0.10"))),
    );
    assert_eq!(indexes(&h), before, "nothing was made again");
    assert_eq!(flood_list(&h, &dev_name), ["192.0.2.2", "192.0.2.3"]);

    // A peer leaves and another joins; a port moves to the other network.
    netd.ok(
        "PUT",
        "/networks/overlay",
        Some(overlay(&["192.0.2.3", "192.0.2.4"])),
    );
    assert_eq!(flood_list(&h, &dev_name), ["192.0.2.3", "192.0.2.4"]);
    netd.ok(
        "PUT",
        "/ports/vm2",
        Some(port("flat", "52:54:00:00:20:02", Some("10.20.0.11"))),
    );
    assert_eq!(master(&h, &tap2).as_deref(), Some(bridge.as_str()));
    assert_eq!(h.link(&tap2).unwrap()["mtu"], 1500);

    // GET /state reads the kernel back.
    let state = netd.ok("GET", "/state", None);
    assert_eq!(state["networks"].as_array().unwrap().len(), 2);
    assert_eq!(state["ports"].as_array().unwrap().len(), 2);
    let names: Vec<&str> = state["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    for name in [&*bridge, &vx_bridge, &dev_name, &tap, &tap2, "uplink0"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert_eq!(state["fdb"].as_array().unwrap().len(), 2);

    // A network with ports stays; ports go with their TAPs; then the network.
    let err = netd.error("DELETE", "/networks/flat", None, 409);
    assert!(err.contains("port"), "{err}");
    netd.ok("DELETE", "/ports/vm1", None);
    netd.ok("DELETE", "/ports/vm2", None);
    assert!(h.link(&tap).is_none() && h.link(&tap2).is_none());
    netd.error("DELETE", "/ports/vm1", None, 404);
    netd.ok("DELETE", "/networks/flat", None);
    netd.ok("DELETE", "/networks/overlay", None);
    assert!(h.link(&bridge).is_none() && h.link(&vx_bridge).is_none());
    assert!(h.link(&dev_name).is_none());
    let up = h.link("uplink0").expect("the uplink stays");
    assert!(up["master"].is_null(), "the uplink is let go: {up}");
}

#[test]
fn a_restart_reconciles_the_host() {
    let (h, _sw) = host("restart");
    let dir = TempDir::new("restart");
    let netd = Netd::start(&h, dir.path());
    let net = netd.ok("PUT", "/networks/overlay", Some(overlay(&["192.0.2.2"])));
    let bridge = net["bridge"].as_str().unwrap().to_owned();
    let p = netd.ok(
        "PUT",
        "/ports/vm1",
        Some(port("overlay", "52:54:00:00:21:01", None)),
    );
    let tap = p["tap"].as_str().unwrap().to_owned();
    let dev = h
        .links()
        .into_iter()
        .find(|l| l["linkinfo"]["info_kind"] == "vxlan")
        .unwrap()["ifname"]
        .as_str()
        .unwrap()
        .to_owned();

    // While netd is down the host drifts: its TAP deleted, a peer dropped, the VXLAN device
    // down, and a TAP of a port nobody asked for (as a crash mid-create would leave).
    let netd = netd.crash_and_restart_with(|| {
        h.ip(&["link", "del", &tap]);
        run(
            "bridge",
            &[
                "-n",
                &h.name,
                "fdb",
                "del",
                "00:00:00:00:00:00",
                "dev",
                &dev,
                "dst",
                "192.0.2.2",
            ],
        );
        h.ip(&["link", "set", &dev, "down"]);
        h.ip(&["tuntap", "add", "ttpstray", "mode", "tap"]);
        h.ip(&["link", "set", "ttpstray", "alias", "triad:port:ghost"]);
        // One made by a netd that died before it could tag it.
        h.ip(&["tuntap", "add", "ttpdeadbeef", "mode", "tap"]);
        // Not Triad's: must survive.
        h.ip(&["tuntap", "add", "othertap", "mode", "tap"]);
    });
    assert_eq!(
        master(&h, &tap).as_deref(),
        Some(bridge.as_str()),
        "the TAP is back"
    );
    assert_eq!(flood_list(&h, &dev), ["192.0.2.2"]);
    let d = h.link(&dev).unwrap();
    assert!(d["flags"].as_array().unwrap().contains(&json!("UP")), "{d}");
    assert!(h.link("ttpstray").is_none(), "the stray TAP is removed");
    assert!(h.link("ttpdeadbeef").is_none(), "so is the untagged one");
    assert!(
        h.link("othertap").is_some(),
        "an interface that is not Triad's stays"
    );

    // After a kill with no drift, a restart changes nothing.
    let before = h.links();
    let netd = netd.crash_and_restart();
    assert_eq!(h.links().len(), before.len());
    assert_eq!(flood_list(&h, &dev), ["192.0.2.2"]);
    netd.ok("GET", "/ports/vm1", None);
}

#[test]
fn bad_requests_are_refused_and_leave_nothing() {
    let (h, _sw) = host("bad");
    let dir = TempDir::new("bad");
    let netd = Netd::start(&h, dir.path());
    let count = || h.links().len();
    let before = count();

    // Malformed bodies name the problem.
    let err = netd.error(
        "PUT",
        "/networks/n1",
        Some(json!({"name": "x", "l2": {"kind": "novlan"}, "mut": 1})),
        400,
    );
    assert!(err.contains("mut"), "{err}");
    let err = netd.error(
        "PUT",
        "/networks/n1",
        Some(json!({"name": "x", "l2": {"kind": "novlan"}, "l3": {"cidr": "10.0.0.0/33"}})),
        400,
    );
    assert!(err.contains("prefix"), "{err}");
    let bad_mac = json!({"network": "n1", "mac": "52:54:00:zz:00:01"});
    assert!(netd
        .error("PUT", "/ports/p1", Some(bad_mac), 400)
        .contains("MAC"));
    let err = netd.error("PUT", "/networks/bad%20id", Some(flat("uplink0")), 400);
    assert!(err.contains("id"), "{err}");

    // An uplink or underlay the host lacks: nothing is made.
    let err = netd.error("PUT", "/networks/n1", Some(flat("nosuch0")), 422);
    assert!(err.contains("nosuch0"), "{err}");
    let mut vx = overlay(&[]);
    vx["l2"]["underlay"] = json!("nosuch1");
    assert!(netd
        .error("PUT", "/networks/n2", Some(vx), 422)
        .contains("nosuch1"));
    let mut big = overlay(&[]);
    big["mtu"] = json!(1500);
    let err = netd.error("PUT", "/networks/n2", Some(big), 422);
    assert!(err.contains("MTU"), "{err}");
    assert_eq!(count(), before, "a refused network leaves no interface");

    // Impossible addressing and clashes with what exists.
    let mut gw = flat("uplink0");
    gw["l3"]["gateway"] = json!("10.99.0.1");
    assert!(netd
        .error("PUT", "/networks/n1", Some(gw), 400)
        .contains("gateway"));
    netd.ok("PUT", "/networks/n1", Some(flat("uplink0")));
    let mut overlap = flat("uplink0");
    overlap["l2"] = json!({"kind": "novlan"});
    overlap["l3"]["cidr"] = json!("10.20.0.128/25");
    overlap["l3"]["gateway"] = json!("10.20.0.129");
    overlap["l3"]["ranges"] = json!([]);
    assert!(netd
        .error("PUT", "/networks/n3", Some(overlap), 409)
        .contains("overlaps"));
    netd.ok("PUT", "/networks/v1", Some(overlay(&[])));
    assert!(netd
        .error("PUT", "/networks/v2", Some(overlay(&[])), 409)
        .contains("VNI 4242"));
    let again = json!({"name": "again", "l2": {"kind": "novlan", "uplink": "uplink0"}});
    assert!(netd
        .error("PUT", "/networks/n4", Some(again), 409)
        .contains("uplink0"));

    netd.ok(
        "PUT",
        "/ports/p1",
        Some(port("n1", "52:54:00:00:22:01", Some("10.20.0.10"))),
    );
    let err = netd.error(
        "PUT",
        "/ports/p2",
        Some(port("n1", "52:54:00:00:22:01", Some("10.20.0.11"))),
        409,
    );
    assert!(err.contains("MAC"), "{err}");
    let err = netd.error(
        "PUT",
        "/ports/p2",
        Some(port("n1", "52:54:00:00:22:02", Some("10.20.0.10"))),
        409,
    );
    assert!(err.contains("p1"), "{err}");
    let err = netd.error(
        "PUT",
        "/ports/p2",
        Some(port("n1", "52:54:00:00:22:02", Some("10.21.0.10"))),
        400,
    );
    assert!(err.contains("10.20.0.0/24"), "{err}");
    let err = netd.error(
        "PUT",
        "/ports/p2",
        Some(port("nope", "52:54:00:00:22:02", None)),
        422,
    );
    assert!(err.contains("nope"), "{err}");

    // An interface of someone else's under the name a port's TAP would take.
    let taken = netd.ok(
        "PUT",
        "/ports/p3",
        Some(port("v1", "52:54:00:00:22:03", None)),
    )["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    netd.ok("DELETE", "/ports/p3", None);
    h.ip(&["tuntap", "add", &taken, "mode", "tap"]);
    h.ip(&["link", "set", &taken, "alias", "someone-else"]);
    let err = netd.error(
        "PUT",
        "/ports/p3",
        Some(port("v1", "52:54:00:00:22:03", None)),
        409,
    );
    assert!(err.contains(&taken), "{err}");
    assert!(
        h.link(&taken).unwrap()["master"].is_null(),
        "someone else's TAP is not touched"
    );

    // What was refused was not recorded: a restart brings back only what was accepted.
    let netd = netd.crash_and_restart();
    let state = netd.ok("GET", "/state", None);
    let ids = |key: &str| -> Vec<String> {
        state[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids("networks"), ["n1", "v1"]);
    assert_eq!(ids("ports"), ["p1"]);
}

#[test]
fn without_nft_netd_refuses_to_start_naming_it_and_its_package() {
    let host = Ns::new("nonft");
    let dir = TempDir::new("nonft");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let out = Netd::run_with_path(&host, dir.path(), &bin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "netd started without nft: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("triad-netd: error: nft is not installed")
            && last.contains("Debian package nftables"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("netd.sock").exists() && !dir.path().join("state").exists(),
        "netd made its socket or state before it refused"
    );
}
