//! Triad installed as an operator installs it (docs/install.md) on three Debian 12 machines
//! booted with systemd as PID 1: the packages of `scripts/package` installed with apt, the
//! node's configs written by `triad-hostd init`, the daemons started by systemd, the nodes
//! joined to a controller on the first machine by the CLI from outside the machines, and a
//! NeverStop VM on a shared pool that outlives a restart of its node agent and an upgrade of
//! its packages, and runs on another machine when its machine loses power.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use triad_tests::machines::{self, DEBS, GUEST, SHARED};
use triad_tests::{binary, skip, wait_for, workspace_root, Machine, Machines};

const TIMEOUT: Duration = Duration::from_secs(120);

/// The packages `scripts/package` made: revision 1, and revision 2 to upgrade to.
fn debs() -> PathBuf {
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

/// `PKG_*-REVISION_*.deb` at `DEBS`, as the machines see it.
fn deb(package: &str, revision: u32) -> String {
    format!("{DEBS}/{package}_*-{revision}_*.deb")
}

/// The `triad` CLI from outside the machines (the switch namespace, on the management
/// network) against the controller on the first machine.
struct Cli {
    /// The namespace it runs in: the machines' switch.
    switch: String,
    url: String,
    token: String,
}

impl Cli {
    fn output(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.switch])
            .arg(binary("triad"))
            .args(["--url", &self.url, "--token", &self.token])
            .args(args)
            .output()
            .expect("running triad")
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "triad {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.run(&all)).expect("triad --json prints JSON")
    }
}

/// Installs the node's packages and configures and starts it as docs/install.md says.
fn install_node(m: &Machine) {
    m.sh_ok(&format!(
        "apt-get install -y -q --no-install-recommends {} {}",
        deb("triad-cli", 1),
        deb("triad-node", 1)
    ));
    m.sh_ok(&format!(
        "triad-hostd init --name {} --management mgmt0 --storage stor0 \
         --pool shared=smp:{SHARED}",
        m.name
    ));
    m.sh_ok("systemctl restart triad-node.target");
    for unit in ["triad-netd", "triad-storaged", "triad-hostd"] {
        assert_eq!(
            m.sh_ok(&format!("systemctl is-active {unit}")).trim(),
            "active",
            "{unit} on {}",
            m.name
        );
    }
}

