//! VMs: create (placed and made by the reconcilers), list, show, start, stop, reboot,
//! destroy, HA level, why it is where it is, and its console.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use triad_api::hostd::{PowerAction, StateRequest};
use triad_api::net::Mac;
use triad_api::v1::{
    Accepted, ImageState, Offering, PlacementReport, PowerState, Vm, VmCreate, VmDisk, VmHa, VmNic,
    VmState, VmStop,
};
use triad_api::ErrorBody;

use super::networks::l3_of;
use super::{body, number, query, ApiError, ApiResult};
use crate::model::{
    encode, keys, now_ms, AffinityGroupRecord, ImageRecord, SecurityGroupRecord, VmRecord,
    VolumeRecord,
};
use crate::store::{Expect, Txn};
use crate::{events, ipam, operations, validate, Ctl};

/// The offering of a VM that names none.
pub const DEFAULT_OFFERING: &str = "1C2G";

pub fn routes() -> Router<Arc<Ctl>> {
    Router::new()
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{id}", get(show).delete(destroy))
        .route("/v1/vms/{id}/start", post(start))
        .route("/v1/vms/{id}/stop", post(stop))
        .route("/v1/vms/{id}/reboot", post(reboot))
        .route("/v1/vms/{id}/ha", put(set_ha))
        .route("/v1/vms/{id}/placement", get(placement))
        .route("/v1/vms/{id}/console", get(console))
}

/// A random (version 4) UUID.
fn uuid() -> ApiResult<String> {
    let hex = crate::auth::new_secret()
        .map_err(|e| ApiError::Unavailable(format!("reading /dev/urandom: {e}")))?;
    let mut b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// VM `id`, or the one VM named `id`.
pub async fn find(ctl: &Ctl, id: &str) -> ApiResult<crate::model::Versioned<VmRecord>> {
    if let Some(vm) = ctl
        .db
        .get::<VmRecord>(&format!("{}{id}", keys::VMS))
        .await?
    {
        return Ok(vm);
    }
    let mut named: Vec<_> = ctl
        .db
        .list::<VmRecord>(keys::VMS)
        .await?
        .into_iter()
        .filter(|vm| vm.value.request.name == id)
        .collect();
    match named.len() {
        1 => Ok(named.remove(0)),
        0 => Err(ApiError::NotFound(format!("no VM {id:?}"))),
        n => Err(ApiError::conflict(
            None,
            format!("{n} VMs are named {id:?}: use the id"),
        )),
    }
}

#[utoipa::path(get, path = "/v1/vms", tag = "vms",
    params(("node" = Option<String>, Query), ("state" = Option<VmState>, Query), ("name" = Option<String>, Query)),
    responses((status = 200, body = [Vm]), (status = 400, body = ErrorBody)))]
async fn list(State(ctl): State<Arc<Ctl>>, RawQuery(raw): RawQuery) -> ApiResult<Json<Vec<Vm>>> {
    let params = query(raw.as_deref(), &["node", "state", "name"])?;
    let state = params
        .get("state")
        .map(|s| {
            serde_json::from_value::<VmState>(serde_json::Value::String(s.clone()))
                .map_err(|_| ApiError::bad("state", format!("{s:?} is not a VM state")))
        })
        .transpose()?;
    let mut vms: Vec<Vm> = ctl
        .db
        .list::<VmRecord>(keys::VMS)
        .await?
        .into_iter()
        .map(|v| v.value.view())
        .filter(|vm| {
            params
                .get("node")
                .is_none_or(|n| vm.node.as_ref() == Some(n))
        })
        .filter(|vm| state.is_none_or(|s| vm.state == s))
        .filter(|vm| params.get("name").is_none_or(|n| &vm.name == n))
        .collect();
    vms.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
    Ok(Json(vms))
}

#[utoipa::path(get, path = "/v1/vms/{id}", tag = "vms", params(("id" = String, Path, description = "the VM's id, or its name when only one VM has it")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
async fn show(State(ctl): State<Arc<Ctl>>, Path(id): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(find(&ctl, &id).await?.value.view()))
}

