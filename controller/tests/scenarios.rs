//! The HA simulator: the liveness and HA decisions replayed on a made-up clock and network.
//!
//! Each `scenarios/NAME.scenario` describes a cluster, its VMs and what happens to it; the
//! simulator runs it in 50 ms steps with the real parts (hostd's heartbeat table and
//! self-fencer rule, the controller's failure detector, fencing proofs and HA decisions) and
//! writes what they decide to a log, which must equal `scenarios/NAME.expected`. Run with
//! `TRIAD_BLESS=1` to write the expected logs anew (then read the diff).
//!
//! A scenario file, one command per line (`#` starts a comment):
//!
//! ```text
//! nodes n1 n2 n3
//! policy permissive|force
//! vm NAME never_stop|none shared|local on NODE
//! at MS power-off|power-on NODE        # all its processes and VMs die / it boots
//! at MS cut|heal NODE mgmt|storage|data|all
//! at MS isolate-controller|join-controller NODE   # only the controller's path to it
//! at MS disarm|arm
//! at MS stop-all|start-all             # the whole cluster
//! end MS
//! ```
//!
//! The simulated cluster: heartbeats every 200 ms on management and storage, the controller
//! polling each node every 200 ms over management, an smp pool reached over the storage
//! network, and a VM that runs 300 ms after it is placed. Every 50 ms the log also checks the
//! one thing HA must never do: two copies of a VM that can both write its disk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use triad_api::hostd::{HaLevel, HaTimers, PeerView};
use triad_api::v1::{HaPolicy, Liveness, PowerState};
use triad_controller::ha::{decide, force_proof, smp_proof, Decision, Switches, VmFacts};
use triad_controller::liveness::{Detector, Timers};
use triad_hostd::peers::{Beat, PeerTable};

const STEP: u64 = 50;
const MGMT: usize = 0;
const STORAGE: usize = 1;
const DATA: usize = 2;
const BOOT_MS: u64 = 300;

#[derive(Debug, Clone)]
struct SimNode {
    powered: bool,
    links: [bool; 3],
    /// Whether the controller's own path to it works.
    controller_path: bool,
    table: PeerTable,
    boot: u64,
    seq: u64,
    fenced: bool,
    /// The node's storage heartbeat counter on the smp pool.
    storage_beat: u64,
}

/// One copy of a VM on a node, at a generation.
#[derive(Debug, Clone, PartialEq)]
struct Copy {
    node: String,
    generation: u64,
    running: bool,
    /// When a placed copy starts running.
    boots_at: Option<u64>,
}

#[derive(Debug, Clone)]
struct SimVm {
    name: String,
    ha: HaLevel,
    shared: bool,
    power: PowerState,
    /// Where the controller places it, and at which generation.
    node: Option<String>,
    generation: u64,
    state: String,
    copies: Vec<Copy>,
}

struct Sim {
    t: u64,
    t0: Instant,
    timers: HaTimers,
    margin: Duration,
    policy: HaPolicy,
    disarmed: bool,
    nodes: BTreeMap<String, SimNode>,
    vms: Vec<SimVm>,
    detector: Detector,
    /// (node) → (storage beat as read, since when unchanged).
    beats_seen: BTreeMap<String, (u64, u64)>,
    log: String,
}

