//! Placement: which node a VM goes to. Pure: nodes, the VM and the settings in, a decision
//! out, with the reason for every node, so that `triad vm why` can show it and tests can
//! check each filter alone.
//!
//! Filters, in order (the first that rejects a node names the reason): the node is Enabled,
//! Connected and Alive; it has the vCPUs and the memory left (with overcommit and reserved
//! memory); it has the VM's pools and networks; hard affinity rules hold. Then one weigher
//! scores the nodes that are left: spread (most room left) or binpack (least), plus or minus
//! one for each soft affinity rule kept or broken. Ties go to the node whose name sorts
//! first, so that a decision can be replayed.

use std::collections::BTreeSet;

use triad_api::v1::{
    AffinityRule, Connection, Liveness, Node, NodeEnable, NodeVerdict, Placement, Settings,
    Strength,
};

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub enable: NodeEnable,
    pub connection: Connection,
    pub liveness: Liveness,
    pub cpus: u32,
    pub memory_mib: u64,
    /// hostd's own reserve.
    pub reserved_memory_mib: u64,
    /// What the VMs placed on it take.
    pub allocated_vcpus: u32,
    pub allocated_memory_mib: u64,
    pub pools: BTreeSet<String>,
    pub networks: BTreeSet<String>,
}

impl From<&Node> for NodeView {
    fn from(n: &Node) -> Self {
        Self {
            name: n.name.clone(),
            enable: n.enable,
            connection: n.connection,
            liveness: n.liveness,
            cpus: n.cpus,
            memory_mib: n.memory_mib,
            reserved_memory_mib: n.reserved_memory_mib,
            allocated_vcpus: n.allocated_vcpus,
            allocated_memory_mib: n.allocated_memory_mib,
            pools: n.pools.iter().cloned().collect(),
            networks: n.networks.iter().cloned().collect(),
        }
    }
}

/// An affinity group the VM is in, with where its other VMs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub name: String,
    pub rule: AffinityRule,
    pub strength: Strength,
    /// The nodes the group's other VMs are on (one entry per VM).
    pub member_nodes: Vec<String>,
}

/// What the VM needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub pools: BTreeSet<String>,
    pub networks: BTreeSet<String>,
    pub groups: Vec<GroupView>,
}

/// Why a node was left out: the filter's name and what it found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rejection {
    NotEnabled(NodeEnable),
    NotConnected(Connection),
    NotAlive(Liveness),
    Cpu { free: f64 },
    Memory { free_mib: f64 },
    Pool(usize),
    Network(usize),
    Affinity(usize),
}

impl Rejection {
    /// The filter's name.
    pub fn filter(&self) -> &'static str {
        match self {
            Self::NotEnabled(_) => "enabled",
            Self::NotConnected(_) => "connected",
            Self::NotAlive(_) => "alive",
            Self::Cpu { .. } => "cpu",
            Self::Memory { .. } => "memory",
            Self::Pool(_) => "pools",
            Self::Network(_) => "networks",
            Self::Affinity(_) => "affinity",
        }
    }

    fn detail(&self, req: &Request) -> String {
        let nth = |set: &BTreeSet<String>, i: usize| set.iter().nth(i).cloned().unwrap_or_default();
        match *self {
            Self::NotEnabled(e) => format!("the node is {}", snake(&e)),
            Self::NotConnected(c) => format!("the node is {}", snake(&c)),
            Self::NotAlive(l) => format!("the node is {}", snake(&l)),
            Self::Cpu { free } => {
                format!(
                    "{} vCPUs wanted, {free:.1} left (with overcommit)",
                    req.vcpus
                )
            }
            Self::Memory { free_mib } => format!(
                "{} MiB wanted, {free_mib:.0} MiB left (with overcommit and reserves)",
                req.memory_mib
            ),
            Self::Pool(i) => format!("the node has no pool {:?}", nth(&req.pools, i)),
            Self::Network(i) => format!("network {:?} is not on the node", nth(&req.networks, i)),
            Self::Affinity(g) => {
                let group = &req.groups[g];
                let rule = match group.rule {
                    AffinityRule::VmAffinity => "keeps its VMs on one node",
                    AffinityRule::VmAntiAffinity => "keeps its VMs on different nodes",
                    AffinityRule::NodeAffinity { .. } => "keeps its VMs on other nodes",
                    AffinityRule::NodeAntiAffinity { .. } => "keeps its VMs off this node",
                };
                format!("affinity group {:?} {rule}", group.name)
            }
        }
    }
}

