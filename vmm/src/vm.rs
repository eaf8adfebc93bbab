//! One boot of a VM: KVM objects, guest memory, devices and running vCPUs, built by one linear
//! recipe from a `VmSpec`.
//!
//! A reboot throws the whole `Vm` away and builds a new one from the same spec, so no state of
//! the previous boot (memory, device registers, vCPU state) can leak into the next.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP, KVM_TSS};
use crate::arch::x86_64::{self as arch, cpuid, regs, BootSetup};
use crate::devices::serial::{GuestSerial, SerialOutput, COM1_IRQ};
use crate::devices::virtio::blk::backend::{open_image, BlkBackend, FileBackend};
use crate::devices::virtio::blk::uring::UringBackend;
use crate::devices::virtio::blk::Block;
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::net::tap::Tap;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::ratelimit::RateLimiter;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{MmioBus, PortBus};
use crate::loader;
use crate::memory::{self, GuestMemoryMmap};
use crate::spec::{rate_limiter, VirtioKind, VmSpec};
use crate::vcpu::{VcpuContext, Vcpus};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("creating the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("setting up the VM's {0}")]
    Platform(&'static str, #[source] kvm_ioctls::Error),
    #[error("setting up guest memory")]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error("writing boot structures")]
    Boot(#[from] arch::BootError),
    #[error("creating the serial interrupt")]
    SerialIrq(#[source] std::io::Error),
    #[error("creating vCPU {id}")]
    CreateVcpu {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("setting CPUID of vCPU {id}")]
    Cpuid {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the filtered CPUID has more entries than KVM accepts")]
    CpuidTooLarge,
    #[error("setting registers of vCPU {id}")]
    Registers {
        id: u8,
        #[source]
        source: regs::RegsError,
    },
    #[error("creating the {kind:?} device")]
    Device {
        kind: VirtioKind,
        #[source]
        source: std::io::Error,
    },
    #[error("opening drive {id}")]
    Drive {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("NIC {id}: opening tap {tap}")]
    Tap {
        id: String,
        tap: String,
        #[source]
        source: std::io::Error,
    },
    #[error("wiring the {kind:?} device into KVM")]
    DeviceKvm {
        kind: VirtioKind,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("starting vCPU threads")]
    StartVcpus(#[source] std::io::Error),
}

/// A running boot. Dropping it stops the vCPUs and frees everything.
#[derive(Debug)]
pub struct Vm {
    // Field order is drop order: vCPU threads stop before the VM fd and memory go away.
    vcpus: Vcpus,
    virtio: VirtioDevices,
    _vm: VmFd,
    _memory: GuestMemoryMmap,
}

impl Vm {
    /// Builds the VM for `spec` and starts its vCPUs.
    pub fn boot(
        kvm: &Kvm,
        spec: &VmSpec,
        serial: SerialOutput,
        cx: impl FnOnce(Arc<PortBus>, Arc<MmioBus>) -> VcpuContext,
    ) -> Result<Self, BuildError> {
        // 1. Guest memory, registered before the in-kernel irqchip exists: once it does, every
        // memory-slot change waits for a KVM SRCU grace period (measured here: ~60 µs before,
        // 5-12 ms after). Mapped before the VM fd so that on an error it outlives the VM that
        // still has it registered.
        let mem = memory::create(spec.mem_bytes)?;
        let vm = kvm.create_vm().map_err(BuildError::CreateVm)?;
        memory::register(&vm, &mem)?;

        // 2. The in-kernel platform: IOAPIC + PIC + LAPICs, PIT.
        vm.set_tss_address(usize::try_from(KVM_TSS).unwrap_or(usize::MAX))
            .map_err(|e| BuildError::Platform("TSS", e))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP)
            .map_err(|e| BuildError::Platform("identity map", e))?;
        vm.create_irq_chip()
            .map_err(|e| BuildError::Platform("irqchip", e))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(|e| BuildError::Platform("PIT", e))?;

        // 3. Kernel, initrd and the boot structures that describe them.
        let kernel = loader::load_kernel(&mem, &spec.kernel)?;
        let initrd = spec
            .initrd
            .as_deref()
            .map(|path| loader::load_initrd(&mem, path, &kernel, spec.mem_bytes))
            .transpose()?;
        let entry = arch::write_boot_structures(
            &mem,
            &BootSetup {
                kernel: kernel.entry,
                cmdline: &spec.kernel_cmdline(),
                initrd,
                mem_bytes: spec.mem_bytes,
                vcpus: spec.vcpus,
            },
        )?;

        // 4. Devices.
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(BuildError::SerialIrq)?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(|e| BuildError::Platform("serial irqfd", e))?;
        let bus = Arc::new(PortBus::new(GuestSerial::new(serial, Some(serial_irq))));
        let virtio = attach_virtio(&vm, &mem, spec)?;
        let mmio = Arc::new(virtio.bus());

        // 5. vCPUs: CPUID and MSRs for all, registers for the boot vCPU.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| BuildError::Platform("supported CPUID", e))?;
        let mut fds = Vec::with_capacity(usize::from(spec.vcpus));
        for id in 0..spec.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|source| BuildError::CreateVcpu { id, source })?;
            let mut entries = supported.as_slice().to_vec();
            cpuid::filter(&mut entries, id, spec.vcpus);
            let cpuid = CpuId::from_entries(&entries).map_err(|_| BuildError::CpuidTooLarge)?;
            fd.set_cpuid2(&cpuid)
                .map_err(|source| BuildError::Cpuid { id, source })?;
            regs::setup_common(&fd).map_err(|source| BuildError::Registers { id, source })?;
            if id == 0 {
                regs::setup_boot_vcpu(&fd, entry)
                    .map_err(|source| BuildError::Registers { id, source })?;
            }
            fds.push(fd);
        }

        // 6. Go.
        let vcpus = Vcpus::start(fds, &cx(bus, mmio)).map_err(BuildError::StartVcpus)?;
        Ok(Self {
            vcpus,
            virtio,
            _vm: vm,
            _memory: mem,
        })
    }

    /// Each virtio device's counters.
    pub fn device_counters(&self) -> Vec<(VirtioKind, std::collections::BTreeMap<String, u64>)> {
        self.virtio
            .devices
            .iter()
            .map(|(kind, _, t)| {
                let counters = t.lock().unwrap_or_else(|e| e.into_inner()).counters();
                (*kind, counters.snapshot())
            })
            .collect()
    }

    /// New limits for a running device; false when there is no such device.
    pub fn set_rate_limiter(&self, device: VirtioKind, limiter: RateLimiter) -> bool {
        self.virtio
            .devices
            .iter()
            .find(|(kind, ..)| *kind == device)
            .is_some_and(|(_, _, t)| {
                t.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_rate_limiter(limiter)
            })
    }

    pub fn pause(&self) {
        self.vcpus.pause();
    }

    pub fn resume(&self) {
        self.vcpus.resume();
    }

    pub fn vcpu_time_ns(&self) -> Vec<u64> {
        self.vcpus.cpu_time_ns()
    }
}

/// A boot's virtio devices and their I/O threads (which stop when this is dropped).
#[derive(Debug)]
struct VirtioDevices {
    devices: Vec<(VirtioKind, u64, Arc<Mutex<MmioTransport>>)>,
    _workers: Vec<Worker>,
}

impl VirtioDevices {
    /// The MMIO windows the vCPUs dispatch to.
    fn bus(&self) -> MmioBus {
        let mut bus = MmioBus::default();
        for (_, base, transport) in &self.devices {
            bus.insert(*base, transport.clone());
        }
        bus
    }
}

/// Creates the spec's virtio devices: each gets its MMIO window on the bus, an irqfd on its
/// IOAPIC pin, an ioeventfd per queue on QueueNotify, and an I/O thread serving those.
fn attach_virtio(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    spec: &VmSpec,
) -> Result<VirtioDevices, BuildError> {
    let mut devices = Vec::with_capacity(spec.virtio.len());
    let mut workers = Vec::with_capacity(spec.virtio.len());
    for slot in &spec.virtio {
        let kind = slot.kind;
        let io = |source| BuildError::Device { kind, source };
        let kvm = |source| BuildError::DeviceKvm { kind, source };
        let device: Box<dyn VirtioDevice> = match kind {
            VirtioKind::Rng => Box::new(Rng::new().map_err(io)?),
            VirtioKind::Net { nic } => {
                let n = &spec.nics[nic];
                let existed = std::path::Path::new("/sys/class/net").join(&n.tap).exists();
                let tap = Tap::open(&n.tap)
                    .and_then(|tap| {
                        // A TAP we just created is down; one netd made is netd's to manage.
                        if !existed {
                            tap.set_up()?;
                        }
                        Ok(tap)
                    })
                    .map_err(|source| BuildError::Tap {
                        id: n.id.clone(),
                        tap: n.tap.clone(),
                        source,
                    })?;
                Box::new(Net::new(tap, n.mac, rate_limiter(n.qos.as_ref())).map_err(io)?)
            }
            VirtioKind::Block { drive } => {
                let d = &spec.drives[drive];
                let drive_err = |source| BuildError::Drive {
                    id: d.id.clone(),
                    source,
                };
                let backend = disk_backend(d).map_err(drive_err)?;
                let limiter = rate_limiter(d.qos.as_ref());
                Box::new(Block::new(&d.id, backend, d.read_only, limiter).map_err(io)?)
            }
        };
        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(io)?;
        vm.register_irqfd(&irqfd, slot.irq).map_err(kvm)?;
        let transport =
            MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(Some(irqfd))));
        let mut queue_events = Vec::new();
        for queue in 0..u32::try_from(transport.queue_count()).unwrap_or(0) {
            let event = EventFd::new(EFD_NONBLOCK).map_err(io)?;
            let notify = IoEventAddress::Mmio(slot.base + REG_QUEUE_NOTIFY);
            vm.register_ioevent(&event, &notify, queue).map_err(kvm)?;
            queue_events.push(event);
        }
        let transport = Arc::new(Mutex::new(transport));
        devices.push((kind, slot.base, transport.clone()));
        let name = format!("virtio-{kind:?}-{:x}", slot.base).to_lowercase();
        workers.push(Worker::spawn(name, transport, queue_events).map_err(io)?);
    }
    Ok(VirtioDevices {
        devices,
        _workers: workers,
    })
}

