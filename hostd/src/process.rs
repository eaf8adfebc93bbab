//! VMM processes: starting one, telling whether a recorded one still runs, finding the ones a
//! killed hostd left, and waiting for one to end (a child of ours or an adopted one).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use triad_api::tools::HostTool;

use crate::state::VmmRecord;

/// A program hostd runs when it is a systemd service: each VMM is started in a transient scope
/// unit of its own, outside hostd's cgroup, so that stopping, restarting or upgrading hostd
/// (which ends every process of its unit) leaves the VMs running.
pub const SYSTEMD_RUN: HostTool = HostTool {
    command: "systemd-run",
    package: "systemd",
    needed_for: "keeping VMMs in scopes of their own when triad-hostd runs under systemd",
};

/// The slice every VMM's scope is put in (`systemctl status triad-vms.slice` lists them).
pub const VMM_SLICE: &str = "triad-vms.slice";

/// Whether hostd runs as a systemd service (systemd sets `INVOCATION_ID` for each unit it
/// starts) on a host that systemd boots.
pub fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some() && Path::new("/run/systemd/system").is_dir()
}

/// Starts `triad_vmm --config CONFIG --api-sock SOCKET` in a process group of its own (so that
/// a signal to hostd's group leaves VMs alone), its output appended to `log`. With `scope`
/// (the VM's UUID), `systemd-run --scope` puts it in a scope unit of its own first and then
/// becomes the VMM (it execs, so the child's pid is the VMM's).
pub fn spawn(
    triad_vmm: &Path,
    config: &Path,
    socket: &Path,
    log: &Path,
    scope: Option<&str>,
) -> std::io::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = match scope {
        Some(uuid) => {
            let mut run = Command::new(SYSTEMD_RUN.command);
            run.args(["--scope", "--quiet", "--collect", "--slice", VMM_SLICE])
                .arg(format!("--description=Triad VM {uuid}"))
                .arg("--")
                .arg(triad_vmm);
            run
        }
        None => Command::new(triad_vmm),
    };
    command
        .arg("--config")
        .arg(config)
        .arg("--api-sock")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
}

/// The process's start time (clock ticks after boot), while it lives and is not a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // Field 3 (state) is fields[0], so field 22 (starttime) is fields[19].
    fields.get(19)?.parse().ok()
}

/// Whether the recorded process is still the one that runs under its pid.
pub fn is_alive(vmm: &VmmRecord) -> bool {
    start_time(vmm.pid) == Some(vmm.start_time)
}

/// Every running VMM whose API socket lies in `vms_dir` (as `vms_dir/UUID/vmm.sock`): its
/// VM's UUID and process.
pub fn find_vmms(vms_dir: &Path) -> Vec<(String, VmmRecord)> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let Some(socket) = args
            .windows(2)
            .find(|w| w[0] == b"--api-sock")
            .map(|w| PathBuf::from(String::from_utf8_lossy(w[1]).into_owned()))
        else {
            continue;
        };
        let Some(uuid) = socket
            .strip_prefix(vms_dir)
            .ok()
            .and_then(|rel| rel.parent())
            .and_then(|p| p.to_str())
            .map(str::to_owned)
        else {
            continue;
        };
        if let Some(start_time) = start_time(pid) {
            found.push((uuid, VmmRecord { pid, start_time }));
        }
    }
    found
}

/// Sends `signal` to the process, if it is still the recorded one.
pub fn signal(vmm: &VmmRecord, signal: i32) {
    if is_alive(vmm) {
        if let Ok(pid) = i32::try_from(vmm.pid) {
            // SAFETY: kill(2) on a pid checked just now to be the VMM; it has no memory effects.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// Blocks until a process that is not hostd's child ends (a VMM adopted after a restart):
/// polls a pidfd, which becomes readable when the process exits.
pub fn wait_adopted(vmm: &VmmRecord) {
    let Ok(pid) = libc::pid_t::try_from(vmm.pid) else {
        return;
    };
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let Ok(raw) = i32::try_from(raw) else {
        return;
    };
    if raw < 0 {
        return; // already gone
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // The pid may have been reused between reading its start time and opening the pidfd.
    if !is_alive(vmm) {
        return;
    }
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on this frame.
        let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if n > 0 || !is_alive(vmm) {
            return;
        }
    }
}
