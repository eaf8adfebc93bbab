//! Polls every node's hostd: its capacity, pools, networks and VMs. A node that does not
//! answer `DISCONNECT_AFTER` polls in a row is Disconnected. The status record is written
//! only when it changes (and its last-seen time every `SEEN_EVERY`).
//!
//! A node holding a VM the store places elsewhere (or does not know) holds an old copy, one
//! HA restarted elsewhere while the node was dead, say: the copy is removed there.
//!
//! Between polls, a watcher per node waits on hostd's event log (`GET /events?wait_ms=`): a
//! VM that exits, restarts or stops on its node wakes the reconcilers at once, so a change is
//! seen as it happens rather than at the next poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{keys, now_ms, NodePool, NodeRecord, NodeStatus, VmRecord};
use crate::{events, Ctl, Observed};
use triad_api::v1::Connection;

const DISCONNECT_AFTER: u32 = 3;
/// How long one wait on a node's event log lasts.
const WATCH: Duration = Duration::from_secs(20);
const SEEN_EVERY: u64 = 10_000;
const TIMEOUT: Duration = Duration::from_secs(2);

/// Polls in a row each node has not answered.
#[derive(Debug, Default)]
pub struct Poller {
    misses: HashMap<String, u32>,
}

impl Poller {
    pub async fn poll(&mut self, ctl: &Arc<Ctl>) -> Result<(), crate::model::DbError> {
        let records = ctl.db.list::<NodeRecord>(keys::NODES).await?;
        for r in &records {
            if ctl.try_busy(&format!("watch/{}", r.value.join.name)) {
                tokio::spawn(watch(ctl.clone(), r.value.clone()));
            }
        }
        let calls = records.iter().map(|r| {
            let client = ctl.hostd_client(&r.value).with_timeout(TIMEOUT);
            let name = r.value.join.name.clone();
            async move {
                let answer = super::blocking(move || Ok((client.node()?, client.vms()?))).await;
                (name, answer)
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        let owners: HashMap<String, Option<String>> = ctl
            .db
            .values::<VmRecord>(keys::VMS)
            .await?
            .into_iter()
            .map(|v| (v.id, v.node))
            .collect();
        for (name, answer) in answers {
            let key = format!("{}{name}", keys::NODE_STATUS);
            let held = ctl.db.get::<NodeStatus>(&key).await?;
            let mut status = held.as_ref().map(|h| h.value.clone()).unwrap_or_default();
            match answer {
                Ok((info, vms)) => {
                    self.misses.remove(&name);
                    for held in &vms {
                        let owner = owners.get(&held.uuid);
                        if owner.is_none_or(|o| o.as_deref() != Some(name.as_str())) {
                            remove_stale(ctl, records_of(&records, &name), held);
                        }
                    }
                    ctl.observed
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(
                            name.clone(),
                            Observed {
                                vms,
                                at: Instant::now(),
                            },
                        );
                    status.connection = Connection::Connected;
                    status.version = Some(info.version);
                    status.cpus = info.cpus;
                    status.memory_mib = info.memory_mib;
                    status.reserved_memory_mib = info.reserved_memory_mib;
                    status.pools = info
                        .pools
                        .iter()
                        .map(|p| NodePool {
                            name: p.name.clone(),
                            kind: p.kind,
                        })
                        .collect();
                    status.networks = info.networks;
                    status.probes = info.probes;
                    status.error = info
                        .storaged_error
                        .map(|e| format!("storaged: {e}"))
                        .or(info.netd_error.map(|e| format!("netd: {e}")));
                    let stale = status
                        .last_seen_unix_ms
                        .is_none_or(|t| now_ms().saturating_sub(t) >= SEEN_EVERY);
                    if stale {
                        status.last_seen_unix_ms = Some(now_ms());
                    }
                }
                Err(e) => {
                    let misses = self.misses.entry(name.clone()).or_default();
                    *misses += 1;
                    if *misses >= DISCONNECT_AFTER {
                        status.connection = Connection::Disconnected;
                        status.error = Some(format!("hostd does not answer: {e}"));
                        ctl.observed
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&name);
                    }
                }
            }
            let before = held.as_ref().map(|h| &h.value);
            if before != Some(&status) {
                if before.map(|b| b.connection) != Some(status.connection) {
                    let message = match &status.error {
                        Some(e) if status.connection != Connection::Connected => e.clone(),
                        _ => "hostd answers".to_owned(),
                    };
                    events::emit(
                        &ctl.db,
                        &format!("node/{name}"),
                        &format!("{:?}", status.connection).to_lowercase(),
                        message,
                    )
                    .await;
                }
                let written = match &held {
                    Some(h) => ctl.db.update(&key, h.revision, &status).await?,
                    None => ctl.db.create(&key, &status).await?,
                };
                if !written {
                    tracing::debug!("node {name}'s status changed under the poll");
                }
            }
        }
        Ok(())
    }
}

fn records_of<'a>(
    records: &'a [crate::model::Versioned<NodeRecord>],
    name: &str,
) -> Option<&'a NodeRecord> {
    records
        .iter()
        .map(|r| &r.value)
        .find(|r| r.join.name == name)
}

/// Removes from `node` a VM the store does not place there: the node must not start or keep
/// a copy it no longer owns. Volumes the VM's ensures did not make are kept.
fn remove_stale(ctl: &Arc<Ctl>, node: Option<&NodeRecord>, held: &triad_api::hostd::Vm) {
    let Some(node) = node.cloned() else {
        return;
    };
    let busy = format!("stale/{}/{}", node.join.name, held.uuid);
    if !ctl.try_busy(&busy) {
        return;
    }
    let (ctl, uuid, generation) = (ctl.clone(), held.uuid.clone(), held.spec.generation);
    tokio::spawn(async move {
        let client = ctl.hostd_client(&node);
        let u = uuid.clone();
        let message = match super::blocking(move || client.remove(&u)).await {
            Ok(()) => format!(
                "node {} held generation {generation}, which it no longer owns: removed there",
                node.join.name
            ),
            Err(e) => format!(
                "node {} holds generation {generation}, which it no longer owns; removing it: {e}",
                node.join.name
            ),
        };
        events::emit(&ctl.db, &format!("vm/{uuid}"), "stale-copy", message).await;
        ctl.done(&busy);
    });
}

/// Wakes the reconcilers whenever node `record` logs an event, until it leaves the cluster.
async fn watch(ctl: Arc<Ctl>, record: NodeRecord) {
    let name = record.join.name.clone();
    let key = format!("{}{name}", keys::NODES);
    let client = ctl.hostd_client(&record).with_timeout(WATCH + TIMEOUT);
    let mut after: Option<u64> = None;
    while matches!(ctl.db.get::<NodeRecord>(&key).await, Ok(Some(_))) {
        let (c, seen) = (client.clone(), after);
        let answer = super::blocking(move || match seen {
            Some(seq) => c.wait_events(seq, WATCH),
            None => c.events(0),
        })
        .await;
        match answer {
            Ok(events) => {
                if let Some(last) = events.last() {
                    if after.is_some() {
                        ctl.wake.notify_one();
                    }
                    after = Some(last.seq);
                } else if after.is_none() {
                    after = Some(0);
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    ctl.done(&format!("watch/{name}"));
}
