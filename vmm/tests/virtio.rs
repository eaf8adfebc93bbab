//! Virtio devices seen from inside a real guest under KVM: the test guest's virtio-mmio driver
//! finds the devices on its command line, negotiates, and uses them.

mod common;

use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(30);

fn boot(test: &str, cmdline: &str, rng: bool) -> (Option<i32>, String) {
    let dir = TempDir::new(test);
    let serial = dir.join("serial.log");
    let config = dir.join("vm.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&config_json(&guest_elf(), cmdline, 2, 64, Some(&serial))).unwrap();
    json["rng"] = rng.into();
    std::fs::write(&config, json.to_string()).unwrap();
    let (code, _, err) = run_vmm(&["--config", config.to_str().unwrap()], TIMEOUT);
    assert!(err.is_empty(), "unexpected stderr: {err}");
    (code, std::fs::read_to_string(&serial).unwrap_or_default())
}

fn rng_bytes(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.starts_with("TRIAD-RNG "))
        .unwrap_or_else(|| panic!("no TRIAD-RNG line:\n{out}"));
    let mut words = line.split_whitespace().skip(1);
    assert_eq!(words.next(), Some("32"), "{line}");
    let hex = words.next().unwrap_or_default().to_owned();
    assert_eq!(hex.len(), 64, "{line}");
    hex
}

#[test]
fn guest_reads_entropy_from_virtio_rng() {
    if !kvm_available("guest_reads_entropy_from_virtio_rng") {
        return;
    }
    let (code, first) = boot("rng1", "triad.rng triad.exit=0", true);
    assert_eq!(code, Some(0), "{first}");
    assert!(first.contains("TRIAD-VIRTIO 0xd0000000 4\n"), "{first}");
    let (_, second) = boot("rng2", "triad.rng triad.exit=0", true);
    assert_ne!(
        rng_bytes(&first),
        rng_bytes(&second),
        "two boots, same entropy"
    );
}

#[test]
fn rng_can_be_turned_off() {
    if !kvm_available("rng_can_be_turned_off") {
        return;
    }
    let (code, out) = boot("rng-off", "triad.rng triad.exit=0", false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("TRIAD-RNG none\n"), "{out}");
    assert!(!out.contains("virtio_mmio.device"), "{out}");
}
