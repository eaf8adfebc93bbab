//! Nodes: join, list, show, remove, whether they take new VMs, and maintenance.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use triad_api::client::HostdClient;
use triad_api::v1::{Connection, Liveness, Node, NodeEnable, NodeJoin};
use triad_api::ErrorBody;

use super::{body, ApiError, ApiResult};
use crate::model::{keys, now_ms, NodeRecord, NodeStatus, VmRecord};
use crate::{events, validate, Ctl};

pub fn routes() -> Router<Arc<Ctl>> {
    Router::new()
        .route("/v1/nodes", get(list).post(join))
        .route("/v1/nodes/{name}", get(show).delete(remove))
        .route("/v1/nodes/{name}/{action}", post(act))
        .route("/v1/nodes/{name}/certificate", post(rotate_certificate))
        .route("/v1/nodes/{name}/maintenance/{step}", post(maintenance))
}

/// The node as the API shows it.
pub fn view(record: &NodeRecord, status: Option<&NodeStatus>, vms: &[VmRecord]) -> Node {
    let name = &record.join.name;
    let placed: Vec<&VmRecord> = vms
        .iter()
        .filter(|vm| vm.node.as_deref() == Some(name.as_str()))
        .collect();
    let status = status.cloned().unwrap_or_default();
    Node {
        name: name.clone(),
        address: record.join.address.clone(),
        data_address: data_address(&record.join),
        enable: record.enable,
        entering_maintenance: record.entering_maintenance,
        connection: status.connection,
        liveness: status.liveness,
        version: status.version,
        cpus: status.cpus,
        memory_mib: status.memory_mib,
        reserved_memory_mib: status.reserved_memory_mib,
        allocated_vcpus: placed.iter().map(|vm| vm.vcpus).sum(),
        allocated_memory_mib: placed.iter().map(|vm| vm.memory_mib).sum(),
        vms: placed.len(),
        pools: status.pools.iter().map(|p| p.name.clone()).collect(),
        networks: status.networks,
        last_seen_unix_ms: status.last_seen_unix_ms,
        error: status.error,
    }
}

/// Where VXLAN tunnels to the node end.
pub fn data_address(join: &NodeJoin) -> Ipv4Addr {
    join.data_address.unwrap_or_else(|| {
        join.address
            .rsplit_once(':')
            .and_then(|(host, _)| host.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    })
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    responses((status = 200, body = [Node]), (status = 401, body = ErrorBody)))]
async fn list(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<Node>>> {
    Ok(Json(ctl.nodes().await?))
}

#[utoipa::path(get, path = "/v1/nodes/{name}", tag = "nodes",
    params(("name" = String, Path)),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody)))]
