//! The CPUID the guest sees: what KVM supports, minus what Triad does not offer, plus the
//! topology of this VM.
//!
//! Pure over the entry list so it is unit-tested without KVM.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;

// Leaf 1 ECX.
const ECX_MONITOR: u32 = 1 << 3;
const ECX_VMX: u32 = 1 << 5;
const ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 1 EDX.
const EDX_HTT: u32 = 1 << 28;

/// Adjusts KVM's supported CPUID for vCPU `apic_id` of a `vcpus`-vCPU VM.
pub fn filter(entries: &mut Vec<kvm_cpuid_entry2>, apic_id: u8, vcpus: u8) {
    // KVM reports only the SMT level of leaf 0xb; a guest learns cores per package from the
    // core level (subleaf 1), so add it where KVM left it out.
    let has = |function, index| {
        entries
            .iter()
            .any(|e| e.function == function && e.index == index)
    };
    if has(LEAF_EXT_TOPOLOGY, 0) && !has(LEAF_EXT_TOPOLOGY, 1) {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_EXT_TOPOLOGY,
            index: 1,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        });
    }
    // Bits needed to number `vcpus` logical CPUs in the x2APIC ID.
    let id_bits = u32::BITS - u32::from(vcpus.max(1) - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // No MONITOR/MWAIT (we do not emulate it) and no nested VMX; say we are a VM.
                e.ecx &= !(ECX_MONITOR | ECX_VMX);
                e.ecx |= ECX_HYPERVISOR;
                // EBX: [31:24] initial APIC ID, [23:16] logical CPUs per package, [15:8] CLFLUSH
                // line size in qwords.
                e.ebx = (u32::from(apic_id) << 24) | (u32::from(vcpus) << 16) | (8 << 8);
                if vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package minus one (a 6-bit field); every vCPU is a
                // core of one package.
                let cores = (u32::from(vcpus) - 1).min(63);
                e.eax = (e.eax & 0x03ff_ffff) | (cores << 26);
            }
            LEAF_PERFMON => {
                // No virtual PMU.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_EXT_TOPOLOGY => {
                e.edx = u32::from(apic_id);
                match e.index {
                    // SMT level: one thread per core.
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    // Core level: `vcpus` cores per package.
                    1 => {
                        e.eax = id_bits;
                        e.ebx = u32::from(vcpus);
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn filtered(apic_id: u8, vcpus: u8) -> Vec<kvm_cpuid_entry2> {
        let mut v = vec![
            entry(0x1, 0),
            entry(0x4, 0),
            entry(0xa, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0001, 0),
        ];
        filter(&mut v, apic_id, vcpus);
        v
    }

    #[test]
    fn adds_the_core_level_kvm_leaves_out() {
        // KVM's real shape: leaf 0xb with subleaf 0 only.
        let mut v = vec![entry(0x1, 0), entry(0xb, 0)];
        filter(&mut v, 1, 4);
        let core = v
            .iter()
            .find(|e| e.function == 0xb && e.index == 1)
            .unwrap();
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 4, 2, 1));
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        // No leaf 0xb at all: nothing is invented.
        let mut v = vec![entry(0x1, 0)];
        filter(&mut v, 0, 4);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn many_vcpus_saturate_the_cores_field() {
        let mut v = vec![entry(0x4, 0)];
        filter(&mut v, 0, 200);
        assert_eq!(v[0].eax >> 26, 63);
    }

    #[test]
    fn features_leaf_hides_vmx_and_monitor_and_names_the_apic() {
        let v = filtered(3, 4);
        assert_eq!(v[0].ecx & (ECX_VMX | ECX_MONITOR), 0);
        assert_ne!(v[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(v[0].ebx >> 24, 3);
        assert_eq!((v[0].ebx >> 16) & 0xff, 4);
        assert_ne!(v[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let v = filtered(0, 1);
        assert_eq!(v[0].edx & EDX_HTT, 0);
        assert_eq!(v[1].eax >> 26, 0);
        assert_eq!(v[4].eax, 0);
    }

    #[test]
    fn topology_leaves_describe_vcpus_as_cores() {
        let v = filtered(5, 6);
        assert_eq!(v[1].eax >> 26, 5);
        assert_eq!(
            v[2],
            kvm_cpuid_entry2 {
                function: 0xa,
                eax: 0,
                ebx: 0,
                ecx: 0,
                edx: 0,
                ..v[2]
            }
        );
        assert_eq!((v[3].ebx, v[3].edx), (1, 5));
        // 6 vCPUs need 3 bits of x2APIC ID.
        assert_eq!((v[4].eax, v[4].ebx, v[4].ecx >> 8), (3, 6, 2));
        assert_eq!((v[5].eax, v[5].ebx, v[5].ecx), (0, 0, 2));
        // Leaves we do not touch keep KVM's value.
        assert_eq!(v[6].ecx, 0xffff_ffff);
    }
}
