//! The HTTP/JSON API, the same on the controller's TCP port and the local Unix socket:
//!
//! | request | does |
//! | --- | --- |
//! | `GET /node` | who the node is, what it has and what its VMs take |
//! | `GET /vms` | the node's VMs |
//! | `PUT /vms/{uuid}` | ensure the VM (idempotent; a lower generation is refused) |
//! | `GET /vms/{uuid}` | one VM, with its VMM's counters |
//! | `DELETE /vms/{uuid}` | remove it with what its ensures made (idempotent) |
//! | `PUT /vms/{uuid}/state` | start, stop (graceful, then forced) or reboot it |
//! | `GET /events?after=SEQ` | what happened since event SEQ |
//!
//! Errors are `{"error", "field"?, "step"?}` with 400, 404, 409, 422, 502, 503 or 500.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use triad_api::hostd::{HostEvent, NodeInfo, StateRequest, Vm, VmSpec};

use crate::{Agent, Error};

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/node", get(node))
        .route("/vms", get(list))
        .route("/vms/{uuid}", get(show).put(ensure).delete(remove))
        .route("/vms/{uuid}/state", axum::routing::put(set_state))
        .route("/events", get(events))
        .fallback(triad_api::server::not_found)
        .with_state(agent)
}

/// A JSON body, or a 400 naming the field at fault (`nics[0].mac`).
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // Syntax errors have no path ("?"), nor does the body as a whole (".").
        let field = if path == "." || path == "?" {
            "body".to_owned()
        } else {
            path
        };
        Error::invalid(field, e.into_inner().to_string())
    })?;
    de.end()
        .map_err(|e| Error::invalid("body", e.to_string()))?;
    Ok(value)
}

/// Runs an agent call off the async workers: it waits on daemons and processes.
async fn blocking<T: Send + 'static>(
    agent: Arc<Agent>,
    call: impl FnOnce(&Agent) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(move || call(&agent))
        .await
        .map_err(|e| Error::System(format!("the request's task failed: {e}")))?
}

async fn node(State(agent): State<Arc<Agent>>) -> Result<Json<NodeInfo>, Error> {
    blocking(agent, |a| Ok(a.node())).await.map(Json)
}

async fn list(State(agent): State<Arc<Agent>>) -> Result<Json<Vec<Vm>>, Error> {
    blocking(agent, |a| Ok(a.vms())).await.map(Json)
}

async fn show(
    State(agent): State<Arc<Agent>>,
    Path(uuid): Path<String>,
) -> Result<Json<Vm>, Error> {
    blocking(agent, move |a| a.vm(&uuid)).await.map(Json)
}

async fn ensure(
    State(agent): State<Arc<Agent>>,
    Path(uuid): Path<String>,
    bytes: Bytes,
) -> Result<Json<Vm>, Error> {
    let spec: VmSpec = body(&bytes)?;
    blocking(agent, move |a| a.ensure(&uuid, spec))
        .await
        .map(Json)
}

async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(uuid): Path<String>,
) -> Result<StatusCode, Error> {
    blocking(agent, move |a| a.remove(&uuid)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_state(
    State(agent): State<Arc<Agent>>,
    Path(uuid): Path<String>,
    bytes: Bytes,
) -> Result<Json<Vm>, Error> {
    let req: StateRequest = body(&bytes)?;
    blocking(agent, move |a| a.set_state(&uuid, req))
        .await
        .map(Json)
}

async fn events(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<HostEvent>>, Error> {
    let after = match query.get("after") {
        None => 0,
        Some(seq) => seq
            .parse()
            .map_err(|_| Error::invalid("after", format!("{seq:?} is not an event number")))?,
    };
    if let Some(other) = query.keys().find(|k| *k != "after") {
        return Err(Error::invalid(other.as_str(), "unknown query parameter"));
    }
    Ok(Json(agent.events(after)))
}
