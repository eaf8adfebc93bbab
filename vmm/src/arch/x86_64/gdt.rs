//! The boot GDT and the segment registers KVM needs to match it.
//!
//! A segment descriptor packs base, limit and flags in a legacy layout; KVM wants the same
//! facts unpacked in `kvm_segment`. Both are derived from one `Segment` so they cannot drift.

use kvm_bindings::kvm_segment;

/// Flat 4 GiB segments as (flags, type) in descriptor bit layout: G, D/B, L, present, S.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// 0xB = execute/read, accessed; 0x3 = read/write, accessed.
    pub type_: u8,
    pub long: bool,
    pub default_32: bool,
}

pub const CODE64: Segment = Segment {
    type_: 0xb,
    long: true,
    default_32: false,
};
pub const CODE32: Segment = Segment {
    type_: 0xb,
    long: false,
    default_32: true,
};
pub const DATA: Segment = Segment {
    type_: 0x3,
    long: false,
    default_32: true,
};

/// GDT slots: 0 null, 1 code, 2 data, 3 TSS placeholder (KVM requires a usable TR).
pub const CODE_SLOT: u16 = 1;
pub const DATA_SLOT: u16 = 2;
pub const TSS_SLOT: u16 = 3;

/// The 64-bit descriptor of a flat segment (base 0, limit 0xfffff pages).
pub fn descriptor(seg: Segment) -> u64 {
    let limit: u64 = 0xf_ffff;
    let access = 0x80 /* present */ | 0x10 /* code/data */ | u64::from(seg.type_);
    let flags = 0x8 /* 4 KiB granularity */
        | if seg.default_32 { 0x4 } else { 0 }
        | if seg.long { 0x2 } else { 0 };
    (limit & 0xffff) | (access << 40) | (((limit >> 16) & 0xf) << 48) | (flags << 52)
}

/// The TSS placeholder: present, 32-bit busy TSS (type 0xB), tiny limit.
pub fn tss_descriptor() -> u64 {
    0x67 | (0x8b << 40)
}

/// The boot GDT for a given code segment.
pub fn table(code: Segment) -> [u64; 4] {
    [0, descriptor(code), descriptor(DATA), tss_descriptor()]
}

/// `kvm_segment` for a flat segment loaded from `slot`.
pub fn kvm_segment_for(seg: Segment, slot: u16) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: slot * 8,
        type_: seg.type_,
        present: 1,
        dpl: 0,
        db: u8::from(seg.default_32),
        s: 1,
        l: u8::from(seg.long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

pub fn kvm_tss_segment() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0x67,
        selector: TSS_SLOT * 8,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_the_well_known_values() {
        // The classic flat descriptors every OS tutorial and boot loader uses.
        assert_eq!(descriptor(CODE64), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(CODE32), 0x00cf_9b00_0000_ffff);
        assert_eq!(descriptor(DATA), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn kvm_segment_agrees_with_descriptor() {
        let s = kvm_segment_for(CODE64, CODE_SLOT);
        let d = descriptor(CODE64);
        assert_eq!(s.selector, 8);
        assert_eq!(u64::from(s.type_), (d >> 40) & 0xf);
        assert_eq!(u64::from(s.l), (d >> 53) & 1);
        assert_eq!(u64::from(s.db), (d >> 54) & 1);
        assert_eq!(u64::from(s.g), (d >> 55) & 1);
    }
}
