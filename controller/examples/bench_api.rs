//! Benchmark driver for `scripts/bench-api`:
//!
//! 1. **create → Running**: on the 3-node harness with a controller (embedded store), N VMs of
//!    the test guest (root volume cloned from an image on the shared pool) are created one
//!    after the other through `POST /v1/vms`, each timed from the request to the API saying
//!    `running`, by a client on the management network. Twice: with TLS on every TCP link (the
//!    client's to the API, the controller's to each hostd), and with plain HTTP
//!    (`--insecure-http`), for what TLS costs. The peer is the layer below: the same VM
//!    ensured straight on a node's hostd (`PUT /vms/{uuid}`, which answers once the VM runs),
//!    timed the same way.
//! 2. **scheduler throughput**: 10,000 VMs placed one by one on 1,000 in-memory nodes by the
//!    controller's scheduler (every filter and the weigher; a fifth of the VMs in
//!    anti-affinity groups), against the target of 5,000 placements a second.
//!
//! `bench-api [N]` (default 50).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use triad_api::client::HostdClient;
use triad_api::http::{send, Endpoint};
use triad_api::v1::{AffinityRule, Connection, Liveness, NodeEnable, Settings, Strength};
use triad_controller::scheduler::{place, GroupView, NodeView, Request};
use triad_tests::{guest_elf, Cluster, Controller};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The controller's API as a client on the management network reaches it: over TLS when the
/// cluster speaks it.
struct Api {
    endpoint: Endpoint,
    token: String,
}

impl Api {
    fn new(ctl: &Controller) -> Result<Self> {
        let endpoint = match &ctl.ca_file {
            Some(ca) => Endpoint::Tls(
                ctl.addr.clone(),
                triad_api::tls::client_by_ca(&std::fs::read_to_string(ca)?, None)?,
            ),
            None => Endpoint::Tcp(ctl.addr.clone()),
        };
        Ok(Self {
            endpoint,
            token: ctl.token(),
        })
    }
}

fn call(api: &Api, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let body = body.map(|b| b.to_string());
    let r = send(
        &api.endpoint,
        method,
        path,
        body.as_deref(),
        Some(&api.token),
        TIMEOUT,
    )?;
    if !(200..300).contains(&r.status) {
        bail!("{method} {path}: {} {}", r.status, r.body);
    }
    Ok(serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

fn until(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while !done()? {
        if start.elapsed() > TIMEOUT {
            bail!("waited {TIMEOUT:?} for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(p * sorted.len()).div_ceil(100).max(1) - 1]
}

fn ms(mut v: Vec<Duration>) -> Vec<f64> {
    v.sort();
    v.into_iter().map(|d| d.as_secs_f64() * 1000.0).collect()
}

fn main() -> Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("N must be a count of VMs")?,
        None => 50,
    };
    if runs == 0 || runs > 200 {
        bail!("N must be 1 to 200, not {runs}");
    }
    let (plain, _) = create_to_running(runs, false)?;
    let (through_api, direct) = create_to_running(runs, true)?;
    let placements = scheduler_throughput();
    let (a, d, p) = (ms(through_api), ms(direct), ms(plain));
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "figure", "p50", "p99", "direct p50", "direct p99", "p50 x"
    );
    for (label, v) in [("TLS", &a), ("plain HTTP", &p)] {
        println!(
            "{:<44} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8.2}",
            format!("create -> running ms, {label} ({} VMs, 3 nodes)", v.len()),
            percentile(v, 50),
            percentile(v, 99),
            percentile(&d, 50),
            percentile(&d, 99),
            percentile(v, 50) / percentile(&d, 50)
        );
    }
    let cost = percentile(&a, 50) / percentile(&p, 50) - 1.0;
    println!(
        "TLS costs {:+.1}% of the plain p50 (target <= 10%: {})",
        cost * 100.0,
        if cost <= 0.10 { "met" } else { "not met" }
    );
    println!(
        "{:<40} {:>10.0} placements/s (target >= 5000: {})",
        "scheduler, 10,000 VMs on 1,000 nodes",
        placements,
        if placements >= 5000.0 {
            "met"
        } else {
            "not met"
        }
    );
    let p50 = percentile(&a, 50);
    println!(
        "create -> running p50 {p50:.0} ms (target < 1000 ms: {})",
        if p50 < 1000.0 { "met" } else { "not met" }
    );
    Ok(())
}

fn create_to_running(runs: usize, tls: bool) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let cluster = if tls {
        Cluster::with_tls("bench-api", 3)
    } else {
        Cluster::new("bench-api", 3)
    };
    let ctl = cluster.start_controller(0, None);
    // The client is a host on the management network: the switch namespace, at .240.
    cluster
        .switch()
        .ip(&["addr", "add", "10.250.0.240/24", "dev", "br-mgmt"]);
    let switch = cluster.switch().name.clone();
    let api = Api::new(&ctl)?;
    let nodes: Vec<Value> = cluster
        .nodes
        .iter()
        .map(|node| {
            let mut join = json!({"name": node.name, "address": node.hostd_addr(),
                "token": node.hostd_token(), "data_address": node.addr(2)});
            if tls {
                join["fingerprint"] = Value::from(node.hostd_fingerprint());
            }
            join
        })
        .collect();
    let file = cluster.shared.join("bench.raw");
    let through_api = std::thread::scope(|s| {
        s.spawn(|| {
            triad_tests::enter_netns(&switch);
            through_the_api(&api, &nodes, &file, runs)
        })
        .join()
        .expect("the client's thread")
    })?;
    // The layer below: the same VM ensured on a node's hostd directly.
    let node = &cluster.nodes[0];
    let hostd = HostdClient::new(&node.hostd.socket);
    let mut direct = Vec::new();
    for i in 0..=runs.min(20) {
        let uuid = format!("d1ec7000-0000-4000-8000-{i:012x}");
        let spec = serde_json::from_value(json!({
            "name": format!("d{i}"), "generation": 1, "vcpus": 1, "memory_mib": 64,
            "boot": {"kernel": guest_elf(), "cmdline": "triad.blk=ro"},
            "disks": [{"id": "root", "pool": "shared", "volume": format!("direct-{i}"),
                "source": {"kind": "image", "id": "guest"}, "size_bytes": 1 << 20}],
        }))?;
        let start = Instant::now();
        hostd.ensure(&uuid, &spec)?;
        if i > 0 {
            direct.push(start.elapsed());
        }
    }
    drop(ctl);
    Ok((through_api, direct))
}

/// Joins `nodes`, imports the test guest from `file` and times `runs` VMs from create to
/// running, all through `api`.
fn through_the_api(
    api: &Api,
    nodes: &[Value],
    file: &std::path::Path,
    runs: usize,
) -> Result<Vec<Duration>> {
    for join in nodes {
        call(api, "POST", "/v1/nodes", Some(join.clone()))?;
    }
    until("the nodes", || {
        let nodes = call(api, "GET", "/v1/nodes", None)?;
        Ok(nodes
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n["connection"] == "connected")))
    })?;
    // Two CPUs a node: 50 one-vCPU VMs on three nodes need overcommit past the default 4.
    call(
        api,
        "PATCH",
        "/v1/settings",
        Some(json!({"cpu_overcommit": 16.0})),
    )?;
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..16].copy_from_slice(b"TRIAD-TEST-IMAGE");
    std::fs::write(file, bytes)?;
    // No NIC: a guest that busy-polls one, fifty times over, would starve two cores.
    call(
        api,
        "POST",
        "/v1/images",
        Some(json!({"name": "guest", "pool": "shared",
        "source": {"kind": "file", "path": file}, "kernel": guest_elf(), "cmdline": "triad.blk=ro"})),
    )?;
    until("the image", || {
        Ok(call(api, "GET", "/v1/images/guest", None)?["state"] == "ready")
    })?;
    let mut through_api = Vec::new();
    // The first VM warms up what a cluster's first VM meets; it is not counted.
    for i in 0..=runs {
        let start = Instant::now();
        let vm = call(
            api,
            "POST",
            "/v1/vms",
            Some(json!({"name": format!("b{i}"), "image": "guest", "memory_mib": 64})),
        )?;
        let id = vm["resource"]["id"].as_str().context("an id")?.to_owned();
        until(&format!("VM {i} ({id}) running"), || {
            let vm = call(api, "GET", &format!("/v1/vms/{id}"), None)?;
            if vm["state"] == "failed" {
                bail!("VM {id} failed: {}", vm["reason"]);
            }
            Ok(vm["state"] == "running")
        })?;
        if i > 0 {
            through_api.push(start.elapsed());
        }
    }
    Ok(through_api)
}

