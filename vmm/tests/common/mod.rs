//! Shared helpers for the VMM's KVM integration tests: locating the test guest, running
//! `triad-vmm` as a real process, watching its serial output, and reporting skips loudly.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const VMM: &str = env!("CARGO_BIN_EXE_triad-vmm");

#[allow(unused_imports)] // each test binary uses its own subset
pub use triad_tests::{
    guest, guest_elf, kvm_available, skip, wait_for_serial, workspace_root, TempDir,
};

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

/// Waits until the API socket at `path` accepts connections.
pub fn wait_for_socket(path: &Path, timeout: Duration) {
    let start = Instant::now();
    // The file appears at bind, a moment before the VMM listens: wait until it answers.
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            start.elapsed() < timeout,
            "{} never answered",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
