//! Puts the kernel and initrd into guest memory and says how to enter the kernel.
//!
//! Three kernel formats: an ELF with the Xen PVH note (the test guest; Linux with CONFIG_PVH),
//! a plain ELF vmlinux (64-bit Linux entry at `e_entry`), and a bzImage (64-bit entry at
//! load address + 0x200). The format is read from the file's magic, never from its name.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};

use crate::arch::x86_64::layout::{HIMEM_START, MMIO_HOLE_START};
use crate::memory::GuestMemoryMmap;

/// Offset of the 64-bit entry point from a bzImage's protected-mode load address.
const BZIMAGE_ENTRY_64: u64 = 0x200;
/// Linux's default highest initrd address for boot protocols that do not state one.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE: u64 = 0x1000;
/// Where a bzImage's setup header starts in the file (and in the zero page).
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// `xloadflags` bit: the kernel has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither an ELF kernel nor a bzImage")]
    UnknownFormat { path: PathBuf },
    #[error("loading kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("bzImage {path} has no 64-bit entry point (XLF_KERNEL_64 is not set)")]
    No64BitEntry { path: PathBuf },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the kernel")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("copying initrd {path} into guest memory")]
    InitrdCopy {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// How the boot vCPU enters the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub enum KernelEntry {
    Pvh(u64),
    Linux64 { entry: u64, header: setup_header },
}

#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: KernelEntry,
    /// First guest address after the kernel image.
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Elf,
    BzImage,
}

fn detect(file: &mut File, path: &Path) -> Result<Format, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let mut head = [0u8; 0x206];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(read_err)? {
            0 => break,
            n => filled += n,
        }
    }
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        Ok(Format::Elf)
    } else if filled >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(Format::BzImage)
    } else {
        Err(LoadError::UnknownFormat {
            path: path.to_owned(),
        })
    }
}

/// The longest command line the kernel at `path` accepts, after checking it is a readable
/// file in a format we boot; else why not. Cheap: only the header is read.
pub fn cmdline_limit(path: &Path) -> Result<usize, String> {
    crate::spec::check_regular_file(path)?;
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let entry = match detect(&mut file, path) {
        Ok(Format::Elf) => KernelEntry::Pvh(0),
        Ok(Format::BzImage) => {
            let mut header = setup_header::default();
            file.seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
                .and_then(|_| file.read_exact(header.as_mut_slice()))
                .map_err(|e| format!("reading the bzImage header: {e}"))?;
            KernelEntry::Linux64 { entry: 0, header }
        }
        Err(LoadError::UnknownFormat { .. }) => {
            return Err("neither an ELF kernel nor a bzImage".into())
        }
        Err(e) => return Err(e.to_string()),
    };
    Ok(crate::arch::x86_64::cmdline_max(entry))
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoadError> {
    let mut file = File::open(path).map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })?;
    let kernel_err = |source| LoadError::Kernel {
        path: path.to_owned(),
        source,
    };
    match detect(&mut file, path)? {
        Format::Elf => {
            let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(kernel_err)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => KernelEntry::Pvh(addr.raw_value()),
                _ => KernelEntry::Linux64 {
                    entry: r.kernel_load.raw_value(),
                    header: setup_header::default(),
                },
            };
            Ok(LoadedKernel {
                entry,
                end: r.kernel_end,
            })
        }
        Format::BzImage => {
            let r = BzImage::load(
                mem,
                Some(GuestAddress(HIMEM_START)),
                &mut file,
                Some(GuestAddress(HIMEM_START)),
            )
            .map_err(kernel_err)?;
            let header = r.setup_header.unwrap_or_default();
            // Protocol 2.12 says whether the 64-bit entry exists; older kernels always had it.
            if header.version >= 0x20c && header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoadError::No64BitEntry {
                    path: path.to_owned(),
                });
            }
            let load = r.kernel_load.raw_value();
            // The kernel decompresses in place up to `init_size` past its load address; keep
            // that free for the initrd's sake too.
            let end = r.kernel_end.max(load + u64::from(header.init_size));
            Ok(LoadedKernel {
                entry: KernelEntry::Linux64 {
                    entry: load + BZIMAGE_ENTRY_64,
                    header,
                },
                end,
            })
        }
    }
}

