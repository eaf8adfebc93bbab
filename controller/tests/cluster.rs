//! The controller for real: the 3-node harness (namespaces running netd, storaged and hostd),
//! a controller on the management network, the test guest under KVM, and what the nodes say.

use serde_json::{json, Value};
use triad_api::client::{HostdClient, NetdClient, StoragedClient};
use triad_tests::{kvm_available, wait_for, Cluster, Controller};

mod common;
use common::*;

#[test]
fn vms_run_on_different_nodes_reach_each_other_and_go_without_a_trace() {
    if !kvm_available("vms_run_on_different_nodes_reach_each_other_and_go_without_a_trace") {
        return;
    }
    let (cluster, ctl) = ready_cluster("ctl-e2e", 3);
    ok(
        &ctl,
        "POST",
        "/v1/affinity-groups",
        Some(json!({"name": "apart", "rule": {"kind": "vm_anti_affinity"}})),
    );

    let (status, a) = admin(
        &ctl,
        "POST",
        "/v1/vms",
        Some(
            json!({"name": "a", "image": "guest", "memory_mib": 64, "nics": [{"network": "lan"}],
            "affinity_groups": ["apart"], "ha": "never_stop"}),
        ),
    );
    assert_eq!(status, 202, "{a}");
    let a_id = a["resource"]["id"].as_str().unwrap().to_owned();
    let a_ip = a["resource"]["nics"][0]["ip"].as_str().unwrap().to_owned();
    let create_op = a["operation"]["id"].as_str().unwrap().to_owned();
    let (status, b) = admin(
        &ctl,
        "POST",
        "/v1/vms",
        Some(
            json!({"name": "b", "image": "guest", "memory_mib": 64, "nics": [{"network": "lan"}],
            "affinity_groups": ["apart"], "cmdline": format!("triad.ping={a_ip}")}),
        ),
    );
    assert_eq!(status, 202, "{b}");
    let b_id = b["resource"]["id"].as_str().unwrap().to_owned();

    let a_vm = wait_state(&ctl, &a_id, "running");
    let b_vm = wait_state(&ctl, &b_id, "running");
    assert_ne!(a_vm["node"], b_vm["node"], "anti-affinity keeps them apart");
    assert_eq!(
        ok(&ctl, "GET", &format!("/v1/operations/{create_op}"), None)["state"],
        "succeeded"
    );
    let placement = ok(&ctl, "GET", &format!("/v1/vms/{b_id}/placement"), None);
    let rejected: Vec<&Value> = placement["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["rejected_by"] == "affinity")
        .collect();
    assert_eq!(rejected.len(), 1, "{placement}");

    // B leased its address by DHCP from its own node and pings A across nodes over VXLAN.
    let b_ip = b_vm["nics"][0]["ip"].as_str().unwrap();
    let reply = format!("TRIAD-PING-REPLY {a_ip}");
    let text = wait_for("B's ping answered", TIMEOUT, || {
        let text = console(&ctl, &b_id);
        text.contains(&reply).then_some(text)
    });
    assert!(text.contains(&format!("TRIAD-NET-IP {b_ip}/24")), "{text}");
    assert!(text.contains("TRIAD-BLK-OK"), "{text}");

    // Stop and start B, as its node sees it.
    let b_node = node_of(&cluster, &b_vm);
    let b_hostd = HostdClient::new(&b_node.hostd.socket);
    ok(
        &ctl,
        "POST",
        &format!("/v1/vms/{b_id}/stop"),
        Some(json!({"force": true})),
    );
    wait_state(&ctl, &b_id, "stopped");
    assert_eq!(
        b_hostd.vm(&b_id).unwrap().unwrap().phase,
        triad_api::hostd::VmPhase::Stopped
    );
    ok(&ctl, "POST", &format!("/v1/vms/{b_id}/start"), None);
    wait_state(&ctl, &b_id, "running");

    // kill -9 the controller: the VMs run on; a new one answers on the same store and token.
    let a_node = node_of(&cluster, &a_vm);
    let a_pid = HostdClient::new(&a_node.hostd.socket)
        .vm(&a_id)
        .unwrap()
        .unwrap()
        .pid;
    let mut ctl = ctl;
    ctl.daemon.restart();
    assert_eq!(
        ok(&ctl, "GET", &format!("/v1/vms/{a_id}"), None)["state"],
        "running"
    );
    assert_eq!(
        HostdClient::new(&a_node.hostd.socket)
            .vm(&a_id)
            .unwrap()
            .unwrap()
            .pid,
        a_pid
    );

    // An EIP of a public network on A: its node's netd maps it, the others do not; A is
    // not destroyed while it has one.
    ok(
        &ctl,
        "POST",
        "/v1/networks",
        Some(
            json!({"name": "public", "l2": {"kind": "novlan"}, "l3": {"cidr": "198.51.100.0/24", "gateway": "198.51.100.1"}}),
        ),
    );
    wait_for("public on every node", TIMEOUT, || {
        let n = ok(&ctl, "GET", "/v1/networks/public", None);
        n["nodes"]
            .as_object()?
            .values()
            .all(|s| s == "ready")
            .then_some(())
    });
    let eip = ok(
        &ctl,
        "POST",
        "/v1/eips",
        Some(json!({"name": "a-public", "network": "public", "vm": a_id})),
    );
    assert_eq!(eip["ip"], "198.51.100.2", "{eip}");
    let holds_eip = |node: &triad_tests::Node| {
        NetdClient::new(&node.netd.socket)
            .state()
            .unwrap()
            .eips
            .iter()
            .any(|e| e.id == "a-public")
    };
    wait_for("the EIP on A's node", TIMEOUT, || {
        holds_eip(a_node).then_some(())
    });
    for other in cluster.nodes.iter().filter(|n| n.name != a_node.name) {
        assert!(!holds_eip(other), "not on {}", other.name);
    }
    let (status, body) = admin(&ctl, "DELETE", &format!("/v1/vms/{a_id}"), None);
    assert_eq!(status, 409, "{body}");
    assert_eq!(admin(&ctl, "DELETE", "/v1/eips/a-public", None).0, 202);
    wait_for("the EIP gone", TIMEOUT, || {
        (admin(&ctl, "GET", "/v1/eips/a-public", None).0 == 404).then_some(())
    });
    assert!(!holds_eip(a_node));

    // Destroy A: its node keeps no VM, volume, port or address of it.
    let (status, _) = admin(&ctl, "DELETE", &format!("/v1/vms/{a_id}"), None);
    assert_eq!(status, 202);
    wait_for("A gone", TIMEOUT, || {
        (admin(&ctl, "GET", &format!("/v1/vms/{a_id}"), None).0 == 404).then_some(())
    });
    assert!(HostdClient::new(&a_node.hostd.socket)
        .vm(&a_id)
        .unwrap()
        .is_none());
    assert!(StoragedClient::new(&a_node.storaged.socket)
        .volume("shared", &format!("vm-{a_id}"))
        .unwrap()
        .is_none());
    assert!(NetdClient::new(&a_node.netd.socket)
        .port(&format!("{a_id}-eth0"))
        .unwrap()
        .is_none());
    assert_eq!(ok(&ctl, "GET", "/v1/networks/lan", None)["allocated"], 1);
    // The last event is written just after the record goes.
    let kinds = wait_for("A's destroyed event", TIMEOUT, || {
        let events = ok(&ctl, "GET", &format!("/v1/events?resource=vm/{a_id}"), None);
        let kinds: Vec<String> = events
            .as_array()?
            .iter()
            .filter_map(|e| Some(e["kind"].as_str()?.to_owned()))
            .collect();
        kinds.iter().any(|k| k == "destroyed").then_some(kinds)
    });
    for kind in ["created", "placed", "running", "vm.destroy", "destroyed"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

#[test]
fn bad_requests_and_bad_tokens_are_refused_by_name_and_audited() {
    let cluster = Cluster::new("ctl-bad", 1);
    let ctl = cluster.start_controller(0, None);
    let (status, body) = call(&ctl, None, "GET", "/v1/vms", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(call(&ctl, Some("nope"), "GET", "/v1/vms", None).0, 401);
    let reader = ok(
        &ctl,
        "POST",
        "/v1/tokens",
        Some(json!({"name": "reader", "role": "read_only"})),
    );
    let secret = reader["secret"].as_str().unwrap();
    assert_eq!(call(&ctl, Some(secret), "GET", "/v1/vms", None).0, 200);
    let (status, body) = call(
        &ctl,
        Some(secret),
        "POST",
        "/v1/offerings",
        Some(json!({"name": "x", "vcpus": 1, "memory_mib": 64})),
    );
    assert_eq!(status, 403, "{body}");
    // Malformed, unknown fields, wrong types: 400 naming the field.
    for (path, body, field) in [
        (
            "/v1/vms",
            json!({"name": "a", "image": "guest", "nics": [{"network": "lan", "ip": "10.0.0.300"}]}),
            "nics[0].ip",
        ),
        (
            "/v1/vms",
            json!({"name": "a", "image": "guest", "colour": "blue"}),
            "colour",
        ),
        ("/v1/vms", json!({"name": "a b", "image": "guest"}), "name"),
        (
            "/v1/networks",
            json!({"name": "n", "l2": {"kind": "vxlan", "vni": 1, "underlay": "data0"}, "l3": {"cidr": "10.0.0.0/33"}}),
            "l3.cidr",
        ),
        (
            "/v1/networks",
            json!({"name": "n", "l2": {"kind": "vxlan", "vni": 0, "underlay": "data0"}}),
            "l2.vni",
        ),
        (
            "/v1/nodes",
            json!({"name": "n", "address": "nowhere", "token": "t"}),
            "address",
        ),
        (
            "/v1/offerings",
            json!({"name": "big", "vcpus": "many", "memory_mib": 1}),
            "vcpus",
        ),
    ] {
        let (status, answer) = admin(&ctl, "POST", path, Some(body.clone()));
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{body} -> {answer}"
        );
    }
    let (status, answer) = call(&ctl, Some(&ctl.token()), "POST", "/v1/vms", None);
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("body")),
        "{answer}"
    );
    // Well formed, impossible: 422 naming the field, and nothing made.
    let (status, answer) = admin(
        &ctl,
        "POST",
        "/v1/vms",
        Some(json!({"name": "a", "image": "nope"})),
    );
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("image")),
        "{answer}"
    );
    let (status, answer) = admin(
        &ctl,
        "POST",
        "/v1/vms",
        Some(json!({"name": "a", "image": "nope", "offering": "9C9G"})),
    );
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("offering")),
        "{answer}"
    );
    let n = &cluster.nodes[0];
    let (status, answer) = admin(
        &ctl,
        "POST",
        "/v1/nodes",
        Some(json!({"name": n.name, "address": n.hostd_addr(), "token": "not-it"})),
    );
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("token")),
        "{answer}"
    );
    assert_eq!(ok(&ctl, "GET", "/v1/vms", None), json!([]));
    assert_eq!(ok(&ctl, "GET", "/v1/nodes", None), json!([]));
    assert_eq!(admin(&ctl, "GET", "/v1/vms/none", None).0, 404);
    assert_eq!(admin(&ctl, "GET", "/v1/nothing", None).0, 404);
    // Every change asked for is in the audit log, with who asked and the answer.
    let audit = ok(&ctl, "GET", "/v1/audit", None);
    let entries: Vec<(String, String, u64)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["token"].as_str().unwrap().to_owned(),
                a["path"].as_str().unwrap().to_owned(),
                a["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        entries.contains(&("reader".into(), "/v1/offerings".into(), 403)),
        "{entries:?}"
    );
    assert!(
        entries.contains(&("admin".into(), "/v1/tokens".into(), 201)),
        "{entries:?}"
    );
    assert!(entries.iter().all(|(_, _, s)| *s != 500), "{entries:?}");
    // The OpenAPI document needs no token.
    let (status, doc) = call(&ctl, None, "GET", "/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/vms"]["post"].is_object(), "{doc}");
}

