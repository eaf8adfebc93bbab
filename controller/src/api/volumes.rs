//! Data volumes on shared pools: made, grown, snapshotted and rolled back through a node's
//! storaged; attached to and detached from stopped VMs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use triad_api::client::StoragedClient;
use triad_api::hostd::MAX_DISKS;
use triad_api::storage::{VolumeRequest, VolumeSource};
use triad_api::v1::{
    PowerState, SnapshotCreate, VmDisk, VmState, Volume, VolumeAttach, VolumeCreate, VolumeGrow,
};
use triad_api::ErrorBody;

use super::cluster::pool_list;
use super::{body, ApiError, ApiResult};
use crate::model::{encode, keys, VmRecord, VolumeRecord};
use crate::store::{Expect, Txn};
use crate::{events, validate, Ctl};

pub fn routes() -> Router<Arc<Ctl>> {
    Router::new()
        .route("/v1/volumes", get(list).post(create))
        .route("/v1/volumes/{name}", get(show).delete(remove))
        .route("/v1/volumes/{name}/attach", post(attach))
        .route("/v1/volumes/{name}/detach", post(detach))
        .route("/v1/volumes/{name}/grow", post(grow))
        .route("/v1/volumes/{name}/snapshots", post(snapshot))
        .route(
            "/v1/volumes/{name}/snapshots/{snapshot}/rollback",
            post(rollback),
        )
}

fn view(record: &VolumeRecord) -> Volume {
    Volume {
        name: record.spec.name.clone(),
        pool: record.spec.pool.clone(),
        size_bytes: record.spec.size_bytes,
        volume: record.volume.clone(),
        vm: record.vm.clone(),
    }
}

/// storaged of a connected node that has `pool`.
async fn storaged_for(ctl: &Ctl, pool: &str) -> ApiResult<StoragedClient> {
    let pools = pool_list(ctl).await?;
    let pool_info = pools
        .iter()
        .find(|p| p.name == pool)
        .ok_or_else(|| ApiError::unprocessable("pool", format!("no node has a pool {pool:?}")))?;
    for node in &pool_info.nodes {
        if ctl.connected(node).await? {
            return Ok(StoragedClient::via_hostd(&ctl.hostd(node).await?));
        }
    }
    Err(ApiError::Unavailable(format!(
        "no node with pool {pool:?} is connected"
    )))
}

async fn blocking<T: Send + 'static>(
    what: &str,
    call: impl FnOnce() -> Result<T, triad_api::http::ClientError> + Send + 'static,
) -> ApiResult<T> {
    let what = what.to_owned();
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map_err(|e| match e.status() {
            Some(s) if (400..500).contains(&s) => {
                ApiError::unprocessable("body", format!("{what}: {}", triad_api::error::chain(&e)))
            }
            _ => ApiError::Unavailable(format!("{what}: {}", triad_api::error::chain(&e))),
        })
}

async fn record(ctl: &Ctl, name: &str) -> ApiResult<crate::model::Versioned<VolumeRecord>> {
    ctl.db
        .get::<VolumeRecord>(&format!("{}{name}", keys::VOLUMES))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no volume {name:?}")))
}

#[utoipa::path(get, path = "/v1/volumes", tag = "storage",
    responses((status = 200, body = [Volume]), (status = 401, body = ErrorBody)))]
