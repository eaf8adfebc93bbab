//! Networks and security groups: kept in the store, made on every node by the reconciler.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use triad_api::net::{Remote, L3};
use triad_api::v1::{Network, NetworkCreate, NetworkL2, SecurityGroup, SecurityGroupCreate};
use triad_api::ErrorBody;

use super::{body, ApiError, ApiResult};
use crate::model::{keys, NetworkRecord, NodeStatus, SecurityGroupRecord, VmRecord};
use crate::{events, validate, Ctl};

pub fn routes() -> Router<Arc<Ctl>> {
    Router::new()
        .route("/v1/networks", get(list).post(create))
        .route("/v1/networks/{name}", get(show).delete(remove))
        .route("/v1/security-groups", get(groups).post(create_group))
        .route(
            "/v1/security-groups/{name}",
            get(group).put(replace_group).delete(remove_group),
        )
}

fn check_interface(field: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            field,
            format!("{name:?} is not an interface name"),
        ))
    }
}

/// Checks `spec` alone and against the other networks.
fn check(spec: &NetworkCreate, others: &[NetworkRecord]) -> ApiResult<()> {
    validate::name("name", &spec.name)?;
    if let Some(mtu) = spec.mtu {
        validate::range("mtu", mtu, 576, 9000)?;
    }
    match &spec.l2 {
        NetworkL2::Novlan { uplink } => {
            if let Some(uplink) = uplink {
                check_interface("l2.uplink", uplink)?;
            }
        }
        NetworkL2::Vxlan { vni, underlay } => {
            validate::range("l2.vni", *vni, 1, 0xff_ffff)?;
            check_interface("l2.underlay", underlay)?;
        }
        NetworkL2::Vlan { vid, uplink } => {
            validate::range("l2.vid", *vid, 1, 4094)?;
            check_interface("l2.uplink", uplink)?;
        }
    }
    if let Some(l3) = &spec.l3 {
        l3.check().map_err(|m| ApiError::bad("l3", m))?;
    }
    for other in others
        .iter()
        .map(|o| &o.spec)
        .filter(|o| o.name != spec.name)
    {
        let clash = match (&spec.l2, &other.l2) {
            (NetworkL2::Vxlan { vni, .. }, NetworkL2::Vxlan { vni: v, .. }) if vni == v => {
                Some(("l2.vni", format!("VNI {vni} is network {:?}'s", other.name)))
            }
            (NetworkL2::Vlan { vid, uplink }, NetworkL2::Vlan { vid: v, uplink: u })
                if vid == v && uplink == u =>
            {
                Some((
                    "l2.vid",
                    format!("VLAN {vid} on {uplink} is network {:?}'s", other.name),
                ))
            }
            (NetworkL2::Novlan { uplink: Some(a) }, NetworkL2::Novlan { uplink: Some(b) })
                if a == b =>
            {
                Some((
                    "l2.uplink",
                    format!("uplink {a} carries network {:?}", other.name),
                ))
            }
            _ => None,
        };
        if let Some((field, message)) = clash {
            return Err(ApiError::conflict(Some(field), message));
        }
        if let (Some(a), Some(b)) = (&spec.l3, &other.l3) {
            if a.cidr.overlaps(&b.cidr) {
                return Err(ApiError::conflict(
                    Some("l3.cidr"),
                    format!("{} overlaps {} of network {:?}", a.cidr, b.cidr, other.name),
                ));
            }
        }
    }
    Ok(())
}

/// The network as the API shows it: per node, whether its netd has it.
async fn view(ctl: &Ctl, record: NetworkRecord) -> ApiResult<Network> {
    let mut nodes = BTreeMap::new();
    for (node, status) in ctl.db.list_keyed::<NodeStatus>(keys::NODE_STATUS).await? {
        let state = if status.value.networks.contains(&record.spec.name) {
            if record.deleting { "deleting" } else { "ready" }.to_owned()
        } else if record.deleting {
            "deleted".to_owned()
        } else {
            ctl.realize_errors
                .get(&format!("network/{}", record.spec.name), &node)
                .unwrap_or_else(|| "pending".to_owned())
        };
        nodes.insert(node, state);
    }
    let allocated = ctl
        .db
        .keys(&format!("{}{}/", keys::IPS, record.spec.name))
        .await?
        .len();
    Ok(Network {
        name: record.spec.name,
        l2: record.spec.l2,
        l3: record.spec.l3,
        mtu: record.spec.mtu,
        nodes,
        allocated,
    })
}

#[utoipa::path(get, path = "/v1/networks", tag = "networks",
    responses((status = 200, body = [Network]), (status = 401, body = ErrorBody)))]
