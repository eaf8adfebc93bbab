//! Ceph pools through a `triad-storaged` process, against a real Ceph cluster
//! (`scripts/dev-ceph`, shared by these tests): images cloned into root volumes, snapshots and
//! rollback, growth, copies, who has a volume open, fencing by blocklist, and what a crash
//! or a cluster that does not answer leaves. These tests do not skip: `scripts/test`
//! installs Ceph.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{ok, Daemon, TempDir};
use triad_api::storage::{Image, ImageState, PoolInfo, Snapshot, Volume, VolumeClients};
use triad_ceph::{dev, Cluster};

const MIB: u64 = 1 << 20;

fn start_daemon(dir: &Path) -> Daemon {
    let cluster = dev::shared();
    // A cluster that does not answer: a monitor address nothing listens on.
    let down = dir.join("down.conf");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &down,
        format!("[global]\nmon host = v2:127.0.0.1:{closed}\n"),
    )
    .unwrap();
    Daemon::start(
        dir,
        serde_json::json!([
            {"name": "ceph", "kind": "ceph", "rbd_pool": "rbd", "ceph": {"conf": cluster.conf}},
            {"name": "down", "kind": "ceph", "ceph": {"conf": down}},
        ]),
    )
}

fn rbd_read(
    pool: &std::sync::Arc<triad_ceph::Pool>,
    image: &str,
    offset: u64,
    len: usize,
) -> Vec<u8> {
    let image = pool.open_read_only(image, None).unwrap();
    let mut buf = vec![0; len];
    image.read_at(offset, &mut buf).unwrap();
    buf
}

fn volume(daemon: &Daemon, body: serde_json::Value) -> Volume {
    ok(daemon.call("POST", "/pools/ceph/volumes", Some(body)))
}