/// The counter values a VM's serial console shows (complete lines only).
fn counted(cli: &Cli, vm: &str) -> Vec<u64> {
    let out = cli.output(&["vm", "console", vm]);
    let text = String::from_utf8_lossy(&out.stdout);
    let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
    complete
        .lines()
        .filter_map(|l| l.trim().strip_prefix("TRIAD-COUNTER "))
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// Waits until the VM's counter has gone past `after`; the values. Panics naming `when`, with
/// the console's last lines, when it does not.
fn counts_past(cli: &Cli, vm: &str, after: u64, when: &str) -> Vec<u64> {
    let start = Instant::now();
    loop {
        let values = counted(cli, vm);
        if values.last().is_some_and(|v| *v > after) {
            return values;
        }
        if start.elapsed() > TIMEOUT {
            let out = cli.output(&["vm", "console", vm]);
            let console = String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "{when}: {vm}'s counter did not go past {after}; its console ends:\n{console}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_debian_machines_installed_joined_and_running_a_vm() {
    const TEST: &str = "three_debian_machines_installed_joined_and_running_a_vm";
    if let Some(why) = machines::unavailable() {
        skip(TEST, &why);
        return;
    }
    let debs = debs();
    let mut machines = Machines::boot("inst", 3, &debs);

    for m in &machines.machines {
        install_node(m);
    }
    let first = &machines.machines[0];
    first.sh_ok(&format!(
        "apt-get install -y -q --no-install-recommends {}",
        deb("triad-controller", 1)
    ));
    // Every unit is well-formed on a system that has them all.
    first.sh_ok(
        "systemd-analyze verify triad-netd.service triad-storaged.service triad-hostd.service \
         triad-controller.service triad-node.target",
    );
    let token = wait_for("the admin token", TIMEOUT, || {
        let out = first.sh("cat /var/lib/triad/controller/admin-token");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    let cli = Cli {
        switch: machines.switch.name.clone(),
        url: format!("http://{}:7300", first.addr(0)),
        token,
    };

    for m in &machines.machines {
        let node_token = m.sh_ok("triad-hostd token").trim().to_owned();
        cli.run(&[
            "node",
            "join",
            &m.name,
            "--address",
            &format!("{}:7301", m.addr(0)),
            "--node-token",
            &node_token,
            "--data-address",
            &m.addr(2),
        ]);
    }
    wait_for("every node connected", TIMEOUT, || {
        let nodes = cli.json(&["node", "list"]);
        let nodes = nodes.as_array()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["connection"] == "connected")).then_some(())
    });

    // The guest counts from what its disk's first 8 bytes hold: zero.
    std::fs::write(machines.shared.join("guest-disk.raw"), vec![0u8; 1 << 20]).unwrap();
    cli.run(&[
        "image",
        "import",
        "guest",
        "--pool",
        "shared",
        "--file",
        &format!("{SHARED}/guest-disk.raw"),
        "--kernel",
        &format!("{GUEST}/testguest.elf"),
    ]);
    cli.run(&[
        "vm",
        "create",
        "web",
        "--image",
        "guest",
        "--memory-mib",
        "64",
        "--ha",
        "never_stop",
        "--cmdline",
        "triad.counter",
        "--wait",
    ]);
    let vm = cli.json(&["vm", "show", "web"]);
    let node = vm["node"].as_str().expect("the VM is placed").to_owned();
    let host = machines
        .machines
        .iter()
        .position(|m| m.name == node)
        .expect("the VM's node is a machine");
    let m = &machines.machines[host];
    let vmm = m.pids_of("triad-vmm");
    assert_eq!(vmm.len(), 1, "one VMM on {node}");
    let counted_first = counts_past(&cli, "web", 0, "first boot");

    // A restart of the node agent leaves the VMM running, and the new hostd adopts it.
    let hostd = m.main_pid("triad-hostd");
    m.sh_ok("systemctl restart triad-hostd");
    assert_ne!(m.main_pid("triad-hostd"), hostd, "hostd restarted");
    assert_eq!(
        m.pids_of("triad-vmm"),
        vmm,
        "the VMM outlived hostd's restart"
    );
    let after_restart = counts_past(
        &cli,
        "web",
        *counted_first.last().unwrap(),
        "after hostd's restart",
    );
    wait_for("the VM running after hostd's restart", TIMEOUT, || {
        (cli.json(&["vm", "show", "web"])["state"] == "running").then_some(())
    });

    // An upgrade of the node's packages restarts its daemons; the VMM goes on.
    let hostd = m.main_pid("triad-hostd");
    m.sh_ok(&format!(
        "apt-get install -y -q --no-install-recommends {} {}",
        deb("triad-cli", 2),
        deb("triad-node", 2)
    ));
    let version = m.sh_ok("dpkg-query -W -f '${Version}' triad-node");
    assert!(
        version.ends_with("-2"),
        "triad-node {version} after the upgrade"
    );
    assert_ne!(
        m.main_pid("triad-hostd"),
        hostd,
        "the upgrade restarted hostd"
    );
    assert_eq!(m.pids_of("triad-vmm"), vmm, "the VMM outlived the upgrade");
    counts_past(
        &cli,
        "web",
        *after_restart.last().unwrap(),
        "after the upgrade",
    );

    // The VM's machine loses its power: the VM runs on another machine.
    let lost = Instant::now();
    machines.machines[host].power_off();
    let moved = wait_for("the VM running on another node", TIMEOUT, || {
        let vm = cli.json(&["vm", "show", "web"]);
        (vm["state"] == "running" && vm["node"] != node.as_str()).then_some(vm)
    });
    eprintln!(
        "web moved from {node} to {} in {:?} after the power loss",
        moved["node"],
        lost.elapsed()
    );
    counts_past(&cli, "web", 0, "after the move");
}
