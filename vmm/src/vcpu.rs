//! vCPU threads: each runs `KVM_RUN` in a loop, serves port I/O from the shared `PortBus`, and
//! parks when the VMM pauses or stops the VM.
//!
//! ```text
//!   Run --pause--> Paused --resume--> Run
//!    |                |
//!    +-----stop-------+--> thread ends        (a guest exit, reset or error also ends it)
//! ```
//!
//! A vCPU blocked in `KVM_RUN` (the guest executing `hlt` never leaves the kernel with the
//! in-kernel irqchip) is reached with a real-time signal whose handler does nothing: the
//! signal makes `KVM_RUN` return `EINTR`, and the thread then reads the desired state. The
//! VMM repeats the kick until every thread has parked, so a signal that lands just before a
//! thread enters `KVM_RUN` cannot be lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::{IoOutcome, MmioBus, PortBus};
use crate::Event;

/// What a vCPU thread tells the VMM when it stops on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEvent {
    GuestExit(u8),
    Reset,
    Failed { vcpu: u8, reason: String },
}

/// KVM exits by reason, for `GET /vm/metrics`; kept across reboots.
#[derive(Debug, Default)]
pub struct ExitCounters {
    io_in: AtomicU64,
    io_out: AtomicU64,
    mmio_read: AtomicU64,
    mmio_write: AtomicU64,
    hlt: AtomicU64,
    shutdown: AtomicU64,
    interrupted: AtomicU64,
    other: AtomicU64,
}

impl ExitCounters {
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        [
            ("io_in", &self.io_in),
            ("io_out", &self.io_out),
            ("mmio_read", &self.mmio_read),
            ("mmio_write", &self.mmio_write),
            ("hlt", &self.hlt),
            ("shutdown", &self.shutdown),
            ("interrupted", &self.interrupted),
            ("other", &self.other),
        ]
        .into_iter()
        .map(|(name, c)| (name.to_owned(), c.load(Ordering::Relaxed)))
        .collect()
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Desired {
    Run,
    Pause,
    Stop,
}

#[derive(Debug)]
struct ControlState {
    desired: Desired,
    parked: usize,
    ended: usize,
}

/// The desired run state of one boot's vCPUs and how many of them have noticed it.
#[derive(Debug)]
struct Control {
    state: Mutex<ControlState>,
    changed: Condvar,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// End-of-thread bookkeeping that runs however the thread ends, a panic included: the VMM
/// hears of the failure instead of running on with a vCPU less.
struct EndGuard<'a> {
    control: Arc<Control>,
    cx: &'a VcpuContext,
    id: u8,
}

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.cx.events.send(Event::Vcpu {
                boot_id: self.cx.boot_id,
                event: VcpuEvent::Failed {
                    vcpu: self.id,
                    reason: "the vCPU thread panicked".into(),
                },
            });
        }
        self.control.lock().ended += 1;
        self.control.changed.notify_all();
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the no-op kick handler once per process; a failure is remembered, since kicking
/// without the handler would kill the process.
fn install_kick_handler() -> std::io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.errno()))
        .map_err(std::io::Error::from_raw_os_error)
}

/// The vCPU threads of one boot.
#[derive(Debug)]
pub struct Vcpus {
    threads: Vec<(JoinHandle<()>, Arc<AtomicU64>)>,
    control: Arc<Control>,
}

/// Everything a vCPU thread shares with its siblings and the VMM.
#[derive(Debug, Clone)]
pub struct VcpuContext {
    pub bus: Arc<PortBus>,
    pub mmio: Arc<MmioBus>,
    pub counters: Arc<ExitCounters>,
    pub events: Sender<Event>,
    /// Which boot these vCPUs belong to, so the VMM can ignore a previous boot's stragglers.
    pub boot_id: u32,
}

impl Vcpus {
    /// Starts one thread per vCPU fd, running at once.
    pub fn start(fds: Vec<VcpuFd>, cx: &VcpuContext) -> std::io::Result<Self> {
        install_kick_handler()?;
        let control = Arc::new(Control {
            state: Mutex::new(ControlState {
                desired: Desired::Run,
                parked: 0,
                ended: 0,
            }),
            changed: Condvar::new(),
        });
        let mut vcpus = Self {
            threads: Vec::with_capacity(fds.len()),
            control,
        };
        for (id, fd) in (0u8..).zip(fds) {
            let tid = Arc::new(AtomicU64::new(0));
            let runner = Runner {
                id,
                fd,
                cx: cx.clone(),
                control: vcpus.control.clone(),
            };
            let thread_tid = tid.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .stack_size(256 << 10)
                .spawn(move || {
                    // SAFETY: gettid has no preconditions and cannot fail.
                    let tid = unsafe { libc::gettid() };
                    thread_tid.store(u64::try_from(tid).unwrap_or(0), Ordering::Relaxed);
                    runner.run();
                });
            match spawned {
                Ok(handle) => vcpus.threads.push((handle, tid)),
                Err(e) => {
                    vcpus.stop();
                    return Err(e);
                }
            }
        }
        Ok(vcpus)
    }

