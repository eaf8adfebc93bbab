//! Security groups and anti-spoofing as one nftables ruleset, generated whole from the host's
//! ports and groups and loaded in one transaction.
//!
//! VM traffic is bridged, and this kernel has no connection tracking in the bridge family, so
//! the work is split. A bridge-family table knows the ports: it drops frames a VM sends from
//! a MAC or IP that is not its port's, and marks each packet with the port it came from (low
//! 16 bits) and the port it goes to (high 16 bits). The bridge hands IPv4 to the inet hooks
//! (br_netfilter), where conntrack runs and an inet table applies the groups by those marks.
//!
//! Rules are matched against the connection's original direction (`ct original ...`), so one
//! rule covers a connection's packets both ways. A connection admitted under the current rules
//! carries their generation in its conntrack mark and takes a fast path; when the rules change,
//! every connection is checked again on its next packet, so a removed rule cuts the flows it
//! allowed while allowed flows go on.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use triad_api::net::{Action, Direction, Ipv4Cidr, Mac, Protocol, Remote, Rule, SecurityGroupSpec};

/// One VM port of this host, as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwPort<'a> {
    pub tap: String,
    pub mac: Mac,
    pub ip: Option<Ipv4Addr>,
    /// Its groups' rules; none: the port is not filtered (anti-spoofing still applies).
    pub groups: Vec<&'a str>,
}

/// The addresses in each group: its members elsewhere and this host's ports in it.
pub fn group_addresses(
    groups: &BTreeMap<String, SecurityGroupSpec>,
    ports: &[FwPort<'_>],
) -> BTreeMap<String, Vec<Ipv4Addr>> {
    groups
        .iter()
        .map(|(id, spec)| {
            let mut ips: Vec<Ipv4Addr> = spec.members.clone();
            ips.extend(
                ports
                    .iter()
                    .filter(|p| p.groups.contains(&id.as_str()))
                    .filter_map(|p| p.ip),
            );
            ips.sort();
            ips.dedup();
            (id.clone(), ips)
        })
        .collect()
}

fn set_name(group: &str) -> String {
    // Set names are identifiers: the group id's letters, digits and '_' only.
    let safe: String = group
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("group_{safe}_{:08x}", crate::host::fnv(group))
}

/// One rule as an nft statement on the connection's original tuple, from the point of view
/// of the port (`egress`: the port opened it; `ingress`: it was opened to the port). `ports`,
/// when given, is a named set of ports that replaces the rule's own range.
fn statement(rule: &Rule, ports: Option<&str>, verdict: &str) -> String {
    let mut s = String::new();
    // A connection's protocol is the same both ways; nft needs it stated to read ports.
    let proto = match rule.protocol {
        Protocol::Tcp => Some("tcp"),
        Protocol::Udp => Some("udp"),
        Protocol::Icmp => Some("icmp"),
        Protocol::Gre => Some("gre"),
        Protocol::Any => None,
    };
    if let Some(p) = proto {
        let _ = write!(s, "meta l4proto {p} ");
    }
    if let Some(set) = ports {
        let _ = write!(s, "ct original proto-dst @{set} ");
    } else if let Some(range) = rule.ports {
        if range.from == range.to {
            let _ = write!(s, "ct original proto-dst {} ", range.from);
        } else {
            let _ = write!(s, "ct original proto-dst {}-{} ", range.from, range.to);
        }
    }
    // The remote end: where an egress connection goes, where an ingress one comes from.
    let field = match rule.direction {
        Direction::Egress => "daddr",
        Direction::Ingress => "saddr",
    };
    match &rule.remote {
        Some(Remote::Cidr(c)) if c.prefix > 0 => {
            let _ = write!(s, "ct original ip {field} {}/{} ", c.network(), c.prefix);
        }
        Some(Remote::Cidr(_)) | None => {}
        Some(Remote::Group(g)) => {
            let _ = write!(s, "ct original ip {field} @{} ", set_name(g));
        }
    }
    s + verdict
}

/// The ports a rule covers, every port when it names none.
fn port_span(rule: &Rule) -> (u16, u16) {
    rule.ports.map_or((0, u16::MAX), |p| (p.from, p.to))
}

/// The addresses a rule's remote covers, when it is a CIDR (anywhere is 0.0.0.0/0).
fn cidr_span(rule: &Rule) -> Option<Ipv4Cidr> {
    match &rule.remote {
        None => Some(Ipv4Cidr {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        }),
        Some(Remote::Cidr(c)) => Some(*c),
        Some(Remote::Group(_)) => None,
    }
}

/// Whether two CIDR rules match some connection in common.
fn overlap(a: &Rule, b: &Rule) -> bool {
    let ((a_from, a_to), (b_from, b_to)) = (port_span(a), port_span(b));
    let ports = a_from <= b_to && b_from <= a_to;
    match (cidr_span(a), cidr_span(b)) {
        (Some(x), Some(y)) => ports && x.overlaps(&y),
        _ => true,
    }
}

/// Neighbouring rules (in the order they are matched) with one protocol and action: a run
/// matches as one rule would, since nothing comes between its rules.
#[derive(Debug)]
struct Run<'r> {
    rules: Vec<&'r Rule>,
    /// No two rules overlap, which a set of (port, address) pairs requires.
    disjoint: bool,
    /// All rules have the same remote, so that only their ports differ.
    one_remote: bool,
    /// All remotes are CIDRs (or anywhere), which a set of pairs can hold.
    cidrs: bool,
}

