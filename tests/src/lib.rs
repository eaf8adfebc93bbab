//! What Triad's integration tests share: reporting a skip, a temporary directory per test,
//! network namespaces standing in for hosts, the built daemons and test guest, and (in
//! `cluster`) three nodes joined by management, storage and data networks.
//!
//! Tests run as root and touch the host: every name here is unique to the test process, is
//! removed on drop (also when the test fails), and one left by a crashed earlier run is
//! removed before it is made again.

pub mod cluster;
mod etcd;
pub mod install;
pub mod machines;
mod netns;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use cluster::{Cluster, Controller, Daemon, Node};
pub use etcd::{free_port, Etcd};
pub use machines::{Machine, Machines};
pub use netns::{enter_netns, ping, Ns};

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// Records a skipped test where `scripts/test` lists it, and on stderr.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    let log = workspace_root().join("target/test-skips.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{test}: {reason}");
    }
}

/// True when KVM can be used; otherwise records the skip.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(test, &format!("/dev/kvm cannot be opened ({e})"));
            false
        }
    }
}

/// A directory of one test's own, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `triad-NAME-PID` in the system's temporary directory: short, so that Unix socket
    /// paths under it stay within their 108 bytes.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("triad-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command and panics with its output when it fails; its standard output.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `done` every 20 ms until it gives a value; panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut done: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A binary of the workspace, as `cargo test --workspace` builds it (beside the test's
/// own `deps/` directory).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// The test guest, built by `scripts/build-testguest` (which `scripts/test` runs first).
pub fn guest(name: &str) -> PathBuf {
    let path = workspace_root().join("target/testguest").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-testguest first",
        path.display()
    );
    path
}

/// The test guest as a PVH ELF, the form Triad boots.
pub fn guest_elf() -> PathBuf {
    guest("testguest.elf")
}

/// Waits until the complete lines of `path` hold `count` occurrences of `needle`; returns
/// those lines.
pub fn wait_for_serial(path: &Path, needle: &str, count: usize, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let mut text = std::fs::read_to_string(path).unwrap_or_default();
        // Complete lines only: the guest writes a byte at a time.
        text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        if text.matches(needle).count() >= count {
            return text;
        }
        assert!(
            start.elapsed() < timeout,
            "waited {timeout:?} for {count}x {needle:?} in {}; got:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILLs the processes `find` lists, again and again until it lists none (or 10 s pass):
/// a process may fork while it is being killed.
pub fn kill_until_gone(mut find: impl FnMut() -> Vec<u32>) {
    let start = Instant::now();
    loop {
        let pids = find();
        if pids.is_empty() || start.elapsed() > Duration::from_secs(10) {
            return;
        }
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on a process of this test; no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