async fn list(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<Network>>> {
    let mut out = Vec::new();
    for n in ctl.db.list::<NetworkRecord>(keys::NETWORKS).await? {
        out.push(view(&ctl, n.value).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/networks/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
async fn show(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<Json<Network>> {
    let record = ctl
        .db
        .get::<NetworkRecord>(&format!("{}{name}", keys::NETWORKS))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no network {name:?}")))?;
    Ok(Json(view(&ctl, record.value).await?))
}

#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = NetworkCreate,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create(
    State(ctl): State<Arc<Ctl>>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<Network>)> {
    let spec: NetworkCreate = body(&bytes)?;
    let others: Vec<NetworkRecord> = ctl.db.values::<NetworkRecord>(keys::NETWORKS).await?;
    check(&spec, &others)?;
    let record = NetworkRecord {
        spec,
        deleting: false,
    };
    if !ctl
        .db
        .create(&format!("{}{}", keys::NETWORKS, record.spec.name), &record)
        .await?
    {
        return Err(ApiError::conflict(
            Some("name"),
            format!("network {:?} exists", record.spec.name),
        ));
    }
    events::emit(
        &ctl.db,
        &format!("network/{}", record.spec.name),
        "created",
        "made on every node by the reconciler",
    )
    .await;
    ctl.wake.notify_one();
    Ok((StatusCode::CREATED, Json(view(&ctl, record).await?)))
}

#[utoipa::path(delete, path = "/v1/networks/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 202), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let users = ctl
        .db
        .list::<VmRecord>(keys::VMS)
        .await?
        .into_iter()
        .filter(|vm| vm.value.nics.iter().any(|n| n.network == name))
        .count();
    if users > 0 {
        return Err(ApiError::conflict(
            None,
            format!("network {name:?} has {users} VMs on it"),
        ));
    }
    let eips = ctl
        .db
        .values::<crate::model::EipRecord>(keys::EIPS)
        .await?
        .into_iter()
        .filter(|e| e.network == name)
        .count();
    if eips > 0 {
        return Err(ApiError::conflict(
            None,
            format!("network {name:?} has {eips} EIPs from it"),
        ));
    }
    let marked = ctl
        .db
        .modify::<NetworkRecord, ApiError>(&format!("{}{name}", keys::NETWORKS), |n| {
            n.deleting = true;
            Ok(())
        })
        .await?;
    if marked.is_none() {
        return Err(ApiError::NotFound(format!("no network {name:?}")));
    }
    events::emit(
        &ctl.db,
        &format!("network/{name}"),
        "deleting",
        "the nodes drop it, then it goes",
    )
    .await;
    ctl.wake.notify_one();
    Ok(StatusCode::ACCEPTED)
}

/// The addresses of the VMs in group `name`.
pub fn members(name: &str, vms: &[VmRecord]) -> Vec<std::net::Ipv4Addr> {
    let mut out: Vec<_> = vms
        .iter()
        .flat_map(|vm| vm.nics.iter())
        .filter(|nic| nic.security_groups.iter().any(|g| g == name))
        .filter_map(|nic| nic.ip)
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn check_group(ctl: &Ctl, spec: &SecurityGroupCreate) -> ApiResult<()> {
    validate::name("name", &spec.name)?;
    if spec.rules.len() > 1000 {
        return Err(ApiError::bad(
            "rules",
            format!("{} rules; at most 1000", spec.rules.len()),
        ));
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        if let Some(ports) = rule.ports {
            if ports.from > ports.to || ports.from == 0 {
                return Err(ApiError::bad(
                    format!("rules[{i}].ports"),
                    "want 1 <= from <= to",
                ));
            }
        }
        if let Some(Remote::Group(g)) = &rule.remote {
            if g != &spec.name
                && ctl
                    .db
                    .get::<SecurityGroupRecord>(&format!("{}{g}", keys::SECURITY_GROUPS))
                    .await?
                    .is_none()
            {
                return Err(ApiError::unprocessable(
                    format!("rules[{i}].remote"),
                    format!("no security group {g:?}"),
                ));
            }
        }
    }
    Ok(())
}

async fn group_view(ctl: &Ctl, record: SecurityGroupRecord) -> ApiResult<SecurityGroup> {
    let vms: Vec<VmRecord> = ctl.db.values::<VmRecord>(keys::VMS).await?;
    Ok(SecurityGroup {
        members: members(&record.spec.name, &vms),
        name: record.spec.name,
        rules: record.spec.rules,
    })
}

#[utoipa::path(get, path = "/v1/security-groups", tag = "networks",
    responses((status = 200, body = [SecurityGroup]), (status = 401, body = ErrorBody)))]
async fn groups(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<SecurityGroup>>> {
    let mut out = Vec::new();
    for g in ctl
        .db
        .list::<SecurityGroupRecord>(keys::SECURITY_GROUPS)
        .await?
    {
        out.push(group_view(&ctl, g.value).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/security-groups/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 200, body = SecurityGroup), (status = 404, body = ErrorBody)))]
async fn group(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
) -> ApiResult<Json<SecurityGroup>> {
    let record = ctl
        .db
        .get::<SecurityGroupRecord>(&format!("{}{name}", keys::SECURITY_GROUPS))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no security group {name:?}")))?;
    Ok(Json(group_view(&ctl, record.value).await?))
}

#[utoipa::path(post, path = "/v1/security-groups", tag = "networks", request_body = SecurityGroupCreate,
    responses((status = 201, body = SecurityGroup), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_group(
    State(ctl): State<Arc<Ctl>>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<SecurityGroup>)> {
    let spec: SecurityGroupCreate = body(&bytes)?;
    check_group(&ctl, &spec).await?;
    let record = SecurityGroupRecord {
        spec,
        deleting: false,
    };
    if !ctl
        .db
        .create(
            &format!("{}{}", keys::SECURITY_GROUPS, record.spec.name),
            &record,
        )
        .await?
    {
        return Err(ApiError::conflict(
            Some("name"),
            format!("security group {:?} exists", record.spec.name),
        ));
    }
    events::emit(
        &ctl.db,
        &format!("security-group/{}", record.spec.name),
        "created",
        format!("{} rules", record.spec.rules.len()),
    )
    .await;
    ctl.wake.notify_one();
    Ok((StatusCode::CREATED, Json(group_view(&ctl, record).await?)))
}

/// Replaces the group's rules; the name in the body must be the path's.
#[utoipa::path(put, path = "/v1/security-groups/{name}", tag = "networks", params(("name" = String, Path)),
    request_body = SecurityGroupCreate,
    responses((status = 200, body = SecurityGroup), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn replace_group(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<SecurityGroup>> {
    let spec: SecurityGroupCreate = body(&bytes)?;
    if spec.name != name {
        return Err(ApiError::bad(
            "name",
            format!("the body names {:?}, the path {name:?}", spec.name),
        ));
    }
    check_group(&ctl, &spec).await?;
    let changed = ctl
        .db
        .modify::<SecurityGroupRecord, ApiError>(&format!("{}{name}", keys::SECURITY_GROUPS), |g| {
            if g.deleting {
                return Err(ApiError::conflict(
                    None,
                    format!("security group {name:?} is being deleted"),
                ));
            }
            g.spec = spec.clone();
            Ok(())
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no security group {name:?}")))?;
    events::emit(
        &ctl.db,
        &format!("security-group/{name}"),
        "changed",
        format!("{} rules", spec.rules.len()),
    )
    .await;
    ctl.wake.notify_one();
    Ok(Json(group_view(&ctl, changed).await?))
}

#[utoipa::path(delete, path = "/v1/security-groups/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 202), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_group(
    State(ctl): State<Arc<Ctl>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let vms: Vec<VmRecord> = ctl.db.values::<VmRecord>(keys::VMS).await?;
    if vms
        .iter()
        .any(|vm| vm.nics.iter().any(|n| n.security_groups.contains(&name)))
    {
        return Err(ApiError::conflict(
            None,
            format!("security group {name:?} is on VMs' NICs"),
        ));
    }
    let others = ctl
        .db
        .list::<SecurityGroupRecord>(keys::SECURITY_GROUPS)
        .await?;
    if let Some(user) = others.iter().find(|g| {
        g.value.spec.name != name
            && g.value
                .spec
                .rules
                .iter()
                .any(|r| matches!(&r.remote, Some(Remote::Group(x)) if *x == name))
    }) {
        return Err(ApiError::conflict(
            None,
            format!(
                "security group {:?} names it in a rule",
                user.value.spec.name
            ),
        ));
    }
    let marked = ctl
        .db
        .modify::<SecurityGroupRecord, ApiError>(&format!("{}{name}", keys::SECURITY_GROUPS), |g| {
            g.deleting = true;
            Ok(())
        })
        .await?;
    if marked.is_none() {
        return Err(ApiError::NotFound(format!("no security group {name:?}")));
    }
    ctl.wake.notify_one();
    Ok(StatusCode::ACCEPTED)
}

/// `l3` of network `name`, when it has one.
pub async fn l3_of(ctl: &Ctl, name: &str) -> ApiResult<Option<(NetworkRecord, Option<L3>)>> {
    Ok(ctl
        .db
        .get::<NetworkRecord>(&format!("{}{name}", keys::NETWORKS))
        .await?
        .map(|n| {
            let l3 = n.value.spec.l3.clone();
            (n.value, l3)
        }))
}