async fn list(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<Volume>>> {
    Ok(Json(
        ctl.db
            .list::<VolumeRecord>(keys::VOLUMES)
            .await?
            .iter()
            .map(|v| view(&v.value))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/volumes/{name}", tag = "storage", params(("name" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = ErrorBody)))]
async fn show(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<Json<Volume>> {
    Ok(Json(view(&record(&ctl, &name).await?.value)))
}

#[utoipa::path(post, path = "/v1/volumes", tag = "storage", request_body = VolumeCreate,
    responses((status = 201, body = Volume), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    State(ctl): State<Arc<Ctl>>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    let spec: VolumeCreate = body(&bytes)?;
    validate::name("name", &spec.name)?;
    validate::range("size_bytes", spec.size_bytes, 1 << 20, 1 << 50)?;
    let pools = pool_list(&ctl).await?;
    match pools.iter().find(|p| p.name == spec.pool) {
        None => {
            return Err(ApiError::unprocessable(
                "pool",
                format!("no node has a pool {:?}", spec.pool),
            ))
        }
        Some(p) if !p.shared => {
            return Err(ApiError::unprocessable(
                "pool",
                format!(
                    "pool {:?} is a node's own ({}): data volumes live on shared pools",
                    p.name, p.kind
                ),
            ))
        }
        Some(_) => {}
    }
    let key = format!("{}{}", keys::VOLUMES, spec.name);
    if ctl.db.get::<VolumeRecord>(&key).await?.is_some() {
        return Err(ApiError::conflict(
            Some("name"),
            format!("volume {:?} exists", spec.name),
        ));
    }
    let record = VolumeRecord {
        volume: format!("vol-{}", spec.name),
        spec,
        vm: None,
    };
    let storaged = storaged_for(&ctl, &record.spec.pool).await?;
    let request = VolumeRequest {
        id: record.volume.clone(),
        name: record.volume.clone(),
        size_bytes: record.spec.size_bytes,
        source: VolumeSource::Blank,
        qos: None,
    };
    let pool = record.spec.pool.clone();
    blocking("making the volume", move || {
        storaged.create_volume(&pool, &request)
    })
    .await?;
    if !ctl.db.create(&key, &record).await? {
        return Err(ApiError::conflict(
            Some("name"),
            format!("volume {:?} exists", record.spec.name),
        ));
    }
    events::emit(
        &ctl.db,
        &format!("volume/{}", record.spec.name),
        "created",
        format!("{} bytes in {}", record.spec.size_bytes, record.spec.pool),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view(&record))))
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "storage", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let held = record(&ctl, &name).await?;
    if let Some(vm) = &held.value.vm {
        return Err(ApiError::conflict(
            None,
            format!("volume {name:?} is attached to VM {vm}"),
        ));
    }
    let storaged = storaged_for(&ctl, &held.value.spec.pool).await?;
    let (pool, id) = (held.value.spec.pool.clone(), held.value.volume.clone());
    blocking("deleting the volume", move || {
        match storaged.delete_volume(&pool, &id) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    })
    .await?;
    let key = format!("{}{name}", keys::VOLUMES);
    let txn = Txn::new()
        .expect(&key, Expect::ModRevision(held.revision))
        .delete(&key);
    let deleted = ctl.db.txn(txn).await?;
    if deleted.is_none() {
        return Err(ApiError::conflict(
            None,
            format!("volume {name:?} changed meanwhile; try again"),
        ));
    }
    events::emit(&ctl.db, &format!("volume/{name}"), "deleted", "").await;
    Ok(StatusCode::NO_CONTENT)
}

/// The VM a volume change needs stopped, read with its revision.
async fn stopped_vm(ctl: &Ctl, id: &str) -> ApiResult<crate::model::Versioned<VmRecord>> {
    let vm = ctl
        .db
        .get::<VmRecord>(&format!("{}{id}", keys::VMS))
        .await?
        .ok_or_else(|| ApiError::unprocessable("vm", format!("no VM {id:?}")))?;
    if vm.value.destroy {
        return Err(ApiError::conflict(
            Some("vm"),
            format!("VM {id} is being destroyed"),
        ));
    }
    if vm.value.power != PowerState::Stopped || vm.value.state != VmState::Stopped {
        return Err(ApiError::conflict(
            Some("vm"),
            format!("VM {id} is {:?}: stop it first", vm.value.state),
        ));
    }
    Ok(vm)
}

/// Attaches (or detaches) in one transaction: the volume's owner and the VM's disks, with a
/// new generation so that its node makes the VM again with the new disks.
#[utoipa::path(post, path = "/v1/volumes/{name}/attach", tag = "storage", params(("name" = String, Path)),
    request_body = VolumeAttach,
    responses((status = 200, body = Volume), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn attach(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<Volume>> {
    let req: VolumeAttach = body(&bytes)?;
    let held = record(&ctl, &name).await?;
    if let Some(vm) = &held.value.vm {
        return Err(ApiError::conflict(
            None,
            format!("volume {name:?} is attached to VM {vm}"),
        ));
    }
    let mut vm = stopped_vm(&ctl, &req.vm).await?;
    if vm.value.disks.len() >= MAX_DISKS {
        return Err(ApiError::conflict(
            Some("vm"),
            format!("VM {} has {MAX_DISKS} disks, the most a VM has", req.vm),
        ));
    }
    vm.value.disks.push(VmDisk {
        id: name.clone(),
        pool: held.value.spec.pool.clone(),
        volume: held.value.volume.clone(),
        size_bytes: held.value.spec.size_bytes,
    });
    vm.value.request.volumes.push(name.clone());
    vm.value.generation += 1;
    let mut volume = held.value.clone();
    volume.vm = Some(req.vm.clone());
    commit(&ctl, &name, held.revision, &volume, &vm).await?;
    events::emit(
        &ctl.db,
        &format!("vm/{}", req.vm),
        "volume_attached",
        format!("volume {name}"),
    )
    .await;
    Ok(Json(view(&volume)))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/detach", tag = "storage", params(("name" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn detach(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<Json<Volume>> {
    let held = record(&ctl, &name).await?;
    let Some(vm_id) = held.value.vm.clone() else {
        return Err(ApiError::conflict(
            None,
            format!("volume {name:?} is not attached"),
        ));
    };
    let mut vm = stopped_vm(&ctl, &vm_id).await?;
    vm.value.disks.retain(|d| d.id != name);
    vm.value.request.volumes.retain(|v| *v != name);
    vm.value.generation += 1;
    let mut volume = held.value.clone();
    volume.vm = None;
    commit(&ctl, &name, held.revision, &volume, &vm).await?;
    events::emit(
        &ctl.db,
        &format!("vm/{vm_id}"),
        "volume_detached",
        format!("volume {name}"),
    )
    .await;
    Ok(Json(view(&volume)))
}

async fn commit(
    ctl: &Ctl,
    name: &str,
    revision: i64,
    volume: &VolumeRecord,
    vm: &crate::model::Versioned<VmRecord>,
) -> ApiResult<()> {
    let (vkey, mkey) = (
        format!("{}{name}", keys::VOLUMES),
        format!("{}{}", keys::VMS, vm.value.id),
    );
    let txn = Txn::new()
        .expect(&vkey, Expect::ModRevision(revision))
        .expect(&mkey, Expect::ModRevision(vm.revision))
        .put(&vkey, encode(volume))
        .put(&mkey, encode(&vm.value));
    if ctl.db.txn(txn).await?.is_none() {
        return Err(ApiError::conflict(
            None,
            "the volume or the VM changed meanwhile; try again",
        ));
    }
    ctl.wake.notify_one();
    Ok(())
}

/// Grows a volume that no running VM has open.
#[utoipa::path(post, path = "/v1/volumes/{name}/grow", tag = "storage", params(("name" = String, Path)),
    request_body = VolumeGrow,
    responses((status = 200, body = Volume), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn grow(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<Volume>> {
    let req: VolumeGrow = body(&bytes)?;
    let held = record(&ctl, &name).await?;
    if req.size_bytes <= held.value.spec.size_bytes {
        return Err(ApiError::unprocessable(
            "size_bytes",
            format!(
                "{} is not more than the volume's {}",
                req.size_bytes, held.value.spec.size_bytes
            ),
        ));
    }
    validate::range("size_bytes", req.size_bytes, 1 << 20, 1 << 50)?;
    if let Some(vm) = &held.value.vm {
        stopped_vm(&ctl, vm).await?;
    }
    let storaged = storaged_for(&ctl, &held.value.spec.pool).await?;
    let (pool, id, size) = (
        held.value.spec.pool.clone(),
        held.value.volume.clone(),
        req.size_bytes,
    );
    blocking("growing the volume", move || {
        storaged.grow_volume(&pool, &id, size)
    })
    .await?;
    let changed = ctl
        .db
        .modify::<VolumeRecord, ApiError>(&format!("{}{name}", keys::VOLUMES), |v| {
            v.spec.size_bytes = size;
            Ok(())
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no volume {name:?}")))?;
    events::emit(
        &ctl.db,
        &format!("volume/{name}"),
        "grown",
        format!("to {size} bytes"),
    )
    .await;
    Ok(Json(view(&changed)))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/snapshots", tag = "storage", params(("name" = String, Path)),
    request_body = SnapshotCreate,
    responses((status = 201, body = SnapshotCreate), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn snapshot(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<SnapshotCreate>)> {
    let req: SnapshotCreate = body(&bytes)?;
    validate::name("name", &req.name)?;
    let held = record(&ctl, &name).await?;
    let storaged = storaged_for(&ctl, &held.value.spec.pool).await?;
    let (pool, id, snap) = (
        held.value.spec.pool.clone(),
        held.value.volume.clone(),
        req.name.clone(),
    );
    blocking("taking the snapshot", move || {
        storaged.snapshot(&pool, &id, &snap)
    })
    .await?;
    events::emit(
        &ctl.db,
        &format!("volume/{name}"),
        "snapshot",
        format!("snapshot {}", req.name),
    )
    .await;
    Ok((StatusCode::CREATED, Json(req)))
}

/// Rolls a volume back to a snapshot; its VM must be stopped.
#[utoipa::path(post, path = "/v1/volumes/{name}/snapshots/{snapshot}/rollback", tag = "storage",
    params(("name" = String, Path), ("snapshot" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn rollback(
    State(ctl): State<Arc<Ctl>>,
    Path((name, snapshot)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let held = record(&ctl, &name).await?;
    if let Some(vm) = &held.value.vm {
        stopped_vm(&ctl, vm).await?;
    }
    let storaged = storaged_for(&ctl, &held.value.spec.pool).await?;
    let (pool, id, snap) = (
        held.value.spec.pool.clone(),
        held.value.volume.clone(),
        snapshot.clone(),
    );
    blocking("rolling back", move || storaged.rollback(&pool, &id, &snap)).await?;
    events::emit(
        &ctl.db,
        &format!("volume/{name}"),
        "rolled_back",
        format!("to snapshot {snapshot}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
