//! `triad-hostd diag`: the node as its own daemons see it, from their local sockets only, so
//! that it works with no controller, and (from the state file) with no hostd.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use triad_api::client::{HostdClient, NetdClient, StoragedClient, VmmClient};
use triad_api::hostd::{Diagnosis, HostdConfig, Power, Vm, VmPhase, VolumeDiag};
use triad_api::storage::PoolKind;

use crate::error::chain;
use crate::process;
use crate::state::StateFile;

/// How many of hostd's latest events a diagnosis shows.
const EVENTS: usize = 20;

pub fn gather(config: &HostdConfig) -> Diagnosis {
    let timeout = Duration::from_secs(5);
    let mut daemons = BTreeMap::new();
    let hostd = HostdClient::new(&config.socket).with_timeout(timeout);
    let (node, vms, events) = match (hostd.node(), hostd.vms(), hostd.events(0)) {
        (Ok(node), Ok(vms), Ok(events)) => {
            daemons.insert("hostd".into(), "ok".into());
            let skip = events.len().saturating_sub(EVENTS);
            (Some(node), vms, events.into_iter().skip(skip).collect())
        }
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            daemons.insert(
                "hostd".into(),
                format!("{} (VMs below are from its state file)", chain(&e)),
            );
            (None, vms_from_state_file(config), Vec::new())
        }
    };
    let net = match NetdClient::new(&config.netd_socket)
        .with_timeout(timeout)
        .state()
    {
        Ok(state) => {
            daemons.insert("netd".into(), "ok".into());
            Some(state)
        }
        Err(e) => {
            daemons.insert("netd".into(), chain(&e));
            None
        }
    };
    let storaged = StoragedClient::new(&config.storaged_socket).with_timeout(timeout);
    let mut volumes = Vec::new();
    match storaged.pools() {
        Ok(pools) => {
            daemons.insert("storaged".into(), "ok".into());
            for pool in pools {
                if let Some(error) = &pool.error {
                    daemons.insert(format!("pool {}", pool.name), error.clone());
                    continue;
                }
                let list = match storaged.volumes(&pool.name) {
                    Ok(list) => list,
                    Err(e) => {
                        daemons.insert(format!("pool {}", pool.name), chain(&e));
                        continue;
                    }
                };
                daemons.insert(format!("pool {}", pool.name), "ok".into());
                for v in list {
                    let (watchers, lock_owners) = match pool.kind {
                        PoolKind::Ceph => storaged
                            .volume_clients(&pool.name, &v.id)
                            .map(|c| {
                                (
                                    c.watchers.into_iter().map(|w| w.addr).collect(),
                                    c.lock_owners,
                                )
                            })
                            .unwrap_or_default(),
                        _ => (Vec::new(), Vec::new()),
                    };
                    let vm = vms
                        .iter()
                        .find(|vm| {
                            vm.disks
                                .iter()
                                .any(|d| d.pool == pool.name && d.volume == v.id)
                        })
                        .map(|vm| vm.uuid.clone());
                    volumes.push(VolumeDiag {
                        pool: pool.name.clone(),
                        id: v.id,
                        name: v.name,
                        size_bytes: v.size_bytes,
                        vm,
                        watchers,
                        lock_owners,
                    });
                }
            }
        }
        Err(e) => {
            daemons.insert("storaged".into(), chain(&e));
        }
    }
    for vm in vms.iter().filter(|vm| vm.pid.is_some()) {
        let health = match VmmClient::new(&vm.vmm_socket).with_timeout(timeout).info() {
            Ok(info) => format!(
                "ok: {:?}, up {} s, {} boots",
                info.state,
                info.uptime_ms.unwrap_or_default() / 1000,
                info.boots
            ),
            Err(e) => chain(&e),
        };
        daemons.insert(format!("vmm {}", vm.uuid), health);
    }
    Diagnosis {
        daemons,
        node,
        vms,
        net,
        volumes,
        events,
    }
}

