//! The state file: every VM this node holds, what its ensures made, and its VMM's process.
//! Rewritten whole (temporary file, fsync, rename) on every change, so that hostd killed at
//! any moment finds either the old state or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use triad_api::hostd::{DiskState, NicState, Power, VmSpec};

use crate::Error;

/// `state.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub vms: BTreeMap<String, VmRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    pub spec: VmSpec,
    /// Set while the ensure that makes the VM runs: hostd undoes a VM it finds so on start.
    pub making: bool,
    /// Whether the VM should run: start and stop requests set it, and an exit of a VM that
    /// is not NeverStop clears it.
    pub desired: Power,
    /// Volumes an ensure of this VM made: (pool, volume). Recorded before each is made.
    #[serde(default)]
    pub volumes_made: Vec<(String, String)>,
    /// netd ports an ensure of this VM made. Recorded before each is made.
    #[serde(default)]
    pub ports_made: Vec<String>,
    #[serde(default)]
    pub disks: Vec<DiskState>,
    #[serde(default)]
    pub nics: Vec<NicState>,
    /// The VMM process last started for the VM (absent once it is known to have ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmRecord>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// A VMM process, told from a later process with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmRecord {
    pub pid: u32,
    /// Clock ticks after boot (/proc/PID/stat, field 22).
    pub start_time: u64,
}

/// The state file at `dir/state.json`.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("state.json"),
        }
    }

    /// What the file holds; an empty state when there is no file yet.
    pub fn load(&self) -> Result<State, Error> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::System(format!(
                    "{} is damaged ({e}); move it away to start with no VMs",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::System(format!(
                "reading {}: {e}",
                self.path.display()
            ))),
        }
    }

    pub fn save(&self, state: &State) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::System(e.to_string()))?;
        write_atomically(&self.path, &json)
    }
}

/// Replaces `path` with `bytes` whole, mode 0600: what hostd keeps holds secrets (user-data,
/// SSH keys, the cluster key).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    triad_api::secrets::write(path, bytes)
        .map_err(|e| Error::System(format!("writing {}: {e}", path.display())))
}

/// Holds `dir/lock` (flock) for as long as it lives: one hostd per state directory.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    pub fn take(dir: &Path) -> Result<Self, Error> {
        use std::os::fd::AsRawFd;
        let path = dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::System(format!("opening {}: {e}", path.display())))?;
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::System(format!(
                "another triad-hostd holds {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self { _file: f })
    }
}