/// Checks the request against what exists, and works out the VM's size, boot and disks.
async fn prepare(
    ctl: &Ctl,
    req: &VmCreate,
) -> ApiResult<(VmRecord, Vec<crate::model::Versioned<VolumeRecord>>)> {
    validate::hostname("name", &req.name)?;
    let offering_name = req
        .offering
        .clone()
        .unwrap_or_else(|| DEFAULT_OFFERING.to_owned());
    let offering = ctl
        .db
        .get::<Offering>(&format!("{}{offering_name}", keys::OFFERINGS))
        .await?
        .ok_or_else(|| {
            ApiError::unprocessable("offering", format!("no offering {offering_name:?}"))
        })?
        .value;
    let vcpus = req.vcpus.unwrap_or(offering.vcpus);
    let memory_mib = req.memory_mib.unwrap_or(offering.memory_mib);
    validate::range("vcpus", vcpus, 1, 254)?;
    validate::range("memory_mib", memory_mib, 16, 16 << 20)?;
    let image = ctl
        .db
        .get::<ImageRecord>(&format!("{}{}", keys::IMAGES, req.image))
        .await?
        .ok_or_else(|| ApiError::unprocessable("image", format!("no image {:?}", req.image)))?
        .value;
    if image.state != ImageState::Ready {
        return Err(ApiError::unprocessable(
            "image",
            format!("image {:?} is {:?}, not ready", req.image, image.state),
        ));
    }
    let root_size = req.root_size_bytes.unwrap_or(image.size_bytes.max(1 << 20));
    if root_size < image.size_bytes {
        return Err(ApiError::unprocessable(
            "root_size_bytes",
            format!("{root_size} is less than the image's {}", image.size_bytes),
        ));
    }
    validate::range("root_size_bytes", root_size, 1 << 20, 1 << 50)?;
    if req.nics.len() > 8 {
        return Err(ApiError::bad("nics", "at most 8 NICs"));
    }
    if req.ssh_keys.len() > 16 {
        return Err(ApiError::bad("ssh_keys", "at most 16 keys"));
    }
    if req.user_data.as_ref().is_some_and(|u| u.len() > 64 << 10) {
        return Err(ApiError::bad("user_data", "at most 64 KiB"));
    }
    let extra = req.cmdline.clone().unwrap_or_default();
    if extra.len() > 2048 {
        return Err(ApiError::bad("cmdline", "at most 2048 bytes"));
    }
    for (i, nic) in req.nics.iter().enumerate() {
        let network = l3_of(ctl, &nic.network)
            .await?
            .filter(|(n, _)| !n.deleting)
            .ok_or_else(|| {
                ApiError::unprocessable(
                    format!("nics[{i}].network"),
                    format!("no network {:?}", nic.network),
                )
            })?;
        if let Some(ip) = nic.ip {
            let Some(l3) = &network.1 else {
                return Err(ApiError::unprocessable(
                    format!("nics[{i}].ip"),
                    format!("network {:?} has no addressing", nic.network),
                ));
            };
            if !ipam::assignable(l3, ip) {
                return Err(ApiError::unprocessable(
                    format!("nics[{i}].ip"),
                    format!("{ip} is not an address {} gives VMs", l3.cidr),
                ));
            }
        }
        if let Some(mac) = nic.mac {
            if mac.0[0] & 1 == 1 {
                return Err(ApiError::bad(format!("nics[{i}].mac"), "a multicast MAC"));
            }
        }
        for (j, group) in nic.security_groups.iter().enumerate() {
            let found = ctl
                .db
                .get::<SecurityGroupRecord>(&format!("{}{group}", keys::SECURITY_GROUPS))
                .await?;
            if found.is_none_or(|g| g.value.deleting) {
                return Err(ApiError::unprocessable(
                    format!("nics[{i}].security_groups[{j}]"),
                    format!("no security group {group:?}"),
                ));
            }
        }
    }
    for (i, group) in req.affinity_groups.iter().enumerate() {
        if ctl
            .db
            .get::<AffinityGroupRecord>(&format!("{}{group}", keys::AFFINITY_GROUPS))
            .await?
            .is_none()
        {
            return Err(ApiError::unprocessable(
                format!("affinity_groups[{i}]"),
                format!("no affinity group {group:?}"),
            ));
        }
    }
    let mut volumes = Vec::new();
    let mut disks = vec![VmDisk {
        id: "root".into(),
        pool: image.spec.pool.clone(),
        volume: String::new(),
        size_bytes: root_size,
    }];
    let unique: BTreeSet<&String> = req.volumes.iter().collect();
    if unique.len() != req.volumes.len() {
        return Err(ApiError::bad("volumes", "a volume is listed twice"));
    }
    if req.volumes.len() + 1 > triad_api::hostd::MAX_DISKS {
        return Err(ApiError::bad(
            "volumes",
            format!("at most {} disks in all", triad_api::hostd::MAX_DISKS),
        ));
    }
    for (i, name) in req.volumes.iter().enumerate() {
        let volume = ctl
            .db
            .get::<VolumeRecord>(&format!("{}{name}", keys::VOLUMES))
            .await?
            .ok_or_else(|| {
                ApiError::unprocessable(format!("volumes[{i}]"), format!("no volume {name:?}"))
            })?;
        if let Some(vm) = &volume.value.vm {
            return Err(ApiError::conflict(
                Some(&format!("volumes[{i}]")),
                format!("volume {name:?} is attached to VM {vm}"),
            ));
        }
        disks.push(VmDisk {
            id: name.clone(),
            pool: volume.value.spec.pool.clone(),
            volume: volume.value.volume.clone(),
            size_bytes: volume.value.spec.size_bytes,
        });
        volumes.push(volume);
    }
    // A VM no node could ever hold is refused now rather than left pending for ever.
    let nodes = ctl.nodes().await?;
    let settings = super::cluster::current_settings(ctl).await?;
    let capacities: Vec<(f64, f64)> = nodes
        .iter()
        .filter(|n| n.cpus > 0)
        .map(|n| crate::scheduler::capacity(&n.into(), &settings))
        .collect();
    if !capacities.is_empty() {
        let max_cpus = capacities.iter().map(|c| c.0).fold(0.0, f64::max);
        if f64::from(vcpus) > max_cpus {
            return Err(ApiError::unprocessable(
                "vcpus",
                format!("{vcpus} vCPUs is more than any node has ({max_cpus:.0} with overcommit)"),
            ));
        }
        let max_mib = capacities.iter().map(|c| c.1).fold(0.0, f64::max);
        if memory_mib as f64 > max_mib {
            return Err(ApiError::unprocessable(
                "memory_mib",
                format!("{memory_mib} MiB is more than any node has ({max_mib:.0} MiB with overcommit, less reserves)"),
            ));
        }
    }
    let cmdline = [image.spec.cmdline.as_str(), extra.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let record = VmRecord {
        id: String::new(),
        request: req.clone(),
        vcpus,
        memory_mib,
        kernel: image.spec.kernel.clone(),
        cmdline,
        disks,
        nics: Vec::new(),
        ha: req.ha,
        power: if req.start {
            PowerState::Running
        } else {
            PowerState::Stopped
        },
        no_restart: false,
        stop_force: false,
        destroy: false,
        state: VmState::Pending,
        node: None,
        moving_off: false,
        generation: 0,
        reason: None,
        operation: None,
        created_unix_ms: now_ms(),
    };
    Ok((record, volumes))
}

/// Makes the VM's record, its addresses and MACs, and the volumes' attachment in one
/// transaction; the scheduler and the VM reconciler take it from there.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = VmCreate,
    responses((status = 202, body = Accepted<Vm>), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    State(ctl): State<Arc<Ctl>>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<Accepted<Vm>>)> {
    let req: VmCreate = body(&bytes)?;
    let (template, volumes) = prepare(&ctl, &req).await?;
    for _attempt in 0..5 {
        let mut vm = template.clone();
        vm.id = uuid()?;
        vm.disks[0].volume = format!("vm-{}", vm.id);
        let mut macs: BTreeSet<Mac> = ctl
            .db
            .keys(keys::MACS)
            .await?
            .iter()
            .filter_map(|m| m.parse().ok())
            .collect();
        let mut txn = Txn::new();
        let mut ips_by_network: HashMap<String, BTreeSet<std::net::Ipv4Addr>> = HashMap::new();
        for (i, nic) in req.nics.iter().enumerate() {
            let (_, l3) = l3_of(&ctl, &nic.network).await?.ok_or_else(|| {
                ApiError::unprocessable(
                    format!("nics[{i}].network"),
                    format!("no network {:?}", nic.network),
                )
            })?;
            let ip = match (&l3, nic.ip) {
                (None, _) => None,
                (Some(_), Some(ip)) => Some(ip),
                (Some(l3), None) => {
                    if !ips_by_network.contains_key(&nic.network) {
                        let prefix = format!("{}{}/", keys::IPS, nic.network);
                        let taken = ctl
                            .db
                            .keys(&prefix)
                            .await?
                            .iter()
                            .filter_map(|ip| ip.parse().ok())
                            .collect();
                        ips_by_network.insert(nic.network.clone(), taken);
                    }
                    let taken = ips_by_network.get_mut(&nic.network).expect("just filled");
                    let ip = ipam::allocate(l3, taken).ok_or_else(|| {
                        ApiError::unprocessable(
                            format!("nics[{i}].network"),
                            format!("network {:?} has no address left", nic.network),
                        )
                    })?;
                    taken.insert(ip);
                    Some(ip)
                }
            };
            if let Some(ip) = ip {
                let key = keys::ip(&nic.network, ip);
                txn = txn.expect(&key, Expect::Absent).put(&key, encode(&vm.id));
            }
            let mac = match nic.mac {
                Some(mac) => mac,
                None => ipam::mac(&macs, || {
                    let hex = crate::auth::new_secret().unwrap_or_default();
                    u32::from_str_radix(hex.get(..8).unwrap_or("0"), 16).unwrap_or(0)
                }),
            };
            if !macs.insert(mac) && nic.mac.is_some() {
                return Err(ApiError::conflict(
                    Some(&format!("nics[{i}].mac")),
                    format!("MAC {mac} is in use"),
                ));
            }
            let key = format!("{}{mac}", keys::MACS);
            txn = txn.expect(&key, Expect::Absent).put(&key, encode(&vm.id));
            vm.nics.push(VmNic {
                id: format!("eth{i}"),
                network: nic.network.clone(),
                mac,
                ip,
                security_groups: nic.security_groups.clone(),
            });
        }
        let operation = operations::new("vm.create", &format!("vm/{}", vm.id))?;
        vm.operation = Some(operation.id.clone());
        for v in &volumes {
            let key = format!("{}{}", keys::VOLUMES, v.value.spec.name);
            let mut attached = v.value.clone();
            attached.vm = Some(vm.id.clone());
            txn = txn
                .expect(&key, Expect::ModRevision(v.revision))
                .put(&key, encode(&attached));
        }
        let key = format!("{}{}", keys::VMS, vm.id);
        txn = txn
            .expect(&key, Expect::Absent)
            .put(&key, encode(&vm))
            .put(operations::key(&operation.id), encode(&operation));
        if ctl.db.txn(txn).await?.is_some() {
            let what = format!(
                "{} ({} vCPUs, {} MiB, image {})",
                vm.request.name, vm.vcpus, vm.memory_mib, vm.request.image
            );
            return Ok(accepted(&ctl, &vm, operation, "created", what).await);
        }
        // Someone took an address, a MAC or a volume meanwhile: one the request named is a
        // conflict; otherwise look again.
        for (i, nic) in req.nics.iter().enumerate() {
            if let Some(ip) = nic.ip {
                let key = keys::ip(&nic.network, ip);
                if ctl.db.exists(&key).await? {
                    return Err(ApiError::conflict(
                        Some(&format!("nics[{i}].ip")),
                        format!("{ip} is in use"),
                    ));
                }
            }
            if let Some(mac) = nic.mac {
                if ctl.db.exists(&format!("{}{mac}", keys::MACS)).await? {
                    return Err(ApiError::conflict(
                        Some(&format!("nics[{i}].mac")),
                        format!("MAC {mac} is in use"),
                    ));
                }
            }
        }
        for (i, v) in volumes.iter().enumerate() {
            let now = ctl
                .db
                .get::<VolumeRecord>(&format!("{}{}", keys::VOLUMES, v.value.spec.name))
                .await?;
            if now.is_none_or(|n| n.value.vm.is_some()) {
                return Err(ApiError::conflict(
                    Some(&format!("volumes[{i}]")),
                    format!("volume {:?} was taken meanwhile", v.value.spec.name),
                ));
            }
        }
    }
    Err(ApiError::Unavailable(
        "the store kept changing under the create; try again".into(),
    ))
}

/// The 202 for a change to `vm` the store took: the event, the reconcilers woken, the answer.
async fn accepted(
    ctl: &Ctl,
    vm: &VmRecord,
    operation: triad_api::v1::Operation,
    kind: &str,
    message: String,
) -> (StatusCode, Json<Accepted<Vm>>) {
    events::emit(&ctl.db, &format!("vm/{}", vm.id), kind, message).await;
    ctl.wake.notify_one();
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            operation,
            resource: vm.view(),
        }),
    )
}

