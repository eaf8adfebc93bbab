//! The VMM's event loop: owns the VM's lifecycle and is the only place that changes it.
//!
//! Inputs arrive on one channel (API calls, vCPU events, signals); each is handled to the end
//! before the next, so the state machine below needs no locks.
//!
//! ```text
//!  NotConfigured --config--> Configured --start--> Running <--pause / resume--> Paused
//!                               ^   |                 |  reboot or guest reset: new boot
//!                               +---+ config          +--shutdown / guest exit / failure--> Stopped
//! ```

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use triad_api::vmm::{DevicePatch, SerialMode, VmAction, VmConfig, VmInfo, VmMetrics, VmState};

use crate::api::{ApiCall, ApiError, ApiOk, ApiReply, ApiRequest, DeviceKind};
use crate::devices::serial::SerialOutput;
use crate::spec::{rate_limiter, HostLimits, VirtioKind, VmSpec};
use crate::vcpu::{ExitCounters, VcpuContext, VcpuEvent};
use crate::vm::Vm;
use crate::Event;

/// How long a terminating VMM waits for the API server to deliver its last replies.
const REPLY_GRACE: Duration = Duration::from_secs(1);

/// Where a serial log rotates unless the config says otherwise.
const DEFAULT_SERIAL_MAX_BYTES: u64 = 16 << 20;

/// Exit status when the VMM itself fails (the guest's own statuses come from the debug port).
pub const EXIT_VMM_ERROR: i32 = 1;

#[derive(Debug)]
pub struct Vmm {
    kvm: Kvm,
    limits: HostLimits,
    events: Sender<Event>,
    config: Option<(VmConfig, VmSpec)>,
    state: VmState,
    vm: Option<Vm>,
    serial: Option<SerialOutput>,
    counters: Arc<ExitCounters>,
    /// Increases with every boot; events from an older boot's vCPUs are ignored.
    boot_id: u32,
    boots: u32,
    boot_started: Option<Instant>,
    replies_in_flight: usize,
    exit_status: Option<i32>,
}

impl Vmm {
    pub fn new(kvm: Kvm, events: Sender<Event>) -> Self {
        let limits = HostLimits::probe(&kvm);
        Self {
            kvm,
            limits,
            events,
            config: None,
            state: VmState::NotConfigured,
            vm: None,
            serial: None,
            counters: Arc::default(),
            boot_id: 0,
            boots: 0,
            boot_started: None,
            replies_in_flight: 0,
            exit_status: None,
        }
    }

    /// Validates and stores `config`; allowed until the VM starts.
    pub fn configure(&mut self, config: VmConfig) -> Result<(), ApiError> {
        if !matches!(self.state, VmState::NotConfigured | VmState::Configured) {
            return Err(ApiError::WrongState(format!(
                "the VM is {}; its config can only be set before it starts",
                state_name(self.state)
            )));
        }
        let spec =
            VmSpec::new(&config, self.limits).map_err(|e| ApiError::Invalid(e.to_string()))?;
        self.config = Some((config, spec));
        // A new config may name a new serial path; open it at the next start.
        self.serial = None;
        self.state = VmState::Configured;
        Ok(())
    }

    /// Boots the configured VM.
    pub fn start(&mut self) -> Result<(), ApiError> {
        if self.state != VmState::Configured {
            return Err(ApiError::WrongState(match self.state {
                VmState::NotConfigured => "the VM has no config yet; PUT /vm/config first".into(),
                s => format!("the VM is {}; start needs a configured VM", state_name(s)),
            }));
        }
        if self.serial.is_none() {
            self.serial = Some(self.open_serial()?);
        }
        self.boot()
    }

    /// Runs the loop until the VM is over; returns the process exit status once the guest's
    /// last serial output is written.
    pub fn run(mut self, events: Receiver<Event>) -> i32 {
        let status = self.serve(&events);
        if let Some(serial) = &self.serial {
            serial.finish(REPLY_GRACE);
        }
        status
    }

    fn serve(&mut self, events: &Receiver<Event>) -> i32 {
        loop {
            if let Some(status) = self.exit_status {
                if self.replies_in_flight == 0 {
                    return status;
                }
                match events.recv_timeout(REPLY_GRACE) {
                    Ok(Event::ReplyWritten) => self.replies_in_flight -= 1,
                    Ok(_) => {}
                    Err(_) => return status,
                }
                continue;
            }
            let Ok(event) = events.recv() else {
                return EXIT_VMM_ERROR;
            };
            match event {
                Event::Api(call) => self.handle_api(call),
                Event::ReplyWritten => {
                    self.replies_in_flight = self.replies_in_flight.saturating_sub(1)
                }
                Event::Vcpu { boot_id, event } if boot_id == self.boot_id => {
                    self.handle_vcpu(event)
                }
                Event::Vcpu { .. } => {}
                Event::Signal(sig) => {
                    tracing::info!("signal {sig}: powering off");
                    self.power_off(128 + sig);
                }
            }
        }
    }

