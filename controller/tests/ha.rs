//! HA for real: the 3-node harness with heartbeats on the management and storage networks,
//! the test guest counting on its shared root disk, and the failures a cluster meets.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use triad_api::client::HostdClient;
use triad_tests::{kvm_available, wait_for, Cluster, Controller};

mod common;
use common::*;

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

fn node_action(ctl: &Controller, node: &str, action: &str) -> (u16, Value) {
    admin(ctl, "POST", &format!("/v1/nodes/{node}/{action}"), None)
}

fn enable_of(ctl: &Controller, node: &str) -> Value {
    ok(ctl, "GET", &format!("/v1/nodes/{node}"), None)["enable"].clone()
}

/// Maintenance: entering it moves the node's shared-storage VM to the one other node that
/// takes VMs (its counter going on from its disk) and stops its local-storage VM there; with
/// no node to take it, a VM is stopped and says why. Leaving it locks the node.
#[test]
fn maintenance_moves_shared_vms_off_stops_local_ones_and_exit_locks_the_node() {
    if !kvm_available("maintenance_moves_shared_vms_off_stops_local_ones_and_exit_locks_the_node") {
        return;
    }
    let (cluster, ctl) = ha_cluster("ha-maint");
    let [a, b, c] = [0, 1, 2].map(|i| cluster.nodes[i].name.clone());
    import_image(&cluster, &ctl, "guest-local", "local");
    // Both VMs on a: the other nodes are locked while they are placed.
    for n in [&b, &c] {
        assert_eq!(node_action(&ctl, n, "lock").0, 200);
    }
    let shared = create(&ctl, "shared", "never_stop", "together");
    let local = create_from(&ctl, "local", "never_stop", "guest-local", &[]);
    let before = wait_state(&ctl, &shared, "running");
    assert_eq!(wait_state(&ctl, &local, "running")["node"], a.as_str());
    assert_eq!(before["node"], a.as_str());
    assert_eq!(node_action(&ctl, &b, "unlock").0, 200);
    let counted_on_a = wait_for("the counter to count", TIMEOUT, || {
        let v = counted(&ctl, &shared);
        (v.len() >= 2).then_some(v)
    });

    let (status, entering) = node_action(&ctl, &a, "maintenance/enter");
    assert_eq!(status, 200, "{entering}");
    assert_eq!(entering["enable"], "locked", "{entering}");
    let (status, again) = node_action(&ctl, &a, "maintenance/enter");
    assert_eq!(status, 200, "entering twice is entering once: {again}");
    let (status, refused) = node_action(&ctl, &a, "unlock");
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("maintenance exit"),
        "{refused}"
    );
    wait_for("a in maintenance", TIMEOUT, || {
        (enable_of(&ctl, &a) == "maintenance").then_some(())
    });
    let moved = wait_state(&ctl, &shared, "running");
    assert_eq!(moved["node"], b.as_str(), "{moved}");
    assert!(moved["generation"].as_u64() > before["generation"].as_u64());
    let values = wait_for("the counter to go on on b", TIMEOUT, || {
        let v = counted(&ctl, &shared);
        (v.len() >= 2).then_some(v)
    });
    assert!(
        values[0] > *counted_on_a.last().unwrap(),
        "it goes on from what it counted on a: {counted_on_a:?} then {values:?}"
    );
    assert!(values.windows(2).all(|w| w[1] == w[0] + 1), "{values:?}");
    let stopped = vm(&ctl, &local);
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(stopped["power"], "stopped", "{stopped}");
    assert_eq!(stopped["node"], a.as_str(), "{stopped}");
    wait_event(&ctl, &format!("vm/{local}"), |e| {
        e.starts_with("stopping: node") && e.contains("local storage")
    });
    assert_eq!(vmms_of(&cluster.nodes[0], &shared), 0);
    assert_eq!(vmms_of(&cluster.nodes[0], &local), 0);
    let (status, refused) = admin(&ctl, "POST", &format!("/v1/vms/{local}/start"), None);
    assert_eq!(
        status, 409,
        "a VM is not started on a node in maintenance: {refused}"
    );
    wait_event(&ctl, &format!("node/{a}"), |e| {
        e.starts_with("maintenance: in maintenance")
    });

    let (status, left) = node_action(&ctl, &a, "maintenance/exit");
    assert_eq!(status, 200, "{left}");
    assert_eq!(left["enable"], "locked");
    let (status, refused) = node_action(&ctl, &a, "maintenance/exit");
    assert_eq!(status, 409, "{refused}");
    let (status, refused) = node_action(&ctl, &a, "maintenance/leave");
    assert_eq!(status, 404, "{refused}");
    let (status, refused) = node_action(&ctl, "nowhere", "maintenance/enter");
    assert_eq!(status, 404, "{refused}");

    // b empties with a and c locked: the shared VM has nowhere to go and is stopped.
    assert_eq!(node_action(&ctl, &b, "maintenance/enter").0, 200);
    wait_for("b in maintenance", TIMEOUT, || {
        (enable_of(&ctl, &b) == "maintenance").then_some(())
    });
    let nowhere = wait_state(&ctl, &shared, "stopped");
    assert_eq!(nowhere["power"], "stopped", "{nowhere}");
    assert!(nowhere["node"].is_null(), "{nowhere}");
    assert!(
        nowhere["reason"]
            .as_str()
            .unwrap()
            .contains("no other node can take it"),
        "{nowhere}"
    );
    wait_event(&ctl, &format!("vm/{shared}"), |e| {
        e.starts_with("stopped: no other node can take it (")
    });
    assert_eq!(vmms_of(&cluster.nodes[1], &shared), 0);

    // Back in service, the VMs start again when asked.
    assert_eq!(node_action(&ctl, &b, "maintenance/exit").0, 200);
    for n in [&a, &b, &c] {
        assert_eq!(node_action(&ctl, n, "unlock").0, 200);
        assert_eq!(enable_of(&ctl, n), "enabled");
    }
    ok(&ctl, "POST", &format!("/v1/vms/{shared}/start"), None);
    ok(&ctl, "POST", &format!("/v1/vms/{local}/start"), None);
    wait_state(&ctl, &shared, "running");
    assert_eq!(wait_state(&ctl, &local, "running")["node"], a.as_str());
}