/// The VMs as the state file has them, with what /proc says of their VMMs.
fn vms_from_state_file(config: &HostdConfig) -> Vec<Vm> {
    let Ok(state) = StateFile::new(&config.state_dir).load() else {
        return Vec::new();
    };
    state
        .vms
        .into_iter()
        .map(|(uuid, rec)| {
            let dir = config.state_dir.join("vms").join(&uuid);
            let alive = rec.vmm.filter(process::is_alive);
            let phase = match (alive, rec.desired) {
                (Some(_), _) => VmPhase::Running,
                (None, Power::Running) => VmPhase::Restarting,
                (None, Power::Stopped) => VmPhase::Stopped,
            };
            Vm {
                uuid,
                spec: rec.spec,
                phase,
                pid: alive.map(|v| v.pid),
                vmm_socket: dir.join("vmm.sock"),
                serial_log: dir.join("serial.log"),
                restarts: rec.restarts,
                last_exit: rec.last_exit,
                disks: rec.disks,
                nics: rec.nics,
                counters: None,
            }
        })
        .collect()
}

/// The diagnosis as tables for a terminal.
pub fn render(d: &Diagnosis) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "DAEMONS");
    for (name, health) in &d.daemons {
        let _ = writeln!(out, "  {name:<44} {health}");
    }
    if let Some(n) = &d.node {
        let _ = writeln!(
            out,
            "\nNODE {} (triad {}): {} CPUs, {} MiB ({} reserved); VMs take {} vCPUs, {} MiB",
            n.name,
            n.version,
            n.cpus,
            n.memory_mib,
            n.reserved_memory_mib,
            n.allocated_vcpus,
            n.allocated_memory_mib
        );
    }
    let _ = writeln!(out, "\nVMS");
    let _ = writeln!(
        out,
        "  {:<36} {:<16} {:<10} {:>8} {:>4} {:>8}  LAST EXIT",
        "UUID", "NAME", "PHASE", "PID", "GEN", "RESTARTS"
    );
    for vm in &d.vms {
        let _ = writeln!(
            out,
            "  {:<36} {:<16} {:<10} {:>8} {:>4} {:>8}  {}",
            vm.uuid,
            vm.spec.name,
            format!("{:?}", vm.phase).to_lowercase(),
            vm.pid.map_or("-".into(), |p| p.to_string()),
            vm.spec.generation,
            vm.restarts,
            vm.last_exit.as_deref().unwrap_or("-")
        );
    }
    if let Some(net) = &d.net {
        let _ = writeln!(out, "\nTAPS");
        let _ = writeln!(
            out,
            "  {:<48} {:<16} {:<12} {:<18} IP",
            "PORT", "TAP", "NETWORK", "MAC"
        );
        for p in &net.ports {
            let up = net
                .links
                .iter()
                .find(|l| l.name == p.tap)
                .map_or("missing", |l| if l.up { "" } else { " (down)" });
            let _ = writeln!(
                out,
                "  {:<48} {:<16} {:<12} {:<18} {}",
                p.id,
                format!("{}{up}", p.tap),
                p.spec.network,
                p.spec.mac.to_string(),
                p.spec.ip.map_or("-".into(), |ip| ip.to_string())
            );
        }
        let _ = writeln!(out, "\nLEASES");
        for l in &net.leases {
            let _ = writeln!(
                out,
                "  {:<12} {:<48} {} {} (expires {})",
                l.network, l.port, l.mac, l.ip, l.expires_at
            );
        }
    }
    let _ = writeln!(out, "\nVOLUMES");
    let _ = writeln!(
        out,
        "  {:<10} {:<40} {:>12} {:<36} HOLDERS",
        "POOL", "ID", "SIZE", "VM"
    );
    for v in &d.volumes {
        let holders = if v.watchers.is_empty() && v.lock_owners.is_empty() {
            "-".to_owned()
        } else {
            format!("watchers {:?}, lock {:?}", v.watchers, v.lock_owners)
        };
        let _ = writeln!(
            out,
            "  {:<10} {:<40} {:>12} {:<36} {holders}",
            v.pool,
            v.id,
            v.size_bytes,
            v.vm.as_deref().unwrap_or("-")
        );
    }
    if !d.events.is_empty() {
        let _ = writeln!(out, "\nEVENTS");
        for e in &d.events {
            let _ = writeln!(
                out,
                "  {:>6} {:<15} {:<36} {}",
                e.seq,
                format!("{:?}", e.kind),
                e.vm.as_deref().unwrap_or("-"),
                e.message
            );
        }
    }
    out
}
