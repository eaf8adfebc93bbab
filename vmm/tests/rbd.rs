//! Disks on Ceph RBD images under real KVM, against a real Ceph cluster the test brings up
//! with `scripts/dev-ceph` (1 monitor, 1 manager, 3 OSDs on loopback), shared by the tests,
//! each on images of its own. These tests do not skip for want of Ceph: the script installs
//! it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use triad_ceph::dev::{self, DevCluster};

/// Long enough for a restarted VMM to take over the lock of one that was killed (the dead
/// client's watch has to time out first).
const TIMEOUT: Duration = Duration::from_secs(90);

/// A VM running the counter on RBD image `image` of `cluster`.
fn counter_vm(dir: &TempDir, cluster: &DevCluster, image: &str) -> PathBuf {
    let disk = serde_json::json!([{
        "id": "c",
        "path": format!("rbd:rbd/{image}"),
        "ceph": {"conf": cluster.conf},
    }]);
    guest_config(dir, "triad.counter", serde_json::json!({ "drives": disk }))
}

fn spawn(vm: &std::path::Path) -> VmmProcess {
    VmmProcess::spawn(&["--config", vm.to_str().unwrap()])
}

#[test]
fn the_counter_on_an_rbd_image_survives_a_vmm_kill_and_the_lock_follows_it() {
    if !kvm_available("the_counter_on_an_rbd_image_survives_a_vmm_kill_and_the_lock_follows_it") {
        return;
    }
    let cluster = dev::shared();
    cluster.rbd(&["create", "--size", "16M", "rbd/counter"]);
    let stored = || {
        let image = cluster.rbd(&["export", "rbd/counter", "-"]);
        u64::from_le_bytes(image[..8].try_into().unwrap())
    };
    let mut last = 0;
    for run in 0..2 {
        let dir = TempDir::new(&format!("rbd-counter-{run}"));
        let vm = counter_vm(&dir, cluster, "counter");
        let vmm = spawn(&vm);
        let out = wait_for_serial(&dir.join("serial.log"), "TRIAD-COUNTER ", 3, TIMEOUT);
        if run == 0 {
            // While it runs, the image is its own: a second VMM is refused the lock.
            let other = TempDir::new("rbd-counter-other");
            let mut second = spawn(&counter_vm(&other, cluster, "counter"));
            let status = second.wait(TIMEOUT);
            let err = second.stderr();
            assert_eq!(status.code(), Some(1), "{err}");
            assert!(err.contains("exclusive lock of rbd/counter"), "{err}");
        }
        drop(vmm); // killed: a power cut, not a shutdown
                   // All it printed before it died (complete lines), not only what had come when it
                   // was waited for.
        let mut out = std::fs::read_to_string(dir.join("serial.log")).unwrap_or(out);
        out.truncate(out.rfind('\n').map_or(0, |i| i + 1));
        let values = counter_values(&out);
        // The guest goes on from what the image held when the previous VMM died.
        assert_eq!(values[0], last + 1, "run {run}: {values:?}");
        assert!(values.windows(2).all(|w| w[1] == w[0] + 1), "{values:?}");
        let printed = *values.last().unwrap();
        // Each value is flushed before it is printed; the next may have landed too.
        let on_disk = stored();
        assert!(
            on_disk == printed || on_disk == printed + 1,
            "{on_disk} vs {printed}"
        );
        last = on_disk;
    }
}

#[test]
fn a_fenced_vmm_sees_io_errors_and_another_takes_the_disk_over() {
    if !kvm_available("a_fenced_vmm_sees_io_errors_and_another_takes_the_disk_over") {
        return;
    }
    let cluster = dev::shared();
    cluster.rbd(&["create", "--size", "16M", "rbd/fenced"]);
    let first_dir = TempDir::new("rbd-fence-first");
    let mut first = spawn(&counter_vm(&first_dir, cluster, "fenced"));
    let first_serial = first_dir.join("serial.log");
    wait_for_serial(&first_serial, "TRIAD-COUNTER ", 3, TIMEOUT);
    // Fence it as HA does: blocklist the client that watches (and so locks) the image.
    let status = String::from_utf8(cluster.rbd(&["status", "rbd/fenced"])).unwrap();
    let client = status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("watcher="))
        .unwrap_or_else(|| panic!("no watcher in {status}"));
    cluster.tool("ceph", &["osd", "blocklist", "add", client]);
    // Its guest gets an I/O error, not a hang, and the VMM itself carries on.
    let out = wait_for_serial(&first_serial, "TRIAD-COUNTER error", 1, TIMEOUT);
    assert!(first.child.try_wait().unwrap().is_none(), "the VMM died");
    let before = *counter_values(&out).last().unwrap();
    // A VMM started elsewhere takes the lock and goes on from what reached the image.
    let second_dir = TempDir::new("rbd-fence-second");
    let _second = spawn(&counter_vm(&second_dir, cluster, "fenced"));
    let out = wait_for_serial(&second_dir.join("serial.log"), "TRIAD-COUNTER ", 3, TIMEOUT);
    let resumed = counter_values(&out)[0];
    assert!(
        resumed == before + 1 || resumed == before + 2,
        "{resumed} after {before}"
    );
}

#[test]
fn a_read_only_rbd_disk_is_a_visible_client_of_its_image() {
    if !kvm_available("a_read_only_rbd_disk_is_a_visible_client_of_its_image") {
        return;
    }
    let cluster = dev::shared();
    cluster.rbd(&["create", "--size", "16M", "rbd/shared-ro"]);
    let dir = TempDir::new("rbd-ro");
    let disk = serde_json::json!([{
        "id": "ro",
        "path": "rbd:rbd/shared-ro",
        "read_only": true,
        "ceph": {"conf": cluster.conf},
    }]);
    let vm = guest_config(&dir, "triad.blk=ro", serde_json::json!({ "drives": disk }));
    let _vmm = spawn(&vm);
    let out = wait_for_serial(&dir.join("serial.log"), "TRIAD-BLK ", 1, TIMEOUT);
    assert!(out.contains("ro=1"), "{out}");
    // storaged tells a volume in use by its watchers: a reader must be one.
    let status = String::from_utf8(cluster.rbd(&["status", "rbd/shared-ro"])).unwrap();
    assert!(status.contains("watcher="), "{status}");
}
