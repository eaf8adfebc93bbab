//! What the controller's tests (and its failover benchmark) share: calls to its API, a
//! cluster with its nodes joined, the `lan` network and the test guest's image, and the HA
//! cluster with the counting guest.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};
use triad_api::client::HostdClient;
use triad_api::http::{send, Endpoint};
use triad_tests::{guest_elf, wait_for, Cluster, Controller, Node};

pub const TIMEOUT: Duration = Duration::from_secs(90);

/// A call to the controller's API with `token`: its status and JSON answer.
pub fn call(
    ctl: &Controller,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let r = send(
        &Endpoint::Unix(ctl.daemon.socket.clone()),
        method,
        path,
        body.as_deref(),
        token,
        TIMEOUT,
    )
    .unwrap();
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

pub fn admin(ctl: &Controller, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(ctl, Some(&ctl.token()), method, path, body)
}

pub fn ok(ctl: &Controller, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = admin(ctl, method, path, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {answer}"
    );
    answer
}

/// Joins every node and waits until the controller reaches them all.
pub fn join_all(cluster: &Cluster, ctl: &Controller) {
    for node in &cluster.nodes {
        let (status, answer) = admin(
            ctl,
            "POST",
            "/v1/nodes",
            Some(
                json!({"name": node.name, "address": node.hostd_addr(), "token": node.hostd_token(),
                "data_address": node.addr(2)}),
            ),
        );
        assert_eq!(status, 201, "{answer}");
    }
    wait_for("every node connected", TIMEOUT, || {
        let nodes = ok(ctl, "GET", "/v1/nodes", None);
        let all = nodes.as_array()?;
        (all.len() == cluster.nodes.len() && all.iter().all(|n| n["connection"] == "connected"))
            .then_some(())
    });
}

/// `n` nodes joined to a controller on its embedded store, with `lan` and the `guest` image.
pub fn ready_cluster(name: &str, n: usize) -> (Cluster, Controller) {
    let cluster = Cluster::new(name, n);
    let ctl = cluster.start_controller(0, None);
    join_all(&cluster, &ctl);
    network_and_image(&cluster, &ctl);
    (cluster, ctl)
}

/// The VXLAN network `lan` on every node, and the test guest as image `guest` on the shared pool.
pub fn network_and_image(cluster: &Cluster, ctl: &Controller) {
    let (status, answer) = admin(
        ctl,
        "POST",
        "/v1/networks",
        Some(
            json!({"name": "lan", "l2": {"kind": "vxlan", "vni": 6262, "underlay": "data0"},
            "l3": {"cidr": "10.62.0.0/24", "gateway": "10.62.0.1"}}),
        ),
    );
    assert_eq!(status, 201, "{answer}");
    wait_for("lan on every node", TIMEOUT, || {
        let n = ok(ctl, "GET", "/v1/networks/lan", None);
        let nodes = n["nodes"].as_object()?;
        (nodes.len() == cluster.nodes.len() && nodes.values().all(|s| s == "ready")).then_some(())
    });
    let file = cluster.shared.join("guest-disk.raw");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..16].copy_from_slice(b"TRIAD-TEST-IMAGE");
    std::fs::write(&file, bytes).unwrap();
    import_image(cluster, ctl, "guest", "shared");
}

/// The test guest's disk (made by `network_and_image`) imported as image `name` into `pool`,
/// its operation succeeded.
pub fn import_image(cluster: &Cluster, ctl: &Controller, name: &str, pool: &str) {
    let file = cluster.shared.join("guest-disk.raw");
    let (status, answer) = admin(
        ctl,
        "POST",
        "/v1/images",
        Some(
            json!({"name": name, "pool": pool, "source": {"kind": "file", "path": file},
            "kernel": guest_elf(), "cmdline": "triad.blk=ro triad.net=dhcp"}),
        ),
    );
    assert_eq!(status, 202, "{answer}");
    let op = answer["operation"]["id"].as_str().unwrap().to_owned();
    wait_for(&format!("image {name} imported"), TIMEOUT, || {
        let image = ok(ctl, "GET", &format!("/v1/images/{name}"), None);
        assert_ne!(image["state"], "failed", "{image}");
        (image["state"] == "ready").then_some(())
    });
    assert_eq!(
        ok(ctl, "GET", &format!("/v1/operations/{op}"), None)["state"],
        "succeeded"
    );
}

