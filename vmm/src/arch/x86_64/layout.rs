//! Where everything sits in guest-physical memory.
//!
//! Low memory holds the boot structures the VMM writes; the BIOS area (0x9fc00–0x100000) is
//! reserved in the e820 map and holds the MP table; the kernel loads at 1 MiB; the 32-bit MMIO
//! hole below 4 GiB holds the IOAPIC and the LAPICs, so RAM past 3 GiB continues at 4 GiB.

/// GDT used for the first instruction in both PVH and 64-bit Linux entry.
pub const BOOT_GDT: u64 = 0x500;
/// An empty IDT: the guest must install its own before enabling interrupts.
pub const BOOT_IDT: u64 = 0x520;
/// `hvm_start_info` for PVH boots.
pub const PVH_START_INFO: u64 = 0x6000;
/// The PVH memory map table, right after `hvm_start_info`.
pub const PVH_MEMMAP: u64 = 0x6040;
/// The PVH module list (the initrd), after the memory map.
pub const PVH_MODLIST: u64 = 0x6800;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Stack pointer handed to a 64-bit Linux entry (the kernel sets its own at once).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit entry: PML4, PDPT, then four page directories.
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// How many page directories (1 GiB each) the boot page tables map.
pub const PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Longest command line we pass (Linux's COMMAND_LINE_SIZE on x86_64 is 2048; newer kernels
/// announce more through `cmdline_size`, which wins when it is smaller).
pub const CMDLINE_MAX: usize = 4096;
/// End of usable base memory: 0x9fc00 onwards is EBDA, VGA hole and BIOS area.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP floating pointer and configuration table, in the BIOS area where Linux scans.
pub const MPTABLE: u64 = 0xf0000;
/// Where the kernel's protected-mode part is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM above this address is placed at 4 GiB instead.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address after the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// virtio-mmio windows, one page per device, from here up.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// The IOAPIC pins virtio devices get: 5 to 23 (0-4 are the timer, keyboard, cascade and COM).
pub const VIRTIO_IRQ_FIRST: u32 = 5;
pub const VIRTIO_IRQ_LAST: u32 = 23;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The 3 pages KVM needs for the TSS (Intel), just below the IOAPIC.
pub const KVM_TSS: u64 = 0xfffb_d000;
/// One page KVM needs for the real-mode identity map (Intel), just below the TSS.
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;

/// The guest-physical RAM ranges for `mem_bytes` of memory: one range below the MMIO hole,
/// and the rest from 4 GiB up.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_bytes - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20)]);
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges, vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, 1 << 30)]);
        assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), 4 << 30);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let areas = [
            (BOOT_GDT, 0x20),
            (BOOT_IDT, 0x8),
            (PVH_START_INFO, 0x40),
            (PVH_MEMMAP, PVH_MODLIST - PVH_MEMMAP),
            (PVH_MODLIST, 0x20),
            (ZERO_PAGE, 0x1000),
            (PML4, 0x1000),
            (PDPT, 0x1000),
            (PD, PD_COUNT * 0x1000),
            (CMDLINE, CMDLINE_MAX as u64),
        ];
        for (i, a) in areas.iter().enumerate() {
            assert!(a.0 + a.1 <= EBDA_START);
            for b in &areas[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
    }
}
