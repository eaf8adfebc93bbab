//! Cluster-wide things: offerings, settings, tokens, pools, affinity groups, events, the audit
//! log and operations.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use triad_api::v1::{
    AffinityGroup, AffinityGroupCreate, AffinityRule, AuditRecord, Event, Offering, Operation,
    Settings, SettingsPatch, Token, TokenCreate,
};
use triad_api::ErrorBody;

use super::{body, number, query, ApiError, ApiResult};
use crate::model::{keys, AffinityGroupRecord, NodeRecord, NodeStatus, TokenRecord, VmRecord};
use crate::{auth, events, validate, Ctl};

pub fn routes() -> Router<Arc<Ctl>> {
    Router::new()
        .route("/v1/offerings", get(offerings).post(create_offering))
        .route(
            "/v1/offerings/{name}",
            get(offering).delete(delete_offering),
        )
        .route("/v1/settings", get(settings).patch(patch_settings))
        .route("/v1/tokens", get(tokens).post(create_token))
        .route("/v1/tokens/{name}", axum::routing::delete(delete_token))
        .route("/v1/pools", get(pools))
        .route("/v1/affinity-groups", get(groups).post(create_group))
        .route(
            "/v1/affinity-groups/{name}",
            get(group).delete(delete_group),
        )
        .route("/v1/events", get(list_events))
        .route("/v1/audit", get(audit))
        .route("/v1/operations/{id}", get(operation))
        .route("/v1/backup", axum::routing::post(backup))
}

/// The offerings a new cluster has.
pub fn default_offerings() -> Vec<Offering> {
    [(1, 2), (2, 4), (4, 8), (8, 16)]
        .into_iter()
        .map(|(c, g)| Offering {
            name: format!("{c}C{g}G"),
            vcpus: c,
            memory_mib: g * 1024,
        })
        .collect()
}

pub async fn current_settings(ctl: &Ctl) -> Result<Settings, crate::model::DbError> {
    Ok(ctl
        .db
        .get::<Settings>(keys::SETTINGS)
        .await?
        .map(|s| s.value)
        .unwrap_or_default())
}

#[utoipa::path(get, path = "/v1/offerings", tag = "offerings",
    responses((status = 200, body = [Offering]), (status = 401, body = ErrorBody)))]
async fn offerings(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<Offering>>> {
    Ok(Json(ctl.db.values::<Offering>(keys::OFFERINGS).await?))
}

#[utoipa::path(get, path = "/v1/offerings/{name}", tag = "offerings", params(("name" = String, Path)),
    responses((status = 200, body = Offering), (status = 404, body = ErrorBody)))]
async fn offering(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Offering>> {
    ctl.db
        .get::<Offering>(&format!("{}{name}", keys::OFFERINGS))
        .await?
        .map(|o| Json(o.value))
        .ok_or_else(|| ApiError::NotFound(format!("no offering {name:?}")))
}

#[utoipa::path(post, path = "/v1/offerings", tag = "offerings", request_body = Offering,
    responses((status = 201, body = Offering), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_offering(
    State(ctl): State<Arc<Ctl>>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<Offering>)> {
    let offering: Offering = body(&bytes)?;
    validate::hostname("name", &offering.name)?;
    validate::range("vcpus", offering.vcpus, 1, 254)?;
    validate::range("memory_mib", offering.memory_mib, 16, 16 << 20)?;
    if !ctl
        .db
        .create(&format!("{}{}", keys::OFFERINGS, offering.name), &offering)
        .await?
    {
        return Err(ApiError::conflict(
            Some("name"),
            format!("offering {:?} exists", offering.name),
        ));
    }
    Ok((StatusCode::CREATED, Json(offering)))
}

#[utoipa::path(delete, path = "/v1/offerings/{name}", tag = "offerings", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_offering(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let key = format!("{}{name}", keys::OFFERINGS);
    if ctl.db.get::<Offering>(&key).await?.is_none() {
        return Err(ApiError::NotFound(format!("no offering {name:?}")));
    }
    ctl.db.delete(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/settings", tag = "cluster",
    responses((status = 200, body = Settings), (status = 401, body = ErrorBody)))]
async fn settings(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Settings>> {
    Ok(Json(current_settings(&ctl).await?))
}

#[utoipa::path(patch, path = "/v1/settings", tag = "cluster", request_body = SettingsPatch,
    responses((status = 200, body = Settings), (status = 400, body = ErrorBody)))]
