//! What the controller's tests share: calls to its API, and a cluster with its nodes joined,
//! the `lan` network and the test guest's image.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};
use triad_api::http::{send, Endpoint};
use triad_tests::{guest_elf, wait_for, Cluster, Controller};

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
    let (status, answer) = admin(
        ctl,
        "POST",
        "/v1/images",
        Some(
            json!({"name": "guest", "pool": "shared", "source": {"kind": "file", "path": file},
            "kernel": guest_elf(), "cmdline": "triad.blk=ro triad.net=dhcp"}),
        ),
    );
    assert_eq!(status, 202, "{answer}");
    let op = answer["operation"]["id"].as_str().unwrap().to_owned();
    wait_for("the image imported", TIMEOUT, || {
        let image = ok(ctl, "GET", "/v1/images/guest", None);
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
