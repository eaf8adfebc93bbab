//! Tells each placed VM's node what the VM should be, and reads back what it is.
//!
//! Per VM, by what its node (as last polled) holds:
//! - nothing, or an older generation: ensure the VM at its generation (removing the old one
//!   first when its hardware differs); a refusal (4xx) fails the VM with the node's reason;
//! - the same generation: start or stop it as asked; a VM that stopped by itself (HA level
//!   none) stays stopped and says so;
//! - a destroyed VM: remove it and its root volume, then free its addresses, MACs and volumes.
//!
//! The VM's state follows what its node reports; the operation that asked for a change ends
//! when the VM gets there.

use std::path::PathBuf;
use std::sync::Arc;

use triad_api::client::{HostdClient, StoragedClient};
use triad_api::hostd::{
    DiskSpec, HaLevel, NicSpec, Power, PowerAction, StateRequest, Vm as HostVm, VmPhase, VmSpec,
};
use triad_api::storage::VolumeSource;
use triad_api::v1::{Connection, Liveness, PowerState, VmState};
use triad_api::vmm::BootConfig;

use super::blocking;
use super::networks::groups_sent;
use crate::model::{encode, keys, DbError, NodeStatus, Versioned, VmRecord, VolumeRecord};
use crate::store::{Expect, Txn};
use crate::{events, operations, Ctl};

pub async fn converge(ctl: &Arc<Ctl>) -> Result<(), DbError> {
    for held in ctl.db.list::<VmRecord>(keys::VMS).await? {
        let id = held.value.id.clone();
        if held.value.node.is_none() && !held.value.destroy {
            continue;
        }
        if !ctl.try_busy(&id) {
            continue;
        }
        let ctl = ctl.clone();
        tokio::spawn(async move {
            if let Err(e) = one(&ctl, held).await {
                tracing::warn!("VM {id}: {e}");
            }
            ctl.done(&id);
        });
    }
    Ok(())
}

/// The spec node `vm` is placed on must hold.
pub fn host_spec(vm: &VmRecord) -> VmSpec {
    VmSpec {
        name: vm.request.name.clone(),
        generation: vm.generation,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        boot: BootConfig {
            kernel: PathBuf::from(&vm.kernel),
            initrd: None,
            cmdline: vm.cmdline.clone(),
        },
        disks: vm
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let root = i == 0;
                DiskSpec {
                    id: d.id.clone(),
                    pool: d.pool.clone(),
                    volume: d.volume.clone(),
                    // The root disk is cloned by the first ensure and kept by removes: the
                    // controller deletes it when the VM is destroyed, not when it moves.
                    source: root.then(|| VolumeSource::Image {
                        id: vm.request.image.clone(),
                    }),
                    size_bytes: root.then_some(d.size_bytes),
                    keep: root,
                    read_only: false,
                    cache: Default::default(),
                    qos: None,
                }
            })
            .collect(),
        nics: vm
            .nics
            .iter()
            .map(|n| NicSpec {
                id: n.id.clone(),
                network: n.network.clone(),
                mac: n.mac,
                ip: n.ip,
                security_groups: n.security_groups.clone(),
                qos: None,
            })
            .collect(),
        user_data: vm.request.user_data.clone(),
        ssh_keys: vm.request.ssh_keys.clone(),
        ha: vm.ha,
        power: match vm.power {
            PowerState::Running => Power::Running,
            PowerState::Stopped => Power::Stopped,
        },
    }
}

fn same_hardware(a: &VmSpec, b: &VmSpec) -> bool {
    a.vcpus == b.vcpus
        && a.memory_mib == b.memory_mib
        && a.boot == b.boot
        && a.disks == b.disks
        && a.nics == b.nics
}

/// The state that what the node reports means.
fn state_of(phase: VmPhase, power: PowerState) -> VmState {
    match phase {
        VmPhase::Running => VmState::Running,
        VmPhase::Starting | VmPhase::Restarting => VmState::Starting,
        VmPhase::Stopping => VmState::Stopping,
        VmPhase::Paused => VmState::Paused,
        VmPhase::Stopped => match power {
            PowerState::Stopped => VmState::Stopped,
            PowerState::Running => VmState::Starting,
        },
    }
}

