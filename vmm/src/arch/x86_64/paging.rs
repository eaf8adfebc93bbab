//! Identity page tables for the 64-bit Linux entry, which must start with paging on.
//!
//! 2 MiB pages cover the first `PD_COUNT` GiB; the kernel replaces them at once.

use super::layout::{PD, PDPT, PD_COUNT, PML4};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Every (guest address, value) pair of the boot page tables, in write order.
pub fn identity_map_entries() -> Vec<(u64, u64)> {
    let mut entries = vec![(PML4, PDPT | PRESENT_RW)];
    for gib in 0..PD_COUNT {
        entries.push((PDPT + gib * 8, (PD + gib * 0x1000) | PRESENT_RW));
        for i in 0..512 {
            let phys = (gib << 30) | (i << 21);
            entries.push((PD + gib * 0x1000 + i * 8, phys | PRESENT_RW | PAGE_SIZE_2M));
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Walks the tables the way the MMU does for a 2 MiB mapping.
    fn translate(tables: &HashMap<u64, u64>, va: u64) -> Option<u64> {
        let pml4e = tables.get(&(PML4 + ((va >> 39) & 0x1ff) * 8))?;
        let pdpte = tables.get(&((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8))?;
        let pde = tables.get(&((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8))?;
        assert_ne!(pde & PAGE_SIZE_2M, 0);
        Some((pde & !0x1f_ffff & !(1 << 63)) | (va & 0x1f_ffff))
    }

    #[test]
    fn maps_first_gibs_one_to_one() {
        let tables: HashMap<u64, u64> = identity_map_entries().into_iter().collect();
        for va in [
            0,
            0x1000,
            0x10_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xfee0_0000,
            (PD_COUNT << 30) - 1,
        ] {
            assert_eq!(translate(&tables, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&tables, PD_COUNT << 30), None);
    }
}
