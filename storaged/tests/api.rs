//! `triad-storaged` as a process: its HTTP API on a Unix socket, a local pool on disk, and a
//! restart that finds the volumes again.

mod common;

use std::time::Duration;

use common::{ok, Daemon, TempDir};
use triad_api::storage::{Heartbeat, PoolInfo, Volume};

fn start(dir: &std::path::Path) -> Daemon {
    Daemon::start(
        dir,
        serde_json::json!([
            {"name": "local", "kind": "local", "path": dir.join("pool")},
            {"name": "shared", "kind": "smp", "path": dir.join("shared")},
        ]),
    )
}

#[test]
fn volumes_are_made_and_kept_through_a_restart() {
    let tmp = TempDir::new("api");
    let dir = tmp.path();
    let daemon = start(dir);
    let create = serde_json::json!({"id": "v-1", "name": "root", "size_bytes": 1u64 << 30});
    let v: Volume = ok(daemon.call("POST", "/pools/local/volumes", Some(create.clone())));
    assert_eq!((v.size_bytes, v.pool.as_str()), (1 << 30, "local"));
    assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 1 << 30);
    let again: Volume = ok(daemon.call("POST", "/pools/local/volumes", Some(create)));
    assert_eq!(again, v, "a retried create returns the same volume");
    let clone = serde_json::json!({
        "id": "v-2", "name": "vm-root", "size_bytes": 2u64 << 30,
        "source": {"kind": "volume", "id": "v-1"},
    });
    let c: Volume = ok(daemon.call("POST", "/pools/local/volumes", Some(clone)));
    assert_eq!(c.size_bytes, 2 << 30);

    // Bad input: a clear message, nothing made.
    let msg = daemon.error(
        409,
        "POST",
        "/pools/local/volumes",
        serde_json::json!({"id": "v-3", "name": "root", "size_bytes": 512}),
    );
    assert_eq!(msg, "volume name root is taken by volume v-1");
    let msg = daemon.error(
        400,
        "POST",
        "/pools/local/volumes",
        serde_json::json!({"id": "v-3", "name": "x", "size": 512}),
    );
    assert!(msg.contains("unknown field `size`"), "{msg}");
    let msg = daemon.error(
        404,
        "POST",
        "/pools/nope/volumes",
        serde_json::json!({"id": "v-3", "name": "x", "size_bytes": 512}),
    );
    assert_eq!(msg, "pool nope not found");
    let msg = daemon.error(
        400,
        "POST",
        "/pools/local/volumes/v-2/grow",
        serde_json::json!({"size_bytes": 1u64 << 20}),
    );
    assert!(msg.contains("volumes only grow"), "{msg}");
    let grown: Volume = ok(daemon.call(
        "POST",
        "/pools/local/volumes/v-2/grow",
        Some(serde_json::json!({"size_bytes": 4u64 << 30})),
    ));
    assert_eq!(grown.size_bytes, 4 << 30);

    // Killed, not stopped: a new daemon finds the volumes as they were.
    drop(daemon);
    let daemon = start(dir);
    let volumes: Vec<Volume> = ok(daemon.call("GET", "/pools/local/volumes", None));
    assert_eq!(volumes, vec![v.clone(), grown]);
    let pools: Vec<PoolInfo> = ok(daemon.call("GET", "/pools", None));
    assert_eq!(pools.len(), 2);
    assert_eq!(
        pools[0].usage.as_ref().unwrap().provisioned_bytes,
        (1 << 30) + (4 << 30)
    );
    assert_eq!(daemon.status("DELETE", "/pools/local/volumes/v-1"), 204);
    assert_eq!(daemon.status("DELETE", "/pools/local/volumes/v-1"), 204);
    assert_eq!(daemon.status("GET", "/pools/local/volumes/v-1"), 404);
    assert!(!v.path.exists());

    // The shared-mount pool carries this node's storage heartbeat, advancing.
    let beats: Vec<Heartbeat> = ok(daemon.call("GET", "/pools/shared/heartbeats", None));
    std::thread::sleep(Duration::from_millis(200));
    let later: Vec<Heartbeat> = ok(daemon.call("GET", "/pools/shared/heartbeats", None));
    assert_eq!((beats.len(), later[0].node.as_str()), (1, "node-1"));
    assert!(later[0].beat > beats[0].beat, "{beats:?} then {later:?}");
    let resp = daemon.call("GET", "/pools/local/heartbeats", None);
    assert_eq!(resp.status, 400);
    assert!(
        resp.body.contains("only shared-mount (smp) pools"),
        "{}",
        resp.body
    );
}
