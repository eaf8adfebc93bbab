//! virtio-blk under real KVM: the test guest's driver writes, flushes and reads disks backed by
//! image files, and what it wrote is in the files.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Image files under target/: cache "none" needs O_DIRECT, which tmpfs does not offer.
struct Images(PathBuf);

impl Images {
    fn new(test: &str) -> Self {
        let dir = workspace_root()
            .join("target/tmp")
            .join(format!("blk-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn create(&self, name: &str, len: u64) -> PathBuf {
        let path = self.0.join(name);
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        path
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &TempDir, cmdline: &str, drives: serde_json::Value) -> PathBuf {
    guest_config(dir, cmdline, serde_json::json!({ "drives": drives }))
}

/// The guest's pattern: byte j of sector s on disk k.
fn pattern(disk: u64, sector: u64, j: u64) -> u8 {
    ((31 * disk + sector + j) & 0xff) as u8
}

fn assert_sector_pattern(image: &Path, disk: u64, sector: u64) {
    let bytes = std::fs::read(image).unwrap();
    let start = usize::try_from(sector * 512).unwrap();
    for (j, &b) in bytes[start..start + 512].iter().enumerate() {
        assert_eq!(
            b,
            pattern(disk, sector, j as u64),
            "{} sector {sector} byte {j}",
            image.display()
        );
    }
}

#[test]
fn guest_writes_land_in_the_image_files() {
    if !kvm_available("guest_writes_land_in_the_image_files") {
        return;
    }
    let images = Images::new("rw");
    let (d0, d1) = (
        images.create("d0.img", 8 << 20),
        images.create("d1.img", 4 << 20),
    );
    let dir = TempDir::new("blk-rw");
    let vm = config(
        &dir,
        "triad.blk=rw triad.exit=0",
        serde_json::json!([
            {"id": "disk0", "path": d0, "cache": "none"},
            {"id": "disk1", "path": d1, "cache": "writeback"},
        ]),
    );
    let (code, _, err) = run_vmm(&["--config", vm.to_str().unwrap()], TIMEOUT);
    let out = std::fs::read_to_string(dir.join("serial.log")).unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("TRIAD-BLK 0xd0000000 sectors=16384 ro=0 id=disk0\n"),
        "{out}"
    );
    assert!(
        out.contains("TRIAD-BLK 0xd0001000 sectors=8192 ro=0 id=disk1\n"),
        "{out}"
    );
    assert!(out.contains("TRIAD-BLK-OK 2\n"), "{out}");
    for (disk, image, sectors) in [(0, &d0, 16384), (1, &d1, 8192)] {
        assert_sector_pattern(image, disk, 1);
        assert_sector_pattern(image, disk, sectors - 1);
    }
}

#[test]
fn read_only_drives_are_read_and_never_written() {
    if !kvm_available("read_only_drives_are_read_and_never_written") {
        return;
    }
    let images = Images::new("ro");
    let image = images.create("ro.img", 1 << 20);
    let mut content = std::fs::read(&image).unwrap();
    content[..16].copy_from_slice(b"TRIAD-RO-DISK-01");
    std::fs::write(&image, &content).unwrap();
    let dir = TempDir::new("blk-ro");
    let vm = config(
        &dir,
        "triad.blk=rw triad.exit=0",
        serde_json::json!([{"id": "golden", "path": image, "read_only": true}]),
    );
    let (code, _, _) = run_vmm(&["--config", vm.to_str().unwrap()], TIMEOUT);
    let out = std::fs::read_to_string(dir.join("serial.log")).unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ro=1 id=golden\n"), "{out}");
    // The guest read what the file holds ...
    let hex: String = b"TRIAD-RO-DISK-01"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        out.contains(&format!("TRIAD-BLK-SECTOR0 0 {hex}\n")),
        "{out}"
    );
    // ... and its write attempt got IOERR, so the file is untouched.
    assert!(out.contains("TRIAD-BLK-OK 1\n"), "{out}");
    assert_eq!(std::fs::read(&image).unwrap(), content);
}

#[test]
fn the_counter_survives_a_vmm_restart() {
    if !kvm_available("the_counter_survives_a_vmm_restart") {
        return;
    }
    let images = Images::new("counter");
    let image = images.create("counter.img", 1 << 20);
    let stored = || {
        let bytes = std::fs::read(&image).unwrap();
        u64::from_le_bytes(bytes[..8].try_into().unwrap())
    };
    let mut last_printed = 0;
    for run in 0..2 {
        let dir = TempDir::new(&format!("blk-counter-{run}"));
        let vm = config(
            &dir,
            "triad.counter",
            serde_json::json!([{"id": "c", "path": image}]),
        );
        let serial = dir.join("serial.log");
        let sock = dir.join("api.sock");
        let vmm = VmmProcess::spawn(&[
            "--config",
            vm.to_str().unwrap(),
            "--api-sock",
            sock.to_str().unwrap(),
        ]);
        let out = wait_for_serial(&serial, "TRIAD-COUNTER ", 3, TIMEOUT);
        // Each step is a write and a flush, and the metrics count them.
        let metrics = triad_api::client::VmmClient::new(&sock).metrics().unwrap();
        let disk = &metrics.drives["c"];
        assert!(
            disk["writes"] >= 3 && disk["flushes"] >= 3 && disk["reads"] >= 1,
            "{disk:?}"
        );
        assert_eq!(disk["write_bytes"] % 512, 0, "{disk:?}");
        drop(vmm); // killed: a power cut, not a shutdown
        let values = counter_values(&out);
        // The guest goes on from what the disk held when the previous VMM died.
        assert_eq!(values[0], last_printed + 1, "run {run}: {values:?}");
        assert!(values.windows(2).all(|w| w[1] == w[0] + 1), "{values:?}");
        last_printed = *values.last().unwrap();
        // Each value is flushed before it is printed; the next may have landed too.
        let on_disk = stored();
        assert!(
            on_disk == last_printed || on_disk == last_printed + 1,
            "{on_disk} vs {last_printed}"
        );
        last_printed = on_disk;
    }
}

/// A host block device with 4 KiB logical sectors (a loop device), used with O_DIRECT: the
/// VMM must announce 4 KiB blocks, or the guest's 512-byte requests fail on the host.
#[test]
fn a_4k_sector_host_device_works_with_direct_io() {
    let test = "a_4k_sector_host_device_works_with_direct_io";
    if !kvm_available(test) {
        return;
    }
    let images = Images::new("4k");
    let backing = images.create("backing.img", 8 << 20);
    let out = std::process::Command::new("losetup")
        .args(["--sector-size", "4096", "--find", "--show"])
        .arg(&backing)
        .output();
    let device = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => {
            skip(
                test,
                &format!(
                    "losetup failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
            return;
        }
        Err(e) => {
            skip(test, &format!("losetup is not available ({e})"));
            return;
        }
    };
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _detach = Detach(device.clone());
    let dir = TempDir::new("blk-4k");
    let vm = config(
        &dir,
        "triad.blk=rw triad.exit=0",
        serde_json::json!([{"id": "loop", "path": device, "cache": "none"}]),
    );
    let (code, _, err) = run_vmm(&["--config", vm.to_str().unwrap()], TIMEOUT);
    let out = std::fs::read_to_string(dir.join("serial.log")).unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("sectors=16384 ro=0 id=loop\n"), "{out}");
    assert!(out.contains("TRIAD-BLK-OK 1\n"), "{out}");
}