/// Placements a second: 10,000 VMs, one by one, on 1,000 nodes.
fn scheduler_throughput() -> f64 {
    let settings = Settings::default();
    let mut nodes: Vec<NodeView> = (0..1000)
        .map(|i| NodeView {
            name: format!("node-{i:04}"),
            enable: if i % 97 == 0 {
                NodeEnable::Locked
            } else {
                NodeEnable::Enabled
            },
            connection: Connection::Connected,
            liveness: Liveness::Alive,
            cpus: 32 + (i % 4) * 16,
            memory_mib: 256 << 10,
            reserved_memory_mib: 4096,
            allocated_vcpus: 0,
            allocated_memory_mib: 0,
            pools: ["ceph".to_owned()].into(),
            networks: ["lan".to_owned(), "storage".to_owned()].into(),
        })
        .collect();
    let mut groups: Vec<Vec<String>> = vec![Vec::new(); 200];
    let start = Instant::now();
    let mut placed = 0;
    for i in 0..10_000usize {
        let group = (i % 5 == 0).then_some(i / 5 % 200);
        let req = Request {
            vcpus: [1, 2, 3, 4][i % 4],
            memory_mib: 1024 << (i % 4),
            pools: BTreeSet::from(["ceph".to_owned()]),
            networks: BTreeSet::from(["lan".to_owned()]),
            groups: group
                .map(|g| {
                    vec![GroupView {
                        name: format!("g{g}"),
                        rule: AffinityRule::VmAntiAffinity,
                        strength: Strength::Hard,
                        member_nodes: groups[g].clone(),
                    }]
                })
                .unwrap_or_default(),
        };
        if let Some(n) = place(&req, &nodes, &settings).chosen {
            nodes[n].allocated_vcpus += req.vcpus;
            nodes[n].allocated_memory_mib += req.memory_mib;
            if let Some(g) = group {
                groups[g].push(nodes[n].name.clone());
            }
            placed += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(placed, 10_000, "every VM fits");
    placed as f64 / elapsed
}
