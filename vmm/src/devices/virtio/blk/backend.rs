//! Where a virtio-blk device's bytes live. The device sees only `BlkBackend`; the raw-file
//! backend is here, and the Ceph RBD backend (storage issue) will implement the same trait.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{fallocate, FallocateFlags};
use triad_api::vmm::CacheMode;

pub trait BlkBackend: Send + std::fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Forgets the range; reads of it may return anything (we return zeroes).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes the range read as zeroes; `unmap` allows deallocating it.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

/// A raw image file. Cache modes are the ones users know from KVM platforms:
/// `none` = O_DIRECT (host page cache bypassed; the caller's buffers must be aligned),
/// `writethrough` = O_DSYNC (every write durable on completion), `writeback` = page cache,
/// made durable by FLUSH (fdatasync).
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    len: u64,
}

/// Alignment O_DIRECT buffers need (a page covers every logical block size in use).
pub const DIRECT_IO_ALIGN: usize = 4096;

impl FileBackend {
    pub fn open(path: &Path, read_only: bool, cache: CacheMode) -> io::Result<Self> {
        let flags = match cache {
            CacheMode::None => libc::O_DIRECT,
            CacheMode::Writethrough => libc::O_DSYNC,
            CacheMode::Writeback => 0,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| match (cache, e.raw_os_error()) {
                (CacheMode::None, Some(libc::EINVAL)) => io::Error::new(
                    e.kind(),
                    "this filesystem does not support direct I/O (cache \"none\"); use \"writeback\"",
                ),
                _ => e,
            })?;
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }
}

impl BlkBackend for FileBackend {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        punch_hole(&self.file, offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap {
            return punch_hole(&self.file, offset, len);
        }
        let flags = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, flags, to_off(offset)?, to_off(len)?) {
            Ok(()) => Ok(()),
            // A filesystem without ZERO_RANGE: a hole reads as zeroes too.
            Err(nix::errno::Errno::EOPNOTSUPP) => punch_hole(&self.file, offset, len),
            Err(e) => Err(e.into()),
        }
    }
}

fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(file, flags, to_off(offset)?, to_off(len)?).map_err(io::Error::from)
}

fn to_off(v: u64) -> io::Result<i64> {
    i64::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// A reusable bounce buffer aligned for O_DIRECT, without unsafe allocation: a slightly larger
/// vector, used from its first aligned byte.
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_IO_ALIGN];
        let start = storage.as_ptr().align_offset(DIRECT_IO_ALIGN);
        Self {
            storage,
            start,
            len,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn image(name: &str, len: u64) -> std::path::PathBuf {
        // Under target/, not /tmp: O_DIRECT needs a real filesystem, which tmpfs is not.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("blk-backend-{name}-{}.img", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(len).unwrap();
        path
    }

    #[test]
    fn every_cache_mode_round_trips() {
        for cache in [
            CacheMode::None,
            CacheMode::Writethrough,
            CacheMode::Writeback,
        ] {
            let path = image(&format!("{cache:?}"), 1 << 20);
            let mut b = FileBackend::open(&path, false, cache).unwrap();
            assert_eq!(b.size(), 1 << 20);
            let mut buf = AlignedBuf::new(4096);
            buf.as_mut_slice().fill(0xab);
            b.write_at(buf.as_mut_slice(), 8192).unwrap();
            b.flush().unwrap();
            buf.as_mut_slice().fill(0);
            b.read_at(buf.as_mut_slice(), 8192).unwrap();
            assert!(buf.as_mut_slice().iter().all(|&x| x == 0xab), "{cache:?}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn discard_punches_holes_so_thin_images_stay_thin() {
        let path = image("discard", 4 << 20);
        let mut b = FileBackend::open(&path, false, CacheMode::Writeback).unwrap();
        b.write_at(&vec![1u8; 1 << 20], 0).unwrap();
        b.flush().unwrap();
        let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        assert!(allocated(&path) >= 1 << 20);
        b.discard(0, 1 << 20).unwrap();
        assert!(
            allocated(&path) < 1 << 20,
            "{} bytes still allocated",
            allocated(&path)
        );
        let mut back = vec![9u8; 4096];
        b.read_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&x| x == 0));
        b.write_at(&[7u8; 512], 512).unwrap();
        b.write_zeroes(0, 4096, false).unwrap();
        b.read_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&x| x == 0));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn read_only_files_refuse_writes() {
        let path = image("ro", 1 << 20);
        let mut b = FileBackend::open(&path, true, CacheMode::Writeback).unwrap();
        assert!(b.write_at(&[0u8; 512], 0).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn aligned_buffers_are_aligned() {
        for len in [512, 4096, 65536] {
            let mut b = AlignedBuf::new(len);
            let s = b.as_mut_slice();
            assert_eq!((s.len(), s.as_ptr() as usize % DIRECT_IO_ALIGN), (len, 0));
        }
    }
}
