//! Real servers on one machine: Debian 12 systems booted by `systemd-nspawn` with systemd as
//! PID 1 (`../shared/DESIGN.md` §5), each with its management, storage and data networks on
//! bridges of a switch namespace, `/dev/kvm` and `/dev/net/tun`, a shared directory at the same
//! path on every machine (a shared-mount pool) and Triad's `.deb`s to install.
//!
//! Every machine boots from one root made by `scripts/debian-rootfs`, with a volatile overlay of
//! its own: what it writes is gone when it goes. Names carry the test's pid; on drop every
//! process of every machine is killed and its namespace, cgroups and files removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::LINKS;
use crate::{wait_for, workspace_root, Ns, TempDir};

/// Where each machine sees the shared directory, the packages and the test guest.
pub const SHARED: &str = "/srv/triad-shared";
pub const DEBS: &str = "/srv/triad-debs";
pub const GUEST: &str = "/srv/triad-guest";

/// The cgroup hierarchies a machine's processes are put in (this host's hybrid layout).
const CGROUP_ROOTS: [&str; 2] = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"];
const CGROUP_PARENT: &str = "triad-machines";

/// Why machines cannot boot here, if they cannot: what a test that needs them skips with.
pub fn unavailable() -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm does not exist on this host".into());
    }
    for root in CGROUP_ROOTS {
        if !Path::new(root).is_dir() {
            return Some(format!(
                "{root} is missing: systemd-nspawn machines need this host's hybrid cgroup layout"
            ));
        }
    }
    None
}

/// One booted machine.
#[derive(Debug)]
pub struct Machine {
    /// Its machine and host name.
    pub name: String,
    pub index: usize,
    nspawn: Option<Child>,
    /// The machine's PID 1 (its systemd) as this host sees it.
    pub leader: u32,
    pub log: PathBuf,
    // Dropped last: the namespace its network lives in.
    pub ns: Ns,
}

impl Machine {
    /// Its address on link `link` (an entry of `LINKS`): `10.25x.0.(index + 1)`.
    pub fn addr(&self, link: usize) -> String {
        format!("{}.{}", LINKS[link].2, self.index + 1)
    }

