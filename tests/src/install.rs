//! docs/install.md's steps on the machines of `machines`: the commands an operator types on
//! each server and from the CLI, shared by the install test (`tests/tests/install.rs`) and
//! `scripts/bench-install`, so that the documented, the tested and the timed commands are one.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

use crate::machines::{DEBS, SHARED};
use crate::{binary, workspace_root, Machines};

/// What a node's server prints its join command with.
pub const TOKEN: &str = "triad-hostd token";

/// The packages `scripts/package` made: revision 1, and revision 2 to upgrade to.
pub fn debs() -> PathBuf {
    let dir = workspace_root().join("target/debian");
    for revision in [1, 2] {
        let found = std::fs::read_dir(&dir).ok().is_some_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("triad-node_") && name.contains(&format!("-{revision}_"))
            })
        });
        assert!(
            found,
            "no triad-node package of revision {revision} in {}: run scripts/package and \
             scripts/package --revision 2 first (scripts/test does)",
            dir.display()
        );
    }
    dir
}

/// `PACKAGE_*-REVISION_*.deb` at `DEBS`, as the machines see it.
pub fn deb(package: &str, revision: u32) -> String {
    format!("{DEBS}/{package}_*-{revision}_*.deb")
}

/// `apt-get install` of these packages, as docs/install.md has it.
pub fn apt_install(packages: &[&str], revision: u32) -> String {
    let files: Vec<String> = packages.iter().map(|p| deb(p, revision)).collect();
    format!(
        "apt-get install -y -q --no-install-recommends {}",
        files.join(" ")
    )
}

/// What an operator types on a node's server `name` to install, configure and start it.
pub fn node_commands(name: &str) -> Vec<String> {
    vec![
        apt_install(&["triad-cli", "triad-node"], 1),
        format!(
            "triad-hostd init --name {name} --management mgmt0 --storage stor0 \
             --pool shared=smp:{SHARED}"
        ),
        "systemctl restart triad-node.target".into(),
    ]
}

/// What an operator types on the controller's server.
pub fn controller_commands() -> Vec<String> {
    vec![apt_install(&["triad-controller"], 1)]
}

/// The arguments of the join command `triad-hostd token` printed, with the node's data
/// address.
pub fn join_args(printed: &str, data_address: &str) -> Vec<String> {
    let command = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("triad node join "))
        .unwrap_or_else(|| panic!("{TOKEN} prints no join command:\n{printed}"));
    let mut args: Vec<String> = command
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect();
    args.extend(["--data-address".to_owned(), data_address.to_owned()]);
    args
}

/// The `triad` CLI from outside the machines (the switch namespace, on the management
/// network) against the controller on the first machine, with the admin's config the
/// controller wrote (its token and CA), as an operator copies it.
#[derive(Debug)]
pub struct Cli {
    /// The namespace it runs in: the machines' switch.
    pub switch: String,
    pub url: String,
    pub config: PathBuf,
}

impl Cli {
    /// The CLI of `machines`, for the controller on the first one, whose admin's config is
    /// `admin` (the contents of its `admin.json`).
    pub fn new(machines: &Machines, admin: &[u8]) -> Self {
        let config = machines.dir().join("admin.json");
        std::fs::write(&config, admin).unwrap();
        Self {
            switch: machines.switch.name.clone(),
            url: format!("https://{}:7300", machines.machines[0].addr(0)),
            config,
        }
    }

    pub fn output<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.switch])
            .arg(binary("triad"))
            .args(["--url", &self.url])
            .args(args)
            .env("TRIAD_CONFIG", &self.config)
            .env_remove("TRIAD_URL")
            .env_remove("TRIAD_TOKEN")
            .output()
            .expect("running triad")
    }

    pub fn run<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(&self, args: &[S]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "triad {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.run(&all)).expect("triad --json prints JSON")
    }
}

/// The first VM of docs/install.md: the test guest's disk (zeros: its counter starts at 0)
/// imported to the shared pool, and `web` made from it, NeverStop, counting.
pub fn first_vm_commands() -> Vec<Vec<String>> {
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect();
    vec![
        words(&format!(
            "image import guest --pool shared --file {SHARED}/guest-disk.raw \
             --kernel {}/testguest.elf",
            crate::machines::GUEST
        )),
        words(
            "vm create web --image guest --memory-mib 64 --ha never_stop \
             --cmdline triad.counter --wait",
        ),
    ]
}

/// The disk `first_vm_commands` imports, in the shared directory.
pub fn write_guest_disk(machines: &Machines) {
    std::fs::write(machines.shared.join("guest-disk.raw"), vec![0u8; 1 << 20]).unwrap();
}