/// Applies `change` to VM `id` with a new operation of `kind`; 202 with both.
async fn act(
    ctl: &Ctl,
    id: &str,
    kind: &str,
    mut change: impl FnMut(&mut VmRecord) -> ApiResult<()>,
) -> ApiResult<(StatusCode, Json<Accepted<Vm>>)> {
    let found = find(ctl, id).await?;
    let vm_id = found.value.id.clone();
    let operation = operations::new(kind, &format!("vm/{vm_id}"))?;
    let key = format!("{}{vm_id}", keys::VMS);
    loop {
        let held = ctl
            .db
            .get::<VmRecord>(&key)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no VM {id:?}")))?;
        let mut vm = held.value.clone();
        if vm.destroy {
            return Err(ApiError::conflict(
                None,
                format!("VM {vm_id} is being destroyed"),
            ));
        }
        change(&mut vm)?;
        if let Some(previous) = &vm.operation {
            if *previous != operation.id {
                operations::finish(
                    &ctl.db,
                    previous,
                    Some(format!("superseded by {kind} {}", operation.id)),
                )
                .await?;
            }
        }
        vm.operation = Some(operation.id.clone());
        let txn = Txn::new()
            .expect(&key, Expect::ModRevision(held.revision))
            .put(&key, encode(&vm))
            .put(operations::key(&operation.id), encode(&operation));
        if ctl.db.txn(txn).await?.is_some() {
            let what = format!("requested ({})", operation.id);
            return Ok(accepted(ctl, &vm, operation, kind, what).await);
        }
    }
}

