//! The liveness loop: every `poll_ms`, tells each node the cluster it heartbeats in, asks it
//! which peers it hears, lets the failure detector decide, reads the smp pools' storage
//! heartbeats, and acts on the VMs of dead nodes (`ha::decide`).
//!
//! It runs apart from the other reconcilers, on a shorter period and with short timeouts, so
//! that a node that does not answer delays nothing: a failover is over in seconds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use triad_api::client::StoragedClient;
use triad_api::hostd::{ClusterNode, ClusterSpec, FenceMode, HaLevel, PeerView};
use triad_api::storage::{BlocklistRequest, PoolKind};
use triad_api::v1::{HaPolicy, Liveness, PowerState, Settings, VmState};

use super::blocking;
use crate::api::current_settings;
use crate::ha::{decide, force_proof, smp_proof, Decision, Proof, Switches, VmFacts};
use crate::model::{keys, pool_kinds, DbError, NodeRecord, NodeStatus, VmRecord};
use crate::{events, Ctl};

/// Runs for ever; acts while this controller leads.
pub async fn run(ctl: Arc<Ctl>) {
    let period = Duration::from_millis(ctl.ha.poll_ms);
    let mut pushed: HashMap<String, ClusterSpec> = HashMap::new();
    // The cluster key never changes once made: read from the store once.
    let mut key = None;
    loop {
        if ctl.is_leader() {
            if key.is_none() {
                match cluster_key(&ctl).await {
                    Ok(k) => key = Some(k),
                    Err(e) => tracing::warn!("reading the cluster key: {e}"),
                }
            }
            let passed = match &key {
                Some(k) => pass(&ctl, &mut pushed, k).await,
                None => Ok(()),
            };
            if let Err(e) = passed {
                tracing::warn!("a liveness pass stopped: {e}");
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn pass(
    ctl: &Arc<Ctl>,
    pushed: &mut HashMap<String, ClusterSpec>,
    key: &str,
) -> Result<(), DbError> {
    let records = ctl.db.values::<NodeRecord>(keys::NODES).await?;
    let statuses: HashMap<String, NodeStatus> =
        ctl.db.keyed_values::<NodeStatus>(keys::NODE_STATUS).await?;
    let settings = current_settings(ctl).await?;
    let spec = cluster_spec(ctl, key, &records, &statuses, &settings);
    pushed.retain(|name, _| records.iter().any(|r| r.join.name == *name));
    let timeout = Duration::from_millis(ctl.ha.poll_ms.max(100) * 3 / 2);
    let calls = records.iter().map(|r| {
        let client = ctl.hostd_client(r).with_timeout(timeout);
        let name = r.join.name.clone();
        let push = (pushed.get(&name) != Some(&spec)).then(|| spec.clone());
        async move {
            let answer = blocking(move || {
                if let Some(spec) = &push {
                    client.set_cluster(spec)?;
                }
                Ok((client.peers()?, push))
            })
            .await;
            (name, Instant::now(), answer)
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let names: Vec<String> = records.iter().map(|r| r.join.name.clone()).collect();
    let changes = {
        let mut detector = ctl.detector.lock().unwrap_or_else(|e| e.into_inner());
        let known: BTreeSet<String> = names.iter().cloned().collect();
        detector.set_nodes(&names);
        for name in &known {
            if let Some(s) = statuses.get(name) {
                if s.liveness != Liveness::Alive && detector.liveness(name) == Liveness::Alive {
                    detector.restore(name, s.liveness);
                }
            }
        }
        for (name, at, answer) in &answers {
            let view: Option<&PeerView> = answer.as_ref().ok().map(|(v, _)| v);
            detector.observe(*at, name, view);
        }
        detector.tick(Instant::now())
    };
    for (name, _, answer) in answers {
        if let Ok((_, Some(spec))) = answer {
            pushed.insert(name, spec);
        }
    }
    for change in &changes {
        let key = format!("{}{}", keys::NODE_STATUS, change.node);
        let liveness = change.liveness;
        let written = ctl
            .db
            .modify::<NodeStatus, DbError>(&key, |s| {
                s.liveness = liveness;
                Ok(())
            })
            .await?;
        if written.is_none() {
            let status = NodeStatus {
                liveness,
                ..Default::default()
            };
            ctl.db.create(&key, &status).await?;
        }
        events::emit(
            &ctl.db,
            &format!("node/{}", change.node),
            &format!("{:?}", change.liveness).to_lowercase(),
            change.why.clone(),
        )
        .await;
        ctl.wake.notify_one();
    }
    let dead: Vec<String> = names
        .iter()
        .filter(|n| {
            ctl.detector
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .liveness(n)
                == Liveness::Dead
        })
        .cloned()
        .collect();
    read_storage_beats(ctl, &records, &statuses).await;
    if !dead.is_empty() {
        recover(ctl, &records, &statuses, &settings, &dead).await?;
    }
    Ok(())
}

/// The cluster every node is told: its key, each node's probe addresses, the timers and the
/// fence mode the settings give.
/// The heartbeats' key, made at the first start (the first controller to write it wins).
async fn cluster_key(ctl: &Ctl) -> Result<String, DbError> {
    if let Some(k) = ctl.db.get::<String>(keys::CLUSTER_KEY).await? {
        return Ok(k.value);
    }
    let made = crate::auth::new_secret().map_err(|e| {
        DbError::Store(crate::store::StoreError::Invalid(format!(
            "making the cluster key: {e}"
        )))
    })?;
    ctl.db.create(keys::CLUSTER_KEY, &made).await?;
    Ok(match ctl.db.get::<String>(keys::CLUSTER_KEY).await? {
        Some(k) => k.value,
        None => made,
    })
}

fn cluster_spec(
    ctl: &Ctl,
    key: &str,
    records: &[NodeRecord],
    statuses: &HashMap<String, NodeStatus>,
    settings: &Settings,
) -> ClusterSpec {
    let fence = match (
        settings.ha_enabled && !settings.ha_disarmed,
        settings.ha_policy,
    ) {
        (false, _) => FenceMode::Off,
        (true, HaPolicy::Permissive) => FenceMode::Permissive,
        (true, HaPolicy::Force) => FenceMode::Force,
    };
    ClusterSpec {
        key: key.to_owned(),
        nodes: records
            .iter()
            .map(|r| ClusterNode {
                name: r.join.name.clone(),
                probes: statuses
                    .get(&r.join.name)
                    .map(|s| s.probes.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        timers: ctl.ha.heartbeat,
        fence,
    }
}

/// The smp pools' storage heartbeats, read on a live node every pass: notes since when each
/// node's beat has stood still, by this controller's clock. Read always, not only once a node
/// is suspect, so that "since" is within a pass of the node's last write: a proof that began
/// at the first read after suspicion would add up to the time suspicion took.
async fn read_storage_beats(
    ctl: &Ctl,
    records: &[NodeRecord],
    statuses: &HashMap<String, NodeStatus>,
) {
    let alive = |name: &str| {
        ctl.detector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .liveness(name)
            == Liveness::Alive
    };
    let pools: BTreeSet<String> = statuses
        .values()
        .flat_map(|s| s.pools.iter())
        .filter(|p| p.kind == PoolKind::Smp)
        .map(|p| p.name.clone())
        .collect();
    for pool in pools {
        let Some(reader) = records.iter().find(|r| {
            alive(&r.join.name)
                && statuses
                    .get(&r.join.name)
                    .is_some_and(|s| s.pools.iter().any(|p| p.name == pool))
        }) else {
            continue;
        };
        let storaged = StoragedClient::via_hostd(&ctl.hostd_client(reader))
            .with_timeout(Duration::from_millis(ctl.ha.poll_ms.max(100) * 3 / 2));
        let p = pool.clone();
        let Ok(beats) = blocking(move || storaged.heartbeats(&p)).await else {
            continue;
        };
        let now = Instant::now();
        let mut seen = ctl.storage_beats.lock().unwrap_or_else(|e| e.into_inner());
        for b in beats {
            let entry = seen
                .entry((pool.clone(), b.node.clone()))
                .or_insert((b.beat, now));
            if entry.0 != b.beat {
                *entry = (b.beat, now);
            }
        }
    }
}

/// Whether dead node `node` is proven unable to write to the VM's disks.
async fn proof(
    ctl: &Ctl,
    node: &str,
    vm: &VmRecord,
    kinds: &BTreeMap<String, PoolKind>,
    settings: &Settings,
    records: &[NodeRecord],
) -> Proof {
    let deadline = ctl.ha.fence_deadline();
    if settings.ha_policy == HaPolicy::Force {
        let heard = ctl
            .detector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_heard(node);
        return force_proof(heard.map(|h| h.elapsed()), deadline);
    }
    let pools: BTreeSet<&String> = vm.disks.iter().map(|d| &d.pool).collect();
    let mut how = Vec::new();
    for pool in pools {
        match kinds.get(pool) {
            Some(PoolKind::Smp) => {
                let still = ctl
                    .storage_beats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(pool.clone(), node.to_owned()))
                    .map(|(_, since)| since.elapsed());
                match smp_proof(pool, still, deadline) {
                    Proof::Proven(h) => how.push(h),
                    missing => return missing,
                }
            }
            Some(PoolKind::Ceph) => match blocklist(ctl, node, vm, pool, records).await {
                Ok(n) => how.push(format!("its {n} Ceph clients of {pool} are blocklisted")),
                Err(e) => return Proof::Missing(format!("blocklisting it on {pool}: {e}")),
            },
            Some(PoolKind::Local) | None => {}
        }
    }
    Proof::Proven(how.join(", "))
}

/// Blocklists every Ceph client that watches or locks the VM's volumes on `pool` (the dead
/// node's: nobody else runs the VM), through a live node's storaged.
async fn blocklist(
    ctl: &Ctl,
    node: &str,
    vm: &VmRecord,
    pool: &str,
    records: &[NodeRecord],
) -> Result<usize, String> {
    let reader = records
        .iter()
        .find(|r| {
            r.join.name != node
                && ctl
                    .detector
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .liveness(&r.join.name)
                    == Liveness::Alive
        })
        .ok_or("no live node to reach the Ceph cluster from")?;
    let storaged = StoragedClient::via_hostd(&ctl.hostd_client(reader));
    let volumes: Vec<String> = vm
        .disks
        .iter()
        .filter(|d| d.pool == pool)
        .map(|d| d.volume.clone())
        .collect();
    let pool = pool.to_owned();
    blocking(move || {
        let mut addrs = BTreeSet::new();
        for v in &volumes {
            let clients = storaged.volume_clients(&pool, v)?;
            addrs.extend(clients.watchers.into_iter().map(|w| w.addr));
            addrs.extend(clients.lock_owners);
        }
        for addr in &addrs {
            storaged.blocklist(
                &pool,
                &BlocklistRequest {
                    addr: addr.clone(),
                    expire_seconds: None,
                },
            )?;
        }
        Ok(addrs.len())
    })
    .await
}

/// Acts on every VM of the dead nodes.
async fn recover(
    ctl: &Ctl,
    records: &[NodeRecord],
    statuses: &HashMap<String, NodeStatus>,
    settings: &Settings,
    dead: &[String],
) -> Result<(), DbError> {
    let kinds = pool_kinds(statuses.values());
    let switches = Switches {
        enabled: settings.ha_enabled,
        disarmed: settings.ha_disarmed,
    };
    for held in ctl.db.list::<VmRecord>(keys::VMS).await? {
        let vm = &held.value;
        let Some(node) = vm.node.as_deref().filter(|n| dead.iter().any(|d| d == n)) else {
            continue;
        };
        if vm.power == PowerState::Stopped && vm.state == VmState::Stopped && !vm.destroy {
            // Down already, and said why.
            continue;
        }
        let facts = VmFacts {
            ha: vm.ha,
            power: vm.power,
            shared: vm.on_shared_storage(&kinds),
            destroy: vm.destroy,
        };
        // A running NeverStop VM with a local disk is stopped whatever the proof says.
        let wants_proof = facts.destroy
            || (switches.enabled
                && !switches.disarmed
                && facts.power == PowerState::Running
                && (facts.shared || facts.ha == HaLevel::None));
        let proof = if wants_proof {
            proof(ctl, node, vm, &kinds, settings, records).await
        } else {
            Proof::Missing("not needed".into())
        };
        let mut next = vm.clone();
        match decide(&facts, node, switches, &proof) {
            Decision::Release => {
                super::vms::release(ctl, vm).await?;
                continue;
            }
            Decision::Recover(why) => {
                next.node = None;
                next.moving_off = false;
                next.state = VmState::Recovering;
                next.reason = Some(why);
            }
            Decision::Unknown(why) => {
                next.state = VmState::Unknown;
                next.reason = Some(why);
            }
            Decision::Stop { why, power_off } => {
                next.state = VmState::Stopped;
                next.reason = Some(why);
                if power_off {
                    next.power = PowerState::Stopped;
                }
            }
        }
        if next == *vm {
            continue;
        }
        let key = format!("{}{}", keys::VMS, vm.id);
        if ctl.db.update(&key, held.revision, &next).await? && next.state != vm.state {
            events::emit(
                &ctl.db,
                &format!("vm/{}", vm.id),
                &format!("{:?}", next.state).to_lowercase(),
                next.reason.clone().unwrap_or_default(),
            )
            .await;
            ctl.wake.notify_one();
        }
    }
    Ok(())
}