async fn show(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<Json<Node>> {
    ctl.nodes()
        .await?
        .into_iter()
        .find(|n| n.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no node {name:?}")))
}

#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", request_body = NodeJoin,
    responses((status = 201, body = Node), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn join(State(ctl): State<Arc<Ctl>>, bytes: Bytes) -> ApiResult<(StatusCode, Json<Node>)> {
    let join: NodeJoin = body(&bytes)?;
    validate::name("name", &join.name)?;
    validate::address("address", &join.address)?;
    if join.token.trim().is_empty() {
        return Err(ApiError::bad(
            "token",
            "the node's token is empty (triad-hostd token prints it)",
        ));
    }
    let existing = ctl.db.list::<NodeRecord>(keys::NODES).await?;
    if let Some(other) = existing
        .iter()
        .find(|n| n.value.join.address == join.address)
    {
        if ctl.unsealed(&other.value.join) != join {
            return Err(ApiError::conflict(
                Some("address"),
                format!(
                    "node {:?} has joined from {}",
                    other.value.join.name, join.address
                ),
            ));
        }
    }
    let key = format!("{}{}", keys::NODES, join.name);
    if let Some(held) = ctl.db.get::<NodeRecord>(&key).await? {
        if ctl.unsealed(&held.value.join) != join {
            return Err(ApiError::conflict(
                Some("name"),
                format!("node {:?} has joined already", join.name),
            ));
        }
    }
    match &ctl.tls {
        Some(tls) => join_over_tls(&ctl, tls, &join).await?,
        None => {
            if join.fingerprint.is_some() {
                return Err(ApiError::unprocessable(
                    "fingerprint",
                    "this controller runs with --insecure-http and joins nodes over plain HTTP: leave out the fingerprint",
                ));
            }
            let client = HostdClient::tcp(&join.address, &join.token).with_timeout(JOIN_TIMEOUT);
            check_node(client, &join).await?;
        }
    }
    // The store keeps the token sealed: a dump of it gives no node away.
    let mut sealed = join.clone();
    sealed.token = ctl
        .store_key
        .seal(&join.token)
        .map_err(|e| ApiError::Unavailable(format!("sealing the node's token: {e}")))?;
    let record = NodeRecord {
        join: sealed,
        enable: NodeEnable::Enabled,
        joined_unix_ms: now_ms(),
        entering_maintenance: false,
    };
    if !ctl.db.create(&key, &record).await? {
        let held = ctl.db.get::<NodeRecord>(&key).await?;
        if held.map(|h| ctl.unsealed(&h.value.join)) != Some(join.clone()) {
            return Err(ApiError::conflict(
                Some("name"),
                format!("node {:?} has joined already", join.name),
            ));
        }
    }
    events::emit(
        &ctl.db,
        &format!("node/{}", join.name),
        "joined",
        format!("joined from {}", join.address),
    )
    .await;
    ctl.wake.notify_one();
    let node = ctl
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.name == join.name)
        .ok_or_else(|| ApiError::NotFound(format!("node {:?} left again", join.name)))?;
    Ok((StatusCode::CREATED, Json(node)))
}

/// How long a join waits for the node's hostd.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The TLS part of a join: hostd is reached by the pinned fingerprint of its self-signed
/// certificate, shown to be the node by its token and name, and given its certificate from
/// the cluster's CA, which it serves from then on; then it must answer by the CA, to the
/// controller's client certificate. A node that already has this CA's certificate (a join
/// retried after it got it) is reached by the CA at once.
async fn join_over_tls(ctl: &Ctl, tls: &crate::tls::ClusterTls, join: &NodeJoin) -> ApiResult<()> {
    let by_ca =
        HostdClient::tls(&join.address, tls.hostd.clone(), &join.token).with_timeout(JOIN_TIMEOUT);
    if check_node(by_ca.clone(), join).await.is_ok() {
        return Ok(());
    }
    let pin = join.fingerprint.as_deref().ok_or_else(|| {
        ApiError::bad(
            "fingerprint",
            "the node's certificate fingerprint is needed to join it over TLS (triad-hostd token on the node prints it)",
        )
    })?;
    let pinned = triad_api::tls::client_pinned(pin)
        .map_err(|e| ApiError::bad("fingerprint", e.to_string()))?;
    check_node(
        HostdClient::tls(&join.address, pinned.clone(), &join.token).with_timeout(JOIN_TIMEOUT),
        join,
    )
    .await?;
    let cert = tls
        .issue_node(&join.name, &join.address)
        .map_err(|e| ApiError::Unavailable(format!("issuing the node's certificate: {e}")))?;
    let install = triad_api::hostd::TlsInstall {
        ca_pem: tls.ca.cert_pem().to_owned(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    };
    let client = HostdClient::tls(&join.address, pinned, &join.token).with_timeout(JOIN_TIMEOUT);
    tokio::task::spawn_blocking(move || client.install_tls(&install))
        .await
        .map_err(|e| ApiError::Unavailable(format!("the join's task failed: {e}")))?
        .map_err(|e| {
            ApiError::unprocessable(
                "address",
                format!(
                    "hostd at {} did not take its certificate: {}",
                    join.address,
                    triad_api::error::chain(&e)
                ),
            )
        })?;
    check_node(by_ca, join).await.map_err(|e| {
        ApiError::unprocessable(
            "address",
            format!("hostd took its certificate but does not answer by it: {e}"),
        )
    })?;
    events::emit(
        &ctl.db,
        &format!("node/{}", join.name),
        "certificate",
        format!("issued the node's certificate for {}", join.address),
    )
    .await;
    Ok(())
}

/// The node must answer through `client`, taking the join's token, as the join's name.
async fn check_node(client: HostdClient, join: &NodeJoin) -> ApiResult<()> {
    let info = tokio::task::spawn_blocking(move || client.node())
        .await
        .map_err(|e| ApiError::Unavailable(format!("the join's task failed: {e}")))?
        .map_err(|e| {
            let why = triad_api::error::chain(&e);
            match e.status() {
                Some(401) => ApiError::unprocessable("token", "hostd refused the token: it is not the node's (triad-hostd token on the node prints it)"),
                _ if why.contains("not the pinned") => ApiError::unprocessable(
                    "fingerprint",
                    format!("hostd at {} shows another certificate: {why}", join.address),
                ),
                _ => ApiError::unprocessable(
                    "address",
                    format!("hostd does not answer at {}: {why}", join.address),
                ),
            }
        })?;
    if info.name != join.name {
        return Err(ApiError::unprocessable(
            "name",
            format!(
                "hostd at {} is node {:?}, not {:?}",
                join.address, info.name, join.name
            ),
        ));
    }
    let ours = env!("CARGO_PKG_VERSION");
    if !versions_work_together(&info.version, ours) {
        return Err(ApiError::unprocessable(
            "address",
            format!(
                "node {:?} runs Triad {}, this controller {ours}: they must be at most one minor version apart (upgrade one of them first)",
                join.name, info.version
            ),
        ));
    }
    Ok(())
}

/// Whether Triad `a` and `b` work in one cluster: the same major version, minor versions at
/// most one apart (as during an upgrade, one server after another).
pub fn versions_work_together(a: &str, b: &str) -> bool {
    let major_minor = |v: &str| {
        let mut parts = v.split('.').map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => Some((major, minor)),
            _ => None,
        }
    };
    match (major_minor(a), major_minor(b)) {
        (Some((ma, na)), Some((mb, nb))) => ma == mb && na.abs_diff(nb) <= 1,
        _ => false,
    }
}

#[utoipa::path(delete, path = "/v1/nodes/{name}", tag = "nodes",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let key = format!("{}{name}", keys::NODES);
    if ctl.db.get::<NodeRecord>(&key).await?.is_none() {
        return Err(ApiError::NotFound(format!("no node {name:?}")));
    }
    let placed = ctl
        .db
        .list::<VmRecord>(keys::VMS)
        .await?
        .into_iter()
        .filter(|vm| vm.value.node.as_deref() == Some(name.as_str()))
        .count();
    if placed > 0 {
        return Err(ApiError::conflict(
            None,
            format!("node {name:?} has {placed} VMs: move or destroy them first"),
        ));
    }
    ctl.db.delete(&key).await?;
    ctl.db
        .delete(&format!("{}{name}", keys::NODE_STATUS))
        .await?;
    events::emit(
        &ctl.db,
        &format!("node/{name}"),
        "removed",
        "removed from the cluster",
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A new certificate from the cluster's CA for the node, which hostd serves from its next
/// connection on (the old one is valid until it expires, a year after it was issued).
#[utoipa::path(post, path = "/v1/nodes/{name}/certificate", tag = "nodes",
    params(("name" = String, Path)),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn rotate_certificate(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Node>> {
    let key = format!("{}{name}", keys::NODES);
    let record = ctl
        .db
        .get::<NodeRecord>(&key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no node {name:?}")))?
        .value;
    let tls = ctl.tls.as_ref().ok_or_else(|| {
        ApiError::conflict(
            None,
            "this controller runs with --insecure-http: its nodes have no certificates",
        )
    })?;
    let cert = tls
        .issue_node(&name, &record.join.address)
        .map_err(|e| ApiError::Unavailable(format!("issuing the node's certificate: {e}")))?;
    let install = triad_api::hostd::TlsInstall {
        ca_pem: tls.ca.cert_pem().to_owned(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    };
    let client = ctl.hostd_client(&record).with_timeout(JOIN_TIMEOUT);
    tokio::task::spawn_blocking(move || client.install_tls(&install))
        .await
        .map_err(|e| ApiError::Unavailable(format!("the task failed: {e}")))?
        .map_err(|e| {
            ApiError::Unavailable(format!(
                "node {name:?} did not take its new certificate: {}",
                triad_api::error::chain(&e)
            ))
        })?;
    events::emit(
        &ctl.db,
        &format!("node/{name}"),
        "certificate",
        "issued the node a new certificate".to_owned(),
    )
    .await;
    show(State(ctl), Path(name)).await
}

/// `lock`, `unlock`, `enable` or `disable`.
#[utoipa::path(post, path = "/v1/nodes/{name}/{action}", tag = "nodes",
    params(("name" = String, Path), ("action" = String, Path, description = "lock, unlock, enable or disable")),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn act(
    State(ctl): State<Arc<Ctl>>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<Json<Node>> {
    let target = match action.as_str() {
        "lock" => NodeEnable::Locked,
        "unlock" | "enable" => NodeEnable::Enabled,
        "disable" => NodeEnable::Disabled,
        _ => {
            return Err(ApiError::NotFound(format!(
                "nodes have no action {action:?}: lock, unlock, enable or disable"
            )))
        }
    };
    let key = format!("{}{name}", keys::NODES);
    let mut from = None;
    let changed = ctl
        .db
        .modify::<NodeRecord, ApiError>(&key, |record| {
            from = Some(record.enable);
            match (action.as_str(), record.enable) {
                (_, NodeEnable::Maintenance) => Err(ApiError::conflict(
                    None,
                    format!("node {name:?} is in maintenance: leave it first (maintenance exit)"),
                )),
                _ if record.entering_maintenance => Err(ApiError::conflict(
                    None,
                    format!(
                        "node {name:?} is entering maintenance: leave it first (maintenance exit)"
                    ),
                )),
                ("unlock", NodeEnable::Disabled) => Err(ApiError::conflict(
                    None,
                    format!("node {name:?} is disabled, not locked: enable it"),
                )),
                _ => {
                    record.enable = target;
                    Ok(())
                }
            }
        })
        .await?;
    if changed.is_none() {
        return Err(ApiError::NotFound(format!("no node {name:?}")));
    }
    if from != Some(target) {
        events::emit(
            &ctl.db,
            &format!("node/{name}"),
            &action,
            format!("{:?} -> {:?}", from.unwrap_or_default(), target),
        )
        .await;
    }
    ctl.wake.notify_one();
    show(State(ctl), Path(name)).await
}

/// `enter`: the node is locked, its VMs on shared storage move to other nodes (stopped there,
/// started elsewhere), its running VMs on local storage stop; then it is in Maintenance.
/// `exit`: the node is Locked again (`unlock` gives it new VMs). Entering twice is entering
/// once; exiting a node not in maintenance is refused.
#[utoipa::path(post, path = "/v1/nodes/{name}/maintenance/{step}", tag = "nodes",
    params(("name" = String, Path), ("step" = String, Path, description = "enter or exit")),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn maintenance(
    State(ctl): State<Arc<Ctl>>,
    Path((name, step)): Path<(String, String)>,
) -> ApiResult<Json<Node>> {
    let entering = match step.as_str() {
        "enter" => true,
        "exit" => false,
        _ => {
            return Err(ApiError::NotFound(format!(
                "maintenance has no step {step:?}: enter or exit"
            )))
        }
    };
    let status = ctl
        .db
        .get::<NodeStatus>(&format!("{}{name}", keys::NODE_STATUS))
        .await?
        .map(|s| s.value)
        .unwrap_or_default();
    let key = format!("{}{name}", keys::NODES);
    let mut message = None;
    let changed = ctl
        .db
        .modify::<NodeRecord, ApiError>(&key, |record| {
            let inside = record.entering_maintenance || record.enable == NodeEnable::Maintenance;
            message = None;
            if entering && !inside {
                if status.connection != Connection::Connected || status.liveness != Liveness::Alive
                {
                    return Err(ApiError::conflict(
                        None,
                        format!(
                            "node {name:?} is {:?} and {:?}: its VMs cannot be stopped there \
                             (lock or disable it; HA moves a dead node's VMs)",
                            status.connection, status.liveness
                        )
                        .to_lowercase(),
                    ));
                }
                message = Some(format!("entering maintenance from {:?}", record.enable));
                record.enable = NodeEnable::Locked;
                record.entering_maintenance = true;
            } else if !entering && inside {
                message = Some(if record.entering_maintenance {
                    "left maintenance before it was empty: locked".to_owned()
                } else {
                    "left maintenance: locked".to_owned()
                });
                record.enable = NodeEnable::Locked;
                record.entering_maintenance = false;
            } else if !entering && !inside {
                return Err(ApiError::conflict(
                    None,
                    format!("node {name:?} is not in maintenance"),
                ));
            }
            Ok(())
        })
        .await?;
    if changed.is_none() {
        return Err(ApiError::NotFound(format!("no node {name:?}")));
    }
    if let Some(message) = message {
        events::emit(&ctl.db, &format!("node/{name}"), "maintenance", message).await;
    }
    ctl.wake.notify_one();
    show(State(ctl), Path(name)).await
}

#[cfg(test)]
mod tests {
    use super::versions_work_together;

    #[test]
    fn one_minor_version_apart_at_most() {
        assert!(versions_work_together("0.1.0", "0.1.7"));
        assert!(versions_work_together("0.2.3", "0.1.0"));
        assert!(versions_work_together("1.4.0", "1.5.2"));
        assert!(!versions_work_together("0.3.0", "0.1.0"));
        assert!(!versions_work_together("1.0.0", "2.0.0"));
        assert!(!versions_work_together("x", "0.1.0"));
    }
}
