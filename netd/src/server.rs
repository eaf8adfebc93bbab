//! The HTTP/JSON API on a Unix socket:
//!
//! | request | does |
//! | --- | --- |
//! | `PUT /networks/{id}` | make or change a network on this host (idempotent) |
//! | `GET /networks/{id}` | one network |
//! | `DELETE /networks/{id}` | remove it (refused while it has ports) |
//! | `PUT /ports/{id}` | make or change a VM port and its TAP (idempotent) |
//! | `GET /ports/{id}` | one port |
//! | `DELETE /ports/{id}` | remove it and its TAP |
//! | `PUT /security-groups/{id}` | make or change a security group (applies to running VMs) |
//! | `GET /security-groups/{id}` | one group |
//! | `DELETE /security-groups/{id}` | remove it (refused while ports or rules use it) |
//! | `PUT /eips/{id}` | map a public address to a port, on this host (idempotent) |
//! | `GET /eips/{id}` | one EIP |
//! | `DELETE /eips/{id}` | remove it |
//! | `GET /state` | networks, ports, and what the kernel has for them |
//!
//! Errors are `{"error": "..."}` with 400 (a bad request), 404, 409 (a clash with what the
//! host has), 422 (the host lacks what the request names) or 500.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use triad_api::net::{
    Eip, EipSpec, NetState, Network, NetworkSpec, Port, PortSpec, SecurityGroup, SecurityGroupSpec,
};
use triad_api::server::{body, not_found, ApiError};

use crate::host::Host;
use crate::Error;

pub fn router(host: Arc<Host>) -> Router {
    Router::new()
        .route(
            "/networks/{id}",
            get(get_network).put(put_network).delete(delete_network),
        )
        .route(
            "/ports/{id}",
            get(get_port).put(put_port).delete(delete_port),
        )
        .route(
            "/security-groups/{id}",
            get(get_group).put(put_group).delete(delete_group),
        )
        .route("/eips/{id}", get(get_eip).put(put_eip).delete(delete_eip))
        .route("/state", get(state))
        .fallback(not_found)
        .with_state(host)
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::System(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        Self(status, e.to_string())
    }
}

async fn put_network(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    json: Bytes,
) -> Result<Json<Network>, ApiError> {
    let spec: NetworkSpec = body(&json)?;
    Ok(Json(host.ensure_network(&id, spec).await?))
}

async fn get_network(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<Json<Network>, ApiError> {
    Ok(Json(host.network(&id).await?))
}

async fn delete_network(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    host.delete_network(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_port(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    json: Bytes,
) -> Result<Json<Port>, ApiError> {
    let spec: PortSpec = body(&json)?;
    Ok(Json(host.ensure_port(&id, spec).await?))
}

async fn get_port(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<Json<Port>, ApiError> {
    Ok(Json(host.port(&id).await?))
}

async fn delete_port(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    host.delete_port(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_group(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    json: Bytes,
) -> Result<Json<SecurityGroup>, ApiError> {
    let spec: SecurityGroupSpec = body(&json)?;
    Ok(Json(host.ensure_group(&id, spec).await?))
}

async fn get_group(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<Json<SecurityGroup>, ApiError> {
    Ok(Json(host.group(&id).await?))
}

async fn delete_group(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    host.delete_group(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_eip(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    json: Bytes,
) -> Result<Json<Eip>, ApiError> {
    let spec: EipSpec = body(&json)?;
    Ok(Json(host.ensure_eip(&id, spec).await?))
}

async fn get_eip(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<Json<Eip>, ApiError> {
    Ok(Json(host.eip(&id).await?))
}

async fn delete_eip(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    host.delete_eip(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn state(State(host): State<Arc<Host>>) -> Result<Json<NetState>, ApiError> {
    Ok(Json(host.state().await?))
}
