//! `VmConfig` (what the user wrote) becomes `VmSpec` (what this host can boot) in one place.
//!
//! Every rule a config can break is checked here, before any KVM object or file exists, so a
//! bad config costs nothing and its error names the field.

use std::path::{Path, PathBuf};

use triad_api::vmm::{CephClient, DriveConfig, NetConfig, Qos, SerialMode, VmConfig};

use crate::arch::x86_64::layout::{VIRTIO_IRQ_FIRST, VIRTIO_IRQ_LAST, VIRTIO_MMIO_BASE};
use crate::arch::x86_64::mptable;
use crate::devices::virtio::mmio::MMIO_LEN;
use crate::devices::virtio::net::tap::MAX_NAME_LEN;
use crate::devices::virtio::ratelimit::{RateLimiter, DEFAULT_BURST};
use crate::loader;

/// The smallest guest we boot: low memory, the kernel at 1 MiB and some room after it.
pub const MIN_MEMORY_MIB: u64 = 4;

/// Limits of the host a config is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub max_vcpus: u32,
    pub memory_mib: u64,
}

impl HostLimits {
    /// This host's limits: KVM's vCPU limit and the physical memory.
    pub fn probe(kvm: &kvm_ioctls::Kvm) -> Self {
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(u64::MAX, |kib| kib >> 10);
        Self {
            max_vcpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX),
            memory_mib,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("boot.kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("boot.initrd {path}: {reason}")]
    Initrd { path: PathBuf, reason: String },
    #[error("boot.cmdline contains a NUL byte")]
    CmdlineNul,
    #[error("boot.cmdline is {len} bytes with the device announcements, more than the {max} this kernel accepts")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("machine.vcpus must be at least 1")]
    NoVcpus,
    #[error("machine.vcpus is {asked}, but this host allows at most {max}")]
    TooManyVcpus { asked: u32, max: u32 },
    #[error("machine.memory_mib is {asked}, but a VM needs at least {MIN_MEMORY_MIB}")]
    TooLittleMemory { asked: u64 },
    #[error("machine.memory_mib is {asked}, but this host has only {host} MiB")]
    TooMuchMemory { asked: u64, host: u64 },
    #[error("serial.path is required when serial.mode is \"file\"")]
    SerialPathMissing,
    #[error("serial.path {0} exists and is not a regular file")]
    SerialPathNotFile(PathBuf),
    #[error("serial.path is only allowed when serial.mode is \"file\"")]
    SerialPathUnexpected,
    #[error("serial.max_bytes must be at least 1, and only goes with serial.mode \"file\"")]
    SerialMaxBytes,
    #[error("drives[{index}] ({id}): {reason}")]
    Drive {
        index: usize,
        id: String,
        reason: String,
    },
    #[error("{count} drives; a VM has at most {MAX_DRIVES}")]
    TooManyDrives { count: usize },
    #[error("the VM has {asked} virtio devices; at most {max} fit")]
    TooManyDevices { asked: usize, max: usize },
    #[error("nets[{index}] ({id}): {reason}")]
    Net {
        index: usize,
        id: String,
        reason: String,
    },
}

/// The kinds of virtio device a VM can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioKind {
    /// `drives[drive]` of the spec.
    Block {
        drive: usize,
    },
    /// `nics[nic]` of the spec.
    Net {
        nic: usize,
    },
    Rng,
}

/// A virtio device with its MMIO window and interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    pub kind: VirtioKind,
    pub base: u64,
    pub irq: u32,
}

/// A config this host can boot.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The command line as the user wrote it.
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_bytes: u64,
    pub drives: Vec<DriveConfig>,
    pub nics: Vec<NicSpec>,
    pub virtio: Vec<VirtioSlot>,
}

/// A NIC with its MAC decided.
#[derive(Debug, Clone, PartialEq)]
pub struct NicSpec {
    pub id: String,
    pub tap: String,
    pub mac: [u8; 6],
    pub qos: Option<Qos>,
}

/// Longest burst a limit may have; longer ones make a limit meaningless.
const MAX_BURST_SECS: f64 = 3600.0;