/// Whether any node was ever declared dead (its events say so).
fn anybody_declared_dead(ctl: &Controller, cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .flat_map(|n| events(ctl, &format!("node/{}", n.name)))
        .filter(|e| e.starts_with("dead:"))
        .collect()
}

/// (d) The controller is killed: the VMs run on and the nodes, hearing each other, fence
/// nothing. A node that loses power meanwhile comes back holding its VMs stopped (nobody
/// may have restarted them elsewhere); the restarted controller starts the NeverStop one
/// again where it is, at the same generation, and keeps the one without HA stopped.
#[test]
fn d_a_killed_controller_stops_nothing_and_a_restarted_one_converges() {
    if !kvm_available("d_a_killed_controller_stops_nothing_and_a_restarted_one_converges") {
        return;
    }
    let (mut cluster, mut ctl) = ha_cluster("ha-ctl");
    let keep = create(&ctl, "keep", "never_stop", "together");
    let plain = create(&ctl, "plain", "none", "together");
    let running = wait_state(&ctl, &keep, "running");
    wait_state(&ctl, &plain, "running");
    let home = node_of(&cluster, &running).index;

    ctl.daemon.kill9();
    let before = counted_on(&cluster.nodes[home], &keep);
    std::thread::sleep(Duration::from_secs(3));
    let later = counted_on(&cluster.nodes[home], &keep);
    assert!(later.len() > before.len(), "the VM counts on: {later:?}");
    assert_eq!(vmms_of(&cluster.nodes[home], &keep), 1);
    assert_eq!(vmms_of(&cluster.nodes[home], &plain), 1);
    for n in &cluster.nodes {
        let peers = HostdClient::new(&n.hostd.socket).peers().unwrap();
        assert_eq!(peers.hears, 3, "{}: {peers:?}", n.name);
        assert!(peers.fenced.is_none(), "{}: {peers:?}", n.name);
    }

    cluster.nodes[home].kill_all();
    cluster.nodes[home].power_on();
    let hostd = HostdClient::new(&cluster.nodes[home].hostd.socket);
    let held = wait_for("the node back, holding its VMs", TIMEOUT, || {
        hostd.vm(&keep).ok().flatten()
    });
    assert_eq!(held.phase, triad_api::hostd::VmPhase::Stopped, "{held:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(vmms_of(&cluster.nodes[home], &keep), 0, "it waits");

    ctl.daemon.restart();
    wait_for("the node to run it again", TIMEOUT, || {
        (hostd.vm(&keep).ok()??.phase == triad_api::hostd::VmPhase::Running).then_some(())
    });
    let back = wait_state(&ctl, &keep, "running");
    assert_eq!(back["node"], running["node"], "{back}");
    assert_eq!(back["generation"], running["generation"], "{back}");
    assert_eq!(vmms_of(&cluster.nodes[home], &keep), 1);
    wait_state(&ctl, &plain, "stopped");
    wait_event(&ctl, &format!("vm/{plain}"), |e| {
        e.starts_with("stopped: it stopped by itself")
    });
    assert_eq!(vmms_of(&cluster.nodes[home], &plain), 0);
    let counted_after = wait_for("the counter to go on", TIMEOUT, || {
        let v = counted(&ctl, &keep);
        (v.last() > later.last()).then_some(v)
    });
    assert!(
        counted_after.windows(2).all(|w| w[1] > w[0]),
        "{counted_after:?}"
    );
    assert!(anybody_declared_dead(&ctl, &cluster).is_empty());
}

/// (g) Every node loses power at once: the controller, hearing nobody, decides nothing; then
/// it dies too. When all come back, the NeverStop VM starts by itself on its node at its
/// generation, and the VM without HA stays stopped.
#[test]
fn g_after_a_whole_cluster_power_loss_never_stop_vms_start_and_others_stay_stopped() {
    if !kvm_available(
        "g_after_a_whole_cluster_power_loss_never_stop_vms_start_and_others_stay_stopped",
    ) {
        return;
    }
    let (mut cluster, mut ctl) = ha_cluster("ha-all");
    let keep = create(&ctl, "keep", "never_stop", "together");
    let plain = create(&ctl, "plain", "none", "together");
    let running = wait_state(&ctl, &keep, "running");
    wait_state(&ctl, &plain, "running");

    for n in &mut cluster.nodes {
        n.kill_all();
    }
    std::thread::sleep(Duration::from_secs(4));
    let unseen = vm(&ctl, &keep);
    assert_eq!(unseen["node"], running["node"], "{unseen}");
    assert_eq!(unseen["generation"], running["generation"], "{unseen}");
    assert!(anybody_declared_dead(&ctl, &cluster).is_empty());
    ctl.daemon.kill9();
    for n in &mut cluster.nodes {
        n.power_on();
    }
    ctl.daemon.restart();

    let home = node_of(&cluster, &running);
    let hostd = HostdClient::new(&home.hostd.socket);
    wait_for("the node to run it again", TIMEOUT, || {
        (hostd.vm(&keep).ok()??.phase == triad_api::hostd::VmPhase::Running).then_some(())
    });
    let back = wait_state(&ctl, &keep, "running");
    assert_eq!(back["node"], running["node"], "{back}");
    assert_eq!(back["generation"], running["generation"], "{back}");
    assert_eq!(vmms_of(home, &keep), 1);
    wait_state(&ctl, &plain, "stopped");
    wait_event(&ctl, &format!("vm/{plain}"), |e| {
        e.starts_with("stopped: it stopped by itself")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(vmms_of(home, &plain), 0, "a VM without HA stays down");
    assert!(
        anybody_declared_dead(&ctl, &cluster).is_empty(),
        "{:?}",
        anybody_declared_dead(&ctl, &cluster)
    );
}

/// (h) Every core busy (the nodes share this machine's CPUs, so this loads all of them):
/// heartbeats still arrive, nobody is declared dead, and the VM stays where it is.
#[test]
fn h_cpu_stress_on_every_node_fails_nothing_over() {
    if !kvm_available("h_cpu_stress_on_every_node_fails_nothing_over") {
        return;
    }
    let (cluster, ctl) = ha_cluster("ha-stress");
    let keep = create(&ctl, "keep", "never_stop", "together");
    let running = wait_state(&ctl, &keep, "running");
    let stress = triad_tests::cluster::CpuStress::start(Duration::from_secs(20));
    assert!(stress.threads() >= 2, "{} threads", stress.threads());
    stress.join();
    let now = vm(&ctl, &keep);
    assert_eq!(now["state"], "running", "{now}");
    assert_eq!(now["node"], running["node"], "{now}");
    assert_eq!(now["generation"], running["generation"], "{now}");
    assert_eq!(vmms_of(node_of(&cluster, &now), &keep), 1);
    assert!(
        anybody_declared_dead(&ctl, &cluster).is_empty(),
        "{:?}",
        anybody_declared_dead(&ctl, &cluster)
    );
    for n in &cluster.nodes {
        let peers = HostdClient::new(&n.hostd.socket).peers().unwrap();
        assert!(peers.fenced.is_none(), "{}: {peers:?}", n.name);
    }
}

/// (a) on Ceph: the VM's root disk is an RBD image on a real Ceph cluster (on the storage
/// network). When its node loses power, the controller blocklists the node's Ceph clients of
/// that image through a live node's storaged (the fencing proof), and only then starts the VM
/// elsewhere, which takes the image's exclusive lock; its counter goes on after the old
/// copy's.
#[test]
fn ceph_a_dead_nodes_vm_runs_elsewhere_once_its_ceph_clients_are_blocklisted() {
    if !kvm_available("ceph_a_dead_nodes_vm_runs_elsewhere_once_its_ceph_clients_are_blocklisted") {
        return;
    }
    let (mut cluster, ctl) = ha_cluster("ha-ceph");
    let _ceph = cluster.start_ceph("rbd");
    wait_for("every node with the Ceph pool", TIMEOUT, || {
        let nodes = ok(&ctl, "GET", "/v1/nodes", None);
        nodes
            .as_array()?
            .iter()
            .all(|n| {
                n["connection"] == "connected"
                    && n["pools"]
                        .as_array()
                        .is_some_and(|p| p.contains(&json!("rbd")))
            })
            .then_some(())
    });
    import_image(&cluster, &ctl, "guest-rbd", "rbd");
    let keep = create_from(&ctl, "keep", "never_stop", "guest-rbd", &[]);
    let running = wait_state(&ctl, &keep, "running");
    let victim = node_of(&cluster, &running).index;
    let victim_name = cluster.nodes[victim].name.clone();
    wait_for("the counter to count", TIMEOUT, || {
        (counted(&ctl, &keep).len() >= 2).then_some(())
    });

    cluster.nodes[victim].kill_all();
    let died = Instant::now();
    let old = counted_on(&cluster.nodes[victim], &keep);
    let moved = wait_for("keep running on another node", TIMEOUT, || {
        let v = vm(&ctl, &keep);
        (v["state"] == "running" && v["node"] != victim_name.as_str()).then_some(v)
    });
    eprintln!(
        "failover on Ceph: {} ms from power loss to running on {}",
        died.elapsed().as_millis(),
        moved["node"]
    );
    wait_event(&ctl, &format!("vm/{keep}"), |e| {
        e.starts_with("recovering:") && e.contains("Ceph clients of rbd are blocklisted")
    });
    let values = wait_for("the counter to go on", TIMEOUT, || {
        let v = counted(&ctl, &keep);
        (v.len() >= 2).then_some(v)
    });
    assert!(
        values[0] > *old.last().unwrap(),
        "the new copy goes on after the old: {old:?} then {values:?}"
    );

    cluster.nodes[victim].power_on();
    let returned = HostdClient::new(&cluster.nodes[victim].hostd.socket);
    wait_for(
        "the old copy removed from the returned node",
        TIMEOUT,
        || returned.vm(&keep).unwrap().is_none().then_some(()),
    );
    assert_eq!(vmms_of(&cluster.nodes[victim], &keep), 0);
    assert_eq!(vmms_of(node_of(&cluster, &moved), &keep), 1);
}

/// Disarmed for a planned stop: every hostd's self-fencer stands down and a dead node's
/// NeverStop VM waits where it was, saying why; re-armed, it runs on another node.
#[test]
fn disarmed_ha_moves_nothing_and_rearmed_it_recovers_the_vm() {
    if !kvm_available("disarmed_ha_moves_nothing_and_rearmed_it_recovers_the_vm") {
        return;
    }
    let (mut cluster, ctl) = ha_cluster("ha-disarm");
    let keep = create(&ctl, "keep", "never_stop", "together");
    let running = wait_state(&ctl, &keep, "running");
    ok(
        &ctl,
        "PATCH",
        "/v1/settings",
        Some(json!({"ha_disarmed": true})),
    );
    wait_for("every self-fencer off", TIMEOUT, || {
        cluster
            .nodes
            .iter()
            .all(|n| {
                HostdClient::new(&n.hostd.socket)
                    .cluster()
                    .ok()
                    .flatten()
                    .is_some_and(|c| c.fence == triad_api::hostd::FenceMode::Off)
            })
            .then_some(())
    });
    let victim = node_of(&cluster, &running).index;
    let victim_name = cluster.nodes[victim].name.clone();
    cluster.nodes[victim].kill_all();
    wait_for("the node dead", TIMEOUT, || {
        (liveness(&ctl, &victim_name) == "dead").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let waiting = vm(&ctl, &keep);
    assert_eq!(waiting["node"], victim_name.as_str(), "{waiting}");
    assert_eq!(waiting["generation"], running["generation"], "{waiting}");
    assert_eq!(waiting["state"], "unknown", "{waiting}");
    assert!(
        waiting["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("disarmed"),
        "{waiting}"
    );

    ok(
        &ctl,
        "PATCH",
        "/v1/settings",
        Some(json!({"ha_disarmed": false})),
    );
    let moved = wait_for("keep running on another node", TIMEOUT, || {
        let v = vm(&ctl, &keep);
        (v["state"] == "running" && v["node"] != victim_name.as_str()).then_some(v)
    });
    assert!(moved["generation"].as_u64() > running["generation"].as_u64());
}
