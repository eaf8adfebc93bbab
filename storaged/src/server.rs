//! The HTTP/JSON API on a Unix socket:
//!
//! | request | does |
//! | --- | --- |
//! | `GET /pools` | every pool with its space |
//! | `GET /pools/{pool}/volumes` | the pool's volumes |
//! | `POST /pools/{pool}/volumes` | create a volume (idempotent by id) |
//! | `GET /pools/{pool}/volumes/{id}` | one volume |
//! | `DELETE /pools/{pool}/volumes/{id}` | delete it (idempotent) |
//! | `POST /pools/{pool}/volumes/{id}/grow` | grow it |
//! | `GET /pools/{pool}/volumes/{id}/snapshots` | its snapshots |
//! | `POST /pools/{pool}/volumes/{id}/snapshots` | take one (idempotent by name) |
//! | `DELETE /pools/{pool}/volumes/{id}/snapshots/{name}` | delete one (idempotent) |
//! | `POST /pools/{pool}/volumes/{id}/snapshots/{name}/rollback` | roll the volume back |
//! | `GET /pools/{pool}/volumes/{id}/clients` | who has it open (Ceph pools) |
//! | `GET /pools/{pool}/images` | images, with imports under way or failed |
//! | `POST /pools/{pool}/images` | import one, in the background (idempotent by id) |
//! | `GET /pools/{pool}/images/{id}` | one image, or its import's progress |
//! | `DELETE /pools/{pool}/images/{id}` | delete it (idempotent) |
//! | `POST /pools/{pool}/blocklist` | fence a Ceph client (Ceph pools) |
//! | `GET /pools/{pool}/heartbeats` | every node's storage heartbeat (shared-mount pools) |
//! | `GET /events?after=SEQ` | what happened since event SEQ |
//!
//! Errors are `{"error": "..."}` with 400 (a bad request), 404, 409 (a conflict with what
//! exists or a volume in use), 422 (an import that cannot be done), 503 (the Ceph cluster
//! does not answer), 507 (the pool is full) or 500.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use triad_api::server::{body, not_found, ApiError};
use triad_api::storage::{
    BlocklistRequest, GrowRequest, Heartbeat, Image, ImageRequest, PoolInfo, PoolKind, Snapshot,
    SnapshotRequest, Volume, VolumeClients, VolumeRequest,
};

use crate::events::Events;
use crate::images::Imports;
use crate::{Pool, StorageError};

/// The pools a daemon serves, by name.
pub type Pools = BTreeMap<String, (PoolKind, Arc<dyn Pool>)>;

/// What the daemon serves: its pools, and the imports under way.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub pools: Arc<Pools>,
    pub imports: Arc<Imports>,
    pub events: Arc<Events>,
}

pub fn router(daemon: Daemon) -> Router {
    Router::new()
        .route("/pools", get(list_pools))
        .route("/pools/{pool}/volumes", get(list_volumes).post(create))
        .route("/pools/{pool}/volumes/{id}", get(get_volume).delete(delete))
        .route("/pools/{pool}/volumes/{id}/grow", post(grow))
        .route(
            "/pools/{pool}/volumes/{id}/snapshots",
            get(snapshots).post(snapshot),
        )
        .route(
            "/pools/{pool}/volumes/{id}/snapshots/{name}",
            axum::routing::delete(delete_snapshot),
        )
        .route(
            "/pools/{pool}/volumes/{id}/snapshots/{name}/rollback",
            post(rollback),
        )
        .route("/pools/{pool}/volumes/{id}/clients", get(clients))
        .route("/pools/{pool}/images", get(list_images).post(import))
        .route(
            "/pools/{pool}/images/{id}",
            get(get_image).delete(delete_image),
        )
        .route("/pools/{pool}/blocklist", post(blocklist))
        .route("/pools/{pool}/heartbeats", get(heartbeats))
        .route("/events", get(events))
        .fallback(not_found)
        .with_state(daemon)
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let status = match &e {
            StorageError::NotFound(_)
            | StorageError::ImageNotFound(_)
            | StorageError::SnapshotNotFound { .. } => StatusCode::NOT_FOUND,
            StorageError::Conflict { .. }
            | StorageError::NameTaken { .. }
            | StorageError::InUse(_)
            | StorageError::Busy(_) => StatusCode::CONFLICT,
            StorageError::Shrink { .. }
            | StorageError::Invalid { .. }
            | StorageError::Unsupported(_) => StatusCode::BAD_REQUEST,
            StorageError::Import(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StorageError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StorageError::Ceph(c) => match c.errno {
                libc::ENOENT => StatusCode::NOT_FOUND,
                libc::EEXIST | libc::EBUSY | libc::EROFS => StatusCode::CONFLICT,
                libc::ENOSPC | libc::EDQUOT => StatusCode::INSUFFICIENT_STORAGE,
                libc::ETIMEDOUT | libc::ENOTCONN | libc::ECONNREFUSED | libc::ESHUTDOWN => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            StorageError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        Self(status, e.to_string())
    }
}

fn pool(daemon: &Daemon, name: &str) -> Result<Arc<dyn Pool>, ApiError> {
    daemon
        .pools
        .get(name)
        .map(|(_, pool)| pool.clone())
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("pool {name} not found")))
}