#[utoipa::path(post, path = "/v1/vms/{id}/start", tag = "vms", params(("id" = String, Path)),
    responses((status = 202, body = Accepted<Vm>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn start(
    State(ctl): State<Arc<Ctl>>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Vm>>)> {
    // A VM still on a node in maintenance has its disks there: it would run on that node.
    if let Some(node) = find(&ctl, &id).await?.value.node {
        let record = ctl
            .db
            .get::<crate::model::NodeRecord>(&format!("{}{node}", keys::NODES))
            .await?;
        if record.is_some_and(|r| {
            r.value.entering_maintenance || r.value.enable == triad_api::v1::NodeEnable::Maintenance
        }) {
            return Err(ApiError::conflict(
                None,
                format!("its node {node} is in maintenance: exit maintenance first"),
            ));
        }
    }
    act(&ctl, &id, "vm.start", |vm| {
        vm.power = PowerState::Running;
        vm.no_restart = false;
        vm.reason = None;
        vm.state = match (vm.state, &vm.node) {
            (VmState::Failed, _) | (_, None) => {
                vm.node = None;
                VmState::Pending
            }
            (VmState::Running, _) => VmState::Running,
            _ => VmState::Starting,
        };
        Ok(())
    })
    .await
}

#[utoipa::path(post, path = "/v1/vms/{id}/stop", tag = "vms", params(("id" = String, Path)), request_body = Option<VmStop>,
    responses((status = 202, body = Accepted<Vm>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn stop(
    State(ctl): State<Arc<Ctl>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<(StatusCode, Json<Accepted<Vm>>)> {
    let req: VmStop = if bytes.iter().all(u8::is_ascii_whitespace) {
        VmStop::default()
    } else {
        body(&bytes)?
    };
    act(&ctl, &id, "vm.stop", |vm| {
        vm.power = PowerState::Stopped;
        vm.no_restart = req.no_restart;
        vm.stop_force = req.force;
        vm.reason = None;
        vm.state = match (vm.state, &vm.node) {
            (VmState::Stopped, _) | (_, None) | (VmState::Failed, _) => VmState::Stopped,
            _ => VmState::Stopping,
        };
        Ok(())
    })
    .await
}

/// Resets the machine in place (its node's VMM), now.
#[utoipa::path(post, path = "/v1/vms/{id}/reboot", tag = "vms", params(("id" = String, Path)),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn reboot(State(ctl): State<Arc<Ctl>>, Path(id): Path<String>) -> ApiResult<Json<Vm>> {
    let vm = find(&ctl, &id).await?.value;
    let node = match (&vm.node, vm.state) {
        (Some(node), VmState::Running) => node.clone(),
        _ => {
            return Err(ApiError::conflict(
                None,
                format!("VM {} is {:?}: only a running VM reboots", vm.id, vm.state),
            ))
        }
    };
    let hostd = ctl.hostd(&node).await?;
    let uuid = vm.id.clone();
    tokio::task::spawn_blocking(move || {
        hostd.set_state(
            &uuid,
            &StateRequest {
                action: PowerAction::Reboot,
                timeout_ms: None,
            },
        )
    })
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))?
    .map_err(|e| ApiError::Unavailable(format!("node {node}: {}", triad_api::error::chain(&e))))?;
    events::emit(
        &ctl.db,
        &format!("vm/{}", vm.id),
        "rebooted",
        format!("on node {node}"),
    )
    .await;
    Ok(Json(vm.view()))
}

/// Destroys the VM: its node removes it with its root volume and ports, then it is gone
/// (404) and its addresses, MACs and data volumes are free.
#[utoipa::path(delete, path = "/v1/vms/{id}", tag = "vms", params(("id" = String, Path)),
    responses((status = 202, body = Accepted<Vm>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn destroy(
    State(ctl): State<Arc<Ctl>>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Vm>>)> {
    let found = find(&ctl, &id).await?;
    let eips = ctl.db.values::<crate::model::EipRecord>(keys::EIPS).await?;
    if let Some(eip) = eips.iter().find(|e| e.vm == found.value.id) {
        return Err(ApiError::conflict(
            None,
            format!("EIP {:?} ({}) is on it: delete it first", eip.name, eip.ip),
        ));
    }
    if found.value.destroy {
        let operation = match &found.value.operation {
            Some(op) => ctl
                .db
                .get::<triad_api::v1::Operation>(&operations::key(op))
                .await?
                .map(|o| o.value),
            None => None,
        };
        if let Some(operation) = operation {
            return Ok((
                StatusCode::ACCEPTED,
                Json(Accepted {
                    operation,
                    resource: found.value.view(),
                }),
            ));
        }
    }
    act(&ctl, &found.value.id, "vm.destroy", |vm| {
        vm.destroy = true;
        vm.state = VmState::Destroying;
        Ok(())
    })
    .await
}

#[utoipa::path(put, path = "/v1/vms/{id}/ha", tag = "vms", params(("id" = String, Path)), request_body = VmHa,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_ha(
    State(ctl): State<Arc<Ctl>>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<Vm>> {
    let req: VmHa = body(&bytes)?;
    let found = find(&ctl, &id).await?;
    let changed = ctl
        .db
        .modify::<VmRecord, ApiError>(&format!("{}{}", keys::VMS, found.value.id), |vm| {
            if vm.destroy {
                return Err(ApiError::conflict(
                    None,
                    format!("VM {} is being destroyed", vm.id),
                ));
            }
            if vm.ha != req.ha {
                vm.ha = req.ha;
                vm.generation += 1;
            }
            Ok(())
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no VM {id:?}")))?;
    events::emit(
        &ctl.db,
        &format!("vm/{}", changed.id),
        "ha",
        format!("HA level {:?}", changed.ha),
    )
    .await;
    ctl.wake.notify_one();
    Ok(Json(changed.view()))
}

#[utoipa::path(get, path = "/v1/vms/{id}/placement", tag = "vms", params(("id" = String, Path)),
    responses((status = 200, body = PlacementReport), (status = 404, body = ErrorBody)))]
async fn placement(
    State(ctl): State<Arc<Ctl>>,
    Path(id): Path<String>,
) -> ApiResult<Json<PlacementReport>> {
    let vm = find(&ctl, &id).await?.value;
    ctl.db
        .get::<PlacementReport>(&format!("{}{}", keys::PLACEMENTS, vm.id))
        .await?
        .map(|p| Json(p.value))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "VM {} has not been through the scheduler yet",
                vm.id
            ))
        })
}

