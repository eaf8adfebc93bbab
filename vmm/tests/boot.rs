//! Boots the freestanding test guest in a real `triad-vmm` process under real KVM.

mod common;

use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(30);

fn boot(
    test: &str,
    kernel: &std::path::Path,
    cmdline: &str,
    vcpus: u32,
    mib: u64,
) -> (Option<i32>, String) {
    let dir = TempDir::new(test);
    let serial = dir.join("serial.log");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        config_json(kernel, cmdline, vcpus, mib, Some(&serial)),
    )
    .unwrap();
    let (code, _, err) = run_vmm(&["--config", config.to_str().unwrap()], TIMEOUT);
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(err.is_empty(), "unexpected stderr: {err}");
    (code, out)
}

#[test]
fn pvh_guest_prints_ready_and_exits_with_its_status() {
    if !kvm_available("pvh_guest_prints_ready_and_exits_with_its_status") {
        return;
    }
    let (code, out) = boot("pvh-exit", &guest_elf(), "triad.exit=7", 1, 64);
    assert_eq!(code, Some(7), "serial:\n{out}");
    assert!(out.starts_with("TRIAD-GUEST-READY\n"), "{out}");
    assert!(out.contains("TRIAD-BOOT pvh\n"), "{out}");
    // The VMM announces its virtio-rng device after the user's words.
    assert!(
        out.contains("TRIAD-CMDLINE triad.exit=7 virtio_mmio.device=4K@0xd0000000:5\n"),
        "{out}"
    );
    assert!(out.contains("TRIAD-EXIT 7\n"), "{out}");
}

#[test]
fn guest_sees_the_memory_map() {
    if !kvm_available("guest_sees_the_memory_map") {
        return;
    }
    // RAM below the EBDA (0x9fc00 = 639 KiB) plus everything from 1 MiB up.
    for mib in [16u64, 200] {
        let (code, out) = boot(&format!("mem{mib}"), &guest_elf(), "triad.exit=0", 1, mib);
        assert_eq!(code, Some(0), "{out}");
        let expected = 639 + (mib * 1024 - 1024);
        assert!(
            out.contains(&format!("TRIAD-MEM {expected}\n")),
            "{mib} MiB:\n{out}"
        );
    }
}

#[test]
fn linux_boot_protocol_enters_64_bit_with_zero_page() {
    if !kvm_available("linux_boot_protocol_enters_64_bit_with_zero_page") {
        return;
    }
    let (code, out) = boot(
        "bzimage",
        &guest("testguest.bzImage"),
        "triad.exit=5 hello",
        1,
        64,
    );
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("TRIAD-BOOT linux\n"), "{out}");
    assert!(
        out.contains("TRIAD-CMDLINE triad.exit=5 hello virtio_mmio.device=4K@0xd0000000:5\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("TRIAD-MEM {}\n", 639 + 63 * 1024)),
        "{out}"
    );
}

#[test]
fn every_vcpu_comes_up() {
    if !kvm_available("every_vcpu_comes_up") {
        return;
    }
    for vcpus in [1u32, 2, 4] {
        let (code, out) = boot(
            &format!("smp{vcpus}"),
            &guest_elf(),
            "triad.cpus triad.exit=0",
            vcpus,
            64,
        );
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains(&format!("TRIAD-CPUS {vcpus}\n")),
            "{vcpus} vCPUs:\n{out}"
        );
    }
}

#[test]
fn serial_to_stdout_and_off() {
    if !kvm_available("serial_to_stdout_and_off") {
        return;
    }
    let dir = TempDir::new("serial-modes");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        config_json(&guest_elf(), "triad.exit=3", 1, 32, None),
    )
    .unwrap();
    let (code, out, _) = run_vmm(&["--config", config.to_str().unwrap()], TIMEOUT);
    assert_eq!(code, Some(3));
    assert!(out.starts_with("TRIAD-GUEST-READY\n"), "{out}");

    let mut json: serde_json::Value =
        serde_json::from_str(&config_json(&guest_elf(), "triad.exit=4", 1, 32, None)).unwrap();
    json["serial"] = serde_json::json!({"mode": "off"});
    std::fs::write(&config, json.to_string()).unwrap();
    let (code, out, _) = run_vmm(&["--config", config.to_str().unwrap()], TIMEOUT);
    assert_eq!((code, out.as_str()), (Some(4), ""));
}

/// A Debian kernel and initramfs from `scripts/build-linux-guest`, booted for real.
#[test]
fn linux_guest_boots() {
    let test = "linux_guest_boots";
    if !kvm_available(test) {
        return;
    }
    if let Some(reason) = kvm_cannot_boot_linux() {
        skip(test, &reason);
        return;
    }
    let dir = workspace_root().join("target/linux-guest");
    let (bzimage, initrd) = (dir.join("bzImage"), dir.join("initrd.img"));
    assert!(
        bzimage.exists() && initrd.exists(),
        "{} is missing: run scripts/build-linux-guest",
        dir.display()
    );
    let tmp = TempDir::new("linux");
    let serial = tmp.join("serial.log");
    let config = tmp.join("vm.json");
    let json = serde_json::json!({
        "boot": {"kernel": bzimage, "initrd": initrd,
                 "cmdline": std::fs::read_to_string(dir.join("cmdline")).unwrap().trim()},
        "machine": {"vcpus": 2, "memory_mib": 256},
        "serial": {"mode": "file", "path": serial},
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let mut vmm = VmmProcess::spawn(&["--config", config.to_str().unwrap()]);
    let out = wait_for_serial(&serial, "TRIAD-LINUX-READY", 1, Duration::from_secs(120));
    assert!(out.contains("TRIAD-CPUS 2"), "{out}");
    vmm.wait(Duration::from_secs(60));
}

/// Why this host's KVM cannot boot a stock Linux kernel, if it cannot.
fn kvm_cannot_boot_linux() -> Option<String> {
    let module = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
    (module("kvm_pvm") && !module("kvm_intel") && !module("kvm_amd")).then(|| {
        "KVM on this host is the nested PVM hypervisor (kvm_pvm), which cannot run a stock \
         Linux kernel; this test runs on hosts with kvm_intel or kvm_amd"
            .to_owned()
    })
}

#[test]
fn serial_log_rotates_at_its_limit() {
    if !kvm_available("serial_log_rotates_at_its_limit") {
        return;
    }
    let dir = TempDir::new("serial-rotate");
    let serial = dir.join("serial.log");
    let mut json: serde_json::Value = serde_json::from_str(&config_json(
        &guest_elf(),
        "triad.tick",
        1,
        32,
        Some(&serial),
    ))
    .unwrap();
    json["serial"]["max_bytes"] = 256.into();
    let config = dir.join("vm.json");
    std::fs::write(&config, json.to_string()).unwrap();
    let _vmm = VmmProcess::spawn(&["--config", config.to_str().unwrap()]);
    let old = dir.join("serial.log.old");
    let start = std::time::Instant::now();
    while !old.exists() {
        assert!(start.elapsed() < TIMEOUT, "no rotation");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::fs::metadata(&old).unwrap().len() <= 256);
    assert!(std::fs::metadata(&serial).unwrap().len() <= 256);
    // The boot lines rotated away; the ticks go on in the new file.
    wait_for_serial(&serial, "TRIAD-TICK", 2, TIMEOUT);
}