/// Checks a device's limits; `bytes_only` for NICs, which have no operation count.
pub fn check_qos(qos: &Qos, bytes_only: bool) -> Result<(), String> {
    if bytes_only && qos.iops.is_some() {
        return Err("qos.iops: NICs are limited in bytes per second only".into());
    }
    match qos.burst {
        Some(b) if !(0.0..=MAX_BURST_SECS).contains(&b) => Err(format!(
            "qos.burst must be between 0 and {MAX_BURST_SECS} seconds"
        )),
        _ => Ok(()),
    }
}

/// The limiter a device starts with for `qos`.
pub fn rate_limiter(qos: Option<&Qos>) -> RateLimiter {
    let Some(q) = qos else {
        return RateLimiter::default();
    };
    let burst = q.burst.map_or(DEFAULT_BURST, |b| {
        std::time::Duration::from_secs_f64(b.clamp(0.0, MAX_BURST_SECS))
    });
    RateLimiter::new(q.iops, q.bytes_per_sec, burst, std::time::Instant::now())
}

impl VmSpec {
    /// The command line the kernel gets: the user's, with the virtio devices announced in
    /// Linux's `virtio_mmio.device=<size>@<base>:<irq>` form. They go before a `--`, after
    /// which words belong to init, not the kernel.
    pub fn kernel_cmdline(&self) -> String {
        kernel_cmdline(&self.cmdline, &self.virtio)
    }
}

fn kernel_cmdline(user: &str, virtio: &[VirtioSlot]) -> String {
    let devices: Vec<String> = virtio
        .iter()
        .map(|d| format!("virtio_mmio.device=4K@{:#x}:{}", d.base, d.irq))
        .collect();
    if devices.is_empty() {
        return user.to_owned();
    }
    let (kernel, init) = match user.split_once(" -- ") {
        Some((k, i)) => (k, Some(i)),
        None if user.starts_with("-- ") || user == "--" => {
            ("", user.strip_prefix("--").map(str::trim_start))
        }
        None => (user, None),
    };
    let mut out: Vec<&str> = kernel.split_whitespace().collect();
    out.extend(devices.iter().map(String::as_str));
    let mut out = out.join(" ");
    if let Some(init) = init {
        out.push_str(" -- ");
        out.push_str(init);
    }
    out
}

/// The most virtio devices one VM may have (MMIO windows are plentiful; this bounds the
/// threads and file descriptors one VMM holds).
pub const MAX_VIRTIO_DEVICES: usize = 64;

/// Assigns MMIO windows and IOAPIC pins to the VM's virtio devices, in order. Past 19 devices
/// pins are shared: Linux's virtio-mmio driver registers its handler as shared and reads each
/// device's InterruptStatus, so a shared line costs a register read, not a lost interrupt.
fn virtio_slots(kinds: &[VirtioKind]) -> Result<Vec<VirtioSlot>, SpecError> {
    if kinds.len() > MAX_VIRTIO_DEVICES {
        return Err(SpecError::TooManyDevices {
            asked: kinds.len(),
            max: MAX_VIRTIO_DEVICES,
        });
    }
    let pins = VIRTIO_IRQ_LAST - VIRTIO_IRQ_FIRST + 1;
    Ok((0u32..)
        .zip(kinds)
        .map(|(i, &kind)| VirtioSlot {
            kind,
            base: VIRTIO_MMIO_BASE + u64::from(i) * MMIO_LEN,
            irq: VIRTIO_IRQ_FIRST + i % pins,
        })
        .collect())
}