    fn handle_api(&mut self, call: ApiCall) {
        let reply = self.answer(call.request);
        if call.reply.send(reply).is_ok() {
            self.replies_in_flight += 1;
        }
    }

    fn answer(&mut self, request: ApiRequest) -> ApiReply {
        match request {
            ApiRequest::GetVm => Ok(self.info()),
            ApiRequest::GetMetrics => Ok(ApiOk::Metrics(self.metrics())),
            ApiRequest::PutConfig(config) => self.configure(*config).map(|()| self.info()),
            ApiRequest::Action(action) => self.act(action).map(|()| self.info()),
            ApiRequest::PutDrive(drive) => self
                .edit_devices(|c| upsert(&mut c.drives, *drive, |d| &d.id))
                .map(|()| self.info()),
            ApiRequest::PutNet(net) => self
                .edit_devices(|c| upsert(&mut c.nets, *net, |n| &n.id))
                .map(|()| self.info()),
            ApiRequest::Patch { kind, id, patch } => {
                self.patch_device(kind, &id, patch).map(|()| self.info())
            }
        }
    }

    /// Changes the configured devices before the VM starts; the whole config is validated
    /// again and kept unchanged if it no longer holds.
    fn edit_devices(&mut self, edit: impl FnOnce(&mut VmConfig)) -> Result<(), ApiError> {
        let Some((config, _)) = &self.config else {
            return Err(ApiError::WrongState(
                "the VM has no config yet; PUT /vm/config first".into(),
            ));
        };
        let mut config = config.clone();
        edit(&mut config);
        self.configure(config)
    }

    /// New limits for a drive or NIC: kept in the config (a reboot keeps them) and applied
    /// at once to a running device.
    fn patch_device(
        &mut self,
        kind: DeviceKind,
        id: &str,
        patch: DevicePatch,
    ) -> Result<(), ApiError> {
        let Some((config, spec)) = &mut self.config else {
            return Err(ApiError::WrongState("the VM has no config yet".into()));
        };
        let (qos, index) = match kind {
            DeviceKind::Drive => {
                let i = config.drives.iter().position(|d| d.id == id);
                (i.map(|i| &mut config.drives[i].qos), i)
            }
            DeviceKind::Net => {
                let i = config.nets.iter().position(|n| n.id == id);
                (i.map(|i| &mut config.nets[i].qos), i)
            }
        };
        let (Some(qos), Some(index)) = (qos, index) else {
            return Err(ApiError::NotFound(format!(
                "no {} with id {id:?}",
                kind_name(kind)
            )));
        };
        if let Some(new) = &patch.qos {
            crate::spec::check_qos(new, kind == DeviceKind::Net)
                .map_err(|e| ApiError::Invalid(format!("{} {id}: {e}", kind_name(kind))))?;
        }
        *qos = patch.qos;
        match kind {
            DeviceKind::Drive => spec.drives[index].qos = patch.qos,
            DeviceKind::Net => spec.nics[index].qos = patch.qos,
        }
        if let Some(vm) = &self.vm {
            let device = match kind {
                DeviceKind::Drive => VirtioKind::Block { drive: index },
                DeviceKind::Net => VirtioKind::Net { nic: index },
            };
            vm.set_rate_limiter(device, rate_limiter(patch.qos.as_ref()));
        }
        Ok(())
    }

    fn act(&mut self, action: VmAction) -> Result<(), ApiError> {
        let running = matches!(self.state, VmState::Running | VmState::Paused);
        let wrong = |needs: &str| {
            Err(ApiError::WrongState(format!(
                "the VM is {}; {} needs a {needs} VM",
                state_name(self.state),
                action_name(action)
            )))
        };
        match action {
            VmAction::Start => self.start(),
            VmAction::Pause if self.state == VmState::Running => {
                if let Some(vm) = &self.vm {
                    vm.pause();
                }
                self.state = VmState::Paused;
                Ok(())
            }
            VmAction::Pause => wrong("running"),
            VmAction::Resume if self.state == VmState::Paused => {
                if let Some(vm) = &self.vm {
                    vm.resume();
                }
                self.state = VmState::Running;
                Ok(())
            }
            VmAction::Resume => wrong("paused"),
            VmAction::Shutdown if running => {
                self.power_off(0);
                Ok(())
            }
            VmAction::Shutdown => wrong("running or paused"),
            VmAction::Reboot if running => self.reboot(),
            VmAction::Reboot => wrong("running or paused"),
        }
    }

