//! Intel MultiProcessor Specification 1.4 tables: how the guest finds its vCPUs and IOAPIC
//! without ACPI.
//!
//! The floating pointer and the configuration table go at `layout::MPTABLE`, inside the BIOS
//! area that Linux (and the test guest) scan and that the e820 map reserves.

use super::layout::{IOAPIC_ADDR, LAPIC_ADDR};

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
/// Family 6 signature and FPU + APIC feature flags, as the MP spec's processor entry expects.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ISA_BUS_ID: u8 = 0;
/// IOAPIC pins wired to the ISA IRQs of the same number.
pub const IOAPIC_PINS: u8 = 24;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;

/// The most vCPUs an MP table can describe: APIC IDs are 8 bits and the IOAPIC takes the ID
/// after the last vCPU.
pub const MAX_VCPUS: u8 = 254;

/// The bytes of the floating pointer followed by the configuration table, for a table that
/// will be written at guest address `base`. `vcpus` is in 1..=MAX_VCPUS.
pub fn build(base: u64, vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend([ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, ISA_BUS_ID]);
    entries.extend(*b"ISA   ");
    count += 1;
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend(IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // Polarity and trigger "conform to the bus": edge, active high for ISA.
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            0,
            0,
            ISA_BUS_ID,
            pin,
            ioapic_id,
            pin,
        ]);
        count += 1;
    }
    // LINT0 of the BSP takes the legacy PIC (ExtINT); LINT1 of every LAPIC takes NMI.
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_EXTINT, 0, 0, ISA_BUS_ID, 0, 0, 0]);
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(table_len);
    header.extend(*b"PCMP");
    header.extend(u16::try_from(table_len).unwrap_or(u16::MAX).to_le_bytes());
    header.extend([SPEC_REV, 0]);
    header.extend(*b"TRIAD   ");
    header.extend(*b"TRIAD-VMM   ");
    header.extend(0u32.to_le_bytes()); // OEM table pointer
    header.extend(0u16.to_le_bytes()); // OEM table size
    header.extend(count.to_le_bytes());
    header.extend(LAPIC_ADDR.to_le_bytes());
    header.extend([0u8; 4]); // extended table length, checksum, reserved
    header.extend(entries);
    header[7] = checksum(&header);

    let table_addr = base + FLOATING_LEN as u64;
    let mut out = Vec::with_capacity(FLOATING_LEN + table_len);
    out.extend(*b"_MP_");
    out.extend(u32::try_from(table_addr).unwrap_or(0).to_le_bytes());
    out.extend([1, SPEC_REV, 0, 0, 0, 0, 0, 0]); // length in paragraphs, rev, checksum, features
    out[10] = checksum(&out);
    out.extend(header);
    out
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    /// Parses a table the way a guest does and returns (enabled CPUs, BSP count, IOAPIC id).
    fn parse(bytes: &[u8], base: u64) -> (usize, usize, u8) {
        assert_eq!(&bytes[..4], b"_MP_");
        assert_eq!(sum(&bytes[..16]), 0);
        let table = u64::from(u32::from_le_bytes(bytes[4..8].try_into().unwrap())) - base;
        let t = &bytes[usize::try_from(table).unwrap()..];
        assert_eq!(&t[..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([t[4], t[5]]));
        assert_eq!(sum(&t[..len]), 0);
        let count = u16::from_le_bytes([t[34], t[35]]);
        let (mut cpus, mut bsps, mut ioapic) = (0, 0, 0xff);
        let mut off = HEADER_LEN;
        for _ in 0..count {
            match t[off] {
                ENTRY_PROCESSOR => {
                    cpus += usize::from(t[off + 3] & CPU_ENABLED);
                    bsps += usize::from((t[off + 3] & CPU_BOOT_PROCESSOR) >> 1);
                    off += 20;
                }
                ENTRY_IOAPIC => {
                    ioapic = t[off + 1];
                    off += 8;
                }
                _ => off += 8,
            }
        }
        assert_eq!(off, len);
        (cpus, bsps, ioapic)
    }

    #[test]
    fn describes_every_vcpu_once_with_one_bsp() {
        for vcpus in [1u8, 2, 7, MAX_VCPUS] {
            let bytes = build(0xf0000, vcpus);
            assert_eq!(parse(&bytes, 0xf0000), (usize::from(vcpus), 1, vcpus));
        }
    }

    #[test]
    fn largest_table_fits_in_the_bios_area() {
        assert!(build(0xf0000, MAX_VCPUS).len() < 0x10000);
    }
}