pub fn wait_state(ctl: &Controller, id: &str, state: &str) -> Value {
    wait_for(&format!("VM {id} {state}"), TIMEOUT, || {
        let vm = ok(ctl, "GET", &format!("/v1/vms/{id}"), None);
        assert_ne!(vm["state"], "failed", "{vm}");
        (vm["state"] == state).then_some(vm)
    })
}

pub fn console(ctl: &Controller, id: &str) -> String {
    ok(ctl, "GET", &format!("/v1/vms/{id}/console"), None)["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn node_of<'a>(cluster: &'a Cluster, vm: &Value) -> &'a triad_tests::Node {
    let name = vm["node"].as_str().expect("placed");
    cluster.nodes.iter().find(|n| n.name == name).unwrap()
}

/// A counting VM made from the test guest (on the shared pool), placed in `group`.
pub fn create(ctl: &Controller, name: &str, ha: &str, group: &str) -> String {
    create_from(ctl, name, ha, "guest", &[group])
}

/// A VM made from `image` with the guest's counter on, in `groups`.
pub fn create_from(ctl: &Controller, name: &str, ha: &str, image: &str, groups: &[&str]) -> String {
    let (status, vm) = admin(
        ctl,
        "POST",
        "/v1/vms",
        Some(
            json!({"name": name, "image": image, "memory_mib": 64, "ha": ha,
            "nics": [{"network": "lan"}], "affinity_groups": groups,
            "cmdline": "triad.counter"}),
        ),
    );
    assert_eq!(status, 202, "{vm}");
    vm["resource"]["id"].as_str().unwrap().to_owned()
}

/// The values the guest's counter printed on its current node.
pub fn counted(ctl: &Controller, id: &str) -> Vec<u64> {
    counter_lines(&console(ctl, id))
}

/// The counter's values in a serial log's complete lines: the guest may be writing the last.
pub fn counter_lines(log: &str) -> Vec<u64> {
    let complete = log.rfind('\n').map_or("", |end| &log[..end]);
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("TRIAD-COUNTER "))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

pub fn vm(ctl: &Controller, id: &str) -> Value {
    ok(ctl, "GET", &format!("/v1/vms/{id}"), None)
}

pub fn liveness(ctl: &Controller, node: &str) -> String {
    ok(ctl, "GET", &format!("/v1/nodes/{node}"), None)["liveness"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The events of `resource` as `kind: message` lines.
pub fn events(ctl: &Controller, resource: &str) -> Vec<String> {
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
pub fn vmms_of(node: &Node, id: &str) -> usize {
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
pub fn ha_cluster(name: &str) -> (Cluster, Controller) {
    let (cluster, ctl) = ready_cluster(name, 3);
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

/// The counter as the VM's root volume holds it (little-endian at byte 0), on the shared pool.
pub fn stored_counter(cluster: &Cluster, vm: &Value) -> u64 {
    let volume = vm["disks"][0]["volume"].as_str().unwrap();
    let bytes = std::fs::read(cluster.shared.join(format!("{volume}.raw"))).unwrap();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

/// The counter values in `node`'s serial log of VM `id` (what it printed there, even after
/// the node died).
pub fn counted_on(node: &Node, id: &str) -> Vec<u64> {
    counter_lines(
        &std::fs::read_to_string(node.dir.join("hostd/vms").join(id).join("serial.log"))
            .unwrap_or_default(),
    )
}

/// Waits for an event of `resource` that `matches` (events are written just after the change
/// they tell of).
pub fn wait_event(ctl: &Controller, resource: &str, matches: impl Fn(&str) -> bool) {
    wait_for(&format!("the event of {resource}"), TIMEOUT, || {
        events(ctl, resource)
            .iter()
            .any(|e| matches(e))
            .then_some(())
    });
}
