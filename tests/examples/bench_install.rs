//! Benchmark driver for `scripts/bench-install`: from three booted bare Debian 12 machines
//! (systemd-nspawn, as the install test boots them) to a running NeverStop VM through
//! docs/install.md's commands, one server after another as one operator types them. Prints the
//! time of each step, the machine time in all, and the commands typed per server, against the
//! targets (at most 10 commands a node, at most 60 s in all).
//!
//! `bench-install [RUNS]` (default 3).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use triad_tests::install::{
    controller_commands, debs, first_vm_commands, join_args, node_commands, write_guest_disk, Cli,
    TOKEN,
};
use triad_tests::{machines, wait_for, Machines};

/// The steps of one install and how long each took, and the commands typed per server.
struct Run {
    steps: Vec<(&'static str, Duration)>,
    typed: BTreeMap<String, usize>,
}

fn main() -> Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("RUNS must be a count")?,
        None => 3,
    };
    if !(1..=20).contains(&runs) {
        bail!("RUNS must be 1 to 20, not {runs}");
    }
    if let Some(why) = machines::unavailable() {
        bail!("machines cannot boot here: {why}");
    }
    let debs = debs();
    let mut all = Vec::new();
    for run in 0..runs {
        let machines = Machines::boot("bi", 3, &debs);
        let result = install(&machines);
        eprintln!("run {}: {:.1} s", run + 1, total(&result).as_secs_f64());
        all.push(result);
    }
    let mut names: Vec<&str> = all[0].steps.iter().map(|(name, _)| *name).collect();
    names.push("in all");
    println!("{:<44} {:>9} {:>9}", "step (3 servers)", "p50 s", "max s");
    for (i, name) in names.iter().enumerate() {
        let mut took: Vec<f64> = all
            .iter()
            .map(|r| {
                if i < r.steps.len() {
                    r.steps[i].1.as_secs_f64()
                } else {
                    total(r).as_secs_f64()
                }
            })
            .collect();
        took.sort_by(f64::total_cmp);
        println!(
            "{:<44} {:>9.2} {:>9.2}",
            name,
            took[(took.len() - 1) / 2],
            took[took.len() - 1]
        );
    }
    let mut totals: Vec<f64> = all.iter().map(|r| total(r).as_secs_f64()).collect();
    totals.sort_by(f64::total_cmp);
    let p50 = totals[(totals.len() - 1) / 2];
    println!(
        "machine time, bare machines to a running VM: p50 {p50:.1} s = {:.2} x the 60 s target ({})",
        p50 / 60.0,
        if p50 <= 60.0 { "met" } else { "not met" }
    );
    println!("commands typed (a node's join counts for it; the first has the controller too):");
    let most = all[0]
        .typed
        .iter()
        .filter(|(server, _)| server.as_str() != "the first VM (CLI)")
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    for (server, count) in &all[0].typed {
        println!("  {server:<40} {count:>3}");
    }
    println!(
        "most on one node: {most} = {:.2} x the 10-command target ({})",
        most as f64 / 10.0,
        if most <= 10 { "met" } else { "not met" }
    );
    Ok(())
}

fn total(run: &Run) -> Duration {
    run.steps.iter().map(|(_, d)| *d).sum()
}

fn install(machines: &Machines) -> Run {
    let mut steps = Vec::new();
    let mut typed: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = |server: &str| *typed.entry(server.to_owned()).or_default() += 1;

    let start = Instant::now();
    for m in &machines.machines {
        for command in node_commands(&m.name) {
            m.sh_ok(&command);
            count(&m.name);
        }
    }
    steps.push(("install, init and start the nodes", start.elapsed()));

    let start = Instant::now();
    let first = &machines.machines[0];
    for command in controller_commands() {
        first.sh_ok(&command);
        count(&first.name);
    }
    let admin = wait_for("the admin's CLI config", Duration::from_secs(60), || {
        let out = first.sh("cat /var/lib/triad/controller/admin.json");
        out.status.success().then_some(out.stdout)
    });
    // Copying admin.json to where the CLI runs.
    count(&first.name);
    let cli = Cli::new(machines, &admin);
    steps.push(("install the controller", start.elapsed()));

    let start = Instant::now();
    for m in &machines.machines {
        let printed = m.sh_ok(TOKEN);
        cli.run(&join_args(&printed, &m.addr(2)));
        // Its token, and its join from the CLI.
        count(&m.name);
        count(&m.name);
    }
    wait_for("every node connected", Duration::from_secs(60), || {
        let nodes = cli.json(&["node", "list"]);
        let nodes = nodes.as_array()?;
        (nodes.len() == 3 && nodes.iter().all(|n| n["connection"] == "connected")).then_some(())
    });
    steps.push(("join the three nodes over TLS", start.elapsed()));

    let start = Instant::now();
    write_guest_disk(machines);
    for command in first_vm_commands() {
        cli.run(&command);
        count("the first VM (CLI)");
    }
    steps.push((
        "image import, NeverStop VM created running",
        start.elapsed(),
    ));
    Run { steps, typed }
}