    /// Parks every vCPU outside `KVM_RUN`; returns once all have parked or ended.
    pub fn pause(&self) {
        self.control.lock().desired = Desired::Pause;
        self.kick_until(|s| s.parked + s.ended == self.threads.len());
    }

    pub fn resume(&self) {
        self.control.lock().desired = Desired::Run;
        self.control.changed.notify_all();
    }

    /// Ends every vCPU thread and waits for them.
    pub fn stop(&mut self) {
        self.control.lock().desired = Desired::Stop;
        self.control.changed.notify_all();
        self.kick_until(|s| s.ended == self.threads.len());
        for (handle, _) in self.threads.drain(..) {
            // A vCPU thread that panicked has already reported nothing more we could use.
            let _ = handle.join();
        }
    }

    /// CPU time used by each vCPU thread so far, in nanoseconds.
    pub fn cpu_time_ns(&self) -> Vec<u64> {
        self.threads
            .iter()
            .map(|(_, tid)| thread_cpu_ns(tid.load(Ordering::Relaxed)).unwrap_or(0))
            .collect()
    }

    fn kick_until(&self, done: impl Fn(&ControlState) -> bool) {
        let mut state = self.control.lock();
        while !done(&state) {
            drop(state);
            for (handle, _) in &self.threads {
                if !handle.is_finished() {
                    // ESRCH here means the thread just ended, which is what we want anyway.
                    let _ = handle.kill(kick_signal());
                }
            }
            state = self.control.lock();
            if !done(&state) {
                state = self
                    .control
                    .changed
                    .wait_timeout(state, Duration::from_millis(5))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

impl Drop for Vcpus {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// Nanoseconds thread `tid` of this process has run, from the scheduler's statistics.
fn thread_cpu_ns(tid: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

struct Runner {
    id: u8,
    fd: VcpuFd,
    cx: VcpuContext,
    control: Arc<Control>,
}

impl Runner {
    fn run(mut self) {
        let cx = self.cx.clone();
        let _end = EndGuard {
            control: self.control.clone(),
            cx: &cx,
            id: self.id,
        };
        while self.wait_until_runnable() {
            if let Some(event) = self.run_once() {
                // The VMM may already be gone; then nobody needs the event.
                let _ = self.cx.events.send(Event::Vcpu {
                    boot_id: self.cx.boot_id,
                    event,
                });
                return;
            }
        }
    }

    /// Blocks while paused; false when the thread must end.
    fn wait_until_runnable(&self) -> bool {
        let mut state = self.control.lock();
        loop {
            match state.desired {
                Desired::Run => return true,
                Desired::Stop => return false,
                Desired::Pause => {
                    state.parked += 1;
                    self.control.changed.notify_all();
                    state = self
                        .control
                        .changed
                        .wait_while(state, |s| s.desired == Desired::Pause)
                        .unwrap_or_else(|e| e.into_inner());
                    state.parked -= 1;
                }
            }
        }
    }

    /// One `KVM_RUN`; `Some` when this vCPU must stop and tell the VMM why.
    fn run_once(&mut self) -> Option<VcpuEvent> {
        let c = &self.cx.counters;
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                bump(&c.io_out);
                match self.cx.bus.write(port, data) {
                    IoOutcome::Continue => None,
                    IoOutcome::GuestExit(code) => Some(VcpuEvent::GuestExit(code)),
                    IoOutcome::Reset => Some(VcpuEvent::Reset),
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                bump(&c.io_in);
                self.cx.bus.read(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                bump(&c.mmio_read);
                self.cx.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                bump(&c.mmio_write);
                self.cx.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => {
                bump(&c.hlt);
                None
            }
            // A triple fault: a PC resets.
            Ok(VcpuExit::Shutdown) => {
                bump(&c.shutdown);
                Some(VcpuEvent::Reset)
            }
            Ok(VcpuExit::Intr) => {
                bump(&c.interrupted);
                None
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(self.failed(format!(
                "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => {
                Some(self.failed(
                    "KVM internal error (the guest ran something KVM cannot emulate)".into(),
                ))
            }
            Ok(other) => {
                bump(&c.other);
                tracing::debug!(vcpu = self.id, "unhandled exit {other:?}");
                None
            }
            Err(e) if e.errno() == libc::EINTR => {
                bump(&c.interrupted);
                None
            }
            // An AP still waiting for its SIPI (nested hypervisors return instead of blocking);
            // back off a little so a waiting vCPU does not spin a host core.
            Err(e) if e.errno() == libc::EAGAIN => {
                std::thread::sleep(Duration::from_micros(200));
                None
            }
            Err(e) => Some(self.failed(format!("KVM_RUN failed: {e}"))),
        }
    }

    fn failed(&self, reason: String) -> VcpuEvent {
        VcpuEvent::Failed {
            vcpu: self.id,
            reason,
        }
    }
}
