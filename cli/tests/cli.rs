//! `triad` for real: the binary against a controller and a node of the harness, as an
//! operator types it.

use std::process::{Command, Output};

use triad_tests::{binary, guest_elf, kvm_available, wait_for, Cluster, Controller};

fn triad(ctl: &Controller, args: &[&str]) -> Output {
    Command::new(binary("triad"))
        .arg("--url")
        .arg(format!("unix:{}", ctl.daemon.socket.display()))
        .arg("--token")
        .arg(ctl.token())
        .args(args)
        .env_remove("TRIAD_URL")
        .env_remove("TRIAD_TOKEN")
        .env("TRIAD_CONFIG", "/nonexistent")
        .output()
        .expect("running triad")
}

fn ok(ctl: &Controller, args: &[&str]) -> String {
    let out = triad(ctl, args);
    assert!(
        out.status.success(),
        "triad {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(ctl: &Controller, args: &[&str]) -> String {
    let out = triad(ctl, args);
    assert_eq!(out.status.code(), Some(1), "triad {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.starts_with("triad: error: "), "{err}");
    err
}

#[test]
fn an_operator_runs_a_vm_from_the_command_line_and_sees_the_node_without_the_controller() {
    if !kvm_available(
        "an_operator_runs_a_vm_from_the_command_line_and_sees_the_node_without_the_controller",
    ) {
        return;
    }
    let cluster = Cluster::new("cli", 1);
    let mut ctl = cluster.start_controller(0, None);
    let node = &cluster.nodes[0];
    ok(
        &ctl,
        &[
            "node",
            "join",
            &node.name,
            "--address",
            &node.hostd_addr(),
            "--node-token",
            &node.hostd_token(),
        ],
    );
    wait_for(
        "the node connected",
        std::time::Duration::from_secs(30),
        || {
            ok(&ctl, &["node", "list"])
                .contains("connected")
                .then_some(())
        },
    );
    ok(
        &ctl,
        &[
            "net",
            "create",
            "lan",
            "--novlan",
            "--cidr",
            "10.63.0.0/24",
            "--gateway",
            "10.63.0.1",
        ],
    );
    let file = cluster.shared.join("disk.raw");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..16].copy_from_slice(b"TRIAD-TEST-IMAGE");
    std::fs::write(&file, bytes).unwrap();
    let imported = ok(
        &ctl,
        &[
            "image",
            "import",
            "guest",
            "--pool",
            "shared",
            "--file",
            file.to_str().unwrap(),
            "--kernel",
            guest_elf().to_str().unwrap(),
            "--cmdline",
            "triad.blk=ro triad.net=dhcp",
        ],
    );
    assert!(imported.contains("image guest: ready"), "{imported}");
    wait_for(
        "lan on the node",
        std::time::Duration::from_secs(30),
        || ok(&ctl, &["net", "list"]).contains("1/1").then_some(()),
    );

    let made = ok(
        &ctl,
        &[
            "vm",
            "create",
            "web",
            "--image",
            "guest",
            "--memory-mib",
            "64",
            "--net",
            "lan=10.63.0.50",
            "--wait",
        ],
    );
    assert!(made.contains("running on"), "{made}");
    let list = ok(&ctl, &["vm", "list"]);
    assert!(list.lines().next().unwrap().starts_with("ID "), "{list}");
    assert!(
        list.contains("web") && list.contains("running") && list.contains("10.63.0.50"),
        "{list}"
    );
    let why = ok(&ctl, &["vm", "why", "web"]);
    assert!(why.contains("chosen"), "{why}");
    let console = wait_for(
        "the guest's network",
        std::time::Duration::from_secs(30),
        || {
            let text = ok(&ctl, &["vm", "console", "web"]);
            text.contains("TRIAD-NET-READY").then_some(text)
        },
    );
    assert!(console.contains("TRIAD-NET-IP 10.63.0.50/24"), "{console}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&ctl, &["--json", "vm", "show", "web"])).unwrap();
    assert_eq!(json["state"], "running");
    let events = ok(&ctl, &["event", "list", "--resource", "vm/"]);
    assert!(
        events.contains("placed") && events.contains("running"),
        "{events}"
    );

    // Mistakes are named, and change nothing.
    let err = refused(&ctl, &["vm", "create", "bad", "--image", "nope"]);
    assert!(err.contains("422") && err.contains("image"), "{err}");
    let err = refused(&ctl, &["net", "create", "x", "--vxlan", "5"]);
    assert!(err.contains("--underlay"), "{err}");
    let err = refused(
        &ctl,
        &[
            "vm",
            "create",
            "bad",
            "--image",
            "guest",
            "--net",
            "lan=10.63.0.50",
        ],
    );
    assert!(err.contains("409") && err.contains("in use"), "{err}");
    assert_eq!(ok(&ctl, &["vm", "list"]).lines().count(), 2, "only web");
    let wrong = Command::new(binary("triad"))
        .args([
            "--url",
            &format!("unix:{}", ctl.daemon.socket.display()),
            "--token",
            "wrong",
            "vm",
            "list",
        ])
        .env("TRIAD_CONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("the token is not known"));

    // The controller gone, the node still shows its VM from its own sockets.
    ctl.daemon.kill9();
    let err = refused(&ctl, &["vm", "list"]);
    assert!(err.contains("does not answer"), "{err}");
    let config = node.dir.join("triad-hostd.json");
    let diag = ok(
        &ctl,
        &["node", "diag", "--config", config.to_str().unwrap()],
    );
    assert!(diag.contains("web") && diag.contains("running"), "{diag}");
    ctl.daemon.restart();

    // Maintenance on the only node: web has nowhere to go, so it is stopped.
    let node_name = node.name.as_str();
    let entering = ok(&ctl, &["node", "maintenance", "enter", node_name]);
    assert!(entering.contains("maintenance"), "{entering}");
    wait_for(
        "the node in maintenance",
        std::time::Duration::from_secs(30),
        || {
            let node: serde_json::Value =
                serde_json::from_str(&ok(&ctl, &["--json", "node", "show", node_name])).unwrap();
            (node["enable"] == "maintenance").then_some(())
        },
    );
    // It left the node; the scheduler then finds no other for it.
    let web = wait_for("web stopped", std::time::Duration::from_secs(30), || {
        let web = ok(&ctl, &["vm", "show", "web"]);
        web.contains("stopped").then_some(web)
    });
    assert!(web.contains("no other node can take it"), "{web}");
    let err = refused(&ctl, &["node", "unlock", node_name]);
    assert!(
        err.contains("409") && err.contains("maintenance exit"),
        "{err}"
    );
    let left = ok(&ctl, &["node", "maintenance", "exit", node_name]);
    assert!(left.contains("locked"), "{left}");
    let err = refused(&ctl, &["node", "maintenance", "exit", node_name]);
    assert!(err.contains("not in maintenance"), "{err}");
    let usage = triad(&ctl, &["node", "maintenance", "leave", node_name]);
    let err = String::from_utf8_lossy(&usage.stderr);
    assert_eq!(usage.status.code(), Some(2), "{err}");
    assert!(err.contains("enter") && err.contains("exit"), "{err}");
    ok(&ctl, &["node", "unlock", node_name]);
    let started = ok(&ctl, &["vm", "start", "web", "--wait"]);
    assert!(started.contains("running"), "{started}");

    let stopped = ok(&ctl, &["vm", "stop", "web", "--force", "--wait"]);
    assert!(stopped.contains("stopped"), "{stopped}");
    ok(&ctl, &["vm", "destroy", "web", "--wait"]);
    assert_eq!(
        ok(&ctl, &["vm", "list"]).lines().count(),
        1,
        "only the header"
    );
}