impl VmSpec {
    pub fn new(config: &VmConfig, host: HostLimits) -> Result<Self, SpecError> {
        check_drives(&config.drives)?;
        let nics = check_nets(&config.nets)?;
        let m = config.machine;
        let max_vcpus = host.max_vcpus.min(u32::from(mptable::MAX_VCPUS));
        let vcpus = match m.vcpus {
            0 => return Err(SpecError::NoVcpus),
            n if n > max_vcpus => {
                return Err(SpecError::TooManyVcpus {
                    asked: n,
                    max: max_vcpus,
                })
            }
            n => u8::try_from(n).map_err(|_| SpecError::TooManyVcpus {
                asked: n,
                max: max_vcpus,
            })?,
        };
        if m.memory_mib < MIN_MEMORY_MIB {
            return Err(SpecError::TooLittleMemory {
                asked: m.memory_mib,
            });
        }
        if m.memory_mib > host.memory_mib {
            return Err(SpecError::TooMuchMemory {
                asked: m.memory_mib,
                host: host.memory_mib,
            });
        }
        let mem_bytes = m
            .memory_mib
            .checked_mul(1 << 20)
            .ok_or(SpecError::TooMuchMemory {
                asked: m.memory_mib,
                host: host.memory_mib,
            })?;
        let boot = &config.boot;
        if boot.cmdline.as_bytes().contains(&0) {
            return Err(SpecError::CmdlineNul);
        }
        // Disks first, then NICs, each in config order, so the guest's first disk is
        // `drives[0]` and its first NIC `nets[0]`.
        let kinds: Vec<VirtioKind> = (0..config.drives.len())
            .map(|drive| VirtioKind::Block { drive })
            .chain((0..nics.len()).map(|nic| VirtioKind::Net { nic }))
            .chain(config.rng.then_some(VirtioKind::Rng))
            .collect();
        let virtio = virtio_slots(&kinds)?;
        let max = loader::cmdline_limit(&boot.kernel).map_err(|reason| SpecError::Kernel {
            path: boot.kernel.clone(),
            reason,
        })?;
        let len = kernel_cmdline(&boot.cmdline, &virtio).len();
        if len > max {
            return Err(SpecError::CmdlineTooLong { len, max });
        }
        if let Some(initrd) = &boot.initrd {
            check_regular_file(initrd).map_err(|reason| SpecError::Initrd {
                path: initrd.clone(),
                reason,
            })?;
        }
        match (config.serial.mode, config.serial.max_bytes) {
            (_, Some(0)) | (SerialMode::Stdout | SerialMode::Off, Some(_)) => {
                return Err(SpecError::SerialMaxBytes)
            }
            _ => {}
        }
        match (config.serial.mode, &config.serial.path) {
            (SerialMode::File, None) => return Err(SpecError::SerialPathMissing),
            (SerialMode::Stdout | SerialMode::Off, Some(_)) => {
                return Err(SpecError::SerialPathUnexpected)
            }
            // A FIFO or device would block the VMM on open or write; only plain files.
            (SerialMode::File, Some(path))
                if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) =>
            {
                return Err(SpecError::SerialPathNotFile(path.clone()));
            }
            _ => {}
        }
        Ok(Self {
            kernel: boot.kernel.clone(),
            initrd: boot.initrd.clone(),
            cmdline: boot.cmdline.clone(),
            vcpus,
            mem_bytes,
            drives: config.drives.clone(),
            nics,
            virtio,
        })
    }
}

/// The most disks one VM may have.
pub const MAX_DRIVES: usize = 24;
/// Drive ids name API paths (`/drives/{id}`), so they stay short and URL-safe.
const MAX_ID_LEN: usize = 64;

