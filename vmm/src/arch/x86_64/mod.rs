//! x86_64 boot: the structures the VMM writes into guest memory before the first instruction,
//! and the vCPU state that goes with them.

pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod regs;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress};

use crate::loader::{KernelEntry, LoadedInitrd};
use crate::memory::GuestMemoryMmap;
use e820::memory_map;
use layout::*;
pub use regs::BootEntry;

const PVH_MAGIC: u32 = 0x336e_c578;
const PVH_VERSION: u32 = 1;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const BOOT_FLAG: u16 = 0xaa55;
const HDRS: u32 = 0x5372_6448;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("writing {what} into guest memory")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("the command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("the memory map has {0} entries, more than the zero page holds")]
    TooManyE820(usize),
}

/// What the boot structures describe.
#[derive(Debug, Clone, Copy)]
pub struct BootSetup<'a> {
    pub kernel: KernelEntry,
    pub cmdline: &'a str,
    pub initrd: Option<LoadedInitrd>,
    pub mem_bytes: u64,
    pub vcpus: u8,
}

fn write_err(what: &'static str) -> impl FnOnce(vm_memory::GuestMemoryError) -> BootError {
    move |source| BootError::Write { what, source }
}

/// The longest command line `kernel` accepts, terminating NUL excluded.
pub fn cmdline_max(kernel: KernelEntry) -> usize {
    match kernel {
        KernelEntry::Linux64 { header, .. }
            if header.version >= 0x206 && header.cmdline_size > 0 =>
        {
            usize::try_from(header.cmdline_size).map_or(CMDLINE_MAX - 1, |n| n.min(CMDLINE_MAX - 1))
        }
        _ => CMDLINE_MAX - 1,
    }
}

/// Checks the command line against what `kernel` accepts; cheap, so callers can reject a
/// config before building anything.
pub fn check_cmdline(cmdline: &str, kernel: KernelEntry) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let max = cmdline_max(kernel);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    Ok(())
}

/// Writes GDT, IDT, command line, MP table and the protocol's boot structure; returns how the
/// boot vCPU enters the kernel.
pub fn write_boot_structures(
    mem: &GuestMemoryMmap,
    setup: &BootSetup<'_>,
) -> Result<BootEntry, BootError> {
    check_cmdline(setup.cmdline, setup.kernel)?;
    let mut cmdline = setup.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(CMDLINE))
        .map_err(write_err("command line"))?;
    mem.write_slice(&mptable::build(MPTABLE, setup.vcpus), GuestAddress(MPTABLE))
        .map_err(write_err("MP table"))?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))
        .map_err(write_err("IDT"))?;

    let entry = match setup.kernel {
        KernelEntry::Pvh(entry) => {
            write_start_info(mem, setup)?;
            BootEntry::Pvh {
                entry,
                start_info: PVH_START_INFO,
            }
        }
        KernelEntry::Linux64 { entry, header } => {
            for (addr, value) in paging::identity_map_entries() {
                mem.write_obj(value, GuestAddress(addr))
                    .map_err(write_err("page tables"))?;
            }
            write_zero_page(mem, setup, header, cmdline.len() - 1)?;
            BootEntry::Linux64 {
                entry,
                zero_page: ZERO_PAGE,
            }
        }
    };
    for (i, desc) in (0u64..).zip(gdt::table(entry.code_segment())) {
        mem.write_obj(desc, GuestAddress(BOOT_GDT + i * 8))
            .map_err(write_err("GDT"))?;
    }
    Ok(entry)
}