/// The VMM processes of node `node` (their sockets are under hostd's `vms/`).
fn vmms(node: &triad_tests::Node) -> usize {
    triad_tests::cluster::processes_under(&node.dir.join("hostd/vms")).len()
}

fn ensures(node: &triad_tests::Node, uuid: &str) -> usize {
    HostdClient::new(&node.hostd.socket)
        .events(0)
        .unwrap()
        .iter()
        .filter(|e| {
            e.vm.as_deref() == Some(uuid) && e.kind == triad_api::hostd::HostEventKind::VmEnsured
        })
        .count()
}

#[test]
fn a_controller_killed_during_creates_finishes_each_exactly_once() {
    if !kvm_available("a_controller_killed_during_creates_finishes_each_exactly_once") {
        return;
    }
    let (cluster, mut ctl) = ready_cluster("ctl-kill", 3);
    let ids: Vec<String> = (0..4)
        .map(|i| {
            let (status, vm) = admin(
                &ctl,
                "POST",
                "/v1/vms",
                Some(json!({"name": format!("k{i}"), "image": "guest", "memory_mib": 64, "nics": [{"network": "lan"}]})),
            );
            assert_eq!(status, 202, "{vm}");
            vm["resource"]["id"].as_str().unwrap().to_owned()
        })
        .collect();
    // Cut off mid-way: some placed, some being made on their nodes, some not yet looked at.
    ctl.daemon.restart();
    for id in &ids {
        wait_state(&ctl, id, "running");
    }
    let mut total = 0;
    for id in &ids {
        let vm = ok(&ctl, "GET", &format!("/v1/vms/{id}"), None);
        let node = node_of(&cluster, &vm);
        assert_eq!(ensures(node, id), 1, "VM {id} made once on {}", node.name);
        for other in cluster.nodes.iter().filter(|n| n.name != node.name) {
            assert!(
                HostdClient::new(&other.hostd.socket)
                    .vm(id)
                    .unwrap()
                    .is_none(),
                "VM {id} only on {}",
                node.name
            );
        }
        total += 1;
    }
    assert_eq!(
        cluster.nodes.iter().map(vmms).sum::<usize>(),
        total,
        "one VMM per VM"
    );
    // Each address once.
    let mut ips: Vec<String> = ok(&ctl, "GET", "/v1/vms", None)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["nics"][0]["ip"].as_str().unwrap().to_owned())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), ids.len());
}