/// An RBD image through librbd, or a file or block device: on io_uring when the host allows
/// it (many requests in flight), else with synchronous I/O.
fn disk_backend(d: &triad_api::vmm::DriveConfig) -> std::io::Result<Box<dyn BlkBackend>> {
    #[cfg(feature = "rbd")]
    if let Some(Ok((pool, image))) = crate::spec::rbd_image(&d.path) {
        use crate::devices::virtio::blk::rbd::{RbdBackend, RbdTarget};
        let ceph = d.ceph.clone().unwrap_or_default();
        let target = RbdTarget {
            pool,
            image,
            conf: ceph.conf,
            client: ceph.client,
        };
        let depth = crate::devices::virtio::blk::QUEUE_SIZE;
        return Ok(Box::new(RbdBackend::open(
            &target,
            d.read_only,
            d.cache,
            depth,
        )?));
    }
    let file = open_image(&d.path, d.read_only, d.cache)?;
    let sync_copy = file.try_clone()?;
    match UringBackend::new(file, crate::devices::virtio::blk::QUEUE_SIZE) {
        Ok(uring) => Ok(Box::new(uring)),
        Err(e) => {
            tracing::warn!("io_uring unavailable ({e}); disks use synchronous I/O");
            Ok(Box::new(FileBackend::from_file(sync_copy)?))
        }
    }
}
