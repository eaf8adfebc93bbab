//! Places pending VMs (and the VMs HA is recovering or maintenance moves), oldest first: each
//! placement takes the node's room and counts for the affinity of the VMs placed after it in
//! the same pass. A VM that fits nowhere stays Pending with the reason per node (and an event
//! when the reason changes); one that maintenance moved off its node is stopped instead.

use std::collections::BTreeSet;

use triad_api::v1::{Liveness, PlacementReport, PowerState, VmState};

use crate::api::current_settings;
use crate::model::{keys, now_ms, AffinityGroupRecord, DbError, VmRecord};
use crate::scheduler::{place, GroupView, NodeView, Request};
use crate::{events, operations, Ctl};

pub async fn pending(ctl: &Ctl) -> Result<(), DbError> {
    let vms = ctl.db.list::<VmRecord>(keys::VMS).await?;
    let mut pending: Vec<_> = vms
        .iter()
        .filter(|v| {
            matches!(
                v.value.state,
                VmState::Pending | VmState::Recovering | VmState::Migrating
            ) && v.value.node.is_none()
                && !v.value.destroy
        })
        .cloned()
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    pending.sort_by_key(|v| (v.value.created_unix_ms, v.value.id.clone()));
    let settings = current_settings(ctl).await?;
    let mut views: Vec<NodeView> = ctl.nodes().await?.iter().map(NodeView::from).collect();
    let groups = ctl
        .db
        .list::<AffinityGroupRecord>(keys::AFFINITY_GROUPS)
        .await?;
    // Where each VM in some group is: (its groups, its node). A VM on a dead node runs
    // nowhere: it holds no other VM to its node or away from it.
    let dead: BTreeSet<&str> = views
        .iter()
        .filter(|n| n.liveness == Liveness::Dead)
        .map(|n| n.name.as_str())
        .collect();
    let mut placed: Vec<(Vec<String>, String)> = vms
        .iter()
        .filter(|v| !v.value.destroy)
        .filter(|v| v.value.node.as_deref().is_none_or(|n| !dead.contains(n)))
        .filter_map(|v| {
            Some((
                v.value.request.affinity_groups.clone(),
                v.value.node.clone()?,
            ))
        })
        .collect();
    for held in pending {
        let vm = &held.value;
        let request = Request {
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            pools: vm
                .disks
                .iter()
                .map(|d| d.pool.clone())
                .collect::<BTreeSet<_>>(),
            networks: vm.nics.iter().map(|n| n.network.clone()).collect(),
            groups: vm
                .request
                .affinity_groups
                .iter()
                .filter_map(|name| {
                    let g = groups.iter().find(|g| g.value.spec.name == *name)?;
                    Some(GroupView {
                        name: name.clone(),
                        rule: g.value.spec.rule.clone(),
                        strength: g.value.spec.strength,
                        member_nodes: placed
                            .iter()
                            .filter(|(gs, _)| gs.contains(name))
                            .map(|(_, node)| node.clone())
                            .collect(),
                    })
                })
                .collect(),
        };
        let decision = place(&request, &views, &settings);
        let report = PlacementReport {
            vm: vm.id.clone(),
            chosen: decision.chosen.map(|i| views[i].name.clone()),
            nodes: decision.report(&views, &request),
            unix_ms: now_ms(),
        };
        ctl.db
            .put(&format!("{}{}", keys::PLACEMENTS, vm.id), &report)
            .await?;
        let key = format!("{}{}", keys::VMS, vm.id);
        let mut next = vm.clone();
        match decision.chosen {
            Some(i) => {
                let node = views[i].name.clone();
                next.node = Some(node.clone());
                next.generation += 1;
                next.reason = None;
                next.state = match vm.power {
                    _ if matches!(vm.state, VmState::Recovering | VmState::Migrating) => vm.state,
                    PowerState::Running => VmState::Starting,
                    PowerState::Stopped => VmState::Stopping,
                };
                if ctl.db.update(&key, held.revision, &next).await? {
                    views[i].allocated_vcpus += vm.vcpus;
                    views[i].allocated_memory_mib += vm.memory_mib;
                    placed.push((vm.request.affinity_groups.clone(), node.clone()));
                    events::emit(
                        &ctl.db,
                        &format!("vm/{}", vm.id),
                        "placed",
                        format!("on node {node} (generation {})", next.generation),
                    )
                    .await;
                }
            }
            None if vm.state == VmState::Migrating => {
                // It left its node for maintenance and no other takes it: it stays stopped
                // until an operator starts it.
                next.power = PowerState::Stopped;
                next.state = VmState::Stopped;
                let why = format!(
                    "no other node can take it ({})",
                    decision.why_pending(&views, &request)
                );
                next.reason = Some(why.clone());
                let asked = next.operation.take();
                if ctl.db.update(&key, held.revision, &next).await? {
                    if let Some(op) = asked {
                        operations::finish(&ctl.db, &op, Some(why)).await?;
                    }
                    events::emit(
                        &ctl.db,
                        &format!("vm/{}", vm.id),
                        "stopped",
                        next.reason.clone().unwrap_or_default(),
                    )
                    .await;
                }
            }
            None => {
                let why = decision.why_pending(&views, &request);
                if vm.reason.as_deref() != Some(why.as_str()) {
                    next.reason = Some(why.clone());
                    if ctl.db.update(&key, held.revision, &next).await? {
                        events::emit(&ctl.db, &format!("vm/{}", vm.id), "pending", why).await;
                    }
                }
            }
        }
    }
    Ok(())
}
