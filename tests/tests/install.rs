//! Triad installed as an operator installs it (docs/install.md) on three Debian 12 machines
//! booted with systemd as PID 1: the packages of `scripts/package` installed with apt, the
//! node's configs written by `triad-hostd init`, the daemons started by systemd, the nodes
//! joined to a controller on the first machine by the CLI from outside the machines, and a
//! NeverStop VM on a shared pool that outlives a restart of its node agent and an upgrade of
//! its packages, and runs on another machine when its machine loses power.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use triad_tests::install::{
    apt_install, controller_commands, debs, first_vm_commands, join_args, node_commands,
    write_guest_disk, Cli, TOKEN,
};
use triad_tests::machines;
use triad_tests::{binary, skip, wait_for, Machine, Machines};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Installs the node's packages and configures and starts it as docs/install.md says.
fn install_node(m: &Machine) {
    for command in node_commands(&m.name) {
        m.sh_ok(&command);
    }
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

/// A config file with an unknown key stops the daemon with one line naming it, which
/// systemd's journal shows; with the file mended it starts again.
fn bad_config_is_one_line_systemd_shows(m: &Machine) {
    m.sh_ok("cp /etc/triad/netd.json /root/netd.json.good");
    m.sh_ok(r#"echo '{"colour": "blue"}' > /etc/triad/netd.json"#);
    let restarted = m.sh("systemctl restart triad-netd");
    assert!(!restarted.status.success(), "netd started on a bad config");
    let said = "/etc/triad/netd.json: colour: unknown field `colour`";
    let logged = wait_for("the journal to have netd's error", TIMEOUT, || {
        let journal = m.sh("journalctl -u triad-netd -n 20 --no-pager");
        let journal = String::from_utf8_lossy(&journal.stdout).into_owned();
        journal.contains(said).then_some(journal)
    });
    assert!(logged.contains("triad-netd: error: "), "{logged}");
    m.sh_ok(
        "cp /root/netd.json.good /etc/triad/netd.json && systemctl reset-failed triad-netd && \
         systemctl restart triad-netd",
    );
}

/// Every TCP link speaks TLS alone: the controller refuses plain HTTP and a client that
/// trusts another CA; a node refuses a caller without the controller's client certificate,
/// even with its token.
fn only_tls(machines: &Machines, cli: &Cli) {
    let plain = Command::new("ip")
        .args(["netns", "exec", &cli.switch])
        .arg(binary("triad"))
        .args(["--insecure-http", "--url"])
        .arg(cli.url.replace("https://", "http://"))
        .args(["node", "list"])
        .env("TRIAD_CONFIG", &cli.config)
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain HTTP was answered");

    let foreign = machines.dir().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", "/CN=another CA", "-days", "1", "-keyout"])
        .arg(foreign.join("ca.key"))
        .arg("-out")
        .arg(foreign.join("ca.pem"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let ca = foreign.join("ca.pem");
    let out = cli.output(&["--ca", ca.to_str().unwrap(), "node", "list"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a foreign CA was trusted");
    assert!(said.contains("certificate"), "{said}");

    // hostd by curl with the cluster's CA and the node's token, but no client certificate.
    let m = &machines.machines[1];
    let ca = machines.dir().join("cluster-ca.pem");
    std::fs::write(&ca, m.sh_ok("cat /var/lib/triad/hostd/tls/ca.pem")).unwrap();
    let node_token = m.sh_ok("cat /var/lib/triad/hostd/node-token");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cli.switch,
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(&ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {}", node_token.trim()),
        ])
        .arg(format!("https://{}:7301/node", m.addr(0)))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "hostd answered a client without a certificate: {}",
        String::from_utf8_lossy(&out.stdout)
    );
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
    for command in controller_commands() {
        first.sh_ok(&command);
    }
    // Every unit is well-formed on a system that has them all.
    first.sh_ok(
        "systemd-analyze verify triad-netd.service triad-storaged.service triad-hostd.service \
         triad-controller.service triad-node.target",
    );
    // The admin's CLI config, as an operator copies it off the controller's host.
    let admin = wait_for("the admin's CLI config", TIMEOUT, || {
        let out = first.sh("cat /var/lib/triad/controller/admin.json");
        out.status.success().then_some(out.stdout)
    });
    let cli = Cli::new(&machines, &admin);
    // On the controller's server root's CLI finds the admin's config by itself, and as copied.
    first.sh_ok("triad node list");
    first.sh_ok(
        "install -D -m 0600 /var/lib/triad/controller/admin.json /root/.config/triad/config.json && \
         triad node list",
    );
    let timers = first.sh_ok("systemctl list-timers triad-controller-backup.timer");
    assert!(timers.contains("triad-controller-backup.timer"), "{timers}");

    // Each node joins by the command `triad-hostd token` prints there: its token and the
    // fingerprint of its certificate.
    for m in &machines.machines {
        let args = join_args(&m.sh_ok(TOKEN), &m.addr(2));
        // A wrong fingerprint is refused and nothing is kept.
        let mut wrong = args.clone();
        let at = wrong.iter().position(|a| a == "--fingerprint").unwrap() + 1;
        wrong[at] = format!("sha256:{}", "0".repeat(64));
        let refused = cli.output(&wrong);
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && said.contains("fingerprint"),
            "{said}"
        );
        cli.run(&args);
    }
    wait_for("every node connected", TIMEOUT, || {
        let nodes = cli.json(&["node", "list"]);
        let nodes = nodes.as_array()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["connection"] == "connected")).then_some(())
    });
    for node in cli.json(&["node", "list"]).as_array().unwrap() {
        assert_eq!(node["version"], env!("CARGO_PKG_VERSION"), "{node}");
    }
    only_tls(&machines, &cli);
    // The store keeps no node token in clear.
    for m in &machines.machines {
        let token = m.sh_ok("cat /var/lib/triad/hostd/node-token");
        let found = first.sh(&format!(
            "grep -c {} /var/lib/triad/controller/state.redb",
            token.trim()
        ));
        assert!(
            !found.status.success(),
            "{}'s token is in the store",
            m.name
        );
    }
    // A node's certificate is renewed; the controller reaches it by the new one.
    let second = &machines.machines[1];
    let before = second.sh_ok("cat /var/lib/triad/hostd/tls/node.pem");
    cli.run(&["node", "renew-cert", &second.name]);
    assert_ne!(
        second.sh_ok("cat /var/lib/triad/hostd/tls/node.pem"),
        before
    );
    assert_eq!(
        cli.json(&["node", "show", &second.name])["connection"],
        "connected"
    );
    bad_config_is_one_line_systemd_shows(second);

    write_guest_disk(&machines);
    let [import, create] = <[Vec<String>; 2]>::try_from(first_vm_commands()).unwrap();
    cli.run(&import);
    // The VM goes elsewhere than the controller's machine, which must outlive the power loss
    // below.
    cli.run(&["node", "lock", &first.name]);
    cli.run(&create);
    cli.run(&["node", "unlock", &first.name]);
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
    m.sh_ok(&apt_install(&["triad-cli", "triad-node"], 2));
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
    let counted_moved = counts_past(&cli, "web", 0, "after the move");

    // The controller's store is backed up by its timer's unit, wiped, and restored onto the
    // fresh controller: the same cluster, and the VM runs on, never started twice.
    let first = &machines.machines[0];
    let now_on = moved["node"].as_str().unwrap().to_owned();
    let now_host = machines.machines.iter().find(|m| m.name == now_on).unwrap();
    let vmm = now_host.pids_of("triad-vmm");
    assert_eq!(vmm.len(), 1, "one VMM on {now_on}");
    let nodes_before = names(&cli.json(&["node", "list"]));
    first.sh_ok("systemctl start triad-controller-backup.service");
    let backups = first.sh_ok("ls /var/backups/triad");
    assert_eq!(backups.lines().count(), 1, "{backups}");
    let mode = first.sh_ok("stat -c %a /var/backups/triad/triad-controller-*.json");
    assert_eq!(mode.trim(), "600");
    first.sh_ok(
        "systemctl stop triad-controller && rm -rf /var/lib/triad/controller && \
         triad-controller restore /var/backups/triad/triad-controller-*.json && \
         systemctl start triad-controller",
    );
    // The restore made a new admin token, in a new CLI config.
    let admin = first.sh_ok("cat /var/lib/triad/controller/admin.json");
    std::fs::write(&cli.config, admin).unwrap();
    let restored = wait_for("the restored controller to answer", TIMEOUT, || {
        let out = cli.output(&["--json", "vm", "show", "web"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    });
    assert_eq!(restored["id"], moved["id"]);
    assert_eq!(restored["generation"], moved["generation"]);
    assert_eq!(names(&cli.json(&["node", "list"])), nodes_before);
    counts_past(
        &cli,
        "web",
        *counted_moved.last().unwrap(),
        "after the restore",
    );
    let vm = cli.json(&["vm", "show", "web"]);
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["node"], now_on.as_str());
    assert_eq!(
        now_host.pids_of("triad-vmm"),
        vmm,
        "the VM was not started again"
    );
    let vmms: usize = machines
        .machines
        .iter()
        .filter(|m| m.name != node)
        .map(|m| m.pids_of("triad-vmm").len())
        .sum();
    assert_eq!(vmms, 1, "one copy of the VM in the cluster");

    // The admin token is rotated: a new one, the CLI's config on it, the old one deleted.
    let made = cli.json(&["token", "create", "admin-2", "--role", "admin"]);
    let mut config: Value = serde_json::from_slice(&std::fs::read(&cli.config).unwrap()).unwrap();
    config["token"] = made["secret"].clone();
    std::fs::write(&cli.config, config.to_string()).unwrap();
    cli.run(&["token", "delete", "admin"]);
    let tokens = cli.json(&["token", "list"]);
    assert!(names(&tokens).contains(&"admin-2".to_owned()), "{tokens}");
    assert!(!names(&tokens).contains(&"admin".to_owned()), "{tokens}");

    // Removing the node's package stops its daemons; purging it removes its configs.
    first.sh_ok("apt-get remove -y -q triad-node");
    let active = first.sh("systemctl is-active triad-hostd");
    assert_ne!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    assert!(first.pids_of("triad-hostd").is_empty());
    first.sh_ok("test -f /etc/triad/hostd.json");
    first.sh_ok("apt-get purge -y -q triad-node");
    first.sh_ok("test ! -e /etc/triad/hostd.json && test ! -e /var/lib/triad/hostd");
    assert_eq!(
        first.sh_ok("systemctl is-active triad-controller").trim(),
        "active",
        "the controller stays"
    );
}

/// The names in a JSON list (of nodes, tokens), sorted.
fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}
