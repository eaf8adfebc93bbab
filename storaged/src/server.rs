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
//! | `GET /pools/{pool}/heartbeats` | every node's storage heartbeat (shared-mount pools) |
//!
//! Errors are `{"error": "..."}` with 400 (a bad request), 404, 409 (a conflict with what
//! exists) or 500.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use triad_api::storage::{GrowRequest, Heartbeat, PoolInfo, PoolKind, Volume, VolumeRequest};
use triad_api::ErrorBody;

use crate::{Pool, StorageError};

/// The pools a daemon serves, by name.
pub type Pools = Arc<BTreeMap<String, (PoolKind, Arc<dyn Pool>)>>;

pub fn router(pools: Pools) -> Router {
    Router::new()
        .route("/pools", get(list_pools))
        .route("/pools/{pool}/volumes", get(list_volumes).post(create))
        .route("/pools/{pool}/volumes/{id}", get(get_volume).delete(delete))
        .route("/pools/{pool}/volumes/{id}/grow", post(grow))
        .route("/pools/{pool}/heartbeats", get(heartbeats))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such resource".into()) })
        .with_state(pools)
}

/// An error answer: its status and the message of its `{"error": ...}` body.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody::new(self.1))).into_response()
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let status = match &e {
            StorageError::NotFound(_) => StatusCode::NOT_FOUND,
            StorageError::Conflict { .. } | StorageError::NameTaken { .. } => StatusCode::CONFLICT,
            StorageError::Shrink { .. } | StorageError::Invalid { .. } => StatusCode::BAD_REQUEST,
            StorageError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        Self(status, e.to_string())
    }
}

fn pool(pools: &Pools, name: &str) -> Result<Arc<dyn Pool>, ApiError> {
    pools
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

/// A JSON request body (whatever its Content-Type says), or a 400 naming what is wrong with
/// it.
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

async fn list_pools(State(pools): State<Pools>) -> Result<Json<Vec<PoolInfo>>, ApiError> {
    let pools = pools.clone();
    let infos = blocking(move || {
        pools
            .iter()
            .map(|(name, (kind, pool))| {
                Ok(PoolInfo {
                    name: name.clone(),
                    kind: *kind,
                    usage: pool.usage()?,
                })
            })
            .collect()
    })
    .await?;
    Ok(Json(infos))
}

async fn list_volumes(
    State(pools): State<Pools>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Volume>>, ApiError> {
    let pool = pool(&pools, &name)?;
    Ok(Json(blocking(move || pool.list()).await?))
}

async fn create(
    State(pools): State<Pools>,
    Path(name): Path<String>,
    json: Bytes,
) -> Result<Json<Volume>, ApiError> {
    let pool = pool(&pools, &name)?;
    let req: VolumeRequest = body(&json)?;
    Ok(Json(blocking(move || pool.create(&req)).await?))
}

async fn get_volume(
    State(pools): State<Pools>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Volume>, ApiError> {
    let pool = pool(&pools, &name)?;
    Ok(Json(blocking(move || pool.get(&id)).await?))
}

async fn delete(
    State(pools): State<Pools>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let pool = pool(&pools, &name)?;
    blocking(move || pool.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn grow(
    State(pools): State<Pools>,
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
    State(pools): State<Pools>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Heartbeat>>, ApiError> {
    let pool = pool(&pools, &name)?;
    Ok(Json(blocking(move || pool.heartbeats()).await?))
}
