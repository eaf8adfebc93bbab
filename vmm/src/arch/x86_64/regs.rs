//! Initial vCPU state for the two ways Triad enters a kernel.
//!
//! - PVH: 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
//! - Linux 64-bit boot protocol: long mode on identity page tables, `%rsi` = zero page.
//!
//! Only the boot vCPU gets registers; the others wait for INIT/SIPI from the guest, which
//! resets them anyway.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use std::os::raw::c_char;

use super::gdt::{self, Segment};
use super::layout::{BOOT_GDT, BOOT_IDT, BOOT_STACK, PML4};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    Pvh { entry: u64, start_info: u64 },
    Linux64 { entry: u64, zero_page: u64 },
}

impl BootEntry {
    /// The code segment the boot GDT must hold for this entry.
    pub fn code_segment(self) -> Segment {
        match self {
            BootEntry::Pvh { .. } => gdt::CODE32,
            BootEntry::Linux64 { .. } => gdt::CODE64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("building the MSR list")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs")]
    MsrsPartial { set: usize, wanted: usize },
    #[error("{0} ioctl failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

/// General-purpose registers at the first instruction.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Pvh { entry, start_info } => {
            regs.rip = entry;
            regs.rbx = start_info;
        }
        BootEntry::Linux64 { entry, zero_page } => {
            regs.rip = entry;
            regs.rsi = zero_page;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
        }
    }
    regs
}

/// Segment and control registers at the first instruction, on top of KVM's defaults.
pub fn boot_sregs(mut sregs: kvm_sregs, entry: BootEntry) -> kvm_sregs {
    let code = gdt::kvm_segment_for(entry.code_segment(), gdt::CODE_SLOT);
    let data = gdt::kvm_segment_for(gdt::DATA, gdt::DATA_SLOT);
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::kvm_tss_segment();
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    if let BootEntry::Linux64 { .. } = entry {
        sregs.cr3 = PML4;
        sregs.cr4 |= CR4_PAE;
        sregs.cr0 |= CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
    }
    sregs
}

/// The MSR values every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

/// MSRs, FPU and LAPIC LINT wiring: what every vCPU needs, boot vCPU or not.
pub fn setup_common(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(RegsError::MsrList)?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        return Err(RegsError::MsrsPartial {
            set,
            wanted: entries.len(),
        });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))?;
    setup_lint(vcpu)
}

/// Registers of the boot vCPU.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: BootEntry) -> Result<(), RegsError> {
    let sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;
    vcpu.set_sregs(&boot_sregs(sregs, entry))
        .map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// LINT0 takes the legacy PIC as ExtINT, LINT1 takes NMI, as the MP table says.
fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("KVM_GET_LAPIC", e))?;
    set_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("KVM_SET_LAPIC", e))
}

/// Rewrites bits 8..11 (delivery mode) of the 32-bit LAPIC register at `offset`.
fn set_delivery_mode(regs: &mut [c_char], offset: usize, mode: u32) {
    let reg = &mut regs[offset..offset + 4];
    let value = u32::from_le_bytes(std::array::from_fn(|i| reg[i] as u8));
    let value = (value & !0x700) | (mode << 8);
    for (r, b) in reg.iter_mut().zip(value.to_le_bytes()) {
        *r = b as c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_enters_protected_mode_without_paging() {
        let entry = BootEntry::Pvh {
            entry: 0x10_0040,
            start_info: 0x6000,
        };
        let s = boot_sregs(kvm_sregs::default(), entry);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(s.efer, 0);
        assert_eq!((s.cs.l, s.cs.db), (0, 1));
        let r = boot_regs(entry);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0040, 0x6000, 2));
    }

    #[test]
    fn linux64_enters_long_mode_on_the_boot_page_tables() {
        let entry = BootEntry::Linux64 {
            entry: 0x10_0200,
            zero_page: 0x7000,
        };
        let s = boot_sregs(kvm_sregs::default(), entry);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr3, PML4);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.l, s.cs.db, s.cs.selector), (1, 0, 8));
        assert_eq!(s.ss.selector, 16);
        let r = boot_regs(entry);
        assert_eq!((r.rip, r.rsi), (0x10_0200, 0x7000));
    }

    #[test]
    fn delivery_mode_keeps_the_other_bits() {
        let mut regs = [0 as c_char; 0x400];
        regs[APIC_LVT0] = 0x30;
        regs[APIC_LVT0 + 2] = 0x1; // mask bit 16
        set_delivery_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0..APIC_LVT0 + 4], [0x30, 0x7, 0x1, 0]);
    }

    #[test]
    fn gdt_limit_covers_the_tss_slot() {
        let s = boot_sregs(
            kvm_sregs::default(),
            BootEntry::Pvh {
                entry: 0,
                start_info: 0,
            },
        );
        assert!(u32::from(s.gdt.limit) >= u32::from(s.tr.selector) + 7);
    }
}
