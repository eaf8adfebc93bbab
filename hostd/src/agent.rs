//! The agent: ensures, removals and power changes of this node's VMs, each done whole or
//! undone, the state file written before every step so that a hostd killed at any moment
//! finds what it made; and the supervision of every VMM it started or adopted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use triad_api::client::{NetdClient, StoragedClient, VmmClient};
use triad_api::hostd::{
    DiskState, HaLevel, HostEvent, HostEventKind, HostdConfig, NicState, NodeInfo, Power,
    PowerAction, SerialChunk, StateRequest, Vm, VmPhase, VmSpec,
};
use triad_api::net::{Metadata, PortSpec};
use triad_api::storage::{ImageState, Volume, VolumeRequest, VolumeSource};
use triad_api::vmm::{
    MachineConfig, NetConfig, SerialConfig, SerialMode, VmAction, VmConfig, VmState,
};

use crate::error::chain;
use crate::events::Events;
use crate::peers::Peers;
use crate::process;
use crate::state::{DirLock, State, StateFile, VmRecord, VmmRecord};
use crate::{validate, Error};

/// How long a VMM has to come up running.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a removed VM's VMM has to power off before it is killed.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The default for a stop request's `timeout_ms`.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A VMM that ran this long before exiting starts the back-off over.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The agent of one node.
#[derive(Debug)]
pub struct Agent {
    config: HostdConfig,
    node: String,
    cpus: u32,
    memory_mib: u64,
    vmm_binary: PathBuf,
    /// Whether each VMM gets a systemd scope of its own (hostd runs as a systemd service).
    vmm_scopes: bool,
    storaged: StoragedClient,
    netd: NetdClient,
    file: StateFile,
    state: Mutex<State>,
    /// One lock per VM: its ensure, removal, power change or restart happen one at a time.
    ops: Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
    /// The VMM each running VM has now; an exit of any other instance is stale.
    live: Mutex<BTreeMap<String, Live>>,
    next_instance: AtomicU64,
    /// Each VM's exits in a row, for the back-off.
    exits_in_a_row: Mutex<BTreeMap<String, u32>>,
    events: Events,
    known: Mutex<Known>,
    myself: Weak<Agent>,
    /// What the controller presents over TCP.
    token: String,
    peers: Arc<Peers>,
    _lock: DirLock,
}

/// Pools and whole images storaged has shown. They change only when an operator
/// reconfigures storaged or deletes an image, while asking takes storaged Ceph round trips
/// (tens of milliseconds on the path to a VM's boot), so an ensure asks only about ones not
/// seen before. A volume that then cannot be made forgets them all.
#[derive(Debug, Default)]
struct Known {
    pools: BTreeSet<String>,
    images: BTreeSet<(String, String)>,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    instance: u64,
    vmm: VmmRecord,
    since: Instant,
    stopping: bool,
}

/// How a VMM is waited for: our child, or one a killed hostd left running.
enum Watch {
    Child(std::process::Child),
    Adopted(VmmRecord),
}