/// The most NICs one VM may have.
pub const MAX_NETS: usize = 8;

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn check_nets(nets: &[NetConfig]) -> Result<Vec<NicSpec>, SpecError> {
    let mut nics: Vec<NicSpec> = Vec::with_capacity(nets.len());
    for (index, n) in nets.iter().enumerate() {
        let fail = |reason: String| SpecError::Net {
            index,
            id: n.id.clone(),
            reason,
        };
        if index >= MAX_NETS {
            return Err(fail(format!("a VM has at most {MAX_NETS} NICs")));
        }
        if !valid_id(&n.id) {
            return Err(fail(format!(
                "id must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 - _ ."
            )));
        }
        let name_ok = !n.tap.is_empty()
            && n.tap.len() <= MAX_NAME_LEN
            && n.tap
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"/:%".contains(&b));
        if !name_ok {
            return Err(fail(format!(
                "tap {:?} is not an interface name (1 to {MAX_NAME_LEN} printable characters, none of / : %)",
                n.tap
            )));
        }
        if let Some(qos) = &n.qos {
            check_qos(qos, true).map_err(fail)?;
        }
        let mac = match &n.mac {
            Some(text) => parse_mac(text).ok_or_else(|| {
                fail(format!(
                    "mac {text:?} is not a unicast MAC like 52:54:00:12:34:56"
                ))
            })?,
            None => derived_mac(&n.id),
        };
        if nics.iter().any(|other| other.id == n.id) {
            return Err(fail("the id is used by an earlier NIC".into()));
        }
        if nics.iter().any(|other| other.tap == n.tap) {
            return Err(fail(format!("tap {} is used by an earlier NIC", n.tap)));
        }
        if nics.iter().any(|other| other.mac == mac) {
            return Err(fail(format!(
                "mac {} is used by an earlier NIC",
                format_mac(mac)
            )));
        }
        nics.push(NicSpec {
            id: n.id.clone(),
            tap: n.tap.clone(),
            mac,
            qos: n.qos,
        });
    }
    Ok(nics)
}

/// `aa:bb:cc:dd:ee:ff`, unicast (the group bit of the first octet clear), not all zero.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    let unicast = mac[0] & 1 == 0 && mac != [0; 6];
    (parts.next().is_none() && unicast).then_some(mac)
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A stable, locally administered MAC from a NIC id (52:54:00 as QEMU and libvirt use, then
/// 24 bits of an FNV-1a hash).
fn derived_mac(id: &str) -> [u8; 6] {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let [a, b, c, ..] = hash.to_le_bytes();
    [0x52, 0x54, 0x00, a, b, c]
}

fn check_drives(drives: &[DriveConfig]) -> Result<(), SpecError> {
    if drives.len() > MAX_DRIVES {
        return Err(SpecError::TooManyDrives {
            count: drives.len(),
        });
    }
    for (index, d) in drives.iter().enumerate() {
        let fail = |reason: String| SpecError::Drive {
            index,
            id: d.id.clone(),
            reason,
        };
        let id_ok = !d.id.is_empty()
            && d.id.len() <= MAX_ID_LEN
            && d.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok {
            return Err(fail(format!(
                "id must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 - _ ."
            )));
        }
        if drives[..index].iter().any(|other| other.id == d.id) {
            return Err(fail("the id is used by an earlier drive".into()));
        }
        if let Some(qos) = &d.qos {
            check_qos(qos, false).map_err(fail)?;
        }
        match (rbd_image(&d.path), &d.ceph) {
            (Some(image), ceph) => {
                image.map_err(&fail)?;
                check_ceph(&ceph.clone().unwrap_or_default()).map_err(&fail)?;
            }
            (None, Some(_)) => return Err(fail("ceph is only for rbd:POOL/IMAGE paths".into())),
            (None, None) => check_disk_image(&d.path, d.read_only)
                .map_err(|reason| fail(format!("path {}: {reason}", d.path.display())))?,
        }
    }
    Ok(())
}

/// `rbd:POOL/IMAGE` as (pool, image); `None` for any other path.
pub fn rbd_image(path: &Path) -> Option<Result<(String, String), String>> {
    let rest = path.to_str()?.strip_prefix("rbd:")?;
    let parsed = match rest.split_once('/') {
        Some((pool, image)) if !pool.is_empty() && !image.is_empty() && !image.contains('/') => {
            Ok((pool.to_owned(), image.to_owned()))
        }
        _ => Err(format!("path {} is not rbd:POOL/IMAGE", path.display())),
    };
    Some(parsed)
}

/// Ok when this VMM can be a Ceph client as `ceph` says (whether the cluster answers is
/// known only when the VM is built).
fn check_ceph(ceph: &CephClient) -> Result<(), String> {
    if !cfg!(feature = "rbd") {
        return Err("this triad-vmm was built without RBD support".into());
    }
    let name_ok = !ceph.client.is_empty()
        && ceph.client.len() <= MAX_ID_LEN
        && ceph
            .client
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(format!(
            "ceph client {:?} is not a cephx user name",
            ceph.client
        ));
    }
    check_regular_file(&ceph.conf)
        .map_err(|reason| format!("ceph conf {}: {reason}", ceph.conf.display()))
}

