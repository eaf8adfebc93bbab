//! The binding against a real Ceph cluster (`scripts/dev-ceph`, shared by these tests, each on
//! images of its own). These tests do not skip: `scripts/test` installs Ceph.

use std::sync::Arc;

use triad_ceph::{dev, Cluster};

fn connect() -> Arc<triad_ceph::Pool> {
    let cluster = Cluster::connect(&dev::shared().conf, "admin", &[]).unwrap();
    cluster.pool("rbd").unwrap()
}

const MIB: u64 = 1 << 20;

#[test]
fn images_are_created_written_grown_measured_renamed_and_removed() {
    let pool = connect();
    pool.create_image("basic", 64 * MIB).unwrap();
    assert!(pool.images().unwrap().contains(&"basic".to_owned()));
    let e = pool.create_image("basic", MIB).unwrap_err();
    assert_eq!(e.errno, libc::EEXIST, "{e}");

    let image = pool.open("basic").unwrap();
    assert_eq!(image.size().unwrap(), 64 * MIB);
    let age = image.created().unwrap().elapsed().unwrap_or_default();
    assert!(age < std::time::Duration::from_secs(60), "{age:?}");
    assert_eq!(image.allocated_bytes().unwrap(), 0, "a new image is thin");
    image.write_at(8 * MIB, &[0xab; 4096]).unwrap();
    let mut back = [0u8; 4096];
    assert_eq!(image.read_at(8 * MIB, &mut back).unwrap(), 4096);
    assert_eq!(back, [0xab; 4096]);
    // One 4 MiB object holds the write.
    assert_eq!(image.allocated_bytes().unwrap(), 4 * MIB);
    image.resize(128 * MIB).unwrap();
    assert_eq!(image.size().unwrap(), 128 * MIB);

    assert_eq!(image.metadata("triad.name").unwrap(), None);
    let long = "x".repeat(1000);
    image.set_metadata("triad.name", &long).unwrap();
    assert_eq!(image.metadata("triad.name").unwrap(), Some(long));
    drop(image);

    pool.rename_image("basic", "renamed").unwrap();
    let e = pool.open("basic").unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
    assert_eq!(
        e.to_string(),
        "opening image rbd/basic: No such file or directory (os error 2)"
    );
    pool.remove_image("renamed").unwrap();
    assert!(!pool.images().unwrap().contains(&"renamed".to_owned()));
}

#[test]
fn snapshots_roll_back_and_protected_ones_are_cloned_copy_on_write() {
    let pool = connect();
    pool.create_image("parent", 16 * MIB).unwrap();
    let parent = pool.open("parent").unwrap();
    parent.write_at(0, b"first").unwrap();
    parent.create_snapshot("one").unwrap();
    parent.write_at(0, b"later").unwrap();
    let snaps = parent.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!((snaps[0].name.as_str(), snaps[0].size), ("one", 16 * MIB));

    parent.rollback("one").unwrap();
    let mut buf = [0u8; 5];
    parent.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"first");

    let e = pool.clone_image("parent", "one", "child").unwrap_err();
    assert_eq!(
        e.errno,
        libc::EINVAL,
        "an unprotected snapshot is not cloned: {e}"
    );
    parent.protect("one").unwrap();
    assert!(parent.is_protected("one").unwrap());
    pool.clone_image("parent", "one", "child").unwrap();
    let child = pool.open("child").unwrap();
    child.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"first", "the clone reads its parent's data");
    assert_eq!(child.allocated_bytes().unwrap(), 0, "and holds none of it");
    child.write_at(0, b"child").unwrap();
    parent.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"first", "the parent is untouched by its clone");

    let e = parent.unprotect("one").unwrap_err();
    assert_eq!(e.errno, libc::EBUSY, "a snapshot with clones stays: {e}");
    child.flatten().unwrap();
    parent.unprotect("one").unwrap();
    parent.remove_snapshot("one").unwrap();
    drop(parent);
    pool.remove_image("parent").unwrap();
    child.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"child", "a flattened clone outlives its parent");
    drop(child);
    pool.remove_image("child").unwrap();
}

#[test]
fn a_locked_image_refuses_others_until_its_holder_is_blocklisted() {
    let pool = connect();
    pool.create_image("locked", 16 * MIB).unwrap();
    let holder = pool.open("locked").unwrap();
    holder.lock_exclusive().unwrap();
    holder.write_at(0, b"mine").unwrap();

    let other = connect();
    let other_image = other.open("locked").unwrap();
    let e = other_image.lock_exclusive().unwrap_err();
    assert_eq!(e.errno, libc::EBUSY);
    assert!(e.to_string().contains("another client holds it"), "{e}");
    assert_eq!(other_image.lock_owners().unwrap().len(), 1);
    let watchers = other_image.watchers().unwrap();
    assert_eq!(watchers.len(), 2, "{watchers:?}");

    // Fence the holder: its watch carries its connection's id.
    let holder_addr = watchers
        .iter()
        .find(|w| w.id == i64::try_from(pool.cluster().instance_id()).unwrap())
        .expect("the holder watches the image")
        .addr
        .clone();
    other.cluster().blocklist_add(&holder_addr, 60).unwrap();
    // The OSDs refuse it once the new OSD map reaches them, which takes a moment.
    let start = std::time::Instant::now();
    let e = loop {
        match holder.write_at(4096, b"late") {
            Err(e) => break e,
            Ok(()) if start.elapsed() < std::time::Duration::from_secs(30) => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Ok(()) => panic!("the fenced client still writes after 30 s"),
        }
    };
    assert_eq!(
        e.errno,
        libc::ESHUTDOWN,
        "a fenced client's writes fail: {e}"
    );
    other_image.lock_exclusive().unwrap();
    let mut buf = [0u8; 4];
    other_image.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"mine");
}

#[test]
fn monitor_commands_answer_and_the_cluster_reports_its_capacity() {
    let pool = connect();
    let (out, _) = pool
        .cluster()
        .mon_command(r#"{"prefix": "osd pool ls", "format": "json"}"#)
        .unwrap();
    let pools: Vec<String> = serde_json::from_slice(&out).unwrap();
    assert!(pools.contains(&"rbd".to_owned()), "{pools:?}");
    let e = pool
        .cluster()
        .mon_command(r#"{"prefix": "no such command"}"#)
        .unwrap_err();
    assert!(e.what.starts_with("monitor command"), "{e}");
    let (total, used, free) = pool.cluster().capacity().unwrap();
    assert!(total > 0 && used > 0 && free > 0 && used + free <= total + total / 100);
    let e = pool.cluster().pool("no-such-pool").unwrap_err();
    assert_eq!(e.errno, libc::ENOENT, "{e}");
}