impl Agent {
    /// Takes the state directory, reads the state file and brings the node back to it:
    /// unfinished ensures undone and running VMMs adopted. A VM whose VMM ended while hostd
    /// was down (the node lost power, say) is not started again here: the controller may
    /// have restarted it elsewhere meanwhile, so it stays stopped until the controller
    /// starts it.
    pub fn open(config: HostdConfig) -> Result<Arc<Self>, Error> {
        let dir = config.state_dir.clone();
        let dir = &dir;
        std::fs::create_dir_all(dir.join("vms"))
            .map_err(|e| Error::System(format!("creating {}: {e}", dir.display())))?;
        let lock = DirLock::take(dir)?;
        let token = crate::token::load_or_make(dir)?;
        check_secrets(dir)?;
        let file = StateFile::new(dir);
        let state = file.load()?;
        let node = match &config.node {
            Some(node) => node.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_err(|e| Error::System(format!("reading the host name: {e}")))?
                .trim()
                .to_owned(),
        };
        let vmm_binary = config.vmm_binary.clone().unwrap_or_else(default_vmm_binary);
        let vmm_scopes = process::under_systemd();
        if vmm_scopes && process::SYSTEMD_RUN.find().is_none() {
            return Err(Error::System(process::SYSTEMD_RUN.missing().to_string()));
        }
        let peers = Peers::open(&node, dir, &config.probes)?;
        let agent = Arc::new_cyclic(|myself| Self {
            storaged: StoragedClient::new(&config.storaged_socket),
            netd: NetdClient::new(&config.netd_socket),
            events: Events::open(dir),
            node,
            cpus: host_cpus(),
            memory_mib: host_memory_mib(),
            vmm_binary,
            vmm_scopes,
            file,
            state: Mutex::new(state),
            ops: Mutex::default(),
            live: Mutex::default(),
            next_instance: AtomicU64::new(1),
            exits_in_a_row: Mutex::default(),
            known: Mutex::default(),
            myself: myself.clone(),
            token,
            peers,
            _lock: lock,
            config,
        });
        agent.reconcile()?;
        agent.peers.start(Arc::downgrade(&agent));
        Ok(agent)
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The node's heartbeats: `GET /peers`, `PUT /cluster`.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// `GET /vms/{uuid}/serial?after=N`: at most 64 KiB of the serial log from byte `after`.
    pub fn serial(&self, uuid: &str, after: u64) -> Result<SerialChunk, Error> {
        use std::io::{Read, Seek, SeekFrom};
        if self.record(uuid).is_none() {
            return Err(Error::NotFound(uuid.to_owned()));
        }
        let path = self.vm_dir(uuid).join("serial.log");
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SerialChunk {
                    offset: 0,
                    text: String::new(),
                })
            }
            Err(e) => return Err(Error::System(format!("opening {}: {e}", path.display()))),
        };
        let len = file
            .metadata()
            .map_err(|e| Error::System(format!("reading {}: {e}", path.display())))?
            .len();
        let start = after.min(len);
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.take(64 << 10).read_to_end(&mut bytes))
            .map_err(|e| Error::System(format!("reading {}: {e}", path.display())))?;
        Ok(SerialChunk {
            offset: start + bytes.len() as u64,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    pub fn config(&self) -> &HostdConfig {
        &self.config
    }

    fn vms_dir(&self) -> PathBuf {
        self.config.state_dir.join("vms")
    }

    fn vm_dir(&self, uuid: &str) -> PathBuf {
        self.vms_dir().join(uuid)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_live(&self) -> MutexGuard<'_, BTreeMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn op_lock(&self, uuid: &str) -> Arc<Mutex<()>> {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.entry(uuid.to_owned()).or_default().clone()
    }

    /// Changes the VM's record and writes the state file.
    fn update(&self, uuid: &str, change: impl FnOnce(&mut VmRecord)) -> Result<(), Error> {
        let mut state = self.lock_state();
        if let Some(rec) = state.vms.get_mut(uuid) {
            change(rec);
        }
        self.file.save(&state)
    }

    fn record(&self, uuid: &str) -> Option<VmRecord> {
        self.lock_state().vms.get(uuid).cloned()
    }

    fn reconcile(&self) -> Result<(), Error> {
        let found: BTreeMap<String, VmmRecord> =
            process::find_vmms(&self.vms_dir()).into_iter().collect();
        let records: Vec<(String, VmRecord)> = self
            .lock_state()
            .vms
            .iter()
            .map(|(u, r)| (u.clone(), r.clone()))
            .collect();
        let (mut adopted, mut undone, mut held) = (0, 0, 0);
        for (uuid, rec) in &records {
            let running = rec
                .vmm
                .filter(process::is_alive)
                .or_else(|| found.get(uuid).copied());
            if rec.making {
                if let Some(vmm) = running {
                    kill(&vmm);
                }
                let undo = self.undo(uuid, rec);
                self.lock_state().vms.remove(uuid);
                self.file.save(&self.lock_state())?;
                let _ = std::fs::remove_dir_all(self.vm_dir(uuid));
                let how = match undo {
                    Ok(()) => "undone".to_owned(),
                    Err(e) => format!("partly undone ({e})"),
                };
                self.events.emit(
                    Some(uuid),
                    HostEventKind::EnsureFailed,
                    format!("hostd stopped during the ensure; what it had made is {how}"),
                );
                undone += 1;
                continue;
            }
            match running {
                Some(vmm) => {
                    self.update(uuid, |r| r.vmm = Some(vmm))?;
                    self.watch(uuid, Watch::Adopted(vmm));
                    self.events.emit(
                        Some(uuid),
                        HostEventKind::VmAdopted,
                        format!("VMM pid {} still runs; adopted", vmm.pid),
                    );
                    adopted += 1;
                }
                None if rec.desired == Power::Running => {
                    self.update(uuid, |r| {
                        r.vmm = None;
                        r.desired = Power::Stopped;
                        r.last_exit = Some(
                            "ended while hostd was not running; it waits for the controller".into(),
                        );
                    })?;
                    held += 1;
                }
                None => {}
            }
        }
        let known: BTreeSet<&String> = records.iter().map(|(u, _)| u).collect();
        for (uuid, vmm) in &found {
            if !known.contains(uuid) {
                tracing::warn!(
                    "killing VMM pid {} of {uuid}, a VM this node does not hold",
                    vmm.pid
                );
                kill(vmm);
            }
        }
        self.events.emit(
            None,
            HostEventKind::HostdStarted,
            format!(
                "{} VMs: {adopted} VMMs adopted, {held} ended while hostd was down (stopped until \
                 the controller starts them), {undone} unfinished ensures undone",
                records.len() - undone,
            ),
        );
        Ok(())
    }

    /// The self-fencer: kills the VMMs of the VMs with a disk on shared storage, which the
    /// majority may restart elsewhere, and leaves them stopped; says what it did.
    pub fn fence(&self, why: &str) -> String {
        // A pool storaged cannot name counts as shared: killing too much is the safe side.
        let local: BTreeSet<String> = self
            .storaged
            .pools()
            .map(|pools| {
                pools
                    .into_iter()
                    .filter(|p| p.kind == triad_api::storage::PoolKind::Local)
                    .map(|p| p.name)
                    .collect()
            })
            .unwrap_or_default();
        let shared: Vec<String> = self
            .lock_state()
            .vms
            .iter()
            .filter(|(_, r)| r.spec.disks.iter().any(|d| !local.contains(&d.pool)))
            .map(|(u, _)| u.clone())
            .collect();
        let mut killed = 0;
        for uuid in &shared {
            let op = self.op_lock(uuid);
            let _op = op.lock().unwrap_or_else(|e| e.into_inner());
            let running = self.lock_live().contains_key(uuid);
            let _ = self.update(uuid, |r| r.desired = Power::Stopped);
            if running {
                self.stop_vmm(uuid, Duration::ZERO);
                let _ = self.update(uuid, |r| r.last_exit = Some(format!("fenced: {why}")));
                self.events.emit(
                    Some(uuid),
                    HostEventKind::VmFenced,
                    format!("killed: {why}"),
                );
                killed += 1;
            }
        }
        let what = format!("{killed} VMs on shared storage killed: {why}");
        tracing::warn!("self-fencer: {what}");
        what
    }

    pub fn quorum_event(&self, message: &str) {
        self.events.emit(None, HostEventKind::Quorum, message);
    }

    pub fn node(&self) -> NodeInfo {
        let (allocated_vcpus, allocated_memory_mib, vms) = {
            let state = self.lock_state();
            let (c, m) = allocation(&state, None);
            (c, m, state.vms.len())
        };
        let (pools, storaged_error) = match self.storaged.pools() {
            Ok(pools) => (pools, None),
            Err(e) => (Vec::new(), Some(chain(&e))),
        };
        let (networks, netd_error) = match self.netd.state() {
            Ok(state) => (state.networks.into_iter().map(|n| n.id).collect(), None),
            Err(e) => (Vec::new(), Some(chain(&e))),
        };
        NodeInfo {
            name: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            reserved_memory_mib: self.config.reserved_memory_mib,
            allocated_vcpus,
            allocated_memory_mib,
            vms,
            pools,
            networks,
            storaged_error,
            netd_error,
            probes: self.config.probes.clone(),
        }
    }

    pub fn vms(&self) -> Vec<Vm> {
        let records: Vec<(String, VmRecord)> = self
            .lock_state()
            .vms
            .iter()
            .map(|(u, r)| (u.clone(), r.clone()))
            .collect();
        records
            .iter()
            .map(|(u, r)| self.view(u, r, false))
            .collect()
    }

    pub fn vm(&self, uuid: &str) -> Result<Vm, Error> {
        let rec = self
            .record(uuid)
            .ok_or_else(|| Error::NotFound(uuid.into()))?;
        Ok(self.view(uuid, &rec, true))
    }

    /// `GET /events?after=SEQ[&wait_ms=N]`: with a wait, an empty answer comes only after it.
    pub fn events(&self, after: u64, wait: Duration) -> Vec<HostEvent> {
        self.events.after_or_wait(after, wait)
    }

    fn view(&self, uuid: &str, rec: &VmRecord, with_counters: bool) -> Vm {
        let live = self.lock_live().get(uuid).copied();
        let dir = self.vm_dir(uuid);
        let socket = dir.join("vmm.sock");
        let mut counters = None;
        let phase = match live {
            Some(l) if l.stopping => VmPhase::Stopping,
            Some(_) if rec.making => VmPhase::Starting,
            Some(_) => {
                let vmm = VmmClient::new(&socket).with_timeout(Duration::from_secs(2));
                if with_counters {
                    counters = vmm.metrics().ok();
                }
                match vmm.info().map(|i| i.state) {
                    Ok(VmState::Paused) => VmPhase::Paused,
                    Ok(VmState::NotConfigured | VmState::Configured) => VmPhase::Starting,
                    _ => VmPhase::Running,
                }
            }
            None if rec.making => VmPhase::Starting,
            None if rec.desired == Power::Running => VmPhase::Restarting,
            None => VmPhase::Stopped,
        };
        Vm {
            uuid: uuid.to_owned(),
            spec: rec.spec.clone(),
            phase,
            pid: live.map(|l| l.vmm.pid),
            vmm_socket: socket,
            serial_log: dir.join("serial.log"),
            restarts: rec.restarts,
            last_exit: rec.last_exit.clone(),
            disks: rec.disks.clone(),
            nics: rec.nics.clone(),
            counters,
        }
    }

    /// `PUT /vms/{uuid}`.
    pub fn ensure(&self, uuid: &str, spec: VmSpec) -> Result<Vm, Error> {
        validate::uuid(uuid)?;
        validate::spec(&spec)?;
        let op = self.op_lock(uuid);
        let _op = op.lock().unwrap_or_else(|e| e.into_inner());
        match self.record(uuid) {
            Some(rec) => self.ensure_existing(uuid, rec, spec),
            None => self.ensure_new(uuid, spec),
        }
    }

    fn refuse(&self, uuid: &str, error: Error) -> Error {
        self.events
            .emit(Some(uuid), HostEventKind::EnsureRefused, error.to_string());
        error
    }

    fn ensure_existing(&self, uuid: &str, rec: VmRecord, spec: VmSpec) -> Result<Vm, Error> {
        let held = rec.spec.generation;
        if spec.generation < held {
            return Err(self.refuse(
                uuid,
                Error::conflict(
                    Some("generation"),
                    format!(
                        "generation {} is older than the {held} this node holds; refused",
                        spec.generation
                    ),
                ),
            ));
        }
        if spec.generation == held {
            if spec == rec.spec {
                return self.vm(uuid);
            }
            return Err(self.refuse(
                uuid,
                Error::conflict(
                    Some("generation"),
                    format!(
                        "generation {held} is held with a different spec; a change needs generation {}",
                        held + 1
                    ),
                ),
            ));
        }
        let fixed = hardware_changes(&rec.spec, &spec);
        if !fixed.is_empty() {
            return Err(self.refuse(
                uuid,
                Error::conflict(
                    Some(fixed[0]),
                    format!(
                        "{} cannot change on a VM this node holds; remove it and ensure it again",
                        fixed.join(", ")
                    ),
                ),
            ));
        }
        let metadata_changed = (&rec.spec.name, &rec.spec.ssh_keys, &rec.spec.user_data)
            != (&spec.name, &spec.ssh_keys, &spec.user_data);
        if metadata_changed {
            for (nic, state) in spec.nics.iter().zip(&rec.nics) {
                let port = port_spec(uuid, &spec, nic);
                self.netd.put_port(&state.port, &port).map_err(|e| {
                    Error::step("ports", &format!("updating port {}", state.port), &e)
                })?;
            }
        }
        let power = spec.power;
        let generation = spec.generation;
        self.update(uuid, |r| {
            r.spec = spec;
            r.desired = power;
        })?;
        self.events.emit(
            Some(uuid),
            HostEventKind::VmEnsured,
            format!("generation {generation} (was {held})"),
        );
        self.apply_power(uuid, power)?;
        self.vm(uuid)
    }

    fn apply_power(&self, uuid: &str, power: Power) -> Result<(), Error> {
        let live = self.lock_live().contains_key(uuid);
        match (power, live) {
            (Power::Running, false) => {
                let rec = self
                    .record(uuid)
                    .ok_or_else(|| Error::NotFound(uuid.into()))?;
                self.start_vmm(uuid, &rec)?;
                self.events
                    .emit(Some(uuid), HostEventKind::VmStarted, "started");
            }
            (Power::Stopped, true) => {
                self.stop_vmm(uuid, STOP_TIMEOUT);
                self.events
                    .emit(Some(uuid), HostEventKind::VmStopped, "stopped");
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks against what the node holds and has, then makes the VM step by step.
    fn ensure_new(&self, uuid: &str, spec: VmSpec) -> Result<Vm, Error> {
        if !spec.boot.kernel.is_file() {
            return Err(self.refuse(
                uuid,
                Error::unprocessable(
                    "boot.kernel",
                    format!("{} is not a file on this node", spec.boot.kernel.display()),
                ),
            ));
        }
        if let Some(initrd) = &spec.boot.initrd {
            if !initrd.is_file() {
                return Err(self.refuse(
                    uuid,
                    Error::unprocessable(
                        "boot.initrd",
                        format!("{} is not a file on this node", initrd.display()),
                    ),
                ));
            }
        }
        let existing = self
            .check_daemons(&spec)
            .map_err(|e| self.refuse(uuid, e))?;
        {
            let mut state = self.lock_state();
            self.check_fits(&state, uuid, &spec)
                .map_err(|e| self.refuse(uuid, e))?;
            state.vms.insert(
                uuid.to_owned(),
                VmRecord {
                    desired: spec.power,
                    spec: spec.clone(),
                    making: true,
                    volumes_made: Vec::new(),
                    ports_made: Vec::new(),
                    disks: Vec::new(),
                    nics: Vec::new(),
                    vmm: None,
                    restarts: 0,
                    last_exit: None,
                },
            );
            self.file.save(&state)?;
        }
        match self.make(uuid, &spec, existing) {
            Ok(()) => {
                self.update(uuid, |r| r.making = false)?;
                self.events.emit(
                    Some(uuid),
                    HostEventKind::VmEnsured,
                    format!(
                        "generation {}: {} disks, {} NICs, {}",
                        spec.generation,
                        spec.disks.len(),
                        spec.nics.len(),
                        match spec.power {
                            Power::Running => "running",
                            Power::Stopped => "stopped",
                        }
                    ),
                );
                self.vm(uuid)
            }
            Err(e) => {
                if let Some(l) = self.lock_live().remove(uuid) {
                    kill(&l.vmm);
                }
                let rec = self.record(uuid);
                let undo = rec.as_ref().map_or(Ok(()), |rec| self.undo(uuid, rec));
                {
                    let mut state = self.lock_state();
                    state.vms.remove(uuid);
                    self.file.save(&state)?;
                }
                let _ = std::fs::remove_dir_all(self.vm_dir(uuid));
                let how = match &undo {
                    Ok(()) => "undone".to_owned(),
                    Err(u) => format!("partly undone ({u})"),
                };
                self.events.emit(
                    Some(uuid),
                    HostEventKind::EnsureFailed,
                    format!("{e}; what the ensure made is {how}"),
                );
                Err(e)
            }
        }
    }

    /// The pools, images, volumes and networks the spec names exist: a missing one is the
    /// request's fault (422), found before anything is made. Answers the volumes each disk
    /// has already.
    fn check_daemons(&self, spec: &VmSpec) -> Result<Vec<Option<Volume>>, Error> {
        let unseen_pool = spec
            .disks
            .iter()
            .any(|d| !self.known().pools.contains(&d.pool));
        if unseen_pool {
            let pools = self
                .storaged
                .pools()
                .map_err(|e| Error::step("volumes", "listing storaged's pools", &e))?;
            self.known().pools = pools.into_iter().map(|p| p.name).collect();
        }
        let mut volumes = Vec::new();
        for (i, disk) in spec.disks.iter().enumerate() {
            let field = |name: &str| format!("disks[{i}].{name}");
            if !self.known().pools.contains(&disk.pool) {
                return Err(Error::unprocessable(
                    field("pool"),
                    format!("this node has no pool {:?}", disk.pool),
                ));
            }
            let existing = self
                .storaged
                .volume(&disk.pool, &disk.volume)
                .map_err(|e| Error::step("volumes", "reading a volume", &e))?;
            match &disk.source {
                None if existing.is_none() => {
                    return Err(Error::unprocessable(
                        field("volume"),
                        format!(
                            "pool {} has no volume {:?} (give a source to make it)",
                            disk.pool, disk.volume
                        ),
                    ))
                }
                Some(VolumeSource::Image { id })
                    if existing.is_none()
                        && !self
                            .known()
                            .images
                            .contains(&(disk.pool.clone(), id.clone())) =>
                {
                    let image = self
                        .storaged
                        .image(&disk.pool, id)
                        .map_err(|e| Error::step("volumes", "reading an image", &e))?;
                    match image {
                        Some(image) if image.state == ImageState::Ready => {
                            self.known().images.insert((disk.pool.clone(), id.clone()));
                        }
                        Some(image) => {
                            return Err(Error::unprocessable(
                                field("source"),
                                format!("image {id:?} is {:?}, not ready", image.state),
                            ))
                        }
                        None => {
                            return Err(Error::unprocessable(
                                field("source"),
                                format!("pool {} has no image {id:?}", disk.pool),
                            ))
                        }
                    }
                }
                _ => {}
            }
            volumes.push(existing);
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            let network = self
                .netd
                .network(&nic.network)
                .map_err(|e| Error::step("ports", "reading a network", &e))?;
            if network.is_none() {
                return Err(Error::unprocessable(
                    format!("nics[{i}].network"),
                    format!("this node has no network {:?}", nic.network),
                ));
            }
        }
        Ok(volumes)
    }

    /// The VM fits what is left of the node, and its MACs are not another VM's.
    fn check_fits(&self, state: &State, uuid: &str, spec: &VmSpec) -> Result<(), Error> {
        if spec.vcpus > self.cpus {
            return Err(Error::unprocessable(
                "vcpus",
                format!("{} vCPUs; this node has {} CPUs", spec.vcpus, self.cpus),
            ));
        }
        let (_, allocated) = allocation(state, Some(uuid));
        let free = self
            .memory_mib
            .saturating_sub(self.config.reserved_memory_mib)
            .saturating_sub(allocated);
        if spec.memory_mib > free {
            return Err(Error::unprocessable(
                "memory_mib",
                format!(
                    "{} MiB; this node has {free} MiB free ({} MiB, {} reserved, {allocated} given to VMs)",
                    spec.memory_mib, self.memory_mib, self.config.reserved_memory_mib
                ),
            ));
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            for (other, rec) in &state.vms {
                if other != uuid && rec.spec.nics.iter().any(|n| n.mac == nic.mac) {
                    return Err(Error::conflict(
                        Some(&format!("nics[{i}].mac")),
                        format!("{} is a NIC of VM {other} on this node", nic.mac),
                    ));
                }
            }
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            for (other, rec) in &state.vms {
                if other != uuid
                    && rec
                        .spec
                        .disks
                        .iter()
                        .any(|d| d.pool == disk.pool && d.volume == disk.volume)
                {
                    return Err(Error::conflict(
                        Some(&format!("disks[{i}].volume")),
                        format!("{}/{} is a disk of VM {other}", disk.pool, disk.volume),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The steps: volumes (those not in `existing`), ports, then (to run) the VMM. Each thing
    /// is recorded before it is made, so that whoever undoes the ensure knows it.
    fn make(&self, uuid: &str, spec: &VmSpec, existing: Vec<Option<Volume>>) -> Result<(), Error> {
        for (disk, existing) in spec.disks.iter().zip(existing) {
            let made_here = existing.is_none();
            let volume = match (existing, &disk.source) {
                (Some(v), _) => v,
                (None, Some(source)) => {
                    let key = (disk.pool.clone(), disk.volume.clone());
                    self.update(uuid, |r| r.volumes_made.push(key))?;
                    let req = VolumeRequest {
                        id: disk.volume.clone(),
                        name: disk.volume.clone(),
                        size_bytes: disk.size_bytes.unwrap_or_default(),
                        source: source.clone(),
                        qos: disk.qos,
                    };
                    self.storaged.create_volume(&disk.pool, &req).map_err(|e| {
                        *self.known() = Known::default();
                        Error::step("volumes", &format!("making disk {}", disk.id), &e)
                    })?
                }
                (None, None) => {
                    return Err(Error::unprocessable(
                        "disks",
                        format!("volume {}/{} is gone", disk.pool, disk.volume),
                    ))
                }
            };
            let state = DiskState {
                id: disk.id.clone(),
                pool: disk.pool.clone(),
                volume: disk.volume.clone(),
                path: volume.path.clone(),
                ceph: volume.ceph.clone(),
                made_here,
            };
            self.update(uuid, |r| r.disks.push(state))?;
        }
        for nic in &spec.nics {
            let port_id = format!("{uuid}-{}", nic.id);
            if self
                .netd
                .port(&port_id)
                .map_err(|e| Error::step("ports", "reading a port", &e))?
                .is_some()
            {
                return Err(Error::Step {
                    step: "ports",
                    status: axum::http::StatusCode::CONFLICT,
                    message: format!("netd has a port {port_id} already, not made by this VM"),
                });
            }
            let id = port_id.clone();
            self.update(uuid, |r| r.ports_made.push(id))?;
            let port = self
                .netd
                .put_port(&port_id, &port_spec(uuid, spec, nic))
                .map_err(|e| Error::step("ports", &format!("making NIC {}", nic.id), &e))?;
            let state = NicState {
                id: nic.id.clone(),
                port: port_id,
                tap: port.tap,
            };
            self.update(uuid, |r| r.nics.push(state))?;
        }
        if spec.power == Power::Running {
            let rec = self
                .record(uuid)
                .ok_or_else(|| Error::NotFound(uuid.into()))?;
            self.start_vmm(uuid, &rec)?;
        }
        Ok(())
    }

    /// Deletes what the VM's ensures made: its ports, and its volumes unless kept (`keep`
    /// applies only once the VM is made: an undone ensure keeps nothing it made).
    fn undo(&self, uuid: &str, rec: &VmRecord) -> Result<(), Error> {
        let mut failed = Vec::new();
        for port in rec.ports_made.iter().rev() {
            match self.netd.delete_port(port) {
                Ok(()) => self.update(uuid, |r| r.ports_made.retain(|p| p != port))?,
                Err(e) if e.is_not_found() => {
                    self.update(uuid, |r| r.ports_made.retain(|p| p != port))?
                }
                Err(e) => failed.push(Error::step("ports", &format!("deleting port {port}"), &e)),
            }
        }
        for (pool, volume) in rec.volumes_made.iter().rev() {
            let kept = !rec.making
                && rec
                    .spec
                    .disks
                    .iter()
                    .any(|d| &d.pool == pool && &d.volume == volume && d.keep);
            let result = if kept {
                Ok(())
            } else {
                self.storaged.delete_volume(pool, volume)
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failed.push(Error::step(
                        "volumes",
                        &format!("deleting volume {pool}/{volume}"),
                        &e,
                    ));
                    continue;
                }
            }
            self.update(uuid, |r| {
                r.volumes_made
                    .retain(|v| v != &(pool.clone(), volume.clone()))
            })?;
        }
        match failed.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `DELETE /vms/{uuid}`: stops the VM, deletes what its ensures made, forgets it. A VM
    /// this node does not hold is removed already.
    pub fn remove(&self, uuid: &str) -> Result<(), Error> {
        validate::uuid(uuid)?;
        let op = self.op_lock(uuid);
        let _op = op.lock().unwrap_or_else(|e| e.into_inner());
        let Some(rec) = self.record(uuid) else {
            return Ok(());
        };
        self.update(uuid, |r| r.desired = Power::Stopped)?;
        self.stop_vmm(uuid, REMOVE_TIMEOUT);
        let rec = self.record(uuid).unwrap_or(rec);
        self.undo(uuid, &rec)?;
        {
            let mut state = self.lock_state();
            state.vms.remove(uuid);
            self.file.save(&state)?;
        }
        let _ = std::fs::remove_dir_all(self.vm_dir(uuid));
        self.exits_in_a_row
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uuid);
        self.events.emit(
            Some(uuid),
            HostEventKind::VmRemoved,
            format!(
                "removed with the {} ports and the unkept of the {} volumes its ensure made",
                rec.ports_made.len(),
                rec.volumes_made.len()
            ),
        );
        Ok(())
    }

    /// `PUT /vms/{uuid}/state`.
    pub fn set_state(&self, uuid: &str, req: StateRequest) -> Result<Vm, Error> {
        validate::uuid(uuid)?;
        let op = self.op_lock(uuid);
        let _op = op.lock().unwrap_or_else(|e| e.into_inner());
        if self.record(uuid).is_none() {
            return Err(Error::NotFound(uuid.into()));
        }
        if req.timeout_ms.is_some() && req.action != PowerAction::Stop {
            return Err(Error::invalid("timeout_ms", "only for action stop"));
        }
        match req.action {
            PowerAction::Start => {
                self.update(uuid, |r| r.desired = Power::Running)?;
                self.exits_in_a_row
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(uuid);
                self.apply_power(uuid, Power::Running)?;
            }
            PowerAction::Stop => {
                self.update(uuid, |r| r.desired = Power::Stopped)?;
                let timeout = req.timeout_ms.map_or(STOP_TIMEOUT, Duration::from_millis);
                if self.lock_live().contains_key(uuid) {
                    let how = self.stop_vmm(uuid, timeout);
                    self.events.emit(Some(uuid), HostEventKind::VmStopped, how);
                }
            }
            PowerAction::Reboot => {
                if !self.lock_live().contains_key(uuid) {
                    return Err(Error::conflict(None, format!("VM {uuid} is not running")));
                }
                VmmClient::new(self.vm_dir(uuid).join("vmm.sock"))
                    .action(VmAction::Reboot)
                    .map_err(|e| Error::step("vmm", "rebooting", &e))?;
                self.events
                    .emit(Some(uuid), HostEventKind::VmRebooted, "rebooted");
            }
        }
        self.vm(uuid)
    }

    /// Writes the VMM's config, starts it, records its process, and waits until its VM runs.
    /// Called with the VM's op lock held.
    fn start_vmm(&self, uuid: &str, rec: &VmRecord) -> Result<(), Error> {
        let dir = self.vm_dir(uuid);
        let fail = |what: &str, e: std::io::Error| Error::Step {
            step: "vmm",
            status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("{what}: {e}"),
        };
        std::fs::create_dir_all(&dir).map_err(|e| fail("creating the VM's directory", e))?;
        let config = vmm_config(
            &rec.spec,
            &rec.disks,
            &rec.nics,
            &dir,
            self.config.serial_max_bytes,
        );
        let config_path = dir.join("vm.json");
        let json = serde_json::to_vec_pretty(&config).map_err(|e| Error::System(e.to_string()))?;
        std::fs::write(&config_path, json).map_err(|e| fail("writing vm.json", e))?;
        // The VMM empties its serial log: the last run's output (why it died, say) moves to
        // `serial.log.old` first.
        let serial = dir.join("serial.log");
        if std::fs::metadata(&serial).is_ok_and(|m| m.len() > 0) {
            std::fs::rename(&serial, dir.join("serial.log.old"))
                .map_err(|e| fail("keeping the last serial log", e))?;
        }
        let socket = dir.join("vmm.sock");
        let _ = std::fs::remove_file(&socket);
        let log = dir.join("vmm.log");
        let scope = self.vmm_scopes.then_some(uuid);
        let child = process::spawn(&self.vmm_binary, &config_path, &socket, &log, scope)
            .map_err(|e| fail(&format!("starting {}", self.vmm_binary.display()), e))?;
        let vmm = VmmRecord {
            pid: child.id(),
            start_time: process::start_time(child.id()).unwrap_or_default(),
        };
        self.update(uuid, |r| r.vmm = Some(vmm))?;
        self.watch(uuid, Watch::Child(child));
        let started = Instant::now();
        let client = VmmClient::new(&socket).with_timeout(Duration::from_secs(2));
        loop {
            if let Ok(info) = client.info() {
                if info.state == VmState::Running {
                    return Ok(());
                }
            }
            let ended = !process::is_alive(&vmm);
            if ended || started.elapsed() > BOOT_TIMEOUT {
                if !ended {
                    kill(&vmm);
                }
                self.lock_live().remove(uuid);
                self.update(uuid, |r| r.vmm = None)?;
                let why = if ended {
                    "the VMM exited"
                } else {
                    "the VMM did not run the VM in time"
                };
                return Err(Error::Step {
                    step: "vmm",
                    status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("{why}: {}", log_tail(&log)),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Powers the VM's VMM off (killing it past `timeout`) and waits for it to end; says
    /// how it ended. Called with the VM's op lock held.
    fn stop_vmm(&self, uuid: &str, timeout: Duration) -> String {
        let Some(live) = self.lock_live().get_mut(uuid).map(|l| {
            l.stopping = true;
            *l
        }) else {
            return "not running".into();
        };
        let how = if timeout.is_zero() {
            kill(&live.vmm);
            "killed".to_owned()
        } else {
            let asked = VmmClient::new(self.vm_dir(uuid).join("vmm.sock"))
                .with_timeout(timeout)
                .action(VmAction::Shutdown);
            if asked.is_ok() && wait_gone(&live.vmm, timeout) {
                "powered off".to_owned()
            } else {
                kill(&live.vmm);
                format!("killed after {} ms", timeout.as_millis())
            }
        };
        self.lock_live().remove(uuid);
        let _ = self.update(uuid, |r| {
            r.vmm = None;
            r.last_exit = Some(format!("stopped: {how}"));
        });
        how
    }

    /// Starts a thread that waits for the VMM to end and then hands its exit to supervision.
    fn watch(&self, uuid: &str, watch: Watch) {
        let vmm = match &watch {
            Watch::Child(child) => VmmRecord {
                pid: child.id(),
                start_time: process::start_time(child.id()).unwrap_or_default(),
            },
            Watch::Adopted(vmm) => *vmm,
        };
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        self.lock_live().insert(
            uuid.to_owned(),
            Live {
                instance,
                vmm,
                since: Instant::now(),
                stopping: false,
            },
        );
        let agent = self.myself.clone();
        let uuid = uuid.to_owned();
        std::thread::spawn(move || {
            let status = match watch {
                Watch::Child(mut child) => match child.wait() {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("lost: {e}"),
                },
                Watch::Adopted(vmm) => {
                    process::wait_adopted(&vmm);
                    "exited (an adopted VMM: its status is not known)".to_owned()
                }
            };
            if let Some(agent) = agent.upgrade() {
                agent.exited(&uuid, instance, status);
            }
        });
    }

    /// A VMM ended. Unless it was stopped or replaced, the VM stays stopped, or, NeverStop
    /// and meant to run, it is started again after the back-off.
    fn exited(&self, uuid: &str, instance: u64, status: String) {
        let op = self.op_lock(uuid);
        let delay = {
            let _op = op.lock().unwrap_or_else(|e| e.into_inner());
            let live = {
                let mut live = self.lock_live();
                match live.get(uuid) {
                    Some(l) if l.instance == instance && !l.stopping => live.remove(uuid),
                    _ => None,
                }
            };
            let Some(live) = live else {
                return;
            };
            let Some(rec) = self.record(uuid) else {
                return;
            };
            let restart = rec.desired == Power::Running && rec.spec.ha == HaLevel::NeverStop;
            let _ = self.update(uuid, |r| {
                r.vmm = None;
                r.last_exit = Some(status.clone());
                if !restart {
                    r.desired = Power::Stopped;
                }
            });
            if !restart {
                self.events.emit(
                    Some(uuid),
                    HostEventKind::VmExited,
                    format!("VMM {status}; the VM stays stopped"),
                );
                return;
            }
            let delay = self.backoff(uuid, live.since.elapsed());
            self.events.emit(
                Some(uuid),
                HostEventKind::VmExited,
                format!(
                    "VMM {status}; NeverStop: starting it again in {} ms",
                    delay.as_millis()
                ),
            );
            delay
        };
        self.keep_running(uuid.to_owned(), delay);
    }

    /// The wait before the next restart: doubling with each exit in a row, from the first
    /// wait to the longest; a VMM that ran a while starts it over.
    fn backoff(&self, uuid: &str, ran: Duration) -> Duration {
        let mut rows = self
            .exits_in_a_row
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = rows.entry(uuid.to_owned()).or_default();
        if ran >= STABLE_RUN {
            *n = 0;
        }
        let ms = self
            .config
            .restart_backoff_ms
            .saturating_mul(1u64 << (*n).min(16))
            .min(self.config.restart_backoff_max_ms);
        *n += 1;
        Duration::from_millis(ms)
    }

    /// In a thread: after `delay`, starts the VM's VMM, again and again with the back-off
    /// until it runs, for as long as the VM is held, meant to run, and not running.
    fn keep_running(&self, uuid: String, mut delay: Duration) {
        let agent = self.myself.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(delay);
            let Some(agent) = agent.upgrade() else {
                return;
            };
            let op = agent.op_lock(&uuid);
            let _op = op.lock().unwrap_or_else(|e| e.into_inner());
            let Some(rec) = agent.record(&uuid) else {
                return;
            };
            if rec.desired != Power::Running || agent.lock_live().contains_key(&uuid) {
                return;
            }
            // Counted before the VMM shows as running, so that whoever sees it running sees
            // the count too.
            let restarts = rec.restarts + 1;
            let _ = agent.update(&uuid, |r| r.restarts = restarts);
            match agent.start_vmm(&uuid, &rec) {
                Ok(()) => {
                    agent.events.emit(
                        Some(&uuid),
                        HostEventKind::VmRestarted,
                        format!("VMM started again (restart {restarts})"),
                    );
                    return;
                }
                Err(e) => {
                    delay = agent.backoff(&uuid, Duration::ZERO);
                    agent.events.emit(
                        Some(&uuid),
                        HostEventKind::VmExited,
                        format!(
                            "could not start the VMM ({e}); trying again in {} ms",
                            delay.as_millis()
                        ),
                    );
                }
            }
        });
    }
}

/// vCPUs and memory given to the node's VMs (but `except`).
fn allocation(state: &State, except: Option<&str>) -> (u32, u64) {
    state
        .vms
        .iter()
        .filter(|(u, _)| Some(u.as_str()) != except)
        .fold((0, 0), |(c, m), (_, r)| {
            (c + r.spec.vcpus, m + r.spec.memory_mib)
        })
}

/// The fields of a held VM that a new generation may not change on this node.
fn hardware_changes(held: &VmSpec, new: &VmSpec) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if held.vcpus != new.vcpus {
        changed.push("vcpus");
    }
    if held.memory_mib != new.memory_mib {
        changed.push("memory_mib");
    }
    if held.boot != new.boot {
        changed.push("boot");
    }
    if held.disks != new.disks {
        changed.push("disks");
    }
    if held.nics != new.nics {
        changed.push("nics");
    }
    changed
}

fn port_spec(uuid: &str, spec: &VmSpec, nic: &triad_api::hostd::NicSpec) -> PortSpec {
    PortSpec {
        network: nic.network.clone(),
        mac: nic.mac,
        ip: nic.ip,
        hostname: Some(spec.name.clone()),
        metadata: Some(Metadata {
            instance_id: Some(uuid.to_owned()),
            ssh_keys: spec.ssh_keys.clone(),
            public_ipv4: None,
            user_data: spec.user_data.clone(),
        }),
        security_groups: nic.security_groups.clone(),
    }
}

fn vmm_config(
    spec: &VmSpec,
    disks: &[DiskState],
    nics: &[NicState],
    dir: &Path,
    serial_max_bytes: u64,
) -> VmConfig {
    let drives = spec
        .disks
        .iter()
        .zip(disks)
        .map(|(disk, state)| triad_api::vmm::DriveConfig {
            id: disk.id.clone(),
            path: state.path.clone(),
            read_only: disk.read_only,
            cache: disk.cache,
            qos: disk.qos,
            ceph: state.ceph.clone(),
        })
        .collect();
    let nets = spec
        .nics
        .iter()
        .zip(nics)
        .map(|(nic, state)| NetConfig {
            id: nic.id.clone(),
            tap: state.tap.clone(),
            mac: Some(nic.mac.to_string()),
            qos: nic.qos,
        })
        .collect();
    VmConfig {
        boot: spec.boot.clone(),
        machine: MachineConfig {
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
        },
        serial: SerialConfig {
            mode: SerialMode::File,
            path: Some(dir.join("serial.log")),
            max_bytes: Some(serial_max_bytes),
        },
        drives,
        nets,
        rng: true,
    }
}

fn kill(vmm: &VmmRecord) {
    process::signal(vmm, libc::SIGKILL);
    wait_gone(vmm, Duration::from_secs(5));
}

/// Waits up to `timeout` for the process to end; whether it did.
fn wait_gone(vmm: &VmmRecord, timeout: Duration) -> bool {
    let started = Instant::now();
    while process::is_alive(vmm) {
        if started.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The last lines of a VMM's output, for an error saying why it did not run.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        format!("no output in {}", log.display())
    } else {
        tail
    }
}

fn default_vmm_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("triad-vmm")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("triad-vmm"))
}

fn host_cpus() -> u32 {
    // SAFETY: sysconf reads a system value and has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).unwrap_or(1).max(1)
}

fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

/// Makes the files of the state directory that hold secrets private again, with a warning,
/// if others could read them.
fn check_secrets(dir: &Path) -> Result<(), Error> {
    for name in [
        "node-token",
        "state.json",
        "cluster.json",
        "tls/self.key",
        "tls/node.key",
    ] {
        let path = dir.join(name);
        let repaired = triad_api::secrets::check(&path)
            .map_err(|e| Error::System(format!("checking the mode of {}: {e}", path.display())))?;
        if let Some(mode) = repaired {
            tracing::warn!(
                "{} was mode {mode:o}, readable by others: made it 0600",
                path.display()
            );
        }
    }
    Ok(())
}
