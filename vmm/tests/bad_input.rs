//! Bad configs and arguments: a one-line error naming the problem, a non-zero exit, and no
//! socket or process left behind.

mod common;

use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs triad-vmm on `json` with an API socket; returns (exit code, stderr) after checking
/// the socket is gone.
fn reject(test: &str, json: &str) -> (Option<i32>, String) {
    let dir = TempDir::new(test);
    let config = dir.join("vm.json");
    let sock = dir.join("api.sock");
    std::fs::write(&config, json).unwrap();
    let (code, _, err) = run_vmm(
        &[
            "--config",
            config.to_str().unwrap(),
            "--api-sock",
            sock.to_str().unwrap(),
        ],
        TIMEOUT,
    );
    assert!(!sock.exists(), "{test}: socket left behind");
    assert_eq!(err.lines().count(), 1, "{test}: want one line, got:\n{err}");
    assert!(err.starts_with("triad-vmm: error: "), "{err}");
    (code, err)
}

fn assert_rejected(test: &str, json: &str, needle: &str) {
    let (code, err) = reject(test, json);
    assert_eq!(code, Some(1), "{test}: {err}");
    assert!(
        err.contains(needle),
        "{test}: {err:?} does not mention {needle:?}"
    );
}

fn with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&config_json(&guest_elf(), "triad.exit=0", 1, 64, None)).unwrap();
    edit(&mut v);
    v.to_string()
}

#[test]
fn bad_configs_are_rejected_by_name() {
    if !kvm_available("bad_configs_are_rejected_by_name") {
        return;
    }
    assert_rejected(
        "missing",
        &with(|v| v["boot"]["kernel"] = "/nonexistent/vmlinux".into()),
        "boot.kernel /nonexistent/vmlinux",
    );
    let dir = TempDir::new("not-elf-kernel");
    let text = dir.join("kernel.txt");
    std::fs::write(&text, "this is not a kernel\n").unwrap();
    assert_rejected(
        "not-elf",
        &with(|v| v["boot"]["kernel"] = text.to_str().into()),
        "neither an ELF kernel nor a bzImage",
    );
    assert_rejected(
        "zero-mem",
        &with(|v| v["machine"]["memory_mib"] = 0.into()),
        "machine.memory_mib is 0",
    );
    assert_rejected(
        "absurd-mem",
        &with(|v| v["machine"]["memory_mib"] = (1u64 << 40).into()),
        "but this host has only",
    );
    assert_rejected(
        "zero-cpus",
        &with(|v| v["machine"]["vcpus"] = 0.into()),
        "machine.vcpus must be at least 1",
    );
    assert_rejected(
        "many-cpus",
        &with(|v| v["machine"]["vcpus"] = 100_000.into()),
        "machine.vcpus is 100000",
    );
    assert_rejected(
        "unknown-field",
        &with(|v| v["machine"]["gpus"] = 1.into()),
        "unknown field `gpus`",
    );
    assert_rejected(
        "drive-no-id",
        &with(|v| v["drives"] = serde_json::json!([{"path": "/x"}])),
        "missing field `id`",
    );
    assert_rejected(
        "serial-path",
        &with(|v| v["serial"] = serde_json::json!({"mode": "file"})),
        "serial.path is required",
    );
    assert_rejected("not-json", "{\"boot\":", "config");
    let disk = TempDir::new("bad-drive-disk");
    let img = disk.join("root.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let drive = |id: &str, path: &std::path::Path| serde_json::json!({"id": id, "path": path});
    assert_rejected(
        "drive-missing",
        &with(|v| {
            v["drives"] =
                serde_json::json!([drive("root", std::path::Path::new("/nonexistent/root.img"))])
        }),
        "drives[0] (root): path /nonexistent/root.img: No such file",
    );
    assert_rejected(
        "drive-dup",
        &with(|v| v["drives"] = serde_json::json!([drive("root", &img), drive("root", &img)])),
        "drives[1] (root): the id is used by an earlier drive",
    );
    assert_rejected(
        "drive-dir",
        &with(|v| v["drives"] = serde_json::json!([drive("root", disk.path())])),
        "not a regular file or block device",
    );
    assert_rejected(
        "drive-cache",
        &with(|v| v["drives"] = serde_json::json!([{"id": "root", "path": img, "cache": "turbo"}])),
        "unknown variant `turbo`",
    );
    // "lo" exists but is no TAP: the VMM says so and leaves nothing behind.
    assert_rejected(
        "tap-not-tap",
        &with(|v| v["nets"] = serde_json::json!([{"id": "eth0", "tap": "lo"}])),
        "NIC eth0: opening tap lo",
    );
    assert_rejected(
        "tap-bad-mac",
        &with(|v| {
            v["nets"] = serde_json::json!([{"id": "eth0", "tap": "t0", "mac": "ff:ff:ff:ff:ff:ff"}])
        }),
        "nets[0] (eth0): mac \"ff:ff:ff:ff:ff:ff\" is not a unicast MAC",
    );
    // The test guest's bzImage announces a 2047-byte command line in its header.
    assert_rejected(
        "long-cmdline",
        &with(|v| {
            v["boot"]["kernel"] = guest("testguest.bzImage").to_str().into();
            v["boot"]["cmdline"] = "x".repeat(3000).into();
        }),
        "boot.cmdline is 3035 bytes with the device announcements, more than the 2047 this kernel accepts",
    );
}

/// A kernel that passes the config checks but fails to load: the VMM has bound its socket by
/// then, and must still remove it.
#[test]
fn failure_after_binding_removes_the_socket() {
    if !kvm_available("failure_after_binding_removes_the_socket") {
        return;
    }
    let dir = TempDir::new("bad-elf-kernel");
    let kernel = dir.join("truncated.elf");
    std::fs::write(&kernel, b"\x7fELF\x02\x01\x01\x00").unwrap();
    assert_rejected(
        "bad-elf",
        &with(|v| v["boot"]["kernel"] = kernel.to_str().into()),
        "loading kernel",
    );
}

#[test]
fn socket_path_that_is_not_a_socket_is_left_alone() {
    if !kvm_available("socket_path_that_is_not_a_socket_is_left_alone") {
        return;
    }
    let dir = TempDir::new("sock-is-file");
    let file = dir.join("precious.json");
    std::fs::write(&file, "{}").unwrap();
    let (code, _, err) = run_vmm(&["--api-sock", file.to_str().unwrap()], TIMEOUT);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{}");
}

#[test]
fn usage_errors() {
    let (code, _, err) = run_vmm(&[], TIMEOUT);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("--config") && err.contains("--api-sock"),
        "{err}"
    );
    let (code, _, err) = run_vmm(&["--config", "/nonexistent/vm.json"], TIMEOUT);
    assert_eq!(code, Some(1));
    assert!(err.contains("reading config /nonexistent/vm.json"), "{err}");
    let (code, _, _) = run_vmm(&["--frobnicate"], TIMEOUT);
    assert_eq!(code, Some(2));
}

#[test]
fn socket_in_a_missing_directory() {
    if !kvm_available("socket_in_a_missing_directory") {
        return;
    }
    let (code, _, err) = run_vmm(&["--api-sock", "/nonexistent/dir/api.sock"], TIMEOUT);
    assert_eq!(code, Some(1));
    assert!(err.contains("binding /nonexistent/dir/api.sock"), "{err}");
}
