//! Puts each EIP on the node its VM runs on, and takes it off every other node (a VM that
//! moved leaves its EIP behind otherwise); a deleted EIP comes off every node, then its
//! address is free.

use std::collections::HashMap;

use triad_api::client::NetdClient;
use triad_api::net::EipSpec;
use triad_api::v1::{Connection, VmState};

use super::blocking;
use crate::model::{keys, DbError, EipRecord, NodeRecord, NodeStatus, VmRecord};
use crate::store::Txn;
use crate::{events, Ctl};

/// What `ctl.sent` holds for an EIP known to be off a node.
const ABSENT: &str = "-";

pub async fn converge(ctl: &Ctl) -> Result<(), DbError> {
    let eips = ctl.db.values::<EipRecord>(keys::EIPS).await?;
    if eips.is_empty() {
        return Ok(());
    }
    let nodes = ctl.db.values::<NodeRecord>(keys::NODES).await?;
    let statuses: HashMap<String, NodeStatus> = ctl.db.keyed_values(keys::NODE_STATUS).await?;
    for eip in eips {
        let what = format!("eip/{}", eip.name);
        let vm = ctl
            .db
            .get::<VmRecord>(&format!("{}{}", keys::VMS, eip.vm))
            .await?
            .map(|v| v.value);
        // Its place: the node its VM runs on, once the VM's port is there.
        let home = vm
            .as_ref()
            .filter(|vm| !eip.deleting && vm.state == VmState::Running)
            .and_then(|vm| vm.node.clone());
        let mut remaining = 0;
        for node in &nodes {
            let name = &node.join.name;
            let connected = statuses
                .get(name)
                .is_some_and(|s| s.connection == Connection::Connected);
            let netd = NetdClient::via_hostd(&ctl.hostd_client(node));
            let id = eip.name.clone();
            if home.as_deref() == Some(name.as_str()) {
                let spec = EipSpec {
                    ip: eip.ip,
                    network: eip.network.clone(),
                    port: format!("{}-{}", eip.vm, eip.nic),
                };
                let json = serde_json::to_string(&spec).unwrap_or_default();
                if !connected || ctl.sent.get(&what, name).as_deref() == Some(json.as_str()) {
                    continue;
                }
                match blocking(move || netd.put_eip(&id, &spec)).await {
                    Ok(_) => {
                        ctl.realize_errors.set(&what, name, None);
                        ctl.sent.set(&what, name, Some(json));
                        events::emit(
                            &ctl.db,
                            &what,
                            "placed",
                            format!("{} on node {name}", eip.ip),
                        )
                        .await;
                    }
                    Err(e) => ctl.realize_errors.set(&what, name, Some(e)),
                }
                continue;
            }
            if ctl.sent.get(&what, name).as_deref() == Some(ABSENT) {
                continue;
            }
            if !connected {
                remaining += 1;
                continue;
            }
            match blocking(move || match netd.delete_eip(&id) {
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            })
            .await
            {
                Ok(()) => ctl.sent.set(&what, name, Some(ABSENT.into())),
                Err(e) => {
                    remaining += 1;
                    ctl.realize_errors.set(&what, name, Some(e));
                }
            }
        }
        if eip.deleting && remaining == 0 {
            let txn = Txn::new()
                .delete(format!("{}{}", keys::EIPS, eip.name))
                .delete(keys::ip(&eip.network, eip.ip));
            ctl.db.txn(txn).await?;
            events::emit(&ctl.db, &what, "deleted", format!("{} is free", eip.ip)).await;
        }
    }
    Ok(())
}
