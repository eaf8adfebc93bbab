//! HA for real: the 3-node harness with heartbeats on the management and storage networks,
//! the test guest counting on its shared root disk, and the failures a cluster meets.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use triad_api::client::HostdClient;
use triad_tests::{kvm_available, wait_for, Cluster, Controller, Node};

mod common;
use common::*;

/// A VM made from the test guest with `cmdline` appended, placed in `group`.
fn create(ctl: &Controller, name: &str, ha: &str, group: &str) -> String {
    let (status, vm) = admin(
        ctl,
        "POST",
        "/v1/vms",
        Some(
            json!({"name": name, "image": "guest", "memory_mib": 64, "ha": ha,
            "nics": [{"network": "lan"}], "affinity_groups": [group],
            "cmdline": "triad.counter"}),
        ),
    );
    assert_eq!(status, 202, "{vm}");
    vm["resource"]["id"].as_str().unwrap().to_owned()
}

/// The values the guest's counter printed on its current node.
fn counted(ctl: &Controller, id: &str) -> Vec<u64> {
    console(ctl, id)
        .lines()
        .filter_map(|l| l.strip_prefix("TRIAD-COUNTER "))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn vm(ctl: &Controller, id: &str) -> Value {
    ok(ctl, "GET", &format!("/v1/vms/{id}"), None)
}

fn liveness(ctl: &Controller, node: &str) -> String {
    ok(ctl, "GET", &format!("/v1/nodes/{node}"), None)["liveness"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The events of `resource` as `kind: message` lines.
fn events(ctl: &Controller, resource: &str) -> Vec<String> {
    ok(ctl, "GET", &format!("/v1/events?resource={resource}"), None)
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["kind"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// VMM processes of VM `id` on `node`.
fn vmms_of(node: &Node, id: &str) -> usize {
    triad_tests::cluster::processes_under(&node.dir.join("hostd/vms").join(id))
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--api-sock"))
        })
        .count()
}

/// A cluster with its controller, nodes joined, `lan`, the guest image and a hard affinity
/// group `together`, so that the test's VMs share a node.
fn ha_cluster(name: &str) -> (Cluster, Controller) {
    let cluster = Cluster::new(name, 3);
    let ctl = cluster.start_controller(0, None);
    join_all(&cluster, &ctl);
    network_and_image(&cluster, &ctl);
    ok(
        &ctl,
        "POST",
        "/v1/affinity-groups",
        Some(json!({"name": "together", "rule": {"kind": "vm_affinity"}, "strength": "hard"})),
    );
    wait_for("every node alive with its peers heard", TIMEOUT, || {
        cluster
            .nodes
            .iter()
            .all(|n| {
                HostdClient::new(&n.hostd.socket)
                    .peers()
                    .is_ok_and(|p| p.hears == 3)
            })
            .then_some(())
    });
    (cluster, ctl)
}

/// (a) Power loss: every process of the NeverStop VM's node is killed. The VM runs on
/// another node within seconds, its counter going on from what its disk held; the VM
/// without HA stays down. When the node comes back, it runs neither old copy.
#[test]
fn a_dead_nodes_never_stop_vm_runs_elsewhere_and_the_returning_node_runs_no_old_copy() {
    if !kvm_available(
        "a_dead_nodes_never_stop_vm_runs_elsewhere_and_the_returning_node_runs_no_old_copy",
    ) {
        return;
    }
    let (mut cluster, ctl) = ha_cluster("ha-power");
    let keep = create(&ctl, "keep", "never_stop", "together");
    let plain = create(&ctl, "plain", "none", "together");
    let running = wait_state(&ctl, &keep, "running");
    wait_state(&ctl, &plain, "running");
    let victim = node_of(&cluster, &running).index;
    let victim_name = cluster.nodes[victim].name.clone();
    wait_for("the counter to count", TIMEOUT, || {
        (counted(&ctl, &keep).len() >= 3).then_some(())
    });

    cluster.nodes[victim].kill_all();
    let died = Instant::now();
    let on_disk = stored_counter(&cluster, &running);
    let moved = wait_for("keep running on another node", TIMEOUT, || {
        let v = vm(&ctl, &keep);
        (v["state"] == "running" && v["node"] != victim_name.as_str()).then_some(v)
    });
    eprintln!(
        "failover: {} ms from power loss to running on {}",
        died.elapsed().as_millis(),
        moved["node"]
    );
    assert!(moved["generation"].as_u64() > running["generation"].as_u64());
    assert_eq!(liveness(&ctl, &victim_name), "dead");
    let node_events = events(&ctl, &format!("node/{victim_name}"));
    assert!(
        node_events
            .iter()
            .any(|e| e.starts_with("dead: 2 of its 3")),
        "{node_events:?}"
    );
    let vm_events = events(&ctl, &format!("vm/{keep}"));
    assert!(
        vm_events
            .iter()
            .any(|e| e.starts_with("recovering:") && e.contains("storage heartbeat")),
        "{vm_events:?}"
    );

    let values = wait_for("the counter to go on", TIMEOUT, || {
        let v = counted(&ctl, &keep);
        (v.len() >= 3).then_some(v)
    });
    assert_eq!(values[0], on_disk + 1, "it goes on from what its disk held");
    assert!(values.windows(2).all(|w| w[1] == w[0] + 1), "{values:?}");

    let down = wait_state(&ctl, &plain, "stopped");
    assert_eq!(down["node"], victim_name.as_str(), "{down}");
    assert!(
        down["reason"].as_str().unwrap().contains("HA level none"),
        "{down}"
    );

    cluster.nodes[victim].power_on();
    wait_for("the node alive again", TIMEOUT, || {
        (liveness(&ctl, &victim_name) == "alive").then_some(())
    });
    let returned = &cluster.nodes[victim];
    wait_for(
        "the old copy removed from the returned node",
        TIMEOUT,
        || {
            HostdClient::new(&returned.hostd.socket)
                .vm(&keep)
                .unwrap()
                .is_none()
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        vmms_of(returned, &keep),
        0,
        "the returned node runs no old copy"
    );
    assert_eq!(vmms_of(returned, &plain), 0, "a VM without HA stays down");
    assert_eq!(vm(&ctl, &plain)["state"], "stopped");
    let moved_to = node_of(&cluster, &moved);
    assert_eq!(
        vmms_of(moved_to, &keep),
        1,
        "one copy, where the store says"
    );
    let after = counted(&ctl, &keep);
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");
}

/// The counter as the VM's root volume holds it (little-endian at byte 0), on the shared pool.
fn stored_counter(cluster: &Cluster, vm: &Value) -> u64 {
    let volume = vm["disks"][0]["volume"].as_str().unwrap();
    let bytes = std::fs::read(cluster.shared.join(format!("{volume}.raw"))).unwrap();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

/// The counter values in `node`'s serial log of VM `id` (what it printed there, even after
/// the node died).
fn counted_on(node: &Node, id: &str) -> Vec<u64> {
    std::fs::read_to_string(node.dir.join("hostd/vms").join(id).join("serial.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("TRIAD-COUNTER "))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// (b) The node is cut off its management and storage networks, under policy Force: its
/// self-fencer kills its copy before the majority restarts the VM elsewhere, so the two
/// never write at once; when the links come back the old copy is removed.
#[test]
fn an_isolated_node_fences_itself_under_force_and_its_vm_runs_elsewhere() {
    if !kvm_available("an_isolated_node_fences_itself_under_force_and_its_vm_runs_elsewhere") {
        return;
    }
    let (cluster, ctl) = ha_cluster("ha-cut");
    ok(
        &ctl,
        "PATCH",
        "/v1/settings",
        Some(json!({"ha_policy": "force"})),
    );
    let keep = create(&ctl, "keep", "never_stop", "together");
    let running = wait_state(&ctl, &keep, "running");
    let victim = node_of(&cluster, &running);
    let victim_name = victim.name.clone();
    wait_for("the counter to count", TIMEOUT, || {
        (counted(&ctl, &keep).len() >= 3).then_some(())
    });
    wait_for("the node to be told policy Force", TIMEOUT, || {
        HostdClient::new(&victim.hostd.socket)
            .cluster()
            .ok()
            .flatten()
            .filter(|c| c.fence == triad_api::hostd::FenceMode::Force)
    });

    victim.set_link(0, false);
    victim.set_link(1, false);
    let moved = wait_for("keep running on another node", TIMEOUT, || {
        let v = vm(&ctl, &keep);
        (v["state"] == "running" && v["node"] != victim_name.as_str()).then_some(v)
    });
    let hostd = HostdClient::new(&victim.hostd.socket);
    assert_eq!(vmms_of(victim, &keep), 0, "the isolated copy is fenced");
    let fenced = hostd.events(0).unwrap();
    assert!(
        fenced
            .iter()
            .any(|e| e.kind == triad_api::hostd::HostEventKind::VmFenced
                && e.vm.as_deref() == Some(keep.as_str())),
        "{fenced:?}"
    );
    assert!(hostd.peers().unwrap().fenced.is_some());
    let new_values = wait_for("the counter to go on", TIMEOUT, || {
        let v = counted(&ctl, &keep);
        (v.len() >= 3).then_some(v)
    });
    let old_values = counted_on(victim, &keep);
    let (last_old, first_new) = (*old_values.last().unwrap(), new_values[0]);
    assert!(
        first_new == last_old + 1 || first_new == last_old + 2,
        "the new copy went on from {first_new} after the old one's {last_old}"
    );

    victim.set_link(0, true);
    victim.set_link(1, true);
    wait_for("the node alive again", TIMEOUT, || {
        (liveness(&ctl, &victim_name) == "alive").then_some(())
    });
    wait_for("the old copy removed", TIMEOUT, || {
        hostd.vm(&keep).unwrap().is_none().then_some(())
    });
    assert_eq!(vmms_of(node_of(&cluster, &moved), &keep), 1);
}

/// (c) Only the VM data network is cut: heartbeats go on over management and storage, so
/// the node stays alive and nothing moves.
#[test]
fn a_cut_data_network_alone_moves_nothing() {
    if !kvm_available("a_cut_data_network_alone_moves_nothing") {
        return;
    }
    let (cluster, ctl) = ha_cluster("ha-data");
    let keep = create(&ctl, "keep", "never_stop", "together");
    let running = wait_state(&ctl, &keep, "running");
    let victim = node_of(&cluster, &running);
    let before = events(&ctl, &format!("node/{}", victim.name)).len();
    victim.set_link(2, false);
    // Three times the longest a failover waits.
    std::thread::sleep(Duration::from_secs(6));
    let now = vm(&ctl, &keep);
    assert_eq!(now["state"], "running", "{now}");
    assert_eq!(now["node"], running["node"]);
    assert_eq!(now["generation"], running["generation"]);
    for n in &cluster.nodes {
        assert_eq!(liveness(&ctl, &n.name), "alive", "{}", n.name);
    }
    let after = events(&ctl, &format!("node/{}", victim.name));
    assert_eq!(after.len(), before, "no suspicion: {after:?}");
    victim.set_link(2, true);
}

/// (e) Two of three nodes lose power: no majority is left, so nothing is decided and no VM
/// moves. When they return, the NeverStop VM runs again on its own node.
#[test]
fn with_two_of_three_nodes_down_nothing_moves_and_their_return_restarts_the_vm() {
    if !kvm_available("with_two_of_three_nodes_down_nothing_moves_and_their_return_restarts_the_vm")
    {
        return;
    }
    let (mut cluster, ctl) = ha_cluster("ha-two");
    let keep = create(&ctl, "keep", "never_stop", "together");
    let running = wait_state(&ctl, &keep, "running");
    let home = node_of(&cluster, &running).index;
    let other = (0..3).find(|i| *i != home).unwrap();
    cluster.nodes[home].kill_all();
    cluster.nodes[other].kill_all();
    std::thread::sleep(Duration::from_secs(6));
    let now = vm(&ctl, &keep);
    assert_eq!(now["node"], running["node"], "{now}");
    assert_eq!(now["generation"], running["generation"], "{now}");
    for n in &cluster.nodes {
        assert_ne!(liveness(&ctl, &n.name), "dead", "{}", n.name);
    }
    cluster.nodes[home].power_on();
    cluster.nodes[other].power_on();
    let back = wait_state(&ctl, &keep, "running");
    assert_eq!(back["node"], running["node"], "{back}");
    assert_eq!(vmms_of(&cluster.nodes[home], &keep), 1);
}
