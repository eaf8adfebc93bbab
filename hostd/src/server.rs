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
//! | `GET /vms/{uuid}/serial?after=N` | its serial console output from byte N |
//! | `GET /events?after=SEQ[&wait_ms=N]` | what happened since event SEQ (waiting up to N ms for something) |
//! | `GET /peers` | the peers this node hears, and whether it hears a majority |
//! | `GET /cluster`, `PUT /cluster` | the cluster the heartbeats and the self-fencer go by |
//! | `ANY /netd/…`, `ANY /storaged/…` | the node's netd and storaged, passed through |
//!
//! Errors are `{"error", "field"?, "step"?}` with 400, 404, 409, 422, 502, 503 or 500. On TCP
//! every request must carry `Authorization: Bearer NODE-TOKEN` (401 otherwise): the controller
//! reaches the node's netd and storaged only through here.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use triad_api::hostd::{
    ClusterSpec, HostEvent, NodeInfo, PeerView, SerialChunk, StateRequest, Vm, VmSpec,
};

use triad_api::hostd::TlsInstall;
use triad_api::server::ServerTls;

use crate::tls::NodeTls;
use crate::{Agent, Error};

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/node", get(node))
        .route("/vms", get(list))
        .route("/vms/{uuid}", get(show).put(ensure).delete(remove))
        .route("/vms/{uuid}/state", axum::routing::put(set_state))
        .route("/vms/{uuid}/serial", get(serial))
        .route("/events", get(events))
        .route("/peers", get(peers))
        .route("/cluster", get(cluster).put(set_cluster))
        .route("/netd/{*rest}", any(to_netd))
        .route("/storaged/{*rest}", any(to_storaged))
        .fallback(triad_api::server::not_found)
        .with_state(agent)
}

/// `router` for the controller's TCP port: every request must present the node's token. Over
/// TLS it also takes the node's certificate at the join (`PUT /tls`).
pub fn tcp_router(agent: Arc<Agent>, tls: Option<(NodeTls, ServerTls)>) -> Router {
    let mut router = router(agent.clone());
    if let Some((files, server)) = tls {
        let node = agent.node_name().to_owned();
        router = router.route(
            "/tls",
            axum::routing::put(move |bytes: Bytes| install_tls(node, files, server, bytes)),
        );
    }
    router.layer(axum::middleware::from_fn_with_state(agent, require_token))
}

/// `PUT /tls`: keeps the node's certificate and the CA, and serves them from the next
/// connection on.
async fn install_tls(
    node: String,
    files: NodeTls,
    server: ServerTls,
    bytes: Bytes,
) -> Result<StatusCode, Error> {
    let install: TlsInstall = body(&bytes)?;
    let config = tokio::task::spawn_blocking(move || files.install(&node, &install))
        .await
        .map_err(|e| Error::System(format!("the request's task failed: {e}")))??;
    server.set(config);
    tracing::info!("serving the cluster's certificate for this node from now on");
    Ok(StatusCode::NO_CONTENT)
}

async fn require_token(State(agent): State<Arc<Agent>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if crate::token::matches(agent.token(), token.trim()) => {
            next.run(request).await
        }
        Some(_) => {
            Error::Unauthorized("the bearer token is not this node's token".into()).into_response()
        }
        None => Error::Unauthorized(
            "Authorization: Bearer NODE-TOKEN is required (triad-hostd token prints it)".into(),
        )
        .into_response(),
    }
}

async fn to_netd(
    State(agent): State<Arc<Agent>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let socket = agent.config().netd_socket.clone();
    pass_through("netd", socket, method, uri, body).await
}

async fn to_storaged(
    State(agent): State<Arc<Agent>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let socket = agent.config().storaged_socket.clone();
    pass_through("storaged", socket, method, uri, body).await
}

/// Sends the request on to `daemon`'s socket without the `/daemon` prefix, and answers what
/// it answered; 503 when it does not answer.
async fn pass_through(
    daemon: &'static str,
    socket: std::path::PathBuf,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let full = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let path = full
        .strip_prefix('/')
        .and_then(|p| p.strip_prefix(daemon))
        .unwrap_or(full)
        .to_owned();
    let sent = tokio::task::spawn_blocking(move || {
        let body = (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned());
        triad_api::http::request(
            socket,
            method.as_str(),
            &path,
            body.as_deref(),
            std::time::Duration::from_secs(120),
        )
    })
    .await;
    match sent {
        Ok(Ok(resp)) => {
            let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                resp.body,
            )
                .into_response()
        }
        Ok(Err(e)) => Error::Unavailable(format!(
            "{daemon} does not answer: {}",
            crate::error::chain(&e)
        ))
        .into_response(),
        Err(e) => Error::System(format!("the request's task failed: {e}")).into_response(),
    }
}

/// A JSON body, or a 400 naming the field at fault (`nics[0].mac`).
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Error> {
    triad_api::server::object_body(bytes).map_err(|e| Error::invalid(e.field, e.message))
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

async fn peers(State(agent): State<Arc<Agent>>) -> Json<PeerView> {
    Json(agent.peers().view())
}

async fn cluster(State(agent): State<Arc<Agent>>) -> Result<Json<ClusterSpec>, Error> {
    agent
        .peers()
        .cluster()
        .map(Json)
        .ok_or_else(|| Error::NotFound("no cluster has been set (PUT /cluster)".into()))
}

async fn set_cluster(State(agent): State<Arc<Agent>>, bytes: Bytes) -> Result<StatusCode, Error> {
    let spec: ClusterSpec = body(&bytes)?;
    blocking(agent, move |a| a.peers().set_cluster(spec)).await?;
    Ok(StatusCode::NO_CONTENT)
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

async fn serial(
    State(agent): State<Arc<Agent>>,
    Path(uuid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<SerialChunk>, Error> {
    let after = match query.get("after") {
        None => 0,
        Some(n) => n
            .parse()
            .map_err(|_| Error::invalid("after", format!("{n:?} is not a byte offset")))?,
    };
    blocking(agent, move |a| a.serial(&uuid, after))
        .await
        .map(Json)
}

/// The longest `GET /events` waits for a new event.
const MAX_WAIT_MS: u64 = 60_000;

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
    let wait_ms: u64 = match query.get("wait_ms") {
        None => 0,
        Some(ms) => ms
            .parse()
            .ok()
            .filter(|ms| *ms <= MAX_WAIT_MS)
            .ok_or_else(|| {
                Error::invalid("wait_ms", format!("{ms:?} is not 0 to {MAX_WAIT_MS}"))
            })?,
    };
    if let Some(other) = query.keys().find(|k| *k != "after" && *k != "wait_ms") {
        return Err(Error::invalid(other.as_str(), "unknown query parameter"));
    }
    let wait = std::time::Duration::from_millis(wait_ms);
    blocking(agent, move |a| Ok(a.events(after, wait)))
        .await
        .map(Json)
}
