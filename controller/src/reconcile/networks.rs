//! Makes every network and security group on every connected node (through hostd's netd),
//! keeps each node's VXLAN peers current, and drops what is being deleted.
//!
//! A node's networks are in its status (hostd lists them); what was last sent to each node
//! is remembered in memory, so that a changed spec (a node joined: new peers) is sent again.
//! After a controller restart everything is sent once more: netd's puts are idempotent.

use std::collections::HashMap;

use triad_api::client::NetdClient;
use triad_api::net::{NetworkSpec, SecurityGroupSpec, L2};
use triad_api::v1::{Connection, NetworkL2};

use super::blocking;
use crate::api::data_address;
use crate::model::{
    keys, DbError, NetworkRecord, NodeRecord, NodeStatus, SecurityGroupRecord, VmRecord,
};
use crate::{events, Ctl};

/// Records how putting `what` on `node` went; a refusal that is new becomes an event.
async fn note_put(ctl: &Ctl, what: &str, node: &str, put: Result<(), String>, spec: String) {
    match put {
        Ok(()) => {
            ctl.realize_errors.set(what, node, None);
            ctl.sent.set(what, node, Some(spec));
        }
        Err(e) => {
            if ctl.realize_errors.get(what, node).as_deref() != Some(e.as_str()) {
                events::emit(&ctl.db, what, "node_refused", format!("node {node}: {e}")).await;
            }
            ctl.realize_errors.set(what, node, Some(e));
        }
    }
}

/// Whether the security groups of the node are all there, as last sent.
pub fn groups_sent(ctl: &Ctl, node: &str, groups: &[String]) -> bool {
    groups
        .iter()
        .all(|g| ctl.sent.get(&format!("security-group/{g}"), node).is_some())
}

/// Node `node`'s netd spec of `network`: the cluster's spec, with the other nodes as VXLAN peers.
pub fn node_spec(network: &NetworkRecord, node: &NodeRecord, all: &[NodeRecord]) -> NetworkSpec {
    let spec = &network.spec;
    let l2 = match &spec.l2 {
        NetworkL2::Novlan { uplink } => L2::Novlan {
            uplink: uplink.clone(),
        },
        NetworkL2::Vlan { vid, uplink } => L2::Vlan {
            vid: *vid,
            uplink: uplink.clone(),
        },
        NetworkL2::Vxlan { vni, underlay } => {
            let me = data_address(&node.join);
            let mut peers: Vec<_> = all
                .iter()
                .map(|n| data_address(&n.join))
                .filter(|a| *a != me && !a.is_unspecified())
                .collect();
            peers.sort();
            peers.dedup();
            L2::Vxlan {
                vni: *vni,
                underlay: underlay.clone(),
                local: Some(me).filter(|a| !a.is_unspecified()),
                peers,
                port: 4789,
            }
        }
    };
    NetworkSpec {
        name: spec.name.clone(),
        l2,
        mtu: spec.mtu,
        l3: spec.l3.clone(),
    }
}

struct Node {
    record: NodeRecord,
    status: NodeStatus,
}

async fn nodes(ctl: &Ctl) -> Result<Vec<Node>, DbError> {
    let statuses: HashMap<String, NodeStatus> =
        ctl.db.keyed_values::<NodeStatus>(keys::NODE_STATUS).await?;
    Ok(ctl
        .db
        .list::<NodeRecord>(keys::NODES)
        .await?
        .into_iter()
        .map(|r| Node {
            status: statuses
                .get(&r.value.join.name)
                .cloned()
                .unwrap_or_default(),
            record: r.value,
        })
        .collect())
}

pub async fn networks(ctl: &Ctl) -> Result<(), DbError> {
    let nodes = nodes(ctl).await?;
    let records: Vec<NodeRecord> = nodes.iter().map(|n| n.record.clone()).collect();
    for network in ctl.db.list::<NetworkRecord>(keys::NETWORKS).await? {
        let network = network.value;
        let name = network.spec.name.clone();
        let what = format!("network/{name}");
        let mut remaining = 0;
        for node in &nodes {
            let node_name = &node.record.join.name;
            let present = node.status.networks.contains(&name);
            if node.status.connection != Connection::Connected {
                remaining += usize::from(network.deleting && present);
                continue;
            }
            let netd = NetdClient::via_hostd(&ctl.hostd_client(&node.record));
            if network.deleting {
                if present {
                    remaining += 1;
                    let id = name.clone();
                    let result = blocking(move || netd.delete_network(&id)).await;
                    ctl.realize_errors.set(&what, node_name, result.err());
                    ctl.sent.set(&what, node_name, None);
                }
                continue;
            }
            let spec = node_spec(&network, &node.record, &records);
            let json = serde_json::to_string(&spec).unwrap_or_default();
            if present && ctl.sent.get(&what, node_name).as_deref() == Some(json.as_str()) {
                continue;
            }
            let id = name.clone();
            let put = blocking(move || netd.put_network(&id, &spec))
                .await
                .map(drop);
            note_put(ctl, &what, node_name, put, json).await;
        }
        if network.deleting && remaining == 0 {
            ctl.db.delete(&format!("{}{name}", keys::NETWORKS)).await?;
            events::emit(&ctl.db, &what, "deleted", "gone from every node").await;
        }
    }
    Ok(())
}

pub async fn groups(ctl: &Ctl) -> Result<(), DbError> {
    let nodes = nodes(ctl).await?;
    let vms: Vec<VmRecord> = ctl.db.values::<VmRecord>(keys::VMS).await?;
    let groups = ctl
        .db
        .list::<SecurityGroupRecord>(keys::SECURITY_GROUPS)
        .await?;
    for group in groups {
        let group = group.value;
        let name = group.spec.name.clone();
        let what = format!("security-group/{name}");
        let spec = SecurityGroupSpec {
            name: name.clone(),
            rules: group.spec.rules.clone(),
            members: crate::api::group_members(&name, &vms),
        };
        let json = serde_json::to_string(&spec).unwrap_or_default();
        let mut remaining = 0;
        for node in &nodes {
            let node_name = &node.record.join.name;
            if node.status.connection != Connection::Connected {
                remaining += usize::from(group.deleting);
                continue;
            }
            let netd = NetdClient::via_hostd(&ctl.hostd_client(&node.record));
            if group.deleting {
                let id = name.clone();
                match blocking(move || match netd.delete_group(&id) {
                    Err(e) if e.is_not_found() => Ok(()),
                    other => other,
                })
                .await
                {
                    Ok(()) => ctl.sent.set(&what, node_name, None),
                    Err(e) => {
                        remaining += 1;
                        ctl.realize_errors.set(&what, node_name, Some(e));
                    }
                }
                continue;
            }
            if ctl.sent.get(&what, node_name).as_deref() == Some(json.as_str()) {
                continue;
            }
            let (id, spec) = (name.clone(), spec.clone());
            let put = blocking(move || netd.put_group(&id, &spec)).await.map(drop);
            note_put(ctl, &what, node_name, put, json.clone()).await;
        }
        if group.deleting && remaining == 0 {
            ctl.db
                .delete(&format!("{}{name}", keys::SECURITY_GROUPS))
                .await?;
            events::emit(&ctl.db, &what, "deleted", "gone from every node").await;
        }
    }
    Ok(())
}