fn snake<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The outcome for one node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Rejected(Rejection),
    Fits(f64),
}

/// The decision: the chosen node's index, and every node's verdict (in `nodes`' order).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub chosen: Option<usize>,
    pub verdicts: Vec<Verdict>,
}

impl Decision {
    /// The verdicts as the API shows them.
    pub fn report(&self, nodes: &[NodeView], req: &Request) -> Vec<NodeVerdict> {
        nodes
            .iter()
            .zip(&self.verdicts)
            .map(|(node, verdict)| match verdict {
                Verdict::Rejected(r) => NodeVerdict {
                    node: node.name.clone(),
                    rejected_by: Some(r.filter().to_owned()),
                    detail: Some(r.detail(req)),
                    score: None,
                },
                Verdict::Fits(score) => NodeVerdict {
                    node: node.name.clone(),
                    rejected_by: None,
                    detail: None,
                    score: Some(*score),
                },
            })
            .collect()
    }

    /// One line naming, per node, what rejected it.
    pub fn why_pending(&self, nodes: &[NodeView], req: &Request) -> String {
        if nodes.is_empty() {
            return "no node has joined".into();
        }
        let parts: Vec<String> = self
            .report(nodes, req)
            .into_iter()
            .filter_map(|v| {
                Some(format!(
                    "{}: {} ({})",
                    v.node,
                    v.rejected_by?,
                    v.detail.unwrap_or_default()
                ))
            })
            .collect();
        format!("no node fits: {}", parts.join("; "))
    }
}

/// The memory a node can give VMs, and its vCPUs, with overcommit and reserves.
pub fn capacity(node: &NodeView, settings: &Settings) -> (f64, f64) {
    let usable = node
        .memory_mib
        .saturating_sub(node.reserved_memory_mib)
        .saturating_sub(settings.reserved_memory_mib);
    (
        f64::from(node.cpus) * settings.cpu_overcommit,
        usable as f64 * settings.memory_overcommit,
    )
}

/// Places `req` on one of `nodes`.
pub fn place(req: &Request, nodes: &[NodeView], settings: &Settings) -> Decision {
    let verdicts: Vec<Verdict> = nodes
        .iter()
        .map(|node| match filter(req, node, settings) {
            Err(r) => Verdict::Rejected(r),
            Ok(()) => Verdict::Fits(weigh(req, node, settings)),
        })
        .collect();
    let mut chosen: Option<usize> = None;
    for (i, verdict) in verdicts.iter().enumerate() {
        if let Verdict::Fits(score) = verdict {
            let better = match chosen.map(|c| &verdicts[c]) {
                Some(Verdict::Fits(best)) => {
                    *score > *best
                        || (*score == *best && nodes[i].name < nodes[chosen.unwrap_or(i)].name)
                }
                _ => true,
            };
            if better {
                chosen = Some(i);
            }
        }
    }
    Decision { chosen, verdicts }
}

fn filter(req: &Request, node: &NodeView, settings: &Settings) -> Result<(), Rejection> {
    if node.enable != NodeEnable::Enabled {
        return Err(Rejection::NotEnabled(node.enable));
    }
    if node.connection != Connection::Connected {
        return Err(Rejection::NotConnected(node.connection));
    }
    if node.liveness != Liveness::Alive {
        return Err(Rejection::NotAlive(node.liveness));
    }
    let (cpus, memory) = capacity(node, settings);
    let free_cpu = cpus - f64::from(node.allocated_vcpus);
    if f64::from(req.vcpus) > free_cpu {
        return Err(Rejection::Cpu {
            free: free_cpu.max(0.0),
        });
    }
    let free_mib = memory - node.allocated_memory_mib as f64;
    if req.memory_mib as f64 > free_mib {
        return Err(Rejection::Memory {
            free_mib: free_mib.max(0.0),
        });
    }
    if let Some(i) = req.pools.iter().position(|p| !node.pools.contains(p)) {
        return Err(Rejection::Pool(i));
    }
    if let Some(i) = req.networks.iter().position(|n| !node.networks.contains(n)) {
        return Err(Rejection::Network(i));
    }
    for (g, group) in req.groups.iter().enumerate() {
        if group.strength == Strength::Hard && !keeps(group, &node.name) {
            return Err(Rejection::Affinity(g));
        }
    }
    Ok(())
}

