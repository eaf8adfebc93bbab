//! The guest's physical memory map, handed over as the Linux e820 table or as the PVH memmap.

use super::layout::{ram_ranges, EBDA_START, HIMEM_START};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemKind {
    Ram = 1,
    Reserved = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: MemKind,
}

/// The map for a guest of `mem_bytes` RAM: base memory, the reserved BIOS area that holds the
/// MP table, RAM from 1 MiB to the MMIO hole, and RAM above 4 GiB when there is more.
pub fn memory_map(mem_bytes: u64) -> Vec<MemEntry> {
    let mut map = vec![
        MemEntry {
            addr: 0,
            size: EBDA_START,
            kind: MemKind::Ram,
        },
        MemEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: MemKind::Reserved,
        },
    ];
    for (start, size) in ram_ranges(mem_bytes) {
        let start_hi = start.max(HIMEM_START);
        let end = start + size;
        if end > start_hi {
            map.push(MemEntry {
                addr: start_hi,
                size: end - start_hi,
                kind: MemKind::Ram,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

    fn ram_total(map: &[MemEntry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == MemKind::Ram)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_has_base_bios_and_high_ram() {
        let map = memory_map(64 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[0],
            MemEntry {
                addr: 0,
                size: 0x9fc00,
                kind: MemKind::Ram
            }
        );
        assert_eq!(map[1].kind, MemKind::Reserved);
        assert_eq!(map[1].addr + map[1].size, 0x10_0000);
        assert_eq!(
            map[2],
            MemEntry {
                addr: 0x10_0000,
                size: (64 << 20) - 0x10_0000,
                kind: MemKind::Ram
            }
        );
        assert_eq!(ram_total(&map), (64 << 20) - (0x10_0000 - 0x9fc00));
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let map = memory_map(6 << 30);
        let last = map.last().unwrap();
        assert_eq!(last.addr, MMIO_HOLE_END);
        assert_eq!(last.size, (6 << 30) - MMIO_HOLE_START);
        assert!(map.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
    }
}