    fn handle_vcpu(&mut self, event: VcpuEvent) {
        match event {
            VcpuEvent::GuestExit(code) => {
                tracing::info!("guest powered off with status {code}");
                self.power_off(i32::from(code));
            }
            VcpuEvent::Reset => {
                tracing::info!("guest reset");
                let was_paused = self.state == VmState::Paused;
                // A failed reboot has already powered off and said why.
                if self.reboot().is_ok() && was_paused {
                    // The reset raced with a pause the client was told about; honour the pause.
                    self.act(VmAction::Pause).ok();
                }
            }
            VcpuEvent::Failed { vcpu, reason } => {
                tracing::error!(vcpu, "{reason}");
                eprintln!("triad-vmm: error: vCPU {vcpu}: {reason}");
                self.power_off(EXIT_VMM_ERROR);
            }
        }
    }

    /// Replaces the running boot with a new one; if that fails the VM is powered off, since
    /// no boot is left to run.
    fn reboot(&mut self) -> Result<(), ApiError> {
        self.vm = None;
        self.boot().inspect_err(|e| {
            tracing::error!("rebooting: {e}");
            eprintln!("triad-vmm: error: rebooting: {e}");
            self.power_off(EXIT_VMM_ERROR);
        })
    }

    fn power_off(&mut self, status: i32) {
        self.vm = None;
        if self.state != VmState::NotConfigured {
            self.state = VmState::Stopped;
        }
        self.exit_status = Some(status);
    }

    fn boot(&mut self) -> Result<(), ApiError> {
        let (Some((_, spec)), Some(serial)) = (&self.config, &self.serial) else {
            return Err(ApiError::WrongState("the VM has no config".into()));
        };
        self.boot_id += 1;
        let boot_id = self.boot_id;
        let counters = self.counters.clone();
        let events = self.events.clone();
        let vm = Vm::boot(&self.kvm, spec, serial.clone(), |bus, mmio| VcpuContext {
            bus,
            mmio,
            counters,
            events,
            boot_id,
        })
        .map_err(|e| ApiError::Failed(error_chain(&e)))?;
        self.vm = Some(vm);
        self.boots += 1;
        self.boot_started = Some(Instant::now());
        self.state = VmState::Running;
        Ok(())
    }

    fn open_serial(&self) -> Result<SerialOutput, ApiError> {
        let Some((config, _)) = &self.config else {
            return Err(ApiError::WrongState("the VM has no config".into()));
        };
        match (config.serial.mode, &config.serial.path) {
            (SerialMode::File, Some(path)) => {
                let max = config.serial.max_bytes.unwrap_or(DEFAULT_SERIAL_MAX_BYTES);
                SerialOutput::file(path, max)
                    .map_err(|e| ApiError::Invalid(format!("serial.path {}: {e}", path.display())))
            }
            (SerialMode::Off, _) => Ok(SerialOutput::off()),
            _ => SerialOutput::stdout()
                .map_err(|e| ApiError::Failed(format!("starting the serial output thread: {e}"))),
        }
    }

    fn info(&self) -> ApiOk {
        ApiOk::Info(Box::new(VmInfo {
            state: self.state,
            config: self.config.as_ref().map(|(c, _)| c.clone()),
            uptime_ms: self
                .boot_started
                .filter(|_| self.vm.is_some())
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
            boots: self.boots,
        }))
    }

    fn metrics(&self) -> VmMetrics {
        let (rss_kib, peak_rss_kib) = process_rss_kib();
        let mut metrics = VmMetrics {
            exits: self.counters.snapshot(),
            vcpu_time_ns: self.vm.as_ref().map(Vm::vcpu_time_ns).unwrap_or_default(),
            rss_kib,
            peak_rss_kib,
            ..Default::default()
        };
        if let (Some(vm), Some((_, spec))) = (&self.vm, &self.config) {
            for (kind, counters) in vm.device_counters() {
                match kind {
                    VirtioKind::Block { drive } => {
                        metrics
                            .drives
                            .insert(spec.drives[drive].id.clone(), counters);
                    }
                    VirtioKind::Net { nic } => {
                        metrics.nets.insert(spec.nics[nic].id.clone(), counters);
                    }
                    VirtioKind::Rng => {}
                }
            }
        }
        metrics
    }
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn process_rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// An error and its causes on one line: "a: b: c".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Replaces the element with the same id, or appends.
fn upsert<T>(list: &mut Vec<T>, item: T, id: impl Fn(&T) -> &String) {
    match list.iter().position(|x| id(x) == id(&item)) {
        Some(i) => list[i] = item,
        None => list.push(item),
    }
}

fn kind_name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Drive => "drive",
        DeviceKind::Net => "NIC",
    }
}

fn state_name(state: VmState) -> &'static str {
    match state {
        VmState::NotConfigured => "not configured",
        VmState::Configured => "configured",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::Stopped => "stopped",
    }
}

fn action_name(action: VmAction) -> &'static str {
    match action {
        VmAction::Start => "start",
        VmAction::Pause => "pause",
        VmAction::Resume => "resume",
        VmAction::Shutdown => "shutdown",
        VmAction::Reboot => "reboot",
    }
}