async fn patch_settings(State(ctl): State<Arc<Ctl>>, bytes: Bytes) -> ApiResult<Json<Settings>> {
    let patch: SettingsPatch = body(&bytes)?;
    if let Some(v) = patch.cpu_overcommit {
        validate::range("cpu_overcommit", v, 1.0, 16.0)?;
    }
    if let Some(v) = patch.memory_overcommit {
        validate::range("memory_overcommit", v, 1.0, 4.0)?;
    }
    if let Some(v) = patch.reserved_memory_mib {
        validate::range("reserved_memory_mib", v, 0, 1 << 30)?;
    }
    loop {
        let held = ctl.db.get::<Settings>(keys::SETTINGS).await?;
        let mut s = held.as_ref().map(|h| h.value.clone()).unwrap_or_default();
        let before = s.clone();
        if let Some(v) = patch.ha_enabled {
            s.ha_enabled = v;
        }
        if let Some(v) = patch.ha_disarmed {
            s.ha_disarmed = v;
        }
        if let Some(v) = patch.ha_policy {
            s.ha_policy = v;
        }
        if let Some(v) = patch.cpu_overcommit {
            s.cpu_overcommit = v;
        }
        if let Some(v) = patch.memory_overcommit {
            s.memory_overcommit = v;
        }
        if let Some(v) = patch.reserved_memory_mib {
            s.reserved_memory_mib = v;
        }
        if let Some(v) = patch.placement {
            s.placement = v;
        }
        let written = match &held {
            Some(h) => ctl.db.update(keys::SETTINGS, h.revision, &s).await?,
            None => ctl.db.create(keys::SETTINGS, &s).await?,
        };
        if written {
            if s != before {
                events::emit(
                    &ctl.db,
                    "settings",
                    "changed",
                    serde_json::to_string(&patch).unwrap_or_default(),
                )
                .await;
            }
            ctl.wake.notify_one();
            return Ok(Json(s));
        }
    }
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = [Token]), (status = 401, body = ErrorBody)))]
async fn tokens(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<Token>>> {
    let mut list: Vec<Token> = ctl
        .db
        .list::<TokenRecord>(keys::TOKENS)
        .await?
        .into_iter()
        .map(|t| Token {
            name: t.value.name,
            role: t.value.role,
            created_unix_ms: t.value.created_unix_ms,
            secret: None,
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(list))
}

/// Makes a token; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = TokenCreate,
    responses((status = 201, body = Token), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_token(
    State(ctl): State<Arc<Ctl>>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<Token>)> {
    let req: TokenCreate = body(&bytes)?;
    validate::name("name", &req.name)?;
    let secret = auth::new_secret()
        .map_err(|e| ApiError::Unavailable(format!("reading /dev/urandom: {e}")))?;
    if !auth::create(&ctl.db, &req.name, req.role, &secret).await? {
        return Err(ApiError::conflict(
            Some("name"),
            format!("token {:?} exists", req.name),
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(Token {
            name: req.name,
            role: req.role,
            created_unix_ms: crate::model::now_ms(),
            secret: Some(secret),
        }),
    ))
}

/// Deletes a token; not the caller's own, nor the last admin token (nobody could change
/// anything again).
#[utoipa::path(delete, path = "/v1/tokens/{name}", tag = "tokens", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_token(
    State(ctl): State<Arc<Ctl>>,
    axum::Extension(caller): axum::Extension<super::Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if caller.0.name == name {
        return Err(ApiError::conflict(
            None,
            format!("token {name:?} is the one this request uses"),
        ));
    }
    let tokens = ctl.db.list::<TokenRecord>(keys::TOKENS).await?;
    let admins: Vec<&str> = tokens
        .iter()
        .filter(|t| t.value.role == triad_api::v1::Role::Admin)
        .map(|t| t.value.name.as_str())
        .collect();
    if admins == [name.as_str()] {
        return Err(ApiError::conflict(
            None,
            format!("token {name:?} is the last admin token"),
        ));
    }
    if !auth::delete(&ctl.db, &name).await? {
        return Err(ApiError::NotFound(format!("no token {name:?}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A storage pool, over the nodes that have it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Pool {
    pub name: String,
    /// `local`, `smp` or `ceph`.
    pub kind: String,
    /// Local pools are a node's own; the others are one pool the nodes share.
    pub shared: bool,
    pub nodes: Vec<String>,
}

pub async fn pool_list(ctl: &Ctl) -> ApiResult<Vec<Pool>> {
    let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
    for (node, status) in ctl.db.list_keyed::<NodeStatus>(keys::NODE_STATUS).await? {
        for p in status.value.pools {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let entry = pools.entry(p.name.clone()).or_insert_with(|| Pool {
                name: p.name.clone(),
                shared: kind != "local",
                kind,
                nodes: Vec::new(),
            });
            entry.nodes.push(node.clone());
        }
    }
    Ok(pools.into_values().collect())
}

#[utoipa::path(get, path = "/v1/pools", tag = "storage",
    responses((status = 200, body = [Pool]), (status = 401, body = ErrorBody)))]
async fn pools(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<Pool>>> {
    Ok(Json(pool_list(&ctl).await?))
}

fn group_view(record: AffinityGroupRecord, vms: &[VmRecord]) -> AffinityGroup {
    let members = vms
        .iter()
        .filter(|vm| vm.request.affinity_groups.contains(&record.spec.name))
        .map(|vm| vm.id.clone())
        .collect();
    AffinityGroup {
        name: record.spec.name,
        rule: record.spec.rule,
        strength: record.spec.strength,
        vms: members,
    }
}

async fn vm_records(ctl: &Ctl) -> ApiResult<Vec<VmRecord>> {
    Ok(ctl.db.values::<VmRecord>(keys::VMS).await?)
}

#[utoipa::path(get, path = "/v1/affinity-groups", tag = "affinity",
    responses((status = 200, body = [AffinityGroup]), (status = 401, body = ErrorBody)))]
async fn groups(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<AffinityGroup>>> {
    let vms = vm_records(&ctl).await?;
    Ok(Json(
        ctl.db
            .list::<AffinityGroupRecord>(keys::AFFINITY_GROUPS)
            .await?
            .into_iter()
            .map(|g| group_view(g.value, &vms))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/affinity-groups/{name}", tag = "affinity", params(("name" = String, Path)),
    responses((status = 200, body = AffinityGroup), (status = 404, body = ErrorBody)))]
async fn group(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
) -> ApiResult<Json<AffinityGroup>> {
    let record = ctl
        .db
        .get::<AffinityGroupRecord>(&format!("{}{name}", keys::AFFINITY_GROUPS))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no affinity group {name:?}")))?;
    Ok(Json(group_view(record.value, &vm_records(&ctl).await?)))
}

#[utoipa::path(post, path = "/v1/affinity-groups", tag = "affinity", request_body = AffinityGroupCreate,
    responses((status = 201, body = AffinityGroup), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_group(
    State(ctl): State<Arc<Ctl>>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<AffinityGroup>)> {
    let spec: AffinityGroupCreate = body(&bytes)?;
    validate::name("name", &spec.name)?;
    if let AffinityRule::NodeAffinity { nodes } | AffinityRule::NodeAntiAffinity { nodes } =
        &spec.rule
    {
        if nodes.is_empty() {
            return Err(ApiError::bad("rule.nodes", "name at least one node"));
        }
        for (i, node) in nodes.iter().enumerate() {
            if ctl
                .db
                .get::<NodeRecord>(&format!("{}{node}", keys::NODES))
                .await?
                .is_none()
            {
                return Err(ApiError::unprocessable(
                    format!("rule.nodes[{i}]"),
                    format!("no node {node:?}"),
                ));
            }
        }
    }
    let record = AffinityGroupRecord { spec };
    if !ctl
        .db
        .create(
            &format!("{}{}", keys::AFFINITY_GROUPS, record.spec.name),
            &record,
        )
        .await?
    {
        return Err(ApiError::conflict(
            Some("name"),
            format!("affinity group {:?} exists", record.spec.name),
        ));
    }
    Ok((StatusCode::CREATED, Json(group_view(record, &[]))))
}

#[utoipa::path(delete, path = "/v1/affinity-groups/{name}", tag = "affinity", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_group(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let key = format!("{}{name}", keys::AFFINITY_GROUPS);
    if ctl.db.get::<AffinityGroupRecord>(&key).await?.is_none() {
        return Err(ApiError::NotFound(format!("no affinity group {name:?}")));
    }
    let members = vm_records(&ctl)
        .await?
        .into_iter()
        .filter(|vm| vm.request.affinity_groups.contains(&name))
        .count();
    if members > 0 {
        return Err(ApiError::conflict(
            None,
            format!("affinity group {name:?} has {members} VMs"),
        ));
    }
    ctl.db.delete(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?after=SEQ&resource=PREFIX&limit=N`: events after SEQ, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("after" = Option<i64>, Query, minimum = 0), ("resource" = Option<String>, Query, description = "only resources starting with this, e.g. vm/ or vm/UUID"),
        ("limit" = Option<i64>, Query, minimum = 0, maximum = 10000)),
    responses((status = 200, body = [Event]), (status = 400, body = ErrorBody)))]
async fn list_events(
    State(ctl): State<Arc<Ctl>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Vec<Event>>> {
    let params = query(raw.as_deref(), &["after", "resource", "limit"])?;
    let after = number(&params, "after", i64::MAX as u64)?.unwrap_or(0);
    let limit = usize::try_from(number(&params, "limit", 10_000)?.unwrap_or(1000)).unwrap_or(1000);
    let mut list: Vec<Event> = events::after(&ctl.db, keys::EVENTS, after, usize::MAX).await?;
    if let Some(prefix) = params.get("resource") {
        list.retain(|e| e.resource.starts_with(prefix.as_str()));
    }
    list.truncate(limit);
    Ok(Json(list))
}

#[utoipa::path(get, path = "/v1/audit", tag = "events",
    params(("after" = Option<i64>, Query, minimum = 0), ("limit" = Option<i64>, Query, minimum = 0, maximum = 10000)),
    responses((status = 200, body = [AuditRecord]), (status = 400, body = ErrorBody)))]
async fn audit(
    State(ctl): State<Arc<Ctl>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    let params = query(raw.as_deref(), &["after", "limit"])?;
    let after = number(&params, "after", i64::MAX as u64)?.unwrap_or(0);
    let limit = usize::try_from(number(&params, "limit", 10_000)?.unwrap_or(1000)).unwrap_or(1000);
    Ok(Json(
        events::after(&ctl.db, keys::AUDIT, after, limit).await?,
    ))
}

#[utoipa::path(get, path = "/v1/operations/{id}", tag = "events", params(("id" = String, Path)),
    responses((status = 200, body = Operation), (status = 404, body = ErrorBody)))]
async fn operation(
    State(ctl): State<Arc<Ctl>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    ctl.db
        .get::<Operation>(&crate::operations::key(&id))
        .await?
        .map(|o| Json(o.value))
        .ok_or_else(|| ApiError::NotFound(format!("no operation {id:?}")))
}

/// `POST /v1/backup`: every key of the store as of one revision, with the cluster's CA (admin
/// only: it holds secrets). `triad-controller backup` keeps it in a file.
#[utoipa::path(post, path = "/v1/backup", tag = "cluster",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn backup(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<crate::backup::Backup>> {
    let ca = ctl.tls.as_ref().map(|tls| crate::backup::CaFiles {
        cert_pem: tls.ca.cert_pem().to_owned(),
        key_pem: tls.ca.key_pem(),
    });
    let key = Some(ctl.store_key.hex().to_owned());
    crate::backup::take(ctl.db.store.as_ref(), ctl.store_kind, ca, key)
        .await
        .map(Json)
        .map_err(|e| ApiError::Unavailable(format!("taking the backup: {e}")))
}
