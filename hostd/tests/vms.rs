//! hostd for real: nodes of the cluster harness (network namespaces running triad-netd,
//! triad-storaged and triad-hostd), the test guest under triad-vmm, and what the other
//! daemons and the kernel say afterwards.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use triad_api::client::{HostdClient, NetdClient, StoragedClient};
use triad_api::hostd::{HostEventKind, PowerAction, StateRequest, Vm, VmPhase, VmSpec};
use triad_api::http::request;
use triad_api::storage::{ImageRequest, ImageSource, ImageState};
use triad_tests::{guest_elf, kvm_available, wait_for, wait_for_serial, Cluster, Node, Ns};

const TIMEOUT: Duration = Duration::from_secs(60);
const VM_A: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a01";
const VM_B: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a02";

fn hostd(node: &Node) -> HostdClient {
    HostdClient::new(&node.hostd.socket)
}

fn netd(node: &Node) -> NetdClient {
    NetdClient::new(&node.netd.socket)
}

fn storaged(node: &Node) -> StoragedClient {
    StoragedClient::new(&node.storaged.socket)
}

/// A raw call to hostd: its status and JSON answer.
fn call(node: &Node, method: &str, path: &str, body: &str) -> (u16, Value) {
    let r = request(&node.hostd.socket, method, path, Some(body), TIMEOUT).unwrap();
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

/// The network `lan` (VXLAN between every node, 10.60.0.0/24) on each node.
fn lan(cluster: &Cluster) {
    let specs = cluster.vxlan_spec("lan", 6060, "10.60.0.0/24", "10.60.0.1");
    for (node, spec) in cluster.nodes.iter().zip(specs) {
        netd(node)
            .put_network("lan", &serde_json::from_value(spec).unwrap())
            .unwrap();
    }
}

/// Imports a 1 MiB raw image into the shared pool (through node 0's storaged).
fn image(cluster: &Cluster, id: &str) {
    let file = cluster.shared.join(format!("{id}.src"));
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..16].copy_from_slice(b"TRIAD-TEST-IMAGE");
    std::fs::write(&file, bytes).unwrap();
    let s = storaged(&cluster.nodes[0]);
    s.import_image(
        "shared",
        &ImageRequest {
            id: id.into(),
            name: id.into(),
            source: ImageSource::File { path: file },
            sha256: None,
        },
    )
    .unwrap();
    wait_for("the image to import", TIMEOUT, || {
        let image = s.image("shared", id).unwrap()?;
        assert_ne!(image.state, ImageState::Failed, "{:?}", image.error);
        (image.state == ImageState::Ready).then_some(())
    });
}

/// A VM of the test guest; `root` clones the image into the shared pool, `nic` puts it on
/// `lan` with that address (the guest leases it by DHCP).
fn spec(name: &str, cmdline: &str, root: Option<&str>, nic: Option<(&str, &str)>) -> VmSpec {
    let mut disks = Vec::new();
    if let Some(volume) = root {
        disks.push(json!({
            "id": "root", "pool": "shared", "volume": volume,
            "source": {"kind": "image", "id": "img"}, "size_bytes": 4 << 20,
        }));
    }
    let nics: Vec<Value> = nic
        .into_iter()
        .map(|(mac, ip)| json!({"id": "eth0", "network": "lan", "mac": mac, "ip": ip}))
        .collect();
    serde_json::from_value(json!({
        "name": name,
        "generation": 1,
        "vcpus": 1,
        "memory_mib": 64,
        "boot": {"kernel": guest_elf(), "cmdline": cmdline},
        "disks": disks,
        "nics": nics,
    }))
    .unwrap()
}

fn phase_of(node: &Node, uuid: &str) -> Option<Vm> {
    hostd(node).vm(uuid).unwrap()
}