fn write_start_info(mem: &GuestMemoryMmap, setup: &BootSetup<'_>) -> Result<(), BootError> {
    let map = memory_map(setup.mem_bytes);
    for (i, e) in (0u64..).zip(&map) {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        let at = PVH_MEMMAP + i * std::mem::size_of::<hvm_memmap_table_entry>() as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(write_err("PVH memory map"))?;
    }
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: PVH_VERSION,
        cmdline_paddr: CMDLINE,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: u32::try_from(map.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    if let Some(initrd) = setup.initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST))
            .map_err(write_err("PVH module list"))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
    }
    mem.write_obj(info, GuestAddress(PVH_START_INFO))
        .map_err(write_err("hvm_start_info"))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    setup: &BootSetup<'_>,
    header: linux_loader::loader::bootparam::setup_header,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let mut params = boot_params {
        hdr: header,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE).unwrap_or(0);
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(0);
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    if let Some(initrd) = setup.initrd {
        // Both fit in 32 bits: the initrd is placed below the 32-bit MMIO hole.
        params.hdr.ramdisk_image = u32::try_from(initrd.addr).unwrap_or(0);
        params.hdr.ramdisk_size = u32::try_from(initrd.size).unwrap_or(0);
    }
    let map = memory_map(setup.mem_bytes);
    if map.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820(map.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = u8::try_from(map.len()).unwrap_or(0);
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(write_err("zero page"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::bootparam::setup_header;

    fn mem() -> GuestMemoryMmap {
        crate::memory::create(32 << 20).unwrap()
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_and_memmap() {
        let mem = mem();
        let setup = BootSetup {
            kernel: KernelEntry::Pvh(0x10_0000),
            cmdline: "triad.exit=7",
            initrd: Some(LoadedInitrd {
                addr: 0x1f0_0000,
                size: 0x800,
            }),
            mem_bytes: 32 << 20,
            vcpus: 2,
        };
        let entry = write_boot_structures(&mem, &setup).unwrap();
        assert_eq!(
            entry,
            BootEntry::Pvh {
                entry: 0x10_0000,
                start_info: PVH_START_INFO
            }
        );
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO)).unwrap();
        assert_eq!(info.magic, PVH_MAGIC);
        assert_eq!(info.memmap_entries, 3);
        let mut cmd = [0u8; 13];
        mem.read_slice(&mut cmd, GuestAddress(info.cmdline_paddr))
            .unwrap();
        assert_eq!(&cmd, b"triad.exit=7\0");
        let last: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
            .unwrap();
        assert_eq!(
            (last.addr, last.size, last.type_),
            (0x10_0000, (32 << 20) - 0x10_0000, 1)
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(
            (info.nr_modules, module.paddr, module.size),
            (1, 0x1f0_0000, 0x800)
        );
        let floating: [u8; 4] = mem.read_obj(GuestAddress(MPTABLE)).unwrap();
        assert_eq!(&floating, b"_MP_");
        // A 32-bit code segment in the GDT for the 32-bit entry.
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT + 8)).unwrap();
        assert_eq!(code, gdt::descriptor(gdt::CODE32));
    }

    #[test]
    fn zero_page_carries_header_cmdline_initrd_and_e820() {
        let mem = mem();
        let header = setup_header {
            version: 0x20f,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        let setup = BootSetup {
            kernel: KernelEntry::Linux64 {
                entry: 0x10_0200,
                header,
            },
            cmdline: "console=ttyS0",
            initrd: Some(LoadedInitrd {
                addr: 0x100_0000,
                size: 0x1000,
            }),
            mem_bytes: 32 << 20,
            vcpus: 1,
        };
        let entry = write_boot_structures(&mem, &setup).unwrap();
        assert_eq!(
            entry,
            BootEntry::Linux64 {
                entry: 0x10_0200,
                zero_page: ZERO_PAGE
            }
        );
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        let hdr = p.hdr;
        assert_eq!(
            (hdr.boot_flag, hdr.header, hdr.type_of_loader),
            (BOOT_FLAG, HDRS, 0xff)
        );
        assert_eq!((hdr.cmd_line_ptr, hdr.cmdline_size), (0x20000, 13));
        assert_eq!((hdr.ramdisk_image, hdr.ramdisk_size), (0x100_0000, 0x1000));
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table[0];
        assert_eq!((e.addr, e.size, e.r#type), (0, EBDA_START, 1));
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(pml4, PDPT | 3);
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT + 8)).unwrap();
        assert_eq!(code, gdt::descriptor(gdt::CODE64));
    }

    #[test]
    fn cmdline_limits_follow_the_kernel_header() {
        let header = setup_header {
            version: 0x20f,
            cmdline_size: 10,
            ..Default::default()
        };
        let linux = KernelEntry::Linux64 { entry: 0, header };
        assert!(check_cmdline("0123456789", linux).is_ok());
        assert!(matches!(
            check_cmdline("0123456789a", linux),
            Err(BootError::CmdlineTooLong { len: 11, max: 10 })
        ));
        let long = "x".repeat(CMDLINE_MAX);
        assert!(check_cmdline(&long, KernelEntry::Pvh(0)).is_err());
        assert!(matches!(
            check_cmdline("a\0b", KernelEntry::Pvh(0)),
            Err(BootError::CmdlineNul)
        ));
    }
}
