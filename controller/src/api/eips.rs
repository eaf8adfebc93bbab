//! EIPs: a public address of a network mapped 1:1 to a VM's NIC, made by the reconciler on
//! whichever node the VM runs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use triad_api::v1::{Eip, EipCreate};
use triad_api::ErrorBody;

use super::networks::l3_of;
use super::vms::find;
use super::{body, ApiError, ApiResult};
use crate::model::{encode, keys, EipRecord, VmRecord};
use crate::store::{Expect, Txn};
use crate::{events, ipam, validate, Ctl};

pub fn routes() -> Router<Arc<Ctl>> {
    Router::new()
        .route("/v1/eips", get(list).post(create))
        .route("/v1/eips/{name}", get(show).delete(remove))
}

async fn view(ctl: &Ctl, record: EipRecord) -> ApiResult<Eip> {
    let node = ctl
        .db
        .get::<VmRecord>(&format!("{}{}", keys::VMS, record.vm))
        .await?
        .and_then(|vm| vm.value.node);
    Ok(Eip {
        name: record.name,
        network: record.network,
        ip: record.ip,
        vm: record.vm,
        nic: record.nic,
        node,
    })
}

#[utoipa::path(get, path = "/v1/eips", tag = "networks",
    responses((status = 200, body = [Eip]), (status = 401, body = ErrorBody)))]
async fn list(State(ctl): State<Arc<Ctl>>) -> ApiResult<Json<Vec<Eip>>> {
    let mut out = Vec::new();
    for record in ctl.db.values::<EipRecord>(keys::EIPS).await? {
        out.push(view(&ctl, record).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/eips/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 200, body = Eip), (status = 404, body = ErrorBody)))]
async fn show(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<Json<Eip>> {
    let record = ctl
        .db
        .get::<EipRecord>(&format!("{}{name}", keys::EIPS))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no EIP {name:?}")))?;
    Ok(Json(view(&ctl, record.value).await?))
}

/// Takes the address (given, or the network's first free one) for the EIP in the same
/// transaction that records it.
#[utoipa::path(post, path = "/v1/eips", tag = "networks", request_body = EipCreate,
    responses((status = 201, body = Eip), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(State(ctl): State<Arc<Ctl>>, bytes: Bytes) -> ApiResult<(StatusCode, Json<Eip>)> {
    let req: EipCreate = body(&bytes)?;
    validate::name("name", &req.name)?;
    let Some((network, Some(l3))) = l3_of(&ctl, &req.network).await? else {
        return Err(ApiError::unprocessable(
            "network",
            format!("no network {:?} with addressing", req.network),
        ));
    };
    if network.deleting {
        return Err(ApiError::unprocessable(
            "network",
            format!("network {:?} is being deleted", req.network),
        ));
    }
    let vm = find(&ctl, &req.vm)
        .await
        .map_err(|_| ApiError::unprocessable("vm", format!("no VM {:?}", req.vm)))?
        .value;
    let nic_id = req.nic.clone().unwrap_or_else(|| "eth0".into());
    let nic = vm.nics.iter().find(|n| n.id == nic_id).ok_or_else(|| {
        ApiError::unprocessable("nic", format!("VM {} has no NIC {nic_id}", vm.id))
    })?;
    if nic.network == req.network {
        return Err(ApiError::unprocessable(
            "network",
            format!("NIC {nic_id} is on {} itself", req.network),
        ));
    }
    if nic.ip.is_none() {
        return Err(ApiError::unprocessable(
            "nic",
            format!("NIC {nic_id} has no address to map"),
        ));
    }
    let taken_prefix = format!("{}{}/", keys::IPS, req.network);
    let ip = match req.ip {
        Some(ip) if !ipam::assignable(&l3, ip) => {
            return Err(ApiError::unprocessable(
                "ip",
                format!("{ip} is not an address {} gives out", l3.cidr),
            ));
        }
        Some(ip) => ip,
        None => {
            let taken = ctl
                .db
                .keys(&taken_prefix)
                .await?
                .iter()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            ipam::allocate(&l3, &taken).ok_or_else(|| {
                ApiError::unprocessable(
                    "network",
                    format!("network {:?} has no address left", req.network),
                )
            })?
        }
    };
    let record = EipRecord {
        name: req.name.clone(),
        network: req.network.clone(),
        ip,
        vm: vm.id.clone(),
        nic: nic_id,
        deleting: false,
    };
    let key = format!("{}{}", keys::EIPS, req.name);
    let ip_key = keys::ip(&req.network, ip);
    let txn = Txn::new()
        .expect(&key, Expect::Absent)
        .expect(&ip_key, Expect::Absent)
        .put(&key, encode(&record))
        .put(&ip_key, encode(&format!("eip/{}", req.name)));
    if ctl.db.txn(txn).await?.is_none() {
        if ctl.db.get::<EipRecord>(&key).await?.is_some() {
            return Err(ApiError::conflict(
                Some("name"),
                format!("EIP {:?} exists", req.name),
            ));
        }
        return Err(ApiError::conflict(Some("ip"), format!("{ip} is in use")));
    }
    events::emit(
        &ctl.db,
        &format!("eip/{}", req.name),
        "created",
        format!("{ip} to VM {} {}", vm.id, record.nic),
    )
    .await;
    ctl.wake.notify_one();
    Ok((StatusCode::CREATED, Json(view(&ctl, record).await?)))
}

#[utoipa::path(delete, path = "/v1/eips/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 202), (status = 404, body = ErrorBody)))]
async fn remove(State(ctl): State<Arc<Ctl>>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let marked = ctl
        .db
        .modify::<EipRecord, ApiError>(&format!("{}{name}", keys::EIPS), |e| {
            e.deleting = true;
            Ok(())
        })
        .await?;
    if marked.is_none() {
        return Err(ApiError::NotFound(format!("no EIP {name:?}")));
    }
    ctl.wake.notify_one();
    Ok(StatusCode::ACCEPTED)
}