/// Writes `next` over `held` when it differs; ends the VM's operation once it got where it
/// was asked to go. False when the record changed meanwhile.
async fn save(ctl: &Ctl, held: &Versioned<VmRecord>, mut next: VmRecord) -> Result<bool, DbError> {
    // A VM HA restarts elsewhere is Recovering until it runs there; a running VM moving off
    // a node is Migrating until it runs on the next one.
    let moving = held.value.state == VmState::Migrating && next.power == PowerState::Running;
    if (held.value.state == VmState::Recovering || moving)
        && matches!(
            next.state,
            VmState::Starting | VmState::Stopping | VmState::Stopped | VmState::Unknown
        )
    {
        next.state = held.value.state;
    }
    let arrived = matches!(
        (next.power, next.state),
        (PowerState::Running, VmState::Running) | (PowerState::Stopped, VmState::Stopped)
    );
    let failed = next.state == VmState::Failed;
    let finished = if arrived || failed {
        next.operation.take()
    } else {
        None
    };
    if next == held.value {
        return Ok(true);
    }
    let key = format!("{}{}", keys::VMS, next.id);
    let mut txn = Txn::new()
        .expect(&key, Expect::ModRevision(held.revision))
        .put(&key, encode(&next));
    // The operation ends in the same write as the VM gets where it was asked to go.
    if let Some(id) = &finished {
        let op_key = operations::key(id);
        if let Some(op) = ctl.db.get::<triad_api::v1::Operation>(&op_key).await? {
            let mut op_value = op.value;
            operations::end(
                &mut op_value,
                failed.then(|| next.reason.clone().unwrap_or_default()),
            );
            txn = txn
                .expect(&op_key, Expect::ModRevision(op.revision))
                .put(&op_key, encode(&op_value));
        }
    }
    if ctl.db.txn(txn).await?.is_none() {
        return Ok(false);
    }
    if next.state != held.value.state {
        let message = match (&next.node, &next.reason) {
            (_, Some(reason)) => reason.clone(),
            (Some(node), None) => format!("on node {node}"),
            (None, None) => String::new(),
        };
        events::emit(
            &ctl.db,
            &format!("vm/{}", next.id),
            &format!("{:?}", next.state).to_lowercase(),
            message,
        )
        .await;
    }
    Ok(true)
}

