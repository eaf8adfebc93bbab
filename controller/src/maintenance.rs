//! Emptying a node for maintenance, as a pure plan: what becomes of each VM on the node, and
//! whether the node is empty enough to be in maintenance.
//!
//! A VM whose disks are all on shared storage moves off: it stops on the node, then leaves it
//! to be placed again elsewhere (a running one starts there; one that no node can take is
//! stopped, and says so). A VM with a disk on the node's local storage cannot leave: a running
//! one is stopped and stays on the node. The node is in maintenance once no VM there runs or
//! is still on its way off.

use std::collections::BTreeMap;

use triad_api::storage::PoolKind;
use triad_api::v1::{PowerState, VmState};

use crate::model::VmRecord;

/// What to do with one VM of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop it on the node, then place it elsewhere.
    MoveOff,
    /// Power it off for good (until an operator starts it), and say why.
    Stop(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (VM id, what to do with it).
    pub steps: Vec<(String, Step)>,
    /// No VM on the node runs or is on its way off: the node may be in maintenance.
    pub empty: bool,
}

/// The plan for node `node`, from the VMs in the store and each pool's kind.
pub fn plan(node: &str, vms: &[VmRecord], kinds: &BTreeMap<String, PoolKind>) -> Plan {
    let mut plan = Plan {
        steps: Vec::new(),
        empty: true,
    };
    for vm in vms
        .iter()
        .filter(|vm| vm.node.as_deref() == Some(node) && !vm.destroy)
    {
        if vm.on_shared_storage(kinds) {
            plan.empty = false;
            if !vm.moving_off {
                plan.steps.push((vm.id.clone(), Step::MoveOff));
            }
        } else if vm.power == PowerState::Running {
            plan.empty = false;
            plan.steps.push((
                vm.id.clone(),
                Step::Stop(format!(
                    "node {node} is entering maintenance and the VM's disks are on its local storage"
                )),
            ));
        } else if !matches!(vm.state, VmState::Stopped | VmState::Failed) {
            // Asked to stop, not stopped yet.
            plan.empty = false;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_api::hostd::HaLevel;
    use triad_api::v1::{VmCreate, VmDisk};

    fn vm(id: &str, node: &str, pool: &str, power: PowerState, state: VmState) -> VmRecord {
        VmRecord {
            id: id.into(),
            request: serde_json::from_value::<VmCreate>(
                serde_json::json!({"name": id, "image": "guest"}),
            )
            .unwrap(),
            vcpus: 1,
            memory_mib: 64,
            kernel: "k".into(),
            cmdline: String::new(),
            disks: vec![VmDisk {
                id: "root".into(),
                pool: pool.into(),
                volume: format!("vm-{id}"),
                size_bytes: 1 << 20,
            }],
            nics: Vec::new(),
            ha: HaLevel::NeverStop,
            power,
            no_restart: false,
            stop_force: false,
            destroy: false,
            state,
            node: Some(node.into()),
            moving_off: false,
            generation: 1,
            reason: None,
            operation: None,
            created_unix_ms: 0,
        }
    }

    fn kinds() -> BTreeMap<String, PoolKind> {
        [
            ("shared".to_owned(), PoolKind::Smp),
            ("rbd".to_owned(), PoolKind::Ceph),
            ("local".to_owned(), PoolKind::Local),
        ]
        .into()
    }

    #[test]
    fn shared_vms_move_off_and_local_running_ones_stop() {
        let vms = [
            vm("s", "a", "shared", PowerState::Running, VmState::Running),
            vm("c", "a", "rbd", PowerState::Stopped, VmState::Stopped),
            vm("l", "a", "local", PowerState::Running, VmState::Running),
            vm("quiet", "a", "local", PowerState::Stopped, VmState::Stopped),
            vm(
                "other",
                "b",
                "shared",
                PowerState::Running,
                VmState::Running,
            ),
        ];
        let plan = plan("a", &vms, &kinds());
        assert!(!plan.empty);
        assert_eq!(plan.steps.len(), 3);
        assert_eq!(plan.steps[0], ("s".into(), Step::MoveOff));
        assert_eq!(plan.steps[1], ("c".into(), Step::MoveOff));
        assert_eq!(plan.steps[2].0, "l");
        assert!(matches!(&plan.steps[2].1, Step::Stop(why) if why.contains("local storage")));
    }

    #[test]
    fn a_vm_on_its_way_off_is_not_asked_twice_and_keeps_the_node_busy() {
        let mut moving = vm("s", "a", "shared", PowerState::Running, VmState::Migrating);
        moving.moving_off = true;
        let plan = plan("a", &[moving], &kinds());
        assert!(plan.steps.is_empty());
        assert!(!plan.empty);
    }

    #[test]
    fn the_node_is_empty_when_only_stopped_local_vms_remain() {
        let stopping = vm("l", "a", "local", PowerState::Stopped, VmState::Stopping);
        assert!(!plan("a", std::slice::from_ref(&stopping), &kinds()).empty);
        let mut stopped = stopping.clone();
        stopped.state = VmState::Stopped;
        let mut destroyed = vm("d", "a", "shared", PowerState::Running, VmState::Running);
        destroyed.destroy = true;
        let plan = plan("a", &[stopped, destroyed], &kinds());
        assert!(plan.steps.is_empty());
        assert!(plan.empty);
    }

    #[test]
    fn a_disk_on_a_pool_no_node_reports_counts_as_local() {
        let vm = vm("u", "a", "gone", PowerState::Running, VmState::Running);
        let plan = plan("a", &[vm], &kinds());
        assert!(matches!(plan.steps[0].1, Step::Stop(_)));
    }
}
