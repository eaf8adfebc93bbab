//! Imports images: through one connected node for a shared pool, through every connected
//! node that has it for a local pool; follows storaged's progress into the image's record
//! and ends its operation.

use triad_api::client::StoragedClient;
use triad_api::storage::{ImageRequest, ImageState as PoolImageState};
use triad_api::v1::{Connection, ImageState};

use super::blocking;
use crate::model::{encode, keys, DbError, ImageRecord, NodeRecord, NodeStatus};
use crate::store::{Expect, Txn};
use crate::{events, operations, Ctl};
use triad_api::v1::Operation;

pub async fn import(ctl: &Ctl) -> Result<(), DbError> {
    let importing: Vec<_> = ctl
        .db
        .list::<ImageRecord>(keys::IMAGES)
        .await?
        .into_iter()
        .filter(|i| i.value.state == ImageState::Importing)
        .collect();
    if importing.is_empty() {
        return Ok(());
    }
    let nodes = ctl.db.list::<NodeRecord>(keys::NODES).await?;
    let statuses = ctl.db.list_keyed::<NodeStatus>(keys::NODE_STATUS).await?;
    for held in importing {
        let mut image = held.value.clone();
        let pool = image.spec.pool.clone();
        let with_pool: Vec<(&NodeRecord, bool)> = nodes
            .iter()
            .filter_map(|n| {
                let status = &statuses
                    .iter()
                    .find(|(name, _)| *name == n.value.join.name)?
                    .1
                    .value;
                let kind = status.pools.iter().find(|p| p.name == pool)?.kind;
                let shared = kind != triad_api::storage::PoolKind::Local;
                (status.connection == Connection::Connected).then_some((&n.value, shared))
            })
            .collect();
        let shared = with_pool.first().is_some_and(|(_, s)| *s);
        if image.nodes.is_empty() {
            image.nodes = if shared {
                with_pool
                    .iter()
                    .take(1)
                    .map(|(n, _)| n.join.name.clone())
                    .collect()
            } else {
                with_pool.iter().map(|(n, _)| n.join.name.clone()).collect()
            };
        }
        let (mut ready, mut done, mut total, mut size, mut failed) = (0, 0, Some(0u64), 0, None);
        for node_name in &image.nodes {
            let Some((node, _)) = with_pool.iter().find(|(n, _)| n.join.name == *node_name) else {
                continue;
            };
            let storaged = StoragedClient::via_hostd(&ctl.hostd_client(node));
            let request = ImageRequest {
                id: image.spec.name.clone(),
                name: image.spec.name.clone(),
                source: image.spec.source.clone(),
                sha256: image.spec.sha256.clone(),
            };
            let pool = pool.clone();
            let answer = blocking(move || match storaged.image(&pool, &request.id)? {
                Some(i) => Ok(i),
                None => storaged.import_image(&pool, &request),
            })
            .await;
            match answer {
                Ok(i) => {
                    done += i.done_bytes;
                    total = total.zip(i.total_bytes).map(|(a, b)| a + b);
                    size = size.max(i.size_bytes);
                    match i.state {
                        PoolImageState::Ready => ready += 1,
                        PoolImageState::Failed => {
                            failed =
                                Some(format!("node {node_name}: {}", i.error.unwrap_or_default()))
                        }
                        PoolImageState::Importing => {}
                    }
                }
                Err(e) => tracing::warn!("image {}: node {node_name}: {e}", image.spec.name),
            }
        }
        image.done_bytes = done;
        image.total_bytes = total;
        image.size_bytes = size;
        if let Some(error) = failed {
            image.state = ImageState::Failed;
            image.error = Some(error);
        } else if !image.nodes.is_empty() && ready == image.nodes.len() {
            image.state = ImageState::Ready;
        }
        if image != held.value {
            let key = format!("{}{}", keys::IMAGES, image.spec.name);
            let mut txn = Txn::new()
                .expect(&key, Expect::ModRevision(held.revision))
                .put(&key, encode(&image));
            let ended = image.state != ImageState::Importing;
            if ended {
                // The operation ends in the same write as the image.
                let op_key = operations::key(&image.operation);
                if let Some(op) = ctl.db.get::<Operation>(&op_key).await? {
                    let mut value = op.value;
                    operations::end(&mut value, image.error.clone());
                    txn = txn
                        .expect(&op_key, Expect::ModRevision(op.revision))
                        .put(&op_key, encode(&value));
                }
            }
            if ctl.db.txn(txn).await?.is_some() && ended {
                let (kind, message) = match &image.error {
                    Some(e) => ("import_failed", e.clone()),
                    None => (
                        "ready",
                        format!("{} bytes in pool {}", image.size_bytes, image.spec.pool),
                    ),
                };
                events::emit(
                    &ctl.db,
                    &format!("image/{}", image.spec.name),
                    kind,
                    message,
                )
                .await;
            }
        }
    }
    Ok(())
}