#[test]
fn two_controllers_on_etcd_one_leads_and_the_other_takes_over() {
    if !kvm_available("two_controllers_on_etcd_one_leads_and_the_other_takes_over") {
        return;
    }
    let cluster = Cluster::new("ctl-etcd", 2);
    let (etcd, _etcd_ns) = cluster.start_etcd();
    let c0 = cluster.start_controller(0, Some(&etcd.endpoint));
    let c1 = cluster.start_controller(1, Some(&etcd.endpoint));
    let leaders = |cs: &[&Controller]| -> Vec<bool> {
        cs.iter()
            .map(|c| call(c, None, "GET", "/v1/health", None).1["leader"] == true)
            .collect()
    };
    wait_for("one leader", TIMEOUT, || {
        (leaders(&[&c0, &c1]).iter().filter(|l| **l).count() == 1).then_some(())
    });
    assert_eq!(
        call(&c1, None, "GET", "/v1/health", None).1["store"],
        "etcd"
    );
    // Either answers the API with the one admin token; the leader's loops do the work.
    join_all(&cluster, &c1);
    network_and_image(&cluster, &c0);
    let create = |c: &Controller, name: &str| {
        let (status, vm) = admin(
            c,
            "POST",
            "/v1/vms",
            Some(json!({"name": name, "image": "guest", "memory_mib": 64})),
        );
        assert_eq!(status, 202, "{vm}");
        vm["resource"]["id"].as_str().unwrap().to_owned()
    };
    let first = create(&c1, "first");
    wait_state(&c0, &first, "running");
    // The leader dies; the other takes over within the lease.
    let c0_led = leaders(&[&c0, &c1])[0];
    let (mut leader, follower) = if c0_led { (c0, c1) } else { (c1, c0) };
    leader.daemon.kill9();
    wait_for("the other leads", TIMEOUT, || {
        (call(&follower, None, "GET", "/v1/health", None).1["leader"] == true).then_some(())
    });
    let second = create(&follower, "second");
    wait_state(&follower, &second, "running");
    assert_eq!(
        ok(&follower, "GET", &format!("/v1/vms/{first}"), None)["state"],
        "running"
    );
    drop(leader);
    drop(etcd);
}