#[test]
fn root_volumes_are_clones_of_images_with_snapshots_rollback_and_fencing() {
    let tmp = TempDir::new("ceph");
    let dir = tmp.path();
    let daemon = start_daemon(dir);
    let io = Cluster::connect(&dev::shared().conf, "admin", &[])
        .unwrap()
        .pool("rbd")
        .unwrap();

    // An image from a raw file: its data once, in the pool.
    let raw = dir.join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(b"boot sector", 0).unwrap();
    f.write_all_at(b"root fs", 40 * MIB).unwrap();
    let resp = daemon.call(
        "POST",
        "/pools/ceph/images",
        Some(serde_json::json!({"id": "deb", "name": "debian", "source": {"kind": "file", "path": raw}})),
    );
    assert_eq!(resp.status, 202, "{}", resp.body);
    let start = Instant::now();
    let image = loop {
        let image: Image = ok(daemon.call("GET", "/pools/ceph/images/deb", None));
        if image.state != ImageState::Importing {
            break image;
        }
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (image.state, image.size_bytes),
        (ImageState::Ready, 64 * MIB),
        "{image:?}"
    );
    assert_eq!(
        image.allocated_bytes,
        8 * MIB,
        "two 4 MiB objects hold its data"
    );

    // A root volume is a copy-on-write clone: it takes nothing until the VM writes.
    let root = volume(
        &daemon,
        serde_json::json!({"id": "vm1", "name": "vm1-root",
        "size_bytes": 128 * MIB, "source": {"kind": "image", "id": "deb"}}),
    );
    assert_eq!(root.path.to_str(), Some("rbd:rbd/triad-volume-vm1"));
    assert_eq!(root.ceph.as_ref().unwrap().conf, dev::shared().conf);
    assert_eq!((root.size_bytes, root.allocated_bytes), (128 * MIB, 0));
    assert_eq!(rbd_read(&io, "triad-volume-vm1", 40 * MIB, 7), b"root fs");
    let drive = root.drive("root");
    assert_eq!(
        (drive.id.as_str(), drive.path.to_str()),
        ("root", Some("rbd:rbd/triad-volume-vm1"))
    );
    let again = volume(
        &daemon,
        serde_json::json!({"id": "vm1", "name": "vm1-root",
        "size_bytes": 128 * MIB, "source": {"kind": "image", "id": "deb"}}),
    );
    assert_eq!(again, root, "a retried create");
    let msg = daemon.error(
        409,
        "POST",
        "/pools/ceph/volumes",
        serde_json::json!({"id": "vm9", "name": "vm1-root", "size_bytes": MIB}),
    );
    assert_eq!(msg, "volume name vm1-root is taken by volume vm1");
    let msg = daemon.error(
        409,
        "DELETE",
        "/pools/ceph/images/deb",
        serde_json::json!(null),
    );
    assert!(msg.contains("has volumes cloned from it"), "{msg}");

    // Snapshots, and rollback.
    let vm = io.open("triad-volume-vm1").unwrap();
    vm.write_at(0, b"monday").unwrap();
    drop(vm);
    let s: Snapshot = ok(daemon.call(
        "POST",
        "/pools/ceph/volumes/vm1/snapshots",
        Some(serde_json::json!({"name": "mon"})),
    ));
    assert_eq!(s.size_bytes, 128 * MIB);
    let vm = io.open("triad-volume-vm1").unwrap();
    vm.write_at(0, b"friday").unwrap();
    drop(vm);
    let grown: Volume = ok(daemon.call(
        "POST",
        "/pools/ceph/volumes/vm1/grow",
        Some(serde_json::json!({"size_bytes": 256 * MIB})),
    ));
    assert_eq!(grown.size_bytes, 256 * MIB);
    let copy = volume(
        &daemon,
        serde_json::json!({"id": "mon-copy", "name": "mon-copy",
        "size_bytes": 128 * MIB, "source": {"kind": "snapshot", "volume": "vm1", "snapshot": "mon"}}),
    );
    assert_eq!(rbd_read(&io, "triad-volume-mon-copy", 0, 6), b"monday");
    assert!(
        copy.allocated_bytes > 0,
        "a snapshot's copy is flattened: {copy:?}"
    );
    let dup = volume(
        &daemon,
        serde_json::json!({"id": "dup", "name": "dup",
        "size_bytes": 256 * MIB, "source": {"kind": "volume", "id": "vm1"}}),
    );
    assert_eq!(rbd_read(&io, "triad-volume-dup", 0, 6), b"friday");
    assert_eq!(rbd_read(&io, "triad-volume-dup", 40 * MIB, 7), b"root fs");
    assert_eq!(dup.size_bytes, 256 * MIB);

    // A VMM holding the volume: it is listed, and the volume is not rolled back or deleted
    // under it.
    let vmm = Cluster::connect(&dev::shared().conf, "admin", &[])
        .unwrap()
        .pool("rbd")
        .unwrap();
    let held = vmm.open("triad-volume-vm1").unwrap();
    held.lock_exclusive().unwrap();
    let clients: VolumeClients = ok(daemon.call("GET", "/pools/ceph/volumes/vm1/clients", None));
    assert_eq!(clients.watchers.len(), 1, "{clients:?}");
    assert_eq!(clients.lock_owners.len(), 1, "{clients:?}");
    let msg = daemon.error(
        409,
        "POST",
        "/pools/ceph/volumes/vm1/snapshots/mon/rollback",
        serde_json::json!({}),
    );
    assert_eq!(msg, "volume vm1 is in use (a VMM has it open)");
    assert_eq!(daemon.status("DELETE", "/pools/ceph/volumes/vm1"), 409);
    // A snapshot of the running disk is taken (its VMM, the lock's owner, takes it).
    let live: Snapshot = ok(daemon.call(
        "POST",
        "/pools/ceph/volumes/vm1/snapshots",
        Some(serde_json::json!({"name": "live"})),
    ));
    assert_eq!(live.name, "live");

    // Fenced through the API: its writes fail, and the volume is free again.
    let addr = clients.watchers[0].addr.clone();
    let resp = daemon.call(
        "POST",
        "/pools/ceph/blocklist",
        Some(serde_json::json!({"addr": addr, "expire_seconds": 600})),
    );
    assert_eq!(resp.status, 204, "{}", resp.body);
    let start = Instant::now();
    while held.write_at(0, b"late").is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still writes after the blocklist"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
    let msg = daemon.error(
        400,
        "POST",
        "/pools/ceph/blocklist",
        serde_json::json!({"addr": ""}),
    );
    assert!(msg.starts_with("addr \"\""), "{msg}");
    // Its watch lapses (5 s on the dev cluster); then the rollback goes through.
    let start = Instant::now();
    loop {
        let resp = daemon.call(
            "POST",
            "/pools/ceph/volumes/vm1/snapshots/mon/rollback",
            None,
        );
        if resp.status == 204 {
            break;
        }
        assert_eq!(resp.status, 409, "{}", resp.body);
        assert!(start.elapsed() < Duration::from_secs(60), "{}", resp.body);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(rbd_read(&io, "triad-volume-vm1", 0, 6), b"monday");
    let rolled: Volume = ok(daemon.call("GET", "/pools/ceph/volumes/vm1", None));
    assert_eq!(rolled.size_bytes, 128 * MIB);

    // A crash between a clone and its record leaves an image without one: not a volume, and
    // not taken for one that failed until it is old enough that no node can still be making
    // it (another node's is given its record within milliseconds).
    io.create_image("triad-volume-retried", MIB).unwrap();
    let listed: Vec<Volume> = ok(daemon.call("GET", "/pools/ceph/volumes", None));
    assert!(!listed.iter().any(|v| v.id == "retried"), "{listed:?}");
    let msg = daemon.error(
        409,
        "POST",
        "/pools/ceph/volumes",
        serde_json::json!({"id": "retried", "name": "retried", "size_bytes": 2 * MIB}),
    );
    assert!(msg.contains("is being made"), "{msg}");
    // An image of the same look that is not Triad's is left alone.
    io.create_image("volume-not-ours", MIB).unwrap();
    // A crash halfway through a copy leaves an image under this node's partial name; the
    // next start removes it.
    io.create_image("triad-partial:node-1:triad-volume-lost", MIB)
        .unwrap();
    drop(daemon);
    let daemon = start_daemon(dir);
    ok::<Vec<Volume>>(daemon.call("GET", "/pools/ceph/volumes", None));
    assert!(!io
        .images()
        .unwrap()
        .iter()
        .any(|i| i.starts_with("triad-partial:node-1:")));
    assert!(io.images().unwrap().contains(&"volume-not-ours".to_owned()));

    // A cluster that does not answer: that pool's calls fail with a clear error, the other
    // pools go on.
    let pools: Vec<PoolInfo> = ok(daemon.call("GET", "/pools", None));
    let ceph = pools.iter().find(|p| p.name == "ceph").unwrap();
    assert!(
        ceph.usage.as_ref().unwrap().provisioned_bytes >= 128 * MIB,
        "{ceph:?}"
    );
    let down = pools.iter().find(|p| p.name == "down").unwrap();
    assert!(
        down.usage.is_none()
            && down
                .error
                .as_deref()
                .unwrap_or("")
                .contains("connecting to the Ceph cluster"),
        "{down:?}"
    );
    let resp = daemon.call("GET", "/pools/down/volumes", None);
    assert_eq!(resp.status, 503, "{}", resp.body);

    // Everything goes, snapshots with it; then the image can.
    io.remove_image("triad-volume-retried").unwrap();
    io.remove_image("volume-not-ours").unwrap();
    for id in ["vm1", "mon-copy", "dup"] {
        assert_eq!(
            daemon.status("DELETE", &format!("/pools/ceph/volumes/{id}")),
            204
        );
    }
    assert_eq!(daemon.status("DELETE", "/pools/ceph/images/deb"), 204);
    let left: Vec<_> = io.images().unwrap();
    assert!(!left.iter().any(|i| i.starts_with("triad-")), "{left:?}");
}
