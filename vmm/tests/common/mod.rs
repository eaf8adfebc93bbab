//! Shared helpers for the VMM's KVM integration tests: locating the test guest, running
//! `triad-vmm` as a real process, watching its serial output, and reporting skips loudly.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const VMM: &str = env!("CARGO_BIN_EXE_triad-vmm");

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
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

pub fn guest_elf() -> PathBuf {
    guest("testguest.elf")
}

/// Records a skipped test where `scripts/test` reports it, and on stderr.
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

/// A directory removed on drop, unique per test and process.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("triad-vmm-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
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

/// A VM config as JSON, serial to `serial` (a file path), or stdout when `None`.
pub fn config_json(
    kernel: &Path,
    cmdline: &str,
    vcpus: u32,
    memory_mib: u64,
    serial: Option<&Path>,
) -> String {
    let serial = match serial {
        Some(p) => serde_json::json!({"mode": "file", "path": p}),
        None => serde_json::json!({"mode": "stdout"}),
    };
    serde_json::json!({
        "boot": {"kernel": kernel, "cmdline": cmdline},
        "machine": {"vcpus": vcpus, "memory_mib": memory_mib},
        "serial": serial,
    })
    .to_string()
}

/// A running `triad-vmm`, killed on drop if still alive.
pub struct VmmProcess {
    pub child: Child,
}

impl VmmProcess {
    pub fn spawn(args: &[&str]) -> Self {
        let child = Command::new(VMM)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning triad-vmm");
        Self { child }
    }

    /// Waits for exit; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "triad-vmm still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `triad-vmm` to completion and returns (exit code, stdout, stderr).
pub fn run_vmm(args: &[&str], timeout: Duration) -> (Option<i32>, String, String) {
    let mut p = VmmProcess::spawn(args);
    let status = p.wait(timeout);
    let mut out = String::new();
    if let Some(mut o) = p.child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    let err = p.stderr();
    (status.code(), out, err)
}

/// The test guest's VM config in `dir` (serial to `dir/serial.log`), with `devices` merged
/// in (e.g. `{"drives": [...]}`); returns its path.
pub fn guest_config(dir: &TempDir, cmdline: &str, devices: serde_json::Value) -> PathBuf {
    let serial = dir.join("serial.log");
    let mut json: serde_json::Value =
        serde_json::from_str(&config_json(&guest_elf(), cmdline, 1, 64, Some(&serial))).unwrap();
    if let serde_json::Value::Object(devices) = devices {
        json.as_object_mut().unwrap().extend(devices);
    }
    let path = dir.join("vm.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// The values of the `TRIAD-COUNTER n` lines in serial output, in order.
pub fn counter_values(serial: &str) -> Vec<u64> {
    serial
        .lines()
        .filter_map(|l| l.strip_prefix("TRIAD-COUNTER "))
        .filter_map(|v| v.parse().ok())
        .collect()
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
            "waited {timeout:?} for {count}x {needle:?} in serial output; got:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the API socket at `path` exists.
pub fn wait_for_socket(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < timeout,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