async fn one(ctl: &Ctl, held: Versioned<VmRecord>) -> Result<(), DbError> {
    let vm = held.value.clone();
    let Some(node) = vm.node.clone() else {
        // Destroyed before it was placed.
        return release(ctl, &vm).await;
    };
    let status = ctl
        .db
        .get::<NodeStatus>(&format!("{}{node}", keys::NODE_STATUS))
        .await?
        .map(|s| s.value)
        .unwrap_or_default();
    if status.liveness == Liveness::Dead {
        // The HA loop decides what becomes of a dead node's VMs.
        return Ok(());
    }
    let mut next = vm.clone();
    if status.connection != Connection::Connected {
        let why = format!(
            "node {node} is {:?}{}",
            status.connection,
            status
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )
        .to_lowercase();
        if !vm.destroy {
            next.state = VmState::Unknown;
        }
        next.reason = Some(why);
        save(ctl, &held, next).await?;
        return Ok(());
    }
    let Some(record) = ctl
        .db
        .get::<crate::model::NodeRecord>(&format!("{}{node}", keys::NODES))
        .await?
    else {
        next.reason = Some(format!("node {node} has left the cluster"));
        save(ctl, &held, next).await?;
        return Ok(());
    };
    let hostd = ctl.hostd_client(&record.value);
    if vm.destroy {
        let uuid = vm.id.clone();
        let h = hostd.clone();
        if let Err(e) = blocking(move || h.remove(&uuid)).await {
            next.reason = Some(format!("node {node} could not remove it: {e}"));
            save(ctl, &held, next).await?;
            return Ok(());
        }
        let root = vm.disks[0].clone();
        let storaged = StoragedClient::via_hostd(&hostd);
        let deleted = blocking(
            move || match storaged.delete_volume(&root.pool, &root.volume) {
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            },
        )
        .await;
        if let Err(e) = deleted {
            next.reason = Some(format!("deleting its root volume: {e}"));
            save(ctl, &held, next).await?;
            return Ok(());
        }
        return release(ctl, &vm).await;
    }
    if vm.moving_off {
        match stopped_there(&hostd, &vm, &node).await {
            Ok(true) => leave(&mut next, &node),
            Ok(false) => {}
            Err(e) => next.reason = Some(e),
        }
        save(ctl, &held, next).await?;
        return Ok(());
    }
    let observed: Option<HostVm> = ctl
        .observed
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&node)
        .and_then(|o| o.vms.iter().find(|h| h.uuid == vm.id).cloned());
    let spec = host_spec(&vm);
    match observed {
        Some(held_there) if held_there.spec.generation > vm.generation => {
            next.reason = Some(format!(
                "node {node} holds generation {}, newer than the controller's {}",
                held_there.spec.generation, vm.generation
            ));
        }
        Some(there) if there.spec.generation == vm.generation => {
            let request = |action, timeout_ms| StateRequest { action, timeout_ms };
            let uuid = vm.id.clone();
            let act = match (vm.power, there.phase) {
                // hostd holds a NeverStop VM stopped when it was fenced, or when its VMM
                // ended while hostd was down: this node still owns it, so it runs again.
                (PowerState::Running, VmPhase::Stopped) if vm.ha == HaLevel::NeverStop => {
                    Some(request(PowerAction::Start, None))
                }
                (PowerState::Running, VmPhase::Stopped)
                    if vm.state == VmState::Running
                        || (vm.state == VmState::Unknown && vm.operation.is_none()) =>
                {
                    // It stopped by itself, or with its node while out of sight after it had
                    // run as asked (no start is pending): a VM without HA stays stopped.
                    next.power = PowerState::Stopped;
                    next.state = VmState::Stopped;
                    next.reason = Some(format!(
                        "it stopped by itself ({})",
                        there.last_exit.clone().unwrap_or_else(|| "exited".into())
                    ));
                    None
                }
                (PowerState::Running, VmPhase::Stopped) => Some(request(PowerAction::Start, None)),
                (
                    PowerState::Stopped,
                    VmPhase::Running | VmPhase::Starting | VmPhase::Restarting | VmPhase::Paused,
                ) => Some(request(
                    PowerAction::Stop,
                    Some(if vm.stop_force { 0 } else { 10_000 }),
                )),
                _ => {
                    next.state = state_of(there.phase, vm.power);
                    next.reason = None;
                    None
                }
            };
            if let Some(req) = act {
                let h = hostd.clone();
                match blocking(move || h.set_state(&uuid, &req)).await {
                    Ok(now) => {
                        next.state = state_of(now.phase, vm.power);
                        next.reason = None;
                    }
                    Err(e) => next.reason = Some(format!("node {node}: {e}")),
                }
            }
        }
        older => {
            if let Some(n) = vm
                .nics
                .iter()
                .find(|n| !status.networks.contains(&n.network))
            {
                next.reason = Some(format!("waiting for network {} on node {node}", n.network));
                save(ctl, &held, next).await?;
                return Ok(());
            }
            let groups: Vec<String> = vm
                .nics
                .iter()
                .flat_map(|n| n.security_groups.clone())
                .collect();
            if !groups_sent(ctl, &node, &groups) {
                next.reason = Some(format!("waiting for its security groups on node {node}"));
                save(ctl, &held, next).await?;
                return Ok(());
            }
            if let Some(old) = older.filter(|o| !same_hardware(&o.spec, &spec)) {
                let (h, uuid) = (hostd.clone(), vm.id.clone());
                if let Err(e) = blocking(move || h.remove(&uuid)).await {
                    next.reason = Some(format!(
                        "node {node} could not remove generation {}: {e}",
                        old.spec.generation
                    ));
                    save(ctl, &held, next).await?;
                    return Ok(());
                }
            }
            let (h, uuid) = (hostd.clone(), vm.id.clone());
            let answer = tokio::task::spawn_blocking(move || h.ensure(&uuid, &spec)).await;
            match answer {
                Ok(Ok(made)) => {
                    next.state = state_of(made.phase, vm.power);
                    next.reason = None;
                }
                Ok(Err(e)) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                    next.state = VmState::Failed;
                    next.reason = Some(format!(
                        "node {node} refused it: {}",
                        triad_api::error::chain(&e)
                    ));
                }
                Ok(Err(e)) => {
                    next.reason = Some(format!("node {node}: {}", triad_api::error::chain(&e)))
                }
                Err(e) => next.reason = Some(format!("the ensure's task failed: {e}")),
            }
        }
    }
    save(ctl, &held, next).await?;
    Ok(())
}