    /// `sh -c SCRIPT` inside the machine (every namespace of its PID 1), as root.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-a",
                "/bin/sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running nsenter: {e}"))
    }

    /// `sh -c SCRIPT` inside the machine; its standard output, and a panic with both outputs
    /// when it fails.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{}: `{script}` failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The main pid of a systemd unit in the machine (0 when it does not run).
    pub fn main_pid(&self, unit: &str) -> u32 {
        self.sh_ok(&format!("systemctl show -P MainPID {unit}"))
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Pids of the machine's processes (as the machine sees them) whose command line starts
    /// with `program`.
    pub fn pids_of(&self, program: &str) -> Vec<u32> {
        let out = self.sh(&format!("pgrep -x {program}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// A power loss: every process of the machine is killed at once.
    pub fn power_off(&mut self) {
        kill_cgroup(&self.cgroup_name());
        if let Some(mut nspawn) = self.nspawn.take() {
            let _ = nspawn.kill();
            let _ = nspawn.wait();
        }
    }

    fn cgroup_name(&self) -> String {
        format!("{CGROUP_PARENT}/{}", self.name)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.power_off();
        remove_cgroup(&self.cgroup_name());
    }
}

/// Machines on one switch: `NAME-1` .. `NAME-n`.
#[derive(Debug)]
pub struct Machines {
    pub machines: Vec<Machine>,
    /// Seen by every machine at `SHARED`.
    pub shared: PathBuf,
    /// The switch namespace, where every machine's links meet; the host side of the tests
    /// (the CLI "from outside") runs here, at `10.250.0.254` on the management network.
    pub switch: Ns,
    dir: TempDir,
}

impl Machines {
    /// Boots `n` machines from the root `scripts/debian-rootfs` makes, with the `.deb`s of
    /// `debs` at `DEBS`, and waits until systemd has started each.
    pub fn boot(name: &str, n: usize, debs: &Path) -> Self {
        let rootfs = debian_rootfs();
        let dir = TempDir::new(name);
        let switch = Ns::new(&format!("{name}-sw"));
        for (_, bridge, _) in LINKS {
            switch.ip(&["link", "add", bridge, "type", "bridge"]);
            switch.ip(&["link", "set", bridge, "up"]);
        }
        switch.ip(&[
            "addr",
            "add",
            &format!("{}.254/24", LINKS[0].2),
            "dev",
            LINKS[0].1,
        ]);
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let guest = workspace_root().join("target/testguest");
        let mut machines = Vec::new();
        for index in 0..n {
            // Host names: a letter first, as node names must be.
            let machine_name = format!("{name}{}-{}", std::process::id(), index + 1);
            let ns = Ns::new(&machine_name);
            for (dev, bridge, prefix) in LINKS {
                let port = format!("m{}-{}", index + 1, &dev[..4]);
                let addr = format!("{prefix}.{}/24", index + 1);
                ns.wire(dev, Some(&addr), &switch, &port, None);
                switch.ip(&["link", "set", &port, "master", bridge]);
            }
            let log = dir.join(&format!("{machine_name}.log"));
            let cgroup = format!("{CGROUP_PARENT}/{machine_name}");
            remove_cgroup(&cgroup);
            for base in CGROUP_ROOTS {
                std::fs::create_dir_all(format!("{base}/{cgroup}")).unwrap();
            }
            // The shell puts itself in the machine's cgroups, then becomes nspawn.
            let launch = format!(
                "echo $$ > {a}/{cgroup}/cgroup.procs && echo $$ > {b}/{cgroup}/cgroup.procs && \
                 exec systemd-nspawn -D {rootfs} --boot -M {machine_name} --register=no \
                 --keep-unit --volatile=overlay --bind=/dev/kvm --bind=/dev/net/tun \
                 --network-namespace-path=/run/netns/{ns} --bind={shared}:{SHARED} \
                 --bind-ro={debs}:{DEBS} --bind-ro={guest}:{GUEST}",
                a = CGROUP_ROOTS[0],
                b = CGROUP_ROOTS[1],
                rootfs = rootfs.display(),
                ns = ns.name,
                shared = shared.display(),
                debs = debs.display(),
                guest = guest.display(),
            );
            let out = std::fs::File::create(&log).unwrap();
            let nspawn = Command::new("/bin/sh")
                .args(["-c", &launch])
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("running systemd-nspawn");
            let nspawn_pid = nspawn.id();
            let mut machine = Machine {
                name: machine_name,
                index,
                nspawn: Some(nspawn),
                leader: 0,
                log,
                ns,
            };
            machine.leader = wait_for("the machine's PID 1", Duration::from_secs(30), || {
                if let Some(status) = machine.nspawn.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    panic!(
                        "systemd-nspawn exited ({status}):\n{}",
                        std::fs::read_to_string(&machine.log).unwrap_or_default()
                    );
                }
                // nspawn forks helpers too: PID 1 is the child that runs systemd.
                children(nspawn_pid).into_iter().find(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
            });
            machines.push(machine);
        }
        for machine in &machines {
            let start = Instant::now();
            loop {
                let out = machine.sh("systemctl is-system-running");
                let state = String::from_utf8_lossy(&out.stdout).trim().to_owned()
                    + String::from_utf8_lossy(&out.stderr).trim();
                if state == "running" || state == "degraded" {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{} did not boot (systemd says {state:?}):\n{}",
                    machine.name,
                    std::fs::read_to_string(&machine.log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self {
            machines,
            shared,
            switch,
            dir,
        }
    }

    /// The directory of the test's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The root the machines boot from (made by `scripts/debian-rootfs` on first use).
fn debian_rootfs() -> PathBuf {
    let out = Command::new(workspace_root().join("scripts/debian-rootfs"))
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/debian-rootfs");
    assert!(
        out.status.success(),
        "scripts/debian-rootfs failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Every pid in the cgroup `name` and its descendants, in every hierarchy.
fn cgroup_pids(name: &str) -> Vec<u32> {
    fn walk(dir: &Path, pids: &mut Vec<u32>) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), pids);
                }
            }
        }
    }
    let mut pids = Vec::new();
    for base in CGROUP_ROOTS {
        walk(&Path::new(base).join(name), &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// SIGKILLs every process of cgroup `name` until none is left.
fn kill_cgroup(name: &str) {
    crate::kill_until_gone(|| cgroup_pids(name));
}

/// Kills what is left in cgroup `name` and removes it, deepest first.
fn remove_cgroup(name: &str) {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    kill_cgroup(name);
    for base in CGROUP_ROOTS {
        remove(&Path::new(base).join(name));
    }
}
