//! What HA does with each VM of a dead node. Pure: the VM, the cluster's HA settings and
//! whether its node is proven fenced in, one decision out.
//!
//! - A NeverStop VM meant to run, with every disk on shared storage, is recovered (placed
//!   again with a new generation, so that the old copy loses) once its node is proven
//!   fenced: a Ceph blocklist, a stopped storage heartbeat, or under `Force` the majority's
//!   vote plus the self-fencer's deadline. Without a proof it stays Unknown, and says why.
//! - A VM with a disk on a node-local pool cannot run elsewhere: it is Stopped, and starts
//!   again when its node returns (NeverStop) or stays down (HA level none).
//! - A VM with HA level none stays down.
//! - With HA off or disarmed, nothing moves: the VMs stay Unknown.

use triad_api::hostd::HaLevel;
use triad_api::v1::PowerState;

/// What HA needs to know of a VM on a dead node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFacts {
    pub ha: HaLevel,
    pub power: PowerState,
    /// Every disk is on a pool all nodes share (smp or Ceph).
    pub shared: bool,
    /// Asked to be destroyed.
    pub destroy: bool,
}

/// Whether the dead node is proven unable to write to the VM's disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// How it was proven.
    Proven(String),
    /// Why it is not (yet).
    Missing(String),
}

/// The cluster's HA switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    pub enabled: bool,
    pub disarmed: bool,
}

/// What to do with the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Unknown → Recovering: placed again, on another node, with a new generation.
    Recover(String),
    /// Its state is Unknown, for this reason.
    Unknown(String),
    /// Its state is Stopped; `power_off` also makes it stay stopped when its node returns.
    Stop { why: String, power_off: bool },
    /// A destroyed VM whose node is proven fenced: its records and addresses go.
    Release,
}

/// Policy Force: the node is taken as fenced once its self-fencer's `deadline` has passed
/// since anybody last heard it (`quiet` ago; `None`: never heard).
pub fn force_proof(quiet: Option<std::time::Duration>, deadline: std::time::Duration) -> Proof {
    match quiet {
        Some(q) if q < deadline => Proof::Missing(format!(
            "its self-fencer's deadline is {} ms after anybody last heard it, {} ms ago",
            deadline.as_millis(),
            q.as_millis()
        )),
        _ => Proof::Proven(format!(
            "the majority's vote (policy Force; its self-fencer had {} ms to act)",
            deadline.as_millis()
        )),
    }
}

/// An smp pool: the node's storage heartbeat on `pool` has stood still for `still` (`None`:
/// not read yet), which proves it fenced past `deadline`.
pub fn smp_proof(
    pool: &str,
    still: Option<std::time::Duration>,
    deadline: std::time::Duration,
) -> Proof {
    match still {
        Some(q) if q >= deadline => Proof::Proven(format!(
            "its storage heartbeat on {pool} has stood still for {} ms",
            q.as_millis()
        )),
        Some(q) => Proof::Missing(format!(
            "its storage heartbeat on {pool} has stood still for {} of the {} ms that prove it \
             fenced",
            q.as_millis(),
            deadline.as_millis()
        )),
        None => Proof::Missing(format!(
            "no storage heartbeat of it on {pool} has been read yet"
        )),
    }
}

pub fn decide(vm: &VmFacts, node: &str, switches: Switches, proof: &Proof) -> Decision {
    let proven = match proof {
        Proof::Proven(how) => Some(how),
        Proof::Missing(_) => None,
    };
    if vm.destroy {
        return match proven {
            Some(_) => Decision::Release,
            None => Decision::Unknown(format!(
                "node {node} is dead; it is removed once the node is proven fenced or returns"
            )),
        };
    }
    if vm.power == PowerState::Stopped {
        return Decision::Stop {
            why: format!("node {node} is dead; it was stopped"),
            power_off: true,
        };
    }
    if !switches.enabled {
        return Decision::Unknown(format!(
            "node {node} is dead and HA is off (ha_enabled=false): it waits for the node"
        ));
    }
    if switches.disarmed {
        return Decision::Unknown(format!(
            "node {node} is dead and HA is disarmed: it waits for the node"
        ));
    }
    if vm.ha == HaLevel::None {
        return match proven {
            Some(_) => Decision::Stop {
                why: format!("node {node} is dead; HA level none: it stays down"),
                power_off: true,
            },
            None => Decision::Unknown(format!("node {node} is dead; HA level none")),
        };
    }
    if !vm.shared {
        return Decision::Stop {
            why: format!(
                "node {node} is dead and a disk is on its local pool: it starts again when \
                 the node returns"
            ),
            power_off: false,
        };
    }
    match proof {
        Proof::Proven(how) => Decision::Recover(format!("node {node} is dead and {how}")),
        Proof::Missing(why) => Decision::Unknown(format!(
            "node {node} is dead but not proven fenced ({why}): it is not restarted elsewhere"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: Switches = Switches {
        enabled: true,
        disarmed: false,
    };

    fn vm(ha: HaLevel, shared: bool) -> VmFacts {
        VmFacts {
            ha,
            power: PowerState::Running,
            shared,
            destroy: false,
        }
    }

    fn proven() -> Proof {
        Proof::Proven("its storage heartbeat stopped".into())
    }

    #[test]
    fn a_never_stop_vm_on_shared_storage_moves_only_with_a_proof() {
        let v = vm(HaLevel::NeverStop, true);
        assert!(
            matches!(decide(&v, "n3", ON, &proven()), Decision::Recover(w) if w.contains("heartbeat"))
        );
        let missing = Proof::Missing("its storage heartbeat still advances".into());
        assert!(
            matches!(decide(&v, "n3", ON, &missing), Decision::Unknown(w) if w.contains("still advances"))
        );
    }

    #[test]
    fn local_disks_none_level_and_switches_keep_a_vm_where_it_is() {
        let local = decide(&vm(HaLevel::NeverStop, false), "n3", ON, &proven());
        assert!(matches!(
            local,
            Decision::Stop {
                power_off: false,
                ..
            }
        ));
        let none = decide(&vm(HaLevel::None, true), "n3", ON, &proven());
        assert!(matches!(
            none,
            Decision::Stop {
                power_off: true,
                ..
            }
        ));
        let off = Switches {
            enabled: false,
            disarmed: false,
        };
        assert!(
            matches!(decide(&vm(HaLevel::NeverStop, true), "n3", off, &proven()), Decision::Unknown(w) if w.contains("ha_enabled"))
        );
        let disarmed = Switches {
            enabled: true,
            disarmed: true,
        };
        assert!(
            matches!(decide(&vm(HaLevel::NeverStop, true), "n3", disarmed, &proven()), Decision::Unknown(w) if w.contains("disarmed"))
        );
    }

    #[test]
    fn a_destroyed_vm_is_released_only_when_its_node_is_fenced() {
        let mut v = vm(HaLevel::None, false);
        v.destroy = true;
        assert_eq!(decide(&v, "n3", ON, &proven()), Decision::Release);
        assert!(matches!(
            decide(&v, "n3", ON, &Proof::Missing("no".into())),
            Decision::Unknown(_)
        ));
    }
}