/// Stops the VM on `node` for it to move off, asking hostd itself (the last poll may be
/// stale): true once nothing of it runs there. A copy of another generation is removed.
async fn stopped_there(hostd: &HostdClient, vm: &VmRecord, node: &str) -> Result<bool, String> {
    let (h, uuid) = (hostd.clone(), vm.id.clone());
    let there = blocking(move || h.vm(&uuid))
        .await
        .map_err(|e| format!("asking node {node} for it: {e}"))?;
    let (h, uuid) = (hostd.clone(), vm.id.clone());
    match there {
        None => Ok(true),
        Some(t) if t.spec.generation != vm.generation => {
            blocking(move || h.remove(&uuid)).await.map_err(|e| {
                format!(
                    "node {node} could not remove generation {}: {e}",
                    t.spec.generation
                )
            })?;
            Ok(true)
        }
        Some(t) if t.phase == VmPhase::Stopped => Ok(true),
        Some(_) => {
            let stop = StateRequest {
                action: PowerAction::Stop,
                timeout_ms: Some(10_000),
            };
            let now = blocking(move || h.set_state(&uuid, &stop))
                .await
                .map_err(|e| format!("stopping it on node {node}: {e}"))?;
            Ok(now.phase == VmPhase::Stopped)
        }
    }
}

/// The VM, stopped on `node`, leaves it for the scheduler to place elsewhere; a running VM
/// is Migrating until it runs there.
fn leave(next: &mut VmRecord, node: &str) {
    next.node = None;
    next.moving_off = false;
    next.state = match next.power {
        PowerState::Running => VmState::Migrating,
        PowerState::Stopped => VmState::Stopped,
    };
    next.reason = Some(format!("moved off node {node}"));
}

/// Frees a destroyed VM's addresses, MACs, volumes and records, in one transaction.
pub(super) async fn release(ctl: &Ctl, vm: &VmRecord) -> Result<(), DbError> {
    loop {
        let key = format!("{}{}", keys::VMS, vm.id);
        let Some(current) = ctl.db.get::<VmRecord>(&key).await? else {
            return Ok(());
        };
        let mut txn = Txn::new()
            .expect(&key, Expect::ModRevision(current.revision))
            .delete(&key)
            .delete(format!("{}{}", keys::PLACEMENTS, vm.id));
        for nic in &current.value.nics {
            if let Some(ip) = nic.ip {
                txn = txn.delete(keys::ip(&nic.network, ip));
            }
            txn = txn.delete(format!("{}{}", keys::MACS, nic.mac));
        }
        for name in &current.value.request.volumes {
            let vkey = format!("{}{name}", keys::VOLUMES);
            if let Some(v) = ctl.db.get::<VolumeRecord>(&vkey).await? {
                if v.value.vm.as_deref() == Some(vm.id.as_str()) {
                    let mut free = v.value.clone();
                    free.vm = None;
                    txn = txn
                        .expect(&vkey, Expect::ModRevision(v.revision))
                        .put(&vkey, encode(&free));
                }
            }
        }
        if ctl.db.txn(txn).await?.is_some() {
            if let Some(op) = &current.value.operation {
                operations::finish(&ctl.db, op, None).await?;
            }
            events::emit(
                &ctl.db,
                &format!("vm/{}", vm.id),
                "destroyed",
                format!("{} and what it held are gone", vm.request.name),
            )
            .await;
            return Ok(());
        }
    }
}