#[test]
fn hostd_restarted_under_the_controller_readopts_its_vms() {
    if !kvm_available("hostd_restarted_under_the_controller_readopts_its_vms") {
        return;
    }
    let (mut cluster, ctl) = ready_cluster("ctl-hostd", 1);
    let (status, vm) = admin(
        &ctl,
        "POST",
        "/v1/vms",
        Some(
            json!({"name": "stay", "image": "guest", "memory_mib": 64, "nics": [{"network": "lan"}]}),
        ),
    );
    assert_eq!(status, 202, "{vm}");
    let id = vm["resource"]["id"].as_str().unwrap().to_owned();
    wait_state(&ctl, &id, "running");
    let pid = HostdClient::new(&cluster.nodes[0].hostd.socket)
        .vm(&id)
        .unwrap()
        .unwrap()
        .pid;
    cluster.nodes[0].hostd.restart();
    let node = &cluster.nodes[0];
    let after = HostdClient::new(&node.hostd.socket)
        .vm(&id)
        .unwrap()
        .unwrap();
    assert_eq!(after.pid, pid, "the same VMM, adopted");
    assert_eq!(
        ok(&ctl, "GET", &format!("/v1/vms/{id}"), None)["state"],
        "running"
    );
    assert_eq!(ensures(node, &id), 1);
    assert_eq!(vmms(node), 1);

    // Its VMM dies: a VM without HA stays stopped, and the controller says why.
    let pid = i32::try_from(after.pid.unwrap()).unwrap();
    // SAFETY: kill(2) on the test's own VMM; no memory effects.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let stopped = wait_state(&ctl, &id, "stopped");
    assert!(
        stopped["reason"]
            .as_str()
            .unwrap()
            .contains("stopped by itself"),
        "{stopped}"
    );
    assert_eq!(stopped["power"], "stopped");
    assert_eq!(vmms(node), 0);
}