/// The serial console's output from byte `after` on.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Console {
    /// Where the next read starts.
    pub offset: u64,
    pub text: String,
}

#[utoipa::path(get, path = "/v1/vms/{id}/console", tag = "vms",
    params(("id" = String, Path), ("after" = Option<i64>, Query, minimum = 0, description = "the byte to start at")),
    responses((status = 200, body = Console), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn console(
    State(ctl): State<Arc<Ctl>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Console>> {
    let params = query(raw.as_deref(), &["after"])?;
    let after = number(&params, "after", i64::MAX as u64)?.unwrap_or(0);
    let vm = find(&ctl, &id).await?.value;
    let Some(node) = vm.node.clone() else {
        return Err(ApiError::conflict(
            None,
            format!("VM {} is on no node yet", vm.id),
        ));
    };
    let hostd = ctl.hostd(&node).await?;
    let uuid = vm.id.clone();
    let serial = tokio::task::spawn_blocking(move || hostd.serial(&uuid, after))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .map_err(|e| match e.status() {
            Some(404) => ApiError::NotFound(format!("node {node} has no console of VM {}", vm.id)),
            _ => ApiError::Unavailable(format!("node {node}: {}", triad_api::error::chain(&e))),
        })?;
    Ok(Json(Console {
        offset: serial.offset,
        text: serial.text,
    }))
}
