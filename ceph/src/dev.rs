//! A throw-away Ceph cluster for tests: `scripts/dev-ceph` brings it up once per test
//! process, under `target/tmp`, and takes it down when the process exits. Tests share it and
//! keep apart by using images of their own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug)]
pub struct DevCluster {
    pub dir: PathBuf,
    /// Its ceph.conf, naming the admin keyring.
    pub conf: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the ceph crate sits in the workspace")
        .to_owned()
}

/// This test process's cluster, brought up by the first test that asks (about half a minute).
pub fn shared() -> &'static DevCluster {
    static CLUSTER: OnceLock<DevCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let pid = std::process::id();
        let exe = std::env::current_exe().unwrap_or_default();
        let stem = exe
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("test")
            .split('-')
            .next()
            .unwrap_or("test")
            .to_owned();
        let dir = workspace_root()
            .join("target/tmp")
            .join(format!("ceph-{stem}-{pid}"));
        let out = Command::new(workspace_root().join("scripts/dev-ceph"))
            .arg("up")
            .arg(&dir)
            .args(["--owner", &pid.to_string()])
            .output()
            .expect("running scripts/dev-ceph");
        assert!(
            out.status.success(),
            "dev-ceph up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        DevCluster {
            conf: dir.join("ceph.conf"),
            dir,
        }
    })
}

impl DevCluster {
    /// Runs a Ceph command-line tool (`rbd`, `ceph`, `rados`) against this cluster; panics
    /// when it fails.
    pub fn tool(&self, tool: &str, args: &[&str]) -> Vec<u8> {
        let out = Command::new(tool)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn rbd(&self, args: &[&str]) -> Vec<u8> {
        self.tool("rbd", args)
    }
}