/// Where an initrd of `size` bytes goes: as high as allowed, page aligned, above the kernel.
pub fn initrd_placement(size: u64, kernel_end: u64, ram_end: u64, addr_max: u64) -> Option<u64> {
    let top = ram_end.min(MMIO_HOLE_START).min(addr_max.saturating_add(1));
    let addr = top.checked_sub(size)? & !(PAGE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Copies the initrd at `path` into `mem` where `initrd_placement` says.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    ram_end: u64,
) -> Result<LoadedInitrd, LoadError> {
    let mut file = File::open(path).map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?
        .len();
    let addr_max = match kernel.entry {
        KernelEntry::Linux64 { header, .. } if header.initrd_addr_max != 0 => {
            u64::from(header.initrd_addr_max)
        }
        _ => DEFAULT_INITRD_ADDR_MAX,
    };
    let too_large = || LoadError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        limit: addr_max,
    };
    let addr = initrd_placement(size, kernel.end, ram_end, addr_max).ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| LoadError::InitrdCopy {
            path: path.to_owned(),
            source,
        })?;
    Ok(LoadedInitrd { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(bytes: &[u8]) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("kernel");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        (dir, path)
    }

    /// A throwaway directory removed on drop.
    mod tempdir {
        use std::path::{Path, PathBuf};
        pub struct Dir(PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "triad-loader-test-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn mem() -> GuestMemoryMmap {
        crate::memory::create(16 << 20).unwrap()
    }

    #[test]
    fn detects_format_by_magic() {
        let (_d, p) = temp_file(b"\x7fELF\x02\x01\x01");
        assert_eq!(
            detect(&mut File::open(&p).unwrap(), &p).unwrap(),
            Format::Elf
        );
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let (_d, p) = temp_file(&bz);
        assert_eq!(
            detect(&mut File::open(&p).unwrap(), &p).unwrap(),
            Format::BzImage
        );
    }

    #[test]
    fn cmdline_limit_reads_the_bzimage_header() {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20cu16.to_le_bytes());
        bz[0x238..0x23c].copy_from_slice(&255u32.to_le_bytes());
        let (_d, p) = temp_file(&bz);
        assert_eq!(cmdline_limit(&p), Ok(255));
        // An ELF has no header of its own: our buffer's limit applies.
        let (_d, p) = temp_file(b"\x7fELF\x02\x01\x01");
        assert_eq!(
            cmdline_limit(&p),
            Ok(crate::arch::x86_64::layout::CMDLINE_MAX - 1)
        );
        let (_d, p) = temp_file(b"plain text");
        assert!(cmdline_limit(&p).unwrap_err().contains("neither an ELF"));
    }

    #[test]
    fn rejects_text_and_empty_files_naming_them() {
        for bytes in [&b"#!/bin/sh\necho hi\n"[..], b""] {
            let (_d, p) = temp_file(bytes);
            let err = load_kernel(&mem(), &p).unwrap_err();
            assert!(matches!(err, LoadError::UnknownFormat { .. }));
            assert!(err.to_string().contains("kernel"), "{err}");
        }
    }

    #[test]
    fn rejects_truncated_elf() {
        let (_d, p) = temp_file(b"\x7fELF\x02\x01\x01\x00");
        assert!(matches!(
            load_kernel(&mem(), &p),
            Err(LoadError::Kernel { .. })
        ));
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let err = load_kernel(&mem(), Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn initrd_goes_high_page_aligned_and_above_the_kernel() {
        let addr = initrd_placement(0x1234, 0x20_0000, 64 << 20, DEFAULT_INITRD_ADDR_MAX).unwrap();
        assert_eq!(addr % PAGE, 0);
        assert!(addr + 0x1234 <= 64 << 20);
        assert!(addr >= (64 << 20) - 0x3000);
        // The kernel's limit wins over RAM size.
        let addr = initrd_placement(0x1000, 0x20_0000, 2 << 30, 0x3fff_ffff).unwrap();
        assert_eq!(addr, 0x4000_0000 - 0x1000);
        // Too big to fit above the kernel.
        assert_eq!(
            initrd_placement(63 << 20, 0x20_0000, 64 << 20, u64::MAX),
            None
        );
        assert_eq!(initrd_placement(u64::MAX, 0, 64 << 20, u64::MAX), None);
    }
}