fn events_of(node: &Node, uuid: &str, kind: HostEventKind) -> usize {
    hostd(node)
        .events(0)
        .unwrap()
        .iter()
        .filter(|e| e.vm.as_deref() == Some(uuid) && e.kind == kind)
        .count()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn kill9(pid: u32) {
    // SAFETY: kill(2) on a VMM of this test; no memory effects.
    unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
}

/// Ensure → the guest runs on a root volume cloned from an image, leases its address from
/// netd's DHCP and answers a VM on the other node over VXLAN; a repeated ensure changes
/// nothing; an older generation is refused; hostd killed and restarted adopts the VMM; diag
/// shows it all; remove leaves no volume, port, TAP or process.
#[test]
fn a_vm_made_by_ensure_runs_survives_hostd_and_goes_without_a_trace() {
    if !kvm_available("a_vm_made_by_ensure_runs_survives_hostd_and_goes_without_a_trace") {
        return;
    }
    let mut cluster = Cluster::new("hd-vm", 2);
    lan(&cluster);
    image(&cluster, "img");
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);

    let a = spec(
        "web-1",
        "triad.blk=ro triad.net=dhcp",
        Some("vol-a"),
        Some(("52:54:00:60:00:0a", "10.60.0.10")),
    );
    let vm = hostd(n1).ensure(VM_A, &a).unwrap();
    assert_eq!(vm.phase, VmPhase::Running);
    let pid = vm.pid.expect("a running VM has a VMM");
    let serial = wait_for_serial(&vm.serial_log, "TRIAD-NET-READY", 1, TIMEOUT);
    assert!(serial.contains("TRIAD-NET-IP 10.60.0.10/24\n"), "{serial}");
    assert!(serial.contains("TRIAD-BLK-OK"), "{serial}");
    assert!(vm.disks[0].made_here);
    let volume = storaged(n1).volume("shared", "vol-a").unwrap().unwrap();
    assert_eq!(volume.size_bytes, 4 << 20);
    let port = netd(n1).port(&vm.nics[0].port).unwrap().unwrap();
    assert_eq!(port.spec.hostname.as_deref(), Some("web-1"));
    assert_eq!(
        port.spec.metadata.and_then(|m| m.instance_id).as_deref(),
        Some(VM_A)
    );

    // Another node's VM (a namespace on node 2's bridge of `lan`) pings it over VXLAN.
    let bridge = netd(n2).network("lan").unwrap().unwrap().bridge;
    let other = Ns::new("hd-vm-other");
    n2.ns
        .wire("vmb0", None, &other, "eth0", Some("10.60.0.21/24"));
    n2.ns.ip(&["link", "set", "vmb0", "master", &bridge]);
    assert!(
        triad_tests::ping(&other, "10.60.0.10", 3),
        "the guest answers"
    );

    // The same ensure again: a no-op.
    let again = hostd(n1).ensure(VM_A, &a).unwrap();
    assert_eq!(again.pid, Some(pid));
    assert_eq!(events_of(n1, VM_A, HostEventKind::VmEnsured), 1);

    // The same generation with another spec, and an older one: refused, and logged.
    let mut changed = a.clone();
    changed.vcpus = 2;
    let (status, body) = call(
        n1,
        "PUT",
        &format!("/vms/{VM_A}"),
        &serde_json::to_string(&changed).unwrap(),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (409, Some("generation")),
        "{body}"
    );
    let mut old = a.clone();
    old.generation = 0;
    let (status, body) = call(
        n1,
        "PUT",
        &format!("/vms/{VM_A}"),
        &serde_json::to_string(&old).unwrap(),
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (409, Some("generation")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("older"), "{body}");
    assert_eq!(events_of(n1, VM_A, HostEventKind::EnsureRefused), 2);
    // A newer generation that changes what may change: the HA level.
    let mut newer = a.clone();
    newer.generation = 2;
    newer.ha = triad_api::hostd::HaLevel::NeverStop;
    let vm = hostd(n1).ensure(VM_A, &newer).unwrap();
    assert_eq!((vm.spec.generation, vm.pid), (2, Some(pid)));

    // kill -9 hostd: the VM runs on, and the next hostd adopts it.
    cluster.nodes[0].hostd.restart();
    let n1 = &cluster.nodes[0];
    assert!(alive(pid), "the VMM outlived hostd");
    let vm = phase_of(n1, VM_A).unwrap();
    assert_eq!((vm.phase, vm.pid), (VmPhase::Running, Some(pid)));
    assert_eq!(events_of(n1, VM_A, HostEventKind::VmAdopted), 1);
    assert!(
        vm.counters.is_some(),
        "GET /vms/UUID has the VMM's counters"
    );
    assert!(triad_tests::ping(&other, "10.60.0.10", 2), "still answers");
    // Supervision holds for an adopted VMM too: killed, it comes back (NeverStop).
    kill9(pid);
    let vm = wait_for("the adopted VM to come back", TIMEOUT, || {
        let vm = phase_of(n1, VM_A)?;
        (vm.phase == VmPhase::Running && vm.pid.is_some_and(|p| p != pid)).then_some(vm)
    });
    assert_eq!(vm.restarts, 1);

    // diag, from the local sockets only.
    let config = n1.dir.join("triad-hostd.json");
    let out = std::process::Command::new(triad_tests::binary("triad-hostd"))
        .args(["diag", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    for daemon in ["hostd", "netd", "storaged", "pool shared"] {
        assert_eq!(d["daemons"][daemon], "ok", "{daemon}: {}", d["daemons"]);
    }
    assert_eq!(d["vms"][0]["uuid"], VM_A);
    assert!(d["daemons"][format!("vmm {VM_A}")]
        .as_str()
        .unwrap()
        .starts_with("ok"));
    assert!(d["net"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == vm.nics[0].port));
    assert!(d["net"]["leases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["ip"] == "10.60.0.10"));
    assert!(d["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["id"] == "vol-a" && v["vm"] == VM_A));
    let text = std::process::Command::new(triad_tests::binary("triad-hostd"))
        .args(["diag", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for section in [
        "DAEMONS", "VMS", "TAPS", "LEASES", "VOLUMES", "EVENTS", VM_A,
    ] {
        assert!(text.contains(section), "{section} in:\n{text}");
    }

    // Remove: no volume, port, TAP or VMM is left.
    let pid = vm.pid.unwrap();
    let tap = vm.nics[0].tap.clone();
    hostd(n1).remove(VM_A).unwrap();
    hostd(n1).remove(VM_A).unwrap();
    assert!(!alive(pid));
    assert!(phase_of(n1, VM_A).is_none());
    assert!(storaged(n1).volume("shared", "vol-a").unwrap().is_none());
    assert!(netd(n1).port(&vm.nics[0].port).unwrap().is_none());
    assert!(n1.ns.link(&tap).is_none(), "TAP {tap} is gone");
    assert!(!n1.dir.join("hostd/vms").join(VM_A).exists());
}

/// A NeverStop VM whose VMM is killed comes back on the same node; one that is stopped by
/// request stays stopped; a VM without HA whose VMM exits stays stopped.
#[test]
fn supervision_restarts_never_stop_and_leaves_stopped_alone() {
    if !kvm_available("supervision_restarts_never_stop_and_leaves_stopped_alone") {
        return;
    }
    let cluster = Cluster::new("hd-sup", 1);
    let n = &cluster.nodes[0];
    let mut ha = spec("ha-1", "", None, None);
    ha.ha = triad_api::hostd::HaLevel::NeverStop;
    let vm = hostd(n).ensure(VM_A, &ha).unwrap();
    let first = vm.pid.unwrap();
    wait_for_serial(&vm.serial_log, "TRIAD-GUEST-READY", 1, TIMEOUT);
    kill9(first);
    let vm = wait_for("the NeverStop VM to come back", TIMEOUT, || {
        let vm = phase_of(n, VM_A)?;
        (vm.phase == VmPhase::Running && vm.pid.is_some_and(|p| p != first)).then_some(vm)
    });
    assert_eq!(vm.restarts, 1);
    assert!(
        vm.last_exit.as_deref().unwrap_or("").contains("signal"),
        "{:?}",
        vm.last_exit
    );
    wait_for("the restart's event", TIMEOUT, || {
        (events_of(n, VM_A, HostEventKind::VmRestarted) == 1).then_some(())
    });
    // The new boot has the serial log; the last one's is kept beside it.
    wait_for_serial(&vm.serial_log, "TRIAD-GUEST-READY", 1, TIMEOUT);
    wait_for_serial(
        &vm.serial_log.with_extension("log.old"),
        "TRIAD-GUEST-READY",
        1,
        TIMEOUT,
    );

    let stopped = hostd(n)
        .set_state(
            VM_A,
            &StateRequest {
                action: PowerAction::Stop,
                timeout_ms: Some(2000),
            },
        )
        .unwrap();
    assert_eq!((stopped.phase, stopped.pid), (VmPhase::Stopped, None));
    assert!(!alive(vm.pid.unwrap()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        phase_of(n, VM_A).unwrap().phase,
        VmPhase::Stopped,
        "stopped stays stopped"
    );
    let started = hostd(n)
        .set_state(
            VM_A,
            &StateRequest {
                action: PowerAction::Start,
                timeout_ms: None,
            },
        )
        .unwrap();
    assert_eq!(started.phase, VmPhase::Running);
    let rebooted = hostd(n)
        .set_state(
            VM_A,
            &StateRequest {
                action: PowerAction::Reboot,
                timeout_ms: None,
            },
        )
        .unwrap();
    assert_eq!(rebooted.pid, started.pid, "a reboot keeps the VMM");

    let plain = spec("plain-1", "", None, None);
    let vm = hostd(n).ensure(VM_B, &plain).unwrap();
    kill9(vm.pid.unwrap());
    let vm = wait_for("the plain VM to be seen stopped", TIMEOUT, || {
        phase_of(n, VM_B).filter(|vm| vm.phase == VmPhase::Stopped)
    });
    assert_eq!(vm.restarts, 0);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(phase_of(n, VM_B).unwrap().phase, VmPhase::Stopped);
    assert_eq!(events_of(n, VM_B, HostEventKind::VmExited), 1);
    hostd(n).remove(VM_A).unwrap();
    hostd(n).remove(VM_B).unwrap();
}

/// A failed step undoes what the ensure made and names the step; bad requests get a 4xx
/// naming the field and leave nothing.
#[test]
fn failed_steps_roll_back_and_bad_input_is_refused() {
    if !kvm_available("failed_steps_roll_back_and_bad_input_is_refused") {
        return;
    }
    let cluster = Cluster::new("hd-bad", 1);
    lan(&cluster);
    image(&cluster, "img");
    let n = &cluster.nodes[0];
    let put = |uuid: &str, body: &str| call(n, "PUT", &format!("/vms/{uuid}"), body);

    // The ports step fails (an address outside the network): the cloned volume goes too.
    let bad_ip = spec(
        "r1",
        "",
        Some("vol-r"),
        Some(("52:54:00:60:00:1a", "10.99.0.5")),
    );
    let (status, body) = put(VM_A, &serde_json::to_string(&bad_ip).unwrap());
    assert_eq!(
        (status, body["step"].as_str()),
        (422, Some("ports")),
        "{body}"
    );
    assert!(
        storaged(n).volume("shared", "vol-r").unwrap().is_none(),
        "the volume is undone"
    );
    assert!(hostd(n).vm(VM_A).unwrap().is_none());
    assert_eq!(events_of(n, VM_A, HostEventKind::EnsureFailed), 1);

    // The vmm step fails (a kernel that is no kernel): the volume and the port go too.
    let junk = n.dir.join("junk.elf");
    std::fs::write(&junk, b"not a kernel").unwrap();
    let mut bad_kernel = spec(
        "r2",
        "",
        Some("vol-r"),
        Some(("52:54:00:60:00:1a", "10.60.0.30")),
    );
    bad_kernel.boot.kernel = junk;
    let (status, body) = put(VM_A, &serde_json::to_string(&bad_kernel).unwrap());
    assert_eq!(body["step"].as_str(), Some("vmm"), "{status} {body}");
    assert!(storaged(n).volume("shared", "vol-r").unwrap().is_none());
    assert!(netd(n).port(&format!("{VM_A}-eth0")).unwrap().is_none());
    assert!(hostd(n).vms().unwrap().is_empty());

    // Bad requests: each names its field.
    let good = serde_json::to_value(spec(
        "g1",
        "",
        None,
        Some(("52:54:00:60:00:2a", "10.60.0.40")),
    ))
    .unwrap();
    let with = |key: &str, value: Value| {
        let mut v = good.clone();
        v[key] = value;
        v.to_string()
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (VM_B, "{not json".into(), 400, "body"),
        (VM_B, with("colour", json!("red")), 400, "colour"),
        (VM_B, with("vcpus", json!("two")), 400, "vcpus"),
        ("NOT-A-UUID", good.to_string(), 400, "uuid"),
        (VM_B, with("vcpus", json!(200)), 422, "vcpus"),
        (
            VM_B,
            with("memory_mib", json!(1u64 << 30)),
            422,
            "memory_mib",
        ),
        (
            VM_B,
            with("boot", json!({"kernel": "/nowhere/guest.elf"})),
            422,
            "boot.kernel",
        ),
        (
            VM_B,
            with(
                "disks",
                json!([{"id": "root", "pool": "shared", "volume": "v",
                "source": {"kind": "image", "id": "nope"}, "size_bytes": 4096}]),
            ),
            422,
            "disks[0].source",
        ),
        (
            VM_B,
            with(
                "disks",
                json!([{"id": "root", "pool": "nopool", "volume": "v"}]),
            ),
            422,
            "disks[0].pool",
        ),
        (
            VM_B,
            with(
                "nics",
                json!([{"id": "eth0", "network": "nonet", "mac": "52:54:00:60:00:2b"}]),
            ),
            422,
            "nics[0].network",
        ),
        (
            VM_B,
            with(
                "nics",
                json!([{"id": "eth0", "network": "lan", "mac": "52:54:00:60:00"}]),
            ),
            400,
            "nics[0].mac",
        ),
    ];
    for (uuid, body, status, field) in cases {
        let (got, answer) = put(uuid, &body);
        assert_eq!(got, status, "{body}: {answer}");
        let named = answer["field"].as_str().unwrap_or_default();
        assert!(
            named.starts_with(field),
            "{body}: expected field {field}, got {answer}"
        );
    }
    // A MAC another VM of the node has.
    hostd(n)
        .ensure(VM_A, &serde_json::from_value(good.clone()).unwrap())
        .unwrap();
    let mut twin = good.clone();
    twin["name"] = json!("g2");
    let (status, answer) = put(VM_B, &twin.to_string());
    assert_eq!(
        (status, answer["field"].as_str()),
        (409, Some("nics[0].mac")),
        "{answer}"
    );
    let (status, _) = call(
        n,
        "PUT",
        &format!("/vms/{VM_B}/state"),
        r#"{"action":"start"}"#,
    );
    assert_eq!(status, 404);
    let (status, answer) = call(
        n,
        "PUT",
        &format!("/vms/{VM_A}/state"),
        r#"{"action":"fly"}"#,
    );
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("action")),
        "{answer}"
    );
    assert_eq!(
        hostd(n).vms().unwrap().len(),
        1,
        "nothing half-made is left"
    );
    hostd(n).remove(VM_A).unwrap();
    assert!(netd(n).state().unwrap().ports.is_empty());
}

/// kill -9 hostd in the middle of ensures, again and again: each VM ends either whole and
/// running once, or undone with nothing left; none runs twice.
#[test]
fn hostd_killed_during_ensures_leaves_whole_vms_or_nothing() {
    if !kvm_available("hostd_killed_during_ensures_leaves_whole_vms_or_nothing") {
        return;
    }
    let mut cluster = Cluster::new("hd-kill", 1);
    lan(&cluster);
    image(&cluster, "img");
    for (round, delay_ms) in [5u64, 40, 120, 300].into_iter().enumerate() {
        let uuid = format!("6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3b{round:02}");
        let vm = spec(
            &format!("k{round}"),
            "",
            Some(&format!("vol-k{round}")),
            Some((
                &format!("52:54:00:60:01:{round:02x}"),
                &format!("10.60.0.{}", 100 + round),
            )),
        );
        let socket = cluster.nodes[0].hostd.socket.clone();
        let ensure = {
            let uuid = uuid.clone();
            std::thread::spawn(move || HostdClient::new(socket).ensure(&uuid, &vm).is_ok())
        };
        std::thread::sleep(Duration::from_millis(delay_ms));
        cluster.nodes[0].hostd.restart();
        let answered = ensure.join().unwrap();
        let n = &cluster.nodes[0];
        let vmms = triad_tests::cluster::processes_under(&n.dir.join("hostd/vms").join(&uuid))
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--api-sock"))
            })
            .count();
        match hostd(n).vm(&uuid).unwrap() {
            Some(vm) => {
                assert_eq!(vm.phase, VmPhase::Running, "round {round}: {vm:?}");
                assert_eq!(vmms, 1, "round {round}: one VMM");
                assert!(storaged(n)
                    .volume("shared", &format!("vol-k{round}"))
                    .unwrap()
                    .is_some());
                hostd(n).remove(&uuid).unwrap();
            }
            None => {
                assert!(
                    !answered,
                    "round {round}: an ensure that answered OK was lost"
                );
                assert_eq!(vmms, 0, "round {round}: no VMM of an undone VM");
                assert!(storaged(n)
                    .volume("shared", &format!("vol-k{round}"))
                    .unwrap()
                    .is_none());
                assert!(netd(n).port(&format!("{uuid}-eth0")).unwrap().is_none());
            }
        }
    }
}

/// The harness's faults are real: a cut link drops traffic, a frozen daemon answers nothing,
/// a killed node's sockets are dead.
#[test]
fn the_harness_cuts_freezes_and_kills_for_real() {
    let mut cluster = Cluster::new("hd-faults", 3);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    for link in 0..triad_tests::cluster::LINKS.len() {
        assert!(
            triad_tests::ping(&n1.ns, &n2.addr(link), 2),
            "link {link} up"
        );
    }
    n2.set_link(0, false);
    assert!(
        !triad_tests::ping(&n1.ns, &n2.addr(0), 1),
        "a cut link drops traffic"
    );
    assert!(
        triad_tests::ping(&n1.ns, &n2.addr(1), 1),
        "the other links stay"
    );
    n2.set_all_links(false);
    assert!(!triad_tests::ping(&n1.ns, &n2.addr(2), 1));
    n2.set_all_links(true);
    assert!(triad_tests::ping(&n1.ns, &n2.addr(0), 3), "links come back");

    n2.freeze(true);
    let frozen = HostdClient::new(&n2.hostd.socket)
        .with_timeout(Duration::from_millis(500))
        .node();
    assert!(frozen.is_err(), "a frozen hostd answers nothing");
    n2.freeze(false);
    assert_eq!(hostd(n2).node().unwrap().name, n2.name);

    cluster.nodes[2].kill_all();
    let n3 = &cluster.nodes[2];
    for socket in [&n3.hostd.socket, &n3.netd.socket, &n3.storaged.socket] {
        assert!(std::os::unix::net::UnixStream::connect(socket).is_err());
    }
    assert_eq!(
        hostd(&cluster.nodes[0]).node().unwrap().name,
        cluster.nodes[0].name
    );
}

/// The controller's TCP port: only the node's token gets in, and netd and storaged are
/// reached through it (errors too); the local socket needs no token.
#[test]
fn the_controller_port_wants_the_node_token_and_passes_netd_and_storaged_through() {
    let mut cluster = Cluster::new("hd-tcp", 2);
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (addr, token) = (n2.hostd_addr(), n2.hostd_token());
    let printed = std::process::Command::new(triad_tests::binary("triad-hostd"))
        .arg("token")
        .arg("--config")
        .arg(n2.dir.join("triad-hostd.json"))
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert_eq!(
        printed.lines().next(),
        Some(format!("token        {token}").as_str()),
        "{printed}"
    );

    let ns = n1.ns.name.clone();
    let n2_name = n2.name.clone();
    let (addr2, token2) = (addr.clone(), token.clone());
    // From node 1, over the management network, as a controller there would.
    std::thread::spawn(move || {
        triad_tests::enter_netns(&ns);
        let raw = |token: Option<&str>| {
            triad_api::http::send(
                &triad_api::http::Endpoint::Tcp(addr2.clone()),
                "GET",
                "/node",
                None,
                token,
                TIMEOUT,
            )
            .unwrap()
        };
        let none = raw(None);
        assert_eq!(none.status, 401, "{}", none.body);
        assert!(none.body.contains("triad-hostd token"), "{}", none.body);
        assert_eq!(raw(Some("not-the-token")).status, 401);
        let hostd = HostdClient::tcp(&addr2, &token2);
        assert_eq!(hostd.node().unwrap().name, n2_name);

        let netd = NetdClient::via_hostd(&hostd);
        let spec = serde_json::from_value(json!({
            "name": "through", "l2": {"kind": "novlan"}, "l3": {"cidr": "10.77.0.0/24"}
        }))
        .unwrap();
        let made = netd.put_network("through", &spec).unwrap();
        assert_eq!(
            netd.network("through").unwrap().unwrap().bridge,
            made.bridge
        );
        let bad = netd.put_network(
            "through",
            &serde_json::from_value(
                json!({"name": "x", "l2": {"kind": "vxlan", "vni": 0, "underlay": "data0"}}),
            )
            .unwrap(),
        );
        assert!(
            matches!(bad, Err(ref e) if e.status() == Some(400) || e.status() == Some(422)),
            "{bad:?}"
        );
        let storaged = StoragedClient::via_hostd(&hostd);
        let pools: Vec<String> = storaged
            .pools()
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert!(pools.contains(&"shared".to_owned()), "{pools:?}");
        assert_eq!(storaged.volume("shared", "nothing-here").unwrap(), None);
    })
    .join()
    .unwrap();
    let local = NetdClient::new(&n2.netd.socket);
    assert!(
        local.network("through").unwrap().is_some(),
        "made on node 2's netd"
    );
    // The Unix socket is the node's own: no token.
    assert_eq!(hostd(n2).node().unwrap().name, n2.name);

    cluster.nodes[1].netd.kill9();
    let n2 = &cluster.nodes[1];
    let (status, body) = call(n2, "GET", "/netd/state", "");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("netd does not answer"),
        "{body}"
    );
}
