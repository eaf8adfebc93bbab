//! The loader against a real Debian kernel from `scripts/build-linux-guest`: its bzImage goes
//! in through the Linux boot protocol and its vmlinux through PVH, with the real initrd. Needs
//! no KVM, so it runs on every host, including those whose KVM cannot run Linux.

use std::path::PathBuf;

use linux_loader::loader::bootparam::boot_params;
use triad_vmm::arch::x86_64::layout::{CMDLINE, ZERO_PAGE};
use triad_vmm::arch::x86_64::{write_boot_structures, BootEntry, BootSetup};
use triad_vmm::loader::{load_initrd, load_kernel, KernelEntry};
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 256 << 20;

fn linux_guest(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/linux-guest")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-linux-guest",
        path.display()
    );
    path
}

#[test]
fn debian_bzimage_and_initrd_load_through_the_linux_boot_protocol() {
    let mem = triad_vmm::memory::create(MEM).unwrap();
    let kernel = load_kernel(&mem, &linux_guest("bzImage")).unwrap();
    let KernelEntry::Linux64 { entry, header } = kernel.entry else {
        panic!("a bzImage must enter through the 64-bit Linux protocol");
    };
    assert_eq!(entry, 0x10_0200);
    let (version, init_size) = (header.version, header.init_size);
    assert!(version >= 0x20c, "protocol {version:#x}");
    // The area the kernel decompresses into is kept clear of the initrd.
    assert!(kernel.end >= 0x10_0000 + u64::from(init_size));

    let initrd = load_initrd(&mem, &linux_guest("initrd.img"), &kernel, MEM).unwrap();
    assert!(initrd.addr >= kernel.end && initrd.addr + initrd.size <= MEM);
    let mut magic = [0u8; 2];
    mem.read_slice(&mut magic, GuestAddress(initrd.addr))
        .unwrap();
    assert_eq!(magic, [0x1f, 0x8b], "the initrd is a gzip'd cpio");

    let cmdline = std::fs::read_to_string(linux_guest("cmdline")).unwrap();
    let setup = BootSetup {
        kernel: kernel.entry,
        cmdline: cmdline.trim(),
        initrd: Some(initrd),
        mem_bytes: MEM,
        vcpus: 2,
    };
    let boot = write_boot_structures(&mem, &setup).unwrap();
    assert_eq!(
        boot,
        BootEntry::Linux64 {
            entry,
            zero_page: ZERO_PAGE
        }
    );
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
    let hdr = params.hdr;
    let (ramdisk, ramdisk_size, cmd_line_ptr) =
        (hdr.ramdisk_image, hdr.ramdisk_size, hdr.cmd_line_ptr);
    assert_eq!(
        (u64::from(ramdisk), u64::from(ramdisk_size)),
        (initrd.addr, initrd.size)
    );
    assert_eq!(u64::from(cmd_line_ptr), CMDLINE);
    // The kernel's own setup header survives into the zero page.
    let zero_page_init_size = hdr.init_size;
    assert_eq!(zero_page_init_size, init_size);
    assert_eq!(params.e820_entries, 3);
}

#[test]
fn debian_vmlinux_loads_through_pvh() {
    let mem = triad_vmm::memory::create(MEM).unwrap();
    let kernel = load_kernel(&mem, &linux_guest("vmlinux")).unwrap();
    let KernelEntry::Pvh(entry) = kernel.entry else {
        panic!("Debian's vmlinux has the Xen PVH note");
    };
    assert!(
        (0x100_0000..kernel.end).contains(&entry),
        "entry {entry:#x}"
    );
}
