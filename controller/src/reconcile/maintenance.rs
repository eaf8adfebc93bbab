//! Empties the nodes entering maintenance (`maintenance::plan`): marks their shared-storage
//! VMs to move off (the VM reconciler stops each on the node and unplaces it, the scheduler
//! places it elsewhere), stops their local-storage VMs, and puts a node in Maintenance once
//! nothing runs there.
//!
//! A node that is not connected and alive makes no progress: what it runs cannot be stopped,
//! and a dead node's VMs are HA's.

use triad_api::v1::{Connection, Liveness, NodeEnable, PowerState, VmState};

use crate::maintenance::{plan, Step};
use crate::model::{keys, pool_kinds, DbError, NodeRecord, NodeStatus, VmRecord};
use crate::{events, operations, Ctl};

pub async fn empty(ctl: &Ctl) -> Result<(), DbError> {
    let entering: Vec<NodeRecord> = ctl
        .db
        .values::<NodeRecord>(keys::NODES)
        .await?
        .into_iter()
        .filter(|n| n.entering_maintenance)
        .collect();
    if entering.is_empty() {
        return Ok(());
    }
    let statuses = ctl.db.keyed_values::<NodeStatus>(keys::NODE_STATUS).await?;
    let kinds = pool_kinds(statuses.values());
    let vms = ctl.db.values::<VmRecord>(keys::VMS).await?;
    for record in entering {
        let name = record.join.name.clone();
        let reachable = statuses.get(&name).is_some_and(|s| {
            s.connection == Connection::Connected && s.liveness == Liveness::Alive
        });
        if !reachable {
            continue;
        }
        let todo = plan(&name, &vms, &kinds);
        for (id, step) in todo.steps {
            apply(ctl, &name, &id, step).await?;
        }
        if todo.empty {
            // Read again: a VM may have been started there since.
            let now = ctl.db.values::<VmRecord>(keys::VMS).await?;
            if plan(&name, &now, &kinds).empty {
                finish(ctl, &name).await?;
            }
        }
    }
    Ok(())
}

async fn apply(ctl: &Ctl, node: &str, id: &str, step: Step) -> Result<(), DbError> {
    let key = format!("{}{id}", keys::VMS);
    let mut applied = false;
    let mut superseded = None;
    ctl.db
        .modify::<VmRecord, DbError>(&key, |vm| {
            applied = vm.node.as_deref() == Some(node) && !vm.destroy;
            superseded = None;
            if !applied {
                return Ok(());
            }
            match &step {
                Step::MoveOff => {
                    vm.moving_off = true;
                    if vm.power == PowerState::Running {
                        vm.state = VmState::Migrating;
                    }
                    vm.reason = Some(format!(
                        "moving off node {node}: it is entering maintenance"
                    ));
                }
                Step::Stop(why) => {
                    vm.power = PowerState::Stopped;
                    vm.stop_force = false;
                    vm.state = VmState::Stopping;
                    vm.reason = Some(why.clone());
                    superseded = vm.operation.take();
                }
            }
            Ok(())
        })
        .await?;
    if let Some(op) = superseded.filter(|_| applied) {
        operations::finish(
            &ctl.db,
            &op,
            Some(format!("superseded: node {node} is entering maintenance")),
        )
        .await?;
    }
    if applied {
        let (kind, message) = match step {
            Step::MoveOff => ("moving", format!("off node {node}, entering maintenance")),
            Step::Stop(why) => ("stopping", why),
        };
        events::emit(&ctl.db, &format!("vm/{id}"), kind, message).await;
        ctl.wake.notify_one();
    }
    Ok(())
}

async fn finish(ctl: &Ctl, node: &str) -> Result<(), DbError> {
    let key = format!("{}{node}", keys::NODES);
    let mut entered = false;
    ctl.db
        .modify::<NodeRecord, DbError>(&key, |record| {
            entered = record.entering_maintenance;
            if entered {
                record.entering_maintenance = false;
                record.enable = NodeEnable::Maintenance;
            }
            Ok(())
        })
        .await?;
    if entered {
        events::emit(
            &ctl.db,
            &format!("node/{node}"),
            "maintenance",
            "in maintenance: no VM runs there",
        )
        .await;
    }
    Ok(())
}