/// The most rules one set takes: checking a rule against a run costs the run's length, so
/// this keeps a group of many thousand rules linear.
const MAX_RUN: usize = 1000;

/// Splits rules into runs that each load as one rule on a set: of ports, when the rules differ
/// only in their ports; of (port, address) pairs, when they differ in CIDRs too and no two
/// overlap (the set's intervals may not).
fn runs<'r>(rules: &[&'r Rule]) -> Vec<Run<'r>> {
    let mut runs: Vec<Run<'r>> = Vec::new();
    for &rule in rules {
        if let Some(run) = runs.last_mut() {
            let first = run.rules[0];
            if first.protocol == rule.protocol
                && first.action == rule.action
                && run.rules.len() < MAX_RUN
            {
                let cidrs = run.cidrs && cidr_span(rule).is_some();
                let disjoint = run.disjoint && run.rules.iter().all(|r| !overlap(r, rule));
                let one_remote = run.one_remote && first.remote == rule.remote;
                if one_remote || (cidrs && disjoint) {
                    run.rules.push(rule);
                    run.disjoint = disjoint;
                    run.one_remote = one_remote;
                    run.cidrs = cidrs;
                    continue;
                }
            }
        }
        runs.push(Run {
            rules: vec![rule],
            disjoint: true,
            one_remote: true,
            cidrs: cidr_span(rule).is_some(),
        });
    }
    runs
}

/// The ports a run's rules cover, as sorted ranges with overlaps and neighbours joined (a set
/// of intervals refuses overlapping elements); None when some rule takes every port.
fn port_union(run: &[&Rule]) -> Option<Vec<(u16, u16)>> {
    let mut ranges: Vec<(u16, u16)> = run
        .iter()
        .map(|r| r.ports.map(|p| (p.from, p.to)))
        .collect::<Option<_>>()?;
    ranges.sort_unstable();
    let mut union: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (from, to) in ranges {
        match union.last_mut() {
            Some(last) if u32::from(from) <= u32::from(last.1) + 1 => last.1 = last.1.max(to),
            _ => union.push((from, to)),
        }
    }
    Some(union)
}

fn port_text((from, to): (u16, u16)) -> String {
    if from == to {
        from.to_string()
    } else {
        format!("{from}-{to}")
    }
}