/// Ok when `path` is a non-empty regular file or block device we can open as the drive needs.
fn check_disk_image(path: &Path, read_only: bool) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let kind = meta.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err("not a regular file or block device".into());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| e.to_string())?;
    let size =
        crate::devices::virtio::blk::backend::image_size(&file).map_err(|e| e.to_string())?;
    if size < 512 {
        return Err("smaller than one 512-byte sector".into());
    }
    Ok(())
}

/// Ok when `path` is a regular file we can open for reading; else why not.
pub fn check_regular_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_api::vmm::{BootConfig, MachineConfig, SerialConfig};

    const HOST: HostLimits = HostLimits {
        max_vcpus: 8,
        memory_mib: 1024,
    };

    /// A config whose kernel is this test binary (an ELF that exists).
    fn config() -> VmConfig {
        VmConfig {
            boot: BootConfig {
                kernel: std::env::current_exe().unwrap(),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            },
            machine: MachineConfig {
                vcpus: 2,
                memory_mib: 64,
            },
            serial: SerialConfig::default(),
            drives: vec![],
            nets: vec![],
            rng: true,
        }
    }

    fn err(edit: impl FnOnce(&mut VmConfig)) -> SpecError {
        let mut c = config();
        edit(&mut c);
        VmSpec::new(&c, HOST).unwrap_err()
    }

    #[test]
    fn good_config_becomes_a_spec() {
        let spec = VmSpec::new(&config(), HOST).unwrap();
        assert_eq!((spec.vcpus, spec.mem_bytes), (2, 64 << 20));
    }

    #[test]
    fn devices_are_announced_on_the_kernel_cmdline_before_init_args() {
        let spec = VmSpec::new(&config(), HOST).unwrap();
        assert_eq!(
            spec.virtio,
            vec![VirtioSlot {
                kind: VirtioKind::Rng,
                base: 0xd000_0000,
                irq: 5
            }]
        );
        assert_eq!(
            spec.kernel_cmdline(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"
        );
        let rng = &spec.virtio;
        assert_eq!(
            kernel_cmdline("ro -- single x", rng),
            "ro virtio_mmio.device=4K@0xd0000000:5 -- single x"
        );
        assert_eq!(
            kernel_cmdline("-- init", rng),
            "virtio_mmio.device=4K@0xd0000000:5 -- init"
        );
        assert_eq!(
            kernel_cmdline("", rng),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(kernel_cmdline("a  b", &[]), "a  b");
        let mut c = config();
        c.rng = false;
        let spec = VmSpec::new(&c, HOST).unwrap();
        assert_eq!(
            (spec.virtio.len(), spec.kernel_cmdline().as_str()),
            (0, "console=ttyS0")
        );
    }

    #[test]
    fn virtio_pins_are_shared_past_irq_23() {
        let slots = virtio_slots(&[VirtioKind::Rng; 25]).unwrap();
        assert_eq!((slots[18].irq, slots[18].base), (23, 0xd001_2000));
        assert_eq!((slots[19].irq, slots[19].base), (5, 0xd001_3000));
        assert_eq!(
            virtio_slots(&[VirtioKind::Rng; 65]),
            Err(SpecError::TooManyDevices { asked: 65, max: 64 })
        );
    }

    fn drive(id: &str, path: &Path) -> DriveConfig {
        DriveConfig {
            id: id.into(),
            path: path.to_owned(),
            read_only: false,
            cache: Default::default(),
            qos: None,
            ceph: None,
        }
    }

    fn disk(name: &str, len: u64) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("spec-{name}-{}.img", std::process::id()));
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        path
    }

    #[test]
    fn drives_come_first_and_are_checked() {
        let (a, b) = (disk("a", 1 << 20), disk("b", 1 << 20));
        let mut c = config();
        c.drives = vec![drive("root", &a), drive("data", &b)];
        let spec = VmSpec::new(&c, HOST).unwrap();
        let kinds: Vec<_> = spec.virtio.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            vec![
                VirtioKind::Block { drive: 0 },
                VirtioKind::Block { drive: 1 },
                VirtioKind::Rng
            ]
        );
        let msg = |edit: &dyn Fn(&mut VmConfig)| {
            let mut c = config();
            c.drives = vec![drive("root", &a), drive("data", &b)];
            edit(&mut c);
            VmSpec::new(&c, HOST).unwrap_err().to_string()
        };
        assert_eq!(
            msg(&|c| c.drives[1].id = "root".into()),
            "drives[1] (root): the id is used by an earlier drive"
        );
        assert!(msg(&|c| c.drives[0].id = "a/b".into()).contains("id must be"));
        assert!(msg(&|c| c.drives[0].path = "/nonexistent.img".into()).contains("No such file"));
        assert!(
            msg(&|c| c.drives[0].path = "/".into()).contains("not a regular file or block device")
        );
        let bad_burst = Qos {
            iops: Some(1),
            bytes_per_sec: None,
            burst: Some(-1.0),
        };
        assert!(msg(&|c| c.drives[0].qos = Some(bad_burst)).contains("qos.burst"));
        let tiny = disk("tiny", 100);
        assert!(msg(&|c| c.drives[0].path = tiny.clone()).contains("smaller than one"));
        let many = vec![drive("x", &a); 25];
        assert!(msg(&|c| c.drives = many.clone()).contains("at most 24"));
        // RBD images: the path names a pool and an image, the client a readable ceph.conf.
        let conf = disk("ceph.conf", 10);
        let ceph = |client: &str, conf: &Path| CephClient {
            conf: conf.to_owned(),
            client: client.into(),
        };
        let mut c = config();
        c.drives = vec![drive("root", Path::new("rbd:rbd/vm-root"))];
        c.drives[0].ceph = Some(ceph("triad", &conf));
        VmSpec::new(&c, HOST).unwrap();
        let rbd = |c: &mut VmConfig| {
            c.drives[0].path = "rbd:rbd/vm-root".into();
            c.drives[0].ceph = Some(ceph("admin", &conf));
        };
        assert!(msg(&|c| c.drives[0].path = "rbd:rbd".into()).contains("is not rbd:POOL/IMAGE"));
        assert!(msg(&|c| {
            rbd(c);
            c.drives[0].ceph = Some(ceph("admin", Path::new("/nonexistent/ceph.conf")));
        })
        .contains("ceph conf /nonexistent/ceph.conf"));
        assert!(msg(&|c| {
            rbd(c);
            c.drives[0].ceph = Some(ceph("client admin", &conf));
        })
        .contains("not a cephx user name"));
        assert!(msg(&|c| c.drives[0].ceph = Some(ceph("admin", &conf)))
            .contains("ceph is only for rbd:POOL/IMAGE paths"));
        for p in [a, b, tiny, conf] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn rbd_paths_name_a_pool_and_an_image() {
        let parse = |p: &str| rbd_image(Path::new(p));
        assert_eq!(parse("/var/lib/disk.img"), None);
        assert_eq!(
            parse("rbd:rbd/vm-1-root"),
            Some(Ok(("rbd".into(), "vm-1-root".into())))
        );
        for bad in ["rbd:", "rbd:pool", "rbd:/image", "rbd:pool/", "rbd:a/b/c"] {
            assert!(matches!(parse(bad), Some(Err(_))), "{bad}");
        }
    }

    fn nic(id: &str, tap: &str, mac: Option<&str>) -> NetConfig {
        NetConfig {
            id: id.into(),
            tap: tap.into(),
            mac: mac.map(str::to_owned),
            qos: None,
        }
    }

    #[test]
    fn nics_are_checked_and_get_stable_macs() {
        let mut c = config();
        c.nets = vec![
            nic("eth0", "tap-a", Some("52:54:00:aa:bb:01")),
            nic("eth1", "tap-b", None),
        ];
        let spec = VmSpec::new(&c, HOST).unwrap();
        assert_eq!(spec.nics[0].mac, [0x52, 0x54, 0, 0xaa, 0xbb, 1]);
        assert_eq!(spec.nics[1].mac, derived_mac("eth1"));
        assert_eq!(derived_mac("eth1")[..3], [0x52, 0x54, 0]);
        assert_ne!(derived_mac("eth1"), derived_mac("eth2"));
        let msg = |nets: Vec<NetConfig>| {
            let mut c = config();
            c.nets = nets;
            VmSpec::new(&c, HOST).unwrap_err().to_string()
        };
        assert!(msg(vec![nic("a", "t1", Some("01:00:5e:00:00:01"))]).contains("not a unicast MAC"));
        assert!(msg(vec![nic("a", "t1", Some("52:54:00:aa:bb"))]).contains("not a unicast MAC"));
        assert!(msg(vec![nic("a", "a-very-long-tap-name", None)]).contains("not an interface name"));
        assert!(msg(vec![nic("a", "t1", None), nic("b", "t1", None)]).contains("tap t1 is used"));
        assert!(msg(vec![nic("a", "t1", None), nic("a", "t2", None)]).contains("id is used"));
        let mut with_iops = nic("a", "t1", None);
        with_iops.qos = Some(Qos {
            iops: Some(5),
            bytes_per_sec: None,
            burst: None,
        });
        assert!(msg(vec![with_iops]).contains("qos.iops: NICs"));
        let same = Some("52:54:00:00:00:01");
        assert!(msg(vec![nic("a", "t1", same), nic("b", "t2", same)])
            .contains("mac 52:54:00:00:00:01 is used"));
    }

    #[test]
    fn machine_limits() {
        assert_eq!(err(|c| c.machine.vcpus = 0), SpecError::NoVcpus);
        assert_eq!(
            err(|c| c.machine.vcpus = 9),
            SpecError::TooManyVcpus { asked: 9, max: 8 }
        );
        assert_eq!(
            err(|c| c.machine.memory_mib = 0),
            SpecError::TooLittleMemory { asked: 0 }
        );
        assert_eq!(
            err(|c| c.machine.memory_mib = u64::MAX),
            SpecError::TooMuchMemory {
                asked: u64::MAX,
                host: 1024
            }
        );
        let many = HostLimits {
            max_vcpus: 1024,
            ..HOST
        };
        let mut c = config();
        c.machine.vcpus = 300;
        assert_eq!(
            VmSpec::new(&c, many).unwrap_err(),
            SpecError::TooManyVcpus {
                asked: 300,
                max: 254
            }
        );
    }

    #[test]
    fn files_must_exist() {
        let e = err(|c| c.boot.kernel = "/nonexistent/kernel".into());
        assert!(
            e.to_string()
                .starts_with("boot.kernel /nonexistent/kernel:"),
            "{e}"
        );
        let e = err(|c| c.boot.kernel = "/".into());
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = err(|c| c.boot.initrd = Some("/nonexistent/initrd".into()));
        assert!(matches!(e, SpecError::Initrd { .. }));
    }

    #[test]
    fn kernel_must_look_like_a_kernel() {
        let e = err(|c| c.boot.kernel = "/etc/hostname".into());
        assert!(
            e.to_string()
                .contains("neither an ELF kernel nor a bzImage"),
            "{e}"
        );
    }

    #[test]
    fn serial_and_devices() {
        assert_eq!(
            err(|c| c.serial.mode = SerialMode::File),
            SpecError::SerialPathMissing
        );
        assert_eq!(
            err(|c| c.serial.path = Some("/tmp/x".into())),
            SpecError::SerialPathUnexpected
        );
        assert_eq!(
            err(|c| c.serial.max_bytes = Some(4096)),
            SpecError::SerialMaxBytes
        );
        assert_eq!(
            err(|c| c.boot.cmdline = "a\0b".into()),
            SpecError::CmdlineNul
        );
        assert!(matches!(
            err(|c| c.boot.cmdline = "x".repeat(5000)),
            SpecError::CmdlineTooLong { .. }
        ));
    }
}