/// Whether putting the VM on `node` keeps `group`'s rule.
fn keeps(group: &GroupView, node: &str) -> bool {
    match &group.rule {
        AffinityRule::VmAffinity => group.member_nodes.iter().all(|n| n == node),
        AffinityRule::VmAntiAffinity => group.member_nodes.iter().all(|n| n != node),
        AffinityRule::NodeAffinity { nodes } => nodes.iter().any(|n| n == node),
        AffinityRule::NodeAntiAffinity { nodes } => nodes.iter().all(|n| n != node),
    }
}

/// Higher is better: the share of the node's room left after placing (spread) or taken
/// (binpack), memory and CPU weighed alike, plus one per soft rule kept, minus one per soft
/// rule broken.
fn weigh(req: &Request, node: &NodeView, settings: &Settings) -> f64 {
    let (cpus, memory) = capacity(node, settings);
    let share = |left: f64, total: f64| if total > 0.0 { left / total } else { 0.0 };
    let cpu_left = share(cpus - f64::from(node.allocated_vcpus + req.vcpus), cpus);
    let mem_left = share(
        memory - (node.allocated_memory_mib + req.memory_mib) as f64,
        memory,
    );
    let room = (cpu_left + mem_left) / 2.0;
    let base = match settings.placement {
        Placement::Spread => room,
        Placement::Binpack => 1.0 - room,
    };
    let soft: f64 = req
        .groups
        .iter()
        .filter(|g| g.strength == Strength::Soft)
        .map(|g| if keeps(g, &node.name) { 1.0 } else { -1.0 })
        .sum();
    base + soft
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            enable: NodeEnable::Enabled,
            connection: Connection::Connected,
            liveness: Liveness::Alive,
            cpus: 4,
            memory_mib: 8192,
            reserved_memory_mib: 0,
            allocated_vcpus: 0,
            allocated_memory_mib: 0,
            pools: ["shared".to_owned()].into(),
            networks: ["lan".to_owned()].into(),
        }
    }

    fn req() -> Request {
        Request {
            vcpus: 1,
            memory_mib: 1024,
            pools: ["shared".to_owned()].into(),
            networks: ["lan".to_owned()].into(),
            groups: Vec::new(),
        }
    }

    fn settings() -> Settings {
        Settings {
            cpu_overcommit: 1.0,
            ..Settings::default()
        }
    }

    fn rejected_by(d: &Decision, i: usize) -> Option<&'static str> {
        match d.verdicts[i] {
            Verdict::Rejected(r) => Some(r.filter()),
            Verdict::Fits(_) => None,
        }
    }

    #[test]
    fn each_filter_rejects_alone_and_names_itself() {
        let s = settings();
        type Spoil = Box<dyn Fn(&mut NodeView)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("enabled", Box::new(|n| n.enable = NodeEnable::Locked)),
            ("enabled", Box::new(|n| n.enable = NodeEnable::Maintenance)),
            ("enabled", Box::new(|n| n.enable = NodeEnable::Disabled)),
            (
                "connected",
                Box::new(|n| n.connection = Connection::Disconnected),
            ),
            ("alive", Box::new(|n| n.liveness = Liveness::Suspect)),
            ("cpu", Box::new(|n| n.allocated_vcpus = 4)),
            ("memory", Box::new(|n| n.allocated_memory_mib = 7500)),
            ("memory", Box::new(|n| n.reserved_memory_mib = 7500)),
            ("pools", Box::new(|n| n.pools.clear())),
            ("networks", Box::new(|n| n.networks.clear())),
        ];
        for (filter, spoil) in cases {
            let mut bad = node("a");
            spoil(&mut bad);
            let d = place(&req(), &[bad.clone(), node("b")], &s);
            assert_eq!(rejected_by(&d, 0), Some(filter), "{bad:?}");
            assert_eq!(d.chosen, Some(1));
            let alone = place(&req(), &[bad.clone()], &s);
            assert_eq!(alone.chosen, None);
            let why = alone.why_pending(&[bad], &req());
            assert!(why.starts_with("no node fits: a: "), "{why}");
            assert!(why.contains(filter), "{why}");
        }
        assert_eq!(
            place(&req(), &[], &s).why_pending(&[], &req()),
            "no node has joined"
        );
    }

    #[test]
    fn overcommit_and_the_cluster_reserve_count() {
        let mut n = node("a");
        n.allocated_vcpus = 4;
        assert_eq!(place(&req(), &[n.clone()], &settings()).chosen, None);
        let over = Settings {
            cpu_overcommit: 2.0,
            ..settings()
        };
        assert_eq!(place(&req(), &[n.clone()], &over).chosen, Some(0));
        let reserved = Settings {
            reserved_memory_mib: 7500,
            ..settings()
        };
        assert_eq!(place(&req(), &[node("a")], &reserved).chosen, None);
        let mem_over = Settings {
            reserved_memory_mib: 7500,
            memory_overcommit: 2.0,
            ..settings()
        };
        assert_eq!(place(&req(), &[node("a")], &mem_over).chosen, Some(0));
    }

    #[test]
    fn spread_takes_the_emptiest_binpack_the_fullest_and_ties_go_by_name() {
        let mut busy = node("a");
        busy.allocated_vcpus = 2;
        busy.allocated_memory_mib = 4096;
        let nodes = [busy, node("b"), node("c")];
        assert_eq!(place(&req(), &nodes, &settings()).chosen, Some(1));
        let binpack = Settings {
            placement: Placement::Binpack,
            ..settings()
        };
        assert_eq!(place(&req(), &nodes, &binpack).chosen, Some(0));
        // Nodes in another order: the same name wins.
        let shuffled = [node("c"), node("b")];
        assert_eq!(place(&req(), &shuffled, &settings()).chosen, Some(1));
    }

    fn group(rule: AffinityRule, strength: Strength, members: &[&str]) -> GroupView {
        GroupView {
            name: "g".into(),
            rule,
            strength,
            member_nodes: members.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn hard_affinity_filters_and_soft_affinity_weighs() {
        let nodes = [node("a"), node("b"), node("c")];
        let s = settings();
        let with = |g: GroupView| Request {
            groups: vec![g],
            ..req()
        };
        let anti = place(
            &with(group(
                AffinityRule::VmAntiAffinity,
                Strength::Hard,
                &["a", "b"],
            )),
            &nodes,
            &s,
        );
        assert_eq!(anti.chosen, Some(2));
        assert_eq!(rejected_by(&anti, 0), Some("affinity"));
        let full = place(
            &with(group(
                AffinityRule::VmAntiAffinity,
                Strength::Hard,
                &["a", "b", "c"],
            )),
            &nodes,
            &s,
        );
        assert_eq!(full.chosen, None);
        let together = place(
            &with(group(AffinityRule::VmAffinity, Strength::Hard, &["b"])),
            &nodes,
            &s,
        );
        assert_eq!(together.chosen, Some(1));
        let on = AffinityRule::NodeAffinity {
            nodes: vec!["c".into()],
        };
        assert_eq!(
            place(&with(group(on, Strength::Hard, &[])), &nodes, &s).chosen,
            Some(2)
        );
        let off = AffinityRule::NodeAntiAffinity {
            nodes: vec!["a".into()],
        };
        assert_eq!(
            place(&with(group(off, Strength::Hard, &[])), &nodes, &s).chosen,
            Some(1)
        );
        // Soft: the rule wins over spread, but never keeps the VM out.
        let mut emptiest = node("a");
        emptiest.cpus = 64;
        let soft_nodes = [emptiest, node("b")];
        let soft = place(
            &with(group(AffinityRule::VmAffinity, Strength::Soft, &["b"])),
            &soft_nodes,
            &s,
        );
        assert_eq!(soft.chosen, Some(1));
        let soft_full = place(
            &with(group(
                AffinityRule::VmAntiAffinity,
                Strength::Soft,
                &["a", "b"],
            )),
            &soft_nodes,
            &s,
        );
        assert_eq!(soft_full.chosen, Some(0));
    }

    #[test]
    fn the_report_names_every_node() {
        let mut locked = node("a");
        locked.enable = NodeEnable::Locked;
        let nodes = [locked, node("b")];
        let d = place(&req(), &nodes, &settings());
        let report = d.report(&nodes, &req());
        assert_eq!(report[0].rejected_by.as_deref(), Some("enabled"));
        assert_eq!(report[0].detail.as_deref(), Some("the node is locked"));
        assert!(report[1].score.is_some());
    }
}