impl Sim {
    fn new(names: &[String]) -> Self {
        let timers = HaTimers::default();
        let mut detector = Detector::new(Timers {
            confirm_after: Duration::from_millis(400),
            report_stale: Duration::from_millis(timers.suspect_after_ms.max(600)),
        });
        detector.set_nodes(names);
        let mut nodes = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let peers: Vec<String> = names.iter().filter(|p| *p != n).cloned().collect();
            let mut table = PeerTable::default();
            table.reset(&peers, 2, Duration::from_millis(timers.suspect_after_ms));
            nodes.insert(
                n.clone(),
                SimNode {
                    powered: true,
                    links: [true; 3],
                    controller_path: true,
                    table,
                    boot: i as u64 + 1,
                    seq: 0,
                    fenced: false,
                    storage_beat: 0,
                },
            );
        }
        Self {
            t: 0,
            t0: Instant::now(),
            timers,
            margin: Duration::from_millis(200),
            policy: HaPolicy::Permissive,
            disarmed: false,
            nodes,
            vms: Vec::new(),
            detector,
            beats_seen: BTreeMap::new(),
            log: String::new(),
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.t)
    }

    fn say(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.log, "{:>6} {}", self.t, line.as_ref());
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.timers.suspect_after_ms + self.timers.fence_after_ms)
            + self.margin
    }

    fn apply(&mut self, what: &str, args: &[&str]) {
        self.say(format!("== {what} {}", args.join(" ")));
        let node = args.first().map(|n| n.to_string()).unwrap_or_default();
        match what {
            "power-off" => self.power(&node, false),
            "power-on" => self.power(&node, true),
            "cut" | "heal" => {
                let up = what == "heal";
                let n = self.nodes.get_mut(&node).expect("a node of the scenario");
                match args[1] {
                    "mgmt" => n.links[MGMT] = up,
                    "storage" => n.links[STORAGE] = up,
                    "data" => n.links[DATA] = up,
                    "all" => n.links = [up; 3],
                    other => panic!("no link {other}"),
                }
            }
            "isolate-controller" => self.nodes.get_mut(&node).unwrap().controller_path = false,
            "join-controller" => self.nodes.get_mut(&node).unwrap().controller_path = true,
            "disarm" => self.disarmed = true,
            "arm" => self.disarmed = false,
            "stop-all" => {
                let names: Vec<String> = self.nodes.keys().cloned().collect();
                for n in names {
                    self.power(&n, false);
                }
            }
            "start-all" => {
                let names: Vec<String> = self.nodes.keys().cloned().collect();
                for n in names {
                    self.power(&n, true);
                }
            }
            other => panic!("no command {other}"),
        }
    }

    fn power(&mut self, node: &str, on: bool) {
        let n = self.nodes.get_mut(node).expect("a node of the scenario");
        n.powered = on;
        if on {
            // A new boot: hostd starts anew, and holds every VM it finds stopped.
            n.boot += 100;
            n.seq = 0;
            n.fenced = false;
            let peers: Vec<String> = self.nodes.keys().filter(|p| *p != node).cloned().collect();
            let n = self.nodes.get_mut(node).unwrap();
            n.table = PeerTable::default();
            n.table.reset(
                &peers,
                2,
                Duration::from_millis(self.timers.suspect_after_ms),
            );
        }
        for vm in &mut self.vms {
            for c in vm.copies.iter_mut().filter(|c| c.node == node) {
                c.running = false;
                c.boots_at = None;
            }
        }
    }

    /// Whether a datagram from `a` reaches `b` on `link`.
    fn path(&self, a: &str, b: &str, link: usize) -> bool {
        let (a, b) = (&self.nodes[a], &self.nodes[b]);
        a.powered && b.powered && a.links[link] && b.links[link]
    }

    fn step(&mut self) {
        let now = self.now();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        if self.t.is_multiple_of(self.timers.interval_ms) {
            self.heartbeats(&names, now);
        }
        self.fencers(&names, now);
        self.boots();
        if self.t.is_multiple_of(200) {
            self.controller(&names, now);
        }
        self.check_writers();
    }

    fn heartbeats(&mut self, names: &[String], now: Instant) {
        for from in names {
            if !self.nodes[from].powered {
                continue;
            }
            let n = self.nodes.get_mut(from).unwrap();
            n.seq += 1;
            if n.links[STORAGE] {
                n.storage_beat += 1;
            }
            let (boot, seq) = (n.boot, n.seq);
            for to in names.iter().filter(|t| *t != from) {
                for link in [MGMT, STORAGE] {
                    if self.path(from, to, link) {
                        let beat = Beat {
                            from: from.clone(),
                            probe: u8::try_from(link).unwrap(),
                            boot,
                            seq,
                        };
                        self.nodes.get_mut(to).unwrap().table.heard(&beat, now);
                    }
                }
            }
        }
    }

    fn fencers(&mut self, names: &[String], now: Instant) {
        let fence_after = Duration::from_millis(self.timers.fence_after_ms);
        for name in names {
            let force = self.policy == HaPolicy::Force && !self.disarmed;
            let n = self.nodes.get_mut(name).unwrap();
            if !n.powered {
                continue;
            }
            match n.table.minority_for(now) {
                Some(f) if f >= fence_after && force && !n.fenced => {
                    n.fenced = true;
                    let mut killed = Vec::new();
                    for vm in &mut self.vms {
                        for c in vm.copies.iter_mut().filter(|c| c.node == *name) {
                            if vm.shared && (c.running || c.boots_at.is_some()) {
                                c.running = false;
                                c.boots_at = None;
                                killed.push(vm.name.clone());
                            }
                        }
                    }
                    self.say(format!(
                        "node {name} fences itself (minority for {} ms): kills {killed:?}",
                        f.as_millis()
                    ));
                }
                None if n.fenced => n.fenced = false,
                _ => {}
            }
        }
    }

    fn boots(&mut self) {
        let t = self.t;
        let mut lines = Vec::new();
        for vm in &mut self.vms {
            for c in &mut vm.copies {
                if c.boots_at == Some(t) {
                    c.boots_at = None;
                    c.running = true;
                    vm.state = "running".into();
                    lines.push(format!(
                        "vm {} running on {} (generation {})",
                        vm.name, c.node, c.generation
                    ));
                }
            }
        }
        for l in lines {
            self.say(l);
        }
    }

    fn controller_reaches(&self, node: &str) -> bool {
        let n = &self.nodes[node];
        n.powered && n.links[MGMT] && n.controller_path
    }

    fn controller(&mut self, names: &[String], now: Instant) {
        for name in names {
            let view: Option<PeerView> = self
                .controller_reaches(name)
                .then(|| self.nodes[name].table.view(name, now));
            self.detector.observe(now, name, view.as_ref());
        }
        for c in self.detector.tick(now) {
            self.say(format!(
                "node {} {}: {}",
                c.node,
                format!("{:?}", c.liveness).to_lowercase(),
                c.why
            ));
        }
        // The storage heartbeats, read through a live node.
        let reader = names
            .iter()
            .find(|n| self.detector.liveness(n) == Liveness::Alive && self.controller_reaches(n))
            .cloned();
        if reader.is_some_and(|r| self.nodes[&r].links[STORAGE]) {
            for name in names {
                let beat = self.nodes[name].storage_beat;
                let e = self
                    .beats_seen
                    .entry(name.clone())
                    .or_insert((beat, self.t));
                if e.0 != beat {
                    *e = (beat, self.t);
                }
            }
        }
        self.sweep(names);
        self.restart_held(names);
        self.recover(names, now);
    }

    /// A reachable node holding a copy the controller places elsewhere removes it.
    fn sweep(&mut self, names: &[String]) {
        let mut lines = Vec::new();
        for name in names {
            if !self.controller_reaches(name) {
                continue;
            }
            for vm in &mut self.vms {
                let owner = vm.node.clone();
                let before = vm.copies.len();
                vm.copies
                    .retain(|c| c.node != *name || owner.as_deref() == Some(name.as_str()));
                if vm.copies.len() < before {
                    lines.push(format!(
                        "node {name} removes its old copy of vm {}",
                        vm.name
                    ));
                }
            }
        }
        for l in lines {
            self.say(l);
        }
    }

    /// A NeverStop VM held stopped on the node that owns it (fenced, or rebooted) is started.
    fn restart_held(&mut self, names: &[String]) {
        let mut lines = Vec::new();
        for name in names {
            if !self.controller_reaches(name) || self.detector.liveness(name) == Liveness::Dead {
                continue;
            }
            let t = self.t;
            for vm in &mut self.vms {
                if vm.node.as_deref() != Some(name.as_str()) || vm.power != PowerState::Running {
                    continue;
                }
                let generation = vm.generation;
                match vm.copies.iter_mut().find(|c| c.node == *name) {
                    Some(c) if !c.running && c.boots_at.is_none() => {
                        if vm.ha == HaLevel::NeverStop {
                            c.boots_at = Some(t + BOOT_MS);
                            lines.push(format!("vm {} started again on {name}", vm.name));
                        } else if vm.state != "stopped" {
                            vm.state = "stopped".into();
                            vm.power = PowerState::Stopped;
                            lines.push(format!("vm {} stopped by itself: it stays down", vm.name));
                        }
                    }
                    None => {
                        vm.copies.push(Copy {
                            node: name.clone(),
                            generation,
                            running: false,
                            boots_at: Some(t + BOOT_MS),
                        });
                        lines.push(format!(
                            "vm {} made on {name} (generation {generation})",
                            vm.name
                        ));
                    }
                    _ => {}
                }
            }
        }
        for l in lines {
            self.say(l);
        }
    }

    fn recover(&mut self, names: &[String], now: Instant) {
        let dead: Vec<String> = names
            .iter()
            .filter(|n| self.detector.liveness(n) == Liveness::Dead)
            .cloned()
            .collect();
        let switches = Switches {
            enabled: true,
            disarmed: self.disarmed,
        };
        let deadline = self.deadline();
        let mut lines = Vec::new();
        for i in 0..self.vms.len() {
            let vm = &self.vms[i];
            let Some(node) = vm.node.clone().filter(|n| dead.contains(n)) else {
                continue;
            };
            let facts = VmFacts {
                ha: vm.ha,
                power: vm.power,
                shared: vm.shared,
                destroy: false,
            };
            let proof = match self.policy {
                HaPolicy::Force => force_proof(
                    self.detector
                        .last_heard(&node)
                        .map(|h| now.saturating_duration_since(h)),
                    deadline,
                ),
                HaPolicy::Permissive => smp_proof(
                    "shared",
                    self.beats_seen
                        .get(&node)
                        .map(|(_, since)| Duration::from_millis(self.t - since)),
                    deadline,
                ),
            };
            let (state, line) = match decide(&facts, &node, switches, &proof) {
                Decision::Recover(why) => {
                    let target = names
                        .iter()
                        .find(|n| {
                            self.detector.liveness(n) == Liveness::Alive
                                && self.controller_reaches(n)
                        })
                        .cloned();
                    let vm = &mut self.vms[i];
                    match target {
                        Some(target) => {
                            vm.generation += 1;
                            vm.node = Some(target.clone());
                            vm.copies.push(Copy {
                                node: target.clone(),
                                generation: vm.generation,
                                running: false,
                                boots_at: Some(self.t + BOOT_MS),
                            });
                            (
                                "recovering".to_owned(),
                                format!("{why}; placed on {target} (generation {})", vm.generation),
                            )
                        }
                        None => ("recovering".to_owned(), format!("{why}; no node fits")),
                    }
                }
                Decision::Unknown(why) => ("unknown".to_owned(), why),
                Decision::Stop { why, power_off } => {
                    if power_off {
                        self.vms[i].power = PowerState::Stopped;
                    }
                    ("stopped".to_owned(), why)
                }
                Decision::Release => unreachable!("the simulator destroys no VM"),
            };
            let vm = &mut self.vms[i];
            if vm.state != state {
                vm.state = state.clone();
                lines.push(format!("vm {} {state}: {line}", vm.name));
            }
        }
        for l in lines {
            self.say(l);
        }
    }

    /// Two copies of a shared-disk VM that both run on nodes that reach the storage network
    /// are two writers: HA's one unforgivable outcome.
    fn check_writers(&mut self) {
        let mut lines = Vec::new();
        for vm in &self.vms {
            let writers: Vec<&Copy> = vm
                .copies
                .iter()
                .filter(|c| c.running && vm.shared && self.nodes[&c.node].links[STORAGE])
                .collect();
            if writers.len() > 1 {
                lines.push(format!("DOUBLE WRITER vm {}: {writers:?}", vm.name));
            }
        }
        for l in lines {
            self.say(l);
        }
    }
}