/// Runs a pool operation (file system work) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn list_pools(State(daemon): State<Daemon>) -> Result<Json<Vec<PoolInfo>>, ApiError> {
    let pools = daemon.pools.clone();
    let infos = blocking(move || {
        let infos = pools
            .iter()
            .map(|(name, (kind, pool))| {
                // One pool out of reach (a Ceph cluster down) does not hide the others.
                let (usage, error) = match pool.usage() {
                    Ok(usage) => (Some(usage), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                PoolInfo {
                    name: name.clone(),
                    kind: *kind,
                    usage,
                    error,
                }
            })
            .collect::<Vec<_>>();
        Ok(infos)
    })
    .await?;
    Ok(Json(infos))
}

async fn list_volumes(
    State(pools): State<Daemon>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Volume>>, ApiError> {
    let pool = pool(&pools, &name)?;
    Ok(Json(blocking(move || pool.list()).await?))
}

async fn create(
    State(pools): State<Daemon>,
    Path(name): Path<String>,
    json: Bytes,
) -> Result<Json<Volume>, ApiError> {
    let pool = pool(&pools, &name)?;
    let req: VolumeRequest = body(&json)?;
    Ok(Json(blocking(move || pool.create(&req)).await?))
}

async fn get_volume(
    State(pools): State<Daemon>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Volume>, ApiError> {
    let pool = pool(&pools, &name)?;
    Ok(Json(blocking(move || pool.get(&id)).await?))
}

async fn delete(
    State(pools): State<Daemon>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let pool = pool(&pools, &name)?;
    blocking(move || pool.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn grow(
    State(pools): State<Daemon>,
    Path((name, id)): Path<(String, String)>,
    json: Bytes,
) -> Result<Json<Volume>, ApiError> {
    let pool = pool(&pools, &name)?;
    let req: GrowRequest = body(&json)?;
    Ok(Json(
        blocking(move || pool.grow(&id, req.size_bytes)).await?,
    ))
}

async fn heartbeats(
    State(pools): State<Daemon>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Heartbeat>>, ApiError> {
    let pool = pool(&pools, &name)?;
    Ok(Json(blocking(move || pool.heartbeats()).await?))
}

async fn snapshots(
    State(pools): State<Daemon>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Vec<Snapshot>>, ApiError> {
    let pool = pool(&pools, &name)?;
    Ok(Json(blocking(move || pool.snapshots(&id)).await?))
}

async fn snapshot(
    State(pools): State<Daemon>,
    Path((name, id)): Path<(String, String)>,
    json: Bytes,
) -> Result<Json<Snapshot>, ApiError> {
    let pool = pool(&pools, &name)?;
    let req: SnapshotRequest = body(&json)?;
    Ok(Json(blocking(move || pool.snapshot(&id, &req.name)).await?))
}

async fn delete_snapshot(
    State(pools): State<Daemon>,
    Path((name, id, snap)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let pool = pool(&pools, &name)?;
    blocking(move || pool.delete_snapshot(&id, &snap)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rollback(
    State(pools): State<Daemon>,
    Path((name, id, snap)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let pool = pool(&pools, &name)?;
    blocking(move || pool.rollback(&id, &snap)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clients(
    State(pools): State<Daemon>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<VolumeClients>, ApiError> {
    let pool = pool(&pools, &name)?;
    Ok(Json(blocking(move || pool.clients(&id)).await?))
}

async fn blocklist(
    State(daemon): State<Daemon>,
    Path(name): Path<String>,
    json: Bytes,
) -> Result<StatusCode, ApiError> {
    let pool = pool(&daemon, &name)?;
    let req: BlocklistRequest = body(&json)?;
    let addr = req.addr.clone();
    blocking(move || pool.blocklist(&req)).await?;
    daemon.events.push(
        triad_api::storage::EventKind::ClientBlocklisted,
        &name,
        format!("Ceph client {addr} blocklisted"),
    );
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
}

async fn events(
    State(daemon): State<Daemon>,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<triad_api::storage::Event>>, ApiError> {
    let query = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(Json(daemon.events.after(query.after)))
}

async fn list_images(
    State(daemon): State<Daemon>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Image>>, ApiError> {
    let pool = pool(&daemon, &name)?;
    let imports = daemon.imports.clone();
    Ok(Json(blocking(move || imports.list(pool.as_ref())).await?))
}

/// 202 while the import runs, 200 for an image already whole.
async fn import(
    State(daemon): State<Daemon>,
    Path(name): Path<String>,
    json: Bytes,
) -> Result<(StatusCode, Json<Image>), ApiError> {
    let pool = pool(&daemon, &name)?;
    let req: ImageRequest = body(&json)?;
    let imports = daemon.imports.clone();
    let image = blocking(move || imports.start(pool, req)).await?;
    let status = match image.state {
        triad_api::storage::ImageState::Ready => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    Ok((status, Json(image)))
}

async fn get_image(
    State(daemon): State<Daemon>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Image>, ApiError> {
    let pool = pool(&daemon, &name)?;
    let imports = daemon.imports.clone();
    Ok(Json(
        blocking(move || imports.get(pool.as_ref(), &id)).await?,
    ))
}

async fn delete_image(
    State(daemon): State<Daemon>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let pool = pool(&daemon, &name)?;
    let imports = daemon.imports.clone();
    blocking(move || imports.delete(pool.as_ref(), &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
