//! The control API of a real `triad-vmm` process: lifecycle, state errors, socket hygiene.

mod common;

use std::time::Duration;

use common::*;
use triad_api::client::VmmClient;
use triad_api::http::ClientError;
use triad_api::vmm::{VmAction, VmConfig, VmState};

const TIMEOUT: Duration = Duration::from_secs(30);

fn tick_config(serial: &std::path::Path, cmdline: &str, vcpus: u32) -> VmConfig {
    serde_json::from_str(&config_json(&guest_elf(), cmdline, vcpus, 64, Some(serial))).unwrap()
}

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Status { status, message }) => (status, message),
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

fn start_api_vmm(dir: &TempDir) -> (VmmProcess, VmmClient, std::path::PathBuf) {
    let sock = dir.join("api.sock");
    let vmm = VmmProcess::spawn(&["--api-sock", sock.to_str().unwrap()]);
    wait_for_socket(&sock, TIMEOUT);
    (vmm, VmmClient::new(&sock), sock)
}

#[test]
fn configure_start_pause_resume_shutdown() {
    if !kvm_available("configure_start_pause_resume_shutdown") {
        return;
    }
    let dir = TempDir::new("api-lifecycle");
    let serial = dir.join("serial.log");
    let (mut vmm, api, sock) = start_api_vmm(&dir);

    assert_eq!(api.info().unwrap().state, VmState::NotConfigured);
    let info = api
        .put_config(&tick_config(&serial, "triad.tick", 2))
        .unwrap();
    assert_eq!((info.state, info.boots), (VmState::Configured, 0));
    let info = api.action(VmAction::Start).unwrap();
    assert_eq!((info.state, info.boots), (VmState::Running, 1));
    wait_for_serial(&serial, "TRIAD-TICK", 2, TIMEOUT);

    // Paused: the guest's ticks stop.
    assert_eq!(api.action(VmAction::Pause).unwrap().state, VmState::Paused);
    let before = std::fs::read_to_string(&serial).unwrap();
    let cpu_before = api.metrics().unwrap().vcpu_time_ns;
    std::thread::sleep(Duration::from_millis(400));
    // Parked vCPU threads use no CPU (allow a little for the wake-up bookkeeping).
    let cpu_after = api.metrics().unwrap().vcpu_time_ns;
    for (b, a) in cpu_before.iter().zip(&cpu_after) {
        assert!(a - b < 5_000_000, "vCPU ran {} ns while paused", a - b);
    }
    assert_eq!(
        std::fs::read_to_string(&serial).unwrap(),
        before,
        "guest ran while paused"
    );

    // Resumed: they go on.
    assert_eq!(
        api.action(VmAction::Resume).unwrap().state,
        VmState::Running
    );
    let ticks = before.matches("TRIAD-TICK").count();
    wait_for_serial(&serial, "TRIAD-TICK", ticks + 2, TIMEOUT);

    let m = api.metrics().unwrap();
    assert!(m.exits["io_out"] > 0, "{m:?}");
    assert_eq!(m.vcpu_time_ns.len(), 2);
    assert!(m.vcpu_time_ns[0] > 0, "{m:?}");
    assert!(m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib, "{m:?}");
    assert!(api.info().unwrap().uptime_ms.is_some());

    assert_eq!(
        api.action(VmAction::Shutdown).unwrap().state,
        VmState::Stopped
    );
    assert_eq!(vmm.wait(TIMEOUT).code(), Some(0));
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn reboot_starts_the_guest_again() {
    if !kvm_available("reboot_starts_the_guest_again") {
        return;
    }
    let dir = TempDir::new("api-reboot");
    let serial = dir.join("serial.log");
    let (mut vmm, api, _) = start_api_vmm(&dir);
    api.put_config(&tick_config(&serial, "triad.tick", 1))
        .unwrap();
    api.action(VmAction::Start).unwrap();
    wait_for_serial(&serial, "TRIAD-GUEST-READY", 1, TIMEOUT);
    let info = api.action(VmAction::Reboot).unwrap();
    assert_eq!((info.state, info.boots), (VmState::Running, 2));
    wait_for_serial(&serial, "TRIAD-GUEST-READY", 2, TIMEOUT);
    // Rebooting a paused VM is allowed and leaves it running.
    api.action(VmAction::Pause).unwrap();
    assert_eq!(
        api.action(VmAction::Reboot).unwrap().state,
        VmState::Running
    );
    wait_for_serial(&serial, "TRIAD-GUEST-READY", 3, TIMEOUT);
    api.action(VmAction::Shutdown).unwrap();
    assert_eq!(vmm.wait(TIMEOUT).code(), Some(0));
}

#[test]
fn guest_reset_through_i8042_reboots_in_place() {
    if !kvm_available("guest_reset_through_i8042_reboots_in_place") {
        return;
    }
    let dir = TempDir::new("api-reset");
    let serial = dir.join("serial.log");
    let (mut vmm, api, _) = start_api_vmm(&dir);
    api.put_config(&tick_config(&serial, "triad.reset", 1))
        .unwrap();
    api.action(VmAction::Start).unwrap();
    wait_for_serial(&serial, "TRIAD-GUEST-READY", 3, TIMEOUT);
    assert!(api.info().unwrap().boots >= 3);
    api.action(VmAction::Shutdown).unwrap();
    assert_eq!(vmm.wait(TIMEOUT).code(), Some(0));
}

#[test]
fn requests_in_the_wrong_state_are_refused() {
    if !kvm_available("requests_in_the_wrong_state_are_refused") {
        return;
    }
    let dir = TempDir::new("api-states");
    let serial = dir.join("serial.log");
    let (mut vmm, api, sock) = start_api_vmm(&dir);

    let (code, msg) = status_of(api.action(VmAction::Start));
    assert_eq!(code, 409);
    assert!(msg.contains("no config"), "{msg}");
    assert_eq!(status_of(api.action(VmAction::Pause)).0, 409);

    // A bad config is refused and the VMM stays unconfigured.
    let mut bad = tick_config(&serial, "triad.tick", 1);
    bad.machine.memory_mib = 0;
    let (code, msg) = status_of(api.put_config(&bad));
    assert_eq!(code, 400);
    assert!(msg.contains("machine.memory_mib"), "{msg}");
    assert_eq!(api.info().unwrap().state, VmState::NotConfigured);

    api.put_config(&tick_config(&serial, "triad.tick", 1))
        .unwrap();
    assert_eq!(status_of(api.action(VmAction::Resume)).0, 409);
    api.action(VmAction::Start).unwrap();
    assert_eq!(status_of(api.action(VmAction::Start)).0, 409);
    assert_eq!(status_of(api.action(VmAction::Resume)).0, 409);
    let (code, msg) = status_of(api.put_config(&tick_config(&serial, "x", 1)));
    assert_eq!(code, 409);
    assert!(msg.contains("running"), "{msg}");

    // Raw HTTP mistakes.
    let raw = |m, p, b| triad_api::http::request(&sock, m, p, b, TIMEOUT).unwrap();
    assert_eq!(raw("GET", "/nope", None).status, 404);
    assert_eq!(raw("POST", "/vm", None).status, 405);
    let r = raw(
        "PUT",
        "/vm/actions",
        Some("{\"action\":\"start\",\"force\":true}"),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("unknown field `force`"), "{}", r.body);
    assert_eq!(raw("PUT", "/vm/actions", Some("not json")).status, 400);

    // Still alive and running after all that.
    assert_eq!(api.info().unwrap().state, VmState::Running);
    api.action(VmAction::Shutdown).unwrap();
    assert_eq!(vmm.wait(TIMEOUT).code(), Some(0));
}

#[test]
fn socket_in_use_is_refused_and_stale_socket_replaced() {
    if !kvm_available("socket_in_use_is_refused_and_stale_socket_replaced") {
        return;
    }
    let dir = TempDir::new("api-socket");
    let (mut first, api, sock) = start_api_vmm(&dir);
    let (code, _, err) = run_vmm(&["--api-sock", sock.to_str().unwrap()], TIMEOUT);
    assert_eq!(code, Some(1));
    assert!(err.contains("already serving"), "{err}");
    assert_eq!(
        api.info().unwrap().state,
        VmState::NotConfigured,
        "first VMM disturbed"
    );

    // Killed without a chance to clean up: the socket file stays, and the next VMM takes it.
    first.child.kill().unwrap();
    first.wait(TIMEOUT);
    assert!(sock.exists());
    let mut second = VmmProcess::spawn(&["--api-sock", sock.to_str().unwrap()]);
    let start = std::time::Instant::now();
    while api.info().is_err() {
        assert!(start.elapsed() < TIMEOUT, "second VMM never answered");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGTERM powers off cleanly: status 128+15, socket removed.
    let pid = i32::try_from(second.child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    assert_eq!(second.wait(TIMEOUT).code(), Some(143));
    assert!(!sock.exists(), "socket left behind after SIGTERM");
}

#[test]
fn drives_and_nics_are_added_before_start_only() {
    if !kvm_available("drives_and_nics_are_added_before_start_only") {
        return;
    }
    let dir = TempDir::new("api-devices");
    let serial = dir.join("serial.log");
    let image = workspace_root()
        .join("target/tmp")
        .join(format!("api-devices-{}.img", std::process::id()));
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let (mut vmm, api, sock) = start_api_vmm(&dir);
    let raw = |m: &str, p: &str, b: &str| {
        triad_api::http::request(&sock, m, p, Some(b), TIMEOUT).unwrap()
    };
    let drive = serde_json::json!({"id": "root", "path": image, "cache": "writeback"}).to_string();

    // No config yet: nothing to add to.
    assert_eq!(raw("PUT", "/drives/root", &drive).status, 409);
    api.put_config(&tick_config(&serial, "triad.blk=ro triad.exit=0", 1))
        .unwrap();
    assert_eq!(raw("PUT", "/drives/root", &drive).status, 200, "first add");
    // Replacing by id keeps one drive; a broken one is refused and changes nothing.
    assert_eq!(raw("PUT", "/drives/root", &drive).status, 200, "replace");
    let broken = serde_json::json!({"id": "data", "path": "/nonexistent.img"}).to_string();
    let resp = raw("PUT", "/drives/data", &broken);
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(resp.body.contains("drives[1] (data)"), "{}", resp.body);
    let config = api.info().unwrap().config.unwrap();
    assert_eq!(config.drives.len(), 1);

    api.action(VmAction::Start).unwrap();
    assert_eq!(vmm.wait(TIMEOUT).code(), Some(0));
    let out = std::fs::read_to_string(&serial).unwrap();
    assert!(
        out.contains("TRIAD-BLK 0xd0000000 sectors=2048 ro=0 id=root\n"),
        "{out}"
    );
    assert!(out.contains("TRIAD-BLK-OK 1\n"), "{out}");
    let _ = std::fs::remove_file(&image);
}

#[test]
fn devices_cannot_be_added_to_a_running_vm() {
    if !kvm_available("devices_cannot_be_added_to_a_running_vm") {
        return;
    }
    let dir = TempDir::new("api-devices-running");
    let serial = dir.join("serial.log");
    let (mut vmm, api, sock) = start_api_vmm(&dir);
    api.put_config(&tick_config(&serial, "triad.tick", 1))
        .unwrap();
    api.action(VmAction::Start).unwrap();
    let nic = r#"{"id":"eth0","tap":"t-none"}"#;
    let resp = triad_api::http::request(&sock, "PUT", "/nets/eth0", Some(nic), TIMEOUT).unwrap();
    assert_eq!(resp.status, 409, "{}", resp.body);
    let resp = triad_api::http::request(
        &sock,
        "PATCH",
        "/nets/eth0",
        Some(r#"{"qos":null}"#),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(resp.status, 404, "{}", resp.body);
    api.action(VmAction::Shutdown).unwrap();
    assert_eq!(vmm.wait(TIMEOUT).code(), Some(0));
}