fn run(text: &str) -> String {
    let mut sim: Option<Sim> = None;
    let mut events: Vec<(u64, String, Vec<String>)> = Vec::new();
    let mut end = 0;
    let mut policy = HaPolicy::Permissive;
    let mut vms = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            ["nodes", names @ ..] => {
                sim = Some(Sim::new(
                    &names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                ))
            }
            ["policy", "permissive"] => policy = HaPolicy::Permissive,
            ["policy", "force"] => policy = HaPolicy::Force,
            ["vm", name, ha, disks, "on", node] => vms.push(SimVm {
                name: name.to_string(),
                ha: match *ha {
                    "never_stop" => HaLevel::NeverStop,
                    "none" => HaLevel::None,
                    other => panic!("no HA level {other}"),
                },
                shared: match *disks {
                    "shared" => true,
                    "local" => false,
                    other => panic!("no disk kind {other}"),
                },
                power: PowerState::Running,
                node: Some(node.to_string()),
                generation: 1,
                state: "running".into(),
                copies: vec![Copy {
                    node: node.to_string(),
                    generation: 1,
                    running: true,
                    boots_at: None,
                }],
            }),
            ["at", ms, what, args @ ..] => events.push((
                ms.parse().expect("a time in ms"),
                what.to_string(),
                args.iter().map(|a| a.to_string()).collect(),
            )),
            ["end", ms] => end = ms.parse().expect("a time in ms"),
            other => panic!("cannot read {other:?}"),
        }
    }
    let mut sim = sim.expect("a `nodes` line");
    sim.policy = policy;
    sim.vms = vms;
    while sim.t <= end {
        let t = sim.t;
        for (_, what, args) in events.iter().filter(|(at, _, _)| *at == t) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            sim.apply(what, &args);
        }
        sim.step();
        sim.t += STEP;
    }
    for vm in &sim.vms {
        let running: Vec<String> = vm
            .copies
            .iter()
            .filter(|c| c.running)
            .map(|c| format!("{}@{}", c.node, c.generation))
            .collect();
        let _ = writeln!(
            sim.log,
            "at the end: vm {} {} on {:?} (generation {}), running copies {running:?}",
            vm.name, vm.state, vm.node, vm.generation
        );
    }
    sim.log
}

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "scenario"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_scenario_gives_its_expected_log() {
    let bless = std::env::var_os("TRIAD_BLESS").is_some();
    let files = scenarios();
    assert!(files.len() >= 8, "the scenarios are missing: {files:?}");
    let mut failed = Vec::new();
    for file in files {
        let log = run(&std::fs::read_to_string(&file).unwrap());
        assert!(
            !log.contains("DOUBLE WRITER"),
            "{}: two writers\n{log}",
            file.display()
        );
        let expected_file = file.with_extension("expected");
        if bless {
            std::fs::write(&expected_file, &log).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_file).unwrap_or_default();
        if log != expected {
            failed.push(format!(
                "{}: the log differs from {}\n--- got\n{log}--- expected\n{expected}",
                file.display(),
                expected_file.display()
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