/// A run of CIDR rules as one rule on set `set` (declared into `sets`): of (port, address)
/// pairs for TCP and UDP, of addresses for the other protocols.
fn pair_statement(
    rules: &[&Rule],
    set: &str,
    direction: Direction,
    verdict: &str,
    sets: &mut String,
) -> String {
    let field = match direction {
        Direction::Egress => "daddr",
        Direction::Ingress => "saddr",
    };
    let cidr = |r: &Rule| {
        let c = cidr_span(r).unwrap_or(Ipv4Cidr {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        });
        format!("{}/{}", c.network(), c.prefix)
    };
    let protocol = rules[0].protocol;
    let (kind, key, elements): (&str, String, Vec<String>) = match protocol {
        Protocol::Tcp | Protocol::Udp => (
            "inet_service . ipv4_addr",
            format!("ct original proto-dst . ct original ip {field}"),
            rules
                .iter()
                .map(|r| format!("{} . {}", port_text(port_span(r)), cidr(r)))
                .collect(),
        ),
        _ => (
            "ipv4_addr",
            format!("ct original ip {field}"),
            rules.iter().map(|r| cidr(r)).collect(),
        ),
    };
    let _ = writeln!(
        sets,
        "\tset {set} {{\n\t\ttype {kind}; flags interval;\n\t\telements = {{ {} }}\n\t}}",
        elements.join(", ")
    );
    let proto = match protocol {
        Protocol::Tcp => "meta l4proto tcp ",
        Protocol::Udp => "meta l4proto udp ",
        Protocol::Icmp => "meta l4proto icmp ",
        Protocol::Gre => "meta l4proto gre ",
        Protocol::Any => "",
    };
    format!("{proto}{key} @{set} {verdict}")
}

