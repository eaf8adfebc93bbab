//! Images: imported into a pool by the images reconciler, with progress to poll.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use triad_api::storage::ImageSource;
use triad_api::v1::{Accepted, Image, ImageCreate, ImageState};
use triad_api::ErrorBody;

use super::cluster::pool_list;
use super::{body, ApiError, ApiResult};
use crate::model::{encode, keys, ImageRecord, VmRecord};
use crate::store::{Expect, Txn};
use crate::{events, operations, validate, Ctl};

pub fn routes() -> Router<Arc<Ctl>> {
    Router::new()
        .route("/v1/images", get(list).post(create))
        .route("/v1/images/{name}", get(show).delete(remove))
}

pub fn view(record: &ImageRecord) -> Image {
    let spec = record.spec.clone();
    Image {
        name: spec.name,
        pool: spec.pool,
        source: spec.source,
        sha256: spec.sha256,
        kernel: spec.kernel,
        cmdline: spec.cmdline,
        state: record.state,
        size_bytes: record.size_bytes,
        done_bytes: record.done_bytes,
        total_bytes: record.total_bytes,
        error: record.error.clone(),
    }
}

#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, body = [Image]), (status = 401, body = ErrorBody)))]
async fn list(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<Image>>> {
    Ok(Json(
        ctl.db
            .list::<ImageRecord>(keys::IMAGES)
            .await?
            .iter()
            .map(|i| view(&i.value))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
async fn show(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<Json<Image>> {
    ctl.db
        .get::<ImageRecord>(&format!("{}{name}", keys::IMAGES))
        .await?
        .map(|i| Json(view(&i.value)))
        .ok_or_else(|| ApiError::NotFound(format!("no image {name:?}")))
}

/// Starts the import; poll the image (or the operation) for its progress.
#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = ImageCreate,
    responses((status = 202, body = Accepted<Image>), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    State(ctl): State<Arc<Ctl>>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<Accepted<Image>>)> {
    let spec: ImageCreate = body(&bytes)?;
    validate::name("name", &spec.name)?;
    match &spec.source {
        ImageSource::File { path } if !path.is_absolute() => {
            return Err(ApiError::bad(
                "source.path",
                "give an absolute path (a file on the nodes)",
            ));
        }
        ImageSource::Url { url }
            if !(url.starts_with("http://") || url.starts_with("https://")) =>
        {
            return Err(ApiError::bad(
                "source.url",
                "give an http:// or https:// URL",
            ));
        }
        _ => {}
    }
    if let Some(sha) = &spec.sha256 {
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad("sha256", "want 64 hex digits"));
        }
    }
    if !spec.kernel.starts_with('/') {
        return Err(ApiError::bad(
            "kernel",
            "give an absolute path (a file on every node)",
        ));
    }
    if spec.cmdline.len() > 2048 {
        return Err(ApiError::bad("cmdline", "at most 2048 bytes"));
    }
    if !pool_list(&ctl).await?.iter().any(|p| p.name == spec.pool) {
        return Err(ApiError::unprocessable(
            "pool",
            format!("no node has a pool {:?}", spec.pool),
        ));
    }
    let operation = operations::new("image.import", &format!("image/{}", spec.name))?;
    let record = ImageRecord {
        spec,
        state: ImageState::Importing,
        size_bytes: 0,
        done_bytes: 0,
        total_bytes: None,
        error: None,
        nodes: Vec::new(),
        operation: operation.id.clone(),
    };
    let key = format!("{}{}", keys::IMAGES, record.spec.name);
    let txn = Txn::new()
        .expect(&key, Expect::Absent)
        .put(&key, encode(&record))
        .put(operations::key(&operation.id), encode(&operation));
    if ctl.db.txn(txn).await?.is_none() {
        return Err(ApiError::conflict(
            Some("name"),
            format!("image {:?} exists", record.spec.name),
        ));
    }
    events::emit(
        &ctl.db,
        &format!("image/{}", record.spec.name),
        "importing",
        format!("into pool {}", record.spec.pool),
    )
    .await;
    ctl.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            operation,
            resource: view(&record),
        }),
    ))
}

#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let key = format!("{}{name}", keys::IMAGES);
    let record = ctl
        .db
        .get::<ImageRecord>(&key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no image {name:?}")))?;
    let users = ctl
        .db
        .list::<VmRecord>(keys::VMS)
        .await?
        .into_iter()
        .filter(|vm| vm.value.request.image == name)
        .count();
    if users > 0 {
        return Err(ApiError::conflict(
            None,
            format!("image {name:?} has {users} VMs cloned from it"),
        ));
    }
    if record.value.state == ImageState::Importing {
        return Err(ApiError::conflict(
            None,
            format!("image {name:?} is importing: wait for it to end"),
        ));
    }
    for node in &record.value.nodes {
        let storaged = triad_api::client::StoragedClient::via_hostd(&ctl.hostd(node).await?);
        let (pool, id) = (record.value.spec.pool.clone(), name.clone());
        let deleted = tokio::task::spawn_blocking(move || storaged.delete_image(&pool, &id))
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        match deleted {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(ApiError::Unavailable(format!(
                    "deleting the image on node {node}: {}",
                    triad_api::error::chain(&e)
                )))
            }
        }
    }
    ctl.db.delete(&key).await?;
    events::emit(&ctl.db, &format!("image/{name}"), "deleted", "").await;
    Ok(StatusCode::NO_CONTENT)
}