#[test]
fn data_volumes_attach_to_stopped_vms_grow_snapshot_and_roll_back() {
    if !kvm_available("data_volumes_attach_to_stopped_vms_grow_snapshot_and_roll_back") {
        return;
    }
    let (cluster, ctl) = ready_cluster("ctl-vol", 1);
    let node = &cluster.nodes[0];
    let (status, vm) = admin(
        &ctl,
        "POST",
        "/v1/vms",
        Some(json!({"name": "db", "image": "guest", "memory_mib": 64})),
    );
    assert_eq!(status, 202, "{vm}");
    let id = vm["resource"]["id"].as_str().unwrap().to_owned();
    wait_state(&ctl, &id, "running");

    let (status, body) = admin(
        &ctl,
        "POST",
        "/v1/volumes",
        Some(json!({"name": "data", "pool": "local", "size_bytes": 4 << 20})),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("pool")),
        "a node's own pool: {body}"
    );
    let made = ok(
        &ctl,
        "POST",
        "/v1/volumes",
        Some(json!({"name": "data", "pool": "shared", "size_bytes": 4 << 20})),
    );
    let pool_volume = made["volume"].as_str().unwrap().to_owned();
    assert!(StoragedClient::new(&node.storaged.socket)
        .volume("shared", &pool_volume)
        .unwrap()
        .is_some());
    let (status, body) = admin(
        &ctl,
        "POST",
        "/v1/volumes/data/attach",
        Some(json!({"vm": id})),
    );
    assert_eq!(status, 409, "a running VM: {body}");

    ok(
        &ctl,
        "POST",
        &format!("/v1/vms/{id}/stop"),
        Some(json!({"force": true})),
    );
    wait_state(&ctl, &id, "stopped");
    ok(
        &ctl,
        "POST",
        "/v1/volumes/data/attach",
        Some(json!({"vm": id})),
    );
    let (status, _) = admin(&ctl, "DELETE", "/v1/volumes/data", None);
    assert_eq!(status, 409, "attached");
    ok(
        &ctl,
        "POST",
        "/v1/volumes/data/grow",
        Some(json!({"size_bytes": 8 << 20})),
    );
    ok(
        &ctl,
        "POST",
        "/v1/volumes/data/snapshots",
        Some(json!({"name": "before"})),
    );
    let (status, _) = admin(
        &ctl,
        "POST",
        "/v1/volumes/data/snapshots/before/rollback",
        None,
    );
    assert_eq!(status, 204);
    ok(&ctl, "POST", &format!("/v1/vms/{id}/start"), None);
    let running = wait_state(&ctl, &id, "running");
    assert_eq!(running["generation"], 2, "the attach made a new generation");
    let held = HostdClient::new(&node.hostd.socket)
        .vm(&id)
        .unwrap()
        .unwrap();
    let disks: Vec<(&str, &str)> = held
        .spec
        .disks
        .iter()
        .map(|d| (d.id.as_str(), d.volume.as_str()))
        .collect();
    assert_eq!(
        disks,
        [
            ("root", format!("vm-{id}").as_str()),
            ("data", pool_volume.as_str())
        ]
    );
    assert_eq!(
        StoragedClient::new(&node.storaged.socket)
            .volume("shared", &pool_volume)
            .unwrap()
            .unwrap()
            .size_bytes,
        8 << 20
    );

    // Destroying the VM frees the volume, and keeps it.
    assert_eq!(admin(&ctl, "DELETE", &format!("/v1/vms/{id}"), None).0, 202);
    wait_for("the VM gone", TIMEOUT, || {
        (admin(&ctl, "GET", &format!("/v1/vms/{id}"), None).0 == 404).then_some(())
    });
    assert_eq!(ok(&ctl, "GET", "/v1/volumes/data", None)["vm"], Value::Null);
    assert!(StoragedClient::new(&node.storaged.socket)
        .volume("shared", &pool_volume)
        .unwrap()
        .is_some());
    assert_eq!(admin(&ctl, "DELETE", "/v1/volumes/data", None).0, 204);
    assert!(StoragedClient::new(&node.storaged.socket)
        .volume("shared", &pool_volume)
        .unwrap()
        .is_none());
}