/// The ruleset for `ports` under `groups`, its admitted connections marked with `generation`
/// (non-zero). Replaces Triad's two tables whole.
pub fn ruleset(
    ports: &[FwPort<'_>],
    groups: &BTreeMap<String, SecurityGroupSpec>,
    generation: u32,
) -> String {
    let mut out = String::new();
    // Declared, then deleted and made again: one transaction whatever existed before.
    out += "table bridge triad_ports\ndelete table bridge triad_ports\n";
    out += "table inet triad_sg\ndelete table inet triad_sg\n";

    // Port numbers for the marks: 1.. in the order given (the caller sorts).
    let numbered: Vec<(u32, &FwPort<'_>)> = (1u32..).zip(ports).collect();
    out += "table bridge triad_ports {\n";
    for (n, p) in &numbered {
        let _ = writeln!(out, "\tchain port_{n} {{");
        let _ = writeln!(out, "\t\tether saddr != {} drop", p.mac);
        let _ = writeln!(out, "\t\tether type arp arp saddr ether != {} drop", p.mac);
        if let Some(ip) = p.ip {
            let _ = writeln!(
                out,
                "\t\tether type arp arp saddr ip != {{ {ip}, 0.0.0.0 }} drop"
            );
            // A client without an address yet may only ask for one.
            let _ = writeln!(
                out,
                "\t\tether type ip ip saddr 0.0.0.0 udp dport 67 meta mark set {n} return"
            );
            let _ = writeln!(out, "\t\tether type ip ip saddr != {ip} drop");
        }
        // No VM answers for the network's DHCP.
        let _ = writeln!(out, "\t\tether type ip udp sport 67 drop");
        // Nor sends VLAN-tagged frames, which would slip past the checks below.
        let _ = writeln!(out, "\t\tether type {{ 8021q, 8021ad }} drop");
        // Nor plays an IPv6 router or DHCPv6 server: neighbour discovery itself passes.
        let _ = writeln!(
            out,
            "\t\ticmpv6 type {{ nd-router-advert, nd-redirect }} drop"
        );
        let _ = writeln!(out, "\t\tether type ip6 udp sport 547 drop");
        let _ = writeln!(out, "\t\tmeta mark set {n}");
        out += "\t}\n";
    }
    out += "\tchain prerouting {\n\t\ttype filter hook prerouting priority -300; policy accept;\n";
    if !numbered.is_empty() {
        let map: Vec<String> = numbered
            .iter()
            .map(|(n, p)| format!("\"{}\" : jump port_{n}", p.tap))
            .collect();
        let _ = writeln!(out, "\t\tiifname vmap {{ {} }}", map.join(", "));
    }
    out += "\t}\n";
    // Before the bridge hands the packet to the inet hooks (at priority -1).
    out += "\tchain forward {\n\t\ttype filter hook forward priority -300; policy accept;\n";
    let filtered: Vec<&(u32, &FwPort<'_>)> = numbered
        .iter()
        .filter(|(_, p)| !p.groups.is_empty())
        .collect();
    for (n, p) in &filtered {
        let _ = writeln!(
            out,
            "\t\toifname \"{}\" meta mark set meta mark or 0x{:x}",
            p.tap,
            n << 16
        );
    }
    out += "\t}\n}\n";

    out += "table inet triad_sg {\n";
    let addresses = group_addresses(groups, ports);
    for (id, ips) in &addresses {
        let _ = writeln!(out, "\tset {} {{\n\t\ttype ipv4_addr;", set_name(id));
        if !ips.is_empty() {
            let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
        }
        out += "\t}\n";
    }
    // Ports with the same groups share one pair of chains: a rule change then reloads each
    // rule once, however many VMs use the group.
    let mut sets: Vec<&Vec<&str>> = Vec::new();
    let mut chain_of: BTreeMap<u32, usize> = BTreeMap::new();
    for (n, p) in &filtered {
        let k = match sets.iter().position(|s| **s == p.groups) {
            Some(k) => k,
            None => {
                sets.push(&p.groups);
                sets.len() - 1
            }
        };
        chain_of.insert(*n, k);
    }
    // Sets go before the chains that name them.
    let (mut port_sets, mut chains) = (String::new(), String::new());
    for (k, set) in sets.iter().enumerate() {
        for direction in [Direction::Egress, Direction::Ingress] {
            let chain = match direction {
                Direction::Egress => "out",
                Direction::Ingress => "in",
            };
            let _ = writeln!(chains, "\tchain {chain}_{k} {{");
            // Rules are IPv4: a port with groups passes no IPv6, whatever a rule's form.
            chains += "\t\tmeta nfproto ipv6 drop\n";
            if direction == Direction::Egress {
                // Every VM may reach its host's metadata service.
                let _ = writeln!(
                    chains,
                    "\t\tct original ip daddr {} meta l4proto tcp ct original proto-dst 80 return",
                    crate::metadata::ADDRESS
                );
            }
            let mut rules: Vec<&Rule> = set
                .iter()
                .filter_map(|g| groups.get(*g))
                .flat_map(|g| &g.rules)
                .filter(|r| r.direction == direction)
                .collect();
            // Stable: equal priorities keep the groups' order.
            rules.sort_by_key(|r| r.priority);
            for (i, run) in runs(&rules).into_iter().enumerate() {
                let first = run.rules[0];
                let verdict = match first.action {
                    Action::Accept => "return",
                    Action::Drop => "drop",
                };
                let set = format!("rules_{chain}_{k}_{i}");
                // A set loads and matches far faster than its rules one by one.
                let line = if run.rules.len() == 1 {
                    statement(first, None, verdict)
                } else if run.one_remote {
                    match port_union(&run.rules) {
                        Some(ranges) => {
                            let elements: Vec<String> =
                                ranges.iter().map(|&r| port_text(r)).collect();
                            let _ = writeln!(
                                port_sets,
                                "\tset {set} {{\n\t\ttype inet_service; flags interval;\n\t\telements = {{ {} }}\n\t}}",
                                elements.join(", ")
                            );
                            statement(first, Some(&set), verdict)
                        }
                        // Some rule of the run takes every port: so does the run.
                        None => statement(
                            &Rule {
                                ports: None,
                                ..first.clone()
                            },
                            None,
                            verdict,
                        ),
                    }
                } else {
                    pair_statement(&run.rules, &set, direction, verdict, &mut port_sets)
                };
                let _ = writeln!(chains, "\t\t{line}");
            }
            chains += "\t\tdrop\n\t}\n";
        }
    }
    out += &port_sets;
    out += &chains;
    out += "\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n";
    out += "\t\tmeta mark 0 return\n";
    let _ = writeln!(
        out,
        "\t\tct state established,related ct mark {generation} accept"
    );
    out += "\t\tct state invalid drop\n";
    if !filtered.is_empty() {
        let vmap = |shift: u32, chain: &str| -> String {
            let entries: Vec<String> = filtered
                .iter()
                .map(|(n, _)| format!("0x{:x} : jump {chain}_{}", n << shift, chain_of[n]))
                .collect();
            entries.join(", ")
        };
        // The originator's egress rules and the destination's ingress rules, whichever way
        // this packet goes.
        let _ = writeln!(
            out,
            "\t\tct direction original meta mark & 0xffff vmap {{ {} }}",
            vmap(0, "out")
        );
        let _ = writeln!(
            out,
            "\t\tct direction original meta mark & 0xffff0000 vmap {{ {} }}",
            vmap(16, "in")
        );
        let _ = writeln!(
            out,
            "\t\tct direction reply meta mark & 0xffff0000 vmap {{ {} }}",
            vmap(16, "out")
        );
        let _ = writeln!(
            out,
            "\t\tct direction reply meta mark & 0xffff vmap {{ {} }}",
            vmap(0, "in")
        );
    }
    let _ = writeln!(out, "\t\tct mark set {generation}");
    out += "\t}\n";
    // VMs do not reach the host through Triad's bridges.
    out += "\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n";
    out += "\t\tiifname \"tbr*\" drop\n\t}\n}\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_api::net::PortRange;

    fn web() -> SecurityGroupSpec {
        SecurityGroupSpec {
            name: "web".into(),
            rules: vec![
                Rule {
                    direction: Direction::Ingress,
                    protocol: Protocol::Tcp,
                    ports: Some(PortRange { from: 80, to: 80 }),
                    remote: None,
                    action: Action::Accept,
                    priority: 100,
                },
                Rule {
                    direction: Direction::Ingress,
                    protocol: Protocol::Tcp,
                    ports: Some(PortRange { from: 22, to: 22 }),
                    remote: Some(Remote::Group("admins".into())),
                    action: Action::Accept,
                    priority: 10,
                },
            ],
            members: vec![Ipv4Addr::new(10, 0, 0, 99)],
        }
    }

    #[test]
    fn rules_land_in_priority_order_on_the_original_tuple() {
        let mut groups = BTreeMap::new();
        groups.insert("web".to_owned(), web());
        groups.insert(
            "admins".to_owned(),
            SecurityGroupSpec {
                name: "admins".into(),
                rules: vec![],
                members: vec![Ipv4Addr::new(10, 0, 9, 1)],
            },
        );
        let ports = [
            FwPort {
                tap: "ttpa".into(),
                mac: Mac([0x52, 0x54, 0, 0, 0, 1]),
                ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
                groups: vec!["web"],
            },
            FwPort {
                tap: "ttpb".into(),
                mac: Mac([0x52, 0x54, 0, 0, 0, 2]),
                ip: None,
                groups: vec![],
            },
            FwPort {
                tap: "ttpc".into(),
                mac: Mac([0x52, 0x54, 0, 0, 0, 3]),
                ip: Some(Ipv4Addr::new(10, 0, 0, 6)),
                groups: vec!["web"],
            },
        ];
        let text = ruleset(&ports, &groups, 7);
        let ssh = text
            .find("proto-dst 22 ct original ip saddr @group_admins")
            .unwrap();
        let http = text
            .find("\tmeta l4proto tcp ct original proto-dst 80 return")
            .unwrap();
        assert!(ssh < http, "priority 10 before 100:\n{text}");
        assert!(text.contains("ether type ip ip saddr != 10.0.0.5 drop"));
        assert!(
            text.contains("\"ttpb\" : jump port_2"),
            "every port is anti-spoofed"
        );
        assert!(
            !text.contains("chain in_1"),
            "a port without groups is not filtered"
        );
        assert!(text.contains("ct mark 7 accept"));
        // Ports with the same groups share their chains.
        assert!(
            text.contains("0x10000 : jump in_0, 0x30000 : jump in_0"),
            "{text}"
        );
        // The group's own ports join its address set.
        assert!(
            text.contains("elements = { 10.0.0.5, 10.0.0.6, 10.0.0.99 }"),
            "{text}"
        );
    }

    /// The ruleset of one port in one group of `rules`.
    fn one_group(rules: Vec<Rule>) -> String {
        let mut groups = BTreeMap::new();
        groups.insert(
            "g".to_owned(),
            SecurityGroupSpec {
                name: "g".into(),
                rules,
                members: vec![],
            },
        );
        let port = FwPort {
            tap: "ttpa".into(),
            mac: Mac([0x52, 0x54, 0, 0, 0, 1]),
            ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
            groups: vec!["g"],
        };
        ruleset(&[port], &groups, 1)
    }

    fn tcp(from: u16, to: u16, action: Action, priority: u16) -> Rule {
        Rule {
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            ports: Some(PortRange { from, to }),
            remote: None,
            action,
            priority,
        }
    }

    #[test]
    fn neighbouring_rules_that_differ_in_ports_become_one_set_of_ports() {
        let rules = vec![
            tcp(80, 80, Action::Accept, 10),
            tcp(1000, 2000, Action::Accept, 20),
            tcp(1500, 2500, Action::Accept, 20),
            tcp(2501, 2501, Action::Accept, 30),
            tcp(22, 22, Action::Drop, 40),
            tcp(443, 443, Action::Accept, 50),
            Rule {
                ports: None,
                ..tcp(0, 0, Action::Accept, 60)
            },
            tcp(8080, 8080, Action::Accept, 70),
        ];
        let refs: Vec<&Rule> = rules.iter().collect();
        let runs = runs(&refs);
        let sizes: Vec<usize> = runs.iter().map(|r| r.rules.len()).collect();
        // A drop in between keeps the accepts on either side apart.
        assert_eq!(sizes, [4, 1, 3]);
        assert_eq!(
            port_union(&runs[0].rules),
            Some(vec![(80, 80), (1000, 2501)]),
            "overlaps and neighbours joined"
        );
        assert_eq!(port_union(&runs[2].rules), None, "a rule on every port");

        let text = one_group(rules);
        let chain = &text[text.find("chain in_0").unwrap()..];
        let chain = &chain[..chain.find('}').unwrap()];
        let lines: Vec<&str> = chain
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            lines,
            [
                "meta nfproto ipv6 drop",
                "meta l4proto tcp ct original proto-dst @rules_in_0_0 return",
                "meta l4proto tcp ct original proto-dst 22 drop",
                "meta l4proto tcp return",
                "drop",
            ],
            "{text}"
        );
        assert!(
            text.contains("set rules_in_0_0 {\n\t\ttype inet_service; flags interval;\n\t\telements = { 80, 1000-2501 }"),
            "{text}"
        );
        assert!(
            text.find("set rules_in_0_0").unwrap() < text.find("chain in_0").unwrap(),
            "the set comes before the chain naming it"
        );
    }

    fn from(cidr: &str, rule: Rule) -> Rule {
        Rule {
            remote: Some(Remote::Cidr(cidr.parse().unwrap())),
            ..rule
        }
    }

    fn icmp_from(cidr: &str) -> Rule {
        Rule {
            protocol: Protocol::Icmp,
            ports: None,
            ..from(cidr, tcp(0, 0, Action::Accept, 40))
        }
    }

    #[test]
    fn rules_that_differ_in_ports_and_cidrs_become_one_set_of_pairs_unless_they_overlap() {
        let rules = vec![
            from("10.0.0.0/24", tcp(1000, 1000, Action::Accept, 10)),
            from("10.0.1.0/24", tcp(1001, 1001, Action::Accept, 10)),
            // The same port from another network: no overlap.
            from("10.0.2.0/24", tcp(1000, 1000, Action::Accept, 10)),
            // Inside the first rule's network and port: a set of pairs cannot hold both.
            from("10.0.0.128/25", tcp(1000, 1000, Action::Accept, 20)),
            tcp(5201, 5201, Action::Accept, 30),
            icmp_from("192.0.2.0/24"),
            icmp_from("198.51.100.0/24"),
        ];
        let refs: Vec<&Rule> = rules.iter().collect();
        let sizes: Vec<usize> = runs(&refs).iter().map(|r| r.rules.len()).collect();
        assert_eq!(sizes, [3, 2, 2]);

        let text = one_group(rules);
        for expected in [
            "type inet_service . ipv4_addr; flags interval;\n\t\telements = { 1000 . 10.0.0.0/24, 1001 . 10.0.1.0/24, 1000 . 10.0.2.0/24 }",
            "meta l4proto tcp ct original proto-dst . ct original ip saddr @rules_in_0_0 return",
            "elements = { 1000 . 10.0.0.128/25, 5201 . 0.0.0.0/0 }",
            "type ipv4_addr; flags interval;\n\t\telements = { 192.0.2.0/24, 198.51.100.0/24 }",
            "meta l4proto icmp ct original ip saddr @rules_in_0_2 return",
        ] {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
    }
}
